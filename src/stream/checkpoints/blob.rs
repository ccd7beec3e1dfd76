//! The checkpoint store on Azure Blob Storage, through `object_store`: a claim is a put with
//! `If-Match: <etag>` (or `If-None-Match: *` for a partition nobody has owned), so the storage
//! service itself decides which of two racing instances wins. A claim cut short by the network is
//! settled by reading it back (`lake::remote_store`).

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use percent_encoding::percent_decode_str;

use super::{Expect, Stored, Written};
use crate::stream::StreamError;

pub(super) struct BlobStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    location: String,
}

impl BlobStore {
    /// `az://container/prefix` or `abfss://container@account.dfs.core.windows.net/prefix`;
    /// credentials and the emulator settings come from the environment (`AZURE_STORAGE_*`).
    pub fn open(location: &str) -> Result<Self, StreamError> {
        let url = url::Url::parse(location).map_err(|e| error(location, e))?;
        let store = MicrosoftAzureBuilder::from_env()
            .with_url(location)
            .build()
            .map_err(|e| error(location, e))?;
        Ok(BlobStore {
            // A claim whose answer the network loses is read back, not taken for a lost race.
            store: crate::lake::settle_conditional_puts(Arc::new(store)),
            prefix: Path::from(url.path().trim_matches('/')),
            location: location.to_string(),
        })
    }

    fn path(&self, name: &str) -> Path {
        // `<namespace>/<hub>/<consumer group>/<kind>/<partition>`: the partition id is one segment
        // even when it holds `/` (a file source's path), which `child` percent-encodes.
        let mut path = self.prefix.clone();
        for part in name.splitn(5, '/') {
            path = path.join(part);
        }
        path
    }

    fn name_of(&self, path: &Path) -> String {
        let parts: Vec<String> = path
            .prefix_match(&self.prefix)
            .map(|parts| parts.map(|p| p.as_ref().to_string()).collect())
            .unwrap_or_default();
        parts
            .iter()
            .map(|p| percent_decode_str(p).decode_utf8_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/")
    }

    pub async fn list(&self, prefix: &str) -> Result<Vec<Stored>, StreamError> {
        let folder = self.path(prefix.trim_end_matches('/'));
        let metas: Vec<_> = self
            .store
            .list(Some(&folder))
            .try_collect()
            .await
            .map_err(|e| error(&self.location, e))?;
        let mut found = Vec::new();
        for meta in metas {
            let got = match self.store.get(&meta.location).await {
                Ok(got) => got,
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(error(&self.location, e)),
            };
            let (etag, last_modified) = (
                got.meta.e_tag.clone().unwrap_or_default(),
                got.meta.last_modified.timestamp_micros(),
            );
            let body = got.bytes().await.map_err(|e| error(&self.location, e))?;
            found.push(Stored {
                name: self.name_of(&meta.location),
                body: body.to_vec(),
                etag,
                last_modified,
            });
        }
        Ok(found)
    }

    pub async fn write(
        &self,
        name: &str,
        body: Vec<u8>,
        expect: Expect,
    ) -> Result<Written, StreamError> {
        let mode = match expect {
            Expect::Any => PutMode::Overwrite,
            Expect::Absent => PutMode::Create,
            Expect::Etag(etag) => PutMode::Update(UpdateVersion {
                e_tag: Some(etag),
                version: None,
            }),
        };
        let options = PutOptions {
            mode,
            ..PutOptions::default()
        };
        let path = self.path(name);
        match self
            .store
            .put_opts(&path, PutPayload::from(body), options)
            .await
        {
            Ok(result) => {
                // The Last-Modified of the new version, by the service's clock.
                let head = self
                    .store
                    .head(&path)
                    .await
                    .map_err(|e| error(&self.location, e))?;
                Ok(Written::Done {
                    etag: result.e_tag.or(head.e_tag).unwrap_or_default(),
                    last_modified: head.last_modified.timestamp_micros(),
                })
            }
            Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::AlreadyExists { .. }) => Ok(Written::Conflict),
            Err(e) => Err(error(&self.location, e)),
        }
    }
}

fn error(location: &str, source: impl Into<crate::BoxError>) -> StreamError {
    StreamError::Checkpoints {
        location: location.to_string(),
        source: source.into(),
    }
}
