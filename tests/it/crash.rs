//! Kill `vitalake ingest fhir` with SIGKILL at random moments, run it again, and compare every table
//! with one clean run: nothing lost, nothing doubled, no half-written commit.

use std::time::Instant;

use vitalake::lake::Lake;

use crate::common::{generate, rows, vitalake};

/// Everything but the run-specific columns (batch id, times), in a stable order.
async fn snapshot(lake: &Lake) -> Vec<(String, Vec<Vec<String>>)> {
    let mut tables = lake.list_tables("bronze/fhir").await.unwrap();
    tables.push("silver/quarantine".into());
    let mut out = Vec::new();
    for table in tables {
        let sql = if table == "silver/quarantine" {
            "SELECT source_uri, line, json_path, md5(raw) FROM t ORDER BY 1, 2, 3"
        } else {
            "SELECT source_uri, line, json_path, resource_id, md5(raw) FROM t ORDER BY 1, 2, 3"
        };
        out.push((table.clone(), rows(lake, &table, sql).await));
    }
    // Silver: every view table and the version index, without the run's own bookkeeping.
    let mut silver = lake.list_tables("silver/fhir").await.unwrap();
    silver.extend(lake.list_tables("silver/versions").await.unwrap());
    assert!(silver.len() >= 5, "silver tables written: {silver:?}");
    for table in silver {
        let sql = if table.ends_with("patient_history") {
            "SELECT * FROM t"
        } else {
            "SELECT * EXCLUDE (_batch_id, _ingest_order) FROM t"
        };
        let mut all = rows(lake, &table, sql).await;
        all.sort();
        out.push((table, all));
    }
    let log = rows(
        lake,
        "bronze/ingest_log",
        "SELECT source_uri, source_sha256, status, resources, quarantined FROM t ORDER BY 1",
    )
    .await;
    out.push(("bronze/ingest_log".into(), log));
    out
}

fn ingest(lake: &std::path::Path, drop: &std::path::Path) -> std::process::Command {
    let mut cmd = vitalake();
    cmd.args(["ingest", "fhir", "--lake"]).arg(lake).arg(drop);
    // Small chunks: many commits, so a kill lands between, inside and after them.
    cmd.env("VITALAKE_INGEST_CHUNK_RECORDS", "700")
        .env("VITALAKE_LOG", "warn");
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    cmd
}

#[tokio::test]
async fn sigkill_mid_ingest_then_rerun_equals_one_clean_run() {
    let dir = tempfile::tempdir().unwrap();
    let drop = generate(dir.path(), 300, 21, &["--invalid", "--readings", "8"]);

    let clean = dir.path().join("clean");
    let started = Instant::now();
    assert!(ingest(&clean, &drop).status().unwrap().success());
    let clean_run = started.elapsed();

    let crashed = dir.path().join("crashed");
    // A fixed seed keeps failures reproducible; the moments still spread over the whole run.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut kills = 0;
    for round in 0..5 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let fraction = (state >> 33) as f64 / (1u64 << 31) as f64;
        // Early in the run, so later rounds (which first roll back) are interrupted too.
        let delay = clean_run.mul_f64(0.05 + 0.55 * fraction);
        let mut child = ingest(&crashed, &drop).spawn().unwrap();
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
        eprintln!("round {round}: killed after {delay:?}");
    }
    assert!(
        kills >= 3,
        "most rounds must actually interrupt a run ({kills} did)"
    );
    assert!(ingest(&crashed, &drop).status().unwrap().success());

    let clean_lake = Lake::open(clean.to_str().unwrap()).unwrap();
    let crashed_lake = Lake::open(crashed.to_str().unwrap()).unwrap();
    let (expected, got) = (snapshot(&clean_lake).await, snapshot(&crashed_lake).await);
    assert!(expected.iter().map(|(_, r)| r.len()).sum::<usize>() > 3000);
    for ((name, want), (got_name, have)) in expected.iter().zip(&got) {
        assert_eq!(name, got_name);
        assert_eq!(want.len(), have.len(), "{name}: row count");
        assert!(want == have, "{name}: contents differ");
    }
    assert_eq!(expected.len(), got.len());
}
