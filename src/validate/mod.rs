//! The seam where profile validation plugs into ingestion.
//!
//! Structural checks (`fhir::structure`) decide whether a resource is FHIR at all. Profile
//! validation (StructureDefinitions in `profiles/`: cardinality, bindings, slicing, invariants) is a
//! [`Check`] that ingestion runs on every structurally valid resource; resources with error issues go
//! to quarantine with them, warnings do not block. Ingestion runs whatever checks it is given, so
//! adding the profile validator changes no ingest code.

use crate::issue::Issue;

/// A check over one structurally valid resource.
pub trait Check: Send + Sync {
    /// Issues found in `raw`, the resource's JSON, whose type is `resource_type`.
    fn check(&self, resource_type: &str, raw: &str) -> Vec<Issue>;
}
