//! One finding about one record, in the shape of a FHIR `OperationOutcome.issue`.
//!
//! Decoding, structural checks and (later) profile validation all report findings this way, so the
//! quarantine table and the `validate` report speak one language.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Fatal => "fatal",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Information => "information",
        }
    }
}

/// One problem found in a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Issue {
    pub severity: Severity,
    /// Where in the record: a FHIRPath such as `Patient.name[0].given`, or the record itself.
    pub location: String,
    /// A stable key for the kind of problem (`json`, `structure`, `resourceType`, `size`, `vs-2`, ...):
    /// reports group by it, policies are set per rule.
    pub rule: String,
    pub message: String,
}

impl Issue {
    pub fn error(rule: &str, location: impl Into<String>, message: impl Into<String>) -> Self {
        Issue {
            severity: Severity::Error,
            location: location.into(),
            rule: rule.to_string(),
            message: message.into(),
        }
    }
}
