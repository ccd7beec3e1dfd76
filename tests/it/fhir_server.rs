//! `vitalake ingest fhir-server` against the Bulk Data server of `bulk_server.rs`, run as a user
//! runs it (the binary), on Synthea material from `../shared/fhir/synthea`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use vitalake::lake::Lake;

use crate::bulk_server::{Behaviour, BulkServer, Content};
use crate::common::{count, rows, shared_fhir, vitalake};

/// Synthea resources as a Bulk Data server exports them: the Bulk Data patients, plus every
/// resource of two Synthea bundles, one NDJSON file per type.
fn synthea_export() -> Vec<(String, String)> {
    let mut by_type: BTreeMap<String, String> = BTreeMap::new();
    let patients =
        std::fs::read_to_string(shared_fhir("synthea/bulk10-Patient.000.ndjson")).unwrap();
    by_type.insert("Patient".into(), patients);
    let dir = shared_fhir("synthea/smart-generated-sample-data-R4");
    let mut bundles: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    bundles.sort();
    for bundle in &bundles[..2] {
        let bundle: Value =
            serde_json::from_str(&std::fs::read_to_string(bundle).unwrap()).unwrap();
        for entry in bundle["entry"].as_array().unwrap() {
            let resource = &entry["resource"];
            let text = by_type
                .entry(resource["resourceType"].as_str().unwrap().to_string())
                .or_default();
            text.push_str(&resource.to_string());
            text.push('\n');
        }
    }
    by_type.into_iter().collect()
}

/// Resources per type in `files`, counted from the NDJSON lines themselves.
fn lines_by_type(files: &[(String, String)]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for (resource_type, text) in files {
        *counts.entry(resource_type.clone()).or_default() +=
            text.lines().filter(|l| !l.trim().is_empty()).count() as u64;
    }
    counts
}

fn full_export_only(files: Vec<(String, String)>) -> Content {
    Box::new(move |since, _| {
        if since.is_none() {
            files.clone()
        } else {
            Vec::new()
        }
    })
}

/// `vitalake --lake LAKE ingest fhir-server BASE ARGS...`, off the test's runtime so the server
/// keeps answering.
async fn export(lake: &Path, base: &str, args: &[&str], env: &[(&str, String)]) -> Output {
    let mut command = vitalake();
    command
        .arg("--lake")
        .arg(lake)
        .args(["ingest", "fhir-server", base])
        .args(args)
        .env("VITALAKE_FHIR_BACKOFF_MS", "50");
    for (name, value) in env {
        command.env(name, value);
    }
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn report(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "the export failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn open(lake: &Path) -> Lake {
    Lake::open(lake.to_str().unwrap()).unwrap()
}

async fn bronze_counts(lake: &Lake, types: impl Iterator<Item = &String>) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for resource_type in types {
        counts.insert(
            resource_type.clone(),
            count(lake, &format!("bronze/fhir/{resource_type}")).await,
        );
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_lands_everything_once_and_the_next_asks_only_for_changes() {
    let files = synthea_export();
    let expected = lines_by_type(&files);
    let mut changed: Value = serde_json::from_str(
        files
            .iter()
            .find(|(t, _)| t == "Patient")
            .unwrap()
            .1
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let changed_id = changed["id"].as_str().unwrap().to_string();
    changed["meta"]["versionId"] = "2".into();
    changed["meta"]["lastUpdated"] = "2026-12-06T09:30:00Z".into();
    changed["gender"] = "other".into();
    let changed_line = format!("{changed}\n");
    let first_export = files.clone();
    let server = BulkServer::start(
        Behaviour {
            polls_before_done: 2,
            retry_after: 1,
            error_file: Some(
                [
                    outcome_line("not-found", "Observation/x"),
                    outcome_line("processing", "Claim/y"),
                ]
                .concat(),
            ),
            ..Behaviour::default()
        },
        Box::new(move |since, _| match since {
            None => first_export.clone(),
            Some(_) => vec![("Patient".into(), changed_line.clone())],
        }),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let lake_path = dir.path().join("lake");

    let first = report(&export(&lake_path, &server.base, &["--json"], &[]).await);
    let kick_off = &server.kick_offs()[0];
    assert_eq!(kick_off.headers["prefer"], "respond-async");
    assert_eq!(kick_off.headers["accept"], "application/fhir+json");
    assert_eq!(
        kick_off.param("_outputFormat"),
        Some("application/fhir+ndjson")
    );
    assert_eq!(
        kick_off.param("_since"),
        None,
        "the first export asks for everything"
    );
    let polls = server
        .seen()
        .iter()
        .filter(|s| s.path.contains("/status/") && s.method == "GET")
        .count();
    assert_eq!(polls, 3, "two in-progress answers, then the manifest");
    assert!(
        server.job_deleted(0),
        "the job is deleted once its files landed"
    );

    // Every exported resource is in bronze, counted by type from the files themselves.
    let lake = open(&lake_path);
    let mut with_outcomes = expected.clone();
    with_outcomes.insert("OperationOutcome".into(), 2);
    assert_eq!(
        bronze_counts(&lake, with_outcomes.keys()).await,
        with_outcomes
    );
    assert_eq!(first["ingest"]["files_read"], expected.len() as u64 + 1);
    assert_eq!(first["ingest"]["quarantine_rows"], 0);
    assert_eq!(first["output_files"], expected.len() as u64);
    assert_eq!(first["error_files"], 1);
    assert_eq!(first["server_issues"]["error not-found"], 1);
    assert_eq!(first["server_issues"]["error processing"], 1);
    assert_eq!(first["transaction_time"], server.transaction_time(0));
    assert_eq!(
        count(&lake, "silver/fhir/patient").await,
        expected["Patient"]
    );
    // The source is the server's file URL.
    let patient_file = files.iter().position(|(t, _)| t == "Patient").unwrap();
    let sources = rows(
        &lake,
        "bronze/fhir/Patient",
        "SELECT DISTINCT source_uri FROM t",
    )
    .await;
    assert_eq!(
        sources,
        vec![vec![format!("{}/files/0-{patient_file}", server.base)]]
    );

    // The next run asks `_since` the first export's transactionTime, exactly as the server wrote it.
    let second = report(&export(&lake_path, &server.base, &["--json"], &[]).await);
    assert_eq!(
        server.kick_offs()[1].param("_since"),
        Some(server.transaction_time(0).as_str())
    );
    assert_eq!(second["since"], server.transaction_time(0));
    assert_eq!(second["ingest"]["bronze_rows"], 1);
    assert_eq!(
        count(&lake, "bronze/fhir/Patient").await,
        expected["Patient"] + 1
    );
    assert_eq!(
        count(&lake, "silver/fhir/patient").await,
        expected["Patient"]
    );
    let gender = rows(
        &lake,
        "silver/fhir/patient",
        &format!("SELECT gender, version_id FROM t WHERE id = '{changed_id}'"),
    )
    .await;
    assert_eq!(gender, vec![vec!["other".to_string(), "2".to_string()]]);

    // `--full` asks for everything again; files already in the lake are not landed twice.
    let full = report(&export(&lake_path, &server.base, &["--json", "--full"], &[]).await);
    assert_eq!(server.kick_offs()[2].param("_since"), None);
    assert_eq!(full["ingest"]["bronze_rows"], 0);
    assert_eq!(
        count(&lake, "bronze/fhir/Patient").await,
        expected["Patient"] + 1
    );

    // The lake's record of the exports, as a user queries it.
    let events = rows(
        &lake,
        "bronze/fhir_exports",
        "SELECT event FROM t ORDER BY at",
    )
    .await;
    let events: Vec<&str> = events.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        events,
        [
            "accepted",
            "downloaded",
            "complete",
            "accepted",
            "downloaded",
            "complete",
            "accepted",
            "downloaded",
            "complete"
        ]
    );
}

fn outcome_line(code: &str, about: &str) -> String {
    format!(
        "{}\n",
        serde_json::json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": format!("{about} could not be exported")}]})
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_while_waiting_or_downloading_resumes_the_same_job() {
    let files = synthea_export();
    let expected = lines_by_type(&files);
    let server = BulkServer::start(
        Behaviour {
            polls_before_done: 1_000,
            retry_after: 1,
            ..Behaviour::default()
        },
        full_export_only(files),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let lake_path = dir.path().join("lake");

    // Killed while the server is still preparing the export.
    let mut child = spawn_export(&lake_path, &server.base);
    wait_until(|| server.seen().iter().any(|s| s.path.contains("/status/"))).await;
    child.kill().unwrap();
    child.wait().unwrap();

    // Killed in the middle of a download.
    server.behave(|b| {
        b.polls_before_done = 0;
        b.stall_downloads = true;
    });
    let mut child = spawn_export(&lake_path, &server.base);
    wait_until(|| server.transfers_started() > 0).await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        server.kick_offs().len(),
        1,
        "the killed run resumed the job, not a new one"
    );

    server.behave(|b| b.stall_downloads = false);
    let done = report(&export(&lake_path, &server.base, &["--json"], &[]).await);
    assert_eq!(done["resumed"], true);
    assert_eq!(server.kick_offs().len(), 1);
    let lake = open(&lake_path);
    assert_eq!(
        bronze_counts(&lake, expected.keys()).await,
        expected,
        "every resource once"
    );
    assert!(server.job_deleted(0));

    // Nothing is pending any more: the next run starts a new, incremental job.
    report(&export(&lake_path, &server.base, &["--json"], &[]).await);
    assert_eq!(server.kick_offs().len(), 2);
    assert_eq!(
        server.kick_offs()[1].param("_since"),
        Some(server.transaction_time(0).as_str())
    );
}

/// A run stopped after its files landed but before it recorded the export complete, whose job the
/// server has since forgotten: the next run records it complete and asks `_since` its
/// transactionTime, not the one of the export before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_job_whose_files_landed_counts_as_complete() {
    use vitalake::ingest::fhir_server::jobs::{ExportEvent, record};
    let server = BulkServer::start(Behaviour::default(), full_export_only(synthea_export())).await;
    let dir = tempfile::tempdir().unwrap();
    let lake_path = dir.path().join("lake");
    report(&export(&lake_path, &server.base, &["--json"], &[]).await);
    assert!(server.job_deleted(0));

    // What such a run leaves: its `downloaded` event, its files in the ingest log.
    let lake = open(&lake_path);
    let hashes = rows(&lake, "bronze/ingest_log", "SELECT source_sha256 FROM t").await;
    let hashes: Vec<String> = hashes.into_iter().map(|r| r[0].clone()).collect();
    let landed_at = "2026-12-07T00:00:00Z";
    record(
        &lake,
        &ExportEvent {
            export_key: format!("{}|$export|", server.base),
            event: "downloaded".into(),
            request_url: format!("{}/$export", server.base),
            status_url: Some(format!("{}/status/0", server.base)),
            transaction_time: Some(landed_at.into()),
            detail: Some(hashes.join(",")),
            ..ExportEvent::default()
        },
    )
    .await
    .unwrap();

    report(&export(&lake_path, &server.base, &["--json"], &[]).await);
    assert_eq!(server.kick_offs().len(), 2);
    assert_eq!(server.kick_offs()[1].param("_since"), Some(landed_at));
}

fn spawn_export(lake: &Path, base: &str) -> std::process::Child {
    vitalake()
        .arg("--lake")
        .arg(lake)
        .args(["ingest", "fhir-server", base])
        .env("VITALAKE_FHIR_BACKOFF_MS", "50")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

async fn wait_until(condition: impl Fn() -> bool) {
    for _ in 0..600 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the export never got there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_broken_transfers_and_failed_jobs() {
    let files = synthea_export();
    let expected = lines_by_type(&files);
    let server = BulkServer::start(
        Behaviour {
            throttle_kick_offs: 2,
            break_first_download: true,
            ..Behaviour::default()
        },
        full_export_only(files),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let lake_path = dir.path().join("lake");

    // Two 429s (Retry-After: 1), then every file's first transfer breaks off half-way.
    report(&export(&lake_path, &server.base, &["--json"], &[]).await);
    assert_eq!(server.kick_offs().len(), 3);
    assert_eq!(server.transfers_started() as usize, 2 * expected.len());
    let lake = open(&lake_path);
    assert_eq!(bronze_counts(&lake, expected.keys()).await, expected);

    // A job the server reports failed: exit 1, the server's words, recorded, and not resumed.
    server.behave(|b| b.fail_jobs = true);
    let failed = export(&lake_path, &server.base, &[], &[]).await;
    assert_eq!(failed.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr.contains("export job failed") && stderr.contains("ran out of disk"),
        "{stderr}"
    );
    server.behave(|b| b.fail_jobs = false);
    report(&export(&lake_path, &server.base, &["--json"], &[]).await);
    assert_eq!(
        server.kick_offs().len(),
        5,
        "a failed job is not resumed: a new one starts"
    );

    // A client without the scope: a clear refusal, no retries.
    server.behave(|b| b.forbid = true);
    let forbidden = export(&lake_path, &server.base, &[], &[]).await;
    assert_eq!(forbidden.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&forbidden.stderr);
    assert!(
        stderr.contains("403") && stderr.contains("scope"),
        "{stderr}"
    );
    assert_eq!(server.kick_offs().len(), 6);

    // Bad usage: exit 2 before any request.
    let bad = export(&lake_path, &server.base, &["--since", "yesterday"], &[]).await;
    assert_eq!(bad.status.code(), Some(2));
    let missing = export(&lake_path, &server.base, &["--auth", "smart"], &[]).await;
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("VITALAKE_FHIR_CLIENT_ID"));
    assert_eq!(server.kick_offs().len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smart_backend_services_with_es384_and_rs384_keys_and_an_expiring_token() {
    use ring::rand::SystemRandom;
    use ring::signature::{self, EcdsaKeyPair, KeyPair};
    let dir = tempfile::tempdir().unwrap();

    // An ES384 key made here, an RS384 key made by openssl as an operator would.
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(
        &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        &SystemRandom::new(),
    )
    .unwrap();
    let ec_public = EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        pkcs8.as_ref(),
        &SystemRandom::new(),
    )
    .unwrap()
    .public_key()
    .as_ref()
    .to_vec();
    let ec_key = dir.path().join("ec.pem");
    std::fs::write(
        &ec_key,
        pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref().to_vec())),
    )
    .unwrap();
    let rsa_key = dir.path().join("rsa.pem");
    let rsa_public = dir.path().join("rsa.pub.der");
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl is installed by the test command");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        rsa_key.to_str().unwrap(),
    ]);
    openssl(&[
        "rsa",
        "-in",
        rsa_key.to_str().unwrap(),
        "-RSAPublicKey_out",
        "-outform",
        "DER",
        "-out",
        rsa_public.to_str().unwrap(),
    ]);
    let rsa_public = std::fs::read(&rsa_public).unwrap();

    let files = synthea_export();
    let expected = lines_by_type(&files);
    let server = BulkServer::start(
        Behaviour {
            smart: Some((
                "lake-loader".into(),
                Box::new(move |alg, message, sig| {
                    let (algorithm, key): (&dyn signature::VerificationAlgorithm, &[u8]) = match alg
                    {
                        "ES384" => (&signature::ECDSA_P384_SHA384_FIXED, &ec_public),
                        "RS384" => (&signature::RSA_PKCS1_2048_8192_SHA384, &rsa_public),
                        _ => return false,
                    };
                    signature::UnparsedPublicKey::new(algorithm, key)
                        .verify(message, sig)
                        .is_ok()
                }),
            )),
            // The first token is revoked while the client waits a second between polls: it must
            // sign in again mid-export.
            polls_before_done: 1,
            retry_after: 1,
            token_lifetime: Some(Duration::from_millis(700)),
            requires_access_token: true,
            ..Behaviour::default()
        },
        full_export_only(files),
    )
    .await;
    let lake_path = dir.path().join("lake");

    let unsigned = export(&lake_path, &server.base, &[], &[]).await;
    assert_eq!(unsigned.status.code(), Some(1), "no token, no export");
    assert!(String::from_utf8_lossy(&unsigned.stderr).contains("401"));

    let smart = |key: &Path| {
        [
            ("VITALAKE_FHIR_CLIENT_ID", "lake-loader".to_string()),
            ("VITALAKE_FHIR_KEY_ID", "key-1".to_string()),
            ("VITALAKE_FHIR_PRIVATE_KEY_FILE", key.display().to_string()),
        ]
    };
    let env = smart(&ec_key);
    report(
        &export(
            &lake_path,
            &server.base,
            &["--auth", "smart", "--json"],
            &env,
        )
        .await,
    );
    let lake = open(&lake_path);
    assert_eq!(bronze_counts(&lake, expected.keys()).await, expected);
    // Signed in, then again when the server revoked the token during the wait (more than once
    // if the run is slow enough to outlive the next token too).
    assert!(
        server.tokens_issued() >= 2,
        "{} tokens",
        server.tokens_issued()
    );
    let downloads = server
        .seen()
        .into_iter()
        .filter(|s| s.path.contains("/files/"))
        .collect::<Vec<_>>();
    assert!(downloads.iter().all(|s| {
        s.headers
            .get("authorization")
            .is_some_and(|a| a.starts_with("Bearer "))
    }));

    let issued = server.tokens_issued();
    let env = smart(&rsa_key);
    report(
        &export(
            &lake_path,
            &server.base,
            &["--auth", "smart", "--full", "--json"],
            &env,
        )
        .await,
    );
    assert!(server.tokens_issued() > issued, "the RS384 key signed in");
    assert_eq!(
        bronze_counts(&lake, expected.keys()).await,
        expected,
        "the same files land once"
    );

    // A key the server does not know: the token endpoint's refusal, in words.
    let other = EcdsaKeyPair::generate_pkcs8(
        &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        &SystemRandom::new(),
    )
    .unwrap();
    let other_key = dir.path().join("other.pem");
    std::fs::write(
        &other_key,
        pem::encode(&pem::Pem::new("PRIVATE KEY", other.as_ref().to_vec())),
    )
    .unwrap();
    let env = smart(&other_key);
    let refused = export(&lake_path, &server.base, &["--auth", "smart"], &env).await;
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("invalid_client") && stderr.contains("lake-loader"),
        "{stderr}"
    );
}
