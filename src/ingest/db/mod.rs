//! Hospital database extracts: every table of a MySQL/MariaDB or PostgreSQL database into the lake.
//!
//! - [`catalog`]: tables, columns, primary keys and incremental cursors, as both sources describe them.
//! - [`columns`]: source types to Arrow kinds Delta can hold without loss, and their builders.
//! - [`postgres`], [`mysql`]: discovery and extraction, one file per engine.
//! - [`land`]: one table into `bronze/<engine>/<db>/<table>` and `silver/<db>/<table>`, exactly once;
//!   with [`silver`] (the merge), [`drift`] (schema changes) and [`checksum`] (row keys, reconciliation).
//! - [`expectations`]: business rules over silver, declared in configuration, counted and flagged.
//! - [`report`]: the run report.
//!
//! [`ingest_db`] connects to each source in turn; a source that cannot be reached, or a table that
//! cannot be read, is reported and the others still run.

pub mod catalog;
pub mod checksum;
pub mod columns;
pub mod drift;
pub mod expectations;
pub mod land;
pub mod mysql;
pub mod postgres;
pub mod report;
pub mod silver;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use deltalake::arrow::array::ArrayRef;
use deltalake::arrow::datatypes::{Field, Schema, SchemaRef};
use deltalake::arrow::record_batch::RecordBatch;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::lake::{Lake, LakeError, Lease};

pub use crate::config::SourceConfig;
use catalog::Table;
pub use expectations::Expectation;
pub use report::{DbReport, SourceReport, TableReport};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database URL {url}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot connect to {url}: {message}")]
    Connect { url: String, message: String },
    #[error("{url}: {message}")]
    Source { url: String, message: String },
    #[error("table {table}: {message}")]
    Table { table: String, message: String },
    #[error(transparent)]
    Lake(Box<LakeError>),
    #[error("expectations file {path}: {message}")]
    Expectations { path: String, message: String },
    #[error(transparent)]
    Lease(#[from] crate::lake::LeaseError),
}

impl From<LakeError> for DbError {
    fn from(err: LakeError) -> Self {
        DbError::Lake(Box::new(err))
    }
}

impl DbError {
    /// A connection failure, with the password (if the driver echoed it) cut out.
    fn connect(url: &SourceUrl, err: impl std::fmt::Display) -> DbError {
        let mut message = err.to_string();
        if let Some(password) = url.password.as_deref().filter(|p| !p.is_empty()) {
            message = message.replace(password, "***");
        }
        DbError::Connect {
            url: url.redacted(),
            message,
        }
    }
}

/// Which server a URL points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    MySql,
    Postgres,
}

impl Engine {
    /// The folder under `bronze/`.
    pub fn label(self) -> &'static str {
        match self {
            Engine::MySql => "mysql",
            Engine::Postgres => "postgres",
        }
    }
}

/// A parsed source URL; the password never leaves it except to the driver.
#[derive(Clone)]
pub struct SourceUrl {
    pub engine: Engine,
    pub user: String,
    pub password: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    pub database: String,
}

impl std::fmt::Debug for SourceUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl SourceUrl {
    /// Parses `url`; the password comes from the URL, else `password_env`, else the engine's own
    /// variable (`MYSQL_PWD`, `PGPASSWORD`).
    pub fn parse(url: &str, password_env: Option<&str>) -> Result<SourceUrl, DbError> {
        let bad = |reason: &str| DbError::BadUrl {
            url: redact(url),
            reason: reason.to_string(),
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        let engine = match parsed.scheme() {
            "mysql" | "mariadb" => Engine::MySql,
            "postgres" | "postgresql" => Engine::Postgres,
            _ => {
                return Err(bad(
                    "the scheme must be mysql://, mariadb://, postgres:// or postgresql://",
                ));
            }
        };
        let decode = |s: &str| {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let database = parsed.path().trim_start_matches('/').to_string();
        if database.is_empty() {
            return Err(bad("name the database in the path, e.g. /ikhospital"));
        }
        let standard = match engine {
            Engine::MySql => "MYSQL_PWD",
            Engine::Postgres => "PGPASSWORD",
        };
        let password = parsed.password().map(decode).or_else(|| {
            password_env
                .and_then(|name| std::env::var(name).ok())
                .or_else(|| std::env::var(standard).ok())
        });
        let user = match parsed.username() {
            "" => match engine {
                Engine::MySql => "root".to_string(),
                Engine::Postgres => "postgres".to_string(),
            },
            user => decode(user),
        };
        Ok(SourceUrl {
            engine,
            user,
            password,
            host: parsed.host_str().unwrap_or("127.0.0.1").to_string(),
            port: parsed.port(),
            database,
        })
    }

    /// The URL without its password, for logs, errors and reports.
    pub fn redacted(&self) -> String {
        let scheme = self.engine.label();
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        format!(
            "{scheme}://{}@{}{port}/{}",
            self.user, self.host, self.database
        )
    }
}

/// `url` with any password replaced by `***` (for a URL too broken to parse).
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => match (url.find("://"), url.rfind('@')) {
            (Some(start), Some(at)) if at > start => {
                format!("{}://***{}", &url[..start], &url[at..])
            }
            _ => url.to_string(),
        },
    }
}

/// A progress callback: (table, rows so far).
pub type Progress = Arc<dyn Fn(&str, u64) + Send + Sync>;

/// Options for one `ingest db` run.
#[derive(Clone)]
pub struct DbOptions {
    pub sources: Vec<SourceConfig>,
    /// Re-extract every table whole (and detect deleted rows), whatever the cursors say.
    pub full: bool,
    pub expectations: Vec<Expectation>,
    /// Rows per Arrow batch (and per progress tick).
    pub batch_rows: usize,
    /// Called with (table, rows so far) as rows arrive.
    pub progress: Progress,
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            sources: Vec::new(),
            full: false,
            expectations: Vec::new(),
            batch_rows: 65_536,
            progress: Arc::new(|_, _| {}),
        }
    }
}

/// What one extraction read: rows counted at the source and rows streamed, in one snapshot.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extracted {
    pub rows_at_source: u64,
    pub rows_read: u64,
}

/// The Arrow schema of a table's supported columns, every one nullable (a later NOT NULL change at
/// the source must not break the Delta table).
pub fn schema_of(table: &Table) -> SchemaRef {
    Arc::new(Schema::new(
        table
            .columns
            .iter()
            .filter_map(|c| {
                let kind = c.kind.as_ref().ok()?;
                Some(Field::new(&c.name, kind.data_type(), true))
            })
            .collect::<Vec<_>>(),
    ))
}

/// One table's read as both engines do it: the columns read, their kinds, the SELECT list, and
/// the channel batches go to.
pub struct TableRead<'a> {
    pub table: &'a Table,
    pub columns: Vec<&'a catalog::Column>,
    pub kinds: Vec<columns::Kind>,
    /// The columns' SELECT expressions, comma-separated.
    pub select: String,
    schema: SchemaRef,
    out: mpsc::Sender<RecordBatch>,
}

impl<'a> TableRead<'a> {
    fn new(table: &'a Table, out: mpsc::Sender<RecordBatch>) -> TableRead<'a> {
        let columns: Vec<_> = table.columns.iter().filter(|c| c.is_supported()).collect();
        TableRead {
            kinds: columns
                .iter()
                .map(|c| c.kind.clone().expect("supported"))
                .collect(),
            select: columns
                .iter()
                .map(|c| c.select.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            columns,
            schema: schema_of(table),
            table,
            out,
        }
    }

    /// The error for a value of column `index` in row `row` (counted from 1) that does not decode.
    pub fn bad_value(&self, index: usize, row: u64, e: columns::BadValue) -> DbError {
        let column = self.columns[index];
        DbError::Table {
            table: self.table.name.clone(),
            message: format!(
                "column {}.{} ({}), row {row}: {}",
                self.table.name, column.name, column.source_type, e.0
            ),
        }
    }

    /// Sends one batch of finished columns to the lake writer.
    pub async fn send(&self, arrays: Vec<ArrayRef>) -> Result<(), DbError> {
        let batch =
            RecordBatch::try_new(self.schema.clone(), arrays).expect("builders follow the schema");
        self.out.send(batch).await.map_err(|_| DbError::Table {
            table: self.table.name.clone(),
            message: "the lake writer stopped".into(),
        })
    }
}

/// An open connection to one source.
pub enum Connection {
    MySql(mysql::MySql),
    Postgres(postgres::Postgres),
}

impl Connection {
    pub async fn open(url: &SourceUrl, config: &SourceConfig) -> Result<Connection, DbError> {
        Ok(match url.engine {
            Engine::MySql => Connection::MySql(mysql::MySql::connect(url).await?),
            Engine::Postgres => Connection::Postgres(
                postgres::Postgres::connect(url, config.schema.as_deref().unwrap_or("public"))
                    .await?,
            ),
        })
    }

    pub async fn discover(&mut self, views: bool) -> Result<Vec<Table>, DbError> {
        match self {
            Connection::MySql(c) => c.discover(views).await,
            Connection::Postgres(c) => c.discover(views).await,
        }
    }

    pub async fn extract(
        &mut self,
        table: &Table,
        filter: Option<&str>,
        batch_rows: usize,
        out: mpsc::Sender<RecordBatch>,
    ) -> Result<Extracted, DbError> {
        let read = TableRead::new(table, out);
        match self {
            Connection::MySql(c) => c.extract(&read, filter, batch_rows).await,
            Connection::Postgres(c) => c.extract(&read, filter, batch_rows).await,
        }
    }

    /// `column` quoted for this engine.
    pub fn quote(&self, column: &str) -> String {
        match self {
            Connection::MySql(_) => mysql::quote(column),
            Connection::Postgres(_) => postgres::quote(column),
        }
    }
}

/// Extracts every selected table of every source, then checks the expectations.
pub async fn ingest_db(lake: &Lake, options: &DbOptions) -> Result<DbReport, DbError> {
    let started = Instant::now();
    let lease = Lease::acquire(lake, DB_LEASE, "ingest db").await?;
    let extracted = extract_all(lake, options, &lease).await;
    lease.release().await;
    extracted.map(|mut report| {
        report.seconds = started.elapsed().as_secs_f64();
        report
    })
}

/// The lease of `ingest db` runs: two at once would land the same rows twice.
pub const DB_LEASE: &str = ".vitalake-ingest-db.lock";

async fn extract_all(lake: &Lake, options: &DbOptions, lease: &Lease) -> Result<DbReport, DbError> {
    let batch_id = uuid::Uuid::now_v7().to_string();
    let mut report = DbReport {
        batch_id: batch_id.clone(),
        ..DbReport::default()
    };
    // silver path -> (source URL, table name) of every table landed in this run.
    let mut landed: BTreeMap<String, (String, String)> = BTreeMap::new();
    for config in &options.sources {
        lease.ensure_held()?;
        let source = extract_source(lake, config, options, &batch_id, &mut landed, lease).await;
        report.sources.push(source);
    }
    lease.ensure_held()?;
    // Expectations name tables without their database: the first database's table wins.
    let mut silver_tables = BTreeMap::new();
    for (silver, (_, name)) in landed {
        silver_tables.entry(name).or_insert(silver);
    }
    report.expectations =
        expectations::check(lake, &silver_tables, &options.expectations, &batch_id).await?;
    Ok(report)
}

/// One source: connect, discover, land each selected table. Failures end up in the report.
async fn extract_source(
    lake: &Lake,
    config: &SourceConfig,
    options: &DbOptions,
    batch_id: &str,
    landed: &mut BTreeMap<String, (String, String)>,
    lease: &Lease,
) -> SourceReport {
    let url = match SourceUrl::parse(&config.url, config.password_env.as_deref()) {
        Ok(url) => url,
        Err(e) => return SourceReport::failed(redact(&config.url), e.to_string()),
    };
    let mut report = SourceReport::new(url.redacted(), url.engine);
    let mut connection = match Connection::open(&url, config).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(source = report.url.as_str(), error = %e, "source skipped");
            report.error = Some(e.to_string());
            return report;
        }
    };
    let tables = match connection.discover(config.views).await {
        Ok(t) => t,
        Err(e) => {
            report.error = Some(e.to_string());
            return report;
        }
    };
    tracing::info!(
        source = report.url.as_str(),
        tables = tables.len(),
        "discovered"
    );
    for table in tables
        .iter()
        .filter(|t| catalog::is_selected(&t.name, &config.include, &config.exclude))
    {
        if let Err(lost) = lease.ensure_held() {
            report
                .tables
                .push(TableReport::failed(&table.name, lost.to_string()));
            break;
        }
        let target = land::Target::new(url.engine, &url.database, &table.name);
        if let Some((first, _)) = landed.get(&target.silver) {
            report.tables.push(TableReport::failed(
                &table.name,
                format!(
                    "{} was already extracted from {first} into {} in this run; exclude the \
                     table from one of the sources",
                    table.name, target.silver
                ),
            ));
            continue;
        }
        let table_report = land::land_table(
            lake,
            &mut connection,
            table,
            &target,
            config.cursors.get(&table.name).map(String::as_str),
            options,
            batch_id,
        )
        .await;
        if table_report.error.is_none() {
            landed.insert(
                target.silver.clone(),
                (report.url.clone(), table.name.clone()),
            );
        }
        report.tables.push(table_report);
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_passwords_in_every_message() {
        let url = SourceUrl::parse("mysql://app:s3cret@db.local:3307/ikhospital", None).unwrap();
        assert_eq!(url.password.as_deref(), Some("s3cret"));
        assert_eq!(url.redacted(), "mysql://app@db.local:3307/ikhospital");
        assert!(!format!("{url:?}").contains("s3cret"));
        assert_eq!(redact("postgres://u:s3cret@h/db"), "postgres://u:***@h/db");
        let err = SourceUrl::parse("oracle://u:s3cret@h/db", None).unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
        assert!(SourceUrl::parse("postgres://u@h", None).is_err());
    }
}
