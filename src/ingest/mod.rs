//! Ingestion: inputs into bronze and quarantine, exactly once per file.
//!
//! - [`source`]: listing, hashing and opening the files of a drop (local or `abfss://`).
//! - [`produce`]: decoding files into chunks on a plain thread, in parallel.
//! - [`tables`]: the Arrow shapes of bronze, quarantine and the ingest log.
//! - [`runs`]: run bookkeeping: skipping known files, rolling back interrupted runs.
//! - [`silver`]: bronze flattened by the ViewDefinitions into silver, latest version wins.
//! - [`fhir_server`]: FHIR Bulk Data `$export` from a FHIR server, landed like a drop.
//! - [`report`]: the run report.
//!
//! [`ingest_fhir`] ties them together: roll back what an interrupted run left, list the drop,
//! decode on one thread while this task commits chunks to Delta, then mark the run finished.

pub mod check;
pub mod db;
pub mod fhir_server;
pub mod prepared;
pub mod produce;
pub mod report;
pub mod runs;
pub mod silver;
pub mod source;
pub mod stream;
pub mod tables;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use deltalake::DeltaTable;
use deltalake::arrow::record_batch::RecordBatch;
use tokio::sync::mpsc;

use crate::fhir::DecodeOptions;
use crate::lake::{AppendBuilder, Lake, LakeError, Lease};
use crate::validate::Check;

pub use report::IngestReport;

use produce::{PreparedChunk, ProduceContext};
use tables::{INGEST_LOG_TABLE, QUARANTINE_TABLE, bronze_fhir_table, ingest_log_batch};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("cannot read input {path}: {source}")]
    Input {
        path: String,
        source: std::io::Error,
    },
    #[error("landing folder {uri}: {problem}")]
    Remote {
        uri: String,
        problem: source::RemoteProblem,
    },
    /// A stream's source, checkpoints or alert sink failed (Event Hubs unreachable, refused, or a
    /// bad `--source`/`--alerts` spec).
    #[error(transparent)]
    Stream(crate::stream::StreamError),
    /// Boxed: Delta's errors are large, and this one travels through every ingest `Result`.
    #[error(transparent)]
    Lake(Box<LakeError>),
    #[error(transparent)]
    Lease(#[from] crate::lake::LeaseError),
    #[error("decoding stopped unexpectedly: {0}")]
    Decoder(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Views(#[from] crate::views::ViewError),
    #[error("no view named '{0}' in the silver views")]
    UnknownView(String),
    /// A bronze row whose raw JSON does not parse: the table was written by something else.
    #[error("{table} holds a row that is not JSON: {source}")]
    CorruptBronze {
        table: String,
        source: serde_json::Error,
    },
    #[error("writing the stream checkpoint: {0}")]
    Checkpoint(azure_core::Error),
    /// Boxed like `Lake`: a FHIR server's errors carry URLs and messages.
    #[error("FHIR server export: {0}")]
    FhirServer(Box<fhir_server::FhirServerError>),
}

impl IngestError {
    /// See [`LakeError::is_concurrent_transaction`].
    pub fn is_concurrent_transaction(&self) -> bool {
        matches!(self, IngestError::Lake(e) if e.is_concurrent_transaction())
    }
}

impl From<LakeError> for IngestError {
    fn from(err: LakeError) -> Self {
        IngestError::Lake(Box::new(err))
    }
}

/// Options for one `ingest fhir` run.
#[derive(Clone)]
pub struct IngestOptions {
    pub decode: DecodeOptions,
    pub chunk_records: usize,
    pub chunk_bytes: usize,
    /// Checks run on every structurally valid resource (profile validation plugs in here).
    pub checks: Vec<Arc<dyn Check>>,
    /// Called with bytes done; the total is given by `on_total` first.
    pub progress: Arc<dyn Fn(u64) + Send + Sync>,
    pub on_total: Arc<dyn Fn(u64) + Send + Sync>,
    /// The folder of silver ViewDefinitions.
    pub views: std::path::PathBuf,
}

impl IngestOptions {
    pub fn from_config(config: &crate::config::IngestConfig) -> Self {
        IngestOptions {
            // Whether the parse is kept is the producer's business (see `ProduceContext::new`).
            decode: DecodeOptions {
                max_resource_bytes: config.max_resource_bytes,
                ..DecodeOptions::default()
            },
            chunk_records: config.chunk_records.max(1),
            chunk_bytes: config.chunk_bytes.max(1),
            checks: Vec::new(),
            views: config.views.clone().into(),
            progress: Arc::new(|_| {}),
            on_total: Arc::new(|_| {}),
        }
    }
}

/// Ingests the FHIR files under `paths` into `lake`.
pub async fn ingest_fhir(
    lake: &Lake,
    paths: &[String],
    options: IngestOptions,
) -> Result<IngestReport, IngestError> {
    let files = source::list(paths).await?;
    ingest_files(lake, files, options).await
}

/// Ingests `files` into `lake`: the one landing path of file drops and FHIR server exports.
pub async fn ingest_files(
    lake: &Lake,
    files: Vec<source::SourceFile>,
    options: IngestOptions,
) -> Result<IngestReport, IngestError> {
    let lease = Lease::acquire(lake, INGEST_LEASE, "ingest").await?;
    let landed = land_files(lake, files, options, &lease).await;
    lease.release().await;
    landed
}

/// The lease of `ingest fhir` and `ingest fhir-server` runs (`ingest db` has its own: it rolls
/// back nothing of theirs).
pub const INGEST_LEASE: &str = ".vitalake-ingest.lock";

async fn land_files(
    lake: &Lake,
    files: Vec<source::SourceFile>,
    options: IngestOptions,
    lease: &Lease,
) -> Result<IngestReport, IngestError> {
    let started = Instant::now();
    let views = silver::SilverViews::load(&options.views)?;
    let rolled_back_runs = runs::roll_back_unfinished(lake).await?;
    if !rolled_back_runs.is_empty() {
        // An interrupted run may have merged part of its rows into silver: rebuild it from bronze.
        let rebuilt = silver::refresh(lake, &views, None).await?;
        tracing::info!(
            tables = rebuilt.tables.len(),
            "silver rebuilt after rolling back an interrupted run"
        );
        runs::mark_rolled_back(lake, &rolled_back_runs).await?;
    }
    silver::ensure_view_tables(lake, &views).await?;
    let known = runs::ingested_hashes(lake).await?;
    (options.on_total)(files.iter().map(|f| f.size).sum());

    let batch_id = uuid::Uuid::now_v7().to_string();
    runs::mark(lake, &batch_id, "started", None).await?;
    tracing::info!(batch_id, files = files.len(), "ingest run started");

    let ctx = ProduceContext::new(&options, views.clone(), &batch_id);
    let (tx, rx) = mpsc::channel(1);
    let producer = tokio::task::spawn_blocking(move || produce::produce(files, known, &ctx, tx));
    let written = write_chunks(lake, &views, rx, &batch_id, lease).await;
    let stats = producer.await?;
    let written = written?;

    let duration = started.elapsed().as_secs_f64().max(1e-9);
    let resources: u64 = stats.resources_by_type.values().sum();
    let report = IngestReport {
        batch_id: batch_id.clone(),
        lake: lake.root().to_string(),
        rolled_back_runs,
        bronze_rows: written.bronze_rows,
        silver_rows: written.silver_rows,
        quarantine_rows: written.quarantine_rows,
        commits: written.commits,
        duration_secs: duration,
        resources_per_sec: (resources + stats.quarantined) as f64 / duration,
        mb_per_sec: stats.bytes_read as f64 / 1e6 / duration,
        stats,
    };
    let summary = serde_json::to_string(&report).ok();
    lease.ensure_held()?;
    runs::mark(lake, &batch_id, "finished", summary).await?;
    tracing::info!(
        batch_id,
        bronze_rows = report.bronze_rows,
        quarantined = report.quarantine_rows,
        skipped = report.stats.files_skipped.len(),
        "ingest run finished"
    );
    Ok(report)
}

#[derive(Default)]
struct Written {
    bronze_rows: u64,
    silver_rows: u64,
    quarantine_rows: u64,
    commits: u64,
}

impl std::ops::AddAssign for Written {
    fn add_assign(&mut self, other: Written) {
        self.bronze_rows += other.bronze_rows;
        self.silver_rows += other.silver_rows;
        self.quarantine_rows += other.quarantine_rows;
        self.commits += other.commits;
    }
}

/// Commits each chunk: bronze tables and quarantine, then the ingest-log rows of the files the
/// chunk completes, so a file is logged only once all its records are in; silver at the same
/// time, except the types whose merge reads bronze (patients: their history is recomputed from
/// every version), merged once the chunk's bronze is in. Nothing needs silver to follow bronze
/// otherwise: an interrupted run is rolled back and silver rebuilt from bronze.
async fn write_chunks(
    lake: &Lake,
    views: &silver::SilverViews,
    mut rx: mpsc::Receiver<PreparedChunk>,
    batch_id: &str,
    lease: &Lease,
) -> Result<Written, IngestError> {
    let mut tables: HashMap<String, DeltaTable> = HashMap::new();
    let mut silver = silver::SilverWriter::new(lake, views.clone(), batch_id);
    silver.one_replacing_write_at_a_time();
    let mut written = Written::default();
    while let Some(chunk) = rx.recv().await {
        lease.ensure_held()?;
        let commit_started = Instant::now();
        let (after_bronze, alongside): (Vec<_>, Vec<_>) = chunk
            .silver
            .into_iter()
            .partition(|(resource_type, _)| silver.reads_bronze(resource_type));
        let mut appends = chunk.bronze;
        if let Some(quarantine) = chunk.quarantine {
            appends.push((QUARANTINE_TABLE.to_string(), quarantine));
        }
        let bronze = async {
            let mut written = append_all(lake, &mut tables, appends, batch_id).await?;
            // The log last: a file is logged once all its records are in.
            if !chunk.files.is_empty() {
                let at = chrono::Utc::now().timestamp_micros();
                let log = ingest_log_batch(&chunk.files, batch_id, at);
                let appends = vec![(INGEST_LOG_TABLE.to_string(), log)];
                written += append_all(lake, &mut tables, appends, batch_id).await?;
            }
            Ok::<_, IngestError>(written)
        };
        // Both run to their end (as `AppendBuilder::execute_all` does) before a failure is raised.
        let (bronze, merged) = tokio::join!(bronze, merge_all(&mut silver, alongside));
        written += bronze?;
        written += merged?;
        written += merge_all(&mut silver, after_bronze).await?;
        tracing::debug!(
            batch_id,
            ms = commit_started.elapsed().as_millis() as u64,
            "chunk committed"
        );
    }
    Ok(written)
}

/// Merges a chunk's resources, by type, into silver.
async fn merge_all(
    silver: &mut silver::SilverWriter<'_>,
    resources: Vec<(String, Vec<silver::BronzeResource>)>,
) -> Result<Written, IngestError> {
    let merged = silver.merge_chunk(resources).await?;
    Ok(Written {
        silver_rows: merged.rows,
        quarantine_rows: merged.quarantined,
        commits: merged.commits,
        ..Written::default()
    })
}

/// Appends each `(table, batch)` of a chunk at the same time (bronze of each type, quarantine and
/// the ingest log are independent tables), keeping the tables open in `tables` for the next
/// chunk (see [`AppendBuilder::execute_all`]).
async fn append_all(
    lake: &Lake,
    tables: &mut HashMap<String, DeltaTable>,
    appends: Vec<(String, RecordBatch)>,
    batch_id: &str,
) -> Result<Written, IngestError> {
    let mut written = Written::default();
    let mut names = Vec::with_capacity(appends.len());
    let mut builders = Vec::with_capacity(appends.len());
    for (name, batch) in appends {
        let path = match name.as_str() {
            QUARANTINE_TABLE | INGEST_LOG_TABLE => name.clone(),
            resource_type => bronze_fhir_table(resource_type),
        };
        let table = match tables.remove(&path) {
            Some(table) => table,
            None => lake.table(&path).await?,
        };
        builders.push(
            AppendBuilder::new(table, path.clone(), vec![batch])
                .with_metadata("vitalake.batch_id", batch_id)
                .with_metadata("vitalake.operation", "ingest fhir")
                .with_schema_merge()
                .without_dictionary(&["raw", "resource_id", "full_url"])
                .without_statistics(&["raw"]),
        );
        names.push((name, path));
    }
    let appended = AppendBuilder::execute_all(builders).await?;
    for ((name, path), (table, metrics)) in names.into_iter().zip(appended) {
        match name.as_str() {
            QUARANTINE_TABLE => written.quarantine_rows += metrics.rows as u64,
            INGEST_LOG_TABLE => {}
            _ => written.bronze_rows += metrics.rows as u64,
        }
        written.commits += 1;
        tables.insert(path, table);
    }
    Ok(written)
}
