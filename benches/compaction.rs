//! A long-running `vitalake stream` with and without its background compaction, side by side in
//! one run: the active file count of each table it writes, minute by minute, and what a query
//! over silver costs at the end.
//!
//! ```sh
//! cargo bench --bench compaction   # VITALAKE_BENCH_COMPACT_MINUTES=60 VITALAKE_BENCH_COMPACT_RATE=100
//! ```
//!
//! A writer appends blood-pressure readings (1,000 patients) at the rate to two files, each
//! followed by its own stream (default batch bounds: 1 s) into its own lake: the baseline with
//! `--compact-files 0` (compaction left to `vitalake maintain`), the other with the default
//! (64). Active files are counted from each table's Delta log (adds minus removes). At the end
//! both streams stop on SIGTERM, and each lake must hold every reading once.

#[allow(dead_code)]
mod support;

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{bp_reading, env, query_csv};

/// The tables whose files are counted.
const TABLES: [&str; 3] = [
    "bronze/eventhubs/observations",
    "silver/versions/Observation",
    "silver/fhir/blood_pressure",
];

fn start_stream(lake: &Path, file: &Path, compact_files: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_vitalake"))
        .arg("--lake")
        .arg(lake)
        .args(["stream", "--follow", "--compact-files", compact_files])
        .arg("--source")
        .arg(format!("file:{}", file.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Active data files of the table at `path`: every `add` in its Delta log minus every `remove`.
fn active_files(path: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(path.join("_delta_log")) else {
        return 0;
    };
    let mut commits: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    commits.sort();
    let mut active = HashSet::new();
    for commit in commits {
        for line in std::fs::read_to_string(commit).unwrap_or_default().lines() {
            let Ok(action) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if let Some(path) = action["add"]["path"].as_str() {
                active.insert(path.to_string());
            } else if let Some(path) = action["remove"]["path"].as_str() {
                active.remove(path);
            }
        }
    }
    active.len()
}

fn files_row(lake: &Path) -> Vec<usize> {
    TABLES.iter().map(|t| active_files(&lake.join(t))).collect()
}

fn main() {
    let minutes = env("VITALAKE_BENCH_COMPACT_MINUTES", 60);
    let rate = env("VITALAKE_BENCH_COMPACT_RATE", 100);
    let dir = tempfile::tempdir().unwrap();
    let runs = [
        ("baseline (compaction off)", "0"),
        ("compacting (default)", "64"),
    ];
    let mut files = Vec::new();
    let mut streams = Vec::new();
    for (i, (_, compact)) in runs.iter().enumerate() {
        let file = dir.path().join(format!("readings-{i}.ndjson"));
        std::fs::write(&file, "").unwrap();
        let lake = dir.path().join(format!("lake-{i}"));
        streams.push((start_stream(&lake, &file, compact), lake));
        files.push(
            std::fs::OpenOptions::new()
                .append(true)
                .open(&file)
                .unwrap(),
        );
    }
    println!(
        "{minutes} min at {rate} readings/s; active files per table ({})",
        TABLES.join(", ")
    );
    println!("| minute | {} | {} |", runs[0].0, runs[1].0);
    println!("|---|---|---|");
    let started = Instant::now();
    let mut sent = 0u64;
    let mut samples: BTreeMap<u64, Vec<Vec<usize>>> = BTreeMap::new();
    let mut next_second = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(minutes * 60) {
        let mut lines = String::new();
        for _ in 0..rate {
            sent += 1;
            let patient = format!("pt-{:05}", sent % 1000);
            let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            lines.push_str(&bp_reading(
                &format!("r{sent}"),
                &patient,
                110 + sent % 40,
                70 + sent % 20,
                &at,
            ));
            lines.push('\n');
        }
        for file in &mut files {
            file.write_all(lines.as_bytes()).unwrap();
        }
        next_second += Duration::from_secs(1);
        if next_second.as_secs().is_multiple_of(60) {
            let minute = next_second.as_secs() / 60;
            let rows: Vec<Vec<usize>> = streams.iter().map(|(_, lake)| files_row(lake)).collect();
            let show = |r: &Vec<usize>| {
                r.iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(" / ")
            };
            println!("| {minute} | {} | {} |", show(&rows[0]), show(&rows[1]));
            samples.insert(minute, rows);
        }
        if let Some(wait) = next_second.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    // Let the last lines land, then stop both streams cleanly.
    std::thread::sleep(Duration::from_secs(5));
    for (child, _) in &mut streams {
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(child.wait().unwrap().success());
    }
    println!("\n{sent} readings sent to each stream");
    println!("| | baseline (compaction off) | compacting (default) |");
    println!("|---|---|---|");
    let mut query_secs = Vec::new();
    let mut final_files = Vec::new();
    for (_, lake) in &streams {
        final_files.push(files_row(lake));
        let started = Instant::now();
        let counts = query_csv(
            lake,
            "SELECT count(*), count(DISTINCT id) FROM silver.blood_pressure",
        );
        query_secs.push(started.elapsed().as_secs_f64());
        assert_eq!(
            counts,
            vec![vec![sent.to_string(), sent.to_string()]],
            "every reading once in silver"
        );
        let bronze = query_csv(lake, "SELECT count(*) FROM bronze.eventhubs_observations");
        assert_eq!(
            bronze,
            vec![vec![sent.to_string()]],
            "every event once in bronze"
        );
    }
    for (i, table) in TABLES.iter().enumerate() {
        println!(
            "| files at the end: {table} | {} | {} |",
            final_files[0][i], final_files[1][i]
        );
    }
    let peak = |run: usize| {
        samples
            .values()
            .map(|rows| rows[run].iter().sum::<usize>())
            .max()
            .unwrap_or(0)
    };
    println!(
        "| most files over the run (3 tables) | {} | {} |",
        peak(0),
        peak(1)
    );
    println!(
        "| `SELECT count(*), count(DISTINCT id) FROM silver.blood_pressure` | {:.2} s | {:.2} s |",
        query_secs[0], query_secs[1]
    );
}
