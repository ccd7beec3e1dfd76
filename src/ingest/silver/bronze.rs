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
    pub raw: String,
    /// `raw` parsed, when the caller already holds it (the stream, straight from its checks).
    pub json: Option<Arc<Json>>,
    pub location: Location,
    pub provenance: Arc<Provenance>,
}

pub(super) fn strings(batch: &RecordBatch, name: &str) -> StringArray {
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
                json: None,
                location,
                provenance,
            }
        })
        .collect()
}

pub(super) const BRONZE_COLUMNS: &str = "resource_id, version_id, last_updated, full_url, source_uri, source_sha256, line, json_path, raw, ingested_at, batch_id";
