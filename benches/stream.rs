//! The Event Hubs stream through the AMQP test peer on loopback (`tests/it/eventhubs_peer.rs`):
//! sustained events/s into the lake, and the delay from an event's arrival at the hub to its landing.
//!
//! ```sh
//! cargo bench --bench stream   # VITALAKE_BENCH_STREAM_PATIENTS=2000 (a day of readings each)
//!                              # VITALAKE_BENCH_STREAM_RATE=10000 VITALAKE_BENCH_STREAM_SECS=20
//! ```
//!
//! 1. **Send**: `vitalake send` publishes the generated day (NDJSON, the patient as partition key)
//!    to a hub of 4 partitions.
//! 2. **Drain**: `vitalake stream --source eventhubs:observations` (default batch bounds: 1 s or
//!    10,000 events) lands the whole backlog in bronze and silver. Events/s is counted from the first
//!    landed batch to the last, from the stream's own log lines.
//! 3. **Latency**: with the stream running, a producer sends blood-pressure readings at a fixed rate;
//!    per event, the delay from its enqueued time at the hub
//!    - to bronze: the `ingested_at` of its bronze row (the landing's timestamp, taken just before
//!      the bronze commit);
//!    - to silver: the end of the landing that held it, when the stream logs its partition's batch
//!      as landed (after silver and the checkpoint), as the bench reads that line.

#[path = "../tests/it/eventhubs_peer.rs"]
#[allow(dead_code)]
mod eventhubs_peer;
#[allow(dead_code)]
mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use azure_messaging_eventhubs::models::EventData;
use azure_messaging_eventhubs::{EventDataBatchOptions, ProducerClient};
use eventhubs_peer::Peer;
use support::{bp_reading, env, query_csv};

fn vitalake(peer: &Peer, lake: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vitalake"));
    cmd.env("EVENTHUBS_CONNECTION_STRING", peer.connection_string())
        .env("EVENTHUBS_ENDPOINT", peer.endpoint())
        .arg("--lake")
        .arg(lake);
    cmd
}

/// When a partition's batch was landed, bronze to checkpoint (silver included): the Unix time in
/// µs the stream's log line was read, the partition and the batch's last sequence number.
type PartitionLandings = Arc<Mutex<Vec<(i64, String, i64)>>>;

/// Starts `vitalake stream` and returns it with a channel of (time, events) per landed batch.
fn start_stream(
    peer: &Peer,
    lake: &Path,
) -> (Child, mpsc::Receiver<(Instant, u64)>, PartitionLandings) {
    let mut child = vitalake(peer, lake)
        .args(["stream", "--source", "eventhubs:observations"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    // VITALAKE_BENCH_STREAM_LOG=1 shows each landing's log line (events, commit time).
    let show = std::env::var_os("VITALAKE_BENCH_STREAM_LOG").is_some();
    let partitions = PartitionLandings::default();
    let landings = partitions.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("partition batch landed") {
                let field = |name: &str| {
                    line.split(&format!("{name}="))
                        .nth(1)
                        .and_then(|v| v.split_whitespace().next())
                        .map(|v| v.trim_matches('"').to_string())
                };
                if let (Some(partition), Some(Ok(last))) = (
                    field("partition_id"),
                    field("last_sequence").map(|v| v.parse::<i64>()),
                ) {
                    let now = chrono::Utc::now().timestamp_micros();
                    landings.lock().unwrap().push((now, partition, last));
                }
            } else if line.contains("batch landed events=") {
                if show {
                    println!("{line}");
                }
                let events: u64 = line
                    .split("events=")
                    .nth(1)
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let _ = tx.send((Instant::now(), events));
            } else if !line.contains(" INFO ") {
                // Warnings, errors, and what the runtime prints when the process dies (a panic, a
                // stack overflow): a run that lost its stream says why.
                eprintln!("stream: {line}");
            }
        }
    });
    (child, rx, partitions)
}

fn stop(mut child: Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
}

/// A blood-pressure Observation as a wearable sends it.
fn reading(n: u64) -> String {
    let patient = format!("bench-{:05}", n % 5000);
    let now = chrono::Utc::now().to_rfc3339();
    bp_reading(
        &format!("bench-bp-{n}"),
        &patient,
        110 + n % 40,
        70 + n % 20,
        &now,
    )
}

/// Sends `rate` readings a second for `secs` seconds, in batches every 50 ms; returns how many.
async fn send_at_rate(peer: &Peer, rate: u64, secs: u64) -> u64 {
    let producer = ProducerClient::builder()
        .with_custom_endpoint(peer.endpoint())
        .open_with_connection_string(&peer.connection_string(), Some("observations"))
        .await
        .unwrap();
    let per_tick = (rate / 20).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut sent = 0;
    for _ in 0..secs * 20 {
        tick.tick().await;
        let mut batch = producer
            .create_batch(Some(EventDataBatchOptions::default()))
            .await
            .unwrap();
        for _ in 0..per_tick {
            let event = || {
                EventData::builder()
                    .with_body(reading(sent).into_bytes())
                    .build()
            };
            if !batch.try_add_event_data(event(), None).unwrap() {
                producer.send_batch(batch, None).await.unwrap();
                batch = producer
                    .create_batch(Some(EventDataBatchOptions::default()))
                    .await
                    .unwrap();
                assert!(batch.try_add_event_data(event(), None).unwrap());
            }
            sent += 1;
        }
        producer.send_batch(batch, None).await.unwrap();
    }
    sent
}

fn main() {
    let patients = env("VITALAKE_BENCH_STREAM_PATIENTS", 2000);
    let rate = env("VITALAKE_BENCH_STREAM_RATE", 10_000);
    let secs = env("VITALAKE_BENCH_STREAM_SECS", 20);
    vitalake::stream::event_hubs::install_tls_provider();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();

    // 1. Send a generated day of readings.
    let peer = runtime.block_on(Peer::start("observations", 4));
    let out = dir.path().join("stream");
    let generated = Command::new(env!("CARGO_BIN_EXE_vitalake"))
        .args(["generate", "stream", "--patients", &patients.to_string()])
        .args(["--hours", "24", "--seed", "7", "--out"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(generated.success());
    let file = out.join("observations.ndjson");
    let events = std::fs::read_to_string(&file).unwrap().lines().count() as u64;
    let lake = dir.path().join("lake");
    let started = Instant::now();
    let sent = vitalake(&peer, &lake)
        .arg("send")
        .arg(&file)
        .args(["--hub", "observations"])
        .output()
        .unwrap();
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let send_secs = started.elapsed().as_secs_f64();
    println!(
        "send: {events} events ({patients} patients, a day each) in {send_secs:.2} s = {:.0} events/s",
        events as f64 / send_secs
    );

    // 2. Drain the backlog.
    let started = Instant::now();
    let (stream, landed, partition_landings) = start_stream(&peer, &lake);
    let (mut total, mut batches) = (0u64, 0u64);
    let (mut first, mut last) = (None, started);
    let mut first_events = 0;
    while total < events {
        let (at, n) = landed
            .recv_timeout(Duration::from_secs(300))
            .expect("the stream stopped landing");
        if first.is_none() {
            first = Some(at);
            first_events = n;
        }
        total += n;
        batches += 1;
        last = at;
    }
    let first = first.unwrap();
    let steady = (total - first_events) as f64 / (last - first).as_secs_f64();
    println!(
        "drain: {total} events in {batches} landings; {:.2} s from start ({:.0} events/s), {:.0} events/s from the first landing to the last",
        (last - started).as_secs_f64(),
        total as f64 / (last - started).as_secs_f64(),
        steady
    );

    // 3. Latency at a fixed rate, the stream running.
    let sent = runtime.block_on(send_at_rate(&peer, rate, secs));
    let mut landed_live = 0;
    while landed_live < sent {
        let (_, n) = landed
            .recv_timeout(Duration::from_secs(120))
            .expect("the stream stopped landing");
        landed_live += n;
    }
    stop(stream);
    let query = "SELECT count(*), \
        approx_percentile_cont(ms, 0.5), approx_percentile_cont(ms, 0.99), max(ms) FROM (\
        SELECT CAST(ingested_at AS BIGINT) / 1000 - CAST(enqueued_time AS BIGINT) / 1000 AS ms \
        FROM bronze.eventhubs_observations WHERE CAST(body AS VARCHAR) LIKE '%bench-bp-%')";
    let rows = query_csv(&lake, query);
    let row = &rows[0];
    println!(
        "latency at {rate} events/s for {secs} s ({sent} sent, {} landed): hub to bronze p50 {} ms, p99 {} ms, max {} ms",
        row[0], row[1], row[2], row[3]
    );

    // To silver: an event is in silver once the landing of its partition's batch that holds it
    // ended (its log line, written after silver and the checkpoint).
    let events = query_csv(
        &lake,
        "SELECT partition_id, sequence_number, CAST(enqueued_time AS BIGINT) \
         FROM bronze.eventhubs_observations WHERE CAST(body AS VARCHAR) LIKE '%bench-bp-%'",
    );
    let landings = partition_landings.lock().unwrap().clone();
    let mut delays_ms: Vec<f64> = events
        .iter()
        .map(|row| {
            let sequence: i64 = row[1].parse().unwrap();
            let enqueued: i64 = row[2].parse().unwrap();
            let landed = landings
                .iter()
                .filter(|(_, partition, last)| *partition == row[0] && *last >= sequence)
                .map(|(at, _, _)| *at)
                .min()
                .expect("every landed event has its landing's log line");
            (landed - enqueued) as f64 / 1000.0
        })
        .collect();
    delays_ms.sort_by(f64::total_cmp);
    let at = |q: f64| delays_ms[((delays_ms.len() - 1) as f64 * q).round() as usize];
    println!(
        "latency at {rate} events/s: hub to silver (landing done) p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        at(0.5),
        at(0.99),
        at(1.0)
    );
}
