//! Append a stream of record batches to a table in **one** commit, without holding them in memory.
//!
//! [`super::AppendBuilder`] takes every batch up front, fine for a chunk of FHIR resources but not
//! for a five-million-row database table. Here batches go to Parquet files as they come (Delta's
//! streaming `RecordBatchWriter`), and only [`StreamingAppend::commit`] makes them visible: a run
//! killed before it leaves unreferenced files and an unchanged table. The commit can carry a Delta
//! application transaction (`txn`), which a reader checks with [`super::app_version`].
//!
//! [`conform`] and [`append_columns`] shape batches for a table: by its schema, or with extra columns.

use std::collections::HashMap;

use deltalake::DeltaTable;
use deltalake::arrow::array::{ArrayRef, new_null_array};
use deltalake::arrow::compute::{CastOptions, cast_with_options};
use deltalake::arrow::datatypes::{Field, Schema, SchemaRef};
use deltalake::arrow::error::ArrowError;
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::writer::{DeltaWriter, RecordBatchWriter, WriteMode};

use super::{AppendBuilder, LakeError};

pub struct StreamingAppend {
    table: DeltaTable,
    name: String,
    writer: RecordBatchWriter,
    rows: usize,
}

impl StreamingAppend {
    /// Starts an append to `table`, creating it with `schema` if it does not exist yet. Batches may
    /// add columns to the table (schema evolution) and may lack some of its columns (left null).
    pub async fn begin(
        table: DeltaTable,
        name: impl Into<String>,
        schema: SchemaRef,
    ) -> Result<StreamingAppend, LakeError> {
        let name = name.into();
        let delta_err = |name: &str| {
            let name = name.to_string();
            move |source| LakeError::Delta {
                table: name.clone(),
                source,
            }
        };
        let table = if table.version().is_none() {
            let empty = RecordBatch::new_empty(schema);
            AppendBuilder::new(table, name.clone(), vec![empty])
                .execute()
                .await?
                .0
        } else {
            table
        };
        let writer = RecordBatchWriter::for_table(&table).map_err(delta_err(&name))?;
        Ok(StreamingAppend {
            table,
            name,
            writer,
            rows: 0,
        })
    }

    pub async fn write(&mut self, batch: RecordBatch) -> Result<(), LakeError> {
        self.rows += batch.num_rows();
        // The table's columns (null where the batch lacks them), then the batch's new ones.
        let table = self.writer.arrow_schema();
        let mut fields: Vec<Field> = table.fields().iter().map(|f| f.as_ref().clone()).collect();
        for field in batch.schema().fields() {
            if table.field_with_name(field.name()).is_err() {
                fields.push(field.as_ref().clone());
            }
        }
        let batch =
            conform(&batch, &std::sync::Arc::new(Schema::new(fields))).map_err(|source| {
                LakeError::Schema {
                    table: self.name.clone(),
                    source,
                }
            })?;
        self.writer
            .write_with_mode(batch, WriteMode::MergeSchema)
            .await
            .map_err(|source| LakeError::Delta {
                table: self.name.clone(),
                source,
            })
    }

    /// Commits every batch written, with `metadata` in the commit info and, if given, the
    /// application transaction `(app_id, version)`. Returns the table and the rows committed.
    pub async fn commit(
        mut self,
        metadata: HashMap<String, serde_json::Value>,
        transaction: Option<(&str, i64)>,
    ) -> Result<(DeltaTable, usize), LakeError> {
        let mut properties = CommitProperties::default().with_metadata(metadata);
        if let Some((app_id, version)) = transaction {
            properties = properties.with_application_transaction(Transaction::new(app_id, version));
        }
        let mut writer = self.writer.with_commit_properties(properties);
        writer
            .flush_and_commit(&mut self.table)
            .await
            .map_err(|source| LakeError::Delta {
                table: self.name.clone(),
                source,
            })?;
        Ok((self.table, self.rows))
    }
}

/// `batch` with its columns cast by name to `schema`'s types and order; a column `schema` has and
/// the batch lacks is null.
pub fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    let options = CastOptions {
        safe: false,
        ..CastOptions::default()
    };
    let columns = schema
        .fields()
        .iter()
        .map(|field| match batch.schema().index_of(field.name()) {
            Ok(i) => {
                let column = batch.column(i);
                if column.data_type() == field.data_type() {
                    Ok(column.clone())
                } else {
                    cast_with_options(column, field.data_type(), &options)
                        .map_err(|e| ArrowError::CastError(format!("column {}: {e}", field.name())))
                }
            }
            Err(_) => Ok(new_null_array(field.data_type(), batch.num_rows())),
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema.clone(), columns)
}

/// `batch` with `extra` columns added after its own.
pub fn append_columns(batch: RecordBatch, extra: Vec<(Field, ArrayRef)>) -> RecordBatch {
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let mut columns = batch.columns().to_vec();
    for (field, column) in extra {
        fields.push(field);
        columns.push(column);
    }
    RecordBatch::try_new(std::sync::Arc::new(Schema::new(fields)), columns)
        .expect("appended columns line up")
}
