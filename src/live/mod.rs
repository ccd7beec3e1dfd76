//! `vitalake stream`, the runner: events from a [`crate::stream`] source, decoded and landed by
//! [`crate::ingest::stream`] in micro-batches, exactly once; the anomaly [`crate::rules`] on every
//! reading that passed its checks; their alerts to an [`crate::alerts`] sink.
//!
//! - [`alerting`]: the rules on the stream, their state and the alert outbox.
//! - [`readings`]: the rules' readings, from the silver views' rows.
//! - [`compaction`]: the stream's tables compacted in the background.
//! - [`metrics`]: Prometheus counters on `--metrics`.

pub mod alerting;
pub mod compaction;
pub mod metrics;
pub mod readings;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use futures::stream::BoxStream;
use rayon::prelude::*;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::fhir::DecodeOptions;
use crate::ingest::IngestError;
use crate::ingest::silver::SilverViews;
use crate::ingest::stream::events::{self, EventDecoder, Prepared};
use crate::ingest::stream::land::{Lander, PartitionBatch, RecordFirst};
use crate::lake::{Lake, Lease};
use crate::stream::checkpoints::Checkpoints;
use crate::stream::{BatchBounds, Event, Partition, SourceSpec, StreamError, next_batch};
use crate::validate::Check;

use alerting::{Alert, Alerting};
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
    /// The Event Hubs consumer group (`$Default` unless given).
    pub consumer_group: String,
    /// The anomaly rules, evaluated on every reading as it arrives.
    pub rules: Option<RulesOptions>,
    /// A table this stream writes is compacted in the background once it has more active files
    /// than this ([`compaction`]); 0 leaves compaction to `vitalake maintain`.
    pub compact_files: usize,
}

pub struct RulesOptions {
    pub dir: std::path::PathBuf,
    /// `stdout`, `file:PATH` or `eventhubs:HUB`.
    pub sink: String,
    /// Allowed lateness in milliseconds.
    pub lateness: i64,
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
    /// Alert events recorded in silver/alerts (sent, shadow, backfill or inhibited).
    pub alerts: u64,
    /// Alerts the sink took (this run's and those an earlier run left waiting).
    pub alerts_delivered: u64,
    /// Alerts for clinicians still waiting for the sink when the stream stopped: the next start
    /// sends them.
    pub alerts_waiting: u64,
    /// Background compactions of the stream's tables.
    pub compactions: u64,
    pub duration_secs: f64,
}

/// Runs the stream from `source` until it ends (a file without follow, stdin at EOF) or `stop`.
///
/// One task per partition evaluates the rules on its events and decodes them as they arrive, and
/// collects micro-batches; this task lands them, one at a time (batches of several partitions that
/// are ready together go into one bronze commit), so the lake sees one writer per process. The
/// landing only writes: the CPU-heavy decoding, validation and silver views of the next events
/// overlap it.
pub async fn run_stream(
    lake: &Lake,
    source: SourceSpec,
    options: StreamOptions,
) -> Result<StreamReport, IngestError> {
    let started = Instant::now();
    let views = SilverViews::load(&options.views)?;
    crate::ingest::silver::ensure_view_tables(lake, &views).await?;
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
    let mut report = StreamReport {
        hub: options.hub.clone(),
        ..StreamReport::default()
    };
    let alerting = match &options.rules {
        Some(rules) => {
            let alerting = Alerting::open(
                rules.dir.clone(),
                &rules.sink,
                rules.lateness,
                lake,
                metrics.alert_outbox.clone(),
            )
            .await?;
            alerting.watch(options.stop.clone());
            Some(alerting)
        }
        None => None,
    };
    let compacting = CancellationToken::new();
    // However the run ends, the compactor stops with it.
    let _stop_compacting = compacting.clone().drop_guard();
    let compactor = (options.compact_files > 0).then(|| {
        compaction::spawn(
            lake.clone(),
            stream_tables(&options.hub, &views),
            options.compact_files,
            metrics.compaction.clone(),
            compacting.clone(),
        )
    });
    let decoder = Arc::new(EventDecoder {
        options: options.decode.clone(),
        checks: options.checks.clone(),
        views: views.clone(),
    });
    let mut source = crate::stream::source::open(
        source,
        &options.hub,
        &options.consumer_group,
        checkpoints.clone(),
        options.stop.clone(),
        metrics.recoveries.clone(),
    )
    .await?;
    // One local reader per file or stdin stream of a hub: two would number events twice.
    let lease = if source.exclusive() {
        let id = source.id();
        let name = format!(".vitalake-stream-{}-{}.lock", id.namespace, options.hub);
        Some(Lease::acquire(lake, &name, "stream").await?)
    } else {
        None
    };
    let mut lander = Lander::new(
        lake,
        source.id().clone(),
        views.clone(),
        checkpoints.clone(),
        decoder.clone(),
    );
    let landed = async {
        let resumed = match source.resumes() {
            Some(partition_id) => {
                let (committed, redone) = lander.recover(partition_id).await?;
                report.recovered_events += redone;
                committed
            }
            None => None,
        };
        let mut partitions = source.partitions(resumed)?;
        land_partitions(
            &mut lander,
            &mut partitions,
            &options,
            alerting.clone(),
            &metrics,
            &mut report,
        )
        .await
    }
    .await;
    source.shutdown().await;
    if let Some(lease) = lease {
        lease.release().await;
    }
    compacting.cancel();
    if let Some(compactor) = compactor {
        let _ = compactor.await;
        report.compactions = metrics
            .compaction
            .compactions
            .load(std::sync::atomic::Ordering::Relaxed);
    }
    landed?;
    if let Some(alerting) = alerting {
        report.alerts_waiting = alerting.close().await;
        report.alerts_delivered = metrics
            .alert_outbox
            .delivered
            .load(std::sync::atomic::Ordering::Relaxed);
    }
    report.duration_secs = started.elapsed().as_secs_f64();
    tracing::info!(
        events = report.events,
        quarantined = report.quarantined,
        batches = report.batches,
        "stream stopped"
    );
    Ok(report)
}

/// The tables a stream of `hub` writes: its bronze event table, quarantine, the version index and
/// silver views of the stream's resource types, and the alert tables.
fn stream_tables(hub: &str, views: &SilverViews) -> Vec<String> {
    use crate::ingest::silver::{versions_table, view_table};
    let mut tables = vec![
        events::bronze_events_table(hub),
        crate::ingest::tables::QUARANTINE_TABLE.to_string(),
    ];
    for resource_type in events::STREAM_TYPES {
        tables.push(versions_table(resource_type));
        tables.extend(
            views
                .views()
                .iter()
                .filter(|v| v.resource() == resource_type)
                .filter_map(|v| v.name().map(view_table)),
        );
    }
    tables.extend([
        crate::alerts::table::ALERTS_TABLE.to_string(),
        crate::alerts::table::DELIVERIES_TABLE.to_string(),
    ]);
    tables
}

/// What a partition's reader asks the writer.
enum Request {
    /// Finish what a crash left and say the last sequence number bronze has.
    Recover {
        partition_id: String,
        reply: oneshot::Sender<Result<Option<i64>, String>>,
    },
    /// Bring the rules' state up to silver for a partition starting here (after its recovery).
    WarmUp {
        partition_id: String,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Land this batch.
    Land {
        batch: PartitionBatch,
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// Reads the partitions as they arrive, each in a task of its own, and lands their batches until
/// every reader has stopped and no partition is coming (or `stop`).
async fn land_partitions(
    lander: &mut Lander<'_>,
    partitions: &mut mpsc::Receiver<Partition>,
    options: &StreamOptions,
    alerting: Option<Arc<Alerting>>,
    metrics: &Metrics,
    report: &mut StreamReport,
) -> Result<(), IngestError> {
    let (tx, mut requests) = mpsc::channel::<Request>(64);
    let mut readers = tokio::task::JoinSet::new();
    let mut live: std::collections::HashMap<String, CancellationToken> = Default::default();
    let mut more_partitions = true;
    loop {
        tokio::select! {
            partition = partitions.recv(), if more_partitions && !options.stop.is_cancelled() => {
                match partition {
                    Some(partition) => {
                        // A partition handed out again (its receiver failed, or the consumer was
                        // rebuilt) replaces its previous reader, which lands what it holds and stops.
                        let stop = options.stop.child_token();
                        if let Some(previous) = live.insert(partition.id.clone(), stop.clone()) {
                            previous.cancel();
                        }
                        let source_uri = lander.source_uri(&partition.id);
                        readers.spawn(read_partition(partition, source_uri, tx.clone(), alerting.clone(), lander.decoder(), options.bounds, stop));
                    }
                    None => more_partitions = false,
                }
            }
            Some(request) = requests.recv() => {
                let mut lands: Vec<(PartitionBatch, _)> = Vec::new();
                let mut pending = Some(request);
                let gather_until = tokio::time::Instant::now() + GATHER;
                // Batches of other partitions share the landing: those ready now, and those that
                // come within `GATHER` while some reading partition has none waiting.
                loop {
                    let request = match pending.take().or_else(|| requests.try_recv().ok()) {
                        Some(request) => request,
                        None if !lands.is_empty() && partitions_in(&lands) < readers.len() => {
                            match tokio::time::timeout_at(gather_until, requests.recv()).await {
                                Ok(Some(request)) => request,
                                _ => break,
                            }
                        }
                        None => break,
                    };
                    match request {
                        Request::Recover { partition_id, reply } => {
                            let recovered = lander.recover(&partition_id).await;
                            let answer = match recovered {
                                Ok((committed, redone)) => {
                                    report.recovered_events += redone;
                                    Ok(committed)
                                }
                                Err(e) => Err(e.to_string()),
                            };
                            let _ = reply.send(answer);
                        }
                        Request::WarmUp { partition_id, reply } => {
                            let warmed = match &alerting {
                                Some(alerting) => alerting
                                    .warm_up(lander.lake(), lander.bronze_path(), &partition_id)
                                    .await
                                    .map_err(|e| e.to_string()),
                                None => Ok(()),
                            };
                            let _ = reply.send(warmed);
                        }
                        Request::Land { batch, reply } => lands.push((batch, reply)),
                    }
                }
                if !lands.is_empty() {
                    land(lander, lands, metrics, report).await?;
                }
            }
            Some(ended) = readers.join_next() => {
                match ended {
                    Ok(Ok((partition_id, skipped))) => {
                        report.skipped_already_landed += skipped;
                        tracing::info!(partition_id, skipped, "partition reader stopped");
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "partition reader stopped"),
                    Err(e) => tracing::warn!(error = %e, "partition reader failed"),
                }
            }
            () = options.stop.cancelled(), if more_partitions => more_partitions = false,
        }
        if !more_partitions && readers.is_empty() {
            return Ok(());
        }
    }
}

/// How long a landing waits for the batches of the other partitions. One landing of every
/// partition's batch costs far less than one landing each: every landing commits bronze, silver and
/// the checkpoints, and every commit adds files the next landings' lookups scan.
const GATHER: std::time::Duration = std::time::Duration::from_millis(200);

/// How many partitions have a batch among `lands`.
fn partitions_in<R>(lands: &[(PartitionBatch, R)]) -> usize {
    let partitions: std::collections::HashSet<&str> =
        lands.iter().map(|(b, _)| b.partition_id.as_str()).collect();
    partitions.len()
}

/// Lands the batches of several partitions in one go and answers their readers.
async fn land(
    lander: &mut Lander<'_>,
    lands: Vec<(PartitionBatch, oneshot::Sender<Result<(), String>>)>,
    metrics: &Metrics,
    report: &mut StreamReport,
) -> Result<(), IngestError> {
    let started = Instant::now();
    let newest: Vec<(String, Option<i64>, i64)> = lands
        .iter()
        .map(|(b, _)| {
            (
                b.partition_id.clone(),
                b.events.iter().filter_map(|e| e.enqueued_time).max(),
                b.events.last().map_or(0, |e| e.sequence_number),
            )
        })
        .collect();
    let (batches, replies): (Vec<_>, Vec<_>) = lands.into_iter().unzip();
    let landed = lander.land(batches).await;
    let failure = landed.as_ref().err().map(|e| e.to_string());
    for reply in replies {
        let _ = reply.send(match &failure {
            None => Ok(()),
            Some(e) => Err(e.clone()),
        });
    }
    // A failed landing stops the stream: a restart finds the lake as the last good batch left it.
    let landed = landed?;
    let seconds = started.elapsed().as_secs_f64();
    metrics.record_batch(landed.events, landed.resources, landed.quarantined, seconds);
    let now = chrono::Utc::now().timestamp_micros();
    for (partition_id, enqueued, last_sequence) in newest {
        let lag_ms = enqueued.map_or(0, |t| (now - t) / 1000);
        metrics.record_lag(&partition_id, lag_ms as f64 / 1000.0);
        tracing::info!(
            partition_id,
            last_sequence,
            lag_ms,
            "partition batch landed"
        );
    }
    report.events += landed.events;
    report.resources += landed.resources;
    report.quarantined += landed.quarantined;
    report.silver_rows += landed.silver_rows;
    report.alerts += landed.recorded_first;
    report.batches += 1;
    tracing::info!(
        events = landed.events,
        quarantined = landed.quarantined,
        commit_ms = (seconds * 1000.0) as u64,
        "batch landed"
    );
    Ok(())
}

/// One partition: asks for its committed sequence number, then sends batches of newer events,
/// decoded, to the writer and waits for each to land, until the partition ends, fails, or `stop`.
/// Returns the partition id and how many events it skipped as already landed.
async fn read_partition(
    partition: Partition,
    source_uri: String,
    writer: mpsc::Sender<Request>,
    alerting: Option<Arc<Alerting>>,
    decoder: Arc<EventDecoder>,
    bounds: BatchBounds,
    stop: CancellationToken,
) -> Result<(String, u64), String> {
    let mut skipped = 0u64;
    let id = partition.id.clone();
    let (reply, answer) = oneshot::channel();
    writer
        .send(Request::Recover {
            partition_id: id.clone(),
            reply,
        })
        .await
        .map_err(|_| "the writer stopped".to_string())?;
    let mut committed = answer
        .await
        .map_err(|_| "the writer stopped".to_string())??;
    // Alerts of the events read so far, handed to the writer with the next batch.
    let alerts: Arc<std::sync::Mutex<Vec<Alert>>> = Arc::default();
    // Decoding runs ahead, as events arrive: a closed batch goes to the writer at once.
    let mut decode_ahead = Ahead::spawn(
        decoded(partition.events, decoder.clone(), committed),
        bounds.max_events,
    );
    let mut events = decode_ahead.items();
    // The rules read what decoding accepted, in a task of their own so that a landing never
    // holds up an alert.
    let _evaluate_ahead = match alerting {
        None => None,
        Some(alerting) => {
            let (reply, answer) = oneshot::channel();
            writer
                .send(Request::WarmUp {
                    partition_id: id.clone(),
                    reply,
                })
                .await
                .map_err(|_| "the writer stopped".to_string())?;
            answer
                .await
                .map_err(|_| "the writer stopped".to_string())??;
            let mut ahead = Ahead::spawn(
                evaluated(
                    events,
                    alerting,
                    decoder.views.clone(),
                    committed,
                    alerts.clone(),
                ),
                bounds.max_events,
            );
            events = ahead.items();
            Some(ahead)
        }
    };
    let mut pending_error = None;
    // The batch handed to the writer last: the next one is collected while it lands, so when the
    // writer is free every partition has a batch waiting and they share one landing.
    let mut landing: Option<oneshot::Receiver<Result<(), String>>> = None;
    loop {
        let mut batch = next_batch(&mut events, bounds, &mut pending_error, &stop)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(committed) = committed {
            let read = batch.events.len();
            batch.events.retain(|(e, _)| e.sequence_number > committed);
            skipped += (read - batch.events.len()) as u64;
        }
        if let Some(last) = batch.events.last().map(|(e, _)| e.sequence_number) {
            let (events, decoded) = std::mem::take(&mut batch.events).into_iter().unzip();
            let batch_alerts = std::mem::take(&mut *alerts.lock().expect("lock"));
            let record_first = if batch_alerts.is_empty() {
                Vec::new()
            } else {
                vec![RecordFirst {
                    table: crate::alerts::table::ALERTS_TABLE,
                    rows: crate::alerts::table::alert_rows(&batch_alerts, &source_uri),
                }]
            };
            let (reply, answer) = oneshot::channel();
            writer
                .send(Request::Land {
                    batch: PartitionBatch {
                        partition_id: id.clone(),
                        events,
                        decoded,
                        record_first,
                    },
                    reply,
                })
                .await
                .map_err(|_| "the writer stopped".to_string())?;
            // At most two batches in flight: this one queued, the one before landing.
            if let Some(previous) = landing.replace(answer) {
                landed(previous).await?;
            }
            committed = Some(last);
        }
        if batch.ended {
            if let Some(last) = landing.take() {
                landed(last).await?;
            }
            return Ok((id, skipped));
        }
    }
}

/// Waits for the writer's answer about one batch.
async fn landed(answer: oneshot::Receiver<Result<(), String>>) -> Result<(), String> {
    answer.await.map_err(|_| "the writer stopped".to_string())?
}

/// A stage of a partition's reader (the rules, decoding) run in a task of its own, ahead of the
/// batches: while a batch is landing, the next events are already evaluated and decoded.
struct Ahead<T> {
    task: tokio::task::JoinHandle<()>,
    items: Option<mpsc::Receiver<Result<T, StreamError>>>,
}

impl<T: Send + 'static> Ahead<T> {
    fn spawn(mut stage: BoxStream<'static, Result<T, StreamError>>, buffer: usize) -> Ahead<T> {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let task = tokio::spawn(async move {
            while let Some(item) = stage.next().await {
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
        Ahead {
            task,
            items: Some(rx),
        }
    }

    fn items(&mut self) -> BoxStream<'static, Result<T, StreamError>> {
        let rx = self.items.take().expect("items taken once");
        futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })
        .boxed()
    }
}

impl<T> Drop for Ahead<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An event and its resources, decoded ahead of its batch.
type DecodedEvent = (Event, Vec<Prepared>);

/// The partition's events decoded as they arrive, in chunks of what is ready, on the rayon pool.
/// Events at or below `committed` are skipped by the reader, so they are not decoded.
fn decoded(
    events: BoxStream<'static, Result<Event, StreamError>>,
    decoder: Arc<EventDecoder>,
    committed: Option<i64>,
) -> BoxStream<'static, Result<DecodedEvent, StreamError>> {
    /// Small enough that a landing's own work on the pool never waits long behind a chunk.
    const CHUNK: usize = 1000;
    events
        .ready_chunks(CHUNK)
        .then(move |chunk| {
            let decoder = decoder.clone();
            async move {
                let decoding = tokio::task::spawn_blocking(move || {
                    chunk
                        .into_par_iter()
                        .map(|item| {
                            let event = item?;
                            let decoded = if committed.is_some_and(|c| event.sequence_number <= c) {
                                Vec::new()
                            } else {
                                decoder.decode(&event)
                            };
                            Ok((event, decoded))
                        })
                        .collect::<Vec<_>>()
                });
                decoding
                    .await
                    .unwrap_or_else(|e| vec![Err(StreamError::Decode(e))])
            }
        })
        .flat_map(futures::stream::iter)
        .boxed()
}

/// The partition's decoded events, the readings of each evaluated by the rules (events at or below
/// `committed` were evaluated before they landed, and are skipped). An event comes out only after
/// its alerts were queued for the sink and put in `alerts`; a batch takes every alert there when it
/// closes, so an event never reaches bronze before its alerts are on their way to `silver/alerts`
/// (alerts of later events may go with it, which is harmless: a restart that reads those events
/// again finds them on record).
fn evaluated(
    events: BoxStream<'static, Result<DecodedEvent, StreamError>>,
    alerting: Arc<Alerting>,
    views: SilverViews,
    committed: Option<i64>,
    alerts: Arc<std::sync::Mutex<Vec<Alert>>>,
) -> BoxStream<'static, Result<DecodedEvent, StreamError>> {
    events
        .then(move |item| {
            let (alerting, alerts, views) = (alerting.clone(), alerts.clone(), views.clone());
            async move {
                let (event, decoded) = item?;
                if committed.is_none_or(|c| event.sequence_number > c) {
                    let readings = decoded
                        .iter()
                        .filter_map(Prepared::landing_rows)
                        .flat_map(|rows| readings::from_view_rows(&views, rows))
                        .collect();
                    let raised = alerting.offer(&event, readings);
                    alerts.lock().expect("lock").extend(raised);
                }
                Ok((event, decoded))
            }
        })
        .boxed()
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
        if self.alerts > 0 || self.alerts_delivered > 0 {
            writeln!(
                f,
                "  {} alert events recorded in silver/alerts; {} delivered",
                self.alerts, self.alerts_delivered
            )?;
        }
        if self.alerts_waiting > 0 {
            writeln!(
                f,
                "  {} alerts still waiting for the sink: the next start sends them",
                self.alerts_waiting
            )?;
        }
        if self.recovered_events > 0 {
            writeln!(
                f,
                "  {} events an earlier run left between bronze and silver were merged into silver",
                self.recovered_events
            )?;
        }
        if self.compactions > 0 {
            writeln!(
                f,
                "  {} background compactions of the stream's tables",
                self.compactions
            )?;
        }
        Ok(())
    }
}
