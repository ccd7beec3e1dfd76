//! `vitalake views run`: one ViewDefinition over files or bronze, rows to stdout or a file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use deltalake::arrow::record_batch::RecordBatch;
use vitalake::config::Config;
use vitalake::views::View;
use vitalake::views::output::OutputFormat;

use super::{exit_if_failed, open_lake};

#[derive(Debug, Subcommand)]
pub enum ViewsCommand {
    /// Run one ViewDefinition over FHIR files (or the lake's bronze table) and print the rows.
    ///
    /// The tool for writing a view: nothing is written to the lake. Every column of every row is
    /// printed, with values as the resources write them (JSON: one object per line, null columns
    /// as null); Parquet holds silver's typed columns. A resource the view cannot evaluate is
    /// reported on stderr with the failing expression, and the exit code is 1.
    #[command(
        after_help = "Example:\n  vitalake views run --view profiles/views/blood_pressure.json samples/drop\n  vitalake views run --view my_view.json --bronze --format csv > rows.csv\n  vitalake views run --view my_view.json drop/ --format parquet --output rows.parquet"
    )]
    Run(ViewsRunArgs),
}

#[derive(Debug, Args)]
pub struct ViewsRunArgs {
    /// The ViewDefinition (JSON).
    #[arg(long, value_name = "FILE")]
    pub view: PathBuf,
    /// FHIR files or folders: resources, Bundles, NDJSON, optionally gzip.
    #[arg(value_name = "INPUT", required_unless_present = "bronze")]
    pub inputs: Vec<PathBuf>,
    /// Read every version in the lake's bronze table of the view's resource type instead of files.
    #[arg(long, conflicts_with = "inputs")]
    pub bronze: bool,
    #[arg(long, value_enum, default_value_t = RowsFormat::Table)]
    pub format: RowsFormat,
    /// Write to this file instead of standard output (required for Parquet).
    #[arg(long, value_name = "PATH")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RowsFormat {
    Table,
    Csv,
    Json,
    Parquet,
}

impl RowsFormat {
    pub fn format(self) -> OutputFormat {
        match self {
            RowsFormat::Table => OutputFormat::Table,
            RowsFormat::Csv => OutputFormat::Csv,
            RowsFormat::Json => OutputFormat::Json,
            RowsFormat::Parquet => OutputFormat::Parquet,
        }
    }
}

pub async fn run(config: &Config, command: ViewsCommand) -> anyhow::Result<ExitCode> {
    let ViewsCommand::Run(args) = command;
    let view = View::load(&args.view)?;
    let mut failures = 0usize;
    let resources = if args.bronze {
        let lake = open_lake(config)?;
        vitalake::ingest::silver::bronze_resources(&lake, view.resource())
            .await
            .map_err(vitalake::Error::from)?
    } else {
        let (resources, problems) = vitalake::views::inputs::read_resources(&args.inputs)?;
        problems.iter().for_each(|p| eprintln!("{p}"));
        failures += problems.len();
        resources
    };
    // Parquet is typed like silver; the other formats print values as the resources write them.
    let format = args.format.format();
    let typed = format == OutputFormat::Parquet;
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
    Ok(exit_if_failed(failures))
}

/// Rows to `output`, or to standard output.
pub fn write_rows(
    batches: &[RecordBatch],
    format: OutputFormat,
    output: Option<&Path>,
) -> anyhow::Result<()> {
    vitalake::views::output::write(batches, format, &mut open_output(output)?, output)?;
    Ok(())
}

/// `output`, created, or standard output.
fn open_output(output: Option<&Path>) -> anyhow::Result<Box<dyn std::io::Write>> {
    Ok(match output {
        Some(path) => Box::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    })
}
