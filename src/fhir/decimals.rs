//! A resource's JSON numbers in FHIR `decimal` elements, quoted so `fhirbolt`'s fast path reads them.
//!
//! `fhirbolt` 0.4's per-type deserializers read a `decimal` only from a JSON string and reject the
//! JSON number FHIR requires there. Its catch-all `Resource` path accepts the number but first
//! builds a generic element tree: on a blood-pressure reading it alone costs more than the whole
//! check through the typed path (31 against 22 µs, `cargo bench --bench decode`). So the structural
//! check hands the typed path a copy of the text in which the numbers of decimal elements are
//! quoted.
//!
//! Which elements are decimals is learnt from `fhirbolt` itself, once per element path and resource
//! type: a place holds a decimal when the catch-all path accepts a number there and the typed path a
//! string (an integer element refuses the string, a string element the number). Only numbers the
//! catch-all path would read are quoted, so the typed verdict on the copy is the catch-all verdict
//! on the original.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{LazyLock, RwLock};

use super::location::string_end;

/// Decimal-or-not per `ResourceType/path/[]/key`. Element paths are few, but extensions nest without
/// end: past this size, paths are probed without being remembered.
const MAX_KNOWN_PATHS: usize = 10_000;

static KNOWN: LazyLock<RwLock<HashMap<String, bool>>> = LazyLock::new(Default::default);

/// `raw` with every number that sits in a decimal element quoted; borrowed when there is none.
/// `is_decimal(number_probe, string_probe)` answers for one place, given the smallest resources
/// with a number and a string there.
pub(super) fn quote_decimals<'a>(
    raw: &'a str,
    resource_type: &str,
    is_decimal: impl Fn(&str, &str) -> bool,
) -> Cow<'a, str> {
    let mut quoted: Option<String> = None;
    let mut copied = 0;
    let mut shape = String::new();
    for number in numbers(raw) {
        let text = &raw[number.start..number.end];
        if !is_quotable(text) {
            continue;
        }
        shape.clear();
        shape.push_str(resource_type);
        push_shape(&mut shape, raw, &number.path);
        let known = KNOWN.read().expect("lock").get(&shape).copied();
        let decimal = known.unwrap_or_else(|| {
            let decimal = is_decimal(
                &probe(raw, resource_type, &number.path, "1"),
                &probe(raw, resource_type, &number.path, "\"1\""),
            );
            let mut known = KNOWN.write().expect("lock");
            if known.len() < MAX_KNOWN_PATHS {
                known.insert(shape.clone(), decimal);
            }
            decimal
        });
        if decimal {
            let out = quoted.get_or_insert_with(|| String::with_capacity(raw.len() + 16));
            out.push_str(&raw[copied..number.start]);
            out.push('"');
            out.push_str(text);
            out.push('"');
            copied = number.end;
        }
    }
    match quoted {
        None => Cow::Borrowed(raw),
        Some(mut out) => {
            out.push_str(&raw[copied..]);
            Cow::Owned(out)
        }
    }
}

/// Whether a number in a decimal element gets quoted: the catch-all path refuses what does not fit
/// an f64, so such a number stays as it is.
pub(super) fn is_quotable(number: &str) -> bool {
    number.parse::<f64>().is_ok_and(f64::is_finite)
}

/// One step from the resource down to a value: an object key (a byte range of the text) or an
/// array element.
#[derive(Clone, Copy, PartialEq)]
enum Step {
    Key(usize, usize),
    Element,
}

struct Number {
    start: usize,
    end: usize,
    path: Vec<Step>,
}

/// The numbers of a JSON text (already known to be valid JSON) with the path to each.
fn numbers(raw: &str) -> Vec<Number> {
    let bytes = raw.as_bytes();
    let mut found = Vec::new();
    // One frame per open object or array: the key being read, or `Element`.
    let mut path: Vec<Option<Step>> = Vec::new();
    let mut expecting_key = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let end = string_end(bytes, i + 1);
                if expecting_key && let Some(frame) = path.last_mut() {
                    *frame = Some(Step::Key(i + 1, end));
                }
                i = end;
            }
            b'{' => {
                path.push(None);
                expecting_key = true;
            }
            b'[' => {
                path.push(Some(Step::Element));
                expecting_key = false;
            }
            b'}' | b']' => {
                path.pop();
            }
            b',' => expecting_key = matches!(path.last(), Some(Some(Step::Key(..)))),
            b':' => expecting_key = false,
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i + 1 < bytes.len()
                    && matches!(bytes[i + 1], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                {
                    i += 1;
                }
                found.push(Number {
                    start,
                    end: i + 1,
                    path: path.iter().flatten().copied().collect(),
                });
            }
            _ => {}
        }
        i += 1;
    }
    found
}

/// Appends `/component/[]/valueQuantity/value`: the path without array indices.
fn push_shape(shape: &mut String, raw: &str, path: &[Step]) {
    for step in path {
        match step {
            Step::Key(start, end) => {
                shape.push('/');
                shape.push_str(&raw[*start..*end]);
            }
            Step::Element => shape.push_str("/[]"),
        }
    }
}

/// The smallest resource of `resource_type` with `value` at `path` (FHIR structure has no
/// cardinality, so nothing else is needed).
fn probe(raw: &str, resource_type: &str, path: &[Step], value: &str) -> String {
    let mut inner = value.to_string();
    for (depth, step) in path.iter().enumerate().rev() {
        inner = match step {
            Step::Key(start, end) if depth == 0 => format!(
                r#"{{"resourceType":"{resource_type}","{}":{inner}}}"#,
                &raw[*start..*end]
            ),
            Step::Key(start, end) => format!(r#"{{"{}":{inner}}}"#, &raw[*start..*end]),
            Step::Element => format!("[{inner}]"),
        };
    }
    inner
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_numbers_with_their_paths() {
        let raw = r#"{"a":1,"b":[{"c":-2.5e3,"d":"7"}],"e":{"f":[3, 4]}}"#;
        let shapes: Vec<(String, &str)> = numbers(raw)
            .iter()
            .map(|n| {
                let mut shape = String::new();
                push_shape(&mut shape, raw, &n.path);
                (shape, &raw[n.start..n.end])
            })
            .collect();
        let expected = [
            ("/a", "1"),
            ("/b/[]/c", "-2.5e3"),
            ("/e/f/[]", "3"),
            ("/e/f/[]", "4"),
        ];
        assert_eq!(shapes, expected.map(|(s, v)| (s.to_string(), v)));
    }

    #[test]
    fn probes_nest_the_path() {
        let raw = r#"{"component":[{"valueQuantity":{"value":120}}]}"#;
        let number = &numbers(raw)[0];
        assert_eq!(
            probe(raw, "Observation", &number.path, "1"),
            r#"{"resourceType":"Observation","component":[{"valueQuantity":{"value":1}}]}"#
        );
    }

    #[test]
    fn quotes_only_the_numbers_of_decimals() {
        let is_x = |number: &str, _: &str| number.contains("\"x\"");
        let quoted = quote_decimals(r#"{"x":{"value":120},"y":3}"#, "TestOnlyType", is_x);
        assert_eq!(quoted, r#"{"x":{"value":"120"},"y":3}"#);
        let untouched = quote_decimals(r#"{"y":3}"#, "TestOnlyType", is_x);
        assert!(matches!(untouched, Cow::Borrowed(_)));
    }
}
