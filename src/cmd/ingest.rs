//! `vitalake ingest fhir | db | fhir-server | terminology`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Subcommand};
use vitalake::config::Config;

use super::{BYTES_BAR, ingest_options, open_lake, print_report, progress_bar};

#[derive(Debug, Subcommand)]
pub enum IngestCommand {
    /// Ingest FHIR R4 files (resources, Bundles of any type, NDJSON; optionally .gz) into bronze.
    ///
    /// Folders are read recursively. Files already ingested (same SHA-256) are skipped. Invalid
    /// records go to silver/quarantine with their reasons.
    #[command(
        after_help = "Example:\n  vitalake ingest fhir samples/drop ../more/Patient.ndjson.gz --lake ./lake\n  vitalake ingest fhir abfss://landing@myaccount.dfs.core.windows.net/2026-11-23 --json"
    )]
    Fhir(IngestFhirArgs),
    /// Extract every table of MySQL/MariaDB and PostgreSQL databases into bronze and silver.
    ///
    /// Sources come from `[[db.sources]]` in vitalake.toml and from `--source`. Passwords come from
    /// the environment (`MYSQL_PWD`, `PGPASSWORD`, or a source's `password_env`), never from logs.
    /// Each table is read incrementally when it has a cursor (an `updated_at`-like timestamp or an
    /// auto-increment key) and silver already holds rows; `--full` re-reads everything and marks
    /// rows deleted at the source.
    #[command(
        after_help = "Example:\n  MYSQL_PWD=... vitalake ingest db --source mysql://vitalake@127.0.0.1:3306/ikhospital\n  PGPASSWORD=... vitalake ingest db --source postgres://vitalake@127.0.0.1:5432/ikhospital \\\n      --expectations samples/ikhospital/expectations.toml --full --json"
    )]
    Db(IngestDbArgs),
    /// Export from a FHIR server (FHIR Bulk Data `$export`) into bronze and silver, incrementally.
    ///
    /// Kicks off the export, polls it, downloads every file, lands them as `ingest fhir` lands a
    /// drop (same checks, quarantine, exactly once by file hash) and deletes the job. The next run
    /// asks only for what changed since this export (`_since` its transactionTime, kept in
    /// bronze/fhir_exports). A run that is stopped resumes the same job. Sign-in: `--auth smart`
    /// (SMART Backend Services: VITALAKE_FHIR_CLIENT_ID, VITALAKE_FHIR_KEY_ID and
    /// VITALAKE_FHIR_PRIVATE_KEY_FILE, an RSA or P-384 PEM key) or `--auth entra` (Azure Health
    /// Data Services, with the Azure identity of the environment).
    #[command(
        after_help = "Example:\n  vitalake ingest fhir-server https://hapi.example.org/fhir --type Patient,Encounter,Observation\n  VITALAKE_FHIR_CLIENT_ID=lake VITALAKE_FHIR_KEY_ID=k1 VITALAKE_FHIR_PRIVATE_KEY_FILE=/etc/vitalake/key.pem \\\n      vitalake ingest fhir-server https://ehr.example.org/fhir/r4 --group icu-cohort --auth smart --json\n  vitalake ingest fhir-server https://ws-fhir.fhir.azurehealthcareapis.com --auth entra --full"
    )]
    FhirServer(IngestFhirServerArgs),
    /// Load code tables into silver/terminology/concepts and silver/terminology/maps: FHIR
    /// CodeSystems and ConceptMaps (JSON), or CSV files `system,code,display[,parent]`.
    ///
    /// Gold SQL joins them (a condition's ICD-10-CM chapter, a SNOMED CT to ICD-10-CM map where one
    /// is loaded, the display of a code that came without one). Loading a file again replaces what
    /// it loaded before. `profiles/terminology/icd-10-cm-chapters.csv` ships the ICD-10-CM chapters
    /// (public domain); SNOMED CT content is licensed and not shipped.
    #[command(
        after_help = "Example:\n  vitalake ingest terminology profiles/terminology/icd-10-cm-chapters.csv\n  vitalake ingest terminology my-snomed-to-icd10-ConceptMap.json --json"
    )]
    Terminology(IngestTerminologyArgs),
}

#[derive(Debug, Args)]
pub struct IngestTerminologyArgs {
    /// CodeSystem or ConceptMap JSON files, or CSV code tables.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct IngestFhirServerArgs {
    /// The server's FHIR base URL.
    #[arg(value_name = "URL")]
    pub url: url::Url,
    /// Export every patient's compartment (`[base]/Patient/$export`) rather than every resource.
    #[arg(long, conflicts_with = "group")]
    pub patient: bool,
    /// Export the compartments of this Group's members (`[base]/Group/ID/$export`).
    #[arg(long, value_name = "ID")]
    pub group: Option<String>,
    /// Only these resource types (`_type`): comma-separated or repeated.
    #[arg(long = "type", value_name = "TYPE", value_delimiter = ',')]
    pub types: Vec<String>,
    /// Ask for what changed since this instant (RFC 3339) instead of since the last export.
    #[arg(long, value_name = "INSTANT", conflicts_with = "full")]
    pub since: Option<String>,
    /// Ask for everything, not only what changed since the last complete export.
    #[arg(long)]
    pub full: bool,
    /// How to sign in: none, smart or entra.
    #[arg(long, value_name = "HOW", default_value = "none")]
    pub auth: vitalake::ingest::fhir_server::AuthKind,
    /// The SMART scope asked for with `--auth smart`.
    #[arg(long, value_name = "SCOPE", default_value = "system/*.read")]
    pub scope: String,
    /// Files downloaded at once.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub parallel: usize,
    /// Where files wait between download and landing (default: the system's temporary folder).
    /// It needs room for the whole export.
    #[arg(long, value_name = "DIR")]
    pub staging: Option<PathBuf>,
    /// Print the run report as JSON.
    #[arg(long)]
    pub json: bool,
}

impl IngestFhirServerArgs {
    /// The library's options; an `Err` is a usage problem, for exit code 2.
    pub fn options(
        &self,
        ingest: vitalake::ingest::IngestOptions,
    ) -> Result<vitalake::ingest::fhir_server::FhirServerOptions, String> {
        use vitalake::ingest::fhir_server::{self as fhir_server, Auth, ExportLevel};
        if !matches!(self.url.scheme(), "http" | "https") {
            return Err(format!(
                "{}: a FHIR base URL is http:// or https://",
                self.url
            ));
        }
        if let Some(since) = &self.since {
            chrono::DateTime::parse_from_rfc3339(since).map_err(|_| {
                format!("--since '{since}': an instant such as 2026-11-30T08:00:00Z")
            })?;
        }
        let level = match (&self.group, self.patient) {
            (Some(group), _) => ExportLevel::Group(group.clone()),
            (None, true) => ExportLevel::Patient,
            (None, false) => ExportLevel::System,
        };
        let auth = Auth::from_env(self.auth, &self.url, &self.scope).map_err(|e| e.to_string())?;
        Ok(fhir_server::FhirServerOptions {
            base: self.url.clone(),
            level,
            types: self
                .types
                .iter()
                .filter(|t| !t.is_empty())
                .cloned()
                .collect(),
            since: self.since.clone(),
            full: self.full,
            auth: std::sync::Arc::new(auth),
            retry: fhir_server::retry_policy_from_env(),
            parallel_downloads: self.parallel.max(1),
            staging: self.staging.clone(),
            ingest,
            progress: std::sync::Arc::new(|_| {}),
        })
    }
}

#[derive(Debug, Args)]
pub struct IngestDbArgs {
    /// A source database URL (repeatable), added to those in vitalake.toml.
    #[arg(long = "source", value_name = "URL")]
    pub sources: Vec<String>,
    /// Only tables matching this pattern (`*`, `?`; repeatable), for the `--source` URLs.
    #[arg(long, value_name = "PATTERN")]
    pub include: Vec<String>,
    /// Leave out tables matching this pattern (repeatable), for the `--source` URLs.
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Extract views too, for the `--source` URLs.
    #[arg(long)]
    pub views: bool,
    /// Re-extract every table whole and mark rows gone at the source as deleted.
    #[arg(long)]
    pub full: bool,
    /// A TOML file of data-quality expectations (overrides `db.expectations`).
    #[arg(long, value_name = "FILE")]
    pub expectations: Option<PathBuf>,
    /// Print the run report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct IngestFhirArgs {
    /// Files or folders, local or abfss://.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<String>,
    /// Print the run report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(config: &Config, command: IngestCommand) -> anyhow::Result<ExitCode> {
    match command {
        IngestCommand::Fhir(args) => fhir(config, args).await,
        IngestCommand::Db(args) => db(config, args).await,
        IngestCommand::FhirServer(args) => fhir_server(config, args).await,
        IngestCommand::Terminology(args) => {
            let lake = open_lake(config)?;
            let files: Vec<&std::path::Path> = args.files.iter().map(|f| f.as_path()).collect();
            let report = vitalake::terminology::load(&lake, &files)
                .await
                .map_err(vitalake::Error::from)?;
            print_report(&report, args.json, true)
        }
    }
}

/// `vitalake ingest fhir`: files and folders, with a bar of bytes read on a terminal.
async fn fhir(config: &Config, args: IngestFhirArgs) -> anyhow::Result<ExitCode> {
    let lake = open_lake(config)?;
    let mut options = ingest_options(config)?;
    let bar = progress_bar(BYTES_BAR);
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

/// `vitalake ingest db`: the configured sources plus `--source` URLs, then the report.
async fn db(config: &Config, args: IngestDbArgs) -> anyhow::Result<ExitCode> {
    use vitalake::ingest::db::{DbOptions, SourceConfig, expectations};
    let lake = open_lake(config)?;
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
    let expectations_file = args
        .expectations
        .or_else(|| config.db.expectations.as_ref().map(PathBuf::from));
    if let Some(path) = expectations_file {
        options.expectations = expectations::load(&path).map_err(vitalake::Error::from)?;
    }
    let bar = progress_bar("{spinner} [{elapsed_precise}] {msg} {pos} rows {per_sec}");
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
async fn fhir_server(config: &Config, args: IngestFhirServerArgs) -> anyhow::Result<ExitCode> {
    use vitalake::ingest::fhir_server::ExportProgress;
    let mut options = match args.options(ingest_options(config)?) {
        Ok(options) => options,
        Err(problem) => {
            eprintln!("error: {problem}");
            return Ok(ExitCode::from(2));
        }
    };
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
    let lake = open_lake(config)?;
    let report = vitalake::ingest::fhir_server::ingest_fhir_server(&lake, options)
        .await
        .map_err(vitalake::Error::from)?;
    print_report(&report, args.json, report.success())
}
