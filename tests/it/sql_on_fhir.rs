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

#[test]
fn sql_on_fhir_v2_conformance_suite() {
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
