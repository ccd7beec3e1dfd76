//! Landing micro-batches: bronze, then quarantine, then silver, then the checkpoint.
//!
//! Exactly once, across crashes: the bronze commit carries a Delta application transaction per
//! partition (app id = namespace/hub/consumer group/partition, version = the batch's last sequence
//! number), and the checkpoint is written only once silver has the batch. So on a restart:
//! - events at or below the committed version are skipped (they are in bronze);
//! - if the checkpoint is behind the committed version, the batch between them reached bronze but
//!   maybe not all of silver: it is read back from bronze and merged again in redo mode, where every
//!   key and quarantine row is replaced rather than added ([`Lander::recover`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use azure_messaging_eventhubs::CheckpointStore;
use azure_messaging_eventhubs::models::Checkpoint;
use deltalake::DeltaTable;
use deltalake::arrow::array::RecordBatch;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::events::{
    DATE_COLUMN, EventDecoder, LandedEvent, Prepared, bronze_batch, bronze_events_table,
    events_from_bronze, source_name, source_uri,
};
use crate::fhir::{Decoded, Rejected};
use crate::ingest::IngestError;
use crate::ingest::silver::{ResourceToLand, SilverViews, SilverWriter, from_records, quote};
use crate::ingest::tables::{Provenance, QUARANTINE_TABLE, quarantine_batch};
use crate::lake::delete::delete_where;
use crate::lake::{AppendBuilder, Lake, app_version, read};
use crate::stream::checkpoints::Checkpoints;
use crate::stream::{Event, StreamId};

/// The quarantine stage of stream events.
pub const STREAM_STAGE: &str = "stream";

/// One partition's events for one landing, in sequence order, all above what bronze has.
pub struct PartitionBatch {
    pub partition_id: String,
    pub events: Vec<Event>,
    /// `decoded[i]` is `events[i]` decoded ahead by the reader, while earlier batches landed;
    /// empty when the batch was not decoded ahead (the landing decodes it then).
    pub decoded: Vec<Vec<Prepared>>,
    /// Rows to put on record before these events reach bronze (the alerts the rules raised on
    /// them): once an event is in bronze it is not read again, so what it raised must be kept by
    /// then.
    pub record_first: Vec<RecordFirst>,
}

/// Rows for another table that a batch puts on record before its bronze commit.
pub struct RecordFirst {
    pub table: &'static str,
    pub rows: RecordBatch,
}

impl PartitionBatch {
    /// Drops the events at or below `committed` (a prefix: events are in sequence order) and
    /// returns how many went.
    fn drop_through(&mut self, committed: i64) -> usize {
        let cut = self
            .events
            .partition_point(|e| e.sequence_number <= committed);
        self.events.drain(..cut);
        if !self.decoded.is_empty() {
            self.decoded.drain(..cut);
        }
        cut
    }

    /// Appends a later batch of the same partition.
    fn append(&mut self, mut later: PartitionBatch) {
        let both_decoded =
            self.decoded.len() == self.events.len() && later.decoded.len() == later.events.len();
        if both_decoded {
            self.decoded.append(&mut later.decoded);
        } else {
            self.decoded.clear();
        }
        self.events.append(&mut later.events);
        self.record_first.append(&mut later.record_first);
    }
}

/// What one landing did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Landed {
    pub events: u64,
    pub resources: u64,
    pub quarantined: u64,
    pub silver_rows: u64,
    /// Rows put on record before bronze ([`RecordFirst`]).
    pub recorded_first: u64,
}

/// Lands the batches of one stream; keeps its tables open between batches.
pub struct Lander<'l> {
    lake: &'l Lake,
    stream: StreamId,
    table_name: String,
    bronze: Option<DeltaTable>,
    quarantine: Option<DeltaTable>,
    silver: SilverWriter<'l>,
    checkpoints: Arc<Checkpoints>,
    decoder: Arc<EventDecoder>,
}

impl<'l> Lander<'l> {
    pub fn new(
        lake: &'l Lake,
        stream: StreamId,
        views: SilverViews,
        checkpoints: Arc<Checkpoints>,
        decoder: Arc<EventDecoder>,
    ) -> Self {
        Lander {
            lake,
            table_name: bronze_events_table(&stream.hub),
            stream,
            bronze: None,
            quarantine: None,
            silver: SilverWriter::new(lake, views, "stream"),
            checkpoints,
            decoder,
        }
    }

    /// What this lander decodes with, for readers that decode ahead.
    pub fn decoder(&self) -> Arc<EventDecoder> {
        self.decoder.clone()
    }

    pub fn lake(&self) -> &'l Lake {
        self.lake
    }

    /// The bronze table the events land in.
    pub fn bronze_path(&self) -> &str {
        &self.table_name
    }

    /// The `source_uri` of a partition's rows.
    pub fn source_uri(&self, partition_id: &str) -> String {
        source_uri(&self.stream, partition_id)
    }

    async fn bronze_table(&mut self) -> Result<DeltaTable, IngestError> {
        Ok(match self.bronze.take() {
            Some(table) => table,
            None => self.lake.table(&self.table_name).await?,
        })
    }

    /// The last sequence number bronze holds for `partition_id`, if any.
    pub async fn committed(&mut self, partition_id: &str) -> Result<Option<i64>, IngestError> {
        let table = self.bronze_table().await?;
        let version = if table.version().is_some() {
            app_version(&table, &self.table_name, &self.stream.app_id(partition_id)).await?
        } else {
            None
        };
        self.bronze = Some(table);
        Ok(version)
    }

    /// Finishes a batch that reached bronze but maybe not silver (see the module docs); returns the
    /// last committed sequence number of the partition and how many events were merged again.
    pub async fn recover(&mut self, partition_id: &str) -> Result<(Option<i64>, u64), IngestError> {
        // Another process may have written silver for this partition since this one last did.
        self.silver.forget();
        let Some(committed) = self.committed(partition_id).await? else {
            return Ok((None, 0));
        };
        let checkpoint = self
            .checkpoints
            .checkpoint(
                &self.stream.namespace,
                &self.stream.hub,
                &self.stream.consumer_group,
                partition_id,
            )
            .await
            .map_err(IngestError::Stream)?
            .and_then(|c| c.sequence_number);
        if checkpoint.is_some_and(|c| c >= committed) {
            return Ok((Some(committed), 0));
        }
        let after = checkpoint.unwrap_or(i64::MIN);
        tracing::info!(
            partition_id,
            after,
            committed,
            "finishing a batch that reached bronze before the last stop"
        );
        let landed = self.merge_again(partition_id, after, committed).await?;
        let offset = landed.last().and_then(|e| e.event.offset.clone());
        self.checkpoint(partition_id, committed, offset).await?;
        Ok((Some(committed), landed.len() as u64))
    }

    /// Merges the partition's events `after < sequence number <= upto` into silver again, read
    /// back from bronze, in redo mode (every key replaced, so merging twice writes nothing twice).
    async fn merge_again(
        &mut self,
        partition_id: &str,
        after: i64,
        upto: i64,
    ) -> Result<Vec<LandedEvent>, IngestError> {
        let sql = format!(
            "SELECT * FROM t WHERE source = {} AND partition_id = {} AND sequence_number > {after} AND sequence_number <= {upto} ORDER BY sequence_number",
            quote(&source_name(&self.stream)),
            quote(partition_id),
        );
        let table = self.bronze_table().await?;
        let batches = read::query(&table, &self.table_name, &sql).await?;
        self.bronze = Some(table);
        let mut parts = [(
            partition_id.to_string(),
            batches.iter().flat_map(events_from_bronze).collect(),
        )];
        self.merge_with_retry(&mut parts, true).await?;
        let [(_, landed)] = parts;
        Ok(landed)
    }

    /// Lands one batch per partition: one bronze commit for all of them, then one quarantine
    /// commit and one silver merge for all of them, then each partition's checkpoint.
    pub async fn land(&mut self, batches: Vec<PartitionBatch>) -> Result<Landed, IngestError> {
        let batches: Vec<PartitionBatch> = batches
            .into_iter()
            .filter(|b| !b.events.is_empty())
            .collect();
        if batches.is_empty() {
            return Ok(Landed::default());
        }
        let mut landed = Landed::default();
        let mut batches = batches;
        let mut attempt = 1;
        let mut elsewhere = Vec::new();
        let landing = loop {
            batches = self.drop_landed_elsewhere(batches, &mut elsewhere).await?;
            if batches.is_empty() {
                break None;
            }
            // What the events raised first: once an event is in bronze it is not read again.
            for batch in &mut batches {
                for first in std::mem::take(&mut batch.record_first) {
                    landed.recorded_first += first.rows.num_rows() as u64;
                    let table = self.lake.table(first.table).await?;
                    AppendBuilder::new(table, first.table, vec![first.rows])
                        .execute()
                        .await?;
                }
            }
            let batch_id = uuid::Uuid::now_v7().to_string();
            let ingested_at = chrono::Utc::now().timestamp_micros();
            match self.append_bronze(&batches, &batch_id, ingested_at).await {
                Ok(()) => break Some((batches, batch_id, ingested_at)),
                // Another process landed some of these events since bronze was read (Delta
                // refuses a second commit of the partition's transaction): read again and retry.
                Err(e) if attempt < 5 && e.is_concurrent_transaction() => {
                    tracing::warn!(
                        attempt,
                        "bronze commit lost a race for a partition; retrying"
                    );
                    self.bronze = None;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        };
        // Events another process landed in bronze while this one read them: that process may
        // stop before they reach silver, so they are merged again here (redo mode, idempotent).
        for (partition_id, after, upto) in elsewhere {
            self.merge_again(&partition_id, after, upto).await?;
        }
        let Some((batches, batch_id, ingested_at)) = landing else {
            return Ok(landed);
        };

        // Every partition's batch in one silver merge: one commit per silver table per landing.
        let mut checkpoints = Vec::with_capacity(batches.len());
        let mut parts: Vec<(String, Vec<LandedEvent>)> = Vec::with_capacity(batches.len());
        for batch in batches {
            let last = batch.events.last().expect("not empty");
            checkpoints.push((last.sequence_number, last.offset.clone()));
            let mut decoded = batch.decoded.into_iter();
            let events = batch
                .events
                .into_iter()
                .map(|event| LandedEvent {
                    event,
                    batch_id: batch_id.clone(),
                    ingested_at,
                    decoded: decoded.next(),
                })
                .collect();
            parts.push((batch.partition_id, events));
        }
        let step = self.merge_with_retry(&mut parts, false).await?;
        landed.events += parts.iter().map(|(_, e)| e.len() as u64).sum::<u64>();
        landed.resources += step.resources;
        landed.quarantined += step.quarantined;
        landed.silver_rows += step.silver_rows;
        for ((partition_id, _), (sequence_number, offset)) in parts.iter().zip(checkpoints) {
            self.checkpoint(partition_id, sequence_number, offset)
                .await?;
        }
        Ok(landed)
    }

    /// Appends the batches to bronze in one commit, with each partition's transaction.
    async fn append_bronze(
        &mut self,
        batches: &[PartitionBatch],
        batch_id: &str,
        ingested_at: i64,
    ) -> Result<(), IngestError> {
        let source = source_name(&self.stream);
        let rows: Vec<_> = batches
            .iter()
            .map(|b| bronze_batch(&source, &b.events, batch_id, ingested_at))
            .collect();
        let mut append = AppendBuilder::new(self.bronze_table().await?, &self.table_name, rows)
            .with_partition_columns(&[DATE_COLUMN])
            .with_metadata("vitalake.batch_id", batch_id)
            .with_metadata("vitalake.operation", "stream")
            // Unique on every row, as ingest's raw JSON: a dictionary holds each once more, and
            // bounds of the bodies skip nothing (reads filter on partition, sequence and time).
            .without_dictionary(&["body", "offset"])
            .without_statistics(&["body"]);
        for batch in batches {
            let last = batch.events.last().expect("not empty").sequence_number;
            append = append.with_transaction(&self.stream.app_id(&batch.partition_id), last);
        }
        let (table, _) = append.execute().await?;
        self.bronze = Some(table);
        Ok(())
    }

    /// Another process on the consumer group may have owned a partition a moment ago and landed
    /// part of what this one read before its reader was cut off: keep only events above what bronze
    /// has now.
    /// The skipped ranges are added to `elsewhere` as (partition, after, upto).
    async fn drop_landed_elsewhere(
        &mut self,
        batches: Vec<PartitionBatch>,
        elsewhere: &mut Vec<(String, i64, i64)>,
    ) -> Result<Vec<PartitionBatch>, IngestError> {
        let mut table = self.bronze_table().await?;
        if table.version().is_some() {
            table.update_incremental(None).await.map_err(|source| {
                crate::lake::LakeError::Delta {
                    table: self.table_name.clone(),
                    source,
                }
            })?;
        }
        self.bronze = Some(table);
        // One batch per partition: a partition read twice for a moment (its reader replaced)
        // can bring two, which must neither overlap nor record the partition's transaction twice.
        let mut kept: Vec<PartitionBatch> = Vec::with_capacity(batches.len());
        for mut batch in batches {
            let earlier = kept
                .iter()
                .position(|k| k.partition_id == batch.partition_id);
            let committed = match earlier {
                Some(i) => kept[i].events.last().map(|e| e.sequence_number),
                None => self.committed(&batch.partition_id).await?,
            };
            if let Some(committed) = committed {
                let first = batch.events.first().map_or(i64::MAX, |e| e.sequence_number);
                let skipped = batch.drop_through(committed);
                if skipped > 0 && earlier.is_none() {
                    elsewhere.push((batch.partition_id.clone(), first - 1, committed));
                }
                if skipped > 0 {
                    tracing::warn!(
                        partition_id = batch.partition_id.as_str(),
                        skipped,
                        "events already landed by another reader skipped"
                    );
                }
            }
            match earlier {
                Some(i) => kept[i].append(batch),
                None if !batch.events.is_empty() => kept.push(batch),
                None => {}
            }
        }
        Ok(kept)
    }

    /// Silver may be written by other processes at the same time (other partitions, `ingest fhir`):
    /// a commit that loses such a race is merged again from fresh tables, in redo mode, which
    /// replaces rather than adds, so a retry never writes a row twice.
    async fn merge_with_retry(
        &mut self,
        parts: &mut [(String, Vec<LandedEvent>)],
        redo: bool,
    ) -> Result<Landed, IngestError> {
        const ATTEMPTS: u32 = 10;
        let mut attempt = 1;
        loop {
            let redo = redo || attempt > 1;
            self.silver.redoing(redo);
            let result = self.merge_into_silver(parts, redo).await;
            self.silver.redoing(false);
            match result {
                Err(e) if attempt < ATTEMPTS => {
                    tracing::warn!(partitions = parts.len(), attempt, error = %e, "silver merge lost a race; merging again");
                    self.silver.forget();
                    self.quarantine = None;
                    tokio::time::sleep(std::time::Duration::from_millis(50 * u64::from(attempt)))
                        .await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Merges under each partition's transaction (see `SilverWriter::fencing`).
    async fn merge_into_silver(
        &mut self,
        parts: &mut [(String, Vec<LandedEvent>)],
        redo: bool,
    ) -> Result<Landed, IngestError> {
        let fence = parts
            .iter()
            .filter_map(|(partition_id, events)| {
                let last = events.last()?.event.sequence_number;
                Some((self.stream.app_id(partition_id), last))
            })
            .collect();
        self.silver.fencing(fence);
        let result = self.merge_fenced(parts, redo).await;
        self.silver.fencing(Vec::new());
        result
    }

    /// Decodes the events (or takes what their readers decoded ahead: a retry decodes again),
    /// appends the rejected ones to quarantine (one commit for all partitions) and merges the
    /// resources into silver (one merge, every type's tables written together).
    async fn merge_fenced(
        &mut self,
        parts: &mut [(String, Vec<LandedEvent>)],
        redo: bool,
    ) -> Result<Landed, IngestError> {
        let mut landed = Landed::default();
        let mut by_type: BTreeMap<String, Vec<ResourceToLand>> = BTreeMap::new();
        let mut rejected: Vec<(Rejected, Arc<Provenance>)> = Vec::new();
        // In redo mode, what an interrupted attempt may have quarantined for these events goes.
        let mut redone = Vec::new();
        for (partition_id, events) in parts.iter_mut() {
            let (Some(first), Some(last)) = (events.first(), events.last()) else {
                continue;
            };
            let uri = source_uri(&self.stream, partition_id);
            if redo {
                redone.push(format!(
                    "(source_uri = {} AND line >= {} AND line <= {})",
                    quote(&uri),
                    first.event.sequence_number,
                    last.event.sequence_number
                ));
            }
            let hash = hex::encode(Sha256::digest(uri.as_bytes()));
            let ahead: Vec<Option<Vec<Prepared>>> =
                events.iter_mut().map(|e| e.decoded.take()).collect();
            let decoded: Vec<Vec<Prepared>> = if ahead.iter().all(Option::is_some) {
                ahead.into_iter().flatten().collect()
            } else {
                let decoder = &self.decoder;
                events
                    .par_iter()
                    .map(|e| decoder.decode(&e.event))
                    .collect()
            };
            let mut provenances: BTreeMap<(&str, i64), Arc<Provenance>> = BTreeMap::new();
            for (event, records) in events.iter().zip(decoded) {
                let provenance = provenances
                    .entry((&event.batch_id, event.ingested_at))
                    .or_insert_with(|| {
                        Arc::new(Provenance {
                            source_uri: uri.clone(),
                            source_sha256: hash.clone(),
                            batch_id: event.batch_id.clone(),
                            ingested_at: event.ingested_at,
                        })
                    })
                    .clone();
                for Prepared { record, flattened } in records {
                    match record {
                        Decoded::Resource(r) => by_type
                            .entry(r.resource_type.clone())
                            .or_default()
                            .push((r, provenance.clone(), flattened)),
                        Decoded::Rejected(r) => rejected.push((r, provenance.clone())),
                    }
                }
            }
        }
        if !rejected.is_empty() || !redone.is_empty() {
            landed.quarantined = rejected.len() as u64;
            let replace = (!redone.is_empty()).then(|| {
                format!(
                    "stage = {} AND ({})",
                    quote(STREAM_STAGE),
                    redone.join(" OR ")
                )
            });
            self.quarantine(&rejected, replace).await?;
        }
        landed.resources += by_type.values().map(|r| r.len() as u64).sum::<u64>();
        // Moved as they are, with the rows their views gave where they were decoded.
        let resources = by_type
            .into_iter()
            .map(|(resource_type, records)| (resource_type, from_records(records)))
            .collect();
        let merged = self.silver.merge_chunk(resources).await?;
        landed.silver_rows += merged.rows;
        landed.quarantined += merged.quarantined;
        Ok(landed)
    }

    /// Appends rejected events to quarantine; with `replace` (redo mode), replaces the rows it
    /// matches: what an interrupted attempt may have put there for the same sequence numbers.
    async fn quarantine(
        &mut self,
        rejected: &[(Rejected, Arc<Provenance>)],
        replace: Option<String>,
    ) -> Result<(), IngestError> {
        let table = match self.quarantine.take() {
            Some(table) => table,
            None => self.lake.table(QUARANTINE_TABLE).await?,
        };
        if rejected.is_empty() {
            // Redo with nothing to quarantine: only what an earlier attempt left must go.
            if let Some(predicate) = replace
                && table.version().is_some()
            {
                delete_where(table, QUARANTINE_TABLE, &predicate).await?;
            }
            return Ok(());
        }
        let mut append = AppendBuilder::new(
            table,
            QUARANTINE_TABLE,
            vec![quarantine_batch(rejected, STREAM_STAGE)],
        )
        .with_schema_merge()
        .with_metadata("vitalake.operation", "stream");
        if let Some(predicate) = replace {
            append = append.replacing(predicate);
        }
        let (table, _) = append.execute().await?;
        self.quarantine = Some(table);
        Ok(())
    }

    async fn checkpoint(
        &self,
        partition_id: &str,
        sequence_number: i64,
        offset: Option<String>,
    ) -> Result<(), IngestError> {
        self.checkpoints
            .update_checkpoint(Checkpoint {
                fully_qualified_namespace: self.stream.namespace.clone(),
                event_hub_name: self.stream.hub.clone(),
                consumer_group: self.stream.consumer_group.clone(),
                partition_id: partition_id.to_string(),
                offset,
                sequence_number: Some(sequence_number),
            })
            .await
            .map_err(IngestError::Checkpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::Location;
    use crate::issue::Issue;

    /// A batch of events `sequence_numbers`, decoded ahead when `decoded`: each event's record
    /// names its sequence number, so a misaligned pair shows.
    fn batch(sequence_numbers: std::ops::RangeInclusive<i64>, decoded: bool) -> PartitionBatch {
        let events: Vec<Event> = sequence_numbers
            .map(|sequence_number| Event {
                partition_id: "0".into(),
                sequence_number,
                ..Event::default()
            })
            .collect();
        let decoded = if decoded {
            events
                .iter()
                .map(|e| {
                    let location = Location::line(e.sequence_number as u64);
                    let issue = Issue::error("test", "$", "test");
                    vec![Prepared {
                        record: Decoded::Rejected(Rejected::new("", location, issue)),
                        flattened: None,
                    }]
                })
                .collect()
        } else {
            Vec::new()
        };
        PartitionBatch {
            partition_id: "0".into(),
            events,
            decoded,
            record_first: Vec::new(),
        }
    }

    fn aligned(batch: &PartitionBatch) -> bool {
        batch.decoded.len() == batch.events.len()
            && batch.events.iter().zip(&batch.decoded).all(|(e, d)| {
                matches!(d.as_slice(), [Prepared { record: Decoded::Rejected(r), .. }]
                    if r.location == Location::line(e.sequence_number as u64))
            })
    }

    #[test]
    fn events_landed_elsewhere_go_with_their_decoded_records() {
        let mut decoded = batch(5..=9, true);
        assert_eq!(decoded.drop_through(6), 2);
        assert_eq!(decoded.events[0].sequence_number, 7);
        assert!(aligned(&decoded));

        let mut plain = batch(5..=9, false);
        assert_eq!(plain.drop_through(6), 2);
        assert!(plain.decoded.is_empty());
    }

    #[test]
    fn a_batch_appended_keeps_decoded_records_only_when_both_have_them() {
        let mut first = batch(1..=3, true);
        first.append(batch(4..=6, true));
        assert_eq!(first.events.len(), 6);
        assert!(aligned(&first));

        let mut mixed = batch(1..=3, true);
        mixed.append(batch(4..=6, false));
        assert_eq!(mixed.events.len(), 6);
        assert!(
            mixed.decoded.is_empty(),
            "the landing decodes all six again"
        );
    }
}
