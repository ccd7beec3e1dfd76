//! Data-quality expectations: the hospital's business rules, each a SQL query over the silver
//! tables that returns the rows breaking it. Declared in a TOML file, never hard-coded per table.
//! Rows are kept; the breaking ones are counted in the report and flagged in `silver/expectations`.
//!
//! ```toml
//! [[expectation]]
//! name = "urology_male_only"
//! description = "Urology sees only male patients"
//! table = "events"          # the table whose rows are checked (the count's denominator)
//! sql = "SELECT e.id FROM events e JOIN patients p ON p.id = e.patient_id WHERE ..."
//! ```
//!
//! Every landed table is visible under its own name, current rows only (`_deleted_at IS NULL`).
//! The first column of the query's rows identifies the flagged row.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use deltalake::arrow::array::{ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use serde::{Deserialize, Serialize};

use crate::lake::{AppendBuilder, Lake, read};

use super::DbError;

pub use crate::lake::layout::EXPECTATIONS_TABLE;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub table: String,
    pub sql: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectationsFile {
    #[serde(default)]
    expectation: Vec<Expectation>,
}

/// Reads the expectations of a TOML file.
pub fn load(path: &Path) -> Result<Vec<Expectation>, DbError> {
    let err = |message: String| DbError::Expectations {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let file: ExpectationsFile = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
    Ok(file.expectation)
}

/// How one expectation fared.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExpectationReport {
    pub name: String,
    pub table: String,
    /// Current rows of the checked table.
    pub checked: u64,
    pub flagged: u64,
    /// The first few flagged rows' ids.
    pub examples: Vec<String>,
    pub error: Option<String>,
}

/// Runs every expectation over the landed silver tables (`table name -> silver path`).
pub async fn check(
    lake: &Lake,
    landed: &BTreeMap<String, String>,
    expectations: &[Expectation],
    batch_id: &str,
) -> Result<Vec<ExpectationReport>, DbError> {
    if expectations.is_empty() {
        return Ok(Vec::new());
    }
    let ctx = read::session();
    for (name, path) in landed {
        if let Some(table) = lake.existing_table(path).await? {
            let raw = format!("raw_{name}");
            read::register(&ctx, &table, path, &raw).await?;
            ctx.sql(&format!(
                "CREATE VIEW \"{name}\" AS SELECT * FROM \"{raw}\" WHERE _deleted_at IS NULL"
            ))
            .await
            .map_err(|e| DbError::Table {
                table: name.clone(),
                message: e.to_string(),
            })?;
        }
    }
    let mut reports = Vec::new();
    let mut flagged_rows: Vec<(String, String, String)> = Vec::new();
    for expectation in expectations {
        let mut report = ExpectationReport {
            name: expectation.name.clone(),
            table: expectation.table.clone(),
            ..ExpectationReport::default()
        };
        match run(&ctx, expectation).await {
            Ok((checked, ids)) => {
                report.checked = checked;
                report.flagged = ids.len() as u64;
                report.examples = ids.iter().take(5).cloned().collect();
                tracing::info!(
                    expectation = expectation.name.as_str(),
                    checked,
                    flagged = ids.len(),
                    "expectation checked"
                );
                flagged_rows.extend(
                    ids.into_iter()
                        .map(|id| (expectation.name.clone(), expectation.table.clone(), id)),
                );
            }
            Err(message) => {
                tracing::warn!(
                    expectation = expectation.name.as_str(),
                    "expectation failed to run"
                );
                report.error = Some(message);
            }
        }
        reports.push(report);
    }
    record(lake, &flagged_rows, batch_id).await?;
    Ok(reports)
}

async fn run(
    ctx: &deltalake::datafusion::prelude::SessionContext,
    expectation: &Expectation,
) -> Result<(u64, Vec<String>), String> {
    let collect = |sql: String| async move {
        ctx.sql(&sql)
            .await
            .map_err(|e| e.to_string())?
            .collect()
            .await
            .map_err(|e| e.to_string())
    };
    let counted = collect(format!("SELECT count(*) FROM \"{}\"", expectation.table)).await?;
    let checked = counted
        .first()
        .and_then(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<deltalake::arrow::array::Int64Array>()
                .map(|a| a.value(0) as u64)
        })
        .unwrap_or(0);
    let rows = collect(expectation.sql.clone()).await?;
    let mut ids = Vec::new();
    for batch in rows {
        if batch.num_columns() == 0 {
            return Err("the query returns no column".into());
        }
        let text = cast(batch.column(0), &DataType::Utf8).map_err(|e| e.to_string())?;
        let text = text
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("cast to Utf8");
        ids.extend(text.iter().map(|v| v.unwrap_or_default().to_string()));
    }
    Ok((checked, ids))
}

/// Appends this run's flagged rows to `silver/expectations`.
async fn record(
    lake: &Lake,
    rows: &[(String, String, String)],
    batch_id: &str,
) -> Result<(), DbError> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("expectation", DataType::Utf8, false),
        Field::new("table", DataType::Utf8, false),
        Field::new("row_id", DataType::Utf8, false),
        Field::new("batch_id", DataType::Utf8, false),
        Field::new(
            "checked_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]));
    let now = chrono::Utc::now().timestamp_micros();
    let column = |f: fn(&(String, String, String)) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let batch = RecordBatch::try_new(
        schema,
        vec![
            column(|r| &r.0),
            column(|r| &r.1),
            column(|r| &r.2),
            Arc::new(StringArray::from(vec![batch_id; rows.len()])),
            Arc::new(TimestampMicrosecondArray::from(vec![now; rows.len()]).with_timezone("UTC")),
        ],
    )
    .expect("expectation columns line up");
    let table = lake.table(EXPECTATIONS_TABLE).await?;
    AppendBuilder::new(table, EXPECTATIONS_TABLE, vec![batch])
        .with_metadata("vitalake.batch_id", batch_id)
        .execute()
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let doc = include_str!("expectations.rs");
        let example: String = doc
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!").trim_start().to_string() + "\n")
            .collect();
        let file: ExpectationsFile = toml::from_str(&example).unwrap();
        assert_eq!(file.expectation.len(), 1);
        assert_eq!(file.expectation[0].table, "events");
    }
}
