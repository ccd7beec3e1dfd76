//! `cargo bench --bench views`: SQL-on-FHIR view throughput, side by side with Pathling and helios-sof.
//!
//! Inputs: the 12 Synthea bundles in `../shared/fhir/synthea/smart-generated-sample-data-R4`, and a
//! generated drop of Bundles 50 times their size (`VITALAKE_BENCH_VIEWS_SCALE`, default 50) under
//! `target/bench-data`. Each tool reads the bundle files and writes Parquet:
//!
//! - vitalake: parse the files (rayon over files), run the four silver views of `profiles/views` on
//!   every resource (rayon over resources), build the Arrow batches, write one Parquet file per view;
//! - Pathling (`VITALAKE_BENCH_PATHLING_PYTHON`, a Python with `pathling==6.3.1 pyspark==3.4.4`):
//!   `read.bundles(...)` encoding Patient, Observation and MedicationDispense, `write.parquet(...)`;
//!   its JVM start-up is reported apart and left out of its throughput;
//! - helios-sof (`VITALAKE_BENCH_HELIOS`, its `sof-cli` binary): the same four views, each run once
//!   over one collection Bundle holding every resource of the input (prepared before timing).
//!
//! Writes a Markdown table to stdout for BENCHMARKS.md. A tool that is not configured is skipped
//! with a note, never counted.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use rayon::prelude::*;
use serde_json::Value;
use vitalake::generate::{GenerateOptions, write_drop};
use vitalake::views::{View, inputs, output};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const VIEW_FILES: [&str; 4] = [
    "patient.json",
    "blood_pressure.json",
    "heart_rate.json",
    "medication_dispense.json",
];

struct Measured {
    secs: f64,
    rows: u64,
    note: String,
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let data = root.join("target/bench-data");
    let scale: u64 = std::env::var("VITALAKE_BENCH_VIEWS_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let synthea = root.join("../shared/fhir/synthea/smart-generated-sample-data-R4");
    let synthea_bytes = folder_bytes(&synthea);
    let generated = data.join(format!("views-drop-x{scale}"));
    ensure_bundles(&generated, synthea_bytes * scale);
    let view_dir = root.join("profiles/views");
    let views: Vec<View> = VIEW_FILES
        .iter()
        .map(|f| View::load(&view_dir.join(f)).unwrap())
        .collect();
    println!(
        "machine: {} cores; rayon threads {}",
        std::thread::available_parallelism().unwrap(),
        rayon::current_num_threads()
    );
    println!(
        "\n| input | resources | tool | seconds | view rows (or encoded rows) | resources/s | vitalake speed-up |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (label, folder) in [
        ("Synthea, 12 bundles", synthea.clone()),
        ("generated bundles", generated.join("bundles")),
    ] {
        let files = bundle_files(&folder);
        let bytes: u64 = files.iter().map(|f| f.metadata().unwrap().len()).sum();
        let resources = count_resources(&files);
        let label = format!("{label} ({:.1} MB)", bytes as f64 / 1e6);
        let ours = run_vitalake(&views, &files, &data.join("views-out"));
        let mut results = vec![("vitalake", ours)];
        results.push((
            "Pathling 6.3.1",
            run_pathling(&folder, &data.join("pathling-out")),
        ));
        results.push((
            "helios-sof 0.2.7",
            run_helios(&files, &view_dir, &data.join("helios-in.json")),
        ));
        let ours_secs = results[0].1.secs;
        for (tool, m) in results {
            if m.secs.is_nan() {
                println!(
                    "| {label} | {resources} | {tool} | – | – | – | {} |",
                    m.note
                );
                continue;
            }
            println!(
                "| {label} | {resources} | {tool} | {:.3} | {} | {:.0} | {} |",
                m.secs,
                m.rows,
                resources as f64 / m.secs,
                if tool == "vitalake" {
                    m.note.clone()
                } else {
                    format!("{:.1}x {}", m.secs / ours_secs, m.note)
                }
            );
        }
    }
}

fn folder_bytes(folder: &Path) -> u64 {
    bundle_files(folder)
        .iter()
        .map(|f| f.metadata().unwrap().len())
        .sum()
}

fn bundle_files(folder: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(folder)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn count_resources(files: &[PathBuf]) -> usize {
    files
        .par_iter()
        .map(|f| {
            inputs::read_resources(std::slice::from_ref(f))
                .unwrap()
                .0
                .len()
        })
        .sum()
}

/// A drop of Bundles only, about `bytes` large, generated once.
fn ensure_bundles(out: &Path, bytes: u64) {
    if out.join("bundles").exists() {
        return;
    }
    // A generated patient with 40 readings takes about 143 kB of bundles (measured).
    let patients = (bytes / 143_000).max(1) as usize;
    let options = GenerateOptions {
        patients,
        seed: 50,
        readings_per_patient: 40,
        bundles: true,
        ndjson: false,
        invalid: false,
        gzip: false,
    };
    write_drop(out, &options).unwrap();
}

fn run_vitalake(views: &[View], files: &[PathBuf], out: &Path) -> Measured {
    std::fs::create_dir_all(out).unwrap();
    let started = Instant::now();
    let resources: Vec<Value> = files
        .par_iter()
        .flat_map_iter(|f| inputs::read_resources(std::slice::from_ref(f)).unwrap().0)
        .collect();
    let mut rows = 0u64;
    for (view, file) in views.iter().zip(VIEW_FILES) {
        let per_resource: Vec<Vec<Vec<vitalake::views::Cell>>> = resources
            .par_iter()
            .map(|r| {
                view.rows(r)
                    .expect("the silver views evaluate every generated resource")
            })
            .collect();
        let mut builder = view.builder();
        for row in per_resource.into_iter().flatten() {
            builder.push(row);
        }
        let batch = builder.finish().unwrap();
        rows += batch.num_rows() as u64;
        let path = out.join(file.replace(".json", ".parquet"));
        let mut sink = std::io::sink();
        output::write(
            &[batch],
            output::OutputFormat::Parquet,
            &mut sink,
            Some(&path),
        )
        .unwrap();
    }
    Measured {
        secs: started.elapsed().as_secs_f64(),
        rows,
        note: String::new(),
    }
}

fn skipped(note: &str) -> Measured {
    Measured {
        secs: f64::NAN,
        rows: 0,
        note: note.to_string(),
    }
}

const PATHLING_SCRIPT: &str = r#"
import json, sys, time
t0 = time.time()
from pathling import PathlingContext
pc = PathlingContext.create()
startup = time.time() - t0
t1 = time.time()
ds = pc.read.bundles(sys.argv[1], ["Patient", "Observation", "MedicationDispense"])
ds.write.parquet(sys.argv[2])
secs = time.time() - t1
spark = pc.spark
rows = sum(spark.read.parquet(sys.argv[2] + "/" + t + ".parquet").count() for t in ["Patient", "Observation", "MedicationDispense"])
print(json.dumps({"startup": startup, "secs": secs, "rows": rows}))
"#;

fn run_pathling(folder: &Path, out: &Path) -> Measured {
    let Ok(python) = std::env::var("VITALAKE_BENCH_PATHLING_PYTHON") else {
        return skipped("not run: set VITALAKE_BENCH_PATHLING_PYTHON");
    };
    let _ = std::fs::remove_dir_all(out);
    let output = Command::new(python)
        .args(["-c", PATHLING_SCRIPT])
        .arg(folder)
        .arg(out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let Some(result) = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
    else {
        return skipped(&format!(
            "failed: {}",
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ));
    };
    Measured {
        secs: result["secs"].as_f64().unwrap(),
        rows: result["rows"].as_u64().unwrap(),
        note: format!(
            "(+{:.1} s JVM start-up)",
            result["startup"].as_f64().unwrap()
        ),
    }
}

fn run_helios(files: &[PathBuf], view_dir: &Path, bundle_path: &Path) -> Measured {
    let Ok(cli) = std::env::var("VITALAKE_BENCH_HELIOS") else {
        return skipped("not run: set VITALAKE_BENCH_HELIOS");
    };
    let resources: Vec<Value> = files
        .par_iter()
        .flat_map_iter(|f| inputs::read_resources(std::slice::from_ref(f)).unwrap().0)
        .collect();
    let bundle = serde_json::json!({
        "resourceType": "Bundle", "type": "collection",
        "entry": resources.iter().map(|r| serde_json::json!({"resource": r})).collect::<Vec<_>>()
    });
    std::fs::write(bundle_path, serde_json::to_vec(&bundle).unwrap()).unwrap();
    let (mut secs, mut rows, mut failed) = (0.0, 0u64, Vec::new());
    for file in VIEW_FILES {
        let out = bundle_path.with_extension(file.replace(".json", ".csv"));
        let started = Instant::now();
        let status = Command::new(&cli)
            .arg("-v")
            .arg(view_dir.join(file))
            .arg("-b")
            .arg(bundle_path)
            .args(["-f", "csv", "-o"])
            .arg(&out)
            .output()
            .unwrap();
        secs += started.elapsed().as_secs_f64();
        if status.status.success() {
            rows += std::fs::read_to_string(&out)
                .map(|t| t.lines().count().saturating_sub(1) as u64)
                .unwrap_or(0);
        } else {
            failed.push(format!(
                "{file}: {}",
                String::from_utf8_lossy(&status.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
                    .chars()
                    .take(120)
                    .collect::<String>()
            ));
        }
    }
    Measured {
        secs,
        rows,
        note: if failed.is_empty() {
            String::new()
        } else {
            format!("(failed: {})", failed.join("; "))
        },
    }
}
