//! The official SQL-on-FHIR v2 conformance suite (`../shared/fhir/sql-on-fhir-v2-tests`), every test
//! of every file, experimental ones included. Writes the suite's own report format
//! (`test-report.schema.json`) to `target/tmp/sql-on-fhir-v2-test-report.json`.

use serde_json::{Map, Value as Json, json};
use vitalake::fhirpath::Item;
use vitalake::views::{Cell, View};

use crate::common::shared_fhir;

/// Runs one test; `Err` says why it failed.
fn run_test(resources: &[Json], test: &Json) -> Result<(), String> {
    let expect_error = test.get("expectError").and_then(Json::as_bool) == Some(true);
    let outcome = View::from_json(&test["view"])
        .map_err(|e| e.to_string())
        .and_then(|view| {
            let mut rows = Vec::new();
            for resource in resources {
                rows.extend(view.rows(resource).map_err(|e| e.to_string())?);
            }
            Ok((view, rows))
        });
    let (view, rows) = match (outcome, expect_error) {
        (Err(_), true) => return Ok(()),
        (Ok(_), true) => return Err("expected an error, got rows".into()),
        (Err(error), false) => return Err(error),
        (Ok(result), false) => result,
    };
    if let Some(columns) = test.get("expectColumns").and_then(Json::as_array) {
        let names: Vec<&str> = view.columns().iter().map(|c| c.name.as_str()).collect();
        let expected: Vec<&str> = columns.iter().filter_map(Json::as_str).collect();
        if names != expected {
            return Err(format!("columns {names:?}, expected {expected:?}"));
        }
    }
    if let Some(count) = test.get("expectCount").and_then(Json::as_u64) {
        return if rows.len() as u64 == count {
            Ok(())
        } else {
            Err(format!("{} rows, expected {count}", rows.len()))
        };
    }
    let expected = test
        .get("expect")
        .and_then(Json::as_array)
        .ok_or("test has no expect")?;
    // Each expected value is read as a cell of the column's type, so `1.5` meets a decimal and
    // "2010-10-10T00:00:00.000+14:00" the instant it names, whatever the text looks like.
    let mut expected_rows = Vec::new();
    for row in expected {
        let object = row.as_object().ok_or("expected rows are objects")?;
        if object.len() != view.columns().len() {
            return Err(format!(
                "expected columns {:?}, view has {}",
                object.keys().collect::<Vec<_>>(),
                view.columns().len()
            ));
        }
        let mut cells = Vec::new();
        for column in view.columns() {
            let value = object
                .get(&column.name)
                .ok_or(format!("column {} not expected", column.name))?;
            cells.push(expected_cell(value, column)?);
        }
        expected_rows.push(cells);
    }
    let mut actual = rows.iter().map(|r| format!("{r:?}")).collect::<Vec<_>>();
    let mut wanted = expected_rows
        .iter()
        .map(|r| format!("{r:?}"))
        .collect::<Vec<_>>();
    actual.sort();
    wanted.sort();
    if actual == wanted {
        Ok(())
    } else {
        Err(format!("rows {actual:?}\nexpected {wanted:?}"))
    }
}

fn expected_cell(value: &Json, column: &vitalake::views::ColumnSpec) -> Result<Cell, String> {
    match value {
        Json::Null => Ok(Cell::Null),
        Json::Array(items) if column.collection => items
            .iter()
            .map(|i| column.column_type.cell(&Item::Node(i, None)))
            .collect::<Result<_, _>>()
            .map(Cell::List),
        value => column.column_type.cell(&Item::Node(value, None)),
    }
}

/// The suite's 22 test files, in name order.
fn suite_files() -> Vec<std::path::PathBuf> {
    let folder = shared_fhir("sql-on-fhir-v2-tests");
    let mut files: Vec<_> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            !name.ends_with("schema.json") && name != "implementations.json"
        })
        .collect();
    files.sort();
    assert_eq!(files.len(), 22, "the suite has 22 test files");
    files
}

#[test]
fn sql_on_fhir_v2_conformance_suite() {
    let files = suite_files();
    let mut report = Map::new();
    let (mut passed, mut failures) = (0, Vec::new());
    for file in &files {
        let suite: Json = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        let resources = suite["resources"].as_array().unwrap();
        let mut results = Vec::new();
        for test in suite["tests"].as_array().unwrap() {
            let name = test["title"].as_str().unwrap();
            let outcome = run_test(resources, test);
            let mut result = json!({"passed": outcome.is_ok()});
            match outcome {
                Ok(()) => passed += 1,
                Err(error) => {
                    result["error"] = json!(error);
                    failures.push(format!(
                        "{} / {name}: {error}",
                        file.file_name().unwrap().to_string_lossy()
                    ));
                }
            }
            results.push(json!({"name": name, "result": result}));
        }
        report.insert(
            file.file_name().unwrap().to_string_lossy().into_owned(),
            json!({"tests": results}),
        );
    }
    let path =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("sql-on-fhir-v2-test-report.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&Json::Object(report)).unwrap(),
    )
    .unwrap();
    println!(
        "{passed} of {} passed; report: {}",
        passed + failures.len(),
        path.display()
    );
    assert!(
        failures.is_empty(),
        "{} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(passed, 134);
}

/// One test run as a user runs a view: the view and the resources in files, then
/// `vitalake views run --view VIEW --format json RESOURCES`; its rows must be the expected ones, as
/// the suite writes them (every column, null ones included; values in their FHIR form).
fn run_through_the_command(
    dir: &std::path::Path,
    resources: &[Json],
    test: &Json,
) -> Result<(), String> {
    let view = dir.join("view.json");
    let input = dir.join("resources.ndjson");
    std::fs::write(&view, test["view"].to_string()).unwrap();
    let lines: String = resources.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&input, lines).unwrap();
    let run = |format: &str| {
        crate::common::vitalake()
            .args(["views", "run", "--format", format, "--view"])
            .arg(&view)
            .arg(&input)
            .output()
            .unwrap()
    };
    let out = run("json");
    let expect_error = test.get("expectError").and_then(Json::as_bool) == Some(true);
    match (out.status.success(), expect_error) {
        (false, true) => return Ok(()),
        (true, true) => return Err("expected an error, the command succeeded".into()),
        (false, false) => return Err(String::from_utf8_lossy(&out.stderr).into_owned()),
        (true, false) => {}
    }
    let rows: Vec<Json> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).map_err(|e| format!("{e}: {l}")))
        .collect::<Result<_, _>>()?;
    if let Some(columns) = test.get("expectColumns").and_then(Json::as_array) {
        let csv = run("csv");
        let header = String::from_utf8_lossy(&csv.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        let expected: Vec<&str> = columns.iter().filter_map(Json::as_str).collect();
        if header != expected.join(",") {
            return Err(format!("columns {header}, expected {expected:?}"));
        }
    }
    if let Some(count) = test.get("expectCount").and_then(Json::as_u64) {
        return match rows.len() as u64 == count {
            true => Ok(()),
            false => Err(format!("{} rows, expected {count}", rows.len())),
        };
    }
    // Rows compare as sets of objects whatever their key order; values exactly, as JSON.
    let normal = |rows: &[Json]| {
        let mut out: Vec<String> = rows
            .iter()
            .map(|r| {
                let sorted: std::collections::BTreeMap<&String, &Json> =
                    r.as_object().into_iter().flatten().collect();
                serde_json::to_string(&sorted).unwrap()
            })
            .collect();
        out.sort();
        out
    };
    let expected = test["expect"].as_array().ok_or("test has no expect")?;
    let (got, wanted) = (normal(&rows), normal(expected));
    match got == wanted {
        true => Ok(()),
        false => Err(format!("rows {got:?}\nexpected {wanted:?}")),
    }
}

#[test]
fn the_suite_passes_through_views_run_as_a_user_runs_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut passed, mut failures) = (0, Vec::new());
    for file in suite_files() {
        let suite: Json = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let resources = suite["resources"].as_array().unwrap();
        for test in suite["tests"].as_array().unwrap() {
            match run_through_the_command(dir.path(), resources, test) {
                Ok(()) => passed += 1,
                Err(error) => failures.push(format!(
                    "{} / {}: {error}",
                    file.file_name().unwrap().to_string_lossy(),
                    test["title"].as_str().unwrap()
                )),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{passed} passed, {} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(passed, 134);
}
