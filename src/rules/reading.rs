//! Vital-sign readings, the evaluator's input: one row of the silver views `blood_pressure` (LOINC
//! 85354-9 or 55284-4 panels, components 8480-6 systolic and 8462-4 diastolic) or `heart_rate`
//! (LOINC 8867-4), as `profiles/views/blood_pressure.json` and `heart_rate.json` define them. The
//! rules never read FHIR or the lake: the stream hands them the rows its pipeline flattened, and
//! warm-up and backtest the rows silver holds (`live::readings`).

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

/// A FHIR dateTime or instant in Unix milliseconds; a date alone is its midnight, UTC.
pub fn parse_time(text: &str) -> Option<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(t.timestamp_millis());
    }
    let date = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    Some(date.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_instants_or_midnight() {
        assert_eq!(parse_time("2026-01-01T00:00:00Z"), Some(1_767_225_600_000));
        assert_eq!(parse_time("2026-01-01"), Some(1_767_225_600_000));
        assert_eq!(
            parse_time("2026-01-01T01:00:00+01:00"),
            Some(1_767_225_600_000)
        );
        assert_eq!(parse_time("yesterday"), None);
    }
}
