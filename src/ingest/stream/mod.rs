//! `vitalake stream`: events from a [`crate::stream`] source into bronze, quarantine and silver,
//! in micro-batches, exactly once.
//!
//! - [`events`]: the bronze event table, and event bodies decoded into FHIR resources.
//! - [`land`]: one micro-batch through bronze, quarantine, silver and the checkpoint.
//! - [`metrics`]: Prometheus counters on `--metrics`.
//!
//! The decoding and validation are the file drops' (`fhir::decode`, the profile checks), and the
//! silver merge is theirs too ([`super::silver::SilverWriter`]), so a reading lands the same way
//! whether it came in a file or on the stream.

pub mod events;
pub mod land;
pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::IngestError;
use super::silver::SilverViews;
use crate::fhir::DecodeOptions;
use crate::lake::Lake;
use crate::stream::checkpoints::Checkpoints;
use crate::stream::{BatchBounds, Partition, SourceSpec, StreamError, file, next_batch, stdin};
use crate::validate::Check;

use land::{Lander, PartitionBatch};
use metrics::Metrics;

pub struct StreamOptions {
    /// The hub name: events land in `bronze/eventhubs/<hub>`.
    pub hub: String,
    pub bounds: BatchBounds,
    pub decode: DecodeOptions,
    pub checks: Vec<Arc<dyn Check>>,
    pub views: std::path::PathBuf,
    /// Where to serve Prometheus metrics.
    pub metrics: Option<SocketAddr>,
    /// Cancelled on SIGTERM / Ctrl-C: the current batch is landed, then the run ends.
    pub stop: CancellationToken,
}

/// What a `vitalake stream` run did (printed when it ends).
#[derive(Debug, Default, Clone, Serialize)]
pub struct StreamReport {
    pub hub: String,
    pub events: u64,
    pub skipped_already_landed: u64,
    pub resources: u64,
    pub quarantined: u64,
    pub silver_rows: u64,
    pub batches: u64,
    /// Events of a batch an earlier run left between bronze and silver, merged again.
    pub recovered_events: u64,
    pub duration_secs: f64,
}

impl From<StreamError> for IngestError {
    fn from(error: StreamError) -> Self {
        match error {
            StreamError::Read { path, source } => IngestError::Input { path, source },
            other => IngestError::Remote {
                uri: "stream".into(),
                reason: other.to_string(),
            },
        }
    }
}

/// Runs the stream from `source` until it ends (a file without follow, stdin at EOF) or `stop`.
pub async fn run_stream(
    lake: &Lake,
    source: SourceSpec,
    options: StreamOptions,
) -> Result<StreamReport, IngestError> {
    let started = Instant::now();
    let stream_id = match &source {
        SourceSpec::File { .. } => file::stream_id(&options.hub),
        SourceSpec::Stdin => stdin::stream_id(&options.hub),
        SourceSpec::EventHubs { .. } => {
            return Err(IngestError::Remote {
                uri: "eventhubs".into(),
                reason: "the Event Hubs source is not built yet; stream from file:PATH or stdin"
                    .into(),
            });
        }
    };
    // One local reader per file or stdin stream of a hub: two would number the same events twice.
    let _lock = super::lock(
        lake,
        &format!(
            ".vitalake-stream-{}-{}.lock",
            stream_id.namespace, options.hub
        ),
    )?;
    let views = SilverViews::load(&options.views)?;
    let checkpoints = Checkpoints::beside_lake(lake.root())?;
    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = options.metrics {
        let bound = metrics::serve(addr, metrics.clone(), options.stop.clone())
            .await
            .map_err(|source| IngestError::Input {
                path: format!("metrics address {addr}"),
                source,
            })?;
        tracing::info!(%bound, "serving Prometheus metrics");
    }
    let mut lander = Lander::new(
        lake,
        stream_id,
        views,
        checkpoints,
        options.decode.clone(),
        options.checks.clone(),
    );
    let mut report = StreamReport {
        hub: options.hub.clone(),
        ..StreamReport::default()
    };
    let partition_id = match &source {
        SourceSpec::File { path, .. } => file::partition_id(path)?,
        _ => stdin::PARTITION.to_string(),
    };
    let (committed, redone) = lander.recover(&partition_id).await?;
    report.recovered_events += redone;
    let mut partition = match &source {
        SourceSpec::File { path, follow } => file::open(path, *follow)?,
        _ => stdin::open(committed.unwrap_or(0)),
    };
    consume(
        &mut lander,
        &mut partition,
        committed,
        &options,
        &metrics,
        &mut report,
    )
    .await?;
    report.duration_secs = started.elapsed().as_secs_f64();
    tracing::info!(
        events = report.events,
        quarantined = report.quarantined,
        batches = report.batches,
        "stream stopped"
    );
    Ok(report)
}

/// Lands one partition's batches until it ends or `stop`.
async fn consume(
    lander: &mut Lander<'_>,
    partition: &mut Partition,
    mut committed: Option<i64>,
    options: &StreamOptions,
    metrics: &Metrics,
    report: &mut StreamReport,
) -> Result<(), IngestError> {
    let mut pending_error = None;
    loop {
        let mut batch = next_batch(
            &mut partition.events,
            options.bounds,
            &mut pending_error,
            &options.stop,
        )
        .await?;
        let read = batch.events.len();
        if let Some(committed) = committed {
            batch.events.retain(|e| e.sequence_number > committed);
        }
        report.skipped_already_landed += (read - batch.events.len()) as u64;
        if let Some(last) = batch.events.last() {
            let newest_enqueued = batch.events.iter().filter_map(|e| e.enqueued_time).max();
            let last_sequence = last.sequence_number;
            let started = Instant::now();
            let landed = lander
                .land(vec![PartitionBatch {
                    partition_id: partition.id.clone(),
                    events: std::mem::take(&mut batch.events),
                }])
                .await?;
            let seconds = started.elapsed().as_secs_f64();
            committed = Some(last_sequence);
            metrics.record_batch(landed.events, landed.resources, landed.quarantined, seconds);
            let lag_ms = newest_enqueued
                .map(|t| (chrono::Utc::now().timestamp_micros() - t) / 1000)
                .unwrap_or(0);
            metrics.record_lag(&partition.id, lag_ms as f64 / 1000.0);
            report.events += landed.events;
            report.resources += landed.resources;
            report.quarantined += landed.quarantined;
            report.silver_rows += landed.silver_rows;
            report.batches += 1;
            tracing::info!(
                events = landed.events,
                quarantined = landed.quarantined,
                last_sequence,
                lag_ms,
                commit_ms = (seconds * 1000.0) as u64,
                "batch landed"
            );
        }
        if batch.ended {
            return Ok(());
        }
    }
}

impl std::fmt::Display for StreamReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "stream {}: {} events in {} batches ({:.0} events/s), {} resources, {} quarantined, {} silver rows",
            self.hub,
            self.events,
            self.batches,
            self.events as f64 / self.duration_secs.max(1e-9),
            self.resources,
            self.quarantined,
            self.silver_rows
        )?;
        if self.skipped_already_landed > 0 {
            writeln!(
                f,
                "  {} events skipped: already landed by an earlier run",
                self.skipped_already_landed
            )?;
        }
        if self.recovered_events > 0 {
            writeln!(
                f,
                "  {} events an earlier run left between bronze and silver were merged into silver",
                self.recovered_events
            )?;
        }
        Ok(())
    }
}
