//! Silver tables: the shipped views over real FHIR material, latest-version-wins merges, the SCD2
//! patient history, rebuilds from bronze, and view failures in quarantine.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use vitalake::config::IngestConfig;
use vitalake::ingest::{IngestOptions, ingest_fhir, silver};
use vitalake::lake::Lake;

use crate::common::{count, rows, run_ok, shared_fhir, temp_lake, vitalake};

/// Every resource in a file or folder, with the `fullUrl` of its Bundle entry, read independently of
/// the code under test.
fn walk(path: &Path, out: &mut Vec<(Value, Option<String>)>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            walk(&entry.unwrap().path(), out);
        }
        return;
    }
    let text = std::fs::read_to_string(path).unwrap();
    let values: Vec<Value> = match serde_json::from_str(&text) {
        Ok(value) => vec![value],
        Err(_) => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
    };
    for value in values {
        push(value, None, out);
    }
}

fn push(value: Value, full_url: Option<String>, out: &mut Vec<(Value, Option<String>)>) {
    if value["resourceType"] == "Bundle" {
        for entry in value["entry"].as_array().into_iter().flatten() {
            if !entry["resource"].is_null() {
                push(
                    entry["resource"].clone(),
                    entry["fullUrl"].as_str().map(str::to_string),
                    out,
                );
            }
        }
    } else {
        out.push((value, full_url));
    }
}

/// The LOINC codes of the FHIR R4 vital signs profile
/// (http://hl7.org/fhir/R4/observation-vitalsigns.html), US Core's pulse oximetry 59408-5 and the
/// older BP panel 55284-4.
const VITAL_SIGN_LOINC: [&str; 14] = [
    "85353-1", "9279-1", "8867-4", "2708-6", "59408-5", "8310-5", "8302-2", "9843-4", "29463-7",
    "39156-5", "85354-9", "55284-4", "8480-6", "8462-4",
];

fn loinc_codes(resource: &Value) -> Vec<&str> {
    resource["code"]["coding"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["system"] == "http://loinc.org")
        .filter_map(|c| c["code"].as_str())
        .collect()
}

/// Distinct resource keys (id, else fullUrl) among resources that pass `keep`.
fn distinct_keys(resources: &[(Value, Option<String>)], keep: impl Fn(&Value) -> bool) -> usize {
    resources
        .iter()
        .filter(|(r, _)| keep(r))
        .map(|(r, url)| {
            r["id"]
                .as_str()
                .map(str::to_string)
                .or(url.clone())
                .unwrap()
        })
        .collect::<BTreeSet<_>>()
        .len()
}

#[tokio::test(flavor = "multi_thread")]
async fn synthea_and_official_examples_flatten_into_every_silver_table() {
    let (_dir, lake) = temp_lake();
    let inputs = [shared_fhir("synthea"), shared_fhir("r4/examples")];
    let paths: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let report = crate::common::ingest(&lake, &paths).await;
    assert!(report.silver_rows > 0);

    let mut resources = Vec::new();
    for input in &inputs {
        walk(Path::new(input), &mut resources);
    }
    let not_in_error = |r: &Value| r["status"] != "entered-in-error";
    let not_verified_in_error = |r: &Value| {
        !r["verificationStatus"]["coding"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["code"] == "entered-in-error")
    };
    let has_category = |r: &Value, code: &str| {
        r["category"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["coding"].as_array().into_iter().flatten())
            .any(|c| c["code"] == code)
    };
    let is = |t: &'static str| move |r: &Value| r["resourceType"] == t;
    let expected = [
        ("patient", distinct_keys(&resources, is("Patient"))),
        (
            "blood_pressure",
            distinct_keys(&resources, |r| {
                is("Observation")(r)
                    && not_in_error(r)
                    && loinc_codes(r)
                        .iter()
                        .any(|c| *c == "85354-9" || *c == "55284-4")
            }),
        ),
        (
            "heart_rate",
            distinct_keys(&resources, |r| {
                is("Observation")(r) && not_in_error(r) && loinc_codes(r).contains(&"8867-4")
            }),
        ),
        (
            "lab_result",
            distinct_keys(&resources, |r| {
                is("Observation")(r)
                    && not_in_error(r)
                    && (has_category(r, "laboratory")
                        || (r["category"].is_null()
                            && !loinc_codes(r).is_empty()
                            && !loinc_codes(r).iter().any(|c| VITAL_SIGN_LOINC.contains(c))))
            }),
        ),
        (
            "vital_sign",
            distinct_keys(&resources, |r| {
                is("Observation")(r)
                    && not_in_error(r)
                    && (has_category(r, "vital-signs")
                        || loinc_codes(r).iter().any(|c| VITAL_SIGN_LOINC.contains(c)))
                    && !loinc_codes(r)
                        .iter()
                        .any(|c| ["85354-9", "55284-4", "8867-4"].contains(c))
            }),
        ),
    ];
    // The views of one resource type each, with the status that takes a record out of silver.
    type Kept = fn(&Value) -> bool;
    let whole_types: [(&str, &str, Kept); 7] = [
        ("medication_dispense", "MedicationDispense", not_in_error),
        ("encounter", "Encounter", not_in_error),
        ("condition", "Condition", not_verified_in_error),
        ("procedure", "Procedure", not_in_error),
        ("medication_request", "MedicationRequest", not_in_error),
        ("immunization", "Immunization", not_in_error),
        (
            "allergy_intolerance",
            "AllergyIntolerance",
            not_verified_in_error,
        ),
    ];
    let mut expected = expected.to_vec();
    for (view, resource_type, kept) in whole_types {
        let keys = distinct_keys(&resources, |r| {
            r["resourceType"] == resource_type && kept(r)
        });
        expected.push((view, keys));
    }
    for (view, rows_expected) in expected {
        let table = silver::view_table(view);
        // (The corpus has no MedicationDispense: that table must then be empty.)
        assert!(
            rows_expected > 0 || view == "medication_dispense",
            "the corpus has {view} resources"
        );
        assert_eq!(count(&lake, &table).await, rows_expected as u64, "{table}");
    }
    // Every resource of the EHR types in bronze (by id, else fullUrl, as silver keys them) is in
    // its silver table (none is in error here).
    for (resource_type, view) in [
        ("Encounter", "encounter"),
        ("Condition", "condition"),
        ("Procedure", "procedure"),
        ("MedicationRequest", "medication_request"),
        ("Immunization", "immunization"),
        ("AllergyIntolerance", "allergy_intolerance"),
    ] {
        let bronze = rows(
            &lake,
            &format!("bronze/fhir/{resource_type}"),
            "SELECT COUNT(DISTINCT COALESCE(resource_id, full_url)) FROM t",
        )
        .await;
        assert_eq!(
            bronze[0][0].parse::<u64>().unwrap(),
            count(&lake, &silver::view_table(view)).await,
            "{resource_type}"
        );
    }
    // Synthea's conditional references (`Location?identifier=...`) name no resource: the display
    // stands in, never the type name.
    let places = rows(
        &lake,
        &silver::view_table("encounter"),
        "SELECT COUNT(*) FROM t WHERE location IN ('Location', 'Organization', 'Practitioner') \
         OR practitioner = 'Practitioner' OR service_provider = 'Organization'",
    )
    .await;
    assert_eq!(places, vec![vec!["0".to_string()]]);
    // The 127 Synthea panels use 55284-4 only; they all land.
    let legacy = rows(
        &lake,
        &silver::view_table("blood_pressure"),
        "SELECT COUNT(*) FROM t WHERE panel_code = '55284-4'",
    )
    .await;
    assert!(legacy[0][0].parse::<u64>().unwrap() >= 127, "{legacy:?}");
    // Typed values: a known Synthea reading keeps its decimal exactly and its unit.
    let units = rows(
        &lake,
        &silver::view_table("blood_pressure"),
        "SELECT DISTINCT systolic_unit FROM t WHERE systolic IS NOT NULL",
    )
    .await;
    assert_eq!(units, vec![vec!["mm[Hg]".to_string()]]);
    let views_quarantined = rows(
        &lake,
        "silver/quarantine",
        "SELECT COUNT(*) FROM t WHERE stage = 'silver view'",
    )
    .await;
    assert_eq!(
        views_quarantined[0][0], "0",
        "every resource of the corpus flattens"
    );
}

fn patient(
    id: &str,
    version: Option<&str>,
    updated: Option<&str>,
    phone: &str,
    city: &str,
) -> Value {
    let mut patient = json!({
        "resourceType": "Patient", "id": id,
        "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}, "system": "urn:mrn", "value": format!("MRN-{id}")}],
        "name": [{"use": "official", "family": "Costa", "given": ["Ana", "Rita"]}],
        "gender": "female", "birthDate": "1980-04-02",
        "telecom": [{"system": "phone", "value": phone}],
        "address": [{"use": "home", "line": ["Rua 1"], "city": city, "postalCode": "1000-001", "country": "PT"}]
    });
    if let Some(version) = version {
        patient["meta"] = json!({"versionId": version, "lastUpdated": updated.unwrap()});
    }
    patient
}

fn blood_pressure(id: &str, version: &str, updated: &str, status: &str) -> Value {
    let component = |code: &str, value: f64| json!({"code": {"coding": [{"system": "http://loinc.org", "code": code}]}, "valueQuantity": {"value": value, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}});
    json!({
        "resourceType": "Observation", "id": id, "meta": {"versionId": version, "lastUpdated": updated},
        "status": status,
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2026-01-05T08:00:00Z",
        "component": [component("8480-6", 141.5), component("8462-4", 92.0)]
    })
}

fn write_ndjson(dir: &Path, name: &str, resources: &[Value]) -> PathBuf {
    let path = dir.join(name);
    let lines: Vec<String> = resources.iter().map(|r| r.to_string()).collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

async fn dump(lake: &Lake, table: &str) -> Vec<Vec<String>> {
    let mut all = rows(lake, table, "SELECT * FROM t").await;
    all.sort();
    all
}

#[tokio::test(flavor = "multi_thread")]
async fn newest_version_wins_in_any_arrival_order_and_history_follows_demographics() {
    let (dir, lake) = temp_lake();
    // Run 1: the newest versions first, and a reading marked entered-in-error.
    let first = write_ndjson(
        dir.path(),
        "first.ndjson",
        &[
            patient(
                "p1",
                Some("3"),
                Some("2026-03-01T00:00:00Z"),
                "+351 333",
                "Lisboa",
            ),
            patient("p2", None, None, "+351 900", "Braga"),
            blood_pressure("bp1", "2", "2026-01-06T00:00:00Z", "entered-in-error"),
        ],
    );
    crate::common::ingest(&lake, &[first.to_str().unwrap()]).await;
    // Run 2: the older versions arrive late; p2 (no meta) changes, and the later ingest wins.
    let second = write_ndjson(
        dir.path(),
        "second.ndjson",
        &[
            patient(
                "p1",
                Some("1"),
                Some("2026-01-01T00:00:00Z"),
                "+351 111",
                "Porto",
            ),
            patient(
                "p1",
                Some("2"),
                Some("2026-02-01T00:00:00Z"),
                "+351 333",
                "Lisboa",
            ),
            patient("p2", None, None, "+351 901", "Braga"),
            // A new patient among known ones: its rows are appended, theirs replaced.
            patient(
                "p3",
                Some("1"),
                Some("2026-01-01T00:00:00Z"),
                "+351 500",
                "Faro",
            ),
            blood_pressure("bp1", "1", "2026-01-05T00:00:00Z", "final"),
        ],
    );
    crate::common::ingest(&lake, &[second.to_str().unwrap()]).await;

    let patients = rows(
        &lake,
        "silver/fhir/patient",
        "SELECT id, version_id, phone, city, mrn, given_names FROM t ORDER BY id",
    )
    .await;
    assert_eq!(
        patients,
        vec![
            vec!["p1", "3", "+351 333", "Lisboa", "MRN-p1", "Ana Rita"],
            vec!["p2", "", "+351 901", "Braga", "MRN-p2", "Ana Rita"],
            vec!["p3", "1", "+351 500", "Faro", "MRN-p3", "Ana Rita"]
        ]
    );
    assert_eq!(
        count(&lake, "silver/fhir/blood_pressure").await,
        0,
        "entered-in-error stays out, even when v1 arrives later"
    );

    let history = rows(
        &lake,
        silver::HISTORY_TABLE,
        "SELECT id, phone, city, version_id, CAST(valid_from AS VARCHAR) AS f, CAST(valid_to AS VARCHAR) AS t, is_current FROM t WHERE id = 'p1' ORDER BY valid_from",
    )
    .await;
    assert_eq!(
        history.len(),
        2,
        "v3 repeats v2's demographics: two periods, {history:?}"
    );
    assert_eq!(history[0][..4], ["p1", "+351 111", "Porto", "1"]);
    assert!(
        history[0][4].starts_with("2026-01-01") && history[0][5].starts_with("2026-02-01"),
        "{history:?}"
    );
    assert_eq!(history[0][6], "false");
    assert_eq!(history[1][..4], ["p1", "+351 333", "Lisboa", "2"]);
    assert!(
        history[1][4].starts_with("2026-02-01") && history[1][5].is_empty(),
        "{history:?}"
    );
    assert_eq!(history[1][6], "true");
    let p2 = rows(
        &lake,
        silver::HISTORY_TABLE,
        "SELECT phone, is_current FROM t WHERE id = 'p2' ORDER BY _row",
    )
    .await;
    assert_eq!(
        p2,
        vec![vec!["+351 900", "false"], vec!["+351 901", "true"]]
    );
    let p3 = rows(
        &lake,
        silver::HISTORY_TABLE,
        "SELECT phone, is_current FROM t WHERE id = 'p3' ORDER BY _row",
    )
    .await;
    assert_eq!(p3, vec![vec!["+351 500", "true"]]);

    // The rebuild from bronze gives the same tables.
    let tables = [
        "silver/fhir/patient",
        silver::HISTORY_TABLE,
        "silver/fhir/blood_pressure",
        "silver/versions/Patient",
    ];
    let mut before = Vec::new();
    for table in tables {
        before.push(dump(&lake, table).await);
    }
    let views = silver::SilverViews::load(Path::new("profiles/views")).unwrap();
    silver::refresh(&lake, &views, None).await.unwrap();
    for (table, before) in tables.iter().zip(before) {
        assert_eq!(
            dump(&lake, table).await,
            before,
            "{table} after refresh silver"
        );
    }

    // A newer version of the reading brings it back.
    let third = write_ndjson(
        dir.path(),
        "third.ndjson",
        &[blood_pressure(
            "bp1",
            "3",
            "2026-01-07T00:00:00Z",
            "amended",
        )],
    );
    crate::common::ingest(&lake, &[third.to_str().unwrap()]).await;
    let readings = rows(
        &lake,
        "silver/fhir/blood_pressure",
        "SELECT id, patient_id, CAST(systolic AS VARCHAR), diastolic_unit, status FROM t",
    )
    .await;
    assert_eq!(readings.len(), 1);
    assert_eq!(readings[0][0..2], ["bp1", "p1"]);
    assert!(readings[0][2].starts_with("141.5"), "{readings:?}");
    assert_eq!(readings[0][3..], ["mm[Hg]", "amended"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_version_delivered_again_leaves_silver_as_it_is() {
    let (dir, lake) = temp_lake();
    let reading = |status: &str| blood_pressure("bp1", "1", "2026-01-05T09:00:00Z", status);
    let first = write_ndjson(dir.path(), "first.ndjson", &[reading("final")]);
    crate::common::ingest(&lake, &[first.to_str().unwrap()]).await;
    let state = || async {
        (
            rows(
                &lake,
                "silver/fhir/blood_pressure",
                "SELECT id, status FROM t",
            )
            .await,
            rows(
                &lake,
                "silver/versions/Observation",
                "SELECT _key, _ingest_order FROM t",
            )
            .await,
        )
    };
    let before = state().await;
    assert_eq!(before.0, [["bp1", "final"]]);

    // The same versionId and lastUpdated again, as a re-sent event brings them (the status differs
    // only so that the test can tell the copies apart): the same version, so silver keeps its own.
    let again = write_ndjson(dir.path(), "again.ndjson", &[reading("amended")]);
    crate::common::ingest(&lake, &[again.to_str().unwrap()]).await;
    assert_eq!(state().await, before);
    // A rebuild from bronze, which holds both copies, keeps the same one.
    let views = silver::SilverViews::load(Path::new("profiles/views")).unwrap();
    silver::refresh(&lake, &views, None).await.unwrap();
    assert_eq!(state().await, before);

    // A new lastUpdated is a new version, and it wins.
    let mut newer = reading("amended");
    newer["meta"]["lastUpdated"] = json!("2026-01-05T10:00:00Z");
    let newer = write_ndjson(dir.path(), "newer.ndjson", &[newer]);
    crate::common::ingest(&lake, &[newer.to_str().unwrap()]).await;
    assert_eq!(state().await.0, [["bp1", "amended"]]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resource_a_view_cannot_evaluate_goes_to_quarantine_and_the_rest_lands() {
    let (dir, lake) = temp_lake();
    let views = dir.path().join("views");
    std::fs::create_dir(&views).unwrap();
    let view = json!({
        "resourceType": "ViewDefinition", "name": "first_given", "resource": "Patient",
        "select": [{"column": [{"name": "id", "path": "id", "type": "id"}, {"name": "given", "path": "name.given", "type": "string"}]}]
    });
    std::fs::write(views.join("first_given.json"), view.to_string()).unwrap();
    let mut one_given = patient("p9", None, None, "1", "Faro");
    one_given["name"][0]["given"] = json!(["Rui"]);
    let input = write_ndjson(
        dir.path(),
        "in.ndjson",
        &[patient("p1", None, None, "1", "Faro"), one_given],
    );

    let mut options = IngestOptions::from_config(&IngestConfig::default());
    options.views = views;
    let report = ingest_fhir(&lake, &[input.display().to_string()], options)
        .await
        .unwrap();
    assert_eq!(report.quarantine_rows, 1);
    assert_eq!(
        rows(&lake, "silver/fhir/first_given", "SELECT id, given FROM t").await,
        vec![vec!["p9", "Rui"]]
    );
    let quarantined = rows(
        &lake,
        "silver/quarantine",
        "SELECT resource_id, stage, errors[1]['rule'], errors[1]['location'], errors[1]['message'] FROM t",
    )
    .await;
    assert_eq!(quarantined.len(), 1);
    assert_eq!(
        quarantined[0][..4],
        ["p1", silver::VIEW_STAGE, "view", "first_given"]
    );
    assert!(
        quarantined[0][4].contains("'name.given'") && quarantined[0][4].contains("2 values"),
        "{quarantined:?}"
    );
    assert_eq!(
        count(&lake, "bronze/fhir/Patient").await,
        2,
        "bronze keeps both"
    );
}

#[test]
fn views_run_prints_rows_from_files_and_names_a_failing_expression() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_ndjson(
        dir.path(),
        "bp.ndjson",
        &[
            blood_pressure("bp1", "1", "2026-01-05T00:00:00Z", "final"),
            blood_pressure("bp2", "1", "2026-01-05T00:00:00Z", "entered-in-error"),
        ],
    );
    let out = run_ok(
        vitalake()
            .args([
                "views",
                "run",
                "--view",
                "profiles/views/blood_pressure.json",
                "--format",
                "csv",
            ])
            .arg(&input),
    );
    let csv = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert!(
        lines[0].starts_with("id,patient_id,panel_code,effective_time,systolic"),
        "{csv}"
    );
    assert_eq!(lines.len(), 2, "header and bp1 only: {csv}");
    assert!(
        lines[1].starts_with("bp1,p1,85354-9,2026-01-05T08:00:00"),
        "{csv}"
    );

    let view = dir.path().join("bad.json");
    std::fs::write(&view, json!({"resource": "Observation", "select": [{"column": [{"name": "c", "path": "component.code.coding.code"}]}]}).to_string()).unwrap();
    let out = vitalake()
        .args(["views", "run", "--view"])
        .arg(&view)
        .arg(&input)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Observation/bp1") && stderr.contains("'component.code.coding.code'"),
        "{stderr}"
    );

    let out = vitalake()
        .args(["refresh", "silver", "--view", "nope", "--lake"])
        .arg(dir.path().join("lake"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no view named 'nope'"));
}

#[test]
fn views_run_reads_the_lake_bronze_table() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let input = write_ndjson(
        dir.path(),
        "bp.ndjson",
        &[
            blood_pressure("bp1", "1", "2026-01-05T00:00:00Z", "final"),
            blood_pressure("bp1", "2", "2026-01-06T00:00:00Z", "amended"),
        ],
    );
    run_ok(
        vitalake()
            .args(["ingest", "fhir"])
            .arg(&input)
            .arg("--lake")
            .arg(&lake),
    );
    let out = run_ok(
        vitalake()
            .args([
                "views",
                "run",
                "--bronze",
                "--view",
                "profiles/views/blood_pressure.json",
                "--format",
                "json",
                "--lake",
            ])
            .arg(&lake),
    );
    let rows: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Bronze keeps every version: the view sees both (silver keeps only the newest).
    let statuses: BTreeSet<&str> = rows.iter().filter_map(|r| r["status"].as_str()).collect();
    assert_eq!(statuses, BTreeSet::from(["amended", "final"]));
}

/// A Bundle entry `DELETE Type/id` takes the resource out of silver and stays in bronze as a delete
/// event; it erases the versions ingested before it, and a version ingested after it counts again.
/// `refresh silver` rebuilds the same tables from bronze at every step.
#[tokio::test(flavor = "multi_thread")]
async fn a_delete_entry_takes_the_resource_out_of_silver() {
    const HISTORY: &str =
        "SELECT _key, valid_from, valid_to, is_current FROM t ORDER BY _key, valid_from";
    let (dir, lake) = temp_lake();
    let current = |lake: Lake| async move {
        rows(
            &lake,
            silver::HISTORY_TABLE,
            "SELECT _key FROM t WHERE is_current ORDER BY _key",
        )
        .await
        .into_iter()
        .map(|r| r[0].clone())
        .collect::<Vec<_>>()
    };
    let patient = |id: &str, version: &str| json!({"resource": {"resourceType": "Patient", "id": id, "meta": {"versionId": version}, "gender": "female"}});
    let delete = |url: &str| json!({"request": {"method": "DELETE", "url": url}});
    let heart_rate = json!({"resource": {"resourceType": "Observation", "id": "o1", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": "Patient/p2"}, "effectiveDateTime": "2026-01-01T08:00:00Z",
        "valueQuantity": {"value": 70, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}}});
    let mut step = 0;
    let mut land = |entries: Vec<Value>| {
        step += 1;
        let path = dir.path().join(format!("{step}.json"));
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
        std::fs::write(&path, bundle.to_string()).unwrap();
        path.display().to_string()
    };
    let ids = |table: &'static str| {
        let lake = lake.clone();
        async move {
            rows(
                &lake,
                &silver::view_table(table),
                "SELECT id FROM t ORDER BY id",
            )
            .await
            .into_iter()
            .map(|r| r[0].clone())
            .collect::<Vec<_>>()
        }
    };
    let rebuilt_agrees = || {
        let lake = lake.clone();
        async move {
            let tables = [
                (
                    "silver/fhir/patient",
                    "SELECT id, version_id FROM t ORDER BY id",
                ),
                ("silver/fhir/heart_rate", "SELECT id FROM t ORDER BY id"),
                (silver::HISTORY_TABLE, HISTORY),
            ];
            let mut before = Vec::new();
            for (table, sql) in tables {
                before.push(rows(&lake, table, sql).await);
            }
            let views = silver::SilverViews::load(Path::new("profiles/views")).unwrap();
            silver::refresh(&lake, &views, None).await.unwrap();
            for ((table, sql), was) in tables.into_iter().zip(before) {
                assert_eq!(
                    rows(&lake, table, sql).await,
                    was,
                    "refresh silver rebuilt {table} otherwise"
                );
            }
        }
    };

    let first = land(vec![patient("p1", "1"), patient("p2", "1"), heart_rate]);
    crate::common::ingest(&lake, &[&first]).await;
    assert_eq!(ids("patient").await, ["p1", "p2"]);
    assert_eq!(ids("heart_rate").await, ["o1"]);

    let second = land(vec![
        delete("Patient/p1"),
        delete("Observation/o1"),
        delete("Patient/never-seen"),
    ]);
    let report = crate::common::ingest(&lake, &[&second]).await;
    assert_eq!((report.stats.delete_events, report.quarantine_rows), (3, 0));
    assert_eq!(ids("patient").await, ["p2"]);
    assert!(ids("heart_rate").await.is_empty());
    let events = rows(
        &lake,
        "bronze/fhir/Patient",
        "SELECT resource_id FROM t WHERE deleted ORDER BY 1",
    )
    .await;
    assert_eq!(events, [["never-seen"], ["p1"]]);
    // The history keeps p1's period, closed when the delete was ingested.
    assert_eq!(current(lake.clone()).await, ["p2"]);
    let p1 = rows(
        &lake,
        silver::HISTORY_TABLE,
        "SELECT valid_to IS NOT NULL FROM t WHERE _key = 'p1'",
    )
    .await;
    assert_eq!(p1, [["true"]]);
    rebuilt_agrees().await;

    // A version after the delete brings p1 back; in one Bundle, p2's delete then a version: it
    // stays, at that version.
    let third = land(vec![
        patient("p1", "2"),
        delete("Patient/p2"),
        patient("p2", "9"),
    ]);
    crate::common::ingest(&lake, &[&third]).await;
    let versions = rows(
        &lake,
        "silver/fhir/patient",
        "SELECT id, version_id FROM t ORDER BY id",
    )
    .await;
    assert_eq!(versions, [["p1", "2"], ["p2", "9"]]);
    // p1 has a new current period after its closed one.
    assert_eq!(current(lake.clone()).await, ["p1", "p2"]);
    assert_eq!(count(&lake, silver::HISTORY_TABLE).await, 4);
    rebuilt_agrees().await;

    // A version then a delete: gone, even though the delete carries no version.
    let fourth = land(vec![patient("p2", "10"), delete("Patient/p2")]);
    crate::common::ingest(&lake, &[&fourth]).await;
    assert_eq!(ids("patient").await, ["p1"]);
    rebuilt_agrees().await;
}
