//! The Arrow shapes of silver tables, and how a write treats the rows already there.

use super::*;

/// The winning versions already recorded for `keys`.
pub(super) async fn known_versions(
    lake: &Lake,
    resource_type: &str,
    keys: &[&String],
) -> Result<HashMap<String, VersionKey>, IngestError> {
    let name = versions_table(resource_type);
    let mut known = HashMap::new();
    let Some(table) = lake.existing_table(&name).await? else {
        return Ok(known);
    };
    for slice in keys.chunks(10_000) {
        let sql = format!(
            "SELECT _key, _version_id, _last_updated, _ingest_order FROM t WHERE {}",
            key_predicate("_key", slice.iter().copied())
        );
        for batch in read::query(&table, &name, &sql).await? {
            let (k, v, o) = (
                strings(&batch, "_key"),
                strings(&batch, "_version_id"),
                strings(&batch, "_ingest_order"),
            );
            let updated = integers(&batch, "_last_updated");
            for i in 0..batch.num_rows() {
                known.insert(
                    k.value(i).to_string(),
                    VersionKey {
                        version_id: (!v.is_null(i)).then(|| v.value(i).to_string()),
                        last_updated: (!updated.is_null(i)).then(|| updated.value(i)),
                        ingest_order: o.value(i).to_string(),
                    },
                );
            }
        }
    }
    Ok(known)
}

pub(super) fn timestamps(values: impl IntoIterator<Item = Option<i64>>) -> ArrayRef {
    Arc::new(
        values
            .into_iter()
            .collect::<TimestampMicrosecondArray>()
            .with_timezone("UTC"),
    )
}

pub(super) fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The view's rows with silver's bookkeeping columns after them.
pub(super) fn view_batch(
    view: &View,
    rows: Vec<(&BronzeResource, usize, Vec<Cell>)>,
) -> RecordBatch {
    let mut builder = view.builder();
    let mut meta: Vec<(&BronzeResource, usize)> = Vec::with_capacity(rows.len());
    for (resource, row_number, row) in rows {
        builder.push(row);
        meta.push((resource, row_number));
    }
    let batch = builder.finish().expect("view rows match the view's schema");
    let mut extra: Vec<(Field, ArrayRef)> = vec![
        (
            Field::new("_key", DataType::Utf8, false),
            Arc::new(
                meta.iter()
                    .map(|(r, _)| Some(r.key.as_str()))
                    .collect::<StringArray>(),
            ),
        ),
        (
            Field::new("_row", DataType::Int32, false),
            Arc::new(
                meta.iter()
                    .map(|(_, n)| Some(*n as i32))
                    .collect::<Int32Array>(),
            ),
        ),
    ];
    extra.extend(version_columns(meta.iter().map(|(r, _)| *r)));
    append_columns(batch, extra)
}

/// `_version_id`, `_last_updated`, `_ingest_order`, `_batch_id`.
pub(super) fn version_columns<'r>(
    resources: impl Iterator<Item = &'r BronzeResource> + Clone,
) -> Vec<(Field, ArrayRef)> {
    vec![
        (
            Field::new("_version_id", DataType::Utf8, true),
            Arc::new(
                resources
                    .clone()
                    .map(|r| r.version.version_id.as_deref())
                    .collect::<StringArray>(),
            ),
        ),
        (
            Field::new("_last_updated", timestamp_type(), true),
            timestamps(resources.clone().map(|r| r.version.last_updated)),
        ),
        (
            Field::new("_ingest_order", DataType::Utf8, false),
            Arc::new(
                resources
                    .clone()
                    .map(|r| Some(r.version.ingest_order.as_str()))
                    .collect::<StringArray>(),
            ),
        ),
        (
            Field::new("_batch_id", DataType::Utf8, false),
            Arc::new(
                resources
                    .map(|r| Some(r.provenance.batch_id.as_str()))
                    .collect::<StringArray>(),
            ),
        ),
    ]
}

pub(super) fn versions_batch(resources: &[&BronzeResource]) -> RecordBatch {
    let mut fields = vec![Field::new("_key", DataType::Utf8, false)];
    let mut columns: Vec<ArrayRef> = vec![Arc::new(
        resources
            .iter()
            .map(|r| Some(r.key.as_str()))
            .collect::<StringArray>(),
    )];
    for (field, column) in version_columns(resources.iter().copied()) {
        fields.push(field);
        columns.push(column);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("version columns line up")
}

/// How a write treats the rows already in a table.
pub(super) enum Replace {
    /// Only new keys: a plain append, which reads nothing.
    Nothing,
    /// Replace the rows matching this predicate, in the same commit.
    Matching(String),
    /// Replace the whole table (a rebuild).
    All,
}

/// Replace the rows of `keys` if any of them was known before; otherwise nothing can be there.
///
/// The predicate names every key written, not only the known ones: Delta checks that each row a
/// replacing write adds matches its predicate.
pub(super) fn replace_known(keys: &[&String], known: &HashMap<String, VersionKey>) -> Replace {
    if keys.iter().any(|k| known.contains_key(*k)) {
        Replace::Matching(key_predicate("_key", keys.iter().copied()))
    } else {
        Replace::Nothing
    }
}

/// Writes `batch` to an open table; returns the table after the commit and the rows written.
pub(super) async fn write_to(
    table: DeltaTable,
    name: &str,
    batch: RecordBatch,
    replace: Replace,
    batch_id: &str,
    fence: &[(String, i64)],
) -> Result<(DeltaTable, u64), IngestError> {
    let rows = batch.num_rows() as u64;
    let operation = if matches!(replace, Replace::All) {
        "silver refresh"
    } else {
        "silver merge"
    };
    let builder = AppendBuilder::new(table, name, vec![batch])
        .with_metadata("vitalake.batch_id", batch_id)
        .with_metadata("vitalake.operation", operation);
    let builder = fence.iter().fold(builder, |builder, (app_id, version)| {
        builder.with_transaction(app_id, *version)
    });
    let builder = match replace {
        Replace::Nothing => builder,
        Replace::Matching(predicate) => builder.replacing(predicate),
        Replace::All => builder.replacing_all(),
    };
    let (table, _) = builder.execute().await?;
    Ok((table, rows))
}

/// Opens `name` and writes `batch` to it (the rebuild, which writes each table once).
pub(super) async fn write(
    lake: &Lake,
    name: &str,
    batch: RecordBatch,
    replace: Replace,
    batch_id: &str,
) -> Result<u64, IngestError> {
    let table = lake.table(name).await?;
    Ok(write_to(table, name, batch, replace, batch_id, &[])
        .await?
        .1)
}
