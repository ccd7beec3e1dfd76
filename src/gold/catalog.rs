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

use std::sync::Arc;

use deltalake::datafusion::catalog::MemorySchemaProvider;
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
            read::register(&ctx, &table, &path, &format!("{schema}.{name}")).await?;
        }
    }
    // Before the first alert, `silver.alerts` is an empty table, so that what reads it still runs.
    if !ctx.table_exist("silver.alerts").unwrap_or(false) {
        let schema = crate::alerts::table::ALERTS_SCHEMA.clone();
        let empty = MemTable::try_new(schema, vec![vec![]]).expect("an empty table");
        ctx.register_table("silver.alerts", Arc::new(empty))
            .expect("silver.alerts registers");
    }
    Ok(ctx)
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
