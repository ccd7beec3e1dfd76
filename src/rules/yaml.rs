//! YAML rule files read into JSON values, remembering the line of every value, so that a schema
//! error can name the line of the field it is about.

use std::collections::HashMap;

use serde_json::{Map, Number, Value};
use yaml_rust2::Yaml;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A YAML document as JSON, with the 1-based line of each value by its JSON pointer (`/when/any/0`).
#[derive(Debug)]
pub struct Document {
    pub value: Value,
    lines: HashMap<String, usize>,
}

impl Document {
    /// The line of the value at `pointer`, or of its nearest parent that has one.
    pub fn line_of(&self, pointer: &str) -> usize {
        let mut pointer = pointer;
        loop {
            if let Some(line) = self.lines.get(pointer) {
                return *line;
            }
            match pointer.rfind('/') {
                Some(cut) => pointer = &pointer[..cut],
                None => return 1,
            }
        }
    }
}

/// Parses one YAML document. Anchors and aliases are refused: rule files are meant to be read by
/// clinicians, top to bottom.
pub fn parse(text: &str) -> Result<Document, (usize, String)> {
    let mut builder = Builder::default();
    Parser::new_from_str(text)
        .load(&mut builder, false)
        .map_err(|e| (e.marker().line(), e.info().to_string()))?;
    if let Some(error) = builder.error {
        return Err(error);
    }
    Ok(Document {
        value: builder.root.unwrap_or(Value::Null),
        lines: builder.lines,
    })
}

/// A container being filled, with the key waiting for its value when it is a mapping.
enum Open {
    Sequence(Vec<Value>),
    Mapping(Map<String, Value>, Option<String>),
}

#[derive(Default)]
struct Builder {
    stack: Vec<(Open, String)>,
    root: Option<Value>,
    lines: HashMap<String, usize>,
    error: Option<(usize, String)>,
}

impl Builder {
    /// The pointer the next value gets.
    fn next_pointer(&self) -> String {
        match self.stack.last() {
            None => String::new(),
            Some((Open::Sequence(items), pointer)) => format!("{pointer}/{}", items.len()),
            Some((Open::Mapping(_, key), pointer)) => {
                let key = key.as_deref().unwrap_or_default();
                format!("{pointer}/{}", key.replace('~', "~0").replace('/', "~1"))
            }
        }
    }

    /// Whether the next scalar is a mapping key.
    fn expects_key(&self) -> bool {
        matches!(self.stack.last(), Some((Open::Mapping(_, None), _)))
    }

    fn put(&mut self, value: Value) {
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some((Open::Sequence(items), _)) => items.push(value),
            Some((Open::Mapping(map, key), _)) => {
                let key = key.take().unwrap_or_default();
                map.insert(key, value);
            }
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        match event {
            Event::Scalar(text, _, _, _) if self.expects_key() => {
                let line = mark.line();
                if let Some((Open::Mapping(map, key), pointer)) = self.stack.last_mut() {
                    if map.contains_key(&text) {
                        self.error =
                            Some((line, format!("`{text}` is given twice in {pointer:?}")));
                    }
                    *key = Some(text);
                }
            }
            Event::Scalar(text, style, _, _) => {
                self.lines.insert(self.next_pointer(), mark.line());
                let value = if style == TScalarStyle::Plain {
                    scalar(&text)
                } else {
                    Value::String(text)
                };
                self.put(value);
            }
            Event::SequenceStart(..) => {
                let pointer = self.next_pointer();
                self.lines.insert(pointer.clone(), mark.line());
                self.stack.push((Open::Sequence(Vec::new()), pointer));
            }
            Event::MappingStart(..) => {
                let pointer = self.next_pointer();
                self.lines.insert(pointer.clone(), mark.line());
                self.stack.push((Open::Mapping(Map::new(), None), pointer));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((open, _)) = self.stack.pop() {
                    let value = match open {
                        Open::Sequence(items) => Value::Array(items),
                        Open::Mapping(map, _) => Value::Object(map),
                    };
                    self.put(value);
                }
            }
            Event::Alias(_) => {
                self.error = Some((
                    mark.line(),
                    "YAML aliases are not allowed in rule files".into(),
                ));
            }
            _ => {}
        }
    }
}

/// A plain YAML scalar as JSON: null, booleans and numbers by the YAML 1.2 core schema, else text.
fn scalar(text: &str) -> Value {
    match Yaml::from_str(text) {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(b),
        Yaml::Integer(i) => Value::Number(i.into()),
        Yaml::Real(r) => r
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map_or(Value::String(r), Value::Number),
        _ => Value::String(text.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_their_lines() {
        let doc = parse("id: crisis\nversion: 2\nwhen:\n  any:\n    - systolic > 180\n    - 'true'\nflag: true\n").unwrap();
        assert_eq!(
            doc.value,
            serde_json::json!({"id": "crisis", "version": 2, "when": {"any": ["systolic > 180", "true"]}, "flag": true})
        );
        assert_eq!(doc.line_of("/when/any/1"), 6);
        // A missing item is placed at its list, whose first item is on line 5.
        assert_eq!(doc.line_of("/when/any/7"), 5);
        assert_eq!(doc.line_of("/version"), 2);
    }

    #[test]
    fn syntax_errors_and_repeated_keys_have_lines() {
        assert_eq!(parse("a: 1\nb: [1, 2\n").unwrap_err().0, 3);
        let (line, message) = parse("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(line, 3);
        assert!(message.contains("`a`"), "{message}");
    }
}
