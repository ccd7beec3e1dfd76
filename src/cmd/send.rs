//! `vitalake send`: NDJSON events to an Event Hub.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use vitalake::ingest::IngestError;
use vitalake::stream::event_hubs::EventHubsOptions;

#[derive(Debug, Args)]
pub struct SendArgs {
    /// An NDJSON file of events.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    #[arg(long, value_name = "HUB")]
    pub hub: String,
}

pub async fn run(args: SendArgs) -> anyhow::Result<ExitCode> {
    let error = |e| vitalake::Error::from(IngestError::from(e));
    let options = EventHubsOptions::from_env(&args.hub, "$Default").map_err(error)?;
    let sent = vitalake::stream::send::send_file(&args.file, &options)
        .await
        .map_err(error)?;
    println!("{sent}");
    Ok(ExitCode::SUCCESS)
}
