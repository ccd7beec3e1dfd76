//! Fuzzing, run as ordinary tests on the stable toolchain: a mutational fuzzer over a seed corpus
//! (real FHIR material, the shipped views and rules, and `tests/fuzz-corpus/<target>/`).
//!
//! `cargo fuzz` needs a nightly toolchain this project does not have, and `bolero`'s test mode only
//! generates random values, which almost never reach past a JSON or FHIRPath parser's first byte.
//! Mutating real inputs does: each iteration takes a corpus entry and applies a few byte-level and
//! token-level edits (flips, cuts, repeats, splices of other entries, nesting bombs, the target's
//! own tokens). Any panic is a defect. A failing input is written to a temporary file whose path
//! the failure prints (a stack overflow aborts the process: the input being run is always in
//! `<tmp>/vitalake-fuzz-<target>.current`); once fixed, it joins `tests/fuzz-corpus/<target>/` so
//! it is tried on every run from then on.
//!
//! `VITALAKE_FUZZ_SECONDS` sets each target's time (default 15 s), `VITALAKE_FUZZ_SEED` its seed
//! (default: from the clock, printed).

use std::io::{Read, Write};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::common::shared_fhir;

/// Runs `target` on mutations of `seeds` plus the target's corpus folder for the fuzz budget.
fn fuzz(name: &str, mut seeds: Vec<Vec<u8>>, tokens: &[&str], target: impl Fn(&[u8])) {
    seeds.extend(corpus(name));
    assert!(!seeds.is_empty(), "{name}: no seeds");
    let budget = Duration::from_secs_f64(
        std::env::var("VITALAKE_FUZZ_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(15.0),
    );
    let seed: u64 = std::env::var("VITALAKE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let current = std::env::temp_dir().join(format!("vitalake-fuzz-{name}.current"));
    eprintln!(
        "fuzz {name}: seed {seed}, {} seeds, input being run in {}",
        seeds.len(),
        current.display()
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let mut runs = 0u64;
    // Every seed once as it is, then mutations until the budget is spent.
    let mut inputs = seeds.clone().into_iter();
    while started.elapsed() < budget || inputs.len() > 0 {
        let input = inputs
            .next()
            .unwrap_or_else(|| mutate(&mut rng, &seeds, tokens));
        std::fs::write(&current, &input).unwrap();
        if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| target(&input))) {
            let kept = std::env::temp_dir().join(format!(
                "vitalake-fuzz-{name}-{}.crash",
                uuid::Uuid::now_v7()
            ));
            std::fs::write(&kept, &input).unwrap();
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!(
                "fuzz {name}: a panic after {runs} runs (seed {seed}): {message}\ninput kept in {}:\n{}",
                kept.display(),
                String::from_utf8_lossy(&input[..input.len().min(2000)])
            );
        }
        runs += 1;
    }
    let _ = std::fs::remove_file(&current);
    eprintln!("fuzz {name}: {runs} runs in {:?}", started.elapsed());
    assert!(
        runs > seeds.len() as u64,
        "{name}: the budget ran no mutation"
    );
}

/// The files of `tests/fuzz-corpus/<target>/`.
fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-corpus")
        .join(target);
    files(&dir, "")
}

/// The contents of the files in `dir` whose names end with `suffix`.
fn files(dir: &Path, suffix: &str) -> Vec<Vec<u8>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.to_string_lossy().ends_with(suffix))
        .collect();
    paths.sort();
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// One input: a corpus entry with one to four edits.
fn mutate(rng: &mut StdRng, seeds: &[Vec<u8>], tokens: &[&str]) -> Vec<u8> {
    let mut data = seeds[rng.random_range(0..seeds.len())].clone();
    for _ in 0..rng.random_range(1..=4) {
        let len = data.len();
        let at = rng.random_range(0..=len);
        match rng.random_range(0..9) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                data[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                data[i] = *b"\0\"\\{}[],:-+.eE0123456789 \n\t\xff"
                    .get(rng.random_range(0..27))
                    .unwrap();
            }
            2 => {
                let end = rng.random_range(at..=len.min(at + 64));
                data.drain(at..end);
            }
            3 => {
                let end = rng.random_range(at..=len.min(at + 256));
                let piece = data[at..end].to_vec();
                for _ in 0..rng.random_range(1..4) {
                    data.splice(at..at, piece.iter().copied());
                }
            }
            4 => {
                let token = tokens[rng.random_range(0..tokens.len())];
                data.splice(at..at, token.bytes());
            }
            5 => {
                let other = &seeds[rng.random_range(0..seeds.len())];
                let from = rng.random_range(0..=other.len());
                let end = rng.random_range(from..=other.len().min(from + 512));
                data.splice(at..at, other[from..end].iter().copied());
            }
            6 => data.truncate(at),
            7 => {
                // A nesting bomb: recursion is where parsers overflow their stack.
                let open = [b'(', b'[', b'{', b'-', b'!'][rng.random_range(0..5)];
                let depth = [10, 200, 5_000, 100_000][rng.random_range(0..4)];
                data.splice(at..at, std::iter::repeat_n(open, depth));
            }
            _ => {
                let number = [
                    "1e309",
                    "-0",
                    "9".repeat(400).as_str(),
                    "0.0000000000000000000000001",
                    "1E-400",
                    "-9223372036854775809",
                ][rng.random_range(0..6)]
                .to_string();
                data.splice(at..at, number.bytes());
            }
        }
    }
    data.truncate(1 << 20);
    data
}

fn fhir_examples() -> Vec<Vec<u8>> {
    files(Path::new(&shared_fhir("r4/examples")), ".json")
}

const JSON_TOKENS: &[&str] = &[
    "{\"resourceType\":\"Bundle\",\"type\":\"transaction\",\"entry\":[{\"resource\":",
    "{\"resourceType\":\"Observation\",\"id\":\"x\"}",
    "\"resourceType\"",
    "\"id\":\"",
    "\"meta\":{\"versionId\":\"1\",\"lastUpdated\":\"2026-01-01T00:00:00Z\"}",
    "\"entry\":[",
    "\"request\":{\"method\":\"DELETE\",\"url\":\"Patient/",
    "\"fullUrl\":\"urn:uuid:",
    "\"valueQuantity\":{\"value\":",
    "\"_birthDate\":{\"extension\":[",
    "\"contained\":[",
    "null",
    "\\ud800",
    "\u{feff}",
    "\n",
];

/// The decoder and structural check, as `ingest fhir` and `stream` run them: a JSON document or
/// an NDJSON line in, resources or rejections with their reasons out, never a panic.
#[test]
fn fuzz_fhir_decoder_and_structural_check() {
    let mut seeds = fhir_examples();
    seeds.extend(files(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("samples/stream")
            .as_path(),
        ".ndjson",
    ));
    fuzz("fhir-decode", seeds, JSON_TOKENS, |input| {
        let text = String::from_utf8_lossy(input);
        for (line, piece) in std::iter::once(text.as_ref())
            .chain(text.lines())
            .enumerate()
        {
            let mut out = Vec::new();
            let options = vitalake::fhir::DecodeOptions {
                max_resource_bytes: 1 << 20,
                keep_parse: line % 2 == 0,
            };
            vitalake::fhir::decode(
                piece,
                vitalake::fhir::Location::line(line as u64 + 1),
                &options,
                &mut out,
            );
            // Every piece ends as resources or rejections, each with its reason.
            assert!(!out.is_empty(), "nothing came out of {piece:?}");
            for decoded in out {
                if let vitalake::fhir::Decoded::Rejected(rejected) = decoded {
                    assert!(!rejected.issues.is_empty(), "a rejection without a reason");
                }
            }
        }
    });
}

/// FHIRPath: every expression the shipped views and the SQL-on-FHIR suite use, mutated, parsed and
/// evaluated on real resources; a bad expression is a parse or evaluation error.
#[test]
fn fuzz_fhirpath_parser_and_evaluator() {
    let mut expressions = Vec::new();
    let suite = Path::new(&shared_fhir("sql-on-fhir-v2-tests")).to_path_buf();
    let views = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles/views");
    for json in files(&suite, ".json").iter().chain(&files(&views, ".json")) {
        collect_strings(&serde_json::from_slice(json).unwrap(), &mut expressions);
    }
    expressions.sort();
    expressions.dedup();
    let resources: Vec<Value> = fhir_examples()
        .iter()
        .map(|b| serde_json::from_slice(b).unwrap())
        .collect();
    let tokens = [
        ".where(",
        ".select(",
        ".ofType(",
        "resolve()",
        ".exists()",
        ".first()",
        "%resource",
        "%rowIndex",
        "$this",
        "$index",
        " and ",
        " or ",
        " implies ",
        " | ",
        " = ",
        " ~ ",
        " <= ",
        " div ",
        " mod ",
        " + ",
        "'text'",
        "@2026-01-01T",
        "@T12:",
        "10 'mm[Hg]'",
        "{}",
        "[0]",
        "getResourceKey()",
        "getReferenceKey(Patient)",
        "extension('http://x')",
        ".join(',')",
        ".iif(",
        ".substring(",
        ".toInteger()",
        "-",
        "not()",
        "`id`",
    ];
    fuzz(
        "fhirpath",
        expressions.into_iter().map(String::into_bytes).collect(),
        &tokens,
        |input| {
            let text = String::from_utf8_lossy(input);
            if let Ok(expression) = vitalake::fhirpath::Expression::parse(&text) {
                for resource in &resources {
                    let _ = expression.evaluate_resource(resource, &());
                }
            }
        },
    );
}

/// Every string of a JSON document under a key that holds FHIRPath in a ViewDefinition.
fn collect_strings(json: &Value, out: &mut Vec<String>) {
    match json {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("path" | "forEach" | "forEachOrNull" | "repeat", Value::String(s)) => {
                        out.push(s.clone())
                    }
                    ("where", Value::Array(items)) => {
                        for item in items {
                            if let Some(Value::String(s)) = item.get("path") {
                                out.push(s.clone());
                            }
                        }
                    }
                    _ => collect_strings(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|i| collect_strings(i, out)),
        _ => {}
    }
}

/// ViewDefinition loading, as `views run` and the silver views do it, then one run on a resource:
/// a bad definition is a `ViewError`.
#[test]
fn fuzz_view_definition_loading() {
    let views = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles/views");
    let mut seeds = files(&views, ".json");
    seeds.extend(files(Path::new(&shared_fhir("view-definitions")), ".json"));
    let patient: Value = serde_json::from_slice(
        &std::fs::read(shared_fhir("r4/examples/Patient-example.json")).unwrap(),
    )
    .unwrap();
    let tokens = [
        "\"column\":[{\"name\":\"x\",\"path\":\"id\"}]",
        "\"select\":[",
        "\"forEach\":\"",
        "\"unionAll\":[",
        "\"where\":[{\"path\":\"",
        "\"constant\":[{\"name\":\"c\",\"valueInteger\":1}]",
        "\"type\":\"",
        "\"collection\":true",
        "\"resource\":\"Patient\"",
        "\"tag\":[",
    ];
    fuzz("view-definition", seeds, &tokens, |input| {
        let Ok(json) = serde_json::from_slice::<Value>(input) else {
            return;
        };
        if let Ok(view) = vitalake::views::View::from_json(&json) {
            let _ = view.rows(&patient);
            let _ = view.rows_as_written(&patient);
            let _ = view.schema();
        }
    });
}

/// The rule file loader (`rules check`, `stream --rules`): a bad rule file is a list of problems.
#[test]
fn fuzz_rule_file_loader() {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("anomaly-rules");
    let tokens = [
        "\n  - ",
        ": ",
        "\"",
        "'",
        "{",
        "[",
        "&anchor ",
        "*anchor",
        "!!str ",
        "|\n",
        ">\n",
        "---\n",
        "...\n",
        "window: 5m\n",
        "threshold: ",
        "\t",
        "#",
        "systolic",
        "1e999",
    ];
    fuzz("rule-file", files(&rules, ".yaml"), &tokens, |input| {
        if let Err(problems) = vitalake::rules::parse_rule("fuzzed.yaml", input) {
            assert!(!problems.is_empty(), "an error without a problem");
        }
    });
}

/// The Postgres-wire start-up message `vitalake serve` reads from every new connection (SSL and
/// GSS requests, protocol versions, parameters, cancel requests), over a real socket: any panic
/// in the server's connection tasks is a defect, and the server must still serve a real client.
#[test]
fn fuzz_postgres_startup_message() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static PANICS: AtomicUsize = AtomicUsize::new(0);
    const THREADS: &str = "pgwire-fuzz";
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !std::thread::current()
            .name()
            .is_some_and(|n| n.starts_with(THREADS))
        {
            return previous(info);
        }
        PANICS.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));
    let (port, _server) = start_server(THREADS);

    let startup = |parameters: &[(&str, &str)], version: u32| {
        let mut body = version.to_be_bytes().to_vec();
        for (key, value) in parameters {
            body.extend(key.as_bytes());
            body.push(0);
            body.extend(value.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut message = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        message.extend(body);
        message
    };
    let mut seeds = vec![
        startup(&[("user", "ana"), ("database", "lake")], 196_608),
        startup(
            &[
                ("user", "powerbi"),
                ("database", "lake"),
                ("application_name", "PowerBI"),
                ("client_encoding", "UTF8"),
                ("options", "-c search_path=silver"),
            ],
            196_608,
        ),
        startup(&[("user", "nobody")], 196_608),
        [8u32.to_be_bytes(), 80_877_103u32.to_be_bytes()].concat(), // SSLRequest
        [8u32.to_be_bytes(), 80_877_104u32.to_be_bytes()].concat(), // GSSENCRequest
        [
            16u32.to_be_bytes(),
            80_877_102u32.to_be_bytes(),
            7u32.to_be_bytes(),
            9u32.to_be_bytes(),
        ]
        .concat(), // CancelRequest
        startup(&[("user", "ana")], 131_072),                       // protocol 2.0
    ];
    // A password message after the start-up, as a client answering the server's challenge sends.
    let mut with_password = seeds[0].clone();
    with_password.extend(b"p\0\0\0\x0dAn4lyst-pw\0");
    seeds.push(with_password);
    let tokens = [
        "\0",
        "user\0",
        "database\0",
        "\u{ffff}",
        "\x7f\u{7ff}",
        "\0\0\0\x08",
    ];
    let exchange = |input: &[u8]| {
        let Ok(mut socket) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            panic!("the server stopped accepting connections");
        };
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let _ = socket.write_all(input);
        let _ = socket.shutdown(std::net::Shutdown::Write);
        let mut answer = Vec::new();
        let _ = socket.read_to_end(&mut answer);
        answer
    };
    // What panicked in pgwire's decoder (a length under 4; a Parse shorter than its fields) is a
    // protocol violation the client is told of.
    for malformed in [&b"Q\0\0\0\x02"[..], b"P\0\0\0\x0a\0\0\0\x03\0\0"] {
        let answer = exchange(&[&seeds[0][..], malformed].concat());
        assert!(
            String::from_utf8_lossy(&answer).contains("08P01"),
            "{answer:?}"
        );
    }
    fuzz("postgres-startup", seeds, &tokens, |input| {
        exchange(input);
        assert_eq!(PANICS.load(Ordering::SeqCst), 0, "the server panicked");
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "the server panicked");

    // And it still serves a real client.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let rows = runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(
            &format!("host=127.0.0.1 port={port} user=ana password=An4lyst-pw dbname=lake"),
            tokio_postgres::NoTls,
        )
        .await
        .expect("a real client connects after the fuzzing");
        tokio::spawn(connection);
        client.simple_query("SELECT 1").await.unwrap().len()
    });
    assert!(rows > 0);
}

/// `vitalake serve` on an empty lake, on a runtime whose threads are named `threads`.
fn start_server(threads: &'static str) -> (u16, std::thread::JoinHandle<()>) {
    use vitalake::serve::users::{Role, UserConfig};
    let dir = tempfile::tempdir().unwrap();
    let lake = vitalake::lake::Lake::open(&dir.path().join("lake").display().to_string()).unwrap();
    let config = vitalake::serve::ServeConfig {
        users: vec![UserConfig {
            name: "ana".into(),
            role: Role::Analyst,
            password_env: "FUZZ_PW".into(),
        }],
        ..vitalake::serve::ServeConfig::default()
    };
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let _dir = dir;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(threads)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = vitalake::serve::bind("127.0.0.1:0").await.unwrap();
            let server = vitalake::serve::Server::new(lake, config, |var| {
                (var == "FUZZ_PW").then(|| "An4lyst-pw".to_string())
            })
            .await
            .unwrap();
            port_tx.send(listener.local_addr().unwrap().port()).unwrap();
            server.run(listener, std::future::pending()).await;
        });
    });
    (port_rx.recv().expect("the server starts"), thread)
}
