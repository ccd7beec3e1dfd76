//! The sources `vitalake stream` reads, behind one trait, as `vector`'s sources are: the runner
//! never asks which one it has, and adding a source touches no other.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::checkpoints::Checkpoints;
use super::event_hubs::{self, EventHubsOptions, EventHubsSource, Recoveries};
use super::{Partition, SourceSpec, StreamError, StreamId, file, stdin};

#[async_trait::async_trait]
pub trait Source: Send {
    /// Namespace, hub and consumer group: whose checkpoints and bronze rows these events are.
    fn id(&self) -> &StreamId;

    /// Whether this process must be the stream's only reader: a file or stdin, whose events this
    /// reader numbers (two readers would number them twice). The runner holds a lease on the lake
    /// while it reads one. Event Hubs partitions are shared through the checkpoint store instead.
    fn exclusive(&self) -> bool {
        false
    }

    /// The partition whose numbering goes on from what the lake holds (stdin, which cannot be
    /// read again): the runner finishes what a crash left of it and passes the last sequence
    /// number bronze has to [`Source::partitions`].
    fn resumes(&self) -> Option<&str> {
        None
    }

    /// Starts reading: partitions arrive as they are handed to this process.
    fn partitions(
        &mut self,
        resumed: Option<i64>,
    ) -> Result<mpsc::Receiver<Partition>, StreamError>;

    /// Stops reading (an Event Hubs processor gives its partitions up).
    async fn shutdown(self: Box<Self>) {}
}

/// Opens the source `spec` names. A file or stdin lands as the hub `hub`; an Event Hubs source
/// joins `consumer_group` with `checkpoints` as its checkpoint and ownership store.
pub async fn open(
    spec: SourceSpec,
    hub: &str,
    consumer_group: &str,
    checkpoints: Arc<Checkpoints>,
    stop: CancellationToken,
    recoveries: Arc<Recoveries>,
) -> Result<Box<dyn Source>, StreamError> {
    Ok(match spec {
        SourceSpec::File { path, follow } => Box::new(File {
            id: file::stream_id(hub),
            path,
            follow,
        }),
        SourceSpec::Stdin => Box::new(Stdin {
            id: stdin::stream_id(hub),
        }),
        SourceSpec::EventHubs { hub, start } => {
            let options = EventHubsOptions {
                start,
                ..EventHubsOptions::from_env(&hub, consumer_group)?
            };
            Box::new(event_hubs::open(&options, checkpoints, stop, recoveries).await?)
        }
    })
}

/// One partition on a channel that ends after it.
fn only(partition: Partition) -> mpsc::Receiver<Partition> {
    let (tx, rx) = mpsc::channel(1);
    tx.try_send(partition).expect("room for one");
    rx
}

/// An NDJSON file, read once or followed; a line's number is its sequence number.
struct File {
    id: StreamId,
    path: String,
    follow: bool,
}

#[async_trait::async_trait]
impl Source for File {
    fn id(&self) -> &StreamId {
        &self.id
    }

    fn exclusive(&self) -> bool {
        true
    }

    fn partitions(&mut self, _: Option<i64>) -> Result<mpsc::Receiver<Partition>, StreamError> {
        Ok(only(file::open(&self.path, self.follow)?))
    }
}

/// Standard input, numbered on from what the lake holds.
struct Stdin {
    id: StreamId,
}

#[async_trait::async_trait]
impl Source for Stdin {
    fn id(&self) -> &StreamId {
        &self.id
    }

    fn exclusive(&self) -> bool {
        true
    }

    fn resumes(&self) -> Option<&str> {
        Some(stdin::PARTITION)
    }

    fn partitions(
        &mut self,
        resumed: Option<i64>,
    ) -> Result<mpsc::Receiver<Partition>, StreamError> {
        Ok(only(stdin::open(resumed.unwrap_or(0))))
    }
}

#[async_trait::async_trait]
impl Source for EventHubsSource {
    fn id(&self) -> &StreamId {
        &self.stream
    }

    fn partitions(&mut self, _: Option<i64>) -> Result<mpsc::Receiver<Partition>, StreamError> {
        Ok(self.take_partitions())
    }

    async fn shutdown(self: Box<Self>) {
        EventHubsSource::shutdown(*self).await
    }
}
