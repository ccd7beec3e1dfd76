//! The function table: every FHIRPath function the engine knows, one entry each.
//!
//! The parser resolves names here (an unknown name is a parse error), checks the argument count, and
//! the evaluator calls the entry's `eval`. Adding a function, as profile validation will, is one entry
//! and one small function; no call site changes.

use std::borrow::Cow;

use rust_decimal::Decimal;
use serde_json::Value as Json;
use smallvec::smallvec;

use super::eval::{Env, EvalError, Frame, eval, fail, singleton, to_boolean};
use super::parse::Expr;
use super::temporal::Precision;
use super::value::{self, Collection, Item};

/// One function: its name, how many arguments it takes, and how it runs.
pub struct Function {
    pub name: &'static str,
    pub min_args: usize,
    pub max_args: usize,
    /// The first argument is a type name (`ofType(Quantity)`), not an expression.
    pub type_argument: bool,
    pub eval: for<'c, 'a> fn(&Call<'c, 'a>) -> Result<Collection<'a>, EvalError>,
}

impl std::fmt::Debug for Function {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}()", self.name)
    }
}

/// One call of a function: its input collection and its unevaluated arguments.
pub struct Call<'c, 'a> {
    pub input: Collection<'a>,
    pub args: &'a [Expr],
    pub frame: Frame<'c, 'a>,
    pub env: &'c Env<'c, 'a>,
}

impl<'a> Call<'_, 'a> {
    /// Argument `i`, evaluated in the context the function was called from.
    fn arg(&self, i: usize) -> Result<Collection<'a>, EvalError> {
        eval(&self.args[i], self.frame, self.env)
    }

    /// Argument `i` evaluated once with `item` as `$this` (for `where`, `select`, `all`, ...).
    fn for_item(
        &self,
        i: usize,
        item: &Item<'a>,
        index: usize,
    ) -> Result<Collection<'a>, EvalError> {
        let this = std::slice::from_ref(item);
        eval(
            &self.args[i],
            Frame {
                this,
                index: Some(index),
                total: None,
            },
            self.env,
        )
    }

    fn string_arg(&self, i: usize) -> Result<Option<String>, EvalError> {
        let value = self.arg(i)?;
        Ok(singleton(&value, "argument")?
            .and_then(Item::to_text)
            .map(Cow::into_owned))
    }

    fn integer_arg(&self, i: usize) -> Result<Option<i64>, EvalError> {
        let value = self.arg(i)?;
        match singleton(&value, "argument")?.map(Item::primitive) {
            None => Ok(None),
            Some(Item::Integer(n)) => Ok(Some(n)),
            Some(_) => fail("the argument must be an integer"),
        }
    }

    fn type_arg(&self) -> &str {
        self.args[0].type_name().unwrap_or_default()
    }

    /// The input's single item as a string, if it has one.
    fn input_text(&self) -> Result<Option<Cow<'a, str>>, EvalError> {
        Ok(singleton(&self.input, "input")?.and_then(Item::to_text))
    }
}

macro_rules! function {
    ($name:literal, $min:literal..=$max:literal, $eval:expr) => {
        Function {
            name: $name,
            min_args: $min,
            max_args: $max,
            type_argument: false,
            eval: $eval,
        }
    };
    ($name:literal, type, $eval:expr) => {
        Function {
            name: $name,
            min_args: 1,
            max_args: 1,
            type_argument: true,
            eval: $eval,
        }
    };
}

/// The table, sorted by name for binary search.
static FUNCTIONS: &[Function] = &[
    function!("abs", 0..=0, |c| numeric(c, |d| Some(d.abs()))),
    function!("all", 1..=1, all),
    function!("allFalse", 0..=0, |c| all_booleans(c, false, true)),
    function!("allTrue", 0..=0, |c| all_booleans(c, true, true)),
    function!("anyFalse", 0..=0, |c| all_booleans(c, false, false)),
    function!("anyTrue", 0..=0, |c| all_booleans(c, true, false)),
    function!("as", type, |c| Ok(c
        .input
        .iter()
        .filter(|i| i.is_type(c.type_arg()))
        .cloned()
        .collect())),
    function!("ceiling", 0..=0, |c| numeric(c, |d| Some(d.ceil()))),
    function!("children", 0..=0, children),
    function!("combine", 1..=1, |c| Ok(c
        .input
        .iter()
        .cloned()
        .chain(c.arg(0)?)
        .collect())),
    function!("contains", 1..=1, |c| text_test(c, |s, a| s.contains(a))),
    function!("count", 0..=0, |c| Ok(smallvec![Item::Integer(
        c.input.len() as i64
    )])),
    function!("descendants", 0..=0, descendants),
    function!("distinct", 0..=0, |c| Ok(distinct(c.input.clone()))),
    function!("empty", 0..=0, |c| Ok(smallvec![Item::Boolean(
        c.input.is_empty()
    )])),
    function!("endsWith", 1..=1, |c| text_test(c, |s, a| s.ends_with(a))),
    function!("exclude", 1..=1, |c| {
        let other = c.arg(0)?;
        Ok(c.input
            .iter()
            .filter(|i| !other.iter().any(|o| value::equals(i, o) == Some(true)))
            .cloned()
            .collect())
    }),
    function!("exists", 0..=1, exists),
    function!("extension", 1..=1, extension),
    function!("first", 0..=0, |c| Ok(c
        .input
        .first()
        .cloned()
        .into_iter()
        .collect())),
    function!("floor", 0..=0, |c| numeric(c, |d| Some(d.floor()))),
    function!("getReferenceKey", 0..=1, get_reference_key),
    function!("getResourceKey", 0..=0, get_resource_key),
    function!("hasValue", 0..=0, |c| {
        let has =
            matches!(c.input.as_slice(), [item] if !matches!(item.primitive(), Item::Node(..)));
        Ok(smallvec![Item::Boolean(has)])
    }),
    function!("highBoundary", 0..=1, |c| boundary(c, true)),
    function!("iif", 2..=3, iif),
    function!("indexOf", 1..=1, |c| {
        let (Some(s), Some(a)) = (c.input_text()?, c.string_arg(0)?) else {
            return Ok(Collection::new());
        };
        Ok(smallvec![Item::Integer(
            s.find(&a).map_or(-1, |i| s[..i].chars().count() as i64),
        )])
    }),
    function!("intersect", 1..=1, |c| {
        let other = c.arg(0)?;
        Ok(distinct(
            c.input
                .iter()
                .filter(|i| other.iter().any(|o| value::equals(i, o) == Some(true)))
                .cloned()
                .collect(),
        ))
    }),
    function!("is", type, |c| Ok(singleton(&c.input, "is")?
        .map(|i| Item::Boolean(i.is_type(c.type_arg())))
        .into_iter()
        .collect())),
    function!("isDistinct", 0..=0, |c| Ok(smallvec![Item::Boolean(
        distinct(c.input.clone()).len() == c.input.len()
    )])),
    function!("join", 0..=1, join),
    function!("last", 0..=0, |c| Ok(c
        .input
        .last()
        .cloned()
        .into_iter()
        .collect())),
    function!("length", 0..=0, |c| Ok(c
        .input_text()?
        .map(|s| Item::Integer(s.chars().count() as i64))
        .into_iter()
        .collect())),
    function!("lowBoundary", 0..=1, |c| boundary(c, false)),
    function!("lower", 0..=0, |c| Ok(c
        .input_text()?
        .map(|s| Item::string(s.to_lowercase()))
        .into_iter()
        .collect())),
    function!("matches", 1..=1, |c| {
        let (Some(s), Some(pattern)) = (c.input_text()?, c.string_arg(0)?) else {
            return Ok(Collection::new());
        };
        let regex = regex::Regex::new(&pattern)
            .map_err(|e| EvalError(format!("bad regular expression: {e}")))?;
        Ok(smallvec![Item::Boolean(regex.is_match(&s))])
    }),
    function!("not", 0..=0, |c| Ok(to_boolean(&c.input, "not()")?
        .map(|b| Item::Boolean(!b))
        .into_iter()
        .collect())),
    function!("now", 0..=0, |_| {
        let now = chrono::Utc::now()
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string();
        Ok(super::temporal::DateTimeValue::parse(&now)
            .map(Item::DateTime)
            .into_iter()
            .collect())
    }),
    function!("ofType", type, |c| Ok(c
        .input
        .iter()
        .filter(|i| i.is_type(c.type_arg()))
        .cloned()
        .collect())),
    function!("repeat", 1..=1, repeat),
    function!("replace", 2..=2, |c| {
        let (Some(s), Some(from), Some(to)) = (c.input_text()?, c.string_arg(0)?, c.string_arg(1)?)
        else {
            return Ok(Collection::new());
        };
        Ok(smallvec![Item::string(s.replace(&from, &to))])
    }),
    function!("round", 0..=1, |c| {
        let places = c
            .args
            .first()
            .map(|_| c.integer_arg(0))
            .transpose()?
            .flatten()
            .unwrap_or(0);
        numeric(c, |d| Some(d.round_dp(u32::try_from(places).ok()?)))
    }),
    function!("select", 1..=1, |c| {
        let mut out = Collection::new();
        for (i, item) in c.input.iter().enumerate() {
            out.extend(c.for_item(0, item, i)?);
        }
        Ok(out)
    }),
    function!("single", 0..=0, |c| Ok(singleton(&c.input, "single()")?
        .cloned()
        .into_iter()
        .collect())),
    function!("skip", 1..=1, |c| {
        let n = c.integer_arg(0)?.unwrap_or(0).max(0) as usize;
        Ok(c.input.iter().skip(n).cloned().collect())
    }),
    function!("startsWith", 1..=1, |c| text_test(c, |s, a| s
        .starts_with(a))),
    function!("substring", 1..=2, |c| {
        let Some(s) = c.input_text()? else {
            return Ok(Collection::new());
        };
        let Some(start) = c.integer_arg(0)? else {
            return Ok(Collection::new());
        };
        let length = if c.args.len() > 1 {
            c.integer_arg(1)?
        } else {
            None
        };
        let count = s.chars().count() as i64;
        if start < 0 || start >= count {
            return Ok(Collection::new());
        }
        let taken: String = s
            .chars()
            .skip(start as usize)
            .take(length.unwrap_or(count).max(0) as usize)
            .collect();
        Ok(smallvec![Item::string(taken)])
    }),
    function!("tail", 0..=0, |c| Ok(c
        .input
        .iter()
        .skip(1)
        .cloned()
        .collect())),
    function!("take", 1..=1, |c| {
        let n = c.integer_arg(0)?.unwrap_or(0).max(0) as usize;
        Ok(c.input.iter().take(n).cloned().collect())
    }),
    function!("toDecimal", 0..=0, |c| {
        Ok(singleton(&c.input, "toDecimal()")?
            .and_then(|i| match i.primitive() {
                Item::Integer(n) => Some(Decimal::from(n)),
                Item::Decimal(d) => Some(d),
                Item::String(s) => s.parse().ok(),
                Item::Boolean(b) => Some(Decimal::from(b as i64)),
                _ => None,
            })
            .map(Item::Decimal)
            .into_iter()
            .collect())
    }),
    function!("toInteger", 0..=0, |c| {
        Ok(singleton(&c.input, "toInteger()")?
            .and_then(|i| match i.primitive() {
                Item::Integer(n) => Some(n),
                Item::String(s) => s.parse().ok(),
                Item::Boolean(b) => Some(b as i64),
                _ => None,
            })
            .map(Item::Integer)
            .into_iter()
            .collect())
    }),
    function!("toString", 0..=0, |c| Ok(c
        .input_text()?
        .map(Item::String)
        .into_iter()
        .collect())),
    function!("today", 0..=0, |_| {
        let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
        Ok(super::temporal::DateTimeValue::parse(&today)
            .map(Item::Date)
            .into_iter()
            .collect())
    }),
    function!("trace", 1..=2, |c| Ok(c.input.clone())),
    function!("union", 1..=1, |c| Ok(distinct(
        c.input.iter().cloned().chain(c.arg(0)?).collect()
    ))),
    function!("upper", 0..=0, |c| Ok(c
        .input_text()?
        .map(|s| Item::string(s.to_uppercase()))
        .into_iter()
        .collect())),
    function!("where", 1..=1, |c| {
        let mut out = Collection::new();
        for (i, item) in c.input.iter().enumerate() {
            if to_boolean(&c.for_item(0, item, i)?, "where() criteria")? == Some(true) {
                out.push(item.clone());
            }
        }
        Ok(out)
    }),
];

/// The function called `name`, if the engine has it.
pub fn lookup(name: &str) -> Option<&'static Function> {
    FUNCTIONS
        .binary_search_by(|f| f.name.cmp(name))
        .ok()
        .map(|i| &FUNCTIONS[i])
}

fn distinct(items: Collection) -> Collection {
    let mut out: Collection = Collection::with_capacity(items.len());
    for item in items {
        if !out
            .iter()
            .any(|seen| value::equals(seen, &item) == Some(true))
        {
            out.push(item);
        }
    }
    out
}

fn exists<'a>(c: &Call<'_, 'a>) -> Result<Collection<'a>, EvalError> {
    if c.args.is_empty() {
        return Ok(smallvec![Item::Boolean(!c.input.is_empty())]);
    }
    for (i, item) in c.input.iter().enumerate() {
        if to_boolean(&c.for_item(0, item, i)?, "exists() criteria")? == Some(true) {
            return Ok(smallvec![Item::Boolean(true)]);
        }
    }
    Ok(smallvec![Item::Boolean(false)])
}

fn all<'a>(c: &Call<'_, 'a>) -> Result<Collection<'a>, EvalError> {
    for (i, item) in c.input.iter().enumerate() {
        if to_boolean(&c.for_item(0, item, i)?, "all() criteria")? != Some(true) {
            return Ok(smallvec![Item::Boolean(false)]);
        }
    }
    Ok(smallvec![Item::Boolean(true)])
}

/// `allTrue` (want true, every), `anyTrue` (want true, any), `allFalse`, `anyFalse`.
fn all_booleans<'a>(
    c: &Call<'_, 'a>,
    want: bool,
    every: bool,
) -> Result<Collection<'a>, EvalError> {
    let matches = c
        .input
        .iter()
        .map(|i| matches!(i.primitive(), Item::Boolean(b) if b == want));
    let result = if every {
        matches.into_iter().all(|m| m)
    } else {
        matches.into_iter().any(|m| m)
    };
    Ok(smallvec![Item::Boolean(result)])
}

fn iif<'a>(c: &Call<'_, 'a>) -> Result<Collection<'a>, EvalError> {
    let this = c.input.as_slice();
    let frame = Frame { this, ..c.frame };
    let criterion = to_boolean(&eval(&c.args[0], frame, c.env)?, "iif() criterion")?;
    match (criterion, c.args.get(2)) {
        (Some(true), _) => eval(&c.args[1], frame, c.env),
        (_, Some(otherwise)) => eval(otherwise, frame, c.env),
        _ => Ok(Collection::new()),
    }
}

/// `repeat(expr)`: `expr` applied to the input, then to each result, depth first, without repeats.
fn repeat<'a>(c: &Call<'_, 'a>) -> Result<Collection<'a>, EvalError> {
    let mut out: Collection<'a> = Collection::new();
    let mut stack: Vec<Item<'a>> = Vec::new();
    for (i, item) in c.input.iter().enumerate().rev() {
        stack.extend(c.for_item(0, item, i)?.into_iter().rev());
    }
    while let Some(item) = stack.pop() {
        if out
            .iter()
            .any(|seen| value::equals(seen, &item) == Some(true))
        {
            continue;
        }
        if out.len() >= 1_000_000 {
            return fail("more than a million items: the expression does not converge");
        }
        stack.extend(c.for_item(0, &item, 0)?.into_iter().rev());
        out.push(item);
    }
    Ok(out)
}

fn children<'a>(c: &Call<'_, 'a>) -> Result<Collection<'a>, EvalError> {
    let mut out = Collection::new();
    for item in &c.input {
        child_nodes(item, &mut out);
    }
    Ok(out)
}

fn child_nodes<'a>(item: &Item<'a>, out: &mut Collection<'a>) {
    if let Some(Json::Object(map)) = item.json() {
        for (key, child) in map {
            if key == "resourceType" {
                continue;
            }
            match child {
                Json::Array(elements) => out.extend(elements.iter().map(|e| Item::Node(e, None))),
                json => out.push(Item::Node(json, None)),
            }
        }
    }
}

fn descendants<'a>(c: &Call<'_, 'a>) -> Result<Collection<'a>, EvalError> {
    let mut out = Collection::new();
    let mut frontier = c.input.clone();
    while !frontier.is_empty() {
        let mut next = Collection::new();
        for item in &frontier {
            child_nodes(item, &mut next);
        }
        out.extend(next.iter().cloned());
        frontier = next;
    }
    Ok(out)
}

fn text_test<'a>(
    c: &Call<'_, 'a>,
    test: fn(&str, &str) -> bool,
) -> Result<Collection<'a>, EvalError> {
    let (Some(s), Some(a)) = (c.input_text()?, c.string_arg(0)?) else {
        return Ok(Collection::new());
    };
    Ok(smallvec![Item::Boolean(test(&s, &a))])
}

fn numeric<'a>(
    c: &Call<'_, 'a>,
    f: impl Fn(Decimal) -> Option<Decimal>,
) -> Result<Collection<'a>, EvalError> {
    Ok(
        match singleton(&c.input, "a math function")?.map(Item::primitive) {
            None => Collection::new(),
            Some(Item::Integer(i)) => f(Decimal::from(i))
                .and_then(|d| i64::try_from(d).ok())
                .map(Item::Integer)
                .into_iter()
                .collect(),
            Some(Item::Decimal(d)) => f(d).map(Item::Decimal).into_iter().collect(),
            Some(_) => return fail("a math function needs a number"),
        },
    )
}

fn join<'a>(c: &Call<'_, 'a>) -> Result<Collection<'a>, EvalError> {
    let separator = if c.args.is_empty() {
        String::new()
    } else {
        c.string_arg(0)?.unwrap_or_default()
    };
    let mut out = String::new();
    for (i, item) in c.input.iter().enumerate() {
        if i > 0 {
            out.push_str(&separator);
        }
        match item.to_text() {
            Some(text) => out.push_str(&text),
            None => return fail("join() works on strings"),
        }
    }
    Ok(smallvec![Item::string(out)])
}

fn extension<'a>(c: &Call<'_, 'a>) -> Result<Collection<'a>, EvalError> {
    let Some(url) = c.string_arg(0)? else {
        return Ok(Collection::new());
    };
    let mut out = Collection::new();
    for item in &c.input {
        let Some(Json::Array(extensions)) = item.json().and_then(|j| j.get("extension")) else {
            continue;
        };
        out.extend(
            extensions
                .iter()
                .filter(|e| e.get("url").and_then(Json::as_str) == Some(url.as_str()))
                .map(|e| Item::Node(e, Some("Extension"))),
        );
    }
    Ok(out)
}

/// `getResourceKey()`: the key silver tables join on, the resource's logical id.
fn get_resource_key<'a>(c: &Call<'_, 'a>) -> Result<Collection<'a>, EvalError> {
    Ok(c.input
        .iter()
        .filter_map(|item| item.json()?.get("id")?.as_str())
        .map(|id| Item::string(Cow::Borrowed(id)))
        .collect())
}

/// `getReferenceKey([type])`: the key of the resource a Reference points to, matching what
/// `getResourceKey()` gives that resource. Relative (`Patient/1`), absolute (`http://x/fhir/Patient/1`,
/// with or without `_history`) and bundle-local (`urn:uuid:...`) references are understood; a reference
/// to another type than the one asked for gives nothing.
fn get_reference_key<'a>(c: &Call<'_, 'a>) -> Result<Collection<'a>, EvalError> {
    let wanted = c.args.first().and_then(Expr::type_name);
    let mut out = Collection::new();
    for item in &c.input {
        let Some(reference) = item
            .json()
            .and_then(|j| j.get("reference"))
            .and_then(Json::as_str)
        else {
            continue;
        };
        let Some((type_name, id)) = reference_parts(reference) else {
            continue;
        };
        if let (Some(wanted), Some(actual)) = (wanted, type_name)
            && wanted != actual
        {
            continue;
        }
        out.push(Item::string(Cow::Borrowed(id)));
    }
    Ok(out)
}

/// The type (when the reference says it) and id of a reference string.
pub fn reference_parts(reference: &str) -> Option<(Option<&str>, &str)> {
    if let Some(id) = reference
        .strip_prefix("urn:uuid:")
        .or_else(|| reference.strip_prefix("urn:oid:"))
    {
        return Some((None, id));
    }
    // A contained resource (`#x`) has no key of its own, and a conditional reference
    // (`Location?identifier=...`, as transaction Bundles carry) is a search, not an id.
    if reference.starts_with('#') || reference.contains('?') {
        return None;
    }
    let path = reference.split('#').next()?;
    let path = path.split("/_history/").next()?;
    let mut segments = path.rsplit('/');
    let id = segments.next().filter(|s| !s.is_empty())?;
    let type_name = segments
        .next()
        .filter(|s| s.starts_with(|c: char| c.is_ascii_uppercase()));
    Some((type_name, id))
}

/// `lowBoundary()` / `highBoundary()` of decimals, dates, date-times and times.
fn boundary<'a>(c: &Call<'_, 'a>, high: bool) -> Result<Collection<'a>, EvalError> {
    let Some(item) = singleton(&c.input, "a boundary function")? else {
        return Ok(Collection::new());
    };
    let typed = match item {
        Item::Node(Json::String(s), None) => match super::temporal::DateTimeValue::parse(s) {
            Some(d) if d.has_time() => Item::DateTime(d),
            Some(d) => Item::Date(d),
            None => item.primitive(),
        },
        _ => item.primitive(),
    };
    Ok(match typed {
        Item::Decimal(d) => smallvec![Item::Decimal(decimal_boundary(d, high))],
        Item::Integer(i) => smallvec![Item::Decimal(decimal_boundary(Decimal::from(i), high))],
        Item::Date(d) if d.precision <= Precision::Day => {
            smallvec![Item::Date(d.date_boundary(high))]
        }
        Item::Date(d) | Item::DateTime(d) => {
            smallvec![Item::DateTime(if high {
                d.high_boundary()
            } else {
                d.low_boundary()
            })]
        }
        Item::Time(t) => smallvec![Item::Time(t.boundary(high))],
        _ => Collection::new(),
    })
}

/// Half a unit of the last written digit below or above: `1.0` → `0.95` / `1.05`.
fn decimal_boundary(d: Decimal, high: bool) -> Decimal {
    let half = Decimal::new(5, d.scale() + 1);
    if high { d + half } else { d - half }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_for_lookup() {
        assert!(
            FUNCTIONS.windows(2).all(|w| w[0].name < w[1].name),
            "keep FUNCTIONS sorted by name"
        );
        assert!(lookup("where").is_some());
        assert!(lookup("nope").is_none());
    }

    #[test]
    fn reference_forms() {
        assert_eq!(reference_parts("Patient/p1"), Some((Some("Patient"), "p1")));
        assert_eq!(
            reference_parts("http://x.org/fhir/Patient/p1/_history/2"),
            Some((Some("Patient"), "p1"))
        );
        assert_eq!(reference_parts("urn:uuid:abc"), Some((None, "abc")));
        assert_eq!(reference_parts("#contained"), None);
        assert_eq!(
            reference_parts("Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999"),
            None
        );
    }
}
