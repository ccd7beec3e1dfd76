//! `vitalake refresh silver`: every silver table rebuilt from bronze.

use super::*;

/// What a refresh rebuilt.
#[derive(Debug, Default, serde::Serialize)]
pub struct RefreshReport {
    /// Rows per silver table.
    pub tables: BTreeMap<String, u64>,
    pub resources_read: u64,
    pub quarantined: u64,
}

impl std::fmt::Display for RefreshReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "refresh silver: {} bronze resources read, {} quarantined by a view",
            self.resources_read, self.quarantined
        )?;
        for (table, rows) in &self.tables {
            writeln!(f, "  {table:<40} {rows:>10} rows")?;
        }
        Ok(())
    }
}

/// Rebuilds silver from bronze: every view (or only `only`), the version index and the patient history.
pub async fn refresh(
    lake: &Lake,
    views: &SilverViews,
    only: Option<&str>,
) -> Result<RefreshReport, IngestError> {
    if let Some(name) = only
        && !views.views().iter().any(|v| v.name() == Some(name))
    {
        return Err(IngestError::UnknownView(name.to_string()));
    }
    ensure_view_tables(lake, views).await?;
    let batch_id = uuid::Uuid::now_v7().to_string();
    let mut report = RefreshReport::default();
    let mut types: Vec<&str> = views.views().iter().map(View::resource).collect();
    types.sort();
    types.dedup();
    for resource_type in types {
        let selected: Vec<(usize, &View)> = views
            .for_type(resource_type)
            .filter(|(_, v)| only.is_none_or(|o| v.name() == Some(o)))
            .collect();
        if selected.is_empty() {
            continue;
        }
        let bronze_name = bronze_fhir_table(resource_type);
        let mut winners: HashMap<String, (BronzeResource, Flattened)> = HashMap::new();
        let mut patients = BTreeMap::new();
        let history_view = selected
            .iter()
            .find(|(_, v)| v.name() == Some(HISTORY_VIEW) && resource_type == "Patient")
            .copied();
        if let Some(bronze) = lake.existing_table(&bronze_name).await? {
            let columns = bronze_columns(&bronze, &bronze_name)?;
            // The delete events first (few): each erases the versions ingested before it.
            let deletes = if columns.contains(&"deleted") {
                let deleted = Some(ident("deleted"));
                let batches = read::select_all(&bronze, &bronze_name, &columns, deleted).await?;
                let events: Vec<BronzeResource> = batches
                    .iter()
                    .flat_map(|b| from_bronze(resource_type, b))
                    .collect();
                latest_deletes(events.iter())
            } else {
                HashMap::new()
            };
            let mut stream = read::select(&bronze, &bronze_name, &columns, None).await?;
            while let Some(batch) = read::next_batch(&mut stream, &bronze_name).await? {
                let resources = from_bronze(resource_type, &batch);
                report.resources_read += resources.len() as u64;
                if let Some(view) = history_view {
                    patient_versions(view, &resources.iter().collect::<Vec<_>>(), &mut patients);
                }
                let candidates: Vec<BronzeResource> = resources
                    .into_iter()
                    .filter(|r| {
                        !erased(r, &deletes)
                            && winners.get(&r.key).is_none_or(|(old, _)| newer(r, old))
                    })
                    .collect();
                let flattened: Vec<Flattened> =
                    candidates.par_iter().map(|r| flatten(views, r)).collect();
                for (resource, flat) in candidates.into_iter().zip(flattened) {
                    match winners.get(&resource.key) {
                        Some((old, _)) if !newer(&resource, old) => {}
                        _ => {
                            winners.insert(resource.key.clone(), (resource, flat));
                        }
                    }
                }
            }
        }
        let mut ordered: Vec<&(BronzeResource, Flattened)> = winners.values().collect();
        ordered.sort_by(|a, b| a.0.key.cmp(&b.0.key));
        for (index, view) in &selected {
            let rows = ordered
                .iter()
                .flat_map(|(resource, flat)| {
                    let view_rows = flat
                        .rows
                        .iter()
                        .find(|(i, _)| i == index)
                        .map(|(_, r)| r.as_slice())
                        .unwrap_or_default();
                    view_rows
                        .iter()
                        .enumerate()
                        .map(move |(n, row)| (resource, n, row.clone()))
                })
                .collect();
            let name = view_table(view.name().unwrap_or_default());
            let written =
                write(lake, &name, view_batch(view, rows), Replace::All, &batch_id).await?;
            report.tables.insert(name, written);
        }
        let all: Vec<&BronzeResource> = ordered.iter().map(|(r, _)| r).collect();
        let versions = versions_batch(&all);
        if !is_new_and_empty(lake, &versions_table(resource_type), &versions).await? {
            write(
                lake,
                &versions_table(resource_type),
                versions,
                Replace::All,
                &batch_id,
            )
            .await?;
        }
        if let Some((_, view)) = history_view {
            let written = write(
                lake,
                HISTORY_TABLE,
                history_batch(view, patients),
                Replace::All,
                &batch_id,
            )
            .await?;
            report.tables.insert(HISTORY_TABLE.to_string(), written);
        }
        // The view failures of this type are found again: replace the old ones.
        let rejected: Vec<(Rejected, Arc<Provenance>)> = ordered
            .iter()
            .filter_map(|(r, f)| {
                f.rejected
                    .clone()
                    .map(|rejected| (rejected, r.provenance.clone()))
            })
            .collect();
        if let Some(quarantine) = lake.existing_table(QUARANTINE_TABLE).await? {
            let predicate = format!(
                "stage = '{VIEW_STAGE}' AND resource_type = {}",
                quote(resource_type)
            );
            delete::delete_where(quarantine, QUARANTINE_TABLE, &predicate).await?;
        }
        if !rejected.is_empty() {
            report.quarantined += rejected.len() as u64;
            let table = lake.table(QUARANTINE_TABLE).await?;
            AppendBuilder::new(
                table,
                QUARANTINE_TABLE,
                vec![quarantine_batch(&rejected, VIEW_STAGE)],
            )
            .with_metadata("vitalake.batch_id", batch_id.as_str())
            .execute()
            .await?;
        }
    }
    Ok(report)
}

/// Nothing to write to a version index that does not exist yet: the incremental path creates one
/// with a type's first resource, and a rebuild must leave the same tables (an existing one is
/// emptied).
async fn is_new_and_empty(
    lake: &Lake,
    table: &str,
    batch: &RecordBatch,
) -> Result<bool, IngestError> {
    Ok(batch.num_rows() == 0 && lake.existing_table(table).await?.is_none())
}
