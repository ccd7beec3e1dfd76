//! The command line: one file per command, each holding its clap arguments and its `run`, which
//! turns them into the library's options, calls the library and prints its report. Library
//! modules never see clap; `anyhow` lives here, at the edge, and nowhere in the library.

mod demo;
mod generate;
mod ingest;
mod maintain;
mod query;
mod refresh;
mod rules;
mod send;
mod serve;
mod stream;
mod validate;
mod views;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use vitalake::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "vitalake",
    version,
    about = "FHIR drops, device streams and hospital databases into one Delta Lake",
    after_help = "Example:\n  vitalake ingest fhir samples/drop --lake ./lake\n  vitalake generate fhir --patients 50 --seed 7 --out /tmp/drop"
)]
pub struct Cli {
    /// Configuration file (default: ./vitalake.toml if present).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Lake root: a folder or abfss://<container>@<account>.dfs.core.windows.net/<path>.
    /// Overrides `lake.root` and VITALAKE_LAKE_ROOT.
    #[arg(long, global = true, value_name = "ROOT")]
    pub lake: Option<String>,
    /// More log output (-v: debug, -vv: trace). Logs never contain patient data.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load data into the lake.
    #[command(subcommand)]
    Ingest(ingest::IngestCommand),
    /// Make synthetic data.
    #[command(subcommand)]
    Generate(generate::GenerateCommand),
    /// Check FHIR files against the structure and the profiles in profiles/, writing nothing.
    ///
    /// Runs exactly the checks `ingest fhir` runs: what this rejects, ingest quarantines with the same
    /// issues. Exit code 1 if any record has an error.
    #[command(
        after_help = "Example:\n  vitalake validate samples/drop\n  vitalake validate tests/data/invalid --json > outcomes.json"
    )]
    Validate(validate::ValidateArgs),
    /// Work with SQL-on-FHIR ViewDefinitions.
    #[command(subcommand)]
    Views(views::ViewsCommand),
    /// Rebuild derived tables from the layer below.
    #[command(subcommand)]
    Refresh(refresh::RefreshCommand),
    /// Publish NDJSON events to an Event Hub (connection from EVENTHUBS_CONNECTION_STRING).
    ///
    /// Each line is one event; the patient (`subject`) is its partition key, so a patient's
    /// readings stay in order. Events go in batches under the hub's message size limit. The tool
    /// to replay samples and to load-test.
    #[command(
        after_help = "Example:\n  EVENTHUBS_CONNECTION_STRING='Endpoint=sb://...' vitalake send samples/stream/observations.ndjson --hub observations"
    )]
    Send(send::SendArgs),
    /// Land a stream of Observation / MedicationDispense events in bronze, quarantine and silver.
    ///
    /// Events are NDJSON lines (a resource or a Bundle of them per line). They are decoded and
    /// validated as `ingest fhir` does, and land in micro-batches, exactly once: a restarted stream
    /// skips what it already landed and finishes a batch a crash interrupted. Ctrl-C or SIGTERM
    /// lands the current batch, then stops.
    #[command(
        after_help = "Example:\n  vitalake stream --source file:samples/stream/observations.ndjson\n  vitalake stream --source file:samples/stream/observations.ndjson --rules anomaly-rules --alerts file:alerts.ndjson\n  EVENTHUBS_CONNECTION_STRING=... vitalake stream --source eventhubs:observations --consumer-group lake\n  vitalake stream --source file:/var/spool/bp.ndjson --follow --metrics 127.0.0.1:9464\n  gunzip -c readings.ndjson.gz | vitalake stream --source stdin --hub wearables"
    )]
    Stream(stream::StreamArgs),
    /// The main job on the bundled samples, end to end: the FHIR drop, the observation stream
    /// through the default anomaly rules, the pharmacy stream, the databases if configured, the
    /// gold tables; then a summary. Run it again: nothing is added twice.
    #[command(after_help = "Example:\n  vitalake demo\n  vitalake demo --lake /tmp/demo-lake")]
    Demo(demo::DemoArgs),
    /// Run one read-only SQL query over every table of the lake (bronze.*, silver.*, gold.*).
    ///
    /// Tables are named by their path: silver/fhir/blood_pressure is silver.blood_pressure,
    /// silver/ikhospital/doctors is silver.ikhospital_doctors, bronze/fhir/Patient is
    /// bronze.patient. `SHOW TABLES` lists them. Writes and DDL are refused.
    #[command(
        after_help = "Example:\n  vitalake query 'SHOW TABLES'\n  vitalake query 'SELECT rule_id, count(*) FROM silver.alerts GROUP BY rule_id'\n  vitalake query 'SELECT * FROM silver.blood_pressure LIMIT 5' --format csv"
    )]
    Query(query::QueryArgs),
    /// Anomaly rules (anomaly-rules/*.yaml): check them, run their tests, backtest them on silver.
    #[command(subcommand)]
    Rules(rules::RulesCommand),
    /// Serve the lake over the PostgreSQL wire protocol, read-only, for Power BI, psql and drivers.
    ///
    /// Users and roles come from [[serve.users]] in vitalake.toml, each password from the
    /// environment variable the user names; sign-in is SCRAM-SHA-256. An `analyst` sees every
    /// table; a `bi_reader` sees silver and gold with names, phones, record numbers and addresses
    /// masked and birth dates cut to the year ([[serve.masks]]). New commits show within
    /// `refresh_seconds`. Ctrl-C or SIGTERM stops it.
    #[command(
        after_help = "Example (vitalake.toml):\n  [[serve.users]]\n  name = \"powerbi\"\n  role = \"bi_reader\"\n  password_env = \"VITALAKE_POWERBI_PASSWORD\"\nthen:\n  VITALAKE_POWERBI_PASSWORD=... vitalake serve --listen 127.0.0.1:5433\n  psql 'host=127.0.0.1 port=5433 user=powerbi dbname=lake' -c 'SELECT count(*) FROM silver.patient'"
    )]
    Serve(serve::ServeArgs),
    /// Compact the lake's tables (Z-ORDER the large ones), VACUUM old files, write checkpoints;
    /// report files before and after.
    ///
    /// Query results do not change. VACUUM deletes files no table version newer than the
    /// retention needs: a reader still on an older version (a long query, time travel) would
    /// fail, so a retention under 1 day needs --force. Z-ORDER columns: [maintain.zorder].
    #[command(
        after_help = "Example:\n  vitalake maintain\n  vitalake maintain --layer silver --retention 30d --json\n  vitalake maintain --retention 0h --force   # nothing reads older versions"
    )]
    Maintain(maintain::MaintainArgs),
}

/// Runs the command `cli` names; the exit code says how it went.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut config = Config::load(cli.config.as_deref()).map_err(vitalake::Error::from)?;
    if let Some(root) = cli.lake {
        config.lake.root = root;
    }
    match cli.command {
        Command::Ingest(command) => ingest::run(&config, command).await,
        Command::Generate(command) => generate::run(command),
        Command::Validate(args) => validate::run(&config, args).await,
        Command::Views(command) => views::run(&config, command).await,
        Command::Refresh(command) => refresh::run(&config, command).await,
        Command::Send(args) => send::run(args).await,
        Command::Stream(args) => stream::run(&config, args).await,
        Command::Demo(args) => demo::run(&config, args).await,
        Command::Query(args) => query::run(&config, args).await,
        Command::Rules(command) => rules::run(&config, command).await,
        Command::Serve(args) => serve::run(&config, args).await,
        Command::Maintain(args) => maintain::run(&config, args).await,
    }
}

/// A report as JSON or as text, then exit code 0 when `ok`, else 1.
fn print_report(
    report: &(impl serde::Serialize + std::fmt::Display),
    json: bool,
    ok: bool,
) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{report}");
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The profile validator when enabled (structure is always checked by decoding).
fn profile_checks(config: &Config) -> anyhow::Result<Vec<Arc<dyn vitalake::validate::Check>>> {
    if !config.validate.enabled {
        return Ok(Vec::new());
    }
    let validator = vitalake::validate::ProfileValidator::load(&config.validate).with_context(|| {
        format!(
            "loading profiles from '{}' (set validate.profiles or VITALAKE_VALIDATE_PROFILES to the profiles folder, or validate.enabled = false)",
            config.validate.profiles
        )
    })?;
    Ok(vec![Arc::new(validator)])
}

/// The library's options for a FHIR landing (`ingest fhir`, `validate`, `demo`, exports, the
/// stream): the configuration, with the profile checks loaded.
fn ingest_options(config: &Config) -> anyhow::Result<vitalake::ingest::IngestOptions> {
    let mut options = vitalake::ingest::IngestOptions::from_config(&config.ingest);
    options.checks = profile_checks(config)?;
    Ok(options)
}

/// The configured lake, opened.
fn open_lake(config: &Config) -> anyhow::Result<vitalake::lake::Lake> {
    Ok(vitalake::lake::Lake::from_config(&config.lake).map_err(vitalake::Error::from)?)
}

/// Cancels `stop` on Ctrl-C or SIGTERM.
async fn cancel_on_signal(stop: tokio_util::sync::CancellationToken) {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        Some(()) = async { match terminate.as_mut() { Some(t) => t.recv().await, None => std::future::pending().await } } => {}
    }
    tracing::info!("stop requested: finishing the work in hand");
    stop.cancel();
}

/// A progress bar on a terminal, drawn with `template` (indicatif's); plain log lines otherwise.
fn progress_bar(template: &str) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(0);
    bar.set_style(ProgressStyle::with_template(template).expect("valid template"));
    Some(bar)
}

/// A progress bar of bytes read.
const BYTES_BAR: &str =
    "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec}";

/// A duration argument (`30d`, `36h`, `5m`) in milliseconds, its flag named in the error.
fn duration_millis(flag: &str, text: &str) -> anyhow::Result<i64> {
    vitalake::rules::rule::duration_millis(text).map_err(|e| anyhow::anyhow!("{flag}: {e}"))
}

/// Exit code 0 when nothing failed, else 1.
fn exit_if_failed(failures: usize) -> ExitCode {
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
