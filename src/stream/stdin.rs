//! The stdin source: NDJSON lines on standard input, in one partition `stdin`.
//!
//! Standard input cannot be read again, so its events are numbered on from the last sequence number
//! the lake committed for it: every line is new, and a batch committed to bronze but not yet to
//! silver before a crash is still found and finished by the next run.

use super::{Partition, StreamId};

pub const PARTITION: &str = "stdin";

pub fn stream_id(hub: &str) -> StreamId {
    StreamId {
        namespace: "stdin".into(),
        hub: hub.into(),
        consumer_group: "$Default".into(),
    }
}

/// Standard input as one partition, numbering lines after `committed`.
pub fn open(committed: i64) -> Partition {
    super::file::lines_partition(
        PARTITION.into(),
        "standard input".into(),
        std::io::stdin(),
        committed,
        false,
    )
}
