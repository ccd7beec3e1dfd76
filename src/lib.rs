//! vitalake: FHIR drops, device streams and hospital databases into one Delta Lake.
//!
//! The crate is a map of small modules, each with one job (see `DESIGN.md` in the shared folder),
//! listed here in layers: a module uses only modules listed above it.
//!
//! - [`config`]: `vitalake.toml` plus environment overrides, and every part's settings types;
//!   secrets only from the environment.
//! - [`allocator`]: when freed memory goes back to the system (mimalloc's controls).
//! - [`issue`]: one finding about a record (severity, location, rule, message), shared by every checker.
//! - [`entra`]: Microsoft Entra ID sign-in from the environment (Event Hubs, FHIR services).
//! - [`lake`]: Delta tables: paths, open/create, append, delete, maintenance; knows nothing about FHIR.
//! - [`fhir`]: decoding FHIR JSON (single resources, Bundles of any type, NDJSON) and structural checks.
//! - [`fhirpath`]: the FHIRPath engine (parser, evaluator, function table) over a resource's JSON.
//! - [`validate`]: the seam where profile validation plugs into ingestion.
//! - [`views`]: SQL-on-FHIR v2 ViewDefinitions compiled and run into Arrow record batches.
//! - [`stream`]: event sources (Event Hubs, file, stdin), micro-batching, and the Event Hubs
//!   checkpoint store; it knows nothing of the lake's tables.
//! - [`ingest`]: file drops, database extracts and stream micro-batches into bronze, silver and
//!   quarantine, exactly once.
//! - [`rules`]: rule files, the per-patient evaluator over readings, rule tests and backtests;
//!   pure: it reads neither FHIR nor the lake.
//! - [`alerts`]: alert events (CloudEvents), their sinks, the outbox that retries a failing sink,
//!   and the `silver/alerts` and `silver/alert_deliveries` tables.
//! - [`live`]: the `vitalake stream` runner: a `stream` source landed by `ingest`, the `rules` on
//!   each reading that passed its checks, their alerts to an `alerts` sink, background compaction.
//! - [`terminology`]: code tables (CodeSystems, ConceptMaps, CSV) in the lake, for gold SQL.
//! - [`gold`]: the lake as SQL (every table in one catalogue), read-only queries, the gold tables.
//! - [`serve`]: the PostgreSQL-wire server over that catalogue: sign-in, roles and masks, read-only.
//! - [`generate`]: deterministic synthetic FHIR drops and streams for samples, tests and benchmarks.
//! - [`demo`]: the main job on the bundled samples, end to end.
//!
//! `main.rs` and `cmd/` are only the command line: each command turns its arguments into the option
//! types here and prints the report it gets back.

pub mod alerts;
pub mod allocator;
pub mod config;
pub mod demo;
pub mod entra;
pub mod fhir;
pub mod fhirpath;
pub mod generate;
pub mod gold;
pub mod ingest;
pub mod issue;
pub mod lake;
pub mod live;
pub mod rules;
pub mod serve;
pub mod stream;
pub mod terminology;
pub mod validate;
pub mod views;

/// Every error the library returns. Each variant carries the module's own error, whose message names
/// the file, table or record involved; the CLI prints the whole chain with `{:#}`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Lake(#[from] lake::LakeError),
    #[error(transparent)]
    Ingest(#[from] ingest::IngestError),
    #[error(transparent)]
    Db(#[from] ingest::db::DbError),
    #[error(transparent)]
    Generate(#[from] generate::GenerateError),
    #[error(transparent)]
    Serve(#[from] serve::ServeError),
    #[error(transparent)]
    Maintain(#[from] lake::maintain::MaintainError),
    #[error(transparent)]
    Terminology(#[from] terminology::TerminologyError),
    #[error(transparent)]
    Gold(#[from] gold::GoldError),
    #[error(transparent)]
    Views(#[from] views::ViewError),
    #[error(transparent)]
    Stream(#[from] stream::StreamError),
    #[error(transparent)]
    Rules(#[from] rules::InvalidRules),
    #[error(transparent)]
    Demo(#[from] demo::DemoError),
}

/// A query's failure (the demo's summary runs SQL over the catalogue) is a gold error.
impl From<deltalake::datafusion::error::DataFusionError> for Error {
    fn from(error: deltalake::datafusion::error::DataFusionError) -> Self {
        Error::Gold(gold::GoldError::Sql(error))
    }
}

impl Error {
    /// The exit status of a command that failed with this error: 2 for bad input (a file,
    /// setting or argument the user can fix), 1 for everything else (a service or the network
    /// failed, the lake refused a commit: trying again may work).
    pub fn exit_code(&self) -> u8 {
        use ingest::IngestError;
        let bad_input = match self {
            Error::Config(_) | Error::Rules(_) => true,
            Error::Ingest(e) => match e {
                IngestError::Input { .. } | IngestError::Remote { .. } => true,
                IngestError::Stream(e) => e.is_bad_input(),
                IngestError::FhirServer(e) => {
                    matches!(**e, ingest::fhir_server::FhirServerError::Setup(_))
                }
                _ => false,
            },
            Error::Db(e) => matches!(e, ingest::db::DbError::Expectations { .. }),
            Error::Maintain(e) => {
                matches!(e, lake::maintain::MaintainError::RetentionTooShort { .. })
            }
            Error::Terminology(e) => matches!(
                e,
                terminology::TerminologyError::Read { .. }
                    | terminology::TerminologyError::Format { .. }
            ),
            Error::Serve(e) => matches!(
                e,
                serve::ServeError::NoUsers
                    | serve::ServeError::MissingPassword { .. }
                    | serve::ServeError::DuplicateUser(_)
                    | serve::ServeError::UnknownMaskColumn { .. }
                    | serve::ServeError::TlsHalfConfigured
                    | serve::ServeError::TlsFile { .. }
                    | serve::ServeError::Tls(_)
            ),
            Error::Lake(e) => matches!(e, lake::LakeError::Root { .. }),
            Error::Stream(e) => e.is_bad_input(),
            Error::Generate(_) | Error::Gold(_) | Error::Views(_) | Error::Demo(_) => false,
        };
        if bad_input { 2 } else { 1 }
    }
}

/// The cause of an error from a client library whose error types we do not name (Azure, object
/// stores, TLS): kept whole, so that `{:#}` and `source()` reach it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

pub type Result<T, E = Error> = std::result::Result<T, E>;
