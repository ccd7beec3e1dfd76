//! `vitalake validate`: the ingest path without the lake.
//!
//! Files are read, decoded and checked by exactly the code `ingest fhir` runs (the producer), and
//! the chunks it would commit are read back instead of written: what `validate` rejects, `ingest`
//! quarantines, with the same issues.

use std::collections::HashSet;

use deltalake::arrow::array::{Array, AsArray, RecordBatch};
use deltalake::arrow::datatypes::Int64Type;
use serde::Serialize;
use tokio::sync::mpsc;

use super::produce::{self, ProduceContext};
use super::{IngestError, IngestOptions, source, tables};
use crate::issue::{Issue, Severity};

/// The findings about one record.
#[derive(Debug, Clone, Serialize)]
pub struct RecordOutcome {
    pub source_uri: String,
    pub line: Option<i64>,
    pub json_path: String,
    pub resource_type: Option<String>,
    pub id: Option<String>,
    pub issues: Vec<Issue>,
}

impl RecordOutcome {
    pub fn has_errors(&self) -> bool {
        self.issues
            .iter()
            .any(|i| matches!(i.severity, Severity::Error | Severity::Fatal))
    }
}

/// Every record with findings, and how many records were read. As JSON (`validate --json`), one
/// FHIR OperationOutcome per record with findings, with the record's place.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub records: u64,
    pub valid: u64,
    pub outcomes: Vec<RecordOutcome>,
}

impl CheckReport {
    /// Records with at least one error: ingest would quarantine them.
    pub fn failed(&self) -> usize {
        self.outcomes.iter().filter(|o| o.has_errors()).count()
    }
}

impl Serialize for CheckReport {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.outcomes.iter().map(|o| {
            serde_json::json!({
                "source": o.source_uri,
                "line": o.line,
                "jsonPath": o.json_path,
                "resource": format!("{}/{}", o.resource_type.as_deref().unwrap_or("?"), o.id.as_deref().unwrap_or("?")),
                "outcome": crate::validate::operation_outcome(&o.issues),
            })
        }))
    }
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for outcome in &self.outcomes {
            let place = match outcome.line {
                Some(line) => format!("line {line} {}", outcome.json_path),
                None => outcome.json_path.clone(),
            };
            writeln!(
                f,
                "{} {place} {}/{}",
                outcome.source_uri,
                outcome.resource_type.as_deref().unwrap_or("?"),
                outcome.id.as_deref().unwrap_or("?")
            )?;
            for issue in &outcome.issues {
                writeln!(
                    f,
                    "  {:<8} [{}] {}: {}",
                    issue.severity.as_str(),
                    issue.rule,
                    issue.location,
                    issue.message
                )?;
            }
        }
        let failed = self.failed();
        writeln!(
            f,
            "{} records: {} valid, {failed} with errors, {} with warnings only",
            self.records,
            self.valid,
            self.outcomes.len() - failed
        )
    }
}

fn outcomes(
    batch: &RecordBatch,
    issues_column: &str,
    resource_type: Option<&str>,
    out: &mut Vec<RecordOutcome>,
) {
    let text = |name: &str, row: usize| -> Option<String> {
        let column = batch.column_by_name(name)?.as_string::<i32>();
        (!column.is_null(row)).then(|| column.value(row).to_string())
    };
    let lines = batch
        .column_by_name("line")
        .map(|c| c.as_primitive::<Int64Type>().clone());
    let issues = batch
        .column_by_name(issues_column)
        .expect("issue column")
        .clone();
    for row in 0..batch.num_rows() {
        let found = tables::issues_at(&issues, row);
        if found.is_empty() {
            continue;
        }
        out.push(RecordOutcome {
            source_uri: text("source_uri", row).unwrap_or_default(),
            line: lines
                .as_ref()
                .and_then(|l| (!l.is_null(row)).then(|| l.value(row))),
            json_path: text("json_path", row).unwrap_or_default(),
            resource_type: resource_type
                .map(str::to_string)
                .or_else(|| text("resource_type", row)),
            id: text("resource_id", row),
            issues: found,
        });
    }
}

/// Reads and checks the files under `paths` as `ingest fhir` would, writing nothing.
pub async fn check_files(
    paths: &[String],
    options: IngestOptions,
) -> Result<CheckReport, IngestError> {
    let files = source::list(paths).await?;
    let ctx = ProduceContext::new(&options, super::silver::SilverViews::none(), "validate");
    let (tx, mut rx) = mpsc::channel(1);
    let producer =
        tokio::task::spawn_blocking(move || produce::produce(files, HashSet::new(), &ctx, tx));
    let mut report = CheckReport::default();
    while let Some(chunk) = rx.recv().await {
        for (resource_type, batch) in &chunk.bronze {
            report.records += batch.num_rows() as u64;
            report.valid += batch.num_rows() as u64;
            outcomes(batch, "warnings", Some(resource_type), &mut report.outcomes);
        }
        if let Some(quarantine) = &chunk.quarantine {
            report.records += quarantine.num_rows() as u64;
            outcomes(quarantine, "errors", None, &mut report.outcomes);
        }
    }
    let stats = producer.await?;
    if let Some((uri, error)) = stats.files_failed.first() {
        return Err(IngestError::Input {
            path: uri.clone(),
            source: std::io::Error::other(error.clone()),
        });
    }
    Ok(report)
}
