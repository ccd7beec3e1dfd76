//! ValueSets shipped in `profiles/`, expanded to the codes bindings are checked against.
//!
//! A ValueSet is expanded from its `expansion.contains`, or from `compose.include`: listed concepts,
//! whole shipped CodeSystems, and other shipped ValueSets. A ValueSet that needs anything else (a
//! filter, a CodeSystem we do not ship) is marked incomplete: a code missing from it is not an error,
//! because we cannot know.

use std::collections::{HashMap, HashSet};

use serde_json::Value as Json;

type FastHash = foldhash::fast::RandomState;

/// The codes of one ValueSet.
#[derive(Debug, Clone, Default)]
pub struct Expansion {
    /// The codes by system: looked up by `&str`, without building a key per binding checked, and
    /// hashed with foldhash (SipHash was most of a binding check's time).
    codes: HashMap<String, HashSet<String, FastHash>, FastHash>,
    /// Whether every code of the ValueSet is in `codes`.
    pub complete: bool,
}

impl Expansion {
    /// Whether `code` (with its `system`, when known) is in the ValueSet.
    pub fn contains(&self, system: Option<&str>, code: &str) -> bool {
        match system {
            Some(system) => self.codes.get(system).is_some_and(|c| c.contains(code)),
            None => self.codes.values().any(|c| c.contains(code)),
        }
    }

    fn insert(&mut self, system: &str, code: &str) {
        self.codes
            .entry(system.to_string())
            .or_default()
            .insert(code.to_string());
    }
}

/// Strips a `|version` from a canonical URL.
pub fn canonical(url: &str) -> &str {
    url.split('|').next().unwrap_or(url)
}

/// Expands every ValueSet in `value_sets` with the help of `code_systems` (both keyed by URL).
pub fn expand_all(
    value_sets: &HashMap<String, Json>,
    code_systems: &HashMap<String, Json>,
) -> HashMap<String, Expansion> {
    let mut out = HashMap::new();
    for url in value_sets.keys() {
        let expansion = expand(url, value_sets, code_systems, &mut Vec::new());
        out.insert(url.clone(), expansion);
    }
    out
}

fn expand(
    url: &str,
    value_sets: &HashMap<String, Json>,
    code_systems: &HashMap<String, Json>,
    stack: &mut Vec<String>,
) -> Expansion {
    let mut expansion = Expansion {
        codes: HashMap::default(),
        complete: true,
    };
    let Some(value_set) = value_sets.get(url) else {
        expansion.complete = false;
        return expansion;
    };
    if stack.iter().any(|u| u == url) {
        return expansion;
    }
    stack.push(url.to_string());
    if let Some(Json::Array(contains)) = value_set.pointer("/expansion/contains") {
        collect_contains(contains, &mut expansion);
        stack.pop();
        return expansion;
    }
    for include in value_set
        .pointer("/compose/include")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
    {
        let system = include.get("system").and_then(Json::as_str);
        if include.get("filter").is_some() {
            expansion.complete = false;
        }
        for imported in include
            .get("valueSet")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
            .filter_map(Json::as_str)
        {
            let inner = expand(canonical(imported), value_sets, code_systems, stack);
            expansion.complete &= inner.complete;
            for (system, codes) in inner.codes {
                expansion.codes.entry(system).or_default().extend(codes);
            }
        }
        let Some(system) = system else { continue };
        match include.get("concept").and_then(Json::as_array) {
            Some(concepts) => {
                for concept in concepts {
                    if let Some(code) = concept.get("code").and_then(Json::as_str) {
                        expansion.insert(system, code);
                    }
                }
            }
            None => match code_systems.get(system) {
                Some(code_system) => {
                    collect_concepts(system, code_system.get("concept"), &mut expansion)
                }
                None => expansion.complete = false,
            },
        }
    }
    stack.pop();
    expansion
}

fn collect_contains(contains: &[Json], out: &mut Expansion) {
    for entry in contains {
        if let (Some(system), Some(code)) = (
            entry.get("system").and_then(Json::as_str),
            entry.get("code").and_then(Json::as_str),
        ) {
            out.insert(system, code);
        }
        if let Some(Json::Array(nested)) = entry.get("contains") {
            collect_contains(nested, out);
        }
    }
}

fn collect_concepts(system: &str, concepts: Option<&Json>, out: &mut Expansion) {
    for concept in concepts.and_then(Json::as_array).into_iter().flatten() {
        if let Some(code) = concept.get("code").and_then(Json::as_str) {
            out.insert(system, code);
        }
        collect_concepts(system, concept.get("concept"), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expands_listed_concepts_whole_code_systems_and_imports() {
        let code_systems = HashMap::from([(
            "http://cs".to_string(),
            json!({"concept": [{"code": "a", "concept": [{"code": "a1"}]}, {"code": "b"}]}),
        )]);
        let value_sets = HashMap::from([
            (
                "http://vs/all".to_string(),
                json!({"compose": {"include": [{"system": "http://cs"}]}}),
            ),
            (
                "http://vs/one".to_string(),
                json!({"compose": {"include": [{"system": "http://other", "concept": [{"code": "x"}]}, {"valueSet": ["http://vs/all|1.0"]}]}}),
            ),
            (
                "http://vs/filtered".to_string(),
                json!({"compose": {"include": [{"system": "http://cs", "filter": [{}]}]}}),
            ),
        ]);
        let expansions = expand_all(&value_sets, &code_systems);
        let one = &expansions["http://vs/one"];
        assert!(one.complete);
        assert!(
            one.contains(Some("http://cs"), "a1")
                && one.contains(Some("http://other"), "x")
                && one.contains(None, "b")
        );
        assert!(!one.contains(Some("http://cs"), "x"));
        assert!(!expansions["http://vs/filtered"].complete);
    }
}
