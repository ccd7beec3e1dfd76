//! One resource through every view of its type: rows, or the reasons for quarantine.

use super::*;

/// One resource flattened by every view of its type: rows per view (by index in [`SilverViews`]),
/// or why a view could not evaluate it.
#[derive(Debug, Clone)]
pub struct Flattened {
    pub(super) rows: Vec<(usize, Vec<Vec<Cell>>)>,
    pub(super) rejected: Option<Rejected>,
}

impl Flattened {
    /// A view could not evaluate the resource: it goes to quarantine, not silver.
    pub fn quarantines(&self) -> bool {
        self.rejected.is_some()
    }

    /// The rows of each view that evaluated the resource.
    pub fn rows<'a>(
        &'a self,
        views: &'a SilverViews,
    ) -> impl Iterator<Item = (&'a View, &'a [Vec<Cell>])> + 'a {
        self.rows
            .iter()
            .map(|(index, rows)| (&views.views()[*index], rows.as_slice()))
    }
}

pub(super) fn flatten(views: &SilverViews, resource: &BronzeResource) -> Flattened {
    let whose = Whose {
        resource_type: &resource.resource_type,
        id: &resource.id,
        raw: &resource.raw,
        location: &resource.location,
    };
    match serde_json::from_str(&resource.raw) {
        Ok(json) => whose.flatten(views, &json),
        // Bronze only holds JSON that parsed; this is damage, not input.
        Err(e) => Flattened {
            rows: Vec::new(),
            rejected: Some(whose.rejected(vec![Issue::error(
                "bronze",
                resource.resource_type.as_str(),
                format!("bronze row is not JSON: {e}"),
            )])),
        },
    }
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
    let whose = Whose {
        resource_type: &record.resource_type,
        id: &record.id,
        raw: &record.raw,
        location: &record.location,
    };
    Some(whose.flatten(views, &json))
}

/// What a quarantine record says of the resource it holds, whether read back from bronze or just
/// decoded.
struct Whose<'r> {
    resource_type: &'r str,
    id: &'r Option<String>,
    raw: &'r str,
    location: &'r Location,
}

impl Whose<'_> {
    /// `json`, this resource parsed, through every view of its type: the rows of the views that
    /// evaluated it, and a quarantine record with an issue for each view that could not.
    fn flatten(&self, views: &SilverViews, json: &Json) -> Flattened {
        let mut rows = Vec::new();
        let mut issues = Vec::new();
        for (index, view) in views.for_type(self.resource_type) {
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
        let rejected = (!issues.is_empty()).then(|| self.rejected(issues));
        Flattened { rows, rejected }
    }

    fn rejected(&self, issues: Vec<Issue>) -> Rejected {
        Rejected {
            resource_type: Some(self.resource_type.to_string()),
            id: self.id.clone(),
            raw: self.raw.to_string(),
            location: self.location.clone(),
            issues,
        }
    }
}
