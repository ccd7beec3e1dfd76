//! Each kind of bad input the issue lists: none may panic or stop the rest of the drop, and each
//! gets a quarantine record (or, for an unreadable file, a failed-file report) naming the file and
//! the place.

use std::io::Write;

use crate::common::{count, ingest, rows, temp_lake};

const GOOD_PATIENT: &str = r#"{"resourceType":"Patient","id":"good-1","gender":"female"}"#;

struct Quarantined {
    source_uri: String,
    json_path: String,
    rule: String,
    message: String,
    raw_bytes: u64,
    raw_truncated: bool,
}

/// A `drop` folder under `dir` holding one valid Patient, `good.json`, for a bad file to sit beside.
fn drop_with_a_good_patient(dir: &std::path::Path) -> std::path::PathBuf {
    let drop = dir.join("drop");
    std::fs::create_dir_all(&drop).unwrap();
    std::fs::write(drop.join("good.json"), GOOD_PATIENT).unwrap();
    drop
}

/// Ingests a drop holding `name` (with `bytes`) next to a valid Patient; checks the Patient landed
/// and returns what was quarantined.
async fn ingest_beside_good(
    name: &str,
    bytes: &[u8],
) -> (vitalake::ingest::IngestReport, Vec<Quarantined>) {
    let (dir, lake) = temp_lake();
    let drop = drop_with_a_good_patient(dir.path());
    std::fs::write(drop.join(name), bytes).unwrap();
    let report = ingest(&lake, &[drop.to_str().unwrap()]).await;
    assert_eq!(
        count(&lake, "bronze/fhir/Patient").await,
        1,
        "the good file next to {name} must land"
    );
    let rows = rows(
        &lake,
        "silver/quarantine",
        "SELECT source_uri, line, json_path, errors[1]['rule'], errors[1]['message'], raw_bytes, raw_truncated \
         FROM t ORDER BY line",
    )
    .await;
    let quarantined = rows
        .into_iter()
        .map(|r| Quarantined {
            source_uri: r[0].clone(),
            json_path: r[2].clone(), // r[1] is the line, used for ordering
            rule: r[3].clone(),
            message: r[4].clone(),
            raw_bytes: r[5].parse().unwrap(),
            raw_truncated: r[6] == "true",
        })
        .collect();
    (report, quarantined)
}

async fn single_rejection(name: &str, bytes: &[u8], rule: &str, message_part: &str) -> Quarantined {
    let (report, mut q) = ingest_beside_good(name, bytes).await;
    assert_eq!(q.len(), 1, "one quarantined record for {name}");
    let q = q.pop().unwrap();
    assert!(
        q.source_uri.ends_with(&format!("/drop/{name}")),
        "names the file: {}",
        q.source_uri
    );
    assert_eq!(q.rule, rule, "{}", q.message);
    assert!(
        q.message.contains(message_part),
        "message {:?} should mention {message_part:?}",
        q.message
    );
    assert!(report.success());
    q
}

#[tokio::test]
async fn empty_file() {
    single_rejection("empty.json", b"", "json", "empty").await;
}

#[tokio::test]
async fn truncated_json() {
    single_rejection(
        "cut.json",
        br#"{"resourceType":"Patient","id":"x","name":[{"fam"#,
        "json",
        "EOF",
    )
    .await;
}

#[tokio::test]
async fn invalid_utf8() {
    let q = single_rejection(
        "latin1.json",
        b"{\"resourceType\":\"Patient\",\"name\":[{\"family\":\"Jo\xe3o\"}]}",
        "utf8",
        "UTF-8",
    )
    .await;
    assert_eq!(q.json_path, "$");
}

#[tokio::test]
async fn top_level_json_array() {
    single_rejection(
        "array.json",
        format!("[{GOOD_PATIENT}]").as_bytes(),
        "json",
        "array",
    )
    .await;
}

#[tokio::test]
async fn unknown_resource_type() {
    single_rejection(
        "alien.json",
        br#"{"resourceType":"Spaceship","id":"s1"}"#,
        "resourceType",
        "Spaceship",
    )
    .await;
}

#[tokio::test]
async fn no_resource_type() {
    single_rejection(
        "typeless.json",
        br#"{"id":"x","gender":"male"}"#,
        "resourceType",
        "no resourceType",
    )
    .await;
}

#[tokio::test]
async fn bundle_entry_without_resource() {
    // (A `DELETE Type/id` entry is a delete event instead: tests/it/silver.rs.)
    let bundle = r#"{"resourceType":"Bundle","type":"transaction","entry":[
        {"resource":{"resourceType":"Basic","id":"b1","code":{"text":"x"}}},
        {"request":{"method":"GET","url":"Patient/9"}}]}"#;
    let q = single_rejection("tx.json", bundle.as_bytes(), "bundle-entry", "no resource").await;
    assert_eq!(q.json_path, "$.entry[1].resource");
}

#[tokio::test]
async fn thousand_deep_nesting() {
    let nested = r#"{"url":"u","extension":["#.repeat(1000) + &"]}".repeat(1000);
    let text = format!(r#"{{"resourceType":"Patient","extension":[{nested}]}}"#);
    single_rejection("deep.json", text.as_bytes(), "structure", "recursion limit").await;
}

#[tokio::test]
async fn fifty_megabyte_string_value() {
    let text = format!(
        r#"{{"resourceType":"Patient","id":"big","name":[{{"family":"{}"}}]}}"#,
        "A".repeat(50 << 20)
    );
    let q = single_rejection("big.json", text.as_bytes(), "size", "max_resource_bytes").await;
    assert_eq!(q.raw_bytes, text.len() as u64);
    assert!(
        q.raw_truncated,
        "raw text is cut at 1 MiB, the original size kept"
    );
}

#[tokio::test]
async fn duplicate_keys() {
    let q = single_rejection(
        "dup.json",
        br#"{"resourceType":"Patient","id":"d","birthDate":"1970-01-01","birthDate":"1971-01-01"}"#,
        "structure",
        "duplicate key `birthDate`",
    )
    .await;
    assert_eq!(q.json_path, "$");
}

#[tokio::test]
async fn ndjson_with_one_bad_line_among_good_ones() {
    let lines = [
        r#"{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"x"}}"#,
        r#"{"resourceType":"Observation","id":"o2","status":"final","code":{"text":"x"}}"#,
        r#"{"resourceType":"Observation","id":"o3","status":"final","code":{"text":"x"},"valueQuantity":{"value":true}}"#,
        r#"{"resourceType":"Observation","id":"o4","status":"final","code":{"text":"x"}}"#,
    ];
    let (dir, lake) = temp_lake();
    let file = dir.path().join("Observation.ndjson");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let report = ingest(&lake, &[file.to_str().unwrap()]).await;
    let landed = rows(
        &lake,
        "bronze/fhir/Observation",
        "SELECT resource_id, line FROM t ORDER BY line",
    )
    .await;
    assert_eq!(landed, [["o1", "1"], ["o2", "2"], ["o4", "4"]]);
    let q = rows(
        &lake,
        "silver/quarantine",
        "SELECT line, errors[1]['location'] FROM t",
    )
    .await;
    assert_eq!(q, [["3", "Observation.valueQuantity.value"]]);
    assert_eq!(report.stats.quarantined, 1);
}

#[tokio::test]
async fn a_file_that_is_not_json_at_all() {
    single_rejection(
        "README.txt",
        b"Drop delivered by the lab at 06:00.\nCall x123 on problems.\n",
        "json",
        "not JSON",
    )
    .await;
}

/// A dangling symlink stands in for an unreadable file: tests run as root in CI, where permission
/// bits do not stop a read. The file is reported failed (and retried next run); the rest lands.
#[tokio::test]
async fn an_unreadable_file() {
    let (dir, lake) = temp_lake();
    let drop = drop_with_a_good_patient(dir.path());
    std::os::unix::fs::symlink(dir.path().join("gone.json"), drop.join("unreadable.json")).unwrap();
    let report = ingest(&lake, &[drop.to_str().unwrap()]).await;
    assert_eq!(count(&lake, "bronze/fhir/Patient").await, 1);
    assert!(!report.success());
    assert_eq!(report.stats.files_failed.len(), 1);
    let (uri, error) = &report.stats.files_failed[0];
    assert!(
        uri.ends_with("/drop/unreadable.json") && error.contains("No such file"),
        "{uri}: {error}"
    );
    let log = rows(
        &lake,
        "bronze/ingest_log",
        "SELECT status FROM t WHERE source_uri LIKE '%unreadable.json'",
    )
    .await;
    assert_eq!(log, [["failed"]]);
    // Once the file is there, the next run picks it up.
    std::fs::write(
        dir.path().join("gone.json"),
        GOOD_PATIENT.replace("good-1", "late-1"),
    )
    .unwrap();
    let second = ingest(&lake, &[drop.to_str().unwrap()]).await;
    assert!(second.success());
    assert_eq!(count(&lake, "bronze/fhir/Patient").await, 2);
}

#[tokio::test]
async fn a_corrupt_gzip_file() {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    for i in 0..2000 {
        writeln!(
            encoder,
            r#"{{"resourceType":"Basic","id":"z{i}","code":{{"text":"x"}}}}"#
        )
        .unwrap();
    }
    let mut bytes = encoder.finish().unwrap();
    // Cut in the middle, as an interrupted transfer leaves it.
    bytes.truncate(bytes.len() / 2);
    let (report, q) = ingest_beside_good("Basic.ndjson.gz", &bytes).await;
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].rule, "read");
    assert!(
        q[0].message.contains("reading stopped at line"),
        "{}",
        q[0].message
    );
    assert!(
        report.success(),
        "a corrupt file is quarantined, not retried forever"
    );
}

/// `vitalake ingest fhir <drop> --json` into `lake`, as a user runs it: its report and its stderr.
fn ingest_as_user(lake: &std::path::Path, drop: &std::path::Path) -> (serde_json::Value, String) {
    let out = crate::common::on_lake(lake, &["ingest", "fhir", drop.to_str().unwrap(), "--json"]);
    let report = serde_json::from_slice(&out.stdout).unwrap();
    (report, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A UTF-8 byte order mark, which Windows exports carry and RFC 8259 lets a parser ignore: the
/// resources land, and `ingest fhir` as a user runs it names the files in its report.
#[tokio::test]
async fn a_byte_order_mark_is_ignored_with_a_warning() {
    let (dir, _lake) = temp_lake();
    let drop = dir.path().join("drop");
    std::fs::create_dir_all(&drop).unwrap();
    let bom = "\u{feff}";
    std::fs::write(drop.join("one.json"), format!("{bom}{GOOD_PATIENT}")).unwrap();
    let second = GOOD_PATIENT.replace("good-1", "good-2");
    let third = GOOD_PATIENT.replace("good-1", "good-3");
    std::fs::write(
        drop.join("more.ndjson"),
        format!("{bom}{second}\n{third}\n"),
    )
    .unwrap();
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(format!("{bom}{}", GOOD_PATIENT.replace("good-1", "good-4")).as_bytes())
        .unwrap();
    std::fs::write(drop.join("zipped.json.gz"), gzip.finish().unwrap()).unwrap();
    std::fs::write(
        drop.join("plain.json"),
        GOOD_PATIENT.replace("good-1", "good-5"),
    )
    .unwrap();

    let lake_path = dir.path().join("lake");
    let (report, _) = ingest_as_user(&lake_path, &drop);
    assert_eq!(report["bronze_rows"], 5);
    assert_eq!(report["quarantine_rows"], 0);
    let mut marked: Vec<String> = report["files_with_byte_order_mark"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().rsplit('/').next().unwrap().to_string())
        .collect();
    marked.sort();
    assert_eq!(marked, ["more.ndjson", "one.json", "zipped.json.gz"]);
    // The text report says it too.
    let again = dir.path().join("again");
    std::fs::create_dir_all(&again).unwrap();
    let sixth = GOOD_PATIENT.replace("good-1", "good-6");
    std::fs::write(again.join("x.json"), format!("{bom}{sixth}")).unwrap();
    let text_report =
        crate::common::on_lake(&lake_path, &["ingest", "fhir", again.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&text_report.stdout)
            .contains("starts with a UTF-8 byte order mark"),
        "{}",
        String::from_utf8_lossy(&text_report.stdout)
    );
}

/// Input on which the FHIR library panics inside (an empty array beside an unknown element) is
/// quarantined with its reason, and `ingest fhir` as a user runs it prints no crash report.
#[tokio::test]
async fn input_that_panics_the_fhir_library_is_quarantined_without_a_crash_report() {
    let (dir, _lake) = temp_lake();
    let drop = drop_with_a_good_patient(dir.path());
    std::fs::write(
        drop.join("odd.json"),
        r#"{"resourceType":"Patient","id":"odd-1","foo":1,"name":[]}"#,
    )
    .unwrap();

    let (report, stderr) = ingest_as_user(&dir.path().join("lake"), &drop);
    assert_eq!(report["bronze_rows"], 1);
    assert_eq!(report["quarantine_rows"], 1);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
