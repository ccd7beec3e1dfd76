//! `silver/fhir/patient_history`: SCD type 2 periods of the `patient` view.

use super::*;

/// One version of a patient as the history sees it; `row` is `None` for a delete event.
pub(super) struct PatientVersion {
    version: VersionKey,
    valid_from: i64,
    row: Option<Vec<Cell>>,
}

/// SCD2 periods of one patient from all its versions: a new period whenever the demographics change.
/// A delete event closes the open period when it was ingested, and the versions ingested after it
/// start afresh (the rule silver keeps, [`super::latest_deletes`]).
pub(super) fn history_rows(
    view: &View,
    versions: Vec<PatientVersion>,
) -> Vec<(Vec<Cell>, i64, Option<i64>, bool)> {
    let (mut deletes, mut kept): (Vec<_>, Vec<_>) =
        versions.into_iter().partition(|v| v.row.is_none());
    deletes.sort_by(|a, b| a.version.ingest_order.cmp(&b.version.ingest_order));
    kept.sort_by(|a, b| a.version.cmp(&b.version));
    let mut periods = Vec::new();
    let mut after: Option<&str> = None;
    for cut in deletes.iter().map(Some).chain([None]) {
        let segment: Vec<&PatientVersion> = kept
            .iter()
            .filter(|v| {
                let at = v.version.ingest_order.as_str();
                after.is_none_or(|a| at > a)
                    && cut.is_none_or(|c| at < c.version.ingest_order.as_str())
            })
            .collect();
        let start = periods.len();
        segment_periods(view, &segment, &mut periods);
        if let Some(cut) = cut {
            if let Some(open) = periods[start..].last_mut() {
                open.2 = Some(cut.valid_from);
                open.3 = false;
            }
            after = Some(cut.version.ingest_order.as_str());
        }
    }
    periods
}

/// The periods of versions no delete separates, in version order, appended to `periods`.
fn segment_periods(
    view: &View,
    versions: &[&PatientVersion],
    periods: &mut Vec<(Vec<Cell>, i64, Option<i64>, bool)>,
) {
    let start = periods.len();
    let demographic: Vec<bool> = view
        .columns()
        .iter()
        .map(|c| c.name != "version_id" && c.name != "last_updated")
        .collect();
    let same = |a: &[Cell], b: &[Cell]| {
        a.iter()
            .zip(b)
            .zip(&demographic)
            .all(|((x, y), d)| !d || x == y)
    };
    for version in versions {
        let row = version
            .row
            .as_ref()
            .expect("a segment holds versions, not deletes");
        if let Some(last) = periods[start..].last()
            && same(&last.0, row)
        {
            continue;
        }
        if let Some(last) = periods[start..].last_mut() {
            last.2 = Some(version.valid_from);
            last.3 = false;
        }
        periods.push((row.clone(), version.valid_from, None, true));
    }
}

pub(super) fn history_batch(
    view: &View,
    patients: BTreeMap<String, Vec<PatientVersion>>,
) -> RecordBatch {
    let mut builder = view.builder();
    let (mut keys, mut rows, mut from, mut to, mut current) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (key, versions) in patients {
        for (n, (row, valid_from, valid_to, is_current)) in
            history_rows(view, versions).into_iter().enumerate()
        {
            builder.push(row);
            keys.push(key.clone());
            rows.push(n as i32);
            from.push(Some(valid_from));
            to.push(valid_to);
            current.push(Some(is_current));
        }
    }
    let batch = builder.finish().expect("history rows match the view");
    append_columns(
        batch,
        vec![
            (
                Field::new("valid_from", timestamp_type(), false),
                timestamps(from),
            ),
            (
                Field::new("valid_to", timestamp_type(), true),
                timestamps(to),
            ),
            (
                Field::new("is_current", DataType::Boolean, false),
                Arc::new(current.into_iter().collect::<BooleanArray>()),
            ),
            (
                Field::new("_key", DataType::Utf8, false),
                Arc::new(StringArray::from(keys)),
            ),
            (
                Field::new("_row", DataType::Int32, false),
                Arc::new(Int32Array::from(rows)),
            ),
        ],
    )
}

/// The patient view's row for each version (versions the view cannot evaluate are left out; they are
/// in quarantine through the view's own table). `view` is the patient view and its index among the
/// silver views: a resource flattened where it was decoded has that view's row already, and is not
/// parsed again.
pub(super) fn patient_versions(
    (index, view): (usize, &View),
    resources: &[&BronzeResource],
    out: &mut BTreeMap<String, Vec<PatientVersion>>,
) {
    let rows: Vec<Option<Vec<Cell>>> = resources
        .par_iter()
        .map(|r| {
            // A delete event's raw is its request: no patient to read.
            if r.deleted {
                return None;
            }
            if let Some(flattened) = &r.flattened {
                let (_, rows) = flattened.rows.iter().find(|(i, _)| *i == index)?;
                return rows.first().cloned();
            }
            let json: Json = serde_json::from_str(&r.raw).ok()?;
            view.rows(&json).ok()?.into_iter().next()
        })
        .collect();
    for (resource, row) in resources.iter().zip(rows) {
        if row.is_some() || resource.deleted {
            out.entry(resource.key.clone())
                .or_default()
                .push(PatientVersion {
                    version: resource.version.clone(),
                    valid_from: resource.valid_from,
                    row,
                });
        }
    }
}

/// Every version bronze holds of the patients `ids`, added to `patients`.
pub(super) async fn history_from_bronze(
    lake: &Lake,
    view: (usize, &View),
    ids: &[String],
    patients: &mut BTreeMap<String, Vec<PatientVersion>>,
) -> Result<(), IngestError> {
    let bronze_name = bronze_fhir_table("Patient");
    let Some(bronze) = lake.existing_table(&bronze_name).await? else {
        return Ok(());
    };
    let columns = bronze_columns(&bronze, &bronze_name)?;
    for slice in ids.chunks(10_000) {
        let predicate = key_predicate("resource_id", slice);
        // Batch by batch: a chunk of known patients reads tens of megabytes of raw JSON, which
        // collected at once would all be held beside their parses.
        let mut batches = read::select(&bronze, &bronze_name, &columns, Some(predicate)).await?;
        while let Some(batch) = read::next_batch(&mut batches, &bronze_name).await? {
            let resources = from_bronze("Patient", &batch);
            drop(batch);
            patient_versions(view, &resources.iter().collect::<Vec<_>>(), patients);
        }
    }
    Ok(())
}
