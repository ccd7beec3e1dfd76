//! FHIR R4 JSON decoding: what a file or an event holds, split into resources ready for the lake.
//!
//! - [`decode`]: one JSON text (a resource, or a Bundle of any type, Bundles inside Bundles) into
//!   [`Decoded`] records, each either a resource with its identifying fields or a rejection with
//!   its [`Issue`](crate::issue::Issue)s.
//! - [`ndjson`]: a streaming line reader for Bulk-Data NDJSON that never holds the file whole.
//! - [`structure`]: the strict R4 structural check (`fhirbolt`), with `decimals` quoting the
//!   numbers its fast typed path cannot read.
//! - [`location`]: turns a parser's line/column into a FHIRPath location such as `Patient.name[0]`.
//!
//! Nothing here knows about Delta tables or files: callers pass text and a [`Location`].

mod decimals;
pub mod decode;
pub mod location;
pub mod ndjson;
pub mod structure;

pub use decode::{DecodeOptions, Decoded, Location, Rejected, ResourceRecord, decode, decode_each};
