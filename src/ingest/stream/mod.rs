//! Stream events into bronze, quarantine and silver, in micro-batches, exactly once: the landing
//! half of `vitalake stream` (the runner, [`crate::live`], reads the sources, runs the rules and
//! hands batches here).
//!
//! - [`events`]: the bronze event table, and event bodies decoded into FHIR resources.
//! - [`land`]: one micro-batch through bronze, quarantine, silver and the checkpoint.
//!
//! The decoding and validation are the file drops' (`fhir::decode`, the profile checks), and the
//! silver merge is theirs too ([`super::silver::SilverWriter`]), so a reading lands the same way
//! whether it came in a file or on the stream.

pub mod events;
pub mod land;

use super::IngestError;
use crate::stream::StreamError;

impl From<StreamError> for IngestError {
    fn from(error: StreamError) -> Self {
        match error {
            StreamError::Read { path, source } => IngestError::Input { path, source },
            other => IngestError::Stream(other),
        }
    }
}
