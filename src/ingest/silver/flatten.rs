//! One resource through every view of its type: rows, or the reasons for quarantine.

use super::*;

/// One resource flattened by every view of its type: rows per view (by index in [`SilverViews`]),
/// or why a view could not evaluate it.
#[derive(Debug, Clone)]
pub struct Flattened {
    pub(super) rows: Vec<(usize, Vec<Vec<Cell>>)>,
    pub(super) rejected: Option<Rejected>,
}

pub(super) fn flatten(views: &SilverViews, resource: &BronzeResource) -> Flattened {
    let json: Json = match serde_json::from_str(&resource.raw) {
        Ok(json) => json,
        Err(e) => {
            // Bronze only holds JSON that parsed; this is damage, not input.
            return Flattened {
                rows: Vec::new(),
                rejected: Some(reject(
                    resource,
                    "bronze",
                    format!("bronze row is not JSON: {e}"),
                )),
            };
        }
    };
    let (rows, issues) = run_views(views, &resource.resource_type, &json);
    let rejected = rejected_by_views(
        &resource.resource_type,
        &resource.id,
        &resource.raw,
        &resource.location,
        issues,
    );
    Flattened { rows, rejected }
}

/// A just-decoded resource's silver rows, computed where it was decoded (a stream partition's
/// reader, ahead of its batch's landing) while its parse is still in cache; the parse is then
/// freed there, on the thread that built it. `None` when the record holds no parse or no view
/// reads its type: the landing flattens it then, or has nothing to flatten.
pub fn flatten_ahead(views: &SilverViews, record: &mut ResourceRecord) -> Option<Flattened> {
    let json = record.json.take()?;
    if !views.has_type(&record.resource_type) {
        return None;
    }
    let (rows, issues) = run_views(views, &record.resource_type, &json);
    let rejected = rejected_by_views(
        &record.resource_type,
        &record.id,
        &record.raw,
        &record.location,
        issues,
    );
    Some(Flattened { rows, rejected })
}

/// The quarantine record of a resource some views could not evaluate (`issues`), if any.
fn rejected_by_views(
    resource_type: &str,
    id: &Option<String>,
    raw: &str,
    location: &Location,
    issues: Vec<Issue>,
) -> Option<Rejected> {
    (!issues.is_empty()).then(|| Rejected {
        resource_type: Some(resource_type.to_string()),
        id: id.clone(),
        raw: raw.to_string(),
        location: location.clone(),
        issues,
    })
}

/// Every view of `resource_type` on `json`: the rows of those that evaluated it, and an issue for
/// each that could not.
fn run_views(
    views: &SilverViews,
    resource_type: &str,
    json: &Json,
) -> (Vec<(usize, Vec<Vec<Cell>>)>, Vec<Issue>) {
    let mut rows = Vec::new();
    let mut issues = Vec::new();
    for (index, view) in views.for_type(resource_type) {
        match view.rows(json) {
            Ok(view_rows) => rows.push((index, view_rows)),
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
    (rows, issues)
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
