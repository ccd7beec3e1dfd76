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
//! bronze: the incremental path ([`SilverWriter::merge_chunk`], with each bronze commit) and the rebuild
//! ([`refresh`]) share `flatten` and the version order, so they give the same tables.
//!
//! `silver/fhir/patient_history` is SCD type 2 over the `patient` view: a period per change of the
//! demographics (every column but `version_id` and `last_updated`), with `valid_from`, `valid_to`
//! and `is_current`, recomputed from all of a patient's versions whenever one arrives.
//!
//! Files: `bronze.rs` (bronze rows back as resources), `flatten.rs` (a resource through the views),
//! `batches.rs` (silver table shapes and writes), `writer.rs` (the incremental path), `history.rs`
//! (SCD2), `refresh.rs` (the rebuild).

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
use deltalake::datafusion::prelude::{Expr, ident, lit};
use rayon::prelude::*;
use serde_json::Value as Json;

mod batches;
mod bronze;
mod flatten;
mod history;
mod plan;
mod refresh;
mod writer;

use batches::*;
use bronze::*;
use flatten::*;
use history::*;

pub use bronze::{BronzeResource, ResourceToLand, bronze_resources, from_bronze, from_records};
pub use flatten::{Flattened, flatten_ahead};
pub use refresh::{RefreshReport, refresh};
pub use writer::SilverWriter;

use super::IngestError;
use super::tables::{Provenance, QUARANTINE_TABLE, bronze_fhir_table, quarantine_batch};
use crate::fhir::{Location, Rejected, ResourceRecord};
use crate::issue::{Issue, Severity};
use crate::lake::stream_append::append_columns;
use crate::lake::{AppendBuilder, Lake, delete, read};
use crate::views::{self, Cell, View, ViewError};

pub use crate::lake::layout::{HISTORY_TABLE, VERSIONS_PREFIX, versions_table, view_table};
/// The view whose rows `patient_history` keeps the history of.
pub const HISTORY_VIEW: &str = "patient";
/// The quarantine stage of resources a view could not evaluate.
pub const VIEW_STAGE: &str = "silver view";

/// Creates, empty, every view's table that no run has written yet: a silver table exists from the
/// first run on, whether or not its resources have arrived, so that BI tools, gold SQL and
/// `SHOW TABLES` see the same tables on every lake. Another process creating it at the same time
/// is as good.
pub async fn ensure_view_tables(lake: &Lake, views: &SilverViews) -> Result<(), IngestError> {
    // One listing, not a log read per view: this runs at the start of every ingest and stream.
    let existing: HashSet<String> = lake
        .list_tables(crate::lake::layout::SILVER_FHIR_PREFIX)
        .await?
        .into_iter()
        .collect();
    for view in views.views() {
        let name = view_table(view.name().unwrap_or_default());
        if existing.contains(&name) {
            continue;
        }
        let empty = batches::view_batch(view, Vec::new());
        if let Err(error) = batches::write(lake, &name, empty, Replace::Nothing, "create").await
            && lake.existing_table(&name).await?.is_none()
        {
            return Err(error);
        }
    }
    Ok(())
}

/// The views shipped with vitalake, used when the configured folder does not exist.
const BUILT_IN_VIEWS: [&str; 12] = [
    include_str!("../../../profiles/views/allergy_intolerance.json"),
    include_str!("../../../profiles/views/blood_pressure.json"),
    include_str!("../../../profiles/views/condition.json"),
    include_str!("../../../profiles/views/encounter.json"),
    include_str!("../../../profiles/views/heart_rate.json"),
    include_str!("../../../profiles/views/immunization.json"),
    include_str!("../../../profiles/views/lab_result.json"),
    include_str!("../../../profiles/views/medication_dispense.json"),
    include_str!("../../../profiles/views/medication_request.json"),
    include_str!("../../../profiles/views/patient.json"),
    include_str!("../../../profiles/views/procedure.json"),
    include_str!("../../../profiles/views/vital_sign.json"),
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

    pub(super) fn for_type<'s>(
        &'s self,
        resource_type: &'s str,
    ) -> impl Iterator<Item = (usize, &'s View)> + 's {
        self.views
            .iter()
            .enumerate()
            .filter(move |(_, v)| v.resource() == resource_type)
    }

    pub(super) fn has_type(&self, resource_type: &str) -> bool {
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

impl VersionKey {
    /// Whether both name one version: the same `meta.versionId` and `meta.lastUpdated`, both
    /// given. FHIR gives every change of a resource a new version, so such a record is the same
    /// version delivered again (Event Hubs delivers at least once; a device re-sends).
    fn same_version(&self, other: &Self) -> bool {
        self.version_id.is_some()
            && self.last_updated.is_some()
            && self.version_id == other.version_id
            && self.last_updated == other.last_updated
    }
}

/// Newer is a higher `versionId`, then a later `lastUpdated`, then a later ingest. A version
/// delivered again is the exception: its first ingest stays the newest, so silver keeps what it
/// has rather than rewriting it, and a rebuild from bronze picks the same copy.
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
            .then_with(|| {
                let by_ingest = self.ingest_order.cmp(&other.ingest_order);
                if self.same_version(other) {
                    by_ingest.reverse()
                } else {
                    by_ingest
                }
            })
    }
}

/// Which of two records of one key silver keeps, once [`erased`] has dropped what a delete
/// erased: a version beats a delete event (any version left was ingested after it), two versions
/// go by [`VersionKey`], and of two deletes the later one counts.
pub(super) fn newer(a: &BronzeResource, b: &BronzeResource) -> bool {
    match (a.deleted, b.deleted) {
        (false, true) => true,
        (true, false) => false,
        _ => a.version > b.version,
    }
}

/// The ingest order of each key's latest delete event among `records`: that delete erases every
/// version of the key ingested before it, including the one silver holds; the versions ingested
/// after it compete as usual. (Kept out of [`VersionKey`]'s order, which must stay total: a delete
/// between two versions would otherwise sit above the older and below the newer by turns.)
pub(super) fn latest_deletes<'r>(
    records: impl Iterator<Item = &'r BronzeResource>,
) -> HashMap<String, String> {
    let mut deletes: HashMap<String, String> = HashMap::new();
    for r in records.filter(|r| r.deleted) {
        let at = &r.version.ingest_order;
        if deletes.get(&r.key).is_none_or(|seen| at > seen) {
            deletes.insert(r.key.clone(), at.clone());
        }
    }
    deletes
}

/// Whether `r` is a version an ingested-later delete of its key erased.
pub(super) fn erased(r: &BronzeResource, deletes: &HashMap<String, String>) -> bool {
    !r.deleted
        && deletes
            .get(&r.key)
            .is_some_and(|at| r.version.ingest_order < *at)
}

impl PartialOrd for VersionKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// What a silver merge did.
#[derive(Debug, Default, Clone, Copy)]
pub struct SilverMetrics {
    pub rows: u64,
    pub quarantined: u64,
    pub commits: u64,
}

/// `value` as a SQL string literal.
pub(crate) fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// `column IN (keys)`, built without SQL (see [`crate::lake::keys_in`]).
pub(super) fn key_predicate<'k>(column: &str, keys: impl IntoIterator<Item = &'k String>) -> Expr {
    crate::lake::keys_in(column, keys.into_iter().map(String::as_str))
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
        assert!(
            key(Some("2"), Some(1), "a") > key(Some("2"), Some(1), "b"),
            "one version delivered twice: the first ingest stays"
        );
        assert!(key(Some("2"), None, "b") > key(Some("2"), None, "a"));
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
    fn decoded_records_become_the_resources_their_bronze_rows_give() {
        let provenance = Arc::new(Provenance {
            source_uri: "eventhubs://ns/hub/$Default/0".into(),
            source_sha256: "ab12".into(),
            batch_id: "b1".into(),
            ingested_at: 1_700_000_000_000_000,
        });
        let record = |id: Option<&str>, full_url: Option<&str>, line: u64, entries: Vec<u32>| {
            ResourceRecord {
                resource_type: "Observation".into(),
                id: id.map(str::to_string),
                version_id: id.map(|_| "2".to_string()),
                last_updated: id.map(|_| 1_690_000_000_000_000),
                full_url: full_url.map(str::to_string),
                raw: format!(r#"{{"resourceType":"Observation","n":{line}}}"#),
                location: Location {
                    line: Some(line),
                    entries,
                },
                warnings: vec![Issue::error("rule", "Observation", "kept in bronze only")],
                json: None,
                deleted: false,
            }
        };
        let records: Vec<(ResourceRecord, Arc<Provenance>)> = [
            record(Some("o1"), None, 7, Vec::new()),
            record(None, Some("urn:uuid:1"), 8, vec![2]),
            record(None, None, 9, vec![1, 3]),
        ]
        .into_iter()
        .map(|r| (r, provenance.clone()))
        .collect();
        let through_bronze = from_bronze(
            "Observation",
            &crate::ingest::tables::bronze_batch(&records),
        );
        let moved = from_records(records.into_iter().map(|(r, p)| (r, p, None)).collect());
        assert_eq!(format!("{moved:?}"), format!("{through_bronze:?}"));
        assert_eq!(
            moved[2].key,
            "ab12:line 9 $.entry[1].resource.entry[3].resource"
        );
        // Flattened ahead, a resource's rows are all silver reads: its text is bronze's alone.
        let flattened = Flattened {
            rows: Vec::new(),
            rejected: None,
        };
        let landed = from_records(vec![(
            record(Some("o2"), None, 10, Vec::new()),
            provenance.clone(),
            Some(flattened),
        )]);
        assert!(landed[0].raw.is_empty() && landed[0].flattened.is_some());
    }

    #[test]
    fn built_in_views_are_the_shipped_folder() {
        let built_in = SilverViews::load(Path::new("/nonexistent-views-folder")).unwrap();
        let folder = SilverViews::load(Path::new("profiles/views")).unwrap();
        let names = |views: &SilverViews| -> Vec<String> {
            views
                .views()
                .iter()
                .filter_map(View::name)
                .map(String::from)
                .collect()
        };
        assert_eq!(names(&built_in), names(&folder));
        assert_eq!(names(&built_in).len(), 12);
    }
}
