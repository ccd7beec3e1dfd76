//! `vitalake ingest db` against real PostgreSQL and MariaDB servers started on loopback
//! (`servers.rs`): discovery, types, incremental runs, deletes, schema drift, SIGKILL, and the
//! failures a user meets first (wrong password, unreachable server).

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use vitalake::lake::Lake;

use crate::common::{count, rows, temp_lake, vitalake};
use crate::servers::{Engine, PASSWORD, Server};

fn samples(file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("samples/ikhospital")
        .join(file)
}

/// `vitalake ingest db` on `servers` into `lake`, with the passwords in the environment.
fn ingest_db(lake: &Path, servers: &[&Server], extra: &[&str]) -> Command {
    let mut cmd = vitalake();
    cmd.arg("--lake").arg(lake).args(["ingest", "db", "--json"]);
    for server in servers {
        cmd.args(["--source", &server.url()])
            .env(server.password_var(), PASSWORD);
    }
    cmd.args(extra);
    cmd
}

fn report(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn run_report(cmd: &mut Command) -> serde_json::Value {
    let output = cmd.output().unwrap();
    assert!(
        output.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    report(&output)
}

fn table_report<'a>(report: &'a serde_json::Value, table: &str) -> &'a serde_json::Value {
    report["sources"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["tables"].as_array().unwrap())
        .find(|t| t["table"] == table)
        .unwrap_or_else(|| panic!("no table {table} in {report:#}"))
}

fn source_count(server: &Server, table: &str) -> u64 {
    server
        .sql(&format!("SELECT count(*) FROM {table}"))
        .trim()
        .parse()
        .unwrap()
}

fn source_tables(server: &Server) -> Vec<String> {
    let sql = match server.engine {
        Engine::Postgres => {
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
        }
        Engine::MariaDb => {
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'ikhospital' ORDER BY 1"
        }
    };
    server.sql(sql).lines().map(str::to_string).collect()
}

fn start_both() -> (Server, Server) {
    let postgres = std::thread::spawn(Server::postgres);
    let mariadb = Server::mariadb();
    (postgres.join().unwrap(), mariadb)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_samples_land_reconciled_then_runs_pick_up_inserts_updates_and_deletes() {
    let (postgres, mariadb) = start_both();
    postgres.load(&samples("postgres.sql"));
    mariadb.load(&samples("mysql.sql"));
    let (dir, lake) = temp_lake();
    let lake_path = dir.path().join("lake");
    let expectations = samples("expectations.toml");
    let output = ingest_db(&lake_path, &[&postgres, &mariadb], &["--expectations"])
        .arg(&expectations)
        .output()
        .unwrap();
    let first = report(&output);
    assert!(output.status.success(), "{first:#}");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!printed.contains(PASSWORD), "the password was printed");

    // Every table of both databases, discovered without listing them, lands with the source's count.
    for (server, engine) in [(&postgres, "postgres"), (&mariadb, "mysql")] {
        let tables = source_tables(server);
        assert!(tables.len() >= 4, "{tables:?}");
        for table in tables {
            let t = table_report(&first, &table);
            let at_source = source_count(server, &table);
            assert!(at_source > 0, "{table} is empty at the source");
            assert_eq!(t["mode"], "full");
            assert_eq!(t["rows_at_source"], at_source, "{table}");
            assert_eq!(t["rows_landed"], at_source, "{table}");
            assert_eq!(t["checksum_matches"], true, "{table}");
            assert_eq!(t["reconciled"], true, "{table}");
            assert_eq!(
                count(&lake, &format!("bronze/{engine}/ikhospital/{table}")).await,
                at_source
            );
            assert_eq!(
                count(&lake, &format!("silver/ikhospital/{table}")).await,
                at_source,
                "{table}"
            );
        }
    }

    // The rows broken on purpose in the samples are the ones the expectations flag.
    let flagged: Vec<(String, Vec<String>)> = first["expectations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert!(e["error"].is_null(), "{e}");
            assert_eq!(e["checked"], 3001);
            (
                e["name"].as_str().unwrap().to_string(),
                e["examples"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        flagged,
        vec![
            (
                "gynaecology_sees_only_women_over_14".to_string(),
                vec!["101".to_string()]
            ),
            ("urology_sees_only_men".to_string(), vec!["202".to_string()]),
            (
                "children_see_general_practice_or_paediatrics".to_string(),
                vec!["3001".to_string()]
            ),
            (
                "symptom_belongs_to_the_specialty".to_string(),
                vec!["303".to_string()]
            ),
        ]
    );
    assert_eq!(count(&lake, "silver/expectations").await, 4);

    // Values arrive typed: a patient's name in UTF-8, a decimal with its scale, an instant in UTC.
    assert_eq!(
        rows(
            &lake,
            "silver/ikhospital/patients",
            "SELECT mrn, family_name, sex, CAST(birth_date AS VARCHAR) FROM t WHERE id = 5"
        )
        .await,
        vec![vec![
            "MRN-PT-100005".to_string(),
            "Magalhães".into(),
            "female".into(),
            "1963-01-24".into()
        ]]
    );
    assert_eq!(
        rows(&lake, "silver/ikhospital/medicines", "SELECT CAST(unit_price AS VARCHAR), array_to_string(atc_codes, ',') FROM t WHERE ndc = '0078-0357-15'").await,
        vec![vec!["3.2500".to_string(), "C09DA03,C03AA03".into()]]
    );

    // Changes at the source: an insert, an update (its updated_at moves), a delete.
    mariadb.sql(
        "INSERT INTO events (patient_id, doctor_id, specialty_id, symptom_id, occurred_at, kind, notes) \
         VALUES (7, 1, 1, 1, '2026-11-28 09:00:00', 'consultation', 'Visit 3002'); \
         UPDATE patients SET city = 'Coimbra', updated_at = '2026-11-28 10:00:00' WHERE id = 5; \
         DELETE FROM doctor_shifts WHERE doctor_id = 1 AND weekday = 5",
    );
    postgres.sql("DELETE FROM pharmacy_distribution WHERE id = 17");
    let second = run_report(&mut ingest_db(&lake_path, &[&postgres, &mariadb], &[]));
    let events = table_report(&second, "events");
    assert_eq!(events["mode"], "incremental");
    assert_eq!(events["cursor"], "updated_at");
    assert_eq!(events["inserted"], 1, "{events}");
    assert!(events["rows_landed"].as_u64().unwrap() < 10, "{events}");
    let patients = table_report(&second, "patients");
    assert_eq!(patients["mode"], "incremental");
    assert_eq!(patients["updated"], 1, "{patients}");
    assert_eq!(count(&lake, "silver/ikhospital/events").await, 3002);
    assert_eq!(
        rows(
            &lake,
            "silver/ikhospital/patients",
            "SELECT city FROM t WHERE id = 5"
        )
        .await,
        vec![vec!["Coimbra".to_string()]]
    );
    // A table without a cursor is read whole every time, so its deletes show at once.
    let shifts = table_report(&second, "doctor_shifts");
    assert_eq!(shifts["mode"], "full");
    assert_eq!(shifts["deleted"], 1);
    // Incremental runs do not see deletes ...
    assert_eq!(
        rows(
            &lake,
            "silver/ikhospital/pharmacy_distribution",
            "SELECT count(*) FROM t WHERE _deleted_at IS NOT NULL"
        )
        .await,
        vec![vec!["0".to_string()]]
    );
    // ... full runs do, and mark the row instead of dropping it.
    let third = run_report(&mut ingest_db(
        &lake_path,
        &[&postgres, &mariadb],
        &["--full"],
    ));
    assert_eq!(table_report(&third, "pharmacy_distribution")["deleted"], 1);
    assert_eq!(
        rows(
            &lake,
            "silver/ikhospital/pharmacy_distribution",
            "SELECT id FROM t WHERE _deleted_at IS NOT NULL"
        )
        .await,
        vec![vec!["17".to_string()]]
    );
    assert_eq!(
        count(&lake, "silver/ikhospital/pharmacy_distribution").await,
        4000
    );
    for t in third["sources"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["tables"].as_array().unwrap())
    {
        assert_eq!(t["reconciled"], true, "{t}");
        assert_eq!(t["inserted"], 0, "{t}");
    }
}

/// Every value of `column` in silver `table`, as displayed by Arrow, ordered by `id`.
async fn column_values(lake: &Lake, table: &str, column: &str) -> Vec<String> {
    rows(
        lake,
        &format!("silver/ikhospital/{table}"),
        &format!("SELECT \"{column}\" FROM t ORDER BY id"),
    )
    .await
    .into_iter()
    .map(|mut r| r.remove(0))
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_postgres_type_round_trips_exactly() {
    let server = Server::postgres();
    server.sql(
        "CREATE TYPE mood AS ENUM ('sad', 'ok'); \
         CREATE TABLE all_types ( \
           id int PRIMARY KEY, b bool, i2 int2, i4 int4, i8 int8, f4 float4, f8 float8, \
           n numeric(12, 3), n_wide numeric(50, 10), n_free numeric, money_ money, \
           t text, vc varchar(10), c char(3), e mood, j json, jb jsonb, u uuid, by bytea, \
           d date, tm time, ts timestamp(6), tz timestamptz, iv interval, \
           ai int[], at text[], bits bit(4), inet_ inet, p point)",
    );
    server.sql(
        "SET TIME ZONE 'America/Sao_Paulo'; INSERT INTO all_types VALUES \
         (1, true, -32768, -2147483648, -9223372036854775808, 1.5, -2.25, -123456789.125, \
          '12345678901234567890123456789012345678.0123456789', 0.000000000001, 12.34, \
          'Müller ☃', 'abc', 'ab', 'sad', '{\"a\": [1, 2]}', '{\"b\": null}', \
          'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x00ff10', '1900-02-28', '23:59:59.999999', \
          '2026-11-29 13:14:15.123456', '2026-11-29 10:00:00-03', '1 year 2 mons 3 days 04:05:06.5', \
          '{1,NULL,3}', '{\"x,y\",z}', B'1010', '10.1.2.3/32', '(1,2)'), \
         (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, \
          NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, '{}', NULL, NULL, NULL, NULL)",
    );
    let (dir, lake) = temp_lake();
    let report = run_report(&mut ingest_db(&dir.path().join("lake"), &[&server], &[]));
    let t = table_report(&report, "all_types");
    assert_eq!(
        t["skipped_columns"],
        serde_json::json!(["all_types.p: type point is not supported"])
    );
    let expected: &[(&str, [&str; 2])] = &[
        ("b", ["true", ""]),
        ("i2", ["-32768", ""]),
        ("i4", ["-2147483648", ""]),
        ("i8", ["-9223372036854775808", ""]),
        ("f4", ["1.5", ""]),
        ("f8", ["-2.25", ""]),
        ("n", ["-123456789.125", ""]),
        (
            "n_wide",
            ["12345678901234567890123456789012345678.0123456789", ""],
        ),
        ("n_free", ["0.000000000001", ""]),
        ("money_", ["12.34", ""]),
        ("t", ["Müller ☃", ""]),
        ("vc", ["abc", ""]),
        ("c", ["ab ", ""]),
        ("e", ["sad", ""]),
        ("j", ["{\"a\": [1, 2]}", ""]),
        ("jb", ["{\"b\": null}", ""]),
        ("u", ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", ""]),
        ("by", ["00ff10", ""]),
        ("d", ["1900-02-28", ""]),
        ("tm", ["23:59:59.999999", ""]),
        ("ts", ["2026-11-29T13:14:15.123456", ""]),
        ("tz", ["2026-11-29T13:00:00Z", ""]),
        (
            "iv",
            ["{months: 14, days: 3, microseconds: 14706500000}", ""],
        ),
        ("ai", ["[1, , 3]", "[]"]),
        ("at", ["[x,y, z]", ""]),
        ("bits", ["1010", ""]),
        ("inet_", ["10.1.2.3/32", ""]),
    ];
    for (column, values) in expected {
        assert_eq!(
            column_values(&lake, "all_types", column).await,
            values.to_vec(),
            "column {column}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_mariadb_type_round_trips_exactly() {
    let server = Server::mariadb();
    server.sql(
        "CREATE TABLE all_types ( \
           id INT PRIMARY KEY, ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, siu SMALLINT UNSIGNED, \
           mi MEDIUMINT, iu INT UNSIGNED, bi BIGINT, biu BIGINT UNSIGNED, dec_ DECIMAL(12,3), \
           dec_wide DECIMAL(60,20), fl FLOAT, db DOUBLE, bit1 BIT(1), bit9 BIT(9), \
           ch CHAR(3), vc VARCHAR(20), tx TEXT, en ENUM('a','b'), st SET('x','y','z'), js JSON, \
           bn BINARY(3), vb VARBINARY(8), bl BLOB, d DATE, dt DATETIME(6), ts TIMESTAMP(6) NULL, \
           tm TIME, yr YEAR, uu UUID, g POINT)",
    );
    server.sql(
        "SET time_zone = '+02:00'; INSERT INTO all_types VALUES \
         (1, -128, 255, -32768, 65535, -8388608, 4294967295, -9223372036854775808, \
          18446744073709551615, -123456789.125, 1234567890123456789012345678901234567890.12345678901234567890, \
          1.5, -2.25, b'1', b'100000001', 'ab', 'Gonçalves', 'long ☃ text', 'b', 'x,z', '{\"k\": 1}', \
          'abc', x'00ff', x'0102', '1000-01-01', '2026-11-29 13:14:15.123456', '2026-11-29 12:00:00.5', \
          '-838:59:59', 2026, '123e4567-e89b-12d3-a456-426614174000', POINT(1, 2)), \
         (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, \
          NULL, NULL, NULL, '', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
    );
    let (dir, lake) = temp_lake();
    let report = run_report(&mut ingest_db(&dir.path().join("lake"), &[&server], &[]));
    let t = table_report(&report, "all_types");
    assert_eq!(
        t["skipped_columns"],
        serde_json::json!(["all_types.g: type point is not supported"])
    );
    let expected: &[(&str, [&str; 2])] = &[
        ("ti", ["-128", ""]),
        ("tiu", ["255", ""]),
        ("si", ["-32768", ""]),
        ("siu", ["65535", ""]),
        ("mi", ["-8388608", ""]),
        ("iu", ["4294967295", ""]),
        ("bi", ["-9223372036854775808", ""]),
        ("biu", ["18446744073709551615", ""]),
        ("dec_", ["-123456789.125", ""]),
        (
            "dec_wide",
            [
                "1234567890123456789012345678901234567890.12345678901234567890",
                "",
            ],
        ),
        ("fl", ["1.5", ""]),
        ("db", ["-2.25", ""]),
        ("bit1", ["true", ""]),
        ("bit9", ["257", ""]),
        ("ch", ["ab", ""]),
        ("vc", ["Gonçalves", ""]),
        ("tx", ["long ☃ text", ""]),
        ("en", ["b", ""]),
        ("st", ["[x, z]", "[]"]),
        ("js", ["{\"k\": 1}", ""]),
        ("bn", ["616263", ""]),
        ("vb", ["00ff", ""]),
        ("bl", ["0102", ""]),
        ("d", ["1000-01-01", ""]),
        ("dt", ["2026-11-29T13:14:15.123456", ""]),
        ("ts", ["2026-11-29T10:00:00.500Z", ""]),
        ("tm", ["-838:59:59", ""]),
        ("yr", ["2026", ""]),
        ("uu", ["123e4567-e89b-12d3-a456-426614174000", ""]),
    ];
    for (column, values) in expected {
        assert_eq!(
            column_values(&lake, "all_types", column).await,
            values.to_vec(),
            "column {column}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn schema_drift_adds_keeps_widens_and_stops_only_the_broken_table() {
    let server = Server::postgres();
    server.sql(
        "CREATE TABLE wards (id int PRIMARY KEY, name text, beds int, floor text); \
         INSERT INTO wards VALUES (1, 'Cardiology A', 20, '2'), (2, 'Maternity', 30, '3'); \
         CREATE TABLE rooms (id int PRIMARY KEY, code text); INSERT INTO rooms VALUES (1, 'R1')",
    );
    let (dir, lake) = temp_lake();
    let lake_path = dir.path().join("lake");
    run_report(&mut ingest_db(&lake_path, &[&server], &[]));
    // Added column, dropped column, widened type; and an incompatible change in another table.
    server.sql(
        "ALTER TABLE wards ADD COLUMN opened_on date; ALTER TABLE wards DROP COLUMN floor; \
         ALTER TABLE wards ALTER COLUMN beds TYPE bigint; \
         UPDATE wards SET opened_on = '2020-01-01', beds = 5000000000 WHERE id = 2; \
         INSERT INTO wards VALUES (3, 'Oncology', 12, '2021-06-01'); \
         ALTER TABLE rooms ALTER COLUMN code TYPE int USING 7",
    );
    let output = ingest_db(&lake_path, &[&server], &["--full"])
        .output()
        .unwrap();
    let report = report(&output);
    assert_eq!(output.status.code(), Some(1), "{report:#}");
    let rooms = table_report(&report, "rooms");
    let message = rooms["error"].as_str().unwrap();
    assert!(
        message.contains("column code changed from Utf8 to Int32"),
        "{message}"
    );
    let wards = table_report(&report, "wards");
    assert!(wards["error"].is_null(), "{wards}");
    assert_eq!(wards["widened"], serde_json::json!(["beds: Int64"]));
    assert_eq!(
        rows(
            &lake,
            "silver/ikhospital/wards",
            "SELECT id, beds, CAST(opened_on AS VARCHAR), floor FROM t ORDER BY id"
        )
        .await,
        vec![
            vec!["1".to_string(), "20".into(), "".into(), "2".into()],
            vec![
                "2".to_string(),
                "5000000000".into(),
                "2020-01-01".into(),
                "3".into()
            ],
            vec!["3".to_string(), "12".into(), "2021-06-01".into(), "".into()],
        ]
    );
    assert_eq!(count(&lake, "silver/ikhospital/rooms").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_extraction_killed_at_random_moments_ends_with_every_row_once() {
    let server = Server::mariadb();
    server.sql(
        "SET SESSION max_recursive_iterations = 1000000; \
         CREATE TABLE readings (id BIGINT AUTO_INCREMENT PRIMARY KEY, patient INT, systolic SMALLINT, note VARCHAR(40)); \
         INSERT INTO readings (patient, systolic, note) \
           WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 300000) \
           SELECT n % 997, 90 + n % 90, CONCAT('reading ', n) FROM s",
    );
    let (dir, lake) = temp_lake();
    let lake_path = dir.path().join("lake");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    for round in 0..5 {
        // New rows between runs, so incremental runs are interrupted too.
        server.sql(&format!(
            "INSERT INTO readings (patient, systolic, note) VALUES ({round}, 120, 'round {round}')"
        ));
        let mut child = ingest_db(&lake_path, &[&server], &[])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(200..4000)));
        let _ = child.kill();
        let _ = child.wait();
    }
    let last = run_report(&mut ingest_db(&lake_path, &[&server], &[]));
    assert_eq!(table_report(&last, "readings")["reconciled"], true);
    let at_source = source_count(&server, "readings");
    assert_eq!(at_source, 300_005);
    let max_id: u64 = server
        .sql("SELECT max(id) FROM readings")
        .trim()
        .parse()
        .unwrap();
    let silver = "silver/ikhospital/readings";
    assert_eq!(
        rows(
            &lake,
            silver,
            "SELECT count(*), count(DISTINCT id), max(id) FROM t"
        )
        .await,
        vec![vec![
            at_source.to_string(),
            at_source.to_string(),
            max_id.to_string()
        ]]
    );
    // Bronze: no batch holds a row twice, and together they hold every row.
    let bronze = "bronze/mysql/ikhospital/readings";
    assert_eq!(
        rows(&lake, bronze, "SELECT count(*) FROM (SELECT _batch_id, id FROM t GROUP BY _batch_id, id HAVING count(*) > 1)").await,
        vec![vec!["0".to_string()]]
    );
    assert_eq!(
        rows(&lake, bronze, "SELECT count(DISTINCT id) FROM t").await,
        vec![vec![at_source.to_string()]]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_or_a_dead_server_is_a_clear_error_and_other_sources_still_land() {
    let server = Server::postgres();
    server.sql(
        "CREATE TABLE wards (id int PRIMARY KEY, name text); INSERT INTO wards VALUES (1, 'A')",
    );
    let (dir, lake) = temp_lake();
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let wrong = "Wrong-pw-7319";
    let output = vitalake()
        .arg("--lake")
        .arg(dir.path().join("lake"))
        .args(["ingest", "db", "--json"])
        .args([
            "--source",
            &format!(
                "postgres://vitalake:{wrong}@127.0.0.1:{}/ikhospital",
                server.port
            ),
        ])
        .args([
            "--source",
            &format!("mysql://vitalake@127.0.0.1:{dead_port}/ikhospital"),
        ])
        .args(["--source", &server.url()])
        .args(["--source", &server.url()])
        .env("PGPASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !printed.contains(wrong) && !printed.contains(PASSWORD),
        "a password was printed:\n{printed}"
    );
    let report = report(&output);
    let sources = report["sources"].as_array().unwrap();
    let auth = sources[0]["error"].as_str().unwrap();
    assert!(
        auth.contains("cannot connect to postgres://vitalake@127.0.0.1")
            && auth.contains("password authentication failed"),
        "{auth}"
    );
    let dead = sources[1]["error"].as_str().unwrap();
    assert!(
        dead.contains(&format!(
            "cannot connect to mysql://vitalake@127.0.0.1:{dead_port}/ikhospital"
        )),
        "{dead}"
    );
    assert!(sources[2]["error"].is_null());
    assert_eq!(count(&lake, "silver/ikhospital/wards").await, 1);
    // The same database listed twice lands once.
    let twice = sources[3]["tables"][0]["error"].as_str().unwrap();
    assert!(twice.contains("already extracted"), "{twice}");
}
