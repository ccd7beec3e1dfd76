//! `vitalake rules backtest`: silver's readings replayed through a rule set, nothing sent, to see how
//! often a rule would page before it pages anyone.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::Serialize;

use super::RuleSet;
use super::evaluate::{Delivery, Evaluator, Options, Transition};
use super::reading::Reading;

#[derive(Debug, Default, Clone, Serialize)]
pub struct RuleFigures {
    pub rule: String,
    pub status: String,
    pub severity: String,
    /// Raises that would have been sent.
    pub raised: u64,
    /// Raises recorded but not sent: shadow rule, inhibited, or backfill.
    pub raised_not_sent: u64,
    pub renotified: u64,
    pub resolved: u64,
    pub patients: u64,
    /// Raises (sent or not) per patient-day of readings.
    pub alerts_per_patient_day: f64,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Backtest {
    pub readings: u64,
    pub patients: u64,
    pub patient_days: u64,
    pub rules: Vec<RuleFigures>,
}

/// Replays `readings` (in effective-time order; silver's, read by
/// `live::readings::from_silver`) through `rules` as of `now`.
pub fn run(rules: &RuleSet, readings: &[Reading], now: i64) -> Backtest {
    let mut evaluator = Evaluator::new(rules, Options::default());
    let mut figures: BTreeMap<String, (RuleFigures, HashSet<String>)> = rules
        .rules
        .iter()
        .map(|r| {
            let figures = RuleFigures {
                rule: r.id.clone(),
                status: format!("{:?}", r.status).to_lowercase(),
                severity: r.severity.name().into(),
                ..RuleFigures::default()
            };
            (r.id.clone(), (figures, HashSet::new()))
        })
        .collect();
    let mut patient_days = HashSet::new();
    for reading in readings {
        patient_days.insert((
            reading.patient.as_str(),
            reading.at.div_euclid(super::rule::DAY),
        ));
        for event in evaluator.evaluate(reading, now) {
            let (f, patients) = figures.get_mut(&event.rule.id).expect("a rule of the set");
            match (event.transition, event.delivery) {
                (Transition::Raised, Delivery::Sent) => f.raised += 1,
                (Transition::Raised, _) => f.raised_not_sent += 1,
                (Transition::Renotified, _) => f.renotified += 1,
                (Transition::Resolved, _) => f.resolved += 1,
            }
            if event.transition == Transition::Raised {
                patients.insert(event.patient.clone());
            }
        }
    }
    let days = patient_days.len() as u64;
    Backtest {
        readings: readings.len() as u64,
        patients: evaluator.patients() as u64,
        patient_days: days,
        rules: figures
            .into_values()
            .map(|(mut f, patients)| {
                f.patients = patients.len() as u64;
                f.alerts_per_patient_day =
                    (f.raised + f.raised_not_sent) as f64 / days.max(1) as f64;
                f
            })
            .collect(),
    }
}

impl fmt::Display for Backtest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} readings, {} patients, {} patient-days",
            self.readings, self.patients, self.patient_days
        )?;
        writeln!(
            f,
            "{:<34} {:<8} {:<8} {:>6} {:>8} {:>6} {:>8} {:>8} {:>9}",
            "rule",
            "status",
            "severity",
            "raised",
            "not sent",
            "renot.",
            "resolved",
            "patients",
            "per pt-day"
        )?;
        for r in &self.rules {
            writeln!(
                f,
                "{:<34} {:<8} {:<8} {:>6} {:>8} {:>6} {:>8} {:>8} {:>9.4}",
                r.rule,
                r.status,
                r.severity,
                r.raised,
                r.raised_not_sent,
                r.renotified,
                r.resolved,
                r.patients,
                r.alerts_per_patient_day
            )?;
        }
        Ok(())
    }
}
