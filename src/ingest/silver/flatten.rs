//! One resource through every view of its type: rows, or the reasons for quarantine.

use super::*;

/// One resource flattened by every view of its type: rows per view (by index in [`SilverViews`]),
/// or why a view could not evaluate it.
pub(super) struct Flattened {
    pub(super) rows: Vec<(usize, Vec<Vec<Cell>>)>,
    pub(super) rejected: Option<Rejected>,
}

pub(super) fn flatten(views: &SilverViews, resource: &BronzeResource) -> Flattened {
    let mut flattened = Flattened {
        rows: Vec::new(),
        rejected: None,
    };
    let parsed: Json;
    let json = match &resource.json {
        Some(json) => json.as_ref(),
        None => match serde_json::from_str(&resource.raw) {
            Ok(json) => {
                parsed = json;
                &parsed
            }
            Err(e) => {
                // Bronze only holds JSON that parsed; this is damage, not input.
                flattened.rejected = Some(reject(
                    resource,
                    "bronze",
                    format!("bronze row is not JSON: {e}"),
                ));
                return flattened;
            }
        },
    };
    let mut issues = Vec::new();
    for (index, view) in views.for_type(&resource.resource_type) {
        match view.rows(json) {
            Ok(rows) => flattened.rows.push((index, rows)),
            Err(error) => issues.push(Issue {
                severity: Severity::Error,
                location: view.name().unwrap_or("?").to_string(),
                rule: "view".into(),
                message: format!(
                    "view '{}' could not evaluate {error}",
                    view.name().unwrap_or("?")
                ),
            }),
        }
    }
    if !issues.is_empty() {
        let mut rejected = reject(resource, "view", String::new());
        rejected.issues = issues;
        flattened.rejected = Some(rejected);
    }
    flattened
}

pub(super) fn reject(resource: &BronzeResource, rule: &str, message: String) -> Rejected {
    let mut rejected = Rejected::new(
        resource.raw.clone(),
        resource.location.clone(),
        Issue {
            severity: Severity::Error,
            location: resource.resource_type.clone(),
            rule: rule.into(),
            message,
        },
    );
    rejected.resource_type = Some(resource.resource_type.clone());
    rejected.id = resource.id.clone();
    rejected
}
