//! `vitalake serve` with real PostgreSQL clients: `psql` (Debian's `postgresql-client`) and Python's
//! `psycopg` (Debian's `python3-psycopg`), over the demo's lake: sign-in with SCRAM, the two roles,
//! masks, writes refused, catalogue look-ups, TLS, 20 clients at once, a client vanishing mid-query.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use vitalake::lake::Lake;
use vitalake::serve::users::{Role, UserConfig};
use vitalake::serve::{ServeConfig, Server};

use crate::common::{count, run_ok, vitalake};

const ANALYST: (&str, &str) = ("ana", "An4lyst-pw");
const BI: (&str, &str) = ("powerbi", "B1-reader-pw");
/// Debian's interpreter, where `python3-psycopg` installs.
const PYTHON: &str = "/usr/bin/python3";

/// One demo lake for every test here (they only read it).
fn demo_lake() -> &'static Path {
    static LAKE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &LAKE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let lake = dir.path().join("lake");
            run_ok(
                vitalake()
                    .current_dir(env!("CARGO_MANIFEST_DIR"))
                    .arg("--lake")
                    .arg(&lake)
                    .arg("demo"),
            );
            (dir, lake)
        })
        .1
}

/// A server on 127.0.0.1 with an analyst and a bi_reader, in its own thread and runtime; stopped
/// when dropped.
struct TestServer {
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    fn start(tls: Option<(PathBuf, PathBuf)>) -> TestServer {
        let lake = Lake::open(&demo_lake().display().to_string()).unwrap();
        let mut config = ServeConfig {
            users: vec![
                user(ANALYST.0, Role::Analyst, "ANALYST_PW"),
                user(BI.0, Role::BiReader, "BI_PW"),
            ],
            ..ServeConfig::default()
        };
        if let Some((cert, key)) = tls {
            config.tls_cert = Some(cert);
            config.tls_key = Some(key);
        }
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async move {
                let listener = vitalake::serve::bind("127.0.0.1:0").await.unwrap();
                let server = Server::new(lake, config, |var| match var {
                    "ANALYST_PW" => Some(ANALYST.1.into()),
                    "BI_PW" => Some(BI.1.into()),
                    _ => None,
                })
                .await
                .unwrap();
                port_tx.send(listener.local_addr().unwrap().port()).unwrap();
                server
                    .run(listener, async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        TestServer {
            port: port_rx.recv().expect("the server starts"),
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `psql` as `user`, one command, unaligned and without headers.
    fn psql(&self, (user, password): (&str, &str), sql: &str, extra: &[&str]) -> Output {
        let mut conninfo = format!(
            "host=127.0.0.1 port={} user={user} dbname=lake connect_timeout=10",
            self.port
        );
        for option in extra {
            conninfo.push(' ');
            conninfo.push_str(option);
        }
        Command::new("psql")
            .env("PGPASSWORD", password)
            .env_remove("PGSSLMODE")
            .args([
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &conninfo,
                "-c",
                sql,
            ])
            .output()
            .expect("psql runs (Debian package postgresql-client)")
    }

    /// The output of a `psql` command that must succeed, as lines.
    fn lines(&self, who: (&str, &str), sql: &str) -> Vec<String> {
        let out = self.psql(who, sql, &[]);
        assert!(
            out.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Runs a Python script with `psycopg`, given the port and the two users' credentials as
    /// `PORT`, `ANALYST`, `ANALYST_PW`, `BI`, `BI_PW` in its environment.
    fn python(&self, script: &str) -> String {
        let out = Command::new(PYTHON)
            .args(["-c", script])
            .env("PORT", self.port.to_string())
            .env("ANALYST", ANALYST.0)
            .env("ANALYST_PW", ANALYST.1)
            .env("BI", BI.0)
            .env("BI_PW", BI.1)
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "python failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn user(name: &str, role: Role, var: &str) -> UserConfig {
    UserConfig {
        name: name.into(),
        role,
        password_env: var.into(),
    }
}

fn stored_count(table: &str) -> u64 {
    let lake = Lake::open(&demo_lake().display().to_string()).unwrap();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(count(&lake, table))
}

#[test]
fn psql_signs_in_with_scram_and_reads_every_layer() {
    let server = TestServer::start(None);
    for (sql, table) in [
        ("SELECT count(*) FROM silver.patient", "silver/fhir/patient"),
        (
            "SELECT count(*) FROM bronze.eventhubs_observations",
            "bronze/eventhubs/observations",
        ),
        (
            "SELECT count(*) FROM gold.patient_bp_daily",
            "gold/patient_bp_daily",
        ),
    ] {
        let expected = stored_count(table);
        assert!(expected > 0, "{table} is empty in the demo lake");
        assert_eq!(server.lines(ANALYST, sql), vec![expected.to_string()]);
    }
    // What psql sends for \dt and \d: pg_catalog look-ups.
    let tables = server.lines(ANALYST, r"\dt silver.*").join("\n");
    for table in ["blood_pressure", "patient", "alerts"] {
        assert!(
            tables.contains(&format!("silver|{table}|")),
            "{table} not in \\dt:\n{tables}"
        );
    }
    let columns = server
        .lines(ANALYST, r"\d silver.blood_pressure")
        .join("\n");
    for column in ["patient_id", "systolic", "effective_time"] {
        assert!(columns.contains(column), "{column} not in \\d:\n{columns}");
    }
}

#[test]
fn a_wrong_password_or_an_unknown_user_is_refused() {
    let server = TestServer::start(None);
    for who in [(ANALYST.0, "not-the-password"), ("mallory", ANALYST.1)] {
        let out = server.psql(who, "SELECT 1", &[]);
        assert!(!out.status.success(), "{who:?} got in");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!(
                "password authentication failed for user \"{}\"",
                who.0
            )),
            "{stderr}"
        );
    }
    // The server is not disturbed by the failed sign-ins.
    assert_eq!(server.lines(BI, "SELECT 1"), vec!["1"]);
}

#[test]
fn a_bi_reader_sees_phi_masked_and_no_bronze() {
    let server = TestServer::start(None);
    let sql = "SELECT id, family_name, given_names, phone, birth_date, city, country FROM silver.patient WHERE family_name IS NOT NULL ORDER BY id LIMIT 20";
    let analyst = server.lines(ANALYST, sql);
    let masked = server.lines(BI, &sql.replace("WHERE family_name IS NOT NULL ", ""));
    assert!(!analyst.is_empty());
    for (full, masked) in analyst.iter().zip(&masked) {
        let full: Vec<&str> = full.split('|').collect();
        let masked: Vec<&str> = masked.split('|').collect();
        assert_eq!(masked[0], full[0], "ids are not masked");
        assert_ne!(full[1], "***");
        assert_eq!(masked[1..3], ["***", "***"], "names: {masked:?}");
        if !full[3].is_empty() {
            assert_eq!(masked[3], "***", "phone");
        }
        // 1987-03-02 becomes 1987; the city goes, the country stays.
        assert_eq!(masked[4], &full[4][..4], "birth date to the year");
        assert_eq!(masked[5], "", "city");
        assert_eq!(masked[6], full[6], "country");
    }
    let out = server.psql(BI, "SELECT count(*) FROM bronze.patient", &[]);
    assert!(!out.status.success(), "a bi_reader read bronze");
    // Unmasked tables read the same for both roles.
    let sql = "SELECT count(*), sum(systolic) FROM silver.blood_pressure";
    assert_eq!(server.lines(BI, sql), server.lines(ANALYST, sql));

    // A masked birth date filters by the year it keeps ...
    let by_year = server.lines(
        BI,
        "SELECT count(*) FROM silver.patient WHERE birth_date >= 1981",
    );
    let by_date = "SELECT count(*) FROM silver.patient WHERE birth_date >= '1981-01-01'";
    assert_eq!(by_year, server.lines(ANALYST, by_date));
    assert_ne!(
        by_year,
        vec!["0"],
        "the sample has patients born since 1981"
    );
    // ... and a full date is refused with what to do instead, not an optimizer failure.
    let out = server.psql(
        BI,
        "SELECT count(*) FROM silver.patient WHERE birth_date > '1980-06-01'",
        &[],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("hold the year as an integer") && stderr.contains("birth_date >= 1981"),
        "{stderr}"
    );
}

#[test]
fn writes_and_ddl_are_refused_with_the_read_only_error() {
    let server = TestServer::start(None);
    let before = stored_count("silver/fhir/patient");
    for sql in [
        "INSERT INTO silver.patient (id) VALUES ('x')",
        "DELETE FROM silver.patient",
        "UPDATE silver.patient SET gender = 'other'",
        "DROP TABLE silver.patient",
        "CREATE TABLE gold.mine (a int)",
        "CREATE VIEW gold.v AS SELECT 1",
    ] {
        let out = server.psql(ANALYST, sql, &["options=-cclient_min_messages=error"]);
        assert!(!out.status.success(), "{sql} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("read-only"), "{sql}: {stderr}");
    }
    // The same through the extended protocol (a driver's prepared statement), with the SQLSTATE.
    let state = server.python(
        r#"
import os, psycopg
with psycopg.connect(host="127.0.0.1", port=os.environ["PORT"], user=os.environ["ANALYST"],
                     password=os.environ["ANALYST_PW"], dbname="lake") as conn:
    try:
        conn.execute("INSERT INTO silver.patient (id) VALUES (%s)", ["x"])
        print("accepted")
    except psycopg.Error as e:
        print(e.sqlstate)
"#,
    );
    assert_eq!(state.trim(), "25006");
    assert_eq!(stored_count("silver/fhir/patient"), before);
    assert_eq!(
        server.lines(ANALYST, "SELECT count(*) FROM silver.patient"),
        vec![before.to_string()]
    );
}

#[test]
fn twenty_psycopg_clients_at_once_and_one_that_vanishes_mid_query() {
    let server = TestServer::start(None);
    let patients = stored_count("silver/fhir/patient");
    let readings = stored_count("silver/fhir/blood_pressure");
    let out = server.python(
        r#"
import os, socket, threading, psycopg
args = dict(host="127.0.0.1", port=os.environ["PORT"], dbname="lake")
results, errors = [], []

def client(i):
    try:
        who = ("ANALYST", "ANALYST_PW") if i % 2 else ("BI", "BI_PW")
        with psycopg.connect(user=os.environ[who[0]], password=os.environ[who[1]], **args) as conn:
            barrier.wait(timeout=60)
            for _ in range(3):
                n = conn.execute("SELECT count(*) FROM silver.patient WHERE id <> %s", ["none"]).fetchone()[0]
                m = conn.execute("SELECT count(*) FROM silver.blood_pressure").fetchone()[0]
                results.append((n, m))
    except Exception as e:
        errors.append(repr(e))

def vanishing():
    # Starts a heavy query, then closes its socket without waiting for the answer.
    conn = psycopg.connect(user=os.environ["ANALYST"], password=os.environ["ANALYST_PW"], **args)
    barrier.wait(timeout=60)
    conn.pgconn.send_query(b"SELECT count(*) FROM silver.blood_pressure a, silver.blood_pressure b")
    socket.socket(fileno=conn.pgconn.socket).close()

barrier = threading.Barrier(21)
threads = [threading.Thread(target=client, args=(i,)) for i in range(20)]
threads.append(threading.Thread(target=vanishing))
for t in threads: t.start()
for t in threads: t.join()
print(len(results), len(errors))
print(set(results))
print(errors[:3])
"#,
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "60 0", "{out}");
    assert_eq!(lines[1], format!("{{({patients}, {readings})}}"), "{out}");
    // And the server still answers.
    assert_eq!(server.lines(ANALYST, "SELECT 1"), vec!["1"]);
}

#[test]
fn tls_with_a_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("server.crt"), dir.path().join("server.key"));
    run_ok(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args([
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    );
    let server = TestServer::start(Some((cert.clone(), key)));
    let verify = format!("sslrootcert={}", cert.display());
    let out = server.psql(
        ANALYST,
        "SELECT count(*) FROM silver.patient",
        &["sslmode=verify-full", &verify],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        stored_count("silver/fhir/patient").to_string()
    );
    // psql reports the session's encryption.
    let info = server.psql(ANALYST, r"\conninfo", &["sslmode=require"]);
    assert!(
        String::from_utf8_lossy(&info.stdout).contains("SSL connection"),
        "{}",
        String::from_utf8_lossy(&info.stdout)
    );
}
