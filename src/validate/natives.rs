//! Invariants evaluated natively: the ones every resource of a kind meets on each visit, written as
//! plain Rust with the FHIRPath engine's own member access, so each gives the engine's answer (a
//! unit test compares both on every object of the bundled samples and on edge cases).
//!
//! A profile walk runs a dozen invariants per blood-pressure reading; through the general engine
//! they were a fifth of validation's time. A native may answer only the common case (`None`:
//! evaluate the expression), as `dom-3` does for a resource without contained resources.

use serde_json::Value as Json;

use crate::fhirpath::{DateTimeValue, Precision, member};

/// A native evaluation of one invariant on the node it applies to, given the node's choice type
/// when it has one (`effectiveDateTime` is a `dateTime`): `Some(holds)`, or `None` to leave it to
/// the engine.
pub type Native = fn(&Json, Option<&str>) -> Option<bool>;

/// `ele-1` as FHIR writes it; it holds on every element of every resource.
const ELE_1: &str = "hasValue() or (children().count() > id.count())";

/// `vs-1` (vital signs: an effective dateTime is precise to the day).
const VS_1: &str = "($this as dateTime).toString().length() >= 8";

/// `dom-3` (every contained resource is referenced from the rest of the resource).
const DOM_3: &str = "contained.where((('#'+id in (%resource.descendants().reference | %resource.descendants().as(canonical) | %resource.descendants().as(uri) | %resource.descendants().as(url))) or descendants().where(reference = '#').exists() or descendants().where(as(canonical) = '#').exists() or descendants().where(as(canonical) = '#').exists()).not()).trace('unmatched', id).empty()";

/// The native evaluation of the invariant `expression`, if there is one.
pub fn native(expression: &str) -> Option<Native> {
    Some(match expression {
        ELE_1 => |v, _| Some(ele_1(v)),
        // `vs-1`: a dateTime is precise to the day. The engine's `toString()` of the parsed value
        // is 8 characters or more exactly when it has a day.
        VS_1 => |v, type_name| {
            let text = v.as_str().filter(|_| type_name == Some("dateTime"))?;
            Some(match DateTimeValue::parse(text) {
                Some(parsed) => parsed.precision >= Precision::Day,
                None => text.chars().count() >= 8,
            })
        },
        "contained.contained.empty()" => |v, _| Some(!exists(v, &["contained", "contained"])),
        "contained.meta.versionId.empty() and contained.meta.lastUpdated.empty()" => |v, _| {
            Some(
                !exists(v, &["contained", "meta", "versionId"])
                    && !exists(v, &["contained", "meta", "lastUpdated"]),
            )
        },
        "contained.meta.security.empty()" => {
            |v, _| Some(!exists(v, &["contained", "meta", "security"]))
        }
        "text.`div`.exists()" => |v, _| Some(exists(v, &["text", "div"])),
        "extension.exists() != value.exists()" => {
            |v, _| Some(exists(v, &["extension"]) != exists(v, &["value"]))
        }
        "dataAbsentReason.empty() or value.empty()" => {
            |v, _| Some(!exists(v, &["dataAbsentReason"]) || !exists(v, &["value"]))
        }
        "value.exists() or dataAbsentReason.exists()" => {
            |v, _| Some(exists(v, &["value"]) || exists(v, &["dataAbsentReason"]))
        }
        "(component.empty() and hasMember.empty()) implies (dataAbsentReason.exists() or value.exists())" => {
            |v, _| {
                let needs_value = !exists(v, &["component"]) && !exists(v, &["hasMember"]);
                Some(!needs_value || exists(v, &["dataAbsentReason"]) || exists(v, &["value"]))
            }
        }
        "low.exists() or high.exists() or text.exists()" => {
            |v, _| Some(exists(v, &["low"]) || exists(v, &["high"]) || exists(v, &["text"]))
        }
        // `obs-7`, `value.empty() or component.code.where(…).empty()`: true without the rest when
        // there is no value or no component.
        "value.empty() or component.code.where(coding.intersect(%resource.code.coding).exists()).empty()" => {
            |v, _| (!exists(v, &["value"]) || !exists(v, &["component"])).then_some(true)
        }
        // `contained.where(…)….empty()`: true when nothing is contained.
        DOM_3 => |v, _| (!exists(v, &["contained"])).then_some(true),
        _ => return None,
    })
}

/// Whether the member path `steps` from `value` reaches anything, exactly as the engine's member
/// access ([`member`]) does: arrays fan out, nulls are skipped, `value` finds `valueQuantity`.
/// Walked in place rather than through collections: it runs several times on every element the
/// validator visits.
fn exists(value: &Json, steps: &[&str]) -> bool {
    let Some((step, rest)) = steps.split_first() else {
        return true;
    };
    let Json::Object(map) = value else {
        return false;
    };
    match member(map, step).map(|(child, _)| child) {
        None | Some(Json::Null) => false,
        Some(Json::Array(items)) => items
            .iter()
            .any(|item| !item.is_null() && exists(item, rest)),
        Some(child) => exists(child, rest),
    }
}

/// `ele-1` evaluated natively: a primitive has a value; an object needs a child other than its
/// `id`. It runs on every element of every resource, so this is the validator's hottest path.
fn ele_1(value: &Json) -> bool {
    let Json::Object(object) = value else {
        return !value.is_null();
    };
    let children: usize = object
        .iter()
        .filter(|(k, _)| k.as_str() != "resourceType")
        .map(|(_, v)| match v {
            Json::Array(items) => items.len(),
            _ => 1,
        })
        .sum();
    let ids = match object.get("id") {
        Some(Json::Array(items)) => items.len(),
        Some(Json::Null) | None => 0,
        Some(_) => 1,
    };
    children > ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhirpath::{Collection, Expression, Item, Variables};

    /// `%resource` for the engine: the node itself (each node is checked as a resource would be).
    struct Resource<'a>(&'a Json);

    impl<'a> Variables<'a> for Resource<'a> {
        fn get(&self, name: &str) -> Option<Collection<'a>> {
            (name == "resource").then(|| smallvec::smallvec![Item::Node(self.0, None)])
        }
    }

    /// A node and the choice type the walker would give it.
    type Typed<'a> = (&'a Json, Option<&'a str>);

    /// Every value under `json`, `json` included, arrays by their items (the walker checks an
    /// element's values one by one), each with the choice type its key names, as the walker
    /// passes it (`effectiveDateTime` is a `dateTime`).
    fn nodes<'a>(json: &'a Json, type_name: Option<&'a str>, out: &mut Vec<Typed<'a>>) {
        match json {
            Json::Object(object) => {
                out.push((json, type_name));
                for (key, value) in object {
                    let suffix = key
                        .find(|c: char| c.is_ascii_uppercase())
                        .map(|i| &key[i..]);
                    nodes(value, suffix.and_then(crate::fhirpath::choice_type), out);
                }
            }
            Json::Array(items) => items.iter().for_each(|v| nodes(v, type_name, out)),
            _ => out.push((json, type_name)),
        }
    }

    fn sample_resources() -> Vec<Json> {
        let mut texts = Vec::new();
        let mut dirs = vec![std::path::PathBuf::from("samples")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "json") {
                    texts.push(std::fs::read_to_string(&path).unwrap());
                } else if path.extension().is_some_and(|e| e == "ndjson") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    texts.extend(text.lines().take(2_000).map(str::to_string));
                }
            }
        }
        texts
            .iter()
            .filter_map(|t| serde_json::from_str(t).ok())
            .collect()
    }

    #[test]
    fn natives_agree_with_the_engine() {
        let edge_cases = serde_json::json!([
            "text", 1, true, null, {}, {"id": "a"}, {"id": "a", "value": 1}, {"extension": [{"url": "x"}]},
            {"coding": []}, {"resourceType": "Patient"}, {"resourceType": "Patient", "id": "p"},
            {"a": [1, 2], "id": "x"}, {"value": null}, {"valueQuantity": {"value": 1}},
            {"valueString": "x", "extension": [{"url": "u"}]}, {"valueFoo": 1}, {"value": []},
            {"dataAbsentReason": {"text": "x"}, "valueInteger": 2}, {"component": [], "hasMember": [{}]},
            {"component": [null]}, {"text": {"div": "<div/>"}}, {"text": {"status": "generated"}},
            {"text": [{"div": "x"}]}, {"contained": []}, {"contained": [{"resourceType": "Patient"}]},
            {"contained": [{"resourceType": "Patient", "contained": [{"resourceType": "Patient"}]}]},
            {"contained": [{"resourceType": "Patient", "meta": {"versionId": "1"}}]},
            {"contained": [{"resourceType": "Patient", "meta": [{"security": [{"code": "x"}]}]}]},
            {"low": {"value": 1}}, {"high": null, "text": "t"}, {"_value": {"id": "x"}},
            {"effectiveDateTime": "2026"}, {"effectiveDateTime": "2026-11"},
            {"effectiveDateTime": "2026-11-09"}, {"effectiveDateTime": "2026-11-09T07:41:00+01:00"},
            {"effectiveDateTime": "not a date"}, {"effectiveDateTime": "20261109"},
            {"effectiveString": "2026"}
        ]);
        let resources = sample_resources();
        let mut all = Vec::new();
        for json in resources.iter().chain(edge_cases.as_array().unwrap()) {
            nodes(json, None, &mut all);
        }
        let texts = [
            ELE_1,
            "contained.contained.empty()",
            "contained.meta.versionId.empty() and contained.meta.lastUpdated.empty()",
            "contained.meta.security.empty()",
            "text.`div`.exists()",
            "extension.exists() != value.exists()",
            "dataAbsentReason.empty() or value.empty()",
            "value.exists() or dataAbsentReason.exists()",
            "(component.empty() and hasMember.empty()) implies (dataAbsentReason.exists() or value.exists())",
            "low.exists() or high.exists() or text.exists()",
            VS_1,
            "value.empty() or component.code.where(coding.intersect(%resource.code.coding).exists()).empty()",
            DOM_3,
        ];
        let mut answered = 0;
        for text in texts {
            let native = native(text).unwrap_or_else(|| panic!("no native for {text}"));
            let expression = Expression::parse(text).unwrap();
            let answered_before = answered;
            for &(node, type_name) in &all {
                let Some(holds) = native(node, type_name) else {
                    continue;
                };
                answered += 1;
                let result = expression
                    .evaluate(&[Item::Node(node, type_name)], &Resource(node))
                    .unwrap();
                let engine = match result.as_slice() {
                    [] => None,
                    [item] => match item.primitive() {
                        Item::Boolean(b) => Some(b),
                        other => panic!("{text} gave {other:?}"),
                    },
                    _ => panic!("{text} gave several items"),
                };
                assert_eq!(Some(holds), engine, "{text} on {node} ({type_name:?})");
            }
            assert!(
                answered > answered_before,
                "{text} was never answered natively"
            );
        }
        assert!(answered > 10_000, "only {answered} comparisons");
        assert!(native("name.exists()").is_none());
    }
}
