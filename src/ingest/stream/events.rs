//! Events in and out of `bronze/eventhubs/<hub>`, and events decoded into FHIR resources.
//!
//! Bronze keeps every event as it arrived (body bytes, partition, sequence number, offset, enqueued
//! time, partition key, properties), partitioned by the day it was ingested, so a batch can always
//! be decoded again from bronze, which is how a batch interrupted before silver is finished.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::{Arc, LazyLock};

use deltalake::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, Date32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{
    DataType, Field, Int64Type, Schema, SchemaRef, TimestampMicrosecondType,
};

use crate::fhir::{DecodeOptions, Decoded, Location, Rejected, decode};
use crate::ingest::prepared::prepare;
use crate::ingest::silver::SilverViews;
use crate::issue::Issue;
use crate::stream::{Event, StreamId};
use crate::validate::Check;

use crate::ingest::produce::apply_checks;
use crate::lake::utc_timestamp;

/// What the stream decodes events with: the file drops' decode options and profile checks, and the
/// silver views, which run on each resource as soon as it is decoded.
pub struct EventDecoder {
    pub options: DecodeOptions,
    pub checks: Vec<Arc<dyn Check>>,
    pub views: SilverViews,
}

pub use crate::ingest::prepared::Prepared;

impl EventDecoder {
    /// Decodes, checks and flattens one event. The views run here, on the thread that built the
    /// resource's parse and while it is in cache, and the parse is freed here. Kept until their
    /// batches landed, up to two batches' trees per partition waited in memory, and the landing
    /// read and freed them cold: flattening here drains about 12% faster (BENCHMARKS.md).
    pub fn decode(&self, event: &Event) -> Vec<Prepared> {
        prepare(
            decode_event(event, &self.options, &self.checks),
            &self.views,
        )
        .collect()
    }
}

/// The resource types a stream event may carry (alone or in a Bundle).
pub const STREAM_TYPES: [&str; 2] = ["Observation", "MedicationDispense"];

pub use crate::lake::layout::bronze_events_table;

/// The partition keys (the patients, as `vitalake send` and the devices key their events) of the
/// events a partition brought since `since` (Unix ms, enqueued time), from the bronze event table.
pub async fn partition_patients(
    lake: &crate::lake::Lake,
    bronze: &str,
    partition_id: &str,
    since: i64,
) -> Result<std::collections::HashSet<String>, crate::lake::LakeError> {
    let mut patients = std::collections::HashSet::new();
    let Some(table) = lake.existing_table(bronze).await? else {
        return Ok(patients);
    };
    let sql = format!(
        "SELECT DISTINCT CAST(partition_key AS VARCHAR) FROM t WHERE partition_id = '{}' \
         AND partition_key IS NOT NULL AND enqueued_time >= to_timestamp_millis({since})",
        partition_id.replace('\'', "''")
    );
    for batch in crate::lake::read::query(&table, bronze, &sql).await? {
        let keys = crate::lake::read::text_column(batch.column(0));
        patients.extend(keys.iter().flatten().map(str::to_string));
    }
    Ok(patients)
}

/// The partition column of the bronze event table.
pub const DATE_COLUMN: &str = "ingest_date";

pub static BRONZE_EVENTS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("source", DataType::Utf8, false),
        Field::new("partition_id", DataType::Utf8, false),
        Field::new("sequence_number", DataType::Int64, false),
        Field::new("offset", DataType::Utf8, true),
        Field::new("enqueued_time", utc_timestamp(), true),
        Field::new("partition_key", DataType::Utf8, true),
        Field::new("properties", DataType::Utf8, true),
        Field::new("content_encoding", DataType::Utf8, true),
        Field::new("body", DataType::Binary, false),
        Field::new("batch_id", DataType::Utf8, false),
        Field::new("ingested_at", utc_timestamp(), false),
        Field::new(DATE_COLUMN, DataType::Date32, false),
    ]))
});

/// The `source` column: which stream an event came from (partition ids are unique only within one).
pub fn source_name(id: &StreamId) -> String {
    format!("{}/{}/{}", id.namespace, id.hub, id.consumer_group)
}

/// Where quarantine and silver say a stream record came from: `line` then holds its sequence number.
pub fn source_uri(id: &StreamId, partition_id: &str) -> String {
    match id.namespace.as_str() {
        "file" => format!("file://{partition_id}"),
        "stdin" => format!("stdin:{}", id.hub),
        namespace => format!(
            "eventhubs://{namespace}/{}/{}/{partition_id}",
            id.hub, id.consumer_group
        ),
    }
}

/// The bronze rows of one batch of events.
pub fn bronze_batch(
    source: &str,
    events: &[Event],
    batch_id: &str,
    ingested_at: i64,
) -> RecordBatch {
    let n = events.len();
    let text = |f: &dyn Fn(&Event) -> Option<String>| -> ArrayRef {
        Arc::new(events.iter().map(f).collect::<StringArray>())
    };
    let day = (ingested_at.div_euclid(86_400_000_000)) as i32;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![source; n])),
        text(&|e| Some(e.partition_id.clone())),
        Arc::new(
            events
                .iter()
                .map(|e| e.sequence_number)
                .collect::<Int64Array>(),
        ),
        text(&|e| e.offset.clone()),
        Arc::new(
            events
                .iter()
                .map(|e| e.enqueued_time)
                .collect::<TimestampMicrosecondArray>()
                .with_timezone("UTC"),
        ),
        text(&|e| e.partition_key.clone()),
        text(&|e| {
            (!e.properties.is_empty())
                .then(|| serde_json::to_string(&e.properties).expect("properties serialize"))
        }),
        text(&|e| e.content_encoding.clone()),
        Arc::new(BinaryArray::from_iter_values(
            events.iter().map(|e| &e.body),
        )),
        Arc::new(StringArray::from(vec![batch_id; n])),
        Arc::new(TimestampMicrosecondArray::from(vec![ingested_at; n]).with_timezone("UTC")),
        Arc::new(Date32Array::from(vec![day; n])),
    ];
    RecordBatch::try_new(BRONZE_EVENTS_SCHEMA.clone(), columns).expect("event columns match schema")
}

/// An event with the batch id and ingest time it lands (or was landed) with.
pub struct LandedEvent {
    pub event: Event,
    pub batch_id: String,
    pub ingested_at: i64,
    /// The event decoded ahead by its partition's reader; `None`: decode it when it lands.
    pub decoded: Option<Vec<Prepared>>,
}

pub fn events_from_bronze(batch: &RecordBatch) -> Vec<LandedEvent> {
    // Read back through DataFusion, text may come as views and timestamps in another zone: cast
    // every column to the type it was written with.
    let column = |name: &str| {
        let column = batch
            .column_by_name(name)
            .unwrap_or_else(|| panic!("bronze events have column {name}"));
        let written = BRONZE_EVENTS_SCHEMA
            .field_with_name(name)
            .expect("a bronze event column");
        cast(column, written.data_type()).expect("bronze event columns cast to their written type")
    };
    let text = |name: &str| column(name).as_string::<i32>().clone();
    let (partitions, offsets, keys, properties, encodings, batch_ids) = (
        text("partition_id"),
        text("offset"),
        text("partition_key"),
        text("properties"),
        text("content_encoding"),
        text("batch_id"),
    );
    let sequence = column("sequence_number")
        .as_primitive::<Int64Type>()
        .clone();
    let enqueued = column("enqueued_time")
        .as_primitive::<TimestampMicrosecondType>()
        .clone();
    let ingested = column("ingested_at")
        .as_primitive::<TimestampMicrosecondType>()
        .clone();
    let bodies = column("body").as_binary::<i32>().clone();
    let optional = |a: &StringArray, i: usize| (!a.is_null(i)).then(|| a.value(i).to_string());
    (0..batch.num_rows())
        .map(|i| LandedEvent {
            event: Event {
                partition_id: partitions.value(i).to_string(),
                sequence_number: sequence.value(i),
                offset: optional(&offsets, i),
                enqueued_time: (!enqueued.is_null(i)).then(|| enqueued.value(i)),
                partition_key: optional(&keys, i),
                properties: optional(&properties, i)
                    .and_then(|p| serde_json::from_str::<BTreeMap<String, String>>(&p).ok())
                    .unwrap_or_default(),
                content_encoding: optional(&encodings, i),
                body: bodies.value(i).to_vec(),
            },
            batch_id: batch_ids.value(i).to_string(),
            ingested_at: ingested.value(i),
            decoded: None,
        })
        .collect()
}

/// The event's body, gunzipped (up to `limit` bytes) if its content encoding is gzip.
pub fn plain_body(event: &Event, limit: u64) -> std::io::Result<std::borrow::Cow<'_, [u8]>> {
    let gzipped = event
        .content_encoding
        .as_deref()
        .is_some_and(|e| e.eq_ignore_ascii_case("gzip"));
    if !gzipped {
        return Ok(std::borrow::Cow::Borrowed(&event.body));
    }
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(event.body.as_slice())
        .take(limit)
        .read_to_end(&mut plain)?;
    Ok(std::borrow::Cow::Owned(plain))
}

/// An event's body as FHIR resources: gunzipped per its content encoding, decoded (a Bundle gives
/// its entries), held to the stream's resource types, then checked against the profiles. Every
/// record's location is `line <sequence number>`, with the Bundle entry path when there is one.
pub fn decode_event(
    event: &Event,
    options: &DecodeOptions,
    checks: &[Arc<dyn Check>],
) -> Vec<Decoded> {
    let location = Location::line(event.sequence_number.max(0) as u64);
    let reject = |issue: Issue| {
        vec![Decoded::Rejected(Rejected::new(
            String::from_utf8_lossy(&event.body).into_owned(),
            location.clone(),
            issue,
        ))]
    };
    let body = match plain_body(event, options.max_resource_bytes as u64 + 1) {
        Ok(body) => body.into_owned(),
        Err(e) => {
            return reject(Issue::error(
                "encoding",
                "$",
                format!("content-encoding is gzip but the body does not gunzip: {e}"),
            ));
        }
    };
    let text = match String::from_utf8(body) {
        Ok(text) => text,
        Err(e) => {
            return reject(Issue::error(
                "utf8",
                "$",
                format!(
                    "event body is not UTF-8 (FHIR JSON must be): {}",
                    e.utf8_error()
                ),
            ));
        }
    };
    let mut decoded = Vec::with_capacity(1);
    // The checks and the silver views read the parse the structural check makes.
    let options = DecodeOptions {
        keep_parse: true,
        ..options.clone()
    };
    decode(&text, location, &options, &mut decoded);
    for record in &mut decoded {
        if let Decoded::Resource(resource) = record
            && !STREAM_TYPES.contains(&resource.resource_type.as_str())
        {
            let r = std::mem::take(resource);
            let message = format!(
                "a stream event carries {}, a Bundle of them, not {}",
                STREAM_TYPES.join(" or "),
                r.resource_type
            );
            *record = Decoded::Rejected(Rejected {
                resource_type: Some(r.resource_type),
                id: r.id,
                raw: r.raw,
                location: r.location,
                issues: vec![Issue::error("stream-type", "resourceType", message)],
            });
        }
    }
    apply_checks(checks, &mut decoded, true);
    decoded
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn event(body: &[u8]) -> Event {
        Event {
            partition_id: "0".into(),
            sequence_number: 42,
            body: body.to_vec(),
            ..Event::default()
        }
    }

    fn observation(id: &str) -> String {
        format!(
            r#"{{"resourceType":"Observation","id":"{id}","status":"final","code":{{"text":"bp"}}}}"#
        )
    }

    #[test]
    fn a_bundle_event_gives_its_entries_and_other_types_are_refused() {
        let bundle = format!(
            r#"{{"resourceType":"Bundle","type":"collection","entry":[{{"resource":{}}},{{"resource":{{"resourceType":"Patient","id":"p1"}}}}]}}"#,
            observation("o1")
        );
        let decoded = decode_event(&event(bundle.as_bytes()), &DecodeOptions::default(), &[]);
        assert_eq!(decoded.len(), 2);
        let Decoded::Resource(first) = &decoded[0] else {
            panic!("the Observation is kept: {decoded:?}")
        };
        assert_eq!(first.location.line, Some(42));
        let Decoded::Rejected(patient) = &decoded[1] else {
            panic!("the Patient is refused")
        };
        assert_eq!(patient.issues[0].rule, "stream-type");
    }

    #[test]
    fn gzip_bodies_are_unpacked_and_broken_ones_quarantined() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(observation("o2").as_bytes()).unwrap();
        let mut packed = event(&gz.finish().unwrap());
        packed.content_encoding = Some("GZIP".into());
        let decoded = decode_event(&packed, &DecodeOptions::default(), &[]);
        assert!(matches!(&decoded[..], [Decoded::Resource(r)] if r.id.as_deref() == Some("o2")));

        let mut broken = event(b"not gzip at all");
        broken.content_encoding = Some("gzip".into());
        let decoded = decode_event(&broken, &DecodeOptions::default(), &[]);
        assert!(matches!(&decoded[..], [Decoded::Rejected(r)] if r.issues[0].rule == "encoding"));
    }

    #[test]
    fn bronze_rows_read_back_as_the_same_events() {
        let mut original = event(b"{}");
        original.offset = Some("1024".into());
        original.enqueued_time = Some(1_700_000_000_000_000);
        original.partition_key = Some("patient-1".into());
        original.properties.insert("device".into(), "cuff-7".into());
        let batch = bronze_batch(
            "ns/bp/$Default",
            &[original.clone()],
            "b1",
            1_700_000_000_000_001,
        );
        let back = events_from_bronze(&batch);
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].event, original);
        assert_eq!(back[0].batch_id, "b1");
        assert_eq!(back[0].ingested_at, 1_700_000_000_000_001);
    }
}
