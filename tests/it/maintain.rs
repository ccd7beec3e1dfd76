//! `vitalake maintain`: fewer files, the same query results, exactly-once bookkeeping intact, and
//! VACUUM's retention guarded.

use std::path::Path;

use serde_json::Value;

use crate::common::{ingest_sample_drop, on_lake, rows, temp_lake, vitalake};

const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/samples");

fn stream_in_small_batches(lake: &Path) {
    let source = format!("file:{SAMPLES}/stream/observations.ndjson");
    on_lake(
        lake,
        &[
            "stream",
            "--hub",
            "observations",
            "--batch-events",
            "200",
            "--source",
            &source,
        ],
    );
}

/// Answers that must not change: per-patient counts and sums, and a row-level fingerprint.
async fn answers(lake: &vitalake::lake::Lake) -> Vec<Vec<Vec<String>>> {
    let mut out = Vec::new();
    for (table, sql) in [
        (
            "silver/fhir/blood_pressure",
            "SELECT patient_id, count(*), sum(systolic), min(effective_time), max(id) FROM t GROUP BY patient_id ORDER BY patient_id",
        ),
        (
            "bronze/eventhubs/observations",
            "SELECT count(*), count(DISTINCT sequence_number), sum(length(body)) FROM t",
        ),
        (
            "silver/fhir/patient",
            "SELECT id, version_id FROM t ORDER BY id",
        ),
    ] {
        out.push(rows(lake, table, sql).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn maintain_compacts_and_vacuums_without_changing_answers() {
    let (dir, lake) = temp_lake();
    let lake_path = dir.path().join("lake");
    ingest_sample_drop(&lake_path);
    stream_in_small_batches(&lake_path);
    let before = answers(&lake).await;
    assert!(!before[0].is_empty());

    // Under a day without --force: refused, exit code 2, nothing touched.
    let refused = vitalake()
        .arg("--lake")
        .arg(&lake_path)
        .args(["maintain", "--retention", "1h"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--force"));

    let out = on_lake(
        &lake_path,
        &["maintain", "--retention", "0h", "--force", "--json"],
    );
    let report: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let table = |path: &str| {
        report
            .iter()
            .find(|t| t["table"] == path)
            .unwrap_or_else(|| panic!("{path} not in the report"))
            .clone()
    };
    let bp = table("silver/fhir/blood_pressure");
    assert!(
        bp["files_before"].as_u64().unwrap() > 1,
        "the stream wrote one file: {bp}"
    );
    assert!(
        bp["files_after"].as_u64() < bp["files_before"].as_u64(),
        "{bp}"
    );
    assert_eq!(bp["zorder"], serde_json::json!(["patient_id"]));
    assert!(bp["vacuumed"].as_u64().unwrap() > 0, "{bp}");
    assert!(report.iter().all(|t| t["error"].is_null()), "{report:?}");
    // The files VACUUM deleted are gone from storage, and the log has a checkpoint.
    let bp_dir = lake_path.join("silver/fhir/blood_pressure");
    let parquet = std::fs::read_dir(&bp_dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("parquet".as_ref()))
        .count() as u64;
    assert_eq!(parquet, bp["files_after"].as_u64().unwrap());
    assert!(
        std::fs::read_dir(bp_dir.join("_delta_log"))
            .unwrap()
            .any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".checkpoint."))
    );

    assert_eq!(answers(&lake).await, before);
    // The stream's exactly-once bookkeeping survived the rewrite: a replay adds nothing.
    stream_in_small_batches(&lake_path);
    assert_eq!(answers(&lake).await, before);
}
