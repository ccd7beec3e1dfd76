//! SQL-on-FHIR v2 ViewDefinitions: FHIR resources to flat, typed Arrow tables.
//!
//! A ViewDefinition (JSON) is checked and compiled once into a [`View`]: every FHIRPath parsed, every
//! column typed and placed, every `%constant` resolved. Running it on a resource gives rows; a
//! [`RowsBuilder`] gathers rows into a `RecordBatch`. Silver tables are views from `profiles/views/`;
//! `vitalake views run` runs one by hand.

mod columns;
pub mod inputs;
pub mod output;
mod run;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use deltalake::arrow::datatypes::{Schema, SchemaRef};
use deltalake::arrow::error::ArrowError;
use deltalake::arrow::record_batch::RecordBatch;
use serde_json::Value as Json;

use crate::fhirpath::{DateTimeValue, Expression, Item, TimeValue};

pub use columns::{Cell, ColumnType, DECIMAL_SCALE};
pub use run::RunError;

/// Why a ViewDefinition was refused.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("cannot read view {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("view {path} is not JSON: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    #[error("invalid ViewDefinition{}: {message}", name.as_ref().map(|n| format!(" '{n}'")).unwrap_or_default())]
    Invalid {
        name: Option<String>,
        message: String,
    },
}

/// A compiled ViewDefinition.
#[derive(Debug)]
pub struct View {
    name: Option<String>,
    resource: String,
    constants: Vec<(String, Item<'static>)>,
    filters: Vec<Expression>,
    selects: Vec<run::Select>,
    columns: Vec<ColumnSpec>,
    schema: SchemaRef,
}

/// One output column, in output order.
#[derive(Debug, Clone)]
pub struct ColumnSpec {
    pub name: String,
    pub column_type: ColumnType,
    pub collection: bool,
}

impl View {
    /// Reads and compiles a ViewDefinition file.
    pub fn load(path: &Path) -> Result<View, ViewError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ViewError::Read {
            path: shown.clone(),
            source,
        })?;
        let json: Json = serde_json::from_str(&text).map_err(|source| ViewError::Json {
            path: shown,
            source,
        })?;
        View::from_json(&json)
    }

    /// Compiles a ViewDefinition, refusing anything the specification does not allow.
    pub fn from_json(json: &Json) -> Result<View, ViewError> {
        let name = json.get("name").and_then(Json::as_str).map(str::to_string);
        let invalid = |message: String| ViewError::Invalid {
            name: name.clone(),
            message,
        };
        let object = json
            .as_object()
            .ok_or_else(|| invalid("a ViewDefinition is a JSON object".into()))?;
        let resource = object
            .get("resource")
            .and_then(Json::as_str)
            .filter(|r| r.starts_with(|c: char| c.is_ascii_uppercase()))
            .ok_or_else(|| {
                invalid("'resource' (the FHIR resource type the view reads) is required".into())
            })?
            .to_string();
        let constants = match object.get("constant") {
            None => Vec::new(),
            Some(Json::Array(list)) => list
                .iter()
                .map(constant)
                .collect::<Result<_, _>>()
                .map_err(invalid)?,
            Some(_) => return Err(invalid("'constant' must be an array".into())),
        };
        let filters = match object.get("where") {
            None => Vec::new(),
            Some(Json::Array(list)) => list
                .iter()
                .map(|w| match w.get("path").and_then(Json::as_str) {
                    Some(path) => parse_path(path, "where"),
                    None => Err("each 'where' needs a 'path' string".into()),
                })
                .collect::<Result<_, _>>()
                .map_err(invalid)?,
            Some(_) => return Err(invalid("'where' must be an array".into())),
        };
        let mut columns = Vec::new();
        let selects = match object.get("select") {
            Some(Json::Array(list)) if !list.is_empty() => list
                .iter()
                .map(|s| run::Select::compile(s, &mut columns))
                .collect::<Result<Vec<_>, _>>()
                .map_err(invalid)?,
            _ => return Err(invalid("'select' must be a non-empty array".into())),
        };
        let mut seen = HashSet::new();
        if let Some(duplicate) = columns.iter().find(|c| !seen.insert(c.name.as_str())) {
            return Err(invalid(format!(
                "column name '{}' is used twice",
                duplicate.name
            )));
        }
        let view = View {
            schema: Arc::new(Schema::new(
                columns
                    .iter()
                    .map(|c| columns::field(&c.name, c.column_type, c.collection))
                    .collect::<Vec<_>>(),
            )),
            name: name.clone(),
            resource,
            constants,
            filters,
            selects,
            columns,
        };
        view.check_variables().map_err(invalid)?;
        Ok(view)
    }

    /// Every `%name` in every path must be a constant or `%rowIndex`.
    fn check_variables(&self) -> Result<(), String> {
        let mut expressions: Vec<&Expression> = self.filters.iter().collect();
        self.selects
            .iter()
            .for_each(|s| s.expressions(&mut expressions));
        for expression in expressions {
            for variable in expression.variables() {
                let known = variable == "rowIndex"
                    || variable == "resource"
                    || self.constants.iter().any(|(n, _)| n == variable);
                if !known {
                    return Err(format!(
                        "'%{variable}' in '{}' is not a constant of this view",
                        expression.text()
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The resource type the view reads.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    pub fn columns(&self) -> &[ColumnSpec] {
        &self.columns
    }

    /// The rows of one resource (none when it is of another type or a `where` rejects it).
    pub fn rows(&self, resource: &Json) -> Result<Vec<Vec<Cell>>, RunError> {
        if crate::fhirpath::resource_type(resource) != Some(self.resource.as_str()) {
            return Ok(Vec::new());
        }
        run::rows::<run::Typed>(self, resource)
    }

    /// The rows of one resource with each value as the resource writes it (a dateTime with its
    /// offset and precision, a decimal with its digits; nulls kept), checked against the column
    /// types as [`View::rows`] checks them: what `views run` prints.
    pub fn rows_as_written(&self, resource: &Json) -> Result<Vec<Vec<Json>>, RunError> {
        if crate::fhirpath::resource_type(resource) != Some(self.resource.as_str()) {
            return Ok(Vec::new());
        }
        run::rows::<run::AsWritten>(self, resource)
    }

    pub fn builder(&self) -> RowsBuilder {
        RowsBuilder {
            schema: self.schema.clone(),
            columns: self.columns.clone(),
            cells: vec![Vec::new(); self.columns.len()],
        }
    }
}

/// Every `*.json` ViewDefinition in `dir`, in file-name order. Each needs a `name` (it names the
/// silver table), unique in the folder.
pub fn load_dir(dir: &Path) -> Result<Vec<View>, ViewError> {
    let read_error = |source| ViewError::Read {
        path: dir.display().to_string(),
        source,
    };
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map_err(read_error)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    let mut views: Vec<View> = Vec::new();
    for path in paths {
        let view = View::load(&path)?;
        let invalid = |message: String| ViewError::Invalid {
            name: view.name.clone(),
            message,
        };
        let Some(name) = view.name() else {
            return Err(invalid(format!(
                "{} has no 'name'; it names the silver table",
                path.display()
            )));
        };
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(invalid(format!(
                "{}: a table name holds only letters, digits and _",
                path.display()
            )));
        }
        if views.iter().any(|v| v.name() == Some(name)) {
            return Err(invalid(format!(
                "{}: another view in {} has the same name",
                path.display(),
                dir.display()
            )));
        }
        views.push(view);
    }
    Ok(views)
}

fn parse_path(path: &str, place: &str) -> Result<Expression, String> {
    Expression::parse(path).map_err(|e| format!("{place} path '{path}': {e}"))
}

/// A `constant` entry: a name and exactly one `value[x]`.
fn constant(json: &Json) -> Result<(String, Item<'static>), String> {
    let name = json
        .get("name")
        .and_then(Json::as_str)
        .ok_or("each constant needs a 'name'")?;
    let values: Vec<_> = json
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.starts_with("value"))
        .collect();
    let [(key, value)] = values.as_slice() else {
        return Err(format!("constant '{name}' needs exactly one value[x]"));
    };
    let bad = || format!("constant '{name}': {key} has a value of the wrong form");
    let item = match (key.as_str(), value) {
        ("valueBoolean", Json::Bool(b)) => Item::Boolean(*b),
        (
            "valueInteger" | "valuePositiveInt" | "valueUnsignedInt" | "valueInteger64",
            Json::Number(n),
        ) => Item::Integer(n.as_i64().ok_or_else(bad)?),
        ("valueDecimal", Json::Number(n)) => {
            Item::Decimal(n.to_string().parse().map_err(|_| bad())?)
        }
        ("valueDate", Json::String(s)) => Item::Date(DateTimeValue::parse(s).ok_or_else(bad)?),
        ("valueDateTime" | "valueInstant", Json::String(s)) => {
            Item::DateTime(DateTimeValue::parse(s).ok_or_else(bad)?)
        }
        ("valueTime", Json::String(s)) => Item::Time(TimeValue::parse(s).ok_or_else(bad)?),
        (_, Json::String(s)) => Item::string(s.clone()),
        _ => return Err(bad()),
    };
    Ok((name.to_string(), item))
}

/// Gathers rows column by column and turns them into a `RecordBatch`.
pub struct RowsBuilder {
    schema: SchemaRef,
    columns: Vec<ColumnSpec>,
    cells: Vec<Vec<Cell>>,
}

impl RowsBuilder {
    pub fn push(&mut self, row: Vec<Cell>) {
        for (column, cell) in self.cells.iter_mut().zip(row) {
            column.push(cell);
        }
    }

    pub fn len(&self) -> usize {
        self.cells.first().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The rows gathered so far as a batch; the builder starts empty again.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        let arrays = self
            .columns
            .iter()
            .zip(self.cells.iter_mut())
            .map(|(spec, cells)| {
                columns::array(spec.column_type, spec.collection, &std::mem::take(cells))
            })
            .collect();
        RecordBatch::try_new(self.schema.clone(), arrays)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn refuses_views_the_specification_forbids() {
        let cases = [
            (json!({}), "'resource'"),
            (json!({"resource": "Patient"}), "'select'"),
            (
                json!({"resource": "Patient", "select": [{"forEach": 1}]}),
                "forEach",
            ),
            (
                json!({"resource": "Patient", "select": [{"forEach": "@@"}]}),
                "syntax",
            ),
            (
                json!({"resource": "Patient", "select": [{"column": [{"name": "a", "path": "id"}, {"name": "a", "path": "id"}]}]}),
                "twice",
            ),
            (
                json!({"resource": "Patient", "select": [{"column": [{"name": "a", "path": "name.where(use = %x)"}]}]}),
                "%x",
            ),
            (
                json!({"resource": "Patient", "constant": [{"name": "x"}], "select": [{"column": [{"name": "a", "path": "id"}]}]}),
                "value[x]",
            ),
            (
                json!({"resource": "Patient", "select": [{"column": [{"name": "a b", "path": "id"}]}]}),
                "name",
            ),
            (
                json!({"resource": "Patient", "select": [{"column": [{"name": "a", "path": "id.frob()"}]}]}),
                "frob",
            ),
        ];
        for (view, expected) in cases {
            let error = View::from_json(&view).unwrap_err().to_string();
            assert!(error.contains(expected), "{view}: {error}");
        }
    }
}
