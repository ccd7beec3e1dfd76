//! `vitalake refresh gold`: each gold table is one SQL file (`profiles/gold/<name>.sql`) run over
//! the lake's catalogue, its result replacing `gold/<name>` in one commit (a reader sees the old
//! table or the new one, never a mix).
//!
//! Every refresh is a full one: the gold tables are aggregates small next to silver, and a full
//! run cannot drift from its inputs.

use std::path::Path;
use std::time::Instant;

use deltalake::arrow::record_batch::RecordBatch;
use serde::Serialize;

use super::{GoldError, catalog, read_only};
use crate::lake::{AppendBuilder, Lake};

/// The gold tables shipped with vitalake, used when the configured folder does not exist.
const BUILT_IN: [(&str, &str); 5] = [
    (
        "alerts_daily",
        include_str!("../../profiles/gold/alerts_daily.sql"),
    ),
    (
        "hospital_overview",
        include_str!("../../profiles/gold/hospital_overview.sql"),
    ),
    (
        "medicine_distribution_daily",
        include_str!("../../profiles/gold/medicine_distribution_daily.sql"),
    ),
    (
        "patient_bp_daily",
        include_str!("../../profiles/gold/patient_bp_daily.sql"),
    ),
    (
        "patient_clinical_summary",
        include_str!("../../profiles/gold/patient_clinical_summary.sql"),
    ),
];

pub struct GoldTable {
    pub name: String,
    pub sql: String,
}

/// The `*.sql` files of `dir` (a table per file, named by the file), or the built-in ones.
pub fn definitions(dir: &Path) -> std::io::Result<Vec<GoldTable>> {
    if !dir.exists() {
        return Ok(BUILT_IN
            .iter()
            .map(|(name, sql)| GoldTable {
                name: name.to_string(),
                sql: sql.to_string(),
            })
            .collect());
    }
    let mut tables = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "sql")
            && let Some(name) = path.file_stem().and_then(|s| s.to_str())
        {
            tables.push(GoldTable {
                name: name.to_string(),
                sql: std::fs::read_to_string(&path)?,
            });
        }
    }
    tables.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(tables)
}

#[derive(Debug, Clone, Serialize)]
pub struct Refreshed {
    pub table: String,
    pub rows: u64,
    pub seconds: f64,
    /// Why the table was not refreshed (an input it needs is not in the lake yet).
    pub skipped: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct GoldReport {
    pub tables: Vec<Refreshed>,
}

impl std::fmt::Display for GoldReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for t in &self.tables {
            match &t.skipped {
                None => writeln!(f, "gold/{}: {} rows in {:.2} s", t.table, t.rows, t.seconds)?,
                Some(why) => writeln!(f, "gold/{}: skipped: {why}", t.table)?,
            }
        }
        Ok(())
    }
}

/// Refreshes every table of `tables` (or only `only`).
pub async fn refresh(
    lake: &Lake,
    tables: &[GoldTable],
    only: Option<&str>,
) -> Result<GoldReport, GoldError> {
    let ctx = catalog::session(lake).await?;
    let mut report = GoldReport::default();
    for table in tables.iter().filter(|t| only.is_none_or(|o| o == t.name)) {
        let started = Instant::now();
        let frame = match ctx.sql_with_options(&table.sql, read_only()).await {
            Ok(frame) => frame,
            // The usual reason: an input table that no run has written yet.
            Err(e) => {
                report.tables.push(Refreshed {
                    table: table.name.clone(),
                    rows: 0,
                    seconds: 0.0,
                    skipped: Some(e.to_string()),
                });
                continue;
            }
        };
        let schema = std::sync::Arc::new(frame.schema().as_arrow().clone());
        let mut batches: Vec<RecordBatch> = frame.collect().await?;
        batches.retain(|b| b.num_rows() > 0);
        if batches.is_empty() {
            batches.push(RecordBatch::new_empty(schema));
        }
        let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
        let path = format!("gold/{}", table.name);
        AppendBuilder::new(lake.table(&path).await?, &path, batches)
            .replacing_all()
            .with_metadata("vitalake.operation", "refresh gold")
            .execute()
            .await?;
        tracing::info!(table = %table.name, rows, "gold table refreshed");
        report.tables.push(Refreshed {
            table: table.name.clone(),
            rows,
            seconds: started.elapsed().as_secs_f64(),
            skipped: None,
        });
    }
    if let Some(only) = only
        && report.tables.is_empty()
    {
        return Err(GoldError::Unknown(only.to_string()));
    }
    Ok(report)
}
