//! The inline tests of rule files (`vitalake rules test`): readings in, the rule's events out,
//! compared with what the file expects.
//!
//! A test runs through the whole rule set, so that a test can show one rule inhibiting another,
//! and only the events of the rule that carries the test are compared.

use std::fmt;

use super::RuleSet;
use super::evaluate::{Evaluator, Options};
use super::reading::Reading;
use super::rule::{Rule, duration_millis};

/// The instant a test's durations count from.
const TEST_START: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

#[derive(Debug, serde::Serialize)]
pub struct Outcome {
    pub rule: String,
    pub file: String,
    pub test: String,
    /// Empty when the test passed.
    pub failure: Option<String>,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.failure {
            None => write!(f, "ok    {} / {}", self.rule, self.test),
            Some(why) => write!(
                f,
                "FAIL  {} / {} ({})\n      {why}",
                self.rule, self.test, self.file
            ),
        }
    }
}

/// The outcome of every inline test of a rule set.
#[derive(Debug, serde::Serialize)]
pub struct TestReport {
    pub outcomes: Vec<Outcome>,
}

impl TestReport {
    pub fn failed(&self) -> usize {
        self.outcomes.iter().filter(|o| o.failure.is_some()).count()
    }
}

impl fmt::Display for TestReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for outcome in &self.outcomes {
            writeln!(f, "{outcome}")?;
        }
        let failed = self.failed();
        writeln!(
            f,
            "{} tests: {} passed, {failed} failed",
            self.outcomes.len(),
            self.outcomes.len() - failed
        )
    }
}

/// Runs every inline test of every rule in `set`.
pub fn run_all(set: &RuleSet) -> TestReport {
    let mut outcomes = Vec::new();
    for rule in &set.rules {
        for test in &rule.tests {
            outcomes.push(Outcome {
                rule: rule.id.clone(),
                file: rule.file.clone(),
                test: test.name.clone(),
                failure: run_one(set, rule, test).err(),
            });
        }
    }
    TestReport { outcomes }
}

/// One event as a test writes it: `raised at 5m (sent)`.
fn describe(event: &str, at: i64, delivery: &str) -> String {
    format!("{event} at {} ({delivery})", minutes(at))
}

fn minutes(millis: i64) -> String {
    let seconds = millis / 1000;
    if seconds % 60 == 0 {
        format!("{}m", seconds / 60)
    } else {
        format!("{seconds}s")
    }
}

fn run_one(set: &RuleSet, rule: &Rule, test: &super::rule::RuleTest) -> Result<(), String> {
    let lateness = match &test.lateness {
        Some(l) => duration_millis(l)?,
        None => Options::default().lateness,
    };
    let mut evaluator = Evaluator::new(set, Options { lateness });
    let mut seen = Vec::new();
    for (i, r) in test.readings.iter().enumerate() {
        let at = TEST_START + duration_millis(&r.at)?;
        let arrives = match &r.arrives {
            Some(a) => TEST_START + duration_millis(a)?,
            None => at,
        };
        let reading = Reading {
            patient: "test-patient".into(),
            observation: format!("reading-{}", i + 1),
            at,
            received_at: Some(arrives),
            systolic: r.systolic,
            diastolic: r.diastolic,
            heart_rate: r.heart_rate,
            unit: r.unit.clone().or_else(|| {
                (r.systolic.is_some() || r.diastolic.is_some()).then(|| "mm[Hg]".to_string())
            }),
            device: None,
        };
        for event in evaluator.evaluate(&reading, arrives) {
            if event.rule.id == rule.id {
                seen.push(describe(
                    event.transition.name(),
                    event.effective_time - TEST_START,
                    event.delivery.name(),
                ));
            }
        }
    }
    let expected = test
        .expect
        .iter()
        .map(|e| {
            Ok(describe(
                &e.event,
                duration_millis(&e.at)?,
                e.delivery.as_deref().unwrap_or("sent"),
            ))
        })
        .collect::<Result<Vec<_>, String>>()?;
    if seen == expected {
        Ok(())
    } else {
        Err(format!(
            "expected [{}], got [{}]",
            expected.join(", "),
            seen.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> RuleSet {
        RuleSet::load_dir(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/anomaly-rules"
        )))
        .unwrap_or_else(|p| panic!("{p}"))
    }

    #[test]
    fn the_shipped_rules_pass_their_own_tests() {
        let outcomes = run_all(&shipped()).outcomes;
        assert!(outcomes.len() >= 20, "the shipped rules carry their tests");
        let failed: Vec<String> = outcomes
            .iter()
            .filter(|o| o.failure.is_some())
            .map(|o| o.to_string())
            .collect();
        assert!(failed.is_empty(), "{}", failed.join("\n"));
    }

    #[test]
    fn every_shipped_rule_kind_has_tests() {
        let set = shipped();
        for rule in &set.rules {
            assert!(!rule.tests.is_empty(), "{} has no inline tests", rule.id);
        }
    }
}
