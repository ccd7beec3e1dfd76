//! `ingest fhir` on real material: the official R4 examples, Synthea bundles and Bulk-Data NDJSON
//! from `../shared/fhir`, and generated drops.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::common::{count, generate, ingest, rows, run_ok, shared_fhir, temp_lake, vitalake};

/// Counts resources by type straight from the files, independently of vitalake's decoder:
/// Bundles (any type, nested too) count their entries; an entry `DELETE Type/id` counts as
/// "delete Type", any other entry without a resource as "".
fn count_input(path: &Path, counts: &mut BTreeMap<String, u64>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            count_input(&entry.unwrap().path(), counts);
        }
        return;
    }
    let text = std::fs::read_to_string(path).unwrap();
    if path.extension().is_some_and(|e| e == "ndjson") {
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            count_value(&serde_json::from_str(line).unwrap(), counts);
        }
    } else {
        count_value(&serde_json::from_str(&text).unwrap(), counts);
    }
}

fn count_value(value: &Value, counts: &mut BTreeMap<String, u64>) {
    match (value["resourceType"].as_str(), value["entry"].as_array()) {
        (Some("Bundle"), Some(entries)) => {
            for entry in entries {
                let delete = entry["request"]["url"]
                    .as_str()
                    .filter(|url| entry["request"]["method"] == "DELETE" && !url.contains('?'));
                match (entry.get("resource"), delete) {
                    (Some(resource), _) => count_value(resource, counts),
                    (None, Some(url)) => {
                        let resource_type = url.split('/').next().unwrap();
                        *counts.entry(format!("delete {resource_type}")).or_default() += 1
                    }
                    (None, None) => *counts.entry(String::new()).or_default() += 1,
                }
            }
        }
        (Some(resource_type), _) => *counts.entry(resource_type.to_string()).or_default() += 1,
        (None, _) => panic!("input without resourceType"),
    }
}

#[tokio::test]
async fn official_examples_synthea_and_bulk_data_reconcile() {
    let inputs = [shared_fhir("synthea"), shared_fhir("r4/examples")];
    let mut expected = BTreeMap::new();
    for input in &inputs {
        count_input(Path::new(input), &mut expected);
    }
    let without_resource = expected.remove("").unwrap_or(0);
    let deletes: BTreeMap<String, u64> = expected
        .iter()
        .filter_map(|(k, n)| Some((k.strip_prefix("delete ")?.to_string(), *n)))
        .collect();
    expected.retain(|k, _| !k.starts_with("delete "));
    assert_eq!(
        deletes.values().sum::<u64>(),
        1,
        "the transaction example deletes Patient/234"
    );

    let (_dir, lake) = temp_lake();
    let report = ingest(&lake, &[&inputs[0], &inputs[1]]).await;

    // Every official example and Synthea resource is valid R4: all land in bronze, per type, and
    // each delete entry beside them as a delete event.
    assert_eq!(report.stats.resources_by_type, expected);
    assert_eq!(report.stats.delete_events, 1);
    for (resource_type, n) in &expected {
        assert_eq!(
            count(&lake, &format!("bronze/fhir/{resource_type}")).await,
            n + deletes.get(resource_type).copied().unwrap_or(0),
            "{resource_type}"
        );
    }
    // What is quarantined is exactly the entries that carry no resource and delete nothing by id.
    let rules = rows(
        &lake,
        "silver/quarantine",
        "SELECT errors[1]['rule'], COUNT(*) FROM t GROUP BY 1",
    )
    .await;
    let expected_rules: Vec<Vec<String>> = if without_resource > 0 {
        vec![vec!["bundle-entry".into(), without_resource.to_string()]]
    } else {
        vec![]
    };
    assert_eq!(rules, expected_rules);
    assert!(expected["Observation"] > 1000 && expected["Patient"] >= 12 + 13);
}

#[tokio::test]
async fn bronze_keeps_raw_json_and_provenance() {
    let (_dir, lake) = temp_lake();
    let bulk = shared_fhir("synthea/bulk10-Patient.000.ndjson");
    ingest(&lake, &[&bulk]).await;
    let bytes = std::fs::read(&bulk).unwrap();
    let sha = hex::encode(Sha256::digest(&bytes));
    let first_line = std::str::from_utf8(&bytes).unwrap().lines().next().unwrap();
    let first: Value = serde_json::from_str(first_line).unwrap();
    let got = rows(
        &lake,
        "bronze/fhir/Patient",
        "SELECT resource_id, source_sha256, raw, json_path, version_id, batch_id FROM t WHERE line = 1",
    )
    .await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0][0], first["id"].as_str().unwrap());
    assert_eq!(got[0][1], sha);
    assert_eq!(got[0][2], first_line, "bronze keeps the line byte for byte");
    assert_eq!(got[0][3], "$");
    assert_eq!(got[0][4], first["meta"]["versionId"].as_str().unwrap_or(""));
    let runs = rows(
        &lake,
        "bronze/ingest_runs",
        "SELECT event FROM t WHERE batch_id = '{}' ORDER BY at",
    )
    .await;
    assert!(runs.is_empty(), "placeholder batch id matches nothing");
    let runs = rows(
        &lake,
        "bronze/ingest_runs",
        &format!(
            "SELECT event FROM t WHERE batch_id = '{}' ORDER BY at",
            got[0][5]
        ),
    )
    .await;
    assert_eq!(runs, [["started"], ["finished"]]);
}

#[tokio::test]
async fn bundle_entries_keep_their_index_and_full_url() {
    let (_dir, lake) = temp_lake();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("b.json");
    std::fs::write(
        &file,
        r#"{"resourceType":"Bundle","type":"document","entry":[
            {"fullUrl":"urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a","resource":{"resourceType":"Patient"}},
            {"fullUrl":"http://example.org/fhir/Patient/p2","resource":{"resourceType":"Patient","id":"p2","meta":{"versionId":"4","lastUpdated":"2026-01-02T03:04:05.678+01:00"}}}]}"#,
    )
    .unwrap();
    ingest(&lake, &[file.to_str().unwrap()]).await;
    let got = rows(&lake, "bronze/fhir/Patient", "SELECT entry_index, full_url, resource_id, version_id, last_updated FROM t ORDER BY entry_index").await;
    assert_eq!(
        got[0][..3],
        ["0", "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a", ""]
    );
    assert_eq!(
        got[1][..4],
        ["1", "http://example.org/fhir/Patient/p2", "p2", "4"]
    );
    assert!(
        got[1][4].starts_with("2026-01-02T02:04:05.678"),
        "lastUpdated in UTC: {}",
        got[1][4]
    );
}

#[tokio::test]
async fn a_generated_drop_lands_once_and_a_rerun_skips_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let drop = generate(dir.path(), 30, 11, &["--invalid", "--gzip"]);
    let (_lake_dir, lake) = temp_lake();
    let first = ingest(&lake, &[drop.to_str().unwrap()]).await;
    let resources: u64 = first.stats.resources_by_type.values().sum();
    assert!(resources > 300, "{resources}");
    assert_eq!(first.bronze_rows, resources);
    assert_eq!(
        first.quarantine_rows, 7,
        "the generator's seven invalid records"
    );
    let files = first.stats.files_read;

    let second = ingest(&lake, &[drop.to_str().unwrap()]).await;
    assert_eq!(second.stats.files_skipped.len() as u64, files);
    assert_eq!((second.bronze_rows, second.quarantine_rows), (0, 0));
    let bronze: u64 = {
        let mut n = 0;
        for t in ["Patient", "Observation", "MedicationDispense"] {
            n += count(&lake, &format!("bronze/fhir/{t}")).await;
        }
        n
    };
    assert_eq!(bronze, resources);
    assert_eq!(count(&lake, "silver/quarantine").await, 7);
    assert_eq!(count(&lake, "bronze/ingest_log").await, files);
}

#[tokio::test]
async fn the_cli_prints_a_report_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let drop = generate(dir.path(), 8, 5, &["--invalid"]);
    let lake = dir.path().join("lake");
    let out = run_ok(
        vitalake()
            .args(["ingest", "fhir", "--json", "--lake"])
            .arg(&lake)
            .arg(&drop),
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["quarantine_rows"], 7);
    assert_eq!(report["quarantined_by_rule"]["resourceType"], 2);
    assert!(report["resources_by_type"]["Observation"].as_u64().unwrap() > 0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("family") && !stderr.contains("birthDate"),
        "no PHI in logs: {stderr}"
    );

    let text = run_ok(
        vitalake()
            .args(["ingest", "fhir", "--lake"])
            .arg(&lake)
            .arg(&drop),
    );
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("skipped (already ingested)"), "{text}");

    let missing = vitalake()
        .args(["ingest", "fhir", "--lake"])
        .arg(&lake)
        .arg(dir.path().join("nope"))
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nope"));
}

/// The seam profile validation plugs into: a check's error sends the resource to quarantine with
/// the check's issues; a warning does not block.
#[tokio::test]
async fn checks_given_to_ingest_decide_quarantine() {
    use std::sync::Arc;
    use vitalake::issue::{Issue, Severity};

    struct NoUnknownGender;
    impl vitalake::validate::Check for NoUnknownGender {
        fn check(&self, resource_type: &str, resource: &Value) -> Vec<Issue> {
            let gender = &resource["gender"];
            match (resource_type, gender.as_str()) {
                ("Patient", Some("unknown")) => vec![Issue::error(
                    "test-gender",
                    "Patient.gender",
                    "gender unknown",
                )],
                ("Patient", None) => vec![Issue {
                    severity: Severity::Warning,
                    ..Issue::error("test-gender", "Patient", "no gender")
                }],
                _ => vec![],
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.ndjson");
    std::fs::write(
        &file,
        "{\"resourceType\":\"Patient\",\"id\":\"a\",\"gender\":\"unknown\"}\n{\"resourceType\":\"Patient\",\"id\":\"b\"}\n",
    )
    .unwrap();
    let (_lake_dir, lake) = temp_lake();
    let mut options = vitalake::ingest::IngestOptions::from_config(&Default::default());
    options.checks = vec![Arc::new(NoUnknownGender)];
    vitalake::ingest::ingest_fhir(&lake, &[file.display().to_string()], options)
        .await
        .unwrap();
    assert_eq!(
        rows(&lake, "bronze/fhir/Patient", "SELECT resource_id FROM t").await,
        [["b"]]
    );
    let q = rows(
        &lake,
        "silver/quarantine",
        "SELECT resource_id, errors[1]['rule'], errors[1]['location'] FROM t",
    )
    .await;
    assert_eq!(q, [["a", "test-gender", "Patient.gender"]]);
}

/// Two ingests on one local lake: the second is refused while the first holds the lake's lock,
/// with the holder named, and nothing it would have rolled back is touched.
#[tokio::test]
async fn a_second_ingest_on_a_local_lake_names_the_run_holding_it() {
    let (dir, lake) = temp_lake();
    let drop = generate(dir.path(), 3, 5, &[]);
    let lease = vitalake::lake::Lease::acquire(&lake, vitalake::ingest::INGEST_LEASE, "ingest")
        .await
        .unwrap();
    let refused = vitalake()
        .args(["ingest", "fhir", "--lake"])
        .arg(lake.local_path().unwrap())
        .arg(&drop)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is in use")
            && stderr.contains(&format!(
                "`vitalake ingest` (pid {} on ",
                std::process::id()
            )),
        "{stderr}"
    );
    assert_eq!(
        lake.existing_table("bronze/ingest_log")
            .await
            .unwrap()
            .map(|t| t.version()),
        None
    );
    lease.release().await;
    let report = ingest(&lake, &[drop.to_str().unwrap()]).await;
    assert_eq!(report.stats.resources_by_type["Patient"], 3);
}
