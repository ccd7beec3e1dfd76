//! `vitalake refresh silver | gold`: derived tables rebuilt from the layer below.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use vitalake::config::Config;
use vitalake::ingest::IngestError;
use vitalake::ingest::silver::SilverViews;

use super::{open_lake, print_report};

#[derive(Debug, Subcommand)]
pub enum RefreshCommand {
    /// Rebuild the silver tables from bronze: every view in the views folder, or one.
    ///
    /// Gives the same tables as the incremental path of `ingest fhir`; use it after changing a view.
    #[command(
        after_help = "Example:\n  vitalake refresh silver\n  vitalake refresh silver --view blood_pressure"
    )]
    Silver(RefreshSilverArgs),
    /// Rebuild the gold tables: one SQL file each in profiles/gold/ (built-in ones if the folder is
    /// missing), run over the lake, each result replacing its table in one commit.
    #[command(
        after_help = "Example:\n  vitalake refresh gold\n  vitalake refresh gold patient_bp_daily\n  vitalake refresh gold --definitions my-gold/"
    )]
    Gold(RefreshGoldArgs),
}

#[derive(Debug, Args)]
pub struct RefreshGoldArgs {
    /// Only this table.
    #[arg(value_name = "NAME")]
    pub name: Option<String>,
    /// The folder of gold SQL files.
    #[arg(long, value_name = "DIR", default_value = "profiles/gold")]
    pub definitions: PathBuf,
    /// Recompute every table from scratch, even those that can be refreshed incrementally.
    #[arg(long)]
    pub full: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RefreshSilverArgs {
    /// Only this view (its `name`).
    #[arg(long, value_name = "NAME")]
    pub view: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(config: &Config, command: RefreshCommand) -> anyhow::Result<ExitCode> {
    let lake = open_lake(config)?;
    match command {
        RefreshCommand::Gold(args) => {
            let tables = vitalake::gold::refresh::definitions(&args.definitions)
                .with_context(|| format!("reading {}", args.definitions.display()))?;
            let report =
                vitalake::gold::refresh::refresh(&lake, &tables, args.name.as_deref(), args.full)
                    .await?;
            print_report(&report, args.json, true)
        }
        RefreshCommand::Silver(args) => {
            let views = SilverViews::load(std::path::Path::new(&config.ingest.views))
                .map_err(|e| vitalake::Error::from(IngestError::from(e)))?;
            let report = vitalake::ingest::silver::refresh(&lake, &views, args.view.as_deref())
                .await
                .map_err(vitalake::Error::from)?;
            print_report(&report, args.json, true)
        }
    }
}
