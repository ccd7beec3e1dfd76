//! The anomaly rules' readings, taken from the silver views' rows: as the stream's pipeline
//! flattens a resource that passed every check ([`from_view_rows`]), and as silver holds them
//! for warm-up and backtest ([`from_silver`]). One definition of a reading (the views in
//! `profiles/views/`) serves silver, the rules and their backtest alike.

use deltalake::arrow::array::{Array, AsArray, Float64Array, StringArray};
use deltalake::arrow::datatypes::{Float64Type, TimestampMicrosecondType};

use crate::ingest::silver::{Flattened, SilverViews};
use crate::lake::{Lake, LakeError, read};
use crate::rules::Reading;
use crate::views::Cell;

/// The silver tables of the views readings come from (`blood_pressure`, `heart_rate`).
pub const READING_TABLES: [&str; 2] = ["silver/fhir/blood_pressure", "silver/fhir/heart_rate"];

/// The readings among a flattened resource's view rows: its `blood_pressure` and `heart_rate`
/// rows with a patient, an effective time and at least one value.
pub fn from_view_rows(views: &SilverViews, flattened: &Flattened) -> Vec<Reading> {
    let mut readings = Vec::new();
    for (view, rows) in flattened.rows(views) {
        let (values, unit): (&[(&str, Vital)], &[&str]) = match view.name() {
            Some("blood_pressure") => (
                &[
                    ("systolic", Vital::Systolic),
                    ("diastolic", Vital::Diastolic),
                ],
                &["systolic_unit", "diastolic_unit"],
            ),
            Some("heart_rate") => (&[("value", Vital::HeartRate)], &[]),
            _ => continue,
        };
        let column = |name: &str| view.columns().iter().position(|c| c.name == name);
        let (Some(id), Some(patient), Some(time)) =
            (column("id"), column("patient_id"), column("effective_time"))
        else {
            continue;
        };
        let device = column("device");
        for row in rows {
            let (Some(observation), Some(patient), Cell::Timestamp(micros)) =
                (text(&row[id]), text(&row[patient]), &row[time])
            else {
                continue;
            };
            let mut reading = Reading {
                patient,
                observation,
                at: micros / 1000,
                received_at: None,
                systolic: None,
                diastolic: None,
                heart_rate: None,
                unit: unit
                    .iter()
                    .filter_map(|name| column(name).and_then(|i| text(&row[i])))
                    .next(),
                device: device.and_then(|i| text(&row[i])),
            };
            for (name, vital) in values {
                let value = column(name).and_then(|i| number(&row[i]));
                match vital {
                    Vital::Systolic => reading.systolic = value,
                    Vital::Diastolic => reading.diastolic = value,
                    Vital::HeartRate => reading.heart_rate = value,
                }
            }
            if has_value(&reading) {
                readings.push(reading);
            }
        }
    }
    readings
}

enum Vital {
    Systolic,
    Diastolic,
    HeartRate,
}

fn text(cell: &Cell) -> Option<String> {
    match cell {
        Cell::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// A decimal cell (decimal(38, 18), unscaled) as a float.
fn number(cell: &Cell) -> Option<f64> {
    match cell {
        Cell::Decimal(unscaled) => Some(*unscaled as f64 / 1e18),
        Cell::Integer(i) => Some(*i as f64),
        _ => None,
    }
}

fn has_value(reading: &Reading) -> bool {
    reading.systolic.is_some() || reading.diastolic.is_some() || reading.heart_rate.is_some()
}

/// The readings silver holds with an effective time at or after `since` (Unix ms), in effective-time
/// order: blood-pressure panels from `silver/fhir/blood_pressure`, heart rates from
/// `silver/fhir/heart_rate`. A table not yet there gives nothing.
pub async fn from_silver(lake: &Lake, since: i64) -> Result<Vec<Reading>, LakeError> {
    let since_text = chrono::DateTime::from_timestamp_millis(since)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let queries = [
        (
            READING_TABLES[0],
            "CAST(systolic AS DOUBLE) AS systolic, CAST(diastolic AS DOUBLE) AS diastolic, \
             CAST(NULL AS DOUBLE) AS heart_rate, systolic_unit AS unit",
        ),
        (
            READING_TABLES[1],
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
        for batch in read::query(&table, table_name, &sql).await? {
            let strings = |i: usize| read::text_column(batch.column(i));
            let numbers = |i: usize| batch.column(i).as_primitive::<Float64Type>().clone();
            let (ids, patients, units, devices) = (strings(0), strings(1), strings(6), strings(7));
            let times = batch
                .column(2)
                .as_primitive::<TimestampMicrosecondType>()
                .clone();
            let (sys, dia, hr) = (numbers(3), numbers(4), numbers(5));
            let value = |a: &Float64Array, i| (!a.is_null(i)).then(|| a.value(i));
            let text = |a: &StringArray, i| (!a.is_null(i)).then(|| a.value(i).to_string());
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
                if has_value(&reading) {
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
pub async fn newest_time(lake: &Lake) -> Result<Option<i64>, LakeError> {
    let mut newest = None;
    for table_name in READING_TABLES {
        let Some(table) = lake.existing_table(table_name).await? else {
            continue;
        };
        for batch in read::query(&table, table_name, "SELECT max(effective_time) FROM t").await? {
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
    use crate::fhir::DecodeOptions;
    use crate::ingest::stream::events::EventDecoder;
    use crate::rules::reading::parse_time;
    use crate::stream::Event;

    use super::*;

    /// The readings the stream's pipeline gives the rules for each line of `text`.
    fn readings(text: &str) -> Vec<Vec<Reading>> {
        let views = SilverViews::load(std::path::Path::new("no such folder")).unwrap();
        let decoder = EventDecoder {
            options: DecodeOptions::default(),
            checks: Vec::new(),
            views: views.clone(),
        };
        text.lines()
            .map(|line| {
                let event = Event {
                    body: line.as_bytes().to_vec(),
                    ..Event::default()
                };
                decoder
                    .decode(&event)
                    .iter()
                    .filter_map(|p| p.landing_rows())
                    .flat_map(|rows| from_view_rows(&views, rows))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn the_stream_samples_first_readings_come_from_the_views() {
        let sample = include_str!("../../samples/stream/observations.ndjson");
        let first_two: String = sample.lines().take(2).map(|l| format!("{l}\n")).collect();
        let readings = readings(&first_two);
        let [bp] = &readings[0][..] else {
            panic!("one blood-pressure reading: {readings:?}")
        };
        assert_eq!(
            (bp.patient.as_str(), bp.systolic, bp.diastolic),
            ("p7ea-00004", Some(123.0), Some(75.0))
        );
        assert_eq!(bp.unit.as_deref(), Some("mm[Hg]"));
        assert_eq!(bp.at, parse_time("2026-11-02T07:00:00Z").unwrap());
        let [hr] = &readings[1][..] else {
            panic!("one heart-rate reading: {readings:?}")
        };
        assert_eq!((hr.heart_rate, hr.systolic), (Some(80.0), None));
    }

    #[test]
    fn other_and_withdrawn_observations_give_no_reading() {
        let weight = r#"{"resourceType": "Observation", "id": "w", "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]}, "subject": {"reference": "Patient/p"}, "effectiveDateTime": "2026-01-01", "valueQuantity": {"value": 70, "code": "kg"}}"#;
        let withdrawn = r#"{"resourceType": "Observation", "id": "h", "status": "entered-in-error", "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}, "subject": {"reference": "Patient/p"}, "effectiveDateTime": "2026-01-01T08:00:00Z", "valueQuantity": {"value": 170, "code": "/min"}}"#;
        assert_eq!(
            readings(&format!("{weight}\n{withdrawn}\n")),
            vec![vec![], vec![]]
        );
    }
}
