//! Where alerts are sent: standard output or a file (CloudEvents, one JSON per line; the embedded
//! default), or an Event Hub (official client, the patient as partition key). Every sink also
//! has the `silver/alerts` table behind it, written by the stream with its batches.
//!
//! A send either succeeds or fails within seconds; the outbox ([`super::outbox`]) retries. An
//! Event Hubs producer whose send failed is closed and opened again on the next send, and one that
//! cannot connect at start is opened later: a hub that is down never stops the stream.
//!
//! Delivery is at least once: after a crash an alert may be sent again, with the same id.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use azure_messaging_eventhubs::models::EventData;
use azure_messaging_eventhubs::{EventDataBatchOptions, ProducerClient, RetryOptions};
use serde_json::Value;

use crate::stream::StreamError;
use crate::stream::event_hubs::{
    EventHubsOptions, error as event_hubs_error, producer_with, send_batch_within,
};

/// How long one send to Event Hubs may take, the client's own retries included, before the outbox
/// counts it as failed and tries again: short, so that alerts go out soon after the hub is back.
const SEND_TIMEOUT: Duration = Duration::from_secs(15);

/// A place alerts go. Each sink is a struct of its own (as `vector`'s sinks are): adding one
/// touches no other. A send succeeds or fails as a whole; the outbox retries a failed one.
#[async_trait::async_trait]
pub trait Sink: Send + Sync {
    /// Sends CloudEvents, each with its patient id (the partition key on Event Hubs).
    async fn send(&self, events: &[(String, Value)]) -> Result<(), StreamError>;

    async fn close(&self) {}
}

/// `stdout`, `file:PATH` or `eventhubs:HUB` (connection from the environment, as for streams).
pub async fn open(spec: &str) -> Result<Box<dyn Sink>, StreamError> {
    if spec == "stdout" || spec == "-" {
        return Ok(Box::new(Stdout));
    }
    if let Some(path) = spec.strip_prefix("file:") {
        return Ok(Box::new(File::open(PathBuf::from(path))?));
    }
    if let Some(hub) = spec.strip_prefix("eventhubs:") {
        return Ok(Box::new(EventHubs::open(hub).await?));
    }
    Err(StreamError::BadSink(spec.to_string()))
}

/// One CloudEvent per line on standard output.
pub struct Stdout;

#[async_trait::async_trait]
impl Sink for Stdout {
    async fn send(&self, events: &[(String, Value)]) -> Result<(), StreamError> {
        let mut out = std::io::stdout().lock();
        for (_, event) in events {
            let _ = writeln!(out, "{event}");
        }
        let _ = out.flush();
        Ok(())
    }
}

/// One CloudEvent per line, appended to a file (created with its folder).
pub struct File {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl File {
    fn open(path: PathBuf) -> Result<File, StreamError> {
        let failed = |path: &std::path::Path| {
            let path = path.display().to_string();
            move |source| StreamError::Read { path, source }
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(failed(parent))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(failed(&path))?;
        Ok(File {
            path,
            file: Mutex::new(file),
        })
    }
}

#[async_trait::async_trait]
impl Sink for File {
    async fn send(&self, events: &[(String, Value)]) -> Result<(), StreamError> {
        let mut text = String::new();
        for (_, event) in events {
            text.push_str(&event.to_string());
            text.push('\n');
        }
        let mut file = self.file.lock().expect("alert file lock");
        file.write_all(text.as_bytes())
            .and_then(|()| file.flush())
            .map_err(|source| StreamError::Read {
                path: self.path.display().to_string(),
                source,
            })
    }
}

/// An Event Hub, the patient as partition key; on a namespace of its own if
/// `ALERTS_EVENTHUBS_*` says so.
pub struct EventHubs {
    hub: String,
    options: Box<EventHubsOptions>,
    /// Opened on first use and again after a failed send.
    client: tokio::sync::Mutex<Option<ProducerClient>>,
}

impl EventHubs {
    async fn open(hub: &str) -> Result<EventHubs, StreamError> {
        let options = EventHubsOptions::for_alerts(hub)?;
        let client = match alert_producer(&options).await {
            Ok(client) => Some(client),
            Err(e) => {
                tracing::warn!(hub, error = %e, "the alert hub cannot be reached yet; alerts wait in the outbox");
                None
            }
        };
        Ok(EventHubs {
            hub: hub.to_string(),
            options: Box::new(options),
            client: tokio::sync::Mutex::new(client),
        })
    }
}

#[async_trait::async_trait]
impl Sink for EventHubs {
    async fn send(&self, events: &[(String, Value)]) -> Result<(), StreamError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut client = self.client.lock().await;
        if client.is_none() {
            *client = Some(alert_producer(&self.options).await?);
        }
        let sent = send_to_hub(&self.hub, client.as_ref().expect("opened"), events).await;
        if sent.is_err() {
            close_producer(client.take()).await;
        }
        sent
    }

    async fn close(&self) {
        close_producer(self.client.lock().await.take()).await;
    }
}

/// A producer whose own retries end well within [`SEND_TIMEOUT`].
async fn alert_producer(options: &EventHubsOptions) -> Result<ProducerClient, StreamError> {
    let retry = RetryOptions {
        initial_delay: azure_core::time::Duration::milliseconds(200),
        max_delay: azure_core::time::Duration::seconds(2),
        max_total_elapsed: azure_core::time::Duration::seconds(10),
        max_retries: 3,
    };
    let builder = ProducerClient::builder().with_retry_options(retry);
    tokio::time::timeout(SEND_TIMEOUT, producer_with(options, builder))
        .await
        .unwrap_or_else(|_| {
            Err(StreamError::NoAnswer {
                doing: "connecting".into(),
                secs: SEND_TIMEOUT.as_secs(),
            })
        })
}

async fn close_producer(client: Option<ProducerClient>) {
    if let Some(client) = client
        && let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(5), client.close()).await
    {
        tracing::debug!(error = %e, "closing the alert producer");
    }
}

/// One batch per patient, so that a patient's alerts keep their order on one partition.
async fn send_to_hub(
    hub: &str,
    client: &ProducerClient,
    events: &[(String, Value)],
) -> Result<(), StreamError> {
    let doing = format!("sending alerts to {hub}");
    let failed = |e: azure_messaging_eventhubs::EventHubsError| event_hubs_error(&doing, e);
    let mut by_patient: std::collections::BTreeMap<&str, Vec<&Value>> = Default::default();
    for (patient, event) in events {
        by_patient.entry(patient).or_default().push(event);
    }
    for (patient, events) in by_patient {
        let batch = client
            .create_batch(Some(EventDataBatchOptions {
                partition_key: Some(patient.to_string()),
                ..Default::default()
            }))
            .await
            .map_err(failed)?;
        for event in events {
            let data = EventData::builder()
                .with_body(event.to_string().into_bytes())
                .with_content_type("application/cloudevents+json".to_string())
                .with_message_id(event["id"].as_str().unwrap_or_default().to_string())
                .build();
            if !batch.try_add_event_data(data, None).map_err(failed)? {
                return Err(event_hubs_error(
                    &doing,
                    "the alerts of one patient do not fit in one message batch",
                ));
            }
        }
        send_batch_within(client, batch, &doing, SEND_TIMEOUT).await?;
    }
    Ok(())
}
