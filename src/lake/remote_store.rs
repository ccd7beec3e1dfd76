//! The store of an Azure lake: object_store's Azure store, with the conditional puts that Delta
//! commits and the lake's lease are made of settled when their answer is lost.
//!
//! A conditional put (create if absent, or replace if unchanged) cut short by the network may have
//! taken effect or not, and object_store cannot tell:
//! - after a reset it returns the transport error: the run fails, though its commit may be in;
//! - after a closed connection it sends the put again, and when the first one took effect the
//!   second fails as a conflict. deltalake then writes the same commit again as the table's next
//!   version (its data files added twice in the log), and a lease renewal believes another run
//!   took the lake.
//!
//! Here such a put reads the object back: our bytes under a version other than the one we
//! replaced mean it took effect. Otherwise a put cut short is sent again (a few times) and a
//! conflict stays a conflict. Another writer's commit or lease record never equals ours byte for
//! byte: a commit names its data files by UUID, a lease record its holder's pid, host and start.
//! The stream's ownership blobs (`stream::checkpoints`) use the same puts: one names its owner,
//! and a renewal of the same bytes is told apart by its new version.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use deltalake::logstore::{ObjectStoreFactory, ObjectStoreRef, StorageConfig};
use deltalake::{DeltaResult, azure::AzureFactory};
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, Error, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
    RenameOptions, Result,
};
use url::Url;

/// How many times a conditional put cut short is sent in all.
const ATTEMPTS: u32 = 3;

/// Makes deltalake open every Azure table (and the lake's lease) with [`SettledPuts`].
pub(super) fn register() {
    let factory = Arc::new(SettledAzureFactory);
    for scheme in ["az", "adl", "azure", "abfs", "abfss"] {
        deltalake::logstore::object_store_factories().insert(
            Url::parse(&format!("{scheme}://")).expect("static URL"),
            factory.clone(),
        );
    }
}

/// `store` with its conditional puts settled as the module docs say. For the other users of
/// conditional puts on Azure: the stream's checkpoint and ownership blobs.
pub(crate) fn settle_conditional_puts(store: ObjectStoreRef) -> ObjectStoreRef {
    Arc::new(SettledPuts { inner: store })
}

struct SettledAzureFactory;

impl ObjectStoreFactory for SettledAzureFactory {
    fn parse_url_opts(
        &self,
        url: &Url,
        config: &StorageConfig,
    ) -> DeltaResult<(ObjectStoreRef, Path)> {
        let (store, path) = AzureFactory::default().parse_url_opts(url, config)?;
        Ok((settle_conditional_puts(store), path))
    }
}

/// A store whose conditional puts are settled as the module docs say.
#[derive(Debug)]
struct SettledPuts {
    inner: ObjectStoreRef,
}

impl SettledPuts {
    /// The put's result if `location` holds exactly `ours`, under another version than the one a
    /// put in `mode` replaces; `None` if not, or if it cannot be read.
    async fn landed(
        &self,
        location: &Path,
        ours: &PutPayload,
        mode: &PutMode,
    ) -> Option<PutResult> {
        let found = self.inner.get(location).await.ok()?;
        let meta = found.meta.clone();
        let replaced = matches!(mode, PutMode::Update(v) if meta.e_tag == v.e_tag);
        if replaced || meta.size != ours.content_length() as u64 {
            return None;
        }
        let bytes = found.bytes().await.ok()?;
        (bytes == Bytes::from(ours.clone())).then_some(PutResult {
            e_tag: meta.e_tag,
            version: meta.version,
        })
    }
}

impl fmt::Display for SettledPuts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SettledPuts({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for SettledPuts {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        if opts.mode == PutMode::Overwrite {
            // object_store sends a plain put again itself: it is the same whether done once or twice.
            return self.inner.put_opts(location, payload, opts).await;
        }
        let mut attempt = 1;
        loop {
            let error = match self
                .inner
                .put_opts(location, payload.clone(), opts.clone())
                .await
            {
                Ok(done) => return Ok(done),
                Err(error) => error,
            };
            // A transport error, or a server error object_store gave up on: no answer to trust.
            let cut_short = matches!(error, Error::Generic { .. });
            let conflict = matches!(
                error,
                Error::AlreadyExists { .. } | Error::Precondition { .. }
            );
            if !cut_short && !conflict {
                return Err(error);
            }
            if let Some(landed) = self.landed(location, &payload, &opts.mode).await {
                tracing::info!(path = %location, "a conditional put whose answer was lost had taken effect");
                return Ok(landed);
            }
            if conflict || attempt >= ATTEMPTS {
                return Err(error);
            }
            tracing::warn!(path = %location, attempt, error = %error, "a conditional put was cut short before it took effect; sending it again");
            tokio::time::sleep(Duration::from_millis(250) * 2u32.pow(attempt - 1)).await;
            attempt += 1;
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}
