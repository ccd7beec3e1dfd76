//! `vitalake serve`: the lake over the PostgreSQL wire protocol, for Power BI, `psql` and any
//! PostgreSQL driver.
//!
//! - Queries run on DataFusion over the same catalogue as `vitalake query` ([`crate::gold::catalog`]),
//!   with PostgreSQL's `pg_catalog` so that the look-ups clients send on connect work
//!   (`datafusion-postgres`).
//! - Sign-in is SCRAM-SHA-256 (pgwire's SASL support); users and roles come from `[[serve.users]]`,
//!   passwords from the environment, and there is no default user ([`users`]).
//! - An `analyst` sees every table; a `bi_reader` sees silver and gold with PHI masked ([`masks`]).
//! - Nothing writes ([`read_only`]); TLS with a configured certificate.
//! - The catalogue is re-read every `refresh_seconds`, so new commits and tables show up without a
//!   restart.

pub mod connection;
pub mod frames;
pub mod masks;
pub mod read_only;
pub mod users;

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::setup_pg_catalog;
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::pgwire::tokio::TlsAcceptor;
use datafusion_postgres::{DfSessionService, QueryHook};
use deltalake::datafusion::error::DataFusionError;
use deltalake::datafusion::prelude::SessionContext;
use tokio::net::TcpListener;

pub use crate::config::ServeConfig;
use crate::lake::{Lake, LakeError};
use connection::{Connection, Sessions, Shared};
use masks::MaskConfig;
use users::Users;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "no users configured: add [[serve.users]] entries (name, role = \"analyst\" or \"bi_reader\", password_env) to vitalake.toml; there is no default user"
    )]
    NoUsers,
    #[error("user {user:?} has no password: set the environment variable {var}")]
    MissingPassword { user: String, var: String },
    #[error("user {0:?} is configured twice")]
    DuplicateUser(String),
    #[error("mask on {table}.{column}: the table has no column {column:?}")]
    UnknownMaskColumn { table: String, column: String },
    #[error("TLS: set both tls_cert and tls_key, or neither")]
    TlsHalfConfigured,
    #[error("TLS, {file}: {source}")]
    TlsFile {
        file: String,
        source: rustls::pki_types::pem::Error,
    },
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error(transparent)]
    Lake(Box<LakeError>),
    #[error("catalogue: {0}")]
    Sql(Box<DataFusionError>),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

impl From<LakeError> for ServeError {
    fn from(error: LakeError) -> Self {
        ServeError::Lake(Box::new(error))
    }
}

impl From<DataFusionError> for ServeError {
    fn from(error: DataFusionError) -> Self {
        ServeError::Sql(Box::new(error))
    }
}

impl From<Box<DataFusionError>> for ServeError {
    fn from(error: Box<DataFusionError>) -> Self {
        ServeError::Sql(error)
    }
}

/// A server ready to accept: users read, TLS loaded, the catalogue built.
pub struct Server {
    lake: Lake,
    config: ServeConfig,
    shared: Arc<Shared>,
    tls: Option<TlsAcceptor>,
}

impl Server {
    /// Reads the users' passwords with `lookup` (the process environment, in production).
    pub async fn new(
        lake: Lake,
        config: ServeConfig,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Server, ServeError> {
        let users = Arc::new(Users::from_config(&config.users, lookup)?);
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
            (None, None) => None,
            _ => {
                return Err(ServeError::TlsHalfConfigured);
            }
        };
        let sessions = sessions(&lake, &config.masks).await?;
        let shared = Arc::new(Shared {
            users,
            sessions: RwLock::new(Arc::new(sessions)),
        });
        Ok(Server {
            lake,
            config,
            shared,
            tls,
        })
    }

    /// Serves clients on `listener` until `shutdown` completes; connections still open then are
    /// dropped (every statement only reads, so nothing is left half done).
    pub async fn run(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let refresher = tokio::spawn(refresh_catalogue(
            self.lake.clone(),
            self.config.masks.clone(),
            Duration::from_secs(self.config.refresh_seconds.max(1)),
            self.shared.clone(),
        ));
        let mut connections = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((socket, peer)) => {
                        let handlers = Arc::new(Connection::new(self.shared.clone()));
                        let tls = self.tls.clone();
                        connections.spawn(async move {
                            if let Err(error) = frames::serve(socket, tls, handlers).await {
                                tracing::debug!(%peer, %error, "connection ended with an error");
                            }
                        });
                    }
                    Err(error) => tracing::warn!(%error, "accept failed"),
                },
                // Reap finished connections so the set does not grow.
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        refresher.abort();
        connections.shutdown().await;
    }
}

/// Binds `addr` (`127.0.0.1:5433`).
pub async fn bind(addr: &str) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Listen {
            addr: addr.to_string(),
            source,
        })
}

/// Re-reads the catalogue every `every`. A failed read keeps the sessions there are.
async fn refresh_catalogue(
    lake: Lake,
    masks: Vec<MaskConfig>,
    every: Duration,
    shared: Arc<Shared>,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        match sessions(&lake, &masks).await {
            Ok(fresh) => *shared.sessions.write().expect("not poisoned") = Arc::new(fresh),
            Err(error) => {
                tracing::warn!(%error, "catalogue refresh failed; serving the previous one")
            }
        }
    }
}

/// The sessions of both roles over the lake's current tables.
async fn sessions(lake: &Lake, masks: &[MaskConfig]) -> Result<Sessions, ServeError> {
    let analyst = crate::gold::catalog::session(lake).await?;
    let bi_reader = masks::masked_session(&analyst, masks).await?;
    Ok(Sessions {
        analyst: service(analyst)?,
        bi_reader: service(bi_reader)?,
    })
}

fn service(ctx: SessionContext) -> Result<Arc<DfSessionService>, ServeError> {
    setup_pg_catalog(&ctx, "datafusion", EmptyContextProvider)?;
    let hooks: Vec<Arc<dyn QueryHook>> = vec![
        Arc::new(read_only::ReadOnly),
        Arc::new(CursorStatementHook),
        Arc::new(SetShowHook),
        Arc::new(TransactionStatementHook),
    ];
    Ok(Arc::new(DfSessionService::new_with_hooks(
        Arc::new(ctx),
        hooks,
    )))
}

/// An empty session with the settings, object stores (a lake on Azure) and schemas of `like`, for
/// the masked catalogue.
fn session_like(like: &SessionContext) -> SessionContext {
    let ctx = SessionContext::new_with_config_rt(like.copied_config(), like.runtime_env());
    let catalog = ctx.catalog("datafusion").expect("the default catalogue");
    for schema in ["silver", "gold"] {
        catalog
            .register_schema(
                schema,
                Arc::new(deltalake::datafusion::catalog::MemorySchemaProvider::new()),
            )
            .expect("a memory schema registers");
    }
    ctx
}

fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, ServeError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| ServeError::TlsFile {
            file: cert.display().to_string(),
            source,
        })?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| ServeError::TlsFile {
        file: key.display().to_string(),
        source,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
