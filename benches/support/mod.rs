//! What the benches share: the release binary run in a child process, its peak RSS sampled;
//! `vitalake` on a bench's lake, `vitalake query` among its commands; settings from the environment; a blood-pressure reading.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A finished child process: its output, wall time and peak RSS.
pub struct Measured {
    pub output: Output,
    pub secs: f64,
    pub peak_rss_kb: u64,
}

/// Runs `cmd` with stdout captured, sampling VmHWM (the peak resident set) from
/// `/proc/<pid>/status` every 20 ms until it exits.
pub fn run_sampling_rss(cmd: &mut Command) -> Measured {
    let started = Instant::now();
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_rss_kb = 0;
    while child.try_wait().unwrap().is_none() {
        if let Some(hwm) = std::fs::read_to_string(&status_path)
            .ok()
            .and_then(|s| vm_hwm_kb(&s))
        {
            peak_rss_kb = peak_rss_kb.max(hwm);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = started.elapsed().as_secs_f64();
    let output = child.wait_with_output().unwrap();
    Measured {
        output,
        secs,
        peak_rss_kb,
    }
}

fn vm_hwm_kb(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The middle value (the upper one of an even count).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A whole-number setting from the environment, or `default`.
pub fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The release `vitalake` binary, on the lake at `lake`.
pub fn vitalake(lake: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vitalake"));
    cmd.arg("--lake").arg(lake);
    cmd
}

/// Runs `cmd` to its end; its standard output. Panics with its standard error if it failed.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A new lake at `path` holding the sample drop, so every table has its real schema, opened for a
/// bench to write its rows straight into.
pub fn sample_lake(path: &Path) -> vitalake::lake::Lake {
    let _ = std::fs::remove_dir_all(path);
    run_ok(vitalake(path).args([
        "ingest",
        "fhir",
        concat!(env!("CARGO_MANIFEST_DIR"), "/samples/drop"),
    ]));
    vitalake::lake::Lake::open(&path.display().to_string()).unwrap()
}

/// Runs `vitalake query` on the lake; the CSV rows without the header.
pub fn query_csv(lake: &Path, sql: &str) -> Vec<Vec<String>> {
    run_ok(vitalake(lake).args(["query", sql, "--format", "csv"]))
        .lines()
        .skip(1)
        .map(|line| line.split(',').map(str::to_string).collect())
        .collect()
}

/// A blood-pressure Observation as a wearable sends it (vital-signs panel 85354-9, systolic 8480-6
/// and diastolic 8462-4 in mm[Hg]), effective at `at` (RFC 3339).
pub fn bp_reading(id: &str, patient: &str, systolic: u64, diastolic: u64, at: &str) -> String {
    let quantity = |code: &str, value: u64| {
        serde_json::json!({"code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "valueQuantity": {"value": value, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}})
    };
    serde_json::json!({
        "resourceType": "Observation", "id": id, "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": at,
        "component": [quantity("8480-6", systolic), quantity("8462-4", diastolic)]
    })
    .to_string()
}
