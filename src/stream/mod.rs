//! Event streams: where `vitalake stream` reads events from, and where it records how far it got.
//!
//! - [`file`]: an NDJSON file, optionally followed like `tail -f` (the embedded default).
//! - [`stdin`]: NDJSON lines on standard input.
//! - [`checkpoints`]: the Event Hubs `CheckpointStore` (checkpoints and partition ownership), on a
//!   local folder beside the lake or on Azure Blob Storage.
//!
//! Every source hands out [`Partition`]s: a partition id and a stream of [`Event`]s numbered by a
//! sequence number that only grows. What happens to the events (bronze, silver, quarantine) is
//! `ingest::stream`'s job; sources never see the lake's tables.

pub mod checkpoints;
pub mod event_hubs;
pub mod file;
pub mod send;
pub mod source;
pub mod stdin;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

/// One event as the lake records it in `bronze/eventhubs/<hub>`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Event {
    pub partition_id: String,
    /// Grows by at least one per event within a partition; the exactly-once bookkeeping keys on it.
    pub sequence_number: i64,
    pub offset: Option<String>,
    /// Microseconds since the epoch: when the broker (or the reader, for files) took the event.
    pub enqueued_time: Option<i64>,
    pub partition_key: Option<String>,
    /// Application properties, as text.
    pub properties: BTreeMap<String, String>,
    /// `gzip` when the body is compressed (the `content-encoding` property).
    pub content_encoding: Option<String>,
    pub body: Vec<u8>,
}

/// Which stream the events belong to: the three parts of an Event Hubs checkpoint name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamId {
    /// The Event Hubs namespace host, or `file` / `stdin` for the local sources.
    pub namespace: String,
    pub hub: String,
    pub consumer_group: String,
}

impl StreamId {
    /// The Delta application id of one partition's commits: namespace/hub/consumer group/partition.
    pub fn app_id(&self, partition_id: &str) -> String {
        format!(
            "{}/{}/{}/{}",
            self.namespace, self.hub, self.consumer_group, partition_id
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("checkpoint store {location}: {source}")]
    Checkpoints {
        location: String,
        source: crate::BoxError,
    },
    #[error("{path} is not a vitalake checkpoint document: {source}")]
    CorruptCheckpoint {
        path: String,
        source: serde_json::Error,
    },
    #[error("Event Hubs, {doing}: {source}")]
    EventHubs {
        doing: String,
        source: crate::BoxError,
    },
    #[error("Event Hubs, {doing}: no answer within {secs} s")]
    NoAnswer { doing: String, secs: u64 },
    #[error(
        "set {connection_var} to the Event Hubs namespace's connection string, or {namespace_var} (<name>.servicebus.windows.net) to sign in with Microsoft Entra ID"
    )]
    NoCredentials {
        connection_var: String,
        namespace_var: String,
    },
    #[error("an event of {bytes} bytes is larger than the hub's message size limit")]
    EventTooLarge { bytes: usize },
    #[error("invalid stream source {0:?}; expected file:PATH, stdin or eventhubs:HUB")]
    BadSource(String),
    #[error("invalid alert sink {0:?}; expected stdout, file:PATH or eventhubs:HUB")]
    BadSink(String),
    #[error("decoding events failed")]
    Decode(#[source] tokio::task::JoinError),
}

impl StreamError {
    /// Whether the user can fix it (a source, sink, credential or event they gave): exit code 2.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            StreamError::BadSource(_)
                | StreamError::BadSink(_)
                | StreamError::NoCredentials { .. }
                | StreamError::EventTooLarge { .. }
        )
    }
}

/// One partition of a source: its events in sequence order.
pub struct Partition {
    pub id: String,
    pub events: BoxStream<'static, Result<Event, StreamError>>,
}

/// Bounds of a micro-batch: whichever is reached first closes it.
#[derive(Debug, Clone, Copy)]
pub struct BatchBounds {
    pub max_events: usize,
    pub max_wait: Duration,
}

impl Default for BatchBounds {
    fn default() -> Self {
        BatchBounds {
            max_events: 10_000,
            max_wait: Duration::from_secs(1),
        }
    }
}

/// What [`next_batch`] saw: events, or anything a reader made of them on the way.
#[derive(Debug)]
pub struct Batch<T = Event> {
    pub events: Vec<T>,
    /// The partition's stream has ended (a file read to its end without `--follow`).
    pub ended: bool,
}

/// Collects the next micro-batch: waits for a first event, then takes events until `max_events`
/// or until `max_wait` has passed since the first one. A read error ends the batch after the events
/// before it, which are returned first; the error comes on the next call. `stop` (SIGTERM, Ctrl-C)
/// closes the batch at once with what it has, marked as the end.
pub async fn next_batch<S, T>(
    events: &mut S,
    bounds: BatchBounds,
    pending_error: &mut Option<StreamError>,
    stop: &CancellationToken,
) -> Result<Batch<T>, StreamError>
where
    S: Stream<Item = Result<T, StreamError>> + Unpin,
{
    if let Some(error) = pending_error.take() {
        return Err(error);
    }
    let mut batch = Batch {
        events: Vec::new(),
        ended: false,
    };
    let first = tokio::select! {
        first = events.next() => first,
        () = stop.cancelled() => None,
    };
    match first {
        None => {
            batch.ended = true;
            return Ok(batch);
        }
        Some(Err(error)) => return Err(error),
        Some(Ok(event)) => batch.events.push(event),
    }
    let deadline = tokio::time::Instant::now() + bounds.max_wait;
    while batch.events.len() < bounds.max_events {
        let next = tokio::select! {
            next = tokio::time::timeout_at(deadline, events.next()) => next,
            () = stop.cancelled() => Ok(None),
        };
        match next {
            Err(_elapsed) => break,
            Ok(None) => {
                batch.ended = true;
                break;
            }
            Ok(Some(Ok(event))) => batch.events.push(event),
            Ok(Some(Err(error))) => {
                *pending_error = Some(error);
                break;
            }
        }
    }
    Ok(batch)
}

/// Which source `vitalake stream --source` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    File {
        path: String,
        follow: bool,
    },
    Stdin,
    EventHubs {
        hub: String,
        start: event_hubs::StartFrom,
    },
}

impl SourceSpec {
    /// `file:PATH`, `stdin` (or `-`), `eventhubs:HUB`; an Event Hubs source starts new partitions
    /// at the earliest event ([`SourceSpec::starting`] changes that).
    pub fn parse(text: &str, follow: bool) -> Result<Self, StreamError> {
        if text == "stdin" || text == "-" {
            return Ok(SourceSpec::Stdin);
        }
        if let Some(path) = text.strip_prefix("file:")
            && !path.is_empty()
        {
            return Ok(SourceSpec::File {
                path: path.to_string(),
                follow,
            });
        }
        if let Some(hub) = text.strip_prefix("eventhubs:")
            && !hub.is_empty()
        {
            return Ok(SourceSpec::EventHubs {
                hub: hub.to_string(),
                start: event_hubs::StartFrom::Earliest,
            });
        }
        Err(StreamError::BadSource(text.to_string()))
    }

    /// Where the partitions of an Event Hubs source that have no checkpoint start; `None` for a
    /// file or stdin, which are always read from their beginning.
    pub fn starting(self, start: event_hubs::StartFrom) -> Option<Self> {
        match self {
            SourceSpec::EventHubs { hub, .. } => Some(SourceSpec::EventHubs { hub, start }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: i64) -> Result<Event, StreamError> {
        Ok(Event {
            sequence_number: n,
            ..Event::default()
        })
    }

    #[tokio::test]
    async fn a_batch_closes_at_its_size_then_the_stream_end_shows() {
        let mut events = futures::stream::iter((1..=5).map(event));
        let bounds = BatchBounds {
            max_events: 3,
            max_wait: Duration::from_secs(60),
        };
        let mut pending = None;
        let first = next_batch(&mut events, bounds, &mut pending, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(first.events.len(), 3);
        assert!(!first.ended);
        let second = next_batch(&mut events, bounds, &mut pending, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(
            second
                .events
                .iter()
                .map(|e| e.sequence_number)
                .collect::<Vec<_>>(),
            [4, 5]
        );
        assert!(second.ended);
    }

    #[tokio::test]
    async fn a_batch_closes_when_its_time_is_up() {
        let slow = futures::stream::iter([event(1)]).chain(futures::stream::pending());
        let mut slow = Box::pin(slow);
        let bounds = BatchBounds {
            max_events: 100,
            max_wait: Duration::from_millis(50),
        };
        let batch = next_batch(&mut slow, bounds, &mut None, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(batch.events.len(), 1);
        assert!(!batch.ended);
    }

    #[tokio::test]
    async fn events_before_a_read_error_come_first() {
        let failing = futures::stream::iter([
            event(1),
            Err(StreamError::EventHubs {
                doing: "receiving".into(),
                source: "link detached".into(),
            }),
        ]);
        let mut failing = Box::pin(failing);
        let mut pending = None;
        let batch = next_batch(
            &mut failing,
            BatchBounds::default(),
            &mut pending,
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        assert_eq!(batch.events.len(), 1);
        let error = next_batch(
            &mut failing,
            BatchBounds::default(),
            &mut pending,
            &CancellationToken::new(),
        )
        .await;
        assert!(matches!(error, Err(StreamError::EventHubs { .. })));
    }

    #[test]
    fn sources_parse() {
        assert_eq!(
            SourceSpec::parse("file:a.ndjson", true).unwrap(),
            SourceSpec::File {
                path: "a.ndjson".into(),
                follow: true
            }
        );
        assert_eq!(SourceSpec::parse("-", false).unwrap(), SourceSpec::Stdin);
        assert_eq!(
            SourceSpec::parse("eventhubs:bp", false).unwrap(),
            SourceSpec::EventHubs {
                hub: "bp".into(),
                start: event_hubs::StartFrom::Earliest
            }
        );
        assert!(SourceSpec::parse("kafka:x", false).is_err());
    }
}
