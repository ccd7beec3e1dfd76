//! The `vitalake` binary: parse arguments, set up logs, call one library function, map the result
//! to an exit code (0 ok, 1 failed, 2 bad usage or bad input).

mod cli;

/// FHIR decoding allocates many small strings and maps per resource; with glibc's allocator that
/// was a third of ingest time (perf, BENCHMARKS.md). mimalloc handles that pattern far better.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

use cli::{Cli, Command, GenerateCommand, IngestCommand, RefreshCommand, ViewsCommand};
use vitalake::config::Config;
use vitalake::ingest::silver::SilverViews;
use vitalake::ingest::{IngestError, IngestOptions};
use vitalake::views::View;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = runtime.block_on(run(cli));
    // The work is done (every commit landed): a client library's lingering task must not keep
    // the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(
                err.downcast_ref::<vitalake::Error>()
                    .map_or(1, vitalake::Error::exit_code),
            )
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut config = Config::load(cli.config.as_deref()).map_err(vitalake::Error::from)?;
    if let Some(root) = cli.lake {
        config.lake.root = root;
    }
    match cli.command {
        Command::Ingest(IngestCommand::Db(args)) => ingest_db(&config, args).await,
        Command::Serve(args) => serve(&config, args).await,
        Command::Maintain(args) => maintain(&config, args).await,
        Command::Ingest(IngestCommand::FhirServer(args)) => ingest_fhir_server(&config, args).await,
        Command::Ingest(IngestCommand::Terminology(args)) => {
            let lake = config.lake.open().map_err(vitalake::Error::from)?;
            let files: Vec<&std::path::Path> = args.files.iter().map(|f| f.as_path()).collect();
            let report = vitalake::terminology::load(&lake, &files)
                .await
                .map_err(vitalake::Error::from)?;
            print_report(&report, args.json, true)
        }
        Command::Ingest(IngestCommand::Fhir(args)) => {
            let lake = config.lake.open().map_err(vitalake::Error::from)?;
            let mut options = IngestOptions::from_config(&config.ingest);
            options.checks = profile_checks(&config)?;
            let bar = progress_bar();
            if let Some(bar) = &bar {
                let (on_total, progress) = (bar.clone(), bar.clone());
                options.on_total = Arc::new(move |total| on_total.set_length(total));
                options.progress = Arc::new(move |bytes| progress.inc(bytes));
            }
            let report = vitalake::ingest::ingest_fhir(&lake, &args.paths, options)
                .await
                .map_err(vitalake::Error::from)?;
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            print_report(&report, args.json, report.success())
        }
        Command::Generate(GenerateCommand::Fhir(args)) => {
            let summary = vitalake::generate::write_drop(&args.out, &args.options())
                .map_err(vitalake::Error::from)
                .with_context(|| format!("generating into {}", args.out.display()))?;
            println!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Generate(GenerateCommand::Stream(args)) => {
            let options = vitalake::generate::stream::StreamOptions {
                patients: args.patients,
                hours: args.hours,
                seed: args.seed,
            };
            let summary = vitalake::generate::stream::write_stream(&args.out, &options)
                .map_err(vitalake::Error::from)
                .with_context(|| format!("generating into {}", args.out.display()))?;
            println!("{summary}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate(args) => {
            let mut options = IngestOptions::from_config(&config.ingest);
            options.checks = profile_checks(&config)?;
            let report = vitalake::ingest::check::check_files(&args.paths, options)
                .await
                .map_err(vitalake::Error::from)?;
            let failed = report.outcomes.iter().filter(|o| o.has_errors()).count();
            if args.json {
                let outcomes: Vec<serde_json::Value> = report
                    .outcomes
                    .iter()
                    .map(|o| {
                        serde_json::json!({
                            "source": o.source_uri, "line": o.line, "jsonPath": o.json_path,
                            "resource": format!("{}/{}", o.resource_type.as_deref().unwrap_or("?"), o.id.as_deref().unwrap_or("?")),
                            "outcome": vitalake::validate::operation_outcome(&o.issues),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&outcomes)?);
            } else {
                for outcome in &report.outcomes {
                    let place = match outcome.line {
                        Some(line) => format!("line {line} {}", outcome.json_path),
                        None => outcome.json_path.clone(),
                    };
                    println!(
                        "{} {place} {}/{}",
                        outcome.source_uri,
                        outcome.resource_type.as_deref().unwrap_or("?"),
                        outcome.id.as_deref().unwrap_or("?")
                    );
                    for issue in &outcome.issues {
                        println!(
                            "  {:<8} [{}] {}: {}",
                            issue.severity.as_str(),
                            issue.rule,
                            issue.location,
                            issue.message
                        );
                    }
                }
                println!(
                    "{} records: {} valid, {failed} with errors, {} with warnings only",
                    report.records,
                    report.valid,
                    report.outcomes.len() - failed
                );
            }
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Views(ViewsCommand::Run(args)) => views_run(&config, args).await,
        Command::Stream(args) => {
            keep_freed_memory();
            stream(&config, args).await
        }
        Command::Rules(command) => rules(&config, command).await,
        Command::Demo(args) => {
            let lake = config.lake.open().map_err(vitalake::Error::from)?;
            let mut ingest = IngestOptions::from_config(&config.ingest);
            ingest.checks = profile_checks(&config)?;
            let alerts = args.alerts.unwrap_or_else(|| {
                lake.local_path()
                    .unwrap_or_else(|| std::path::PathBuf::from("."))
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
                ingest,
                db,
                gold: std::path::PathBuf::from("profiles/gold"),
            };
            print!("{}", vitalake::demo::run(&lake, options).await?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Query(args) => {
            let lake = config.lake.open().map_err(vitalake::Error::from)?;
            let batches = vitalake::gold::query(&lake, &args.sql).await?;
            write_rows(&batches, args.format.format(), args.output.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Send(args) => {
            let options =
                vitalake::stream::event_hubs::EventHubsOptions::from_env(&args.hub, "$Default")
                    .map_err(|e| vitalake::Error::from(IngestError::from(e)))?;
            let sent = vitalake::stream::send::send_file(&args.file, &options)
                .await
                .map_err(|e| vitalake::Error::from(IngestError::from(e)))?;
            println!("{sent}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Refresh(RefreshCommand::Gold(args)) => {
            let lake = config.lake.open().map_err(vitalake::Error::from)?;
            let tables = vitalake::gold::refresh::definitions(&args.definitions)
                .with_context(|| format!("reading {}", args.definitions.display()))?;
            let report =
                vitalake::gold::refresh::refresh(&lake, &tables, args.name.as_deref(), args.full)
                    .await?;
            print_report(&report, args.json, true)
        }
        Command::Refresh(RefreshCommand::Silver(args)) => {
            let lake = config.lake.open().map_err(vitalake::Error::from)?;
            let views = SilverViews::load(std::path::Path::new(&config.ingest.views))
                .map_err(|e| vitalake::Error::from(IngestError::from(e)))?;
            let report = vitalake::ingest::silver::refresh(&lake, &views, args.view.as_deref())
                .await
                .map_err(vitalake::Error::from)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "refresh silver: {} bronze resources read, {} quarantined by a view",
                    report.resources_read, report.quarantined
                );
                for (table, rows) in &report.tables {
                    println!("  {table:<40} {rows:>10} rows");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
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

/// `vitalake views run`: one view over files or bronze, rows to stdout or a file.
async fn views_run(config: &Config, args: cli::ViewsRunArgs) -> anyhow::Result<ExitCode> {
    let view = View::load(&args.view)?;
    let mut failures = 0usize;
    let resources: Vec<serde_json::Value> = if args.bronze {
        let lake = config.lake.open().map_err(vitalake::Error::from)?;
        let table_name = vitalake::ingest::tables::bronze_fhir_table(view.resource());
        match lake
            .existing_table(&table_name)
            .await
            .map_err(vitalake::Error::from)?
        {
            None => Vec::new(),
            Some(table) => {
                let batches = vitalake::lake::read::query(&table, &table_name, "SELECT raw FROM t")
                    .await
                    .map_err(vitalake::Error::from)?;
                let mut out = Vec::new();
                for batch in batches {
                    let raw = deltalake::arrow::compute::cast(
                        batch.column(0),
                        &deltalake::arrow::datatypes::DataType::Utf8,
                    )?;
                    let raw = raw
                        .as_any()
                        .downcast_ref::<deltalake::arrow::array::StringArray>()
                        .context("raw column")?;
                    for value in raw.iter().flatten() {
                        out.push(serde_json::from_str(value)?);
                    }
                }
                out
            }
        }
    } else {
        let (resources, problems) = vitalake::views::inputs::read_resources(&args.inputs)?;
        problems.iter().for_each(|p| eprintln!("{p}"));
        failures += problems.len();
        resources
    };
    // Parquet is typed like silver; the other formats print values as the resources write them.
    let format = args.format.format();
    let typed = format == vitalake::views::output::OutputFormat::Parquet;
    let mut builder = view.builder();
    let mut as_written = Vec::new();
    for resource in &resources {
        let evaluated = if typed {
            view.rows(resource)
                .map(|rows| rows.into_iter().for_each(|row| builder.push(row)))
        } else {
            view.rows_as_written(resource)
                .map(|rows| as_written.extend(rows))
        };
        if let Err(error) = evaluated {
            failures += 1;
            let id = resource
                .get("id")
                .and_then(|v| v.as_str())
                .unwrap_or("(no id)");
            eprintln!("{}/{id}: {error}", view.resource());
        }
    }
    let rows = if typed {
        let batch = builder.finish()?;
        let rows = batch.num_rows();
        write_rows(&[batch], format, args.output.as_deref())?;
        rows
    } else {
        let columns: Vec<&str> = view.columns().iter().map(|c| c.name.as_str()).collect();
        let mut out = open_output(args.output.as_deref())?;
        vitalake::views::output::write_as_written(&columns, &as_written, format, &mut out)?;
        as_written.len()
    };
    eprintln!(
        "{rows} rows from {} resources; {failures} could not be evaluated",
        resources.len()
    );
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Rows to `output`, or to standard output.
fn write_rows(
    batches: &[deltalake::arrow::record_batch::RecordBatch],
    format: vitalake::views::output::OutputFormat,
    output: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    vitalake::views::output::write(batches, format, &mut open_output(output)?, output)?;
    Ok(())
}

/// `output`, created, or standard output.
fn open_output(output: Option<&std::path::Path>) -> anyhow::Result<Box<dyn std::io::Write>> {
    Ok(match output {
        Some(path) => Box::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    })
}

/// `vitalake ingest db`: the configured sources plus `--source` URLs, then the report.
async fn ingest_db(config: &Config, args: cli::IngestDbArgs) -> anyhow::Result<ExitCode> {
    use vitalake::ingest::db::{DbOptions, SourceConfig, expectations};
    let lake = config.lake.open().map_err(vitalake::Error::from)?;
    let mut options = DbOptions {
        sources: config.db.sources.clone(),
        full: args.full,
        ..DbOptions::default()
    };
    options
        .sources
        .extend(args.sources.iter().map(|url| SourceConfig {
            url: url.clone(),
            include: args.include.clone(),
            exclude: args.exclude.clone(),
            views: args.views,
            ..SourceConfig::default()
        }));
    if options.sources.is_empty() {
        eprintln!(
            "error: no database to extract: pass --source mysql://USER@HOST:PORT/ikhospital (or \
             postgres://...), or list [[db.sources]] in vitalake.toml"
        );
        return Ok(ExitCode::from(2));
    }
    let expectations_file = args.expectations.or_else(|| {
        config
            .db
            .expectations
            .as_ref()
            .map(std::path::PathBuf::from)
    });
    if let Some(path) = expectations_file {
        options.expectations = expectations::load(&path).map_err(vitalake::Error::from)?;
    }
    let bar = progress_bar().inspect(|bar| {
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {msg} {pos} rows {per_sec}",
            )
            .expect("valid template"),
        )
    });
    if let Some(bar) = &bar {
        let bar = bar.clone();
        options.progress = Arc::new(move |table, rows| {
            bar.set_message(table.to_string());
            bar.set_position(rows);
        });
    }
    let report = vitalake::ingest::db::ingest_db(&lake, &options)
        .await
        .map_err(vitalake::Error::from)?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    print_report(&report, args.json, report.is_ok())
}

/// `vitalake ingest fhir-server`: one export, a line per file on a terminal, then the report.
async fn ingest_fhir_server(
    config: &Config,
    args: cli::IngestFhirServerArgs,
) -> anyhow::Result<ExitCode> {
    use vitalake::ingest::fhir_server::ExportProgress;
    let mut options = match args.options(IngestOptions::from_config(&config.ingest)) {
        Ok(options) => options,
        Err(problem) => {
            eprintln!("error: {problem}");
            return Ok(ExitCode::from(2));
        }
    };
    options.ingest.checks = profile_checks(config)?;
    if std::io::stderr().is_terminal() {
        options.progress = Arc::new(|progress| match progress {
            ExportProgress::Accepted {
                status_url,
                resumed,
            } => eprintln!(
                "{} export job {status_url}",
                if resumed { "resuming" } else { "started" }
            ),
            ExportProgress::Waiting { progress } => {
                eprintln!("  in progress {}", progress.unwrap_or_default())
            }
            ExportProgress::Downloaded {
                done,
                total,
                resource_type,
                bytes,
            } => eprintln!(
                "  [{done}/{total}] {resource_type:<24} {:>10.1} MB",
                bytes as f64 / 1e6
            ),
        });
    }
    let lake = config.lake.open().map_err(vitalake::Error::from)?;
    let report = vitalake::ingest::fhir_server::ingest_fhir_server(&lake, options)
        .await
        .map_err(vitalake::Error::from)?;
    print_report(&report, args.json, report.success())
}

/// A run report as JSON or as text; exit code 1 unless the run went `ok`.
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
        ExitCode::from(1)
    })
}

/// `vitalake stream`: runs until the source ends, or until Ctrl-C / SIGTERM, then prints a report.
async fn stream(config: &Config, args: cli::StreamArgs) -> anyhow::Result<ExitCode> {
    use vitalake::ingest::stream::{StreamOptions, run_stream};
    let mut source = vitalake::stream::SourceSpec::parse(&args.source, args.follow)
        .map_err(|e| vitalake::Error::from(IngestError::from(e)))?;
    if let Some(start) = args.start {
        let Some(starting) = source.starting(start) else {
            eprintln!("error: --start applies to an Event Hubs source (--source eventhubs:HUB)");
            return Ok(ExitCode::from(2));
        };
        source = starting;
    }
    let lake = config.lake.open().map_err(vitalake::Error::from)?;
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(cancel_on_signal(stop.clone()));
    let ingest = IngestOptions::from_config(&config.ingest);
    let hub = match &source {
        vitalake::stream::SourceSpec::EventHubs { hub, .. } => hub.clone(),
        _ => args.hub,
    };
    let options = StreamOptions {
        hub,
        consumer_group: args.consumer_group,
        bounds: vitalake::stream::BatchBounds {
            max_events: args.batch_events.max(1),
            max_wait: std::time::Duration::from_millis(args.batch_ms),
        },
        decode: ingest.decode,
        checks: profile_checks(config)?,
        views: ingest.views,
        metrics: args.metrics,
        stop,
        rules: match args.rules {
            Some(dir) => Some(vitalake::ingest::stream::RulesOptions {
                dir,
                sink: args.alerts,
                lateness: vitalake::rules::rule::duration_millis(&args.lateness)
                    .map_err(|e| anyhow::anyhow!("--lateness: {e}"))?,
            }),
            None => None,
        },
    };
    let report = run_stream(&lake, source, options)
        .await
        .map_err(vitalake::Error::from)?;
    print_report(&report, args.json, true)
}

async fn rules(config: &Config, command: cli::RulesCommand) -> anyhow::Result<ExitCode> {
    use vitalake::rules::{RuleSet, backtest, cases};
    let load = |dir: &std::path::Path| {
        RuleSet::load_dir(dir).map_err(|problems| {
            anyhow::anyhow!(
                "{} problem(s) in {}:\n{problems}",
                problems.0.len(),
                dir.display()
            )
        })
    };
    match command {
        cli::RulesCommand::Schema => {
            print!("{}", vitalake::rules::SCHEMA);
            Ok(ExitCode::SUCCESS)
        }
        cli::RulesCommand::Check(args) => match RuleSet::load_dir(&args.dir) {
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
                Ok(ExitCode::from(1))
            }
        },
        cli::RulesCommand::Test(args) => {
            let set = load(&args.dir)?;
            let outcomes = cases::run_all(&set);
            for outcome in &outcomes {
                println!("{outcome}");
            }
            let failed = outcomes.iter().filter(|o| o.failure.is_some()).count();
            println!(
                "{} tests: {} passed, {failed} failed",
                outcomes.len(),
                outcomes.len() - failed
            );
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        cli::RulesCommand::Backtest(args) => {
            let set = load(&args.rules)?;
            let since = vitalake::rules::rule::duration_millis(&args.since)
                .map_err(|e| anyhow::anyhow!("--since: {e}"))?;
            let lake = config.lake.open().map_err(vitalake::Error::from)?;
            let now = chrono::Utc::now().timestamp_millis();
            let report = backtest::run(&lake, &set, since, now)
                .await
                .map_err(vitalake::Error::from)?;
            print_report(&report, args.json, true)
        }
    }
}

/// `vitalake maintain`: every table of the chosen layers, then a report.
async fn maintain(config: &Config, args: cli::MaintainArgs) -> anyhow::Result<ExitCode> {
    use vitalake::lake::maintain::{MaintainOptions, maintain};
    let lake = config.lake.open().map_err(vitalake::Error::from)?;
    let retention = args
        .retention
        .as_deref()
        .unwrap_or(&config.maintain.retention);
    let millis = vitalake::rules::rule::duration_millis(retention)
        .map_err(|e| anyhow::anyhow!("--retention: {e}"))?;
    let options = MaintainOptions {
        retention: std::time::Duration::from_millis(millis.max(0) as u64),
        force: args.force,
        zorder: config.maintain.zorder.clone(),
    };
    let all = ["bronze", "silver", "gold"];
    for layer in &args.layer {
        anyhow::ensure!(
            all.contains(&layer.as_str()),
            "--layer {layer}: one of bronze, silver, gold"
        );
    }
    let layers: Vec<&str> = if args.layer.is_empty() {
        all.to_vec()
    } else {
        args.layer.iter().map(String::as_str).collect()
    };
    let report = maintain(&lake, &layers, &options)
        .await
        .map_err(vitalake::Error::from)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{:<44} {:>12} {:>12} {:>9}  z-order",
            "table", "files before", "files after", "vacuumed"
        );
        for table in &report {
            println!(
                "{:<44} {:>12} {:>12} {:>9}  {}{}",
                table.table,
                table.files_before,
                table.files_after,
                table.vacuumed,
                table.zorder.join(", "),
                table
                    .error
                    .as_deref()
                    .map(|e| format!("  FAILED: {e}"))
                    .unwrap_or_default()
            );
        }
    }
    let failed = report.iter().any(|t| t.error.is_some());
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `vitalake serve`: until Ctrl-C or SIGTERM.
async fn serve(config: &Config, args: cli::ServeArgs) -> anyhow::Result<ExitCode> {
    let lake = config.lake.open().map_err(vitalake::Error::from)?;
    let mut options = config.serve.clone();
    if let Some(listen) = args.listen {
        options.listen = listen;
    }
    let listener = vitalake::serve::bind(&options.listen)
        .await
        .map_err(vitalake::Error::from)?;
    let tls = options.tls_cert.is_some();
    let server = vitalake::serve::Server::new(lake, options, |var| std::env::var(var).ok())
        .await
        .map_err(vitalake::Error::from)?;
    let addr = listener.local_addr()?;
    eprintln!(
        "serving {} on {addr} ({}); Ctrl-C stops",
        config.lake.root,
        if tls { "TLS available" } else { "no TLS" }
    );
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(cancel_on_signal(stop.clone()));
    server.run(listener, stop.cancelled_owned()).await;
    Ok(ExitCode::SUCCESS)
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

/// A progress bar on a terminal; plain log lines otherwise.
fn progress_bar() -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .expect("valid template"),
    );
    Some(bar)
}

/// mimalloc gives freed memory back to the OS after 10 ms. A stream landing frees its batch's
/// parsed resources (hundreds of MB) and the next one, a second later, faulted every page in
/// again: that cost the stream a quarter of its throughput (BENCHMARKS.md, issue 5). For the
/// stream, freed memory is kept 3 s, longer than a landing; the other commands keep mimalloc's
/// default, which their peak-memory figures were measured with. `MIMALLOC_PURGE_DELAY` in the
/// environment still decides.
fn keep_freed_memory() {
    use std::ffi::{c_int, c_long};
    // `mi_option_purge_delay` in mimalloc v3's include/mimalloc.h (libmimalloc-sys 0.1.49), which
    // the `mimalloc` crate links; the call is skipped unless it reads the documented default, 10.
    const MI_OPTION_PURGE_DELAY: c_int = 15;
    unsafe extern "C" {
        fn mi_option_get(option: c_int) -> c_long;
        fn mi_option_set(option: c_int, value: c_long);
    }
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: both only read or write mimalloc's option table; any value is valid.
    unsafe {
        if mi_option_get(MI_OPTION_PURGE_DELAY) == 10 {
            mi_option_set(MI_OPTION_PURGE_DELAY, 3000);
        }
    }
}

fn init_tracing(verbose: u8) {
    // The Delta kernel logs an ERROR for every table it is asked to open before its first commit,
    // which is how new tables start here: not an error for our users. Its writer warns on every
    // commit to a table with a binary column (bronze event bodies) that it keeps no statistics
    // for it, which is what we want. It also warns on every replacing write whose key list it
    // does not use to skip files: `lake::in_list` asks for that.
    const DELTA_NOISE: &str = "buoyant_kernel::snapshot::builder=off,deltalake_core::writer::stats=error,deltalake_core::operations::write=error";
    let default = match verbose {
        0 => format!("vitalake=info,warn,{DELTA_NOISE}"),
        1 => format!("vitalake=debug,info,{DELTA_NOISE}"),
        _ => "trace".to_string(),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("VITALAKE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
