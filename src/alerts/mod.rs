//! Alerts: the CloudEvents 1.0 format of an alert event, where alerts go ([`sink`]) through the
//! outbox that retries a failing sink ([`outbox`]), and the `silver/alerts` table that records every
//! one of them, sent or not, with the receipts of their deliveries ([`table`]).

pub mod outbox;
pub mod sink;
pub mod table;

use serde_json::{Value, json};

use crate::rules::evaluate::{AlertEvent, Cited, Transition};

/// An alert as it goes to a sink: its CloudEvent, with its id and patient (the partition key).
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub id: String,
    pub patient: String,
    pub event: Value,
}

/// The CloudEvents `type` of an alert: `org.vitalake.bp.alert.raised.v1` and friends.
pub fn event_type(transition: Transition) -> String {
    format!("org.vitalake.bp.alert.{}.v1", transition.name())
}

fn time(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn quantity(value: Option<f64>, unit: &str) -> Value {
    match value {
        Some(v) => json!({ "value": v, "unit": unit, "system": "http://unitsofmeasure.org" }),
        None => Value::Null,
    }
}

fn observation(cited: &Cited) -> Value {
    let mut o = json!({
        "reference": format!("Observation/{}", cited.observation),
        "effectiveDateTime": time(cited.at),
    });
    for (name, value, unit) in [
        ("systolic", cited.systolic, "mm[Hg]"),
        ("diastolic", cited.diastolic, "mm[Hg]"),
        ("heartRate", cited.heart_rate, "/min"),
    ] {
        if value.is_some() {
            o[name] = quantity(value, unit);
        }
    }
    o
}

/// The alert as a CloudEvents 1.0 JSON event. Its `id` is the same on every run for the same rule,
/// patient and episode, so a receiver drops a duplicate by id.
pub fn cloud_event(alert: &AlertEvent) -> Value {
    let rule = &alert.rule;
    json!({
        "specversion": "1.0",
        "type": event_type(alert.transition),
        "source": format!("urn:vitalake:rules:{}", rule.id),
        "id": alert.id,
        "time": time(alert.detected_at),
        "subject": format!("Patient/{}", alert.patient),
        "datacontenttype": "application/json",
        "data": {
            "rule": { "id": rule.id, "version": rule.version, "sha256": rule.sha256, "title": rule.title },
            "severity": rule.severity.name(),
            "status": alert.transition.name(),
            "delivery": alert.delivery.name(),
            "patient": { "reference": format!("Patient/{}", alert.patient) },
            "episode": { "id": alert.episode_id, "start": time(alert.episode_start), "notification": alert.notification },
            "observations": alert.observations.iter().map(observation).collect::<Vec<_>>(),
            "reference_value": alert.reference,
            "criteria": rule.criteria,
            "effective_time": time(alert.effective_time),
            "detected_at": time(alert.detected_at),
            "event_time_lag_ms": alert.detected_at - alert.effective_time,
        }
    })
}
