//! Silver: bronze resources flattened by the ViewDefinitions in `profiles/views/`, latest version wins.
//!
//! Every view is a table `silver/fhir/<view name>`: the view's columns, then `_key` (the resource
//! key), `_row` (the row's number within the resource), `_version_id`, `_last_updated`,
//! `_ingest_order` and `_batch_id`. `silver/versions/<type>` remembers the winning version of every
//! resource key, so an older version arriving later never overwrites a newer one, even when the
//! newer one produced no rows (an Observation entered in error leaves silver and stays out).
//!
//! Versions are ordered by `meta.versionId` (numerically when both are numbers), then
//! `meta.lastUpdated`, then ingest order (run, source, line, Bundle entry). Silver is a function of
//! bronze: the incremental path ([`SilverWriter::merge_chunk`], after each bronze commit) and the rebuild
//! ([`refresh`]) share [`flatten`] and the version order, so they give the same tables.
//!
//! `silver/fhir/patient_history` is SCD type 2 over the `patient` view: a period per change of the
//! demographics (every column but `version_id` and `last_updated`), with `valid_from`, `valid_to`
//! and `is_current`, recomputed from all of a patient's versions in bronze whenever one arrives.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use deltalake::DeltaTable;
use deltalake::arrow::array::{
    Array, ArrayRef, BooleanArray, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use futures::TryStreamExt;
use rayon::prelude::*;
use serde_json::Value as Json;

use super::IngestError;
use super::tables::{Provenance, QUARANTINE_TABLE, bronze_fhir_table, quarantine_batch};
use crate::fhir::{Location, Rejected};
use crate::issue::{Issue, Severity};
use crate::lake::{AppendBuilder, Lake, delete, read};
use crate::views::{self, Cell, View, ViewError};

pub const VERSIONS_PREFIX: &str = "silver/versions";
pub const HISTORY_TABLE: &str = "silver/fhir/patient_history";
/// The view whose rows `patient_history` keeps the history of.
pub const HISTORY_VIEW: &str = "patient";
/// The quarantine stage of resources a view could not evaluate.
pub const VIEW_STAGE: &str = "silver view";

pub fn view_table(name: &str) -> String {
    format!("silver/fhir/{name}")
}

fn versions_table(resource_type: &str) -> String {
    format!("{VERSIONS_PREFIX}/{resource_type}")
}

/// The views shipped with vitalake, used when the configured folder does not exist.
const BUILT_IN_VIEWS: [&str; 4] = [
    include_str!("../../profiles/views/blood_pressure.json"),
    include_str!("../../profiles/views/heart_rate.json"),
    include_str!("../../profiles/views/medication_dispense.json"),
    include_str!("../../profiles/views/patient.json"),
];

/// The silver views, compiled once per run.
#[derive(Clone)]
pub struct SilverViews {
    views: Arc<Vec<View>>,
}

impl SilverViews {
    /// The views in `dir`, or the built-in ones when `dir` does not exist.
    pub fn load(dir: &Path) -> Result<Self, ViewError> {
        let views = if dir.exists() {
            views::load_dir(dir)?
        } else {
            tracing::info!(folder = %dir.display(), "no views folder; using the built-in silver views");
            BUILT_IN_VIEWS
                .iter()
                .map(|text| {
                    View::from_json(&serde_json::from_str(text).expect("built-in views are JSON"))
                })
                .collect::<Result<_, _>>()?
        };
        Ok(SilverViews {
            views: Arc::new(views),
        })
    }

    pub fn none() -> Self {
        SilverViews {
            views: Arc::new(Vec::new()),
        }
    }

    pub fn views(&self) -> &[View] {
        &self.views
    }

    fn for_type<'s>(
        &'s self,
        resource_type: &'s str,
    ) -> impl Iterator<Item = (usize, &'s View)> + 's {
        self.views
            .iter()
            .enumerate()
            .filter(move |(_, v)| v.resource() == resource_type)
    }

    fn has_type(&self, resource_type: &str) -> bool {
        self.for_type(resource_type).next().is_some()
    }
}

/// Which of two versions of a resource is newer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionKey {
    pub version_id: Option<String>,
    pub last_updated: Option<i64>,
    /// Run, source, line and Bundle entries, formatted to sort as text.
    pub ingest_order: String,
}

impl Ord for VersionKey {
    fn cmp(&self, other: &Self) -> Ordering {
        let by_version = match (&self.version_id, &other.version_id) {
            (Some(a), Some(b)) => match (a.parse::<u64>(), b.parse::<u64>()) {
                (Ok(x), Ok(y)) => x.cmp(&y),
                _ => a.cmp(b),
            },
            (a, b) => a.is_some().cmp(&b.is_some()),
        };
        by_version
            .then(self.last_updated.cmp(&other.last_updated))
            .then_with(|| self.ingest_order.cmp(&other.ingest_order))
    }
}

impl PartialOrd for VersionKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// One resource as bronze holds it.
#[derive(Debug, Clone)]
pub struct BronzeResource {
    pub resource_type: String,
    pub key: String,
    pub id: Option<String>,
    pub version: VersionKey,
    /// When this version became valid: `meta.lastUpdated`, else when it was ingested.
    pub valid_from: i64,
    pub raw: String,
    pub location: Location,
    pub provenance: Arc<Provenance>,
}

fn strings(batch: &RecordBatch, name: &str) -> StringArray {
    let column = batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("bronze has column {name}"));
    let column = cast(column, &DataType::Utf8).expect("string columns cast to Utf8");
    column
        .as_any()
        .downcast_ref::<StringArray>()
        .expect("cast to Utf8")
        .clone()
}

fn integers(batch: &RecordBatch, name: &str) -> Int64Array {
    let column = batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("bronze has column {name}"));
    let column =
        cast(column, &DataType::Int64).expect("integer and timestamp columns cast to Int64");
    column
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("cast to Int64")
        .clone()
}

/// Bundle entry indices from a bronze `json_path` (`$.entry[3].resource.entry[1].resource`).
fn entries_of(json_path: &str) -> Vec<u32> {
    json_path
        .split('[')
        .skip(1)
        .filter_map(|part| part.split(']').next()?.parse().ok())
        .collect()
}

/// The resources of a bronze batch of one type.
pub fn from_bronze(resource_type: &str, batch: &RecordBatch) -> Vec<BronzeResource> {
    let (ids, versions, full_urls) = (
        strings(batch, "resource_id"),
        strings(batch, "version_id"),
        strings(batch, "full_url"),
    );
    let (sources, hashes, paths) = (
        strings(batch, "source_uri"),
        strings(batch, "source_sha256"),
        strings(batch, "json_path"),
    );
    let (raws, batch_ids) = (strings(batch, "raw"), strings(batch, "batch_id"));
    let (last_updated, lines, ingested_at) = (
        integers(batch, "last_updated"),
        integers(batch, "line"),
        integers(batch, "ingested_at"),
    );
    let mut provenances: HashMap<(&str, &str), Arc<Provenance>> = HashMap::new();
    (0..batch.num_rows())
        .map(|i| {
            let text = |a: &StringArray| (!a.is_null(i)).then(|| a.value(i).to_string());
            let json_path = paths.value(i);
            let location = Location {
                line: (!lines.is_null(i)).then(|| lines.value(i) as u64),
                entries: entries_of(json_path),
            };
            let provenance = provenances
                .entry((sources.value(i), batch_ids.value(i)))
                .or_insert_with(|| {
                    Arc::new(Provenance {
                        source_uri: sources.value(i).to_string(),
                        source_sha256: hashes.value(i).to_string(),
                        batch_id: batch_ids.value(i).to_string(),
                        ingested_at: ingested_at.value(i),
                    })
                })
                .clone();
            let id = text(&ids);
            let key = id
                .clone()
                .or_else(|| text(&full_urls))
                .unwrap_or_else(|| format!("{}:{}", hashes.value(i), location));
            let entries: Vec<String> = location
                .entries
                .iter()
                .map(|e| format!("{e:010}"))
                .collect();
            let ingest_order = format!(
                "{:020}|{}|{}|{:012}|{}",
                ingested_at.value(i),
                batch_ids.value(i),
                sources.value(i),
                location.line.unwrap_or(0),
                entries.join(".")
            );
            let last_updated = (!last_updated.is_null(i)).then(|| last_updated.value(i));
            BronzeResource {
                resource_type: resource_type.to_string(),
                key,
                id,
                valid_from: last_updated.unwrap_or(ingested_at.value(i)),
                version: VersionKey {
                    version_id: text(&versions),
                    last_updated,
                    ingest_order,
                },
                raw: raws.value(i).to_string(),
                location,
                provenance,
            }
        })
        .collect()
}

/// One resource flattened by every view of its type: rows per view (by index in [`SilverViews`]),
/// or why a view could not evaluate it.
struct Flattened {
    rows: Vec<(usize, Vec<Vec<Cell>>)>,
    rejected: Option<Rejected>,
}

fn flatten(views: &SilverViews, resource: &BronzeResource) -> Flattened {
    let mut flattened = Flattened {
        rows: Vec::new(),
        rejected: None,
    };
    let json: Json = match serde_json::from_str(&resource.raw) {
        Ok(json) => json,
        Err(e) => {
            // Bronze only holds JSON that parsed; this is damage, not input.
            flattened.rejected = Some(reject(
                resource,
                "bronze",
                format!("bronze row is not JSON: {e}"),
            ));
            return flattened;
        }
    };
    let mut issues = Vec::new();
    for (index, view) in views.for_type(&resource.resource_type) {
        match view.rows(&json) {
            Ok(rows) => flattened.rows.push((index, rows)),
            Err(error) => issues.push(Issue {
                severity: Severity::Error,
                location: view.name().unwrap_or("?").to_string(),
                rule: "view".into(),
                message: format!(
                    "view '{}' could not evaluate {error}",
                    view.name().unwrap_or("?")
                ),
            }),
        }
    }
    if !issues.is_empty() {
        let mut rejected = reject(resource, "view", String::new());
        rejected.issues = issues;
        flattened.rejected = Some(rejected);
    }
    flattened
}

fn reject(resource: &BronzeResource, rule: &str, message: String) -> Rejected {
    let mut rejected = Rejected::new(
        resource.raw.clone(),
        resource.location.clone(),
        Issue {
            severity: Severity::Error,
            location: resource.resource_type.clone(),
            rule: rule.into(),
            message,
        },
    );
    rejected.resource_type = Some(resource.resource_type.clone());
    rejected.id = resource.id.clone();
    rejected
}

/// What a silver merge did.
#[derive(Debug, Default, Clone, Copy)]
pub struct SilverMetrics {
    pub rows: u64,
    pub quarantined: u64,
    pub commits: u64,
}

fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn key_predicate<'k>(column: &str, keys: impl IntoIterator<Item = &'k String>) -> String {
    let list: Vec<String> = keys.into_iter().map(|k| quote(k)).collect();
    format!("{column} IN ({})", list.join(", "))
}

/// The winning versions already recorded for `keys`.
async fn known_versions(
    lake: &Lake,
    resource_type: &str,
    keys: &[&String],
) -> Result<HashMap<String, VersionKey>, IngestError> {
    let name = versions_table(resource_type);
    let mut known = HashMap::new();
    let Some(table) = lake.existing_table(&name).await? else {
        return Ok(known);
    };
    for slice in keys.chunks(10_000) {
        let sql = format!(
            "SELECT _key, _version_id, _last_updated, _ingest_order FROM t WHERE {}",
            key_predicate("_key", slice.iter().copied())
        );
        for batch in read::query(&table, &name, &sql).await? {
            let (k, v, o) = (
                strings(&batch, "_key"),
                strings(&batch, "_version_id"),
                strings(&batch, "_ingest_order"),
            );
            let updated = integers(&batch, "_last_updated");
            for i in 0..batch.num_rows() {
                known.insert(
                    k.value(i).to_string(),
                    VersionKey {
                        version_id: (!v.is_null(i)).then(|| v.value(i).to_string()),
                        last_updated: (!updated.is_null(i)).then(|| updated.value(i)),
                        ingest_order: o.value(i).to_string(),
                    },
                );
            }
        }
    }
    Ok(known)
}

fn timestamps(values: impl IntoIterator<Item = Option<i64>>) -> ArrayRef {
    Arc::new(
        values
            .into_iter()
            .collect::<TimestampMicrosecondArray>()
            .with_timezone("UTC"),
    )
}

fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The view's rows with silver's bookkeeping columns after them.
fn view_batch(view: &View, rows: Vec<(&BronzeResource, usize, Vec<Cell>)>) -> RecordBatch {
    let mut builder = view.builder();
    let mut meta: Vec<(&BronzeResource, usize)> = Vec::with_capacity(rows.len());
    for (resource, row_number, row) in rows {
        builder.push(row);
        meta.push((resource, row_number));
    }
    let batch = builder.finish().expect("view rows match the view's schema");
    let mut extra: Vec<(Field, ArrayRef)> = vec![
        (
            Field::new("_key", DataType::Utf8, false),
            Arc::new(
                meta.iter()
                    .map(|(r, _)| Some(r.key.as_str()))
                    .collect::<StringArray>(),
            ),
        ),
        (
            Field::new("_row", DataType::Int32, false),
            Arc::new(
                meta.iter()
                    .map(|(_, n)| Some(*n as i32))
                    .collect::<Int32Array>(),
            ),
        ),
    ];
    extra.extend(version_columns(meta.iter().map(|(r, _)| *r)));
    append_columns(batch, extra)
}

/// `_version_id`, `_last_updated`, `_ingest_order`, `_batch_id`.
fn version_columns<'r>(
    resources: impl Iterator<Item = &'r BronzeResource> + Clone,
) -> Vec<(Field, ArrayRef)> {
    vec![
        (
            Field::new("_version_id", DataType::Utf8, true),
            Arc::new(
                resources
                    .clone()
                    .map(|r| r.version.version_id.as_deref())
                    .collect::<StringArray>(),
            ),
        ),
        (
            Field::new("_last_updated", timestamp_type(), true),
            timestamps(resources.clone().map(|r| r.version.last_updated)),
        ),
        (
            Field::new("_ingest_order", DataType::Utf8, false),
            Arc::new(
                resources
                    .clone()
                    .map(|r| Some(r.version.ingest_order.as_str()))
                    .collect::<StringArray>(),
            ),
        ),
        (
            Field::new("_batch_id", DataType::Utf8, false),
            Arc::new(
                resources
                    .map(|r| Some(r.provenance.batch_id.as_str()))
                    .collect::<StringArray>(),
            ),
        ),
    ]
}

fn append_columns(batch: RecordBatch, extra: Vec<(Field, ArrayRef)>) -> RecordBatch {
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let mut columns = batch.columns().to_vec();
    for (field, column) in extra {
        fields.push(field);
        columns.push(column);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("silver columns line up")
}

fn versions_batch(resources: &[&BronzeResource]) -> RecordBatch {
    let mut fields = vec![Field::new("_key", DataType::Utf8, false)];
    let mut columns: Vec<ArrayRef> = vec![Arc::new(
        resources
            .iter()
            .map(|r| Some(r.key.as_str()))
            .collect::<StringArray>(),
    )];
    for (field, column) in version_columns(resources.iter().copied()) {
        fields.push(field);
        columns.push(column);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("version columns line up")
}

/// How a write treats the rows already in a table.
enum Replace {
    /// Only new keys: a plain append, which reads nothing.
    Nothing,
    /// Replace the rows matching this predicate, in the same commit.
    Matching(String),
    /// Replace the whole table (a rebuild).
    All,
}

/// Replace the rows of `keys` if any of them was known before; otherwise nothing can be there.
fn replace_known(keys: &[&String], known: &HashMap<String, VersionKey>) -> Replace {
    if keys.iter().any(|k| known.contains_key(*k)) {
        Replace::Matching(key_predicate("_key", keys.iter().copied()))
    } else {
        Replace::Nothing
    }
}

/// Writes `batch` to an open table; returns the table after the commit and the rows written.
async fn write_to(
    table: DeltaTable,
    name: &str,
    batch: RecordBatch,
    replace: Replace,
    batch_id: &str,
) -> Result<(DeltaTable, u64), IngestError> {
    let rows = batch.num_rows() as u64;
    let operation = if matches!(replace, Replace::All) {
        "silver refresh"
    } else {
        "silver merge"
    };
    let builder = AppendBuilder::new(table, name, vec![batch])
        .with_metadata("vitalake.batch_id", batch_id)
        .with_metadata("vitalake.operation", operation);
    let builder = match replace {
        Replace::Nothing => builder,
        Replace::Matching(predicate) => builder.replacing(predicate),
        Replace::All => builder.replacing_all(),
    };
    let (table, _) = builder.execute().await?;
    Ok((table, rows))
}

/// Opens `name` and writes `batch` to it (the rebuild, which writes each table once).
async fn write(
    lake: &Lake,
    name: &str,
    batch: RecordBatch,
    replace: Replace,
    batch_id: &str,
) -> Result<u64, IngestError> {
    let table = lake.table(name).await?;
    Ok(write_to(table, name, batch, replace, batch_id).await?.1)
}

fn key_hash(key: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
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
    known_keys: HashMap<String, HashSet<u64>>,
}

impl<'l> SilverWriter<'l> {
    pub fn new(lake: &'l Lake, views: SilverViews, batch_id: &str) -> Self {
        SilverWriter {
            lake,
            views,
            batch_id: batch_id.to_string(),
            tables: HashMap::new(),
            known_keys: HashMap::new(),
        }
    }

    async fn load_known_keys(&mut self, resource_type: &str) -> Result<(), IngestError> {
        if self.known_keys.contains_key(resource_type) {
            return Ok(());
        }
        let name = versions_table(resource_type);
        let mut hashes = HashSet::new();
        if let Some(table) = self.lake.existing_table(&name).await? {
            let mut stream = read::stream(&table, &name, "SELECT _key FROM t").await?;
            while let Some(batch) = stream
                .try_next()
                .await
                .map_err(|source| IngestError::Silver(format!("reading {name}: {source}")))?
            {
                let keys = strings(&batch, "_key");
                hashes.extend(keys.iter().flatten().map(key_hash));
            }
        }
        self.known_keys.insert(resource_type.to_string(), hashes);
        Ok(())
    }

    async fn write(
        &mut self,
        name: &str,
        batch: RecordBatch,
        replace: Replace,
    ) -> Result<u64, IngestError> {
        let table = match self.tables.remove(name) {
            Some(table) => table,
            None => self.lake.table(name).await?,
        };
        let (table, rows) = write_to(table, name, batch, replace, &self.batch_id).await?;
        self.tables.insert(name.to_string(), table);
        Ok(rows)
    }

    /// Merges one chunk of bronze resources of one type.
    pub async fn merge_chunk(
        &mut self,
        resource_type: &str,
        resources: Vec<BronzeResource>,
    ) -> Result<SilverMetrics, IngestError> {
        let mut metrics = SilverMetrics::default();
        let views = self.views.clone();
        if !views.has_type(resource_type) || resources.is_empty() {
            return Ok(metrics);
        }
        self.load_known_keys(resource_type).await?;
        let hashes = &self.known_keys[resource_type];
        let maybe_known: HashSet<String> = resources
            .iter()
            .filter(|r| hashes.contains(&key_hash(&r.key)))
            .map(|r| r.key.clone())
            .collect();
        let history = if resource_type == "Patient" {
            views
                .views()
                .iter()
                .find(|v| v.name() == Some(HISTORY_VIEW) && v.resource() == "Patient")
        } else {
            None
        };
        // A new patient's versions are all in this chunk; a known one's history is read from bronze.
        let mut chunk_versions = BTreeMap::new();
        if let Some(view) = history {
            let new: Vec<BronzeResource> = resources
                .iter()
                .filter(|r| !maybe_known.contains(&r.key))
                .cloned()
                .collect();
            patient_versions(view, &new, &mut chunk_versions);
        }
        let mut newest: HashMap<String, BronzeResource> = HashMap::new();
        for resource in resources {
            match newest.get(&resource.key) {
                Some(seen) if seen.version >= resource.version => {}
                _ => {
                    newest.insert(resource.key.clone(), resource);
                }
            }
        }
        let candidates: Vec<&String> = maybe_known.iter().collect();
        let known = if candidates.is_empty() {
            HashMap::new()
        } else {
            known_versions(self.lake, resource_type, &candidates).await?
        };
        let mut winners: Vec<&BronzeResource> = newest
            .values()
            .filter(|r| known.get(&r.key).is_none_or(|old| r.version > *old))
            .collect();
        winners.sort_by(|a, b| a.key.cmp(&b.key));

        if !winners.is_empty() {
            let mut flattened: Vec<Flattened> =
                winners.par_iter().map(|r| flatten(&views, r)).collect();
            for (index, view) in views.for_type(resource_type) {
                let mut rows = Vec::new();
                let mut touched: Vec<&String> = Vec::new();
                for (resource, flat) in winners.iter().zip(flattened.iter_mut()) {
                    // Each view's rows are taken once: moved into the batch, not copied.
                    let view_rows = flat
                        .rows
                        .iter_mut()
                        .find(|(i, _)| *i == index)
                        .map(|(_, r)| std::mem::take(r))
                        .unwrap_or_default();
                    // Only keys that have rows now or may have had rows before need a rewrite.
                    if !view_rows.is_empty() || known.contains_key(&resource.key) {
                        touched.push(&resource.key);
                    }
                    rows.extend(
                        view_rows
                            .into_iter()
                            .enumerate()
                            .map(|(n, row)| (*resource, n, row)),
                    );
                }
                if touched.is_empty() {
                    continue;
                }
                let name = view_table(view.name().unwrap_or_default());
                metrics.rows += self
                    .write(
                        &name,
                        view_batch(view, rows),
                        replace_known(&touched, &known),
                    )
                    .await?;
                metrics.commits += 1;
            }
            let keys: Vec<&String> = winners.iter().map(|r| &r.key).collect();
            self.write(
                &versions_table(resource_type),
                versions_batch(&winners),
                replace_known(&keys, &known),
            )
            .await?;
            metrics.commits += 1;
            let rejected: Vec<(Rejected, Arc<Provenance>)> = winners
                .iter()
                .zip(flattened)
                .filter_map(|(r, f)| f.rejected.map(|rejected| (rejected, r.provenance.clone())))
                .collect();
            if !rejected.is_empty() {
                metrics.quarantined += rejected.len() as u64;
                self.write(
                    QUARANTINE_TABLE,
                    quarantine_batch(&rejected, VIEW_STAGE),
                    Replace::Nothing,
                )
                .await?;
                metrics.commits += 1;
            }
            let hashes = self
                .known_keys
                .get_mut(resource_type)
                .expect("loaded above");
            hashes.extend(winners.iter().map(|r| key_hash(&r.key)));
        }
        if let Some(view) = history {
            let known_ids: Vec<String> = maybe_known.into_iter().collect();
            let mut patients = chunk_versions;
            if !known_ids.is_empty() {
                history_from_bronze(self.lake, view, &known_ids, &mut patients).await?;
            }
            if !patients.is_empty() {
                let keys: Vec<String> = patients.keys().cloned().collect();
                let replace = if known_ids.is_empty() {
                    Replace::Nothing
                } else {
                    Replace::Matching(key_predicate("_key", &keys))
                };
                self.write(HISTORY_TABLE, history_batch(view, patients), replace)
                    .await?;
                metrics.commits += 1;
            }
        }
        tracing::debug!(
            resource_type,
            winners = winners.len(),
            rows = metrics.rows,
            "silver merged"
        );
        Ok(metrics)
    }
}

/// One version of a patient as the history sees it.
struct PatientVersion {
    version: VersionKey,
    valid_from: i64,
    row: Vec<Cell>,
}

/// SCD2 periods of one patient from all its versions: a new period whenever the demographics change.
fn history_rows(
    view: &View,
    mut versions: Vec<PatientVersion>,
) -> Vec<(Vec<Cell>, i64, Option<i64>, bool)> {
    versions.sort_by(|a, b| a.version.cmp(&b.version));
    let demographic: Vec<bool> = view
        .columns()
        .iter()
        .map(|c| c.name != "version_id" && c.name != "last_updated")
        .collect();
    let same = |a: &[Cell], b: &[Cell]| {
        a.iter()
            .zip(b)
            .zip(&demographic)
            .all(|((x, y), d)| !d || x == y)
    };
    let mut periods: Vec<(Vec<Cell>, i64, Option<i64>, bool)> = Vec::new();
    for version in versions {
        if let Some(last) = periods.last()
            && same(&last.0, &version.row)
        {
            continue;
        }
        if let Some(last) = periods.last_mut() {
            last.2 = Some(version.valid_from);
            last.3 = false;
        }
        periods.push((version.row, version.valid_from, None, true));
    }
    periods
}

fn history_batch(view: &View, patients: BTreeMap<String, Vec<PatientVersion>>) -> RecordBatch {
    let mut builder = view.builder();
    let (mut keys, mut rows, mut from, mut to, mut current) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (key, versions) in patients {
        for (n, (row, valid_from, valid_to, is_current)) in
            history_rows(view, versions).into_iter().enumerate()
        {
            builder.push(row);
            keys.push(key.clone());
            rows.push(n as i32);
            from.push(Some(valid_from));
            to.push(valid_to);
            current.push(Some(is_current));
        }
    }
    let batch = builder.finish().expect("history rows match the view");
    append_columns(
        batch,
        vec![
            (
                Field::new("valid_from", timestamp_type(), false),
                timestamps(from),
            ),
            (
                Field::new("valid_to", timestamp_type(), true),
                timestamps(to),
            ),
            (
                Field::new("is_current", DataType::Boolean, false),
                Arc::new(current.into_iter().collect::<BooleanArray>()),
            ),
            (
                Field::new("_key", DataType::Utf8, false),
                Arc::new(StringArray::from(keys)),
            ),
            (
                Field::new("_row", DataType::Int32, false),
                Arc::new(Int32Array::from(rows)),
            ),
        ],
    )
}

/// The patient view's row for each version (versions the view cannot evaluate are left out; they are
/// in quarantine through the view's own table).
fn patient_versions(
    view: &View,
    resources: &[BronzeResource],
    out: &mut BTreeMap<String, Vec<PatientVersion>>,
) {
    let rows: Vec<Option<Vec<Cell>>> = resources
        .par_iter()
        .map(|r| {
            let json: Json = serde_json::from_str(&r.raw).ok()?;
            view.rows(&json).ok()?.into_iter().next()
        })
        .collect();
    for (resource, row) in resources.iter().zip(rows) {
        if let Some(row) = row {
            out.entry(resource.key.clone())
                .or_default()
                .push(PatientVersion {
                    version: resource.version.clone(),
                    valid_from: resource.valid_from,
                    row,
                });
        }
    }
}

const BRONZE_COLUMNS: &str = "resource_id, version_id, last_updated, full_url, source_uri, source_sha256, line, json_path, raw, ingested_at, batch_id";

/// Every version bronze holds of the patients `ids`, added to `patients`.
async fn history_from_bronze(
    lake: &Lake,
    view: &View,
    ids: &[String],
    patients: &mut BTreeMap<String, Vec<PatientVersion>>,
) -> Result<(), IngestError> {
    let bronze_name = bronze_fhir_table("Patient");
    let Some(bronze) = lake.existing_table(&bronze_name).await? else {
        return Ok(());
    };
    for slice in ids.chunks(10_000) {
        let sql = format!(
            "SELECT {BRONZE_COLUMNS} FROM t WHERE {}",
            key_predicate("resource_id", slice)
        );
        for batch in read::query(&bronze, &bronze_name, &sql).await? {
            patient_versions(view, &from_bronze("Patient", &batch), patients);
        }
    }
    Ok(())
}

/// What a refresh rebuilt.
#[derive(Debug, Default, serde::Serialize)]
pub struct RefreshReport {
    /// Rows per silver table.
    pub tables: BTreeMap<String, u64>,
    pub resources_read: u64,
    pub quarantined: u64,
}

/// Rebuilds silver from bronze: every view (or only `only`), the version index and the patient history.
pub async fn refresh(
    lake: &Lake,
    views: &SilverViews,
    only: Option<&str>,
) -> Result<RefreshReport, IngestError> {
    if let Some(name) = only
        && !views.views().iter().any(|v| v.name() == Some(name))
    {
        return Err(IngestError::Silver(format!(
            "no view named '{name}' in the silver views"
        )));
    }
    let batch_id = uuid::Uuid::now_v7().to_string();
    let mut report = RefreshReport::default();
    let mut types: Vec<&str> = views.views().iter().map(View::resource).collect();
    types.sort();
    types.dedup();
    for resource_type in types {
        let selected: Vec<(usize, &View)> = views
            .for_type(resource_type)
            .filter(|(_, v)| only.is_none_or(|o| v.name() == Some(o)))
            .collect();
        if selected.is_empty() {
            continue;
        }
        let bronze_name = bronze_fhir_table(resource_type);
        let mut winners: HashMap<String, (BronzeResource, Flattened)> = HashMap::new();
        let mut patients = BTreeMap::new();
        let history_view = selected
            .iter()
            .find(|(_, v)| v.name() == Some(HISTORY_VIEW) && resource_type == "Patient")
            .map(|(_, v)| *v);
        if let Some(bronze) = lake.existing_table(&bronze_name).await? {
            let mut stream = read::stream(
                &bronze,
                &bronze_name,
                &format!("SELECT {BRONZE_COLUMNS} FROM t"),
            )
            .await?;
            while let Some(batch) = stream
                .try_next()
                .await
                .map_err(|source| IngestError::Silver(format!("reading {bronze_name}: {source}")))?
            {
                let resources = from_bronze(resource_type, &batch);
                report.resources_read += resources.len() as u64;
                if let Some(view) = history_view {
                    patient_versions(view, &resources, &mut patients);
                }
                let newer: Vec<BronzeResource> = resources
                    .into_iter()
                    .filter(|r| {
                        winners
                            .get(&r.key)
                            .is_none_or(|(old, _)| r.version > old.version)
                    })
                    .collect();
                let flattened: Vec<Flattened> =
                    newer.par_iter().map(|r| flatten(views, r)).collect();
                for (resource, flat) in newer.into_iter().zip(flattened) {
                    match winners.get(&resource.key) {
                        Some((old, _)) if old.version >= resource.version => {}
                        _ => {
                            winners.insert(resource.key.clone(), (resource, flat));
                        }
                    }
                }
            }
        }
        let mut ordered: Vec<&(BronzeResource, Flattened)> = winners.values().collect();
        ordered.sort_by(|a, b| a.0.key.cmp(&b.0.key));
        for (index, view) in &selected {
            let rows = ordered
                .iter()
                .flat_map(|(resource, flat)| {
                    let view_rows = flat
                        .rows
                        .iter()
                        .find(|(i, _)| i == index)
                        .map(|(_, r)| r.as_slice())
                        .unwrap_or_default();
                    view_rows
                        .iter()
                        .enumerate()
                        .map(move |(n, row)| (resource, n, row.clone()))
                })
                .collect();
            let name = view_table(view.name().unwrap_or_default());
            let written =
                write(lake, &name, view_batch(view, rows), Replace::All, &batch_id).await?;
            report.tables.insert(name, written);
        }
        let all: Vec<&BronzeResource> = ordered.iter().map(|(r, _)| r).collect();
        write(
            lake,
            &versions_table(resource_type),
            versions_batch(&all),
            Replace::All,
            &batch_id,
        )
        .await?;
        if let Some(view) = history_view {
            let written = write(
                lake,
                HISTORY_TABLE,
                history_batch(view, patients),
                Replace::All,
                &batch_id,
            )
            .await?;
            report.tables.insert(HISTORY_TABLE.to_string(), written);
        }
        // The view failures of this type are found again: replace the old ones.
        let rejected: Vec<(Rejected, Arc<Provenance>)> = ordered
            .iter()
            .filter_map(|(r, f)| {
                f.rejected
                    .clone()
                    .map(|rejected| (rejected, r.provenance.clone()))
            })
            .collect();
        if let Some(quarantine) = lake.existing_table(QUARANTINE_TABLE).await? {
            let predicate = format!(
                "stage = '{VIEW_STAGE}' AND resource_type = {}",
                quote(resource_type)
            );
            delete::delete_where(quarantine, QUARANTINE_TABLE, &predicate).await?;
        }
        if !rejected.is_empty() {
            report.quarantined += rejected.len() as u64;
            let table = lake.table(QUARANTINE_TABLE).await?;
            AppendBuilder::new(
                table,
                QUARANTINE_TABLE,
                vec![quarantine_batch(&rejected, VIEW_STAGE)],
            )
            .with_metadata("vitalake.batch_id", batch_id.as_str())
            .execute()
            .await?;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(version: Option<&str>, updated: Option<i64>, order: &str) -> VersionKey {
        VersionKey {
            version_id: version.map(str::to_string),
            last_updated: updated,
            ingest_order: order.into(),
        }
    }

    #[test]
    fn version_order_is_version_then_last_updated_then_ingest_order() {
        assert!(
            key(Some("10"), None, "a") > key(Some("9"), Some(5), "b"),
            "numeric, not text"
        );
        assert!(key(Some("2"), Some(1), "a") > key(None, Some(9), "b"));
        assert!(key(Some("2"), Some(2), "a") > key(Some("2"), Some(1), "b"));
        assert!(key(None, None, "b") > key(None, None, "a"));
    }

    #[test]
    fn entries_from_json_path() {
        assert_eq!(
            entries_of("$.entry[3].resource.entry[12].resource"),
            vec![3, 12]
        );
        assert!(entries_of("$").is_empty());
    }

    #[test]
    fn built_in_views_compile() {
        let dir = Path::new("/nonexistent-views-folder");
        let views = SilverViews::load(dir).unwrap();
        let names: Vec<_> = views.views().iter().filter_map(View::name).collect();
        assert_eq!(
            names,
            [
                "blood_pressure",
                "heart_rate",
                "medication_dispense",
                "patient"
            ]
        );
    }
}
