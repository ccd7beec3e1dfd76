//! The Azure Event Hubs source, through the official `azure_messaging_eventhubs` client.
//!
//! Partitions are shared among the `vitalake stream` processes of one consumer group by the SDK's
//! `EventProcessor`, with our [`Checkpoints`] as its `CheckpointStore`: each process claims its fair
//! share, renews its claims, and takes over the partitions of a process that stopped renewing
//! (after `partition_expiration`). A partition a process owns is read from its checkpoint on, and its
//! receiver carries the processor's owner level, so Event Hubs itself disconnects a previous reader.
//!
//! Sign-in, from the environment ([`Credentials`]): `EVENTHUBS_CONNECTION_STRING` (a namespace or
//! hub connection string with a shared access key), or `EVENTHUBS_NAMESPACE`
//! (`<name>.servicebus.windows.net`) with Microsoft Entra ID ([`crate::entra`]: a service
//! principal, workload identity or a managed identity). The identity needs the "Azure Event Hubs
//! Data Receiver" (stream) or "Data Sender" (send, alerts) role.
//! `EVENTHUBS_ENDPOINT` sends the AMQP connection elsewhere (a proxy, or the test peer:
//! `amqp://127.0.0.1:PORT` for plain TCP). `EVENTHUBS_OWNERSHIP_INTERVAL` / `_EXPIRY` (seconds) set
//! how often claims are renewed and how soon a silent process's partitions are taken over.
//! `EVENTHUBS_STALL_SECONDS` (default 10) is how long a partition may receive nothing while the hub
//! holds newer events before its receiver is rebuilt.
//!
//! Alerts may go to another namespace than the one the stream reads: `ALERTS_EVENTHUBS_CONNECTION_STRING`
//! or `ALERTS_EVENTHUBS_NAMESPACE` (and `ALERTS_EVENTHUBS_ENDPOINT`), when set, stand in for the
//! variables above for the alert sink ([`EventHubsOptions::for_alerts`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, UNIX_EPOCH};

use azure_core::time::Duration as AzureDuration;
use azure_messaging_eventhubs::models::{AmqpSimpleValue, ReceivedEventData, StartPositions};
use azure_messaging_eventhubs::processor::PartitionClient;
use azure_messaging_eventhubs::{
    ConsumerClient, EventProcessor, ProcessorStrategy, ProducerClient, StartLocation, StartPosition,
};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::checkpoints::Checkpoints;
use super::{Event, Partition, StreamError, StreamId};

pub const CONNECTION_STRING_VAR: &str = "EVENTHUBS_CONNECTION_STRING";
pub const NAMESPACE_VAR: &str = "EVENTHUBS_NAMESPACE";
pub const ENDPOINT_VAR: &str = "EVENTHUBS_ENDPOINT";
/// Seconds between ownership renewals and balancing (default 10).
pub const OWNERSHIP_INTERVAL_VAR: &str = "EVENTHUBS_OWNERSHIP_INTERVAL";
/// Seconds after which an unrenewed partition is taken over (default 30).
pub const OWNERSHIP_EXPIRY_VAR: &str = "EVENTHUBS_OWNERSHIP_EXPIRY";
/// Seconds a partition may receive nothing while the hub has newer events (default 10).
pub const STALL_VAR: &str = "EVENTHUBS_STALL_SECONDS";

/// What the watchdog of [`open`] did, for the stream's metrics.
#[derive(Debug, Default)]
pub struct Recoveries {
    /// Partition receivers rebuilt from their checkpoint because they stopped receiving.
    pub receivers_rebuilt: AtomicU64,
    /// Times the whole consumer was built again (receivers failing, a hub that does not answer).
    pub reconnects: AtomicU64,
}

/// How one `vitalake stream` joins a hub.
#[derive(Debug, Clone)]
pub struct EventHubsOptions {
    pub hub: String,
    pub consumer_group: String,
    pub credentials: Credentials,
    /// Where the AMQP connection goes instead of the namespace (a proxy, the test peer).
    pub endpoint: Option<String>,
    /// How often ownership is balanced and renewed.
    pub update_interval: Duration,
    /// A partition whose owner has not renewed for this long is taken over.
    pub partition_expiration: Duration,
    /// Where a partition that has no checkpoint yet starts.
    pub start: StartFrom,
    /// How long a partition may receive nothing while the hub has newer events for it.
    pub stall_after: Duration,
}

/// Where a partition that has no checkpoint yet starts reading (`vitalake stream --start`); a
/// partition with a checkpoint always goes on from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// Every event the hub still holds (its retention period).
    #[default]
    Earliest,
    /// Only events sent after the partition is claimed.
    Latest,
    /// Events enqueued at or after this time.
    EnqueuedAt(std::time::SystemTime),
}

impl std::str::FromStr for StartFrom {
    type Err = String;

    /// `earliest`, `latest`, or an RFC 3339 time such as `2026-11-30T08:00:00Z`.
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "earliest" => Ok(StartFrom::Earliest),
            "latest" => Ok(StartFrom::Latest),
            time => chrono::DateTime::parse_from_rfc3339(time)
                .map(|t| StartFrom::EnqueuedAt(t.into()))
                .map_err(|_| {
                    format!(
                        "'{time}' is not earliest, latest or an RFC 3339 time such as 2026-11-30T08:00:00Z"
                    )
                }),
        }
    }
}

impl StartFrom {
    fn position(self) -> StartPosition {
        let (location, inclusive) = match self {
            StartFrom::Earliest => (StartLocation::Earliest, false),
            StartFrom::Latest => (StartLocation::Latest, false),
            StartFrom::EnqueuedAt(time) => (StartLocation::EnqueuedTime(time), true),
        };
        StartPosition {
            location,
            inclusive,
        }
    }
}

/// The prefix of the alert sink's own sign-in variables.
const ALERTS_PREFIX: &str = "ALERTS_";

impl EventHubsOptions {
    /// Options from the environment; the hub and consumer group from the command line.
    pub fn from_env(hub: &str, consumer_group: &str) -> Result<Self, StreamError> {
        Self::from_env_prefixed("", hub, consumer_group)
    }

    /// Options for the alert sink: the `ALERTS_EVENTHUBS_*` variables if any of its sign-in
    /// variables is set (alerts on a namespace of their own), else the stream's.
    pub fn for_alerts(hub: &str) -> Result<Self, StreamError> {
        let own = [CONNECTION_STRING_VAR, NAMESPACE_VAR]
            .iter()
            .any(|var| std::env::var(format!("{ALERTS_PREFIX}{var}")).is_ok_and(|v| !v.is_empty()));
        Self::from_env_prefixed(if own { ALERTS_PREFIX } else { "" }, hub, "$Default")
    }

    fn from_env_prefixed(
        prefix: &str,
        hub: &str,
        consumer_group: &str,
    ) -> Result<Self, StreamError> {
        let credentials = Credentials::from_env_prefixed(prefix)?;
        let seconds = |var: &str, default: u64| {
            std::env::var(var)
                .ok()
                .and_then(|v| v.parse::<f64>().ok())
                .map_or(Duration::from_secs(default), Duration::from_secs_f64)
        };
        Ok(EventHubsOptions {
            hub: hub.to_string(),
            consumer_group: consumer_group.to_string(),
            credentials,
            endpoint: std::env::var(format!("{prefix}{ENDPOINT_VAR}"))
                .ok()
                .filter(|e| !e.is_empty()),
            update_interval: seconds(OWNERSHIP_INTERVAL_VAR, 10),
            partition_expiration: seconds(OWNERSHIP_EXPIRY_VAR, 30),
            start: StartFrom::default(),
            stall_after: seconds(STALL_VAR, 10).max(Duration::from_secs(1)),
        })
    }
}

/// How `vitalake` signs in to Event Hubs.
#[derive(Clone)]
pub enum Credentials {
    /// A namespace or hub connection string with a shared access key.
    ConnectionString(String),
    /// Microsoft Entra ID, for the namespace `<name>.servicebus.windows.net`.
    EntraId {
        namespace: String,
        credential: Arc<dyn azure_core::credentials::TokenCredential>,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key or the token.
        match self {
            Credentials::ConnectionString(_) => f.write_str("ConnectionString(..)"),
            Credentials::EntraId { namespace, .. } => write!(f, "EntraId({namespace})"),
        }
    }
}

impl Credentials {
    /// A connection string if `EVENTHUBS_CONNECTION_STRING` is set, else Entra ID for
    /// `EVENTHUBS_NAMESPACE` with the identity the environment describes (see the module docs).
    pub fn from_env() -> Result<Credentials, StreamError> {
        Self::from_env_prefixed("")
    }

    /// The same, from `{prefix}EVENTHUBS_CONNECTION_STRING` and `{prefix}EVENTHUBS_NAMESPACE`.
    fn from_env_prefixed(prefix: &str) -> Result<Credentials, StreamError> {
        let (connection_var, namespace_var) = (
            format!("{prefix}{CONNECTION_STRING_VAR}"),
            format!("{prefix}{NAMESPACE_VAR}"),
        );
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        if let Some(connection_string) = var(&connection_var) {
            return Ok(Credentials::ConnectionString(connection_string));
        }
        let Some(namespace) = var(&namespace_var) else {
            return Err(StreamError::NoCredentials {
                connection_var,
                namespace_var,
            });
        };
        let credential = crate::entra::credential_from_env()
            .map_err(|e| error("setting up the Entra ID credential", e))?;
        Ok(Credentials::EntraId {
            namespace,
            credential,
        })
    }

    /// The fully qualified namespace, part of the lake's checkpoint and transaction ids.
    pub fn namespace(&self) -> Result<String, StreamError> {
        match self {
            Credentials::ConnectionString(text) => text
                .parse::<azure_messaging_eventhubs::ConnectionString>()
                .map(|c| c.fully_qualified_namespace.clone())
                .map_err(|e| error("reading the connection string", e)),
            Credentials::EntraId { namespace, .. } => Ok(namespace.clone()),
        }
    }
}

/// The Azure clients need a process-wide TLS provider; ours is the one `object_store` uses.
pub fn install_tls_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A failure of the Event Hubs client while `doing` something.
pub(crate) fn error(doing: &str, e: impl Into<crate::BoxError>) -> StreamError {
    StreamError::EventHubs {
        doing: doing.to_string(),
        source: e.into(),
    }
}

/// A running share of a hub's partitions: partitions arrive on `partitions` as this process claims
/// them. `shutdown` ends the processor.
pub struct EventHubsSource {
    pub stream: StreamId,
    pub partitions: mpsc::Receiver<Partition>,
    processor: Arc<tokio::sync::Mutex<Arc<EventProcessor>>>,
}

impl EventHubsSource {
    /// The partitions as this process claims them (taken once; later calls get a closed channel).
    pub fn take_partitions(&mut self) -> mpsc::Receiver<Partition> {
        std::mem::replace(&mut self.partitions, mpsc::channel(1).1)
    }

    pub async fn shutdown(self) {
        if let Err(e) = self.processor.lock().await.shutdown().await {
            tracing::warn!(error = %e, "Event Hubs processor did not stop cleanly");
        }
    }
}

/// Joins the hub's consumer group with `checkpoints` as the checkpoint and ownership store.
///
/// The SDK recovers a dropped connection by itself most of the time, but not always: after a cut
/// it can fail every new receiver ("illegal session state"), retry forever while delivering
/// nothing, or keep one partition's link open with nothing coming. So the consumer is watched:
/// - a partition that has received nothing for `stall_after` while the hub holds newer events and
///   its reader waits for more has its receiver rebuilt: its client is closed, and the processor
///   hands the partition out again, read on from its checkpoint. This is logged once and counted
///   in [`Recoveries::receivers_rebuilt`];
/// - a rebuilt receiver that stalls again at the same place, a partition receiver that fails
///   before delivering a single event, or a hub that stops answering (so it cannot say whether
///   events wait), or a processor that stops on an error (the checkpoint store failed a claim),
///   makes this process build its consumer and processor again. The new processor carries the
///   same owner id (the consumer's application id): it finds its claims in the store and reads on
///   from the checkpoints at once, instead of waiting for them to expire.
pub async fn open(
    options: &EventHubsOptions,
    checkpoints: Arc<Checkpoints>,
    stop: CancellationToken,
    recoveries: Arc<Recoveries>,
) -> Result<EventHubsSource, StreamError> {
    install_tls_provider();
    let namespace = options.credentials.namespace()?;
    let owner = uuid::Uuid::now_v7().to_string();
    let first = Consumer::connect(options, &checkpoints, &owner).await?;
    let current = Arc::new(tokio::sync::Mutex::new(first.processor.clone()));
    let stream = StreamId {
        namespace,
        hub: options.hub.clone(),
        consumer_group: options.consumer_group.clone(),
    };
    let (tx, rx) = mpsc::channel(64);
    let (failed_tx, mut failed) = mpsc::unbounded_channel::<bool>();
    let options = options.clone();
    let swapped = current.clone();
    let stream_id = stream.clone();
    tokio::spawn(async move {
        let stream = stream_id;
        let mut consumer = first;
        let progress = Progress::default();
        let mut check = tokio::time::interval(options.stall_after / 2);
        let mut watchdog = Watchdog {
            stall_after: options.stall_after,
            recoveries,
            rebuilt_at: HashMap::new(),
        };
        // Processors stopped since a partition was last claimed: a store that keeps failing (its
        // credentials revoked, say) is tried again less and less often, not in a tight loop.
        let mut processor_stops = 0u32;
        loop {
            let reconnect = tokio::select! {
                client = consumer.processor.next_partition_client() => {
                    match client {
                        Ok(client) => {
                            processor_stops = 0;
                            let id = client.get_partition_id().to_string();
                            tracing::info!(partition_id = id, "partition claimed");
                            // Where the reader starts: the watchdog's first evidence.
                            let from = checkpoints
                                .checkpoint(&stream.namespace, &stream.hub, &stream.consumer_group, &id)
                                .await
                                .ok()
                                .flatten()
                                .and_then(|c| c.sequence_number)
                                .unwrap_or(-1);
                            let partition = partition(client, failed_tx.clone(), progress.clone(), from);
                            if tx.send(partition).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "no partition client");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                    false
                }
                Some(delivered_any) = failed.recv() => !delivered_any,
                () = consumer.stopped.cancelled() => {
                    processor_stops += 1;
                    true
                }
                _ = check.tick() => watchdog.needs_new_consumer(&consumer, &progress).await,
                () = stop.cancelled() => return,
            };
            if !reconnect {
                continue;
            }
            tracing::warn!("the Event Hubs consumer is stuck: connecting again");
            watchdog
                .recoveries
                .reconnects
                .fetch_add(1, Ordering::Relaxed);
            let _ = consumer.processor.shutdown().await;
            if processor_stops > 1 {
                let wait = Duration::from_secs(1 << (processor_stops - 2).min(5));
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = stop.cancelled() => return,
                }
            }
            consumer = loop {
                // A connection that hangs is given up too, like one that fails.
                let connecting = Consumer::connect(&options, &checkpoints, &owner);
                match tokio::time::timeout(options.stall_after * 2, connecting).await {
                    Ok(Ok(consumer)) => break consumer,
                    Ok(Err(e)) => tracing::warn!(error = %e, "connecting to Event Hubs again"),
                    Err(_) => tracing::warn!("connecting to Event Hubs again: no answer in time"),
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = stop.cancelled() => return,
                }
            };
            progress.clear();
            watchdog.rebuilt_at.clear();
            *swapped.lock().await = consumer.processor.clone();
            tracing::info!("connected to Event Hubs again");
        }
    });
    Ok(EventHubsSource {
        stream,
        partitions: rx,
        processor: current,
    })
}

/// What the watchdog of [`open`] remembers between its checks.
struct Watchdog {
    stall_after: Duration,
    recoveries: Arc<Recoveries>,
    /// Per partition, the sequence number its receiver was last rebuilt at, and when.
    rebuilt_at: HashMap<String, (i64, std::time::Instant)>,
}

impl Watchdog {
    /// One check: rebuilds the receivers of stalled partitions, and says whether only a new
    /// consumer helps.
    async fn needs_new_consumer(&mut self, consumer: &Consumer, progress: &Progress) -> bool {
        // A rebuilt receiver whose successor never came (its close hung, so the processor still
        // counts it as handed out).
        if self
            .rebuilt_at
            .iter()
            .any(|(id, (_, at))| at.elapsed() > self.stall_after * 2 && !progress.has(id))
        {
            tracing::warn!("a rebuilt partition receiver was not handed out again");
            return true;
        }
        let stalled = match consumer.check(progress, self.stall_after).await {
            Health::Receiving => return false,
            Health::HubSilent => return true,
            Health::Stalled(stalled) => stalled,
        };
        let mut needs_new_consumer = false;
        for (partition_id, received, at_hub) in stalled {
            if self.rebuilt_at.get(&partition_id).map(|r| r.0) == Some(received) {
                // Its new receiver stalled at the same place: the receiver is not the cause.
                tracing::warn!(
                    partition_id,
                    received,
                    at_hub,
                    "a rebuilt partition receiver stalled again"
                );
                needs_new_consumer = true;
                continue;
            }
            tracing::warn!(
                partition_id,
                received,
                at_hub,
                "partition receiver stalled: events wait at the hub but do not arrive; rebuilding it from its checkpoint"
            );
            progress.rebuild(&partition_id);
            self.rebuilt_at
                .insert(partition_id, (received, std::time::Instant::now()));
            self.recoveries
                .receivers_rebuilt
                .fetch_add(1, Ordering::Relaxed);
        }
        needs_new_consumer
    }
}

type EventSender = mpsc::Sender<Result<Event, StreamError>>;

/// What each partition reader last received, and when: the watchdog's evidence.
#[derive(Clone, Default)]
struct Progress(Arc<std::sync::Mutex<HashMap<String, Received>>>);

struct Received {
    sequence_number: i64,
    at: std::time::Instant,
    /// The reader's channel: events still in it mean the lake is the slow side, not the hub.
    reader: mpsc::WeakSender<Result<Event, StreamError>>,
    /// Cancelled to end the receiver, so that the partition is handed out again.
    rebuild: CancellationToken,
}

impl Progress {
    /// A new receiver of `partition_id`, starting after `sequence_number`.
    fn started(
        &self,
        partition_id: &str,
        sequence_number: i64,
        reader: &EventSender,
        rebuild: &CancellationToken,
    ) {
        let received = Received {
            sequence_number,
            at: std::time::Instant::now(),
            reader: reader.downgrade(),
            rebuild: rebuild.clone(),
        };
        let mut map = self.0.lock().expect("progress lock");
        map.insert(partition_id.to_string(), received);
    }

    /// An event of `partition_id` arrived (per event: updated in place).
    fn received(&self, partition_id: &str, sequence_number: i64) {
        let mut map = self.0.lock().expect("progress lock");
        if let Some(received) = map.get_mut(partition_id) {
            received.sequence_number = sequence_number;
            received.at = std::time::Instant::now();
        }
    }

    fn has(&self, partition_id: &str) -> bool {
        self.0
            .lock()
            .expect("progress lock")
            .contains_key(partition_id)
    }

    /// Ends the receiver of `partition_id`; its successor records itself when it starts.
    fn rebuild(&self, partition_id: &str) {
        if let Some(received) = self.0.lock().expect("progress lock").remove(partition_id) {
            received.rebuild.cancel();
        }
    }

    fn clear(&self) {
        self.0.lock().expect("progress lock").clear();
    }

    /// Partitions whose last event is older than `patience` while their reader has nothing left.
    fn idle(&self, patience: Duration) -> Vec<(String, i64)> {
        let map = self.0.lock().expect("progress lock");
        map.iter()
            .filter(|(_, r)| {
                r.at.elapsed() > patience
                    && r.reader
                        .upgrade()
                        .is_some_and(|tx| tx.capacity() == tx.max_capacity())
            })
            .map(|(id, r)| (id.clone(), r.sequence_number))
            .collect()
    }
}

/// A consumer client and a running processor on it, claiming partitions as `owner`, and a second
/// client that asks the hub how far each partition goes.
struct Consumer {
    processor: Arc<EventProcessor>,
    probe: ConsumerClient,
    /// Cancelled when the processor stops on an error: the consumer is then built again.
    stopped: CancellationToken,
}

impl Consumer {
    async fn connect(
        options: &EventHubsOptions,
        checkpoints: &Arc<Checkpoints>,
        owner: &str,
    ) -> Result<Consumer, StreamError> {
        let client = || async {
            let mut builder = ConsumerClient::builder()
                .with_consumer_group(options.consumer_group.clone())
                .with_application_id(owner.to_string());
            if let Some(endpoint) = &options.endpoint {
                builder = builder.with_custom_endpoint(endpoint.clone());
            }
            match &options.credentials {
                Credentials::ConnectionString(text) => {
                    builder
                        .open_with_connection_string(text, Some(&options.hub))
                        .await
                }
                Credentials::EntraId {
                    namespace,
                    credential,
                } => {
                    builder
                        .open(namespace, options.hub.clone(), credential.clone())
                        .await
                }
            }
            .map_err(|e| error("connecting to Event Hubs", e))
        };
        let processor = EventProcessor::builder()
            .with_load_balancing_strategy(ProcessorStrategy::Greedy)
            .with_update_interval(to_azure(options.update_interval))
            .with_partition_expiration_duration(to_azure(options.partition_expiration))
            .with_start_positions(StartPositions {
                default: options.start.position(),
                ..Default::default()
            })
            .build(client().await?, checkpoints.clone())
            .await
            .map_err(|e| error("starting the Event Hubs processor", e))?;
        let running = processor.clone();
        let stopped = CancellationToken::new();
        let on_failure = stopped.clone();
        tokio::spawn(async move {
            // The SDK's processor ends at the first error of a load-balancing round (a checkpoint
            // store that did not answer): without a new one, no partition is claimed or kept again.
            if let Err(e) = running.run().await {
                tracing::error!(error = %e, "Event Hubs processor stopped");
                on_failure.cancel();
            }
        });
        Ok(Consumer {
            processor,
            probe: client().await?,
            stopped,
        })
    }

    /// Asks the hub how far each idle partition goes: those with events this process never
    /// received are stalled, as `(partition, last received, last at the hub)`.
    async fn check(&self, progress: &Progress, patience: Duration) -> Health {
        let mut stalled = Vec::new();
        for (partition_id, received) in progress.idle(patience) {
            let asked =
                tokio::time::timeout(patience, self.probe.get_partition_properties(&partition_id))
                    .await;
            let at_hub = match asked {
                Ok(Ok(properties)) => properties.last_enqueued_sequence_number,
                Ok(Err(e)) => {
                    tracing::warn!(partition_id, error = %e, "the hub does not answer");
                    return Health::HubSilent;
                }
                Err(_) => {
                    tracing::warn!(partition_id, "the hub does not answer in time");
                    return Health::HubSilent;
                }
            };
            if at_hub > received {
                stalled.push((partition_id, received, at_hub));
            }
        }
        if stalled.is_empty() {
            Health::Receiving
        } else {
            Health::Stalled(stalled)
        }
    }
}

enum Health {
    Receiving,
    Stalled(Vec<(String, i64, i64)>),
    /// The hub did not answer: whether events wait cannot be known.
    HubSilent,
}

fn to_azure(duration: Duration) -> AzureDuration {
    AzureDuration::milliseconds(duration.as_millis() as i64)
}

/// A claimed partition as a stream of events. A thread owns the partition client and forwards its
/// events (the SDK's event stream is not `Send`, so it cannot move between the runtime's workers);
/// it ends when the stream's reader goes away, the partition is lost, or its receiver fails.
///
/// When it ends, the client is closed, which takes it out of the processor's map: a partition this
/// process still owns is then handed out again at the processor's next update, read on from the
/// last checkpoint. Without that, a receiver the SDK cannot recover (after a dropped connection it
/// can fail with "link name is not unique") would leave its partition unread until a restart.
/// A receiver that fails reports on `failed` whether it had delivered any event.
fn partition(
    client: Arc<PartitionClient>,
    failed: mpsc::UnboundedSender<bool>,
    progress: Progress,
    from: i64,
) -> Partition {
    let id = client.get_partition_id().to_string();
    let (tx, mut rx) = mpsc::channel(4096);
    let partition_id = id.clone();
    let runtime = tokio::runtime::Handle::current();
    let rebuild = CancellationToken::new();
    tokio::task::spawn_blocking(move || {
        runtime.block_on(async move {
            progress.started(&partition_id, from, &tx, &rebuild);
            let mut events = client.stream_events();
            let mut delivered_any = false;
            // Ends when the stream's reader is gone, even while the partition is quiet, or when
            // the watchdog rebuilds the receiver.
            while let Some(received) = tokio::select! {
                received = events.next() => received,
                () = tx.closed() => None,
                () = rebuild.cancelled() => None,
            } {
                let item = received
                    .map(|r| event(&partition_id, &r))
                    .map_err(|e| error(&format!("partition {partition_id}"), e));
                if let Err(e) = &item {
                    // A partition taken by another process (a higher owner level) is balancing,
                    // not a broken connection.
                    let text = e.to_string().to_ascii_lowercase();
                    let stolen = text.contains("stolen") || text.contains("epoch");
                    let _ = failed.send(delivered_any || stolen);
                    let _ = tx.send(item).await;
                    break;
                }
                delivered_any = true;
                if let Ok(event) = &item {
                    progress.received(&partition_id, event.sequence_number);
                }
                if tx.send(item).await.is_err() {
                    break;
                }
            }
            drop(events);
            if let Ok(client) = Arc::try_unwrap(client) {
                // Bounded: a wedged link may never answer its detach (the watchdog then builds a
                // new consumer).
                match tokio::time::timeout(Duration::from_secs(10), client.close()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(partition_id, error = %e, "closing a partition client")
                    }
                    Err(_) => tracing::warn!(partition_id, "closing a partition client hung"),
                }
            }
        })
    });
    let events = futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed();
    Partition { id, events }
}

fn simple_text(value: &AmqpSimpleValue) -> String {
    match value {
        AmqpSimpleValue::String(s) => s.clone(),
        other => format!("{other:?}"),
    }
}

/// An event as the lake records it.
fn event(partition_id: &str, received: &ReceivedEventData) -> Event {
    let data = received.event_data();
    let properties: std::collections::BTreeMap<String, String> = data
        .properties()
        .map(|p| p.iter().map(|(k, v)| (k.clone(), simple_text(v))).collect())
        .unwrap_or_default();
    let content_encoding = received
        .raw_amqp_message()
        .properties
        .as_ref()
        .and_then(|p| p.content_encoding.as_ref().map(|e| e.0.clone()))
        .or_else(|| {
            properties
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-encoding"))
                .map(|(_, v)| v.clone())
        });
    Event {
        partition_id: partition_id.to_string(),
        sequence_number: received.sequence_number().unwrap_or(-1),
        offset: received.offset().clone(),
        enqueued_time: received.enqueued_time().and_then(|t| {
            t.duration_since(UNIX_EPOCH)
                .ok()
                .map(|d| d.as_micros() as i64)
        }),
        partition_key: received.partition_key().clone(),
        properties,
        content_encoding,
        body: data.body().map(<[u8]>::to_vec).unwrap_or_default(),
    }
}

/// A producer on the hub, for `vitalake send`.
pub async fn producer(options: &EventHubsOptions) -> Result<ProducerClient, StreamError> {
    producer_with(options, ProducerClient::builder()).await
}

/// A producer built from `builder` (retry options set by the caller).
pub async fn producer_with(
    options: &EventHubsOptions,
    builder: azure_messaging_eventhubs::builders::ProducerClientBuilder,
) -> Result<ProducerClient, StreamError> {
    install_tls_provider();
    let mut builder = builder;
    if let Some(endpoint) = &options.endpoint {
        builder = builder.with_custom_endpoint(endpoint.clone());
    }
    match &options.credentials {
        Credentials::ConnectionString(text) => {
            builder
                .open_with_connection_string(text, Some(&options.hub))
                .await
        }
        Credentials::EntraId {
            namespace,
            credential,
        } => {
            builder
                .open(namespace, &options.hub, credential.clone())
                .await
        }
    }
    .map_err(|e| error("connecting to Event Hubs", e))
}

/// How long a batch may wait for the hub's acknowledgement before it counts as failed.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// Sends one batch and waits for the hub to accept it. A send that is never acknowledged fails
/// after [`SEND_TIMEOUT`] instead of hanging: the AMQP layer under the SDK (`fe2o3-amqp` 0.16) can
/// lose an acknowledgement that arrives faster than it records the transfer, and a stuck sender
/// would stop a replay or an alert stream silently. The caller decides whether to retry; alert
/// ids are stable, so a receiver drops the copy if the first send did arrive.
pub async fn send_batch(
    client: &ProducerClient,
    batch: azure_messaging_eventhubs::EventDataBatch<'_>,
    what: &str,
) -> Result<(), StreamError> {
    send_batch_within(client, batch, what, SEND_TIMEOUT).await
}

/// [`send_batch`] with a timeout of the caller's.
pub async fn send_batch_within(
    client: &ProducerClient,
    batch: azure_messaging_eventhubs::EventDataBatch<'_>,
    what: &str,
    timeout: Duration,
) -> Result<(), StreamError> {
    match tokio::time::timeout(timeout, client.send_batch(batch, None)).await {
        Ok(sent) => sent.map_err(|e| error(what, e)),
        Err(_) => Err(StreamError::NoAnswer {
            doing: what.to_string(),
            secs: timeout.as_secs(),
        }),
    }
}
