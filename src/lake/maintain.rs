//! Table maintenance: compaction (OPTIMIZE, with Z-ORDER where a table has columns to cluster by),
//! VACUUM of the files no version within the retention needs, and a checkpoint of the log.
//!
//! Every step is a Delta commit or a delete of unreferenced files, so a reader (or a writer: the
//! stream) running meanwhile sees the table before or after, never half of it; a compaction that
//! loses a race with a writer fails for that table and leaves it as it was.

use std::collections::BTreeMap;
use std::time::Duration;

use deltalake::DeltaTable;
use deltalake::operations::optimize::OptimizeType;
use deltalake::parquet::basic::Compression;
use deltalake::parquet::file::properties::WriterProperties;
use serde::Serialize;

use super::{Lake, LakeError};

/// The shortest retention VACUUM accepts without `force`: a reader that started a query on an
/// older version (Spark, Power BI refreshing, `vitalake serve`) would find its files gone.
pub const MIN_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Rows per Parquet row group in compacted files. Row groups are what a look-up skips by their
/// min/max statistics: in a file clustered by patient, a group of 128Ki rows covers a narrow
/// range of patients, where the writer's default (1Mi rows) would make a look-up decode eight
/// times as many rows.
const ROW_GROUP_ROWS: usize = 128 * 1024;

/// How compacted files are written: Snappy like every other write of the lake, and
/// [`ROW_GROUP_ROWS`]. With OPTIMIZE's own defaults (ZSTD, 1Mi-row groups) the daily aggregate
/// over 10 million rows took 50% longer after compaction than before it (BENCHMARKS.md, issue 8).
fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .build()
}

#[derive(Debug, Clone)]
pub struct MaintainOptions {
    /// VACUUM removes files unreferenced for longer than this (default 7 days).
    pub retention: Duration,
    /// Allow a retention under [`MIN_RETENTION`].
    pub force: bool,
    /// Per table path, the columns to Z-ORDER by; the other tables are compacted only. A key
    /// ending in `/*` applies to every table directly under that folder (`bronze/eventhubs/*`).
    pub zorder: BTreeMap<String, Vec<String>>,
}

impl MaintainOptions {
    /// The Z-ORDER columns of a table: its own entry, else its folder's `/*` entry.
    pub fn zorder_of(&self, path: &str) -> Vec<String> {
        let folder = path
            .rsplit_once('/')
            .map(|(folder, _)| format!("{folder}/*"));
        self.zorder
            .get(path)
            .or_else(|| folder.and_then(|f| self.zorder.get(&f)))
            .cloned()
            .unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MaintainError {
    #[error(
        "a retention of {hours} h is under the 24 h minimum: readers of older versions would lose their files; add --force if no reader can be running"
    )]
    RetentionTooShort { hours: u64 },
    #[error(transparent)]
    Lake(#[from] LakeError),
}

/// What maintenance did to one table.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct TableMaintenance {
    pub table: String,
    pub files_before: usize,
    pub files_after: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Z-ORDER columns, if the table was clustered.
    pub zorder: Vec<String>,
    /// Files VACUUM deleted from storage.
    pub vacuumed: usize,
    pub version: u64,
    /// Why the table was left as it was, if it was.
    pub error: Option<String>,
}

/// What maintenance did to every table, in order.
#[derive(Debug, Default, Serialize)]
#[serde(transparent)]
pub struct MaintenanceReport(pub Vec<TableMaintenance>);

impl MaintenanceReport {
    /// Whether a table was left as it was because its maintenance failed.
    pub fn failed(&self) -> bool {
        self.0.iter().any(|t| t.error.is_some())
    }
}

impl std::fmt::Display for MaintenanceReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:<44} {:>12} {:>12} {:>9}  z-order",
            "table", "files before", "files after", "vacuumed"
        )?;
        for table in &self.0 {
            write!(
                f,
                "{:<44} {:>12} {:>12} {:>9}  {}",
                table.table,
                table.files_before,
                table.files_after,
                table.vacuumed,
                table.zorder.join(", "),
            )?;
            match &table.error {
                Some(error) => writeln!(f, "  FAILED: {error}")?,
                None => writeln!(f)?,
            }
        }
        Ok(())
    }
}

/// Maintains every table under `layers` (`bronze`, `silver`, `gold`), one after the other.
pub async fn maintain(
    lake: &Lake,
    layers: &[&str],
    options: &MaintainOptions,
) -> Result<MaintenanceReport, MaintainError> {
    if options.retention < MIN_RETENTION && !options.force {
        return Err(MaintainError::RetentionTooShort {
            hours: options.retention.as_secs() / 3600,
        });
    }
    let mut reports = Vec::new();
    for layer in layers {
        for path in lake.find_tables(layer, 4).await? {
            let Some(table) = lake.existing_table(&path).await? else {
                continue;
            };
            let mut report = TableMaintenance {
                table: path.clone(),
                zorder: options.zorder_of(&path),
                ..Default::default()
            };
            (report.files_before, report.bytes_before) = files(&table)?;
            match maintain_table(table, options, &mut report).await {
                Ok(table) => {
                    (report.files_after, report.bytes_after) = files(&table)?;
                    report.version = table.version().unwrap_or_default();
                }
                Err(error) => {
                    tracing::warn!(table = %path, %error, "maintenance failed; the table is unchanged");
                    report.error = Some(error.to_string());
                    (report.files_after, report.bytes_after) =
                        (report.files_before, report.bytes_before);
                }
            }
            tracing::info!(
                table = %path,
                files_before = report.files_before,
                files_after = report.files_after,
                vacuumed = report.vacuumed,
                "maintained"
            );
            reports.push(report);
        }
    }
    Ok(MaintenanceReport(reports))
}

/// Compacts (or Z-orders) `table` as `report.zorder` says, vacuums it and writes a checkpoint.
async fn maintain_table(
    table: DeltaTable,
    options: &MaintainOptions,
    report: &mut TableMaintenance,
) -> Result<DeltaTable, deltalake::DeltaTableError> {
    let kind = if report.zorder.is_empty() {
        OptimizeType::Compact
    } else {
        OptimizeType::ZOrder(report.zorder.clone())
    };
    // Compaction rewrites only tables with more than one file (or Z-ORDER, which clusters even one).
    let files = report.files_before;
    let table = if files > 1 || !report.zorder.is_empty() && files > 0 {
        table
            .optimize()
            .with_type(kind)
            .with_writer_properties(writer_properties())
            .await?
            .0
    } else {
        table
    };
    let (table, vacuum) = table
        .vacuum()
        .with_retention_period(chrono::Duration::from_std(options.retention).unwrap_or_default())
        .with_enforce_retention_duration(false)
        .await?;
    report.vacuumed = vacuum.files_deleted.len();
    deltalake::checkpoints::create_checkpoint(&table, None).await?;
    Ok(table)
}

/// What one table's compaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    pub files_before: usize,
    pub files_after: usize,
}

/// Compacts the table at `path` (bin-packing its small files, per partition) when it has more
/// than `max_files` active files; `None` when it had no more (or does not exist yet). Meant for a
/// writer that runs for days (`vitalake stream`): the commit removes and adds files with the same
/// rows and no application transaction, so readers see the same rows and the writer's
/// exactly-once bookkeeping is untouched. A compaction that loses a race with a commit touching
/// the same files fails and leaves the table as it was; the next one tries again.
pub async fn compact_over(
    lake: &Lake,
    path: &str,
    max_files: usize,
) -> Result<Option<Compacted>, LakeError> {
    let Some(table) = lake.existing_table(path).await? else {
        return Ok(None);
    };
    let (files_before, _) = files(&table)?;
    if files_before <= max_files {
        return Ok(None);
    }
    let (table, _) = table
        .optimize()
        .with_type(OptimizeType::Compact)
        .with_writer_properties(writer_properties())
        .await
        .map_err(|source| LakeError::Delta {
            table: path.to_string(),
            source,
        })?;
    let (files_after, _) = files(&table)?;
    Ok(Some(Compacted {
        files_before,
        files_after,
    }))
}

/// Active files and their bytes.
fn files(table: &DeltaTable) -> Result<(usize, u64), LakeError> {
    let snapshot = table.snapshot().map_err(|source| LakeError::Delta {
        table: table.table_url().to_string(),
        source,
    })?;
    let mut count = 0;
    let mut bytes = 0;
    for file in snapshot.log_data() {
        count += 1;
        bytes += file.size() as u64;
    }
    Ok((count, bytes))
}
