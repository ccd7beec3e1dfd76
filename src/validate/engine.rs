//! Walking a resource along a profile's element tree.
//!
//! At each element: cardinality of its children, allowed types of choice elements, fixed and pattern
//! values, bindings against shipped ValueSets, every invariant with the FHIRPath engine, and slices
//! told apart by their value or pattern discriminators (a BP component by its LOINC code). Locations
//! are FHIRPaths into the instance (`Observation.component[1].valueQuantity.code`).

use serde_json::{Map, Value as Json};
use smallvec::smallvec;

use super::profiles::{Element, Profile, Strength};
use crate::fhirpath::{Collection, Item, Variables};
use crate::issue::{Issue, Severity};

/// `%resource`, `%rootResource`, `%context` and `%ucum` for invariants.
struct InvariantVariables<'a> {
    resource: &'a Json,
}

impl<'a> Variables<'a> for InvariantVariables<'a> {
    fn get(&self, name: &str) -> Option<Collection<'a>> {
        match name {
            "resource" | "rootResource" | "context" => {
                Some(smallvec![Item::Node(self.resource, None)])
            }
            "ucum" => Some(smallvec![Item::string("http://unitsofmeasure.org")]),
            "sct" => Some(smallvec![Item::string("http://snomed.info/sct")]),
            "loinc" => Some(smallvec![Item::string("http://loinc.org")]),
            _ => None,
        }
    }
}

pub struct Walker<'p, 'a> {
    profile: &'p Profile,
    resource: &'a Json,
    pub issues: Vec<Issue>,
}

/// The values found for an element: most elements hold one or two, kept without an allocation.
type FoundValues<'a> = smallvec::SmallVec<[Found<'a>; 2]>;

/// One value found for an element, with its JSON key and choice type.
struct Found<'a> {
    key: &'a str,
    value: &'a Json,
    type_name: Option<&'a str>,
    index: Option<usize>,
}

fn issue(severity: Severity, location: String, rule: &str, message: String) -> Issue {
    Issue {
        severity,
        location,
        rule: rule.to_string(),
        message,
    }
}

/// The FHIR type a choice suffix names (`Quantity`, `dateTime`); an unknown type by its own name,
/// so that it is reported as not allowed.
fn suffix_type(suffix: &str) -> Option<&str> {
    if !suffix.starts_with(|c: char| c.is_ascii_uppercase()) {
        return None;
    }
    Some(crate::fhirpath::choice_type(suffix).unwrap_or(suffix))
}

/// Whether `value` holds everything `pattern` says (FHIR pattern[x] semantics).
pub fn matches_pattern(value: &Json, pattern: &Json) -> bool {
    match (value, pattern) {
        (Json::Object(v), Json::Object(p)) => p
            .iter()
            .all(|(k, pv)| v.get(k).is_some_and(|vv| matches_pattern(vv, pv))),
        (Json::Array(v), Json::Array(p)) => p
            .iter()
            .all(|pv| v.iter().any(|vv| matches_pattern(vv, pv))),
        (Json::Array(v), p) => v.iter().any(|vv| matches_pattern(vv, p)),
        (Json::Number(a), Json::Number(b)) => {
            a.to_string().parse::<f64>().ok() == b.to_string().parse::<f64>().ok()
        }
        (v, p) => v == p,
    }
}

/// Whether a node at the dotted `steps` below `value` (arrays fan out; `$this` is `value`)
/// satisfies `test`. Walked in place: slices are told apart at every value of a sliced element.
fn any_at_path(
    value: &Json,
    mut steps: std::str::Split<'_, char>,
    test: &dyn Fn(&Json) -> bool,
) -> bool {
    match steps.next() {
        None | Some("$this") => test(value),
        Some(step) => match value
            .as_object()
            .and_then(|o| crate::fhirpath::field(o, step))
        {
            Some(Json::Array(items)) => items
                .iter()
                .any(|item| any_at_path(item, steps.clone(), test)),
            Some(child) => any_at_path(child, steps, test),
            None => false,
        },
    }
}

impl<'p, 'a> Walker<'p, 'a> {
    pub fn new(profile: &'p Profile, resource: &'a Json) -> Self {
        Walker {
            profile,
            resource,
            issues: Vec::new(),
        }
    }

    pub fn run(&mut self) {
        let resource_type = self.profile.resource_type.clone();
        self.check_value(0, self.resource, None, &Loc::Root(&resource_type));
    }

    fn element(&self, index: usize) -> &'p Element {
        &self.profile.elements[index]
    }

    fn check_value(
        &mut self,
        index: usize,
        value: &'a Json,
        type_name: Option<&'a str>,
        location: &Loc<'_>,
    ) {
        let element = self.element(index);
        let primitive = type_name.or(element.primitive);
        if let Some(primitive) = primitive
            && let Some(problem) = primitive_problem(primitive, value)
        {
            self.issues.push(issue(
                Severity::Error,
                location.to_string(),
                "datatype",
                problem,
            ));
        }
        if let Some((fixed, expected)) = &element.value_constraint {
            if *fixed
                && value != expected
                && !(value.is_number() && matches_pattern(value, expected))
            {
                self.issues.push(issue(
                    Severity::Error,
                    location.to_string(),
                    "fixed",
                    format!("must be exactly {expected}, found {value}"),
                ));
            } else if !fixed && !matches_pattern(value, expected) {
                self.issues.push(issue(
                    Severity::Error,
                    location.to_string(),
                    "pattern",
                    format!("must match {expected}"),
                ));
            }
        }
        if element.binding.is_some() {
            self.check_binding(element, value, location);
        }
        for invariant in &element.invariants {
            self.check_invariant(invariant, value, type_name, location);
        }
        if let Json::Object(object) = value
            && !element.children.is_empty()
        {
            self.check_children(index, object, location);
        }
    }

    fn check_invariant(
        &mut self,
        invariant: &super::profiles::Invariant,
        value: &'a Json,
        type_name: Option<&'a str>,
        location: &Loc<'_>,
    ) {
        let not_evaluated = |reason: String| {
            issue(
                Severity::Warning,
                location.to_string(),
                &invariant.key,
                format!(
                    "invariant {} could not be evaluated ({reason}): {}",
                    invariant.key, invariant.text
                ),
            )
        };
        let failed = |location: &Loc<'_>| {
            let severity = if invariant.error {
                Severity::Error
            } else {
                Severity::Warning
            };
            issue(
                severity,
                location.to_string(),
                &invariant.key,
                invariant.human.clone(),
            )
        };
        if let Some(holds) = invariant.native.and_then(|native| native(value, type_name)) {
            if !holds {
                self.issues.push(failed(location));
            }
            return;
        }
        let expression = match &invariant.expression {
            Ok(expression) => expression,
            Err(error) => {
                self.issues.push(not_evaluated(error.to_string()));
                return;
            }
        };
        let variables = InvariantVariables {
            resource: self.resource,
        };
        match expression.evaluate(&[Item::Node(value, type_name)], &variables) {
            Ok(result) => {
                // Only `false` fails: an empty result means the invariant does not apply here.
                if matches!(result.as_slice(), [item] if matches!(item.primitive(), Item::Boolean(false)))
                {
                    self.issues.push(failed(location));
                }
            }
            Err(error) => self.issues.push(not_evaluated(error.0)),
        }
    }

    fn check_binding(&mut self, element: &Element, value: &Json, location: &Loc<'_>) {
        let Some(binding) = &element.binding else {
            return;
        };
        let Some(expansion) = &binding.expansion else {
            return;
        };
        let (mut coded, mut in_value_set) = (false, false);
        each_code(value, |system, code| {
            coded = true;
            in_value_set = in_value_set || expansion.contains(system, code);
        });
        if !coded || in_value_set {
            return;
        }
        let mut shown = Vec::new();
        each_code(value, |system, code| {
            shown.push(format!(
                "{}{code}",
                system.map(|s| format!("{s}|")).unwrap_or_default()
            ))
        });
        let message = format!(
            "{} is not in the {:?} ValueSet {}",
            shown.join(", "),
            binding.strength,
            binding.value_set
        );
        match binding.strength {
            Strength::Required if expansion.complete => self.issues.push(issue(
                Severity::Error,
                location.to_string(),
                "binding",
                message,
            )),
            Strength::Extensible | Strength::Preferred => self.issues.push(issue(
                Severity::Warning,
                location.to_string(),
                "binding",
                message,
            )),
            _ => {}
        }
    }

    /// The values in `object` for a child element (choice elements by any allowed type).
    fn find(
        &mut self,
        element: &Element,
        object: &'a Map<String, Json>,
        location: &Loc<'_>,
    ) -> FoundValues<'a> {
        let mut found = FoundValues::new();
        let mut push = |key: &'a str, json: &'a Json, type_name: Option<&'a str>| match json {
            Json::Array(items) => found.extend(items.iter().enumerate().map(|(i, value)| Found {
                key,
                value,
                type_name,
                index: Some(i),
            })),
            value => found.push(Found {
                key,
                value,
                type_name,
                index: None,
            }),
        };
        match element.name.strip_suffix("[x]") {
            None => {
                if let Some((key, value)) = crate::fhirpath::entry(object, &element.name) {
                    push(key, value, None);
                }
            }
            Some(prefix) => {
                for (key, value) in object {
                    let Some(suffix) = key.strip_prefix(prefix) else {
                        continue;
                    };
                    let Some(type_name) = suffix_type(suffix) else {
                        continue;
                    };
                    if !element.types.is_empty() && !element.types.iter().any(|t| t == type_name) {
                        self.issues.push(issue(
                            Severity::Error,
                            Loc::Child(location, key, None).to_string(),
                            "type",
                            format!(
                                "{type_name} is not allowed here (allowed: {})",
                                element.types.join(", ")
                            ),
                        ));
                        continue;
                    }
                    push(key, value, Some(type_name));
                }
            }
        }
        found
    }

    fn check_children(&mut self, index: usize, object: &'a Map<String, Json>, location: &Loc<'_>) {
        let keys = KeyFilter::of(object);
        for &child in &self.element(index).children {
            let element = self.element(child);
            let found = if keys.may_hold(&element.name) {
                self.find(element, object, location)
            } else {
                FoundValues::new()
            };
            self.check_cardinality(
                element,
                found.len(),
                &Loc::Child(location, &element.name, None),
                None,
            );
            for value in &found {
                let at = place(location, value);
                self.check_value(child, value.value, value.type_name, &at);
            }
            if !element.slices.is_empty() {
                self.check_slices(child, &found, location);
            }
        }
    }

    /// Cardinality of `element` given `count` values; `slice` names the slice they were counted
    /// for, formatted only into an issue.
    fn check_cardinality(
        &mut self,
        element: &Element,
        count: usize,
        location: &Loc<'_>,
        slice: Option<&str>,
    ) {
        let count = count as u64;
        let what = || {
            slice
                .map(|name| format!("slice '{name}': "))
                .unwrap_or_default()
        };
        if count < element.min {
            let message = format!("{}at least {} required, found {count}", what(), element.min);
            self.issues.push(issue(
                Severity::Error,
                location.to_string(),
                "cardinality",
                message,
            ));
        }
        if let Some(max) = element.max
            && count > max
        {
            let message = format!("{}at most {max} allowed, found {count}", what());
            self.issues.push(issue(
                Severity::Error,
                location.to_string(),
                "cardinality",
                message,
            ));
        }
    }

    fn check_slices(&mut self, sliced: usize, found: &[Found<'a>], location: &Loc<'_>) {
        let element = self.element(sliced);
        let mut counts = vec![0usize; element.slices.len()];
        for value in found {
            let slice = element
                .slices
                .iter()
                .position(|&s| self.in_slice(s, value.value));
            match slice {
                Some(position) => {
                    counts[position] += 1;
                    let at = place(location, value);
                    self.check_value(element.slices[position], value.value, value.type_name, &at);
                }
                None if element.closed => self.issues.push(issue(
                    Severity::Error,
                    place(location, value).to_string(),
                    "slice",
                    "matches no slice of a closed slicing".into(),
                )),
                None => {}
            }
        }
        for (position, &slice) in element.slices.iter().enumerate() {
            let slice_element = self.element(slice);
            self.check_cardinality(
                slice_element,
                counts[position],
                &Loc::Child(location, &element.name, None),
                Some(slice_element.slice_name.as_deref().unwrap_or("?")),
            );
        }
    }

    /// Whether `value` belongs to `slice`: at every discriminator path the slice fixes a value or
    /// pattern (worked out when the profile was loaded), the value has it.
    fn in_slice(&self, slice: usize, value: &Json) -> bool {
        let constraints = &self.element(slice).slice_values;
        !constraints.is_empty()
            && constraints.iter().all(|(path, expected)| {
                any_at_path(value, path.split('.'), &|node| {
                    expected.iter().any(|e| matches_pattern(node, e))
                })
            })
    }
}

/// Which keys an object may hold, as one bit per key's length and first and last byte: a profile
/// element names thirty-odd children, an instance holds a handful, and looking up each absent one
/// (hashing it, or comparing it with every key) was a quarter of validation's time.
struct KeyFilter(u64);

impl KeyFilter {
    fn of(object: &Map<String, Json>) -> Self {
        KeyFilter(object.keys().fold(0, |bits, key| bits | Self::bit(key)))
    }

    fn bit(key: &str) -> u64 {
        let bytes = key.as_bytes();
        let (first, last) = (bytes.first().copied(), bytes.last().copied());
        let mixed = bytes.len() as u64 * 31 + u64::from(first.unwrap_or(0)) * 7;
        1 << ((mixed + u64::from(last.unwrap_or(0))) % 64)
    }

    /// Whether the object may hold the element `name`: a choice element (`value[x]`) may always.
    fn may_hold(&self, name: &str) -> bool {
        name.ends_with("[x]") || self.0 & Self::bit(name) != 0
    }
}

/// Calls `visit` with the `(system, code)` of each code `value` carries for a binding: a `code`
/// string, a `Coding`, or each coding of a `CodeableConcept`. Visited in place: bindings are
/// checked on every coded element, and nearly every code is in its ValueSet.
fn each_code<'v>(value: &'v Json, mut visit: impl FnMut(Option<&'v str>, &'v str)) {
    let mut coding = |object: &'v Map<String, Json>| {
        let text = |key| crate::fhirpath::field(object, key).and_then(Json::as_str);
        if let Some(code) = text("code") {
            visit(text("system"), code);
        }
    };
    match value {
        Json::String(code) => visit(None, code),
        Json::Object(object) => match crate::fhirpath::field(object, "coding") {
            Some(Json::Array(codings)) => codings
                .iter()
                .filter_map(Json::as_object)
                .for_each(&mut coding),
            Some(Json::Object(single)) => coding(single),
            Some(_) => {}
            None => coding(object),
        },
        _ => {}
    }
}

/// Why `value` is not a valid FHIR `primitive` (the JSON types are checked by the structural model;
/// formats are checked here).
fn primitive_problem(primitive: &str, value: &Json) -> Option<String> {
    use crate::fhirpath::{DateTimeValue, Precision, TimeValue};
    let text = value.as_str();
    let valid = match primitive {
        "boolean" => value.is_boolean(),
        "integer" | "integer64" => value.as_i64().is_some(),
        "positiveInt" => value.as_i64().is_some_and(|n| n > 0),
        "unsignedInt" => value.as_i64().is_some_and(|n| n >= 0),
        "decimal" => value.is_number(),
        "date" => text
            .and_then(DateTimeValue::parse)
            .is_some_and(|d| !d.has_time()),
        "dateTime" => text
            .and_then(DateTimeValue::parse)
            .is_some_and(|d| !d.has_time() || d.offset_minutes.is_some()),
        "instant" => text
            .and_then(DateTimeValue::parse)
            .is_some_and(|d| d.precision == Precision::Second && d.offset_minutes.is_some()),
        "time" => text
            .and_then(TimeValue::parse)
            .is_some_and(|t| t.precision == Precision::Second),
        "code" => text.is_some_and(|t| !t.is_empty() && t.trim() == t && !t.contains("  ")),
        "id" => text.is_some_and(|t| {
            (1..=64).contains(&t.len())
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        }),
        _ => return None,
    };
    (!valid).then(|| format!("{value} is not a valid FHIR {primitive}"))
}

/// Where a value sits in the instance, rendered only when an issue needs it (`Observation.component[1].code`).
#[derive(Clone, Copy)]
enum Loc<'x> {
    Root(&'x str),
    Child(&'x Loc<'x>, &'x str, Option<usize>),
}

impl std::fmt::Display for Loc<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Loc::Root(name) => f.write_str(name),
            Loc::Child(parent, key, None) => write!(f, "{parent}.{key}"),
            Loc::Child(parent, key, Some(i)) => write!(f, "{parent}.{key}[{i}]"),
        }
    }
}

fn place<'x>(location: &'x Loc<'x>, found: &'x Found) -> Loc<'x> {
    Loc::Child(location, found.key, found.index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_filter_holds_every_key_of_an_object_and_rejects_most_others() {
        let object = json!({"resourceType": "Observation", "id": "x", "status": "final",
            "code": {}, "subject": {}, "effectiveDateTime": "2024", "component": [], "_status": {}});
        let object = object.as_object().unwrap();
        let keys = KeyFilter::of(object);
        assert!(object.keys().all(|key| keys.may_hold(key)));
        assert!(
            keys.may_hold("effective[x]"),
            "a choice element is always looked for"
        );
        let absent = [
            "identifier",
            "basedOn",
            "partOf",
            "category",
            "focus",
            "encounter",
            "issued",
            "performer",
            "dataAbsentReason",
            "interpretation",
            "note",
            "bodySite",
            "method",
            "specimen",
            "device",
            "referenceRange",
            "hasMember",
            "derivedFrom",
            "meta",
            "text",
        ];
        let looked_up = absent.iter().filter(|name| keys.may_hold(name)).count();
        assert!(
            looked_up <= 4,
            "{looked_up} of {} absent names pass",
            absent.len()
        );
    }

    #[test]
    fn patterns_match_partially() {
        let code = json!({"coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "BP"}], "text": "BP"});
        assert!(matches_pattern(
            &code,
            &json!({"coding": [{"system": "http://loinc.org", "code": "85354-9"}]})
        ));
        assert!(!matches_pattern(
            &code,
            &json!({"coding": [{"system": "http://loinc.org", "code": "8480-6"}]})
        ));
        assert!(matches_pattern(&json!(120.0), &json!(120)));
    }
}
