//! Bronze rows read back as resources, with the version order silver needs.

use super::*;

/// One resource as bronze holds it.
#[derive(Debug, Clone)]
pub struct BronzeResource {
    pub resource_type: String,
    pub key: String,
    pub id: Option<String>,
    pub version: VersionKey,
    /// When this version became valid: `meta.lastUpdated`, else when it was ingested.
    pub valid_from: i64,
    /// The JSON text, which silver reads only to flatten the resource: empty when `flattened`
    /// came with it. Bronze's batch holds the text by then, and a chunk's 8 MB held a second time
    /// until its silver merge ends would only add to the peak.
    pub raw: String,
    /// The rows of the views, when they ran where the resource was decoded ([`flatten_ahead`]).
    pub flattened: Option<Flattened>,
    pub location: Location,
    pub provenance: Arc<Provenance>,
    /// A delete event: the resource leaves silver (see [`super::newer`]).
    pub deleted: bool,
}

pub(super) fn strings(batch: &RecordBatch, name: &str) -> StringArray {
    let column = batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("bronze has column {name}"));
    crate::lake::read::text_column(column)
}

pub(super) fn integers(batch: &RecordBatch, name: &str) -> Int64Array {
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
pub(super) fn entries_of(json_path: &str) -> Vec<u32> {
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
    // Bronze written before delete events has no `deleted` column: nothing there was one.
    let deleted = batch.column_by_name("deleted").map(|c| {
        cast(c, &DataType::Boolean)
            .expect("deleted is boolean")
            .as_any()
            .downcast_ref::<deltalake::arrow::array::BooleanArray>()
            .expect("cast to Boolean")
            .clone()
    });
    let mut provenances: HashMap<(&str, &str), Arc<Provenance>> = HashMap::new();
    (0..batch.num_rows())
        .map(|i| {
            let text = |a: &StringArray| (!a.is_null(i)).then(|| a.value(i).to_string());
            let location = Location {
                line: (!lines.is_null(i)).then(|| lines.value(i) as u64),
                entries: entries_of(paths.value(i)),
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
            bronze_resource(
                ResourceRecord {
                    resource_type: resource_type.to_string(),
                    id: text(&ids),
                    version_id: text(&versions),
                    last_updated: (!last_updated.is_null(i)).then(|| last_updated.value(i)),
                    full_url: text(&full_urls),
                    raw: raws.value(i).to_string(),
                    location,
                    warnings: Vec::new(),
                    json: None,
                    deleted: deleted
                        .as_ref()
                        .is_some_and(|d| !d.is_null(i) && d.value(i)),
                },
                provenance,
            )
        })
        .collect()
}

/// A resource on its way to bronze and silver: the record, where it came from, and its view rows
/// if they were computed where it was decoded.
pub type ResourceToLand = (ResourceRecord, Arc<Provenance>, Option<Flattened>);

/// The resources of one type just decoded (a file's or the stream's), as [`from_bronze`] would
/// read them back from their bronze rows: moved, with their rows flattened ahead, rather than
/// copied through an Arrow batch. A resource flattened ahead keeps no text (see
/// [`BronzeResource::raw`]).
pub fn from_records(records: Vec<ResourceToLand>) -> Vec<BronzeResource> {
    records
        .into_iter()
        .map(|(mut record, provenance, flattened)| {
            if flattened.is_some() {
                record.raw = String::new();
            }
            BronzeResource {
                flattened,
                ..bronze_resource(record, provenance)
            }
        })
        .collect()
}

/// A resource with its silver key and version order ([`VersionKey`]): the key is its id, else its
/// `fullUrl`, else its place in its source.
fn bronze_resource(record: ResourceRecord, provenance: Arc<Provenance>) -> BronzeResource {
    let location = record.location;
    let key = record
        .id
        .clone()
        .or(record.full_url)
        .unwrap_or_else(|| format!("{}:{}", provenance.source_sha256, location));
    let entries: Vec<String> = location
        .entries
        .iter()
        .map(|e| format!("{e:010}"))
        .collect();
    let ingest_order = format!(
        "{:020}|{}|{}|{:012}|{}",
        provenance.ingested_at,
        provenance.batch_id,
        provenance.source_uri,
        location.line.unwrap_or(0),
        entries.join(".")
    );
    BronzeResource {
        resource_type: record.resource_type,
        key,
        id: record.id,
        valid_from: record.last_updated.unwrap_or(provenance.ingested_at),
        version: VersionKey {
            version_id: record.version_id,
            last_updated: record.last_updated,
            ingest_order,
        },
        raw: record.raw,
        flattened: None,
        location,
        provenance,
        deleted: record.deleted,
    }
}

/// The bronze columns silver reads, for `table` (whose `deleted` column came with delete events).
pub(super) fn bronze_columns(
    table: &deltalake::DeltaTable,
    name: &str,
) -> Result<Vec<&'static str>, IngestError> {
    let schema = crate::lake::arrow_schema(table, name)?;
    let mut columns = BRONZE_COLUMNS.to_vec();
    if schema.field_with_name("deleted").is_ok() {
        columns.push("deleted");
    }
    Ok(columns)
}

const BRONZE_COLUMNS: [&str; 11] = [
    "resource_id",
    "version_id",
    "last_updated",
    "full_url",
    "source_uri",
    "source_sha256",
    "line",
    "json_path",
    "raw",
    "ingested_at",
    "batch_id",
];

/// Every version of every `resource_type` resource in bronze, parsed (`views run --bronze`, the
/// tool for trying a view on what the lake holds). Empty when bronze has none of that type.
pub async fn bronze_resources(
    lake: &Lake,
    resource_type: &str,
) -> Result<Vec<serde_json::Value>, IngestError> {
    let name = bronze_fhir_table(resource_type);
    let Some(table) = lake.existing_table(&name).await? else {
        return Ok(Vec::new());
    };
    let mut resources = Vec::new();
    for batch in read::query(&table, &name, "SELECT raw FROM t").await? {
        for raw in strings(&batch, "raw").iter().flatten() {
            let resource =
                serde_json::from_str(raw).map_err(|source| IngestError::CorruptBronze {
                    table: name.clone(),
                    source,
                })?;
            resources.push(resource);
        }
    }
    Ok(resources)
}
