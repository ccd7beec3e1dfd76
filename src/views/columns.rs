//! Column types: FHIR primitive types to Arrow types, and cells to Arrow arrays.
//!
//! `instant` and `dateTime` become UTC timestamps (microseconds); a partial date-time (`2019-03`) is
//! stored as the first instant it may mean, and the exact text stays in bronze. `date` becomes a
//! Date32 the same way. Decimals are Decimal128(38, 18): exact for every FHIR decimal with up to 20
//! integer digits and 18 fraction digits; more fraction digits is an error, never a silent rounding.

use std::sync::Arc;

use deltalake::arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Decimal128Array, Int32Array, Int64Array, ListArray,
    StringArray, Time64MicrosecondArray, TimestampMicrosecondArray,
};
use deltalake::arrow::buffer::OffsetBuffer;
use deltalake::arrow::datatypes::{DataType, Field, TimeUnit};
use rust_decimal::Decimal;

use crate::fhirpath::{DateTimeValue, Item, TimeValue};

pub const DECIMAL_PRECISION: u8 = 38;
pub const DECIMAL_SCALE: u8 = 18;

/// The type of a column, from its `type` in the ViewDefinition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Boolean,
    /// `integer`, `positiveInt`, `unsignedInt`: 32-bit in FHIR.
    Integer,
    Integer64,
    Decimal,
    /// Every string-like type (`string`, `code`, `id`, `uri`, ...); also a column without a type,
    /// which holds the value's text (or its JSON for a complex value).
    String,
    Date,
    /// `dateTime` and `instant`.
    Timestamp,
    Time,
}

impl ColumnType {
    pub fn from_fhir(type_name: Option<&str>) -> Result<Self, String> {
        Ok(match type_name {
            None => ColumnType::String,
            Some("boolean") => ColumnType::Boolean,
            Some("integer" | "positiveInt" | "unsignedInt") => ColumnType::Integer,
            Some("integer64") => ColumnType::Integer64,
            Some("decimal") => ColumnType::Decimal,
            Some("date") => ColumnType::Date,
            Some("dateTime" | "instant") => ColumnType::Timestamp,
            Some("time") => ColumnType::Time,
            Some(
                "string" | "code" | "id" | "uri" | "url" | "canonical" | "oid" | "uuid"
                | "markdown" | "base64Binary",
            ) => ColumnType::String,
            Some(other) => {
                return Err(format!(
                    "unsupported column type '{other}' (use a FHIR primitive type)"
                ));
            }
        })
    }

    pub fn data_type(self) -> DataType {
        match self {
            ColumnType::Boolean => DataType::Boolean,
            ColumnType::Integer => DataType::Int32,
            ColumnType::Integer64 => DataType::Int64,
            ColumnType::Decimal => DataType::Decimal128(DECIMAL_PRECISION, DECIMAL_SCALE as i8),
            ColumnType::String => DataType::Utf8,
            ColumnType::Date => DataType::Date32,
            ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            ColumnType::Time => DataType::Time64(TimeUnit::Microsecond),
        }
    }

    /// One item as a cell of this type, or why it cannot be one.
    pub fn cell(self, item: &Item) -> Result<Cell, String> {
        let value = item.primitive();
        let mismatch = || {
            format!(
                "expected {self:?}, found {}",
                value.type_name().unwrap_or("a complex value")
            )
        };
        Ok(match self {
            ColumnType::Boolean => match value {
                Item::Boolean(b) => Cell::Boolean(b),
                _ => return Err(mismatch()),
            },
            ColumnType::Integer | ColumnType::Integer64 => match value {
                Item::Integer(i) if self == ColumnType::Integer64 || i32::try_from(i).is_ok() => {
                    Cell::Integer(i)
                }
                _ => return Err(mismatch()),
            },
            ColumnType::Decimal => {
                let d = match value {
                    Item::Integer(i) => Decimal::from(i),
                    Item::Decimal(d) => d,
                    _ => return Err(mismatch()),
                };
                Cell::Decimal(
                    decimal_to_i128(d)
                        .ok_or_else(|| format!("decimal {d} does not fit decimal(38, 18)"))?,
                )
            }
            ColumnType::String => match value.to_text() {
                Some(text) => Cell::String(text.into_owned()),
                None => Cell::String(item.json().map(|j| j.to_string()).unwrap_or_default()),
            },
            ColumnType::Date => Cell::Date(temporal(&value).ok_or_else(mismatch)?.to_epoch_days()),
            ColumnType::Timestamp => {
                Cell::Timestamp(temporal(&value).ok_or_else(mismatch)?.to_utc_micros())
            }
            ColumnType::Time => match value {
                Item::Time(t) => Cell::Time(t.to_nanos() / 1_000),
                Item::String(ref s) => {
                    Cell::Time(TimeValue::parse(s).ok_or_else(mismatch)?.to_nanos() / 1_000)
                }
                _ => return Err(mismatch()),
            },
        })
    }
}

fn temporal(item: &Item) -> Option<DateTimeValue> {
    match item {
        Item::Date(d) | Item::DateTime(d) => Some(*d),
        Item::String(s) => DateTimeValue::parse(s),
        _ => None,
    }
}

/// A decimal as the unscaled integer of decimal(38, 18), if it fits without rounding.
pub fn decimal_to_i128(d: Decimal) -> Option<i128> {
    let scale = d.scale();
    if scale > u32::from(DECIMAL_SCALE) {
        let rounded = d.round_dp(u32::from(DECIMAL_SCALE));
        return (rounded == d).then(|| decimal_to_i128(rounded)).flatten();
    }
    d.mantissa()
        .checked_mul(10i128.checked_pow(u32::from(DECIMAL_SCALE) - scale)?)
}

/// One value of a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Boolean(bool),
    Integer(i64),
    /// Unscaled decimal(38, 18).
    Decimal(i128),
    String(String),
    /// Days since 1970-01-01.
    Date(i32),
    /// Microseconds since the epoch, UTC.
    Timestamp(i64),
    /// Microseconds since midnight.
    Time(i64),
    List(Vec<Cell>),
}

/// The Arrow field of a column.
pub fn field(name: &str, column_type: ColumnType, collection: bool) -> Field {
    let data_type = column_type.data_type();
    if collection {
        Field::new(
            name,
            DataType::List(Arc::new(Field::new("item", data_type, true))),
            true,
        )
    } else {
        Field::new(name, data_type, true)
    }
}

/// Builds one Arrow array from a column's cells.
pub fn array(column_type: ColumnType, collection: bool, cells: &[Cell]) -> ArrayRef {
    if collection {
        let mut offsets = Vec::with_capacity(cells.len());
        let mut values = Vec::new();
        let mut valid = Vec::with_capacity(cells.len());
        for cell in cells {
            match cell {
                Cell::List(items) => {
                    offsets.push(items.len());
                    values.extend(items.iter().cloned());
                    valid.push(true);
                }
                _ => {
                    offsets.push(0);
                    valid.push(false);
                }
            }
        }
        let item_field = Arc::new(Field::new("item", column_type.data_type(), true));
        let values = array(column_type, false, &values);
        return Arc::new(ListArray::new(
            item_field,
            OffsetBuffer::from_lengths(offsets),
            values,
            Some(valid.into()),
        ));
    }
    macro_rules! collect {
        ($array:ty, $variant:ident) => {
            Arc::new(
                cells
                    .iter()
                    .map(|c| {
                        if let Cell::$variant(v) = c {
                            Some(v.clone())
                        } else {
                            None
                        }
                    })
                    .collect::<$array>(),
            )
        };
    }
    match column_type {
        ColumnType::Boolean => collect!(BooleanArray, Boolean),
        ColumnType::Integer => Arc::new(
            cells
                .iter()
                .map(|c| {
                    if let Cell::Integer(v) = c {
                        Some(*v as i32)
                    } else {
                        None
                    }
                })
                .collect::<Int32Array>(),
        ),
        ColumnType::Integer64 => collect!(Int64Array, Integer),
        ColumnType::Decimal => Arc::new(
            cells
                .iter()
                .map(|c| {
                    if let Cell::Decimal(v) = c {
                        Some(*v)
                    } else {
                        None
                    }
                })
                .collect::<Decimal128Array>()
                .with_precision_and_scale(DECIMAL_PRECISION, DECIMAL_SCALE as i8)
                .expect("38, 18 is a valid decimal type"),
        ),
        ColumnType::String => Arc::new(
            cells
                .iter()
                .map(|c| {
                    if let Cell::String(v) = c {
                        Some(v.as_str())
                    } else {
                        None
                    }
                })
                .collect::<StringArray>(),
        ),
        ColumnType::Date => collect!(Date32Array, Date),
        ColumnType::Timestamp => Arc::new(
            cells
                .iter()
                .map(|c| {
                    if let Cell::Timestamp(v) = c {
                        Some(*v)
                    } else {
                        None
                    }
                })
                .collect::<TimestampMicrosecondArray>()
                .with_timezone("UTC"),
        ),
        ColumnType::Time => collect!(Time64MicrosecondArray, Time),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_exact_or_refused() {
        assert_eq!(
            decimal_to_i128("91.5".parse().unwrap()),
            Some(91_500_000_000_000_000_000)
        );
        assert_eq!(
            decimal_to_i128("0.1234567890123456789".parse().unwrap()),
            None
        );
        assert_eq!(
            decimal_to_i128("1.5000000000000000000".parse().unwrap()),
            Some(1_500_000_000_000_000_000)
        );
    }

    #[test]
    fn partial_date_times_store_their_first_instant() {
        let item = Item::string("2019-03");
        assert_eq!(ColumnType::Date.cell(&item), Ok(Cell::Date(17_956)));
        assert_eq!(
            ColumnType::Timestamp.cell(&Item::string("1970-01-01T00:00:01Z")),
            Ok(Cell::Timestamp(1_000_000))
        );
        assert!(
            ColumnType::Timestamp
                .cell(&Item::string("yesterday"))
                .is_err()
        );
    }
}
