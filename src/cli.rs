//! The command line: clap definitions, and their conversion into the library's option types.
//! Library modules never see clap.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
    Ingest(IngestCommand),
    /// Make synthetic data.
    #[command(subcommand)]
    Generate(GenerateCommand),
    /// Check FHIR files against the structure and the profiles in profiles/, writing nothing.
    ///
    /// Runs exactly the checks `ingest fhir` runs: what this rejects, ingest quarantines with the same
    /// issues. Exit code 1 if any record has an error.
    #[command(
        after_help = "Example:\n  vitalake validate samples/drop\n  vitalake validate tests/data/invalid --json > outcomes.json"
    )]
    Validate(ValidateArgs),
    /// Work with SQL-on-FHIR ViewDefinitions.
    #[command(subcommand)]
    Views(ViewsCommand),
    /// Rebuild derived tables from the layer below.
    #[command(subcommand)]
    Refresh(RefreshCommand),
    /// Publish NDJSON events to an Event Hub (connection from EVENTHUBS_CONNECTION_STRING).
    ///
    /// Each line is one event; the patient (`subject`) is its partition key, so a patient's
    /// readings stay in order. Events go in batches under the hub's message size limit. The tool
    /// to replay samples and to load-test.
    #[command(
        after_help = "Example:\n  EVENTHUBS_CONNECTION_STRING='Endpoint=sb://...' vitalake send samples/stream/observations.ndjson --hub observations"
    )]
    Send(SendArgs),
    /// Land a stream of Observation / MedicationDispense events in bronze, quarantine and silver.
    ///
    /// Events are NDJSON lines (a resource or a Bundle of them per line). They are decoded and
    /// validated as `ingest fhir` does, and land in micro-batches, exactly once: a restarted stream
    /// skips what it already landed and finishes a batch a crash interrupted. Ctrl-C or SIGTERM
    /// lands the current batch, then stops.
    #[command(
        after_help = "Example:\n  vitalake stream --source file:samples/stream/observations.ndjson\n  vitalake stream --source file:samples/stream/observations.ndjson --rules anomaly-rules --alerts file:alerts.ndjson\n  EVENTHUBS_CONNECTION_STRING=... vitalake stream --source eventhubs:observations --consumer-group lake\n  vitalake stream --source file:/var/spool/bp.ndjson --follow --metrics 127.0.0.1:9464\n  gunzip -c readings.ndjson.gz | vitalake stream --source stdin --hub wearables"
    )]
    Stream(StreamArgs),
    /// The main job on the bundled samples, end to end: the FHIR drop, the observation stream
    /// through the default anomaly rules, the pharmacy stream, the databases if configured, the
    /// gold tables; then a summary. Run it again: nothing is added twice.
    #[command(after_help = "Example:\n  vitalake demo\n  vitalake demo --lake /tmp/demo-lake")]
    Demo(DemoArgs),
    /// Run one read-only SQL query over every table of the lake (bronze.*, silver.*, gold.*).
    ///
    /// Tables are named by their path: silver/fhir/blood_pressure is silver.blood_pressure,
    /// silver/ikhospital/doctors is silver.ikhospital_doctors, bronze/fhir/Patient is
    /// bronze.patient. `SHOW TABLES` lists them. Writes and DDL are refused.
    #[command(
        after_help = "Example:\n  vitalake query 'SHOW TABLES'\n  vitalake query 'SELECT rule_id, count(*) FROM silver.alerts GROUP BY rule_id'\n  vitalake query 'SELECT * FROM silver.blood_pressure LIMIT 5' --format csv"
    )]
    Query(QueryArgs),
    /// Anomaly rules (anomaly-rules/*.yaml): check them, run their tests, backtest them on silver.
    #[command(subcommand)]
    Rules(RulesCommand),
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
    Serve(ServeArgs),
    /// Compact the lake's tables (Z-ORDER the large ones), VACUUM old files, write checkpoints;
    /// report files before and after.
    ///
    /// Query results do not change. VACUUM deletes files no table version newer than the
    /// retention needs: a reader still on an older version (a long query, time travel) would
    /// fail, so a retention under 1 day needs --force. Z-ORDER columns: [maintain.zorder].
    #[command(
        after_help = "Example:\n  vitalake maintain\n  vitalake maintain --layer silver --retention 30d --json\n  vitalake maintain --retention 0h --force   # nothing reads older versions"
    )]
    Maintain(MaintainArgs),
}

#[derive(Debug, Args)]
pub struct MaintainArgs {
    /// VACUUM retention: 36h, 7d... (default: maintain.retention, 7d).
    #[arg(long, value_name = "DURATION")]
    pub retention: Option<String>,
    /// Allow a retention under 1 day.
    #[arg(long)]
    pub force: bool,
    /// Only these layers (bronze, silver, gold); default all.
    #[arg(long, value_name = "LAYER")]
    pub layer: Vec<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (default: serve.listen, 127.0.0.1:5433).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
}

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

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// One SQL statement (DataFusion's dialect, close to PostgreSQL).
    #[arg(value_name = "SQL")]
    pub sql: String,
    #[arg(long, value_enum, default_value_t = RowsFormat::Table)]
    pub format: RowsFormat,
    /// Write to this file instead of standard output (required for Parquet).
    #[arg(long, value_name = "PATH")]
    pub output: Option<PathBuf>,
}

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

#[derive(Debug, Args)]
pub struct SendArgs {
    /// An NDJSON file of events.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    #[arg(long, value_name = "HUB")]
    pub hub: String,
}

#[derive(Debug, Args)]
pub struct StreamArgs {
    /// `file:PATH` (NDJSON; a line's number is its sequence number), `stdin`, or `eventhubs:HUB`
    /// (connection from EVENTHUBS_CONNECTION_STRING).
    #[arg(long, value_name = "SOURCE")]
    pub source: String,
    /// The Event Hubs consumer group; processes on one group share the partitions.
    #[arg(long, value_name = "GROUP", default_value = "$Default")]
    pub consumer_group: String,
    /// With an Event Hubs source, where a partition that has no checkpoint yet starts: `earliest`
    /// (every event the hub still holds; the default), `latest` (only events sent from now on), or
    /// an enqueued time (RFC 3339, e.g. 2026-11-30T08:00:00Z). A checkpoint always wins.
    #[arg(long, value_name = "WHERE")]
    pub start: Option<vitalake::stream::event_hubs::StartFrom>,
    /// With a file source: wait for more lines at the end of the file, like `tail -f`.
    #[arg(long)]
    pub follow: bool,
    /// With a file or stdin source, the hub the events belong to: they land in
    /// bronze/eventhubs/<HUB>. An Event Hubs source lands in its own hub's table.
    #[arg(long, value_name = "HUB", default_value = "observations")]
    pub hub: String,
    /// A micro-batch closes after this many events ...
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub batch_events: usize,
    /// ... or this many milliseconds after its first event.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub batch_ms: u64,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Evaluate the anomaly rules in this folder on every reading as it arrives (reloaded when the
    /// folder changes or on SIGHUP).
    #[arg(long, value_name = "DIR")]
    pub rules: Option<PathBuf>,
    /// Where alerts go, besides silver/alerts: `stdout`, `file:PATH` (CloudEvents, one per line),
    /// or `eventhubs:HUB`.
    #[arg(
        long,
        value_name = "SINK",
        default_value = "stdout",
        requires = "rules"
    )]
    pub alerts: String,
    /// How late (in effective time) a reading may arrive and still be evaluated in order; later
    /// ones are evaluated as backfill: recorded, never sent.
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    pub lateness: String,
    /// Print the final report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Files or folders, local or abfss://.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<String>,
    /// Print a FHIR OperationOutcome per record with findings, as JSON.
    #[arg(long)]
    pub json: bool,
}

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
    pub fn format(self) -> vitalake::views::output::OutputFormat {
        use vitalake::views::output::OutputFormat;
        match self {
            RowsFormat::Table => OutputFormat::Table,
            RowsFormat::Csv => OutputFormat::Csv,
            RowsFormat::Json => OutputFormat::Json,
            RowsFormat::Parquet => OutputFormat::Parquet,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum RefreshCommand {
    /// Rebuild the silver tables from bronze: every view in the views folder, or one.
    ///
    /// Gives the same tables as the incremental path of `ingest fhir`; use it after changing a view.
    #[command(
        after_help = "Example:\n  vitalake refresh silver\n  vitalake refresh silver --view blood_pressure"
    )]
    Silver(RefreshSilverArgs),
    /// Rebuild the gold tables: one SQL file each in profiles/gold/ (built-in ones if the folder is
    /// missing), run over the lake, each result replacing its table in one commit.
    #[command(
        after_help = "Example:\n  vitalake refresh gold\n  vitalake refresh gold patient_bp_daily\n  vitalake refresh gold --definitions my-gold/"
    )]
    Gold(RefreshGoldArgs),
}

#[derive(Debug, Args)]
pub struct RefreshGoldArgs {
    /// Only this table.
    #[arg(value_name = "NAME")]
    pub name: Option<String>,
    /// The folder of gold SQL files.
    #[arg(long, value_name = "DIR", default_value = "profiles/gold")]
    pub definitions: PathBuf,
    /// Recompute every table from scratch, even those that can be refreshed incrementally.
    #[arg(long)]
    pub full: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RefreshSilverArgs {
    /// Only this view (its `name`).
    #[arg(long, value_name = "NAME")]
    pub view: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

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
