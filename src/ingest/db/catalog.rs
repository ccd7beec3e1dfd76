//! What a source database holds, as both sources describe it: tables, their columns with the
//! [`Kind`] each maps to (or why it cannot be read), the primary key, and the incremental cursor.

use super::columns::Kind;

/// One column of a source table.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    /// The type as the source names it (`numeric(10,2)`, `int unsigned`), for messages.
    pub source_type: String,
    /// How it lands, or why it cannot.
    pub kind: Result<Kind, String>,
    /// The SQL that selects it (a cast where the source's own form is not the one we decode).
    pub select: String,
    /// MySQL `AUTO_INCREMENT`, PostgreSQL identity or serial.
    pub auto_increment: bool,
}

impl Column {
    pub fn is_supported(&self) -> bool {
        self.kind.is_ok()
    }
}

/// One source table (or view).
#[derive(Debug, Clone)]
pub struct Table {
    pub name: String,
    pub columns: Vec<Column>,
    /// Primary key columns, in key order; empty when the table has none.
    pub primary_key: Vec<String>,
}

/// How an incremental run finds new and changed rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub column: String,
    /// A timestamp catches updates and is compared with `>=` (rows sharing the last timestamp are
    /// read again and merge as no-ops); an increasing key catches inserts only, compared with `>`.
    pub is_timestamp: bool,
}

/// Column names that say "when this row last changed", in order of preference.
const UPDATED_AT_NAMES: &[&str] = &[
    "updated_at",
    "modified_at",
    "last_modified",
    "last_updated",
    "last_update",
    "updated_on",
    "modified_on",
    "changed_at",
    "updated",
    "modified",
];

impl Table {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
    }

    /// The configured cursor column, else an `updated_at`-like timestamp, else a single-column
    /// auto-increment key. `Err` when the configured column is missing or not usable.
    pub fn cursor(&self, configured: Option<&str>) -> Result<Option<Cursor>, String> {
        let usable = |column: &Column| match &column.kind {
            Ok(Kind::Timestamp { .. }) => Some(Cursor {
                column: column.name.clone(),
                is_timestamp: true,
            }),
            Ok(Kind::Int8 | Kind::Int16 | Kind::Int32 | Kind::Int64) => Some(Cursor {
                column: column.name.clone(),
                is_timestamp: false,
            }),
            _ => None,
        };
        if let Some(name) = configured {
            let column = self
                .column(name)
                .ok_or_else(|| format!("cursor column {}.{name} does not exist", self.name))?;
            return usable(column).map(Some).ok_or_else(|| {
                format!(
                    "cursor column {}.{name} is {}: a cursor must be a timestamp or an integer",
                    self.name, column.source_type
                )
            });
        }
        for name in UPDATED_AT_NAMES {
            if let Some(column) = self.column(name)
                && matches!(column.kind, Ok(Kind::Timestamp { .. }))
            {
                return Ok(usable(column));
            }
        }
        if let [key] = self.primary_key.as_slice()
            && let Some(column) = self.column(key)
            && column.auto_increment
        {
            return Ok(usable(column));
        }
        Ok(None)
    }
}

/// Whether `name` matches a shell-style pattern (`*` any run, `?` one character), ignoring case.
pub fn matches_pattern(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

/// Whether a table is extracted: it matches an include pattern (none given: every table) and no
/// exclude pattern.
pub fn is_selected(name: &str, include: &[String], exclude: &[String]) -> bool {
    (include.is_empty() || include.iter().any(|p| matches_pattern(p, name)))
        && !exclude.iter().any(|p| matches_pattern(p, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, kind: Kind, auto_increment: bool) -> Column {
        Column {
            name: name.into(),
            source_type: "t".into(),
            kind: Ok(kind),
            select: name.into(),
            auto_increment,
        }
    }

    #[test]
    fn patterns_select_tables() {
        assert!(matches_pattern("pat*", "patients"));
        assert!(matches_pattern("*", "x"));
        assert!(matches_pattern("shift?", "SHIFTS"));
        assert!(!matches_pattern("pat*", "doctors"));
        assert!(is_selected("events", &[], &["tmp_*".into()]));
        assert!(!is_selected("tmp_load", &[], &["tmp_*".into()]));
        assert!(!is_selected("events", &["patients".into()], &[]));
    }

    #[test]
    fn the_cursor_prefers_an_updated_at_timestamp_then_an_auto_increment_key() {
        let mut table = Table {
            name: "events".into(),
            columns: vec![
                column("id", Kind::Int64, true),
                column("updated_at", Kind::Timestamp { utc: false }, false),
                column("note", Kind::Text, false),
            ],
            primary_key: vec!["id".into()],
        };
        assert_eq!(table.cursor(None).unwrap().unwrap().column, "updated_at");
        assert_eq!(table.cursor(Some("id")).unwrap().unwrap().column, "id");
        assert!(table.cursor(Some("note")).is_err());
        assert!(table.cursor(Some("nope")).is_err());
        table.columns.remove(1);
        let cursor = table.cursor(None).unwrap().unwrap();
        assert_eq!((cursor.column.as_str(), cursor.is_timestamp), ("id", false));
        table.columns[0].auto_increment = false;
        assert_eq!(table.cursor(None).unwrap(), None);
    }
}
