//! Every table of the lake under a SQL name: schemas `bronze`, `silver` and `gold`, and within a
//! layer the table's path below it with `/` as `_` and the `fhir/` folder left out, in lower case:
//!
//! | path | SQL name |
//! |---|---|
//! | `silver/fhir/blood_pressure` | `silver.blood_pressure` |
//! | `silver/alerts` | `silver.alerts` |
//! | `silver/ikhospital/doctors` | `silver.ikhospital_doctors` |
//! | `bronze/fhir/Patient` | `bronze.patient` |
//! | `bronze/eventhubs/observations` | `bronze.eventhubs_observations` |
//! | `bronze/mysql/ikhospital/doctors` | `bronze.mysql_ikhospital_doctors` |

use std::collections::HashMap;
use std::sync::Arc;

use deltalake::datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
use deltalake::datafusion::datasource::MemTable;
use deltalake::datafusion::prelude::SessionContext;

use crate::lake::{Lake, LakeError, read};

pub const LAYERS: [&str; 3] = ["bronze", "silver", "gold"];

/// The SQL name (`schema`, `table`) of a lake table path.
pub fn sql_name(path: &str) -> Option<(String, String)> {
    let (layer, rest) = path.trim_matches('/').split_once('/')?;
    if !LAYERS.contains(&layer) {
        return None;
    }
    let rest = rest.strip_prefix("fhir/").unwrap_or(rest);
    Some((
        layer.to_string(),
        rest.replace(['/', '-', '.'], "_").to_lowercase(),
    ))
}

/// A session with every lake table registered under its SQL name.
pub async fn session(lake: &Lake) -> Result<SessionContext, LakeError> {
    Ok(session_with_versions(lake).await?.0)
}

/// A registered table: where it lives, and the table at the version the session reads.
#[derive(Debug, Clone)]
pub struct Registered {
    pub path: String,
    pub table: deltalake::DeltaTable,
}

impl Registered {
    pub fn version(&self) -> u64 {
        self.table.version().unwrap_or_default()
    }
}

/// [`session`], and each SQL name's table as registered: what an incremental refresh records as
/// read, and whose log it reads the changes from.
pub async fn session_with_versions(
    lake: &Lake,
) -> Result<(SessionContext, HashMap<String, Registered>), LakeError> {
    let mut registered = HashMap::new();
    // With `information_schema`, so that `SHOW TABLES` and catalogue look-ups work.
    let ctx = SessionContext::new_with_config(read::session_config().with_information_schema(true));
    let catalog = ctx
        .catalog("datafusion")
        .expect("the default catalogue exists");
    for layer in LAYERS {
        catalog
            .register_schema(layer, Arc::new(MemorySchemaProvider::new()))
            .expect("a memory schema registers");
        for path in lake.find_tables(layer, 4).await? {
            let Some((schema, name)) = sql_name(&path) else {
                continue;
            };
            let Some(table) = lake.existing_table(&path).await? else {
                continue;
            };
            let sql_name = format!("{schema}.{name}");
            read::register(&ctx, &table, &path, &sql_name).await?;
            registered.insert(sql_name, Registered { path, table });
        }
    }
    // Before the first alert, or before code tables are loaded, these are empty tables, so that
    // what reads them still runs.
    for (name, schema) in [
        ("silver.alerts", crate::alerts::table::ALERTS_SCHEMA.clone()),
        (
            "silver.terminology_concepts",
            crate::terminology::CONCEPTS_SCHEMA.clone(),
        ),
        (
            "silver.terminology_maps",
            crate::terminology::MAPS_SCHEMA.clone(),
        ),
    ] {
        if !ctx.table_exist(name).unwrap_or(false) {
            let empty = MemTable::try_new(schema, vec![vec![]]).expect("an empty table");
            ctx.register_table(name, Arc::new(empty))
                .expect("an empty table registers");
        }
    }
    Ok((ctx, registered))
}

/// A new session that reads the same tables as `ctx` (same settings, same object stores), whose
/// registrations can change without touching `ctx`'s.
pub async fn copy_session(
    ctx: &SessionContext,
) -> Result<SessionContext, deltalake::datafusion::error::DataFusionError> {
    let copy = SessionContext::new_with_config_rt(ctx.copied_config(), ctx.runtime_env());
    let from = ctx
        .catalog("datafusion")
        .expect("the default catalogue exists");
    let to = copy
        .catalog("datafusion")
        .expect("the default catalogue exists");
    for name in from.schema_names() {
        let Some(schema) = from.schema(&name) else {
            continue;
        };
        if name == "information_schema" {
            continue;
        }
        let target = Arc::new(MemorySchemaProvider::new());
        for table in schema.table_names() {
            if let Some(provider) = schema.table(&table).await? {
                target.register_table(table, provider)?;
            }
        }
        to.register_schema(&name, target)?;
    }
    Ok(copy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_paths_become_sql_names() {
        let name = |p| sql_name(p).map(|(s, t)| format!("{s}.{t}"));
        assert_eq!(
            name("silver/fhir/blood_pressure").unwrap(),
            "silver.blood_pressure"
        );
        assert_eq!(name("bronze/fhir/Patient").unwrap(), "bronze.patient");
        assert_eq!(
            name("silver/ikhospital/doctors").unwrap(),
            "silver.ikhospital_doctors"
        );
        assert_eq!(
            name("bronze/mysql/ikhospital/doctors").unwrap(),
            "bronze.mysql_ikhospital_doctors"
        );
        assert_eq!(name("_checkpoints/x"), None);
    }
}
