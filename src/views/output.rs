//! Printing or saving view results: a text table, CSV, NDJSON, or a Parquet file.

use std::io::Write;
use std::path::Path;

use std::sync::Arc;

use deltalake::arrow::array::{Array, ArrayRef, StringArray};
use deltalake::arrow::datatypes::{DataType, Field, Schema};
use deltalake::arrow::error::ArrowError;
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::arrow::util::display::array_value_to_string;
use deltalake::parquet::arrow::ArrowWriter;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Table,
    Csv,
    Json,
    Parquet,
}

/// CSV has no lists: a list column becomes its text (`[a, b]`).
fn lists_as_text(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let mut fields = Vec::new();
    let mut columns = Vec::new();
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        if matches!(field.data_type(), DataType::List(_)) {
            let text: StringArray = (0..column.len())
                .map(|i| {
                    if column.is_null(i) {
                        Ok(None)
                    } else {
                        array_value_to_string(column, i).map(Some)
                    }
                })
                .collect::<Result<_, ArrowError>>()?;
            fields.push(Field::new(field.name(), DataType::Utf8, true));
            columns.push(Arc::new(text) as ArrayRef);
        } else {
            fields.push(field.as_ref().clone());
            columns.push(column.clone());
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

/// Writes `batches` as `format` to `out` (Parquet needs a seekable file: `path`).
pub fn write(
    batches: &[RecordBatch],
    format: OutputFormat,
    out: &mut dyn Write,
    path: Option<&Path>,
) -> Result<(), ArrowError> {
    match format {
        OutputFormat::Table => writeln!(
            out,
            "{}",
            deltalake::arrow::util::pretty::pretty_format_batches(batches)?
        )?,
        OutputFormat::Csv => {
            let mut writer = deltalake::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(out);
            for batch in batches {
                writer.write(&lists_as_text(batch)?)?;
            }
        }
        OutputFormat::Json => {
            let mut writer = deltalake::arrow::json::LineDelimitedWriter::new(out);
            for batch in batches {
                writer.write(batch)?;
            }
            writer.finish()?;
        }
        OutputFormat::Parquet => {
            let path = path.ok_or_else(|| {
                ArrowError::InvalidArgumentError("Parquet output needs --output PATH".into())
            })?;
            let file = std::fs::File::create(path)?;
            let schema = batches
                .first()
                .map(RecordBatch::schema)
                .ok_or_else(|| ArrowError::InvalidArgumentError("no rows to write".into()))?;
            let mut writer = ArrowWriter::try_new(file, schema, None)
                .map_err(|e| ArrowError::ExternalError(Box::new(e)))?;
            for batch in batches {
                writer
                    .write(batch)
                    .map_err(|e| ArrowError::ExternalError(Box::new(e)))?;
            }
            writer
                .close()
                .map_err(|e| ArrowError::ExternalError(Box::new(e)))?;
        }
    }
    Ok(())
}

/// Rows whose values are as the resources write them ([`crate::views::View::rows_as_written`]),
/// printed in `format`: NDJSON with every column of every row (a null one as `null`), or CSV and a
/// text table of each value's FHIR text (a list as its JSON). Parquet is a typed format: its rows go
/// through [`write`] as silver's typed cells.
pub fn write_as_written(
    columns: &[&str],
    rows: &[Vec<serde_json::Value>],
    format: OutputFormat,
    out: &mut dyn Write,
) -> Result<(), ArrowError> {
    use serde_json::Value as Json;
    if format == OutputFormat::Json {
        for row in rows {
            let object: serde_json::Map<String, Json> = columns
                .iter()
                .zip(row)
                .map(|(name, value)| (name.to_string(), value.clone()))
                .collect();
            writeln!(out, "{}", Json::Object(object))?;
        }
        return Ok(());
    }
    let text = |value: &Json| match value {
        Json::Null => None,
        Json::String(text) => Some(text.clone()),
        other => Some(other.to_string()),
    };
    let fields: Vec<Field> = columns
        .iter()
        .map(|name| Field::new(*name, DataType::Utf8, true))
        .collect();
    let arrays: Vec<ArrayRef> = (0..columns.len())
        .map(|i| {
            Arc::new(
                rows.iter()
                    .map(|row| text(&row[i]))
                    .collect::<StringArray>(),
            ) as ArrayRef
        })
        .collect();
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?;
    write(&[batch], format, out, None)
}
