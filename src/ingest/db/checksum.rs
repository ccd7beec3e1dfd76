//! Row identity and checksums: the key of a row in a table without a primary key, and an
//! order-independent checksum that compares the rows read from the source with the rows in bronze.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use deltalake::DeltaTable;
use deltalake::arrow::array::{RecordBatch, StringArray};
use deltalake::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use deltalake::arrow::row::{RowConverter, SortField};
use deltalake::arrow::util::display::{ArrayFormatter, FormatOptions};
use sha2::{Digest, Sha256};

use crate::lake::stream_append::conform;
use crate::lake::{LakeError, read};

use super::DbError;
use super::land::BATCH_ID;

/// The key of a row in a table without a primary key: SHA-256 of its values as text, plus how many
/// identical rows came before it in this extraction (so duplicates stay distinct rows).
#[derive(Default)]
pub struct RowHasher {
    seen: HashMap<[u8; 16], u32>,
}

impl RowHasher {
    pub fn hashes(&mut self, batch: &RecordBatch) -> StringArray {
        let options = FormatOptions::default().with_null("\u{0}");
        let formatters: Vec<_> = batch
            .columns()
            .iter()
            .map(|c| {
                ArrayFormatter::try_new(c.as_ref(), &options).expect("every Arrow type displays")
            })
            .collect();
        (0..batch.num_rows())
            .map(|row| {
                let mut digest = Sha256::new();
                for f in &formatters {
                    digest.update(f.value(row).to_string().as_bytes());
                    digest.update([0x1f]);
                }
                let hash: [u8; 16] = digest.finalize()[..16].try_into().expect("16 bytes");
                let n = self.seen.entry(hash).or_insert(0);
                *n += 1;
                Some(format!("{}-{}", hex::encode(hash), n))
            })
            .collect()
    }
}

/// An order-independent checksum of rows: the wrapping sum of a hash of each row's bytes in Arrow's
/// row format, so the rows read from the source and the rows read back from the lake can be compared.
#[derive(Default)]
pub struct Checksum {
    sum: u64,
    pub rows: u64,
}

impl Checksum {
    /// Counts `batch`'s rows and, with `hash`, adds them to the checksum.
    pub fn add(&mut self, batch: &RecordBatch, hash: bool) {
        self.rows += batch.num_rows() as u64;
        if !hash {
            return;
        }
        let fields = batch
            .schema()
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect();
        let converter =
            RowConverter::new(fields).expect("row format supports every extracted type");
        let rows = converter
            .convert_columns(batch.columns())
            .expect("columns match the converter");
        for row in rows.iter() {
            let mut hasher = DefaultHasher::new();
            row.as_ref().hash(&mut hasher);
            self.sum = self.sum.wrapping_add(hasher.finish());
        }
    }

    pub fn value(&self) -> u64 {
        self.sum
    }
}

/// The checksum of bronze's rows of `batch_id`, read back from the lake.
pub async fn landed_checksum(
    bronze: &DeltaTable,
    name: &str,
    batch_id: &str,
    extracted: &Schema,
    casts: &HashMap<String, DataType>,
) -> Result<Checksum, DbError> {
    let schema: SchemaRef = Arc::new(Schema::new(
        extracted
            .fields()
            .iter()
            .map(|f| {
                Field::new(
                    f.name(),
                    casts
                        .get(f.name())
                        .cloned()
                        .unwrap_or_else(|| f.data_type().clone()),
                    true,
                )
            })
            .collect::<Vec<_>>(),
    ));
    let columns: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| crate::lake::merge::quote(f.name()))
        .collect();
    let mut stream = read::stream(
        bronze,
        name,
        &format!(
            "SELECT {} FROM t WHERE {BATCH_ID} = '{batch_id}'",
            columns.join(", ")
        ),
    )
    .await?;
    let mut checksum = Checksum::default();
    while let Some(batch) = read::next_batch(&mut stream, name).await? {
        let batch = conform(&batch, &schema).map_err(|source| LakeError::Schema {
            table: name.to_string(),
            source,
        })?;
        checksum.add(&batch, true);
    }
    Ok(checksum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_rows_keep_distinct_keys() {
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("x", DataType::Utf8, true)])),
            vec![Arc::new(StringArray::from(vec![
                Some("a"),
                Some("a"),
                None,
            ]))],
        )
        .unwrap();
        let hashes = RowHasher::default().hashes(&batch);
        assert_ne!(hashes.value(0), hashes.value(1));
        assert_eq!(
            hashes.value(0).split('-').next(),
            hashes.value(1).split('-').next()
        );
    }
}
