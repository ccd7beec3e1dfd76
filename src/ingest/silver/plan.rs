//! What a chunk changes in silver, decided without the lake: the plan half of a merge, as
//! delta-rs's operations plan before they commit. [`SilverWriter::merge_chunk`] reads what silver
//! knows of the chunk's keys, asks these functions what to write, and commits it.
//!
//! [`SilverWriter::merge_chunk`]: super::SilverWriter::merge_chunk

use super::*;

/// The resources of a chunk that go to silver, sorted by key (the newest version of each key,
/// when it is newer than the version silver holds: `known`), and the others. A delete in the chunk
/// erases its key's versions ingested before it; in `redo` (merging again what may be half
/// merged) a version equal to the known one is written again.
pub(super) fn winners(
    resources: Vec<BronzeResource>,
    known: &HashMap<String, VersionKey>,
    redo: bool,
) -> (Vec<BronzeResource>, Vec<BronzeResource>) {
    let deletes = latest_deletes(resources.iter());
    // Decided on indices, then each resource is moved once: moving the resources themselves
    // through a map, a partition and a sort was 6% of the CPU time of a chunk of readings.
    let mut newest: HashMap<&str, usize> = HashMap::with_capacity(resources.len());
    for (index, resource) in resources.iter().enumerate() {
        if erased(resource, &deletes) {
            continue;
        }
        newest
            .entry(resource.key.as_str())
            .and_modify(|seen| {
                if newer(resource, &resources[*seen]) {
                    *seen = index;
                }
            })
            .or_insert(index);
    }
    let (mut won, lost): (Vec<usize>, Vec<usize>) = newest.into_values().partition(|&index| {
        let r = &resources[index];
        // A delete in this chunk erased what silver held of its key.
        deletes.contains_key(&r.key)
            || known
                .get(&r.key)
                .is_none_or(|old| r.version > *old || (redo && r.version == *old))
    });
    // One winner per key: an unstable sort orders them as a stable one would.
    won.sort_unstable_by(|&a, &b| resources[a].key.cmp(&resources[b].key));
    let mut slots: Vec<Option<BronzeResource>> = resources.into_iter().map(Some).collect();
    let mut take = |indices: Vec<usize>| -> Vec<BronzeResource> {
        indices
            .into_iter()
            .map(|index| slots[index].take().expect("each index is taken once"))
            .collect()
    };
    (take(won), take(lost))
}

/// One view's rows from a chunk's winners, and the keys whose rows in its table they replace.
pub(super) struct ViewRows<'w> {
    /// The view's index in [`SilverViews`].
    pub index: usize,
    pub rows: Vec<(&'w BronzeResource, usize, Vec<Cell>)>,
    /// Keys with rows now, or that may have had rows before (known to silver, or all in `redo`).
    pub touched: Vec<&'w String>,
}

/// Each view of `resource_type` with something to write: the rows of `winners` (moved out of
/// `flattened`, which holds the winners' views in the same order) and the keys they touch.
pub(super) fn view_rows<'w>(
    views: &SilverViews,
    resource_type: &str,
    winners: &'w [BronzeResource],
    flattened: &mut [Flattened],
    known: &HashMap<String, VersionKey>,
    redo: bool,
) -> Vec<ViewRows<'w>> {
    let mut out = Vec::new();
    for (index, _) in views.for_type(resource_type) {
        let mut rows = Vec::new();
        let mut touched = Vec::new();
        for (resource, flat) in winners.iter().zip(flattened.iter_mut()) {
            // Each view's rows are taken once: moved into the batch, not copied.
            let view_rows = flat
                .rows
                .iter_mut()
                .find(|(i, _)| *i == index)
                .map(|(_, r)| std::mem::take(r))
                .unwrap_or_default();
            if !view_rows.is_empty() || known.contains_key(&resource.key) || redo {
                touched.push(&resource.key);
            }
            rows.extend(
                view_rows
                    .into_iter()
                    .enumerate()
                    .map(|(n, row)| (resource, n, row)),
            );
        }
        if !touched.is_empty() {
            out.push(ViewRows {
                index,
                rows,
                touched,
            });
        }
    }
    out
}

/// The winners a view could not evaluate, for quarantine, with where they came from.
pub(super) fn rejected(
    winners: &[BronzeResource],
    flattened: Vec<Flattened>,
) -> Vec<(Rejected, Arc<Provenance>)> {
    winners
        .iter()
        .zip(flattened)
        .filter_map(|(r, f)| f.rejected.map(|rejected| (rejected, r.provenance.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn views() -> SilverViews {
        SilverViews::load(Path::new("/nonexistent-views-folder")).unwrap()
    }

    /// A heart-rate Observation `id` at version `version`, or its delete.
    fn resource(id: &str, version: &str, line: u64, deleted: bool) -> BronzeResource {
        let raw = format!(
            r#"{{"resourceType":"Observation","id":"{id}","meta":{{"versionId":"{version}"}},"status":"final","code":{{"coding":[{{"system":"http://loinc.org","code":"8867-4"}}]}},"subject":{{"reference":"Patient/p1"}},"effectiveDateTime":"2026-11-02T08:00:00Z","valueQuantity":{{"value":72,"code":"/min"}}}}"#
        );
        let record = ResourceRecord {
            resource_type: "Observation".into(),
            id: Some(id.into()),
            version_id: Some(version.into()),
            last_updated: None,
            full_url: None,
            raw,
            location: Location {
                line: Some(line),
                entries: Vec::new(),
            },
            warnings: Vec::new(),
            json: None,
            deleted,
        };
        let provenance = Arc::new(Provenance {
            source_uri: "file:///drop/obs.ndjson".into(),
            source_sha256: "ab12".into(),
            batch_id: "b1".into(),
            ingested_at: 1_700_000_000_000_000,
        });
        from_records(vec![(record, provenance, None)]).remove(0)
    }

    fn ids(resources: &[BronzeResource]) -> Vec<(String, String)> {
        resources
            .iter()
            .map(|r| (r.id.clone().unwrap(), r.version.version_id.clone().unwrap()))
            .collect()
    }

    #[test]
    fn the_newest_version_of_each_key_wins_unless_silver_holds_a_newer_one() {
        let chunk = vec![
            resource("a", "1", 1, false),
            resource("a", "3", 2, false),
            resource("a", "2", 3, false),
            resource("b", "1", 4, false),
            resource("c", "2", 5, false),
        ];
        let known: HashMap<String, VersionKey> = [
            (chunk[3].key.clone(), resource("b", "5", 9, false).version),
            (chunk[4].key.clone(), chunk[4].version.clone()),
        ]
        .into();
        let (won, lost) = winners(chunk.clone(), &known, false);
        assert_eq!(ids(&won), vec![("a".into(), "3".into())]);
        assert_eq!(lost.len(), 2, "b (silver holds v5) and c (silver holds it)");
        let (won, _) = winners(chunk, &known, true);
        assert_eq!(
            ids(&won),
            vec![("a".into(), "3".into()), ("c".into(), "2".into())],
            "merging again writes the version silver may half hold"
        );
    }

    #[test]
    fn a_delete_erases_the_versions_before_it_and_beats_what_silver_holds() {
        let chunk = vec![resource("a", "1", 1, false), resource("a", "1", 2, true)];
        let known: HashMap<String, VersionKey> =
            [(chunk[0].key.clone(), resource("a", "9", 9, false).version)].into();
        let (won, lost) = winners(chunk, &known, false);
        assert_eq!(won.len(), 1);
        assert!(won[0].deleted, "the delete goes to silver: {won:?}");
        assert!(lost.is_empty());
    }

    #[test]
    fn a_view_rewrites_the_keys_with_rows_and_those_silver_knew() {
        let views = views();
        let winners = vec![
            resource("hr-1", "1", 1, false),
            resource("hr-2", "1", 2, false),
        ];
        let mut flattened: Vec<Flattened> = winners.iter().map(|r| flatten(&views, r)).collect();
        let known: HashMap<String, VersionKey> =
            [(winners[1].key.clone(), winners[1].version.clone())].into();
        let planned = view_rows(
            &views,
            "Observation",
            &winners,
            &mut flattened,
            &known,
            false,
        );
        let by_view = |name: &str| {
            planned
                .iter()
                .find(|v| views.views()[v.index].name() == Some(name))
        };
        let heart_rate = by_view("heart_rate").expect("heart rates have rows");
        assert_eq!(heart_rate.rows.len(), 2);
        assert_eq!(heart_rate.touched.len(), 2);
        let blood_pressure = by_view("blood_pressure").expect("a known key may have had rows");
        assert!(blood_pressure.rows.is_empty());
        assert_eq!(blood_pressure.touched, vec![&winners[1].key]);
        assert!(rejected(&winners, flattened).is_empty());
    }
}
