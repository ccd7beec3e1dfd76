//! Where in a JSON text a parser stopped, as a FHIRPath-like location.
//!
//! `serde_json` (and so `fhirbolt`) report errors by line and column. A data engineer fixing a feed
//! wants `Patient.name[0].given` instead, so this module re-scans the text up to that point and
//! keeps the stack of object keys and array indices. It only runs for rejected records.

/// The location of `line`:`column` (1-based, as `serde_json` reports them) inside `text`, a JSON
/// object whose root is called `root` (normally the resource type).
pub fn path_at(text: &str, line: usize, column: usize, root: &str) -> String {
    let offset = byte_offset(text, line, column);
    let mut frames: Vec<Frame> = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < offset.min(bytes.len()) {
        match bytes[i] {
            b'"' => {
                let end = string_end(bytes, i + 1);
                if let Some(Frame::Object { key, expecting_key }) = frames.last_mut()
                    && *expecting_key
                {
                    *key = Some(text[i + 1..end.min(bytes.len())].to_string());
                }
                i = end;
            }
            b'{' => frames.push(Frame::Object {
                key: None,
                expecting_key: true,
            }),
            b'[' => frames.push(Frame::Array { index: 0 }),
            b'}' | b']' => {
                frames.pop();
            }
            b',' => match frames.last_mut() {
                Some(Frame::Array { index }) => *index += 1,
                Some(Frame::Object { key, expecting_key }) => {
                    *key = None;
                    *expecting_key = true;
                }
                None => {}
            },
            b':' => {
                if let Some(Frame::Object { expecting_key, .. }) = frames.last_mut() {
                    *expecting_key = false;
                }
            }
            _ => {}
        }
        i += 1;
    }
    let mut path = root.to_string();
    for frame in &frames {
        match frame {
            Frame::Object { key: Some(key), .. } => {
                path.push('.');
                path.push_str(key);
            }
            Frame::Object { key: None, .. } => {}
            Frame::Array { index } => path.push_str(&format!("[{index}]")),
        }
    }
    path
}

enum Frame {
    Object {
        key: Option<String>,
        expecting_key: bool,
    },
    Array {
        index: usize,
    },
}

/// Index of the closing quote of a string whose content starts at `start`.
pub(super) fn string_end(bytes: &[u8], start: usize) -> usize {
    let mut i = start;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return i,
            _ => i += 1,
        }
    }
    bytes.len()
}

fn byte_offset(text: &str, line: usize, column: usize) -> usize {
    let line_start: usize = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum();
    (line_start + column.saturating_sub(1)).min(text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at_error(text: &str) -> String {
        let err = serde_json::from_str::<serde_json::Value>(text).unwrap_err();
        path_at(text, err.line(), err.column(), "Patient")
    }

    #[test]
    fn locates_nested_array_elements() {
        let text = r#"{"resourceType":"Patient","name":[{"given":["a"]},{"given":["b", ]}]}"#;
        assert_eq!(at_error(text), "Patient.name[1].given[1]");
    }

    #[test]
    fn locates_across_lines_and_escaped_quotes() {
        let text = "{\"resourceType\":\"Pa\\\"tient\",\n \"gender\": \"x\",\n \"address\": [{\"city\": tru}]}";
        assert_eq!(at_error(text), "Patient.address[0].city");
    }

    #[test]
    fn root_level_problem_is_the_root() {
        assert_eq!(path_at("{}", 1, 1, "Observation"), "Observation");
    }
}
