//! One JSON text into resources: a single resource, or a Bundle of any type whose
//! `entry[].resource`s are what count (Bundles inside Bundles are opened too).
//!
//! Each resource is parsed twice, on purpose: once into a small [`Head`] that borrows the entries as
//! raw text (so a Bundle's entries are never re-serialized and land in bronze byte for byte), and
//! once by the strict structural check. Every input ends as exactly one [`Decoded`] per resource or
//! per rejected piece, so counts reconcile.

use std::fmt;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::issue::Issue;

use super::structure;

/// Bundles nested deeper than this are rejected rather than opened: real feeds nest one or two levels.
const MAX_BUNDLE_DEPTH: usize = 8;

#[derive(Debug, Clone)]
pub struct DecodeOptions {
    /// Resources (or whole texts) larger than this are rejected with rule `size`.
    pub max_resource_bytes: usize,
    /// Keep each resource's parse ([`ResourceRecord::json`]) from the structural check, for the
    /// checks and views that read it next (ingest and the stream: the silver views read every
    /// resource). With it, a resource of a shape already accepted on this thread skips the typed
    /// read (see `structure::check_and_parse`). Callers that keep it should take each resource
    /// through [`decode_each`], so a Bundle never holds all its entries' parses at once.
    pub keep_parse: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            max_resource_bytes: 16 << 20,
            keep_parse: false,
        }
    }
}

/// Where a record sits inside its source: the NDJSON line, and the path of Bundle entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    /// 1-based line of an NDJSON file or stream.
    pub line: Option<u64>,
    /// Indices of `entry` in each enclosing Bundle, outermost first.
    pub entries: Vec<u32>,
}

impl Location {
    pub fn line(line: u64) -> Self {
        Location {
            line: Some(line),
            entries: Vec::new(),
        }
    }

    fn entry(&self, index: usize) -> Self {
        let mut child = self.clone();
        child.entries.push(index as u32);
        child
    }

    /// The index in the innermost Bundle, if the record came from one.
    pub fn entry_index(&self) -> Option<u32> {
        self.entries.last().copied()
    }

    /// JSONPath of the record inside its text, `$` for the text itself.
    pub fn json_path(&self) -> String {
        let mut path = String::from("$");
        for index in &self.entries {
            path.push_str(&format!(".entry[{index}].resource"));
        }
        path
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) if self.entries.is_empty() => write!(f, "line {line}"),
            Some(line) => write!(f, "line {line} {}", self.json_path()),
            None => f.write_str(&self.json_path()),
        }
    }
}

/// A structurally valid resource with the fields bronze keys on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResourceRecord {
    pub resource_type: String,
    pub id: Option<String>,
    pub version_id: Option<String>,
    /// `meta.lastUpdated` in microseconds since the epoch (UTC).
    pub last_updated: Option<i64>,
    /// The Bundle entry's `fullUrl`, which identifies resources that carry no `id` yet.
    pub full_url: Option<String>,
    pub raw: String,
    pub location: Location,
    /// Warnings found by checks (profile validation): kept with the resource in bronze.
    pub warnings: Vec<Issue>,
    /// `raw` parsed, when the structural check kept it (`keep_parse`) or checks parsed it: the
    /// stream hands it on to the silver views.
    pub json: Option<std::sync::Arc<serde_json::Value>>,
    /// A delete event (a Bundle entry `DELETE Patient/123`), not a resource: `raw` holds the
    /// entry's request. Kept in bronze; the resource leaves silver.
    pub deleted: bool,
}

/// A piece of input that is not a valid resource, with every reason found.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub resource_type: Option<String>,
    pub id: Option<String>,
    pub raw: String,
    pub location: Location,
    pub issues: Vec<Issue>,
}

impl Rejected {
    pub fn new(raw: impl Into<String>, location: Location, issue: Issue) -> Self {
        Rejected {
            resource_type: None,
            id: None,
            raw: raw.into(),
            location,
            issues: vec![issue],
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    Resource(ResourceRecord),
    Rejected(Rejected),
}

/// The fields read before the full check. Entries stay raw text borrowed from the input.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "resourceType")]
    resource_type: Option<String>,
    id: Option<String>,
    meta: Option<MetaHead>,
    #[serde(borrow)]
    entry: Option<Vec<EntryHead<'a>>>,
}

#[derive(Deserialize)]
struct MetaHead {
    #[serde(rename = "versionId")]
    version_id: Option<String>,
    #[serde(rename = "lastUpdated")]
    last_updated: Option<String>,
}

#[derive(Deserialize)]
struct EntryHead<'a> {
    #[serde(rename = "fullUrl")]
    full_url: Option<String>,
    #[serde(borrow)]
    resource: Option<&'a RawValue>,
    request: Option<EntryRequest>,
}

#[derive(Deserialize)]
struct EntryRequest {
    method: Option<String>,
    url: Option<String>,
}

/// The head of a resource that is not a Bundle, with its parse, from one strict read of `text`
/// (otherwise a first pass reads the head and a second the resource: 3% of an ingest's time).
/// `None`, and the general path then reads `text` and names what is wrong, for a Bundle, for text
/// that does not parse strictly, and for head fields of types [`Head`] does not read.
fn read_in_one_pass(text: &str) -> Option<(Head<'static>, serde_json::Value)> {
    // A Bundle's entries are read from the text, not from a parse of the whole Bundle.
    if text.contains("\"Bundle\"") {
        return None;
    }
    let parsed = structure::parse_strict(text)?;
    let object = parsed.as_object()?;
    let text_of = |value: Option<&serde_json::Value>| match value {
        None | Some(serde_json::Value::Null) => Some(None),
        Some(serde_json::Value::String(text)) => Some(Some(text.clone())),
        Some(_) => None,
    };
    let resource_type = text_of(object.get("resourceType"))?;
    if resource_type.as_deref() == Some("Bundle") {
        // Named with escapes, which the look for its name above does not see.
        return None;
    }
    let id = text_of(object.get("id"))?;
    let meta = match object.get("meta") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Object(meta)) => Some(MetaHead {
            version_id: text_of(meta.get("versionId"))?,
            last_updated: text_of(meta.get("lastUpdated"))?,
        }),
        Some(_) => return None,
    };
    let head = Head {
        resource_type,
        id,
        meta,
        entry: None,
    };
    Some((head, parsed))
}

/// A Bundle entry that deletes a resource (`request.method` DELETE, `request.url` `Patient/123`,
/// relative or absolute): the delete event, or why it cannot be applied.
fn delete_event(full_url: Option<String>, url: &str, location: Location, index: usize) -> Decoded {
    let reject = |message: String| {
        Decoded::Rejected(Rejected::new(
            "",
            location.clone(),
            Issue::error(
                "bundle-entry",
                format!("Bundle.entry[{index}].request"),
                message,
            ),
        ))
    };
    if url.contains('?') {
        return reject(format!(
            "a conditional DELETE ({url}) names no resource id: not applied; delete by id (Type/id)"
        ));
    }
    let path = url.split("/_history/").next().unwrap_or(url);
    let mut segments = path.rsplit('/');
    let (Some(id), Some(resource_type)) = (segments.next(), segments.next()) else {
        return reject(format!("DELETE {url}: expected Type/id"));
    };
    if id.is_empty() || !structure::is_resource_type(resource_type) {
        return reject(format!(
            "DELETE {url}: expected Type/id with a FHIR R4 resource type"
        ));
    }
    let raw = serde_json::json!({"fullUrl": full_url, "request": {"method": "DELETE", "url": url}});
    Decoded::Resource(ResourceRecord {
        resource_type: resource_type.to_string(),
        id: Some(id.to_string()),
        version_id: None,
        last_updated: None,
        full_url,
        raw: raw.to_string(),
        location,
        warnings: Vec::new(),
        json: None,
        deleted: true,
    })
}

/// Decodes `text`, found at `location`, appending one [`Decoded`] per resource or rejected piece.
pub fn decode(text: &str, location: Location, options: &DecodeOptions, out: &mut Vec<Decoded>) {
    decode_each(text, location, options, &mut |decoded| out.push(decoded))
}

/// [`decode`], handing each [`Decoded`] to `each` as soon as it is made: a caller that checks and
/// flattens each resource there frees its parse before the next entry of a large Bundle is read,
/// so a Bundle never holds the parses of all its entries at once.
pub fn decode_each(
    text: &str,
    location: Location,
    options: &DecodeOptions,
    each: &mut dyn FnMut(Decoded),
) {
    decode_at_depth(text, location, None, options, 0, each)
}

fn decode_at_depth(
    text: &str,
    location: Location,
    full_url: Option<String>,
    options: &DecodeOptions,
    depth: usize,
    out: &mut dyn FnMut(Decoded),
) {
    let reject = |issue: Issue| Decoded::Rejected(Rejected::new(text, location.clone(), issue));
    match text.trim_start().as_bytes().first() {
        None => {
            return out(reject(Issue::error(
                "json",
                "$",
                "empty input: no JSON at all",
            )));
        }
        Some(b'{') => {}
        Some(b'[') => {
            return out(reject(Issue::error(
                "json",
                "$",
                "a top-level JSON array is not a FHIR resource; expected an object with resourceType \
                 (for many resources use a Bundle or NDJSON, one per line)",
            )));
        }
        Some(_) => {
            return out(reject(Issue::error(
                "json",
                "$",
                match serde_json::from_str::<serde::de::IgnoredAny>(text) {
                    Err(e) => format!("not JSON: {e}"),
                    Ok(_) => "a JSON value that is not an object is not a FHIR resource".into(),
                },
            )));
        }
    }
    let one_pass = (options.keep_parse && text.len() <= options.max_resource_bytes)
        .then(|| read_in_one_pass(text))
        .flatten();
    let (head, parsed) = match one_pass {
        Some((head, parsed)) => (head, Some(parsed)),
        None => match serde_json::from_str::<Head>(text) {
            Ok(head) => (head, None),
            Err(err) if err.is_data() => {
                // Valid JSON of the wrong shape (e.g. a numeric id): the structural check names it best.
                let resource_type = resource_type_of(text).unwrap_or_else(|| "Resource".into());
                let issue = structure::check(text, &resource_type)
                    .err()
                    .unwrap_or_else(|| Issue::error("structure", resource_type, err.to_string()));
                return out(reject(issue));
            }
            Err(err) => {
                return out(reject(Issue::error(
                    "json",
                    "$",
                    format!("invalid JSON: {err}"),
                )));
            }
        },
    };
    let Some(resource_type) = head.resource_type else {
        return out(reject(Issue::error(
            "resourceType",
            "$",
            "no resourceType: this JSON object is not a FHIR resource",
        )));
    };
    // A Bundle without entries (`"entry": []`, or none: an empty search result) is itself the
    // record, checked and landed like any resource, so nothing that arrives goes unaccounted.
    if resource_type == "Bundle"
        && let Some(entries) = head.entry.filter(|entries| !entries.is_empty())
    {
        if depth >= MAX_BUNDLE_DEPTH {
            return out(reject(Issue::error(
                "bundle",
                "Bundle",
                format!("Bundles nested more than {MAX_BUNDLE_DEPTH} deep are not opened"),
            )));
        }
        for (index, entry) in entries.into_iter().enumerate() {
            let entry_location = location.entry(index);
            let delete_url = entry
                .request
                .as_ref()
                .filter(|r| r.method.as_deref() == Some("DELETE"))
                .and_then(|r| r.url.as_deref());
            match (entry.resource, delete_url) {
                (Some(resource), _) => decode_at_depth(
                    resource.get(),
                    entry_location,
                    entry.full_url,
                    options,
                    depth + 1,
                    out,
                ),
                (None, Some(url)) => out(delete_event(entry.full_url, url, entry_location, index)),
                (None, None) => out(Decoded::Rejected(Rejected::new(
                    "",
                    entry_location,
                    Issue::error(
                        "bundle-entry",
                        format!("Bundle.entry[{index}]"),
                        "Bundle entry has no resource; nothing to ingest \
                         (a request or response without a resource carries no data)",
                    ),
                ))),
            }
        }
        return;
    }
    let mut issues = Vec::new();
    let mut json = None;
    // The limit applies to resources, not to the Bundles that carry them.
    if text.len() > options.max_resource_bytes {
        issues.push(Issue::error(
            "size",
            resource_type.as_str(),
            format!(
                "{} bytes is larger than the limit of {} bytes (ingest.max_resource_bytes)",
                text.len(),
                options.max_resource_bytes
            ),
        ));
    } else if options.keep_parse {
        let checked = match parsed {
            Some(parsed) => structure::check_parsed(text, &resource_type, parsed),
            None => structure::check_and_parse(text, &resource_type),
        };
        match checked {
            Ok(parsed) => json = Some(std::sync::Arc::new(parsed)),
            Err(issue) => issues.push(issue),
        }
    } else if let Err(issue) = structure::check(text, &resource_type) {
        issues.push(issue);
    }
    let (version_id, last_updated) = match head.meta {
        Some(meta) => (meta.version_id, meta.last_updated),
        None => (None, None),
    };
    let last_updated = match last_updated.as_deref().map(parse_instant) {
        Some(Ok(micros)) => Some(micros),
        Some(Err(message)) => {
            issues.push(Issue::error(
                "structure",
                format!("{resource_type}.meta.lastUpdated"),
                message,
            ));
            None
        }
        None => None,
    };
    if issues.is_empty() {
        out(Decoded::Resource(ResourceRecord {
            resource_type,
            id: head.id,
            version_id,
            last_updated,
            full_url,
            raw: text.to_string(),
            location,
            warnings: Vec::new(),
            json,
            deleted: false,
        }));
    } else {
        out(Decoded::Rejected(Rejected {
            resource_type: Some(resource_type),
            id: head.id,
            raw: text.to_string(),
            location,
            issues,
        }));
    }
}

/// A FHIR `instant` (always with seconds and a time zone) in microseconds since the epoch.
fn parse_instant(value: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| t.timestamp_micros())
        .map_err(|e| format!("malformed instant {value:?}: {e}"))
}

/// `resourceType` of a JSON object whose other fields may not fit [`Head`].
fn resource_type_of(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct TypeOnly {
        #[serde(rename = "resourceType")]
        resource_type: Option<String>,
    }
    serde_json::from_str::<TypeOnly>(text).ok()?.resource_type
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> Vec<Decoded> {
        let mut out = Vec::new();
        decode(
            text,
            Location::default(),
            &DecodeOptions::default(),
            &mut out,
        );
        out
    }

    fn rejected(text: &str) -> Rejected {
        match run(text).pop().unwrap() {
            Decoded::Rejected(r) => r,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn single_resource_keeps_its_identity() {
        let out = run(
            r#"{"resourceType":"Patient","id":"p1","meta":{"versionId":"3","lastUpdated":"2024-01-02T03:04:05Z"}}"#,
        );
        let Decoded::Resource(r) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(
            (r.resource_type.as_str(), r.id.as_deref()),
            ("Patient", Some("p1"))
        );
        assert_eq!(r.version_id.as_deref(), Some("3"));
        assert_eq!(r.last_updated, Some(1_704_164_645_000_000));
        assert_eq!(r.location.json_path(), "$");
    }

    #[test]
    fn a_bundle_without_entries_is_itself_the_record() {
        for text in [
            r#"{"resourceType":"Bundle","id":"b1","type":"searchset","total":0,"entry":[]}"#,
            r#"{"resourceType":"Bundle","id":"b1","type":"searchset","total":0}"#,
        ] {
            let out = run(text);
            assert_eq!(out.len(), 1, "{text}: {out:?}");
            let Decoded::Resource(r) = &out[0] else {
                panic!("{out:?}")
            };
            assert_eq!(r.resource_type, "Bundle");
        }
        // Broken (no `type`, an unknown element): rejected with its reasons, not dropped.
        let out = run(r#"{"resourceType":"Bundle","pe":"Bundle","entry":[]}"#);
        let [Decoded::Rejected(rejected)] = &out[..] else {
            panic!("{out:?}")
        };
        assert!(!rejected.issues.is_empty());
    }

    #[test]
    fn entries_without_resource_or_with_a_conditional_delete_are_reported() {
        let text = r#"{"resourceType":"Bundle","type":"transaction","entry":[
            {"request":{"method":"GET","url":"Patient/x"}},
            {"request":{"method":"DELETE","url":"Patient?identifier=123"}},
            {"request":{"method":"DELETE","url":"Spaceship/1"}},
            {"request":{"method":"DELETE","url":"http://x.org/fhir/Observation/o1/_history/2"}}]}"#;
        let out = run(text);
        let rules: Vec<String> = out
            .iter()
            .map(|d| match d {
                Decoded::Rejected(r) => r.issues[0].message.clone(),
                Decoded::Resource(r) => {
                    format!("delete {}/{}", r.resource_type, r.id.as_deref().unwrap())
                }
            })
            .collect();
        assert!(rules[0].contains("has no resource"), "{rules:?}");
        assert!(rules[1].contains("conditional DELETE"), "{rules:?}");
        assert!(rules[2].contains("FHIR R4 resource type"), "{rules:?}");
        assert_eq!(rules[3], "delete Observation/o1");
    }

    #[test]
    fn bundles_inside_bundles_are_opened_and_delete_entries_are_delete_events() {
        let text = r#"{"resourceType":"Bundle","type":"collection","entry":[
            {"fullUrl":"urn:uuid:1","resource":{"resourceType":"Patient","id":"a"}},
            {"request":{"method":"DELETE","url":"Patient/x"}},
            {"resource":{"resourceType":"Bundle","type":"batch","entry":[
                {"resource":{"resourceType":"Observation","status":"final","code":{"text":"x"}}}]}}]}"#;
        let out = run(text);
        assert_eq!(out.len(), 3);
        let Decoded::Resource(patient) = &out[0] else {
            panic!()
        };
        assert_eq!(patient.full_url.as_deref(), Some("urn:uuid:1"));
        assert_eq!(patient.raw, r#"{"resourceType":"Patient","id":"a"}"#);
        let Decoded::Resource(deleted) = &out[1] else {
            panic!()
        };
        assert!(deleted.deleted);
        assert_eq!(
            (deleted.resource_type.as_str(), deleted.id.as_deref()),
            ("Patient", Some("x"))
        );
        let Decoded::Resource(obs) = &out[2] else {
            panic!()
        };
        assert_eq!(
            obs.location.json_path(),
            "$.entry[2].resource.entry[0].resource"
        );
        assert_eq!(obs.location.entry_index(), Some(0));
    }

    #[test]
    fn bad_inputs_get_rules() {
        assert_eq!(rejected("").issues[0].rule, "json");
        assert_eq!(rejected("{\"resourceType\":\"Pat").issues[0].rule, "json");
        assert!(rejected("[{}]").issues[0].message.contains("array"));
        assert_eq!(rejected("hello, world").issues[0].rule, "json");
        assert_eq!(rejected(r#"{"id":"x"}"#).issues[0].rule, "resourceType");
        let unknown = rejected(r#"{"resourceType":"Spaceship","id":"x"}"#);
        assert_eq!(unknown.issues[0].rule, "resourceType");
        assert_eq!(unknown.resource_type.as_deref(), Some("Spaceship"));
        let numeric_id = rejected(r#"{"resourceType":"Patient","id":7}"#);
        assert_eq!(numeric_id.issues[0].location, "Patient.id");
        let bad_instant =
            rejected(r#"{"resourceType":"Patient","meta":{"lastUpdated":"yesterday"}}"#);
        assert_eq!(bad_instant.issues[0].location, "Patient.meta.lastUpdated");
    }

    #[test]
    fn keeping_the_parse_decodes_as_the_two_pass_read_does() {
        let kept = DecodeOptions {
            keep_parse: true,
            ..DecodeOptions::default()
        };
        let decode_with = |text: &str, options: &DecodeOptions| {
            let mut out = Vec::new();
            decode(text, Location::line(1), options, &mut out);
            out
        };
        let texts = [
            r#"{"resourceType":"Patient","id":"p1","meta":{"versionId":"3","lastUpdated":"2024-01-02T03:04:05Z"}}"#,
            r#"{"resourceType":"Patient","id":7}"#,
            r#"{"resourceType":"Patient","meta":{"lastUpdated":"yesterday"}}"#,
            r#"{"resourceType":"Patient","meta":"old"}"#,
            r#"{"resourceType":"Patient","id":"p1","id":"p2"}"#,
            r#"{"resourceType":"Spaceship","id":"x"}"#,
            r#"{"id":"x"}"#,
            r#"{"resourceType":"Patient","gender":"female","gender":"male"}"#,
            r#"{"resourceType":"Provenance","id":"v","target":[{"type":"Bundle","reference":"Bundle/b"}]}"#,
            r#"{"resourceType":"Bund\u006ce","type":"collection","entry":[{"resource":{"resourceType":"Patient","id":"a"}},{"resource":{"resourceType":"Patient","id":"b"}}]}"#,
        ];
        for text in texts {
            let two_pass = decode_with(text, &DecodeOptions::default());
            let mut one_pass = decode_with(text, &kept);
            for decoded in &mut one_pass {
                if let Decoded::Resource(record) = decoded {
                    assert!(record.json.is_some(), "the parse is kept: {text}");
                    record.json = None;
                }
            }
            assert_eq!(one_pass, two_pass, "{text}");
        }
        assert_eq!(
            decode_with(texts[9], &kept).len(),
            2,
            "a Bundle named with escapes is opened"
        );
    }

    #[test]
    fn deep_nesting_is_rejected_not_a_crash() {
        let nested = r#"{"url":"u","extension":["#.repeat(1000) + &"]}".repeat(1000);
        let text = format!(r#"{{"resourceType":"Patient","extension":[{nested}]}}"#);
        let r = rejected(&text);
        assert!(
            r.issues[0].message.contains("recursion limit"),
            "{:?}",
            r.issues
        );
    }

    #[test]
    fn oversized_resource_is_rejected_with_size() {
        let mut out = Vec::new();
        let text = format!(r#"{{"resourceType":"Patient","id":"{}"}}"#, "x".repeat(100));
        decode(
            &text,
            Location::default(),
            &DecodeOptions {
                max_resource_bytes: 50,
                ..DecodeOptions::default()
            },
            &mut out,
        );
        let Decoded::Rejected(r) = &out[0] else {
            panic!()
        };
        assert_eq!(r.issues[0].rule, "size");
    }
}
