//! `vitalake generate fhir | stream`: deterministic synthetic data.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum GenerateCommand {
    /// Write a deterministic synthetic FHIR drop: patients from eight countries with several
    /// versions, blood pressure and heart rate Observations, MedicationDispenses.
    #[command(
        after_help = "Example:\n  vitalake generate fhir --patients 100 --seed 42 --out /tmp/drop"
    )]
    Fhir(GenerateFhirArgs),
    /// Write a deterministic day of wearable readings for `vitalake stream`: noise, late and
    /// duplicated events, and injected episodes (listed in episodes.json) for the anomaly rules.
    #[command(
        after_help = "Example:\n  vitalake generate stream --patients 24 --hours 24 --seed 2026 --out samples/stream"
    )]
    Stream(GenerateStreamArgs),
}

#[derive(Debug, Args)]
pub struct GenerateStreamArgs {
    /// Patients p<seed in hex>-00000 ... (the ids `generate fhir` gives with the same seed).
    #[arg(long, default_value_t = 24)]
    pub patients: usize,
    #[arg(long, default_value_t = 24)]
    pub hours: u32,
    #[arg(long, default_value_t = 2026)]
    pub seed: u64,
    /// Output folder (created): observations.ndjson, pharmacy.ndjson, episodes.json.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct GenerateFhirArgs {
    #[arg(long, default_value_t = 100)]
    pub patients: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Output folder (created).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Bundles, NDJSON, or both.
    #[arg(long, value_enum, default_value_t = OutputFormat::Both)]
    pub format: OutputFormat,
    /// Readings per patient (blood pressure; heart rate comes with each).
    #[arg(long, default_value_t = 6)]
    pub readings: usize,
    /// Add a handful of invalid records, for trying quarantine.
    #[arg(long)]
    pub invalid: bool,
    /// gzip the NDJSON files.
    #[arg(long)]
    pub gzip: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum OutputFormat {
    Bundle,
    Ndjson,
    Both,
}

impl GenerateFhirArgs {
    pub fn options(&self) -> vitalake::generate::GenerateOptions {
        vitalake::generate::GenerateOptions {
            patients: self.patients,
            seed: self.seed,
            readings_per_patient: self.readings,
            bundles: matches!(self.format, OutputFormat::Bundle | OutputFormat::Both),
            ndjson: matches!(self.format, OutputFormat::Ndjson | OutputFormat::Both),
            invalid: self.invalid,
            gzip: self.gzip,
        }
    }
}

pub fn run(command: GenerateCommand) -> anyhow::Result<ExitCode> {
    let (out, summary) = match command {
        GenerateCommand::Fhir(args) => (
            args.out.clone(),
            vitalake::generate::write_drop(&args.out, &args.options()).map(|s| s.to_string()),
        ),
        GenerateCommand::Stream(args) => {
            let options = vitalake::generate::stream::StreamOptions {
                patients: args.patients,
                hours: args.hours,
                seed: args.seed,
            };
            (
                args.out.clone(),
                vitalake::generate::stream::write_stream(&args.out, &options)
                    .map(|s| s.to_string()),
            )
        }
    };
    let summary = summary
        .map_err(vitalake::Error::from)
        .with_context(|| format!("generating into {}", out.display()))?;
    println!("{summary}");
    Ok(ExitCode::SUCCESS)
}
