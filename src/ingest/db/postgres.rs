//! PostgreSQL: the catalogue from `pg_catalog`, rows through binary `COPY ... TO STDOUT`, decoded
//! straight into Arrow builders (no text parsing, no per-row allocation).
//!
//! Types whose binary form we do not decode are selected as `::text` (enum, uuid, inet, time, bit,
//! jsonb, numerics wider than Delta's 38 digits): their text form is exact. Count and rows are read
//! in one REPEATABLE READ transaction, so the reconciliation compares the same snapshot.

use futures::StreamExt;
use tokio_postgres::{Client, IsolationLevel, NoTls};

use super::catalog::{Column, Table};
use super::columns::{BadValue, ColumnBuilder, Kind};
use super::{DbError, Extracted, SourceUrl, TableRead};

pub struct Postgres {
    client: Client,
    schema: String,
    url: String,
}

/// Days and microseconds between 1970-01-01 and PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_DAYS: i32 = 10_957;
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

impl Postgres {
    pub async fn connect(url: &SourceUrl, schema: &str) -> Result<Postgres, DbError> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&url.host)
            .port(url.port.unwrap_or(5432))
            .user(&url.user)
            .dbname(&url.database)
            .application_name("vitalake")
            .connect_timeout(std::time::Duration::from_secs(10));
        if let Some(password) = &url.password {
            config.password(password);
        }
        let (client, connection) = config
            .connect(NoTls)
            .await
            .map_err(|e| DbError::connect(url, message(&e)))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "PostgreSQL connection closed");
            }
        });
        Ok(Postgres {
            client,
            schema: schema.to_string(),
            url: url.redacted(),
        })
    }

    fn err(&self, e: tokio_postgres::Error) -> DbError {
        DbError::Source {
            url: self.url.clone(),
            message: message(&e),
        }
    }

    /// Every table (and, with `views`, every view) of the schema, with columns and primary key.
    pub async fn discover(&self, views: bool) -> Result<Vec<Table>, DbError> {
        let kinds = if views { "'r','p','v','m'" } else { "'r','p'" };
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT c.oid, c.relname::text FROM pg_class c \
                     JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1 AND c.relkind IN ({kinds}) ORDER BY c.relname"
                ),
                &[&self.schema],
            )
            .await
            .map_err(|e| self.err(e))?;
        let mut tables = Vec::new();
        for row in rows {
            let oid: u32 = row.get(0);
            let name: String = row.get(1);
            let columns = self.columns(oid).await?;
            let primary_key = self
                .client
                .query(
                    "SELECT a.attname::text FROM pg_index i \
                     JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true \
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                     WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.ord",
                    &[&oid],
                )
                .await
                .map_err(|e| self.err(e))?
                .iter()
                .map(|r| r.get(0))
                .collect();
            tables.push(Table {
                name,
                columns,
                primary_key,
            });
        }
        Ok(tables)
    }

    async fn columns(&self, table_oid: u32) -> Result<Vec<Column>, DbError> {
        // Domains resolve to their base type; an array's element type comes along.
        let rows = self
            .client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), \
                        t.typname::text, t.typtype::text, t.typcategory::text, \
                        CASE WHEN d.typbasetype <> 0 THEN d.typtypmod ELSE a.atttypmod END, \
                        coalesce(e.typname::text, ''), coalesce(e.typtype::text, ''), \
                        a.attidentity::text <> '' \
                          OR coalesce(pg_get_expr(def.adbin, def.adrelid), '') LIKE 'nextval(%' \
                 FROM pg_attribute a \
                 JOIN pg_type d ON d.oid = a.atttypid \
                 JOIN pg_type t ON t.oid = CASE WHEN d.typbasetype <> 0 THEN d.typbasetype ELSE d.oid END \
                 LEFT JOIN pg_type e ON e.oid = t.typelem AND t.typcategory = 'A' \
                 LEFT JOIN pg_attrdef def ON def.adrelid = a.attrelid AND def.adnum = a.attnum \
                 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                &[&table_oid],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(rows
            .iter()
            .map(|row| {
                let name: String = row.get(0);
                let source_type: String = row.get(1);
                let typname: String = row.get(2);
                let typtype: String = row.get(3);
                let category: String = row.get(4);
                let typmod: i32 = row.get(5);
                let element: String = row.get(6);
                let element_typtype: String = row.get(7);
                let auto_increment: bool = row.get(8);
                let quoted = quote(&name);
                let (kind, select) = if category == "A" && !element.is_empty() {
                    match scalar(&element, &element_typtype, typmod) {
                        Ok((kind, cast)) => (
                            Ok(Kind::List(Box::new(kind))),
                            match cast {
                                Some(cast) => format!("{quoted}::{cast}[]"),
                                None => quoted.clone(),
                            },
                        ),
                        Err(()) => (Err(unsupported(&source_type)), quoted.clone()),
                    }
                } else {
                    match scalar(&typname, &typtype, typmod) {
                        Ok((kind, cast)) => (
                            Ok(kind),
                            match cast {
                                Some(cast) => format!("{quoted}::{cast}"),
                                None => quoted.clone(),
                            },
                        ),
                        Err(()) => (Err(unsupported(&source_type)), quoted.clone()),
                    }
                };
                Column {
                    name,
                    source_type,
                    kind,
                    select,
                    auto_increment,
                }
            })
            .collect())
    }

    /// Reads the rows of `table` matching `filter` (a SQL condition) into batches of `batch_rows`,
    /// sent to `out`. The row count at the source comes from the same snapshot.
    pub async fn extract(
        &mut self,
        read: &TableRead<'_>,
        filter: Option<&str>,
        batch_rows: usize,
    ) -> Result<Extracted, DbError> {
        let table = read.table;
        let url = self.url.clone();
        let err = |e: tokio_postgres::Error| DbError::Table {
            table: table.name.clone(),
            message: format!("{url}: {}", message(&e)),
        };
        let from = format!("{}.{}", quote(&self.schema), quote(&table.name));
        let condition = filter.map(|f| format!(" WHERE {f}")).unwrap_or_default();
        let select = &read.select;
        let transaction = self
            .client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(err)?;
        let count: i64 = transaction
            .query_one(&format!("SELECT count(*) FROM {from}{condition}"), &[])
            .await
            .map_err(err)?
            .get(0);
        let copy =
            format!("COPY (SELECT {select} FROM {from}{condition}) TO STDOUT (FORMAT binary)");
        let mut stream = Box::pin(transaction.copy_out(&copy).await.map_err(err)?);
        let mut decoder = CopyDecoder::new(&read.kinds);
        let mut rows = 0u64;
        let mut buffer: Vec<u8> = Vec::new();
        let mut at = 0usize;
        let mut done = false;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(err)?;
            if at > 0 && at == buffer.len() {
                buffer.clear();
                at = 0;
            } else if at > (1 << 20) {
                buffer.drain(..at);
                at = 0;
            }
            buffer.extend_from_slice(&chunk);
            loop {
                match decoder.row(&buffer[at..]) {
                    Ok(Some((used, is_end))) => {
                        at += used;
                        if is_end {
                            done = true;
                            break;
                        }
                        rows += 1;
                        if decoder.rows == batch_rows {
                            read.send(decoder.finish()).await?;
                        }
                    }
                    Ok(None) => break,
                    Err((column, e)) => return Err(read.bad_value(column, rows + 1, e)),
                }
            }
        }
        if !done {
            return Err(DbError::Table {
                table: table.name.clone(),
                message: "COPY ended before its trailer".into(),
            });
        }
        if decoder.rows > 0 {
            read.send(decoder.finish()).await?;
        }
        transaction.commit().await.map_err(err)?;
        Ok(Extracted {
            rows_at_source: count as u64,
            rows_read: rows,
        })
    }

    /// The largest value of `column` in silver, as a PostgreSQL literal of the column's type.
    pub fn literal_timestamp(micros: i64, utc: bool) -> String {
        let time = chrono::DateTime::from_timestamp_micros(micros).unwrap_or_default();
        if utc {
            format!("'{}'::timestamptz", time.format("%Y-%m-%d %H:%M:%S%.6f+00"))
        } else {
            format!("'{}'::timestamp", time.format("%Y-%m-%d %H:%M:%S%.6f"))
        }
    }
}

/// The server's own message (tokio-postgres displays a server error as just "db error").
fn message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({}): {}", db.severity(), db.code().code(), db.message()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(inner) = source {
                text = format!("{text}: {inner}");
                source = inner.source();
            }
            text
        }
    }
}

fn unsupported(source_type: &str) -> String {
    format!("type {source_type} is not supported")
}

pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The kind of a scalar type, and the cast that selects it, or `Err` when unsupported.
fn scalar(typname: &str, typtype: &str, typmod: i32) -> Result<(Kind, Option<&'static str>), ()> {
    if typtype == "e" {
        return Ok((Kind::Text, Some("text")));
    }
    Ok(match typname {
        "bool" => (Kind::Boolean, None),
        "int2" => (Kind::Int16, None),
        "int4" => (Kind::Int32, None),
        "int8" => (Kind::Int64, None),
        "oid" => (Kind::Int64, Some("int8")),
        "float4" => (Kind::Float32, None),
        "float8" => (Kind::Float64, None),
        "numeric" => {
            let kind = if typmod < 4 {
                Kind::Text
            } else {
                let packed = (typmod - 4) as u32;
                Kind::decimal(packed >> 16 & 0xffff, packed & 0xffff)
            };
            let cast = (kind == Kind::Text).then_some("text");
            (kind, cast)
        }
        "money" => (Kind::decimal(19, 2), Some("numeric")),
        "text" | "varchar" | "bpchar" | "name" | "json" | "xml" | "citext" => (Kind::Text, None),
        "jsonb" | "uuid" | "inet" | "cidr" | "macaddr" | "macaddr8" | "bit" | "varbit" | "time"
        | "timetz" => (Kind::Text, Some("text")),
        "bytea" => (Kind::Binary, None),
        "date" => (Kind::Date, None),
        "timestamp" => (Kind::Timestamp { utc: false }, None),
        "timestamptz" => (Kind::Timestamp { utc: true }, None),
        "interval" => (Kind::Interval, None),
        _ => return Err(()),
    })
}

/// Decodes PostgreSQL's binary COPY format (header, tuples, trailer) into column builders.
struct CopyDecoder<'k> {
    kinds: &'k [Kind],
    builders: Vec<ColumnBuilder>,
    header_seen: bool,
    rows: usize,
}

const COPY_SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

impl<'k> CopyDecoder<'k> {
    fn new(kinds: &'k [Kind]) -> Self {
        CopyDecoder {
            kinds,
            builders: kinds.iter().map(ColumnBuilder::new).collect(),
            header_seen: false,
            rows: 0,
        }
    }

    fn finish(&mut self) -> Vec<deltalake::arrow::array::ArrayRef> {
        self.rows = 0;
        self.builders
            .iter_mut()
            .map(ColumnBuilder::finish)
            .collect()
    }

    /// Decodes one tuple from the start of `data`: `Ok(None)` if incomplete, else the bytes used
    /// and whether it was the trailer. Errors name the column index.
    fn row(&mut self, data: &[u8]) -> Result<Option<(usize, bool)>, (usize, BadValue)> {
        let mut at = 0;
        if !self.header_seen {
            if data.len() < COPY_SIGNATURE.len() + 8 {
                return Ok(None);
            }
            if &data[..COPY_SIGNATURE.len()] != COPY_SIGNATURE {
                return Err((0, BadValue("not a binary COPY stream".into())));
            }
            at = COPY_SIGNATURE.len() + 4;
            let extension = be_i32(&data[at..]) as usize;
            at += 4;
            if data.len() < at + extension {
                return Ok(None);
            }
            at += extension;
            self.header_seen = true;
        }
        if data.len() < at + 2 {
            return Ok(None);
        }
        let fields = i16::from_be_bytes([data[at], data[at + 1]]);
        if fields == -1 {
            return Ok(Some((at + 2, true)));
        }
        // Check the whole tuple is here before appending anything.
        let start = at + 2;
        let mut scan = start;
        for _ in 0..fields {
            if data.len() < scan + 4 {
                return Ok(None);
            }
            let len = be_i32(&data[scan..]);
            scan += 4 + len.max(0) as usize;
        }
        if data.len() < scan {
            return Ok(None);
        }
        let mut at = start;
        for column in 0..fields as usize {
            let len = be_i32(&data[at..]);
            at += 4;
            let builder = &mut self.builders[column];
            if len < 0 {
                builder.append_null();
                continue;
            }
            let value = &data[at..at + len as usize];
            at += len as usize;
            decode(&self.kinds[column], value, builder).map_err(|e| (column, e))?;
        }
        self.rows += 1;
        Ok(Some((at, false)))
    }
}

fn be_i32(b: &[u8]) -> i32 {
    i32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be_i64(b: &[u8]) -> i64 {
    i64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

fn need(value: &[u8], len: usize) -> Result<(), BadValue> {
    if value.len() < len {
        Err(BadValue(format!(
            "a {len}-byte value was {} bytes",
            value.len()
        )))
    } else {
        Ok(())
    }
}

/// One binary value into `builder`.
fn decode(kind: &Kind, value: &[u8], builder: &mut ColumnBuilder) -> Result<(), BadValue> {
    match kind {
        Kind::Boolean => {
            need(value, 1)?;
            builder.append_i128((value[0] != 0) as i128)
        }
        Kind::Int8 => {
            need(value, 1)?;
            builder.append_i128(value[0] as i8 as i128)
        }
        Kind::Int16 => {
            need(value, 2)?;
            builder.append_i128(i16::from_be_bytes([value[0], value[1]]) as i128)
        }
        Kind::Int32 => {
            need(value, 4)?;
            builder.append_i128(be_i32(value) as i128)
        }
        Kind::Int64 => {
            need(value, 8)?;
            builder.append_i128(be_i64(value) as i128)
        }
        Kind::Float32 => {
            need(value, 4)?;
            builder.append_f64(f32::from_be_bytes(value[..4].try_into().expect("4")) as f64)
        }
        Kind::Float64 => {
            need(value, 8)?;
            builder.append_f64(f64::from_be_bytes(value[..8].try_into().expect("8")))
        }
        Kind::Decimal { scale, .. } => {
            let units = numeric_units(value, *scale)?;
            match builder {
                ColumnBuilder::Decimal(b, _) => {
                    b.append_value(units);
                    Ok(())
                }
                _ => Err(BadValue(
                    "numeric where the column expects another type".into(),
                )),
            }
        }
        Kind::Text | Kind::Binary => builder.append_bytes(value),
        Kind::Date => {
            need(value, 4)?;
            match be_i32(value) {
                i32::MAX | i32::MIN => {
                    builder.append_null();
                    Ok(())
                }
                days => builder.append_date(days + PG_EPOCH_DAYS),
            }
        }
        Kind::Timestamp { .. } => {
            need(value, 8)?;
            match be_i64(value) {
                i64::MAX | i64::MIN => {
                    builder.append_null();
                    Ok(())
                }
                micros => builder.append_timestamp(micros + PG_EPOCH_MICROS),
            }
        }
        Kind::Interval => {
            need(value, 16)?;
            builder.append_interval(be_i32(&value[12..]), be_i32(&value[8..]), be_i64(value))
        }
        Kind::List(element) => {
            need(value, 12)?;
            let dimensions = be_i32(value);
            if dimensions == 0 {
                builder.end_list(0);
                return Ok(());
            }
            if dimensions != 1 {
                return Err(BadValue(format!(
                    "a {dimensions}-dimensional array; only one dimension is supported"
                )));
            }
            need(value, 20)?;
            let count = be_i32(&value[12..]).max(0) as usize;
            let mut at = 20;
            let elements = builder
                .list_elements()
                .expect("a list kind has a list builder");
            for _ in 0..count {
                need(&value[at..], 4)?;
                let len = be_i32(&value[at..]);
                at += 4;
                if len < 0 {
                    elements.append_null();
                } else {
                    need(&value[at..], len as usize)?;
                    decode(element, &value[at..at + len as usize], elements)?;
                    at += len as usize;
                }
            }
            builder.end_list(count);
            Ok(())
        }
    }
}

/// A binary NUMERIC as units of 10^-scale, exactly: base-10000 digits with a weight.
fn numeric_units(value: &[u8], scale: i8) -> Result<i128, BadValue> {
    need(value, 8)?;
    let word = |i: usize| i16::from_be_bytes([value[2 * i], value[2 * i + 1]]);
    let (ndigits, weight, sign) = (word(0) as usize, word(1) as i32, word(2) as u16);
    if sign == 0xC000 || sign == 0xD000 || sign == 0xF000 {
        return Err(BadValue(
            "NaN or infinity does not fit a decimal column".into(),
        ));
    }
    need(value, 8 + 2 * ndigits)?;
    let overflow = || BadValue("numeric value out of the column's range".into());
    let mut units: i128 = 0;
    for i in 0..ndigits {
        let digit = word(4 + i) as i128;
        let exponent = 4 * (weight - i as i32) + scale as i32;
        let term = if exponent >= 0 {
            10i128
                .checked_pow(exponent as u32)
                .and_then(|p| digit.checked_mul(p))
                .ok_or_else(overflow)?
        } else {
            let divisor = 10i128.pow((-exponent).min(38) as u32);
            if digit % divisor != 0 {
                return Err(BadValue(
                    "more fractional digits than the column's scale".into(),
                ));
            }
            digit / divisor
        };
        units = units.checked_add(term).ok_or_else(overflow)?;
    }
    Ok(if sign == 0x4000 { -units } else { units })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(ndigits: i16, weight: i16, negative: bool, dscale: i16, digits: &[i16]) -> Vec<u8> {
        let mut v = Vec::new();
        for w in [ndigits, weight, if negative { 0x4000 } else { 0 }, dscale] {
            v.extend_from_slice(&w.to_be_bytes());
        }
        for d in digits {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    #[test]
    fn numerics_decode_exactly() {
        // 12345.678 = [1, 2345, 6780] with weight 1
        assert_eq!(
            numeric_units(&numeric(3, 1, false, 3, &[1, 2345, 6780]), 3),
            Ok(12_345_678)
        );
        assert_eq!(
            numeric_units(&numeric(3, 1, true, 3, &[1, 2345, 6780]), 4),
            Ok(-123_456_780)
        );
        assert!(numeric_units(&numeric(3, 1, false, 3, &[1, 2345, 6780]), 2).is_err());
        // 0.0005 = [5] with weight -1
        assert_eq!(numeric_units(&numeric(1, -1, false, 4, &[5]), 4), Ok(5));
        assert_eq!(numeric_units(&numeric(0, 0, false, 2, &[]), 2), Ok(0));
    }

    #[test]
    fn unknown_types_are_refused_and_wide_numerics_become_text() {
        assert!(scalar("point", "b", -1).is_err());
        assert_eq!(scalar("numeric", "b", -1), Ok((Kind::Text, Some("text"))));
        assert_eq!(
            scalar("numeric", "b", ((12 << 16) | 2) + 4),
            Ok((
                Kind::Decimal {
                    precision: 12,
                    scale: 2
                },
                None
            ))
        );
        assert_eq!(scalar("mood", "e", -1), Ok((Kind::Text, Some("text"))));
    }
}
