//! `vitalake send`: NDJSON events published to an Event Hub, the patient as partition key.
//!
//! Event Hubs keeps order only within a partition, and a partition key always maps to the same
//! partition: keyed by patient, each patient's readings are consumed in the order they were sent.
//! A line without a recognisable patient is sent without a key (any partition).

use std::collections::BTreeMap;
use std::path::Path;

use azure_messaging_eventhubs::EventDataBatchOptions;
use azure_messaging_eventhubs::models::EventData;
use serde_json::Value;

use super::StreamError;
use super::event_hubs::{EventHubsOptions, error, producer, send_batch};

#[derive(Debug, Default, serde::Serialize)]
pub struct Sent {
    pub events: u64,
    pub batches: u64,
    pub bytes: u64,
    pub partition_keys: usize,
}

impl std::fmt::Display for Sent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent {} events ({:.1} MB) in {} batches, {} partition keys",
            self.events,
            self.bytes as f64 / 1e6,
            self.batches,
            self.partition_keys
        )
    }
}

/// The patient an event is about: `subject.reference` of the resource, or of a Bundle's first entry.
pub fn partition_key(line: &str) -> Option<String> {
    let event: Value = serde_json::from_str(line).ok()?;
    let resource = match event["resourceType"].as_str() {
        Some("Bundle") => &event["entry"][0]["resource"],
        _ => &event,
    };
    resource["subject"]["reference"]
        .as_str()
        .map(|r| r.trim_start_matches("Patient/").to_string())
}

pub async fn send_file(path: &Path, options: &EventHubsOptions) -> Result<Sent, StreamError> {
    let text = std::fs::read_to_string(path).map_err(|source| StreamError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let mut by_key: BTreeMap<Option<String>, Vec<&str>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        by_key.entry(partition_key(line)).or_default().push(line);
    }
    let client = producer(options).await?;
    let what = format!("sending to {}", options.hub);
    let failed = |e: azure_messaging_eventhubs::EventHubsError| error(&what, e);
    let mut sent = Sent {
        partition_keys: by_key.len(),
        ..Sent::default()
    };
    for (key, lines) in by_key {
        let batch_options = || EventDataBatchOptions {
            partition_key: key.clone(),
            ..Default::default()
        };
        let mut batch = client
            .create_batch(Some(batch_options()))
            .await
            .map_err(failed)?;
        for line in lines {
            let event = || {
                EventData::builder()
                    .with_body(line.as_bytes().to_vec())
                    .build()
            };
            if !batch.try_add_event_data(event(), None).map_err(failed)? {
                if batch.is_empty() {
                    return Err(StreamError::EventTooLarge { bytes: line.len() });
                }
                send_batch(&client, batch, &what).await?;
                sent.batches += 1;
                batch = client
                    .create_batch(Some(batch_options()))
                    .await
                    .map_err(failed)?;
                if !batch.try_add_event_data(event(), None).map_err(failed)? {
                    return Err(StreamError::EventTooLarge { bytes: line.len() });
                }
            }
            sent.events += 1;
            sent.bytes += line.len() as u64;
        }
        if !batch.is_empty() {
            send_batch(&client, batch, &what).await?;
            sent.batches += 1;
        }
    }
    if let Err(e) = client.close().await {
        tracing::debug!(error = %e, "closing the producer");
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patient_is_the_partition_key() {
        assert_eq!(
            partition_key(r#"{"resourceType":"Observation","subject":{"reference":"Patient/p1"}}"#),
            Some("p1".into())
        );
        assert_eq!(
            partition_key(
                r#"{"resourceType":"Bundle","entry":[{"resource":{"subject":{"reference":"Patient/p2"}}}]}"#
            ),
            Some("p2".into())
        );
        assert_eq!(partition_key("not json"), None);
    }
}
