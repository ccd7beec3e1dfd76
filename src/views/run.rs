//! Running a compiled view on one resource.
//!
//! A `select` evaluates at a focus (the resource, or each item of its `forEach`, `forEachOrNull` or
//! `repeat`): its own columns make one partial row, and its nested selects and `unionAll` branches
//! multiply it (a cross join per focus), exactly as the specification's reference algorithm does.

use std::borrow::Cow;

use serde_json::Value as Json;
use smallvec::smallvec;

use super::columns::{Cell, ColumnType};
use super::{ColumnSpec, View, parse_path};
use crate::fhirpath::{Collection, Expression, Item, Variables};

/// An expression that failed on a resource: the resource goes to quarantine with this.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{expression}': {message}")]
pub struct RunError {
    pub expression: String,
    pub message: String,
}

#[derive(Debug)]
enum Iteration {
    None,
    ForEach(Expression),
    ForEachOrNull(Expression),
    Repeat(Vec<Expression>),
}

#[derive(Debug)]
struct Column {
    index: usize,
    path: Expression,
    column_type: ColumnType,
    collection: bool,
}

#[derive(Debug)]
pub(super) struct Select {
    iteration: Iteration,
    columns: Vec<Column>,
    selects: Vec<Select>,
    union_all: Vec<Select>,
    /// Output positions this select and everything under it fill.
    covered: Vec<usize>,
}

fn is_column_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Select {
    /// Compiles one `select`, appending its columns (in output order) to `columns`.
    pub(super) fn compile(json: &Json, columns: &mut Vec<ColumnSpec>) -> Result<Select, String> {
        let object = json.as_object().ok_or("each select must be an object")?;
        let path = |key: &str| -> Result<Option<Expression>, String> {
            match object.get(key) {
                None => Ok(None),
                Some(Json::String(path)) => parse_path(path, key).map(Some),
                Some(_) => Err(format!("'{key}' must be a FHIRPath string")),
            }
        };
        let for_each = path("forEach")?;
        let for_each_or_null = path("forEachOrNull")?;
        let repeat = match object.get("repeat") {
            None => None,
            Some(Json::Array(paths)) if !paths.is_empty() => Some(
                paths
                    .iter()
                    .map(|p| {
                        p.as_str()
                            .ok_or("'repeat' paths must be strings".to_string())
                            .and_then(|p| parse_path(p, "repeat"))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Some(_) => return Err("'repeat' must be a non-empty array of paths".into()),
        };
        let iteration = match (for_each, for_each_or_null, repeat) {
            (None, None, None) => Iteration::None,
            (Some(e), None, None) => Iteration::ForEach(e),
            (None, Some(e), None) => Iteration::ForEachOrNull(e),
            (None, None, Some(paths)) => Iteration::Repeat(paths),
            _ => {
                return Err(
                    "a select may have only one of forEach, forEachOrNull and repeat".into(),
                );
            }
        };
        let mut select = Select {
            iteration,
            columns: Vec::new(),
            selects: Vec::new(),
            union_all: Vec::new(),
            covered: Vec::new(),
        };
        for column in list(object, "column")? {
            let name = column
                .get("name")
                .and_then(Json::as_str)
                .ok_or("each column needs a 'name'")?;
            if !is_column_name(name) {
                return Err(format!(
                    "column name '{name}' must start with a letter and hold only letters, digits and _"
                ));
            }
            let path = column
                .get("path")
                .and_then(Json::as_str)
                .ok_or(format!("column '{name}' needs a 'path'"))?;
            let type_name = match column.get("type") {
                None => None,
                Some(Json::String(t)) => Some(t.as_str()),
                Some(_) => return Err(format!("column '{name}': 'type' must be a string")),
            };
            let collection = match column.get("collection") {
                None => false,
                Some(Json::Bool(b)) => *b,
                Some(_) => {
                    return Err(format!(
                        "column '{name}': 'collection' must be true or false"
                    ));
                }
            };
            let column_type =
                ColumnType::from_fhir(type_name).map_err(|e| format!("column '{name}': {e}"))?;
            select.covered.push(columns.len());
            select.columns.push(Column {
                index: columns.len(),
                path: parse_path(path, &format!("column '{name}'"))?,
                column_type,
                collection,
            });
            columns.push(ColumnSpec {
                name: name.to_string(),
                column_type,
                collection,
            });
        }
        for nested in list(object, "select")? {
            let nested = Select::compile(nested, columns)?;
            select.covered.extend(&nested.covered);
            select.selects.push(nested);
        }
        let branches = list(object, "unionAll")?;
        let mut first_branch_columns: Option<Vec<ColumnSpec>> = None;
        for branch in branches {
            // Every branch fills the same positions: compile each from the same starting point.
            let mut branch_columns = columns[..].to_vec();
            let compiled = Select::compile(branch, &mut branch_columns)?;
            let added = &branch_columns[columns.len()..];
            match &first_branch_columns {
                None => first_branch_columns = Some(branch_columns.clone()),
                Some(first) => {
                    // Same names, order, types and collection flags: the branches share columns.
                    let shape = |specs: &[ColumnSpec]| {
                        specs
                            .iter()
                            .map(|c| (c.name.clone(), c.column_type, c.collection))
                            .collect::<Vec<_>>()
                    };
                    if shape(&first[columns.len()..]) != shape(added) {
                        return Err(format!(
                            "unionAll branches must have the same columns (name, type, collection) in the same order: {:?} vs {:?}",
                            shape(&first[columns.len()..]),
                            shape(added)
                        ));
                    }
                }
            }
            select.union_all.push(compiled);
        }
        if let Some(first) = first_branch_columns {
            select.covered.extend(columns.len()..first.len());
            *columns = first;
        }
        Ok(select)
    }

    /// Every expression under this select, for checks made once per view.
    pub(super) fn expressions<'s>(&'s self, out: &mut Vec<&'s Expression>) {
        match &self.iteration {
            Iteration::None => {}
            Iteration::ForEach(e) | Iteration::ForEachOrNull(e) => out.push(e),
            Iteration::Repeat(paths) => out.extend(paths),
        }
        out.extend(self.columns.iter().map(|c| &c.path));
        self.selects
            .iter()
            .chain(&self.union_all)
            .for_each(|s| s.expressions(out));
    }
}

/// The array under `key`, empty when absent.
fn list<'j>(object: &'j serde_json::Map<String, Json>, key: &str) -> Result<&'j [Json], String> {
    match object.get(key) {
        None => Ok(&[]),
        Some(Json::Array(items)) => Ok(items),
        Some(_) => Err(format!("'{key}' must be an array")),
    }
}

/// `%rowIndex`, `%resource` and the view's constants.
struct ViewVariables<'v, 'a> {
    view: &'v View,
    resource: &'a Json,
    row_index: usize,
}

impl<'v: 'a, 'a> Variables<'a> for ViewVariables<'v, 'a> {
    fn get(&self, name: &str) -> Option<Collection<'a>> {
        match name {
            "rowIndex" => Some(smallvec![Item::Integer(self.row_index as i64)]),
            "resource" => Some(smallvec![Item::Node(self.resource, None)]),
            _ => {
                let (_, value) = self.view.constants.iter().find(|(n, _)| n == name)?;
                // A string constant is lent, not copied: views read `%loinc` on every resource.
                Some(smallvec![match value {
                    Item::String(text) => Item::String(Cow::Borrowed(text.as_ref())),
                    other => other.clone(),
                }])
            }
        }
    }
}

/// How a row's cells are made from the items a column's path gives: typed for silver ([`Typed`]),
/// or as the resource writes them for `views run`'s output ([`AsWritten`]).
pub(super) trait CellForm {
    type Cell: Clone;
    fn null() -> Self::Cell;
    fn list(items: Vec<Self::Cell>) -> Self::Cell;
    fn cell(column_type: ColumnType, item: &Item) -> Result<Self::Cell, String>;
}

/// Silver's typed cells: UTC instants, decimal(38, 18), days since the epoch.
pub(super) struct Typed;

impl CellForm for Typed {
    type Cell = Cell;
    fn null() -> Cell {
        Cell::Null
    }
    fn list(items: Vec<Cell>) -> Cell {
        Cell::List(items)
    }
    fn cell(column_type: ColumnType, item: &Item) -> Result<Cell, String> {
        column_type.cell(item)
    }
}

/// Values as FHIR JSON writes them (a dateTime keeps its offset and precision, a decimal its
/// digits), checked against the column's type as silver checks them.
pub(super) struct AsWritten;

impl CellForm for AsWritten {
    type Cell = Json;
    fn null() -> Json {
        Json::Null
    }
    fn list(items: Vec<Json>) -> Json {
        Json::Array(items)
    }
    fn cell(column_type: ColumnType, item: &Item) -> Result<Json, String> {
        column_type.cell(item)?;
        Ok(match item {
            Item::Node(json, _) => (*json).clone(),
            Item::Boolean(b) => Json::Bool(*b),
            Item::Integer(i) => Json::from(*i),
            // A decimal the expression computed has the working scale of its arithmetic (3 / 2
            // is 1.50): it prints normalized. One read from the resource is a `Node` above and
            // keeps its digits (serde_json's arbitrary_precision).
            Item::Decimal(d) => {
                let text = d.normalize().to_string();
                serde_json::from_str(&text).unwrap_or(Json::String(text))
            }
            other => other
                .to_text()
                .map_or(Json::Null, |text| Json::String(text.into_owned())),
        })
    }
}

struct Runner<'v, 'a, F> {
    view: &'v View,
    resource: &'a Json,
    form: std::marker::PhantomData<F>,
}

impl<'v: 'a, 'a, F: CellForm> Runner<'v, 'a, F> {
    fn evaluate(
        &self,
        expression: &'a Expression,
        focus: &Item<'a>,
        row_index: usize,
    ) -> Result<Collection<'a>, RunError> {
        self.evaluate_on(expression, std::slice::from_ref(focus), row_index)
    }

    fn evaluate_on(
        &self,
        expression: &'a Expression,
        focus: &[Item<'a>],
        row_index: usize,
    ) -> Result<Collection<'a>, RunError> {
        let variables = ViewVariables {
            view: self.view,
            resource: self.resource,
            row_index,
        };
        expression
            .evaluate(focus, &variables)
            .map_err(|e| RunError {
                expression: expression.text().to_string(),
                message: e.0,
            })
    }

    fn null_row(&self) -> Vec<F::Cell> {
        vec![F::null(); self.view.columns.len()]
    }

    fn rows(
        &self,
        select: &'a Select,
        focus: &Item<'a>,
        row_index: usize,
    ) -> Result<Vec<Vec<F::Cell>>, RunError> {
        match &select.iteration {
            Iteration::None => self.rows_at(select, focus, row_index),
            Iteration::ForEach(path) | Iteration::ForEachOrNull(path) => {
                let items = self.evaluate(path, focus, row_index)?;
                if items.is_empty() && matches!(select.iteration, Iteration::ForEachOrNull(_)) {
                    // One row of nulls; the select's own columns still see `%rowIndex` (0).
                    let mut row = self.null_row();
                    for column in &select.columns {
                        row[column.index] = self.cell(column, &[], 0)?;
                    }
                    return Ok(vec![row]);
                }
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    out.extend(self.rows_at(select, item, i)?);
                }
                Ok(out)
            }
            Iteration::Repeat(paths) => {
                let mut items = Collection::new();
                self.repeat(paths, focus, row_index, &mut items)?;
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    out.extend(self.rows_at(select, item, i)?);
                }
                Ok(out)
            }
        }
    }

    /// The items `repeat` reaches from `focus`, depth first, in path order.
    fn repeat(
        &self,
        paths: &'a [Expression],
        focus: &Item<'a>,
        row_index: usize,
        out: &mut Collection<'a>,
    ) -> Result<(), RunError> {
        for path in paths {
            for item in self.evaluate(path, focus, row_index)? {
                out.push(item.clone());
                if out.len() > 1_000_000 {
                    return Err(RunError {
                        expression: path.text().to_string(),
                        message: "repeat reached a million items".into(),
                    });
                }
                self.repeat(paths, &item, row_index, out)?;
            }
        }
        Ok(())
    }

    fn rows_at(
        &self,
        select: &'a Select,
        focus: &Item<'a>,
        row_index: usize,
    ) -> Result<Vec<Vec<F::Cell>>, RunError> {
        let mut base = self.null_row();
        for column in &select.columns {
            base[column.index] = self.cell(column, std::slice::from_ref(focus), row_index)?;
        }
        let mut rows = vec![base];
        for nested in &select.selects {
            rows = product::<F>(rows, self.rows(nested, focus, row_index)?, &nested.covered);
            if rows.is_empty() {
                return Ok(rows);
            }
        }
        if let Some(first) = select.union_all.first() {
            let mut union = Vec::new();
            for branch in &select.union_all {
                union.extend(self.rows(branch, focus, row_index)?);
            }
            // Every branch fills the same positions.
            rows = product::<F>(rows, union, &first.covered);
        }
        Ok(rows)
    }

    fn cell(
        &self,
        column: &'a Column,
        focus: &[Item<'a>],
        row_index: usize,
    ) -> Result<F::Cell, RunError> {
        let values = self.evaluate_on(&column.path, focus, row_index)?;
        let error = |message: String| RunError {
            expression: column.path.text().to_string(),
            message,
        };
        if column.collection {
            return values
                .iter()
                .map(|v| F::cell(column.column_type, v))
                .collect::<Result<_, _>>()
                .map(F::list)
                .map_err(error);
        }
        match values.as_slice() {
            [] => Ok(F::null()),
            [value] => F::cell(column.column_type, value).map_err(error),
            many => Err(error(format!(
                "gave {} values for a single-valued column (set \"collection\": true to keep all)",
                many.len()
            ))),
        }
    }
}

/// Each left row combined with each right row, the right filling the `covered` positions.
fn product<F: CellForm>(
    left: Vec<Vec<F::Cell>>,
    right: Vec<Vec<F::Cell>>,
    covered: &[usize],
) -> Vec<Vec<F::Cell>> {
    if left.len() == 1 && right.len() == 1 {
        let (mut row, mut other) = (
            left.into_iter().next().unwrap_or_default(),
            right.into_iter().next().unwrap_or_default(),
        );
        for &i in covered {
            row[i] = std::mem::replace(&mut other[i], F::null());
        }
        return vec![row];
    }
    let mut out = Vec::with_capacity(left.len() * right.len());
    for l in &left {
        for r in &right {
            let mut row = l.clone();
            for &i in covered {
                row[i] = r[i].clone();
            }
            out.push(row);
        }
    }
    out
}

/// The rows of a resource of the view's type, with cells of form `F`.
pub(super) fn rows<F: CellForm>(
    view: &View,
    resource: &Json,
) -> Result<Vec<Vec<F::Cell>>, RunError> {
    let runner = Runner::<F> {
        view,
        resource,
        form: std::marker::PhantomData,
    };
    let root = Item::Node(resource, None);
    for filter in &view.filters {
        match runner.evaluate(filter, &root, 0)?.as_slice() {
            [] | [Item::Boolean(false)] => return Ok(Vec::new()),
            [Item::Boolean(true)] => {}
            [Item::Node(Json::Bool(keep), _)] => {
                if !keep {
                    return Ok(Vec::new());
                }
            }
            _ => {
                return Err(RunError {
                    expression: filter.text().to_string(),
                    message: "a where path must give true, false or nothing".into(),
                });
            }
        }
    }
    let mut rows = vec![runner.null_row()];
    for select in &view.selects {
        rows = product::<F>(rows, runner.rows(select, &root, 0)?, &select.covered);
        if rows.is_empty() {
            break;
        }
    }
    Ok(rows)
}
