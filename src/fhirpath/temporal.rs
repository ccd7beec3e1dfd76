//! Partial dates, date-times and times, as FHIR and FHIRPath have them.
//!
//! FHIR allows `2019`, `2019-03` and `2019-03-12T10:15:00+01:00`: a value knows its precision, and two
//! values compare only as far as both are precise (`@2019 = @2019-03` is empty, not false). Boundaries
//! (`lowBoundary`, `highBoundary`) turn a partial value into the first or last instant it may mean.

use std::cmp::Ordering;
use std::fmt;

use chrono::{Datelike, NaiveDate};

/// How far a date-time is specified. Seconds include any fraction (FHIRPath compares them together).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Precision {
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
}

/// A date or date-time with its precision and, when it has a time, its UTC offset in minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTimeValue {
    pub year: i32,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub nanos: u32,
    /// Digits written after the decimal point of the seconds (0 when none).
    pub fraction_digits: u8,
    pub precision: Precision,
    pub offset_minutes: Option<i32>,
}

/// A time of day with its precision (hour, minute or second).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeValue {
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub nanos: u32,
    pub fraction_digits: u8,
    pub precision: Precision,
}

/// Reads exactly `n` ASCII digits.
fn digits(s: &str, n: usize) -> Option<(u32, &str)> {
    if s.len() < n || !s.as_bytes()[..n].iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some((s[..n].parse().ok()?, &s[n..]))
}

/// Seconds with an optional fraction: returns (second, nanos, fraction digits, rest).
fn seconds(s: &str) -> Option<(u32, u32, u8, &str)> {
    let (second, rest) = digits(s, 2)?;
    let Some(fraction) = rest.strip_prefix('.') else {
        return Some((second, 0, 0, rest));
    };
    let len = fraction.bytes().take_while(u8::is_ascii_digit).count();
    if len == 0 {
        return None;
    }
    let mut nanos: u32 = 0;
    for (i, b) in fraction.as_bytes()[..len.min(9)].iter().enumerate() {
        nanos += u32::from(b - b'0') * 10u32.pow(8 - i as u32);
    }
    Some((second, nanos, len.min(9) as u8, &fraction[len..]))
}

fn time_parts(s: &str) -> Option<(TimeValue, &str)> {
    let (hour, rest) = digits(s, 2)?;
    let mut time = TimeValue {
        hour,
        minute: 0,
        second: 0,
        nanos: 0,
        fraction_digits: 0,
        precision: Precision::Hour,
    };
    let Some(rest) = rest.strip_prefix(':') else {
        return Some((time, rest));
    };
    let (minute, rest) = digits(rest, 2)?;
    time.minute = minute;
    time.precision = Precision::Minute;
    let Some(rest) = rest.strip_prefix(':') else {
        return Some((time, rest));
    };
    let (second, nanos, fraction_digits, rest) = seconds(rest)?;
    (
        time.second,
        time.nanos,
        time.fraction_digits,
        time.precision,
    ) = (second, nanos, fraction_digits, Precision::Second);
    (hour < 24 && minute < 60 && second < 60).then_some((time, rest))
}

impl DateTimeValue {
    /// Parses a FHIR `date`, `dateTime` or `instant` string.
    pub fn parse(s: &str) -> Option<Self> {
        let (value, rest) = Self::parse_prefix(s)?;
        rest.is_empty().then_some(value)
    }

    /// Parses the text after `@` in a FHIRPath literal, which may end in a bare `T` (`@2019T`).
    pub fn parse_literal(s: &str) -> Option<Self> {
        Self::parse(s.strip_suffix('T').unwrap_or(s))
    }

    fn parse_prefix(s: &str) -> Option<(Self, &str)> {
        let (year, rest) = digits(s, 4)?;
        let mut value = DateTimeValue {
            year: year as i32,
            month: 1,
            day: 1,
            hour: 0,
            minute: 0,
            second: 0,
            nanos: 0,
            fraction_digits: 0,
            precision: Precision::Year,
            offset_minutes: None,
        };
        let Some(rest) = rest.strip_prefix('-') else {
            return Some((value, rest));
        };
        let (month, rest) = digits(rest, 2)?;
        if !(1..=12).contains(&month) {
            return None;
        }
        (value.month, value.precision) = (month, Precision::Month);
        let Some(rest) = rest.strip_prefix('-') else {
            return Some((value, rest));
        };
        let (day, rest) = digits(rest, 2)?;
        NaiveDate::from_ymd_opt(value.year, month, day)?;
        (value.day, value.precision) = (day, Precision::Day);
        let Some(rest) = rest.strip_prefix('T') else {
            return Some((value, rest));
        };
        let (time, rest) = time_parts(rest)?;
        (value.hour, value.minute, value.second, value.nanos) =
            (time.hour, time.minute, time.second, time.nanos);
        (value.fraction_digits, value.precision) = (time.fraction_digits, time.precision);
        let rest = if let Some(rest) = rest.strip_prefix('Z') {
            value.offset_minutes = Some(0);
            rest
        } else if let Some(sign) = rest.chars().next().filter(|c| *c == '+' || *c == '-') {
            let (hours, after) = digits(&rest[1..], 2)?;
            let (minutes, after) = digits(after.strip_prefix(':')?, 2)?;
            let total = (hours * 60 + minutes) as i32;
            value.offset_minutes = Some(if sign == '-' { -total } else { total });
            after
        } else {
            rest
        };
        Some((value, rest))
    }

    pub fn has_time(&self) -> bool {
        self.precision > Precision::Day
    }

    /// Seconds since the epoch of the value as written (its missing parts at their lowest), in UTC
    /// when it has an offset, plus nanoseconds.
    fn epoch(&self) -> (i64, u32) {
        let date = NaiveDate::from_ymd_opt(self.year, self.month, self.day).unwrap_or_default();
        let days = i64::from(date.num_days_from_ce()) - 719_163;
        let seconds = days * 86_400 + i64::from(self.hour * 3600 + self.minute * 60 + self.second)
            - i64::from(self.offset_minutes.unwrap_or(0)) * 60;
        (seconds, self.nanos)
    }

    /// Microseconds since the Unix epoch in UTC, of the first instant the value may mean (a value
    /// without an offset is read as UTC).
    pub fn to_utc_micros(&self) -> i64 {
        let (seconds, nanos) = self.epoch();
        seconds * 1_000_000 + i64::from(nanos / 1_000)
    }

    /// Days since the Unix epoch of the value's first day.
    pub fn to_epoch_days(&self) -> i32 {
        let date = NaiveDate::from_ymd_opt(self.year, self.month, self.day).unwrap_or_default();
        date.num_days_from_ce() - 719_163
    }

    /// FHIRPath ordering: by instant where both have a time and an offset, otherwise part by part;
    /// `None` when the values agree as far as the less precise one goes but their precisions differ.
    pub fn compare(&self, other: &Self) -> Option<Ordering> {
        let (a, b) = if self.has_time() && other.has_time() {
            (self.normalized(), other.normalized())
        } else {
            (*self, *other)
        };
        let parts = |v: &Self| {
            [
                v.year as i64,
                v.month.into(),
                v.day.into(),
                v.hour.into(),
                v.minute.into(),
                v.second.into(),
            ]
        };
        let common = a.precision.min(b.precision) as usize;
        compare_parts(
            &parts(&a)[..=common],
            &parts(&b)[..=common],
            a.precision == b.precision,
            a.nanos,
            b.nanos,
        )
    }

    /// The same instant in UTC (a value without an offset is taken as UTC).
    fn normalized(&self) -> Self {
        if self.offset_minutes.unwrap_or(0) == 0 {
            return *self;
        }
        let (seconds, _) = self.epoch();
        let utc = chrono::DateTime::from_timestamp(seconds, 0)
            .unwrap_or_default()
            .naive_utc();
        DateTimeValue {
            year: utc.year(),
            month: utc.month(),
            day: utc.day(),
            hour: chrono::Timelike::hour(&utc),
            minute: chrono::Timelike::minute(&utc),
            second: chrono::Timelike::second(&utc),
            offset_minutes: Some(0),
            ..*self
        }
    }

    /// The earliest instant the value may mean, to the millisecond. Without an offset the earliest
    /// offset in use (+14:00) is assumed, as FHIRPath specifies.
    pub fn low_boundary(&self) -> Self {
        let mut low = *self;
        if self.precision < Precision::Month {
            low.month = 1;
        }
        if self.precision < Precision::Day {
            low.day = 1;
        }
        low.precision = Precision::Second;
        low.fraction_digits = low.fraction_digits.max(3);
        if self.has_time() || self.offset_minutes.is_none() {
            low.offset_minutes = Some(self.offset_minutes.unwrap_or(14 * 60));
        }
        low
    }

    /// The latest instant the value may mean, to the millisecond (-12:00 when no offset is given).
    pub fn high_boundary(&self) -> Self {
        let mut high = *self;
        if self.precision < Precision::Month {
            high.month = 12;
        }
        if self.precision < Precision::Day {
            high.day = days_in_month(high.year, high.month);
        }
        if self.precision < Precision::Hour {
            high.hour = 23;
        }
        if self.precision < Precision::Minute {
            high.minute = 59;
        }
        if self.precision < Precision::Second {
            high.second = 59;
            high.nanos = 999_000_000;
        } else {
            high.nanos = high_nanos(self.nanos, self.fraction_digits);
        }
        high.precision = Precision::Second;
        high.fraction_digits = high.fraction_digits.max(3);
        high.offset_minutes = Some(self.offset_minutes.unwrap_or(-12 * 60));
        high
    }

    /// The first and last day of a partial date.
    pub fn date_boundary(&self, high: bool) -> Self {
        let mut value = if high {
            self.high_boundary()
        } else {
            self.low_boundary()
        };
        value.precision = Precision::Day;
        value.offset_minutes = None;
        value
    }
}

/// FHIRPath comparison of two values part by part, as far as both are precise: unknown (`None`)
/// when they agree that far but one is more precise; sub-seconds decide only at equal precision.
fn compare_parts<T: Ord>(
    a: &[T],
    b: &[T],
    same_precision: bool,
    a_nanos: u32,
    b_nanos: u32,
) -> Option<Ordering> {
    match a.cmp(b) {
        Ordering::Equal if !same_precision => None,
        Ordering::Equal => Some(a_nanos.cmp(&b_nanos)),
        unequal => Some(unequal),
    }
}

/// The last millisecond a fraction written with `digits` digits may mean (`.5` → `.599`).
fn high_nanos(nanos: u32, digits: u8) -> u32 {
    if digits >= 3 {
        nanos
    } else {
        nanos + 10u32.pow(9 - u32::from(digits)) - 1_000_000
    }
}

fn days_in_month(year: i32, month: u32) -> u32 {
    let (next_year, next_month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    NaiveDate::from_ymd_opt(next_year, next_month, 1)
        .and_then(|d| d.pred_opt())
        .map_or(28, |d| d.day())
}

impl fmt::Display for DateTimeValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}", self.year)?;
        if self.precision >= Precision::Month {
            write!(f, "-{:02}", self.month)?;
        }
        if self.precision >= Precision::Day {
            write!(f, "-{:02}", self.day)?;
        }
        if self.has_time() {
            let time = TimeValue {
                hour: self.hour,
                minute: self.minute,
                second: self.second,
                nanos: self.nanos,
                fraction_digits: self.fraction_digits,
                precision: self.precision,
            };
            write!(f, "T{time}")?;
        }
        match self.offset_minutes {
            Some(0) if self.has_time() => write!(f, "Z"),
            Some(offset) if self.has_time() => {
                let sign = if offset < 0 { '-' } else { '+' };
                write!(f, "{sign}{:02}:{:02}", offset.abs() / 60, offset.abs() % 60)
            }
            _ => Ok(()),
        }
    }
}

fn write_fraction(f: &mut fmt::Formatter<'_>, nanos: u32, digits: u8) -> fmt::Result {
    if digits == 0 {
        return Ok(());
    }
    let text = format!("{nanos:09}");
    write!(f, ".{}", &text[..usize::from(digits)])
}

impl TimeValue {
    /// Parses a FHIR `time` (`hh:mm:ss`) or a FHIRPath time literal (`hh`, `hh:mm`, ...).
    pub fn parse(s: &str) -> Option<Self> {
        let (time, rest) = time_parts(s)?;
        rest.is_empty().then_some(time)
    }

    /// Nanoseconds since midnight.
    pub fn to_nanos(&self) -> i64 {
        (i64::from(self.hour) * 3600 + i64::from(self.minute) * 60 + i64::from(self.second))
            * 1_000_000_000
            + i64::from(self.nanos)
    }

    pub fn compare(&self, other: &Self) -> Option<Ordering> {
        let parts = |t: &Self| [t.hour, t.minute, t.second];
        let common = (self.precision.min(other.precision) as usize) - Precision::Hour as usize;
        let (a, b) = (parts(self), parts(other));
        compare_parts(
            &a[..=common],
            &b[..=common],
            self.precision == other.precision,
            self.nanos,
            other.nanos,
        )
    }

    pub fn boundary(&self, high: bool) -> Self {
        let mut t = *self;
        if high {
            if self.precision < Precision::Minute {
                t.minute = 59;
            }
            if self.precision < Precision::Second {
                t.second = 59;
            }
            t.nanos = if self.precision < Precision::Second {
                999_000_000
            } else {
                high_nanos(self.nanos, self.fraction_digits)
            };
        }
        t.precision = Precision::Second;
        t.fraction_digits = t.fraction_digits.max(3);
        t
    }
}

impl fmt::Display for TimeValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}", self.hour)?;
        if self.precision >= Precision::Minute {
            write!(f, ":{:02}", self.minute)?;
        }
        if self.precision >= Precision::Second {
            write!(f, ":{:02}", self.second)?;
            write_fraction(f, self.nanos, self.fraction_digits)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dt(s: &str) -> DateTimeValue {
        DateTimeValue::parse(s).unwrap_or_else(|| panic!("{s}"))
    }

    #[test]
    fn parses_every_fhir_precision_and_rejects_nonsense() {
        assert_eq!(dt("2019").precision, Precision::Year);
        assert_eq!(dt("2019-03").precision, Precision::Month);
        assert_eq!(dt("2019-03-12").precision, Precision::Day);
        assert_eq!(
            dt("2019-03-12T10:15:00.123+01:00").to_string(),
            "2019-03-12T10:15:00.123+01:00"
        );
        for bad in [
            "19",
            "2019-13",
            "2019-02-30",
            "2019-03-12T25:00:00Z",
            "2019/03/12",
            "2019-03-12T10:15:00+1",
        ] {
            assert!(DateTimeValue::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn comparison_respects_offsets_and_precision() {
        assert_eq!(
            dt("2015-02-07T13:28:17+02:00").compare(&dt("2015-02-07T11:28:17Z")),
            Some(Ordering::Equal)
        );
        assert_eq!(
            dt("2016-11-12").compare(&dt("2016-11-12")),
            Some(Ordering::Equal)
        );
        assert_eq!(dt("2016-11").compare(&dt("2016-11-12")), None);
        assert_eq!(
            dt("2016-10").compare(&dt("2016-11-12")),
            Some(Ordering::Less)
        );
    }

    #[test]
    fn boundaries() {
        assert_eq!(
            dt("2010-10-10").low_boundary().to_string(),
            "2010-10-10T00:00:00.000+14:00"
        );
        assert_eq!(
            dt("2010-10-10").high_boundary().to_string(),
            "2010-10-10T23:59:59.999-12:00"
        );
        assert_eq!(dt("1970-06").date_boundary(false).to_string(), "1970-06-01");
        assert_eq!(dt("1970-06").date_boundary(true).to_string(), "1970-06-30");
        assert_eq!(dt("2024-02").date_boundary(true).to_string(), "2024-02-29");
        let time = TimeValue::parse("12:34:00").unwrap();
        assert_eq!(time.boundary(false).to_string(), "12:34:00.000");
        assert_eq!(time.boundary(true).to_string(), "12:34:00.999");
    }

    #[test]
    fn utc_micros_of_an_instant() {
        assert_eq!(dt("1970-01-01T01:00:00+01:00").to_utc_micros(), 0);
        assert_eq!(dt("1970-01-02").to_epoch_days(), 1);
    }
}
