//! Profile validation: the StructureDefinitions in `profiles/` decide what is valid.
//!
//! Structural checks (`fhir::structure`) decide whether a resource is FHIR at all. A
//! [`ProfileValidator`] then holds each structurally valid resource to its profiles: the base
//! definition of its type, the shipped profiles it claims in `meta.profile`, and defaults from
//! configuration (a BP panel to the R4 `bp` profile; Patients to US Core Patient when asked). It is
//! a [`Check`]: ingestion sends resources with error issues to quarantine with all of them, and keeps
//! warnings with the resource in bronze.
//!
//! - `profiles.rs`: loading, snapshots for differential-only profiles, the element trees;
//! - `engine.rs`: the walk (cardinality, types, fixed/pattern, bindings, slices, invariants);
//! - `terminology.rs`: ValueSet expansion from the shipped ValueSets and CodeSystems.

mod engine;
mod natives;
pub mod profiles;
pub mod terminology;

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use serde_json::Value as Json;

pub use crate::config::{DEFAULT_PROFILES, Policy, ValidateConfig};
use crate::fhirpath;
use crate::issue::{Issue, Severity};
pub use profiles::{Profile, ProfileError, ProfileSet};

/// A check over one structurally valid resource.
pub trait Check: Send + Sync {
    /// Issues found in `resource` (parsed once for every check, and kept for the silver views),
    /// whose type is `resource_type`.
    fn check(&self, resource_type: &str, resource: &Json) -> Vec<Issue>;
}

pub const BP_PROFILE: &str = "http://hl7.org/fhir/StructureDefinition/bp";
pub const US_CORE_PATIENT: &str = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient";
/// LOINC blood-pressure panel (https://loinc.org/85354-9); the R4 `bp` profile requires this code.
const BP_PANEL: &str = "85354-9";

/// Validates resources against the shipped profiles.
pub struct ProfileValidator {
    set: Arc<ProfileSet>,
    config: ValidateConfig,
    /// The profiles of a resource that claims none, by resource type, as
    /// `[any resource, a blood-pressure panel]`: worked out once here rather than for each of
    /// the millions of resources a drop holds.
    unclaimed: HashMap<String, [Vec<Arc<Profile>>; 2]>,
}

impl ProfileValidator {
    pub fn load(config: &ValidateConfig) -> Result<Self, ProfileError> {
        let dir = Path::new(&config.profiles);
        let set = if config.profiles == DEFAULT_PROFILES && !dir.exists() {
            tracing::debug!("no profiles folder here; using the profiles built into vitalake");
            ProfileSet::built_in()?
        } else {
            ProfileSet::load(dir)?
        };
        let mut validator = ProfileValidator {
            set: Arc::new(set),
            config: config.clone(),
            unclaimed: HashMap::new(),
        };
        let resource_types: BTreeSet<String> = validator
            .set
            .profiles
            .values()
            .map(|p| p.resource_type.clone())
            .collect();
        for resource_type in resource_types {
            let profiles = [false, true].map(|bp_panel| {
                validator.select(validator.implied(&resource_type, bp_panel), &resource_type)
            });
            validator.unclaimed.insert(resource_type, profiles);
        }
        Ok(validator)
    }

    /// The profiles every `resource_type` resource is held to, claimed or not: its base
    /// definition, plus `bp` for a blood-pressure panel and US Core for a patient where the
    /// configuration says so.
    fn implied(&self, resource_type: &str, bp_panel: bool) -> Vec<String> {
        let mut urls = vec![format!(
            "http://hl7.org/fhir/StructureDefinition/{resource_type}"
        )];
        if resource_type == "Observation" && self.config.bp_panels_to_bp_profile && bp_panel {
            urls.push(BP_PROFILE.to_string());
        }
        if resource_type == "Patient" && self.config.patients_to_us_core {
            urls.push(US_CORE_PATIENT.to_string());
        }
        urls
    }

    /// The shipped profiles of `urls` that constrain `resource_type`, less those another of them
    /// derives from.
    fn select(&self, mut urls: Vec<String>, resource_type: &str) -> Vec<Arc<Profile>> {
        urls.sort();
        urls.dedup();
        let profiles: Vec<Arc<Profile>> = urls
            .iter()
            .filter_map(|u| self.set.profiles.get(u).cloned())
            .filter(|p| p.resource_type == resource_type)
            .collect();
        // A profile's snapshot carries its bases' constraints: walking a base as well finds nothing
        // more (the walk is most of validation's time).
        let bases: Vec<&String> = profiles.iter().flat_map(|p| &p.bases).collect();
        profiles
            .iter()
            .filter(|p| !bases.contains(&&p.url))
            .cloned()
            .collect()
    }

    /// The profiles `resource` is held to, and a warning for each claimed profile we do not ship.
    fn applicable(&self, resource: &Json) -> (Cow<'_, [Arc<Profile>]>, Vec<Issue>) {
        let resource_type = fhirpath::resource_type(resource).unwrap_or_default();
        let at = |path: &[&str]| {
            path.iter().try_fold(resource, |json, step| {
                fhirpath::field(json.as_object()?, step)
            })
        };
        let bp_panel = resource_type == "Observation"
            && at(&["code", "coding"])
                .and_then(Json::as_array)
                .into_iter()
                .flatten()
                .filter_map(Json::as_object)
                .any(|coding| {
                    let text = |key| fhirpath::field(coding, key).and_then(Json::as_str);
                    text("system") == Some("http://loinc.org") && text("code") == Some(BP_PANEL)
                });
        let claimed = || {
            at(&["meta", "profile"])
                .and_then(Json::as_array)
                .into_iter()
                .flatten()
                .filter_map(Json::as_str)
        };
        let implied = match self.unclaimed.get(resource_type) {
            Some(by_panel) => by_panel[usize::from(bp_panel)].as_slice(),
            None => &[],
        };
        // A claimed profile changes nothing when it is shipped and already implied, or another
        // profile held to derives from it (a reading claiming `bp` or `vitalsigns`).
        let adds_nothing = |url: &str| {
            self.set
                .profiles
                .get(terminology::canonical(url))
                .is_some_and(|claimed| {
                    claimed.resource_type != resource_type
                        || implied
                            .iter()
                            .any(|p| p.url == claimed.url || p.bases.contains(&claimed.url))
                })
        };
        if claimed().all(adds_nothing) {
            return (Cow::Borrowed(implied), Vec::new());
        }
        let mut urls = self.implied(resource_type, bp_panel);
        let mut issues = Vec::new();
        for (i, url) in claimed().enumerate() {
            let url = terminology::canonical(url);
            if self.set.profiles.contains_key(url) {
                urls.push(url.to_string());
            } else {
                issues.push(Issue {
                    severity: Severity::Warning,
                    location: format!("{resource_type}.meta.profile[{i}]"),
                    rule: "profile".into(),
                    message: format!(
                        "claims profile {url}, which is not in profiles/: not checked against it"
                    ),
                });
            }
        }
        (Cow::Owned(self.select(urls, resource_type)), issues)
    }

    /// Every issue of `resource` against its profiles, with the configured policies applied.
    pub fn validate(&self, resource: &Json) -> Vec<Issue> {
        let (profiles, mut issues) = self.applicable(resource);
        for profile in profiles.iter() {
            let mut walker = engine::Walker::new(profile, resource);
            walker.run();
            issues.extend(walker.issues);
        }
        let mut issues = reported_once(issues);
        for issue in &mut issues {
            match self.config.policy.get(&issue.rule) {
                Some(Policy::Quarantine) => issue.severity = Severity::Error,
                Some(Policy::Warn) => issue.severity = Severity::Warning,
                None => {}
            }
        }
        issues
    }

    /// The profiles loaded, by URL.
    pub fn profiles(&self) -> impl Iterator<Item = &str> {
        self.set.profiles.keys().map(String::as_str)
    }
}

impl Check for ProfileValidator {
    fn check(&self, _resource_type: &str, resource: &Json) -> Vec<Issue> {
        self.validate(resource)
    }
}

/// `issues` without repeats, in order: the same invariant is often inherited by several profiles
/// (every profile of a reading finds its missing narrative).
fn reported_once(issues: Vec<Issue>) -> Vec<Issue> {
    if issues.len() < 2 {
        return issues;
    }
    let mut seen = std::collections::HashSet::new();
    let first: Vec<bool> = issues
        .iter()
        .map(|i| seen.insert((i.rule.as_str(), i.location.as_str(), i.message.as_str())))
        .collect();
    issues
        .into_iter()
        .zip(first)
        .filter_map(|(issue, first)| first.then_some(issue))
        .collect()
}

/// A FHIR `OperationOutcome` for a resource's issues (`vitalake validate --json`).
pub fn operation_outcome(issues: &[Issue]) -> Json {
    let issue: Vec<Json> = issues
        .iter()
        .map(|i| {
            serde_json::json!({
                "severity": i.severity.as_str(),
                "code": if i.rule == "cardinality" || i.rule == "type" { "structure" } else if i.rule == "binding" { "code-invalid" } else { "invariant" },
                "details": {"coding": [{"system": "https://vitalake.org/rules", "code": i.rule}], "text": i.message},
                "expression": [i.location],
            })
        })
        .collect();
    let issue = if issue.is_empty() {
        vec![
            serde_json::json!({"severity": "information", "code": "informational", "details": {"text": "no issues"}}),
        ]
    } else {
        issue
    };
    serde_json::json!({"resourceType": "OperationOutcome", "issue": issue})
}
