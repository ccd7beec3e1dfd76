//! `vitalake query` over every layer (and writes refused); gold tables against answers computed by
//! hand on small inputs.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use crate::common::{count, ingest_sample_drop, on_lake, rows, run_ok, temp_lake, vitalake};

const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/samples");
const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/anomaly-rules");

fn query(lake: &Path, sql: &str) -> Command {
    let mut cmd = vitalake();
    cmd.arg("--lake")
        .arg(lake)
        .args(["query", sql, "--format", "csv"]);
    cmd
}

/// The CSV rows of a query, without the header.
fn csv(lake: &Path, sql: &str) -> Vec<String> {
    let out = run_ok(&mut query(lake, sql));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect()
}

fn stream(lake: &Path, file: &Path, hub: &str) {
    run_ok(
        vitalake()
            .arg("--lake")
            .arg(lake)
            .args(["stream", "--hub", hub, "--rules", RULES, "--alerts"])
            .arg(format!(
                "file:{}",
                lake.with_extension("alerts.ndjson").display()
            ))
            .arg("--source")
            .arg(format!("file:{}", file.display())),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn query_reads_every_layer_and_refuses_writes() {
    let (dir, lake) = temp_lake();
    let lake_path = dir.path().join("lake");
    ingest_sample_drop(&lake_path);
    stream(
        &lake_path,
        &Path::new(SAMPLES).join("stream/observations.ndjson"),
        "observations",
    );

    let tables = csv(
        &lake_path,
        "SELECT table_schema || '.' || table_name FROM information_schema.tables WHERE table_schema IN ('bronze', 'silver') ORDER BY 1",
    );
    for expected in [
        "bronze.patient",
        "bronze.eventhubs_observations",
        "silver.blood_pressure",
        "silver.alerts",
        "silver.quarantine",
    ] {
        assert!(
            tables.iter().any(|t| t == expected),
            "{expected} not in {tables:?}"
        );
    }
    for (sql_name, path) in [
        ("bronze.patient", "bronze/fhir/Patient"),
        ("silver.blood_pressure", "silver/fhir/blood_pressure"),
        ("silver.alerts", "silver/alerts"),
    ] {
        let n = csv(&lake_path, &format!("SELECT count(*) FROM {sql_name}"));
        assert_eq!(n, vec![count(&lake, path).await.to_string()], "{sql_name}");
    }
    let json_out = run_ok(vitalake().arg("--lake").arg(&lake_path).args([
        "query",
        "SELECT rule_id, count(*) AS n FROM silver.alerts WHERE status = 'raised' GROUP BY rule_id ORDER BY rule_id",
        "--format",
        "json",
    ]));
    let first: Value = serde_json::from_str(
        String::from_utf8_lossy(&json_out.stdout)
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert!(
        first["rule_id"].is_string() && first["n"].as_i64().unwrap() > 0,
        "{first}"
    );

    let before = count(&lake, "silver/alerts").await;
    for write in [
        "INSERT INTO silver.alerts (id) VALUES ('x')",
        "DELETE FROM silver.alerts",
        "DROP TABLE silver.alerts",
        "CREATE TABLE gold.x AS SELECT 1",
    ] {
        let out = query(&lake_path, write).output().unwrap();
        assert!(!out.status.success(), "{write} was accepted");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("not supported"),
            "{write}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(count(&lake, "silver/alerts").await, before);

    // A query that fails says what is wrong once (DataFusion's message already holds its causes).
    let out = query(&lake_path, "SELECT nope FROM silver.patient")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("No field named nope").count(), 1, "{stderr}");
}

fn bp(patient: &str, id: &str, time: &str, systolic: f64, diastolic: f64) -> String {
    json!({
        "resourceType": "Observation", "id": id, "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": time,
        "component": [
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
             "valueQuantity": {"value": systolic, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
             "valueQuantity": {"value": diastolic, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}
        ]
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn gold_tables_match_answers_computed_by_hand() {
    let (dir, lake) = temp_lake();
    let lake_path = dir.path().join("lake");
    let patients = dir.path().join("patients.ndjson");
    std::fs::write(
        &patients,
        [
            json!({"resourceType": "Patient", "id": "gold-a", "gender": "female", "birthDate": "1950-04-02", "address": [{"city": "Leiden", "country": "NL"}]}),
            json!({"resourceType": "Patient", "id": "gold-b", "gender": "male", "birthDate": "1961-09-30"}),
        ]
        .map(|p| p.to_string() + "\n")
        .concat(),
    )
    .unwrap();
    run_ok(
        vitalake()
            .arg("--lake")
            .arg(&lake_path)
            .args(["ingest", "fhir"])
            .arg(&patients),
    );
    let readings = dir.path().join("readings.ndjson");
    std::fs::write(
        &readings,
        [
            bp("gold-a", "a1", "2026-11-01T08:00:00Z", 120.0, 80.0),
            bp("gold-a", "a2", "2026-11-01T12:00:00Z", 130.0, 85.0),
            bp("gold-a", "a3", "2026-11-01T18:00:00Z", 140.0, 95.0),
            bp("gold-a", "a4", "2026-11-02T07:00:00Z", 185.0, 125.0),
            bp("gold-a", "a5", "2026-11-02T07:04:00Z", 190.0, 118.0),
            bp("gold-b", "b1", "2026-11-01T09:00:00Z", 110.0, 70.0),
        ]
        .map(|l| l + "\n")
        .concat(),
    )
    .unwrap();
    stream(&lake_path, &readings, "observations");
    stream(
        &lake_path,
        &Path::new(SAMPLES).join("stream/pharmacy.ndjson"),
        "pharmacy",
    );
    run_ok(
        vitalake()
            .arg("--lake")
            .arg(&lake_path)
            .args(["refresh", "gold"]),
    );

    // patient_bp_daily: a's first day 120/80, 130/85, 140/95: means 130 / 86.67, stage 1.
    let daily = rows(&lake, "gold/patient_bp_daily", "SELECT patient_id, CAST(day AS VARCHAR) AS d, readings, systolic_min, systolic_max, systolic_mean, round(diastolic_mean, 2), category FROM t ORDER BY patient_id, d").await;
    let expected: Vec<Vec<&str>> = vec![
        vec![
            "gold-a",
            "2026-11-01",
            "3",
            "120.0",
            "140.0",
            "130.0",
            "86.67",
            "stage 1 hypertension",
        ],
        vec![
            "gold-a",
            "2026-11-02",
            "2",
            "185.0",
            "190.0",
            "187.5",
            "121.5",
            "hypertensive crisis",
        ],
        vec![
            "gold-b",
            "2026-11-01",
            "1",
            "110.0",
            "110.0",
            "110.0",
            "70.0",
            "normal",
        ],
    ];
    assert_eq!(daily, expected);

    // alerts_daily: the crisis on the 2nd (one patient with readings that day), sent once.
    let crisis = rows(&lake, "gold/alerts_daily", "SELECT CAST(day AS VARCHAR), raised, raised_not_sent, patients_affected, patient_days, alerts_per_patient_day FROM t WHERE rule_id = 'hypertensive-crisis'").await;
    assert_eq!(crisis, vec![vec!["2026-11-02", "1", "0", "1", "1", "1.0"]]);
    // ... and the stage 2 alert it inhibited (140/95 on the 1st and both readings of the 2nd).
    let stage2 = rows(
        &lake,
        "gold/alerts_daily",
        "SELECT raised, raised_not_sent FROM t WHERE rule_id = 'stage2-hypertension-sustained'",
    )
    .await;
    assert_eq!(stage2, vec![vec!["0", "1"]]);

    let summary = rows(&lake, "gold/patient_clinical_summary", "SELECT patient_id, gender, country, latest_systolic, latest_diastolic, latest_category, last_alert_rule, readings, alerts FROM t ORDER BY patient_id").await;
    assert_eq!(
        summary,
        vec![
            vec![
                "gold-a",
                "female",
                "NL",
                "190.0",
                "118.0",
                "hypertensive crisis",
                "hypertensive-crisis",
                "5",
                "2"
            ],
            vec![
                "gold-b", "male", "", "110.0", "70.0", "normal", "", "1", "0"
            ],
        ]
    );

    // medicine_distribution_daily against the pharmacy file, summed here.
    let mut by_code_day: BTreeMap<(String, String), f64> = BTreeMap::new();
    let text = std::fs::read_to_string(Path::new(SAMPLES).join("stream/pharmacy.ndjson")).unwrap();
    for line in text.lines() {
        let d: Value = serde_json::from_str(line).unwrap();
        let code = d["medicationCodeableConcept"]["coding"][0]["code"]
            .as_str()
            .unwrap()
            .to_string();
        let day = d["whenHandedOver"].as_str().unwrap()[..10].to_string();
        *by_code_day.entry((code, day)).or_default() += d["quantity"]["value"].as_f64().unwrap();
    }
    let medicine = rows(
        &lake,
        "gold/medicine_distribution_daily",
        "SELECT ndc_code, CAST(day AS VARCHAR) AS d, quantity FROM t ORDER BY ndc_code, d",
    )
    .await;
    let expected: Vec<Vec<String>> = by_code_day
        .into_iter()
        .map(|((code, day), q)| vec![code, day, format!("{q:?}")])
        .collect();
    assert_eq!(medicine, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_runs_on_a_fresh_lake_and_a_second_run_adds_nothing() {
    let (dir, lake) = temp_lake();
    let lake_path = dir.path().join("lake");
    let demo = || {
        let out = run_ok(
            vitalake()
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .arg("--lake")
                .arg(&lake_path)
                .arg("demo"),
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let first = demo();
    for expected in [
        "hypertensive-crisis",
        "Quarantine, by first reason",
        "gold.patient_bp_daily",
        "Hospital databases: skipped",
        "Encounters by class",
        "silver.encounter",
        "gold.hospital_utilization_daily",
        "ICD-10-CM chapters loaded",
    ] {
        assert!(first.contains(expected), "{expected} not in:\n{first}");
    }
    let alerts = count(&lake, "silver/alerts").await;
    let readings = count(&lake, "silver/fhir/blood_pressure").await;
    assert!(alerts > 0 && readings > 0);
    let encounters = count(&lake, "silver/fhir/encounter").await;
    assert_eq!(
        encounters, 14,
        "the two Synthea records in samples/ehr have 7 encounters each"
    );
    assert!(lake_path.join("alerts.ndjson").exists());
    demo();
    assert_eq!(count(&lake, "silver/alerts").await, alerts);
    assert_eq!(count(&lake, "silver/fhir/blood_pressure").await, readings);
    assert_eq!(count(&lake, "silver/fhir/encounter").await, encounters);
    assert_eq!(count(&lake, "silver/terminology/concepts").await, 22);
    assert!(count(&lake, "gold/patient_clinical_summary").await > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_hospital_overview_joins_the_databases_with_fhir() {
    use crate::servers::{PASSWORD, Server};
    let mariadb = Server::mariadb();
    mariadb.load(&Path::new(SAMPLES).join("ikhospital/mysql.sql"));
    let (dir, lake) = temp_lake();
    let lake_path = dir.path().join("lake");
    run_ok(
        vitalake()
            .arg("--lake")
            .arg(&lake_path)
            .args(["ingest", "db", "--source", &mariadb.url()])
            .env(mariadb.password_var(), PASSWORD),
    );
    ingest_sample_drop(&lake_path);
    on_lake(&lake_path, &["refresh", "gold", "hospital_overview"]);
    let gold = |section: &str| -> Vec<String> {
        let mut lines = csv(
            &lake_path,
            &format!(
                "SELECT name, coalesce(CAST(day AS VARCHAR), CAST(weekday AS VARCHAR)), value FROM gold.hospital_overview WHERE section = '{section}' AND source = 'ikhospital'"
            ),
        );
        lines.sort();
        lines
    };
    // The same answers, computed by the source database itself.
    let source = |sql: &str| -> Vec<String> {
        let mut lines: Vec<String> = mariadb
            .sql(sql)
            .lines()
            .map(|l| l.replace('\t', ","))
            .collect();
        lines.sort();
        lines
    };
    let events = source(
        "SELECT s.name, DATE(e.occurred_at), COUNT(*) FROM events e JOIN specialties s ON s.id = e.specialty_id GROUP BY 1, 2",
    );
    assert!(events.len() > 20, "{events:?}");
    assert_eq!(gold("events by specialty"), events);
    assert_eq!(
        gold("doctors per shift"),
        source(
            "SELECT sh.name, ds.weekday, COUNT(DISTINCT ds.doctor_id) FROM doctor_shifts ds JOIN shifts sh ON sh.id = ds.shift_id JOIN doctors d ON d.id = ds.doctor_id WHERE d.active = 1 GROUP BY 1, 2"
        )
    );
    assert_eq!(
        gold("patients by country"),
        source(
            "SELECT c.name, '', COUNT(*) FROM patients p JOIN countries c ON c.code = p.country GROUP BY 1"
        )
    );
    // Every FHIR patient is counted once, under a country or `unknown`.
    let fhir: u64 = csv(
        &lake_path,
        "SELECT sum(value) FROM gold.hospital_overview WHERE section = 'patients by country' AND source = 'fhir'",
    )[0]
    .parse()
    .unwrap();
    assert_eq!(fhir, count(&lake, "silver/fhir/patient").await);
}

/// The gold tables that declare a key, so refresh incrementally.
const INCREMENTAL: [&str; 4] = [
    "patient_bp_daily",
    "alerts_daily",
    "medicine_distribution_daily",
    "patient_clinical_summary",
];

/// Every incremental gold table's rows, sorted, as CSV lines.
fn gold_rows(lake: &Path) -> BTreeMap<String, Vec<String>> {
    INCREMENTAL
        .iter()
        .map(|t| {
            let mut rows = csv(lake, &format!("SELECT * FROM gold.{t}"));
            rows.sort();
            (t.to_string(), rows)
        })
        .collect()
}

fn refresh_report(lake: &Path, extra: &[&str]) -> BTreeMap<String, Value> {
    let mut args = vec!["refresh", "gold", "--json"];
    args.extend_from_slice(extra);
    let out = on_lake(lake, &args);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["table"].as_str().unwrap().to_string(), t.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_incremental_refresh_gives_what_a_full_one_gives() {
    let (dir, _lake) = temp_lake();
    let lake_path = dir.path().join("lake");
    ingest_sample_drop(&lake_path);
    // The sample stream in two parts: the first before the first refresh, the rest after it,
    // with a corrected version of a reading the first part landed (its day's aggregate changes).
    let lines: Vec<String> =
        std::fs::read_to_string(format!("{SAMPLES}/stream/observations.ndjson"))
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
    let (first, rest) = lines.split_at(lines.len() * 2 / 3);
    let part = |name: &str, lines: &[String]| {
        let path = dir.path().join(name);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path
    };
    stream(&lake_path, &part("first.ndjson", first), "observations");
    let pharmacy = Path::new(SAMPLES).join("stream/pharmacy.ndjson");
    stream(&lake_path, &pharmacy, "pharmacy");
    let report = refresh_report(&lake_path, &[]);
    assert!(report.values().all(|t| t["mode"] == "full"), "{report:?}");

    let mut corrected: Value = serde_json::from_str(
        first
            .iter()
            .find(|l| l.contains("\"85354-9\""))
            .expect("a blood-pressure panel"),
    )
    .unwrap();
    corrected["meta"]["versionId"] = json!("2");
    corrected["meta"]["lastUpdated"] = json!("2026-11-03T00:00:00Z");
    corrected["component"][0]["valueQuantity"]["value"] = json!(199);
    let mut second = rest.to_vec();
    second.push(corrected.to_string());
    stream(&lake_path, &part("second.ndjson", &second), "observations");

    let report = refresh_report(&lake_path, &[]);
    for table in [
        "patient_bp_daily",
        "alerts_daily",
        "patient_clinical_summary",
    ] {
        assert_eq!(report[table]["mode"], "incremental", "{report:?}");
        assert!(report[table]["keys"].as_u64().unwrap() > 0, "{report:?}");
    }
    // No new pharmacy events: nothing to recompute.
    assert_eq!(report["medicine_distribution_daily"]["keys"], 0);
    let incremental = gold_rows(&lake_path);
    assert!(
        incremental["patient_bp_daily"]
            .iter()
            .any(|r| r.contains("199"))
    );

    let report = refresh_report(&lake_path, &["--full"]);
    assert!(report.values().all(|t| t["mode"] == "full"));
    assert_eq!(gold_rows(&lake_path), incremental);
    // And with nothing new, a refresh recomputes nothing.
    let report = refresh_report(&lake_path, &[]);
    for table in INCREMENTAL {
        assert_eq!(report[table]["keys"], 0, "{report:?}");
    }
}
