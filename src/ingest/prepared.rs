//! The unit of the FHIR pipeline: a record decoded, checked and flattened once, where it was
//! decoded. File drops, stream events and `validate` all make these ([`prepare`]); the landing
//! turns them into bronze, quarantine and silver without parsing a resource again.

use super::silver::{Flattened, SilverViews, flatten_ahead};
use crate::fhir::Decoded;

/// A decoded record, with its silver rows when it is a resource the views read.
#[derive(Debug)]
pub struct Prepared {
    pub record: Decoded,
    pub flattened: Option<Flattened>,
}

impl Prepared {
    /// The view rows of a resource that passed every check and view: what lands in silver. A
    /// resource on its way to quarantine has none (and so raises no alert).
    pub fn landing_rows(&self) -> Option<&Flattened> {
        self.flattened.as_ref().filter(|f| !f.quarantines())
    }

    /// A record with nothing for silver (a rejection, or a resource no view reads).
    pub fn alone(record: Decoded) -> Prepared {
        Prepared {
            record,
            flattened: None,
        }
    }
}

/// Flattens each checked resource through the silver views, on this thread, while its parse (kept
/// by the checks) is in cache, and frees the parse: the one parse of each resource serves the
/// structural check, the profile checks and the views.
pub fn prepare(decoded: Vec<Decoded>, views: &SilverViews) -> impl Iterator<Item = Prepared> + '_ {
    decoded
        .into_iter()
        .map(move |record| prepare_one(record, views))
}

/// [`prepare`] for one record.
pub fn prepare_one(mut record: Decoded, views: &SilverViews) -> Prepared {
    let flattened = match &mut record {
        Decoded::Resource(resource) => flatten_ahead(views, resource),
        Decoded::Rejected(_) => None,
    };
    Prepared { record, flattened }
}
