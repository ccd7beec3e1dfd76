//! The EHR gold tables (utilization, disease prevalence, abnormal labs, the clinical summary) on the
//! Synthea bundles of `../shared/fhir/synthea` plus a few records that exercise what Synthea lacks
//! (multi-day inpatient stays and a readmission, ICD-10-CM coded diagnoses, reference ranges and
//! flags), built with the commands a user runs, against figures `gold_ehr.py` computes from the same
//! files on its own.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use crate::common::{on_lake, shared_fhir};

/// Records Synthea does not have: two inpatient stays of one patient 16 days apart, an emergency
/// visit, ICD-10-CM coded conditions (one abated, one resolved without a date), and labs with a
/// reference range, a critical flag and no category.
fn extra_records() -> Vec<Value> {
    let patient = |id: &str| json!({"resourceType": "Patient", "id": id, "gender": "female", "birthDate": "1950-01-02"});
    let encounter = |id: &str, patient: &str, class: &str, start: &str, end: &str| {
        json!({"resourceType": "Encounter", "id": id, "status": "finished",
               "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": class},
               "subject": {"reference": format!("Patient/{patient}")},
               "period": {"start": start, "end": end}})
    };
    let icd = |id: &str,
               patient: &str,
               code: &str,
               clinical: &str,
               onset: &str,
               abated: Option<&str>| {
        let mut c = json!({"resourceType": "Condition", "id": id,
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": clinical}]},
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": code}]},
            "subject": {"reference": format!("Patient/{patient}")}, "onsetDateTime": onset});
        if let Some(at) = abated {
            c["abatementDateTime"] = json!(at);
        }
        c
    };
    let lab = |id: &str, code: &str, value: f64, unit: &str, extra: Value| {
        let mut o = json!({"resourceType": "Observation", "id": id, "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": "Patient/ehr-1"}, "effectiveDateTime": "2024-03-02T08:15:00+01:00",
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}});
        for (k, v) in extra.as_object().unwrap() {
            o[k] = v.clone();
        }
        o
    };
    let range = |low: f64, high: f64| json!({"referenceRange": [{"low": {"value": low}, "high": {"value": high}}]});
    vec![
        patient("ehr-1"),
        patient("ehr-2"),
        encounter(
            "ehr-imp-1",
            "ehr-1",
            "IMP",
            "2024-03-01T10:00:00Z",
            "2024-03-04T16:00:00Z",
        ),
        encounter(
            "ehr-imp-2",
            "ehr-1",
            "IMP",
            "2024-03-20T23:30:00+02:00",
            "2024-03-22T08:00:00Z",
        ),
        encounter(
            "ehr-emer",
            "ehr-2",
            "EMER",
            "2024-03-21T22:00:00Z",
            "2024-03-22T03:00:00Z",
        ),
        icd(
            "ehr-dm",
            "ehr-1",
            "E11.9",
            "active",
            "2024-01-05T00:00:00Z",
            None,
        ),
        icd(
            "ehr-htn",
            "ehr-2",
            "I10",
            "active",
            "2024-02-01T00:00:00Z",
            Some("2024-03-10T00:00:00Z"),
        ),
        icd(
            "ehr-htn-1",
            "ehr-1",
            "I10",
            "active",
            "2024-02-15T00:00:00Z",
            None,
        ),
        icd(
            "ehr-flu",
            "ehr-2",
            "J11.1",
            "resolved",
            "2024-01-10T00:00:00Z",
            None,
        ),
        lab("ehr-glucose", "2345-7", 180.0, "mg/dL", range(70.0, 99.0)),
        lab(
            "ehr-potassium",
            "2823-3",
            2.5,
            "mmol/L",
            json!({"interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "LL"}]}]}),
        ),
        lab("ehr-hb", "718-7", 14.0, "g/dL", range(12.0, 17.0)),
        {
            let mut o = lab(
                "ehr-uncategorised",
                "2345-7",
                50.0,
                "mg/dL",
                range(70.0, 99.0),
            );
            o.as_object_mut().unwrap().remove("category");
            o
        },
    ]
}

/// Rows of `sql` as JSON objects, through `vitalake query`.
fn query(lake: &Path, sql: &str) -> Vec<Value> {
    let out = on_lake(lake, &["query", sql, "--format", "json"]);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A row's values of `fields`, as text: the key it is matched by.
fn key(row: &Value, fields: &[&str]) -> Vec<String> {
    fields
        .iter()
        .map(|f| row[*f].as_str().unwrap_or_default().to_string())
        .collect()
}

fn close(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => (x - y).abs() < 1e-6,
        _ => a.is_null() && b.is_null(),
    }
}

#[test]
fn ehr_gold_tables_match_an_independent_count() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let extra = dir.path().join("ehr.ndjson");
    let lines: String = extra_records().iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&extra, lines).unwrap();
    let inputs = [
        shared_fhir("synthea/smart-generated-sample-data-R4"),
        shared_fhir("synthea/fhir-data-pipes-synthea-hiv"),
        extra.display().to_string(),
    ];

    let report = on_lake(
        &lake,
        &[
            "ingest", "fhir", "--json", &inputs[0], &inputs[1], &inputs[2],
        ],
    );
    let report: Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(report["quarantine_rows"], 0, "{report}");
    let chapters = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/profiles/terminology/icd-10-cm-chapters.csv"
    );
    on_lake(&lake, &["ingest", "terminology", chapters]);
    on_lake(&lake, &["refresh", "gold"]);

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/gold_ehr.py");
    let out = Command::new("python3")
        .arg(script)
        .args(&inputs)
        .output()
        .expect("python3 runs the independent count");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected: Value = serde_json::from_slice(&out.stdout).unwrap();

    // Utilization, per day and class: every row, every figure.
    const DAY_CLASS: &[&str] = &["day", "encounter_class"];
    let gold: BTreeMap<Vec<String>, Value> =
        query(&lake, "SELECT * FROM gold.hospital_utilization_daily")
            .into_iter()
            .map(|r| (key(&r, DAY_CLASS), r))
            .collect();
    let want = expected["utilization"].as_array().unwrap();
    assert_eq!(gold.len(), want.len());
    for row in want {
        let got = &gold[&key(row, DAY_CLASS)];
        for field in ["admissions", "discharges", "census", "readmissions_30d"] {
            assert_eq!(got[field], row[field], "{field} on {row}");
        }
        for field in ["bed_days", "los_mean_hours", "los_median_hours"] {
            let got_value = got.get(field).cloned().unwrap_or(Value::Null);
            assert!(
                close(&got_value, &row[field]),
                "{field}: {got_value} against {row}"
            );
        }
    }
    // The two stays 16 days apart: one inpatient readmission, and the first stay's middle days in
    // the census.
    let imp = |day: &str| &gold[&vec![day.to_string(), "IMP".to_string()]];
    assert_eq!(imp("2024-03-04")["readmissions_30d"], 1);
    assert_eq!(imp("2024-03-02")["census"], 1);

    // Prevalence, per code at each change.
    const DAY_CODE: &[&str] = &["day", "code_system", "code"];
    let prevalence = query(
        &lake,
        "SELECT day, code_system, code, patients, icd10cm_chapter FROM gold.disease_prevalence_daily ORDER BY day, code_system, code",
    );
    let counted = |rows: &[Value]| -> Vec<(Vec<String>, u64)> {
        rows.iter()
            .map(|r| (key(r, DAY_CODE), r["patients"].as_u64().unwrap()))
            .collect()
    };
    let got = counted(&prevalence);
    assert_eq!(got, counted(expected["prevalence"].as_array().unwrap()));
    let chapter_of = |code: &str| {
        prevalence
            .iter()
            .find(|r| r["code"] == code)
            .map(|r| r["icd10cm_chapter"].clone())
            .unwrap()
    };
    assert_eq!(
        chapter_of("E11.9"),
        "Endocrine, nutritional and metabolic diseases"
    );
    assert_eq!(chapter_of("I10"), "Diseases of the circulatory system");
    // I10: two patients from 2024-02-15, one once the other's abated on 2024-03-10.
    let i10: Vec<(&str, u64)> = got
        .iter()
        .filter(|(k, _)| k[2] == "I10")
        .map(|(k, n)| (k[0].as_str(), *n))
        .collect();
    assert_eq!(
        i10,
        [("2024-02-01", 1), ("2024-02-15", 2), ("2024-03-10", 1)]
    );

    // Abnormal labs, per code and day.
    let labs: BTreeMap<Vec<String>, Value> = query(
        &lake,
        "SELECT * FROM gold.lab_abnormal_daily WHERE section = 'per code and day'",
    )
    .into_iter()
    .map(|r| (key(&r, DAY_CODE), r))
    .collect();
    let want = expected["labs"].as_array().unwrap();
    assert_eq!(labs.len(), want.len());
    for row in want {
        let got = &labs[&key(row, DAY_CODE)];
        for field in ["results", "abnormal", "high", "low", "critical"] {
            assert_eq!(got[field], row[field], "{field} on {row}");
        }
    }
    let abnormal: u64 = want.iter().map(|r| r["abnormal"].as_u64().unwrap()).sum();
    assert_eq!(
        abnormal, 3,
        "glucose high, potassium critically low, the uncategorised one low"
    );
    let latest = query(
        &lake,
        "SELECT code, latest_abnormal_flag FROM gold.lab_abnormal_daily WHERE section = 'latest per patient' AND patient_id = 'ehr-1' ORDER BY code",
    );
    assert_eq!(
        latest,
        [
            json!({"code": "2345-7", "latest_abnormal_flag": "H"}),
            json!({"code": "2823-3", "latest_abnormal_flag": "LL"})
        ]
    );

    // The clinical summary: active conditions and the last encounter, per patient.
    let summaries = query(
        &lake,
        "SELECT patient_id, active_conditions, last_encounter_class FROM gold.patient_clinical_summary",
    );
    let want = expected["summaries"].as_object().unwrap();
    assert_eq!(summaries.len(), want.len());
    for row in &summaries {
        let expected_row = &want[row["patient_id"].as_str().unwrap()];
        assert_eq!(
            row["active_conditions"], expected_row["active_conditions"],
            "{row}"
        );
        assert_eq!(
            row.get("last_encounter_class")
                .cloned()
                .unwrap_or(Value::Null),
            expected_row["last_encounter_class"],
            "{row}"
        );
    }
}
