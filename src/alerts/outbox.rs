//! The alert outbox: alerts for clinicians wait here until the sink takes them, so a sink that
//! throttles or is down for a while delays alerts but never stops ingest.
//!
//! - An alert is queued the moment the rules raise it, and a background sender delivers the queue
//!   in order (one patient's alerts in one send, so they keep their order), retrying a failing sink
//!   with a backoff that stays short (at most [`MAX_BACKOFF`]): alerts go out soon after the sink
//!   is back.
//! - Every delivery leaves a receipt in `silver/alert_deliveries`. The stream records each alert in
//!   `silver/alerts` before the batch that raised it lands, so after a crash the alerts for
//!   clinicians without a receipt are queued again, and those with one are not sent again
//!   ([`Outbox::know_delivered`]).
//! - Sent twice only if the process dies between a delivery and its receipt's commit, or a send
//!   counted as failed (no answer in time) had in fact reached the hub: at least once, with the
//!   same CloudEvent id, which receivers drop.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Outgoing;
use super::sink::Sink;
use super::table::{self, Receipt};
use crate::lake::Lake;

/// The longest wait between two sends to a failing sink.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How many alerts one round of the sender takes from the queue.
const ROUND: usize = 1000;

/// What the outbox did, for the stream's metrics and report.
#[derive(Debug, Default)]
pub struct OutboxStats {
    /// Alerts queued and not yet delivered.
    pub waiting: AtomicU64,
    /// Alerts the sink took.
    pub delivered: AtomicU64,
    /// Sends the sink refused or that failed.
    pub failed_sends: AtomicU64,
    /// From detection to delivery, of the last alert delivered (ms).
    pub last_delay_ms: AtomicU64,
}

struct Queue {
    /// Each alert with the count of failed sends when it was queued.
    waiting: VecDeque<(Outgoing, u64)>,
    /// Ids queued, delivered or known delivered: never queued again.
    known: HashSet<String>,
}

pub struct Outbox {
    sink: Box<dyn Sink>,
    /// The sink's spec, in every receipt.
    sink_name: String,
    lake: Lake,
    queue: Mutex<Queue>,
    wake: Notify,
    closing: CancellationToken,
    stats: Arc<OutboxStats>,
    sender: Mutex<Option<JoinHandle<()>>>,
}

impl Outbox {
    /// Starts the sender of `sink` (named `sink_name`), recording receipts in `lake`.
    pub fn start(
        sink: Box<dyn Sink>,
        sink_name: &str,
        lake: Lake,
        stats: Arc<OutboxStats>,
    ) -> Arc<Outbox> {
        let outbox = Arc::new(Outbox {
            sink,
            sink_name: sink_name.to_string(),
            lake,
            queue: Mutex::new(Queue {
                waiting: VecDeque::new(),
                known: HashSet::new(),
            }),
            wake: Notify::new(),
            closing: CancellationToken::new(),
            stats,
            sender: Mutex::new(None),
        });
        let sender = tokio::spawn(outbox.clone().deliver());
        *outbox.sender.lock().expect("lock") = Some(sender);
        outbox
    }

    /// Queues alerts for the sink, skipping those already queued or delivered. Returns how many
    /// were queued.
    pub fn push(&self, alerts: impl IntoIterator<Item = Outgoing>) -> usize {
        let failed_sends = self.stats.failed_sends.load(Ordering::Relaxed);
        let mut queue = self.queue.lock().expect("lock");
        let before = queue.waiting.len();
        for alert in alerts {
            if queue.known.insert(alert.id.clone()) {
                queue.waiting.push_back((alert, failed_sends));
            }
        }
        let queued = queue.waiting.len() - before;
        if queued > 0 {
            self.stats
                .waiting
                .store(queue.waiting.len() as u64, Ordering::Relaxed);
            self.wake.notify_one();
        }
        queued
    }

    /// Ids with a receipt: a rule raising one again (its batch never landed) does not send it.
    pub fn know_delivered(&self, ids: impl IntoIterator<Item = String>) {
        self.queue.lock().expect("lock").known.extend(ids);
    }

    /// Delivers what is queued, trying a failing sink until `patience` has passed, then records
    /// the last receipts and closes the sink. Returns how many alerts are still waiting (a restart
    /// sends them).
    pub async fn close(&self, patience: Duration) -> u64 {
        self.closing.cancel();
        let sender = self.sender.lock().expect("lock").take();
        if let Some(sender) = sender {
            let _ = tokio::time::timeout(patience, sender).await;
        }
        let waiting = self.stats.waiting.load(Ordering::Relaxed);
        if waiting > 0 {
            tracing::warn!(
                waiting,
                "alerts not delivered before the stream stopped; they are sent when it starts again"
            );
        }
        self.sink.close().await;
        waiting
    }

    /// The sender: rounds of sends until closed with an empty queue.
    async fn deliver(self: Arc<Self>) {
        let mut receipts = Vec::new();
        let mut failures = 0u32;
        let mut outage: Option<Instant> = None;
        loop {
            let round: Vec<(Outgoing, u64)> = {
                let queue = self.queue.lock().expect("lock");
                queue.waiting.iter().take(ROUND).cloned().collect()
            };
            if round.is_empty() {
                self.record(&mut receipts).await;
                if self.closing.is_cancelled() {
                    return;
                }
                tokio::select! {
                    () = self.wake.notified() => {}
                    () = self.closing.cancelled() => {}
                }
                continue;
            }
            let (delivered, failure) = self.send_round(&round).await;
            let now = chrono::Utc::now().timestamp_millis();
            let failed_sends = self.stats.failed_sends.load(Ordering::Relaxed);
            for (alert, failed_before) in round.iter().filter(|(a, _)| delivered.contains(&a.id)) {
                let delay_ms = now - detected_at(&alert.event).unwrap_or(now);
                self.stats
                    .last_delay_ms
                    .store(delay_ms.max(0) as u64, Ordering::Relaxed);
                receipts.push(Receipt {
                    id: alert.id.clone(),
                    delivered_at: now,
                    attempts: (failed_sends - failed_before + 1) as u32,
                    delay_ms,
                });
            }
            self.settle(&delivered);
            match failure {
                None => {
                    if let Some(since) = outage.take() {
                        tracing::info!(
                            after_secs = since.elapsed().as_secs(),
                            failed_sends = failures,
                            "the alert sink takes alerts again"
                        );
                    }
                    failures = 0;
                    self.record(&mut receipts).await;
                }
                Some(error) => {
                    failures += 1;
                    self.stats.failed_sends.fetch_add(1, Ordering::Relaxed);
                    if outage.is_none() {
                        outage = Some(Instant::now());
                        tracing::warn!(
                            %error,
                            waiting = self.stats.waiting.load(Ordering::Relaxed),
                            "the alert sink fails; alerts wait in the outbox while ingest goes on"
                        );
                    }
                    self.record(&mut receipts).await;
                    let backoff =
                        (Duration::from_millis(100) * 2u32.pow(failures.min(5))).min(MAX_BACKOFF);
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }

    /// Sends a round, one patient's alerts at a time in the order they were raised, and stops at
    /// the first failure. Returns the ids delivered, and the failure.
    async fn send_round(
        &self,
        round: &[(Outgoing, u64)],
    ) -> (HashSet<String>, Option<crate::stream::StreamError>) {
        let mut patients: Vec<(&str, Vec<&Outgoing>)> = Vec::new();
        for (alert, _) in round {
            match patients.iter_mut().find(|(p, _)| *p == alert.patient) {
                Some((_, alerts)) => alerts.push(alert),
                None => patients.push((&alert.patient, vec![alert])),
            }
        }
        let mut delivered = HashSet::new();
        for (patient, alerts) in patients {
            let events: Vec<(String, Value)> = alerts
                .iter()
                .map(|a| (patient.to_string(), a.event.clone()))
                .collect();
            if let Err(e) = self.sink.send(&events).await {
                return (delivered, Some(e));
            }
            delivered.extend(alerts.iter().map(|a| a.id.clone()));
        }
        (delivered, None)
    }

    /// Takes the delivered alerts off the queue.
    fn settle(&self, delivered: &HashSet<String>) {
        let mut queue = self.queue.lock().expect("lock");
        queue.waiting.retain(|(a, _)| !delivered.contains(&a.id));
        self.stats
            .waiting
            .store(queue.waiting.len() as u64, Ordering::Relaxed);
        self.stats
            .delivered
            .fetch_add(delivered.len() as u64, Ordering::Relaxed);
    }

    /// Commits the receipts in hand; on a lake error they stay for the next try (the alerts are
    /// delivered either way; a lost receipt only means a resend after a crash).
    async fn record(&self, receipts: &mut Vec<Receipt>) {
        if receipts.is_empty() {
            return;
        }
        match table::append_receipts(&self.lake, receipts, &self.sink_name).await {
            Ok(()) => receipts.clear(),
            Err(e) => {
                tracing::warn!(error = %e, receipts = receipts.len(), "recording alert receipts failed; retrying with the next")
            }
        }
    }
}

/// The CloudEvent's `time` (its detection), in Unix ms.
fn detected_at(event: &Value) -> Option<i64> {
    let time = event["time"].as_str()?;
    chrono::DateTime::parse_from_rfc3339(time)
        .ok()
        .map(|t| t.timestamp_millis())
}
