//! The decoding side of an ingest run: files in, chunks of Arrow batches out.
//!
//! Runs on a plain thread (never on the async reactor) and decodes in parallel with `rayon`: small
//! JSON files a group at a time, NDJSON files a block of lines at a time, so a 1 GB NDJSON file
//! streams through in bounded memory. A chunk is handed to the writer once it holds
//! `chunk_records` records or `chunk_bytes` of JSON. Decoding a chunk starts only once the writer
//! has taken the one before (see [`ChunkBuffer::reserve`]): two chunks are in memory at a time.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, Read};
use std::sync::Arc;

use deltalake::arrow::record_batch::RecordBatch;
use rayon::prelude::*;
use tokio::sync::mpsc;

use crate::fhir::ndjson::{LineContent, NdjsonLines};
use crate::fhir::{DecodeOptions, Decoded, Location, Rejected, decode_each};
use crate::issue::{Issue, Severity};
use crate::validate::Check;

use super::prepared::{Prepared, prepare_one};
use super::report::{ProduceStats, QUARANTINE_EXAMPLES, QuarantineNote};
use super::silver::{BronzeResource, ResourceToLand, SilverViews, from_records};
use super::source::{Fetched, Format, SourceFile};
use super::tables::{FileLogEntry, Provenance, bronze_batch, quarantine_batch};

/// What the writer commits in one go.
pub struct PreparedChunk {
    /// One batch per resource type.
    pub bronze: Vec<(String, RecordBatch)>,
    /// The same resources per type, with their silver rows, for the silver merge.
    pub silver: Vec<(String, Vec<BronzeResource>)>,
    pub quarantine: Option<RecordBatch>,
    /// Files whose last records are in this chunk (or before it).
    pub files: Vec<FileLogEntry>,
}

pub struct ProduceContext {
    pub batch_id: String,
    pub ingested_at: i64,
    pub decode: DecodeOptions,
    pub chunk_records: usize,
    pub chunk_bytes: usize,
    pub checks: Vec<Arc<dyn Check>>,
    /// The silver views each resource is flattened through as it is decoded (none: nothing is
    /// flattened, as for `validate`).
    pub views: SilverViews,
    pub runtime: tokio::runtime::Handle,
    /// Called with the number of input bytes done, for a progress bar.
    pub progress: Arc<dyn Fn(u64) + Send + Sync>,
}

impl ProduceContext {
    /// The context of a run: `options` as given, stamped now, on the current tokio runtime.
    pub fn new(options: &super::IngestOptions, views: SilverViews, batch_id: &str) -> Self {
        ProduceContext {
            batch_id: batch_id.to_string(),
            ingested_at: chrono::Utc::now().timestamp_micros(),
            // The checks and the silver views read the parse the structural check makes.
            decode: DecodeOptions {
                keep_parse: true,
                ..options.decode.clone()
            },
            chunk_records: options.chunk_records,
            chunk_bytes: options.chunk_bytes,
            checks: options.checks.clone(),
            views,
            runtime: tokio::runtime::Handle::current(),
            progress: options.progress.clone(),
        }
    }
}

/// JSON files up to this size are read whole and decoded a group at a time.
const SMALL_FILE_BYTES: u64 = 8 << 20;
const GROUP_FILES: usize = 64;
const NDJSON_BLOCK_LINES: usize = 2048;

/// Decodes `files` (skipping those whose hash is in `known`), sending chunks to `tx`.
pub fn produce(
    files: Vec<SourceFile>,
    mut known: HashSet<String>,
    ctx: &ProduceContext,
    tx: mpsc::Sender<PreparedChunk>,
) -> ProduceStats {
    let mut out = ChunkBuffer::new(ctx, tx);
    let mut index = 0;
    while index < files.len() && !out.closed {
        let file = &files[index];
        if file.format() == Format::Ndjson {
            stream_ndjson(file, &mut known, ctx, &mut out);
            index += 1;
            continue;
        }
        let mut end = index;
        while end < files.len()
            && end - index < GROUP_FILES
            && files[end].size <= SMALL_FILE_BYTES
            && files[end].format() != Format::Ndjson
        {
            end += 1;
        }
        let group = &files[index..end.max(index + 1)];
        let results: Vec<_> = group.par_iter().map(|file| read_whole(file, ctx)).collect();
        for (file, result) in group.iter().zip(results) {
            match result {
                Err(error) => out.file_failed(file, error),
                Ok((fetched, _, _)) if known.contains(&fetched.sha256) => out.skipped(file),
                Ok((fetched, (format, decoded), byte_order_mark)) => {
                    if byte_order_mark {
                        out.byte_order_mark(file);
                    }
                    known.insert(fetched.sha256.clone());
                    let provenance = out.provenance(file, &fetched.sha256);
                    let mut entry = log_entry(file, &fetched.sha256, format);
                    out.push_all(decoded, &provenance, &mut entry);
                    out.file_done(entry);
                }
            }
            (ctx.progress)(file.size);
        }
        index += group.len();
    }
    out.finish()
}

fn log_entry(file: &SourceFile, sha256: &str, format: &str) -> FileLogEntry {
    FileLogEntry {
        source_uri: file.uri.clone(),
        source_sha256: sha256.to_string(),
        size_bytes: file.size,
        format: format.to_string(),
        status: "ingested".into(),
        resources: 0,
        quarantined: 0,
        error: None,
    }
}

/// A file read whole: its fetch, its format and records, and whether it began with a byte order
/// mark.
type WholeFile = (Fetched, (&'static str, Vec<Prepared>), bool);

/// Reads a JSON (or unknown) file whole and decodes it.
fn read_whole(file: &SourceFile, ctx: &ProduceContext) -> std::io::Result<WholeFile> {
    let fetched = file.fetch(&ctx.runtime)?;
    let mut bytes = Vec::new();
    let (mut reader, byte_order_mark) = fetched.open()?;
    let read = reader.read_to_end(&mut bytes);
    let mut decoded = Vec::new();
    if let Err(e) = read {
        let raw = String::from_utf8_lossy(&bytes).into_owned();
        decoded.push(Prepared::alone(Decoded::Rejected(Rejected::new(
            raw,
            Location::default(),
            Issue::error(
                "read",
                "$",
                format!("the file could not be read to its end: {e}"),
            ),
        ))));
        return Ok((fetched, ("json", decoded), byte_order_mark));
    }
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let raw = String::from_utf8_lossy(e.as_bytes()).into_owned();
            decoded.push(Prepared::alone(Decoded::Rejected(Rejected::new(
                raw,
                Location::default(),
                Issue::error(
                    "utf8",
                    "$",
                    format!("not UTF-8 (FHIR JSON must be): {}", e.utf8_error()),
                ),
            ))));
            return Ok((fetched, ("json", decoded), byte_order_mark));
        }
    };
    if file.format() == Format::Unknown && looks_like_ndjson(&text) {
        let lines = NdjsonLines::new(text.as_bytes(), usize::MAX);
        let block: Vec<_> = lines.filter_map(Result::ok).collect();
        decoded = block
            .par_iter()
            .flat_map_iter(|line| decode_line(line, ctx))
            .collect();
        return Ok((fetched, ("ndjson", decoded), byte_order_mark));
    }
    decode_checked(&text, Location::default(), ctx, &mut decoded);
    Ok((fetched, ("json", decoded), byte_order_mark))
}

/// A file of unknown name holds NDJSON if its first line is a JSON object on its own and more follows.
fn looks_like_ndjson(text: &str) -> bool {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let first = lines.next().unwrap_or_default();
    first.trim_start().starts_with('{')
        && serde_json::from_str::<serde::de::IgnoredAny>(first).is_ok()
        && lines.next().is_some()
}

fn stream_ndjson(
    file: &SourceFile,
    known: &mut HashSet<String>,
    ctx: &ProduceContext,
    out: &mut ChunkBuffer,
) {
    let fetched = match file.fetch(&ctx.runtime) {
        Ok(fetched) => fetched,
        Err(error) => return out.file_failed(file, error),
    };
    if !known.insert(fetched.sha256.clone()) {
        (ctx.progress)(file.size);
        return out.skipped(file);
    }
    let reader: Box<dyn BufRead + Send> = match fetched.open() {
        Ok((reader, byte_order_mark)) => {
            if byte_order_mark {
                out.byte_order_mark(file);
            }
            reader
        }
        Err(error) => return out.file_failed(file, error),
    };
    let provenance = out.provenance(file, &fetched.sha256);
    let mut entry = log_entry(file, &fetched.sha256, "ndjson");
    // Lines are kept whole up to the resource limit; longer ones are cut and rejected as `size`.
    let lines = NdjsonLines::new(reader, ctx.decode.max_resource_bytes);
    // A reader thread splits lines while the pool decodes the previous block: reading is the
    // serial part of NDJSON ingest, and overlapping it keeps both cores busy.
    let (blocks_tx, blocks_rx) = std::sync::mpsc::sync_channel(2);
    std::thread::scope(|scope| {
        scope.spawn(move || read_blocks(lines, blocks_tx));
        let mut last_line = 0;
        for (block, failure) in blocks_rx {
            if let Some(last) = block.last() {
                last_line = last.number;
            }
            let decoded: Vec<Prepared> = block
                .par_iter()
                .flat_map_iter(|line| decode_line(line, ctx))
                .collect();
            out.push_all(decoded, &provenance, &mut entry);
            if let Some(error) = failure {
                out.push_all(
                    vec![read_failure(last_line + 1, &error)],
                    &provenance,
                    &mut entry,
                );
            }
            if out.closed {
                // Dropping the receiver stops the reader thread.
                return;
            }
        }
    });
    if out.closed {
        return;
    }
    (ctx.progress)(file.size);
    out.file_done(entry);
}

/// Sends blocks of lines until the end or the first read error (sent with the lines before it).
fn read_blocks<R: BufRead>(
    mut lines: NdjsonLines<R>,
    tx: std::sync::mpsc::SyncSender<(Vec<crate::fhir::ndjson::Line>, Option<std::io::Error>)>,
) {
    loop {
        let mut block = Vec::with_capacity(NDJSON_BLOCK_LINES);
        let mut failure = None;
        for line in lines.by_ref().take(NDJSON_BLOCK_LINES) {
            match line {
                Ok(line) => block.push(line),
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        let done = failure.is_some() || block.len() < NDJSON_BLOCK_LINES;
        if (block.is_empty() && failure.is_none()) || tx.send((block, failure)).is_err() || done {
            return;
        }
    }
}

/// The file stopped being readable part-way (a corrupt gzip stream, a failing disk): what came
/// before has landed, the rest is recorded as one quarantined record at the line where reading stopped.
fn read_failure(line: u64, error: &std::io::Error) -> Prepared {
    Prepared::alone(Decoded::Rejected(Rejected::new(
        "",
        Location::line(line),
        Issue::error(
            "read",
            "$",
            format!("reading stopped at line {line}: {error}"),
        ),
    )))
}

fn decode_line(line: &crate::fhir::ndjson::Line, ctx: &ProduceContext) -> Vec<Prepared> {
    let location = Location::line(line.number);
    let mut out = Vec::with_capacity(1);
    match &line.content {
        LineContent::Text(text) => decode_checked(text, location, ctx, &mut out),
        LineContent::InvalidUtf8(bytes) => out.push(Prepared::alone(Decoded::Rejected(Rejected::new(
            String::from_utf8_lossy(bytes),
            location,
            Issue::error("utf8", "$", "line is not UTF-8 (FHIR JSON must be)"),
        )))),
        LineContent::TooLong { prefix, len } => out.push(Prepared::alone(Decoded::Rejected(Rejected::new(
            String::from_utf8_lossy(prefix),
            location,
            Issue::error(
                "size",
                "$",
                format!(
                    "line of {len} bytes is larger than the limit of {} bytes (ingest.max_resource_bytes)",
                    ctx.decode.max_resource_bytes
                ),
            ),
        )))),
    }
    out
}

/// Decodes, runs the configured checks (a resource with an error-level finding is rejected) and
/// flattens what passed through the silver views: one parse serves all three, and is freed as
/// soon as the resource is flattened, before the next entry of a Bundle is decoded.
fn decode_checked(text: &str, location: Location, ctx: &ProduceContext, out: &mut Vec<Prepared>) {
    decode_each(text, location, &ctx.decode, &mut |mut record| {
        apply_checks(&ctx.checks, std::slice::from_mut(&mut record), true);
        out.push(prepare_one(record, &ctx.views));
    });
}

/// Runs `checks` on every decoded resource: error-level findings reject it (with all its findings),
/// lesser ones stay with it as warnings. Shared by file ingest and the stream. The checks read the
/// parse the structural check kept, if it did. With `keep_json`, a kept resource holds that parse,
/// for the silver views; without, it is dropped.
pub(crate) fn apply_checks(checks: &[Arc<dyn Check>], decoded: &mut [Decoded], keep_json: bool) {
    for decoded in decoded {
        if let Decoded::Resource(resource) = decoded {
            // A delete event is no resource to check.
            if resource.deleted {
                continue;
            }
            if checks.is_empty() {
                if !keep_json {
                    resource.json = None;
                }
                continue;
            }
            let parsed = match resource.json.take() {
                Some(json) => Ok(json),
                None => serde_json::from_str(&resource.raw).map(Arc::new),
            };
            let json = match parsed {
                Ok(json) => json,
                Err(e) => {
                    // The structural check parsed it already: this cannot happen, but say so if it does.
                    let issue = Issue::error("json", "$", format!("not JSON: {e}"));
                    *decoded = Decoded::Rejected(Rejected::new(
                        std::mem::take(&mut resource.raw),
                        resource.location.clone(),
                        issue,
                    ));
                    continue;
                }
            };
            let issues: Vec<Issue> = checks
                .iter()
                .flat_map(|c| c.check(&resource.resource_type, &json))
                .collect();
            if !issues
                .iter()
                .any(|i| matches!(i.severity, Severity::Error | Severity::Fatal))
            {
                resource.warnings = issues;
                resource.json = keep_json.then_some(json);
            } else {
                let r = std::mem::take(resource);
                *decoded = Decoded::Rejected(Rejected {
                    resource_type: Some(r.resource_type),
                    id: r.id,
                    raw: r.raw,
                    location: r.location,
                    issues,
                });
            }
        }
    }
}

/// Records waiting for the next commit.
struct ChunkBuffer<'a> {
    ctx: &'a ProduceContext,
    /// The channel's slot for the chunk being filled (see [`ChunkBuffer::reserve`]).
    slot: Option<mpsc::OwnedPermit<PreparedChunk>>,
    resources: Vec<ResourceToLand>,
    rejected: Vec<(Rejected, Arc<Provenance>)>,
    files: Vec<FileLogEntry>,
    bytes: usize,
    stats: ProduceStats,
    /// The writer has gone away (it failed): stop decoding.
    closed: bool,
}

impl<'a> ChunkBuffer<'a> {
    fn new(ctx: &'a ProduceContext, tx: mpsc::Sender<PreparedChunk>) -> Self {
        let mut buffer = ChunkBuffer {
            ctx,
            slot: None,
            resources: Vec::new(),
            rejected: Vec::new(),
            files: Vec::new(),
            bytes: 0,
            stats: ProduceStats::default(),
            closed: false,
        };
        buffer.reserve(tx);
        buffer
    }

    /// Waits until the writer has taken the chunk sent last, then holds the channel's one slot for
    /// the next. Without this, a chunk decoded while the writer is behind would wait in the
    /// channel, and the next one would be decoded meanwhile: three chunks in memory rather than
    /// two (the one being written and the one being filled), for no gain, since the writer is the
    /// slower side.
    fn reserve(&mut self, tx: mpsc::Sender<PreparedChunk>) {
        match self.ctx.runtime.block_on(tx.reserve_owned()) {
            Ok(slot) => self.slot = Some(slot),
            Err(_) => self.closed = true,
        }
    }

    fn provenance(&self, file: &SourceFile, sha256: &str) -> Arc<Provenance> {
        Arc::new(Provenance {
            source_uri: file.uri.clone(),
            source_sha256: sha256.to_string(),
            batch_id: self.ctx.batch_id.clone(),
            ingested_at: self.ctx.ingested_at,
        })
    }

    fn push_all(
        &mut self,
        decoded: Vec<Prepared>,
        provenance: &Arc<Provenance>,
        entry: &mut FileLogEntry,
    ) {
        for Prepared { record, flattened } in decoded {
            match record {
                Decoded::Resource(r) => {
                    entry.resources += 1;
                    self.bytes += r.raw.len();
                    if r.deleted {
                        self.stats.delete_events += 1;
                    } else {
                        *self
                            .stats
                            .resources_by_type
                            .entry(r.resource_type.clone())
                            .or_default() += 1;
                    }
                    self.resources.push((r, provenance.clone(), flattened));
                }
                Decoded::Rejected(r) => {
                    entry.quarantined += 1;
                    self.bytes += r.raw.len().min(super::tables::QUARANTINE_RAW_LIMIT);
                    let rules: std::collections::BTreeSet<_> =
                        r.issues.iter().map(|i| i.rule.clone()).collect();
                    for rule in rules {
                        *self.stats.quarantined_by_rule.entry(rule).or_default() += 1;
                    }
                    self.stats.quarantined += 1;
                    if self.stats.quarantine_examples.len() < QUARANTINE_EXAMPLES
                        && let Some(first) = r.issues.first()
                    {
                        self.stats.quarantine_examples.push(QuarantineNote {
                            source_uri: provenance.source_uri.clone(),
                            place: r.location.to_string(),
                            rule: first.rule.clone(),
                            location: first.location.clone(),
                            message: first.message.clone(),
                        });
                    }
                    self.rejected.push((r, provenance.clone()));
                }
            }
            if self.resources.len() + self.rejected.len() >= self.ctx.chunk_records
                || self.bytes >= self.ctx.chunk_bytes
            {
                self.flush();
            }
        }
    }

    fn file_done(&mut self, entry: FileLogEntry) {
        self.stats.files_read += 1;
        self.stats.bytes_read += entry.size_bytes;
        tracing::debug!(
            file = entry.source_uri.as_str(),
            resources = entry.resources,
            quarantined = entry.quarantined,
            "file decoded"
        );
        self.files.push(entry);
    }

    /// The file began with a UTF-8 byte order mark, which was passed over.
    fn byte_order_mark(&mut self, file: &SourceFile) {
        tracing::warn!(
            file = file.uri.as_str(),
            "a UTF-8 byte order mark at the start of the file was ignored"
        );
        self.stats.files_with_byte_order_mark.push(file.uri.clone());
    }

    fn skipped(&mut self, file: &SourceFile) {
        tracing::info!(
            file = file.uri.as_str(),
            "skipped: this file (same SHA-256) is already in the lake"
        );
        self.stats.files_skipped.push(file.uri.clone());
    }

    /// The file could not be opened or hashed: recorded as `failed`, tried again next run.
    fn file_failed(&mut self, file: &SourceFile, error: std::io::Error) {
        tracing::warn!(file = file.uri.as_str(), %error, "file could not be read");
        self.stats
            .files_failed
            .push((file.uri.clone(), error.to_string()));
        self.files.push(FileLogEntry {
            status: "failed".into(),
            error: Some(error.to_string()),
            ..log_entry(file, "", "unknown")
        });
    }

    fn flush(&mut self) {
        if self.closed
            || (self.resources.is_empty() && self.rejected.is_empty() && self.files.is_empty())
        {
            return;
        }
        let mut by_type: BTreeMap<String, Vec<ResourceToLand>> = BTreeMap::new();
        for resource in self.resources.drain(..) {
            by_type
                .entry(resource.0.resource_type.clone())
                .or_default()
                .push(resource);
        }
        let mut bronze = Vec::new();
        let mut silver = Vec::new();
        for (resource_type, resources) in by_type {
            let (records, flattened): (Vec<_>, Vec<_>) = resources
                .into_iter()
                .map(|(record, provenance, flattened)| ((record, provenance), flattened))
                .unzip();
            bronze.push((resource_type.clone(), bronze_batch(&records)));
            let landing = records
                .into_iter()
                .zip(flattened)
                .map(|((record, provenance), flattened)| (record, provenance, flattened))
                .collect();
            silver.push((resource_type, from_records(landing)));
        }
        let quarantine =
            (!self.rejected.is_empty()).then(|| quarantine_batch(&self.rejected, "ingest fhir"));
        self.rejected.clear();
        self.bytes = 0;
        let chunk = PreparedChunk {
            bronze,
            silver,
            quarantine,
            files: std::mem::take(&mut self.files),
        };
        match self.slot.take() {
            Some(slot) => self.reserve(slot.send(chunk)),
            None => self.closed = true,
        }
    }

    fn finish(mut self) -> ProduceStats {
        self.flush();
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Bundle's resources leave the decoder checked and flattened, each with its silver rows and
    /// no parse left behind: the landing parses nothing again, and no parse outlives its resource.
    #[tokio::test]
    async fn a_bundle_is_checked_and_flattened_where_it_is_decoded() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let views = SilverViews::load(&root.join("profiles/views")).unwrap();
        let options = super::super::IngestOptions::from_config(&Default::default());
        let ctx = ProduceContext::new(&options, views.clone(), "test-batch");
        let examples = root.join("../shared/fhir/r4/examples");
        let entry = |name: &str| {
            let resource = std::fs::read_to_string(examples.join(name)).unwrap();
            format!(r#"{{"resource":{resource}}}"#)
        };
        let bundle = format!(
            r#"{{"resourceType":"Bundle","type":"collection","entry":[{},{}]}}"#,
            entry("Patient-example.json"),
            entry("Observation-blood-pressure.json")
        );
        let mut out = Vec::new();
        decode_checked(&bundle, Location::default(), &ctx, &mut out);

        let landed: Vec<(&str, Vec<(&str, usize)>)> = out
            .iter()
            .map(|prepared| {
                let Decoded::Resource(resource) = &prepared.record else {
                    panic!("rejected: {:?}", prepared.record)
                };
                assert!(resource.json.is_none(), "the parse was freed");
                let flattened = prepared.landing_rows().expect("flattened where decoded");
                let rows = flattened
                    .rows(&views)
                    .filter(|(_, rows)| !rows.is_empty())
                    .map(|(view, rows)| (view.name().unwrap_or_default(), rows.len()))
                    .collect();
                (resource.resource_type.as_str(), rows)
            })
            .collect();
        assert_eq!(
            landed,
            [
                ("Patient", vec![("patient", 1)]),
                ("Observation", vec![("blood_pressure", 1)])
            ]
        );
    }
}
