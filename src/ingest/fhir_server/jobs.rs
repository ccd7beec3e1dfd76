//! `bronze/fhir_exports`: what the lake knows of each export it asked a FHIR server for.
//!
//! One row per event, appended, never rewritten:
//!
//! | event | written when | carries |
//! |---|---|---|
//! | `accepted` | the server took the kick-off (202) | the status URL to poll, the `_since` asked |
//! | `downloaded` | every file of the manifest is on local disk | `transactionTime`, the files' SHA-256 |
//! | `complete` | its files landed in bronze and silver | `transactionTime` (the next `_since`), batch id |
//! | `failed` | the server reported the job failed | the server's message |
//! | `abandoned` | the server no longer knows the job (404/410) | |
//!
//! The latest row of an export (one server, endpoint and `_type` list) says what a run does: after
//! `accepted` or `downloaded` it resumes that job; otherwise it kicks off a new one, asking `_since`
//! the `transactionTime` of the latest `complete`.

use std::sync::{Arc, LazyLock};

use deltalake::arrow::array::{
    Array, ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::lake::{AppendBuilder, Lake, LakeError, read, utc_timestamp};

pub use crate::lake::layout::FHIR_EXPORTS_TABLE;

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let text = |name: &str, nullable| Field::new(name, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        text("export_key", false),
        text("event", false),
        Field::new("at", utc_timestamp(), false),
        text("request_url", false),
        text("status_url", true),
        text("since", true),
        text("transaction_time", true),
        text("batch_id", true),
        Field::new("files", DataType::Int64, true),
        text("detail", true),
    ]))
});

/// One row of `bronze/fhir_exports`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExportEvent {
    /// `<base>|<endpoint>|<types>`: one incremental feed.
    pub export_key: String,
    pub event: String,
    /// The kick-off URL, with its parameters.
    pub request_url: String,
    pub status_url: Option<String>,
    /// The `_since` this job was asked for.
    pub since: Option<String>,
    /// The manifest's `transactionTime`, as the server wrote it.
    pub transaction_time: Option<String>,
    pub batch_id: Option<String>,
    pub files: Option<i64>,
    /// `downloaded`: the files' SHA-256, comma-separated; `failed`: the server's message.
    pub detail: Option<String>,
}

/// Appends `event` with the current time.
pub async fn record(lake: &Lake, event: &ExportEvent) -> Result<(), LakeError> {
    let at = chrono::Utc::now().timestamp_micros();
    let text = |v: Option<&str>| -> ArrayRef { Arc::new(StringArray::from(vec![v])) };
    let batch = RecordBatch::try_new(
        SCHEMA.clone(),
        vec![
            text(Some(&event.export_key)),
            text(Some(&event.event)),
            Arc::new(TimestampMicrosecondArray::from(vec![at]).with_timezone("UTC")),
            text(Some(&event.request_url)),
            text(event.status_url.as_deref()),
            text(event.since.as_deref()),
            text(event.transaction_time.as_deref()),
            text(event.batch_id.as_deref()),
            Arc::new(Int64Array::from(vec![event.files])),
            text(event.detail.as_deref()),
        ],
    )
    .expect("export event columns match the schema");
    let table = lake.table(FHIR_EXPORTS_TABLE).await?;
    AppendBuilder::new(table, FHIR_EXPORTS_TABLE, vec![batch])
        .with_metadata("vitalake.operation", "ingest fhir-server")
        .execute()
        .await?;
    Ok(())
}

/// What the lake knows of one export.
#[derive(Debug, Default, PartialEq)]
pub struct ExportState {
    /// The latest event, when it leaves a job to resume (`accepted` or `downloaded`).
    pub pending: Option<ExportEvent>,
    /// The `transactionTime` of the latest complete export: the next `_since`.
    pub last_complete: Option<String>,
}

/// The state of `export_key`, from its rows in order of time.
pub async fn state(lake: &Lake, export_key: &str) -> Result<ExportState, LakeError> {
    let Some(table) = lake.existing_table(FHIR_EXPORTS_TABLE).await? else {
        return Ok(ExportState::default());
    };
    // The key is compared here rather than in SQL: it holds a URL we must not splice into a query.
    let batches = read::query(
        &table,
        FHIR_EXPORTS_TABLE,
        "SELECT export_key, event, request_url, status_url, since, transaction_time, detail \
         FROM t ORDER BY at",
    )
    .await?;
    let mut state = ExportState::default();
    for batch in &batches {
        let columns: Vec<StringArray> = batch.columns().iter().map(read::text_column).collect();
        let text = |column: usize, row: usize| {
            let column = &columns[column];
            (!column.is_null(row)).then(|| column.value(row).to_string())
        };
        for row in 0..batch.num_rows() {
            if text(0, row).as_deref() != Some(export_key) {
                continue;
            }
            let event = ExportEvent {
                export_key: export_key.to_string(),
                event: text(1, row).unwrap_or_default(),
                request_url: text(2, row).unwrap_or_default(),
                status_url: text(3, row),
                since: text(4, row),
                transaction_time: text(5, row),
                detail: text(6, row),
                ..ExportEvent::default()
            };
            if event.event == "complete" {
                state.last_complete = event.transaction_time.clone();
            }
            state.pending =
                matches!(event.event.as_str(), "accepted" | "downloaded").then_some(event);
        }
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(key: &str, name: &str, transaction_time: Option<&str>) -> ExportEvent {
        ExportEvent {
            export_key: key.into(),
            event: name.into(),
            request_url: "http://fhir/$export".into(),
            status_url: Some(format!("http://fhir/status/{name}")),
            transaction_time: transaction_time.map(String::from),
            ..ExportEvent::default()
        }
    }

    #[tokio::test]
    async fn the_latest_event_decides_and_keys_do_not_mix() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        assert_eq!(state(&lake, "a").await.unwrap(), ExportState::default());

        record(&lake, &event("a", "accepted", None)).await.unwrap();
        let a = state(&lake, "a").await.unwrap();
        assert_eq!(a.pending.unwrap().event, "accepted");
        assert_eq!(a.last_complete, None);

        for e in [
            event("a", "downloaded", Some("2026-01-01T00:00:00Z")),
            event("a", "complete", Some("2026-01-01T00:00:00Z")),
            event("b", "accepted", None),
            event("a", "accepted", None),
            event("a", "failed", None),
        ] {
            record(&lake, &e).await.unwrap();
        }
        let a = state(&lake, "a").await.unwrap();
        assert_eq!(a.pending, None, "a failed job is not resumed");
        assert_eq!(a.last_complete.as_deref(), Some("2026-01-01T00:00:00Z"));
        let b = state(&lake, "b").await.unwrap();
        assert_eq!(
            b.pending.unwrap().status_url.as_deref(),
            Some("http://fhir/status/accepted")
        );
        assert_eq!(b.last_complete, None);
    }
}
