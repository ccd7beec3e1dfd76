//! MySQL and MariaDB: the catalogue from `information_schema`, rows through the text protocol,
//! streamed (never the whole result in memory) into Arrow builders.
//!
//! The session runs in UTC, so a TIMESTAMP column (stored in UTC, shown in the session's zone)
//! arrives as the instant it is. BIT is selected as its unsigned number. Count and rows are read in
//! one consistent-snapshot transaction.

use futures::StreamExt;
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Row, Value};

use super::catalog::{Column, Table};
use super::columns::{BadValue, ColumnBuilder, Kind};
use super::{DbError, Extracted, SourceUrl, TableRead};

pub struct MySql {
    conn: Conn,
    database: String,
    url: String,
}

impl MySql {
    pub async fn connect(url: &SourceUrl) -> Result<MySql, DbError> {
        let opts = OptsBuilder::default()
            .ip_or_hostname(url.host.clone())
            .tcp_port(url.port.unwrap_or(3306))
            .user(Some(url.user.clone()))
            .pass(url.password.clone())
            .db_name(Some(url.database.clone()))
            .prefer_socket(false)
            .init(vec![
                "SET time_zone = '+00:00'",
                "SET SESSION net_write_timeout = 600",
            ]);
        let conn = tokio::time::timeout(std::time::Duration::from_secs(10), Conn::new(opts))
            .await
            .map_err(|_| DbError::Connect {
                url: url.redacted(),
                message: "no answer within 10 s".into(),
            })?
            .map_err(|e| DbError::connect(url, e))?;
        Ok(MySql {
            conn,
            database: url.database.clone(),
            url: url.redacted(),
        })
    }

    fn err(&self, e: mysql_async::Error) -> DbError {
        DbError::Source {
            url: self.url.clone(),
            message: e.to_string(),
        }
    }

    pub async fn discover(&mut self, views: bool) -> Result<Vec<Table>, DbError> {
        let types = if views {
            "'BASE TABLE', 'VIEW'"
        } else {
            "'BASE TABLE'"
        };
        let database = self.database.clone();
        let names: Vec<String> = self
            .conn
            .exec(
                format!(
                    "SELECT TABLE_NAME FROM information_schema.TABLES \
                     WHERE TABLE_SCHEMA = ? AND TABLE_TYPE IN ({types}) ORDER BY TABLE_NAME"
                ),
                (database.clone(),),
            )
            .await
            .map_err(|e| self.err(e))?;
        type ColumnRow = (
            String,
            String,
            String,
            String,
            Option<u64>,
            Option<u64>,
            String,
        );
        let columns: Vec<ColumnRow> = self
            .conn
            .exec(
                "SELECT TABLE_NAME, COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, NUMERIC_PRECISION, \
                        NUMERIC_SCALE, EXTRA \
                 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? \
                 ORDER BY TABLE_NAME, ORDINAL_POSITION",
                (database.clone(),),
            )
            .await
            .map_err(|e| self.err(e))?;
        let keys: Vec<(String, String)> = self
            .conn
            .exec(
                "SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE \
                 WHERE TABLE_SCHEMA = ? AND CONSTRAINT_NAME = 'PRIMARY' \
                 ORDER BY TABLE_NAME, ORDINAL_POSITION",
                (database,),
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(names
            .into_iter()
            .map(|name| Table {
                columns: columns
                    .iter()
                    .filter(|c| c.0 == name)
                    .map(
                        |(_, column, data_type, column_type, precision, scale, extra)| {
                            let quoted = quote(column);
                            let kind = kind_of(
                                &data_type.to_ascii_lowercase(),
                                &column_type.to_ascii_lowercase(),
                                precision.unwrap_or(0) as u32,
                                scale.unwrap_or(0) as u32,
                            );
                            let select = if data_type.eq_ignore_ascii_case("bit") {
                                format!("CAST({quoted} AS UNSIGNED)")
                            } else {
                                quoted
                            };
                            Column {
                                name: column.clone(),
                                source_type: column_type.clone(),
                                kind,
                                select,
                                auto_increment: extra
                                    .to_ascii_lowercase()
                                    .contains("auto_increment"),
                            }
                        },
                    )
                    .collect(),
                primary_key: keys
                    .iter()
                    .filter(|k| k.0 == name)
                    .map(|k| k.1.clone())
                    .collect(),
                name,
            })
            .collect())
    }

    pub async fn extract(
        &mut self,
        read: &TableRead<'_>,
        filter: Option<&str>,
        batch_rows: usize,
    ) -> Result<Extracted, DbError> {
        let table = read.table;
        let url = self.url.clone();
        let err = |e: mysql_async::Error| DbError::Table {
            table: table.name.clone(),
            message: format!("{url}: {e}"),
        };
        let from = quote(&table.name);
        let condition = filter.map(|f| format!(" WHERE {f}")).unwrap_or_default();
        let (kinds, select) = (&read.kinds, &read.select);
        self.conn
            .query_drop("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .await
            .map_err(err)?;
        self.conn
            .query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
            .await
            .map_err(err)?;
        let count: Option<u64> = self
            .conn
            .query_first(format!("SELECT COUNT(*) FROM {from}{condition}"))
            .await
            .map_err(err)?;
        let mut builders: Vec<ColumnBuilder> = kinds.iter().map(ColumnBuilder::new).collect();
        let mut in_batch = 0usize;
        let mut rows = 0u64;
        {
            let mut result = self
                .conn
                .query_iter(format!("SELECT {select} FROM {from}{condition}"))
                .await
                .map_err(err)?;
            if let Some(mut stream) = result.stream::<Row>().await.map_err(err)? {
                while let Some(row) = stream.next().await {
                    let row = row.map_err(err)?;
                    for (i, builder) in builders.iter_mut().enumerate() {
                        append(&kinds[i], row.as_ref(i), builder)
                            .map_err(|e| read.bad_value(i, rows + 1, e))?;
                    }
                    rows += 1;
                    in_batch += 1;
                    if in_batch == batch_rows {
                        in_batch = 0;
                        read.send(builders.iter_mut().map(ColumnBuilder::finish).collect())
                            .await?;
                    }
                }
            }
        }
        if in_batch > 0 {
            read.send(builders.iter_mut().map(ColumnBuilder::finish).collect())
                .await?;
        }
        self.conn.query_drop("COMMIT").await.map_err(err)?;
        Ok(Extracted {
            rows_at_source: count.unwrap_or(0),
            rows_read: rows,
        })
    }
}

pub fn quote(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// The kind of a column from `information_schema.COLUMNS`, or why it cannot be read.
fn kind_of(data_type: &str, column_type: &str, precision: u32, scale: u32) -> Result<Kind, String> {
    let unsigned = column_type.contains("unsigned");
    Ok(match data_type {
        "tinyint" if unsigned => Kind::Int16,
        "tinyint" => Kind::Int8,
        "smallint" if unsigned => Kind::Int32,
        "smallint" => Kind::Int16,
        "mediumint" => Kind::Int32,
        "int" | "integer" if unsigned => Kind::Int64,
        "int" | "integer" => Kind::Int32,
        "bigint" if unsigned => Kind::decimal(20, 0),
        "bigint" => Kind::Int64,
        "decimal" | "numeric" => Kind::decimal(precision, scale),
        "float" => Kind::Float32,
        "double" | "real" => Kind::Float64,
        "bit" if precision <= 1 => Kind::Boolean,
        "bit" if precision <= 63 => Kind::Int64,
        "bit" => Kind::decimal(20, 0),
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "enum" | "json"
        | "time" | "uuid" | "inet4" | "inet6" => Kind::Text,
        "set" => Kind::List(Box::new(Kind::Text)),
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => Kind::Binary,
        "date" => Kind::Date,
        "datetime" => Kind::Timestamp { utc: false },
        "timestamp" => Kind::Timestamp { utc: true },
        "year" => Kind::Int16,
        _ => return Err(format!("type {column_type} is not supported")),
    })
}

/// One text-protocol value into `builder`.
fn append(kind: &Kind, value: Option<&Value>, builder: &mut ColumnBuilder) -> Result<(), BadValue> {
    let bytes = match value {
        None | Some(Value::NULL) => {
            builder.append_null();
            return Ok(());
        }
        Some(Value::Bytes(bytes)) => bytes.as_slice(),
        Some(other) => {
            return builder.append_text(other.as_sql(true).trim_matches('\''));
        }
    };
    if let Kind::List(_) = kind {
        let text =
            std::str::from_utf8(bytes).map_err(|_| BadValue("SET value is not UTF-8".into()))?;
        let members: Vec<&str> = if text.is_empty() {
            Vec::new()
        } else {
            text.split(',').collect()
        };
        let elements = builder
            .list_elements()
            .expect("a list kind has a list builder");
        for member in &members {
            elements.append_text(member)?;
        }
        builder.end_list(members.len());
        return Ok(());
    }
    builder.append_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsigned_integers_widen_and_geometry_is_refused() {
        assert_eq!(kind_of("int", "int(10) unsigned", 10, 0), Ok(Kind::Int64));
        assert_eq!(
            kind_of("bigint", "bigint(20) unsigned", 20, 0),
            Ok(Kind::Decimal {
                precision: 20,
                scale: 0
            })
        );
        assert_eq!(kind_of("tinyint", "tinyint(4)", 3, 0), Ok(Kind::Int8));
        assert_eq!(kind_of("bit", "bit(1)", 1, 0), Ok(Kind::Boolean));
        assert_eq!(kind_of("decimal", "decimal(65,30)", 65, 30), Ok(Kind::Text));
        assert!(
            kind_of("point", "point", 0, 0)
                .unwrap_err()
                .contains("point")
        );
    }

    #[test]
    fn set_values_become_lists() {
        let kind = Kind::List(Box::new(Kind::Text));
        let mut builder = ColumnBuilder::new(&kind);
        append(&kind, Some(&Value::Bytes(b"a,b".to_vec())), &mut builder).unwrap();
        append(&kind, Some(&Value::Bytes(Vec::new())), &mut builder).unwrap();
        append(&kind, Some(&Value::NULL), &mut builder).unwrap();
        let array = builder.finish();
        assert_eq!(array.len(), 3);
        assert_eq!(array.null_count(), 1);
    }
}
