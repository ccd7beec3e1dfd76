//! The Arrow shapes of the tables ingestion writes, and builders from decoded records.
//!
//! | table | one row per |
//! |---|---|
//! | `bronze/fhir/<resourceType>` | valid resource, raw JSON as received; or a delete event |
//! | `silver/quarantine` | rejected record, with every issue |
//! | `bronze/ingest_log` | file read by a run |
//! | `bronze/ingest_runs` | run event: `started`, `finished`, `rolled_back` |

use std::sync::{Arc, LazyLock};

use deltalake::arrow::array::{
    ArrayRef, BooleanArray, Int64Array, ListArray, RecordBatch, StringArray, StringBuilder,
    StructArray, TimestampMicrosecondArray,
};
use deltalake::arrow::buffer::OffsetBuffer;
use deltalake::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};

use crate::fhir::{Location, Rejected, ResourceRecord};
use crate::lake::utc_timestamp;

pub use crate::lake::layout::{
    BRONZE_FHIR_PREFIX, INGEST_LOG_TABLE, INGEST_RUNS_TABLE, QUARANTINE_TABLE, bronze_fhir_table,
};

/// Quarantined raw text is cut here; `raw_bytes` keeps the original size.
pub const QUARANTINE_RAW_LIMIT: usize = 1 << 20;

fn utf8(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}

/// Where a record came from, shared by all records of one file.
#[derive(Debug, Clone)]
pub struct Provenance {
    pub source_uri: String,
    pub source_sha256: String,
    pub batch_id: String,
    /// Microseconds since the epoch.
    pub ingested_at: i64,
}

pub static BRONZE_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        utf8("resource_id", true),
        utf8("version_id", true),
        Field::new("last_updated", utc_timestamp(), true),
        utf8("full_url", true),
        utf8("source_uri", false),
        utf8("source_sha256", false),
        Field::new("entry_index", DataType::Int64, true),
        Field::new("line", DataType::Int64, true),
        utf8("json_path", false),
        utf8("raw", false),
        Field::new("ingested_at", utc_timestamp(), false),
        utf8("batch_id", false),
        Field::new("warnings", issues_type(), true),
        // A delete event (`DELETE Patient/123` in a Bundle), whose `raw` is the entry's request.
        Field::new("deleted", DataType::Boolean, true),
    ]))
});

/// `list<struct<severity, location, rule, message>>`: the findings kept with a record.
fn issues_type() -> DataType {
    DataType::List(Arc::new(Field::new(
        "item",
        DataType::Struct(issue_fields()),
        true,
    )))
}

/// A list column of issues, one list per record.
fn issues_column<'a>(
    per_record: impl Iterator<Item = &'a [crate::issue::Issue]> + Clone,
) -> ArrayRef {
    let issues: Vec<&crate::issue::Issue> = per_record.clone().flatten().collect();
    let column = |f: &dyn Fn(&crate::issue::Issue) -> &str| -> ArrayRef {
        Arc::new(issues.iter().map(|i| Some(f(i))).collect::<StringArray>())
    };
    let values = StructArray::new(
        issue_fields(),
        vec![
            column(&|i| i.severity.as_str()),
            column(&|i| &i.location),
            column(&|i| &i.rule),
            column(&|i| &i.message),
        ],
        None,
    );
    let offsets = OffsetBuffer::from_lengths(per_record.map(<[_]>::len));
    Arc::new(ListArray::new(
        Arc::new(Field::new("item", DataType::Struct(issue_fields()), true)),
        offsets,
        Arc::new(values),
        None,
    ))
}

/// The issues of row `row` of an issues column (bronze `warnings`, quarantine `errors`).
pub fn issues_at(column: &ArrayRef, row: usize) -> Vec<crate::issue::Issue> {
    use crate::issue::{Issue, Severity};
    use deltalake::arrow::array::{Array, AsArray};
    let list = column.as_list::<i32>();
    if list.is_null(row) {
        return Vec::new();
    }
    let items = list.value(row);
    let items = items.as_struct();
    let text = |i: usize| items.column(i).as_string::<i32>().clone();
    let (severity, location, rule, message) = (text(0), text(1), text(2), text(3));
    (0..items.len())
        .map(|i| Issue {
            severity: match severity.value(i) {
                "fatal" => Severity::Fatal,
                "error" => Severity::Error,
                "warning" => Severity::Warning,
                _ => Severity::Information,
            },
            location: location.value(i).to_string(),
            rule: rule.value(i).to_string(),
            message: message.value(i).to_string(),
        })
        .collect()
}

/// One bronze batch from resources of a single type.
pub fn bronze_batch(records: &[(ResourceRecord, Arc<Provenance>)]) -> RecordBatch {
    let col = |f: &dyn Fn(&ResourceRecord, &Provenance) -> Option<String>| -> ArrayRef {
        Arc::new(
            records
                .iter()
                .map(|(r, p)| f(r, p))
                .collect::<StringArray>(),
        )
    };
    let [entry_index, line, json_path] = location_columns(records.iter().map(|(r, _)| &r.location));
    let columns: Vec<ArrayRef> = vec![
        col(&|r, _| r.id.clone()),
        col(&|r, _| r.version_id.clone()),
        utc_micros(records.iter().map(|(r, _)| r.last_updated)),
        col(&|r, _| r.full_url.clone()),
        col(&|_, p| Some(p.source_uri.clone())),
        col(&|_, p| Some(p.source_sha256.clone())),
        entry_index,
        line,
        json_path,
        raw_column(records.iter().map(|(r, _)| r.raw.as_str())),
        utc_micros(records.iter().map(|(_, p)| Some(p.ingested_at))),
        col(&|_, p| Some(p.batch_id.clone())),
        issues_column(records.iter().map(|(r, _)| r.warnings.as_slice())),
        Arc::new(
            records
                .iter()
                .map(|(r, _)| Some(r.deleted))
                .collect::<BooleanArray>(),
        ),
    ];
    RecordBatch::try_new(BRONZE_SCHEMA.clone(), columns).expect("bronze columns match schema")
}

/// The `raw` column, sized once: collected, a chunk's 8 MB of JSON would grow by doubling and
/// briefly take twice its size.
fn raw_column<'a>(raw: impl Iterator<Item = &'a str> + Clone) -> ArrayRef {
    let bytes = raw.clone().map(str::len).sum();
    let mut column = StringBuilder::with_capacity(raw.clone().count(), bytes);
    raw.for_each(|text| column.append_value(text));
    Arc::new(column.finish())
}

fn issue_fields() -> Fields {
    Fields::from(vec![
        utf8("severity", false),
        utf8("location", false),
        utf8("rule", false),
        utf8("message", false),
    ])
}

pub static QUARANTINE_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        utf8("source_uri", false),
        utf8("source_sha256", true),
        Field::new("entry_index", DataType::Int64, true),
        Field::new("line", DataType::Int64, true),
        utf8("json_path", false),
        utf8("resource_type", true),
        utf8("resource_id", true),
        utf8("raw", false),
        Field::new("raw_bytes", DataType::Int64, false),
        Field::new("raw_truncated", DataType::Boolean, false),
        Field::new(
            "errors",
            DataType::List(Arc::new(Field::new(
                "item",
                DataType::Struct(issue_fields()),
                true,
            ))),
            false,
        ),
        utf8("stage", false),
        Field::new("quarantined_at", utc_timestamp(), false),
        utf8("batch_id", false),
    ]))
});

/// Cuts `raw` to at most `limit` bytes on a character boundary.
fn truncate(raw: &str, limit: usize) -> &str {
    if raw.len() <= limit {
        return raw;
    }
    let mut end = limit;
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    &raw[..end]
}

/// A UTC timestamp column (microseconds), the type every time column here has.
fn utc_micros(values: impl IntoIterator<Item = Option<i64>>) -> ArrayRef {
    Arc::new(
        values
            .into_iter()
            .collect::<TimestampMicrosecondArray>()
            .with_timezone("UTC"),
    )
}

/// `entry_index`, `line` and `json_path`: where each record sat in its source.
fn location_columns<'a>(locations: impl Iterator<Item = &'a Location> + Clone) -> [ArrayRef; 3] {
    [
        Arc::new(
            locations
                .clone()
                .map(|l| l.entry_index().map(i64::from))
                .collect::<Int64Array>(),
        ),
        Arc::new(
            locations
                .clone()
                .map(|l| l.line.map(|n| n as i64))
                .collect::<Int64Array>(),
        ),
        Arc::new(
            locations
                .map(|l| Some(l.json_path()))
                .collect::<StringArray>(),
        ),
    ]
}

/// One quarantine batch; `stage` says which step rejected the records (`ingest fhir`, ...).
pub fn quarantine_batch(records: &[(Rejected, Arc<Provenance>)], stage: &str) -> RecordBatch {
    let strings = |f: &dyn Fn(&Rejected, &Provenance) -> Option<String>| -> ArrayRef {
        Arc::new(
            records
                .iter()
                .map(|(r, p)| f(r, p))
                .collect::<StringArray>(),
        )
    };
    let errors = issues_column(records.iter().map(|(r, _)| r.issues.as_slice()));
    let [entry_index, line, json_path] = location_columns(records.iter().map(|(r, _)| &r.location));
    let columns: Vec<ArrayRef> = vec![
        strings(&|_, p| Some(p.source_uri.clone())),
        strings(&|_, p| (!p.source_sha256.is_empty()).then(|| p.source_sha256.clone())),
        entry_index,
        line,
        json_path,
        strings(&|r, _| r.resource_type.clone()),
        strings(&|r, _| r.id.clone()),
        Arc::new(
            records
                .iter()
                .map(|(r, _)| Some(truncate(&r.raw, QUARANTINE_RAW_LIMIT)))
                .collect::<StringArray>(),
        ),
        Arc::new(
            records
                .iter()
                .map(|(r, _)| Some(r.raw.len() as i64))
                .collect::<Int64Array>(),
        ),
        Arc::new(
            records
                .iter()
                .map(|(r, _)| Some(r.raw.len() > QUARANTINE_RAW_LIMIT))
                .collect::<BooleanArray>(),
        ),
        errors,
        strings(&|_, _| Some(stage.to_string())),
        utc_micros(records.iter().map(|(_, p)| Some(p.ingested_at))),
        strings(&|_, p| Some(p.batch_id.clone())),
    ];
    RecordBatch::try_new(QUARANTINE_SCHEMA.clone(), columns)
        .expect("quarantine columns match schema")
}

/// One row of `bronze/ingest_log`: what happened to one file.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FileLogEntry {
    pub source_uri: String,
    /// Empty when the file could not be read.
    pub source_sha256: String,
    pub size_bytes: u64,
    pub format: String,
    /// `ingested` (every record is in bronze or quarantine) or `failed` (retried next run).
    pub status: String,
    pub resources: u64,
    pub quarantined: u64,
    pub error: Option<String>,
}

pub static INGEST_LOG_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        utf8("source_uri", false),
        utf8("source_sha256", false),
        Field::new("size_bytes", DataType::Int64, false),
        utf8("format", false),
        utf8("status", false),
        Field::new("resources", DataType::Int64, false),
        Field::new("quarantined", DataType::Int64, false),
        utf8("error", true),
        utf8("batch_id", false),
        Field::new("ingested_at", utc_timestamp(), false),
    ]))
});

pub fn ingest_log_batch(entries: &[FileLogEntry], batch_id: &str, at: i64) -> RecordBatch {
    let strings = |f: &dyn Fn(&FileLogEntry) -> Option<String>| -> ArrayRef {
        Arc::new(entries.iter().map(f).collect::<StringArray>())
    };
    let ints = |f: &dyn Fn(&FileLogEntry) -> u64| -> ArrayRef {
        Arc::new(
            entries
                .iter()
                .map(|e| Some(f(e) as i64))
                .collect::<Int64Array>(),
        )
    };
    let columns: Vec<ArrayRef> = vec![
        strings(&|e| Some(e.source_uri.clone())),
        strings(&|e| Some(e.source_sha256.clone())),
        ints(&|e| e.size_bytes),
        strings(&|e| Some(e.format.clone())),
        strings(&|e| Some(e.status.clone())),
        ints(&|e| e.resources),
        ints(&|e| e.quarantined),
        strings(&|e| e.error.clone()),
        strings(&|_| Some(batch_id.to_string())),
        utc_micros(entries.iter().map(|_| Some(at))),
    ];
    RecordBatch::try_new(INGEST_LOG_SCHEMA.clone(), columns)
        .expect("ingest log columns match schema")
}

pub static INGEST_RUNS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        utf8("batch_id", false),
        utf8("event", false),
        Field::new("at", utc_timestamp(), false),
        utf8("summary", true),
    ]))
});

pub fn ingest_run_batch(
    batch_id: &str,
    event: &str,
    at: i64,
    summary: Option<String>,
) -> RecordBatch {
    RecordBatch::try_new(
        INGEST_RUNS_SCHEMA.clone(),
        vec![
            Arc::new(StringArray::from(vec![batch_id])),
            Arc::new(StringArray::from(vec![event])),
            utc_micros([Some(at)]),
            Arc::new(StringArray::from(vec![summary])),
        ],
    )
    .expect("ingest run columns match schema")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::Location;
    use crate::issue::Issue;

    #[test]
    fn quarantine_keeps_every_issue_and_truncates_raw_on_a_char_boundary() {
        let provenance = Arc::new(Provenance {
            source_uri: "file:///drop/a.ndjson".into(),
            source_sha256: "ab".into(),
            batch_id: "b1".into(),
            ingested_at: 0,
        });
        let big = "é".repeat(QUARANTINE_RAW_LIMIT); // 2 bytes each: twice the limit
        let rejected = Rejected {
            resource_type: Some("Patient".into()),
            id: None,
            raw: big.clone(),
            location: Location::line(3),
            issues: vec![
                Issue::error("size", "$", "too big"),
                Issue::error("json", "$", "bad"),
            ],
        };
        let single = Rejected::new("x", Location::default(), Issue::error("json", "$", "bad"));
        let batch = quarantine_batch(
            &[(rejected, provenance.clone()), (single, provenance)],
            "ingest fhir",
        );
        let errors = batch
            .column_by_name("errors")
            .unwrap()
            .as_any()
            .downcast_ref::<ListArray>()
            .unwrap();
        assert_eq!(errors.value_length(0), 2);
        assert_eq!(errors.value_length(1), 1);
        let raw = batch
            .column_by_name("raw")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(raw.value(0).len(), QUARANTINE_RAW_LIMIT);
        let size = batch
            .column_by_name("raw_bytes")
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(size.value(0), big.len() as i64);
    }
}
