//! The per-patient evaluator: readings in (in arrival order), alert events out.
//!
//! Semantics, per patient and in effective time:
//! - A reading is evaluated when it arrives, against the patient's readings placed in effective-time
//!   order, so one that is late by up to the allowed lateness counts as if it had come in order.
//!   One later than that is evaluated too, as *backfill*: its events are recorded, never sent.
//! - Data-quality rules run first; a reading an active one flags is kept out of clinical rules.
//! - An alert opens an *episode* per rule and patient (and device, if the rule's dedup key says
//!   so). While it is open the rule does not raise again; it re-notifies after `renotify_after`
//!   while readings still qualify, and resolves when `clear` holds on enough consecutive readings.
//! - A rule with an open episode inhibits the rules it names for the same patient: their events are
//!   recorded as inhibited, not sent.
//! - State is bounded: readings older than the longest window (plus the lateness) are dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::RuleSet;
use super::reading::Reading;
use super::rule::{Condition, Conditions, Kind, Metric, Rule, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Raised,
    Renotified,
    Resolved,
}

impl Transition {
    pub fn name(self) -> &'static str {
        match self {
            Transition::Raised => "raised",
            Transition::Renotified => "renotified",
            Transition::Resolved => "resolved",
        }
    }
}

/// Whether an event goes to the sinks, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Sent,
    /// The rule is in shadow: evaluated and recorded, never sent.
    Shadow,
    /// The reading came later than the allowed lateness.
    Backfill,
    /// An open episode of a rule that inhibits this one.
    Inhibited,
}

impl Delivery {
    pub fn name(self) -> &'static str {
        match self {
            Delivery::Sent => "sent",
            Delivery::Shadow => "shadow",
            Delivery::Backfill => "backfill",
            Delivery::Inhibited => "inhibited",
        }
    }
}

/// A reading an alert refers to.
#[derive(Debug, Clone, PartialEq)]
pub struct Cited {
    pub observation: String,
    pub at: i64,
    pub systolic: Option<f64>,
    pub diastolic: Option<f64>,
    pub heart_rate: Option<f64>,
}

/// One alert event: a rule's episode for a patient raised, re-notified or resolved.
#[derive(Debug, Clone)]
pub struct AlertEvent {
    /// Deterministic: the same rule, patient and episode give the same id on every run.
    pub id: String,
    pub rule: Arc<Rule>,
    pub transition: Transition,
    pub delivery: Delivery,
    pub patient: String,
    pub episode_id: String,
    /// Effective time of the episode's first qualifying reading.
    pub episode_start: i64,
    /// 0 for the raise, then 1, 2... for re-notifications.
    pub notification: u32,
    /// The reading that caused this event (its effective time).
    pub effective_time: i64,
    pub observations: Vec<Cited>,
    /// The reference a change was measured against (window's first or median, or the baseline).
    pub reference: Option<f64>,
    /// Wall-clock time of detection, Unix milliseconds.
    pub detected_at: i64,
}

/// A patient's readings in effective-time order, kept column by column: the times and values the
/// rules scan for every reading sit in a few cache lines, and the Observation ids, read only to
/// cite a reading in an alert, stay out of the way. (With 100,000 patients the state does not fit
/// in any cache, so each reading's evaluation costs what it touches.)
#[derive(Debug, Default)]
struct History {
    at: VecDeque<i64>,
    /// Systolic, diastolic and heart rate as f32, NaN when absent.
    values: VecDeque<[f32; 3]>,
    observation: VecDeque<Box<str>>,
}

/// One kept reading, borrowed from a [`History`].
#[derive(Debug, Clone, Copy)]
struct Kept<'a> {
    at: i64,
    values: &'a [f32; 3],
    observation: &'a str,
}

impl History {
    #[cfg(test)]
    fn len(&self) -> usize {
        self.at.len()
    }

    fn get(&self, index: usize) -> Kept<'_> {
        Kept {
            at: self.at[index],
            values: &self.values[index],
            observation: &self.observation[index],
        }
    }

    /// The index of the first reading at or after `time`. Readings mostly arrive in order and
    /// windows end at the newest, so this looks from the back first, then searches.
    fn first_at_or_after(&self, time: i64) -> usize {
        let mut index = self.at.len();
        for _ in 0..8 {
            if index == 0 || self.at[index - 1] < time {
                return index;
            }
            index -= 1;
        }
        self.at.partition_point(|&at| at < time)
    }

    /// The indices of the readings with an effective time in [from, to).
    fn between(&self, from: i64, to: i64) -> std::ops::Range<usize> {
        let end = self.first_at_or_after(to);
        let start = self.first_at_or_after(from).min(end);
        start..end
    }

    fn insert(&mut self, reading: &Reading) {
        let index = self.first_at_or_after(reading.at + 1);
        self.at.insert(index, reading.at);
        self.values.insert(index, values_of(reading));
        self.observation
            .insert(index, reading.observation.as_str().into());
    }

    /// Drops the readings older than `oldest`.
    fn forget_before(&mut self, oldest: i64) {
        while self.at.front().is_some_and(|&at| at < oldest) {
            self.at.pop_front();
            self.values.pop_front();
            self.observation.pop_front();
        }
    }
}

/// A reading's systolic, diastolic and heart rate as kept (NaN when absent).
fn values_of(reading: &Reading) -> [f32; 3] {
    let f = |v: Option<f64>| v.map_or(f32::NAN, |v| v as f32);
    [
        f(reading.systolic),
        f(reading.diastolic),
        f(reading.heart_rate),
    ]
}

impl Kept<'_> {
    fn metric(&self, metric: Metric) -> Option<f64> {
        metric_of(self.values, metric)
    }

    fn cited(&self) -> Cited {
        let v = |i: usize| (!self.values[i].is_nan()).then_some(self.values[i] as f64);
        Cited {
            observation: self.observation.to_string(),
            at: self.at,
            systolic: v(0),
            diastolic: v(1),
            heart_rate: v(2),
        }
    }
}

/// A reading as an alert cites it.
fn cite(reading: &Reading) -> Cited {
    Kept {
        at: reading.at,
        values: &values_of(reading),
        observation: &reading.observation,
    }
    .cited()
}

fn metric_of(values: &[f32; 3], metric: Metric) -> Option<f64> {
    let get = |i: usize| (!values[i].is_nan()).then_some(values[i] as f64);
    match metric {
        Metric::Systolic => get(0),
        Metric::Diastolic => get(1),
        Metric::HeartRate => get(2),
        Metric::Map => Some(get(1)? + (get(0)? - get(1)?) / 3.0),
        Metric::PulsePressure => Some(get(0)? - get(1)?),
    }
}

#[derive(Debug)]
struct Episode {
    rule: Arc<str>,
    device: Option<Box<str>>,
    id: String,
    start: i64,
    last_notified: i64,
    notifications: u32,
    clear_streak: usize,
    /// Whether any event of the episode reached the sinks (a resolve is sent only then).
    delivered: bool,
}

#[derive(Debug, Default)]
struct PatientState {
    /// Readings in effective-time order, within the longest window.
    readings: History,
    latest: Option<i64>,
    episodes: Vec<Episode>,
    /// When each rule's last episode ended: a new one counts only readings after it.
    ended: Vec<(Arc<str>, i64)>,
}

/// What the evaluator needs to know about the reading's context.
pub struct Options {
    /// How late a reading may arrive (in effective time, behind the patient's newest) and still be
    /// evaluated in order.
    pub lateness: i64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            lateness: 5 * super::rule::MINUTE,
        }
    }
}

pub struct Evaluator {
    rules: Vec<Arc<Rule>>,
    options: Options,
    /// How long readings are kept.
    horizon: i64,
    /// foldhash: SipHash was a visible share of the time per reading.
    patients: HashMap<Box<str>, PatientState, foldhash::fast::RandomState>,
    /// Reused for the values a median is taken of.
    scratch: Vec<f64>,
}

impl Evaluator {
    pub fn new(rules: &RuleSet, options: Options) -> Evaluator {
        let mut evaluator = Evaluator {
            rules: Vec::new(),
            options,
            horizon: 0,
            patients: HashMap::default(),
            scratch: Vec::new(),
        };
        evaluator.replace_rules(rules);
        evaluator
    }

    /// Swaps the rule set, keeping readings and the open episodes of rules that are still there.
    pub fn replace_rules(&mut self, rules: &RuleSet) {
        self.rules = rules
            .rules
            .iter()
            .filter(|r| r.status != Status::Disabled)
            .cloned()
            .collect();
        self.horizon = rules.longest_window() + self.options.lateness;
        let ids: Vec<&str> = self.rules.iter().map(|r| r.id.as_str()).collect();
        for state in self.patients.values_mut() {
            state.episodes.retain(|e| ids.contains(&&*e.rule));
        }
    }

    pub fn patients(&self) -> usize {
        self.patients.len()
    }

    /// Drops a patient's readings and episodes, before they are rebuilt from silver.
    pub fn forget(&mut self, patient: &str) {
        self.patients.remove(patient);
    }

    /// Evaluates one reading; `now` is the wall clock (Unix ms) for `detected_at`.
    pub fn evaluate(&mut self, reading: &Reading, now: i64) -> Vec<AlertEvent> {
        // Look up before inserting: `entry` would allocate the key for every reading.
        if !self.patients.contains_key(reading.patient.as_str()) {
            self.patients
                .insert(reading.patient.as_str().into(), PatientState::default());
        }
        let state = self
            .patients
            .get_mut(reading.patient.as_str())
            .expect("just inserted");
        let backfill = state
            .latest
            .is_some_and(|latest| reading.at < latest - self.options.lateness);
        let values = values_of(reading);
        let mut events = Vec::new();
        let mut implausible = false;
        for rule in self.rules.iter().filter(|r| !r.is_clinical()) {
            let Kind::DataQuality { when } = &rule.kind else {
                unreachable!()
            };
            let qualifies = matches_reading(when, reading);
            implausible |= qualifies && rule.status == Status::Active;
            let relevant = rule
                .when_metrics
                .iter()
                .any(|m| metric_of(&values, *m).is_some());
            let trigger = qualifies.then(|| vec![cite(reading)]);
            step(
                state,
                rule,
                reading,
                relevant,
                qualifies,
                trigger,
                None,
                now,
                &mut events,
            );
        }
        if !implausible {
            state.readings.insert(reading);
            state.latest = Some(state.latest.map_or(reading.at, |l| l.max(reading.at)));
            for rule in self.rules.iter().filter(|r| r.is_clinical()) {
                let after = state
                    .ended
                    .iter()
                    .find(|(id, _)| **id == *rule.id)
                    .map_or(i64::MIN, |(_, t)| *t);
                let (relevant, qualifies, trigger, reference) = judge(
                    rule,
                    &state.readings,
                    &values,
                    reading,
                    after,
                    &mut self.scratch,
                );
                step(
                    state,
                    rule,
                    reading,
                    relevant,
                    qualifies,
                    trigger,
                    reference,
                    now,
                    &mut events,
                );
            }
        }
        for event in &mut events {
            if event.delivery != Delivery::Sent {
                continue;
            }
            if event.rule.status == Status::Shadow {
                event.delivery = Delivery::Shadow;
            } else if backfill {
                event.delivery = Delivery::Backfill;
            } else if event.transition != Transition::Resolved
                && inhibited(&self.rules, state, &event.rule.id)
            {
                event.delivery = Delivery::Inhibited;
            }
        }
        for event in &events {
            if let Some(e) = state.episodes.iter_mut().find(|e| e.id == event.episode_id) {
                e.delivered |= event.delivery == Delivery::Sent;
            }
        }
        // Readings outside every window are no use any more.
        let oldest = state.latest.unwrap_or(reading.at) - self.horizon;
        state.readings.forget_before(oldest);
        events
    }
}

/// Whether an open episode of another rule for this patient inhibits `rule_id`.
fn inhibited(rules: &[Arc<Rule>], state: &PatientState, rule_id: &str) -> bool {
    state.episodes.iter().any(|episode| {
        rules
            .iter()
            .any(|r| *r.id == *episode.rule && r.inhibits.iter().any(|i| i == rule_id))
    })
}

/// For a clinical rule and the newest reading: whether the reading bears on the rule (has its
/// metrics), whether it qualifies, the readings that raise an episode if one would, and the
/// reference value of a change.
#[allow(clippy::type_complexity)]
fn judge(
    rule: &Rule,
    readings: &History,
    values: &[f32; 3],
    reading: &Reading,
    after: i64,
    scratch: &mut Vec<f64>,
) -> (bool, bool, Option<Vec<Cited>>, Option<f64>) {
    // The patient's readings with an effective time in [from, to).
    let between = |from: i64, to: i64| readings.between(from, to).map(|i| readings.get(i));
    // Only their values, for medians: the ids and times are not read.
    let values_between = |from: i64, to: i64, metric: Metric| {
        readings
            .values
            .range(readings.between(from, to))
            .filter_map(move |v| metric_of(v, metric))
    };
    let value_of = |m: Metric| metric_of(values, m);
    match &rule.kind {
        Kind::Threshold { when, sustain } => {
            let relevant = rule.when_metrics.iter().all(|m| value_of(*m).is_some());
            let qualifies = matches_reading(when, reading);
            if !qualifies {
                return (relevant, false, None, None);
            }
            let trigger = match sustain {
                None => Some(vec![cite(reading)]),
                Some(s) => {
                    let candidates: Vec<Kept> =
                        between(reading.at - s.within, reading.at + s.within + 1)
                            .filter(|k| k.at > after && matches_kept(when, k))
                            .collect();
                    sustained(&candidates, s.readings, s.within, s.min_spacing)
                }
            };
            (relevant, qualifies, trigger, None)
        }
        Kind::RateOfChange {
            metric,
            change,
            within,
            against_median,
        } => {
            let Some(value) = value_of(*metric) else {
                return (false, false, None, None);
            };
            let mut window =
                between(reading.at - within, reading.at).filter(|k| k.metric(*metric).is_some());
            let Some(first) = window.next() else {
                return (true, false, None, None);
            };
            let reference = if *against_median {
                scratch.clear();
                scratch.extend(values_between(reading.at - within, reading.at, *metric));
                median(scratch)
            } else {
                first.metric(*metric).expect("filtered on it")
            };
            let qualifies = change.holds(reference, value);
            let trigger = qualifies.then(|| vec![first.cited(), cite(reading)]);
            (true, qualifies, trigger, Some(reference))
        }
        Kind::BaselineDeviation {
            metric,
            change,
            days,
            min_readings,
        } => {
            let Some(value) = value_of(*metric) else {
                return (false, false, None, None);
            };
            scratch.clear();
            scratch.extend(values_between(
                reading.at - days * super::rule::DAY,
                reading.at,
                *metric,
            ));
            if scratch.len() < *min_readings {
                return (false, false, None, None);
            }
            let reference = median(scratch);
            let qualifies = change.holds(reference, value);
            (
                true,
                qualifies,
                qualifies.then(|| vec![cite(reading)]),
                Some(reference),
            )
        }
        Kind::DataQuality { .. } => unreachable!("data-quality rules are judged apart"),
    }
}

/// The first `count` readings, each at least `spacing` after the previous, spanning at most
/// `within`, from the qualifying `candidates` (in time order).
fn sustained(candidates: &[Kept], count: usize, within: i64, spacing: i64) -> Option<Vec<Cited>> {
    for (i, start) in candidates.iter().enumerate() {
        let mut chain = vec![start];
        for next in &candidates[i + 1..] {
            if next.at - start.at > within {
                break;
            }
            if next.at - chain.last().expect("not empty").at >= spacing.max(1) {
                chain.push(next);
                if chain.len() == count {
                    return Some(chain.iter().map(|k| k.cited()).collect());
                }
            }
        }
    }
    None
}

fn median(values: &mut [f64]) -> f64 {
    let middle = values.len() / 2;
    let (_, upper, _) = values.select_nth_unstable_by(middle, f64::total_cmp);
    let upper = *upper;
    if values.len() % 2 == 1 {
        upper
    } else {
        let lower = values[..middle].iter().copied().fold(f64::MIN, f64::max);
        (lower + upper) / 2.0
    }
}

/// Advances a rule's episode for this patient with the reading's verdict.
#[allow(clippy::too_many_arguments)]
fn step(
    state: &mut PatientState,
    rule: &Arc<Rule>,
    reading: &Reading,
    relevant: bool,
    qualifies: bool,
    trigger: Option<Vec<Cited>>,
    reference: Option<f64>,
    now: i64,
    events: &mut Vec<AlertEvent>,
) {
    let device = if rule.dedup_by_device {
        reading.device.as_deref()
    } else {
        None
    };
    let event = |transition, id: String, episode: &Episode, observations| AlertEvent {
        id,
        rule: rule.clone(),
        transition,
        delivery: Delivery::Sent,
        patient: reading.patient.clone(),
        episode_id: episode.id.clone(),
        episode_start: episode.start,
        notification: episode.notifications,
        effective_time: reading.at,
        observations,
        reference,
        detected_at: now,
    };
    let open = state
        .episodes
        .iter()
        .position(|e| *e.rule == *rule.id && e.device.as_deref() == device);
    match open {
        Some(index) => {
            if !relevant {
                return;
            }
            let clears = match &rule.clear.when {
                Some(conditions) => matches_reading(conditions, reading),
                None => !qualifies,
            };
            let episode = &mut state.episodes[index];
            if clears {
                episode.clear_streak += 1;
                if episode.clear_streak >= rule.clear.readings {
                    let episode = state.episodes.remove(index);
                    let id = event_id(&[&episode.id, "resolved"]);
                    let mut resolved =
                        event(Transition::Resolved, id, &episode, vec![cite(reading)]);
                    if !episode.delivered {
                        // Nobody was told of the episode, so nobody is told it ended.
                        resolved.delivery = Delivery::Shadow;
                    }
                    events.push(resolved);
                    state.ended.retain(|(r, _)| **r != *rule.id);
                    state.ended.push((rule.id.as_str().into(), reading.at));
                }
            } else {
                episode.clear_streak = 0;
                let due = rule
                    .renotify_after
                    .is_some_and(|after| reading.at - episode.last_notified >= after);
                if qualifies && due {
                    episode.notifications += 1;
                    episode.last_notified = reading.at;
                    let id = event_id(&[
                        &episode.id,
                        "renotified",
                        &episode.notifications.to_string(),
                    ]);
                    let cited = trigger.unwrap_or_else(|| vec![cite(reading)]);
                    events.push(event(Transition::Renotified, id, episode, cited));
                }
            }
        }
        None => {
            let Some(cited) = trigger else { return };
            let start = cited.iter().map(|c| c.at).min().unwrap_or(reading.at);
            let episode = Episode {
                rule: rule.id.as_str().into(),
                device: device.map(Into::into),
                id: event_id(&[
                    &rule.id,
                    &reading.patient,
                    device.unwrap_or(""),
                    &start.to_string(),
                ]),
                start,
                last_notified: reading.at,
                notifications: 0,
                clear_streak: 0,
                delivered: false,
            };
            events.push(event(
                Transition::Raised,
                episode.id.clone(),
                &episode,
                cited,
            ));
            state.episodes.push(episode);
        }
    }
}

/// A stable id from its parts (hex of the first 16 bytes of their SHA-256).
fn event_id(parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part.as_bytes());
        hash.update([0u8]);
    }
    hex::encode(&hash.finalize()[..16])
}

fn matches_reading(conditions: &Conditions, reading: &Reading) -> bool {
    let values = values_of(reading);
    let check = |c: &Condition| match c {
        Condition::Unit { equal, code } => reading
            .unit
            .as_deref()
            .is_some_and(|unit| (unit == code) == *equal),
        Condition::Future { inclusive, millis } => reading.received_at.is_some_and(|received| {
            let ahead = reading.at - received;
            if *inclusive {
                ahead >= *millis
            } else {
                ahead > *millis
            }
        }),
        other => holds(other, &values),
    };
    match conditions {
        Conditions::Any(list) => list.iter().any(check),
        Conditions::All(list) => list.iter().all(check),
    }
}

/// Conditions on a kept reading (values only: units and arrival are not kept).
fn matches_kept(conditions: &Conditions, kept: &Kept) -> bool {
    match conditions {
        Conditions::Any(list) => list.iter().any(|c| holds(c, kept.values)),
        Conditions::All(list) => list.iter().all(|c| holds(c, kept.values)),
    }
}

/// A value condition; an absent value never holds.
fn holds(condition: &Condition, values: &[f32; 3]) -> bool {
    match condition {
        Condition::Value(metric, op, limit) => {
            metric_of(values, *metric).is_some_and(|v| op.holds(v, *limit))
        }
        Condition::Compare(a, op, b) => match (metric_of(values, *a), metric_of(values, *b)) {
            (Some(a), Some(b)) => op.holds(a, b),
            _ => false,
        },
        Condition::Unit { .. } | Condition::Future { .. } => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(files: &[&str]) -> RuleSet {
        RuleSet {
            rules: files
                .iter()
                .enumerate()
                .map(|(i, text)| {
                    Arc::new(
                        super::super::parse_rule(&format!("r{i}.yaml"), text.as_bytes()).unwrap(),
                    )
                })
                .collect(),
        }
    }

    const HEADER: &str = "version: 1\nstatus: active\nseverity: high\ntitle: Test rule\ndescription: A rule for a unit test.\nsource: None, a unit test.\n";

    fn crisis() -> String {
        format!(
            "id: crisis\n{HEADER}kind: threshold\nwhen:\n  any: [systolic > 180]\nsustain: {{readings: 2, within: 15m}}\n"
        )
    }

    fn reading(patient: &str, minute: i64, systolic: f64) -> Reading {
        Reading {
            patient: patient.into(),
            observation: format!("{patient}-{minute}"),
            at: minute * super::super::rule::MINUTE,
            received_at: None,
            systolic: Some(systolic),
            diastolic: Some(80.0),
            heart_rate: None,
            unit: Some("mm[Hg]".into()),
            device: None,
        }
    }

    #[test]
    fn state_keeps_only_the_longest_window_and_the_lateness() {
        let mut evaluator = Evaluator::new(&set(&[&crisis()]), Options::default());
        for minute in 0..1000 {
            evaluator.evaluate(&reading("p", minute, 120.0), 0);
        }
        let kept = evaluator.patients.get("p").unwrap().readings.len();
        // 15 minutes of sustain window + 5 of lateness, one reading a minute.
        assert_eq!(kept, 21);
    }

    #[test]
    fn a_reload_keeps_the_open_episodes_of_rules_still_there() {
        let stage = format!("id: other\n{HEADER}kind: threshold\nwhen:\n  any: [systolic < 50]\n");
        let mut evaluator = Evaluator::new(&set(&[&crisis()]), Options::default());
        evaluator.evaluate(&reading("p", 0, 190.0), 0);
        assert_eq!(evaluator.evaluate(&reading("p", 5, 190.0), 0).len(), 1);
        evaluator.replace_rules(&set(&[&crisis(), &stage]));
        assert!(
            evaluator.evaluate(&reading("p", 10, 190.0), 0).is_empty(),
            "still the same episode"
        );
        evaluator.replace_rules(&set(&[&stage]));
        assert!(evaluator.patients.get("p").unwrap().episodes.is_empty());
    }

    #[test]
    fn the_same_episode_gets_the_same_id_in_another_evaluator() {
        let ids = || {
            let mut evaluator = Evaluator::new(&set(&[&crisis()]), Options::default());
            evaluator.evaluate(&reading("p", 0, 190.0), 1);
            evaluator.evaluate(&reading("p", 5, 190.0), 2)[0].id.clone()
        };
        assert_eq!(ids(), ids());
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
