//! Our implementation of the Event Hubs SDK's `CheckpointStore`: where each partition's checkpoint
//! (the last event landed in silver) and its owner (which `vitalake stream` reads it) are kept.
//!
//! The SDK's own Blob store crate cannot share a build with the current client, so this is ours,
//! with the same layout as the SDK's names: `<namespace>/<hub>/<consumer group>/checkpoint/<partition>`
//! and `.../ownership/<partition>`, each a small JSON document. Claiming a partition is a conditional
//! write against the ETag the claimer last saw, so of two instances racing for one partition exactly
//! one wins; the loser's claim is left out of the result, as the SDK expects.
//!
//! Two backends: [`local`] (a folder beside a local lake, made atomic with a file lock, since
//! `object_store`'s local store has no conditional update) and [`blob`] (Azure Blob Storage through
//! `object_store` conditional puts, `If-Match` / `If-None-Match: *`).

mod blob;
mod local;

use std::sync::Arc;

use azure_core::error::ErrorKind;
use azure_core::http::Etag;
use azure_core::time::OffsetDateTime;
use azure_messaging_eventhubs::CheckpointStore;
use azure_messaging_eventhubs::models::{Checkpoint, Ownership};
use serde::{Deserialize, Serialize};

use super::StreamError;

/// A stored document with its version tag and the time it was last written.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub name: String,
    pub body: Vec<u8>,
    pub etag: String,
    /// Microseconds since the epoch, by the store's clock.
    pub last_modified: i64,
}

/// The condition of a write.
#[derive(Debug, Clone)]
pub(crate) enum Expect {
    /// Always write.
    Any,
    /// Only if nothing is there yet.
    Absent,
    /// Only if the document still has this ETag.
    Etag(String),
}

/// A write's outcome: the new version, or the condition did not hold.
pub(crate) enum Written {
    Done { etag: String, last_modified: i64 },
    Conflict,
}

enum Backend {
    Local(local::LocalStore),
    Blob(blob::BlobStore),
}

/// The checkpoint and ownership store of `vitalake stream`.
pub struct Checkpoints {
    backend: Backend,
    location: String,
}

#[derive(Serialize, Deserialize)]
struct CheckpointDoc {
    offset: Option<String>,
    sequence_number: Option<i64>,
}

#[derive(Serialize, Deserialize)]
struct OwnershipDoc {
    owner_id: Option<String>,
}

impl Checkpoints {
    /// The store at `location`: a local folder, or an Azure Blob URL (`az://container/prefix`,
    /// `abfss://container@account.dfs.core.windows.net/prefix`) with credentials from the environment.
    pub fn open(location: &str) -> Result<Arc<Checkpoints>, StreamError> {
        let backend = if location.contains("://") {
            Backend::Blob(blob::BlobStore::open(location)?)
        } else {
            Backend::Local(local::LocalStore::open(location)?)
        };
        Ok(Arc::new(Checkpoints {
            backend,
            location: location.to_string(),
        }))
    }

    /// The store beside a lake: `<lake>/_checkpoints`.
    pub fn beside_lake(lake_root: &url::Url) -> Result<Arc<Checkpoints>, StreamError> {
        if lake_root.scheme() == "file" {
            let path = lake_root
                .to_file_path()
                .map_err(|()| StreamError::Checkpoints {
                    location: lake_root.to_string(),
                    source: "not a local path".into(),
                })?;
            return Checkpoints::open(&path.join("_checkpoints").display().to_string());
        }
        let root = lake_root.as_str().trim_end_matches('/');
        Checkpoints::open(&format!("{root}/_checkpoints"))
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Stored>, StreamError> {
        match &self.backend {
            Backend::Local(store) => store.list(prefix),
            Backend::Blob(store) => store.list(prefix).await,
        }
    }

    async fn write(
        &self,
        name: &str,
        body: Vec<u8>,
        expect: Expect,
    ) -> Result<Written, StreamError> {
        match &self.backend {
            Backend::Local(store) => store.write(name, body, expect),
            Backend::Blob(store) => store.write(name, body, expect).await,
        }
    }

    /// The checkpoint of one partition, if any: what `vitalake stream` landed in silver last.
    pub async fn checkpoint(
        &self,
        namespace: &str,
        hub: &str,
        consumer_group: &str,
        partition_id: &str,
    ) -> Result<Option<Checkpoint>, StreamError> {
        let checkpoints = self
            .list_checkpoints(namespace, hub, consumer_group)
            .await
            .map_err(|e| self.error(e))?;
        Ok(checkpoints
            .into_iter()
            .find(|c| c.partition_id == partition_id))
    }

    fn error(&self, error: azure_core::Error) -> StreamError {
        StreamError::Checkpoints {
            location: self.location.clone(),
            source: error.into(),
        }
    }
}

fn azure_error(error: StreamError) -> azure_core::Error {
    azure_core::Error::with_message(ErrorKind::Io, error.to_string())
}

fn corrupt(name: &str, error: serde_json::Error) -> azure_core::Error {
    azure_core::Error::with_message(
        ErrorKind::DataConversion,
        format!("checkpoint store document {name} is not what vitalake wrote: {error}"),
    )
}

fn to_time(micros: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(micros as i128 * 1000).ok()
}

/// The last part of a document name: the partition id (which may itself contain `/`).
fn partition_of<'n>(name: &'n str, prefix: &str) -> &'n str {
    name.strip_prefix(prefix).unwrap_or(name)
}

#[async_trait::async_trait]
impl CheckpointStore for Checkpoints {
    async fn claim_ownership(
        &self,
        ownerships: &[Ownership],
    ) -> azure_core::Result<Vec<Ownership>> {
        let mut claimed = Vec::new();
        for ownership in ownerships {
            let name = Ownership::get_ownership_name(
                &ownership.fully_qualified_namespace,
                &ownership.event_hub_name,
                &ownership.consumer_group,
                &ownership.partition_id,
            )?;
            let body = serde_json::to_vec(&OwnershipDoc {
                owner_id: ownership.owner_id.clone(),
            })
            .expect("ownership serializes");
            let expect = match &ownership.etag {
                Some(etag) => Expect::Etag(etag.to_string()),
                None => Expect::Absent,
            };
            match self.write(&name, body, expect).await.map_err(azure_error)? {
                Written::Done {
                    etag,
                    last_modified,
                } => {
                    let mut won = ownership.clone();
                    won.etag = Some(Etag::from(etag));
                    won.last_modified_time = to_time(last_modified);
                    claimed.push(won);
                }
                Written::Conflict => tracing::debug!(
                    partition_id = ownership.partition_id.as_str(),
                    "ownership claim lost to another instance"
                ),
            }
        }
        Ok(claimed)
    }

    async fn list_checkpoints(
        &self,
        namespace: &str,
        event_hub_name: &str,
        consumer_group: &str,
    ) -> azure_core::Result<Vec<Checkpoint>> {
        let prefix =
            Checkpoint::get_checkpoint_blob_prefix_name(namespace, event_hub_name, consumer_group)?;
        let mut checkpoints = Vec::new();
        for stored in self.list(&prefix).await.map_err(azure_error)? {
            let doc: CheckpointDoc =
                serde_json::from_slice(&stored.body).map_err(|e| corrupt(&stored.name, e))?;
            checkpoints.push(Checkpoint {
                fully_qualified_namespace: namespace.to_string(),
                event_hub_name: event_hub_name.to_string(),
                consumer_group: consumer_group.to_string(),
                partition_id: partition_of(&stored.name, &prefix).to_string(),
                offset: doc.offset,
                sequence_number: doc.sequence_number,
            });
        }
        checkpoints.sort_by(|a, b| a.partition_id.cmp(&b.partition_id));
        Ok(checkpoints)
    }

    async fn list_ownerships(
        &self,
        namespace: &str,
        event_hub_name: &str,
        consumer_group: &str,
    ) -> azure_core::Result<Vec<Ownership>> {
        let prefix =
            Ownership::get_ownership_prefix_name(namespace, event_hub_name, consumer_group)?;
        let mut ownerships = Vec::new();
        for stored in self.list(&prefix).await.map_err(azure_error)? {
            let doc: OwnershipDoc =
                serde_json::from_slice(&stored.body).map_err(|e| corrupt(&stored.name, e))?;
            ownerships.push(Ownership {
                fully_qualified_namespace: namespace.to_string(),
                event_hub_name: event_hub_name.to_string(),
                consumer_group: consumer_group.to_string(),
                partition_id: partition_of(&stored.name, &prefix).to_string(),
                owner_id: doc.owner_id,
                etag: Some(Etag::from(stored.etag)),
                last_modified_time: to_time(stored.last_modified),
            });
        }
        ownerships.sort_by(|a, b| a.partition_id.cmp(&b.partition_id));
        Ok(ownerships)
    }

    async fn update_checkpoint(&self, checkpoint: Checkpoint) -> azure_core::Result<()> {
        let name = Checkpoint::get_checkpoint_blob_name(
            &checkpoint.fully_qualified_namespace,
            &checkpoint.event_hub_name,
            &checkpoint.consumer_group,
            &checkpoint.partition_id,
        )?;
        let body = serde_json::to_vec(&CheckpointDoc {
            offset: checkpoint.offset,
            sequence_number: checkpoint.sequence_number,
        })
        .expect("checkpoint serializes");
        self.write(&name, body, Expect::Any)
            .await
            .map_err(azure_error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ownership(partition: &str, owner: &str, etag: Option<Etag>) -> Ownership {
        Ownership {
            fully_qualified_namespace: "ns.servicebus.windows.net".into(),
            event_hub_name: "bp".into(),
            consumer_group: "$Default".into(),
            partition_id: partition.into(),
            owner_id: Some(owner.into()),
            etag,
            last_modified_time: None,
        }
    }

    /// The store's contract, shared by both backends (the Blob one runs it on Azurite in tests/it).
    pub async fn store_contract(store: &Checkpoints) {
        // A first claim needs the partition to be unowned; a second blind claim loses.
        let first = store
            .claim_ownership(&[ownership("0", "a", None), ownership("1", "a", None)])
            .await
            .unwrap();
        assert_eq!(first.len(), 2);
        let lost = store
            .claim_ownership(&[ownership("0", "b", None)])
            .await
            .unwrap();
        assert!(
            lost.is_empty(),
            "a claim on an owned partition without its ETag must fail"
        );
        // Two instances racing with the same ETag: exactly one wins.
        let seen = first[0].etag.clone();
        let (claim_b, claim_c) = (
            [ownership("0", "b", seen.clone())],
            [ownership("0", "c", seen)],
        );
        let b = store.claim_ownership(&claim_b);
        let c = store.claim_ownership(&claim_c);
        let (b, c) = tokio::join!(b, c);
        assert_eq!(
            b.unwrap().len() + c.unwrap().len(),
            1,
            "exactly one racer wins"
        );
        let owners = store
            .list_ownerships("ns.servicebus.windows.net", "bp", "$Default")
            .await
            .unwrap();
        assert_eq!(owners.len(), 2);
        assert!(matches!(owners[0].owner_id.as_deref(), Some("b" | "c")));
        assert_eq!(owners[1].owner_id.as_deref(), Some("a"));
        assert!(owners[0].last_modified_time.is_some());

        let checkpoint = |partition: &str, seq| Checkpoint {
            fully_qualified_namespace: "ns.servicebus.windows.net".into(),
            event_hub_name: "bp".into(),
            consumer_group: "$Default".into(),
            partition_id: partition.into(),
            offset: Some(format!("{}", seq * 100)),
            sequence_number: Some(seq),
        };
        store.update_checkpoint(checkpoint("1", 7)).await.unwrap();
        store.update_checkpoint(checkpoint("1", 9)).await.unwrap();
        store
            .update_checkpoint(checkpoint("/a/b.ndjson", 3))
            .await
            .unwrap();
        let found = store
            .checkpoint("ns.servicebus.windows.net", "bp", "$Default", "1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.sequence_number, Some(9));
        assert_eq!(found.offset.as_deref(), Some("900"));
        let path = store
            .checkpoint("ns.servicebus.windows.net", "bp", "$Default", "/a/b.ndjson")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(path.sequence_number, Some(3));
        assert!(
            store
                .checkpoint("ns.servicebus.windows.net", "other", "$Default", "1")
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn local_store_keeps_checkpoints_and_lets_one_racer_win() {
        let dir = tempfile::tempdir().unwrap();
        let store = Checkpoints::open(dir.path().to_str().unwrap()).unwrap();
        store_contract(&store).await;
    }
}
