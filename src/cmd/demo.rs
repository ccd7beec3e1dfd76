//! `vitalake demo`: the main job on the bundled samples, end to end.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use vitalake::config::Config;

use super::{ingest_options, open_lake};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The samples folder (drop/ and stream/).
    #[arg(long, value_name = "DIR", default_value = "samples")]
    pub samples: PathBuf,
    /// The anomaly rules.
    #[arg(long, value_name = "DIR", default_value = "anomaly-rules")]
    pub rules: PathBuf,
    /// Where alerts are written (default: alerts.ndjson in a local lake's folder).
    #[arg(long, value_name = "FILE")]
    pub alerts: Option<PathBuf>,
}

pub async fn run(config: &Config, args: DemoArgs) -> anyhow::Result<ExitCode> {
    let lake = open_lake(config)?;
    let alerts = args.alerts.unwrap_or_else(|| {
        lake.local_path()
            .unwrap_or_else(|| PathBuf::from("."))
            .join("alerts.ndjson")
    });
    let db = (!config.db.sources.is_empty()).then(|| vitalake::ingest::db::DbOptions {
        sources: config.db.sources.clone(),
        ..Default::default()
    });
    let options = vitalake::demo::DemoOptions {
        samples: args.samples,
        rules: args.rules,
        alerts,
        ingest: ingest_options(config)?,
        db,
        gold: PathBuf::from("profiles/gold"),
    };
    print!("{}", vitalake::demo::run(&lake, options).await?);
    Ok(ExitCode::SUCCESS)
}
