//! The incremental path: bronze chunks merged into silver during an ingest run.

use super::*;

pub(super) fn key_hash(key: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
}

/// 64-bit hashes of the keys of one resource type that silver holds.
///
/// Read once per run from `silver/versions/<type>`: the table's keys as a sorted vector (8 bytes
/// a key, built with one sort; a hash set of 10 million took twice the memory and a random memory
/// access per insert, most of a small run's time on a large lake), and the keys this run added.
struct KnownKeys {
    sorted: Vec<u64>,
    added: HashSet<u64>,
}

impl KnownKeys {
    fn from_hashes(mut hashes: Vec<u64>) -> KnownKeys {
        hashes.par_sort_unstable();
        KnownKeys {
            sorted: hashes,
            added: HashSet::new(),
        }
    }

    fn contains(&self, hash: u64) -> bool {
        self.added.contains(&hash) || self.sorted.binary_search(&hash).is_ok()
    }

    fn extend(&mut self, hashes: impl IntoIterator<Item = u64>) {
        self.added.extend(hashes);
    }
}

/// Frees `garbage` (thousands of resources: texts, rows) on a worker rather than on the thread that
/// lands the next batch, for it is real work. The worker may then wait for the next chunk, so it
/// gives the memory back at once.
fn free_on_worker(garbage: impl Send + 'static) {
    rayon::spawn(move || {
        drop(garbage);
        crate::allocator::give_back_freed_memory();
    });
}

/// The `patient_history` view, when `resource_type` is `Patient` and the views define it.
fn history_view<'v>(views: &'v SilverViews, resource_type: &str) -> Option<(usize, &'v View)> {
    views
        .views()
        .iter()
        .enumerate()
        .find(|(_, v)| v.name() == Some(HISTORY_VIEW) && v.resource() == "Patient")
        .filter(|_| resource_type == "Patient")
}

/// The rows of `table`, as its Delta log's statistics count them (none where they are missing).
fn rows_in(table: &DeltaTable) -> usize {
    table.snapshot().map_or(0, |snapshot| {
        snapshot
            .log_data()
            .into_iter()
            .filter_map(|file| file.num_records())
            .sum()
    })
}

/// The hashes of a batch's string column, read as the lake stores it (plain or view strings).
fn column_hashes(batch: &RecordBatch, name: &str, into: &mut Vec<u64>) {
    use deltalake::arrow::array::AsArray;
    let column = batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("the table has column {name}"));
    match column.data_type() {
        DataType::Utf8View => into.extend(column.as_string_view().iter().flatten().map(key_hash)),
        DataType::LargeUtf8 => {
            into.extend(column.as_string::<i64>().iter().flatten().map(key_hash))
        }
        _ => into.extend(strings(batch, name).iter().flatten().map(key_hash)),
    }
}

/// One write of a chunk: the table, its rows, and what they replace.
type TableWrite = (String, RecordBatch, Replace);

/// The writes of `writes` that go in the next round of [`SilverWriter::write_all`], and those
/// left: at most one write per table, the first in `writes` order; with `one_replacing_write`,
/// at most one replacing write, and no write of a table whose replacing write waits.
fn next_round(
    writes: Vec<TableWrite>,
    one_replacing_write: bool,
) -> (Vec<TableWrite>, Vec<TableWrite>) {
    let mut seen = HashSet::new();
    let mut replacing = false;
    writes.into_iter().partition(|(name, _, replace)| {
        let first_of_table = seen.insert(name.clone());
        let replaces = !matches!(replace, Replace::Nothing);
        if one_replacing_write && replaces && replacing {
            return false;
        }
        replacing |= first_of_table && replaces;
        first_of_table
    })
}

/// What merging one type's resources of a chunk writes, planned before any of it is written.
struct PlannedType {
    resource_type: String,
    /// Writes replacing the rows of keys silver knew (views, history, versions).
    replacing: Vec<TableWrite>,
    /// Writes appending rows of new keys, and quarantine's.
    appending: Vec<TableWrite>,
    winners: Vec<BronzeResource>,
    metrics: SilverMetrics,
}

/// Merges bronze chunks into silver during one ingest run.
///
/// It keeps the tables open between chunks (opening a Delta table replays its log), and a 64-bit hash
/// of every resource key silver already has. A chunk of new resources (the common case) is then
/// appended without reading anything; only keys whose hash is known are looked up.
pub struct SilverWriter<'l> {
    lake: &'l Lake,
    views: SilverViews,
    batch_id: String,
    tables: HashMap<String, DeltaTable>,
    /// Per resource type: hashes of the keys in `silver/versions/<type>`, this run's included.
    known_keys: HashMap<String, KnownKeys>,
    /// Merging again what may already be partly merged (a stream batch interrupted before silver):
    /// every key is replaced, so nothing is written twice.
    redo: bool,
    /// The Delta application transactions (one per stream partition) every commit carries while
    /// stream batches are merged: two processes merging the same partition's batch (one taking it
    /// over while the other still lands it) then conflict in Delta, and the loser merges again in
    /// redo mode.
    fence: Vec<(String, i64)>,
    /// Another process committed to a table between this writer's snapshot and its commit: the
    /// open tables and known keys are dropped before the next chunk.
    stale: bool,
    /// Replacing writes are made one at a time (appends still alongside): see
    /// [`Self::one_replacing_write_at_a_time`].
    one_replacing_write: bool,
}

impl<'l> SilverWriter<'l> {
    pub fn new(lake: &'l Lake, views: SilverViews, batch_id: &str) -> Self {
        SilverWriter {
            lake,
            views,
            batch_id: batch_id.to_string(),
            tables: HashMap::new(),
            known_keys: HashMap::new(),
            redo: false,
            fence: Vec::new(),
            stale: false,
            one_replacing_write: false,
        }
    }

    /// Makes the replacing writes of a chunk one at a time. Each reads and rewrites the files
    /// holding the rows it replaces, and a chunk of known patients rewrites three tables: one at a
    /// time took 30-50 MB off the peak of a 1 GB ingest, and 158 MB off a landing of corrections
    /// spread over a million readings, for about 0.4 s. `ingest fhir` takes that trade; the stream
    /// does not, as its time to silver would grow by half (BENCHMARKS.md, issue 25).
    pub fn one_replacing_write_at_a_time(&mut self) {
        self.one_replacing_write = true;
    }

    /// Drops the open tables and known keys: another process may have written silver since.
    pub fn forget(&mut self) {
        self.tables.clear();
        self.known_keys.clear();
    }

    /// Sets (or, with none, clears) the transactions the next commits carry (see the `fence` field).
    pub fn fencing(&mut self, fence: Vec<(String, i64)>) {
        self.fence = fence;
    }

    /// Switches redo mode on or off (see the `redo` field).
    pub fn redoing(&mut self, redo: bool) {
        self.redo = redo;
    }

    /// What the rows of known `keys` replace. In `redo`, what silver holds is not known (every
    /// key counts as known): each key is replaced, wherever its rows are.
    fn replace(&self, keys: &[&String], floor: &str) -> Replace {
        if self.redo {
            Replace::Matching(key_predicate("_key", keys.iter().copied()))
        } else {
            replace_known(keys, floor)
        }
    }

    async fn load_known_keys(&mut self, resource_type: &str) -> Result<(), IngestError> {
        if self.known_keys.contains_key(resource_type) {
            return Ok(());
        }
        // The tables this type writes are opened before its keys are read: a commit another
        // process makes after the keys were read is then newer than every snapshot this writer
        // commits on, so Delta's conflict check sees it (see `fence`).
        let mut names = vec![versions_table(resource_type)];
        names.extend(
            self.views
                .for_type(resource_type)
                .map(|(_, view)| view_table(view.name().unwrap_or_default())),
        );
        if resource_type == "Patient" {
            names.push(HISTORY_TABLE.to_string());
        }
        for name in names {
            if !self.tables.contains_key(&name) {
                let table = self.lake.table(&name).await?;
                self.tables.insert(name, table);
            }
        }
        let name = versions_table(resource_type);
        let mut hashes = Vec::new();
        if let Some(table) = self.lake.existing_table(&name).await? {
            // Sized once from the Delta log: a vector doubling its way to 10M keys would hold
            // both its old and new buffers, 200 MB, at its peak.
            hashes.reserve_exact(rows_in(&table));
            let mut stream = read::select(&table, &name, &["_key"], None).await?;
            while let Some(batch) = read::next_batch(&mut stream, &name).await? {
                column_hashes(&batch, "_key", &mut hashes);
            }
        }
        self.known_keys
            .insert(resource_type.to_string(), KnownKeys::from_hashes(hashes));
        Ok(())
    }

    /// Writes each `(table, batch, replace)` at the same time: the tables are independent, and
    /// their Parquet encoding and commits overlap. Two writes of one table (a view's replacing
    /// write and its append, or quarantine from two types) are made one after the other, in the
    /// order given. Every write of a round runs to its end; the first failure is returned, and the
    /// tables are opened again for the next chunk.
    async fn write_all(&mut self, mut writes: Vec<TableWrite>) -> Result<(), IngestError> {
        while !writes.is_empty() {
            let (now, later) = next_round(writes, self.one_replacing_write);
            self.write_round(now).await?;
            writes = later;
        }
        Ok(())
    }

    /// One round of [`Self::write_all`]: writes of distinct tables.
    async fn write_round(&mut self, writes: Vec<TableWrite>) -> Result<(), IngestError> {
        let mut opened = Vec::with_capacity(writes.len());
        let mut appends = Vec::with_capacity(writes.len());
        for (name, batch, replace) in writes {
            let table = match self.tables.remove(&name) {
                Some(table) => table,
                None => self.lake.table(&name).await?,
            };
            opened.push((name.clone(), table.version()));
            appends.push(silver_append(
                table,
                &name,
                batch,
                replace,
                &self.batch_id,
                &self.fence,
            ));
        }
        let appended = AppendBuilder::execute_all(appends).await?;
        for ((name, read), (table, _)) in opened.into_iter().zip(appended) {
            // Quarantine excepted: it holds no keys, and this process's own bronze landing
            // appends to it at the same time.
            self.stale |= name != QUARANTINE_TABLE
                && read.is_some_and(|read| table.version() > Some(read + 1));
            self.tables.insert(name, table);
        }
        Ok(())
    }

    /// Whether merging `resource_type` reads bronze: the patient history is recomputed from every
    /// version bronze holds, so a chunk of patients is merged only once its bronze is committed.
    pub fn reads_bronze(&self, resource_type: &str) -> bool {
        history_view(&self.views, resource_type).is_some()
    }

    /// Merges one chunk of bronze resources, given by type.
    ///
    /// Each table is written in at most two commits: the rows of keys silver knew replace theirs
    /// (a predicate naming those keys only), then the rows of new keys are appended. One commit
    /// naming every key costs far more: Delta checks each added row against the predicate, and
    /// planning a predicate of 10,000 keys took most of a chunk's time. Every type is planned
    /// first, then the tables of all types, `silver/versions/<type>` included, are written at the
    /// same time (a drop's chunk holds a dozen types: two rounds per type made the writer wait on
    /// commits one after another). A merge that fails part-way is never trusted: `ingest fhir`
    /// rebuilds silver from bronze after an interrupted run, and the stream merges the batch
    /// again in redo mode, where every key is replaced and an equal version written again.
    pub async fn merge_chunk(
        &mut self,
        resources: Vec<(String, Vec<BronzeResource>)>,
    ) -> Result<SilverMetrics, IngestError> {
        if std::mem::take(&mut self.stale) {
            self.forget();
        }
        let mut metrics = SilverMetrics::default();
        let mut planned = Vec::with_capacity(resources.len());
        for (resource_type, resources) in resources {
            if self.views.has_type(&resource_type) && !resources.is_empty() {
                planned.push(self.plan(resource_type, resources).await?);
            }
        }
        // Replacing writes first: the appends of a table that also has one wait for it.
        let mut writes = Vec::new();
        for plan in &mut planned {
            writes.append(&mut plan.replacing);
            metrics.rows += plan.metrics.rows;
            metrics.quarantined += plan.metrics.quarantined;
        }
        for plan in &mut planned {
            writes.append(&mut plan.appending);
        }
        metrics.commits += writes.len() as u64;
        self.write_all(writes).await?;
        for plan in planned {
            let hashes = self
                .known_keys
                .get_mut(&plan.resource_type)
                .expect("loaded by plan");
            hashes.extend(plan.winners.iter().map(|r| key_hash(&r.key)));
            free_on_worker(plan);
        }
        Ok(metrics)
    }

    /// What merging `resources` of one type writes: reads what silver knows of their keys and
    /// plans the writes (see [`Self::merge_chunk`]).
    async fn plan(
        &mut self,
        resource_type: String,
        resources: Vec<BronzeResource>,
    ) -> Result<PlannedType, IngestError> {
        let mut metrics = SilverMetrics::default();
        let views = self.views.clone();
        self.load_known_keys(&resource_type).await?;
        let hashes = &self.known_keys[&resource_type];
        let maybe_known: HashSet<String> = resources
            .iter()
            .filter(|r| self.redo || hashes.contains(key_hash(&r.key)))
            .map(|r| r.key.clone())
            .collect();
        let history_view = history_view(&views, &resource_type);
        let candidates: Vec<&String> = maybe_known.iter().collect();
        let looked_up = candidates.len();
        // One read at a time: overlapping the history's read of bronze with the look-up of known
        // versions saved 0.2 s of a chunk of 8,000 known patients, but added 70-100 MB to the peak.
        let history = match history_view {
            Some(view) => self.history(view, &resources, &maybe_known).await?,
            None => Default::default(),
        };
        let known = if candidates.is_empty() {
            HashMap::new()
        } else {
            known_versions(self.lake, &resource_type, &candidates).await?
        };
        // Replacing writes first, then appends: one of each per table at most.
        let (mut replacing, mut appending) = history;
        let (mut winners, losers) = plan::winners(resources, &known, self.redo);
        let redo = self.redo;
        let is_known = |key: &String| redo || known.contains_key(key);
        let floor = ingest_floor(&winners, &known).to_string();
        if !winners.is_empty() {
            let mut flattened: Vec<Flattened> = winners
                .par_iter_mut()
                .map(|r| r.flattened.take().unwrap_or_else(|| flatten(&views, r)))
                .collect();
            let planned = plan::view_rows(
                &views,
                &resource_type,
                &winners,
                &mut flattened,
                &known,
                self.redo,
            );
            for plan::ViewRows {
                index,
                rows,
                touched,
            } in planned
            {
                let view = &views.views()[index];
                let name = view_table(view.name().unwrap_or_default());
                metrics.rows += rows.len() as u64;
                let (old, new): (Vec<_>, Vec<_>) =
                    rows.into_iter().partition(|(r, _, _)| is_known(&r.key));
                let touched: Vec<&String> = touched.into_iter().filter(|k| is_known(k)).collect();
                if !touched.is_empty() {
                    let replace = self.replace(&touched, &floor);
                    replacing.push((name.clone(), view_batch(view, old), replace));
                }
                if !new.is_empty() {
                    appending.push((name, view_batch(view, new), Replace::Nothing));
                }
            }
            let rejected = plan::rejected(&winners, flattened);
            if !rejected.is_empty() {
                metrics.quarantined += rejected.len() as u64;
                let replace = if self.redo {
                    let batches: HashSet<&String> =
                        rejected.iter().map(|(_, p)| &p.batch_id).collect();
                    Replace::Matching(
                        ident("stage")
                            .eq(lit(VIEW_STAGE))
                            .and(key_predicate("batch_id", batches)),
                    )
                } else {
                    Replace::Nothing
                };
                appending.push((
                    QUARANTINE_TABLE.to_string(),
                    quarantine_batch(&rejected, VIEW_STAGE),
                    replace,
                ));
            }
            let (old, new): (Vec<&BronzeResource>, Vec<&BronzeResource>) =
                winners.iter().partition(|r| is_known(&r.key));
            let name = versions_table(&resource_type);
            if !old.is_empty() {
                let keys: Vec<&String> = old.iter().map(|r| &r.key).collect();
                let replace = self.replace(&keys, &floor);
                replacing.push((name.clone(), versions_batch(&old), replace));
            }
            if !new.is_empty() {
                appending.push((name, versions_batch(&new), Replace::Nothing));
            }
        }
        tracing::debug!(
            resource_type,
            winners = winners.len(),
            kept = losers.len(),
            looked_up,
            replaced = known.len(),
            rows = metrics.rows,
            "silver merge planned"
        );
        // Versions older than what silver or the chunk holds stay in bronze only.
        free_on_worker(losers);
        Ok(PlannedType {
            resource_type,
            replacing,
            appending,
            winners,
            metrics,
        })
    }

    /// The `patient_history` writes of a chunk of patients: the periods of patients silver may
    /// know (`maybe_known`), recomputed from all their versions in bronze and replacing theirs,
    /// and the periods of new patients, all of whose versions are in the chunk, appended. Every
    /// version counts, including those that lost to a newer one (an old address is history).
    async fn history(
        &self,
        view: (usize, &View),
        resources: &[BronzeResource],
        maybe_known: &HashSet<String>,
    ) -> Result<(Vec<TableWrite>, Vec<TableWrite>), IngestError> {
        let new: Vec<&BronzeResource> = resources
            .iter()
            .filter(|r| !maybe_known.contains(&r.key))
            .collect();
        let mut new_patients = BTreeMap::new();
        patient_versions(view, &new, &mut new_patients);
        let mut known_patients = BTreeMap::new();
        let ids: Vec<String> = maybe_known.iter().cloned().collect();
        if !ids.is_empty() {
            history_from_bronze(self.lake, view, &ids, &mut known_patients).await?;
        }
        let write = |patients: BTreeMap<String, Vec<PatientVersion>>, replace| {
            (!patients.is_empty()).then(|| {
                (
                    HISTORY_TABLE.to_string(),
                    history_batch(view.1, patients),
                    replace,
                )
            })
        };
        let replace = Replace::Matching(key_predicate("_key", &ids));
        Ok((
            write(known_patients, replace).into_iter().collect(),
            write(new_patients, Replace::Nothing).into_iter().collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_writes_each_table_once_and_at_most_one_replacing_write_when_asked() {
        let batch = RecordBatch::new_empty(Arc::new(Schema::empty()));
        let write = |name: &str, replaces: bool| {
            let replace = if replaces {
                Replace::Matching(lit(true))
            } else {
                Replace::Nothing
            };
            (name.to_string(), batch.clone(), replace)
        };
        let writes = || {
            vec![
                write("patient", true),
                write("history", true),
                write("patient", false),
                write("history", false),
                write("quarantine", false),
            ]
        };
        let rounds = |one_replacing_write| {
            let (mut writes, mut rounds) = (writes(), Vec::new());
            while !writes.is_empty() {
                let (now, later) = next_round(writes, one_replacing_write);
                rounds.push(
                    now.iter()
                        .map(|(name, _, replace)| {
                            format!(
                                "{name}{}",
                                if matches!(replace, Replace::Nothing) {
                                    ""
                                } else {
                                    "*"
                                }
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(" "),
                );
                writes = later;
            }
            rounds
        };
        assert_eq!(
            rounds(false),
            ["patient* history* quarantine", "patient history"]
        );
        assert_eq!(
            rounds(true),
            ["patient* quarantine", "history* patient", "history"],
            "the history's append waits for its replacing write, the patient's append does not"
        );
    }

    #[test]
    fn known_keys_hold_the_tables_keys_and_the_runs() {
        let mut known = KnownKeys::from_hashes(["b", "a", "d"].map(key_hash).into());
        assert!(["a", "b", "d"].iter().all(|k| known.contains(key_hash(k))));
        assert!(!known.contains(key_hash("c")));
        known.extend([key_hash("c")]);
        assert!(known.contains(key_hash("c")));
    }
}
