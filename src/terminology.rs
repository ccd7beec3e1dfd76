//! Code tables in the lake: `vitalake ingest terminology` loads FHIR CodeSystems and ConceptMaps and
//! plain CSV code tables (`system,code,display[,parent]`) into `silver/terminology/concepts` and
//! `silver/terminology/maps`, which gold SQL joins (a condition's ICD-10-CM chapter, a SNOMED CT to
//! ICD-10-CM map where one is loaded, a display for a code that came without one).
//!
//! A file is loaded whole: its rows replace those an earlier load of the same file (its `source`,
//! the CodeSystem or ConceptMap URL, or the CSV's file name) wrote, so loading again never doubles.

use std::path::Path;
use std::sync::{Arc, LazyLock};

use deltalake::arrow::array::{ArrayRef, RecordBatch, StringArray};
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::Serialize;
use serde_json::Value as Json;

use crate::lake::{AppendBuilder, Lake, LakeError};

pub use crate::lake::layout::{CONCEPTS_TABLE, MAPS_TABLE};

fn text(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}

pub static CONCEPTS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        text("system", false),
        text("code", false),
        text("display", true),
        text("parent", true),
        text("source", false),
    ]))
});

pub static MAPS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        text("source_system", false),
        text("source_code", false),
        text("target_system", false),
        text("target_code", false),
        text("target_display", true),
        text("equivalence", true),
        text("source", false),
    ]))
});

#[derive(Debug, thiserror::Error)]
pub enum TerminologyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Format { path: String, reason: String },
    /// Boxed: Delta's errors are large, and the others small.
    #[error(transparent)]
    Lake(Box<LakeError>),
}

impl From<LakeError> for TerminologyError {
    fn from(error: LakeError) -> Self {
        TerminologyError::Lake(Box::new(error))
    }
}

/// One code of a code system.
#[derive(Debug, Clone, PartialEq)]
pub struct Concept {
    pub system: String,
    pub code: String,
    pub display: Option<String>,
    pub parent: Option<String>,
}

/// One mapping of a ConceptMap.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    pub source_system: String,
    pub source_code: String,
    pub target_system: String,
    pub target_code: String,
    pub target_display: Option<String>,
    pub equivalence: Option<String>,
}

/// What one file held.
#[derive(Debug, Default)]
pub struct CodeTable {
    /// The CodeSystem or ConceptMap URL, or the CSV's file name: which earlier rows it replaces.
    pub source: String,
    pub concepts: Vec<Concept>,
    pub maps: Vec<Mapping>,
}

/// Reads a CodeSystem or ConceptMap (JSON) or a CSV code table.
pub fn read(path: &Path) -> Result<CodeTable, TerminologyError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| TerminologyError::Read {
        path: shown.clone(),
        source,
    })?;
    let bad = |reason: String| TerminologyError::Format {
        path: shown.clone(),
        reason,
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.to_ascii_lowercase().ends_with(".csv") {
        return read_csv(&text, name).map_err(bad);
    }
    let json: Json = serde_json::from_str(text.trim_start_matches('\u{feff}'))
        .map_err(|e| bad(format!("not JSON: {e}")))?;
    let url = |kind: &str| {
        json["url"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| bad(format!("a {kind} needs its url")))
    };
    match json["resourceType"].as_str() {
        Some("CodeSystem") => {
            let system = url("CodeSystem")?;
            let mut concepts = Vec::new();
            code_system_concepts(&system, &json["concept"], None, &mut concepts);
            Ok(CodeTable {
                source: system,
                concepts,
                maps: Vec::new(),
            })
        }
        Some("ConceptMap") => Ok(CodeTable {
            source: url("ConceptMap")?,
            concepts: Vec::new(),
            maps: concept_map(&json),
        }),
        other => Err(bad(format!(
            "expected a CodeSystem, a ConceptMap or a .csv code table, found {}",
            other.unwrap_or("no resourceType")
        ))),
    }
}

/// A CodeSystem's concepts, nested ones with their parent's code.
fn code_system_concepts(system: &str, list: &Json, parent: Option<&str>, out: &mut Vec<Concept>) {
    for concept in list.as_array().into_iter().flatten() {
        let Some(code) = concept["code"].as_str() else {
            continue;
        };
        out.push(Concept {
            system: system.to_string(),
            code: code.to_string(),
            display: concept["display"].as_str().map(String::from),
            parent: parent.map(String::from),
        });
        code_system_concepts(system, &concept["concept"], Some(code), out);
    }
}

/// A ConceptMap's mappings (R4: `group.element.target` with `equivalence`).
fn concept_map(json: &Json) -> Vec<Mapping> {
    let mut out = Vec::new();
    for group in json["group"].as_array().into_iter().flatten() {
        let (Some(source), Some(target)) = (group["source"].as_str(), group["target"].as_str())
        else {
            continue;
        };
        for element in group["element"].as_array().into_iter().flatten() {
            let Some(code) = element["code"].as_str() else {
                continue;
            };
            for mapped in element["target"].as_array().into_iter().flatten() {
                let Some(target_code) = mapped["code"].as_str() else {
                    continue;
                };
                out.push(Mapping {
                    source_system: source.to_string(),
                    source_code: code.to_string(),
                    target_system: target.to_string(),
                    target_code: target_code.to_string(),
                    target_display: mapped["display"].as_str().map(String::from),
                    equivalence: mapped["equivalence"].as_str().map(String::from),
                });
            }
        }
    }
    out
}

/// `system,code,display[,parent]` with that header; fields may be quoted (RFC 4180).
fn read_csv(text: &str, source: String) -> Result<CodeTable, String> {
    let mut rows = csv_rows(text.trim_start_matches('\u{feff}'))?.into_iter();
    let header = rows.next().unwrap_or_default();
    let header: Vec<&str> = header.iter().map(|h| h.trim()).collect();
    if header.len() < 3 || header[..3] != ["system", "code", "display"] {
        return Err(format!(
            "the first line must be the header system,code,display[,parent], not {}",
            header.join(",")
        ));
    }
    let mut concepts = Vec::new();
    for (n, row) in rows.enumerate() {
        if row.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        let field = |i: usize| row.get(i).map(|f| f.trim()).filter(|f| !f.is_empty());
        let (Some(system), Some(code)) = (field(0), field(1)) else {
            return Err(format!("line {}: a row needs a system and a code", n + 2));
        };
        concepts.push(Concept {
            system: system.to_string(),
            code: code.to_string(),
            display: field(2).map(String::from),
            parent: field(3).map(String::from),
        });
    }
    Ok(CodeTable {
        source,
        concepts,
        maps: Vec::new(),
    })
}

/// The records of a CSV text: fields split at commas, `"..."` quoting with `""` for a quote.
fn csv_rows(text: &str) -> Result<Vec<Vec<String>>, String> {
    let mut rows = Vec::new();
    let (mut row, mut field) = (Vec::new(), String::new());
    let (mut quoted, mut chars) = (false, text.chars().peekable());
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            ('"', true) => quoted = false,
            ('"', false) if field.is_empty() => quoted = true,
            (',', false) => row.push(std::mem::take(&mut field)),
            ('\n', false) => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            ('\r', false) => {}
            (c, _) => field.push(c),
        }
    }
    if quoted {
        return Err("a quoted field is not closed".into());
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    Ok(rows)
}

/// What `ingest terminology` loaded.
#[derive(Debug, Default, Serialize)]
pub struct TerminologyReport {
    /// Per file: its source, concepts and mappings.
    pub files: Vec<(String, String, u64, u64)>,
}

impl std::fmt::Display for TerminologyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "ingest terminology: {} files", self.files.len())?;
        for (path, source, concepts, maps) in &self.files {
            writeln!(
                f,
                "  {path}  ({source}): {concepts} concepts, {maps} mappings"
            )?;
        }
        Ok(())
    }
}

/// Loads `paths` into the terminology tables, each file replacing what it loaded before.
pub async fn load(lake: &Lake, paths: &[&Path]) -> Result<TerminologyReport, TerminologyError> {
    let mut report = TerminologyReport::default();
    for path in paths {
        let table = read(path)?;
        let replace = format!("source = '{}'", table.source.replace('\'', "''"));
        let strings =
            |values: Vec<Option<&str>>| -> ArrayRef { Arc::new(StringArray::from(values)) };
        let concepts = RecordBatch::try_new(
            CONCEPTS_SCHEMA.clone(),
            vec![
                strings(
                    table
                        .concepts
                        .iter()
                        .map(|c| Some(c.system.as_str()))
                        .collect(),
                ),
                strings(
                    table
                        .concepts
                        .iter()
                        .map(|c| Some(c.code.as_str()))
                        .collect(),
                ),
                strings(
                    table
                        .concepts
                        .iter()
                        .map(|c| c.display.as_deref())
                        .collect(),
                ),
                strings(table.concepts.iter().map(|c| c.parent.as_deref()).collect()),
                strings(
                    table
                        .concepts
                        .iter()
                        .map(|_| Some(table.source.as_str()))
                        .collect(),
                ),
            ],
        )
        .expect("concept columns match the schema");
        let maps = RecordBatch::try_new(
            MAPS_SCHEMA.clone(),
            vec![
                strings(
                    table
                        .maps
                        .iter()
                        .map(|m| Some(m.source_system.as_str()))
                        .collect(),
                ),
                strings(
                    table
                        .maps
                        .iter()
                        .map(|m| Some(m.source_code.as_str()))
                        .collect(),
                ),
                strings(
                    table
                        .maps
                        .iter()
                        .map(|m| Some(m.target_system.as_str()))
                        .collect(),
                ),
                strings(
                    table
                        .maps
                        .iter()
                        .map(|m| Some(m.target_code.as_str()))
                        .collect(),
                ),
                strings(
                    table
                        .maps
                        .iter()
                        .map(|m| m.target_display.as_deref())
                        .collect(),
                ),
                strings(
                    table
                        .maps
                        .iter()
                        .map(|m| m.equivalence.as_deref())
                        .collect(),
                ),
                strings(
                    table
                        .maps
                        .iter()
                        .map(|_| Some(table.source.as_str()))
                        .collect(),
                ),
            ],
        )
        .expect("map columns match the schema");
        for (name, batch) in [(CONCEPTS_TABLE, concepts), (MAPS_TABLE, maps)] {
            let append = match lake.existing_table(name).await? {
                // What this file loaded before is replaced in the same commit.
                Some(table) => {
                    AppendBuilder::new(table, name, vec![batch]).replacing(replace.clone())
                }
                None if batch.num_rows() == 0 => continue,
                None => AppendBuilder::new(lake.table(name).await?, name, vec![batch]),
            };
            append
                .with_metadata("vitalake.operation", "ingest terminology")
                .execute()
                .await?;
        }
        tracing::info!(
            concepts = table.concepts.len(),
            maps = table.maps.len(),
            "code table loaded"
        );
        report.files.push((
            path.display().to_string(),
            table.source,
            table.concepts.len() as u64,
            table.maps.len() as u64,
        ));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_with_quotes_and_a_bom() {
        let text = "\u{feff}system,code,display,parent\nhttp://x,A00-B99,\"Infectious, parasitic\",\nhttp://x,A00,\"Cholera \"\"classic\"\"\",A00-B99\n";
        let table = read_csv(text, "t.csv".into()).unwrap();
        assert_eq!(table.concepts.len(), 2);
        assert_eq!(
            table.concepts[0].display.as_deref(),
            Some("Infectious, parasitic")
        );
        assert_eq!(table.concepts[0].parent, None);
        assert_eq!(
            table.concepts[1].display.as_deref(),
            Some("Cholera \"classic\"")
        );
        assert_eq!(table.concepts[1].parent.as_deref(), Some("A00-B99"));
        assert!(read_csv("code,display\nx,y\n", "t.csv".into()).is_err());
    }

    #[test]
    fn code_systems_nest_and_concept_maps_flatten() {
        let system = serde_json::json!({"resourceType": "CodeSystem", "url": "http://s",
            "concept": [{"code": "a", "display": "A", "concept": [{"code": "a1"}]}]});
        let mut concepts = Vec::new();
        code_system_concepts("http://s", &system["concept"], None, &mut concepts);
        assert_eq!(concepts[1].parent.as_deref(), Some("a"));
        let map = serde_json::json!({"resourceType": "ConceptMap", "url": "http://m",
            "group": [{"source": "http://snomed.info/sct", "target": "http://hl7.org/fhir/sid/icd-10-cm",
              "element": [{"code": "44054006", "target": [{"code": "E11.9", "equivalence": "equivalent"}]}]}]});
        let maps = concept_map(&map);
        assert_eq!(maps[0].target_code, "E11.9");
        assert_eq!(maps[0].equivalence.as_deref(), Some("equivalent"));
    }
}
