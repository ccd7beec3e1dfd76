//! The Azure Event Hubs source, through the official `azure_messaging_eventhubs` client.
//!
//! Partitions are shared among the `vitalake stream` processes of one consumer group by the SDK's
//! `EventProcessor`, with our [`Checkpoints`] as its `CheckpointStore`: each process claims its fair
//! share, renews its claims, and takes over the partitions of a process that stopped renewing
//! (after `partition_expiration`). A partition a process owns is read from its checkpoint on, and its
//! receiver carries the processor's owner level, so Event Hubs itself disconnects a previous reader.
//!
//! Connection: `EVENTHUBS_CONNECTION_STRING` (a namespace or hub connection string with a shared
//! access key). `EVENTHUBS_ENDPOINT` sends the AMQP connection elsewhere (a proxy, or the test peer:
//! `amqp://127.0.0.1:PORT` for plain TCP). `EVENTHUBS_OWNERSHIP_INTERVAL` / `_EXPIRY` (seconds) set
//! how often claims are renewed and how soon a silent process's partitions are taken over.

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
pub const ENDPOINT_VAR: &str = "EVENTHUBS_ENDPOINT";
/// Seconds between ownership renewals and balancing (default 10).
pub const OWNERSHIP_INTERVAL_VAR: &str = "EVENTHUBS_OWNERSHIP_INTERVAL";
/// Seconds after which an unrenewed partition is taken over (default 30).
pub const OWNERSHIP_EXPIRY_VAR: &str = "EVENTHUBS_OWNERSHIP_EXPIRY";

/// How one `vitalake stream` joins a hub.
#[derive(Debug, Clone)]
pub struct EventHubsOptions {
    pub hub: String,
    pub consumer_group: String,
    pub connection_string: String,
    /// Where the AMQP connection goes instead of the namespace (a proxy, the test peer).
    pub endpoint: Option<String>,
    /// How often ownership is balanced and renewed.
    pub update_interval: Duration,
    /// A partition whose owner has not renewed for this long is taken over.
    pub partition_expiration: Duration,
}

impl EventHubsOptions {
    /// Options from the environment; the hub and consumer group from the command line.
    pub fn from_env(hub: &str, consumer_group: &str) -> Result<Self, StreamError> {
        let connection_string = std::env::var(CONNECTION_STRING_VAR).map_err(|_| {
            StreamError::EventHubs(format!(
                "set {CONNECTION_STRING_VAR} to the Event Hubs namespace's connection string"
            ))
        })?;
        let seconds = |var: &str, default: u64| {
            std::env::var(var)
                .ok()
                .and_then(|v| v.parse::<f64>().ok())
                .map_or(Duration::from_secs(default), Duration::from_secs_f64)
        };
        Ok(EventHubsOptions {
            hub: hub.to_string(),
            consumer_group: consumer_group.to_string(),
            connection_string,
            endpoint: std::env::var(ENDPOINT_VAR).ok().filter(|e| !e.is_empty()),
            update_interval: seconds(OWNERSHIP_INTERVAL_VAR, 10),
            partition_expiration: seconds(OWNERSHIP_EXPIRY_VAR, 30),
        })
    }
}

/// The Azure clients need a process-wide TLS provider; ours is the one `object_store` uses.
pub fn install_tls_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn error(context: &str, e: impl std::fmt::Display) -> StreamError {
    StreamError::EventHubs(format!("{context}: {e}"))
}

/// A running share of a hub's partitions: partitions arrive on `partitions` as this process claims
/// them. `stop` ends the processor.
pub struct EventHubsSource {
    pub stream: StreamId,
    pub partitions: mpsc::Receiver<Partition>,
    processor: Arc<EventProcessor>,
}

impl EventHubsSource {
    pub async fn shutdown(self) {
        if let Err(e) = self.processor.shutdown().await {
            tracing::warn!(error = %e, "Event Hubs processor did not stop cleanly");
        }
    }
}

/// Joins the hub's consumer group with `checkpoints` as the checkpoint and ownership store.
pub async fn open(
    options: &EventHubsOptions,
    checkpoints: Arc<Checkpoints>,
    stop: CancellationToken,
) -> Result<EventHubsSource, StreamError> {
    install_tls_provider();
    let mut builder = ConsumerClient::builder().with_consumer_group(options.consumer_group.clone());
    if let Some(endpoint) = &options.endpoint {
        builder = builder.with_custom_endpoint(endpoint.clone());
    }
    let consumer = builder
        .open_with_connection_string(&options.connection_string, Some(&options.hub))
        .await
        .map_err(|e| error("connecting to Event Hubs", e))?;
    let namespace = options
        .connection_string
        .parse::<azure_messaging_eventhubs::ConnectionString>()
        .map(|c| c.fully_qualified_namespace.clone())
        .map_err(|e| error("reading the connection string", e))?;
    let processor = EventProcessor::builder()
        .with_load_balancing_strategy(ProcessorStrategy::Greedy)
        .with_update_interval(to_azure(options.update_interval))
        .with_partition_expiration_duration(to_azure(options.partition_expiration))
        .with_start_positions(StartPositions {
            default: StartPosition {
                location: StartLocation::Earliest,
                inclusive: false,
            },
            ..Default::default()
        })
        .build(consumer, checkpoints)
        .await
        .map_err(|e| error("starting the Event Hubs processor", e))?;
    let running = processor.clone();
    tokio::spawn(async move {
        if let Err(e) = running.run().await {
            tracing::error!(error = %e, "Event Hubs processor stopped");
        }
    });
    let (tx, rx) = mpsc::channel(64);
    let handing_out = processor.clone();
    tokio::spawn(async move {
        loop {
            let client = tokio::select! {
                client = handing_out.next_partition_client() => client,
                () = stop.cancelled() => return,
            };
            match client {
                Ok(client) => {
                    tracing::info!(
                        partition_id = client.get_partition_id(),
                        "partition claimed"
                    );
                    if tx.send(partition(client)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no partition client");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    Ok(EventHubsSource {
        stream: StreamId {
            namespace,
            hub: options.hub.clone(),
            consumer_group: options.consumer_group.clone(),
        },
        partitions: rx,
        processor,
    })
}

fn to_azure(duration: Duration) -> AzureDuration {
    AzureDuration::milliseconds(duration.as_millis() as i64)
}

/// A claimed partition as a stream of events. A thread owns the partition client and forwards its
/// events (the SDK's event stream is not `Send`, so it cannot move between the runtime's workers);
/// it ends when the stream's reader goes away or the partition is lost.
fn partition(client: Arc<PartitionClient>) -> Partition {
    let id = client.get_partition_id().to_string();
    let (tx, mut rx) = mpsc::channel(4096);
    let partition_id = id.clone();
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        runtime.block_on(async move {
            let mut events = client.stream_events();
            while let Some(received) = events.next().await {
                let item = received
                    .map(|r| event(&partition_id, &r))
                    .map_err(|e| error(&format!("partition {partition_id}"), e));
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
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
    install_tls_provider();
    let mut builder = ProducerClient::builder();
    if let Some(endpoint) = &options.endpoint {
        builder = builder.with_custom_endpoint(endpoint.clone());
    }
    builder
        .open_with_connection_string(&options.connection_string, Some(&options.hub))
        .await
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
    match tokio::time::timeout(SEND_TIMEOUT, client.send_batch(batch, None)).await {
        Ok(sent) => sent.map_err(|e| error(what, e)),
        Err(_) => Err(StreamError::EventHubs(format!(
            "{what}: no acknowledgement from Event Hubs within {} s",
            SEND_TIMEOUT.as_secs()
        ))),
    }
}
