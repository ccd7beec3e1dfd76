//! StructureDefinitions from `profiles/`, turned into element trees the validator walks.
//!
//! A profile with a snapshot is used as it is. A differential-only profile (US Core) gets its
//! snapshot by applying the differential to its base's snapshot: constraints on existing elements
//! are merged in, a new slice starts as a copy of the sliced element and its children, a choice
//! element named by type (`valueQuantity`) narrows `value[x]`, and elements inside data types the base
//! snapshot does not list (`valueQuantity.code`) are added under their parent.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde_json::{Map, Value as Json};

use super::natives::{self, Native};
use super::terminology::{self, Expansion};
use crate::fhirpath::{Expression, PRIMITIVE_TYPES, ParseError};

/// Why the profiles folder could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not JSON: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    #[error("profile {url}: {message}")]
    Invalid { url: String, message: String },
}

/// A constraint (`constraint.expression`) with its key and severity.
#[derive(Debug)]
pub struct Invariant {
    pub key: String,
    pub error: bool,
    pub human: String,
    /// The parsed expression, or why it did not parse (reported, never treated as passed).
    pub expression: Result<Expression, ParseError>,
    pub text: String,
    /// A native evaluation with the engine's result, for the invariants walks meet all the time.
    pub native: Option<Native>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strength {
    Required,
    Extensible,
    Preferred,
    Example,
}

#[derive(Debug)]
pub struct Binding {
    pub strength: Strength,
    pub value_set: String,
    /// The ValueSet's codes, when it is shipped: looked up once here, not at every value bound.
    pub expansion: Option<Arc<Expansion>>,
}

/// One element of a snapshot, with what the validator checks.
#[derive(Debug)]
pub struct Element {
    pub id: String,
    /// The last path segment (`code`, `value[x]`).
    pub name: String,
    pub min: u64,
    /// `None` is `*`.
    pub max: Option<u64>,
    /// Allowed type codes (`Quantity`, `dateTime`, ...).
    pub types: Vec<String>,
    /// The FHIR primitive type, when that is the one allowed type: looked up once here, not at
    /// every value the validator visits.
    pub primitive: Option<&'static str>,
    /// `fixed[x]` or `pattern[x]`: (is_fixed, value).
    pub value_constraint: Option<(bool, Json)>,
    pub binding: Option<Binding>,
    pub invariants: Vec<Invariant>,
    /// Value or pattern discriminator paths, when the element is sliced.
    pub discriminators: Vec<String>,
    pub closed: bool,
    pub slice_name: Option<String>,
    pub children: Vec<usize>,
    pub slices: Vec<usize>,
    /// For a slice: per discriminator path of the sliced element, the values or patterns this
    /// slice fixes there (a BP component's LOINC code). Worked out once here from the element
    /// tree; a value belongs to the slice when it has one of them at every path listed.
    pub slice_values: Vec<(String, Vec<Json>)>,
}

/// A compiled profile: its elements in an arena, element 0 the root.
#[derive(Debug)]
pub struct Profile {
    pub url: String,
    pub name: String,
    /// The resource type it constrains.
    pub resource_type: String,
    /// The shipped profiles it derives from, nearest first (`baseDefinition`, and its base, ...).
    /// Its snapshot holds all their constraints.
    pub bases: Vec<String>,
    pub elements: Vec<Element>,
}

/// Every profile and ValueSet in the folder.
#[derive(Debug, Default)]
pub struct ProfileSet {
    pub profiles: HashMap<String, Arc<Profile>>,
}

fn read_json_files(dir: &Path, out: &mut Vec<(String, Json)>) -> Result<(), ProfileError> {
    let read_error = |source| ProfileError::Read {
        path: dir.display().to_string(),
        source,
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(read_error)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            read_json_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "json") {
            let shown = path.display().to_string();
            let text = std::fs::read_to_string(&path).map_err(|source| ProfileError::Read {
                path: shown.clone(),
                source,
            })?;
            let json = serde_json::from_str(&text).map_err(|source| ProfileError::Json {
                path: shown.clone(),
                source,
            })?;
            out.push((shown, json));
        }
    }
    Ok(())
}

/// The profiles and terminology shipped in `profiles/`, built into the binary.
const BUILT_IN: [(&str, &str); 16] = {
    macro_rules! shipped {
        ($($path:literal),* $(,)?) => {
            [$(($path, include_str!(concat!("../../profiles/", $path)))),*]
        };
    }
    shipped![
        "r4/StructureDefinition-Bundle.json",
        "r4/StructureDefinition-Observation.json",
        "r4/StructureDefinition-Patient.json",
        "r4/StructureDefinition-bp.json",
        "r4/StructureDefinition-vitalsigns.json",
        "terminology/CodeSystem-administrative-gender.json",
        "terminology/CodeSystem-observation-category.json",
        "terminology/CodeSystem-observation-status.json",
        "terminology/ValueSet-administrative-gender.json",
        "terminology/ValueSet-observation-category.json",
        "terminology/ValueSet-observation-status.json",
        "terminology/ValueSet-observation-vitalsignresult.json",
        "terminology/ValueSet-ucum-vitals-common.json",
        "us-core/StructureDefinition-us-core-blood-pressure.json",
        "us-core/StructureDefinition-us-core-patient.json",
        "us-core/StructureDefinition-us-core-vital-signs.json",
    ]
};

impl ProfileSet {
    /// Loads every StructureDefinition, ValueSet and CodeSystem under `dir` (other JSON, such as
    /// ViewDefinitions, is left alone).
    pub fn load(dir: &Path) -> Result<ProfileSet, ProfileError> {
        let mut files = Vec::new();
        read_json_files(dir, &mut files)?;
        Self::from_files(files)
    }

    /// The profiles shipped in `profiles/`, as built into the binary.
    pub fn built_in() -> Result<ProfileSet, ProfileError> {
        let files = BUILT_IN
            .iter()
            .map(|(path, text)| {
                serde_json::from_str(text)
                    .map(|json| (format!("(built in) profiles/{path}"), json))
                    .map_err(|source| ProfileError::Json {
                        path: path.to_string(),
                        source,
                    })
            })
            .collect::<Result<_, _>>()?;
        Self::from_files(files)
    }

    fn from_files(files: Vec<(String, Json)>) -> Result<ProfileSet, ProfileError> {
        let (mut definitions, mut value_sets, mut code_systems) =
            (HashMap::new(), HashMap::new(), HashMap::new());
        for (_, json) in files {
            let url = json
                .get("url")
                .and_then(Json::as_str)
                .map(|u| terminology::canonical(u).to_string());
            let (Some(kind), Some(url)) = (json.get("resourceType").and_then(Json::as_str), url)
            else {
                continue;
            };
            match kind {
                "StructureDefinition" => definitions.insert(url, json),
                "ValueSet" => value_sets.insert(url, json),
                "CodeSystem" => code_systems.insert(url, json),
                _ => None,
            };
        }
        let expansions: HashMap<String, Arc<Expansion>> =
            terminology::expand_all(&value_sets, &code_systems)
                .into_iter()
                .map(|(url, expansion)| (url, Arc::new(expansion)))
                .collect();
        let mut snapshots: HashMap<String, Vec<Json>> = HashMap::new();
        let urls: Vec<String> = definitions.keys().cloned().collect();
        for url in &urls {
            snapshot_of(url, &definitions, &mut snapshots, &mut Vec::new())?;
        }
        let mut profiles = HashMap::new();
        for url in urls {
            let definition = &definitions[&url];
            let resource_type = definition
                .get("type")
                .and_then(Json::as_str)
                .unwrap_or_default()
                .to_string();
            let name = definition
                .get("name")
                .and_then(Json::as_str)
                .unwrap_or(&url)
                .to_string();
            let elements = compile(&snapshots[&url], &expansions);
            let bases = bases_of(&url, &definitions);
            profiles.insert(
                url.clone(),
                Arc::new(Profile {
                    url,
                    name,
                    resource_type,
                    bases,
                    elements,
                }),
            );
        }
        Ok(ProfileSet { profiles })
    }
}

/// The shipped `baseDefinition` chain of `url`, nearest first.
fn bases_of(url: &str, definitions: &HashMap<String, Json>) -> Vec<String> {
    let mut bases: Vec<String> = Vec::new();
    let mut current = url;
    while let Some(base) = definitions
        .get(current)
        .and_then(|d| d.get("baseDefinition"))
        .and_then(Json::as_str)
        .map(terminology::canonical)
        .filter(|base| definitions.contains_key(*base))
    {
        if base == url || bases.iter().any(|b| b == base) {
            break;
        }
        bases.push(base.to_string());
        current = base;
    }
    bases
}

/// The snapshot elements of `url`, building it from the base and the differential when needed.
fn snapshot_of(
    url: &str,
    definitions: &HashMap<String, Json>,
    snapshots: &mut HashMap<String, Vec<Json>>,
    stack: &mut Vec<String>,
) -> Result<(), ProfileError> {
    if snapshots.contains_key(url) {
        return Ok(());
    }
    let invalid = |message: String| ProfileError::Invalid {
        url: url.to_string(),
        message,
    };
    let definition = definitions
        .get(url)
        .ok_or_else(|| invalid("not in the profiles folder".into()))?;
    if let Some(Json::Array(elements)) = definition.pointer("/snapshot/element") {
        snapshots.insert(url.to_string(), elements.clone());
        return Ok(());
    }
    if stack.iter().any(|u| u == url) {
        return Err(invalid("its baseDefinition chain loops".into()));
    }
    let base = definition
        .get("baseDefinition")
        .and_then(Json::as_str)
        .map(terminology::canonical)
        .ok_or_else(|| invalid("no snapshot and no baseDefinition".into()))?;
    if !definitions.contains_key(base) {
        return Err(invalid(format!(
            "no snapshot, and its base {base} is not shipped in profiles/"
        )));
    }
    stack.push(url.to_string());
    snapshot_of(base, definitions, snapshots, stack)?;
    stack.pop();
    let differential = definition
        .pointer("/differential/element")
        .and_then(Json::as_array)
        .cloned()
        .unwrap_or_default();
    let snapshot = apply_differential(snapshots[base].clone(), &differential);
    snapshots.insert(url.to_string(), snapshot);
    Ok(())
}

fn id_of(element: &Json) -> &str {
    element.get("id").and_then(Json::as_str).unwrap_or_default()
}

/// Where the subtree of the element with `id` ends (exclusive).
fn subtree_end(elements: &[Json], index: usize) -> usize {
    let prefix = format!("{}.", id_of(&elements[index]));
    let slice_prefix = format!("{}:", id_of(&elements[index]));
    let mut end = index + 1;
    while end < elements.len()
        && (id_of(&elements[end]).starts_with(&prefix)
            || id_of(&elements[end]).starts_with(&slice_prefix))
    {
        end += 1;
    }
    end
}

/// `valueQuantity` → `value[x]` narrowed to `Quantity`, given the base has `value[x]` there.
fn base_id_for(id: &str, elements: &[Json]) -> Option<(String, Option<String>)> {
    let (parent, last) = id.rsplit_once('.')?;
    if last.contains(':') {
        return None;
    }
    let position = last.char_indices().find(|(_, c)| c.is_ascii_uppercase())?.0;
    let (prefix, type_name) = last.split_at(position);
    let choice = format!("{parent}.{prefix}[x]");
    elements
        .iter()
        .any(|e| id_of(e) == choice)
        .then(|| (choice, Some(type_name.to_string())))
}

fn apply_differential(mut elements: Vec<Json>, differential: &[Json]) -> Vec<Json> {
    for diff in differential {
        let id = id_of(diff).to_string();
        if id.is_empty() {
            continue;
        }
        let mut target = id.clone();
        if !elements.iter().any(|e| id_of(e) == target)
            && let Some((choice, type_name)) = base_id_for(&id, &elements)
        {
            target = choice;
            if let (Some(type_name), Some(position)) =
                (type_name, elements.iter().position(|e| id_of(e) == target))
            {
                elements[position]["type"] = serde_json::json!([{ "code": type_name }]);
            }
        }
        if let Some(position) = elements.iter().position(|e| id_of(e) == target) {
            merge(&mut elements[position], diff);
            continue;
        }
        let (parent, last) = id.rsplit_once('.').unwrap_or(("", &id));
        if let Some((sliced_name, _slice)) = last.split_once(':') {
            // A new slice: a copy of the sliced element and its children, after the last slice.
            let sliced_id = format!("{parent}.{sliced_name}");
            if let Some(sliced) = elements.iter().position(|e| id_of(e) == sliced_id) {
                let end = subtree_end(&elements, sliced);
                let base_children: Vec<Json> = elements[sliced..end]
                    .iter()
                    .filter(|e| !id_of(e).starts_with(&format!("{sliced_id}:")))
                    .cloned()
                    .collect();
                let copies: Vec<Json> = base_children
                    .into_iter()
                    .map(|mut e| {
                        let new_id = id_of(&e).replacen(&sliced_id, &id, 1);
                        e["id"] = Json::String(new_id);
                        if let Some(object) = e.as_object_mut() {
                            object.remove("slicing");
                        }
                        e
                    })
                    .collect();
                let mut copies = copies;
                merge(&mut copies[0], diff);
                elements.splice(end..end, copies);
                continue;
            }
        }
        // An element the base does not list (inside a data type): add it after its parent's subtree.
        let parent_id = base_id_for(&id, &elements)
            .map(|(c, _)| c)
            .unwrap_or_else(|| parent.to_string());
        let parent_position = elements
            .iter()
            .position(|e| id_of(e) == parent_id)
            .or_else(|| {
                base_id_for(parent, &elements)
                    .and_then(|(c, _)| elements.iter().position(|e| id_of(e) == c))
            });
        let mut element = Json::Object(Map::new());
        element["id"] = Json::String(id.clone());
        merge(&mut element, diff);
        match parent_position {
            Some(position) => {
                let end = subtree_end(&elements, position);
                elements.insert(end, element);
            }
            None => elements.push(element),
        }
    }
    elements
}

/// Differential fields onto a snapshot element: constraints are added, everything else replaced.
fn merge(element: &mut Json, diff: &Json) {
    let Some(diff) = diff.as_object() else { return };
    for (key, value) in diff {
        match key.as_str() {
            "id" | "path" => {}
            "constraint" => {
                let mut constraints = element
                    .get("constraint")
                    .and_then(Json::as_array)
                    .cloned()
                    .unwrap_or_default();
                constraints.extend(value.as_array().cloned().unwrap_or_default());
                element["constraint"] = Json::Array(constraints);
            }
            _ => element[key] = value.clone(),
        }
    }
}

fn number(value: Option<&Json>) -> Option<u64> {
    match value? {
        Json::Number(n) => n.as_u64(),
        Json::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// The element with `id`, or the choice element a typed name stands for (`valueQuantity` → `value[x]`).
fn parent_index(by_id: &HashMap<String, usize>, id: &str) -> Option<usize> {
    if let Some(&index) = by_id.get(id) {
        return Some(index);
    }
    let (parent, last) = id.rsplit_once('.')?;
    let position = last.char_indices().find(|(_, c)| c.is_ascii_uppercase())?.0;
    by_id
        .get(&format!("{parent}.{}[x]", &last[..position]))
        .copied()
}

/// The element arena of a snapshot, children and slices linked by id.
fn compile(snapshot: &[Json], expansions: &HashMap<String, Arc<Expansion>>) -> Vec<Element> {
    let mut elements: Vec<Element> = Vec::with_capacity(snapshot.len());
    let mut by_id: HashMap<String, usize> = HashMap::new();
    for json in snapshot {
        let id = id_of(json).to_string();
        let last = id.rsplit('.').next().unwrap_or(&id);
        let (name, slice_name) = match last.split_once(':') {
            Some((name, slice)) => (name.to_string(), Some(slice.to_string())),
            None => (last.to_string(), None),
        };
        let value_constraint = json.as_object().and_then(|o| {
            o.iter().find_map(|(k, v)| {
                if k.starts_with("fixed") {
                    Some((true, v.clone()))
                } else if k.starts_with("pattern") {
                    Some((false, v.clone()))
                } else {
                    None
                }
            })
        });
        let binding = json.get("binding").and_then(|b| {
            let strength = match b.get("strength")?.as_str()? {
                "required" => Strength::Required,
                "extensible" => Strength::Extensible,
                "preferred" => Strength::Preferred,
                _ => Strength::Example,
            };
            let value_set = terminology::canonical(b.get("valueSet")?.as_str()?).to_string();
            Some(Binding {
                strength,
                expansion: expansions.get(&value_set).cloned(),
                value_set,
            })
        });
        let invariants = json
            .get("constraint")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| {
                let text = c.get("expression")?.as_str()?.to_string();
                Some(Invariant {
                    key: c.get("key")?.as_str()?.to_string(),
                    error: c.get("severity").and_then(Json::as_str) != Some("warning"),
                    human: c
                        .get("human")
                        .and_then(Json::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    expression: Expression::parse(&text),
                    native: natives::native(&text),
                    text,
                })
            })
            .collect();
        let slicing = json.get("slicing");
        let discriminators = slicing
            .and_then(|s| s.get("discriminator"))
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
            .filter(|d| {
                matches!(
                    d.get("type").and_then(Json::as_str),
                    Some("value" | "pattern")
                )
            })
            .filter_map(|d| d.get("path").and_then(Json::as_str).map(str::to_string))
            .collect();
        let types: Vec<String> = json
            .get("type")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
            .filter_map(|t| t.get("code").and_then(Json::as_str))
            .map(|code| code.rsplit('/').next().unwrap_or(code).to_string())
            .collect();
        let index = elements.len();
        elements.push(Element {
            id: id.clone(),
            name,
            min: number(json.get("min")).unwrap_or(0),
            max: match json.get("max").and_then(Json::as_str) {
                Some("*") | None => None,
                Some(n) => n.parse().ok(),
            },
            primitive: match types.as_slice() {
                [only] => PRIMITIVE_TYPES
                    .iter()
                    .find(|p| **p == only.as_str())
                    .copied(),
                _ => None,
            },
            types,
            value_constraint,
            binding,
            invariants,
            discriminators,
            closed: slicing.and_then(|s| s.get("rules")).and_then(Json::as_str) == Some("closed"),
            slice_name: slice_name.clone(),
            children: Vec::new(),
            slices: Vec::new(),
            slice_values: Vec::new(),
        });
        if index > 0 {
            let parent_id = id
                .rsplit_once('.')
                .map(|(p, _)| p.to_string())
                .unwrap_or_default();
            if let Some(slice) = &slice_name {
                let sliced_id = id
                    .strip_suffix(&format!(":{slice}"))
                    .unwrap_or(&id)
                    .to_string();
                if let Some(&sliced) = by_id.get(&sliced_id) {
                    elements[sliced].slices.push(index);
                }
            } else if let Some(parent) = parent_index(&by_id, &parent_id) {
                elements[parent].children.push(index);
            }
        }
        by_id.insert(id, index);
    }
    for sliced in 0..elements.len() {
        for position in 0..elements[sliced].slices.len() {
            let slice = elements[sliced].slices[position];
            elements[slice].slice_values = slice_values(&elements, sliced, slice);
        }
    }
    elements
}

/// What `slice` fixes at each discriminator path of `sliced` (possibly inside a nested slice, as
/// `code.coding:SBPCode.code`); paths where it fixes nothing are left out.
fn slice_values(elements: &[Element], sliced: usize, slice: usize) -> Vec<(String, Vec<Json>)> {
    let mut out = Vec::new();
    for path in &elements[sliced].discriminators {
        let mut candidates = vec![slice];
        if path != "$this" {
            for step in path.split('.') {
                let mut next = Vec::new();
                for &candidate in &candidates {
                    for &child in &elements[candidate].children {
                        if elements[child].name == step {
                            next.push(child);
                            next.extend(&elements[child].slices);
                        }
                    }
                }
                candidates = next;
            }
        }
        let expected: Vec<Json> = candidates
            .iter()
            .filter_map(|&c| {
                elements[c]
                    .value_constraint
                    .as_ref()
                    .map(|(_, v)| v.clone())
            })
            .collect();
        if !expected.is_empty() {
            out.push((path.clone(), expected));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_profiles_are_the_shipped_folder() {
        let folder = ProfileSet::load(Path::new("profiles")).unwrap();
        let built_in = ProfileSet::built_in().unwrap();
        let mut urls: Vec<&String> = folder.profiles.keys().collect();
        urls.sort();
        let mut built_in_urls: Vec<&String> = built_in.profiles.keys().collect();
        built_in_urls.sort();
        assert_eq!(
            built_in_urls, urls,
            "a file in profiles/ is missing from BUILT_IN"
        );
        for (url, profile) in &folder.profiles {
            let ids = |p: &Profile| p.elements.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
            assert_eq!(ids(&built_in.profiles[url]), ids(profile), "{url}");
        }
        let shipped = std::fs::read_dir("profiles")
            .unwrap()
            .flat_map(|d| std::fs::read_dir(d.unwrap().path()).into_iter().flatten())
            .filter(|f| {
                let path = f.as_ref().unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().to_string();
                name.starts_with("StructureDefinition-")
                    || name.starts_with("ValueSet-")
                    || name.starts_with("CodeSystem-")
            })
            .count();
        assert_eq!(
            BUILT_IN.len(),
            shipped,
            "every shipped profile file is built in"
        );
    }

    #[test]
    fn us_core_blood_pressure_snapshot_is_built_from_its_bases() {
        let set = ProfileSet::load(Path::new("profiles")).unwrap();
        let profile =
            &set.profiles["http://hl7.org/fhir/us/core/StructureDefinition/us-core-blood-pressure"];
        let ids: Vec<&str> = profile.elements.iter().map(|e| e.id.as_str()).collect();
        for id in [
            "Observation.component:systolic",
            "Observation.component:systolic.code",
            "Observation.component:systolic.value[x]",
            "Observation.component:systolic.valueQuantity.code",
            "Observation.category:VSCat.coding.system",
            "Observation.status",
        ] {
            assert!(ids.contains(&id), "{id} missing from {ids:?}");
        }
        let component = profile
            .elements
            .iter()
            .find(|e| e.id == "Observation.component")
            .unwrap();
        assert_eq!(component.min, 2);
        assert_eq!(component.slices.len(), 2);
        let unit = profile
            .elements
            .iter()
            .find(|e| e.id == "Observation.component:systolic.valueQuantity.code")
            .unwrap();
        assert_eq!(
            unit.value_constraint,
            Some((true, Json::String("mm[Hg]".into())))
        );
        assert_eq!(
            profile.bases,
            [
                "http://hl7.org/fhir/us/core/StructureDefinition/us-core-vital-signs",
                "http://hl7.org/fhir/StructureDefinition/vitalsigns",
                "http://hl7.org/fhir/StructureDefinition/Observation",
            ]
        );
        // The R4 vital-signs invariants come through the bases.
        assert!(
            profile.elements[0]
                .invariants
                .iter()
                .any(|i| i.key == "vs-2")
        );
    }
}
