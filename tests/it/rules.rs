//! Anomaly rules and alerts: `rules check` and `rules test` on rule folders; the stream sample's
//! injected episodes each alerted once; one alert per episode across a restart in its middle and
//! across SIGKILLs; rules reloaded when their folder changes, all or nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::common::{rows, run_ok, temp_lake, vitalake};
use crate::stream::{generate_stream, wait_for};

pub const RULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/anomaly-rules");
pub const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/samples/stream");

/// The rule each kind of injected episode must raise.
fn rule_for(kind: &str) -> &'static str {
    match kind {
        "hypertensive_crisis" => "hypertensive-crisis",
        "hypotension" => "hypotension",
        "rapid_drop" => "acute-systolic-drop",
        "implausible" => "data-quality-implausible",
        other => panic!("unknown episode kind {other}"),
    }
}

fn copy_rules(to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(RULES).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
    to.to_path_buf()
}

fn edit(file: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.contains(from), "{} has no {from:?}", file.display());
    std::fs::write(file, text.replacen(from, to, 1)).unwrap();
}

/// The CloudEvents a file sink holds.
fn sent(file: &Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn stream_with_rules(
    lake: &Path,
    source: &Path,
    rules: &Path,
    alerts: &Path,
    extra: &[&str],
) -> Command {
    let mut cmd = vitalake();
    cmd.arg("--lake")
        .arg(lake)
        .args(["stream", "--json", "--source"])
        .arg(format!("file:{}", source.display()))
        .arg("--rules")
        .arg(rules)
        .arg("--alerts")
        .arg(format!("file:{}", alerts.display()))
        .args(extra);
    cmd
}

/// Rows of silver/alerts: (id, rule, patient, status, delivery).
async fn recorded(lake: &vitalake::lake::Lake) -> Vec<Vec<String>> {
    rows(
        lake,
        "silver/alerts",
        "SELECT id, rule_id, patient_id, status, delivery FROM t ORDER BY id",
    )
    .await
}

pub fn episodes(dir: &Path) -> Vec<Value> {
    serde_json::from_str(&std::fs::read_to_string(dir.join("episodes.json")).unwrap()).unwrap()
}

/// Every injected episode raised exactly once by its rule, for its patient, sent, citing the
/// episode's observations; and the episode rules raise for no one else.
pub fn assert_episodes_alerted_once(events: &[Value], episodes: &[Value]) {
    let raised: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "org.vitalake.bp.alert.raised.v1")
        .collect();
    for episode in episodes {
        let rule = rule_for(episode["kind"].as_str().unwrap());
        let patient = format!("Patient/{}", episode["patient"].as_str().unwrap());
        let hits: Vec<&&Value> = raised
            .iter()
            .filter(|e| e["data"]["rule"]["id"] == rule && e["subject"] == patient.as_str())
            .collect();
        assert_eq!(hits.len(), 1, "{rule} for {patient}: {hits:#?}");
        let cited: BTreeSet<&str> = hits[0]["data"]["observations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["reference"].as_str().unwrap())
            .collect();
        for observation in episode["observations"].as_array().unwrap() {
            let reference = format!("Observation/{}", observation.as_str().unwrap());
            assert!(cited.contains(reference.as_str()), "{rule} cites {cited:?}");
        }
        let others: Vec<&&Value> = raised
            .iter()
            .filter(|e| e["data"]["rule"]["id"] == rule && e["subject"] != patient.as_str())
            .collect();
        assert!(others.is_empty(), "{rule} also raised for {others:#?}");
    }
}

#[test]
fn rules_check_names_file_line_and_field_and_rules_test_catches_a_wrong_expectation() {
    let dir = tempfile::tempdir().unwrap();
    let rules = copy_rules(&dir.path().join("rules"));
    let check = run_ok(vitalake().args(["rules", "check"]).arg(&rules));
    assert!(String::from_utf8_lossy(&check.stdout).contains("all valid"));
    let tested = run_ok(vitalake().args(["rules", "test"]).arg(&rules));
    let text = String::from_utf8_lossy(&tested.stdout).to_string();
    assert!(
        text.contains(" 0 failed") && !text.contains("FAIL"),
        "{text}"
    );

    let crisis = rules.join("hypertensive-crisis.yaml");
    edit(&crisis, "severity: high", "severity: urgent");
    edit(&crisis, "within: 15m", "within: 15 minutes");
    let out = vitalake()
        .args(["rules", "check"])
        .arg(&rules)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let file = crisis.display().to_string();
    assert!(text.contains(&format!("{file}:4: /severity:")), "{text}");
    assert!(
        text.contains(&format!("{file}:23: /sustain/within:")),
        "{text}"
    );
    // Given to `rules test`, the same folder is bad input (exit code 2), its problems named.
    let out = vitalake()
        .args(["rules", "test"])
        .arg(&rules)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        text.contains("2 problem(s) in the rules")
            && text.contains(&format!("{file}:4: /severity:")),
        "{text}"
    );

    std::fs::copy(Path::new(RULES).join("hypertensive-crisis.yaml"), &crisis).unwrap();
    edit(
        &crisis,
        "      - { event: raised, at: 5m }\n  - name: exactly 180/120",
        "      - { event: raised, at: 6m }\n  - name: exactly 180/120",
    );
    let out = vitalake()
        .args(["rules", "test"])
        .arg(&rules)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("FAIL  hypertensive-crisis / a second high reading within 15 minutes raises")
            && text.contains("expected [raised at 6m (sent)], got [raised at 5m (sent)]"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stream_samples_episodes_each_alert_once_and_a_rerun_sends_nothing() {
    let (dir, lake) = temp_lake();
    let lake_path = dir.path().join("lake");
    let alerts = dir.path().join("alerts.ndjson");
    let source = Path::new(SAMPLE).join("observations.ndjson");
    let report: Value = serde_json::from_slice(
        &run_ok(&mut stream_with_rules(
            &lake_path,
            &source,
            Path::new(RULES),
            &alerts,
            &[],
        ))
        .stdout,
    )
    .unwrap();
    let events = sent(&alerts);
    assert_episodes_alerted_once(&events, &episodes(Path::new(SAMPLE)));
    for event in &events {
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["data"]["delivery"], "sent");
        assert!(event["subject"].as_str().unwrap().starts_with("Patient/"));
        assert_eq!(event["data"]["rule"]["sha256"].as_str().unwrap().len(), 64);
    }
    // silver/alerts holds every sent alert, and what was recorded but not sent.
    let table = recorded(&lake).await;
    assert_eq!(report["alerts"], table.len() as u64);
    let sent_ids: BTreeSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(sent_ids.len(), events.len(), "an id sent twice");
    let recorded_sent: BTreeSet<&str> = table
        .iter()
        .filter(|r| r[4] == "sent")
        .map(|r| r[0].as_str())
        .collect();
    assert_eq!(sent_ids, recorded_sent);

    run_ok(&mut stream_with_rules(
        &lake_path,
        &source,
        Path::new(RULES),
        &alerts,
        &[],
    ));
    assert_eq!(sent(&alerts).len(), events.len());
    assert_eq!(recorded(&lake).await.len(), table.len());
}

/// The confirming reading of the sample's crisis arrives after a restart: the first reading is
/// known again from silver, and the crisis is raised once.
#[tokio::test(flavor = "multi_thread")]
async fn a_restart_between_the_two_readings_of_a_crisis_raises_it_once() {
    let (dir, lake) = temp_lake();
    let lake_path = dir.path().join("lake");
    let alerts = dir.path().join("alerts.ndjson");
    let text = std::fs::read_to_string(Path::new(SAMPLE).join("observations.ndjson")).unwrap();
    let confirming = text
        .lines()
        .position(|l| l.contains("\"id\":\"bp-p7ea-00001-s16\""))
        .unwrap();
    let source = dir.path().join("observations.ndjson");
    let head: String = text
        .lines()
        .take(confirming)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&source, head).unwrap();
    run_ok(&mut stream_with_rules(
        &lake_path,
        &source,
        Path::new(RULES),
        &alerts,
        &[],
    ));
    let crisis = |events: &[Value]| {
        events
            .iter()
            .filter(|e| e["data"]["rule"]["id"] == "hypertensive-crisis")
            .count()
    };
    assert_eq!(crisis(&sent(&alerts)), 0);
    std::fs::write(&source, &text).unwrap();
    run_ok(&mut stream_with_rules(
        &lake_path,
        &source,
        Path::new(RULES),
        &alerts,
        &[],
    ));
    let events = sent(&alerts);
    assert_episodes_alerted_once(&events, &episodes(Path::new(SAMPLE)));
    assert_eq!(crisis(&events), 2, "raised and resolved once each");
    let table = recorded(&lake).await;
    let ids: BTreeSet<&str> = table.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(ids.len(), table.len(), "an alert recorded twice");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_killed_at_random_moments_records_each_alert_once() {
    let (dir, lake) = temp_lake();
    let stream_dir = dir.path().join("stream");
    let source = generate_stream(&stream_dir, 60, 24, 5);
    let lake_path = dir.path().join("lake");
    let alerts = dir.path().join("alerts.ndjson");
    let args = ["--batch-events", "100"];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    for _ in 0..5 {
        let mut child = stream_with_rules(&lake_path, &source, Path::new(RULES), &alerts, &args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(300..2000)));
        let _ = child.kill();
        let _ = child.wait();
    }
    run_ok(&mut stream_with_rules(
        &lake_path,
        &source,
        Path::new(RULES),
        &alerts,
        &args,
    ));
    let events = sent(&alerts);
    assert_episodes_alerted_once(&dedup(&events), &episodes(&stream_dir));
    let table = recorded(&lake).await;
    let ids: BTreeSet<&str> = table.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(ids.len(), table.len(), "an alert recorded twice");
    // At least once: whatever was sent is on record (an alert sent just before a kill is sent
    // again with the same id, which receivers drop).
    for event in &events {
        assert!(ids.contains(event["id"].as_str().unwrap()), "{event}");
    }
}

/// An alert comes only from a reading that passed the checks silver holds readings to: the second
/// reading of a crisis that fails the profile (a status outside its required value set) or the
/// structure (an element FHIR does not have) lands in quarantine and raises nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_reading_that_lands_in_quarantine_raises_no_alert() {
    let (dir, lake) = temp_lake();
    let lake_path = dir.path().join("lake");
    let alerts = dir.path().join("alerts.ndjson");
    let source = dir.path().join("observations.ndjson");
    std::fs::write(&source, "").unwrap();
    let spoil = |mut pair: Vec<String>, field: &str, value: Value| {
        let mut second: Value = serde_json::from_str(&pair[1]).unwrap();
        second[field] = value;
        pair[1] = second.to_string();
        pair
    };
    append(&source, &crisis_pair("checked", 0));
    append(
        &source,
        &spoil(crisis_pair("bad-status", 0), "status", json!("provisional")),
    );
    append(
        &source,
        &spoil(
            crisis_pair("unknown-element", 0),
            "systolicValue",
            json!(198),
        ),
    );
    run_ok(&mut stream_with_rules(
        &lake_path,
        &source,
        Path::new(RULES),
        &alerts,
        &[],
    ));
    let subjects: BTreeSet<String> = sent(&alerts)
        .iter()
        .map(|e| e["subject"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(subjects, BTreeSet::from(["Patient/checked".to_string()]));
    let patients: BTreeSet<String> = recorded(&lake)
        .await
        .into_iter()
        .map(|r| r[2].clone())
        .collect();
    assert_eq!(patients, BTreeSet::from(["checked".to_string()]));
    let quarantined = rows(&lake, "silver/quarantine", "SELECT raw FROM t").await;
    assert_eq!(quarantined.len(), 2);
    assert!(
        quarantined
            .iter()
            .all(|r| r[0].contains("-b\"") && !r[0].contains("checked"))
    );
}

fn dedup(events: &[Value]) -> Vec<Value> {
    let mut seen = BTreeMap::new();
    for event in events {
        seen.entry(event["id"].as_str().unwrap().to_string())
            .or_insert_with(|| event.clone());
    }
    seen.into_values().collect()
}

/// A blood-pressure reading (or a heart rate) as the stream sample writes them.
fn reading(patient: &str, id: &str, minute: u32, values: &[(&str, f64)]) -> String {
    let components: Vec<Value> = values
        .iter()
        .filter(|(code, _)| *code != "8867-4")
        .map(|(code, value)| {
            json!({"code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                   "valueQuantity": {"value": value, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}})
        })
        .collect();
    let time = format!("2026-11-10T{:02}:{:02}:00Z", 8 + minute / 60, minute % 60);
    let mut observation = json!({
        "resourceType": "Observation", "id": id, "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": time,
    });
    match values.iter().find(|(code, _)| *code == "8867-4") {
        Some((_, rate)) => {
            observation["code"] =
                json!({"coding": [{"system": "http://loinc.org", "code": "8867-4"}]});
            observation["valueQuantity"] = json!({"value": rate, "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min"});
        }
        None => {
            observation["code"] =
                json!({"coding": [{"system": "http://loinc.org", "code": "85354-9"}]});
            observation["component"] = Value::Array(components);
        }
    }
    observation.to_string()
}

fn append(file: &Path, lines: &[String]) {
    let mut f = std::fs::OpenOptions::new().append(true).open(file).unwrap();
    for line in lines {
        writeln!(f, "{line}").unwrap();
    }
}

fn crisis_pair(patient: &str, minute: u32) -> Vec<String> {
    vec![
        reading(
            patient,
            &format!("{patient}-a"),
            minute,
            &[("8480-6", 195.0), ("8462-4", 110.0)],
        ),
        reading(
            patient,
            &format!("{patient}-b"),
            minute + 4,
            &[("8480-6", 198.0), ("8462-4", 112.0)],
        ),
    ]
}

#[test]
fn rules_reload_when_their_folder_changes_and_a_broken_edit_keeps_the_running_set() {
    let dir = tempfile::tempdir().unwrap();
    let rules = copy_rules(&dir.path().join("rules"));
    let source = dir.path().join("readings.ndjson");
    std::fs::write(&source, "").unwrap();
    let alerts = dir.path().join("alerts.ndjson");
    let mut child = stream_with_rules(
        &dir.path().join("lake"),
        &source,
        &rules,
        &alerts,
        &["--follow", "--batch-ms", "100"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let (log_tx, log) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = log_tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let mut wait_log = |what: &str| {
        wait_for(what, || {
            lines.extend(log.try_iter());
            lines.iter().any(|l: &String| l.contains(what))
        })
    };
    wait_log("anomaly rules loaded");
    let rule_raised = |rule: &str, patient: &str| {
        sent(&alerts).iter().any(|e| {
            e["data"]["rule"]["id"] == rule && e["subject"] == format!("Patient/{patient}").as_str()
        })
    };

    // A broken edit: refused, and the running rules still alert.
    let crisis = rules.join("hypertensive-crisis.yaml");
    edit(&crisis, "severity: high", "severity: urgent");
    wait_log("rule reload refused");
    append(&source, &crisis_pair("reload-a", 0));
    wait_for("the crisis of reload-a", || {
        rule_raised("hypertensive-crisis", "reload-a")
    });

    // A valid edit that disables the crisis rule: the new set is used from then on.
    edit(&crisis, "severity: urgent", "severity: high");
    edit(&crisis, "status: active", "status: disabled");
    wait_log("anomaly rules reloaded");
    let mut next = crisis_pair("reload-b", 30);
    next.push(reading("reload-b", "reload-b-hr", 40, &[("8867-4", 140.0)]));
    append(&source, &next);
    wait_for("the pulse alert of reload-b", || {
        rule_raised("news2-pulse", "reload-b")
    });
    assert!(!rule_raised("hypertensive-crisis", "reload-b"));
    run_ok(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    assert!(child.wait().unwrap().success());
}
