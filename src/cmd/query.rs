//! `vitalake query`: one read-only SQL statement over every table of the lake.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use vitalake::config::Config;

use super::open_lake;
use super::views::{RowsFormat, write_rows};

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// One SQL statement (DataFusion's dialect, close to PostgreSQL).
    #[arg(value_name = "SQL")]
    pub sql: String,
    #[arg(long, value_enum, default_value_t = RowsFormat::Table)]
    pub format: RowsFormat,
    /// Write to this file instead of standard output (required for Parquet).
    #[arg(long, value_name = "PATH")]
    pub output: Option<PathBuf>,
}

pub async fn run(config: &Config, args: QueryArgs) -> anyhow::Result<ExitCode> {
    let lake = open_lake(config)?;
    let batches = vitalake::gold::query(&lake, &args.sql).await?;
    write_rows(&batches, args.format.format(), args.output.as_deref())?;
    Ok(ExitCode::SUCCESS)
}
