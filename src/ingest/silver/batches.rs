//! The Arrow shapes of silver tables, and how a write treats the rows already there.

use super::*;

/// How far back, in ingest time, a look-up of known versions reads first: a correction usually
/// follows its reading within hours (a device re-sends, a nurse fixes an entry). Each window reads
/// only the files Delta's statistics say were written in it (`_ingest_order` starts with the
/// ingest time); the keys not found there are looked for in the next, the last being everything.
const LOOKUP_WINDOWS_DAYS: [i64; 2] = [1, 30];

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
    let now = chrono::Utc::now().timestamp_micros();
    let floors = LOOKUP_WINDOWS_DAYS
        .iter()
        .map(|days| Some(ingested_since(now - days * 86_400_000_000)))
        .chain([None]);
    let mut missing: Vec<&String> = keys.to_vec();
    for floor in floors {
        for slice in missing.chunks(10_000) {
            let keys = key_predicate("_key", slice.iter().copied());
            let predicate = match &floor {
                Some(floor) => floor.clone().and(keys),
                None => keys,
            };
            let mut batches =
                read::select(&table, &name, &VERSION_COLUMNS, Some(predicate)).await?;
            while let Some(batch) = read::next_batch(&mut batches, &name).await? {
                add_versions(&batch, &mut known);
            }
        }
        missing.retain(|k| !known.contains_key(*k));
        if missing.is_empty() {
            break;
        }
    }
    Ok(known)
}

const VERSION_COLUMNS: [&str; 4] = ["_key", "_version_id", "_last_updated", "_ingest_order"];

/// The rows ingested at `micros` or later: ingest orders start with the ingest time, in
/// microseconds, as 20 digits.
fn ingested_since(micros: i64) -> Expr {
    ident("_ingest_order").gt_eq(lit(format!("{micros:020}")))
}

fn add_versions(batch: &RecordBatch, known: &mut HashMap<String, VersionKey>) {
    let (k, v, o) = (
        strings(batch, "_key"),
        strings(batch, "_version_id"),
        strings(batch, "_ingest_order"),
    );
    let updated = integers(batch, "_last_updated");
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
    Matching(Expr),
    /// Replace the whole table (a rebuild).
    All,
}

/// Replace the rows of `keys`, keys silver knew, with the rows written for them (the rows of new
/// keys are a separate append: Delta checks that each row a replacing write adds matches its
/// predicate, and a predicate naming every key of a chunk is costly to plan).
///
/// The predicate also bounds `_ingest_order` from below by `floor`, the oldest ingest among the
/// rows replaced and written ([`ingest_floor`]): Delta then skips, by its file statistics, every
/// file written before that. A correction of recent readings reads and rewrites recent files
/// only, however long the table's history (the keys themselves are spread over every file, so
/// they skip nothing).
pub(super) fn replace_known(keys: &[&String], floor: &str) -> Replace {
    let ingest_order = || ident("_ingest_order");
    Replace::Matching(
        ingest_order()
            .gt_eq(lit(floor))
            .or(ingest_order().is_null())
            .and(key_predicate("_key", keys.iter().copied())),
    )
}

/// The oldest ingest order among `winners` and the versions of them silver holds (`known`): no row
/// a merge of `winners` replaces or writes was ingested before it. Rows of one resource version
/// carry its ingest order in every silver table, so this bounds the rows replaced in each.
pub(super) fn ingest_floor<'w>(
    winners: &'w [BronzeResource],
    known: &'w HashMap<String, VersionKey>,
) -> &'w str {
    winners
        .iter()
        .flat_map(|r| [Some(&r.version), known.get(&r.key)])
        .flatten()
        .map(|v| v.ingest_order.as_str())
        .min()
        .unwrap_or("")
}

/// The append that writes `batch` to silver table `name`, replacing what `replace` says, in one
/// commit carrying the run's id and the stream's `fence`.
pub(super) fn silver_append(
    table: DeltaTable,
    name: &str,
    batch: RecordBatch,
    replace: Replace,
    batch_id: &str,
    fence: &[(String, i64)],
) -> AppendBuilder {
    let operation = if matches!(replace, Replace::All) {
        "silver refresh"
    } else {
        "silver merge"
    };
    let builder = AppendBuilder::new(table, name, vec![batch])
        .with_metadata("vitalake.batch_id", batch_id)
        .with_metadata("vitalake.operation", operation)
        // These repeat only within one resource's rows: a dictionary would hold each value once
        // more, for nothing.
        .without_dictionary(&["id", "_key", "_ingest_order"]);
    let builder = fence.iter().fold(builder, |builder, (app_id, version)| {
        builder.with_transaction(app_id, *version)
    });
    match replace {
        Replace::Nothing => builder,
        Replace::Matching(predicate) => builder.replacing(predicate),
        Replace::All => builder.replacing_all(),
    }
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
    let (_, metrics) = silver_append(table, name, batch, replace, batch_id, &[])
        .execute()
        .await?;
    Ok(metrics.rows as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A versions table row of `key`, ingested at `micros`.
    fn version_row(key: &str, micros: i64) -> RecordBatch {
        let order = format!("{micros:020}|b|s|{:012}|", 0);
        RecordBatch::try_from_iter([
            ("_key", Arc::new(StringArray::from(vec![key])) as ArrayRef),
            (
                "_version_id",
                Arc::new(StringArray::from(vec!["1"])) as ArrayRef,
            ),
            ("_last_updated", timestamps([Some(micros)])),
            (
                "_ingest_order",
                Arc::new(StringArray::from(vec![order])) as ArrayRef,
            ),
        ])
        .unwrap()
    }

    /// Keys ingested long ago, a month ago and now are all found: the windows that read recent
    /// files first leave nothing out.
    #[tokio::test]
    async fn known_versions_finds_keys_of_every_age() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        let name = versions_table("Observation");
        let now = chrono::Utc::now().timestamp_micros();
        let day = 86_400_000_000;
        let ages = [
            ("old", now - 400 * day),
            ("month", now - 20 * day),
            ("new", now),
        ];
        for (key, at) in ages {
            // One file per row, as separate landings leave them.
            let table = lake.table(&name).await.unwrap();
            AppendBuilder::new(table, &name, vec![version_row(key, at)])
                .execute()
                .await
                .unwrap();
        }
        let keys: Vec<String> = ["old", "month", "new", "never"].map(String::from).into();
        let found = known_versions(&lake, "Observation", &keys.iter().collect::<Vec<_>>())
            .await
            .unwrap();
        let mut found_keys: Vec<&str> = found.keys().map(String::as_str).collect();
        found_keys.sort();
        assert_eq!(found_keys, ["month", "new", "old"]);
        assert!(
            found["old"]
                .ingest_order
                .starts_with(&format!("{:020}", now - 400 * day))
        );
    }
}
