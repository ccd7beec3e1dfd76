//! Small SQL reads over one table, for bookkeeping (which files were ingested, which runs are open).
//! The table is registered as `t`.

use deltalake::DeltaTable;
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::datafusion::prelude::SessionContext;

use super::LakeError;

/// Runs `sql` (which reads from `t`) over `table` and collects the result.
pub async fn query(
    table: &DeltaTable,
    name: &str,
    sql: &str,
) -> Result<Vec<RecordBatch>, LakeError> {
    let err = |source| LakeError::Query {
        table: name.to_string(),
        source,
    };
    let ctx = SessionContext::new();
    table
        .update_datafusion_session(&ctx.state())
        .map_err(|source| LakeError::Delta {
            table: name.to_string(),
            source,
        })?;
    let provider = table.table_provider().await.map_err(err)?;
    ctx.register_table("t", provider).map_err(err)?;
    ctx.sql(sql)
        .await
        .map_err(err)?
        .collect()
        .await
        .map_err(err)
}
