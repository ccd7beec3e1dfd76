//! The lake as SQL: every Delta table registered in one DataFusion catalogue ([`catalog`]), and
//! read-only queries over it (`vitalake query`).

pub mod catalog;
pub mod incremental;
pub mod refresh;

use deltalake::arrow::record_batch::RecordBatch;
use deltalake::datafusion::execution::context::SQLOptions;

use crate::lake::{Lake, LakeError};

#[derive(Debug, thiserror::Error)]
pub enum GoldError {
    #[error(transparent)]
    Lake(#[from] LakeError),
    /// DataFusion's message already holds its causes: not a `source` too, or a report prints each
    /// cause again under it (`{:#}` walks sources).
    #[error("{0}")]
    Sql(deltalake::datafusion::error::DataFusionError),
    #[error("no gold table named {0:?}")]
    Unknown(String),
    #[error("gold table {table}: its `-- incremental:` line: {message}")]
    Declaration { table: String, message: String },
}

impl From<deltalake::datafusion::error::DataFusionError> for GoldError {
    fn from(error: deltalake::datafusion::error::DataFusionError) -> Self {
        GoldError::Sql(error)
    }
}

/// Statements that only read: no DDL, no INSERT/UPDATE/DELETE, no SET.
pub fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// Runs one read-only statement over the whole lake. Writes (INSERT, UPDATE, DELETE), DDL and
/// `SET`-like statements are refused with DataFusion's own error.
pub async fn query(lake: &Lake, sql: &str) -> Result<Vec<RecordBatch>, GoldError> {
    let ctx = catalog::session(lake).await?;
    let frame = ctx.sql_with_options(sql, read_only()).await?;
    Ok(frame.collect().await?)
}
