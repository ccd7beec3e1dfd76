//! `vitalake ingest fhir-server`: FHIR Bulk Data `$export` from a FHIR server into the same bronze,
//! silver and quarantine as a file drop.
//!
//! - [`client`]: the HTTP conversation (kick-off, polls, manifest, downloads, delete) and retries.
//! - [`auth`]: signing in (none, SMART Backend Services, Microsoft Entra ID).
//! - [`jobs`]: `bronze/fhir_exports`, the lake's record of each job, which makes runs resumable
//!   and exports incremental.
//!
//! A run: resume the export's pending job if the lake records one, else kick off a new one asking
//! `_since` the last complete export's `transactionTime`; poll until the manifest; download every
//! file (output, deleted and error files) into a staging folder; land them through
//! [`super::ingest_files`], exactly once by file hash; record the export complete; delete the job.
//! A run killed at any point resumes the same job (its files land once: their hashes are known)
//! or, when the server has forgotten it, starts again from the same `_since`.

pub mod auth;
pub mod client;
pub mod jobs;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;
use url::Url;

use super::source::{Format, SourceFile};
use super::{IngestError, IngestOptions, IngestReport};
use crate::lake::{Lake, Lease};
use client::{Manifest, OutputFile, Server, Status};
use jobs::ExportEvent;

pub use auth::{Auth, AuthKind};
pub use client::RetryPolicy;

#[derive(Debug, thiserror::Error)]
pub enum FhirServerError {
    /// Our side is not set up to talk to the server (usage, environment, key): exit code 2.
    #[error("{0}")]
    Setup(String),
    #[error("signing in to the FHIR server: {0}")]
    Auth(String),
    #[error("{url}: {reason}")]
    Http { url: String, reason: String },
    #[error("{url} answered {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url} does not follow the Bulk Data specification: {reason}")]
    Protocol { url: String, reason: String },
    #[error("the export job failed on the server ({status_url}): {message}")]
    JobFailed { status_url: String, message: String },
    #[error("writing the download {path}: {source}")]
    Download {
        path: String,
        source: std::io::Error,
    },
}

/// Which `$export` operation to call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportLevel {
    /// `[base]/$export`: every resource.
    System,
    /// `[base]/Patient/$export`: every patient's compartment.
    Patient,
    /// `[base]/Group/ID/$export`: the compartments of the group's members.
    Group(String),
}

impl ExportLevel {
    fn path(&self) -> String {
        match self {
            ExportLevel::System => "$export".into(),
            ExportLevel::Patient => "Patient/$export".into(),
            ExportLevel::Group(id) => format!(
                "Group/{}/$export",
                percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC)
            ),
        }
    }
}

/// What one progress callback says; the CLI prints it on a terminal.
#[derive(Debug, Clone)]
pub enum ExportProgress {
    Accepted {
        status_url: String,
        resumed: bool,
    },
    Waiting {
        progress: Option<String>,
    },
    Downloaded {
        done: usize,
        total: usize,
        resource_type: String,
        bytes: u64,
    },
}

/// Options for one `ingest fhir-server` run.
#[derive(Clone)]
pub struct FhirServerOptions {
    /// The FHIR base URL.
    pub base: Url,
    pub level: ExportLevel,
    /// `_type`: only these resource types (all when empty).
    pub types: Vec<String>,
    /// `_since` to ask instead of the last complete export's `transactionTime`.
    pub since: Option<String>,
    /// Ask for everything, whatever earlier exports brought.
    pub full: bool,
    pub auth: Arc<Auth>,
    pub retry: RetryPolicy,
    /// Downloads at once.
    pub parallel_downloads: usize,
    /// Where files wait between download and landing (a temporary folder when `None`).
    pub staging: Option<PathBuf>,
    pub ingest: IngestOptions,
    pub progress: Arc<dyn Fn(ExportProgress) + Send + Sync>,
}

/// What one run did: the job, the files, and the landing's own report.
#[derive(Debug, Clone, Serialize)]
pub struct FhirServerReport {
    pub request_url: String,
    pub status_url: String,
    /// The job was one an earlier run had started.
    pub resumed: bool,
    /// The `_since` the job asked; `None` for a full export.
    pub since: Option<String>,
    pub transaction_time: String,
    pub output_files: usize,
    pub deleted_files: usize,
    pub error_files: usize,
    pub bytes_downloaded: u64,
    /// Issues in the server's error files, by `severity code`.
    pub server_issues: std::collections::BTreeMap<String, u64>,
    /// The job was deleted on the server once its files had landed.
    pub job_deleted: bool,
    pub ingest: IngestReport,
}

impl FhirServerReport {
    pub fn success(&self) -> bool {
        self.ingest.success()
    }
}

impl fmt::Display for FhirServerReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "ingest fhir-server  {}", self.request_url)?;
        writeln!(
            f,
            "  job {}{}",
            self.status_url,
            if self.resumed { "  (resumed)" } else { "" }
        )?;
        writeln!(
            f,
            "  since {}   transactionTime {}",
            self.since.as_deref().unwrap_or("(everything)"),
            self.transaction_time
        )?;
        writeln!(
            f,
            "  downloaded {} output, {} deleted and {} error files ({:.1} MB){}",
            self.output_files,
            self.deleted_files,
            self.error_files,
            self.bytes_downloaded as f64 / 1e6,
            if self.job_deleted {
                "; job deleted on the server"
            } else {
                ""
            }
        )?;
        if !self.server_issues.is_empty() {
            writeln!(
                f,
                "  the server's error files (kept in bronze/fhir/OperationOutcome):"
            )?;
            for (issue, n) in &self.server_issues {
                writeln!(f, "    {issue:<30} {n:>8}")?;
            }
        }
        write!(f, "{}", self.ingest)
    }
}

/// Runs one export from the server into `lake`.
pub async fn ingest_fhir_server(
    lake: &Lake,
    options: FhirServerOptions,
) -> Result<FhirServerReport, IngestError> {
    // One export bookkeeper per lake; the landing itself takes the ingest lease as well.
    let lease = Lease::acquire(lake, ".vitalake-fhir-export.lock", "ingest fhir-server").await?;
    let exported = export(lake, options).await;
    lease.release().await;
    exported
}

async fn export(lake: &Lake, options: FhirServerOptions) -> Result<FhirServerReport, IngestError> {
    let server = Server::new(
        options.base.clone(),
        options.auth.clone(),
        options.retry.clone(),
    )?;
    let export_key = export_key(&options);
    let state = jobs::state(lake, &export_key).await?;

    let mut last_complete = state.last_complete;
    let job = match state.pending {
        Some(pending) => {
            let job = resume(lake, &server, &options, pending).await?;
            if job.is_none() {
                // The server forgot the job; `resume` may just have recorded it complete, whose
                // transactionTime is then the next `_since`.
                last_complete = jobs::state(lake, &export_key).await?.last_complete;
            }
            job
        }
        None => None,
    };
    let (job, resumed) = match job {
        Some(job) => (job, true),
        None => {
            let since = match (&options.since, options.full) {
                (Some(since), _) => Some(since.clone()),
                (None, false) => last_complete,
                (None, true) => None,
            };
            (
                kick_off(lake, &server, &options, &export_key, since).await?,
                false,
            )
        }
    };
    let Job {
        event,
        status_url,
        manifest,
    } = job;

    let staging = match &options.staging {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .map_err(|source| IngestError::Input {
        path: "the download staging folder".into(),
        source,
    })?;
    let downloaded = download_all(&server, &manifest, staging.path(), &options).await?;
    jobs::record(
        lake,
        &ExportEvent {
            event: "downloaded".into(),
            transaction_time: Some(manifest.transaction_time.clone()),
            files: Some(downloaded.files.len() as i64),
            detail: Some(downloaded.hashes.join(",")),
            ..event.clone()
        },
    )
    .await?;

    let server_issues = server_issues(&downloaded.error_paths);
    let files = downloaded.files;
    let ingest = super::ingest_files(lake, files, options.ingest.clone()).await?;
    let job_deleted = if ingest.success() {
        jobs::record(
            lake,
            &ExportEvent {
                event: "complete".into(),
                transaction_time: Some(manifest.transaction_time.clone()),
                batch_id: Some(ingest.batch_id.clone()),
                files: Some(downloaded.hashes.len() as i64),
                ..event.clone()
            },
        )
        .await?;
        match server.delete(&status_url).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, "could not delete the export job; the server will expire it");
                false
            }
        }
    } else {
        // A file that could not be read is retried: the job stays pending for the next run.
        false
    };
    Ok(FhirServerReport {
        request_url: event.request_url,
        status_url: status_url.to_string(),
        resumed,
        since: event.since,
        transaction_time: manifest.transaction_time,
        output_files: manifest.output.len(),
        deleted_files: manifest.deleted.len(),
        error_files: manifest.error.len(),
        bytes_downloaded: downloaded.bytes,
        server_issues,
        job_deleted,
        ingest,
    })
}

/// One incremental feed: the server, the operation and the types asked for.
fn export_key(options: &FhirServerOptions) -> String {
    let mut types = options.types.clone();
    types.sort();
    format!(
        "{}|{}|{}",
        options.base.as_str().trim_end_matches('/'),
        options.level.path(),
        types.join(",")
    )
}

/// The kick-off URL with its parameters.
fn request_url(options: &FhirServerOptions, since: Option<&str>) -> Url {
    let mut url = client::join(&options.base, &options.level.path());
    {
        let mut query = url.query_pairs_mut();
        query.append_pair("_outputFormat", "application/fhir+ndjson");
        if !options.types.is_empty() {
            query.append_pair("_type", &options.types.join(","));
        }
        if let Some(since) = since {
            query.append_pair("_since", since);
        }
    }
    url
}

/// A job whose manifest is in hand.
struct Job {
    /// The `accepted` event that started it.
    event: ExportEvent,
    status_url: Url,
    manifest: Manifest,
}

async fn kick_off(
    lake: &Lake,
    server: &Server,
    options: &FhirServerOptions,
    export_key: &str,
    since: Option<String>,
) -> Result<Job, IngestError> {
    let request = request_url(options, since.as_deref());
    let status_url = server.kick_off(&request).await?;
    let event = ExportEvent {
        export_key: export_key.to_string(),
        event: "accepted".into(),
        request_url: request.to_string(),
        status_url: Some(status_url.to_string()),
        since,
        ..ExportEvent::default()
    };
    jobs::record(lake, &event).await?;
    tracing::info!(since = event.since.as_deref(), "export job accepted");
    (options.progress)(ExportProgress::Accepted {
        status_url: status_url.to_string(),
        resumed: false,
    });
    match wait_for(lake, server, &event, &status_url, options).await? {
        Some(manifest) => Ok(Job {
            event,
            status_url,
            manifest,
        }),
        None => {
            abandon(lake, &event).await?;
            Err(FhirServerError::Protocol {
                url: status_url.to_string(),
                reason: "the job it had just accepted is gone (404/410)".into(),
            }
            .into())
        }
    }
}

/// Picks up the job an earlier run left; `None` when the server no longer has it.
async fn resume(
    lake: &Lake,
    server: &Server,
    options: &FhirServerOptions,
    pending: ExportEvent,
) -> Result<Option<Job>, IngestError> {
    let status_url = pending
        .status_url
        .as_deref()
        .and_then(|u| Url::parse(u).ok())
        .ok_or_else(|| FhirServerError::Protocol {
            url: pending.request_url.clone(),
            reason: "the lake's pending job has no valid status URL".into(),
        })?;
    tracing::info!("resuming the export job an earlier run started");
    (options.progress)(ExportProgress::Accepted {
        status_url: status_url.to_string(),
        resumed: true,
    });
    // The `downloaded` and `accepted` events both lead back to the job's `accepted` form.
    let event = ExportEvent {
        event: "accepted".into(),
        transaction_time: None,
        files: None,
        detail: None,
        ..pending.clone()
    };
    if let Some(manifest) = wait_for(lake, server, &event, &status_url, options).await? {
        return Ok(Some(Job {
            event,
            status_url,
            manifest,
        }));
    }
    // Gone. If its files all landed before the run stopped, the export is complete after all.
    if pending.event == "downloaded" {
        let known = super::runs::ingested_hashes(lake).await?;
        let hashes = pending.detail.as_deref().unwrap_or_default();
        if hashes
            .split(',')
            .filter(|h| !h.is_empty())
            .all(|h| known.contains(h))
        {
            jobs::record(
                lake,
                &ExportEvent {
                    event: "complete".into(),
                    ..pending.clone()
                },
            )
            .await?;
            tracing::info!("the forgotten job's files had all landed: recorded it complete");
            return Ok(None);
        }
    }
    abandon(lake, &event).await?;
    Ok(None)
}

async fn abandon(lake: &Lake, event: &ExportEvent) -> Result<(), IngestError> {
    tracing::warn!("the server no longer knows the export job; a new one starts");
    jobs::record(
        lake,
        &ExportEvent {
            event: "abandoned".into(),
            ..event.clone()
        },
    )
    .await?;
    Ok(())
}

/// Polls until the job completes (its manifest), is gone (`None`) or fails (an error, recorded,
/// so that the next run starts a new job rather than asking about this one again).
async fn wait_for(
    lake: &Lake,
    server: &Server,
    event: &ExportEvent,
    status_url: &Url,
    options: &FhirServerOptions,
) -> Result<Option<Manifest>, IngestError> {
    let started = Instant::now();
    loop {
        match server.poll(status_url, started.elapsed()).await? {
            Status::Complete(manifest) => return Ok(Some(manifest)),
            Status::Gone => return Ok(None),
            Status::Failed(message) => {
                jobs::record(
                    lake,
                    &ExportEvent {
                        event: "failed".into(),
                        detail: Some(message.clone()),
                        ..event.clone()
                    },
                )
                .await?;
                return Err(FhirServerError::JobFailed {
                    status_url: status_url.to_string(),
                    message,
                }
                .into());
            }
            Status::InProgress { progress, wait } => {
                tracing::debug!(progress = progress.as_deref(), "export in progress");
                (options.progress)(ExportProgress::Waiting { progress });
                tokio::time::sleep(wait).await;
            }
        }
    }
}

struct Downloaded {
    files: Vec<SourceFile>,
    hashes: Vec<String>,
    error_paths: Vec<PathBuf>,
    bytes: u64,
}

/// Downloads every file of the manifest into `dir`, a few at a time.
async fn download_all(
    server: &Server,
    manifest: &Manifest,
    dir: &std::path::Path,
    options: &FhirServerOptions,
) -> Result<Downloaded, IngestError> {
    let entries: Vec<(&OutputFile, bool)> = manifest
        .output
        .iter()
        .chain(&manifest.deleted)
        .map(|f| (f, false))
        .chain(manifest.error.iter().map(|f| (f, true)))
        .collect();
    let total = entries.len();
    let mut done = 0;
    let mut out = Downloaded {
        files: Vec::with_capacity(total),
        hashes: Vec::with_capacity(total),
        error_paths: Vec::new(),
        bytes: 0,
    };
    let mut downloads = futures::stream::iter(entries.into_iter().enumerate())
        .map(|(index, (file, is_error))| async move {
            let url = server
                .base()
                .join(&file.url)
                .map_err(|e| FhirServerError::Protocol {
                    url: file.url.clone(),
                    reason: format!("an output file URL: {e}"),
                })?;
            let path = dir.join(format!("{index:05}.ndjson"));
            let download = server
                .download(&url, &path, manifest.requires_access_token)
                .await?;
            Ok::<_, FhirServerError>((file, is_error, url, path, download))
        })
        .buffered(options.parallel_downloads.max(1));
    while let Some(result) = downloads.next().await {
        let (file, is_error, url, path, download) = result?;
        done += 1;
        tracing::info!(
            done,
            total,
            resource_type = file.resource_type.as_str(),
            bytes = download.bytes,
            "export file downloaded"
        );
        (options.progress)(ExportProgress::Downloaded {
            done,
            total,
            resource_type: file.resource_type.clone(),
            bytes: download.bytes,
        });
        if is_error {
            out.error_paths.push(path.clone());
        }
        out.bytes += download.bytes;
        out.hashes.push(download.sha256);
        out.files.push(SourceFile::downloaded(
            source_uri(&url),
            path,
            download.bytes,
            Format::Ndjson,
        ));
    }
    Ok(out)
}

/// What bronze records as a file's source: its URL without the query, which may hold a signature
/// (an Azure SAS, say) that must not be kept in the lake.
fn source_uri(url: &Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.to_string()
}

/// Counts the issues in the server's error files by severity and code. Their diagnostics may name
/// resources, so they stay in bronze and out of the report.
fn server_issues(paths: &[PathBuf]) -> std::collections::BTreeMap<String, u64> {
    use std::io::BufRead;
    let mut counts = std::collections::BTreeMap::new();
    for path in paths {
        let Ok(file) = std::fs::File::open(path) else {
            continue;
        };
        for line in std::io::BufReader::new(file).lines().map_while(Result::ok) {
            let Ok(outcome) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            for issue in outcome["issue"].as_array().into_iter().flatten() {
                let key = format!(
                    "{} {}",
                    issue["severity"].as_str().unwrap_or("?"),
                    issue["code"].as_str().unwrap_or("?")
                );
                *counts.entry(key).or_insert(0) += 1;
            }
        }
    }
    counts
}

impl From<FhirServerError> for IngestError {
    fn from(error: FhirServerError) -> Self {
        IngestError::FhirServer(Box::new(error))
    }
}

/// The waits of a test server are short; a real one's are what it says.
pub fn retry_policy_from_env() -> RetryPolicy {
    let mut policy = RetryPolicy::default();
    if let Some(ms) = std::env::var("VITALAKE_FHIR_BACKOFF_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        policy.backoff = Duration::from_millis(ms);
    }
    policy
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(level: ExportLevel, types: &[&str]) -> FhirServerOptions {
        FhirServerOptions {
            base: Url::parse("https://fhir.example.org/r4/").unwrap(),
            level,
            types: types.iter().map(|t| t.to_string()).collect(),
            since: None,
            full: false,
            auth: Arc::new(Auth::None),
            retry: RetryPolicy::default(),
            parallel_downloads: 1,
            staging: None,
            ingest: IngestOptions::from_config(&crate::config::IngestConfig::default()),
            progress: Arc::new(|_| {}),
        }
    }

    #[test]
    fn the_kick_off_url_carries_every_parameter_encoded() {
        let o = options(
            ExportLevel::Group("ward 7".into()),
            &["Patient", "Observation"],
        );
        let url = request_url(&o, Some("2026-12-01T10:00:00.123+01:00"));
        assert_eq!(
            url.as_str(),
            "https://fhir.example.org/r4/Group/ward%207/$export?_outputFormat=application%2Ffhir%2Bndjson&_type=Patient%2CObservation&_since=2026-12-01T10%3A00%3A00.123%2B01%3A00"
        );
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(pairs[2].1, "2026-12-01T10:00:00.123+01:00");
    }

    #[test]
    fn an_export_is_known_by_server_operation_and_types_in_any_order() {
        let a = export_key(&options(ExportLevel::Patient, &["Patient", "Condition"]));
        let b = export_key(&options(ExportLevel::Patient, &["Condition", "Patient"]));
        let c = export_key(&options(ExportLevel::System, &["Condition", "Patient"]));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn no_signature_is_kept_with_a_source() {
        let url = Url::parse("https://acct.blob.core.windows.net/x/Patient.ndjson?sv=1&sig=secret")
            .unwrap();
        assert_eq!(
            source_uri(&url),
            "https://acct.blob.core.windows.net/x/Patient.ndjson"
        );
    }
}
