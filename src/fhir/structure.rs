//! The strict structural check of one resource against the FHIR R4 model.
//!
//! `fhirbolt` deserializes into the generated R4 structs in strict mode: unknown elements, wrong
//! JSON types (a string where a boolean belongs), malformed decimals and integers, duplicate keys
//! and unknown resource types are errors. It checks no cardinality, bindings or invariants: that is
//! profile validation's job.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashSet;

use fhirbolt::model::r4::{Resource, resources};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::issue::Issue;

use super::decimals;
use super::location::path_at;

/// Checks `raw`, one resource's JSON, returning the first structural error as an [`Issue`] whose
/// location is a FHIRPath into the resource.
///
/// `fhirbolt` offers two paths and each has a gap, so the verdict combines them: the catch-all
/// `Resource` enum is authoritative but buffers the input first (slow, no error position,
/// duplicate keys silently merged); the per-type structs are fast, report positions and precise
/// messages, but reject every JSON number in a `decimal`. So: duplicate keys by our own scan; a
/// resource the typed path accepts once the numbers of its decimals are quoted (`decimals`) is
/// valid; otherwise the verdict from the enum, and the message and location from the typed path
/// when its error is not that decimal artefact.
pub fn check(raw: &str, resource_type: &str) -> Result<(), Issue> {
    check_reading::<NoDuplicateKeys>(raw, resource_type, |_, _| None).map(|_| ())
}

/// [`check`], keeping the parse: the resource as a `serde_json` value, read in the same pass
/// that looks for duplicate keys (so one pass fewer for callers that need the value anyway).
///
/// A resource of a shape the typed path accepted before on this thread (see
/// [`push_resource_shape`]) is not read again: a stream's readings come in a handful of shapes, and
/// the typed read was most of the check's time.
pub fn check_and_parse(raw: &str, resource_type: &str) -> Result<serde_json::Value, Issue> {
    check_reading(raw, resource_type, strict_shape).map(|StrictJson(json)| json)
}

/// `raw` read as [`check_and_parse`] reads it, with no check yet: `None` when it is not JSON or
/// repeats a key (the check then says where). [`check_parsed`] finishes the check.
pub fn parse_strict(raw: &str) -> Option<serde_json::Value> {
    serde_json::from_str::<StrictJson>(raw)
        .ok()
        .map(|StrictJson(json)| json)
}

/// [`check_and_parse`] of `parsed`, what [`parse_strict`] read from `raw`: a caller that needed
/// the parse before it knew the resource type does not parse again.
pub fn check_parsed(
    raw: &str,
    resource_type: &str,
    parsed: serde_json::Value,
) -> Result<serde_json::Value, Issue> {
    known_resource_type(resource_type)?;
    finish_check(raw, resource_type, StrictJson(parsed), strict_shape).map(|StrictJson(json)| json)
}

/// The shape [`finish_check`] remembers a strictly read resource by.
fn strict_shape(StrictJson(json): &StrictJson, shape: &mut Vec<u8>) -> Option<()> {
    push_resource_shape(json, shape)
}

/// Past this many bytes of shapes on a thread, new ones are checked without being remembered
/// (extensions can vary without end).
const MAX_ACCEPTED_SHAPE_BYTES: usize = 8 << 20;

/// Shapes the typed path accepted, per thread, so no lock is shared.
#[derive(Default)]
struct AcceptedShapes {
    shapes: HashSet<Vec<u8>>,
    bytes: usize,
}

thread_local! {
    static ACCEPTED_SHAPES: RefCell<AcceptedShapes> = RefCell::default();
}

/// The check, with the duplicate-key pass reading `raw` into a `T`; `shape` writes the shape of
/// that `T`, or gives `None` when it has none worth remembering.
fn check_reading<T: de::DeserializeOwned>(
    raw: &str,
    resource_type: &str,
    shape: impl FnOnce(&T, &mut Vec<u8>) -> Option<()>,
) -> Result<T, Issue> {
    known_resource_type(resource_type)?;
    match serde_json::from_str::<T>(raw) {
        Ok(parsed) => finish_check(raw, resource_type, parsed, shape),
        Err(err) => Err(located(raw, resource_type, &err)),
    }
}

fn known_resource_type(resource_type: &str) -> Result<(), Issue> {
    if is_resource_type(resource_type) {
        Ok(())
    } else {
        Err(Issue::error(
            "resourceType",
            resource_type,
            format!("unknown resourceType {resource_type:?}: not a FHIR R4 resource type"),
        ))
    }
}

/// The check of `raw` once the duplicate-key pass read it into `parsed`.
fn finish_check<T>(
    raw: &str,
    resource_type: &str,
    parsed: T,
    shape: impl FnOnce(&T, &mut Vec<u8>) -> Option<()>,
) -> Result<T, Issue> {
    let mut key = Vec::new();
    let key = shape(&parsed, &mut key).map(|()| key);
    if let Some(key) = &key
        && ACCEPTED_SHAPES.with(|accepted| accepted.borrow().shapes.contains(key))
    {
        return Ok(parsed);
    }
    let quoted = decimals::quote_decimals(raw, resource_type, |number, string| {
        is_decimal(number, string, resource_type)
    });
    let quoted_verdict = check_typed(&quoted, resource_type);
    if let Some(Ok(())) = quoted_verdict {
        if let Some(key) = key {
            ACCEPTED_SHAPES.with(|accepted| {
                let mut accepted = accepted.borrow_mut();
                if accepted.bytes + key.len() <= MAX_ACCEPTED_SHAPE_BYTES {
                    accepted.bytes += key.len();
                    accepted.shapes.insert(key);
                }
            });
        }
        return Ok(parsed);
    }
    // `fhirbolt`'s enum path panics on some invalid input (an empty array beside an unknown
    // element: an `unwrap` in its element deserializer); the typed path's verdict stands then.
    let verdict = match quiet_catch_unwind(|| fhirbolt::json::from_str::<Resource>(raw, None)) {
        Ok(Ok(_)) => return Ok(parsed),
        Ok(Err(verdict)) => verdict,
        Err(_) => {
            return Err(match quoted_verdict {
                Some(Err(err)) => located(&quoted, resource_type, &err),
                _ => Issue::error("structure", resource_type, "not a valid FHIR R4 resource"),
            });
        }
    };
    match check_typed(raw, resource_type) {
        Some(Err(err))
            if !is_decimal_artefact(&err)
                || strip_position(&err.to_string()) == strip_position(&verdict.to_string()) =>
        {
            Err(located(raw, resource_type, &err))
        }
        _ => Err(Issue::error(
            "structure",
            unknown_field_location(raw, resource_type, &verdict),
            strip_position(&verdict.to_string()),
        )),
    }
}

/// Writes what the typed path's verdict on the decimals-quoted text depends on, and nothing else,
/// so two resources of one shape get one verdict: each object's keys in order, the JSON kind of
/// each value, the text of each `resourceType` (it picks the struct a contained resource is read
/// into), and a class per number. Strings are one kind whatever they hold: `fhirbolt` keeps dates,
/// codes and decimals as text. A number is quoted when it sits in a decimal element and otherwise
/// read as an `i32` or `u32`, so its class is what those reads and the quoting see: a fraction or
/// exponent (finite), a non-negative or a negative integer within `i32`. `None` for any other
/// number (`-0`, integers beyond `i32`), whose resource is then checked in full every time.
fn push_resource_shape(value: &serde_json::Value, out: &mut Vec<u8>) -> Option<()> {
    use serde_json::Value;
    let push_text = |out: &mut Vec<u8>, text: &str| {
        out.extend_from_slice(&(text.len() as u32).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
    };
    match value {
        Value::Null => out.push(b'n'),
        Value::Bool(_) => out.push(b'b'),
        Value::String(_) => out.push(b's'),
        Value::Number(number) => out.push(number_class(number.as_str())?),
        Value::Array(items) => {
            out.push(b'[');
            for item in items {
                push_resource_shape(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(object) => {
            out.push(b'{');
            for (key, value) in object {
                push_text(out, key);
                match value {
                    Value::String(name) if key == "resourceType" => {
                        out.push(b'r');
                        push_text(out, name);
                    }
                    _ => push_resource_shape(value, out)?,
                }
            }
            out.push(b'}');
        }
    }
    Some(())
}

/// A JSON number's class for [`push_resource_shape`]: `f` (quoted in a decimal), `p` (0 to
/// `i32::MAX`), `m` (negative `i32`).
fn number_class(text: &str) -> Option<u8> {
    if text.contains(['.', 'e', 'E']) {
        return decimals::is_quotable(text).then_some(b'f');
    }
    match text.parse::<i32>().ok()? {
        value if value < 0 => Some(b'm'),
        _ if text.starts_with('-') => None,
        _ => Some(b'p'),
    }
}

/// Whether a place holds a decimal, from two probes with only that place filled: the catch-all
/// path takes a number there and the typed path a string. A probe lacks the resource's required
/// elements, so a complaint about a missing one is no complaint about the place. A probe into a
/// contained resource lacks that resource's `resourceType`, which the catch-all path refuses: such
/// numbers stay as they are, and the typed path reads contained resources through the catch-all
/// path anyway.
fn is_decimal(number_probe: &str, string_probe: &str, resource_type: &str) -> bool {
    let fits = |error: Option<serde_json::Error>| {
        error.is_none_or(|e| e.to_string().starts_with("missing field"))
    };
    fits(fhirbolt::json::from_str::<Resource>(number_probe, None).err())
        && fits(check_typed(string_probe, resource_type).and_then(Result::err))
}

fn located(raw: &str, resource_type: &str, err: &serde_json::Error) -> Issue {
    let location = path_at(raw, err.line(), err.column(), resource_type);
    Issue::error("structure", location, describe(err))
}

/// The typed path's complaint about a number where its decimal wants a string.
fn is_decimal_artefact(err: &serde_json::Error) -> bool {
    let message = err.to_string();
    (message.starts_with("invalid type: integer")
        || message.starts_with("invalid type: number")
        || message.starts_with("invalid type: floating point"))
        && message.contains("expected a string")
}

/// For "unknown field `x`" from the buffered path: where key `x` first appears.
fn unknown_field_location(raw: &str, resource_type: &str, err: &serde_json::Error) -> String {
    let message = err.to_string();
    let field = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next());
    let Some(offset) = field.and_then(|f| raw.find(&format!("\"{f}\""))) else {
        return resource_type.to_string();
    };
    let line = raw[..offset].matches('\n').count() + 1;
    let column = offset - raw[..offset].rfind('\n').map_or(0, |i| i + 1) + 2;
    path_at(raw, line, column, resource_type)
}

/// Walks any JSON value and fails on the first object with a repeated key; `serde_json` keeps the
/// position and enforces its nesting limit on the way.
struct NoDuplicateKeys;

impl<'de> Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NoDuplicateKeysVisitor)
    }
}

struct NoDuplicateKeysVisitor;

impl<'de> Visitor<'de> for NoDuplicateKeysVisitor {
    type Value = NoDuplicateKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NoDuplicateKeys, A::Error> {
        let mut seen: Vec<Cow<'de, str>> = Vec::new();
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if seen.contains(&key) {
                return Err(de::Error::custom(format!("duplicate key `{key}`")));
            }
            seen.push(key);
            map.next_value::<NoDuplicateKeys>()?;
        }
        Ok(NoDuplicateKeys)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NoDuplicateKeys, A::Error> {
        while seq.next_element::<NoDuplicateKeys>()?.is_some() {}
        Ok(NoDuplicateKeys)
    }

    fn visit_bool<E>(self, _: bool) -> Result<NoDuplicateKeys, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_i64<E>(self, _: i64) -> Result<NoDuplicateKeys, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_u64<E>(self, _: u64) -> Result<NoDuplicateKeys, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_f64<E>(self, _: f64) -> Result<NoDuplicateKeys, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_str<E>(self, _: &str) -> Result<NoDuplicateKeys, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_unit<E>(self) -> Result<NoDuplicateKeys, E> {
        Ok(NoDuplicateKeys)
    }
}

/// Any JSON value as a `serde_json::Value`, failing on the first object with a repeated key (which
/// `serde_json`'s own `Value` keeps the last of), at that key's position.
struct StrictJson(serde_json::Value);

impl<'de> Deserialize<'de> for StrictJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(StrictJsonVisitor)
            .map(StrictJson)
    }
}

struct StrictJsonVisitor;

/// The key `serde_json` wraps a number's text in under `arbitrary_precision`.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

impl<'de> Visitor<'de> for StrictJsonVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            // `serde_json`'s `arbitrary_precision` (on in this build) hands a number over as a map
            // of one private key to its text, which `Number` keeps as written (`120.50`).
            if key == NUMBER_TOKEN && object.is_empty() {
                let text: String = map.next_value()?;
                let number: serde_json::Number = text.parse().map_err(de::Error::custom)?;
                return Ok(serde_json::Value::Number(number));
            }
            match object.entry(key) {
                serde_json::map::Entry::Occupied(seen) => {
                    return Err(de::Error::custom(format!("duplicate key `{}`", seen.key())));
                }
                serde_json::map::Entry::Vacant(slot) => {
                    slot.insert(map.next_value::<StrictJson>()?.0);
                }
            }
        }
        Ok(serde_json::Value::Object(object))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(StrictJson(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(serde_json::Value::Array(items))
    }

    fn visit_bool<E>(self, value: bool) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Bool(value))
    }
    fn visit_i64<E>(self, value: i64) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Number(value.into()))
    }
    fn visit_u64<E>(self, value: u64) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Number(value.into()))
    }
    fn visit_f64<E>(self, value: f64) -> Result<Self::Value, E> {
        Ok(serde_json::Number::from_f64(value).map_or(serde_json::Value::Null, Into::into))
    }
    fn visit_str<E>(self, value: &str) -> Result<Self::Value, E> {
        Ok(serde_json::Value::String(value.to_string()))
    }
    fn visit_string<E>(self, value: String) -> Result<Self::Value, E> {
        Ok(serde_json::Value::String(value))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
}

macro_rules! typed_check {
    ($($name:ident)*;) => {
        /// Whether `name` is a FHIR R4 resource type.
        pub fn is_resource_type(name: &str) -> bool {
            matches!(name, $(stringify!($name))|*)
        }

        /// `None` for an unknown type; otherwise the strict typed deserialization's outcome.
        fn check_typed(raw: &str, resource_type: &str) -> Option<Result<(), serde_json::Error>> {
            match resource_type {
                $(stringify!($name) => Some(
                    fhirbolt::json::from_str::<resources::$name>(raw, None).map(|_| ())
                ),)*
                _ => None,
            }
        }
    };
}

typed_check! {
        Account ActivityDefinition AdverseEvent AllergyIntolerance Appointment AppointmentResponse
        AuditEvent Basic Binary BiologicallyDerivedProduct BodyStructure Bundle
        CapabilityStatement CarePlan CareTeam CatalogEntry ChargeItem ChargeItemDefinition
        Claim ClaimResponse ClinicalImpression CodeSystem Communication CommunicationRequest
        CompartmentDefinition Composition ConceptMap Condition Consent Contract
        Coverage CoverageEligibilityRequest CoverageEligibilityResponse DetectedIssue Device DeviceDefinition
        DeviceMetric DeviceRequest DeviceUseStatement DiagnosticReport DocumentManifest DocumentReference
        EffectEvidenceSynthesis Encounter Endpoint EnrollmentRequest EnrollmentResponse EpisodeOfCare
        EventDefinition Evidence EvidenceVariable ExampleScenario ExplanationOfBenefit FamilyMemberHistory
        Flag Goal GraphDefinition Group GuidanceResponse HealthcareService
        ImagingStudy Immunization ImmunizationEvaluation ImmunizationRecommendation ImplementationGuide InsurancePlan
        Invoice Library Linkage List Location Measure
        MeasureReport Media Medication MedicationAdministration MedicationDispense MedicationKnowledge
        MedicationRequest MedicationStatement MedicinalProduct MedicinalProductAuthorization MedicinalProductContraindication MedicinalProductIndication
        MedicinalProductIngredient MedicinalProductInteraction MedicinalProductManufactured MedicinalProductPackaged MedicinalProductPharmaceutical MedicinalProductUndesirableEffect
        MessageDefinition MessageHeader MolecularSequence NamingSystem NutritionOrder Observation
        ObservationDefinition OperationDefinition OperationOutcome Organization OrganizationAffiliation Parameters
        Patient PaymentNotice PaymentReconciliation Person PlanDefinition Practitioner
        PractitionerRole Procedure Provenance Questionnaire QuestionnaireResponse RelatedPerson
        RequestGroup ResearchDefinition ResearchElementDefinition ResearchStudy ResearchSubject RiskAssessment
        RiskEvidenceSynthesis Schedule SearchParameter ServiceRequest Slot Specimen
        SpecimenDefinition StructureDefinition StructureMap Subscription Substance SubstanceNucleicAcid
        SubstancePolymer SubstanceProtein SubstanceReferenceInformation SubstanceSourceMaterial SubstanceSpecification SupplyDelivery
        SupplyRequest Task TerminologyCapabilities TestReport TestScript ValueSet
        VerificationResult VisionPrescription;
}

/// `serde_json`'s message without the long "expected one of …" list (the location already says
/// where) and with the position in words.
fn describe(err: &serde_json::Error) -> String {
    format!(
        "{} (line {}, column {})",
        strip_position(&err.to_string()),
        err.line(),
        err.column()
    )
}

fn strip_position(message: &str) -> String {
    let message = message.split(" at line ").next().unwrap_or(message);
    message
        .split(", expected one of")
        .next()
        .unwrap_or(message)
        .to_string()
}

/// `catch_unwind` without the panic's report on stderr: the panic is expected (see its caller),
/// its record goes to quarantine with a reason, and a user ingesting a drop should not see a
/// crash report for each such record.
///
/// The process's panic hook is wrapped once; it stays silent only on a thread inside this call,
/// so every other panic is still reported as before.
fn quiet_catch_unwind<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> std::thread::Result<T> {
    use std::cell::Cell;
    use std::sync::Once;
    thread_local! {
        static EXPECTING_PANIC: Cell<bool> = const { Cell::new(false) };
    }
    static WRAP_HOOK: Once = Once::new();
    WRAP_HOOK.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !EXPECTING_PANIC.with(Cell::get) {
                report(info);
            }
        }));
    });
    EXPECTING_PANIC.with(|expecting| expecting.set(true));
    let result = std::panic::catch_unwind(f);
    EXPECTING_PANIC.with(|expecting| expecting.set(false));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Input on which `fhirbolt`'s enum path panics is rejected with the typed path's reason.
    #[test]
    fn an_empty_array_beside_an_unknown_element_is_rejected_not_a_crash() {
        let issue =
            check(r#"{"resourceType":"Patient","foo":1,"name":[]}"#, "Patient").unwrap_err();
        assert!(issue.message.contains("foo"), "{issue:?}");
    }

    #[test]
    fn accepts_a_valid_observation() {
        let raw = r#"{"resourceType":"Observation","status":"final","code":{"text":"bp"},
            "component":[{"code":{"text":"sys"},"valueQuantity":{"value":120,"unit":"mm[Hg]"}}]}"#;
        check(raw, "Observation").unwrap();
    }

    #[test]
    fn unknown_element_is_located() {
        let raw = r#"{"resourceType":"Patient","name":[{"family":"X","nickname":"Y"}]}"#;
        let issue = check(raw, "Patient").unwrap_err();
        assert_eq!(issue.rule, "structure");
        assert_eq!(issue.location, "Patient.name[0].nickname");
        assert!(
            issue.message.contains("unknown field `nickname`"),
            "{}",
            issue.message
        );
        assert!(
            !issue.message.contains("expected one of"),
            "{}",
            issue.message
        );
    }

    #[test]
    fn wrong_json_type_is_rejected() {
        let raw = r#"{"resourceType":"Patient","active":"yes"}"#;
        let issue = check(raw, "Patient").unwrap_err();
        assert_eq!(issue.location, "Patient.active");
    }

    #[test]
    fn unknown_resource_type_is_its_own_rule() {
        let issue = check(r#"{"resourceType":"Spaceship"}"#, "Spaceship").unwrap_err();
        assert_eq!(issue.rule, "resourceType");
        assert!(is_resource_type("MedicationDispense") && !is_resource_type("Spaceship"));
    }

    #[test]
    fn numbers_are_held_to_their_element_type() {
        check(
            r#"{"resourceType":"Patient","multipleBirthInteger":2}"#,
            "Patient",
        )
        .unwrap();
        let observation = |value: &str| {
            format!(
                r#"{{"resourceType":"Observation","status":"final","code":{{"text":"x"}},
                "valueQuantity":{{"value":{value}}},"component":[{{"code":{{"text":"y"}},
                "valueQuantity":{{"value":80}}}}]}}"#
            )
        };
        check(&observation("1.50"), "Observation").unwrap();
        check(&observation("1e2"), "Observation").unwrap();
        let number_string = r#"{"resourceType":"Patient","identifier":[{"value":7}]}"#;
        let issue = check(number_string, "Patient").unwrap_err();
        assert_eq!(issue.location, "Patient.identifier[0].value");
        // Inside a contained resource too, whose type the decimal probes cannot know.
        let contained = |inner: &str| {
            format!(
                r#"{{"resourceType":"Observation","status":"final","code":{{"text":"x"}},"contained":[{inner}]}}"#
            )
        };
        let patient = r#"{"resourceType":"Patient","id":"p","identifier":[{"value":7}]}"#;
        check(&contained(patient), "Observation").unwrap_err();
        let reading = r#"{"resourceType":"Observation","id":"o","status":"final","code":{"text":"y"},"valueQuantity":{"value":1.5}}"#;
        check(&contained(reading), "Observation").unwrap();
    }

    #[test]
    fn the_fast_path_gets_decimals_quoted_and_nothing_else() {
        let quote = |raw: &str, resource_type: &str| {
            decimals::quote_decimals(raw, resource_type, |number, string| {
                is_decimal(number, string, resource_type)
            })
            .into_owned()
        };
        let reading = r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"component":[{"code":{"text":"y"},"valueQuantity":{"value":120.5}}]}"#;
        assert_eq!(
            quote(reading, "Observation"),
            reading.replace("120.5", "\"120.5\"")
        );
        let patient =
            r#"{"resourceType":"Patient","multipleBirthInteger":2,"identifier":[{"value":7}]}"#;
        assert_eq!(quote(patient, "Patient"), patient);
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        let raw = r#"{"resourceType":"Patient","gender":"male","name":[{"given":["a"]}],"gender":"female"}"#;
        let parsed = check_and_parse(raw, "Patient").unwrap_err();
        let issue = check(raw, "Patient").unwrap_err();
        assert_eq!(parsed, issue, "both passes judge alike");
        assert!(
            issue.message.contains("duplicate key `gender`"),
            "{}",
            issue.message
        );
        assert_eq!(issue.location, "Patient.gender");
    }

    #[test]
    fn a_remembered_shape_does_not_let_a_wrong_value_through() {
        let accepted = |raw: &str, resource_type: &str| {
            let first = check_and_parse(raw, resource_type).is_ok();
            let again = check_and_parse(raw, resource_type).is_ok();
            assert_eq!(first, again, "{raw}");
            assert_eq!(first, check(raw, resource_type).is_ok(), "{raw}");
            first
        };
        // `photo.size` is an unsignedInt, `multipleBirthInteger` an integer.
        let patient = |size: &str, birth: &str| {
            format!(
                r#"{{"resourceType":"Patient","photo":[{{"size":{size}}}],"multipleBirthInteger":{birth}}}"#
            )
        };
        assert!(accepted(&patient("5", "2"), "Patient"));
        assert!(accepted(&patient("7", "-2"), "Patient"));
        assert!(!accepted(&patient("-5", "2"), "Patient"));
        assert!(!accepted(&patient("1.5", "2"), "Patient"));
        assert!(!accepted(&patient("5", "2.5"), "Patient"));
        accepted(&patient("5", "-0"), "Patient"); // never remembered: the same verdict each time
        assert!(!accepted(&patient("5", "3000000000"), "Patient"));
        // A decimal takes any number; the contained resource's type decides what it may hold.
        let reading = |value: &str, contained: &str| {
            format!(
                r#"{{"resourceType":"Observation","status":"final","code":{{"text":"x"}},"valueQuantity":{{"value":{value}}},"contained":[{{"resourceType":"{contained}","id":"c","status":"active"}}]}}"#
            )
        };
        assert!(accepted(&reading("120", "Device"), "Observation"));
        assert!(accepted(&reading("1.5e2", "Device"), "Observation"));
        assert!(!accepted(&reading("120", "Patient"), "Observation"));
        // An unknown key is not taken for a known one of the same length.
        let named = |given: &str| {
            format!(r#"{{"resourceType":"Patient","name":[{{"given":["a"],{given}:"b"}}]}}"#)
        };
        assert!(accepted(&named(r#""family""#), "Patient"));
        assert!(!accepted(&named(r#""familY""#), "Patient"));
    }

    #[test]
    fn the_kept_parse_is_serde_json_s() {
        let raw = r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":120.50,"unit":"mmHg"},"component":[],"issued":"2024-01-01T00:00:00Z","extension":[{"url":"u","valueInteger":-3},{"url":"v","valueBoolean":true}]}"#;
        let parsed = check_and_parse(raw, "Observation").unwrap();
        assert_eq!(
            parsed,
            serde_json::from_str::<serde_json::Value>(raw).unwrap()
        );
        let keys: Vec<&String> = parsed.as_object().unwrap().keys().collect();
        assert_eq!(
            keys[..3],
            ["resourceType", "status", "code"],
            "key order kept"
        );
    }
}
