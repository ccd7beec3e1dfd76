//! Run bookkeeping: which files are already in the lake, and rolling back runs that never finished.
//!
//! A run writes `started` to `bronze/ingest_runs`, then its chunks (bronze, quarantine, and the
//! ingest-log rows of the files each chunk completes), then `finished`. Every row it writes carries
//! its `batch_id`. A run killed half-way leaves `started` alone; the next run deletes that batch's
//! rows from every table it may have touched and records `rolled_back`, so the lake holds either
//! all of a run or none of it and the files are simply ingested again.

use std::collections::{BTreeMap, HashSet};

use deltalake::arrow::array::{Array, RecordBatch};
use deltalake::datafusion::prelude::{ident, lit};

use crate::lake::{AppendBuilder, Lake, LakeError, delete, read};

use super::tables::{
    BRONZE_FHIR_PREFIX, INGEST_LOG_TABLE, INGEST_RUNS_TABLE, QUARANTINE_TABLE, ingest_run_batch,
};

pub async fn mark(
    lake: &Lake,
    batch_id: &str,
    event: &str,
    summary: Option<String>,
) -> Result<(), LakeError> {
    let table = lake.table(INGEST_RUNS_TABLE).await?;
    let at = chrono::Utc::now().timestamp_micros();
    AppendBuilder::new(
        table,
        INGEST_RUNS_TABLE,
        vec![ingest_run_batch(batch_id, event, at, summary)],
    )
    .with_metadata("vitalake.batch_id", batch_id)
    .execute()
    .await?;
    Ok(())
}

/// Deletes the rows of every run that started and neither finished nor was rolled back; returns
/// their ids, to be marked with [`mark_rolled_back`] once what was derived from them is rebuilt.
pub async fn roll_back_unfinished(lake: &Lake) -> Result<Vec<String>, LakeError> {
    let Some(runs) = lake.existing_table(INGEST_RUNS_TABLE).await? else {
        return Ok(Vec::new());
    };
    // A few rows per run, read whole and grouped here rather than in SQL (see `read::select`).
    let rows = read::select_all(&runs, INGEST_RUNS_TABLE, &["batch_id", "event"], None).await?;
    let mut ended: BTreeMap<String, bool> = BTreeMap::new();
    for batch in &rows {
        for (batch_id, event) in strings(batch, 0).into_iter().zip(strings(batch, 1)) {
            *ended.entry(batch_id).or_default() |= event == "finished" || event == "rolled_back";
        }
    }
    let unfinished: Vec<String> = ended
        .into_iter()
        .filter_map(|(batch_id, ended)| (!ended).then_some(batch_id))
        .collect();
    if unfinished.is_empty() {
        return Ok(unfinished);
    }
    let mut tables = lake.list_tables(BRONZE_FHIR_PREFIX).await?;
    tables.push(QUARANTINE_TABLE.to_string());
    tables.push(INGEST_LOG_TABLE.to_string());
    let mut rolled_back = Vec::new();
    for batch_id in unfinished {
        // Batch ids are UUIDs we generated; anything else in that table was not written by us
        // and never goes into a predicate.
        if !batch_id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            tracing::warn!(
                batch_id,
                "ignoring an unfinished run with a malformed batch id"
            );
            continue;
        }
        for name in &tables {
            if let Some(table) = lake.existing_table(name).await? {
                let deleted =
                    delete::delete_where(table, name, &format!("batch_id = '{batch_id}'")).await?;
                if deleted > 0 {
                    tracing::info!(
                        batch_id,
                        table = name.as_str(),
                        rows = deleted,
                        "rolled back rows of an unfinished run"
                    );
                }
            }
        }
        rolled_back.push(batch_id);
    }
    Ok(rolled_back)
}

/// Records that the runs' rows are gone and everything derived from them rebuilt. Only then: a run
/// interrupted during the rebuild stays unfinished, and the next run rolls it back and rebuilds again.
pub async fn mark_rolled_back(lake: &Lake, batch_ids: &[String]) -> Result<(), LakeError> {
    for batch_id in batch_ids {
        mark(lake, batch_id, "rolled_back", None).await?;
    }
    Ok(())
}

/// SHA-256 of every file a finished or running-now run has ingested.
pub async fn ingested_hashes(lake: &Lake) -> Result<HashSet<String>, LakeError> {
    let Some(log) = lake.existing_table(INGEST_LOG_TABLE).await? else {
        return Ok(HashSet::new());
    };
    let ingested = ident("status").eq(lit("ingested"));
    let hashes =
        read::select_all(&log, INGEST_LOG_TABLE, &["source_sha256"], Some(ingested)).await?;
    Ok(hashes.iter().flat_map(|batch| strings(batch, 0)).collect())
}

/// Column `index` of `batch` as strings.
fn strings(batch: &RecordBatch, index: usize) -> Vec<String> {
    let column = read::text_column(batch.column(index));
    (0..column.len())
        .map(|i| column.value(i).to_string())
        .collect()
}
