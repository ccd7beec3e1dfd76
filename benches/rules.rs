//! Anomaly rules: evaluator throughput and memory on a generated stream, and end-to-end alert
//! latency through `vitalake stream --source stdin --rules anomaly-rules --alerts stdout`.
//!
//! ```sh
//! cargo bench --bench rules   # VITALAKE_BENCH_RULES_READINGS=10000000 VITALAKE_BENCH_RULES_PATIENTS=100000
//!                             # VITALAKE_BENCH_LATENCY_RATE=5000 VITALAKE_BENCH_LATENCY_SECS=30
//! ```
//!
//! 1. **Throughput**: the shipped rules (`anomaly-rules/`) over N readings of P patients, one
//!    thread, readings built on the fly (their cost included), with the binary's allocator (mimalloc). Readings are spread over 14 days, so
//!    every reading stays in the baseline rule's window: the state is at its largest. Memory is the
//!    process's resident set after the run minus before it, with the evaluator still alive.
//! 2. **Latency**: the release binary reading stdin, fed at a fixed rate of blood-pressure events;
//!    one patient in 50 has a hypertensive crisis (two readings 4 minutes apart). Latency is from
//!    writing the confirming reading to reading its alert on the binary's stdout.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use vitalake::rules::evaluate::{Evaluator, Options};
use vitalake::rules::{Reading, RuleSet};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn rules() -> RuleSet {
    RuleSet::load_dir(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/anomaly-rules"
    )))
    .unwrap_or_else(|p| panic!("{p}"))
}

fn throughput() {
    let readings = env("VITALAKE_BENCH_RULES_READINGS", 10_000_000);
    let patients = env("VITALAKE_BENCH_RULES_PATIENTS", 100_000);
    let rounds = readings / patients;
    let ids: Vec<String> = (0..patients).map(|p| format!("bench-{p:06}")).collect();
    let start = 1_767_225_600_000i64;
    let spacing = 14 * 86_400_000 / rounds as i64;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    let before = rss_kb();
    let mut evaluator = Evaluator::new(&rules(), Options::default());
    let mut alerts = 0u64;
    let started = Instant::now();
    for round in 0..rounds {
        for (p, patient) in ids.iter().enumerate() {
            let at = start + round as i64 * spacing + (p as i64 * 7_919) % spacing;
            // About 1 patient in 20 is hypertensive; a few readings are very high or low.
            let base = if p % 20 == 0 { 150.0 } else { 122.0 };
            let systolic: f64 = base
                + rng.random_range(-12.0..12.0)
                + if rng.random_ratio(1, 2000) { 70.0 } else { 0.0 };
            let diastolic: f64 = systolic * 0.62 + rng.random_range(-5.0..5.0);
            let reading = Reading {
                patient: patient.clone(),
                observation: format!("bp-{p}-{round}"),
                at,
                received_at: Some(at),
                systolic: Some(systolic.round()),
                diastolic: Some(diastolic.round()),
                heart_rate: None,
                unit: Some("mm[Hg]".into()),
                device: None,
            };
            alerts += evaluator.evaluate(&reading, at).len() as u64;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let state_mb = rss_kb().saturating_sub(before) as f64 / 1024.0;
    let total = rounds * patients;
    println!(
        "rules throughput: {total} readings, {patients} patients, {} rules: {secs:.1} s, {:.0} readings/s on one core, {alerts} alert events, state {state_mb:.0} MB resident",
        rules().rules.len(),
        total as f64 / secs
    );
    drop(evaluator);
}

fn bp_event(patient: &str, id: &str, minute: u64, systolic: u32, diastolic: u32) -> String {
    format!(
        concat!(
            r#"{{"resourceType":"Observation","id":"{id}","status":"final","category":[{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs"}}]}}],"#,
            r#""code":{{"coding":[{{"system":"http://loinc.org","code":"85354-9"}}]}},"subject":{{"reference":"Patient/{patient}"}},"effectiveDateTime":"2026-11-10T{h:02}:{m:02}:00Z","#,
            r#""component":[{{"code":{{"coding":[{{"system":"http://loinc.org","code":"8480-6"}}]}},"valueQuantity":{{"value":{s},"unit":"mmHg","system":"http://unitsofmeasure.org","code":"mm[Hg]"}}}},"#,
            r#"{{"code":{{"coding":[{{"system":"http://loinc.org","code":"8462-4"}}]}},"valueQuantity":{{"value":{d},"unit":"mmHg","system":"http://unitsofmeasure.org","code":"mm[Hg]"}}}}]}}"#
        ),
        id = id,
        patient = patient,
        h = (minute / 60) % 24,
        m = minute % 60,
        s = systolic,
        d = diastolic
    )
}

fn latency() {
    let rate = env("VITALAKE_BENCH_LATENCY_RATE", 5_000);
    let secs = env("VITALAKE_BENCH_LATENCY_SECS", 30);
    let lake = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vitalake"))
        .arg("--lake")
        .arg(lake.path())
        .args([
            "stream", "--source", "stdin", "--alerts", "stdout", "--rules",
        ])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/anomaly-rules"))
        .env("VITALAKE_VALIDATE_ENABLED", "true")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let stdout = child.stdout.take().unwrap();
    let seen = sent_at.clone();
    let reader = std::thread::spawn(move || {
        let mut latencies = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if event["type"] != "org.vitalake.bp.alert.raised.v1"
                || event["data"]["rule"]["id"] != "hypertensive-crisis"
            {
                continue;
            }
            let received = Instant::now();
            let confirming = event["data"]["observations"][1]["reference"]
                .as_str()
                .unwrap_or_default();
            if let Some(sent) = seen
                .lock()
                .unwrap()
                .get(confirming.trim_start_matches("Observation/"))
            {
                latencies.push(received.duration_since(*sent));
            }
        }
        latencies
    });
    let mut stdin = child.stdin.take().unwrap();
    let total = rate * secs;
    let started = Instant::now();
    let mut crises = 0u64;
    for i in 0..total {
        // Readings of 2,000 patients round-robin; patient k's two readings 4 minutes apart.
        let patient = format!("lat-{}", i % 2_000);
        let round = i / 2_000;
        let minute = round * 4;
        let crisis = (i % 2_000) % 50 == 0 && round % 10 == 1;
        let (s, d) = if crisis || ((i % 2_000) % 50 == 0 && round % 10 == 0) {
            (195, 112)
        } else {
            (118 + (i % 13) as u32, 76)
        };
        let id = format!("o-{i}");
        let line = bp_event(&patient, &id, minute, s, d);
        let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if crisis {
            crises += 1;
            sent_at.lock().unwrap().insert(id, Instant::now());
        }
        writeln!(stdin, "{line}").unwrap();
        if crisis {
            stdin.flush().unwrap();
        }
    }
    let send_secs = started.elapsed().as_secs_f64();
    drop(stdin);
    let status = child.wait().unwrap();
    assert!(status.success());
    let mut latencies = reader.join().unwrap();
    latencies.sort();
    let pct =
        |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize].as_secs_f64() * 1000.0;
    println!(
        "alert latency at {rate} events/s for {secs} s ({total} events sent in {send_secs:.1} s): {} of {crises} crises alerted; p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
}

fn main() {
    throughput();
    latency();
}
