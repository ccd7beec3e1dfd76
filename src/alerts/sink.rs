//! Where alerts are sent: standard output or a file (CloudEvents, one JSON per line; the embedded
//! default), or an Event Hub (official client, the patient as partition key). Every sink also
//! has the `silver/alerts` table behind it, written by the stream with its batches.
//!
//! Delivery is at least once: after a crash an alert may be sent again, with the same id.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use azure_messaging_eventhubs::models::EventData;
use azure_messaging_eventhubs::{EventDataBatchOptions, ProducerClient};
use serde_json::Value;

use crate::stream::StreamError;
use crate::stream::event_hubs::{EventHubsOptions, producer};

pub enum Sink {
    Stdout,
    File {
        path: PathBuf,
        file: Mutex<std::fs::File>,
    },
    EventHubs {
        hub: String,
        client: ProducerClient,
    },
}

impl Sink {
    /// `stdout`, `file:PATH` or `eventhubs:HUB` (connection from the environment, as for streams).
    pub async fn open(spec: &str) -> Result<Sink, StreamError> {
        if spec == "stdout" || spec == "-" {
            return Ok(Sink::Stdout);
        }
        if let Some(path) = spec.strip_prefix("file:") {
            let path = PathBuf::from(path);
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|source| StreamError::Read {
                    path: parent.display().to_string(),
                    source,
                })?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|source| StreamError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
            return Ok(Sink::File {
                path,
                file: Mutex::new(file),
            });
        }
        if let Some(hub) = spec.strip_prefix("eventhubs:") {
            let options = EventHubsOptions::from_env(hub, "$Default")?;
            let client = producer(&options).await?;
            return Ok(Sink::EventHubs {
                hub: hub.to_string(),
                client,
            });
        }
        Err(StreamError::BadSink(spec.to_string()))
    }

    /// Sends CloudEvents (each with its patient id, the partition key on Event Hubs).
    pub async fn send(&self, events: &[(String, Value)]) -> Result<(), StreamError> {
        if events.is_empty() {
            return Ok(());
        }
        match self {
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                for (_, event) in events {
                    let _ = writeln!(out, "{event}");
                }
                let _ = out.flush();
                Ok(())
            }
            Sink::File { path, file } => {
                let mut text = String::new();
                for (_, event) in events {
                    text.push_str(&event.to_string());
                    text.push('\n');
                }
                let mut file = file.lock().expect("alert file lock");
                file.write_all(text.as_bytes())
                    .and_then(|()| file.flush())
                    .map_err(|source| StreamError::Read {
                        path: path.display().to_string(),
                        source,
                    })
            }
            Sink::EventHubs { hub, client } => send_to_hub(hub, client, events).await,
        }
    }

    pub async fn close(self) {
        if let Sink::EventHubs { client, .. } = self
            && let Err(e) = client.close().await
        {
            tracing::debug!(error = %e, "closing the alert producer");
        }
    }
}

/// One batch per patient, so that a patient's alerts keep their order on one partition.
async fn send_to_hub(
    hub: &str,
    client: &ProducerClient,
    events: &[(String, Value)],
) -> Result<(), StreamError> {
    let failed = |e: azure_messaging_eventhubs::EventHubsError| {
        StreamError::EventHubs(format!("sending alerts to {hub}: {e}"))
    };
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
                return Err(StreamError::EventHubs(format!(
                    "the alerts of one patient do not fit in one message batch of {hub}"
                )));
            }
        }
        crate::stream::event_hubs::send_batch(client, batch, &format!("sending alerts to {hub}"))
            .await?;
    }
    Ok(())
}
