//! FHIRPath: the path language of FHIR, over a resource's JSON.
//!
//! One engine serves SQL-on-FHIR views (`views`) and profile invariants (`validate`). It knows
//! nothing of Delta or Arrow. `parse.rs` turns text into a tree (unknown functions are errors there),
//! `eval.rs` walks the tree over borrowed JSON, `functions.rs` is the function table, `value.rs` the
//! items and their comparisons, `temporal.rs` partial dates and times.
//!
//! ```
//! use vitalake::fhirpath::Expression;
//! let patient: serde_json::Value = serde_json::json!({
//!     "resourceType": "Patient", "id": "p1",
//!     "name": [{"use": "official", "family": "Silva", "given": ["Ana", "Maria"]}]
//! });
//! let given = Expression::parse("name.where(use = 'official').given.join(' ')").unwrap();
//! let result = given.evaluate_resource(&patient, &()).unwrap();
//! assert_eq!(result[0].to_text().unwrap(), "Ana Maria");
//! ```

mod eval;
mod functions;
mod parse;
mod temporal;
mod value;

pub use eval::{EvalError, Variables, children, member};
pub use functions::reference_parts;
pub use parse::ParseError;
pub use temporal::{DateTimeValue, Precision, TimeValue};
pub use value::{Collection, Item, PRIMITIVE_TYPES, choice_type, entry, field, resource_type};

use serde_json::Value as Json;

/// A parsed FHIRPath expression, kept with its text for error messages.
#[derive(Debug, Clone)]
pub struct Expression {
    text: String,
    tree: parse::Expr,
}

impl Expression {
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        Ok(Expression {
            text: text.to_string(),
            tree: parse::parse(text)?,
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The `%variables` the expression reads.
    pub fn variables(&self) -> Vec<&str> {
        let mut out = Vec::new();
        self.tree.variables(&mut out);
        out
    }

    /// Evaluates with `focus` as the input collection (`$this`). The result borrows from the
    /// resource and from the expression (its string literals), so neither is copied.
    pub fn evaluate<'a>(
        &'a self,
        focus: &[Item<'a>],
        variables: &dyn Variables<'a>,
    ) -> Result<Collection<'a>, EvalError> {
        let frame = eval::Frame {
            this: focus,
            index: None,
            total: None,
        };
        eval::eval(&self.tree, frame, &eval::Env { variables })
    }

    /// Evaluates on a whole resource.
    pub fn evaluate_resource<'a>(
        &'a self,
        resource: &'a Json,
        variables: &dyn Variables<'a>,
    ) -> Result<Collection<'a>, EvalError> {
        self.evaluate(&[Item::Node(resource, None)], variables)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval_on(resource: &Json, text: &str) -> Result<Vec<String>, EvalError> {
        let expression = Expression::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let result = expression.evaluate_resource(resource, &())?;
        Ok(result
            .iter()
            .map(|i| {
                i.to_text()
                    .map(|t| t.into_owned())
                    .unwrap_or_else(|| "<node>".into())
            })
            .collect())
    }

    fn bp() -> Json {
        json!({
            "resourceType": "Observation", "id": "bp1", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
            "effectiveDateTime": "2026-11-02T08:30:00+01:00",
            "component": [
                {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}, "valueQuantity": {"value": 142, "unit": "mmHg", "code": "mm[Hg]"}},
                {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]}, "valueQuantity": {"value": 91.5, "unit": "mmHg", "code": "mm[Hg]"}}
            ],
            "subject": {"reference": "Patient/p1"}
        })
    }

    #[test]
    fn paths_filters_and_choice_types() {
        let obs = bp();
        assert_eq!(eval_on(&obs, "Observation.component.where(code.coding.code = '8462-4').value.ofType(Quantity).value").unwrap(), ["91.5"]);
        assert_eq!(
            eval_on(&obs, "component[0].valueQuantity.value + 1").unwrap(),
            ["143"]
        );
        assert_eq!(
            eval_on(&obs, "effective.ofType(dateTime) > @2026-11-02T07:00:00Z").unwrap(),
            ["true"]
        );
        assert_eq!(
            eval_on(&obs, "effective.ofType(Period)").unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            eval_on(&obs, "subject.getReferenceKey(Patient)").unwrap(),
            ["p1"]
        );
        assert_eq!(
            eval_on(
                &obs,
                "component.count() = 2 and status in ('final' | 'amended')"
            )
            .unwrap(),
            ["true"]
        );
        assert_eq!(
            eval_on(
                &obs,
                "component.value.ofType(Quantity).value.select($this * 2)"
            )
            .unwrap(),
            ["284", "183.0"]
        );
    }

    #[test]
    fn three_valued_logic() {
        let obs = bp();
        assert_eq!(eval_on(&obs, "missing = 1").unwrap(), Vec::<String>::new());
        assert_eq!(eval_on(&obs, "missing.exists() or true").unwrap(), ["true"]);
        assert_eq!(eval_on(&obs, "(missing = 1) and false").unwrap(), ["false"]);
        assert_eq!(
            eval_on(&obs, "(missing = 1) implies false").unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            eval_on(&obs, "false implies (missing = 1)").unwrap(),
            ["true"]
        );
    }

    #[test]
    fn many_items_where_one_is_required_is_an_error() {
        let obs = bp();
        let error = eval_on(&obs, "component.valueQuantity.value > 1").unwrap_err();
        assert!(error.0.contains("single item"), "{error}");
    }

    #[test]
    fn undefined_variable_is_an_error() {
        assert!(eval_on(&bp(), "%nope").is_err());
    }
}
