//! A rule file's content as types: conditions parsed, durations in milliseconds.
//!
//! The JSON Schema has already checked the shape, so parsing here only fails on what a schema
//! cannot say (an unknown rule in `inhibits`, a `clear` on a kind without episodes...).

use serde::Deserialize;

/// What a reading offers to a condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Systolic,
    Diastolic,
    HeartRate,
    /// Mean arterial pressure, DBP + (SBP - DBP) / 3.
    Map,
    /// SBP - DBP.
    PulsePressure,
}

impl Metric {
    fn parse(text: &str) -> Option<Metric> {
        Some(match text {
            "systolic" => Metric::Systolic,
            "diastolic" => Metric::Diastolic,
            "heart_rate" => Metric::HeartRate,
            "map" => Metric::Map,
            "pulse_pressure" => Metric::PulsePressure,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Metric::Systolic => "systolic",
            Metric::Diastolic => "diastolic",
            Metric::HeartRate => "heart_rate",
            Metric::Map => "map",
            Metric::PulsePressure => "pulse_pressure",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Metric::HeartRate => "/min",
            _ => "mm[Hg]",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl Op {
    fn parse(text: &str) -> Option<Op> {
        Some(match text {
            "<" => Op::Lt,
            "<=" => Op::Le,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "==" => Op::Eq,
            "!=" => Op::Ne,
            _ => return None,
        })
    }

    pub fn holds(self, left: f64, right: f64) -> bool {
        match self {
            Op::Lt => left < right,
            Op::Le => left <= right,
            Op::Gt => left > right,
            Op::Ge => left >= right,
            Op::Eq => left == right,
            Op::Ne => left != right,
        }
    }
}

/// One condition, as written (`systolic > 180`, `diastolic >= systolic`, `unit != mm[Hg]`,
/// `future > 5m`).
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Value(Metric, Op, f64),
    Compare(Metric, Op, Metric),
    /// The blood-pressure unit code is (or is not) this one.
    Unit {
        equal: bool,
        code: String,
    },
    /// The effective time is ahead of the arrival time by more than (or at least) this much.
    Future {
        inclusive: bool,
        millis: i64,
    },
}

impl Condition {
    pub fn parse(text: &str) -> Result<Condition, String> {
        let parts: Vec<&str> = text.split_whitespace().collect();
        let bad = || format!("`{text}` is not a condition");
        let [left, op, right] = parts[..] else {
            return Err(bad());
        };
        let op = Op::parse(op).ok_or_else(bad)?;
        match left {
            "unit" => Ok(Condition::Unit {
                equal: op == Op::Eq,
                code: right.to_string(),
            }),
            "future" => Ok(Condition::Future {
                inclusive: op == Op::Ge,
                millis: duration_millis(right)?,
            }),
            metric => {
                let metric = Metric::parse(metric).ok_or_else(bad)?;
                match Metric::parse(right) {
                    Some(other) => Ok(Condition::Compare(metric, op, other)),
                    None => Ok(Condition::Value(
                        metric,
                        op,
                        right.parse().map_err(|_| bad())?,
                    )),
                }
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Conditions {
    Any(Vec<Condition>),
    All(Vec<Condition>),
}

impl Conditions {
    pub fn list(&self) -> &[Condition] {
        match self {
            Conditions::Any(c) | Conditions::All(c) => c,
        }
    }
}

/// `fall > 40 mmHg`, `below >= 25%`.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Up (rise, above) or down (fall, below).
    pub up: bool,
    pub inclusive: bool,
    pub amount: f64,
    pub percent: bool,
}

impl Change {
    fn parse(text: &str) -> Result<Change, String> {
        let bad = || format!("`{text}` is not a change");
        let compact = text.replace(' ', "");
        let (up, rest) = ["rise", "above", "fall", "below"]
            .iter()
            .find_map(|w| {
                compact
                    .strip_prefix(w)
                    .map(|r| (*w == "rise" || *w == "above", r))
            })
            .ok_or_else(bad)?;
        let (inclusive, rest) = match rest.strip_prefix(">=") {
            Some(r) => (true, r),
            None => (false, rest.strip_prefix('>').ok_or_else(bad)?),
        };
        let (number, percent) = if let Some(n) = rest.strip_suffix('%') {
            (n, true)
        } else {
            (
                rest.strip_suffix("mmHg")
                    .or_else(|| rest.strip_suffix("/min"))
                    .ok_or_else(bad)?,
                false,
            )
        };
        Ok(Change {
            up,
            inclusive,
            amount: number.parse().map_err(|_| bad())?,
            percent,
        })
    }

    /// Whether going from `reference` to `value` is this change.
    pub fn holds(&self, reference: f64, value: f64) -> bool {
        let delta = if self.up {
            value - reference
        } else {
            reference - value
        };
        let size = if self.percent {
            if reference <= 0.0 {
                return false;
            }
            delta / reference * 100.0
        } else {
            delta
        };
        if self.inclusive {
            size >= self.amount
        } else {
            size > self.amount
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Active,
    Shadow,
    Disabled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    High,
    Medium,
    Low,
    Info,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
            Severity::Info => "info",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sustain {
    pub readings: usize,
    pub within: i64,
    pub min_spacing: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Threshold {
        when: Conditions,
        sustain: Option<Sustain>,
    },
    RateOfChange {
        metric: Metric,
        change: Change,
        within: i64,
        against_median: bool,
    },
    BaselineDeviation {
        metric: Metric,
        change: Change,
        days: i64,
        min_readings: usize,
    },
    DataQuality {
        when: Conditions,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Clear {
    /// None: the episode clears when a reading no longer meets the rule.
    pub when: Option<Conditions>,
    /// Consecutive readings that must meet `when`.
    pub readings: usize,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub version: i64,
    pub status: Status,
    pub severity: Severity,
    pub title: String,
    pub description: String,
    pub source: String,
    pub kind: Kind,
    pub clear: Clear,
    pub renotify_after: Option<i64>,
    pub dedup_by_device: bool,
    pub inhibits: Vec<String>,
    pub tests: Vec<RuleTest>,
    /// The file it came from and the SHA-256 of its bytes, carried in every alert.
    pub file: String,
    pub sha256: String,
    /// The rule as written (without its tests), carried in alerts as the criteria that fired.
    pub criteria: serde_json::Value,
    /// The metrics `when` reads: a reading without them does not bear on an open episode.
    pub when_metrics: Vec<Metric>,
}

impl Rule {
    /// How far back a reading can matter to this rule, in milliseconds.
    pub fn window(&self) -> i64 {
        match &self.kind {
            Kind::Threshold { sustain, .. } => sustain.as_ref().map_or(0, |s| s.within),
            Kind::RateOfChange { within, .. } => *within,
            Kind::BaselineDeviation { days, .. } => days * DAY,
            Kind::DataQuality { .. } => 0,
        }
    }

    pub fn is_clinical(&self) -> bool {
        !matches!(self.kind, Kind::DataQuality { .. })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestReading {
    pub at: String,
    pub arrives: Option<String>,
    pub systolic: Option<f64>,
    pub diastolic: Option<f64>,
    pub heart_rate: Option<f64>,
    pub unit: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expected {
    pub event: String,
    pub at: String,
    pub delivery: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleTest {
    pub name: String,
    pub lateness: Option<String>,
    pub readings: Vec<TestReading>,
    pub expect: Vec<Expected>,
}

pub const SECOND: i64 = 1000;
pub const MINUTE: i64 = 60 * SECOND;
pub const HOUR: i64 = 60 * MINUTE;
pub const DAY: i64 = 24 * HOUR;

/// `90s`, `15m`, `24h`, `14d` in milliseconds.
pub fn duration_millis(text: &str) -> Result<i64, String> {
    let bad = || format!("`{text}` is not a duration (like 90s, 15m, 24h, 14d)");
    let unit = match text.chars().last().ok_or_else(bad)? {
        's' => SECOND,
        'm' => MINUTE,
        'h' => HOUR,
        'd' => DAY,
        _ => return Err(bad()),
    };
    let number: i64 = text[..text.len() - 1].parse().map_err(|_| bad())?;
    Ok(number * unit)
}

/// The fields of a rule file; the schema has checked their shape.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    id: String,
    version: i64,
    status: Status,
    severity: Severity,
    title: String,
    description: String,
    source: String,
    kind: String,
    when: Option<ConditionsFile>,
    sustain: Option<SustainFile>,
    metric: Option<Metric>,
    change: Option<String>,
    within: Option<String>,
    against: Option<String>,
    baseline: Option<BaselineFile>,
    clear: Option<ClearFile>,
    renotify_after: Option<String>,
    dedup_key: Option<Vec<String>>,
    #[serde(default)]
    inhibits: Vec<String>,
    #[serde(default)]
    tests: Vec<RuleTest>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConditionsFile {
    any: Option<Vec<String>>,
    all: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SustainFile {
    readings: usize,
    within: String,
    min_spacing: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BaselineFile {
    days: i64,
    min_readings: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClearFile {
    any: Option<Vec<String>>,
    all: Option<Vec<String>>,
    readings: Option<usize>,
}

fn conditions(
    any: Option<Vec<String>>,
    all: Option<Vec<String>>,
) -> Result<Option<Conditions>, String> {
    let parse = |list: Vec<String>| {
        list.iter()
            .map(|c| Condition::parse(c))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(match (any, all) {
        (Some(_), Some(_)) => return Err("give `any` or `all`, not both".into()),
        (Some(list), None) => Some(Conditions::Any(parse(list)?)),
        (None, Some(list)) => Some(Conditions::All(parse(list)?)),
        (None, None) => None,
    })
}

/// A schema-valid rule document as a [`Rule`]; the error names the field at fault.
pub fn from_document(
    value: &serde_json::Value,
    file: String,
    sha256: String,
) -> Result<Rule, (String, String)> {
    let f: RuleFile =
        serde_json::from_value(value.clone()).map_err(|e| (String::new(), e.to_string()))?;
    fn field(name: &'static str) -> impl Fn(String) -> (String, String) {
        move |message| (format!("/{name}"), message)
    }
    let when = match f.when {
        Some(w) => conditions(w.any, w.all).map_err(field("when"))?,
        None => None,
    };
    let change = f
        .change
        .as_deref()
        .map(Change::parse)
        .transpose()
        .map_err(field("change"))?;
    let within = f
        .within
        .as_deref()
        .map(duration_millis)
        .transpose()
        .map_err(field("within"))?;
    let kind = match f.kind.as_str() {
        "threshold" => Kind::Threshold {
            when: when
                .clone()
                .ok_or(("/when".into(), "a threshold rule needs `when`".into()))?,
            sustain: f
                .sustain
                .map(|s| -> Result<Sustain, String> {
                    Ok(Sustain {
                        readings: s.readings,
                        within: duration_millis(&s.within)?,
                        min_spacing: s
                            .min_spacing
                            .as_deref()
                            .map(duration_millis)
                            .transpose()?
                            .unwrap_or(0),
                    })
                })
                .transpose()
                .map_err(field("sustain"))?,
        },
        "data_quality" => Kind::DataQuality {
            when: when
                .clone()
                .ok_or(("/when".into(), "a data_quality rule needs `when`".into()))?,
        },
        "rate_of_change" => Kind::RateOfChange {
            metric: f.metric.ok_or(("/metric".into(), "needed".into()))?,
            change: change.ok_or(("/change".into(), "needed".into()))?,
            within: within.ok_or(("/within".into(), "needed".into()))?,
            against_median: f.against.as_deref() == Some("median"),
        },
        "baseline_deviation" => {
            let baseline = f.baseline.ok_or(("/baseline".into(), "needed".into()))?;
            Kind::BaselineDeviation {
                metric: f.metric.ok_or(("/metric".into(), "needed".into()))?,
                change: change.ok_or(("/change".into(), "needed".into()))?,
                days: baseline.days,
                min_readings: baseline.min_readings,
            }
        }
        other => return Err(("/kind".into(), format!("unknown kind `{other}`"))),
    };
    let clear = match f.clear {
        Some(c) => Clear {
            when: conditions(c.any, c.all).map_err(field("clear"))?,
            readings: c.readings.unwrap_or(1),
        },
        None => Clear {
            when: None,
            readings: 1,
        },
    };
    let mut criteria = value.clone();
    if let Some(map) = criteria.as_object_mut() {
        for key in ["tests", "description", "title", "source"] {
            map.remove(key);
        }
    }
    let when_metrics = when
        .as_ref()
        .map_or_else(Vec::new, |w| referenced(w.list()));
    Ok(Rule {
        when_metrics,
        id: f.id,
        version: f.version,
        status: f.status,
        severity: f.severity,
        title: f.title,
        description: f.description,
        source: f.source,
        kind,
        clear,
        renotify_after: f
            .renotify_after
            .as_deref()
            .map(duration_millis)
            .transpose()
            .map_err(field("renotify_after"))?,
        dedup_by_device: f.dedup_key.is_some_and(|k| k.iter().any(|k| k == "device")),
        inhibits: f.inhibits,
        tests: f.tests,
        file,
        sha256,
        criteria,
    })
}

/// The metrics a list of conditions reads.
pub fn referenced(conditions: &[Condition]) -> Vec<Metric> {
    let mut metrics = Vec::new();
    for condition in conditions {
        match condition {
            Condition::Value(m, _, _) => metrics.push(*m),
            Condition::Compare(a, _, b) => metrics.extend([*a, *b]),
            _ => {}
        }
    }
    for metric in metrics.clone() {
        if matches!(metric, Metric::Map | Metric::PulsePressure) {
            metrics.extend([Metric::Systolic, Metric::Diastolic]);
        }
    }
    metrics
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_read_as_written() {
        assert_eq!(
            Condition::parse("systolic > 180").unwrap(),
            Condition::Value(Metric::Systolic, Op::Gt, 180.0)
        );
        assert_eq!(
            Condition::parse("diastolic >= systolic").unwrap(),
            Condition::Compare(Metric::Diastolic, Op::Ge, Metric::Systolic)
        );
        assert_eq!(
            Condition::parse("future > 5m").unwrap(),
            Condition::Future {
                inclusive: false,
                millis: 5 * MINUTE
            }
        );
        assert!(Condition::parse("systolic >> 3").is_err());
    }

    #[test]
    fn changes_at_their_boundaries() {
        let fall = Change::parse("fall > 40 mmHg").unwrap();
        assert!(!fall.holds(160.0, 120.0), "exactly 40 is not more than 40");
        assert!(fall.holds(160.0, 119.5));
        let below = Change::parse("below >= 25%").unwrap();
        assert!(below.holds(120.0, 90.0), "90 is exactly 25% below 120");
        assert!(!below.holds(120.0, 90.5));
        assert!(Change::parse("rise >= 20 /min").unwrap().holds(80.0, 100.0));
    }
}
