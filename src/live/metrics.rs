//! Prometheus metrics of `vitalake stream`, served as text on `--metrics 127.0.0.1:PORT`.
//! Counts and timings only: never an event's content.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::compaction::CompactionStats;
use crate::alerts::outbox::OutboxStats;
use crate::stream::event_hubs::Recoveries;

/// Upper bounds (seconds) of the batch latency histogram.
const LATENCY_BUCKETS: [f64; 9] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0];

#[derive(Default)]
pub struct Metrics {
    events_in: AtomicU64,
    quarantined: AtomicU64,
    resources: AtomicU64,
    batches: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_micros_sum: AtomicU64,
    /// Per partition: seconds from the newest landed event's enqueue to its commit.
    lag_seconds: Mutex<BTreeMap<String, f64>>,
    /// What the Event Hubs source's watchdog did.
    pub recoveries: Arc<Recoveries>,
    /// What the alert outbox did.
    pub alert_outbox: Arc<OutboxStats>,
    /// What the background compaction did.
    pub compaction: Arc<CompactionStats>,
}

impl Metrics {
    pub fn record_batch(&self, events: u64, resources: u64, quarantined: u64, latency_secs: f64) {
        self.events_in.fetch_add(events, Ordering::Relaxed);
        self.resources.fetch_add(resources, Ordering::Relaxed);
        self.quarantined.fetch_add(quarantined, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.latency_micros_sum
            .fetch_add((latency_secs * 1e6) as u64, Ordering::Relaxed);
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.latency_buckets) {
            if latency_secs <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn record_lag(&self, partition_id: &str, seconds: f64) {
        self.lag_seconds
            .lock()
            .expect("metrics lock")
            .insert(partition_id.to_string(), seconds);
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, value: &AtomicU64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        };
        counter(
            &mut out,
            "vitalake_stream_events_total",
            "Events landed in bronze.",
            &self.events_in,
        );
        counter(
            &mut out,
            "vitalake_stream_resources_total",
            "FHIR resources decoded from events.",
            &self.resources,
        );
        counter(
            &mut out,
            "vitalake_stream_quarantined_total",
            "Records sent to quarantine.",
            &self.quarantined,
        );
        counter(
            &mut out,
            "vitalake_stream_receivers_rebuilt_total",
            "Event Hubs partition receivers rebuilt after receiving nothing while the hub held newer events.",
            &self.recoveries.receivers_rebuilt,
        );
        counter(
            &mut out,
            "vitalake_stream_reconnects_total",
            "Event Hubs consumers built again (receivers failing, a hub not answering).",
            &self.recoveries.reconnects,
        );
        counter(
            &mut out,
            "vitalake_alerts_delivered_total",
            "Alerts the alert sink took.",
            &self.alert_outbox.delivered,
        );
        counter(
            &mut out,
            "vitalake_alert_send_failures_total",
            "Sends to the alert sink that failed (retried).",
            &self.alert_outbox.failed_sends,
        );
        counter(
            &mut out,
            "vitalake_compaction_rounds_total",
            "Rounds of the background compaction over the stream's tables.",
            &self.compaction.rounds,
        );
        counter(
            &mut out,
            "vitalake_compactions_total",
            "Background compactions of a table the stream writes.",
            &self.compaction.compactions,
        );
        counter(
            &mut out,
            "vitalake_compaction_files_removed_total",
            "Small files background compactions replaced.",
            &self.compaction.files_removed,
        );
        counter(
            &mut out,
            "vitalake_compaction_failures_total",
            "Background compactions that failed (tried again next round).",
            &self.compaction.failures,
        );
        let _ = writeln!(
            out,
            "# HELP vitalake_alerts_waiting Alerts waiting in the outbox for the sink.\n# TYPE vitalake_alerts_waiting gauge\nvitalake_alerts_waiting {}",
            self.alert_outbox.waiting.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP vitalake_alert_delivery_delay_seconds Detection to delivery of the last alert delivered.\n# TYPE vitalake_alert_delivery_delay_seconds gauge\nvitalake_alert_delivery_delay_seconds {}",
            self.alert_outbox.last_delay_ms.load(Ordering::Relaxed) as f64 / 1000.0
        );
        let batches = self.batches.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP vitalake_stream_batch_seconds Time to land a micro-batch (bronze, silver, checkpoint).\n# TYPE vitalake_stream_batch_seconds histogram"
        );
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.latency_buckets) {
            let _ = writeln!(
                out,
                "vitalake_stream_batch_seconds_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "vitalake_stream_batch_seconds_bucket{{le=\"+Inf\"}} {batches}"
        );
        let _ = writeln!(
            out,
            "vitalake_stream_batch_seconds_sum {}",
            self.latency_micros_sum.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "vitalake_stream_batch_seconds_count {batches}");
        let _ = writeln!(
            out,
            "# HELP vitalake_stream_partition_lag_seconds Enqueue-to-commit delay of the newest landed event.\n# TYPE vitalake_stream_partition_lag_seconds gauge"
        );
        for (partition, lag) in self.lag_seconds.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "vitalake_stream_partition_lag_seconds{{partition=\"{}\"}} {lag}",
                partition.replace('\\', "\\\\").replace('"', "\\\"")
            );
        }
        out
    }
}

/// Serves [`Metrics::render`] over HTTP on `addr` until `stop`; any path answers.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = stop.cancelled() => return,
            };
            let Ok((mut socket, _)) = accepted else {
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let body = metrics.render();
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_has_counters_histogram_and_lag() {
        let metrics = Metrics::default();
        metrics.record_batch(10, 9, 1, 0.2);
        metrics.record_lag("0", 1.5);
        let text = metrics.render();
        assert!(text.contains("vitalake_stream_events_total 10\n"));
        assert!(text.contains("vitalake_stream_quarantined_total 1\n"));
        assert!(text.contains("vitalake_stream_batch_seconds_bucket{le=\"0.1\"} 0\n"));
        assert!(text.contains("vitalake_stream_batch_seconds_bucket{le=\"0.25\"} 1\n"));
        assert!(text.contains("vitalake_stream_partition_lag_seconds{partition=\"0\"} 1.5\n"));
        metrics.alert_outbox.waiting.store(3, Ordering::Relaxed);
        metrics
            .alert_outbox
            .failed_sends
            .store(2, Ordering::Relaxed);
        let text = metrics.render();
        assert!(text.contains("vitalake_alerts_waiting 3\n"));
        assert!(text.contains("vitalake_alert_send_failures_total 2\n"));
    }
}
