//! The Azure path end to end on Azurite, Microsoft's Azure Storage emulator: a landing folder on
//! Blob storage in, a lake on Blob storage out, through the same `object_store`/`deltalake` code
//! that talks to ADLS Gen2. The test command installs Azurite (npm package `azurite`) and puts
//! `azurite-blob` on PATH; without it this test fails and says how to get it.
//!
//! What only a live account can check (README): Entra ID / managed-identity credentials, the
//! `dfs` endpoint with hierarchical namespace, and network behaviour such as throttling.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::{ObjectStoreExt, PutPayload};
use serde_json::Value;
use sha2::Sha256;

use crate::common::{count, generate, run_ok, vitalake};

/// Azurite's documented development account.
const ACCOUNT: &str = "devstoreaccount1";
const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The Azurite blob service of this test process, on a free loopback port. One for all tests:
/// `object_store` finds the emulator through process-wide environment variables, so two would race.
pub struct Azurite {
    pub port: u16,
    _child: Child,
    _data: tempfile::TempDir,
}

impl Azurite {
    /// Starts Azurite on first use and points `object_store` at it. It runs under a shell that
    /// stops it when this process's end closes the shell's standard input.
    pub fn shared() -> &'static Azurite {
        static AZURITE: OnceLock<Azurite> = OnceLock::new();
        AZURITE.get_or_init(|| {
            let azurite = Azurite::start();
            // SAFETY: set once, before any Azure client that reads these variables exists.
            unsafe {
                std::env::set_var("AZURE_STORAGE_USE_EMULATOR", "true");
                std::env::set_var("AZURITE_BLOB_STORAGE_URL", azurite.url());
            }
            azurite
        })
    }

    fn start() -> Azurite {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let data = tempfile::tempdir().unwrap();
        if Command::new("azurite-blob")
            .arg("--version")
            .output()
            .is_err()
        {
            panic!(
                "cannot start azurite-blob: run the README's test command, which installs Azurite (npm package `azurite`) and puts it on PATH"
            );
        }
        let child = Command::new("bash")
            .arg("-c")
            .arg(r#"azurite-blob "$@" & child=$!; read -r _; kill $child"#)
            .arg("azurite")
            .args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port.to_string(),
                "--location",
            ])
            .arg(data.path())
            .args([
                "--skipApiVersionCheck",
                "--loose",
                "--silent",
                "--disableTelemetry",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "Azurite did not listen on port {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Azurite {
            port,
            _child: child,
            _data: data,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a container with a Shared Key-signed REST call (no SDK here creates containers).
    pub fn create_container(&self, name: &str) {
        let date = chrono::Utc::now()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let version = "2021-08-06";
        let string_to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{ACCOUNT}/{ACCOUNT}/{name}\nrestype:container"
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(&STANDARD.decode(KEY).unwrap()).unwrap();
        mac.update(string_to_sign.as_bytes());
        let signature = STANDARD.encode(mac.finalize().into_bytes());
        let request = format!(
            "PUT /{ACCOUNT}/{name}?restype=container HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nx-ms-date: {date}\r\nx-ms-version: {version}\r\nAuthorization: SharedKey {ACCOUNT}:{signature}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        );
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(
            response.starts_with("HTTP/1.1 201"),
            "creating container {name}: {response}"
        );
    }
}

#[tokio::test]
async fn landing_folder_on_blob_storage_into_a_lake_on_blob_storage() {
    let azurite = Azurite::shared();
    azurite.create_container("landing");
    azurite.create_container("lake");

    let dir = tempfile::tempdir().unwrap();
    let drop = generate(dir.path(), 12, 3, &["--invalid", "--gzip"]);
    let landing = MicrosoftAzureBuilder::from_env()
        .with_url("abfss://landing@devstoreaccount1.dfs.core.windows.net/")
        .build()
        .unwrap();
    let mut uploaded = 0;
    for entry in walk(&drop) {
        let name = format!(
            "2026-11-23/{}",
            entry.strip_prefix(&drop).unwrap().display()
        );
        landing
            .put(
                &name.as_str().into(),
                PutPayload::from(std::fs::read(&entry).unwrap()),
            )
            .await
            .unwrap();
        uploaded += 1;
    }

    let landing_uri = "abfss://landing@devstoreaccount1.dfs.core.windows.net/2026-11-23";
    let lake_uri = "abfss://lake@devstoreaccount1.dfs.core.windows.net/hospital";
    let azure_run = || {
        let mut cmd = vitalake();
        cmd.args(["ingest", "fhir", "--json", "--lake", lake_uri, landing_uri])
            .env("AZURE_STORAGE_USE_EMULATOR", "true")
            .env("AZURITE_BLOB_STORAGE_URL", azurite.url());
        cmd
    };
    let report: Value = serde_json::from_slice(&run_ok(&mut azure_run()).stdout).unwrap();

    // The same drop ingested from the local folder is the reference.
    let local_lake = dir.path().join("local-lake");
    let local: Value = serde_json::from_slice(
        &run_ok(
            vitalake()
                .args(["ingest", "fhir", "--json", "--lake"])
                .arg(&local_lake)
                .arg(&drop),
        )
        .stdout,
    )
    .unwrap();
    assert_eq!(report["files_read"], uploaded);
    assert_eq!(report["resources_by_type"], local["resources_by_type"]);
    assert_eq!(report["quarantine_rows"], 7);

    // Read back through the library from Blob storage.
    let lake = vitalake::lake::Lake::open(lake_uri).unwrap();
    let patients = local["resources_by_type"]["Patient"].as_u64().unwrap();
    assert_eq!(count(&lake, "bronze/fhir/Patient").await, patients);
    let uris = crate::common::rows(
        &lake,
        "bronze/fhir/Patient",
        "SELECT DISTINCT source_uri FROM t",
    )
    .await;
    assert!(
        uris.iter().all(|u| u[0].starts_with(landing_uri)),
        "{uris:?}"
    );

    // A second run finds every file already ingested.
    let again: Value = serde_json::from_slice(&run_ok(&mut azure_run()).stdout).unwrap();
    assert_eq!(again["files_skipped"].as_array().unwrap().len(), uploaded);
    assert_eq!(again["bronze_rows"], 0);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path))
        } else {
            files.push(path)
        }
    }
    files.sort();
    files
}
