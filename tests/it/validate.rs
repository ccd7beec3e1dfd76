//! Profile validation against the shipped profiles: every official Patient and Observation example
//! passes, and every mutation in `tests/data/invalid/` is caught with the rule it breaks.

use std::path::Path;

use serde_json::Value;
use vitalake::issue::Severity;
use vitalake::validate::{ProfileValidator, ValidateConfig};

use crate::common::shared_fhir;

fn validator(us_core_patients: bool) -> ProfileValidator {
    let config = ValidateConfig {
        patients_to_us_core: us_core_patients,
        ..ValidateConfig::default()
    };
    ProfileValidator::load(&config).unwrap()
}

fn resources_in(folder: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(folder)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    for path in paths {
        let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        push(&name, json, &mut out);
    }
    out
}

fn push(name: &str, json: Value, out: &mut Vec<(String, Value)>) {
    if json["resourceType"] == "Bundle" {
        for (i, entry) in json["entry"].as_array().into_iter().flatten().enumerate() {
            if !entry["resource"].is_null() {
                push(&format!("{name} entry {i}"), entry["resource"].clone(), out);
            }
        }
    } else {
        out.push((name.to_string(), json));
    }
}

#[test]
fn every_official_patient_and_observation_example_validates_without_error() {
    let plain = validator(false);
    let mut checked = 0;
    let mut failures = Vec::new();
    for folder in [shared_fhir("r4/examples"), shared_fhir("us-core-9.0.0")] {
        for (name, resource) in resources_in(&folder) {
            let resource_type = resource["resourceType"].as_str().unwrap_or_default();
            if resource_type != "Patient" && resource_type != "Observation" {
                continue;
            }
            checked += 1;
            for issue in plain
                .validate(&resource)
                .into_iter()
                .filter(|i| i.severity == Severity::Error)
            {
                failures.push(format!(
                    "{name}: [{}] {} {}",
                    issue.rule, issue.location, issue.message
                ));
            }
        }
    }
    assert!(checked >= 20, "checked {checked}");
    assert!(
        failures.is_empty(),
        "{} errors:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn us_core_examples_validate_against_us_core_when_patients_are_held_to_it() {
    let us_core = validator(true);
    for (name, resource) in resources_in(&shared_fhir("us-core-9.0.0")) {
        let errors: Vec<_> = us_core
            .validate(&resource)
            .into_iter()
            .filter(|i| i.severity == Severity::Error)
            .collect();
        assert!(errors.is_empty(), "{name}: {errors:?}");
    }
}

/// Each file in `tests/data/invalid/` is one mutation of a valid example; its name starts with the
/// rule the validator must report as an error (`vs-2--no-value.json`), or as a warning when the
/// name ends in `.warning.json` (the one warning-level invariant, `dom-6`).
#[test]
fn every_mutation_is_caught_with_its_rule() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 40, "the corpus has {} files", files.len());
    let us_core = validator(true);
    let mut failures = Vec::new();
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let rule = name.split("--").next().unwrap();
        let resource: Value =
            serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        let issues = us_core.validate(&resource);
        let severity = if name.ends_with(".warning.json") {
            Severity::Warning
        } else {
            Severity::Error
        };
        if !issues
            .iter()
            .any(|i| i.rule == rule && i.severity == severity)
        {
            failures.push(format!(
                "{name}: expected {severity:?} with rule {rule}, got {issues:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `ingest fhir` quarantines exactly what `validate` rejects, with the same issues; warnings stay
/// with the resource in bronze.
#[tokio::test(flavor = "multi_thread")]
async fn ingest_quarantines_what_validate_rejects_with_the_same_reasons() {
    use std::sync::Arc;
    use vitalake::ingest::{IngestOptions, check, ingest_fhir};

    let invalid = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/invalid")
        .display()
        .to_string();
    let valid = shared_fhir("us-core-9.0.0");
    let options = || {
        let mut options = IngestOptions::from_config(&Default::default());
        options.checks = vec![Arc::new(validator(true))];
        options
    };
    let checked = check::check_files(&[invalid.clone(), valid.clone()], options())
        .await
        .unwrap();
    let rejected: Vec<_> = checked.outcomes.iter().filter(|o| o.has_errors()).collect();
    assert_eq!(rejected.len(), 48, "every error mutation and nothing else");

    let (_dir, lake) = crate::common::temp_lake();
    let report = ingest_fhir(&lake, &[invalid, valid], options())
        .await
        .unwrap();
    assert_eq!(report.quarantine_rows, 48);
    let mut by_source: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    let issue_rows = crate::common::rows(
        &lake,
        "silver/quarantine",
        "SELECT source_uri, e['rule'] FROM (SELECT source_uri, unnest(errors) AS e FROM t)",
    )
    .await;
    for row in issue_rows {
        by_source
            .entry(row[0].clone())
            .or_default()
            .insert(row[1].clone());
    }
    let mut quarantined: Vec<Vec<String>> = by_source
        .into_iter()
        .map(|(source, rules)| vec![source, rules.into_iter().collect::<Vec<_>>().join(",")])
        .collect();
    quarantined.sort();
    let mut expected: Vec<Vec<String>> = rejected
        .iter()
        .map(|o| {
            let mut rules: Vec<String> = o.issues.iter().map(|i| i.rule.clone()).collect();
            rules.sort();
            rules.dedup();
            vec![o.source_uri.clone(), rules.join(",")]
        })
        .collect();
    expected.sort();
    assert_eq!(quarantined, expected);
    // The valid US Core examples landed, with their warnings (no narrative: dom-6) kept in bronze.
    let warned = crate::common::rows(
        &lake,
        "bronze/fhir/Patient",
        "SELECT resource_id, warnings[1]['rule'] FROM t",
    )
    .await;
    assert_eq!(warned.len(), 1, "{warned:?}");
}

#[test]
fn a_policy_turns_a_rule_into_a_warning_or_an_error() {
    let resource: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data/invalid/vs-2--heart-rate-without-value.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut config = ValidateConfig::default();
    config
        .policy
        .insert("vs-2".into(), vitalake::validate::Policy::Warn);
    config
        .policy
        .insert("dom-6".into(), vitalake::validate::Policy::Quarantine);
    let issues = ProfileValidator::load(&config).unwrap().validate(&resource);
    let severity_of = |rule: &str| issues.iter().find(|i| i.rule == rule).map(|i| i.severity);
    assert_eq!(severity_of("vs-2"), Some(Severity::Warning));
    assert_eq!(severity_of("dom-6"), Some(Severity::Error));
}

#[test]
fn the_validate_command_prints_operation_outcomes_and_fails_on_errors() {
    use crate::common::vitalake;
    let invalid = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/invalid/vs-2--heart-rate-without-value.json");
    let out = vitalake()
        .args(["validate", "--json"])
        .arg(&invalid)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let outcomes: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(outcomes.len(), 1);
    let outcome = &outcomes[0]["outcome"];
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    let vs2 = outcome["issue"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["details"]["coding"][0]["code"] == "vs-2")
        .unwrap();
    assert_eq!(vs2["severity"], "error");
    assert_eq!(vs2["expression"][0], "Observation");

    let valid = shared_fhir("us-core-9.0.0/Patient-example.json");
    let out = vitalake().arg("validate").arg(&valid).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 records: 1 valid, 0 with errors"));
}

/// Run from a folder with no `profiles/` (installed, say), the binary holds resources to the
/// profiles built into it, and catches what it catches from a checkout; a profiles folder the
/// configuration names must exist.
#[test]
fn outside_the_checkout_the_built_in_profiles_hold() {
    use crate::common::{run_ok, vitalake};
    let invalid = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/invalid/vs-2--heart-rate-without-value.json");
    let elsewhere = tempfile::tempdir().unwrap();
    let out = run_ok(
        vitalake()
            .current_dir(elsewhere.path())
            .args(["--lake", "lake", "ingest", "fhir", "--json"])
            .arg(&invalid),
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["quarantine_rows"], 1);
    assert_eq!(report["quarantined_by_rule"]["vs-2"], 1);

    let out = vitalake()
        .current_dir(elsewhere.path())
        .arg("validate")
        .arg(&invalid)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("[vs-2]"));

    let out = vitalake()
        .current_dir(elsewhere.path())
        .env("VITALAKE_VALIDATE_PROFILES", "my-profiles")
        .arg("validate")
        .arg(&invalid)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("my-profiles"));
}

/// A profile a resource claims in `meta.profile` is held to when it is shipped, and warned about
/// when it is not; a claimed profile that another one held to derives from adds nothing. Checked
/// through `validate --json` on the official heart-rate example under four claims.
#[test]
fn claimed_profiles_are_held_to_or_warned_about() {
    use crate::common::vitalake;
    let example: Value = serde_json::from_str(
        &std::fs::read_to_string(shared_fhir("r4/examples/Observation-heart-rate.json")).unwrap(),
    )
    .unwrap();
    let folder = tempfile::tempdir().unwrap();
    let claims = [
        ("none", None),
        (
            "vital-signs",
            Some("http://hl7.org/fhir/StructureDefinition/vitalsigns"),
        ),
        (
            "not-shipped",
            Some("http://example.org/StructureDefinition/ward-heart-rate"),
        ),
        (
            "us-core-bp",
            Some("http://hl7.org/fhir/us/core/StructureDefinition/us-core-blood-pressure|9.0.0"),
        ),
    ];
    for (name, claim) in claims {
        let mut resource = example.clone();
        let object = resource.as_object_mut().unwrap();
        object.remove("meta");
        if let Some(url) = claim {
            object.insert("meta".into(), serde_json::json!({"profile": [url]}));
        }
        let path = folder.path().join(format!("{name}.json"));
        std::fs::write(&path, resource.to_string()).unwrap();
        let out = vitalake()
            .args(["validate", "--json"])
            .arg(&path)
            .output()
            .unwrap();
        let outcomes: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let found: Vec<(String, String, String)> = outcomes
            .iter()
            .flat_map(|o| o["outcome"]["issue"].as_array().unwrap().clone())
            .filter(|i| i["severity"] != "information")
            .map(|i| {
                let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
                let rule = &i["details"]["coding"][0]["code"];
                (text(&i["severity"]), text(rule), text(&i["expression"][0]))
            })
            .collect();
        let has = |severity: &str, rule: &str, at: &str| {
            found.contains(&(severity.into(), rule.into(), at.into()))
        };
        match name {
            "none" | "vital-signs" => {
                assert!(
                    out.status.success() && found.is_empty(),
                    "{name}: {found:?}"
                )
            }
            "not-shipped" => {
                assert!(out.status.success(), "{name}: {found:?}");
                assert!(
                    has("warning", "profile", "Observation.meta.profile[0]"),
                    "{found:?}"
                );
            }
            _ => {
                assert_eq!(out.status.code(), Some(1), "{name}: {found:?}");
                assert!(has("error", "pattern", "Observation.code"), "{found:?}");
                assert!(
                    has("error", "cardinality", "Observation.component"),
                    "{found:?}"
                );
            }
        }
    }
}
