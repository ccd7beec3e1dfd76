//! A deterministic day of wearable readings for the stream: what `vitalake stream` replays and the
//! anomaly rules are tested on. The same `--seed` always writes the same bytes.
//!
//! `observations.ndjson` has one event per line in arrival order: a blood-pressure panel
//! Observation (LOINC 85354-9 with 8480-6 / 8462-4 in `mm[Hg]`), its heart rate (8867-4) as a second
//! event, or both in one `collection` Bundle. A feed's habits are in it: noise and a day/night
//! rhythm, readings that arrive late (a few minutes, and some beyond a 5-minute lateness window),
//! and events sent twice. `pharmacy.ndjson` has the day's MedicationDispense events.
//! `episodes.json` lists the injected episodes the rules must find, each once:
//! - `hypertensive_crisis`: two readings above 180/120 five minutes apart (2017 ACC/AHA guideline);
//! - `hypotension`: two readings with systolic below 90 six minutes apart;
//! - `rapid_drop`: systolic falling by more than 40 mmHg within 20 minutes;
//! - `implausible`: a device glitch with diastolic above systolic (a data-quality alert).

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::{Value, json};

use super::{
    GenerateError, LOINC, MEDICINES, NDC, UCUM, coding, instant, mmhg, vital_signs_category,
};

#[derive(Debug, Clone)]
pub struct StreamOptions {
    pub patients: usize,
    pub hours: u32,
    pub seed: u64,
}

/// An injected episode, as `episodes.json` lists it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Episode {
    pub kind: &'static str,
    pub patient: String,
    /// The Observation ids of the readings that make the episode.
    pub observations: Vec<String>,
}

#[derive(Debug, Default)]
pub struct StreamSummary {
    pub events: usize,
    pub readings: usize,
    pub late: usize,
    pub duplicates: usize,
    pub dispenses: usize,
    pub episodes: Vec<Episode>,
}

impl std::fmt::Display for StreamSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kinds: Vec<&str> = self.episodes.iter().map(|e| e.kind).collect();
        write!(
            f,
            "wrote {} observation events ({} readings, {} late, {} sent twice), {} dispense events; episodes: {}",
            self.events,
            self.readings,
            self.late,
            self.duplicates,
            self.dispenses,
            if kinds.is_empty() {
                "none (needs 5 patients)".to_string()
            } else {
                kinds.join(", ")
            }
        )
    }
}

/// One reading: systolic, diastolic, heart rate at a minute of the period.
struct Reading {
    minute: i64,
    systolic: i64,
    diastolic: i64,
    pulse: i64,
}

/// An event and when it reaches the hub, in seconds after the start of the period.
struct Arrival {
    second: i64,
    body: Value,
}

/// Writes `observations.ndjson`, `pharmacy.ndjson` and `episodes.json` into `out`.
pub fn write_stream(out: &Path, options: &StreamOptions) -> Result<StreamSummary, GenerateError> {
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed ^ 0x5EED_57EA);
    let mut summary = StreamSummary::default();
    let mut arrivals = Vec::new();
    let mut dispenses = Vec::new();
    let period = i64::from(options.hours) * 60;
    for n in 0..options.patients {
        let patient = format!("p{:x}-{n:05}", options.seed);
        let mut readings = normal_readings(&mut rng, period);
        if let Some(episode) = inject_episode(n, &patient, period, &mut readings) {
            summary.episodes.push(episode);
        }
        readings.sort_by_key(|r| r.minute);
        for (k, reading) in readings.iter().enumerate() {
            summary.readings += 1;
            let (bp, hr) = observations(&patient, k, reading);
            let mut delay = rng.random_range(1..30);
            let episode_reading = summary.episodes.iter().any(|e| {
                e.observations
                    .contains(&bp["id"].as_str().unwrap_or_default().to_string())
            });
            if !episode_reading {
                match rng.random_range(0..100) {
                    0..3 => delay += rng.random_range(60..240),
                    3 => delay += rng.random_range(480..1200),
                    _ => {}
                }
            }
            if delay >= 60 {
                summary.late += 1;
            }
            let second = reading.minute * 60 + delay;
            let bodies = if rng.random_bool(0.2) {
                vec![
                    json!({ "resourceType": "Bundle", "type": "collection", "entry": [{ "resource": bp }, { "resource": hr }] }),
                ]
            } else {
                vec![bp, hr]
            };
            for body in bodies {
                if !episode_reading && rng.random_bool(0.01) {
                    summary.duplicates += 1;
                    arrivals.push(Arrival {
                        second: second + rng.random_range(1..60),
                        body: body.clone(),
                    });
                }
                arrivals.push(Arrival { second, body });
            }
        }
        for k in 0..rng.random_range(0..3) {
            let (code, name, quantity) = MEDICINES[rng.random_range(0..MEDICINES.len())];
            let minute = rng.random_range(8 * 60..period.max(8 * 60 + 1));
            dispenses.push((
                minute,
                json!({
                    "resourceType": "MedicationDispense",
                    "id": format!("md-{patient}-s{k}"),
                    "meta": { "versionId": "1", "lastUpdated": instant(minute) },
                    "status": "completed",
                    "medicationCodeableConcept": { "coding": [coding(NDC, code, name)], "text": name },
                    "subject": { "reference": format!("Patient/{patient}") },
                    "quantity": { "value": quantity, "unit": "tablet", "system": UCUM, "code": "{tbl}" },
                    "daysSupply": { "value": quantity, "unit": "day", "system": UCUM, "code": "d" },
                    "whenHandedOver": instant(minute)
                }),
            ));
        }
    }
    arrivals.sort_by_key(|a| a.second);
    dispenses.sort_by_key(|(minute, _)| *minute);
    summary.events = arrivals.len();
    summary.dispenses = dispenses.len();
    let lines = |values: &mut dyn Iterator<Item = &Value>| {
        let mut text = Vec::new();
        for value in values {
            serde_json::to_writer(&mut text, value).expect("json");
            text.push(b'\n');
        }
        text
    };
    write_file(
        out,
        "observations.ndjson",
        &lines(&mut arrivals.iter().map(|a| &a.body)),
    )?;
    write_file(
        out,
        "pharmacy.ndjson",
        &lines(&mut dispenses.iter().map(|(_, d)| d)),
    )?;
    let episodes = serde_json::to_vec_pretty(&summary.episodes).expect("json");
    write_file(out, "episodes.json", &episodes)?;
    Ok(summary)
}

fn write_file(out: &Path, name: &str, bytes: &[u8]) -> Result<(), GenerateError> {
    let path = out.join(name);
    let err = |source| GenerateError::Write {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(out).map_err(err)?;
    std::fs::write(&path, bytes).map_err(err)
}

/// A reading every 20 to 40 minutes around the patient's own level, a little lower at night.
fn normal_readings(rng: &mut ChaCha8Rng, period: i64) -> Vec<Reading> {
    let base_systolic = rng.random_range(108..150i64);
    let base_diastolic = base_systolic * 6 / 10 + rng.random_range(0..12);
    let base_pulse = rng.random_range(58..90i64);
    let noise = |rng: &mut ChaCha8Rng, spread: i64| {
        (0..3)
            .map(|_| rng.random_range(-spread..=spread))
            .sum::<i64>()
            / 2
    };
    let mut readings = Vec::new();
    let mut minute = rng.random_range(0..30);
    while minute < period {
        // The period starts at 07:00 UTC; the night dip is for 23:00 to 06:00.
        let hour = (7 + minute / 60) % 24;
        let night = if !(6..23).contains(&hour) { -8 } else { 0 };
        let systolic = base_systolic + night + noise(rng, 8);
        let diastolic = (base_diastolic + night / 2 + noise(rng, 6)).min(systolic - 20);
        readings.push(Reading {
            minute,
            systolic,
            diastolic,
            pulse: base_pulse + noise(rng, 6),
        });
        minute += rng.random_range(20..41);
    }
    readings
}

/// Minutes after the episode's start, systolic, diastolic, heart rate.
type InjectedReading = (i64, i64, i64, i64);

/// Patients 1 to 4 each get one episode, placed where no normal reading is close.
fn inject_episode(
    n: usize,
    patient: &str,
    period: i64,
    readings: &mut Vec<Reading>,
) -> Option<Episode> {
    let (kind, at, injected): (&'static str, i64, &[InjectedReading]) = match n {
        1 => (
            "hypertensive_crisis",
            period / 3,
            &[(0, 194, 124, 96), (5, 201, 126, 98)],
        ),
        2 => (
            "hypotension",
            period / 2,
            &[(0, 84, 48, 104), (6, 81, 46, 108)],
        ),
        3 => (
            "rapid_drop",
            period * 2 / 3,
            &[(0, 152, 88, 84), (20, 104, 62, 112)],
        ),
        4 => ("implausible", period / 4, &[(0, 96, 118, 70)]),
        _ => return None,
    };
    let span = injected.last().map(|r| r.0).unwrap_or(0);
    // Clear an hour around the episode so it stands alone.
    readings.retain(|r| r.minute < at - 30 || r.minute > at + span + 30);
    for &(offset, systolic, diastolic, pulse) in injected {
        readings.push(Reading {
            minute: at + offset,
            systolic,
            diastolic,
            pulse,
        });
    }
    readings.sort_by_key(|r| r.minute);
    let ids = readings
        .iter()
        .enumerate()
        .filter(|(_, r)| r.minute >= at && r.minute <= at + span)
        .map(|(k, _)| format!("bp-{patient}-s{k}"))
        .collect();
    Some(Episode {
        kind,
        patient: patient.to_string(),
        observations: ids,
    })
}

/// The blood-pressure panel and heart-rate Observations of reading `k`.
fn observations(patient: &str, k: usize, reading: &Reading) -> (Value, Value) {
    let subject = json!({ "reference": format!("Patient/{patient}") });
    let effective = instant(reading.minute);
    let meta =
        |profile: &str| json!({ "versionId": "1", "lastUpdated": effective, "profile": [profile] });
    let bp = json!({
        "resourceType": "Observation",
        "id": format!("bp-{patient}-s{k}"),
        "meta": meta("http://hl7.org/fhir/StructureDefinition/bp"),
        "status": "final",
        "category": vital_signs_category(),
        "code": { "coding": [coding(LOINC, "85354-9", "Blood pressure panel with all children optional")], "text": "Blood pressure" },
        "subject": subject,
        "effectiveDateTime": effective,
        "device": { "display": "Withings BPM Connect" },
        "component": [
            { "code": { "coding": [coding(LOINC, "8480-6", "Systolic blood pressure")] }, "valueQuantity": mmhg(reading.systolic) },
            { "code": { "coding": [coding(LOINC, "8462-4", "Diastolic blood pressure")] }, "valueQuantity": mmhg(reading.diastolic) }
        ]
    });
    let hr = json!({
        "resourceType": "Observation",
        "id": format!("hr-{patient}-s{k}"),
        "meta": meta("http://hl7.org/fhir/StructureDefinition/heartrate"),
        "status": "final",
        "category": vital_signs_category(),
        "code": { "coding": [coding(LOINC, "8867-4", "Heart rate")], "text": "Heart rate" },
        "subject": subject,
        "effectiveDateTime": effective,
        "valueQuantity": { "value": reading.pulse, "unit": "beats/minute", "system": UCUM, "code": "/min" }
    });
    (bp, hr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_writes_the_same_stream_with_every_episode() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let options = StreamOptions {
            patients: 6,
            hours: 24,
            seed: 7,
        };
        let summary = write_stream(a.path(), &options).unwrap();
        write_stream(b.path(), &options).unwrap();
        let read = |dir: &Path| std::fs::read(dir.join("observations.ndjson")).unwrap();
        assert_eq!(read(a.path()), read(b.path()));
        let kinds: Vec<&str> = summary.episodes.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                "hypertensive_crisis",
                "hypotension",
                "rapid_drop",
                "implausible"
            ]
        );
        assert_eq!(summary.episodes[0].observations.len(), 2);
        // Every episode reading is in the stream, with the values that make it an episode.
        let text = String::from_utf8(read(a.path())).unwrap();
        for episode in &summary.episodes {
            for id in &episode.observations {
                assert!(
                    text.contains(&format!("\"id\":\"{id}\"")),
                    "{id} is in the stream"
                );
            }
        }
        assert!(summary.late > 0 && summary.duplicates > 0 && summary.readings > 6 * 24);
    }
}
