//! The Azure path end to end on Azurite, Microsoft's Azure Storage emulator: a landing folder on
//! Blob storage in, a lake on Blob storage out, through the same `object_store`/`deltalake` code
//! that talks to ADLS Gen2. The test command installs Azurite (npm package `azurite`) and puts
//! `azurite-blob` on PATH; without it this test fails and says how to get it.
//!
//! Network faults are made here by a relay in front of Azurite ([`crate::cutting_proxy`]). What
//! only a live account can check (README): Entra ID / managed-identity credentials, the `dfs`
//! endpoint with hierarchical namespace, and throttling.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use azure_messaging_eventhubs::CheckpointStore;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde_json::Value;
use sha2::Sha256;

use crate::common::{count, generate, run_ok, vitalake};
use crate::cutting_proxy::{Cut, CuttingProxy, Rule};
use crate::eventhubs::{BRONZE, STREAM_FROM_THE_PEER, against, send, stop};
use crate::eventhubs_peer::Peer;
use crate::stream::{assert_every_event_once_in, expected, generate_stream};

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

    /// The `object_store` client of one container, reading the lake's objects directly.
    pub fn store(&self, container: &str) -> object_store::azure::MicrosoftAzure {
        MicrosoftAzureBuilder::from_env()
            .with_url(format!(
                "abfss://{container}@{ACCOUNT}.dfs.core.windows.net/"
            ))
            .build()
            .unwrap()
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
    let landing = azurite.store("landing");
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

/// `vitalake ingest fhir DROP` into `lake_uri` on Azurite, whose lease lives `lease_secs`.
fn ingest_into(lake_uri: &str, drop: &std::path::Path, lease_secs: u64) -> Command {
    let mut cmd = vitalake();
    cmd.args(["ingest", "fhir", "--json", "--lake", lake_uri])
        .arg(drop)
        .env("AZURE_STORAGE_USE_EMULATOR", "true")
        .env("AZURITE_BLOB_STORAGE_URL", Azurite::shared().url())
        .env("VITALAKE_LAKE_LEASE_SECONDS", lease_secs.to_string())
        // Small commits: a run that lasts long enough to be caught holding the lake.
        .env("VITALAKE_INGEST_CHUNK_RECORDS", "100")
        .env("VITALAKE_LOG", "warn");
    cmd
}

/// A run refused because another holds the lake: exit 1, and a message naming the holder.
fn assert_refused(output: &std::process::Output, holder_pid: u32) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is in use") && stderr.contains(&format!("(pid {holder_pid} on ")),
        "the message names the holder: {stderr}"
    );
    assert!(stderr.contains(" since "), "and since when: {stderr}");
}

/// Two schedulers on one Azure lake: while a run holds the lease (and renews it past its time to
/// live), a second run is refused and names the holder; once it is given back, the second runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_ingest_on_an_azure_lake_is_refused_while_the_first_holds_it() {
    let azurite = Azurite::shared();
    azurite.create_container("leased");
    let dir = tempfile::tempdir().unwrap();
    let drop = generate(dir.path(), 5, 7, &[]);
    let lake_uri = "abfss://leased@devstoreaccount1.dfs.core.windows.net/hospital";
    let lake = vitalake::lake::Lake::open(lake_uri)
        .unwrap()
        .with_lease_ttl(Duration::from_secs(2));
    let lease = vitalake::lake::Lease::acquire(&lake, vitalake::ingest::INGEST_LEASE, "ingest")
        .await
        .unwrap();

    let refused = ingest_into(lake_uri, &drop, 2).output().unwrap();
    assert_refused(&refused, std::process::id());
    // Twice the time to live later the holder has renewed: still refused.
    tokio::time::sleep(Duration::from_secs(4)).await;
    lease.ensure_held().unwrap();
    assert_refused(
        &ingest_into(lake_uri, &drop, 2).output().unwrap(),
        std::process::id(),
    );
    assert_eq!(
        vitalake::lake::Lake::open(lake_uri)
            .unwrap()
            .existing_table("bronze/fhir/Patient")
            .await
            .unwrap()
            .map(|t| t.version()),
        None,
        "a refused run writes nothing"
    );

    lease.release().await;
    let report: Value =
        serde_json::from_slice(&run_ok(&mut ingest_into(lake_uri, &drop, 2)).stdout).unwrap();
    assert!(report["bronze_rows"].as_u64().unwrap() > 0, "{report}");
}

/// A holder killed with SIGKILL cannot give the lease back: the next run is refused until the
/// lease expires, then takes the lake, rolls the killed run back, and the lake ends as after one
/// clean run.
#[tokio::test]
async fn a_killed_holder_gives_the_azure_lake_up_after_its_lease_expires() {
    let azurite = Azurite::shared();
    azurite.create_container("killed");
    let dir = tempfile::tempdir().unwrap();
    let drop = generate(dir.path(), 150, 11, &[]);
    let lake_uri = "abfss://killed@devstoreaccount1.dfs.core.windows.net/hospital";
    let store = azurite.store("killed");
    let lease_blob = format!("hospital/{}", vitalake::ingest::INGEST_LEASE);
    let log = object_store::path::Path::from("hospital/bronze/fhir/Patient/_delta_log");

    let mut holder = ingest_into(lake_uri, &drop, 3)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed once its first Patient rows are committed: mid-run, lease held.
    let started = Instant::now();
    loop {
        use futures::TryStreamExt;
        let commits: Vec<_> = store.list(Some(&log)).try_collect().await.unwrap();
        if !commits.is_empty() {
            break;
        }
        assert!(
            holder.try_wait().unwrap().is_none(),
            "the run ended too soon"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no commit seen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    holder.kill().unwrap();
    holder.wait().unwrap();
    let killed_at = Instant::now();
    store
        .head(&lease_blob.as_str().into())
        .await
        .expect("the killed run left its lease behind");

    assert_refused(
        &ingest_into(lake_uri, &drop, 3).output().unwrap(),
        holder.id(),
    );
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(killed_at.elapsed())).await;
    let report: Value =
        serde_json::from_slice(&run_ok(&mut ingest_into(lake_uri, &drop, 3)).stdout).unwrap();
    assert_eq!(report["rolled_back_runs"].as_array().unwrap().len(), 1);
    assert_eq!(report["files_skipped"].as_array().unwrap().len(), 0);
    assert_holds_one_clean_run(lake_uri, dir.path(), &drop).await;
}

/// Asserts that the lake at `lake_uri` holds what one clean run of `drop` into a local lake holds:
/// the same resources in bronze, and the same rows in silver.
async fn assert_holds_one_clean_run(lake_uri: &str, dir: &std::path::Path, drop: &std::path::Path) {
    let clean = dir.join("clean-lake");
    let clean_run: Value = serde_json::from_slice(
        &run_ok(
            vitalake()
                .args(["ingest", "fhir", "--json", "--lake"])
                .arg(&clean)
                .arg(drop),
        )
        .stdout,
    )
    .unwrap();
    let lake = vitalake::lake::Lake::open(lake_uri).unwrap();
    let by_type = clean_run["resources_by_type"].as_object().unwrap();
    assert!(by_type.len() > 1, "{by_type:?}");
    for (resource_type, resources) in by_type {
        assert_eq!(
            count(&lake, &format!("bronze/fhir/{resource_type}")).await,
            resources.as_u64().unwrap(),
            "{resource_type}"
        );
    }
    let clean = vitalake::lake::Lake::open(clean.to_str().unwrap()).unwrap();
    for table in ["silver/fhir/patient", "silver/fhir/blood_pressure"] {
        assert_eq!(
            count(&lake, table).await,
            count(&clean, table).await,
            "{table}"
        );
    }
}

/// A network that cuts requests short neither fails a run nor lands a commit twice. Through a
/// relay that cuts two commits' answers (the connection closed, and reset) after Azure carried
/// them out, one commit before it reaches Azure, and the answer to a lease renewal, `ingest fhir`
/// on an Azure lake succeeds, keeps its lease, and leaves what one clean run leaves: a commit
/// that took effect is not written again as the table's next version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_cut_short_neither_fail_an_ingest_nor_land_twice() {
    let azurite = Azurite::shared();
    azurite.create_container("cut");
    let dir = tempfile::tempdir().unwrap();
    let drop = generate(dir.path(), 150, 11, &[]);
    let lake_uri = "abfss://cut@devstoreaccount1.dfs.core.windows.net/hospital";
    let commit =
        |table: &str, version: u64| format!("/hospital/{table}/_delta_log/{version:020}.json");
    let lease = format!("/hospital/{}", vitalake::ingest::INGEST_LEASE);
    let proxy = CuttingProxy::start(
        azurite.port,
        vec![
            Rule::put(&commit("bronze/fhir/Patient", 1), 1, Cut::AnswerClosed),
            Rule::put(&commit("bronze/fhir/Observation", 2), 1, Cut::AnswerReset),
            Rule::put(&commit("silver/fhir/patient", 1), 1, Cut::BeforeRequest),
            // The first put takes the lease, the second renews it.
            Rule::put(&lease, 2, Cut::AnswerClosed),
        ],
    )
    .await;

    run_ok(ingest_into(lake_uri, &drop, 2).env("AZURITE_BLOB_STORAGE_URL", proxy.url()));
    assert_eq!(proxy.unfired(), Vec::<String>::new(), "every cut happened");
    let store = azurite.store("cut");
    assert_eq!(
        files_added_twice(&store, "hospital").await,
        Vec::<String>::new(),
        "no commit is in a table's log twice"
    );
    assert_holds_one_clean_run(lake_uri, dir.path(), &drop).await;
}

/// A commit that loses a race for its version is still a conflict, not taken for its rival's
/// success: the second of two writers that both start from version 0 lands as version 2, and the
/// table holds both writers' rows.
#[tokio::test]
async fn a_commit_that_loses_a_race_lands_as_the_next_version() {
    use deltalake::arrow::array::{ArrayRef, Int64Array, RecordBatch};
    use vitalake::lake::AppendBuilder;
    let azurite = Azurite::shared();
    azurite.create_container("race");
    let lake =
        vitalake::lake::Lake::open("abfss://race@devstoreaccount1.dfs.core.windows.net/").unwrap();
    let rows = |values: Vec<i64>| {
        RecordBatch::try_from_iter([(
            "n",
            std::sync::Arc::new(Int64Array::from(values)) as ArrayRef,
        )])
        .unwrap()
    };
    AppendBuilder::new(lake.table("t").await.unwrap(), "t", vec![rows(vec![0])])
        .execute()
        .await
        .unwrap();
    let (first, second) = (
        lake.table("t").await.unwrap(),
        lake.table("t").await.unwrap(),
    );
    let (_, won) = AppendBuilder::new(first, "t", vec![rows(vec![1, 2])])
        .execute()
        .await
        .unwrap();
    let (_, lost) = AppendBuilder::new(second, "t", vec![rows(vec![3, 4, 5])])
        .execute()
        .await
        .unwrap();
    assert_eq!((won.version, lost.version), (1, 2));
    assert_eq!(count(&lake, "t").await, 6);
}

/// The data files that two commits of one table's Delta log add, under `prefix`.
async fn files_added_twice(store: &impl ObjectStore, prefix: &str) -> Vec<String> {
    use futures::TryStreamExt;
    let mut objects: Vec<_> = store
        .list(Some(&prefix.into()))
        .try_collect()
        .await
        .unwrap();
    objects.sort_by(|a, b| a.location.cmp(&b.location));
    let mut added = std::collections::HashSet::new();
    let mut twice = Vec::new();
    for commit in objects.iter().filter(|o| {
        o.location.as_ref().contains("/_delta_log/") && o.location.as_ref().ends_with(".json")
    }) {
        let table = commit
            .location
            .as_ref()
            .split("/_delta_log/")
            .next()
            .unwrap();
        let bytes = store
            .get(&commit.location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        for action in bytes.split(|&b| b == b'\n').filter(|line| !line.is_empty()) {
            let action: Value = serde_json::from_slice(action).unwrap();
            if let Some(path) = action["add"]["path"].as_str() {
                let file = format!("{table}/{path}");
                if !added.insert(file.clone()) {
                    twice.push(format!("{file} again in {}", commit.location));
                }
            }
        }
    }
    twice
}

/// A holder whose lease was taken over (it could not renew in time and another run took the
/// lake) learns it at its next check, and so stops before its next commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_taken_over_is_lost_to_its_old_holder() {
    let azurite = Azurite::shared();
    azurite.create_container("taken");
    let lake = vitalake::lake::Lake::open("abfss://taken@devstoreaccount1.dfs.core.windows.net/")
        .unwrap()
        .with_lease_ttl(Duration::from_secs(1));
    let lease = vitalake::lake::Lease::acquire(&lake, "test.lock", "ingest")
        .await
        .unwrap();
    lease.ensure_held().unwrap();
    // Another writer puts the blob unconditionally, as a run that took the expired lease would.
    let store = azurite.store("taken");
    store
        .put(
            &"test.lock".into(),
            PutPayload::from(
                r#"{"holder":{"host":"h","pid":1,"command":"ingest"},"since":"2026-12-06T00:00:00Z","ttl_secs":60}"#,
            ),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let lost = lease.ensure_held().unwrap_err().to_string();
    assert!(
        lost.contains("lost the lease") && lost.contains("another run took it over"),
        "{lost}"
    );
}

/// `vitalake stream` from Event Hubs into a lake on Blob storage, its checkpoints and partition
/// ownership beside the lake, as in production, while the network cuts its first claims of both
/// partitions and a checkpoint short: every event lands once, and each partition ends owned by the
/// stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_into_an_azure_lake_survives_claims_and_checkpoints_cut_short() {
    let azurite = Azurite::shared();
    azurite.create_container("streamed");
    let peer = Peer::start("observations", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let file = generate_stream(&dir.path().join("stream"), 8, 6, 31);
    let expected = expected(&file);
    send(&peer, &dir.path().join("unused-lake"), &file);

    let lake_uri = "abfss://streamed@devstoreaccount1.dfs.core.windows.net/hospital";
    let proxy = CuttingProxy::start(
        azurite.port,
        vec![
            // Carried out, but the answer lost: the claim is read back and stands.
            Rule::put("/ownership/0", 1, Cut::AnswerClosed),
            // Three claims in a row that never arrive: the store gives up, the SDK's processor
            // stops, and the stream builds a new one, which claims the partition again.
            Rule::put("/ownership/1", 1, Cut::BeforeRequest),
            Rule::put("/ownership/1", 2, Cut::BeforeRequest),
            Rule::put("/ownership/1", 3, Cut::BeforeRequest),
            Rule::put("/checkpoint/0", 1, Cut::AnswerReset),
        ],
    )
    .await;
    let log = std::fs::File::create(dir.path().join("stream.log")).unwrap();
    let stream = against(&peer, std::path::Path::new(lake_uri))
        .args(STREAM_FROM_THE_PEER)
        .env("AZURE_STORAGE_USE_EMULATOR", "true")
        .env("AZURITE_BLOB_STORAGE_URL", proxy.url())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let lake = vitalake::lake::Lake::open(lake_uri).unwrap();
    let logs = || std::fs::read_to_string(dir.path().join("stream.log")).unwrap_or_default();
    let started = Instant::now();
    // Bronze complete and every cut made (the last is a checkpoint's, written once silver has
    // that partition's batch); SIGTERM then lands what is left in silver.
    while count(&lake, BRONZE).await < expected.events || !proxy.unfired().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "after 90 s bronze has {} of {} events, cuts not yet made: {:?}; stream log:\n{}",
            count(&lake, BRONZE).await,
            expected.events,
            proxy.unfired(),
            logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let status = stop(stream);
    assert!(
        status.success(),
        "SIGTERM is a clean stop: {status}\n{}",
        logs()
    );
    assert_every_event_once_in(&lake, BRONZE, &expected).await;
    let owners = vitalake::stream::checkpoints::Checkpoints::beside_lake(lake.root())
        .unwrap()
        .list_ownerships(crate::eventhubs_peer::NAMESPACE, "observations", "$Default")
        .await
        .unwrap();
    assert_eq!(owners.len(), 2, "{owners:?}");
    assert!(
        owners.iter().all(|o| o.owner_id == owners[0].owner_id),
        "one stream owns both partitions: {owners:?}"
    );
}
