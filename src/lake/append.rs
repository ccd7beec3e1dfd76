//! Append record batches to a table, creating it on first use, with commit metadata that names the
//! batch so every commit in the Delta log can be traced to the run that made it.

use std::collections::HashMap;

use deltalake::DeltaTable;
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::write::SchemaMode;
use deltalake::parquet::basic::Compression;
use deltalake::parquet::file::properties::{EnabledStatistics, WriterProperties};
use deltalake::parquet::schema::types::ColumnPath;
use deltalake::protocol::SaveMode;

use super::{LakeError, Predicate};

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendMetrics {
    pub rows: usize,
    /// The table version the commit created.
    pub version: u64,
}

/// Builder for one append commit: `AppendBuilder::new(table, name, batches).with_metadata(..).await`.
pub struct AppendBuilder {
    table: DeltaTable,
    name: String,
    batches: Vec<RecordBatch>,
    metadata: HashMap<String, serde_json::Value>,
    partition_columns: Vec<String>,
    replace_where: Option<Predicate>,
    replace_all: bool,
    merge_schema: bool,
    transactions: Vec<(String, i64)>,
    without_dictionary: Vec<String>,
    without_statistics: Vec<String>,
}

impl AppendBuilder {
    pub fn new(table: DeltaTable, name: impl Into<String>, batches: Vec<RecordBatch>) -> Self {
        AppendBuilder {
            table,
            name: name.into(),
            batches,
            metadata: HashMap::new(),
            partition_columns: Vec::new(),
            replace_where: None,
            replace_all: false,
            merge_schema: false,
            transactions: Vec::new(),
            without_dictionary: Vec::new(),
            without_statistics: Vec::new(),
        }
    }

    /// Adds a key to the commit's `commitInfo` (e.g. `vitalake.batch_id`).
    pub fn with_metadata(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.metadata.insert(key.to_string(), value.into());
        self
    }

    /// Partition columns, used only when the append creates the table.
    pub fn with_partition_columns(mut self, columns: &[&str]) -> Self {
        self.partition_columns = columns.iter().map(|c| c.to_string()).collect();
        self
    }

    /// Replaces the rows matching `predicate` with the batches, in the same commit: readers see the
    /// old rows or the new ones, never neither. Every new row must match it.
    pub fn replacing(mut self, predicate: impl Into<Predicate>) -> Self {
        self.replace_where = Some(predicate.into());
        self
    }

    /// Adds columns the table does not have yet (a table written by an older vitalake).
    pub fn with_schema_merge(mut self) -> Self {
        self.merge_schema = true;
        self
    }

    /// Writes `columns` without a Parquet dictionary. For a column of unique long texts (bronze's
    /// raw JSON) the writer would build one for nothing, some megabytes a chunk, until it gives up.
    pub fn without_dictionary(mut self, columns: &[&str]) -> Self {
        self.without_dictionary = columns.iter().map(|c| c.to_string()).collect();
        self
    }

    /// Writes `columns` without Parquet statistics. A min and max of unique long texts (bronze's raw
    /// JSON) skip nothing, and computing them compares every value's bytes with the page's.
    pub fn without_statistics(mut self, columns: &[&str]) -> Self {
        self.without_statistics = columns.iter().map(|c| c.to_string()).collect();
        self
    }

    /// Replaces the whole table, schema included, in one commit (a rebuild).
    pub fn replacing_all(mut self) -> Self {
        self.replace_all = true;
        self
    }

    /// Records application transaction `(app_id, version)` in the same commit (Delta `txn`), so a
    /// writer can tell after a crash whether this append happened ([`super::app_version`]). Can be
    /// given once per application id.
    pub fn with_transaction(mut self, app_id: &str, version: i64) -> Self {
        self.transactions.push((app_id.to_string(), version));
        self
    }

    /// Runs `appends` at the same time, each on its own task, and gives the tables and metrics in
    /// the order given. For independent tables: their Parquet encoding and commits overlap. Every
    /// append runs to its end, whatever the others do; the first failure is returned, and a panic
    /// in one is raised here.
    pub async fn execute_all(
        appends: Vec<AppendBuilder>,
    ) -> Result<Vec<(DeltaTable, AppendMetrics)>, LakeError> {
        let tasks: Vec<_> = appends
            .into_iter()
            .map(|append| tokio::spawn(append.execute()))
            .collect();
        let mut done = Vec::with_capacity(tasks.len());
        let mut failure = None;
        for task in tasks {
            match task.await {
                Ok(Ok(appended)) => done.push(appended),
                Ok(Err(error)) => {
                    failure.get_or_insert(error);
                }
                // Never aborted: a join fails only when the append panicked.
                Err(failed) => std::panic::resume_unwind(failed.into_panic()),
            }
        }
        failure.map_or(Ok(done), Err)
    }

    pub async fn execute(self) -> Result<(DeltaTable, AppendMetrics), LakeError> {
        let rows = self.batches.iter().map(RecordBatch::num_rows).sum();
        let name = self.name;
        let mut properties = CommitProperties::default().with_metadata(self.metadata);
        for (app_id, version) in &self.transactions {
            properties =
                properties.with_application_transaction(Transaction::new(app_id, *version));
        }
        let mut write = self
            .table
            .write(self.batches)
            .with_save_mode(if self.replace_where.is_some() || self.replace_all {
                SaveMode::Overwrite
            } else {
                SaveMode::Append
            })
            .with_commit_properties(properties);
        if self.replace_all {
            write = write.with_schema_mode(SchemaMode::Overwrite);
        } else if self.merge_schema {
            write = write.with_schema_mode(SchemaMode::Merge);
        }
        match self.replace_where {
            Some(Predicate::Sql(sql)) => write = write.with_replace_where(sql),
            Some(Predicate::Expr(expr)) => write = write.with_replace_where(expr),
            None => {}
        }
        if !self.partition_columns.is_empty() {
            write = write.with_partition_columns(self.partition_columns);
        }
        if !self.without_dictionary.is_empty() || !self.without_statistics.is_empty() {
            // Snappy, as delta-rs writes when given no properties.
            let mut properties = WriterProperties::builder().set_compression(Compression::SNAPPY);
            for column in &self.without_dictionary {
                properties = properties
                    .set_column_dictionary_enabled(ColumnPath::from(column.as_str()), false);
            }
            for column in &self.without_statistics {
                properties = properties.set_column_statistics_enabled(
                    ColumnPath::from(column.as_str()),
                    EnabledStatistics::None,
                );
            }
            write = write.with_writer_properties(properties.build());
        }
        let table = write.await.map_err(|source| LakeError::Delta {
            table: name,
            source,
        })?;
        let version = table.version().unwrap_or_default();
        Ok((table, AppendMetrics { rows, version }))
    }
}
