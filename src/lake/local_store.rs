//! The store of a local lake: object_store's `LocalFileSystem`, with its file system calls run on a
//! few threads of its own instead of tokio's blocking pool.
//!
//! Why: deltalake runs every Delta kernel call (`get_latest_version`, log replay, checkpoints) on
//! tokio's blocking pool, and inside it the kernel waits for local-store reads and listings that
//! `LocalFileSystem` sends to the same pool. Each waiting kernel call needs a second thread, so
//! with a dozen tables committing at once the pool grew to 100-130 threads, each keeping its own
//! allocator heap: the largest part of a 1 GB ingest's peak memory (BENCHMARKS.md, issue 25).
//! Capping tokio's pool instead deadlocks (the kernel calls take every thread). A file system
//! call here never waits for another task, so a small fixed pool cannot deadlock.
//!
//! `LocalFileSystem` does its IO on the calling thread when there is no tokio runtime around,
//! which is the case on these threads: each call runs there to completion, reads included (a
//! read's bytes come back whole rather than as a file handle to be read later on tokio's pool).

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use deltalake::logstore::{ObjectStoreFactory, ObjectStoreRef, StorageConfig};
use deltalake::{DeltaResult, DeltaTableError};
use futures::executor::block_on;
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, ObjectStoreExt, ObjectStoreScheme, PutMultipartOptions, PutOptions, PutPayload,
    PutResult, RenameOptions, Result,
};
use url::Url;

/// Threads for the lake's file system calls. They copy from the page cache or wait on the disk,
/// so a few more than the cores keep reads flowing without growing with the load.
fn io_threads() -> usize {
    std::thread::available_parallelism().map_or(4, |n| n.get() + 2)
}

/// Makes deltalake open every `file://` table with [`PooledLocalStore`].
pub(super) fn register() {
    deltalake::logstore::object_store_factories().insert(
        Url::parse("file://").expect("static URL"),
        Arc::new(PooledLocalFactory),
    );
}

struct PooledLocalFactory;

impl ObjectStoreFactory for PooledLocalFactory {
    fn parse_url_opts(
        &self,
        url: &Url,
        _config: &StorageConfig,
    ) -> DeltaResult<(ObjectStoreRef, Path)> {
        let (scheme, path) = ObjectStoreScheme::parse(url)
            .map_err(|e| DeltaTableError::InvalidTableLocation(format!("{url}: {e}")))?;
        if scheme != ObjectStoreScheme::Local {
            return Err(DeltaTableError::InvalidTableLocation(url.to_string()));
        }
        Ok((Arc::new(PooledLocalStore::new()), path))
    }
}

/// `LocalFileSystem` with its calls run on [`io_pool`]. Cheap to clone.
#[derive(Clone)]
struct PooledLocalStore {
    inner: Arc<LocalFileSystem>,
}

impl PooledLocalStore {
    fn new() -> PooledLocalStore {
        PooledLocalStore {
            inner: Arc::new(LocalFileSystem::new()),
        }
    }

    /// Runs `call` on the IO pool and hands back its result; `call` drives a `LocalFileSystem`
    /// future there with [`block_on`], which does the IO on that thread.
    async fn run<T, F>(&self, call: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&LocalFileSystem) -> Result<T> + Send + 'static,
    {
        let (done, result) = tokio::sync::oneshot::channel();
        let inner = self.inner.clone();
        io_pool().spawn(move || {
            let _ = done.send(call(&inner));
        });
        result.await.unwrap_or_else(|_| {
            Err(object_store::Error::Generic {
                store: "LocalFileSystem",
                source: "a file system call panicked".into(),
            })
        })
    }

    /// A listing, gathered whole on the IO pool and then handed out: a Delta log or a table's
    /// folder, thousands of entries at most.
    fn listing(
        &self,
        call: impl FnOnce(&LocalFileSystem) -> Result<Vec<ObjectMeta>> + Send + 'static,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let this = self.clone();
        stream::once(async move { this.run(call).await })
            .map_ok(|all| stream::iter(all.into_iter().map(Ok)))
            .try_flatten()
            .boxed()
    }
}

fn io_pool() -> &'static rayon::ThreadPool {
    static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(io_threads())
            .thread_name(|i| format!("lake-io-{i}"))
            // A panicking call drops its sender: the caller gets an error, the pool lives on.
            .panic_handler(|_| {})
            .build()
            .expect("lake IO threads")
    })
}

impl fmt::Debug for PooledLocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PooledLocalStore({:?})", self.inner)
    }
}

impl fmt::Display for PooledLocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PooledLocalStore({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for PooledLocalStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let location = location.clone();
        self.run(move |store| block_on(store.put_opts(&location, payload, opts)))
            .await
    }

    /// Multipart uploads (large Parquet files) stay with `LocalFileSystem`: their parts are
    /// written from the writer's task, never from inside a kernel call.
    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let location = location.clone();
        self.run(move |store| {
            block_on(async {
                let head = options.head;
                let result = store.get_opts(&location, options).await?;
                let (meta, range, attributes) = (
                    result.meta.clone(),
                    result.range.clone(),
                    result.attributes.clone(),
                );
                let bytes = if head {
                    Bytes::new()
                } else {
                    result.bytes().await?
                };
                Ok((meta, range, attributes, bytes))
            })
        })
        .await
        .map(|(meta, range, attributes, bytes)| GetResult {
            payload: GetResultPayload::Stream(stream::once(async { Ok(bytes) }).boxed()),
            meta,
            range,
            attributes,
        })
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let location = location.clone();
        let ranges = ranges.to_vec();
        self.run(move |store| block_on(store.get_ranges(&location, &ranges)))
            .await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let this = self.clone();
        locations
            .map(move |location| {
                let this = this.clone();
                async move {
                    let location = location?;
                    this.run(move |store| block_on(store.delete(&location)).map(|()| location))
                        .await
                }
            })
            .buffered(io_threads())
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let prefix = prefix.cloned();
        self.listing(move |store| block_on(store.list(prefix.as_ref()).try_collect()))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let (prefix, offset) = (prefix.cloned(), offset.clone());
        self.listing(move |store| {
            block_on(
                store
                    .list_with_offset(prefix.as_ref(), &offset)
                    .try_collect(),
            )
        })
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let prefix = prefix.cloned();
        self.run(move |store| block_on(store.list_with_delimiter(prefix.as_ref())))
            .await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        let (from, to) = (from.clone(), to.clone());
        self.run(move |store| block_on(store.copy_opts(&from, &to, options)))
            .await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        let (from, to) = (from.clone(), to.clone());
        self.run(move |store| block_on(store.rename_opts(&from, &to, options)))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lake::{AppendBuilder, Lake};
    use deltalake::arrow::array::{ArrayRef, Int64Array, RecordBatch};

    /// The store deltalake gets for a table in `dir`, and the table's path in it.
    fn store_in(dir: &tempfile::TempDir) -> (ObjectStoreRef, Path) {
        let url = Url::from_directory_path(dir.path()).unwrap();
        PooledLocalFactory
            .parse_url_opts(&url, &StorageConfig::default())
            .unwrap()
    }

    /// What Delta's log needs from the store: whole and ranged reads, heads that read nothing,
    /// listings, deletes, and a rename that refuses to replace (a commit's atomicity).
    #[tokio::test]
    async fn reads_lists_and_refuses_to_overwrite_a_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (store, root) = store_in(&dir);
        let commit = root
            .clone()
            .join("_delta_log")
            .join("00000000000000000000.json");
        let staged = root.clone().join("_delta_log").join("_commit_staged.json");
        store.put(&commit, "first commit".into()).await.unwrap();
        store.put(&staged, "rival commit".into()).await.unwrap();

        let read = store.get(&commit).await.unwrap().bytes().await.unwrap();
        assert_eq!(&read[..], b"first commit");
        assert_eq!(
            &store.get_range(&commit, 6..12).await.unwrap()[..],
            b"commit"
        );
        assert_eq!(store.head(&commit).await.unwrap().size, 12);

        let listed: Vec<ObjectMeta> = store.list(Some(&root)).try_collect().await.unwrap();
        assert_eq!(listed.len(), 2);
        let folders = store.list_with_delimiter(Some(&root)).await.unwrap();
        assert_eq!(
            folders.common_prefixes,
            vec![root.clone().join("_delta_log")]
        );

        let refused = store
            .rename_if_not_exists(&staged, &commit)
            .await
            .unwrap_err();
        assert!(
            matches!(refused, object_store::Error::AlreadyExists { .. }),
            "{refused:?}"
        );
        assert_eq!(
            &store.get(&commit).await.unwrap().bytes().await.unwrap()[..],
            b"first commit"
        );

        store.delete(&staged).await.unwrap();
        let missing = store.head(&staged).await.unwrap_err();
        assert!(
            matches!(missing, object_store::Error::NotFound { .. }),
            "{missing:?}"
        );
    }

    /// The reason for the pool: Delta kernel calls wait on tokio's blocking threads for the
    /// store's file system calls. With those calls on tokio's pool too, a dozen tables committing
    /// at once on a pool of two blocking threads never finished; with ours they do.
    #[test]
    fn many_tables_commit_at_once_on_two_blocking_threads() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        let commits = async {
            let tables = (0..12).map(|t| {
                let lake = lake.clone();
                async move {
                    let name = format!("t{t}");
                    for version in 0..3 {
                        let table = lake.table(&name).await.unwrap();
                        let rows = RecordBatch::try_from_iter([(
                            "version",
                            Arc::new(Int64Array::from(vec![version])) as ArrayRef,
                        )])
                        .unwrap();
                        AppendBuilder::new(table, &name, vec![rows])
                            .execute()
                            .await
                            .unwrap();
                    }
                    lake.existing_table(&name).await.unwrap().unwrap().version()
                }
            });
            futures::future::join_all(tables).await
        };
        // Only a hang fails here; two minutes is far beyond what these 36 commits take.
        let versions = runtime
            .block_on(async {
                tokio::time::timeout(std::time::Duration::from_secs(120), commits).await
            })
            .expect("the commits finished");
        assert_eq!(versions, vec![Some(2); 12]);
    }
}
