//! The `ingest db` run report: per source and table, what was read and what landed, and whether
//! the two reconcile; then the expectations.

use std::fmt;

use serde::Serialize;

use super::Engine;
use super::expectations::ExpectationReport;
use super::land::Target;

#[derive(Debug, Clone, Default, Serialize)]
pub struct DbReport {
    pub batch_id: String,
    pub sources: Vec<SourceReport>,
    pub expectations: Vec<ExpectationReport>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SourceReport {
    /// Without password.
    pub url: String,
    pub engine: Option<Engine>,
    /// Why the source could not be read at all.
    pub error: Option<String>,
    pub tables: Vec<TableReport>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TableReport {
    pub table: String,
    pub bronze: String,
    pub silver: String,
    /// `full` or `incremental`.
    pub mode: String,
    pub cursor: Option<String>,
    /// The cursor value the incremental read started from.
    pub watermark: Option<String>,
    pub rows_at_source: u64,
    pub rows_landed: u64,
    pub inserted: usize,
    pub updated: usize,
    /// Rows marked `_deleted_at` by this (full) run.
    pub deleted: usize,
    /// Full runs: the checksum of the rows read, and whether the rows in bronze give the same.
    pub checksum: Option<String>,
    pub checksum_matches: Option<bool>,
    pub reconciled: bool,
    /// `table.column: why`, for columns of types that cannot be read.
    pub skipped_columns: Vec<String>,
    /// Columns whose type widened at the source, and now.
    pub widened: Vec<String>,
    pub seconds: f64,
    pub rows_per_second: f64,
    pub error: Option<String>,
}

impl SourceReport {
    pub fn new(url: String, engine: Engine) -> SourceReport {
        SourceReport {
            url,
            engine: Some(engine),
            error: None,
            tables: Vec::new(),
        }
    }

    pub fn failed(url: String, error: String) -> SourceReport {
        SourceReport {
            url,
            engine: None,
            error: Some(error),
            tables: Vec::new(),
        }
    }
}

impl TableReport {
    pub fn new(table: &str, target: &Target) -> TableReport {
        TableReport {
            table: table.to_string(),
            bronze: target.bronze.clone(),
            silver: target.silver.clone(),
            ..TableReport::default()
        }
    }

    pub fn failed(table: &str, error: String) -> TableReport {
        TableReport {
            table: table.to_string(),
            error: Some(error),
            ..TableReport::default()
        }
    }
}

impl DbReport {
    /// Whether every source and table landed and reconciled.
    pub fn is_ok(&self) -> bool {
        self.sources.iter().all(|s| {
            s.error.is_none() && s.tables.iter().all(|t| t.error.is_none() && t.reconciled)
        })
    }
}

impl fmt::Display for DbReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "ingest db: batch {} in {:.1} s",
            self.batch_id, self.seconds
        )?;
        for source in &self.sources {
            writeln!(f, "\n{}", source.url)?;
            if let Some(error) = &source.error {
                writeln!(f, "  FAILED: {error}")?;
                continue;
            }
            writeln!(
                f,
                "  {:<24} {:<11} {:>10} {:>10} {:>8} {:>8} {:>8} {:>11}  reconciled",
                "table", "mode", "source", "landed", "new", "changed", "deleted", "rows/s"
            )?;
            for t in &source.tables {
                if let Some(error) = &t.error {
                    writeln!(f, "  {:<24} FAILED: {error}", t.table)?;
                    continue;
                }
                let reconciled = match (t.reconciled, t.checksum_matches) {
                    (true, Some(true)) => "yes (count, checksum)",
                    (true, _) => "yes (count)",
                    (false, Some(false)) => "NO: checksum differs",
                    (false, _) => "NO: counts differ",
                };
                writeln!(
                    f,
                    "  {:<24} {:<11} {:>10} {:>10} {:>8} {:>8} {:>8} {:>11.0}  {}",
                    t.table,
                    t.mode,
                    t.rows_at_source,
                    t.rows_landed,
                    t.inserted,
                    t.updated,
                    t.deleted,
                    t.rows_per_second,
                    reconciled
                )?;
                for skipped in &t.skipped_columns {
                    writeln!(f, "    skipped column {skipped}")?;
                }
                for widened in &t.widened {
                    writeln!(f, "    widened column {widened}")?;
                }
            }
        }
        if !self.expectations.is_empty() {
            writeln!(f, "\nexpectations")?;
            for e in &self.expectations {
                match &e.error {
                    Some(error) => writeln!(f, "  {:<46} FAILED TO RUN: {error}", e.name)?,
                    None => writeln!(
                        f,
                        "  {:<46} {:>6} of {:>7} {} rows flagged{}",
                        e.name,
                        e.flagged,
                        e.checked,
                        e.table,
                        if e.examples.is_empty() {
                            String::new()
                        } else {
                            format!(" (e.g. {})", e.examples.join(", "))
                        }
                    )?,
                }
            }
        }
        Ok(())
    }
}
