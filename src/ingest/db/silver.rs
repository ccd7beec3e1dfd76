//! Silver from bronze: a batch merged by key into `silver/<db>/<table>`, changed rows only, rows
//! gone at the source marked `_deleted_at` on full extractions.

use std::collections::HashMap;

use deltalake::DeltaTable;
use deltalake::arrow::array::Array;
use deltalake::arrow::datatypes::DataType;
use futures::StreamExt;

use crate::lake::stream_append::conform;
use crate::lake::{Lake, LakeError, MergeByKey, StreamingAppend, read};

use super::DbError;
use super::land::{BATCH_ID, DELETED_AT, EXTRACTED_AT, Target, with_deleted_at};

/// Which silver table a batch goes to, the bronze columns it takes, and its key.
#[derive(Clone, Copy)]
pub struct SilverShape<'a> {
    pub target: &'a Target,
    pub columns: &'a [String],
    pub keys: &'a [String],
}

/// What [`apply_to_silver`] did.
#[derive(Debug, Default, Clone, Copy)]
pub struct SilverChange {
    pub inserted: usize,
    pub updated: usize,
    pub deleted: usize,
}

/// Merges bronze's rows of `batch_id` into silver by `keys`; with `full_at`, silver rows the batch
/// does not hold are marked deleted at that time.
pub async fn apply_to_silver(
    lake: &Lake,
    bronze: &DeltaTable,
    shape: &SilverShape<'_>,
    batch_id: &str,
    full_at: Option<i64>,
    extraction: i64,
) -> Result<SilverChange, DbError> {
    let SilverShape {
        target,
        columns,
        keys,
    } = *shape;
    let ctx = read::session();
    read::register(&ctx, bronze, &target.bronze, "bronze").await?;
    let query_err = |source| LakeError::Query {
        table: target.silver.clone(),
        source,
    };
    let source = ctx
        .sql(&format!(
            "SELECT {}, arrow_cast(NULL, 'Timestamp(Microsecond, Some(\"UTC\"))') AS {DELETED_AT} \
             FROM bronze WHERE {BATCH_ID} = '{batch_id}'",
            columns
                .iter()
                .map(|c| crate::lake::merge::quote(c))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .await
        .map_err(query_err)?;
    let Some(silver) = lake.existing_table(&target.silver).await? else {
        // First extraction: a plain streaming append, no join.
        let bronze_schema = crate::lake::arrow_schema(bronze, &target.bronze)?;
        let schema = with_deleted_at(&bronze_schema);
        let mut append = StreamingAppend::begin(
            lake.table(&target.silver).await?,
            target.silver.clone(),
            schema.clone(),
        )
        .await?;
        let mut stream = source.execute_stream().await.map_err(query_err)?;
        while let Some(batch) = stream.next().await {
            let batch = conform(&batch.map_err(query_err)?, &schema).map_err(|source| {
                LakeError::Schema {
                    table: target.silver.clone(),
                    source,
                }
            })?;
            append.write(batch).await?;
        }
        let metadata =
            HashMap::from([("vitalake.batch_id".to_string(), serde_json::json!(batch_id))]);
        let (_, rows) = append
            .commit(metadata, Some((&target.app_id, extraction)))
            .await?;
        return Ok(SilverChange {
            inserted: rows,
            ..SilverChange::default()
        });
    };
    // A row changed when a source column differs (nested ones compared as text) or it was deleted;
    // a column new to silver changes every row.
    let target_schema = crate::lake::arrow_schema(&silver, &target.silver)?;
    let source_schema = source.schema().as_arrow().clone();
    let compared: Vec<_> = source_schema
        .fields()
        .iter()
        .filter(|f| ![EXTRACTED_AT, BATCH_ID, DELETED_AT].contains(&f.name().as_str()))
        .collect();
    let changed = compared
        .iter()
        .all(|f| target_schema.field_with_name(f.name()).is_ok())
        .then(|| {
            compared
                .iter()
                .map(|f| {
                    let q = crate::lake::merge::quote(f.name());
                    differs(
                        &format!("target.{q}"),
                        &format!("source.{q}"),
                        f.data_type(),
                    )
                })
                .chain([format!("(target.{DELETED_AT} IS NOT NULL)")])
                .collect::<Vec<_>>()
                .join(" OR ")
        });
    let mut merge = MergeByKey::new(silver, target.silver.clone(), ctx, source, keys.to_vec())
        .with_transaction(&target.app_id, extraction)
        .with_metadata("vitalake.batch_id", batch_id);
    let deleted_at =
        full_at.map(|at| format!("arrow_cast({at}, 'Timestamp(Microsecond, Some(\"UTC\"))')"));
    if let Some(value) = &deleted_at {
        merge = merge.marking_missing(DELETED_AT, value);
    }
    if let Some(changed) = changed {
        merge = merge.updating_when(changed);
    }
    let (silver, metrics) = merge.execute().await?;
    let deleted = match &deleted_at {
        Some(value) => {
            count(&silver, &target.silver, &format!("{DELETED_AT} = {value}")).await? as usize
        }
        None => 0,
    };
    Ok(SilverChange {
        inserted: metrics.inserted,
        updated: metrics.updated - deleted,
        deleted,
    })
}

/// SQL saying the values `a` and `b` of type `data_type` differ (nulls compare equal to nulls).
/// Structs compare field by field, lists as text: DataFusion compares neither directly.
fn differs(a: &str, b: &str, data_type: &DataType) -> String {
    match data_type {
        DataType::Struct(fields) => fields
            .iter()
            .map(|f| {
                let get = |x: &str| format!("get_field({x}, '{}')", f.name());
                differs(&get(a), &get(b), f.data_type())
            })
            .collect::<Vec<_>>()
            .join(" OR "),
        t if t.is_nested() => {
            format!("(CAST({a} AS VARCHAR) IS DISTINCT FROM CAST({b} AS VARCHAR))")
        }
        _ => format!("({a} IS DISTINCT FROM {b})"),
    }
}

async fn count(table: &DeltaTable, name: &str, predicate: &str) -> Result<i64, DbError> {
    let batches = read::query(
        table,
        name,
        &format!("SELECT count(*) FROM t WHERE {predicate}"),
    )
    .await?;
    Ok(batches
        .first()
        .and_then(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<deltalake::arrow::array::Int64Array>()
                .map(|a| a.value(0))
        })
        .unwrap_or(0))
}
