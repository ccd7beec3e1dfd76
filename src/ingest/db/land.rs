//! One source table into the lake, exactly once, whatever moment a run is killed at.
//!
//! 1. The rows stream into `bronze/<engine>/<db>/<table>` (with `_extracted_at`, `_batch_id`, and
//!    `_row_hash` for a table without a primary key) and become visible in **one** commit that
//!    carries the Delta application transaction `vitalake-extract/<bronze path>` = N, the table's
//!    N-th extraction.
//! 2. Silver takes exactly those rows ([`super::silver`]), by a MERGE on the primary key (or
//!    `_row_hash`) committed with the same transaction id and version N. A full extraction also
//!    marks silver rows the source no longer has (`_deleted_at`). A table's first extraction writes
//!    silver from the same batches instead, committed right after bronze.
//!
//! A run killed before (1) leaves no trace. A run killed between (1) and (2) leaves bronze at N and
//! silver at N-1: the next run first brings silver up from bronze's batch N, then extracts. The
//! watermark of an incremental extraction is the cursor's maximum **in silver**, so rows are never
//! skipped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use deltalake::DeltaTable;
use deltalake::arrow::array::{
    Array, ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray, new_null_array,
};
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use futures::TryStreamExt;
use tokio::sync::mpsc;

use crate::lake::stream_append::append_columns;
use crate::lake::{Lake, LakeError, StreamingAppend, app_version, read};

use super::catalog::{Cursor, Table};
use super::checksum::{Checksum, RowHasher, landed_checksum};
use super::drift::{cast_columns, drift, widen};
use super::silver::{SilverChange, SilverShape, apply_to_silver};
use super::{Connection, DbError, DbOptions, Engine, Extracted, TableReport, schema_of};

pub const EXTRACTED_AT: &str = "_extracted_at";
pub const BATCH_ID: &str = "_batch_id";
pub const ROW_HASH: &str = "_row_hash";
pub const DELETED_AT: &str = "_deleted_at";

/// Where one source table lands.
#[derive(Debug, Clone)]
pub struct Target {
    pub bronze: String,
    pub silver: String,
    /// The Delta application transaction id both tables' commits carry.
    pub app_id: String,
}

impl Target {
    pub fn new(engine: Engine, database: &str, table: &str) -> Target {
        let (bronze, silver) =
            crate::lake::layout::database_tables(engine.label(), database, table);
        Target {
            silver,
            app_id: format!("vitalake-extract/{bronze}"),
            bronze,
        }
    }
}

/// Lands `table`; every failure is in the report, never returned: the next table still runs.
pub async fn land_table(
    lake: &Lake,
    connection: &mut Connection,
    table: &Table,
    target: &Target,
    configured_cursor: Option<&str>,
    options: &DbOptions,
    batch_id: &str,
) -> TableReport {
    let started = Instant::now();
    let mut report = TableReport::new(&table.name, target);
    report.skipped_columns = table
        .columns
        .iter()
        .filter_map(|c| {
            c.kind
                .as_ref()
                .err()
                .map(|why| format!("{}.{}: {why}", table.name, c.name))
        })
        .collect();
    for skipped in &report.skipped_columns {
        tracing::warn!(column = skipped.as_str(), "column skipped");
    }
    let result = land(
        lake,
        connection,
        table,
        target,
        configured_cursor,
        options,
        batch_id,
        &mut report,
    )
    .await;
    if let Err(e) = result {
        tracing::error!(table = table.name.as_str(), error = %e, "table not landed");
        report.error = Some(e.to_string());
    }
    report.seconds = started.elapsed().as_secs_f64();
    report.rows_per_second = report.rows_landed as f64 / report.seconds.max(1e-9);
    report
}

#[allow(clippy::too_many_arguments)]
async fn land(
    lake: &Lake,
    connection: &mut Connection,
    table: &Table,
    target: &Target,
    configured_cursor: Option<&str>,
    options: &DbOptions,
    batch_id: &str,
    report: &mut TableReport,
) -> Result<(), DbError> {
    let table_err = |message: String| DbError::Table {
        table: table.name.clone(),
        message,
    };
    let extracted_schema = schema_of(table);
    if extracted_schema.fields().is_empty() {
        return Err(table_err("no column of a supported type".into()));
    }
    let keys = if table.primary_key.is_empty() {
        vec![ROW_HASH.to_string()]
    } else {
        table.primary_key.clone()
    };
    if let Some(key) = table
        .primary_key
        .iter()
        .find(|k| !table.column(k).is_some_and(|c| c.is_supported()))
    {
        return Err(table_err(format!(
            "primary key column {key} has an unsupported type"
        )));
    }

    // The columns silver takes from bronze: this extraction's (a column dropped at the source keeps
    // its old values in silver).
    let silver_columns: Vec<String> =
        with_bronze_columns(&extracted_schema, table.primary_key.is_empty())
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();

    let shape = SilverShape {
        target,
        columns: &silver_columns,
        keys: &keys,
    };

    let bronze = lake.existing_table(&target.bronze).await?;
    let extraction = bring_silver_up_to_bronze(lake, bronze.as_ref(), &shape).await?;
    let silver = lake.existing_table(&target.silver).await?;

    let cursor = table.cursor(configured_cursor).map_err(table_err)?;
    let watermark = match (&cursor, &silver, options.full) {
        (Some(cursor), Some(silver), false) => {
            watermark(silver, &target.silver, cursor, connection).await?
        }
        _ => None,
    };
    report.cursor = cursor.as_ref().map(|c| c.column.clone());
    report.mode = if watermark.is_some() {
        "incremental"
    } else {
        "full"
    }
    .to_string();
    let full = watermark.is_none();
    let filter = watermark
        .as_ref()
        .map(|(column, op, literal)| format!("{column} {op} {literal}"));
    report.watermark = watermark.map(|w| w.2);

    let casts = match &bronze {
        Some(bronze) => {
            adapt_to_drift(
                lake,
                bronze,
                silver.is_some(),
                target,
                &extracted_schema,
                report,
            )
            .await?
        }
        None => HashMap::new(),
    };

    let extraction = extraction + 1;
    let extracted_at = chrono::Utc::now().timestamp_micros();
    let landing_started = Instant::now();
    let Landed {
        bronze,
        extracted,
        checksum,
        silver_rows,
    } = extract_and_write(
        lake,
        connection,
        table,
        target,
        Extraction {
            filter: filter.as_deref(),
            casts: &casts,
            batch_id,
            number: extraction,
            extracted_at,
            full,
        },
        options,
    )
    .await?;
    let extract_ms = landing_started.elapsed().as_millis() as u64;
    report.rows_at_source = extracted.rows_at_source;
    report.rows_landed = checksum.rows;
    let merged = match silver_rows {
        Some(inserted) => SilverChange {
            inserted,
            ..SilverChange::default()
        },
        None => {
            apply_to_silver(
                lake,
                &bronze,
                &shape,
                batch_id,
                full.then_some(extracted_at),
                extraction,
            )
            .await?
        }
    };
    let silver_ms = landing_started.elapsed().as_millis() as u64 - extract_ms;
    report.inserted = merged.inserted;
    report.updated = merged.updated;
    report.deleted = merged.deleted;
    if full {
        let landed =
            landed_checksum(&bronze, &target.bronze, batch_id, &extracted_schema, &casts).await?;
        report.checksum = Some(format!("{:016x}", checksum.value()));
        report.checksum_matches =
            Some(landed.value() == checksum.value() && landed.rows == checksum.rows);
    }
    report.reconciled =
        report.rows_at_source == report.rows_landed && report.checksum_matches != Some(false);
    tracing::info!(
        table = table.name.as_str(),
        mode = report.mode.as_str(),
        rows = report.rows_landed,
        source_rows = report.rows_at_source,
        extract_ms,
        silver_ms,
        ms = landing_started.elapsed().as_millis() as u64,
        "table landed"
    );
    Ok(())
}

/// If a run died between the bronze and silver commits, silver takes bronze's last batch now.
/// Returns the number of the last extraction in bronze.
async fn bring_silver_up_to_bronze(
    lake: &Lake,
    bronze: Option<&DeltaTable>,
    shape: &SilverShape<'_>,
) -> Result<i64, DbError> {
    let target = shape.target;
    let Some(bronze) = bronze else {
        return Ok(0);
    };
    let extraction = app_version(bronze, &target.bronze, &target.app_id)
        .await?
        .unwrap_or(0);
    let silver_version = match lake.existing_table(&target.silver).await? {
        Some(t) => app_version(&t, &target.silver, &target.app_id)
            .await?
            .unwrap_or(0),
        None => 0,
    };
    if extraction > silver_version {
        let (missing_batch, full, at) =
            batch_of_extraction(bronze, &target.bronze, extraction).await?;
        tracing::info!(
            table = target.silver.as_str(),
            extraction,
            "bringing silver up to bronze"
        );
        apply_to_silver(
            lake,
            bronze,
            shape,
            &missing_batch,
            full.then_some(at),
            extraction,
        )
        .await?;
    }
    Ok(extraction)
}

/// Compares the extraction's columns with bronze's: widens the lake's tables where the source
/// widened a type, and returns the columns to cast up where it narrowed one.
async fn adapt_to_drift(
    lake: &Lake,
    bronze: &DeltaTable,
    has_silver: bool,
    target: &Target,
    extracted: &Schema,
    report: &mut TableReport,
) -> Result<HashMap<String, DataType>, DbError> {
    let existing = crate::lake::arrow_schema(bronze, &target.bronze)?;
    let plan = drift(&existing, extracted).map_err(|message| DbError::Table {
        table: report.table.clone(),
        message,
    })?;
    if !plan.widen.is_empty() {
        widen(lake, &target.bronze, &plan.widen).await?;
        if has_silver {
            widen(lake, &target.silver, &plan.widen).await?;
        }
        report.widened = plan
            .widen
            .iter()
            .map(|f| format!("{}: {}", f.name(), f.data_type()))
            .collect();
    }
    Ok(plan.narrow)
}

/// One extraction's settings.
struct Extraction<'a> {
    /// SQL condition on the cursor; `None` reads the whole table.
    filter: Option<&'a str>,
    /// Columns to cast up to the lake's wider type.
    casts: &'a HashMap<String, DataType>,
    batch_id: &'a str,
    /// The table's extraction number: the Delta application transaction version.
    number: i64,
    extracted_at: i64,
    full: bool,
}

/// What [`extract_and_write`] landed.
struct Landed {
    bronze: DeltaTable,
    extracted: Extracted,
    /// The rows written (and, on full runs, their checksum).
    checksum: Checksum,
    /// Rows written straight to silver, when this extraction created it.
    silver_rows: Option<usize>,
}

/// Streams the table's rows into bronze while they are read, then commits them in one Delta
/// commit. The writer is a task of its own, so decoding, Parquet encoding and the server overlap.
/// On a table's first extraction the same batches also create silver (committed after bronze):
/// there is nothing to merge with, and reading bronze back would cost a second pass.
async fn extract_and_write(
    lake: &Lake,
    connection: &mut Connection,
    table: &Table,
    target: &Target,
    run: Extraction<'_>,
    options: &DbOptions,
) -> Result<Landed, DbError> {
    let bronze_schema = with_bronze_columns(&schema_of(table), table.primary_key.is_empty());
    let bronze = StreamingAppend::begin(
        lake.table(&target.bronze).await?,
        target.bronze.clone(),
        bronze_schema.clone(),
    )
    .await?;
    let silver = match lake.existing_table(&target.silver).await? {
        Some(_) => None,
        None => Some(
            StreamingAppend::begin(
                lake.table(&target.silver).await?,
                target.silver.clone(),
                with_deleted_at(&bronze_schema),
            )
            .await?,
        ),
    };
    let (sender, mut receiver) = mpsc::channel::<RecordBatch>(2);
    let casts = run.casts.clone();
    let (name, batch_id, progress) = (
        table.name.clone(),
        run.batch_id.to_string(),
        options.progress.clone(),
    );
    let (extracted_at, full) = (run.extracted_at, run.full);
    let mut hasher = table.primary_key.is_empty().then(RowHasher::default);
    let writer = tokio::spawn(async move {
        let (mut bronze, mut silver) = (bronze, silver);
        let mut checksum = Checksum::default();
        while let Some(batch) = receiver.recv().await {
            let batch = cast_columns(batch, &casts).map_err(|source| LakeError::Schema {
                table: name.clone(),
                source,
            })?;
            checksum.add(&batch, full);
            progress(&name, checksum.rows);
            let batch = add_bronze_columns(batch, extracted_at, &batch_id, hasher.as_mut());
            if let Some(silver) = &mut silver {
                silver.write(add_deleted_at(&batch)).await?;
            }
            bronze.write(batch).await?;
        }
        Ok::<_, DbError>((bronze, silver, checksum))
    });
    let extracted = connection
        .extract(table, run.filter, options.batch_rows, sender)
        .await;
    let written = writer.await.map_err(|e| DbError::Table {
        table: table.name.clone(),
        message: format!("the lake writer failed: {e}"),
    })?;
    // A writer error explains an extraction stopped by it: report that one first.
    let (bronze, silver, checksum) = written?;
    let extracted = extracted?;
    let metadata = |extraction: bool| {
        let mut m = HashMap::from([(
            "vitalake.batch_id".to_string(),
            serde_json::json!(run.batch_id),
        )]);
        if extraction {
            m.insert("vitalake.extraction".into(), serde_json::json!(run.number));
            m.insert("vitalake.full".into(), serde_json::json!(run.full));
            m.insert(
                "vitalake.extracted_at".into(),
                serde_json::json!(run.extracted_at),
            );
        }
        m
    };
    let (bronze, _) = bronze
        .commit(metadata(true), Some((&target.app_id, run.number)))
        .await?;
    let silver_rows = match silver {
        Some(silver) => Some(
            silver
                .commit(metadata(false), Some((&target.app_id, run.number)))
                .await?
                .1,
        ),
        None => None,
    };
    Ok(Landed {
        bronze,
        extracted,
        checksum,
        silver_rows,
    })
}

fn deleted_at_field() -> Field {
    Field::new(
        DELETED_AT,
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        true,
    )
}

pub(super) fn with_deleted_at(schema: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(deleted_at_field());
    Arc::new(Schema::new(fields))
}

fn add_deleted_at(batch: &RecordBatch) -> RecordBatch {
    let field = deleted_at_field();
    let nulls = new_null_array(field.data_type(), batch.num_rows());
    append_columns(batch.clone(), vec![(field, nulls)])
}

/// The batch id, fullness and extraction time of bronze's extraction number `extraction`.
async fn batch_of_extraction(
    bronze: &DeltaTable,
    name: &str,
    extraction: i64,
) -> Result<(String, bool, i64), DbError> {
    let history: Vec<_> = bronze
        .history(Some(50))
        .try_collect()
        .await
        .map_err(|source| LakeError::Delta {
            table: name.to_string(),
            source,
        })?;
    history
        .iter()
        .find(|commit| {
            commit
                .info
                .get("vitalake.extraction")
                .and_then(|v| v.as_i64())
                == Some(extraction)
        })
        .and_then(|commit| {
            Some((
                commit.info.get("vitalake.batch_id")?.as_str()?.to_string(),
                commit.info.get("vitalake.full")?.as_bool()?,
                commit.info.get("vitalake.extracted_at")?.as_i64()?,
            ))
        })
        .ok_or_else(|| DbError::Table {
            table: name.to_string(),
            message: format!("bronze has no commit for extraction {extraction}; run with --full"),
        })
}

/// The cursor's largest value in silver as `(quoted column, operator, source literal)`, or `None`
/// when silver holds no value yet.
async fn watermark(
    silver: &DeltaTable,
    name: &str,
    cursor: &Cursor,
    connection: &Connection,
) -> Result<Option<(String, &'static str, String)>, DbError> {
    let column = crate::lake::merge::quote(&cursor.column);
    let sql = if cursor.is_timestamp {
        format!(
            "SELECT CAST(arrow_cast(max({column}), 'Timestamp(Microsecond, None)') AS BIGINT) FROM t"
        )
    } else {
        format!("SELECT CAST(max({column}) AS BIGINT) FROM t")
    };
    let batches = read::query(silver, name, &sql).await?;
    let Some(value) = batches.first().and_then(|b| {
        let array = b
            .column(0)
            .as_any()
            .downcast_ref::<deltalake::arrow::array::Int64Array>()?;
        (!array.is_null(0)).then(|| array.value(0))
    }) else {
        return Ok(None);
    };
    let quoted = connection.quote(&cursor.column);
    if !cursor.is_timestamp {
        return Ok(Some((quoted, ">", value.to_string())));
    }
    let time = chrono::DateTime::from_timestamp_micros(value).unwrap_or_default();
    let text = time.format("%Y-%m-%d %H:%M:%S%.6f").to_string();
    let schema = crate::lake::arrow_schema(silver, name)?;
    let utc = matches!(
        schema
            .field_with_name(&cursor.column)
            .map(|f| f.data_type()),
        Ok(DataType::Timestamp(_, Some(_)))
    );
    let literal = match connection {
        Connection::Postgres(_) if utc => format!("'{text}+00'::timestamptz"),
        Connection::Postgres(_) => format!("'{text}'::timestamp"),
        Connection::MySql(_) => format!("'{text}'"),
    };
    Ok(Some((quoted, ">=", literal)))
}

fn with_bronze_columns(extracted: &Schema, row_hash: bool) -> SchemaRef {
    let mut fields: Vec<Field> = extracted
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    if row_hash {
        fields.push(Field::new(ROW_HASH, DataType::Utf8, true));
    }
    fields.push(Field::new(
        EXTRACTED_AT,
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        true,
    ));
    fields.push(Field::new(BATCH_ID, DataType::Utf8, true));
    Arc::new(Schema::new(fields))
}

fn add_bronze_columns(
    batch: RecordBatch,
    extracted_at: i64,
    batch_id: &str,
    hasher: Option<&mut RowHasher>,
) -> RecordBatch {
    let rows = batch.num_rows();
    let mut extra: Vec<(Field, ArrayRef)> = Vec::new();
    if let Some(hasher) = hasher {
        extra.push((
            Field::new(ROW_HASH, DataType::Utf8, true),
            Arc::new(hasher.hashes(&batch)),
        ));
    }
    extra.push((
        Field::new(
            EXTRACTED_AT,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Arc::new(TimestampMicrosecondArray::from(vec![extracted_at; rows]).with_timezone("UTC")),
    ));
    extra.push((
        Field::new(BATCH_ID, DataType::Utf8, true),
        Arc::new(StringArray::from(vec![batch_id; rows])),
    ));
    append_columns(batch, extra)
}
