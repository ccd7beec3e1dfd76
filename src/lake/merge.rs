//! MERGE rows into a table by key, in one commit: the latest row of each key wins, and (for a full
//! snapshot) target rows whose key the source no longer has are marked, never deleted.

use std::sync::Arc;

use deltalake::DeltaTable;
use deltalake::datafusion::prelude::{DataFrame, SessionContext};
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;

use super::LakeError;

/// What a merge did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MergeMetrics {
    pub inserted: usize,
    /// Matched rows, plus the rows [`MergeByKey::marking_missing`] marked.
    pub updated: usize,
}

/// `MergeByKey::new(table, name, source, keys).marking_missing("_deleted_at", "...").execute()`.
pub struct MergeByKey {
    table: DeltaTable,
    name: String,
    source: DataFrame,
    session: SessionContext,
    keys: Vec<String>,
    /// Source columns to write; the target keeps its other columns.
    columns: Vec<String>,
    mark_missing: Option<(String, String)>,
    changed_when: Option<String>,
    transaction: Option<(String, i64)>,
    metadata: serde_json::Map<String, serde_json::Value>,
}

/// A column name as a quoted SQL identifier.
pub fn quote(column: &str) -> String {
    format!("\"{}\"", column.replace('"', "\"\""))
}

impl MergeByKey {
    pub fn new(
        table: DeltaTable,
        name: impl Into<String>,
        session: SessionContext,
        source: DataFrame,
        keys: Vec<String>,
    ) -> MergeByKey {
        let columns = source
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        MergeByKey {
            table,
            name: name.into(),
            source,
            session,
            keys,
            columns,
            mark_missing: None,
            changed_when: None,
            transaction: None,
            metadata: serde_json::Map::new(),
        }
    }

    /// Sets `column` to `value` (a SQL expression) on target rows whose key is not in the source
    /// and whose `column` is still null: how a full snapshot marks rows deleted at the source.
    pub fn marking_missing(mut self, column: &str, value: &str) -> Self {
        self.mark_missing = Some((column.to_string(), value.to_string()));
        self
    }

    /// Updates a matched row only when `predicate` (SQL over `source` and `target`) holds, so
    /// unchanged rows count as neither updated nor rewritten.
    pub fn updating_when(mut self, predicate: String) -> Self {
        self.changed_when = Some(predicate);
        self
    }

    pub fn with_transaction(mut self, app_id: &str, version: i64) -> Self {
        self.transaction = Some((app_id.to_string(), version));
        self
    }

    pub fn with_metadata(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.metadata.insert(key.to_string(), value.into());
        self
    }

    pub async fn execute(self) -> Result<(DeltaTable, MergeMetrics), LakeError> {
        let name = self.name.clone();
        let err = |source| LakeError::Delta {
            table: name.clone(),
            source,
        };
        let predicate = self
            .keys
            .iter()
            .map(|k| format!("target.{q} = source.{q}", q = quote(k)))
            .collect::<Vec<_>>()
            .join(" AND ");
        let mut properties = CommitProperties::default().with_metadata(self.metadata);
        if let Some((app_id, version)) = &self.transaction {
            properties =
                properties.with_application_transaction(Transaction::new(app_id, *version));
        }
        let columns = self.columns;
        let changed_when = self.changed_when;
        let mut builder = self
            .table
            .merge(self.source, predicate)
            .with_source_alias("source")
            .with_target_alias("target")
            .with_merge_schema(true)
            .with_session_state(Arc::new(self.session.state()))
            .with_commit_properties(properties)
            .when_matched_update(|update| {
                let update = match changed_when {
                    Some(predicate) => update.predicate(predicate),
                    None => update,
                };
                columns.iter().fold(update, |u, c| {
                    u.update(quote(c), format!("source.{}", quote(c)))
                })
            })
            .map_err(err)?
            .when_not_matched_insert(|insert| {
                columns.iter().fold(insert, |i, c| {
                    i.set(quote(c), format!("source.{}", quote(c)))
                })
            })
            .map_err(err)?;
        if let Some((column, value)) = &self.mark_missing {
            builder = builder
                .when_not_matched_by_source_update(|update| {
                    update
                        .predicate(format!("target.{} IS NULL", quote(column)))
                        .update(quote(column), value.clone())
                })
                .map_err(err)?;
        }
        let (table, metrics) = builder.await.map_err(err)?;
        Ok((
            table,
            MergeMetrics {
                inserted: metrics.num_target_rows_inserted,
                updated: metrics.num_target_rows_updated,
            },
        ))
    }
}
