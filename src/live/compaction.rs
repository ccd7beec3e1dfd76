//! Background compaction of the tables a running stream writes: a stream lands a micro-batch a
//! second, each adding a file or more to bronze and silver, and tens of thousands of small files
//! a day slow every reader (a query opens each one). Every [`CHECK_EVERY`], each of these tables
//! with more than `max_files` active files is compacted ([`compact_over`]), one table at a time,
//! beside the landings and never in their way: a landing does not wait for it, and a silver merge
//! that loses a race with it merges again, as it does with any other writer. `vitalake maintain`
//! stays for VACUUM, Z-ORDER and checkpoints.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::lake::Lake;
use crate::lake::maintain::compact_over;

/// How often the tables' file counts are looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(15);

/// What the compactor did, for the report and the metrics.
#[derive(Debug, Default)]
pub struct CompactionStats {
    /// Rounds over every table finished: the compactor is alive.
    pub rounds: AtomicU64,
    pub compactions: AtomicU64,
    /// Files the compactions took out of the tables (replaced by fewer, larger ones).
    pub files_removed: AtomicU64,
    /// Compactions that failed (a lost race, storage trouble); the next round tries again.
    pub failures: AtomicU64,
}

/// Compacts `tables` in the background until `stop`; the task ends between two tables.
pub fn spawn(
    lake: Lake,
    tables: Vec<String>,
    max_files: usize,
    stats: Arc<CompactionStats>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.tick().await;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            for table in &tables {
                if stop.is_cancelled() {
                    return;
                }
                match compact_over(&lake, table, max_files).await {
                    Ok(None) => {}
                    Ok(Some(done)) => {
                        stats.compactions.fetch_add(1, Ordering::Relaxed);
                        stats.files_removed.fetch_add(
                            done.files_before.saturating_sub(done.files_after) as u64,
                            Ordering::Relaxed,
                        );
                        tracing::info!(
                            table,
                            files_before = done.files_before,
                            files_after = done.files_after,
                            "compacted"
                        );
                    }
                    Err(error) => {
                        stats.failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(table, %error, "compaction failed; the table is unchanged and the next round tries again");
                    }
                }
            }
            stats.rounds.fetch_add(1, Ordering::Relaxed);
        }
    })
}
