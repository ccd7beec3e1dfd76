//! Anomaly rules: YAML files in `anomaly-rules/`, checked against a JSON Schema shipped with the
//! binary, and the per-patient evaluator that runs them over vital-sign readings.
//!
//! - [`yaml`]: YAML into JSON, keeping each value's line for error messages.
//! - [`rule`]: a rule file as types.
//! - [`reading`]: readings from FHIR Observations and from silver rows.
//! - [`evaluate`]: the evaluator (episodes, sustain, lateness, inhibits, renotify, clear).
//! - [`cases`]: the inline tests a rule file carries (`vitalake rules test`).
//! - [`backtest`]: `silver/fhir/blood_pressure` replayed through a rule set (`vitalake rules backtest`).

pub mod backtest;
pub mod cases;
pub mod evaluate;
pub mod reading;
pub mod rule;
pub mod yaml;

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use sha2::{Digest, Sha256};

pub use evaluate::{AlertEvent, Delivery, Evaluator, Transition};
pub use reading::Reading;
pub use rule::Rule;

/// The rule file schema, shipped in the binary (`vitalake rules schema` prints it).
pub const SCHEMA: &str = include_str!("rule.schema.json");

static VALIDATOR: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    let schema: serde_json::Value = serde_json::from_str(SCHEMA).expect("the rule schema is JSON");
    jsonschema::validator_for(&schema).expect("the rule schema is a valid JSON Schema")
});

/// One thing wrong with a rule file, where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub file: String,
    pub line: usize,
    /// A JSON pointer to the field (`/sustain/within`), empty for the file as a whole.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let field = if self.field.is_empty() {
            "(file)"
        } else {
            &self.field
        };
        write!(
            f,
            "{}:{}: {}: {}",
            self.file, self.line, field, self.message
        )
    }
}

/// Every problem of a rule folder, one per line.
#[derive(Debug)]
pub struct Problems(pub Vec<Problem>);

/// A rule folder that does not load: every problem in it, each with its file, line and field.
#[derive(Debug, thiserror::Error)]
#[error("{} problem(s) in the rules in {dir}:\n{problems}", problems.0.len())]
pub struct InvalidRules {
    pub dir: String,
    pub problems: Problems,
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for problem in &self.0 {
            writeln!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// The rules of one folder, all valid together.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub rules: Vec<Arc<Rule>>,
}

impl RuleSet {
    /// [`RuleSet::load_dir`], its problems as the typed error that names the folder.
    pub fn load(dir: &Path) -> Result<RuleSet, InvalidRules> {
        RuleSet::load_dir(dir).map_err(|problems| InvalidRules {
            dir: dir.display().to_string(),
            problems,
        })
    }

    /// Reads every `*.yaml`/`*.yml` file of `dir`. All or nothing: any problem in any file fails the set.
    pub fn load_dir(dir: &Path) -> Result<RuleSet, Problems> {
        let files = rule_files(dir).map_err(|e| {
            Problems(vec![Problem {
                file: dir.display().to_string(),
                line: 0,
                field: String::new(),
                message: format!("cannot read the rule folder: {e}"),
            }])
        })?;
        let mut rules = Vec::new();
        let mut problems = Vec::new();
        for path in &files {
            match std::fs::read(path) {
                Ok(bytes) => match parse_rule(&path.display().to_string(), &bytes) {
                    Ok(rule) => rules.push(rule),
                    Err(mut p) => problems.append(&mut p),
                },
                Err(e) => problems.push(Problem {
                    file: path.display().to_string(),
                    line: 0,
                    field: String::new(),
                    message: e.to_string(),
                }),
            }
        }
        if files.is_empty() {
            problems.push(Problem {
                file: dir.display().to_string(),
                line: 0,
                field: String::new(),
                message: "no rule files (*.yaml) in this folder".into(),
            });
        }
        problems.extend(cross_check(&rules));
        if problems.is_empty() {
            Ok(RuleSet {
                rules: rules.into_iter().map(Arc::new).collect(),
            })
        } else {
            Err(Problems(problems))
        }
    }

    /// The longest time back a reading can matter to any rule, in milliseconds.
    pub fn longest_window(&self) -> i64 {
        self.rules.iter().map(|r| r.window()).max().unwrap_or(0)
    }
}

/// The rule files of `dir`, sorted by name.
pub fn rule_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

/// What identifies the folder's content: reloads happen when it changes.
pub fn fingerprint(dir: &Path) -> Option<String> {
    let mut hash = Sha256::new();
    for path in rule_files(dir).ok()? {
        hash.update(path.display().to_string().as_bytes());
        hash.update(std::fs::read(&path).ok()?);
    }
    Some(hex::encode(hash.finalize()))
}

/// One rule file: YAML, then the schema, then what the schema cannot say.
pub fn parse_rule(file: &str, bytes: &[u8]) -> Result<Rule, Vec<Problem>> {
    let problem = |line, field: &str, message: String| Problem {
        file: file.to_string(),
        line,
        field: field.to_string(),
        message,
    };
    let text =
        std::str::from_utf8(bytes).map_err(|e| vec![problem(0, "", format!("not UTF-8: {e}"))])?;
    let document = yaml::parse(text).map_err(|(line, message)| vec![problem(line, "", message)])?;
    let errors: Vec<Problem> = VALIDATOR
        .iter_errors(&document.value)
        .map(|e| {
            let field = e.instance_path().as_str().to_string();
            problem(document.line_of(&field), &field, e.to_string())
        })
        .collect();
    if !errors.is_empty() {
        return Err(errors);
    }
    let sha256 = hex::encode(Sha256::digest(bytes));
    rule::from_document(&document.value, file.to_string(), sha256)
        .map_err(|(field, message)| vec![problem(document.line_of(&field), &field, message)])
}

/// Problems between files: the same id twice, `inhibits` naming an unknown rule.
fn cross_check(rules: &[Rule]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    for rule in rules {
        if !seen.insert(rule.id.as_str()) {
            problems.push(Problem {
                file: rule.file.clone(),
                line: 1,
                field: "/id".into(),
                message: format!("rule id `{}` is used by another file", rule.id),
            });
        }
    }
    for rule in rules {
        for inhibited in &rule.inhibits {
            if !seen.contains(inhibited.as_str()) {
                problems.push(Problem {
                    file: rule.file.clone(),
                    line: 1,
                    field: "/inhibits".into(),
                    message: format!("inhibits `{inhibited}`, which no rule file defines"),
                });
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    const CRISIS: &str = "id: crisis\nversion: 1\nstatus: active\nseverity: high\ntitle: Crisis\ndescription: A test rule, long enough.\nsource: A guideline, 2017.\nkind: threshold\nwhen:\n  any:\n    - systolic > 180\n";

    #[test]
    fn a_valid_rule_parses() {
        let rule = parse_rule("crisis.yaml", CRISIS.as_bytes()).unwrap();
        assert_eq!(rule.id, "crisis");
        assert_eq!(rule.sha256.len(), 64);
    }

    #[test]
    fn schema_problems_name_file_line_and_field() {
        let broken = CRISIS
            .replace("severity: high", "severity: urgent")
            .replace("systolic > 180", "systolic >> 180");
        let problems = parse_rule("crisis.yaml", broken.as_bytes()).unwrap_err();
        let fields: Vec<(&str, usize)> = problems
            .iter()
            .map(|p| (p.field.as_str(), p.line))
            .collect();
        assert!(fields.contains(&("/severity", 4)), "{problems:?}");
        assert!(fields.contains(&("/when/any/0", 11)), "{problems:?}");
        assert!(problems.iter().all(|p| p.file == "crisis.yaml"));
    }

    #[test]
    fn a_missing_field_is_reported_on_the_object() {
        let problems = parse_rule(
            "x.yaml",
            CRISIS
                .replace("source: A guideline, 2017.\n", "")
                .as_bytes(),
        )
        .unwrap_err();
        assert!(problems[0].message.contains("source"), "{problems:?}");
    }
}
