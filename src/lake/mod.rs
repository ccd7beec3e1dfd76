//! The lake: Delta tables under one root, a local folder or `abfss://` on ADLS Gen2.
//!
//! This module knows table paths and Delta operations, nothing about FHIR. Ingest code reaches Delta
//! only through the builders here: [`append`] (append with commit metadata) and [`delete`]. Reads
//! for bookkeeping go through [`read`]. Table paths are relative to the root, e.g.
//! `bronze/fhir/Patient` (see the storage layout in DESIGN.md).

pub mod append;
pub mod changes;
pub mod delete;
pub mod layout;
pub mod lease;
mod local_store;
pub mod maintain;
pub mod merge;
pub mod read;
mod remote_store;
pub mod stream_append;

use std::path::PathBuf;
use std::sync::{Arc, Once};

use deltalake::datafusion::prelude::Expr;
use deltalake::datafusion::scalar::ScalarValue;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError, ObjectStore};
use futures::TryStreamExt;
use url::Url;

pub use append::{AppendBuilder, AppendMetrics};
pub use lease::{Lease, LeaseError};
pub use merge::{MergeByKey, MergeMetrics};
pub(crate) use remote_store::settle_conditional_puts;
pub use stream_append::StreamingAppend;

/// The column type of every point in time the lake writes: microseconds, UTC (what Spark and
/// Databricks read as `TIMESTAMP`).
pub fn utc_timestamp() -> deltalake::arrow::datatypes::DataType {
    use deltalake::arrow::datatypes::{DataType, TimeUnit};
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    #[error(
        "invalid lake root {root:?}: {source}; use a local folder or abfss://<container>@<account>.dfs.core.windows.net/<path>"
    )]
    Root {
        root: String,
        source: crate::BoxError,
    },
    #[error("Delta table {table}: {source}")]
    Delta {
        table: String,
        source: DeltaTableError,
    },
    #[error("Delta table {table}: {source}")]
    Query {
        table: String,
        source: deltalake::datafusion::error::DataFusionError,
    },
    #[error("Delta table {table}: {source}")]
    Schema {
        table: String,
        source: deltalake::arrow::error::ArrowError,
    },
    #[error("listing {prefix} in the lake: {source}")]
    List {
        prefix: String,
        source: deltalake::ObjectStoreError,
    },
}

impl LakeError {
    /// Whether another writer committed the same application transaction (Delta `txn`) first:
    /// the commit lost a race for work someone else has done, and the caller reads again.
    pub fn is_concurrent_transaction(&self) -> bool {
        use deltalake::kernel::transaction::{CommitConflictError, TransactionError};
        matches!(
            self,
            LakeError::Delta {
                source: DeltaTableError::Transaction {
                    source: TransactionError::CommitConflict(
                        CommitConflictError::ConcurrentTransaction
                    )
                },
                ..
            }
        )
    }
}

/// The version of application transaction `app_id` last committed to `table` (Delta `txn`), if any.
/// Delta records it but does not enforce it: a writer skips work at or below it itself.
pub async fn app_version(
    table: &DeltaTable,
    name: &str,
    app_id: &str,
) -> Result<Option<i64>, LakeError> {
    let err = |source| LakeError::Delta {
        table: name.to_string(),
        source,
    };
    let state = table.snapshot().map_err(err)?;
    state
        .transaction_version(table.log_store().as_ref(), app_id)
        .await
        .map_err(err)
}

/// `expr IN (values)` for a predicate on a Delta table (a read's `WHERE`, a replacing write), the
/// values already SQL literals.
///
/// The list starts with a `NULL`. deltalake 1.1 turns an `IN` list of plain literals into a chain
/// of `OR`s and walks it recursively, one stack frame per value, to test every file's statistics:
/// a few thousand keys overflowed the stack (a stream landing aborted on it), and the test cost
/// more than the write. A list holding a `NULL` it leaves alone, and DataFusion filters the rows.
/// `x IN (NULL, 'a')` is true for `'a'` and NULL, never false, for anything else, which a filter
/// and Delta's replace and delete (they keep the rows where it `IS NOT TRUE`) treat as no match:
/// the selection is unchanged. The keys listed (resource keys, gold keys) are spread over every
/// file, so the statistics skipped no file anyway.
pub fn in_list(expr: &str, values: impl IntoIterator<Item = String>) -> String {
    let mut list = String::from("NULL");
    for value in values {
        list.push_str(", ");
        list.push_str(&value);
    }
    format!("{expr} IN ({list})")
}

/// [`in_list`] built as a DataFusion expression: `column IN (NULL, keys...)` with no SQL to parse.
/// For the predicates made on every chunk that names known keys: the SQL parser was the largest
/// piece of machine code a 1 GB ingest kept resident (BENCHMARKS.md, issue 25).
pub fn keys_in<'k>(column: &str, keys: impl IntoIterator<Item = &'k str>) -> Expr {
    use deltalake::datafusion::prelude::{ident, lit};
    let list = std::iter::once(lit(ScalarValue::Utf8(None)))
        .chain(keys.into_iter().map(lit))
        .collect();
    ident(column).in_list(list, false)
}

/// A predicate over a table: DataFusion SQL, or an expression built in code.
#[derive(Debug)]
pub enum Predicate {
    Sql(String),
    Expr(Expr),
}

impl From<String> for Predicate {
    fn from(sql: String) -> Self {
        Predicate::Sql(sql)
    }
}

impl From<Expr> for Predicate {
    fn from(expr: Expr) -> Self {
        Predicate::Expr(expr)
    }
}

/// The Arrow schema of a loaded table.
pub fn arrow_schema(
    table: &DeltaTable,
    name: &str,
) -> Result<deltalake::arrow::datatypes::SchemaRef, LakeError> {
    let state = table.snapshot().map_err(|source| LakeError::Delta {
        table: name.to_string(),
        source,
    })?;
    Ok(state.snapshot().arrow_schema())
}

/// A lake root. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Lake {
    root: Url,
    lease_ttl: std::time::Duration,
}

impl Lake {
    /// Opens the lake at `root`: a local folder (created if missing) or an Azure URL
    /// (`abfss://`, `az://`). Azure credentials come from the environment.
    pub fn open(root: &str) -> Result<Lake, LakeError> {
        register_store_handlers();
        let bad = |source: crate::BoxError| LakeError::Root {
            root: root.to_string(),
            source,
        };
        let url = if root.contains("://") {
            Url::parse(root).map_err(|e| bad(e.into()))?
        } else {
            std::fs::create_dir_all(root).map_err(|e| bad(e.into()))?;
            let path = std::fs::canonicalize(root).map_err(|e| bad(e.into()))?;
            Url::from_directory_path(&path).map_err(|_| bad("not an absolute path".into()))?
        };
        let url = if url.path().ends_with('/') {
            url
        } else {
            Url::parse(&format!("{url}/")).unwrap()
        };
        Ok(Lake {
            root: url,
            lease_ttl: lease::DEFAULT_LEASE_TTL,
        })
    }

    /// Opens the lake `[lake]` in `vitalake.toml` names, with its lease time.
    pub fn from_config(config: &crate::config::LakeConfig) -> Result<Lake, LakeError> {
        Ok(Lake::open(&config.root)?
            .with_lease_ttl(std::time::Duration::from_secs(config.lease_seconds as u64)))
    }

    /// How long a run's [`Lease`] on a remote lake outlives its last renewal.
    pub fn with_lease_ttl(mut self, ttl: std::time::Duration) -> Lake {
        self.lease_ttl = ttl;
        self
    }

    pub fn lease_ttl(&self) -> std::time::Duration {
        self.lease_ttl
    }

    pub fn root(&self) -> &Url {
        &self.root
    }

    /// The local folder of the lake, if it is local.
    pub fn local_path(&self) -> Option<PathBuf> {
        (self.root.scheme() == "file")
            .then(|| self.root.to_file_path().ok())
            .flatten()
    }

    pub fn table_url(&self, table: &str) -> Url {
        self.root
            .join(&format!("{}/", table.trim_matches('/')))
            .expect("table path joins root")
    }

    /// Opens `table`; a table that does not exist yet comes back unloaded, ready to be created by
    /// its first append.
    pub async fn table(&self, table: &str) -> Result<DeltaTable, LakeError> {
        let url = self.table_url(table);
        if let Ok(path) = url.to_file_path() {
            // The local store insists on an existing folder, even for a table about to be created.
            std::fs::create_dir_all(&path).map_err(|e| LakeError::Root {
                root: path.display().to_string(),
                source: e.into(),
            })?;
        }
        DeltaTable::try_from_url(url)
            .await
            .map_err(|source| LakeError::Delta {
                table: table.to_string(),
                source,
            })
    }

    /// Opens `table` if it exists.
    pub async fn existing_table(&self, table: &str) -> Result<Option<DeltaTable>, LakeError> {
        let table_handle = self.table(table).await?;
        Ok(table_handle.version().is_some().then_some(table_handle))
    }

    /// Relative paths of the Delta tables directly under `prefix` (e.g. `bronze/fhir`).
    pub async fn list_tables(&self, prefix: &str) -> Result<Vec<String>, LakeError> {
        self.find_tables(prefix, 1).await
    }

    /// Relative paths of every Delta table under `prefix`, looking at most `depth` folders down
    /// (`silver` finds `silver/alerts`, `silver/fhir/patient`, `silver/ikhospital/doctors`).
    pub async fn find_tables(&self, prefix: &str, depth: usize) -> Result<Vec<String>, LakeError> {
        let store = self.object_store()?;
        let mut found = Vec::new();
        let mut folders = vec![(prefix.trim_matches('/').to_string(), depth)];
        while let Some((folder, depth)) = folders.pop() {
            let listing = store
                .list_with_delimiter(Some(&deltalake::Path::from(folder.as_str())))
                .await
                .map_err(|source| LakeError::List {
                    prefix: folder.clone(),
                    source,
                })?;
            for dir in listing.common_prefixes {
                let name = dir.filename().unwrap_or_default();
                if name.starts_with('_') || name.starts_with('.') {
                    continue;
                }
                let mut log = store.list(Some(&dir.clone().join("_delta_log")));
                let is_table = log
                    .try_next()
                    .await
                    .map_err(|source| LakeError::List {
                        prefix: dir.to_string(),
                        source,
                    })?
                    .is_some();
                if is_table {
                    found.push(dir.to_string());
                } else if depth > 1 {
                    folders.push((dir.to_string(), depth - 1));
                }
            }
        }
        found.sort();
        Ok(found)
    }

    /// The lake's storage, with paths relative to its root (Delta's own store: the same
    /// credentials from the environment).
    pub(crate) fn object_store(&self) -> Result<Arc<dyn ObjectStore>, LakeError> {
        let delta = |source| LakeError::Delta {
            table: self.root.to_string(),
            source,
        };
        let log_store = DeltaTableBuilder::from_url(self.root.clone())
            .map_err(delta)?
            .build_storage()
            .map_err(delta)?;
        Ok(log_store.object_store(None))
    }
}

/// Tells deltalake how to reach the lake: Azure's handlers with our settled conditional puts, and
/// our pooled store for local folders.
fn register_store_handlers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        deltalake::azure::register_handlers(None);
        remote_store::register();
        local_store::register();
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch, StringArray};
    use deltalake::arrow::datatypes::Int64Type;

    fn rows(keys: &[String], version: i64) -> RecordBatch {
        RecordBatch::try_from_iter([
            (
                "_key",
                Arc::new(StringArray::from(keys.to_vec())) as ArrayRef,
            ),
            (
                "version",
                Arc::new(Int64Array::from(vec![version; keys.len()])) as ArrayRef,
            ),
        ])
        .unwrap()
    }

    /// Two writers that read the same version commit the same application transaction: the
    /// second is told so by its error's kind, which the stream's landing retries on.
    #[tokio::test]
    async fn a_second_commit_of_the_same_transaction_is_a_concurrent_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        let keys = vec!["Observation/a".to_string()];
        let table = lake.table("t").await.unwrap();
        AppendBuilder::new(table, "t", vec![rows(&keys, 1)])
            .execute()
            .await
            .unwrap();
        let first = lake.existing_table("t").await.unwrap().unwrap();
        let second = lake.existing_table("t").await.unwrap().unwrap();
        AppendBuilder::new(first, "t", vec![rows(&keys, 2)])
            .with_transaction("stream-partition-0", 7)
            .execute()
            .await
            .unwrap();
        let lost = AppendBuilder::new(second, "t", vec![rows(&keys, 2)])
            .with_transaction("stream-partition-0", 7)
            .execute()
            .await
            .unwrap_err();
        assert!(lost.is_concurrent_transaction(), "{lost:?}");
        let other = LakeError::Schema {
            table: "t".into(),
            source: deltalake::arrow::error::ArrowError::ComputeError(
                "Concurrent transaction failed.".into(),
            ),
        };
        assert!(!other.is_concurrent_transaction());
    }

    /// A stream landing replaces up to a batch's worth of keys at once. The predicate must not
    /// overflow a stack (a test thread has 2 MiB) and must replace exactly the listed keys.
    #[tokio::test]
    async fn a_replacing_write_takes_thousands_of_keys() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        let keys: Vec<String> = (0..5000).map(|i| format!("Observation/o-{i}")).collect();
        let others = vec!["Observation/other".to_string()];
        let table = lake.table("t").await.unwrap();
        let (table, _) = AppendBuilder::new(table, "t", vec![rows(&keys, 1), rows(&others, 1)])
            .execute()
            .await
            .unwrap();
        let predicate = in_list("_key", keys.iter().map(|k| format!("'{k}'")));
        let (table, _) = AppendBuilder::new(table, "t", vec![rows(&keys, 2)])
            .replacing(predicate)
            .execute()
            .await
            .unwrap();
        let counts = read::query(
            &table,
            "t",
            "SELECT version, count(*) AS n FROM t GROUP BY version ORDER BY version",
        )
        .await
        .unwrap();
        let counts: Vec<(i64, i64)> = counts
            .iter()
            .flat_map(|b| {
                let version = b.column(0).as_primitive::<Int64Type>().clone();
                let n = b.column(1).as_primitive::<Int64Type>().clone();
                (0..b.num_rows()).map(move |i| (version.value(i), n.value(i)))
            })
            .collect();
        assert_eq!(
            counts,
            [(1, 1), (2, 5000)],
            "the other key kept, the listed ones replaced"
        );
        let predicate = keys_in("_key", keys.iter().map(String::as_str));
        let (table, _) = AppendBuilder::new(table, "t", vec![rows(&keys, 3)])
            .replacing(predicate)
            .execute()
            .await
            .unwrap();
        let versions = read::query(&table, "t", "SELECT DISTINCT version FROM t ORDER BY 1")
            .await
            .unwrap();
        let versions: Vec<i64> = versions
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect();
        assert_eq!(versions, [1, 3], "built as an expression, the same");
    }

    /// A column written without dictionary or statistics (bronze's raw JSON) has neither in the
    /// Parquet file, and the other columns keep theirs: Delta skips files by them.
    #[tokio::test]
    async fn columns_written_plain_lose_only_their_own_dictionary_and_statistics() {
        use deltalake::parquet::file::reader::{FileReader, SerializedFileReader};
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        let keys: Vec<String> = (0..100).map(|n| format!("Observation/{n}")).collect();
        AppendBuilder::new(lake.table("t").await.unwrap(), "t", vec![rows(&keys, 1)])
            .without_dictionary(&["_key"])
            .without_statistics(&["_key"])
            .execute()
            .await
            .unwrap();
        let file = std::fs::read_dir(dir.path().join("t"))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .find(|path| path.extension().is_some_and(|e| e == "parquet"))
            .expect("a data file");
        let reader = SerializedFileReader::new(std::fs::File::open(file).unwrap()).unwrap();
        let group = reader.metadata().row_group(0);
        let (key, version) = (group.column(0), group.column(1));
        assert_eq!(key.column_path().string(), "_key");
        assert!(key.statistics().is_none(), "no min/max of the plain column");
        assert!(key.dictionary_page_offset().is_none(), "no dictionary");
        assert!(
            version
                .statistics()
                .is_some_and(|s| s.min_bytes_opt().is_some())
        );
        assert!(version.dictionary_page_offset().is_some());
    }
}
