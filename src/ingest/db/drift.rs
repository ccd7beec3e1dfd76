//! Schema drift: how a new extraction's columns meet the lake table's. A new column is added by
//! schema evolution; a type the source widened is widened in the lake (the table rewritten once); a
//! type it narrowed is cast up on write; anything else stops the table.

use std::collections::HashMap;
use std::sync::Arc;

use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::compute::can_cast_types;
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use deltalake::arrow::error::ArrowError;

use crate::lake::stream_append::conform;
use crate::lake::{Lake, LakeError, read};

use super::DbError;

/// How the columns of a new extraction meet the table's: columns to widen in the table (a wider
/// type at the source), and columns to cast up on write (a narrower one).
#[derive(Debug, Default)]
pub struct Drift {
    pub widen: Vec<Field>,
    pub narrow: HashMap<String, DataType>,
}

pub fn drift(existing: &Schema, extracted: &Schema) -> Result<Drift, String> {
    let mut plan = Drift::default();
    for field in extracted.fields() {
        let Ok(old) = existing.field_with_name(field.name()) else {
            continue; // a new column: schema evolution adds it
        };
        let (old, new) = (old.data_type(), field.data_type());
        if old == new {
            continue;
        }
        if widens(old, new) {
            plan.widen.push(field.as_ref().clone());
        } else if widens(new, old) {
            plan.narrow.insert(field.name().clone(), old.clone());
        } else {
            return Err(format!(
                "column {} changed from {old} to {new}, which cannot hold the old values without \
                 loss; rename the column at the source or re-land the table into a new lake path",
                field.name()
            ));
        }
    }
    Ok(plan)
}

/// Whether every value of `from` is a value of `to`.
fn widens(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    let int_rank = |t: &DataType| match t {
        Int8 => Some(1),
        Int16 => Some(2),
        Int32 => Some(3),
        Int64 => Some(4),
        _ => None,
    };
    match (from, to) {
        (a, b) if int_rank(a).is_some() && int_rank(b).is_some() => int_rank(a) < int_rank(b),
        (Int8 | Int16 | Int32, Float64) | (Int8 | Int16, Float32) | (Float32, Float64) => true,
        (Int8 | Int16 | Int32 | Int64, Decimal128(p, s)) => {
            let digits = match from {
                Int8 => 3,
                Int16 => 5,
                Int32 => 10,
                _ => 19,
            };
            (*p as i32 - *s as i32) >= digits
        }
        (Decimal128(p1, s1), Decimal128(p2, s2)) => {
            s2 >= s1 && (*p2 as i32 - *s2 as i32) >= (*p1 as i32 - *s1 as i32)
        }
        (Date32, Timestamp(TimeUnit::Microsecond, None)) => true,
        (_, Utf8) => matches!(from, Decimal128(..)),
        _ => false,
    }
}

/// Rewrites `name` with `fields` widened, in one commit (rare: a source column changed type).
pub async fn widen(lake: &Lake, name: &str, fields: &[Field]) -> Result<(), DbError> {
    let table = lake.table(name).await?;
    let batches = read::query(&table, name, "SELECT * FROM t").await?;
    let schema = crate::lake::arrow_schema(&table, name)?;
    let widened: SchemaRef = Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| {
                fields
                    .iter()
                    .find(|w| w.name() == f.name())
                    .cloned()
                    .unwrap_or_else(|| f.as_ref().clone())
            })
            .collect::<Vec<_>>(),
    ));
    let batches = batches
        .iter()
        .map(|b| conform(b, &widened))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| LakeError::Schema {
            table: name.to_string(),
            source,
        })?;
    let batches = if batches.is_empty() {
        vec![RecordBatch::new_empty(widened)]
    } else {
        batches
    };
    tracing::info!(table = name, columns = fields.len(), "widening columns");
    crate::lake::AppendBuilder::new(table, name, batches)
        .replacing_all()
        .with_metadata("vitalake.operation", "widen columns")
        .execute()
        .await?;
    Ok(())
}

/// `batch` with the columns named in `casts` cast to the table's (wider) type.
pub fn cast_columns(
    batch: RecordBatch,
    casts: &HashMap<String, DataType>,
) -> Result<RecordBatch, ArrowError> {
    if casts.is_empty() {
        return Ok(batch);
    }
    let fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| match casts.get(f.name()) {
            Some(t) if can_cast_types(f.data_type(), t) => Field::new(f.name(), t.clone(), true),
            _ => f.as_ref().clone(),
        })
        .collect();
    conform(&batch, &Arc::new(Schema::new(fields)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widening_keeps_every_old_value_and_anything_else_stops_the_table() {
        let old = Schema::new(vec![
            Field::new("a", DataType::Int32, true),
            Field::new("b", DataType::Int64, true),
            Field::new("c", DataType::Utf8, true),
        ]);
        let new = Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Int32, true),
            Field::new("c", DataType::Utf8, true),
            Field::new("d", DataType::Boolean, true),
        ]);
        let plan = drift(&old, &new).unwrap();
        assert_eq!(plan.widen.len(), 1);
        assert_eq!(plan.widen[0].name(), "a");
        assert_eq!(plan.narrow.get("b"), Some(&DataType::Int64));
        let incompatible = Schema::new(vec![Field::new("c", DataType::Int32, true)]);
        assert!(drift(&old, &incompatible).unwrap_err().contains("column c"));
        assert!(widens(
            &DataType::Decimal128(10, 2),
            &DataType::Decimal128(12, 2)
        ));
        assert!(!widens(
            &DataType::Decimal128(10, 2),
            &DataType::Decimal128(10, 3)
        ));
    }
}
