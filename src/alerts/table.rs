//! `silver/alerts`: every alert event raised, for the clinicians (`delivery = 'sent'`) or recorded
//! only (shadow, backfill, inhibited). One row per CloudEvent id; the stream never records an id
//! twice, so the table is the answer to "was this alert already raised?" after a restart.
//!
//! `silver/alert_deliveries`: one receipt per alert the sink took (when, after how many attempts,
//! how long after detection). An alert for the clinicians without a receipt is still waiting in the
//! outbox ([`super::outbox`]): a restart sends it.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock};

use deltalake::arrow::array::{
    ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::Outgoing;
use crate::lake::append::AppendBuilder;
use crate::lake::utc_timestamp;
use crate::lake::{Lake, LakeError};
use crate::rules::evaluate::AlertEvent;

pub use crate::lake::layout::{ALERTS_TABLE, DELIVERIES_TABLE};

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

pub static DELIVERIES_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("sink", DataType::Utf8, false),
        Field::new("delivered_at", utc_timestamp(), false),
        Field::new("attempts", DataType::Int32, false),
        Field::new("delay_ms", DataType::Int64, false),
    ]))
});

/// That the sink took an alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Receipt {
    pub id: String,
    /// Unix ms.
    pub delivered_at: i64,
    /// Sends tried, the successful one included.
    pub attempts: u32,
    /// From the alert's detection to its delivery: the delay a clinician sees.
    pub delay_ms: i64,
}

/// Appends receipts of deliveries to `sink` in one commit.
pub async fn append_receipts(
    lake: &Lake,
    receipts: &[Receipt],
    sink: &str,
) -> Result<(), LakeError> {
    if receipts.is_empty() {
        return Ok(());
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            receipts.iter().map(|r| r.id.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(receipts.iter().map(|_| sink))),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(
                receipts.iter().map(|r| r.delivered_at * 1000),
            )
            .with_timezone("UTC"),
        ),
        Arc::new(Int32Array::from_iter_values(
            receipts.iter().map(|r| r.attempts as i32),
        )),
        Arc::new(Int64Array::from_iter_values(
            receipts.iter().map(|r| r.delay_ms),
        )),
    ];
    let rows = RecordBatch::try_new(DELIVERIES_SCHEMA.clone(), columns)
        .expect("columns match the deliveries schema");
    let table = lake.table(DELIVERIES_TABLE).await?;
    AppendBuilder::new(table, DELIVERIES_TABLE, vec![rows])
        .execute()
        .await?;
    Ok(())
}

/// The alerts for the clinicians detected at or after `since` (Unix ms) whose ids are not among
/// `delivered` (the receipts, [`delivered_ids`]), in the order they were detected.
pub async fn undelivered(
    lake: &Lake,
    since: i64,
    delivered: &HashSet<String>,
) -> Result<Vec<Outgoing>, LakeError> {
    let Some(table) = lake.existing_table(ALERTS_TABLE).await? else {
        return Ok(Vec::new());
    };
    let sql = format!(
        "SELECT id, patient_id, event FROM t WHERE delivery = 'sent' AND detected_at >= '{}' ORDER BY detected_at",
        rfc3339(since)
    );
    let mut waiting = Vec::new();
    for batch in crate::lake::read::query(&table, ALERTS_TABLE, &sql).await? {
        let column = |i: usize| crate::lake::read::text_column(batch.column(i));
        let (ids, patients, events) = (column(0), column(1), column(2));
        for row in 0..batch.num_rows() {
            let id = ids.value(row);
            if delivered.contains(id) {
                continue;
            }
            waiting.push(Outgoing {
                id: id.to_string(),
                patient: patients.value(row).to_string(),
                event: serde_json::from_str(events.value(row)).unwrap_or_default(),
            });
        }
    }
    Ok(waiting)
}

/// The ids of the alerts delivered at or after `since` (Unix ms).
pub async fn delivered_ids(lake: &Lake, since: i64) -> Result<HashSet<String>, LakeError> {
    let sql = format!(
        "SELECT id FROM t WHERE delivered_at >= '{}'",
        rfc3339(since)
    );
    ids(lake, DELIVERIES_TABLE, &sql).await
}

fn rfc3339(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The first column of `sql` on `table`, as strings (nothing if the table does not exist yet).
async fn ids(lake: &Lake, table: &str, sql: &str) -> Result<HashSet<String>, LakeError> {
    let Some(delta) = lake.existing_table(table).await? else {
        return Ok(HashSet::new());
    };
    let mut ids = HashSet::new();
    for batch in crate::lake::read::query(&delta, table, sql).await? {
        let column = crate::lake::read::text_column(batch.column(0));
        ids.extend(column.iter().flatten().map(str::to_string));
    }
    Ok(ids)
}

/// The ids already recorded for episodes that started at or after `since` (Unix ms).
pub async fn recorded_ids(lake: &Lake, since: i64) -> Result<HashSet<String>, LakeError> {
    let sql = format!(
        "SELECT id FROM t WHERE episode_start >= '{}'",
        rfc3339(since)
    );
    ids(lake, ALERTS_TABLE, &sql).await
}
