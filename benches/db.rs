//! `cargo bench --bench db`: database extraction against each server's own export, same run.
//!
//! Starts throwaway PostgreSQL and MariaDB servers (as the tests do), fills a table of
//! `VITALAKE_BENCH_DB_ROWS` (default 5,000,000) blood-pressure-like rows in each, then times:
//! - the native export to /dev/null: `psql -c "COPY readings TO STDOUT"` and
//!   `mariadb --quick -e "SELECT * FROM readings"`;
//! - `vitalake ingest db --full` of that table into a new lake (bronze and silver), the release
//!   binary in a child process, with its peak RSS (VmHWM) sampled;
//! - the same again into that lake: a full re-extraction, whose silver step is a MERGE over every
//!   row (unchanged rows are matched, not rewritten) plus the deleted-row check.
//!
//! The export and the first extraction run twice each and the faster run is kept (the first warms
//! the server's cache for both).

#[allow(dead_code)]
mod support;

#[path = "../tests/it/servers.rs"]
#[allow(dead_code)]
mod servers;

use std::process::{Command, Stdio};
use std::time::Instant;

use servers::{Engine, PASSWORD, Server};

fn main() {
    let rows: u64 = std::env::var("VITALAKE_BENCH_DB_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000_000);
    println!(
        "| database | rows | native export | rows/s | vitalake ingest db | rows/s | ratio | peak RSS | full re-extraction (MERGE) | peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for engine in [Engine::Postgres, Engine::MariaDb] {
        let server = match engine {
            Engine::Postgres => Server::postgres(),
            Engine::MariaDb => Server::mariadb(),
        };
        let started = Instant::now();
        fill(&server, rows);
        eprintln!(
            "{engine:?}: {rows} rows loaded in {:.0} s",
            started.elapsed().as_secs_f64()
        );
        let native = (0..2)
            .map(|_| native_export(&server))
            .fold(f64::MAX, f64::min);
        let lake = tempfile::tempdir().unwrap();
        let (secs, rss_kb) = (0..2)
            .map(|_| {
                let _ = std::fs::remove_dir_all(lake.path().join("lake"));
                extract(&server, rows, lake.path())
            })
            .fold((f64::MAX, 0), |(s, r), (s2, r2)| (s.min(s2), r.max(r2)));
        let (again_secs, again_rss_kb) = extract(&server, rows, lake.path());
        println!(
            "| {} | {rows} | {native:.1} s | {:.0} | {secs:.1} s | {:.0} | {:.2}x | {} MB | {again_secs:.1} s | {} MB |",
            match engine {
                Engine::Postgres => "PostgreSQL 15",
                Engine::MariaDb => "MariaDB 10.11",
            },
            rows as f64 / native,
            rows as f64 / secs,
            native / secs,
            rss_kb / 1024,
            again_rss_kb / 1024
        );
    }
}

/// A table like a device-readings export: keys, small integers, a timestamp, text, a decimal.
fn fill(server: &Server, rows: u64) {
    match server.engine {
        Engine::Postgres => server.sql(&format!(
            "CREATE TABLE readings (id bigint PRIMARY KEY, patient_id int NOT NULL, systolic smallint, \
               diastolic smallint, heart_rate smallint, measured_at timestamptz NOT NULL, \
               device varchar(32), note varchar(64), weight_kg numeric(5, 1)); \
             INSERT INTO readings SELECT n, n % 100000, 90 + n % 90, 60 + n % 40, 50 + n % 70, \
               timestamptz '2026-01-01 00:00+00' + n * interval '6 seconds', 'omron-' || (n % 5000), \
               CASE WHEN n % 7 = 0 THEN 'after exercise' END, 50 + (n % 600) / 10.0 \
             FROM generate_series(1, {rows}) AS n; ANALYZE readings"
        )),
        Engine::MariaDb => server.sql(&format!(
            "CREATE TABLE readings (id BIGINT PRIMARY KEY, patient_id INT NOT NULL, systolic SMALLINT, \
               diastolic SMALLINT, heart_rate SMALLINT, measured_at DATETIME(6) NOT NULL, \
               device VARCHAR(32), note VARCHAR(64), weight_kg DECIMAL(5, 1)); \
             INSERT INTO readings SELECT seq, seq % 100000, 90 + seq % 90, 60 + seq % 40, 50 + seq % 70, \
               TIMESTAMP('2026-01-01') + INTERVAL seq * 6 SECOND, CONCAT('omron-', seq % 5000), \
               IF(seq % 7 = 0, 'after exercise', NULL), 50 + (seq % 600) / 10 \
             FROM seq_1_to_{rows}"
        )),
    };
}

fn native_export(server: &Server) -> f64 {
    let port = server.port.to_string();
    let mut cmd = match server.engine {
        Engine::Postgres => {
            let mut c = Command::new("psql");
            c.args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                servers::USER,
                "-d",
                "ikhospital",
            ])
            .args(["-c", "COPY readings TO STDOUT"])
            .env("PGPASSWORD", PASSWORD);
            c
        }
        Engine::MariaDb => {
            let mut c = Command::new("mariadb");
            c.arg("--no-defaults")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-P",
                    &port,
                    "-u",
                    servers::USER,
                    "-D",
                    "ikhospital",
                ])
                .args(["--quick", "-e", "SELECT * FROM readings"])
                .env("MYSQL_PWD", PASSWORD);
            c
        }
    };
    let started = Instant::now();
    let status = cmd.stdout(Stdio::null()).status().unwrap();
    assert!(status.success());
    started.elapsed().as_secs_f64()
}

/// One full extraction into `dir/lake`: (seconds, peak RSS in KB).
fn extract(server: &Server, rows: u64, dir: &std::path::Path) -> (f64, u64) {
    let measured = support::run_sampling_rss(
        Command::new(env!("CARGO_BIN_EXE_vitalake"))
            .arg("--lake")
            .arg(dir.join("lake"))
            .args([
                "ingest",
                "db",
                "--json",
                "--full",
                "--include",
                "readings",
                "--source",
                &server.url(),
            ])
            .env(server.password_var(), PASSWORD)
            .stderr(Stdio::null()),
    );
    let output = measured.output;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let table = &report["sources"][0]["tables"][0];
    assert_eq!(table["rows_landed"], rows, "{table}");
    assert_eq!(table["reconciled"], true, "{table}");
    (measured.secs, measured.peak_rss_kb)
}
