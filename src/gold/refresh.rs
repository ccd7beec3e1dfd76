//! `vitalake refresh gold`: each gold table is one SQL file (`profiles/gold/<name>.sql`) run over
//! the lake's catalogue, its result replacing `gold/<name>` in one commit (a reader sees the old
//! table or the new one, never a mix).
//!
//! A table whose SQL declares its key (`-- incremental:`, see [`super::incremental`]) is refreshed
//! incrementally: only the rows of keys whose input rows changed since the last refresh are
//! recomputed and replaced. Any other table, and any refresh the incremental path cannot vouch
//! for, is a full one.

use std::path::Path;
use std::time::Instant;

use deltalake::arrow::record_batch::RecordBatch;
use serde::Serialize;

use super::{GoldError, catalog, incremental, read_only};
use crate::lake::{AppendBuilder, Lake};

/// The gold tables shipped with vitalake, used when the configured folder does not exist.
const BUILT_IN: [(&str, &str); 8] = [
    (
        "alerts_daily",
        include_str!("../../profiles/gold/alerts_daily.sql"),
    ),
    (
        "disease_prevalence_daily",
        include_str!("../../profiles/gold/disease_prevalence_daily.sql"),
    ),
    (
        "hospital_overview",
        include_str!("../../profiles/gold/hospital_overview.sql"),
    ),
    (
        "hospital_utilization_daily",
        include_str!("../../profiles/gold/hospital_utilization_daily.sql"),
    ),
    (
        "lab_abnormal_daily",
        include_str!("../../profiles/gold/lab_abnormal_daily.sql"),
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
    /// `full`, or `incremental` with the number of keys recomputed.
    pub mode: String,
    pub keys: Option<u64>,
    /// Rows written.
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
                None => match t.keys {
                    Some(keys) => writeln!(
                        f,
                        "gold/{}: incremental, {keys} keys changed, {} rows rewritten in {:.2} s",
                        t.table, t.rows, t.seconds
                    )?,
                    None => writeln!(f, "gold/{}: {} rows in {:.2} s", t.table, t.rows, t.seconds)?,
                },
                Some(why) => writeln!(f, "gold/{}: skipped: {why}", t.table)?,
            }
        }
        Ok(())
    }
}

/// Refreshes every table of `tables` (or only `only`); `full` recomputes even the tables that
/// could be refreshed incrementally.
pub async fn refresh(
    lake: &Lake,
    tables: &[GoldTable],
    only: Option<&str>,
    full: bool,
) -> Result<GoldReport, GoldError> {
    let (ctx, registered) = catalog::session_with_versions(lake).await?;
    let mut report = GoldReport::default();
    for table in tables.iter().filter(|t| only.is_none_or(|o| o == t.name)) {
        let started = Instant::now();
        let declared =
            incremental::declared(&table.sql).map_err(|message| GoldError::Declaration {
                table: table.name.clone(),
                message,
            })?;
        let changes = match &declared {
            Some(declared) if !full => {
                incremental::changes(&ctx, &registered, &table.name, declared).await?
            }
            _ => None,
        };
        let (session, replaced) = match (&declared, &changes) {
            (Some(_), Some(changes)) if changes.count() == 0 => {
                report.tables.push(Refreshed {
                    table: table.name.clone(),
                    mode: "incremental".into(),
                    keys: Some(0),
                    rows: 0,
                    seconds: started.elapsed().as_secs_f64(),
                    skipped: None,
                });
                continue;
            }
            (Some(declared), Some(changes)) => (
                incremental::restrict_inputs(&ctx, declared, changes).await?,
                Some(
                    incremental::replaced_rows(declared, changes)
                        .map_err(|e| GoldError::Sql(e.into()))?,
                ),
            ),
            _ => (ctx.clone(), None),
        };
        let frame = match session.sql_with_options(&table.sql, read_only()).await {
            Ok(frame) => frame,
            // The usual reason: an input table that no run has written yet.
            Err(e) => {
                report.tables.push(Refreshed {
                    table: table.name.clone(),
                    mode: "full".into(),
                    keys: None,
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
        let path = crate::lake::layout::gold_table(&table.name);
        let mut append = AppendBuilder::new(lake.table(&path).await?, &path, batches)
            .with_metadata("vitalake.operation", "refresh gold");
        append = match &replaced {
            Some(predicate) => append.replacing(predicate.clone()),
            None => append.replacing_all(),
        };
        // The input versions this refresh read, for the next one to start from.
        for input in declared.iter().flat_map(|d| &d.inputs) {
            if let Some(read) = registered.get(&input.table) {
                append = append.with_transaction(
                    &incremental::app_id(&table.name, &input.table),
                    read.version() as i64,
                );
            }
        }
        append.execute().await?;
        let keys = changes.as_ref().map(|c| c.count() as u64);
        tracing::info!(table = %table.name, rows, ?keys, "gold table refreshed");
        report.tables.push(Refreshed {
            table: table.name.clone(),
            mode: if keys.is_some() {
                "incremental"
            } else {
                "full"
            }
            .into(),
            keys,
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
