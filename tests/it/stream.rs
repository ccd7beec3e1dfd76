//! `vitalake stream` on the embedded default sources (an NDJSON file, followed or not, and stdin):
//! every event once in bronze and silver across re-runs, SIGKILL and SIGTERM; malformed events in
//! quarantine with their sequence numbers; the checkpoint store's ownership race on Azurite.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use azure_messaging_eventhubs::CheckpointStore;
use azure_messaging_eventhubs::models::{Checkpoint, Ownership};
use rand::{Rng, SeedableRng};
use serde_json::Value;
use vitalake::stream::checkpoints::Checkpoints;

use crate::azure::Azurite;
use crate::common::{count, rows, run_ok, temp_lake, vitalake};

/// `vitalake generate stream` into `dir`; returns the observations file.
pub fn generate_stream(dir: &Path, patients: usize, hours: u32, seed: u64) -> PathBuf {
    run_ok(
        vitalake()
            .args(["generate", "stream", "--patients", &patients.to_string()])
            .args([
                "--hours",
                &hours.to_string(),
                "--seed",
                &seed.to_string(),
                "--out",
            ])
            .arg(dir),
    );
    dir.join("observations.ndjson")
}

fn stream(lake: &Path, file: &Path, extra: &[&str]) -> Command {
    let mut cmd = vitalake();
    cmd.arg("--lake")
        .arg(lake)
        .args(["stream", "--json", "--source"])
        .arg(format!("file:{}", file.display()))
        .args(extra);
    cmd
}

fn report(cmd: &mut Command) -> Value {
    serde_json::from_slice(&run_ok(cmd).stdout).unwrap()
}

/// What the file holds, walked independently of vitalake: events, and the distinct ids of blood
/// pressure panels (LOINC 85354-9) and heart rates (8867-4).
pub struct Expected {
    pub events: u64,
    distinct_lines: u64,
    /// The last line each blood-pressure id is on.
    bp_lines: std::collections::BTreeMap<String, u64>,
    pub bp_ids: BTreeSet<String>,
    hr_ids: BTreeSet<String>,
}

pub fn expected(file: &Path) -> Expected {
    let text = std::fs::read_to_string(file).unwrap();
    let mut out = Expected {
        events: 0,
        distinct_lines: text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect::<BTreeSet<_>>()
            .len() as u64,
        bp_lines: Default::default(),
        bp_ids: BTreeSet::new(),
        hr_ids: BTreeSet::new(),
    };
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        out.events += 1;
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            continue; // a malformed event: it counts, and lands in quarantine
        };
        let resources: Vec<&Value> = match event["resourceType"].as_str() {
            Some("Bundle") => event["entry"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| &e["resource"])
                .collect(),
            _ => vec![&event],
        };
        for r in resources {
            let codes: Vec<&str> = r["code"]["coding"]
                .as_array()
                .map(|c| c.iter().filter_map(|c| c["code"].as_str()).collect())
                .unwrap_or_default();
            let id = r["id"].as_str().unwrap().to_string();
            if codes.contains(&"85354-9") {
                out.bp_lines.insert(id.clone(), number as u64 + 1);
                out.bp_ids.insert(id);
            } else if codes.contains(&"8867-4") {
                out.hr_ids.insert(id);
            }
        }
    }
    out
}

/// Bronze holds each event once; silver holds each reading once.
pub async fn assert_every_event_once_in(
    lake: &vitalake::lake::Lake,
    bronze: &str,
    expected: &Expected,
) {
    assert_eq!(
        rows(
            lake,
            bronze,
            "SELECT count(*), count(DISTINCT concat(partition_id, '/', CAST(sequence_number AS VARCHAR))) FROM t"
        )
        .await,
        vec![vec![expected.events.to_string(), expected.events.to_string()]]
    );
    assert_silver_once(lake, expected).await;
}

async fn assert_every_event_once(lake: &vitalake::lake::Lake, expected: &Expected) {
    assert_every_event_once_in(lake, "bronze/eventhubs/observations", expected).await;
}

/// Silver holds each reading of the input once.
async fn assert_silver_once(lake: &vitalake::lake::Lake, expected: &Expected) {
    let ids = |table: &'static str| async move {
        rows(lake, table, "SELECT id FROM t")
            .await
            .into_iter()
            .map(|r| r[0].clone())
            .collect::<Vec<_>>()
    };
    let bp = ids("silver/fhir/blood_pressure").await;
    assert_eq!(
        bp.len(),
        expected.bp_ids.len(),
        "no reading twice in silver"
    );
    assert_eq!(bp.into_iter().collect::<BTreeSet<_>>(), expected.bp_ids);
    let hr = ids("silver/fhir/heart_rate").await;
    assert_eq!(
        hr.into_iter().collect::<BTreeSet<_>>().len(),
        expected.hr_ids.len()
    );
    assert_eq!(
        count(lake, "silver/fhir/heart_rate").await,
        expected.hr_ids.len() as u64
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stream_sample_lands_every_event_once_and_a_rerun_adds_nothing() {
    let (dir, lake) = temp_lake();
    let file = generate_stream(&dir.path().join("stream"), 10, 24, 5);
    let expected = expected(&file);
    let lake_path = dir.path().join("lake");
    let first = report(&mut stream(&lake_path, &file, &["--batch-events", "250"]));
    assert_eq!(first["events"], expected.events);
    assert!(first["batches"].as_u64().unwrap() >= expected.events / 250);
    assert_eq!(first["quarantined"], 0);
    assert_every_event_once(&lake, &expected).await;
    // The sample sends some events twice, and silver (checked above) still has each reading once.
    assert!(expected.distinct_lines < expected.events);
    let again = report(&mut stream(&lake_path, &file, &[]));
    assert_eq!(again["events"], 0);
    assert_eq!(again["skipped_already_landed"], expected.events);
    assert_every_event_once(&lake, &expected).await;
    // Bronze keeps the provenance a replay needs.
    let provenance = rows(
        &lake,
        "bronze/eventhubs/observations",
        "SELECT source, partition_id, min(sequence_number), max(sequence_number) FROM t GROUP BY source, partition_id",
    )
    .await;
    let canonical = std::fs::canonicalize(&file).unwrap().display().to_string();
    assert_eq!(
        provenance,
        vec![vec![
            "file/observations/$Default".to_string(),
            canonical,
            "1".to_string(),
            expected.events.to_string()
        ]]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_foreign_events_go_to_quarantine_with_their_sequence_numbers() {
    let (dir, lake) = temp_lake();
    let file = dir.path().join("events.ndjson");
    let good = |id: &str| {
        format!(
            r#"{{"resourceType":"Observation","id":"{id}","status":"final","code":{{"coding":[{{"system":"http://loinc.org","code":"8867-4"}}]}},"subject":{{"reference":"Patient/p1"}},"effectiveDateTime":"2026-11-02T08:00:00Z","valueQuantity":{{"value":72,"unit":"/min","system":"http://unitsofmeasure.org","code":"/min"}}}}"#
        )
    };
    let lines = [
        good("hr-1"),
        r#"{"resourceType":"Observation","id":"broken","status":"#.to_string(),
        r#"{"resourceType":"Patient","id":"p1"}"#.to_string(),
        r#"{"resourceType":"Observation","id":"hr-x","status":"final","code":{"text":"hr"},"pulse":80}"#.to_string(),
        good("hr-2"),
        good("hr-1"),
    ];
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let lake_path = dir.path().join("lake");
    let report = report(&mut stream(&lake_path, &file, &[]));
    assert_eq!(report["events"], 6);
    assert_eq!(report["quarantined"], 3);
    let quarantined = rows(
        &lake,
        "silver/quarantine",
        "SELECT line, stage, source_uri, errors[1]['rule'] FROM t ORDER BY line",
    )
    .await;
    let uri = format!("file://{}", std::fs::canonicalize(&file).unwrap().display());
    let lines: Vec<&str> = quarantined.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(lines, ["2", "3", "4"]);
    assert!(quarantined.iter().all(|r| r[1] == "stream" && r[2] == uri));
    assert_eq!(quarantined[1][3], "stream-type");
    // The duplicate of hr-1 (line 6) lands once in silver; all six events are in bronze.
    assert_eq!(
        rows(
            &lake,
            "silver/fhir/heart_rate",
            "SELECT id FROM t ORDER BY id"
        )
        .await,
        vec![vec!["hr-1".to_string()], vec!["hr-2".to_string()]]
    );
    assert_eq!(count(&lake, "bronze/eventhubs/observations").await, 6);
}

/// The views run where each event is decoded, ahead of its batch: a resource a silver view cannot
/// evaluate still goes to quarantine with the view's reason, and the rest of its batch lands.
#[tokio::test(flavor = "multi_thread")]
async fn an_event_a_silver_view_cannot_evaluate_goes_to_quarantine_with_the_views_reason() {
    let (dir, lake) = temp_lake();
    let views = dir.path().join("views");
    std::fs::create_dir(&views).unwrap();
    // One code per row: an Observation coded twice gives the column two values.
    std::fs::write(
        views.join("codes.json"),
        r#"{"resourceType":"ViewDefinition","name":"codes","status":"active","resource":"Observation",
            "select":[{"column":[{"name":"id","path":"getResourceKey()","type":"id"},
                                 {"name":"code","path":"code.coding.code","type":"code"}]}]}"#,
    )
    .unwrap();
    let heart_rate = |id: &str, extra_coding: &str| {
        format!(
            r#"{{"resourceType":"Observation","id":"{id}","status":"final","code":{{"coding":[{{"system":"http://loinc.org","code":"8867-4"}}{extra_coding}]}},"subject":{{"reference":"Patient/p1"}},"effectiveDateTime":"2026-11-02T08:00:00Z","valueQuantity":{{"value":72,"unit":"/min","system":"http://unitsofmeasure.org","code":"/min"}}}}"#
        )
    };
    let file = dir.path().join("events.ndjson");
    let lines = [
        heart_rate("hr-1", ""),
        heart_rate(
            "hr-2",
            r#",{"system":"http://snomed.info/sct","code":"364075005"}"#,
        ),
    ];
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let report =
        report(stream(&dir.path().join("lake"), &file, &[]).env("VITALAKE_INGEST_VIEWS", &views));
    assert_eq!(report["events"], 2);
    assert_eq!(report["quarantined"], 1);
    assert_eq!(
        rows(&lake, "silver/fhir/codes", "SELECT id, code FROM t").await,
        vec![vec!["hr-1".to_string(), "8867-4".to_string()]]
    );
    let quarantined = rows(
        &lake,
        "silver/quarantine",
        "SELECT resource_id, stage, errors[1]['rule'], errors[1]['location'], errors[1]['message'] FROM t",
    )
    .await;
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    assert_eq!(
        quarantined[0][..4],
        [
            "hr-2",
            vitalake::ingest::silver::VIEW_STAGE,
            "view",
            "codes"
        ]
    );
    assert!(quarantined[0][4].contains("2 values"), "{quarantined:?}");
}

/// An event that is a Bundle deleting a reading (`DELETE Observation/hr-1`) takes it out of silver,
/// as a file drop's would; nothing is quarantined.
#[tokio::test(flavor = "multi_thread")]
async fn a_deleting_bundle_event_takes_the_reading_out_of_silver() {
    let (dir, lake) = temp_lake();
    let heart_rate = |id: &str| {
        format!(
            r#"{{"resourceType":"Observation","id":"{id}","status":"final","code":{{"coding":[{{"system":"http://loinc.org","code":"8867-4"}}]}},"subject":{{"reference":"Patient/p1"}},"effectiveDateTime":"2026-11-02T08:00:00Z","valueQuantity":{{"value":72,"unit":"/min","system":"http://unitsofmeasure.org","code":"/min"}}}}"#
        )
    };
    let file = dir.path().join("events.ndjson");
    std::fs::write(
        &file,
        format!("{}\n{}\n", heart_rate("hr-1"), heart_rate("hr-2")),
    )
    .unwrap();
    let lake_path = dir.path().join("lake");
    report(&mut stream(&lake_path, &file, &[]));
    let ids = || async {
        rows(
            &lake,
            "silver/fhir/heart_rate",
            "SELECT id FROM t ORDER BY id",
        )
        .await
    };
    assert_eq!(ids().await, [["hr-1"], ["hr-2"]]);

    let delete = r#"{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"DELETE","url":"Observation/hr-1"}}]}"#;
    std::fs::write(
        &file,
        format!("{}\n{}\n{delete}\n", heart_rate("hr-1"), heart_rate("hr-2")),
    )
    .unwrap();
    let second = report(&mut stream(&lake_path, &file, &[]));
    assert_eq!(
        (second["events"].as_u64(), second["quarantined"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(ids().await, [["hr-2"]]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_killed_at_random_moments_ends_with_every_event_once() {
    let (dir, lake) = temp_lake();
    let file = generate_stream(&dir.path().join("stream"), 120, 24, 9);
    let expected = expected(&file);
    let lake_path = dir.path().join("lake");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    for _ in 0..6 {
        let mut child = stream(&lake_path, &file, &["--batch-events", "400"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(300..2500)));
        let _ = child.kill();
        let _ = child.wait();
    }
    run_ok(&mut stream(&lake_path, &file, &["--batch-events", "400"]));
    assert_every_event_once(&lake, &expected).await;
}

/// A batch in bronze whose silver merge may have been cut short: setting the checkpoint back makes
/// the next run merge those events again, in redo mode, and silver still holds each reading once.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_between_bronze_and_silver_is_finished_once_by_the_next_run() {
    let (dir, lake) = temp_lake();
    let file = generate_stream(&dir.path().join("stream"), 12, 12, 21);
    let expected = expected(&file);
    let lake_path = dir.path().join("lake");
    run_ok(&mut stream(&lake_path, &file, &["--batch-events", "200"]));
    let checkpoints =
        Checkpoints::open(&lake_path.join("_checkpoints").display().to_string()).unwrap();
    let partition = std::fs::canonicalize(&file).unwrap().display().to_string();
    checkpoints
        .update_checkpoint(Checkpoint {
            fully_qualified_namespace: "file".into(),
            event_hub_name: "observations".into(),
            consumer_group: "$Default".into(),
            partition_id: partition.clone(),
            offset: None,
            sequence_number: Some(expected.events as i64 - 300),
        })
        .await
        .unwrap();
    // And silver lost a reading of that range, as if its merge had not happened.
    let (lost, _) = expected
        .bp_lines
        .iter()
        .find(|(_, line)| **line > expected.events - 300)
        .unwrap();
    let table = lake.table("silver/fhir/blood_pressure").await.unwrap();
    table
        .delete()
        .with_predicate(format!("id = '{lost}'"))
        .await
        .unwrap();
    assert_eq!(
        count(&lake, "silver/fhir/blood_pressure").await,
        expected.bp_ids.len() as u64 - 1
    );
    let again = report(&mut stream(&lake_path, &file, &[]));
    assert_eq!(again["recovered_events"], 300);
    assert_eq!(again["events"], 0);
    assert_every_event_once(&lake, &expected).await;
}

pub fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    run_ok(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    child.wait().unwrap()
}

/// A child process killed when dropped: a failing test leaves no stream running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `vitalake stream` following `file` with `extra` arguments, its metrics on a free port.
fn follow(lake: &Path, file: &Path, extra: &[&str]) -> (Running, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics = format!("127.0.0.1:{port}");
    let mut args = vec!["--follow", "--metrics", &metrics];
    args.extend(extra);
    let child = stream(lake, file, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (Running(child), port)
}

pub fn metrics(port: u16) -> String {
    use std::io::Read;
    let Ok(mut socket) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    socket
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    let _ = socket.read_to_string(&mut text);
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn a_followed_file_streams_new_lines_and_sigterm_stops_after_landing() {
    let (dir, lake) = temp_lake();
    let sample = generate_stream(&dir.path().join("stream"), 4, 6, 2);
    let all: Vec<String> = std::fs::read_to_string(&sample)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let (head, tail) = all.split_at(all.len() / 2);
    let file = dir.path().join("live.ndjson");
    std::fs::write(&file, head.join("\n") + "\n").unwrap();
    let (mut child, port) = follow(&dir.path().join("lake"), &file, &["--batch-ms", "200"]);
    let landed =
        |n: usize| move || metrics(port).contains(&format!("vitalake_stream_events_total {n}\n"));
    wait_for("the first half", landed(head.len()));
    let mut writer = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    writer
        .write_all((tail.join("\n") + "\n").as_bytes())
        .unwrap();
    wait_for("the lines appended later", landed(all.len()));
    assert!(metrics(port).contains("vitalake_stream_batch_seconds_count"));
    let status = terminate(&mut child.0);
    assert!(status.success(), "SIGTERM is a clean stop: {status}");
    assert_eq!(
        count(&lake, "bronze/eventhubs/observations").await,
        all.len() as u64
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stdin_events_are_numbered_on_from_the_last_run() {
    let (dir, lake) = temp_lake();
    let sample = generate_stream(&dir.path().join("stream"), 3, 4, 8);
    let text = std::fs::read_to_string(&sample).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let lake_path = dir.path().join("lake");
    for part in [&lines[..10], &lines[10..]] {
        let mut child = vitalake()
            .arg("--lake")
            .arg(&lake_path)
            .args(["stream", "--source", "stdin", "--hub", "wearables"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all((part.join("\n") + "\n").as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
    }
    assert_eq!(
        rows(
            &lake,
            "bronze/eventhubs/wearables",
            "SELECT count(*), count(DISTINCT sequence_number), min(sequence_number), max(sequence_number), min(partition_id) FROM t"
        )
        .await,
        vec![vec![
            lines.len().to_string(),
            lines.len().to_string(),
            "1".to_string(),
            lines.len().to_string(),
            "stdin".to_string()
        ]]
    );
}

/// What a user sees when a stream cannot start for want of a file or a setting: the cause once,
/// and exit code 2, which tells a scheduler to fix the setup rather than retry.
#[test]
fn a_stream_that_cannot_start_says_why_once() {
    let (dir, _lake) = temp_lake();
    let lake_path = dir.path().join("lake");
    let missing = dir.path().join("no-such-file.ndjson");
    let out = stream(&lake_path, &missing, &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("No such file").count(), 1, "{stderr}");
    assert!(stderr.contains("no-such-file.ndjson"), "{stderr}");

    // Event Hubs without a connection string or a namespace: a setting to fix, not a retry.
    let out = vitalake()
        .arg("--lake")
        .arg(&lake_path)
        .args(["stream", "--source", "eventhubs:observations"])
        .env_remove("EVENTHUBS_CONNECTION_STRING")
        .env_remove("EVENTHUBS_NAMESPACE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("EVENTHUBS_CONNECTION_STRING") && stderr.contains("EVENTHUBS_NAMESPACE"),
        "{stderr}"
    );

    // A lake folder that cannot be made: a setting to fix too.
    let out = stream(Path::new("/proc/no-such-lake"), &missing, &[])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid lake root"), "{stderr}");
}

/// The Blob checkpoint store on Azurite: two instances racing for one partition with the same
/// ETag, exactly one wins; checkpoints read back per partition, a file path as partition id too.
#[tokio::test(flavor = "multi_thread")]
async fn blob_checkpoint_store_lets_exactly_one_racer_own_a_partition() {
    let azurite = Azurite::shared();
    azurite.create_container("checkpoints");
    let store = Checkpoints::open("az://checkpoints/vitalake").unwrap();
    let ownership = |owner: &str, etag| Ownership {
        fully_qualified_namespace: "ns.servicebus.windows.net".into(),
        event_hub_name: "bp".into(),
        consumer_group: "$Default".into(),
        partition_id: "0".into(),
        owner_id: Some(owner.into()),
        etag,
        last_modified_time: None,
    };
    let first = store
        .claim_ownership(&[ownership("a", None)])
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    assert!(
        store
            .claim_ownership(&[ownership("b", None)])
            .await
            .unwrap()
            .is_empty(),
        "a blind claim on an owned partition loses"
    );
    let seen = first[0].etag.clone();
    let (claim_b, claim_c) = ([ownership("b", seen.clone())], [ownership("c", seen)]);
    let (b, c) = tokio::join!(
        store.claim_ownership(&claim_b),
        store.claim_ownership(&claim_c)
    );
    let (b, c) = (b.unwrap(), c.unwrap());
    assert_eq!(b.len() + c.len(), 1, "exactly one racer wins");
    let winner = if b.is_empty() { "c" } else { "b" };
    let owners = store
        .list_ownerships("ns.servicebus.windows.net", "bp", "$Default")
        .await
        .unwrap();
    assert_eq!(owners.len(), 1);
    assert_eq!(owners[0].owner_id.as_deref(), Some(winner));
    assert!(owners[0].last_modified_time.is_some());
    // The winner renews with the ETag it got back.
    let renewed = store
        .claim_ownership(&[Ownership {
            etag: owners[0].etag.clone(),
            ..ownership(winner, None)
        }])
        .await
        .unwrap();
    assert_eq!(renewed.len(), 1);

    for (partition, seq) in [("0", 41), ("/data/bp.ndjson", 7), ("0", 42)] {
        store
            .update_checkpoint(Checkpoint {
                fully_qualified_namespace: "ns.servicebus.windows.net".into(),
                event_hub_name: "bp".into(),
                consumer_group: "$Default".into(),
                partition_id: partition.into(),
                offset: Some(format!("{}", seq * 10)),
                sequence_number: Some(seq),
            })
            .await
            .unwrap();
    }
    let checkpoints = store
        .list_checkpoints("ns.servicebus.windows.net", "bp", "$Default")
        .await
        .unwrap();
    let found: Vec<(String, Option<i64>)> = checkpoints
        .into_iter()
        .map(|c| (c.partition_id, c.sequence_number))
        .collect();
    assert_eq!(
        found,
        [
            ("/data/bp.ndjson".to_string(), Some(7)),
            ("0".to_string(), Some(42))
        ]
    );
}

/// Active data files of a table (the Parquet files its current version reads).
async fn active_files(lake: &vitalake::lake::Lake, table: &str) -> usize {
    let table = lake.existing_table(table).await.unwrap().unwrap();
    table.snapshot().unwrap().log_data().into_iter().count()
}

/// A long-running stream keeps its tables' file counts bounded by itself: a landing a second
/// adds files to bronze and silver, and the background compaction folds them together while
/// the stream lands, without losing or doubling an event.
#[tokio::test(flavor = "multi_thread")]
async fn a_running_stream_compacts_its_small_files_and_keeps_every_event_once() {
    let (dir, lake) = temp_lake();
    let sample = generate_stream(&dir.path().join("stream"), 4, 6, 3);
    let all: Vec<String> = std::fs::read_to_string(&sample)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let file = dir.path().join("live.ndjson");
    std::fs::write(&file, "").unwrap();
    let (mut child, port) = follow(
        &dir.path().join("lake"),
        &file,
        &["--batch-ms", "100", "--compact-files", "3"],
    );
    let mut writer = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    // Twenty landings or more, over two compaction rounds.
    let chunks: Vec<&[String]> = all.chunks(all.len().div_ceil(20)).collect();
    for chunk in &chunks {
        writer
            .write_all((chunk.join("\n") + "\n").as_bytes())
            .unwrap();
        std::thread::sleep(Duration::from_millis(800));
    }
    let counter = |name: &str| {
        metrics(port)
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} "))?.parse::<u64>().ok())
    };
    wait_for("every line landed", || {
        counter("vitalake_stream_events_total") == Some(all.len() as u64)
    });
    // A whole round after the last landing leaves every table at or under the threshold (the
    // round under way may have passed a table before its last landing).
    let rounds = counter("vitalake_compaction_rounds_total").unwrap();
    wait_for("a compaction round after the last landing", || {
        counter("vitalake_compaction_rounds_total").unwrap() >= rounds + 2
    });
    assert!(counter("vitalake_compactions_total").unwrap() > 0);
    let status = terminate(&mut child.0);
    assert!(status.success(), "SIGTERM is a clean stop: {status}");
    for table in [
        "bronze/eventhubs/observations",
        "silver/fhir/blood_pressure",
    ] {
        let files = active_files(&lake, table).await;
        assert!(files <= 3, "{table} holds {files} files");
    }
    assert_every_event_once(&lake, &expected(&file)).await;
}
