//! Delete the rows matching a SQL predicate; used to roll back the rows of a run that never
//! finished. When every row of a file matches, Delta only drops the file: no rewrite.

use deltalake::DeltaTable;

use super::LakeError;

/// Deletes rows matching `predicate` (DataFusion SQL) from `table`; returns the rows deleted.
pub async fn delete_where(
    table: DeltaTable,
    name: &str,
    predicate: &str,
) -> Result<usize, LakeError> {
    let (_, metrics) = table
        .delete()
        .with_predicate(predicate.to_string())
        .await
        .map_err(|source| LakeError::Delta {
            table: name.to_string(),
            source,
        })?;
    Ok(metrics.num_deleted_rows.unwrap_or(0))
}
