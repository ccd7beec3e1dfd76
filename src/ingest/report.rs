//! The run report: what a person reads after `ingest fhir`, and what `--json` prints.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

/// Counts gathered while decoding.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ProduceStats {
    /// Files decoded in this run (not counting skipped or failed ones).
    pub files_read: u64,
    pub bytes_read: u64,
    pub resources_by_type: BTreeMap<String, u64>,
    /// Bundle entries that delete a resource (`DELETE Patient/123`): kept in bronze, and the
    /// resource leaves silver.
    pub delete_events: u64,
    /// Quarantined records; a record with several rules counts once per rule below.
    pub quarantined: u64,
    pub quarantined_by_rule: BTreeMap<String, u64>,
    /// Files already in the lake (same SHA-256).
    pub files_skipped: Vec<String>,
    /// Files that could not be read, with the reason; they are retried on the next run.
    pub files_failed: Vec<(String, String)>,
    /// Files that began with a UTF-8 byte order mark: ignored (RFC 8259 allows it), but worth
    /// telling the exporting system.
    pub files_with_byte_order_mark: Vec<String>,
    /// The first quarantined records, so the report itself says what was wrong and where.
    pub quarantine_examples: Vec<QuarantineNote>,
}

/// One quarantined record as the report shows it: no raw content, so no patient data.
#[derive(Debug, Clone, Serialize)]
pub struct QuarantineNote {
    pub source_uri: String,
    /// `line 7 $.entry[2].resource`: where in the file.
    pub place: String,
    pub rule: String,
    /// FHIRPath inside the record.
    pub location: String,
    pub message: String,
}

/// How many quarantined records the report lists one by one.
pub const QUARANTINE_EXAMPLES: usize = 20;

#[derive(Debug, Clone, Serialize)]
pub struct IngestReport {
    pub batch_id: String,
    pub lake: String,
    /// Earlier runs that had been interrupted and were rolled back before this one.
    pub rolled_back_runs: Vec<String>,
    #[serde(flatten)]
    pub stats: ProduceStats,
    pub bronze_rows: u64,
    /// Rows written to the silver view tables (new and replaced).
    pub silver_rows: u64,
    pub quarantine_rows: u64,
    pub commits: u64,
    pub duration_secs: f64,
    pub resources_per_sec: f64,
    pub mb_per_sec: f64,
}

impl IngestReport {
    /// Exit status for the CLI: a file that could not be read fails the run (it will be retried).
    pub fn success(&self) -> bool {
        self.stats.files_failed.is_empty()
    }
}

impl fmt::Display for IngestReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        writeln!(
            f,
            "ingest fhir  batch {}  lake {}",
            self.batch_id, self.lake
        )?;
        for run in &self.rolled_back_runs {
            writeln!(f, "  rolled back interrupted run {run}")?;
        }
        writeln!(
            f,
            "  files read {:>8}   skipped (already ingested) {}   failed {}",
            s.files_read,
            s.files_skipped.len(),
            s.files_failed.len()
        )?;
        writeln!(
            f,
            "  bronze rows {:>7}   silver rows {}   quarantined {}",
            self.bronze_rows, self.silver_rows, self.quarantine_rows
        )?;
        writeln!(
            f,
            "  {:.1} s   {:.0} resources/s   {:.1} MB/s",
            self.duration_secs, self.resources_per_sec, self.mb_per_sec
        )?;
        if s.delete_events > 0 {
            writeln!(
                f,
                "  delete events {:>5}   (Bundle entries DELETE Type/id: in bronze, gone from silver)",
                s.delete_events
            )?;
        }
        if !s.resources_by_type.is_empty() {
            writeln!(f, "\n  {:<28} {:>10}", "resource type", "resources")?;
            for (resource_type, n) in &s.resources_by_type {
                writeln!(f, "  {resource_type:<28} {n:>10}")?;
            }
        }
        if !s.quarantined_by_rule.is_empty() {
            writeln!(f, "\n  {:<28} {:>10}", "quarantined by rule", "records")?;
            for (rule, n) in &s.quarantined_by_rule {
                writeln!(f, "  {rule:<28} {n:>10}")?;
            }
            for note in &s.quarantine_examples {
                writeln!(
                    f,
                    "  {} {}: [{}] {}: {}",
                    note.source_uri, note.place, note.rule, note.location, note.message
                )?;
            }
            if s.quarantined > s.quarantine_examples.len() as u64 {
                writeln!(
                    f,
                    "  … and {} more",
                    s.quarantined - s.quarantine_examples.len() as u64
                )?;
            }
            writeln!(
                f,
                "  (every record with all its issues: table silver/quarantine)"
            )?;
        }
        for uri in &s.files_skipped {
            writeln!(f, "  skipped {uri}")?;
        }
        for uri in &s.files_with_byte_order_mark {
            writeln!(
                f,
                "  warning: {uri} starts with a UTF-8 byte order mark (ignored; FHIR JSON should not carry one)"
            )?;
        }
        for (uri, error) in &s.files_failed {
            writeln!(
                f,
                "  FAILED {uri}: {error} (it will be retried on the next run)"
            )?;
        }
        Ok(())
    }
}
