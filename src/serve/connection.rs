//! One client connection: SCRAM-SHA-256 sign-in, then every statement runs in the session of the
//! signed-in user's role, over the catalogue current at that moment.
//!
//! pgwire asks a connection's handlers for their query handlers once, before sign-in, so the role
//! cannot be fixed then: [`SignIn`] records it in the session when the SCRAM proof matches, and
//! [`Router`] reads it there for each statement. A session without it gets nothing: the user name
//! a client sends at start-up is not proof of anything.

use std::fmt::Debug;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion_postgres::pgwire::api::auth::sasl::SASLAuthStartupHandler;
use datafusion_postgres::pgwire::api::auth::sasl::scram::ScramAuth;
use datafusion_postgres::pgwire::api::auth::{DefaultServerParameterProvider, StartupHandler};
use datafusion_postgres::pgwire::api::portal::{Format, Portal};
use datafusion_postgres::pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use datafusion_postgres::pgwire::api::results::{FieldInfo, Response};
use datafusion_postgres::pgwire::api::stmt::QueryParser;
use datafusion_postgres::pgwire::api::store::PortalStore;
use datafusion_postgres::pgwire::api::{
    ClientInfo, ClientPortalStore, ErrorHandler, METADATA_USER, PgWireConnectionState,
    PgWireServerHandlers, Type,
};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::startup::{PasswordMessageFamily, SASLInitialResponse};
use datafusion_postgres::pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use datafusion_postgres::{DfSessionService, Parser};
use futures::Sink;

use super::users::{Role, SCRAM_ITERATIONS, Users};

/// The sessions of the two roles over one version of the catalogue.
pub struct Sessions {
    pub analyst: Arc<DfSessionService>,
    pub bi_reader: Arc<DfSessionService>,
}

/// What every connection shares: the users, and the sessions, replaced when the catalogue is
/// refreshed (a statement already running keeps the tables it started with).
pub struct Shared {
    pub users: Arc<Users>,
    pub sessions: RwLock<Arc<Sessions>>,
}

impl Shared {
    /// The session of the role this client signed in with.
    fn session<C: ClientInfo>(&self, client: &C) -> PgWireResult<Arc<DfSessionService>> {
        let SignedIn(role) = *client
            .session_extensions()
            .get::<SignedIn>()
            .ok_or_else(|| {
                PgWireError::UserError(Box::new(ErrorInfo::new(
                    "FATAL".into(),
                    "28000".into(),
                    "not signed in".into(),
                )))
            })?;
        let sessions = self.sessions.read().expect("not poisoned").clone();
        Ok(match role {
            Role::Analyst => sessions.analyst.clone(),
            Role::BiReader => sessions.bi_reader.clone(),
        })
    }

    fn parser<C: ClientInfo>(&self, client: &C) -> PgWireResult<Arc<Parser>> {
        Ok(self.session(client)?.query_parser())
    }
}

/// The handlers of one connection. The SASL handler keeps the state of one sign-in, so each
/// connection has its own.
pub struct Connection {
    router: Arc<Router>,
    startup: Arc<SignIn>,
}

impl Connection {
    pub fn new(shared: Arc<Shared>) -> Connection {
        let mut scram = ScramAuth::new(shared.users.clone());
        scram.set_iterations(SCRAM_ITERATIONS);
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.is_superuser = false;
        parameters.default_transaction_read_only = true;
        Connection {
            startup: Arc::new(SignIn {
                sasl: SASLAuthStartupHandler::new(Arc::new(parameters)).with_scram(scram),
                users: shared.users.clone(),
            }),
            router: Arc::new(Router { shared }),
        }
    }
}

impl PgWireServerHandlers for Connection {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.router.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.router.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }

    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        Arc::new(LogErrors)
    }
}

/// The role of a connection whose SCRAM proof matched, kept in its session.
#[derive(Debug, Clone, Copy)]
struct SignedIn(Role);

/// SCRAM-SHA-256 sign-in (pgwire's SASL handler), which on success records the user's role.
pub struct SignIn {
    sasl: SASLAuthStartupHandler<DefaultServerParameterProvider>,
    users: Arc<Users>,
}

#[async_trait]
impl StartupHandler for SignIn {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let is_password = matches!(message, PgWireFrontendMessage::PasswordMessageFamily(_));
        let message = match message {
            // The client's first SASL message: decoded here, because pgwire's decoder reads it
            // unchecked and a malformed one panicked the connection's task (found by fuzzing).
            PgWireFrontendMessage::PasswordMessageFamily(PasswordMessageFamily::Raw(body))
                if client.session_extensions().get::<SaslStarted>().is_none() =>
            {
                client.session_extensions().insert(SaslStarted);
                let response = sasl_initial_response(&body).ok_or_else(|| {
                    PgWireError::UserError(Box::new(ErrorInfo::new(
                        "FATAL".into(),
                        "08P01".into(),
                        "invalid SASLInitialResponse message".into(),
                    )))
                })?;
                PgWireFrontendMessage::PasswordMessageFamily(
                    PasswordMessageFamily::SASLInitialResponse(response),
                )
            }
            other => other,
        };
        self.sasl.on_startup(client, message).await?;
        // The SASL handler finishes a sign-in only when the client's proof matched.
        if is_password
            && matches!(client.state(), PgWireConnectionState::ReadyForQuery)
            && let Some(role) = client
                .metadata()
                .get(METADATA_USER)
                .and_then(|user| self.users.role(user))
        {
            client.session_extensions().insert(SignedIn(role));
        }
        Ok(())
    }
}

/// Marks a connection whose SASL exchange has begun: its next password messages are SASL
/// responses.
struct SaslStarted;

/// A SASLInitialResponse body (mechanism, then a length-prefixed initial response), read with
/// bounds checks; `None` when it is malformed.
fn sasl_initial_response(body: &[u8]) -> Option<SASLInitialResponse> {
    let end = body.iter().position(|b| *b == 0)?;
    let mechanism = String::from_utf8_lossy(&body[..end]).into_owned();
    let rest = &body[end + 1..];
    let length = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
    let data = match length {
        -1 => None,
        n => Some(bytes::Bytes::copy_from_slice(
            rest[4..].get(..usize::try_from(n).ok()?)?,
        )),
    };
    Some(SASLInitialResponse::new(mechanism, data))
}

/// Logs failed sign-ins and statements by user and error code, never the statement's text (which
/// may hold patient data in its literals).
struct LogErrors;

impl ErrorHandler for LogErrors {
    fn on_error<C: ClientInfo>(&self, client: &C, error: &mut PgWireError) {
        let user = client
            .metadata()
            .get(METADATA_USER)
            .cloned()
            .unwrap_or_default();
        match error {
            PgWireError::InvalidPassword(_) => {
                tracing::warn!(%user, peer = %client.socket_addr(), "sign-in refused");
                // PostgreSQL's wording; pgwire names the SCRAM message's user, which libpq leaves
                // empty. The same answer for an unknown user as for a wrong password.
                *error = PgWireError::UserError(Box::new(ErrorInfo::new(
                    "FATAL".into(),
                    "28P01".into(),
                    format!("password authentication failed for user \"{user}\""),
                )));
            }
            PgWireError::UserError(info) => {
                tracing::info!(%user, code = %info.code, "statement refused")
            }
            _ => tracing::info!(%user, "statement failed"),
        }
        let role = client.session_extensions().get::<SignedIn>().map(|s| s.0);
        if role == Some(Role::BiReader)
            && let Some(hint) = masked_year_hint(&message_of(error))
        {
            *error = PgWireError::UserError(Box::new(ErrorInfo::new(
                "ERROR".into(),
                // datatype_mismatch
                "42804".into(),
                hint,
            )));
        }
    }
}

/// The text of an error as the client would read it.
fn message_of(error: &PgWireError) -> String {
    match error {
        PgWireError::UserError(info) => info.message.clone(),
        other => other.to_string(),
    }
}

/// A bi_reader sees birth and death dates as their year, an integer: comparing one with a date
/// fails in DataFusion's cast of the date text to an integer, with a message about casts. What the
/// user needs to know is why the column is an integer and how to filter it. A year is not turned
/// back into a date silently: a cut-off inside a year would give a count that is quietly wrong.
fn masked_year_hint(message: &str) -> Option<String> {
    let cast = message.find("Cannot cast string")?;
    if !message[cast..].contains("Int32") {
        return None;
    }
    let detail = message[cast..].lines().next().unwrap_or_default();
    Some(format!(
        "a date compared with an integer column: for this role, dates masked to the year \
         (such as silver.patient.birth_date) hold the year as an integer, so compare them with a \
         year (for example birth_date >= 1981 or birth_date BETWEEN 1950 AND 1959); exact dates \
         need an analyst account ({detail})"
    ))
}

/// Sends each statement to the session of the connection's role.
pub struct Router {
    shared: Arc<Shared>,
}

#[async_trait]
impl SimpleQueryHandler for Router {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = self.shared.session(client)?;
        SimpleQueryHandler::do_query(session.as_ref(), client, query).await
    }
}

type Statement = <DfSessionService as ExtendedQueryHandler>::Statement;

#[async_trait]
impl ExtendedQueryHandler for Router {
    type Statement = Statement;
    type QueryParser = RoleParser;

    fn query_parser(&self) -> Arc<RoleParser> {
        Arc::new(RoleParser {
            shared: self.shared.clone(),
        })
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Statement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = self.shared.session(client)?;
        ExtendedQueryHandler::do_query(session.as_ref(), client, portal, max_rows).await
    }
}

/// Plans a statement in the session of the connection's role. A parsed statement carries its plan,
/// so describing it needs no session: those calls go to any parser.
pub struct RoleParser {
    shared: Arc<Shared>,
}

impl RoleParser {
    fn any(&self) -> Arc<Parser> {
        let sessions = self.shared.sessions.read().expect("not poisoned").clone();
        sessions.bi_reader.query_parser()
    }
}

#[async_trait]
impl QueryParser for RoleParser {
    type Statement = Statement;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        self.shared
            .parser(client)?
            .parse_sql(client, sql, types)
            .await
    }

    fn get_parameter_types(&self, statement: &Statement) -> PgWireResult<Vec<Type>> {
        self.any().get_parameter_types(statement)
    }

    fn get_result_schema(
        &self,
        statement: &Statement,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        self.any().get_result_schema(statement, column_format)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sasl_initial_response_is_read_with_bounds_checks() {
        let mut valid = b"SCRAM-SHA-256\0".to_vec();
        valid.extend(5i32.to_be_bytes());
        valid.extend(b"n,,n=");
        let response = sasl_initial_response(&valid).unwrap();
        assert_eq!(response.auth_method, "SCRAM-SHA-256");
        assert_eq!(response.data.as_deref(), Some(&b"n,,n="[..]));
        let mut no_data = b"SCRAM-SHA-256\0".to_vec();
        no_data.extend((-1i32).to_be_bytes());
        assert_eq!(sasl_initial_response(&no_data).unwrap().data, None);
        // Each of these panicked pgwire's decoder (found by the fuzzer).
        let mut too_long = b"SCRAM-SHA-256\0".to_vec();
        too_long.extend(50i32.to_be_bytes());
        too_long.extend(b"n,,n=");
        let mut negative = b"SCRAM-SHA-256\0".to_vec();
        negative.extend((-7i32).to_be_bytes());
        for malformed in [
            &b"An4lyst-pw\0"[..],
            b"no terminator",
            b"SCRAM\0\0\0",
            &too_long,
            &negative,
        ] {
            assert!(sasl_initial_response(malformed).is_none(), "{malformed:?}");
        }
    }
}
