//! Reads of one table: SQL over it registered as `t` ([`query`], [`stream`]), for bookkeeping and
//! reports, or a selection of columns and rows built as DataFusion expressions ([`select`],
//! [`select_all`]), for the reads an ingest makes on every chunk, with no SQL to parse. Strings
//! come back through [`text_column`] whatever type the plan gave them.

use std::sync::Arc;

use deltalake::DeltaTable;
use deltalake::arrow::array::{ArrayRef, AsArray, StringArray};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::DataType;
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::datafusion::catalog::TableProvider;
use deltalake::datafusion::error::DataFusionError;
use deltalake::datafusion::execution::SendableRecordBatchStream;
use deltalake::datafusion::prelude::{DataFrame, Expr, SessionConfig, SessionContext, ident};

use super::LakeError;

/// A DataFusion session that filters Parquet rows before decoding the other columns: a look-up of a
/// few ids in bronze then decodes the raw JSON of those rows only, not of every row in the files.
pub fn session() -> SessionContext {
    SessionContext::new_with_config(session_config())
}

/// The settings of [`session`].
pub fn session_config() -> SessionConfig {
    SessionConfig::new()
        .set_bool("datafusion.execution.parquet.pushdown_filters", true)
        .set_bool("datafusion.execution.parquet.reorder_filters", true)
}

/// Registers `table` in `ctx` under `alias`, for queries over several tables.
pub async fn register(
    ctx: &SessionContext,
    table: &DeltaTable,
    name: &str,
    alias: &str,
) -> Result<(), LakeError> {
    let provider = provider(ctx, table, name).await?;
    ctx.register_table(alias, provider)
        .map_err(query_error(name))?;
    Ok(())
}

/// `table` as a DataFusion table of `ctx`, whose session learns the table's object store.
async fn provider(
    ctx: &SessionContext,
    table: &DeltaTable,
    name: &str,
) -> Result<Arc<dyn TableProvider>, LakeError> {
    table
        .update_datafusion_session(&ctx.state())
        .map_err(|source| LakeError::Delta {
            table: name.to_string(),
            source,
        })?;
    table.table_provider().await.map_err(query_error(name))
}

/// A DataFusion error of a read of table `name`.
fn query_error(name: &str) -> impl Fn(DataFusionError) -> LakeError {
    move |source| LakeError::Query {
        table: name.to_string(),
        source,
    }
}

/// The plan of `sql` over `table` registered as `t`.
async fn dataframe(table: &DeltaTable, name: &str, sql: &str) -> Result<DataFrame, LakeError> {
    let ctx = session();
    register(&ctx, table, name, "t").await?;
    ctx.sql(sql).await.map_err(query_error(name))
}

/// Runs `sql` (which reads from `t`) over `table` and returns the batches as they come, for reads
/// too large to hold (rebuilding silver from bronze).
pub async fn stream(
    table: &DeltaTable,
    name: &str,
    sql: &str,
) -> Result<SendableRecordBatchStream, LakeError> {
    let frame = dataframe(table, name, sql).await?;
    frame.execute_stream().await.map_err(query_error(name))
}

/// The next batch of a [`stream`] or [`select`] over table `name`, or `None` at its end.
pub async fn next_batch(
    batches: &mut SendableRecordBatchStream,
    name: &str,
) -> Result<Option<RecordBatch>, LakeError> {
    use futures::TryStreamExt;
    batches.try_next().await.map_err(query_error(name))
}

/// The plan reading `columns` of the rows of `table` where `predicate` holds (every row with
/// none), built from expressions: no SQL to parse.
async fn selection(
    table: &DeltaTable,
    name: &str,
    columns: &[&str],
    predicate: Option<Expr>,
) -> Result<DataFrame, LakeError> {
    let err = query_error(name);
    let ctx = session();
    let mut frame = ctx
        .read_table(provider(&ctx, table, name).await?)
        .map_err(&err)?;
    if let Some(predicate) = predicate {
        frame = frame.filter(predicate).map_err(&err)?;
    }
    let columns = columns
        .iter()
        .map(|column| ident(*column))
        .collect::<Vec<_>>();
    frame.select(columns).map_err(err)
}

/// [`selection`]'s rows as they come.
pub async fn select(
    table: &DeltaTable,
    name: &str,
    columns: &[&str],
    predicate: Option<Expr>,
) -> Result<SendableRecordBatchStream, LakeError> {
    let frame = selection(table, name, columns, predicate).await?;
    frame.execute_stream().await.map_err(query_error(name))
}

/// [`selection`]'s rows, collected.
pub async fn select_all(
    table: &DeltaTable,
    name: &str,
    columns: &[&str],
    predicate: Option<Expr>,
) -> Result<Vec<RecordBatch>, LakeError> {
    let frame = selection(table, name, columns, predicate).await?;
    frame.collect().await.map_err(query_error(name))
}

/// Runs `sql` (which reads from `t`) over `table` and collects the result.
pub async fn query(
    table: &DeltaTable,
    name: &str,
    sql: &str,
) -> Result<Vec<RecordBatch>, LakeError> {
    let frame = dataframe(table, name, sql).await?;
    frame.collect().await.map_err(query_error(name))
}

/// A column of a read's result as text. DataFusion hands strings back as `Utf8`, `LargeUtf8` or
/// `Utf8View` depending on the plan; readers of a string column take it through here rather than
/// guess. Panics on a column that does not cast to text, which a read of string columns never
/// returns.
pub fn text_column(column: &ArrayRef) -> StringArray {
    cast(column, &DataType::Utf8)
        .expect("a string column casts to Utf8")
        .as_string::<i32>()
        .clone()
}
