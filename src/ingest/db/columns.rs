//! Source columns as Arrow columns: the [`Kind`] a source type maps to, and a builder per kind that
//! both sources fill, PostgreSQL from binary COPY and MySQL from the text protocol.
//!
//! Every kind is one Delta Lake can store, chosen so that no value is lost: Delta has no unsigned
//! integers, no time-of-day, no interval and no decimal wider than 38 digits, so an unsigned column
//! takes the next wider signed type (BIGINT UNSIGNED a decimal(20, 0)), a time of day is kept as its
//! exact text, an interval as its three parts, and a wider decimal as its exact text.

use std::sync::Arc;

use deltalake::arrow::array::builder::NullBufferBuilder;
use deltalake::arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder,
    Float64Builder, Int8Builder, Int16Builder, Int32Builder, Int64Builder, ListArray,
    StringBuilder, StructArray, TimestampMicrosecondBuilder,
};
use deltalake::arrow::buffer::OffsetBuffer;
use deltalake::arrow::datatypes::{DataType, Field, Fields, TimeUnit};

/// The Arrow (and Delta) shape of a source column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Boolean,
    Int8,
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    Decimal {
        precision: u8,
        scale: i8,
    },
    Text,
    Binary,
    Date,
    /// `utc`: an instant (TIMESTAMPTZ, MySQL TIMESTAMP); otherwise a wall-clock time without zone.
    Timestamp {
        utc: bool,
    },
    /// PostgreSQL INTERVAL: months, days and microseconds, kept apart as PostgreSQL does.
    Interval,
    List(Box<Kind>),
}

/// The widest decimal Delta Lake stores.
pub const MAX_DECIMAL_PRECISION: u8 = 38;

impl Kind {
    /// A DECIMAL(p, s): exact as a decimal when Delta can hold it, otherwise as exact text.
    pub fn decimal(precision: u32, scale: u32) -> Kind {
        if precision >= 1 && precision <= MAX_DECIMAL_PRECISION as u32 && scale <= precision {
            Kind::Decimal {
                precision: precision as u8,
                scale: scale as i8,
            }
        } else {
            Kind::Text
        }
    }

    pub fn data_type(&self) -> DataType {
        match self {
            Kind::Boolean => DataType::Boolean,
            Kind::Int8 => DataType::Int8,
            Kind::Int16 => DataType::Int16,
            Kind::Int32 => DataType::Int32,
            Kind::Int64 => DataType::Int64,
            Kind::Float32 => DataType::Float32,
            Kind::Float64 => DataType::Float64,
            Kind::Decimal { precision, scale } => DataType::Decimal128(*precision, *scale),
            Kind::Text => DataType::Utf8,
            Kind::Binary => DataType::Binary,
            Kind::Date => DataType::Date32,
            Kind::Timestamp { utc } => {
                DataType::Timestamp(TimeUnit::Microsecond, utc.then(|| Arc::from("UTC")))
            }
            Kind::Interval => DataType::Struct(interval_fields()),
            Kind::List(inner) => {
                DataType::List(Arc::new(Field::new("element", inner.data_type(), true)))
            }
        }
    }
}

fn interval_fields() -> Fields {
    Fields::from(vec![
        Field::new("months", DataType::Int32, true),
        Field::new("days", DataType::Int32, true),
        Field::new("microseconds", DataType::Int64, true),
    ])
}

/// A value a source could not turn into its column's kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadValue(pub String);

/// Accumulates one column of a batch. (One per column, not per value: the interval variant's
/// size does not matter.)
#[allow(clippy::large_enum_variant)]
pub enum ColumnBuilder {
    Boolean(BooleanBuilder),
    Int8(Int8Builder),
    Int16(Int16Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Decimal(Decimal128Builder, i8),
    Text(StringBuilder),
    Binary(BinaryBuilder),
    Date(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder),
    Interval {
        months: Int32Builder,
        days: Int32Builder,
        micros: Int64Builder,
        valid: NullBufferBuilder,
    },
    List {
        offsets: Vec<i32>,
        valid: NullBufferBuilder,
        inner: Box<ColumnBuilder>,
        kind: Kind,
    },
}

impl ColumnBuilder {
    pub fn new(kind: &Kind) -> ColumnBuilder {
        match kind {
            Kind::Boolean => ColumnBuilder::Boolean(BooleanBuilder::new()),
            Kind::Int8 => ColumnBuilder::Int8(Int8Builder::new()),
            Kind::Int16 => ColumnBuilder::Int16(Int16Builder::new()),
            Kind::Int32 => ColumnBuilder::Int32(Int32Builder::new()),
            Kind::Int64 => ColumnBuilder::Int64(Int64Builder::new()),
            Kind::Float32 => ColumnBuilder::Float32(Float32Builder::new()),
            Kind::Float64 => ColumnBuilder::Float64(Float64Builder::new()),
            Kind::Decimal { precision, scale } => ColumnBuilder::Decimal(
                Decimal128Builder::new()
                    .with_precision_and_scale(*precision, *scale)
                    .expect("precision checked by Kind::decimal"),
                *scale,
            ),
            Kind::Text => ColumnBuilder::Text(StringBuilder::new()),
            Kind::Binary => ColumnBuilder::Binary(BinaryBuilder::new()),
            Kind::Date => ColumnBuilder::Date(Date32Builder::new()),
            Kind::Timestamp { utc } => {
                let builder = TimestampMicrosecondBuilder::new();
                ColumnBuilder::Timestamp(if *utc {
                    builder.with_timezone("UTC")
                } else {
                    builder
                })
            }
            Kind::Interval => ColumnBuilder::Interval {
                months: Int32Builder::new(),
                days: Int32Builder::new(),
                micros: Int64Builder::new(),
                valid: NullBufferBuilder::new(0),
            },
            Kind::List(inner) => ColumnBuilder::List {
                offsets: vec![0],
                valid: NullBufferBuilder::new(0),
                inner: Box::new(ColumnBuilder::new(inner)),
                kind: kind.clone(),
            },
        }
    }

    pub fn append_null(&mut self) {
        match self {
            ColumnBuilder::Boolean(b) => b.append_null(),
            ColumnBuilder::Int8(b) => b.append_null(),
            ColumnBuilder::Int16(b) => b.append_null(),
            ColumnBuilder::Int32(b) => b.append_null(),
            ColumnBuilder::Int64(b) => b.append_null(),
            ColumnBuilder::Float32(b) => b.append_null(),
            ColumnBuilder::Float64(b) => b.append_null(),
            ColumnBuilder::Decimal(b, _) => b.append_null(),
            ColumnBuilder::Text(b) => b.append_null(),
            ColumnBuilder::Binary(b) => b.append_null(),
            ColumnBuilder::Date(b) => b.append_null(),
            ColumnBuilder::Timestamp(b) => b.append_null(),
            ColumnBuilder::Interval {
                months,
                days,
                micros,
                valid,
            } => {
                months.append_null();
                days.append_null();
                micros.append_null();
                valid.append_null();
            }
            ColumnBuilder::List { offsets, valid, .. } => {
                offsets.push(*offsets.last().expect("starts with 0"));
                valid.append_null();
            }
        }
    }

    /// Appends an integer to an integer, boolean or decimal column (decimal: as that many units).
    pub fn append_i128(&mut self, value: i128) -> Result<(), BadValue> {
        let out_of_range = || BadValue(format!("integer {value} is out of the column's range"));
        match self {
            ColumnBuilder::Boolean(b) => b.append_value(value != 0),
            ColumnBuilder::Int8(b) => b.append_value(value.try_into().map_err(|_| out_of_range())?),
            ColumnBuilder::Int16(b) => {
                b.append_value(value.try_into().map_err(|_| out_of_range())?)
            }
            ColumnBuilder::Int32(b) => {
                b.append_value(value.try_into().map_err(|_| out_of_range())?)
            }
            ColumnBuilder::Int64(b) => {
                b.append_value(value.try_into().map_err(|_| out_of_range())?)
            }
            ColumnBuilder::Decimal(b, scale) => {
                let scaled = value
                    .checked_mul(10i128.pow(*scale as u32))
                    .ok_or_else(out_of_range)?;
                b.append_value(scaled)
            }
            ColumnBuilder::Text(b) => b.append_value(value.to_string()),
            _ => {
                return Err(BadValue(
                    "an integer where the column expects another type".into(),
                ));
            }
        }
        Ok(())
    }

    pub fn append_f64(&mut self, value: f64) -> Result<(), BadValue> {
        match self {
            ColumnBuilder::Float32(b) => b.append_value(value as f32),
            ColumnBuilder::Float64(b) => b.append_value(value),
            _ => {
                return Err(BadValue(
                    "a float where the column expects another type".into(),
                ));
            }
        }
        Ok(())
    }

    /// Appends a value given as text: the text protocol's form of every type.
    pub fn append_text(&mut self, text: &str) -> Result<(), BadValue> {
        match self {
            ColumnBuilder::Text(b) => b.append_value(text),
            ColumnBuilder::Decimal(b, scale) => b.append_value(parse_decimal(text, *scale)?),
            ColumnBuilder::Float32(b) => b.append_value(parse(text)?),
            ColumnBuilder::Float64(b) => b.append_value(parse(text)?),
            ColumnBuilder::Boolean(b) => b.append_value(match text {
                "1" | "t" | "true" => true,
                "0" | "f" | "false" => false,
                _ => return Err(BadValue(format!("{text:?} is not a boolean"))),
            }),
            ColumnBuilder::Date(b) => match parse_date(text)? {
                Some(days) => b.append_value(days),
                None => b.append_null(),
            },
            ColumnBuilder::Timestamp(b) => match parse_timestamp(text)? {
                Some(micros) => b.append_value(micros),
                None => b.append_null(),
            },
            ColumnBuilder::Binary(b) => b.append_value(text.as_bytes()),
            ColumnBuilder::List { .. } | ColumnBuilder::Interval { .. } => {
                return Err(BadValue(
                    "text where the column expects a list or an interval".into(),
                ));
            }
            _ => self.append_i128(parse(text)?)?,
        }
        Ok(())
    }

    pub fn append_bytes(&mut self, bytes: &[u8]) -> Result<(), BadValue> {
        match self {
            ColumnBuilder::Binary(b) => {
                b.append_value(bytes);
                Ok(())
            }
            _ => self.append_text(
                std::str::from_utf8(bytes).map_err(|_| BadValue("text is not UTF-8".into()))?,
            ),
        }
    }

    /// Days since 1970-01-01.
    pub fn append_date(&mut self, days: i32) -> Result<(), BadValue> {
        match self {
            ColumnBuilder::Date(b) => b.append_value(days),
            _ => {
                return Err(BadValue(
                    "a date where the column expects another type".into(),
                ));
            }
        }
        Ok(())
    }

    /// Microseconds since 1970-01-01T00:00:00 (UTC for an instant column).
    pub fn append_timestamp(&mut self, micros: i64) -> Result<(), BadValue> {
        match self {
            ColumnBuilder::Timestamp(b) => b.append_value(micros),
            _ => {
                return Err(BadValue(
                    "a timestamp where the column expects another type".into(),
                ));
            }
        }
        Ok(())
    }

    pub fn append_interval(&mut self, m: i32, d: i32, us: i64) -> Result<(), BadValue> {
        match self {
            ColumnBuilder::Interval {
                months,
                days,
                micros,
                valid,
            } => {
                months.append_value(m);
                days.append_value(d);
                micros.append_value(us);
                valid.append_non_null();
                Ok(())
            }
            _ => Err(BadValue(
                "an interval where the column expects another type".into(),
            )),
        }
    }

    /// The builder of a list column's elements; append them, then call [`Self::end_list`].
    pub fn list_elements(&mut self) -> Option<&mut ColumnBuilder> {
        match self {
            ColumnBuilder::List { inner, .. } => Some(inner),
            _ => None,
        }
    }

    /// Closes a list value holding `count` elements appended through [`Self::list_elements`].
    pub fn end_list(&mut self, count: usize) {
        if let ColumnBuilder::List { offsets, valid, .. } = self {
            offsets.push(offsets.last().expect("starts with 0") + count as i32);
            valid.append_non_null();
        }
    }

    pub fn finish(&mut self) -> ArrayRef {
        match self {
            ColumnBuilder::Boolean(b) => Arc::new(b.finish()),
            ColumnBuilder::Int8(b) => Arc::new(b.finish()),
            ColumnBuilder::Int16(b) => Arc::new(b.finish()),
            ColumnBuilder::Int32(b) => Arc::new(b.finish()),
            ColumnBuilder::Int64(b) => Arc::new(b.finish()),
            ColumnBuilder::Float32(b) => Arc::new(b.finish()),
            ColumnBuilder::Float64(b) => Arc::new(b.finish()),
            ColumnBuilder::Decimal(b, _) => Arc::new(b.finish()),
            ColumnBuilder::Text(b) => Arc::new(b.finish()),
            ColumnBuilder::Binary(b) => Arc::new(b.finish()),
            ColumnBuilder::Date(b) => Arc::new(b.finish()),
            ColumnBuilder::Timestamp(b) => Arc::new(b.finish()),
            ColumnBuilder::Interval {
                months,
                days,
                micros,
                valid,
            } => Arc::new(StructArray::new(
                interval_fields(),
                vec![
                    Arc::new(months.finish()),
                    Arc::new(days.finish()),
                    Arc::new(micros.finish()),
                ],
                valid.finish(),
            )),
            ColumnBuilder::List {
                offsets,
                valid,
                inner,
                kind,
            } => {
                let values = inner.finish();
                let Kind::List(element) = kind else {
                    unreachable!("a list builder has a list kind")
                };
                let offsets = std::mem::replace(offsets, vec![0]);
                Arc::new(ListArray::new(
                    Arc::new(Field::new("element", element.data_type(), true)),
                    OffsetBuffer::new(offsets.into()),
                    values,
                    valid.finish(),
                ))
            }
        }
    }
}

fn parse<T: std::str::FromStr>(text: &str) -> Result<T, BadValue> {
    text.trim()
        .parse()
        .map_err(|_| BadValue(format!("{text:?} is not a number of the column's type")))
}

/// `text` (e.g. `-12.50`) as units of 10^-scale, exactly: a value with more fractional digits than
/// the scale is refused, never rounded.
pub fn parse_decimal(text: &str, scale: i8) -> Result<i128, BadValue> {
    let bad = || BadValue(format!("{text:?} is not a decimal with scale {scale}"));
    let text = text.trim();
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let scale = scale.max(0) as usize;
    let kept = fraction.trim_end_matches('0');
    if kept.len() > scale {
        return Err(bad());
    }
    let mut value: i128 = 0;
    let padded = fraction.bytes().chain(std::iter::repeat(b'0')).take(scale);
    for b in whole.bytes().chain(padded) {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add((b - b'0') as i128))
            .ok_or_else(bad)?;
    }
    Ok(if negative { -value } else { value })
}

/// `YYYY-MM-DD` as days since 1970-01-01; MySQL's zero date `0000-00-00` has no day: `None`.
pub fn parse_date(text: &str) -> Result<Option<i32>, BadValue> {
    if text.starts_with("0000-00-00") {
        return Ok(None);
    }
    let date = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .map_err(|_| BadValue(format!("{text:?} is not a date")))?;
    Ok(Some(
        (date - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days() as i32,
    ))
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]` as microseconds since 1970-01-01T00:00:00; the zero date: `None`.
pub fn parse_timestamp(text: &str) -> Result<Option<i64>, BadValue> {
    if text.starts_with("0000-00-00") {
        return Ok(None);
    }
    let time = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
        .map_err(|_| BadValue(format!("{text:?} is not a date and time")))?;
    Ok(Some(time.and_utc().timestamp_micros()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_exact_or_refused() {
        assert_eq!(parse_decimal("-12.50", 2), Ok(-1250));
        assert_eq!(parse_decimal("12.5", 3), Ok(12500));
        assert_eq!(parse_decimal("7", 0), Ok(7));
        assert_eq!(parse_decimal("0.120", 2), Ok(12));
        assert!(parse_decimal("0.125", 2).is_err());
        assert!(parse_decimal("1e5", 0).is_err());
        assert!(parse_decimal("", 0).is_err());
        assert_eq!(
            parse_decimal("99999999999999999999999999999999999999", 0),
            Ok(99_999_999_999_999_999_999_999_999_999_999_999_999)
        );
    }

    #[test]
    fn dates_and_times_count_from_the_unix_epoch() {
        assert_eq!(parse_date("1970-01-02"), Ok(Some(1)));
        assert_eq!(parse_date("0000-00-00"), Ok(None));
        assert_eq!(
            parse_timestamp("1970-01-01 00:00:01.5"),
            Ok(Some(1_500_000))
        );
        assert!(parse_timestamp("yesterday").is_err());
    }

    #[test]
    fn wide_decimals_stay_exact_as_text() {
        assert_eq!(Kind::decimal(65, 30), Kind::Text);
        assert_eq!(
            Kind::decimal(10, 2).data_type(),
            DataType::Decimal128(10, 2)
        );
    }
}
