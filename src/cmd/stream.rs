//! `vitalake stream`: runs until the source ends, or until Ctrl-C / SIGTERM, then prints a report.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use vitalake::config::Config;
use vitalake::ingest::IngestError;
use vitalake::live::{RulesOptions, StreamOptions, run_stream};
use vitalake::stream::{BatchBounds, SourceSpec};

use super::{cancel_on_signal, duration_millis, ingest_options, open_lake, print_report};

#[derive(Debug, Args)]
pub struct StreamArgs {
    /// `file:PATH` (NDJSON; a line's number is its sequence number), `stdin`, or `eventhubs:HUB`
    /// (connection from EVENTHUBS_CONNECTION_STRING).
    #[arg(long, value_name = "SOURCE")]
    pub source: String,
    /// The Event Hubs consumer group; processes on one group share the partitions.
    #[arg(long, value_name = "GROUP", default_value = "$Default")]
    pub consumer_group: String,
    /// With an Event Hubs source, where a partition that has no checkpoint yet starts: `earliest`
    /// (every event the hub still holds; the default), `latest` (only events sent from now on), or
    /// an enqueued time (RFC 3339, e.g. 2026-11-30T08:00:00Z). A checkpoint always wins.
    #[arg(long, value_name = "WHERE")]
    pub start: Option<vitalake::stream::event_hubs::StartFrom>,
    /// With a file source: wait for more lines at the end of the file, like `tail -f`.
    #[arg(long)]
    pub follow: bool,
    /// With a file or stdin source, the hub the events belong to: they land in
    /// bronze/eventhubs/<HUB>. An Event Hubs source lands in its own hub's table.
    #[arg(long, value_name = "HUB", default_value = "observations")]
    pub hub: String,
    /// A micro-batch closes after this many events ...
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub batch_events: usize,
    /// ... or this many milliseconds after its first event.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub batch_ms: u64,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Evaluate the anomaly rules in this folder on every reading as it arrives (reloaded when the
    /// folder changes or on SIGHUP).
    #[arg(long, value_name = "DIR")]
    pub rules: Option<PathBuf>,
    /// Where alerts go, besides silver/alerts: `stdout`, `file:PATH` (CloudEvents, one per line),
    /// or `eventhubs:HUB`.
    #[arg(
        long,
        value_name = "SINK",
        default_value = "stdout",
        requires = "rules"
    )]
    pub alerts: String,
    /// How late (in effective time) a reading may arrive and still be evaluated in order; later
    /// ones are evaluated as backfill: recorded, never sent.
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    pub lateness: String,
    /// Compact a table the stream writes (bronze events, quarantine, the silver views of its
    /// resources, alerts) in the background once it holds more files than this; 0 turns it off.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub compact_files: usize,
    /// Print the final report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(config: &Config, args: StreamArgs) -> anyhow::Result<ExitCode> {
    vitalake::allocator::keep_freed_memory();
    let mut source = SourceSpec::parse(&args.source, args.follow)
        .map_err(|e| vitalake::Error::from(IngestError::from(e)))?;
    if let Some(start) = args.start {
        let Some(starting) = source.starting(start) else {
            eprintln!("error: --start applies to an Event Hubs source (--source eventhubs:HUB)");
            return Ok(ExitCode::from(2));
        };
        source = starting;
    }
    let lake = open_lake(config)?;
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(cancel_on_signal(stop.clone()));
    let ingest = ingest_options(config)?;
    let hub = match &source {
        SourceSpec::EventHubs { hub, .. } => hub.clone(),
        _ => args.hub,
    };
    let options = StreamOptions {
        hub,
        consumer_group: args.consumer_group,
        bounds: BatchBounds {
            max_events: args.batch_events.max(1),
            max_wait: Duration::from_millis(args.batch_ms),
        },
        decode: ingest.decode,
        checks: ingest.checks,
        views: ingest.views,
        metrics: args.metrics,
        compact_files: args.compact_files,
        stop,
        rules: match args.rules {
            Some(dir) => Some(RulesOptions {
                dir,
                sink: args.alerts,
                lateness: duration_millis("--lateness", &args.lateness)?,
            }),
            None => None,
        },
    };
    let report = run_stream(&lake, source, options)
        .await
        .map_err(vitalake::Error::from)?;
    print_report(&report, args.json, true)
}
