//! Serving a lake with 10 million blood-pressure rows: the `patient_bp_daily` refresh, and a
//! per-patient look-up and a daily aggregate through `vitalake serve` (a PostgreSQL client over
//! the wire, SCRAM sign-in), before and after `vitalake maintain`, side by side with the same
//! queries in Python `deltalake` + `polars`, the tools an analyst would pick instead.
//!
//! ```sh
//! cargo bench --bench serve   # VITALAKE_BENCH_SERVE_ROWS=10000000 VITALAKE_BENCH_SERVE_PATIENTS=100000
//!                             # VITALAKE_BENCH_PYTHON=~/.cache/vitalake-bench/py/bin/python (polars, deltalake)
//! ```
//!
//! The lake: the sample drop ingested (so `silver/fhir/blood_pressure` has the schema its
//! ViewDefinition gives), then the generated rows appended in 200 commits, as a stream's
//! micro-batches leave them: many files, each holding every patient. Readings are spread over a
//! year. Every query is timed from the client: sent to all rows received.

#[allow(dead_code)]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deltalake::arrow::array::{
    ArrayRef, Decimal128Array, Int32Array, StringArray, StringViewArray, TimestampMicrosecondArray,
    new_null_array,
};
use deltalake::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use deltalake::arrow::record_batch::RecordBatch;
use rand::{Rng, SeedableRng};
use support::{env, run_ok as run, sample_lake, vitalake};
use vitalake::lake::{AppendBuilder, arrow_schema};

const TABLE: &str = "silver/fhir/blood_pressure";
const PASSWORD: &str = "bench-pw";
/// 2026-01-01T00:00:00Z in microseconds.
const YEAR_START: i64 = 1_767_225_600_000_000;
const DAY_MICROS: i64 = 86_400_000_000;

fn patient(p: u64) -> String {
    format!("bench-{p:06}")
}

/// One column of `rows` generated readings, by the column's name and type.
fn column(
    name: &str,
    data_type: &DataType,
    rows: &[(u64, i64, i128, i128)],
    commit: usize,
) -> ArrayRef {
    let text = |values: Vec<String>| -> ArrayRef {
        match data_type {
            DataType::Utf8View => Arc::new(StringViewArray::from(values)),
            _ => Arc::new(StringArray::from(values)),
        }
    };
    let id = |i: usize| format!("bp-{commit}-{i}");
    match (name, data_type) {
        ("id" | "_key", _) => text((0..rows.len()).map(id).collect()),
        ("patient_id", _) => text(rows.iter().map(|r| patient(r.0)).collect()),
        ("panel_code", _) => text(vec!["85354-9".into(); rows.len()]),
        ("systolic_unit" | "diastolic_unit", _) => text(vec!["mm[Hg]".into(); rows.len()]),
        ("status", _) => text(vec!["final".into(); rows.len()]),
        ("version_id" | "_version_id", _) => text(vec!["1".into(); rows.len()]),
        ("_batch_id" | "_ingest_order", _) => text(vec![format!("bench-{commit}"); rows.len()]),
        ("systolic" | "diastolic", DataType::Decimal128(precision, scale)) => {
            let scale_by = 10i128.pow(*scale as u32);
            let values = rows
                .iter()
                .map(|r| if name == "systolic" { r.2 } else { r.3 } * scale_by);
            Arc::new(
                Decimal128Array::from_iter_values(values)
                    .with_precision_and_scale(*precision, *scale)
                    .unwrap(),
            )
        }
        (_, DataType::Timestamp(TimeUnit::Microsecond, tz)) => Arc::new(
            TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.1))
                .with_timezone_opt(tz.clone()),
        ),
        ("_row", DataType::Int32) => Arc::new(Int32Array::from(vec![0; rows.len()])),
        (_, other) => new_null_array(other, rows.len()),
    }
}

/// The lake: the sample drop, then `total` generated rows in 200 appends.
async fn build_lake(lake_path: &Path, total: u64, patients: u64) {
    let lake = sample_lake(lake_path);
    let schema: SchemaRef = arrow_schema(&lake.table(TABLE).await.unwrap(), TABLE).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let commits = 200;
    let per_commit = total / commits;
    for commit in 0..commits as usize {
        let rows: Vec<(u64, i64, i128, i128)> = (0..per_commit)
            .map(|_| {
                let p = rng.random_range(0..patients);
                let at = YEAR_START + rng.random_range(0..365 * DAY_MICROS);
                let systolic = rng.random_range(95..185);
                (
                    p,
                    at,
                    systolic,
                    systolic * 62 / 100 + rng.random_range(-6..6),
                )
            })
            .collect();
        let columns = schema
            .fields()
            .iter()
            .map(|f| column(f.name(), f.data_type(), &rows, commit))
            .collect();
        let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
        AppendBuilder::new(lake.table(TABLE).await.unwrap(), TABLE, vec![batch])
            .execute()
            .await
            .unwrap();
    }
}

/// `vitalake serve` on a free port, with one analyst.
fn start_server(lake: &Path, config: &Path) -> (Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = vitalake(lake)
        .arg("--config")
        .arg(config)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("BENCH_PW", PASSWORD)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..600 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return (child, port);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("vitalake serve did not start");
}

fn percentiles(mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

/// Look-ups of `ids` and `aggregates` runs of the daily aggregate through the server.
async fn through_serve(port: u16, ids: &[String], aggregates: usize) -> ((f64, f64), (f64, f64)) {
    let (client, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=bench password={PASSWORD} dbname=lake"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let mut lookups = Vec::new();
    for id in ids {
        let sql = format!(
            "SELECT effective_time, systolic, diastolic FROM silver.blood_pressure WHERE patient_id = '{id}' ORDER BY effective_time"
        );
        let started = Instant::now();
        let rows = client.simple_query(&sql).await.unwrap();
        lookups.push(started.elapsed().as_secs_f64() * 1000.0);
        assert!(rows.len() > 1, "no rows for {id}");
    }
    let mut daily = Vec::new();
    for _ in 0..aggregates {
        let started = Instant::now();
        let rows = client
            .simple_query(
                "SELECT CAST(effective_time AS DATE) AS day, count(*), avg(CAST(systolic AS DOUBLE)), avg(CAST(diastolic AS DOUBLE)) FROM silver.blood_pressure GROUP BY 1 ORDER BY 1",
            )
            .await
            .unwrap();
        daily.push(started.elapsed().as_secs_f64() * 1000.0);
        assert!(rows.len() > 300);
    }
    (percentiles(lookups), percentiles(daily))
}

/// The same queries in Python: `deltalake` opens the table once, `polars` scans it per query.
const POLARS: &str = r#"
import sys, time, json
import polars as pl
from deltalake import DeltaTable
table, ids, aggregates = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
dt = DeltaTable(table)
def pct(xs):
    xs = sorted(xs)
    return [xs[round((len(xs) - 1) * 0.5)], xs[round((len(xs) - 1) * 0.99)]]
lookups = []
for pid in ids:
    t = time.perf_counter()
    df = (pl.scan_delta(dt).filter(pl.col("patient_id") == pid)
          .select("effective_time", "systolic", "diastolic").sort("effective_time").collect())
    lookups.append((time.perf_counter() - t) * 1000)
    assert df.height > 1
daily = []
for _ in range(aggregates):
    t = time.perf_counter()
    df = (pl.scan_delta(dt).group_by(pl.col("effective_time").dt.date().alias("day"))
          .agg(pl.len(), pl.col("systolic").cast(pl.Float64).mean(), pl.col("diastolic").cast(pl.Float64).mean())
          .sort("day").collect())
    daily.append((time.perf_counter() - t) * 1000)
    assert df.height > 300
print(json.dumps({"lookup": pct(lookups), "daily": pct(daily), "polars": pl.__version__}))
"#;

fn through_polars(
    python: &str,
    table: &Path,
    ids: &[String],
    aggregates: usize,
) -> serde_json::Value {
    let out = run(Command::new(python)
        .args(["-c", POLARS])
        .arg(table)
        .arg(ids.join(","))
        .arg(aggregates.to_string()));
    serde_json::from_str(out.trim()).unwrap()
}

fn report(stage: &str, serve: ((f64, f64), (f64, f64)), polars: &serde_json::Value) {
    let p = |v: &serde_json::Value, k: &str, i: usize| v[k][i].as_f64().unwrap();
    println!(
        "{stage}: look-up p50/p99: serve {:.1}/{:.1} ms, polars {:.1}/{:.1} ms; daily aggregate p50/p99: serve {:.0}/{:.0} ms, polars {:.0}/{:.0} ms",
        serve.0.0,
        serve.0.1,
        p(polars, "lookup", 0),
        p(polars, "lookup", 1),
        serve.1.0,
        serve.1.1,
        p(polars, "daily", 0),
        p(polars, "daily", 1),
    );
}

#[tokio::main]
async fn main() {
    let total = env("VITALAKE_BENCH_SERVE_ROWS", 10_000_000);
    let patients = env("VITALAKE_BENCH_SERVE_PATIENTS", 100_000);
    let python = std::env::var("VITALAKE_BENCH_PYTHON").unwrap_or_else(|_| {
        format!(
            "{}/.cache/vitalake-bench/py/bin/python",
            std::env::var("HOME").unwrap()
        )
    });
    let work = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/bench-data/serve"
    ));
    std::fs::create_dir_all(&work).unwrap();
    let lake_path = work.join("lake");
    let config = work.join("vitalake.toml");
    std::fs::write(
        &config,
        "[[serve.users]]\nname = \"bench\"\nrole = \"analyst\"\npassword_env = \"BENCH_PW\"\n",
    )
    .unwrap();

    let started = Instant::now();
    build_lake(&lake_path, total, patients).await;
    println!(
        "lake: {total} rows of {patients} patients in 200 commits, built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let refreshed = run(vitalake(&lake_path).args(["refresh", "gold", "patient_bp_daily"]));
    println!(
        "refresh gold patient_bp_daily: {:.1} s ({})",
        started.elapsed().as_secs_f64(),
        refreshed.trim()
    );

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let ids: Vec<String> = (0..100)
        .map(|_| patient(rng.random_range(0..patients)))
        .collect();
    let table = lake_path.join(TABLE);
    for stage in ["before maintain", "after maintain"] {
        if stage == "after maintain" {
            let started = Instant::now();
            let out = run(vitalake(&lake_path).args(["maintain", "--layer", "silver", "--json"]));
            let report: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
            let bp = report.iter().find(|t| t["table"] == TABLE).unwrap();
            println!(
                "maintain --layer silver: {:.1} s; {TABLE}: {} files before, {} after, z-order {}",
                started.elapsed().as_secs_f64(),
                bp["files_before"],
                bp["files_after"],
                bp["zorder"]
            );
        }
        let (mut server, port) = start_server(&lake_path, &config);
        // One warm-up query each, as a BI tool's first refresh would be.
        through_serve(port, &ids[..1], 1).await;
        let serve = through_serve(port, &ids, 20).await;
        server.kill().unwrap();
        let _ = server.wait();
        let polars = through_polars(&python, &table, &ids, 20);
        report(stage, serve, &polars);
    }
}
