//! Deterministic synthetic FHIR drops: the same `--seed` always writes the same bytes.
//!
//! Patients come from eight countries ([`people`]); some have later versions with demographic
//! changes (a move, a new phone, a married name). Each patient has blood-pressure panels (LOINC
//! 85354-9, a share with the older 55284-4 that Synthea and older feeds use; components 8480-6 and
//! 8462-4 in UCUM `mm[Hg]`), heart rates (8867-4, `/min`) and MedicationDispenses coded with NDC.
//!
//! Layout of a drop: `bundles/` (one Bundle per patient, rotating through Bundle types), `ndjson/`
//! (Bulk-Data files per resource type, for the other half of the patients), `updates/` (later
//! patient versions as NDJSON) and, with `invalid`, `invalid/` (records that must be quarantined).
//! Every resource appears in exactly one file, so ingesting the drop counts each once.

pub mod people;
pub mod stream;

use std::fmt;
use std::io::Write;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use people::{COUNTRIES, Country, phone, pick, street_line};

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub patients: usize,
    pub seed: u64,
    pub readings_per_patient: usize,
    pub bundles: bool,
    pub ndjson: bool,
    pub invalid: bool,
    pub gzip: bool,
}

/// What was written.
#[derive(Debug, Default, serde::Serialize)]
pub struct GenerateSummary {
    pub files: usize,
    pub resources: usize,
    pub invalid_records: usize,
    pub bytes: u64,
}

impl fmt::Display for GenerateSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "wrote {} files: {} valid resources, {} invalid records, {:.1} MB",
            self.files,
            self.resources,
            self.invalid_records,
            self.bytes as f64 / 1e6
        )
    }
}

/// Start of the generated period; fixed so drops are reproducible.
const EPOCH: &str = "2026-11-02T07:00:00";
const MRN_SYSTEM: &str = "http://hospital.vitalake.example/fhir/sid/mrn";
const LOINC: &str = "http://loinc.org";
const UCUM: &str = "http://unitsofmeasure.org";
const NDC: &str = "http://hl7.org/fhir/sid/ndc";

/// Medicines dispensed: codes in the NDC 5-4-2 package format with FDA-style established names.
/// They are sample data for pipelines, not a drug reference.
const MEDICINES: &[(&str, &str, u32)] = &[
    (
        "0071-0155-23",
        "atorvastatin calcium 10 MG Oral Tablet [Lipitor]",
        90,
    ),
    ("0093-7663-56", "lisinopril 10 MG Oral Tablet", 30),
    ("0378-1805-77", "amlodipine besylate 5 MG Oral Tablet", 30),
    ("0172-5728-60", "hydrochlorothiazide 25 MG Oral Tablet", 30),
    ("0093-1048-01", "metoprolol tartrate 50 MG Oral Tablet", 60),
    (
        "0781-1506-10",
        "metformin hydrochloride 500 MG Oral Tablet",
        60,
    ),
    ("0904-6709-61", "losartan potassium 50 MG Oral Tablet", 30),
];

/// One generated patient and their clinical resources.
struct PatientRecords {
    versions: Vec<Value>,
    clinical: Vec<Value>,
}

/// Writes a drop into `out` (created if missing).
pub fn write_drop(out: &Path, options: &GenerateOptions) -> Result<GenerateSummary, GenerateError> {
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let mut summary = GenerateSummary::default();
    let patients: Vec<PatientRecords> = (0..options.patients)
        .map(|n| patient_records(&mut rng, options, n))
        .collect();
    let (as_bundles, as_ndjson) = match (options.bundles, options.ndjson) {
        (true, true) => patients.split_at(patients.len() / 2),
        (true, false) => patients.split_at(patients.len()),
        _ => patients.split_at(0),
    };

    const BUNDLE_TYPES: [&str; 4] = ["transaction", "collection", "batch", "searchset"];
    for (i, p) in as_bundles.iter().enumerate() {
        let bundle_type = BUNDLE_TYPES[i % BUNDLE_TYPES.len()];
        let resources: Vec<&Value> = std::iter::once(&p.versions[0]).chain(&p.clinical).collect();
        let id = p.versions[0]["id"].as_str().unwrap_or_default();
        let text = serde_json::to_string_pretty(&bundle(bundle_type, &resources)).expect("json");
        write(
            out,
            &format!("bundles/{id}.json"),
            text.as_bytes(),
            false,
            &mut summary,
        )?;
        summary.resources += resources.len();
    }

    let mut by_type: std::collections::BTreeMap<&str, Vec<&Value>> = Default::default();
    for p in as_ndjson {
        by_type.entry("Patient").or_default().push(&p.versions[0]);
        for r in &p.clinical {
            by_type
                .entry(r["resourceType"].as_str().unwrap_or_default())
                .or_default()
                .push(r);
        }
    }
    for (resource_type, resources) in &by_type {
        write(
            out,
            &format!("ndjson/{resource_type}.000.ndjson"),
            &ndjson(resources),
            options.gzip,
            &mut summary,
        )?;
        summary.resources += resources.len();
    }

    let updates: Vec<&Value> = patients
        .iter()
        .flat_map(|p| p.versions.iter().skip(1))
        .collect();
    if !updates.is_empty() {
        write(
            out,
            "updates/Patient-updates.ndjson",
            &ndjson(&updates),
            false,
            &mut summary,
        )?;
        summary.resources += updates.len();
    }
    if options.invalid {
        write_invalid(out, &mut summary)?;
    }
    Ok(summary)
}

fn ndjson(resources: &[&Value]) -> Vec<u8> {
    let mut text = Vec::new();
    for r in resources {
        serde_json::to_writer(&mut text, r).expect("json");
        text.push(b'\n');
    }
    text
}

fn write(
    out: &Path,
    name: &str,
    bytes: &[u8],
    gzip: bool,
    summary: &mut GenerateSummary,
) -> Result<(), GenerateError> {
    let path = out.join(if gzip {
        format!("{name}.gz")
    } else {
        name.to_string()
    });
    let err = |source| GenerateError::Write {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(path.parent().expect("file in a folder")).map_err(err)?;
    let mut file = std::fs::File::create(&path).map_err(err)?;
    if gzip {
        let mut encoder = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
        encoder.write_all(bytes).map_err(err)?;
        file = encoder.finish().map_err(err)?;
    } else {
        file.write_all(bytes).map_err(err)?;
    }
    summary.bytes += file.metadata().map_err(err)?.len();
    summary.files += 1;
    Ok(())
}

fn bundle(bundle_type: &str, resources: &[&Value]) -> Value {
    let entries: Vec<Value> = resources
        .iter()
        .map(|r| {
            let (rt, id) = (
                r["resourceType"].as_str().unwrap_or_default(),
                r["id"].as_str().unwrap_or_default(),
            );
            let mut entry =
                json!({ "fullUrl": format!("urn:uuid:{}", pseudo_uuid(rt, id)), "resource": r });
            match bundle_type {
                "transaction" | "batch" => {
                    entry["request"] = json!({ "method": "PUT", "url": format!("{rt}/{id}") });
                }
                "searchset" => entry["search"] = json!({ "mode": "match" }),
                _ => {}
            }
            entry
        })
        .collect();
    let mut bundle = json!({ "resourceType": "Bundle", "type": bundle_type, "entry": entries });
    if bundle_type == "searchset" {
        bundle["total"] = json!(resources.len());
    }
    bundle
}

/// A stable UUID-shaped string for `fullUrl`s.
fn pseudo_uuid(resource_type: &str, id: &str) -> String {
    use sha2::{Digest, Sha256};
    let h = hex::encode(Sha256::digest(format!("{resource_type}/{id}")));
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// `minutes` after [`EPOCH`] as a FHIR dateTime in the country's offset.
fn timestamp(minutes: i64, offset: &str) -> String {
    let base = chrono::NaiveDateTime::parse_from_str(EPOCH, "%Y-%m-%dT%H:%M:%S").expect("epoch");
    let t = base + chrono::Duration::minutes(minutes);
    format!("{}{offset}", t.format("%Y-%m-%dT%H:%M:%S"))
}

/// `minutes` after [`EPOCH`] as a FHIR instant in UTC.
fn instant(minutes: i64) -> String {
    timestamp(minutes, "Z")
}

fn patient_records(rng: &mut ChaCha8Rng, options: &GenerateOptions, n: usize) -> PatientRecords {
    let country = &COUNTRIES[n % COUNTRIES.len()];
    let id = format!("p{:x}-{n:05}", options.seed);
    let female = rng.random_bool(0.5);
    let given = pick(
        rng,
        if female {
            country.given_female
        } else {
            country.given_male
        },
    )
    .to_string();
    let family = pick(rng, country.family).to_string();
    let birth = format!(
        "{}-{:02}-{:02}",
        rng.random_range(1935..2008),
        rng.random_range(1..13),
        rng.random_range(1..29)
    );
    let mut patient = json!({
        "resourceType": "Patient",
        "id": id,
        "meta": { "versionId": "1", "lastUpdated": instant(-60 * 24 * 30) },
        "identifier": [{
            "use": "usual",
            "type": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR" }] },
            "system": MRN_SYSTEM,
            "value": format!("MRN-{}-{:06}", country.code, 100_000 + n)
        }],
        "active": true,
        "name": [{ "use": "official", "family": family, "given": given.split(' ').collect::<Vec<_>>() }],
        "telecom": [{ "system": "phone", "value": phone(rng, country), "use": "mobile" }],
        "gender": if female { "female" } else { "male" },
        "birthDate": birth,
        "address": [address(rng, country)],
        "managingOrganization": { "reference": "Organization/vitalake-hospital-group" }
    });
    let mut versions = vec![patient.clone()];
    // One patient in five has later versions: a move, a new phone, sometimes a married name.
    if rng.random_bool(0.2) {
        for version in 2..=rng.random_range(2..4) {
            patient["meta"] = json!({ "versionId": version.to_string(), "lastUpdated": instant(60 * 24 * version as i64) });
            patient["address"] = json!([address(rng, country)]);
            patient["telecom"][0]["value"] = json!(phone(rng, country));
            if female && version == 2 && rng.random_bool(0.3) {
                patient["name"][0]["family"] = json!(pick(rng, country.family));
            }
            versions.push(patient.clone());
        }
    }
    let clinical = clinical_records(rng, options, &id, country);
    PatientRecords { versions, clinical }
}

fn address(rng: &mut ChaCha8Rng, country: &Country) -> Value {
    let (city, postal, state) = country.cities[rng.random_range(0..country.cities.len())];
    let mut address = json!({ "use": "home", "line": [street_line(rng, country)], "city": city, "postalCode": postal, "country": country.code });
    if !state.is_empty() {
        address["state"] = json!(state);
    }
    address
}

fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({ "system": system, "code": code, "display": display })
}

fn vital_signs_category() -> Value {
    json!([{ "coding": [coding("http://terminology.hl7.org/CodeSystem/observation-category", "vital-signs", "Vital Signs")] }])
}

fn mmhg(value: i64) -> Value {
    json!({ "value": value, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]" })
}

fn clinical_records(
    rng: &mut ChaCha8Rng,
    options: &GenerateOptions,
    patient: &str,
    country: &Country,
) -> Vec<Value> {
    let mut out = Vec::new();
    let base_systolic = rng.random_range(100..170i64);
    let base_diastolic = (base_systolic * 6 / 10 + rng.random_range(-5..15)).clamp(55, 105);
    let base_pulse = rng.random_range(55..95i64);
    let subject = json!({ "reference": format!("Patient/{patient}") });
    let devices = ["Omron HEM-7361T", "Withings BPM Connect", "A&D UA-651BLE"];
    let device = devices[rng.random_range(0..devices.len())];
    let mut minutes = rng.random_range(0..600i64);
    for k in 0..options.readings_per_patient {
        minutes += rng.random_range(180..1440);
        let effective = timestamp(minutes, country.offset);
        let systolic = base_systolic + rng.random_range(-12..13);
        let diastolic = (base_diastolic + rng.random_range(-8..9)).min(systolic - 15);
        let legacy_panel = rng.random_bool(0.2);
        let (panel, panel_display) = if legacy_panel {
            ("55284-4", "Blood pressure systolic and diastolic")
        } else {
            ("85354-9", "Blood pressure panel with all children optional")
        };
        // Only readings coded with the current panel claim the R4 BP profile, which requires it.
        let meta = if legacy_panel {
            json!({ "versionId": "1", "lastUpdated": instant(minutes + 2) })
        } else {
            json!({ "versionId": "1", "lastUpdated": instant(minutes + 2), "profile": ["http://hl7.org/fhir/StructureDefinition/bp"] })
        };
        out.push(json!({
            "resourceType": "Observation",
            "id": format!("bp-{patient}-{k}"),
            "meta": meta,
            "status": "final",
            "category": vital_signs_category(),
            "code": { "coding": [coding(LOINC, panel, panel_display)], "text": "Blood pressure" },
            "subject": subject,
            "effectiveDateTime": effective,
            "device": { "display": device },
            "component": [
                { "code": { "coding": [coding(LOINC, "8480-6", "Systolic blood pressure")] }, "valueQuantity": mmhg(systolic) },
                { "code": { "coding": [coding(LOINC, "8462-4", "Diastolic blood pressure")] }, "valueQuantity": mmhg(diastolic) }
            ]
        }));
        out.push(json!({
            "resourceType": "Observation",
            "id": format!("hr-{patient}-{k}"),
            "meta": { "versionId": "1", "lastUpdated": instant(minutes + 2), "profile": ["http://hl7.org/fhir/StructureDefinition/heartrate"] },
            "status": "final",
            "category": vital_signs_category(),
            "code": { "coding": [coding(LOINC, "8867-4", "Heart rate")], "text": "Heart rate" },
            "subject": subject,
            "effectiveDateTime": effective,
            "valueQuantity": { "value": base_pulse + rng.random_range(-8..9), "unit": "beats/minute", "system": UCUM, "code": "/min" }
        }));
    }
    for k in 0..rng.random_range(0..3) {
        let (code, name, quantity) = MEDICINES[rng.random_range(0..MEDICINES.len())];
        let handed_over = timestamp(minutes + 60 * (k + 1), country.offset);
        out.push(json!({
            "resourceType": "MedicationDispense",
            "id": format!("md-{patient}-{k}"),
            "meta": { "versionId": "1", "lastUpdated": instant(minutes + 60 * (k + 1) + 5) },
            "status": "completed",
            "medicationCodeableConcept": { "coding": [coding(NDC, code, name)], "text": name },
            "subject": subject,
            "location": { "display": format!("Pharmacy {}", country.code) },
            "quantity": { "value": quantity, "unit": "tablet", "system": UCUM, "code": "{tbl}" },
            "daysSupply": { "value": quantity, "unit": "day", "system": UCUM, "code": "d" },
            "whenHandedOver": handed_over
        }));
    }
    out
}

/// Records a feed really sends now and then, each of which must end in quarantine with its reason.
fn write_invalid(out: &Path, summary: &mut GenerateSummary) -> Result<(), GenerateError> {
    let lines = [
        // A device vendor's own element: unknown in FHIR R4 (rule `structure`).
        r#"{"resourceType":"Observation","id":"bad-1","status":"final","code":{"text":"bp"},"systolic":182}"#,
        // A birth date sent as a number (rule `structure`).
        r#"{"resourceType":"Patient","id":"bad-2","birthDate":19800101}"#,
        // Cut off in transit (rule `json`).
        r#"{"resourceType":"Observation","id":"bad-3","status":"fin"#,
        // No resourceType (rule `resourceType`).
        r#"{"id":"bad-4","status":"final"}"#,
        // Not an R4 resource type (rule `resourceType`).
        r#"{"resourceType":"WearableReading","id":"bad-5"}"#,
        // The same key twice (rule `structure`).
        r#"{"resourceType":"Patient","id":"bad-6","gender":"male","gender":"female"}"#,
    ];
    let mut text = lines.join("\n");
    text.push('\n');
    write(
        out,
        "invalid/feed-errors.ndjson",
        text.as_bytes(),
        false,
        summary,
    )?;
    // A transaction that deletes by a search, which names no resource (rule `bundle-entry`; a
    // delete by id, `Patient/retired-1`, would be a delete event).
    let delete = json!({ "resourceType": "Bundle", "type": "transaction", "entry": [
        { "request": { "method": "DELETE", "url": "Patient?identifier=retired-1" } }
    ]});
    write(
        out,
        "invalid/delete-transaction.json",
        serde_json::to_string_pretty(&delete)
            .expect("json")
            .as_bytes(),
        false,
        summary,
    )?;
    summary.invalid_records += lines.len() + 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(seed: u64) -> GenerateOptions {
        GenerateOptions {
            patients: 16,
            seed,
            readings_per_patient: 3,
            bundles: true,
            ndjson: true,
            invalid: true,
            gzip: false,
        }
    }

    fn read_all(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files.extend(read_all(&path));
            } else {
                files.push((
                    path.strip_prefix(dir).unwrap().display().to_string(),
                    std::fs::read(&path).unwrap(),
                ));
            }
        }
        files.sort();
        files
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let (a, b, c) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        write_drop(a.path(), &options(1)).unwrap();
        write_drop(b.path(), &options(1)).unwrap();
        write_drop(c.path(), &options(2)).unwrap();
        assert_eq!(read_all(a.path()), read_all(b.path()));
        assert_ne!(read_all(a.path()), read_all(c.path()));
    }

    #[test]
    fn every_valid_resource_passes_the_structural_check() {
        let dir = tempfile::tempdir().unwrap();
        let summary = write_drop(
            dir.path(),
            &GenerateOptions {
                invalid: false,
                ..options(3)
            },
        )
        .unwrap();
        let mut decoded = Vec::new();
        for (name, bytes) in read_all(dir.path()) {
            let text = String::from_utf8(bytes).unwrap();
            if name.ends_with(".ndjson") {
                for (i, line) in text.lines().enumerate() {
                    crate::fhir::decode(
                        line,
                        crate::fhir::Location::line(i as u64 + 1),
                        &Default::default(),
                        &mut decoded,
                    );
                }
            } else {
                crate::fhir::decode(&text, Default::default(), &Default::default(), &mut decoded);
            }
        }
        let rejected: Vec<_> = decoded
            .iter()
            .filter(|d| matches!(d, crate::fhir::Decoded::Rejected(_)))
            .collect();
        assert!(rejected.is_empty(), "{rejected:?}");
        assert_eq!(decoded.len(), summary.resources);
    }
}
