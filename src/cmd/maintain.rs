//! `vitalake maintain`: compaction, Z-ORDER, VACUUM and checkpoints over the lake's tables.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use vitalake::config::Config;
use vitalake::lake::maintain::{MaintainOptions, maintain};

use super::{duration_millis, open_lake, print_report};

/// The layers `--layer` may name.
const LAYERS: [&str; 3] = ["bronze", "silver", "gold"];

#[derive(Debug, Args)]
pub struct MaintainArgs {
    /// VACUUM retention: 36h, 7d... (default: maintain.retention, 7d).
    #[arg(long, value_name = "DURATION")]
    pub retention: Option<String>,
    /// Allow a retention under 1 day.
    #[arg(long)]
    pub force: bool,
    /// Only these layers (bronze, silver, gold); default all.
    #[arg(long, value_name = "LAYER", value_parser = LAYERS)]
    pub layer: Vec<String>,
    #[arg(long)]
    pub json: bool,
}

/// Every table of the chosen layers, then a report; exit code 1 if a table's maintenance failed.
pub async fn run(config: &Config, args: MaintainArgs) -> anyhow::Result<ExitCode> {
    let lake = open_lake(config)?;
    let retention = args
        .retention
        .as_deref()
        .unwrap_or(&config.maintain.retention);
    let millis = duration_millis("--retention", retention)?;
    let options = MaintainOptions {
        retention: Duration::from_millis(millis.max(0) as u64),
        force: args.force,
        zorder: config.maintain.zorder.clone(),
    };
    let layers: Vec<&str> = if args.layer.is_empty() {
        LAYERS.to_vec()
    } else {
        args.layer.iter().map(String::as_str).collect()
    };
    let report = maintain(&lake, &layers, &options)
        .await
        .map_err(vitalake::Error::from)?;
    print_report(&report, args.json, !report.failed())
}
