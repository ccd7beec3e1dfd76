//! `vitalake validate`: the checks of `ingest fhir`, writing nothing.

use std::process::ExitCode;

use clap::Args;
use vitalake::config::Config;

use super::{ingest_options, print_report};

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Files or folders, local or abfss://.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<String>,
    /// Print a FHIR OperationOutcome per record with findings, as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Exit code 1 when a record has an error (ingest would quarantine it).
pub async fn run(config: &Config, args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let report = vitalake::ingest::check::check_files(&args.paths, ingest_options(config)?)
        .await
        .map_err(vitalake::Error::from)?;
    print_report(&report, args.json, report.failed() == 0)
}
