//! `vitalake rules check | test | backtest | schema`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use vitalake::config::Config;
use vitalake::rules::{RuleSet, backtest, cases};

use super::{duration_millis, exit_if_failed, open_lake, print_report};

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Check every rule file against the rule schema; each problem with its file, line and field.
    #[command(after_help = "Example:\n  vitalake rules check anomaly-rules/")]
    Check(RulesDirArgs),
    /// Run the inline tests of the rule files (readings in, alerts expected out).
    #[command(after_help = "Example:\n  vitalake rules test\n  vitalake rules test my-rules/")]
    Test(RulesDirArgs),
    /// Replay silver's readings through a rule set and report, per rule, the alerts it would have
    /// raised and alerts per patient-day. Nothing is sent or written.
    #[command(
        after_help = "Example:\n  vitalake rules backtest --since 30d\n  vitalake rules backtest --since 90d --rules candidate-rules/ --json"
    )]
    Backtest(RulesBacktestArgs),
    /// Print the JSON Schema rule files are checked against.
    Schema,
}

#[derive(Debug, Args)]
pub struct RulesDirArgs {
    /// The rule folder.
    #[arg(value_name = "DIR", default_value = "anomaly-rules")]
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct RulesBacktestArgs {
    /// How far back to replay, by effective time (e.g. 30d, 12h).
    #[arg(long, value_name = "DURATION", default_value = "30d")]
    pub since: String,
    /// The rule folder.
    #[arg(long, value_name = "DIR", default_value = "anomaly-rules")]
    pub rules: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(config: &Config, command: RulesCommand) -> anyhow::Result<ExitCode> {
    match command {
        RulesCommand::Schema => {
            print!("{}", vitalake::rules::SCHEMA);
            Ok(ExitCode::SUCCESS)
        }
        RulesCommand::Check(args) => match RuleSet::load_dir(&args.dir) {
            Ok(set) => {
                println!(
                    "{}: {} rules, all valid",
                    args.dir.display(),
                    set.rules.len()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(problems) => {
                print!("{problems}");
                println!("{} problem(s)", problems.0.len());
                Ok(ExitCode::FAILURE)
            }
        },
        RulesCommand::Test(args) => {
            let report = cases::run_all(&load(&args.dir)?);
            print!("{report}");
            Ok(exit_if_failed(report.failed()))
        }
        RulesCommand::Backtest(args) => {
            let set = load(&args.rules)?;
            let since = duration_millis("--since", &args.since)?;
            let lake = open_lake(config)?;
            let now = chrono::Utc::now().timestamp_millis();
            let readings = vitalake::live::readings::from_silver(&lake, now - since)
                .await
                .map_err(vitalake::Error::from)?;
            let report = backtest::run(&set, &readings, now);
            print_report(&report, args.json, true)
        }
    }
}

/// The rule set in `dir`, or every problem with it (bad input: exit code 2).
fn load(dir: &Path) -> anyhow::Result<RuleSet> {
    RuleSet::load(dir).map_err(|invalid| anyhow::Error::from(vitalake::Error::from(invalid)))
}
