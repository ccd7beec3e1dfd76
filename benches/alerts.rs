//! Alert load: a ward of 500 patients all crossing the hypertensive-crisis threshold within one
//! minute, while the alert hub is healthy (the baseline), throttles for 60 s, or cannot be reached
//! for 60 s. Everything through the AMQP test peer on loopback (`tests/it/eventhubs_peer.rs`): the
//! readings on one namespace, the alerts on another (`ALERTS_EVENTHUBS_*`), so that the alert hub
//! can fail alone.
//!
//! ```sh
//! cargo bench --bench alerts   # VITALAKE_BENCH_ALERT_PATIENTS=500 VITALAKE_BENCH_ALERT_OUTAGE_SECS=60
//! ```
//!
//! Per scenario, a fresh lake and a running `vitalake stream --rules anomaly-rules --alerts
//! eventhubs:alerts`; the bench's producer sends 100 normal readings a second (other patients) and,
//! spread evenly over 60 s, each ward patient's two readings above 180 mmHg (2 minutes apart by
//! their effective times, sent together, the patient as partition key). The outage starts with the
//! burst. It reports:
//! - alerts on record for clinicians (`silver/alerts`), delivered to the hub, sent twice, lost;
//! - the delay a clinician sees: from the confirming reading's arrival at the reading hub to its
//!   alert's arrival at the alert hub (both hubs' enqueued times);
//! - whether ingest went on: hub to bronze of every reading sent during the burst.

#[path = "../tests/it/eventhubs_peer.rs"]
#[allow(dead_code)]
mod eventhubs_peer;
#[allow(dead_code)]
mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use azure_messaging_eventhubs::models::EventData;
use azure_messaging_eventhubs::{EventDataBatchOptions, ProducerClient};
use eventhubs_peer::{Peer, StoredEvent};
use fe2o3_amqp::types::messaging::Body;
use support::{bp_reading, env, query_csv};

#[derive(Clone, Copy, Debug)]
enum Scenario {
    Healthy,
    Throttled,
    Unreachable,
}

/// A blood-pressure reading of `patient`, effective `minutes_ago` before now.
fn reading(id: &str, patient: &str, systolic: u64, diastolic: u64, minutes_ago: i64) -> Vec<u8> {
    let at = (chrono::Utc::now() - chrono::Duration::minutes(minutes_ago)).to_rfc3339();
    bp_reading(id, patient, systolic, diastolic, &at).into_bytes()
}

fn body_text(event: &StoredEvent) -> String {
    match &event.message.body {
        Body::Data(sections) => sections
            .iter()
            .map(|d| String::from_utf8_lossy(&d.0).to_string())
            .collect(),
        other => format!("{other:?}"),
    }
}

async fn send(producer: &ProducerClient, key: Option<&str>, bodies: Vec<Vec<u8>>) {
    let batch = producer
        .create_batch(Some(EventDataBatchOptions {
            partition_key: key.map(str::to_string),
            ..Default::default()
        }))
        .await
        .unwrap();
    for body in bodies {
        assert!(
            batch
                .try_add_event_data(EventData::builder().with_body(body).build(), None)
                .unwrap()
        );
    }
    producer.send_batch(batch, None).await.unwrap();
}

/// The burst: each ward patient's crisis pair, spread over `secs`, with 100 normal readings a
/// second from other patients throughout and for 15 s after. Returns how many readings were sent.
async fn send_burst(peer: &Peer, patients: u64, secs: u64) -> u64 {
    let producer = ProducerClient::builder()
        .with_custom_endpoint(peer.endpoint())
        .open_with_connection_string(&peer.connection_string(), Some("observations"))
        .await
        .unwrap();
    let ticks = (secs + 15) * 10;
    let mut sent = 0;
    let mut next_ward = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for t in 0..ticks {
        tick.tick().await;
        let normal = (0..10)
            .map(|i| {
                let n = t * 10 + i;
                let patient = format!("other-{:04}", n % 2000);
                reading(&format!("bg-{n}"), &patient, 115 + n % 10, 75, 0)
            })
            .collect();
        send(&producer, None, normal).await;
        sent += 10;
        while next_ward < patients && next_ward * secs * 10 < t * patients {
            let patient = format!("ward-{next_ward:03}");
            let pair = vec![
                reading(&format!("{patient}-a"), &patient, 195, 110, 2),
                reading(&format!("{patient}-b"), &patient, 198, 112, 0),
            ];
            send(&producer, Some(&patient), pair).await;
            sent += 2;
            next_ward += 1;
        }
    }
    sent
}

fn start_stream(peer: &Peer, alert_peer: &Peer, lake: &Path, log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_vitalake"))
        .env("EVENTHUBS_CONNECTION_STRING", peer.connection_string())
        .env("EVENTHUBS_ENDPOINT", peer.endpoint())
        .env(
            "ALERTS_EVENTHUBS_CONNECTION_STRING",
            alert_peer.connection_string(),
        )
        .env("ALERTS_EVENTHUBS_ENDPOINT", alert_peer.endpoint())
        .arg("--lake")
        .arg(lake)
        .args(["stream", "--source", "eventhubs:observations"])
        .args([
            "--rules",
            concat!(env!("CARGO_MANIFEST_DIR"), "/anomaly-rules"),
        ])
        .args(["--alerts", "eventhubs:alerts"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn percentiles(mut values: Vec<f64>) -> String {
    if values.is_empty() {
        return "none".into();
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize] / 1000.0;
    format!(
        "p50 {:.2} s, p95 {:.2} s, max {:.2} s",
        at(0.5),
        at(0.95),
        at(1.0)
    )
}

fn run(scenario: Scenario, patients: u64, outage: Duration, runtime: &tokio::runtime::Runtime) {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let log = dir.path().join("stream.log");
    let peer = runtime.block_on(Peer::start("observations", 4));
    let alert_peer = runtime.block_on(Peer::start("alerts", 4));
    let mut stream = start_stream(&peer, &alert_peer, &lake, &log);
    // The stream is up once it has claimed the partitions and warmed up (nothing to read yet).
    std::thread::sleep(Duration::from_secs(5));

    let started = Instant::now();
    let fault_ends = chrono::Utc::now().timestamp_millis() + outage.as_millis() as i64;
    match scenario {
        Scenario::Healthy => {}
        Scenario::Throttled => alert_peer.throttle("alerts", outage),
        Scenario::Unreachable => alert_peer.unreachable_for(outage),
    }
    let sent = runtime.block_on(send_burst(&peer, patients, 60));
    // Every reading in bronze, then every alert on record at the hub (or 5 minutes).
    let bronze_count = |lake: &Path| {
        query_csv(lake, "SELECT count(*) FROM bronze.eventhubs_observations")[0][0]
            .parse::<u64>()
            .unwrap_or(0)
    };
    while bronze_count(&lake) < sent {
        assert!(
            stream.try_wait().unwrap().is_none(),
            "the stream stopped: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "bronze did not fill"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let for_clinicians = || {
        query_csv(
            &lake,
            "SELECT count(*) FROM silver.alerts WHERE delivery = 'sent'",
        )[0][0]
            .parse::<usize>()
            .unwrap()
    };
    let delivered = || -> Vec<StoredEvent> {
        (0..4)
            .flat_map(|p| alert_peer.events_of("alerts", p))
            .collect()
    };
    let waited = Instant::now();
    while delivered().len() < for_clinicians() && waited.elapsed() < Duration::from_secs(300) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let still_running = stream.try_wait().unwrap().is_none();
    Command::new("kill")
        .args(["-TERM", &stream.id().to_string()])
        .status()
        .unwrap();
    let exit = stream.wait().unwrap();

    // What the clinician saw.
    let reading_arrivals: HashMap<String, i64> = (0..4)
        .flat_map(|p| peer.events_of("observations", p))
        .filter_map(|e| {
            let body: serde_json::Value = serde_json::from_str(&body_text(&e)).ok()?;
            let id = body["id"].as_str()?;
            id.ends_with("-b")
                .then(|| (format!("Observation/{id}"), e.enqueued_millis))
        })
        .collect();
    let alerts = delivered();
    let mut ids = std::collections::HashSet::new();
    let mut crisis_delays = Vec::new();
    // Of the alerts whose reading arrived while the sink failed: when the last reached the hub.
    let mut backlog_delivered = None;
    for alert in &alerts {
        let event: serde_json::Value = serde_json::from_str(&body_text(alert)).unwrap();
        ids.insert(event["id"].as_str().unwrap().to_string());
        if event["data"]["rule"]["id"] == "hypertensive-crisis"
            && event["data"]["status"] == "raised"
        {
            let confirming = event["data"]["observations"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|o| reading_arrivals.get(o["reference"].as_str()?))
                .max();
            if let Some(&arrived) = confirming {
                crisis_delays.push((alert.enqueued_millis - arrived) as f64);
                if arrived < fault_ends {
                    backlog_delivered = backlog_delivered.max(Some(alert.enqueued_millis));
                }
            }
        }
    }
    let ward_arrivals = reading_arrivals.values();
    let burst_secs =
        (ward_arrivals.clone().max().unwrap() - ward_arrivals.min().unwrap()) as f64 / 1000.0;
    let recorded = for_clinicians();
    let receipts = query_csv(&lake, "SELECT count(*) FROM silver.alert_deliveries")[0][0].clone();
    let ingest = query_csv(
        &lake,
        "SELECT CAST(ingested_at AS BIGINT) / 1000 - CAST(enqueued_time AS BIGINT) / 1000 \
         FROM bronze.eventhubs_observations",
    )
    .into_iter()
    .map(|r| r[0].parse::<f64>().unwrap())
    .collect();
    println!(
        "{scenario:?} (sink fault {} s from the burst's start): {sent} readings sent, all in bronze; hub to bronze {}",
        match scenario {
            Scenario::Healthy => 0,
            _ => outage.as_secs(),
        },
        percentiles(ingest)
    );
    println!(
        "  confirming readings of the ward over {burst_secs:.1} s; alerts for clinicians on record {recorded}, delivered {} ({} distinct, {} sent twice, {} lost), receipts {receipts}; crisis alerts raised {} of {patients}",
        alerts.len(),
        ids.len(),
        alerts.len() - ids.len(),
        recorded.saturating_sub(ids.len()),
        crisis_delays.len()
    );
    println!(
        "  clinician delay (confirming reading at the reading hub to alert at the alert hub): {}",
        percentiles(crisis_delays)
    );
    if let (false, Some(last)) = (matches!(scenario, Scenario::Healthy), backlog_delivered) {
        println!(
            "  the alerts raised while the sink failed were all delivered {:.2} s after it came back",
            (last - fault_ends) as f64 / 1000.0
        );
    }
    println!(
        "  stream still running at the end: {still_running}; exit after SIGTERM: {exit}; sink failures logged: {}",
        std::fs::read_to_string(&log)
            .unwrap()
            .matches("the alert sink fails")
            .count()
    );
}

fn main() {
    let patients = env("VITALAKE_BENCH_ALERT_PATIENTS", 500);
    let outage = Duration::from_secs(env("VITALAKE_BENCH_ALERT_OUTAGE_SECS", 60));
    vitalake::stream::event_hubs::install_tls_provider();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for scenario in [
        Scenario::Healthy,
        Scenario::Throttled,
        Scenario::Unreachable,
    ] {
        run(scenario, patients, outage, &runtime);
    }
}
