//! `silver/alerts`: every alert event, as sent (or recorded as not sent: shadow, backfill,
//! inhibited). One row per CloudEvent id; the stream never records an id twice, so the table is
//! the answer to "was this alert already sent?" after a restart.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock};

use deltalake::arrow::array::{
    ArrayRef, AsArray, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::lake::append::AppendBuilder;
use crate::lake::utc_timestamp;
use crate::lake::{Lake, LakeError};
use crate::rules::evaluate::AlertEvent;

pub const ALERTS_TABLE: &str = "silver/alerts";

pub static ALERTS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("type", DataType::Utf8, false),
        Field::new("rule_id", DataType::Utf8, false),
        Field::new("rule_version", DataType::Int64, false),
        Field::new("rule_sha256", DataType::Utf8, false),
        Field::new("severity", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("delivery", DataType::Utf8, false),
        Field::new("patient_id", DataType::Utf8, false),
        Field::new("episode_id", DataType::Utf8, false),
        Field::new("notification", DataType::Int32, false),
        Field::new("episode_start", utc_timestamp(), false),
        Field::new("effective_time", utc_timestamp(), false),
        Field::new("detected_at", utc_timestamp(), false),
        Field::new("event_time_lag_ms", DataType::Int64, false),
        Field::new("observations", DataType::Utf8, false),
        Field::new("event", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, false),
    ]))
});

/// The rows of `alerts` (with their CloudEvents), from `source` (the stream they came from).
pub fn alert_rows(alerts: &[(AlertEvent, serde_json::Value)], source: &str) -> RecordBatch {
    let strings = |f: &dyn Fn(&AlertEvent, &serde_json::Value) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(
            alerts.iter().map(|(a, e)| f(a, e)),
        ))
    };
    let times = |f: &dyn Fn(&AlertEvent) -> i64| -> ArrayRef {
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(alerts.iter().map(|(a, _)| f(a) * 1000))
                .with_timezone("UTC"),
        )
    };
    let columns: Vec<ArrayRef> = vec![
        strings(&|a, _| a.id.clone()),
        strings(&|a, _| super::event_type(a.transition)),
        strings(&|a, _| a.rule.id.clone()),
        Arc::new(Int64Array::from_iter_values(
            alerts.iter().map(|(a, _)| a.rule.version),
        )),
        strings(&|a, _| a.rule.sha256.clone()),
        strings(&|a, _| a.rule.severity.name().to_string()),
        strings(&|a, _| a.transition.name().to_string()),
        strings(&|a, _| a.delivery.name().to_string()),
        strings(&|a, _| a.patient.clone()),
        strings(&|a, _| a.episode_id.clone()),
        Arc::new(Int32Array::from_iter_values(
            alerts.iter().map(|(a, _)| a.notification as i32),
        )),
        times(&|a| a.episode_start),
        times(&|a| a.effective_time),
        times(&|a| a.detected_at),
        Arc::new(Int64Array::from_iter_values(
            alerts.iter().map(|(a, _)| a.detected_at - a.effective_time),
        )),
        strings(&|_, e| e["data"]["observations"].to_string()),
        strings(&|_, e| e.to_string()),
        strings(&|_, _| source.to_string()),
    ];
    RecordBatch::try_new(ALERTS_SCHEMA.clone(), columns).expect("columns match the alerts schema")
}

/// Appends alert rows in one commit.
pub async fn append(lake: &Lake, rows: RecordBatch) -> Result<(), LakeError> {
    if rows.num_rows() == 0 {
        return Ok(());
    }
    let table = lake.table(ALERTS_TABLE).await?;
    AppendBuilder::new(table, ALERTS_TABLE, vec![rows])
        .execute()
        .await?;
    Ok(())
}

/// The ids already recorded for episodes that started at or after `since` (Unix ms).
pub async fn recorded_ids(lake: &Lake, since: i64) -> Result<HashSet<String>, LakeError> {
    let Some(table) = lake.existing_table(ALERTS_TABLE).await? else {
        return Ok(HashSet::new());
    };
    let since = chrono::DateTime::from_timestamp_millis(since)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let sql = format!("SELECT id FROM t WHERE episode_start >= '{since}'");
    let mut ids = HashSet::new();
    for batch in crate::lake::read::query(&table, ALERTS_TABLE, &sql).await? {
        let column = deltalake::arrow::compute::cast(batch.column(0), &DataType::Utf8)
            .expect("a string column casts to Utf8");
        ids.extend(
            column
                .as_string::<i32>()
                .iter()
                .flatten()
                .map(str::to_string),
        );
    }
    Ok(ids)
}
