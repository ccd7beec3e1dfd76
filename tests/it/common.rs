//! Helpers shared by the integration tests: temporary lakes, running ingest in-process or as the
//! real binary, and reading tables back with SQL.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use deltalake::arrow::util::display::array_value_to_string;
use vitalake::config::IngestConfig;
use vitalake::ingest::{IngestOptions, IngestReport, ingest_fhir};
use vitalake::lake::{Lake, read};

/// `../shared/fhir/<rel>` from the project root.
pub fn shared_fhir(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fhir")
        .join(rel);
    assert!(
        path.exists(),
        "missing shared FHIR material {}",
        path.display()
    );
    path.display().to_string()
}

pub fn temp_lake() -> (tempfile::TempDir, Lake) {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(&dir.path().join("lake").display().to_string()).unwrap();
    (dir, lake)
}

pub async fn ingest(lake: &Lake, paths: &[&str]) -> IngestReport {
    let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
    ingest_fhir(
        lake,
        &paths,
        IngestOptions::from_config(&IngestConfig::default()),
    )
    .await
    .unwrap()
}

/// Rows of `sql` over `table` (registered as `t`), every value rendered as text ("" for null).
pub async fn rows(lake: &Lake, table: &str, sql: &str) -> Vec<Vec<String>> {
    let Some(handle) = lake.existing_table(table).await.unwrap() else {
        return Vec::new();
    };
    let batches = read::query(&handle, table, sql).await.unwrap();
    let mut out = Vec::new();
    for batch in batches {
        for row in 0..batch.num_rows() {
            out.push(
                batch
                    .columns()
                    .iter()
                    .map(|c| {
                        if c.is_null(row) {
                            String::new()
                        } else {
                            array_value_to_string(c, row).unwrap()
                        }
                    })
                    .collect(),
            );
        }
    }
    out
}

pub async fn count(lake: &Lake, table: &str) -> u64 {
    rows(lake, table, "SELECT COUNT(*) FROM t")
        .await
        .first()
        .map_or(0, |r| r[0].parse().unwrap())
}

/// The `vitalake` binary built with these tests.
pub fn vitalake() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vitalake"))
}

/// `vitalake --lake LAKE ARGS...`, which must succeed.
pub fn on_lake(lake: &Path, args: &[&str]) -> Output {
    run_ok(vitalake().arg("--lake").arg(lake).args(args))
}

/// The sample drop (`samples/drop`) ingested into `lake` by the binary.
pub fn ingest_sample_drop(lake: &Path) {
    on_lake(
        lake,
        &[
            "ingest",
            "fhir",
            concat!(env!("CARGO_MANIFEST_DIR"), "/samples/drop"),
        ],
    );
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn generate(dir: &Path, patients: usize, seed: u64, extra: &[&str]) -> PathBuf {
    let out = dir.join(format!("drop-{seed}"));
    run_ok(
        vitalake()
            .args([
                "generate",
                "fhir",
                "--patients",
                &patients.to_string(),
                "--seed",
                &seed.to_string(),
                "--out",
            ])
            .arg(&out)
            .args(extra),
    );
    out
}
