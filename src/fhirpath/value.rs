//! The items a FHIRPath expression produces.
//!
//! An item is either a node of the resource's JSON, borrowed (no copy of the resource is ever made),
//! or a value the expression computed. A node becomes a typed value only when an operator needs one:
//! a JSON string is read as a date when it is compared with a date, a number as an integer or an
//! exact decimal.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde_json::Value as Json;

use super::temporal::{DateTimeValue, TimeValue};

/// Objects up to this many keys are searched by a scan: most FHIR elements have a handful, and a
/// reading or a dispense has 9 to 11 at its root, where a scan also beat hashing (an A/B of ingest
/// with validation, BENCHMARKS.md issue 25).
pub(super) const SCANNED_KEYS: usize = 12;

/// The entry of `key` in `map`. `fhirbolt` turns on `serde_json`'s `preserve_order`, so every map is
/// an `IndexMap` hashing with SipHash; comparing a few short keys is cheaper than hashing one, and
/// the validator and the views look up keys more than they do anything else.
pub fn entry<'a>(
    map: &'a serde_json::Map<String, Json>,
    key: &str,
) -> Option<(&'a String, &'a Json)> {
    if map.len() <= SCANNED_KEYS {
        map.iter().find(|(k, _)| k.as_str() == key)
    } else {
        map.get_key_value(key)
    }
}

/// The value of `key` in `map` (see [`entry`]).
pub fn field<'a>(map: &'a serde_json::Map<String, Json>, key: &str) -> Option<&'a Json> {
    entry(map, key).map(|(_, value)| value)
}

/// The `resourceType` of a JSON object, if it is a resource.
pub fn resource_type(json: &Json) -> Option<&str> {
    field(json.as_object()?, "resourceType")?.as_str()
}

/// One item of a collection.
#[derive(Debug, Clone)]
pub enum Item<'a> {
    /// A node of the resource. The type is known for resources (`resourceType`) and choice elements
    /// (`valueQuantity` is a `Quantity`); otherwise it is read from the JSON.
    Node(&'a Json, Option<&'a str>),
    Boolean(bool),
    Integer(i64),
    Decimal(Decimal),
    String(Cow<'a, str>),
    Date(DateTimeValue),
    DateTime(DateTimeValue),
    Time(TimeValue),
    Quantity(Decimal, Cow<'a, str>),
}

/// FHIRPath works on ordered collections; most hold zero or one item, kept inline: every step of
/// every expression makes one, and the views and invariants evaluate dozens per resource.
pub type Collection<'a> = smallvec::SmallVec<[Item<'a>; 1]>;

/// FHIR primitive types, spelled as in the specification: a choice suffix (`valueDateTime`) names one
/// of these with its first letter in lower case.
pub const PRIMITIVE_TYPES: [&str; 20] = [
    "base64Binary",
    "boolean",
    "canonical",
    "code",
    "date",
    "dateTime",
    "decimal",
    "id",
    "instant",
    "integer",
    "integer64",
    "markdown",
    "oid",
    "positiveInt",
    "string",
    "time",
    "unsignedInt",
    "uri",
    "url",
    "uuid",
];

/// FHIR complex data types that can appear as a choice suffix.
const COMPLEX_TYPES: [&str; 40] = [
    "Address",
    "Age",
    "Annotation",
    "Attachment",
    "CodeableConcept",
    "CodeableReference",
    "Coding",
    "ContactDetail",
    "ContactPoint",
    "Contributor",
    "Count",
    "DataRequirement",
    "Distance",
    "Dosage",
    "Duration",
    "Expression",
    "HumanName",
    "Identifier",
    "Meta",
    "Money",
    "ParameterDefinition",
    "Period",
    "Quantity",
    "Range",
    "Ratio",
    "RatioRange",
    "Reference",
    "RelatedArtifact",
    "SampledData",
    "Signature",
    "Timing",
    "TriggerDefinition",
    "UsageContext",
    "Availability",
    "ExtendedContactDetail",
    "VirtualServiceDetail",
    "MonetaryComponent",
    "Extension",
    "Narrative",
    "Resource",
];

/// The FHIR type a choice-element suffix names (`DateTime` → `dateTime`), if it names one.
pub fn choice_type(suffix: &str) -> Option<&str> {
    let mut chars = suffix.chars();
    let first = chars.next()?;
    if !first.is_ascii_uppercase() {
        return None;
    }
    if let Some(primitive) = PRIMITIVE_TYPES.iter().find(|p| {
        p.len() == suffix.len()
            && p[..1].eq_ignore_ascii_case(&suffix[..1])
            && p[1..] == suffix[1..]
    }) {
        return Some(primitive);
    }
    COMPLEX_TYPES.contains(&suffix).then_some(suffix)
}

/// Reads a JSON number exactly: an integer when it has no fraction, otherwise a decimal.
pub fn number(n: &serde_json::Number) -> Item<'static> {
    if let Some(i) = n.as_i64() {
        return Item::Integer(i);
    }
    let text = n.to_string();
    match Decimal::from_str(&text).or_else(|_| Decimal::from_scientific(&text)) {
        Ok(d) => Item::Decimal(d),
        Err(_) => Item::String(Cow::Owned(text)),
    }
}

impl<'a> Item<'a> {
    pub fn string(s: impl Into<Cow<'a, str>>) -> Self {
        Item::String(s.into())
    }

    /// The node's JSON, if the item is a node.
    pub fn json(&self) -> Option<&'a Json> {
        match self {
            Item::Node(json, _) => Some(json),
            _ => None,
        }
    }

    /// The item as a typed value: nodes holding a JSON primitive are converted (a string typed as a
    /// date by its choice suffix becomes a date); complex nodes stay nodes.
    pub fn primitive(&self) -> Item<'a> {
        let Item::Node(json, type_name) = self else {
            return self.clone();
        };
        match json {
            Json::String(s) => {
                let typed = match *type_name {
                    Some("date") => DateTimeValue::parse(s).map(Item::Date),
                    Some("dateTime" | "instant") => DateTimeValue::parse(s).map(Item::DateTime),
                    Some("time") => TimeValue::parse(s).map(Item::Time),
                    _ => None,
                };
                typed.unwrap_or(Item::String(Cow::Borrowed(s)))
            }
            Json::Number(n) => number(n),
            Json::Bool(b) => Item::Boolean(*b),
            _ => self.clone(),
        }
    }

    /// The item's type name: the FHIR type where known, else the System type of a computed value.
    pub fn type_name(&self) -> Option<&'a str> {
        match self {
            Item::Node(_, Some(t)) => Some(t),
            Item::Node(json, None) => match json {
                Json::Object(_) => resource_type(json),
                Json::String(_) => Some("string"),
                Json::Bool(_) => Some("boolean"),
                Json::Number(n) if n.as_i64().is_some() => Some("integer"),
                Json::Number(_) => Some("decimal"),
                _ => None,
            },
            Item::Boolean(_) => Some("Boolean"),
            Item::Integer(_) => Some("Integer"),
            Item::Decimal(_) => Some("Decimal"),
            Item::String(_) => Some("String"),
            Item::Date(_) => Some("Date"),
            Item::DateTime(_) => Some("DateTime"),
            Item::Time(_) => Some("Time"),
            Item::Quantity(..) => Some("Quantity"),
        }
    }

    /// Whether the item is of `wanted` type (`ofType`, `is`). FHIR and System names match either way
    /// (`string` and `String`); a resource matches its own type and `Resource`/`DomainResource`.
    pub fn is_type(&self, wanted: &str) -> bool {
        let Some(actual) = self.type_name() else {
            return false;
        };
        if actual.eq_ignore_ascii_case(wanted) {
            return true;
        }
        let is_resource =
            matches!(self, Item::Node(Json::Object(map), _) if map.contains_key("resourceType"));
        is_resource && (wanted == "Resource" || wanted == "DomainResource")
    }

    /// The string form used by `toString()`, `join()` and string columns.
    pub fn to_text(&self) -> Option<Cow<'a, str>> {
        Some(match self.primitive() {
            Item::String(s) => s,
            Item::Boolean(b) => Cow::Borrowed(if b { "true" } else { "false" }),
            Item::Integer(i) => Cow::Owned(i.to_string()),
            Item::Decimal(d) => Cow::Owned(d.to_string()),
            Item::Date(d) | Item::DateTime(d) => Cow::Owned(d.to_string()),
            Item::Time(t) => Cow::Owned(t.to_string()),
            Item::Quantity(v, unit) => Cow::Owned(format!("{v} '{unit}'")),
            Item::Node(..) => return None,
        })
    }

    /// A Quantity's value and unit, whether computed or a `Quantity` node.
    fn quantity(&self) -> Option<(Decimal, Cow<'a, str>)> {
        match self {
            Item::Quantity(v, u) => Some((*v, u.clone())),
            Item::Node(Json::Object(map), _) => {
                let value = match number(map.get("value")?.as_number()?) {
                    Item::Integer(i) => Decimal::from(i),
                    Item::Decimal(d) => d,
                    _ => return None,
                };
                let unit = map
                    .get("code")
                    .or_else(|| map.get("unit"))
                    .and_then(Json::as_str)
                    .unwrap_or("");
                Some((value, Cow::Borrowed(unit)))
            }
            _ => None,
        }
    }
}

fn decimal_of(item: &Item) -> Option<Decimal> {
    match item {
        Item::Integer(i) => Some(Decimal::from(*i)),
        Item::Decimal(d) => Some(*d),
        _ => None,
    }
}

/// A value that is a date or date-time, reading a plain string as one when it parses.
fn temporal_of(item: &Item) -> Option<DateTimeValue> {
    match item {
        Item::Date(d) | Item::DateTime(d) => Some(*d),
        Item::String(s) => DateTimeValue::parse(s),
        _ => None,
    }
}

fn time_of(item: &Item) -> Option<TimeValue> {
    match item {
        Item::Time(t) => Some(*t),
        Item::String(s) => TimeValue::parse(s),
        _ => None,
    }
}

/// FHIRPath `=` on two items: `None` when the answer is unknown (dates of different precision).
pub fn equals(a: &Item, b: &Item) -> Option<bool> {
    let (a, b) = (a.primitive(), b.primitive());
    match (&a, &b) {
        (Item::Node(x, _), Item::Node(y, _)) => Some(x == y),
        (Item::Quantity(..), _) | (_, Item::Quantity(..)) => {
            let ((va, ua), (vb, ub)) = (a.quantity()?, b.quantity()?);
            Some(va == vb && ua == ub)
        }
        (Item::Boolean(x), Item::Boolean(y)) => Some(x == y),
        (Item::String(x), Item::String(y)) => Some(x == y),
        _ => match compare(&a, &b) {
            Some(ordering) => ordering.map(|o| o == Ordering::Equal),
            None => Some(false),
        },
    }
}

/// FHIRPath ordering of two items. The outer `None` means the types cannot be compared; the inner
/// `None` that they can but the answer is unknown (different date precisions).
pub fn compare(a: &Item, b: &Item) -> Option<Option<Ordering>> {
    let (a, b) = (a.primitive(), b.primitive());
    if let (Some(x), Some(y)) = (decimal_of(&a), decimal_of(&b)) {
        return Some(Some(x.cmp(&y)));
    }
    match (&a, &b) {
        (Item::String(x), Item::String(y)) => Some(Some(x.cmp(y))),
        (Item::Time(_), _) | (_, Item::Time(_)) => Some(time_of(&a)?.compare(&time_of(&b)?)),
        (Item::Date(_) | Item::DateTime(_), _) | (_, Item::Date(_) | Item::DateTime(_)) => {
            Some(temporal_of(&a)?.compare(&temporal_of(&b)?))
        }
        (Item::Quantity(..), _) | (_, Item::Quantity(..)) => {
            let ((va, ua), (vb, ub)) = (a.quantity()?, b.quantity()?);
            (ua == ub).then_some(Some(va.cmp(&vb)))
        }
        _ => None,
    }
}

/// FHIRPath `~`: like `=`, but strings ignore case and surrounding whitespace, and decimals compare
/// at the lesser precision.
pub fn equivalent(a: &Item, b: &Item) -> bool {
    let (a, b) = (a.primitive(), b.primitive());
    match (&a, &b) {
        (Item::String(x), Item::String(y)) => {
            let normal = |s: &str| {
                s.split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .to_lowercase()
            };
            normal(x) == normal(y)
        }
        (Item::Decimal(_) | Item::Integer(_), Item::Decimal(_) | Item::Integer(_)) => {
            let (x, y) = (
                decimal_of(&a).unwrap_or_default(),
                decimal_of(&b).unwrap_or_default(),
            );
            let scale = x.scale().min(y.scale());
            x.round_dp(scale) == y.round_dp(scale)
        }
        _ => equals(&a, &b).unwrap_or(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_suffixes() {
        assert_eq!(choice_type("DateTime"), Some("dateTime"));
        assert_eq!(choice_type("Quantity"), Some("Quantity"));
        assert_eq!(choice_type("Base64Binary"), Some("base64Binary"));
        assert_eq!(choice_type("Set"), None);
        assert_eq!(choice_type("string"), None);
    }

    #[test]
    fn numbers_stay_exact() {
        let json: Json = serde_json::from_str("[1, 1.10, 0.1]").unwrap();
        let items: Vec<_> = json
            .as_array()
            .unwrap()
            .iter()
            .map(|n| number(n.as_number().unwrap()))
            .collect();
        assert!(matches!(items[0], Item::Integer(1)));
        assert!(matches!(&items[1], Item::Decimal(d) if d.to_string() == "1.10"));
        assert_eq!(
            equals(&items[0], &Item::Decimal(Decimal::new(100, 2))),
            Some(true)
        );
    }

    #[test]
    fn strings_read_as_dates_when_compared_with_dates() {
        let date = Item::Date(DateTimeValue::parse("2016-11-12").unwrap());
        assert_eq!(equals(&Item::string("2016-11-12"), &date), Some(true));
        assert_eq!(equals(&Item::string("2016-11"), &date), None);
        assert_eq!(equals(&Item::string("hello"), &date), Some(false));
    }
}
