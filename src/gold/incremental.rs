//! Incremental refresh: recompute only the gold rows whose inputs changed since the last refresh.
//!
//! A gold SQL file opts in with a comment line naming its key and, per input table, the expressions
//! that give that key from an input row:
//!
//! ```sql
//! -- incremental: patient_id, day <- silver.blood_pressure(patient_id, CAST(effective_time AS DATE))
//! -- incremental: patient_id <- silver.patient(id); silver.blood_pressure(patient_id); silver.alerts(patient_id)
//! ```
//!
//! It promises that a gold row depends only on the input rows with its key. A refresh then:
//! 1. reads the files each input's commits added or removed since the versions the last refresh
//!    recorded (as Delta transactions in the gold commit), so rows added, replaced and deleted count;
//! 2. runs the table's SQL over the inputs cut down to the keys found there;
//! 3. replaces the gold rows of those keys with the result, in one commit that records the versions.
//!
//! Whatever it cannot tell (no gold table yet, an input it has not recorded, a schema change, a
//! commit gone from the log, a removed file already vacuumed) makes it a full refresh.

use std::sync::Arc;

use deltalake::arrow::array::Array;
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::DataType;
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::datafusion::datasource::MemTable;
use deltalake::datafusion::execution::options::ParquetReadOptions;
use deltalake::datafusion::prelude::SessionContext;

use super::GoldError;
use super::catalog::Registered;
use crate::lake::{app_version, changes};

/// What a gold table's `-- incremental:` line says.
#[derive(Debug, Clone, PartialEq)]
pub struct Incremental {
    /// The gold table's key columns.
    pub key: Vec<String>,
    pub inputs: Vec<Input>,
}

/// An input table and the SQL expressions over its rows that give the gold key, in key order.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    pub table: String,
    pub key: Vec<String>,
}

/// The `-- incremental:` line of a gold SQL file, if it has one.
pub fn declared(sql: &str) -> Result<Option<Incremental>, String> {
    let Some(line) = sql
        .lines()
        .find_map(|l| l.trim().strip_prefix("-- incremental:"))
    else {
        return Ok(None);
    };
    let (key, inputs) = line
        .split_once("<-")
        .ok_or("expected `-- incremental: KEY, ... <- table(expr, ...); ...`")?;
    let key: Vec<String> = split_top_level(key, ',');
    let mut parsed = Vec::new();
    for input in split_top_level(inputs, ';') {
        let (table, rest) = input
            .split_once('(')
            .ok_or_else(|| format!("`{input}`: expected table(expr, ...)"))?;
        let exprs = rest
            .strip_suffix(')')
            .ok_or_else(|| format!("`{input}`: missing `)`"))?;
        let exprs = split_top_level(exprs, ',');
        if exprs.len() != key.len() {
            return Err(format!(
                "`{input}`: {} expressions for a key of {} columns",
                exprs.len(),
                key.len()
            ));
        }
        parsed.push(Input {
            table: table.trim().to_string(),
            key: exprs,
        });
    }
    if key.is_empty() || parsed.is_empty() {
        return Err("a key and at least one input are needed".into());
    }
    Ok(Some(Incremental {
        key,
        inputs: parsed,
    }))
}

/// Splits on `separator` outside parentheses and quotes; trims; drops empty parts.
fn split_top_level(text: &str, separator: char) -> Vec<String> {
    let (mut parts, mut current, mut depth, mut quoted) = (Vec::new(), String::new(), 0, false);
    for c in text.chars() {
        match c {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            c if c == separator && depth == 0 && !quoted => {
                parts.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    parts.push(current);
    parts
        .into_iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The Delta application id under which a gold commit records the version of one input it read.
pub fn app_id(gold: &str, input: &str) -> String {
    format!("vitalake-gold/{gold}/{input}")
}

/// The keys to recompute: one row per changed key, columns `__k0`, `__k1`...
pub struct Changes {
    pub keys: Vec<RecordBatch>,
}

impl Changes {
    pub fn count(&self) -> usize {
        self.keys.iter().map(RecordBatch::num_rows).sum()
    }
}

/// What changed in the inputs since the gold table's last refresh, or None when only a full
/// refresh can tell.
pub async fn changes(
    ctx: &SessionContext,
    registered: &std::collections::HashMap<String, Registered>,
    gold: &str,
    incremental: &Incremental,
) -> Result<Option<Changes>, GoldError> {
    // The gold table as the session registered it: its `txn` versions say what the last refresh read.
    let Some(Registered {
        path: gold_path,
        table: gold_table,
    }) = registered.get(&format!("gold.{gold}"))
    else {
        return Ok(None);
    };
    // The changed files are read in a session of their own (with the same object stores).
    let scratch = SessionContext::new_with_config_rt(ctx.copied_config(), ctx.runtime_env());
    let mut selects = Vec::new();
    for (i, input) in incremental.inputs.iter().enumerate() {
        let Some(table) = registered.get(&input.table) else {
            return Ok(None);
        };
        let Some(last) = app_version(gold_table, gold_path, &app_id(gold, &input.table)).await?
        else {
            return Ok(None);
        };
        let Some(files) =
            changes::files_changed_between(&table.table, &table.path, last as u64, table.version())
                .await?
        else {
            return Ok(None);
        };
        if files.is_empty() {
            continue;
        }
        // A removed file VACUUM already deleted: its rows' keys are unknown.
        let Ok(frame) = scratch
            .read_parquet(files, ParquetReadOptions::default())
            .await
        else {
            return Ok(None);
        };
        let name = format!("changed_files_{i}");
        scratch.register_table(name.as_str(), frame.into_view())?;
        let columns = input
            .key
            .iter()
            .enumerate()
            .map(|(k, expr)| format!("{expr} AS __k{k}"))
            .collect::<Vec<_>>()
            .join(", ");
        selects.push(format!("SELECT {columns} FROM {name}"));
    }
    let keys = if selects.is_empty() {
        Vec::new()
    } else {
        let sql = format!("SELECT DISTINCT * FROM ({})", selects.join(" UNION ALL "));
        let collected = match scratch.sql(&sql).await {
            Ok(frame) => frame.collect().await,
            Err(e) => Err(e),
        };
        match collected {
            Ok(batches) => batches,
            // A removed file already vacuumed, or an old file without a column the key needs.
            Err(_) => return Ok(None),
        }
    };
    Ok(Some(Changes { keys }))
}

/// A copy of `ctx` whose inputs hold only the rows whose key is among `changes.keys`.
pub async fn restrict_inputs(
    ctx: &SessionContext,
    incremental: &Incremental,
    changes: &Changes,
) -> Result<SessionContext, GoldError> {
    let ctx = super::catalog::copy_session(ctx).await?;
    let Some(first) = changes.keys.first() else {
        return Ok(ctx);
    };
    let keys = MemTable::try_new(first.schema(), vec![changes.keys.clone()])?;
    ctx.register_table("__changed_keys", Arc::new(keys))?;
    for (i, input) in incremental.inputs.iter().enumerate() {
        let Some(provider) = ctx.deregister_table(input.table.as_str())? else {
            continue;
        };
        let original = format!("__input_{i}");
        ctx.register_table(original.as_str(), provider)?;
        let on = input
            .key
            .iter()
            .enumerate()
            .map(|(k, expr)| format!("c.__k{k} = ({expr})"))
            .collect::<Vec<_>>()
            .join(" AND ");
        let view = ctx
            .sql(&format!(
                "SELECT t.* FROM {original} t LEFT SEMI JOIN __changed_keys c ON {on}"
            ))
            .await?
            .into_view();
        ctx.register_table(input.table.as_str(), view)?;
    }
    Ok(ctx)
}

/// A predicate over the gold table matching the rows of the changed keys (each key's columns as
/// text, joined by the unit separator, which no id or date contains).
pub fn replaced_rows(
    incremental: &Incremental,
    changes: &Changes,
) -> Result<String, deltalake::arrow::error::ArrowError> {
    let mut values = Vec::new();
    for batch in &changes.keys {
        let columns = batch
            .columns()
            .iter()
            .map(|c| cast(c, &DataType::Utf8))
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..batch.num_rows() {
            if columns.iter().any(|c| c.is_null(row)) {
                continue;
            }
            let key = columns
                .iter()
                .map(|c| {
                    c.as_any()
                        .downcast_ref::<deltalake::arrow::array::StringArray>()
                        .expect("cast to Utf8")
                        .value(row)
                        .to_string()
                })
                .collect::<Vec<_>>()
                .join("\u{1f}");
            values.push(format!("'{}'", key.replace('\'', "''")));
        }
    }
    if values.is_empty() {
        return Ok("false".into());
    }
    let column = |c: &String| format!("CAST({} AS VARCHAR)", crate::lake::merge::quote(c));
    let key = match incremental.key.as_slice() {
        [one] => column(one),
        many => format!(
            "concat({})",
            many.iter()
                .map(column)
                .collect::<Vec<_>>()
                .join(", '\u{1f}', ")
        ),
    };
    Ok(crate::lake::in_list(&key, values))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_incremental_line_names_the_key_and_each_input() {
        let sql = "-- a comment\n-- incremental: patient_id, day <- silver.blood_pressure(patient_id, CAST(effective_time AS DATE)); silver.alerts(patient_id, CAST(effective_time AS DATE))\nSELECT 1";
        let parsed = declared(sql).unwrap().unwrap();
        assert_eq!(parsed.key, ["patient_id", "day"]);
        assert_eq!(parsed.inputs.len(), 2);
        assert_eq!(parsed.inputs[0].table, "silver.blood_pressure");
        assert_eq!(
            parsed.inputs[0].key,
            ["patient_id", "CAST(effective_time AS DATE)"]
        );
        assert_eq!(declared("SELECT 1").unwrap(), None);
        assert!(declared("-- incremental: a, b <- silver.x(a)").is_err());
    }
}
