//! Vital-sign readings, the evaluator's input: a blood-pressure panel (LOINC 85354-9 or 55284-4,
//! components 8480-6 systolic and 8462-4 diastolic, optionally 8867-4 heart rate) or a heart-rate
//! Observation (8867-4), as in `profiles/views/blood_pressure.json` and `heart_rate.json`.

use serde_json::Value;

const LOINC: &str = "http://loinc.org";
const BP_PANELS: [&str; 2] = ["85354-9", "55284-4"];
const SYSTOLIC: &str = "8480-6";
const DIASTOLIC: &str = "8462-4";
const HEART_RATE: &str = "8867-4";

#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub patient: String,
    /// The Observation id.
    pub observation: String,
    /// Effective time, Unix milliseconds.
    pub at: i64,
    /// When it arrived (event enqueued time), Unix milliseconds, if known.
    pub received_at: Option<i64>,
    pub systolic: Option<f64>,
    pub diastolic: Option<f64>,
    pub heart_rate: Option<f64>,
    /// The UCUM code of the blood-pressure values.
    pub unit: Option<String>,
    pub device: Option<String>,
}

/// The reading an Observation carries, or None when it is not a usable vital sign (another code,
/// no patient, no effective time, entered in error).
pub fn from_observation(resource: &Value) -> Option<Reading> {
    if resource.get("resourceType")?.as_str()? != "Observation" {
        return None;
    }
    let status = resource.get("status").and_then(Value::as_str).unwrap_or("");
    if matches!(status, "entered-in-error" | "cancelled") {
        return None;
    }
    let patient = resource
        .pointer("/subject/reference")?
        .as_str()?
        .strip_prefix("Patient/")?
        .to_string();
    let at = effective_millis(resource)?;
    let mut reading = Reading {
        patient,
        observation: resource.get("id")?.as_str()?.to_string(),
        at,
        received_at: None,
        systolic: None,
        diastolic: None,
        heart_rate: None,
        unit: None,
        device: resource
            .pointer("/device/reference")
            .or_else(|| resource.pointer("/device/display"))
            .and_then(Value::as_str)
            .map(str::to_string),
    };
    if has_code(resource.get("code")?, &BP_PANELS) {
        for component in resource.get("component")?.as_array()? {
            let Some(code) = component.get("code") else {
                continue;
            };
            let (value, unit) = quantity(component);
            if has_code(code, &[SYSTOLIC]) {
                reading.systolic = value;
                reading.unit = unit;
            } else if has_code(code, &[DIASTOLIC]) {
                reading.diastolic = value;
                if reading.unit.is_none() {
                    reading.unit = unit;
                }
            } else if has_code(code, &[HEART_RATE]) {
                reading.heart_rate = value;
            }
        }
    } else if has_code(resource.get("code")?, &[HEART_RATE]) {
        reading.heart_rate = quantity(resource).0;
    } else {
        return None;
    }
    if reading.systolic.is_none() && reading.diastolic.is_none() && reading.heart_rate.is_none() {
        return None;
    }
    Some(reading)
}

fn has_code(concept: &Value, codes: &[&str]) -> bool {
    concept
        .get("coding")
        .and_then(Value::as_array)
        .is_some_and(|codings| {
            codings.iter().any(|c| {
                c.get("system").and_then(Value::as_str) == Some(LOINC)
                    && c.get("code")
                        .and_then(Value::as_str)
                        .is_some_and(|code| codes.contains(&code))
            })
        })
}

fn quantity(element: &Value) -> (Option<f64>, Option<String>) {
    let Some(q) = element.get("valueQuantity") else {
        return (None, None);
    };
    (
        q.get("value").and_then(Value::as_f64),
        q.get("code").and_then(Value::as_str).map(str::to_string),
    )
}

fn effective_millis(resource: &Value) -> Option<i64> {
    let text = resource
        .get("effectiveDateTime")
        .or_else(|| resource.get("effectiveInstant"))
        .or_else(|| resource.pointer("/effectivePeriod/start"))?
        .as_str()?;
    parse_time(text)
}

/// A FHIR dateTime or instant in Unix milliseconds; a date alone is its midnight, UTC.
pub fn parse_time(text: &str) -> Option<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(t.timestamp_millis());
    }
    let date = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    Some(date.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis())
}

/// The readings silver holds with an effective time at or after `since` (Unix ms), in effective-time
/// order: blood-pressure panels from `silver/fhir/blood_pressure`, heart rates from
/// `silver/fhir/heart_rate`. A table not yet there gives nothing.
pub async fn from_silver(
    lake: &crate::lake::Lake,
    since: i64,
) -> Result<Vec<Reading>, crate::lake::LakeError> {
    use deltalake::arrow::array::{Array, AsArray};
    use deltalake::arrow::datatypes::{Float64Type, TimestampMicrosecondType};

    let since_text = chrono::DateTime::from_timestamp_millis(since)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let queries = [
        (
            "silver/fhir/blood_pressure",
            "CAST(systolic AS DOUBLE) AS systolic, CAST(diastolic AS DOUBLE) AS diastolic, \
             CAST(NULL AS DOUBLE) AS heart_rate, systolic_unit AS unit",
        ),
        (
            "silver/fhir/heart_rate",
            "CAST(NULL AS DOUBLE) AS systolic, CAST(NULL AS DOUBLE) AS diastolic, \
             CAST(value AS DOUBLE) AS heart_rate, CAST(NULL AS VARCHAR) AS unit",
        ),
    ];
    let mut readings = Vec::new();
    for (table_name, values) in queries {
        let Some(table) = lake.existing_table(table_name).await? else {
            continue;
        };
        let sql = format!(
            "SELECT id, patient_id, effective_time, {values}, device FROM t \
             WHERE patient_id IS NOT NULL AND effective_time >= '{since_text}'"
        );
        for batch in crate::lake::read::query(&table, table_name, &sql).await? {
            let strings = |i: usize| {
                deltalake::arrow::compute::cast(
                    batch.column(i),
                    &deltalake::arrow::datatypes::DataType::Utf8,
                )
                .expect("a string column casts to Utf8")
                .as_string::<i32>()
                .clone()
            };
            let numbers = |i: usize| batch.column(i).as_primitive::<Float64Type>().clone();
            let (ids, patients, units, devices) = (strings(0), strings(1), strings(6), strings(7));
            let times = batch
                .column(2)
                .as_primitive::<TimestampMicrosecondType>()
                .clone();
            let (sys, dia, hr) = (numbers(3), numbers(4), numbers(5));
            let value =
                |a: &deltalake::arrow::array::Float64Array, i| (!a.is_null(i)).then(|| a.value(i));
            let text = |a: &deltalake::arrow::array::StringArray, i| {
                (!a.is_null(i)).then(|| a.value(i).to_string())
            };
            for i in 0..batch.num_rows() {
                let reading = Reading {
                    patient: patients.value(i).to_string(),
                    observation: ids.value(i).to_string(),
                    at: times.value(i) / 1000,
                    received_at: None,
                    systolic: value(&sys, i),
                    diastolic: value(&dia, i),
                    heart_rate: value(&hr, i),
                    unit: text(&units, i),
                    device: text(&devices, i),
                };
                if reading.systolic.is_some()
                    || reading.diastolic.is_some()
                    || reading.heart_rate.is_some()
                {
                    readings.push(reading);
                }
            }
        }
    }
    readings.sort_by(|a, b| {
        a.at.cmp(&b.at)
            .then_with(|| a.observation.cmp(&b.observation))
    });
    Ok(readings)
}

/// The newest effective time of a reading in silver, if there is any.
pub async fn newest_time(lake: &crate::lake::Lake) -> Result<Option<i64>, crate::lake::LakeError> {
    use deltalake::arrow::array::{Array, AsArray};
    use deltalake::arrow::datatypes::TimestampMicrosecondType;
    let mut newest = None;
    for table_name in ["silver/fhir/blood_pressure", "silver/fhir/heart_rate"] {
        let Some(table) = lake.existing_table(table_name).await? else {
            continue;
        };
        for batch in
            crate::lake::read::query(&table, table_name, "SELECT max(effective_time) FROM t")
                .await?
        {
            let column = batch.column(0).as_primitive::<TimestampMicrosecondType>();
            if !column.is_null(0) {
                newest = newest.max(Some(column.value(0) / 1000));
            }
        }
    }
    Ok(newest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_samples_first_readings() {
        let text = include_str!("../../samples/stream/observations.ndjson");
        let mut lines = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap());
        let bp = from_observation(&lines.next().unwrap()).unwrap();
        assert_eq!(
            (bp.patient.as_str(), bp.systolic, bp.diastolic),
            ("p7ea-00004", Some(123.0), Some(75.0))
        );
        assert_eq!(bp.unit.as_deref(), Some("mm[Hg]"));
        assert_eq!(bp.at, parse_time("2026-11-02T07:00:00Z").unwrap());
        let hr = from_observation(&lines.next().unwrap()).unwrap();
        assert_eq!((hr.heart_rate, hr.systolic), (Some(80.0), None));
    }

    #[test]
    fn other_observations_give_no_reading() {
        let weight = serde_json::json!({"resourceType": "Observation", "id": "w", "status": "final",
            "code": {"coding": [{"system": LOINC, "code": "29463-7"}]},
            "subject": {"reference": "Patient/p"}, "effectiveDateTime": "2026-01-01",
            "valueQuantity": {"value": 70, "code": "kg"}});
        assert_eq!(from_observation(&weight), None);
    }
}
