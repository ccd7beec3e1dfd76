//! `silver/fhir/patient_history`: SCD type 2 periods of the `patient` view.

use super::*;

/// One version of a patient as the history sees it.
pub(super) struct PatientVersion {
    version: VersionKey,
    valid_from: i64,
    row: Vec<Cell>,
}

/// SCD2 periods of one patient from all its versions: a new period whenever the demographics change.
pub(super) fn history_rows(
    view: &View,
    mut versions: Vec<PatientVersion>,
) -> Vec<(Vec<Cell>, i64, Option<i64>, bool)> {
    versions.sort_by(|a, b| a.version.cmp(&b.version));
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
    let mut periods: Vec<(Vec<Cell>, i64, Option<i64>, bool)> = Vec::new();
    for version in versions {
        if let Some(last) = periods.last()
            && same(&last.0, &version.row)
        {
            continue;
        }
        if let Some(last) = periods.last_mut() {
            last.2 = Some(version.valid_from);
            last.3 = false;
        }
        periods.push((version.row, version.valid_from, None, true));
    }
    periods
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
/// in quarantine through the view's own table).
pub(super) fn patient_versions(
    view: &View,
    resources: &[BronzeResource],
    out: &mut BTreeMap<String, Vec<PatientVersion>>,
) {
    let rows: Vec<Option<Vec<Cell>>> = resources
        .par_iter()
        .map(|r| {
            let json: Json = serde_json::from_str(&r.raw).ok()?;
            view.rows(&json).ok()?.into_iter().next()
        })
        .collect();
    for (resource, row) in resources.iter().zip(rows) {
        if let Some(row) = row {
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
    view: &View,
    ids: &[String],
    patients: &mut BTreeMap<String, Vec<PatientVersion>>,
) -> Result<(), IngestError> {
    let bronze_name = bronze_fhir_table("Patient");
    let Some(bronze) = lake.existing_table(&bronze_name).await? else {
        return Ok(());
    };
    for slice in ids.chunks(10_000) {
        let sql = format!(
            "SELECT {BRONZE_COLUMNS} FROM t WHERE {}",
            key_predicate("resource_id", slice)
        );
        for batch in read::query(&bronze, &bronze_name, &sql).await? {
            patient_versions(view, &from_bronze("Patient", &batch), patients);
        }
    }
    Ok(())
}
