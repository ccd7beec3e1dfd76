//! The server only reads: a statement that would write to the lake or change the catalogue gets
//! PostgreSQL's own read-only error (SQLSTATE 25006), before it is planned.
//!
//! An allow-list, not a deny-list: a statement kind added by a newer SQL parser is refused until
//! someone decides it only reads.

use async_trait::async_trait;
use datafusion_postgres::QueryHook;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::pgwire::api::ClientInfo;
use datafusion_postgres::pgwire::api::results::Response;
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use deltalake::datafusion::common::ParamValues;
use deltalake::datafusion::logical_expr::LogicalPlan;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::datafusion::sql::sqlparser::ast::Statement;

/// SQLSTATE `read_only_sql_transaction`, what PostgreSQL answers on a read-only standby.
pub const READ_ONLY_SQLSTATE: &str = "25006";

#[derive(Debug)]
pub struct ReadOnly;

/// Whether a statement only reads (queries, EXPLAIN of one, session settings, transactions and
/// cursors, which BI tools and drivers send around their queries).
pub fn only_reads(statement: &Statement) -> bool {
    match statement {
        Statement::Explain { statement, .. } => only_reads(statement),
        Statement::Query(_)
        | Statement::ExplainTable { .. }
        | Statement::Set(_)
        | Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowFunctions { .. }
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. }
        | Statement::Declare { .. }
        | Statement::Fetch { .. }
        | Statement::Close { .. }
        | Statement::Discard { .. }
        | Statement::Deallocate { .. } => true,
        _ => false,
    }
}

fn refusal(statement: &Statement) -> Option<PgWireError> {
    if only_reads(statement) {
        return None;
    }
    let sql = statement.to_string();
    let verb = sql.split_whitespace().next().unwrap_or("this statement");
    Some(PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_string(),
        READ_ONLY_SQLSTATE.to_string(),
        format!(
            "cannot execute {} here: vitalake serves the lake read-only; data enters through `vitalake ingest` and `vitalake stream`",
            verb.to_uppercase()
        ),
    ))))
}

#[async_trait]
impl QueryHook for ReadOnly {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        _session_context: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        refusal(statement).map(Err)
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _session_context: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        refusal(statement).map(Err)
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _logical_plan: &LogicalPlan,
        _params: &ParamValues,
        _session_context: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        refusal(statement).map(Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use deltalake::datafusion::sql::sqlparser::parser::Parser;

    fn reads(sql: &str) -> bool {
        let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
        only_reads(&statements[0])
    }

    #[test]
    fn queries_and_session_statements_pass_and_writes_do_not() {
        for sql in [
            "SELECT 1",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "EXPLAIN SELECT 1",
            "SET search_path = silver",
            "SHOW search_path",
            "BEGIN",
            "COMMIT",
            "ROLLBACK",
        ] {
            assert!(reads(sql), "{sql}");
        }
        for sql in [
            "INSERT INTO silver.patient VALUES (1)",
            "UPDATE silver.patient SET gender = 'x'",
            "DELETE FROM silver.patient",
            "DROP TABLE silver.patient",
            "CREATE TABLE t (a int)",
            "CREATE VIEW v AS SELECT 1",
            "ALTER TABLE silver.patient ADD COLUMN x int",
            "TRUNCATE silver.patient",
            "COPY silver.patient FROM '/tmp/x'",
            "EXPLAIN ANALYZE INSERT INTO silver.patient VALUES (1)",
        ] {
            assert!(!reads(sql), "{sql}");
        }
    }
}
