//! `cargo bench --bench ingest`: ingest throughput against the parse-only floor, the cost of profile
//! validation (the same ingest with and without it, in the same run), and peak memory on a 1 GB
//! NDJSON file. Writes a Markdown table to stdout for BENCHMARKS.md.
//!
//! The floor is `serde_json` parsing the same bytes into `serde_json::Value` on the same cores
//! (rayon over files and lines): no ingest that must at least parse its input can beat it.
//! Ingest runs as the real release binary in a child process, whose peak RSS (VmHWM) is sampled
//! from /proc. Sizes: `VITALAKE_BENCH_DROP_MB` (default 200) and `VITALAKE_BENCH_NDJSON_MB`
//! (default 1024); data is generated under `target/bench-data` and reused. A third input holds the
//! whole record (encounters, conditions, labs, claims...): `VITALAKE_BENCH_SYNTHEA_COPIES` (default
//! 10) copies of the Synthea bundles of `../shared/fhir/synthea`, their UUIDs made unique per copy.
//!
//! This machine's run-to-run noise (10-15%) is as large as what validation costs, so ingest runs
//! `VITALAKE_BENCH_ROUNDS` (default 3) times with and times without validation, alternating which
//! goes first, and the table gives medians; validation's cost is the median of each round's pair.

#[allow(dead_code)]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use rayon::prelude::*;
use support::median;

/// The floor gets the same allocator as the `vitalake` binary, so the comparison is like for like.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use vitalake::generate::{GenerateOptions, write_drop};

fn main() {
    let drop_mb: u64 = env_or("VITALAKE_BENCH_DROP_MB", 200);
    let ndjson_mb: u64 = env_or("VITALAKE_BENCH_NDJSON_MB", 1024);
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    println!(
        "machine: {} cores; rayon threads {}",
        std::thread::available_parallelism().unwrap(),
        rayon::current_num_threads()
    );

    let drop = data.join(format!("drop-{drop_mb}mb"));
    ensure_drop(&drop, drop_mb, true);
    let ndjson_file = data.join(format!("all-{ndjson_mb}mb.ndjson"));
    if !ndjson_file.exists() {
        let parts = data.join(format!("ndjson-{ndjson_mb}mb"));
        ensure_drop(&parts, ndjson_mb, false);
        concatenate(&parts, &ndjson_file);
    }

    // The four views silver had before the EHR views (issue 24), for the side-by-side column.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let four_views = data.join("views-before-issue-24");
    std::fs::create_dir_all(&four_views).unwrap();
    for view in [
        "patient",
        "blood_pressure",
        "heart_rate",
        "medication_dispense",
    ] {
        let file = format!("{view}.json");
        std::fs::copy(
            root.join("profiles/views").join(&file),
            four_views.join(&file),
        )
        .unwrap();
    }
    let all_views = root.join("profiles/views");

    let synthea_copies = env_or("VITALAKE_BENCH_SYNTHEA_COPIES", 10);
    let synthea = data.join(format!("synthea-x{synthea_copies}"));
    ensure_synthea(&synthea, synthea_copies);

    let rounds = env_or("VITALAKE_BENCH_ROUNDS", 3).max(1) as usize;
    println!(
        "\n| input | bytes | resources | parse-only floor | ingest (bronze + silver) | ingest / floor | + profile validation | validation adds (each round) | peak RSS (with validation; max) | same with the 4 views before issue 24 | all views / 4 views |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for input in [&drop, &ndjson_file, &synthea] {
        let floor = parse_floor(input);
        let (mut plain, mut validated) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            // Each goes first in every other round: the first run after the floor was slower.
            for validate in [round % 2 == 1, round % 2 == 0] {
                let runs = if validate { &mut validated } else { &mut plain };
                runs.push(ingest(input, &data, validate, &all_views));
            }
        }
        let adds: Vec<f64> = plain
            .iter()
            .zip(&validated)
            .map(|(plain, validated)| (validated.secs / plain.secs - 1.0) * 100.0)
            .collect();
        let peak_max = validated.iter().map(|m| m.peak_rss_kb).max().unwrap();
        let (plain, validated) = (median_run(plain), median_run(validated));
        let four = ingest(input, &data, true, &four_views);
        println!(
            "| {} | {:.0} MB | {} | {:.0} res/s, {:.1} MB/s | {:.1} s, {:.0} res/s | {:.2}x | {:.1} s, {:.0} res/s | {:+.0}% ({}) | {:.0} MB ({:.0}) | {:.1} s, {:.0} MB | {:.2}x |",
            input.file_name().unwrap().to_string_lossy(),
            floor.bytes as f64 / 1e6,
            floor.resources,
            floor.resources as f64 / floor.secs,
            floor.bytes as f64 / 1e6 / floor.secs,
            plain.secs,
            plain.resources as f64 / plain.secs,
            floor.secs / plain.secs,
            validated.secs,
            validated.resources as f64 / validated.secs,
            median(adds.clone()),
            adds.iter()
                .map(|add| format!("{add:+.0}%"))
                .collect::<Vec<_>>()
                .join(", "),
            validated.peak_rss_kb as f64 / 1024.0,
            peak_max as f64 / 1024.0,
            four.secs,
            four.peak_rss_kb as f64 / 1024.0,
            validated.secs / four.secs,
        );
    }
}

/// The run of median time, with the median peak RSS of all the runs.
fn median_run(mut runs: Vec<Measured>) -> Measured {
    let peak_rss_kb = median(runs.iter().map(|m| m.peak_rss_kb as f64).collect()) as u64;
    runs.sort_by(|a, b| a.secs.total_cmp(&b.secs));
    let middle = runs.swap_remove(runs.len() / 2);
    Measured {
        peak_rss_kb,
        ..middle
    }
}

fn env_or(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Generates a drop of about `mb` megabytes (grows the patient count until it is big enough).
fn ensure_drop(dir: &Path, mb: u64, bundles: bool) {
    if dir.exists() {
        return;
    }
    // Calibrated on 200 patients, then scaled.
    let probe = dir.with_extension("probe");
    let options = |patients| GenerateOptions {
        patients,
        seed: 1,
        readings_per_patient: 12,
        bundles,
        ndjson: true,
        invalid: false,
        gzip: false,
    };
    let sample = write_drop(&probe, &options(200)).unwrap();
    std::fs::remove_dir_all(&probe).unwrap();
    let patients = (200.0 * (mb as f64 * 1e6) / sample.bytes as f64).ceil() as usize + 1;
    let started = Instant::now();
    let summary = write_drop(dir, &options(patients)).unwrap();
    eprintln!(
        "generated {} in {:.0?}: {summary}",
        dir.display(),
        started.elapsed()
    );
}

/// `copies` copies of the Synthea bundles, each with its UUIDs (ids, fullUrls, references)
/// prefixed by its copy number, so no copy is a re-send of another.
fn ensure_synthea(dir: &Path, copies: u64) {
    if dir.exists() {
        return;
    }
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fhir/synthea");
    let uuid = regex::Regex::new(
        r"\b[0-9a-f]{2}([0-9a-f]{6}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\b",
    )
    .unwrap();
    std::fs::create_dir_all(dir).unwrap();
    for copy in 0..copies {
        for file in files(&source) {
            if file.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            let text = uuid.replace_all(&text, |c: &regex::Captures| format!("{copy:02}{}", &c[1]));
            let name = format!("{copy:02}-{}", file.file_name().unwrap().to_string_lossy());
            std::fs::write(dir.join(name), text.as_bytes()).unwrap();
        }
    }
}

fn concatenate(parts: &Path, out: &Path) {
    let mut file = std::fs::File::create(out).unwrap();
    for part in files(parts) {
        if part.extension().is_some_and(|e| e == "ndjson") {
            std::io::copy(&mut std::fs::File::open(part).unwrap(), &mut file).unwrap();
        }
    }
    std::fs::remove_dir_all(parts).unwrap();
}

fn files(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_owned()];
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(path).unwrap() {
        out.extend(files(&entry.unwrap().path()));
    }
    out.sort();
    out
}

struct Measured {
    bytes: u64,
    resources: u64,
    secs: f64,
    peak_rss_kb: u64,
}

/// Reads and parses every file into `serde_json::Value` in parallel; NDJSON is streamed in blocks
/// of lines as ingest does, so both read the same way.
fn parse_floor(input: &Path) -> Measured {
    use std::io::BufRead;
    let started = Instant::now();
    let mut bytes = 0u64;
    let mut resources = 0u64;
    for file in files(input) {
        bytes += std::fs::metadata(&file).unwrap().len();
        if file.extension().is_some_and(|e| e == "ndjson") {
            let mut lines =
                std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&file).unwrap())
                    .lines();
            loop {
                let block: Vec<String> = lines.by_ref().take(2048).map(Result::unwrap).collect();
                if block.is_empty() {
                    break;
                }
                resources += block
                    .par_iter()
                    .map(|l| parse_count(l.as_bytes()))
                    .sum::<u64>();
            }
        } else {
            resources += parse_count(&std::fs::read(&file).unwrap());
        }
    }
    Measured {
        bytes,
        resources,
        secs: started.elapsed().as_secs_f64(),
        peak_rss_kb: 0,
    }
}

fn parse_count(bytes: &[u8]) -> u64 {
    let value: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    value["entry"]
        .as_array()
        .map_or(1, |entries| entries.len() as u64)
}

/// Runs the release binary on `input` into a fresh lake (bronze, silver, quarantine), with or
/// without profile validation and with the silver views in `views`, sampling its peak RSS.
fn ingest(input: &Path, data: &Path, validate: bool, views: &Path) -> Measured {
    let lake = data.join("lake");
    let _ = std::fs::remove_dir_all(&lake);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let measured = support::run_sampling_rss(
        Command::new(env!("CARGO_BIN_EXE_vitalake"))
            .env("VITALAKE_VALIDATE_ENABLED", validate.to_string())
            .env("VITALAKE_VALIDATE_PROFILES", root.join("profiles"))
            .env("VITALAKE_INGEST_VIEWS", views)
            .args(["ingest", "fhir", "--json", "--lake"])
            .arg(&lake)
            .arg(input),
    );
    let output = measured.output;
    assert!(output.status.success());
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let resources =
        report["bronze_rows"].as_u64().unwrap() + report["quarantine_rows"].as_u64().unwrap();
    let _ = std::fs::remove_dir_all(&lake);
    Measured {
        bytes: report["bytes_read"].as_u64().unwrap(),
        resources,
        secs: measured.secs,
        peak_rss_kb: measured.peak_rss_kb,
    }
}
