//! Issue 25: a landing's cost does not grow with the lake. One `vitalake ingest fhir` of 1,000
//! corrected and 1,000 new blood-pressure readings, into lakes of different sizes, side by side in
//! one run.
//!
//! ```sh
//! cargo bench --bench landing   # VITALAKE_BENCH_LANDING_ROWS=100000,10000000
//! ```
//!
//! Each lake holds `rows` readings in `silver/fhir/blood_pressure` (and their keys in
//! `silver/versions/Observation`), of `rows / 10` patients in `silver/fhir/patient` (1M patients at
//! 10M rows). The lake grows as a hospital's does: by history, at 100,000 readings a day up to
//! now, appended in arrival order in files of 50,000 rows (what the stream's background compaction
//! leaves). The
//! rows are written directly, as `ingest` would have written them (same keys, versions, ingest
//! order); the sample drop is ingested first so every table has its real schema.
//!
//! Each batch is landed twice over, in the same run: by a running `vitalake stream --follow` (the
//! landing's own `commit_ms`: bronze, silver and checkpoint, after the process has started and read
//! what it needs once), and by `vitalake ingest fhir` (the whole command, process start included).
//! Three kinds of batch, three landings of each (`VITALAKE_BENCH_LANDINGS`) per lake and per command,
//! a fresh batch each time:
//! - **recent**: the corrections amend readings ingested in the last 12 hours (a device re-sends,
//!   a nurse fixes an entry: what corrections are in practice);
//! - **past**: the corrections amend readings of one half-day in the middle of the history (a
//!   feed re-sends an old period);
//! - **spread**: the corrections amend readings drawn from the whole history (the worst case).

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use deltalake::arrow::array::{
    ArrayRef, Decimal128Array, Int32Array, StringArray, StringViewArray, TimestampMicrosecondArray,
    new_null_array,
};
use deltalake::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use deltalake::arrow::record_batch::RecordBatch;
use rand::{Rng, SeedableRng};
use support::{bp_reading, env, median, query_csv, run_sampling_rss, sample_lake, vitalake};
use vitalake::lake::{AppendBuilder, Lake, arrow_schema};

const READINGS: &str = "silver/fhir/blood_pressure";
const READING_VERSIONS: &str = "silver/versions/Observation";
const PATIENTS: &str = "silver/fhir/patient";
const PATIENT_VERSIONS: &str = "silver/versions/Patient";
/// 2026-01-01T00:00:00Z in microseconds.
const START: i64 = 1_767_225_600_000_000;
const DAY_MICROS: i64 = 86_400_000_000;
const READINGS_PER_DAY: u64 = 100_000;
const ROWS_PER_FILE: u64 = 50_000;
const CHANGED: usize = 1_000;

/// Reading `n` of the lake: its patient, time and pressures (the same every time it is asked).
struct Reading {
    n: u64,
    patient: u64,
    at: i64,
    systolic: i128,
    diastolic: i128,
}

fn reading(n: u64, patients: u64) -> Reading {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(n);
    let systolic = rng.random_range(95..185);
    Reading {
        n,
        patient: rng.random_range(0..patients),
        at: START + (n as i64) * (DAY_MICROS / READINGS_PER_DAY as i64),
        systolic,
        diastolic: systolic * 62 / 100 + rng.random_range(-6..6),
    }
}

fn reading_id(n: u64) -> String {
    format!("landing-bp-{n:09}")
}

fn patient_id(p: u64) -> String {
    format!("bench-{p:07}")
}

fn rfc3339(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// One column of generated rows, by the column's name and type; `key` and `order` give each row's
/// silver key and ingest order, `fill` the view columns a table has.
fn column(
    name: &str,
    data_type: &DataType,
    rows: usize,
    text: &dyn Fn(&str, usize) -> Option<String>,
    time: &dyn Fn(usize) -> i64,
    decimal: &dyn Fn(&str, usize) -> i128,
) -> ArrayRef {
    let strings = |values: Vec<Option<String>>| -> ArrayRef {
        match data_type {
            DataType::Utf8View => Arc::new(StringViewArray::from(values)),
            _ => Arc::new(StringArray::from(values)),
        }
    };
    match data_type {
        DataType::Utf8 | DataType::Utf8View => strings((0..rows).map(|i| text(name, i)).collect()),
        DataType::Timestamp(TimeUnit::Microsecond, tz) => Arc::new(
            TimestampMicrosecondArray::from_iter_values((0..rows).map(time))
                .with_timezone_opt(tz.clone()),
        ),
        DataType::Decimal128(precision, scale) => {
            let scale_by = 10i128.pow(*scale as u32);
            Arc::new(
                Decimal128Array::from_iter_values((0..rows).map(|i| decimal(name, i) * scale_by))
                    .with_precision_and_scale(*precision, *scale)
                    .unwrap(),
            )
        }
        DataType::Int32 if name == "_row" => Arc::new(Int32Array::from(vec![0; rows])),
        other => new_null_array(other, rows),
    }
}

async fn append(lake: &Lake, table: &str, schema: &SchemaRef, columns: Vec<ArrayRef>) {
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    AppendBuilder::new(lake.table(table).await.unwrap(), table, vec![batch])
        .execute()
        .await
        .unwrap();
}

/// The ingest order `ingest` gives a resource: when, which batch, which line.
fn ingest_order(at: i64, batch: &str, line: u64) -> String {
    format!("{at:020}|{batch}|bench|{line:012}|")
}

/// When reading `n` of a lake of `rows` was ingested: the newest just now, the others at
/// [`READINGS_PER_DAY`] before it.
fn ingested(n: u64, rows: u64, now: i64) -> i64 {
    now - (rows - n) as i64 * (DAY_MICROS / READINGS_PER_DAY as i64)
}

/// The lake: the sample drop, then `rows` readings of `rows / 10` patients written as silver.
async fn build_lake(path: &Path, rows: u64) {
    let now = chrono::Utc::now().timestamp_micros();
    let lake = sample_lake(path);
    let patients = rows / 10;
    let schema_of =
        async |table: &str| arrow_schema(&lake.table(table).await.unwrap(), table).unwrap();
    let (readings, reading_versions) =
        (schema_of(READINGS).await, schema_of(READING_VERSIONS).await);
    for first in (0..rows).step_by(ROWS_PER_FILE as usize) {
        let part: Vec<Reading> = (first..(first + ROWS_PER_FILE).min(rows))
            .map(|n| reading(n, patients))
            .collect();
        let batch = format!("bench-{first}");
        let text = |name: &str, i: usize| {
            let r = &part[i];
            Some(match name {
                "id" | "_key" => reading_id(r.n),
                "patient_id" => patient_id(r.patient),
                "panel_code" => "85354-9".into(),
                "systolic_unit" | "diastolic_unit" => "mm[Hg]".into(),
                "status" => "final".into(),
                "version_id" | "_version_id" => "1".into(),
                "_ingest_order" => ingest_order(ingested(r.n, rows, now), &batch, r.n),
                "_batch_id" => batch.clone(),
                _ => return None,
            })
        };
        let time = |i: usize| part[i].at;
        let decimal = |name: &str, i: usize| match name {
            "systolic" => part[i].systolic,
            _ => part[i].diastolic,
        };
        for (table, schema) in [(READINGS, &readings), (READING_VERSIONS, &reading_versions)] {
            let columns = schema
                .fields()
                .iter()
                .map(|f| column(f.name(), f.data_type(), part.len(), &text, &time, &decimal))
                .collect();
            append(&lake, table, schema, columns).await;
        }
    }
    let (people, people_versions) = (schema_of(PATIENTS).await, schema_of(PATIENT_VERSIONS).await);
    for first in (0..patients).step_by(ROWS_PER_FILE as usize) {
        let part: Vec<u64> = (first..(first + ROWS_PER_FILE).min(patients)).collect();
        let batch = format!("bench-patients-{first}");
        let text = |name: &str, i: usize| {
            Some(match name {
                "id" | "_key" => patient_id(part[i]),
                "version_id" | "_version_id" => "1".into(),
                "_ingest_order" => ingest_order(ingested(0, rows, now), &batch, part[i]),
                "_batch_id" => batch.clone(),
                _ => return None,
            })
        };
        for (table, schema) in [(PATIENTS, &people), (PATIENT_VERSIONS, &people_versions)] {
            let columns = schema
                .fields()
                .iter()
                .map(|f| {
                    column(
                        f.name(),
                        f.data_type(),
                        part.len(),
                        &text,
                        &|_| START,
                        &|_, _| 0,
                    )
                })
                .collect();
            append(&lake, table, schema, columns).await;
        }
    }
}

/// A reading as FHIR, with the version its `meta` names.
fn observation(r: &Reading, version: u32, updated: i64) -> String {
    let mut value: serde_json::Value = serde_json::from_str(&bp_reading(
        &reading_id(r.n),
        &patient_id(r.patient),
        r.systolic as u64,
        r.diastolic as u64,
        &rfc3339(r.at),
    ))
    .unwrap();
    value["meta"] =
        serde_json::json!({"versionId": version.to_string(), "lastUpdated": rfc3339(updated)});
    value.to_string()
}

/// Version `version` of 1,000 readings drawn from `corrected` (added to `picked`; none when it is
/// empty), and 1,000 new readings from `next_new` on.
fn batch(
    rows: u64,
    next_new: u64,
    corrected: std::ops::Range<u64>,
    version: u32,
    picked: &mut BTreeSet<u64>,
) -> String {
    let patients = rows / 10;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(next_new);
    let now = START + (rows as i64 + 1) * (DAY_MICROS / READINGS_PER_DAY as i64) + DAY_MICROS;
    let mut these = BTreeSet::new();
    while !corrected.is_empty() && these.len() < CHANGED {
        these.insert(rng.random_range(corrected.clone()));
    }
    picked.extend(&these);
    let mut lines: Vec<String> = these
        .into_iter()
        .map(|n| {
            let mut r = reading(n, patients);
            r.systolic += 5;
            observation(&r, version, now)
        })
        .collect();
    lines.extend(
        (next_new..next_new + CHANGED as u64).map(|n| observation(&reading(n, patients), 1, now)),
    );
    lines.join("\n") + "\n"
}

/// `vitalake stream --follow` on `file`, its log lines read as they come. Background compaction
/// is off: each lake keeps the layout it was built with, and a landing is timed alone.
struct FollowedStream {
    child: Child,
    file: std::fs::File,
    log: std::io::Lines<BufReader<std::process::ChildStderr>>,
}

impl FollowedStream {
    fn start(lake: &Path, file: &Path) -> FollowedStream {
        std::fs::write(file, "").unwrap();
        let mut child = vitalake(lake)
            .args(["stream", "--follow", "--compact-files", "0", "--source"])
            .arg(format!("file:{}", file.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = BufReader::new(child.stderr.take().unwrap()).lines();
        let file = std::fs::OpenOptions::new().append(true).open(file).unwrap();
        FollowedStream { child, file, log }
    }

    /// Appends `lines` and waits for them to land; the landings' `commit_ms`, summed.
    fn land(&mut self, lines: &str) -> f64 {
        let expected = lines.lines().count() as u64;
        self.file.write_all(lines.as_bytes()).unwrap();
        let (mut events, mut commit_ms) = (0, 0.0);
        while events < expected {
            let line = self.log.next().expect("the stream stopped").unwrap();
            if line.contains(" batch landed events=") {
                events += field(&line, "events");
                commit_ms += field(&line, "commit_ms") as f64;
            }
        }
        commit_ms
    }

    fn stop(mut self) {
        Command::new("kill")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(self.child.wait().unwrap().success());
    }
}

/// `name=<number>` in a log line.
fn field(line: &str, name: &str) -> u64 {
    let at = line.find(&format!("{name}=")).unwrap() + name.len() + 1;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn main() {
    let sizes: Vec<u64> = std::env::var("VITALAKE_BENCH_LANDING_ROWS")
        .unwrap_or_else(|_| "100000,10000000".into())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let landings = env("VITALAKE_BENCH_LANDINGS", 3) as usize;
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    println!(
        "| readings in the lake | corrections | stream landing, median of {landings} (ms) | each (ms) | `ingest fhir`, median of {landings} (s) | each (s) | its peak RSS (MB) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for &rows in &sizes {
        // `VITALAKE_BENCH_LANDING_KEEP=DIR` keeps each lake there, to look into afterwards.
        let kept = std::env::var_os("VITALAKE_BENCH_LANDING_KEEP").map(std::path::PathBuf::from);
        let lake = kept
            .as_deref()
            .unwrap_or(dir.path())
            .join(format!("lake-{rows}"));
        let built = std::time::Instant::now();
        runtime.block_on(build_lake(&lake, rows));
        eprintln!(
            "lake of {rows} readings built in {:.0} s",
            built.elapsed().as_secs_f64()
        );
        let mut next_new = rows;
        let mut corrected = BTreeSet::new();
        let mut version = 1;
        let mut next_batch = |from: &std::ops::Range<u64>| {
            version += 1;
            let text = batch(rows, next_new, from.clone(), version, &mut corrected);
            next_new += CHANGED as u64;
            text
        };
        let last_hours = rows.saturating_sub(READINGS_PER_DAY / 2)..rows;
        let past_hours = rows / 2..(rows / 2 + READINGS_PER_DAY / 2).min(rows);
        let kinds = [
            ("recent", last_hours),
            ("past", past_hours),
            ("spread", 0..rows),
        ];

        // Each kind in turn, first through the stream, then through `ingest fhir`: a spread batch
        // rewrites every file, into fewer and larger ones, which the other batches must not meet.
        for (kind, from) in &kinds {
            // One stream process, warmed up by a landing of new readings (it reads the keys
            // silver holds once, as a long-running stream does at its start).
            // A file of its own: a stream resumes a file it has read from the line it had reached.
            let followed = dir.path().join(format!("followed-{rows}-{kind}.ndjson"));
            let mut stream = FollowedStream::start(&lake, &followed);
            stream.land(&next_batch(&(rows..rows)));
            let stream_ms: Vec<f64> = (0..landings)
                .map(|_| stream.land(&next_batch(from)))
                .collect();
            stream.stop();
            let (mut secs, mut rss) = (Vec::new(), 0);
            for landing in 0..landings {
                let file = dir
                    .path()
                    .join(format!("batch-{rows}-{kind}-{landing}.ndjson"));
                std::fs::write(&file, next_batch(from)).unwrap();
                let measured = run_sampling_rss(
                    vitalake(&lake)
                        .args(["ingest", "fhir", "--json"])
                        .arg(&file),
                );
                assert!(
                    measured.output.status.success(),
                    "{}",
                    String::from_utf8_lossy(&measured.output.stderr)
                );
                secs.push(measured.secs);
                rss = rss.max(measured.peak_rss_kb);
            }
            let each = |values: &[f64], digits: usize| {
                values
                    .iter()
                    .map(|v| format!("{v:.digits$}"))
                    .collect::<Vec<_>>()
                    .join(" / ")
            };
            println!(
                "| {rows} | {kind} | **{:.0}** | {} | **{:.2}** | {} | {} |",
                median(stream_ms.clone()),
                each(&stream_ms, 0),
                median(secs.clone()),
                each(&secs, 2),
                rss / 1024
            );
        }
        // Every correction replaced its reading, every new one was added: nothing twice.
        let counts = query_csv(
            &lake,
            "SELECT count(*), count(DISTINCT id), count(*) FILTER (WHERE version_id <> '1') FROM silver.blood_pressure WHERE id LIKE 'landing-bp-%'",
        );
        let added = next_new - rows;
        assert_eq!(counts[0][0], (rows + added).to_string(), "{counts:?}");
        assert_eq!(counts[0][1], counts[0][0]);
        assert_eq!(counts[0][2], corrected.len().to_string());
        if kept.is_none() {
            std::fs::remove_dir_all(&lake).unwrap();
        }
    }
}
