//! Evaluation of a syntax tree against a resource's JSON.
//!
//! Every step reads the resource in place: member access borrows child nodes, and only computed values
//! (arithmetic, strings built by `join`) allocate. Errors are raised where FHIRPath says a result is an
//! error, such as a multi-item collection where one item is required.

use std::borrow::Cow;
use std::cmp::Ordering;

use rust_decimal::Decimal;
use serde_json::Value as Json;
use smallvec::smallvec;

use super::parse::{BinaryOp, Expr, Literal};
use super::value::{self, Collection, Item, choice_type, resource_type};

/// A run-time error, with a message naming the operation that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EvalError(pub String);

pub(super) fn fail<T>(message: impl Into<String>) -> Result<T, EvalError> {
    Err(EvalError(message.into()))
}

/// Where `%name` variables come from: view constants, `%rowIndex`, `%resource`, and whatever later
/// callers (profile validation) provide.
pub trait Variables<'a> {
    fn get(&self, name: &str) -> Option<Collection<'a>>;
}

/// No variables at all.
impl<'a> Variables<'a> for () {
    fn get(&self, _: &str) -> Option<Collection<'a>> {
        None
    }
}

/// The iteration state that `$this`, `$index` and `$total` read.
#[derive(Clone, Copy)]
pub struct Frame<'f, 'a> {
    pub this: &'f [Item<'a>],
    pub index: Option<usize>,
    pub total: Option<&'f [Item<'a>]>,
}

/// Everything an evaluation needs besides the expression.
pub struct Env<'e, 'a> {
    pub variables: &'e dyn Variables<'a>,
}

pub fn eval<'a>(
    expr: &'a Expr,
    frame: Frame<'_, 'a>,
    env: &Env<'_, 'a>,
) -> Result<Collection<'a>, EvalError> {
    Ok(match expr {
        Expr::Empty => Collection::new(),
        Expr::Literal(literal) => smallvec![literal_item(literal)],
        Expr::This => Collection::from(frame.this),
        Expr::Index => frame
            .index
            .map(|i| Item::Integer(i as i64))
            .into_iter()
            .collect(),
        Expr::Total => frame.total.map(Collection::from).unwrap_or_default(),
        Expr::Variable(name) => match env.variables.get(name) {
            Some(value) => value,
            None => return fail(format!("undefined variable %{name}")),
        },
        Expr::Member { base: None, name } => {
            let mut out = Collection::new();
            for item in frame.this {
                // `Patient.name`: a leading type name selects the focus itself when it is that
                // resource. Type names start with a capital and element names never do.
                if name.starts_with(|c: char| c.is_ascii_uppercase())
                    && item.json().and_then(resource_type) == Some(name)
                {
                    out.push(item.clone());
                } else {
                    children(item, name, &mut out);
                }
            }
            out
        }
        Expr::Member {
            base: Some(base),
            name,
        } => {
            let input = eval(base, frame, env)?;
            let mut out = Collection::with_capacity(input.len());
            for item in &input {
                children(item, name, &mut out);
            }
            out
        }
        Expr::Call {
            base,
            function,
            args,
        } => {
            let input = match base {
                Some(base) => eval(base, frame, env)?,
                None => Collection::from(frame.this),
            };
            let call = super::functions::Call {
                input,
                args,
                frame,
                env,
            };
            (function.eval)(&call)
                .map_err(|e| EvalError(format!("{}(): {}", function.name, e.0)))?
        }
        Expr::Indexer(base, index) => {
            let input = eval(base, frame, env)?;
            let index = eval(index, frame, env)?;
            match singleton(&index, "index")? {
                None => Collection::new(),
                Some(Item::Integer(i)) => usize::try_from(*i)
                    .ok()
                    .and_then(|i| input.into_iter().nth(i))
                    .into_iter()
                    .collect(),
                Some(other) => match other.primitive() {
                    Item::Integer(i) => usize::try_from(i)
                        .ok()
                        .and_then(|i| input.into_iter().nth(i))
                        .into_iter()
                        .collect(),
                    _ => return fail("an index must be an integer"),
                },
            }
        }
        Expr::Negate(inner) => {
            let input = eval(inner, frame, env)?;
            match singleton(&input, "unary minus")?.map(Item::primitive) {
                None => Collection::new(),
                Some(Item::Integer(i)) => smallvec![Item::Integer(-i)],
                Some(Item::Decimal(d)) => smallvec![Item::Decimal(-d)],
                Some(Item::Quantity(v, u)) => smallvec![Item::Quantity(-v, u)],
                Some(_) => return fail("unary minus needs a number"),
            }
        }
        Expr::Is(inner, type_name) => {
            let input = eval(inner, frame, env)?;
            match singleton(&input, "is")? {
                None => Collection::new(),
                Some(item) => smallvec![Item::Boolean(item.is_type(type_name))],
            }
        }
        Expr::As(inner, type_name) => {
            let input = eval(inner, frame, env)?;
            input
                .into_iter()
                .filter(|item| item.is_type(type_name))
                .collect()
        }
        Expr::Binary(op, left, right) => binary(*op, left, right, frame, env)?,
    })
}

/// A literal as an item; a string or unit is lent by the expression, not copied on every evaluation.
pub fn literal_item(literal: &Literal) -> Item<'_> {
    match literal {
        Literal::Boolean(b) => Item::Boolean(*b),
        Literal::Integer(i) => Item::Integer(*i),
        Literal::Decimal(d) => Item::Decimal(*d),
        Literal::String(s) => Item::String(Cow::Borrowed(s)),
        Literal::Date(d) => Item::Date(*d),
        Literal::DateTime(d) => Item::DateTime(*d),
        Literal::Time(t) => Item::Time(*t),
        Literal::Quantity(v, u) => Item::Quantity(*v, Cow::Borrowed(u)),
    }
}

/// Appends the children called `name` of one item: array elements one by one, and choice elements
/// (`value` finds `valueQuantity`, typed `Quantity`).
pub fn children<'a>(item: &Item<'a>, name: &str, out: &mut Collection<'a>) {
    let Some(Json::Object(map)) = item.json() else {
        return;
    };
    let push = |json: &'a Json, type_name: Option<&'a str>, out: &mut Collection<'a>| match json {
        Json::Array(elements) => out.extend(
            elements
                .iter()
                .filter(|e| !e.is_null())
                .map(|e| Item::Node(e, resource_type(e).or(type_name))),
        ),
        Json::Null => {}
        json => out.push(Item::Node(json, resource_type(json).or(type_name))),
    };
    if let Some((child, type_name)) = member(map, name) {
        push(child, type_name, out);
    }
}

/// The member `name` of `map` as FHIRPath reads it: the key itself, or else the first choice key
/// it names (`value` finds `valueQuantity`), with that choice's type.
pub fn member<'a>(
    map: &'a serde_json::Map<String, Json>,
    name: &str,
) -> Option<(&'a Json, Option<&'a str>)> {
    let choice = |(key, child): (&'a String, &'a Json)| {
        let type_name = key
            .strip_prefix(name)
            .filter(|suffix| !suffix.is_empty())
            .and_then(choice_type)?;
        Some((child, Some(type_name)))
    };
    if map.len() > value::SCANNED_KEYS {
        return match value::field(map, name) {
            Some(child) => Some((child, None)),
            None => map.iter().find_map(choice),
        };
    }
    // A small object is scanned once for both: the key itself wins wherever it sits.
    let mut first_choice = None;
    for (key, child) in map {
        if key == name {
            return Some((child, None));
        }
        if first_choice.is_none() {
            first_choice = choice((key, child));
        }
    }
    first_choice
}

/// The single item of a collection, `None` when empty, an error when there are several.
pub fn singleton<'c, 'a>(
    collection: &'c [Item<'a>],
    what: &str,
) -> Result<Option<&'c Item<'a>>, EvalError> {
    match collection {
        [] => Ok(None),
        [item] => Ok(Some(item)),
        _ => fail(format!(
            "{what} expects a single item, found {}",
            collection.len()
        )),
    }
}

/// A collection read as a boolean (FHIRPath singleton evaluation): empty is unknown, a single
/// boolean is itself, any other single item is true.
pub fn to_boolean(collection: &[Item], what: &str) -> Result<Option<bool>, EvalError> {
    Ok(match singleton(collection, what)? {
        None => None,
        Some(item) => match item.primitive() {
            Item::Boolean(b) => Some(b),
            _ => Some(true),
        },
    })
}

fn boolean_result<'a>(value: Option<bool>) -> Collection<'a> {
    value.map(Item::Boolean).into_iter().collect()
}

fn binary<'a>(
    op: BinaryOp,
    left: &'a Expr,
    right: &'a Expr,
    frame: Frame<'_, 'a>,
    env: &Env<'_, 'a>,
) -> Result<Collection<'a>, EvalError> {
    use BinaryOp::*;
    let l = eval(left, frame, env)?;
    // `and`/`or`/`implies` short-circuit when the left side decides.
    if matches!(op, And | Or | Implies) {
        let a = to_boolean(&l, "a logical operand")?;
        match (op, a) {
            (And, Some(false)) => return Ok(smallvec![Item::Boolean(false)]),
            (Or, Some(true)) => return Ok(smallvec![Item::Boolean(true)]),
            (Implies, Some(false)) => return Ok(smallvec![Item::Boolean(true)]),
            _ => {}
        }
        let b = to_boolean(&eval(right, frame, env)?, "a logical operand")?;
        return Ok(boolean_result(match op {
            And => match (a, b) {
                (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            },
            Or => match (a, b) {
                (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            },
            _ => match (a, b) {
                (_, Some(true)) => Some(true),
                (Some(true), b) => b,
                _ => None,
            },
        }));
    }
    let r = eval(right, frame, env)?;
    Ok(match op {
        Xor => {
            let (a, b) = (to_boolean(&l, "xor")?, to_boolean(&r, "xor")?);
            boolean_result(a.zip(b).map(|(a, b)| a != b))
        }
        Union => union(l, r),
        In => membership(&r, &l)?,
        Contains => membership(&l, &r)?,
        Equal | NotEqual => {
            if l.is_empty() || r.is_empty() {
                return Ok(Collection::new());
            }
            let same = if l.len() != r.len() {
                Some(false)
            } else {
                l.iter()
                    .zip(&r)
                    .try_fold(true, |all, (a, b)| value::equals(a, b).map(|e| all && e))
            };
            boolean_result(same.map(|same| same == (op == Equal)))
        }
        Equivalent | NotEquivalent => {
            let same =
                l.len() == r.len() && l.iter().all(|a| r.iter().any(|b| value::equivalent(a, b)));
            smallvec![Item::Boolean(same == (op == Equivalent))]
        }
        Less | Greater | LessOrEqual | GreaterOrEqual => {
            let (Some(a), Some(b)) = (
                singleton(&l, "a comparison")?,
                singleton(&r, "a comparison")?,
            ) else {
                return Ok(Collection::new());
            };
            let Some(ordering) = value::compare(a, b) else {
                return fail(format!(
                    "cannot compare {} with {}",
                    a.type_name().unwrap_or("?"),
                    b.type_name().unwrap_or("?")
                ));
            };
            boolean_result(ordering.map(|o| match op {
                Less => o == Ordering::Less,
                Greater => o == Ordering::Greater,
                LessOrEqual => o != Ordering::Greater,
                _ => o != Ordering::Less,
            }))
        }
        Concatenate => {
            let text = |c: &[Item<'a>]| -> Result<String, EvalError> {
                Ok(singleton(c, "&")?
                    .and_then(Item::to_text)
                    .map(Cow::into_owned)
                    .unwrap_or_default())
            };
            smallvec![Item::string(text(&l)? + &text(&r)?)]
        }
        Add | Subtract | Multiply | Divide | IntegerDivide | Modulo => {
            let (Some(a), Some(b)) = (singleton(&l, "arithmetic")?, singleton(&r, "arithmetic")?)
            else {
                return Ok(Collection::new());
            };
            arithmetic(op, a.primitive(), b.primitive())?
                .into_iter()
                .collect()
        }
        And | Or | Implies => unreachable!("handled above"),
    })
}

fn union<'a>(mut l: Collection<'a>, r: Collection<'a>) -> Collection<'a> {
    let mut out: Collection<'a> = Collection::with_capacity(l.len() + r.len());
    for item in l.drain(..).chain(r) {
        if !out
            .iter()
            .any(|seen| value::equals(seen, &item) == Some(true))
        {
            out.push(item);
        }
    }
    out
}

/// `collection contains item`.
fn membership<'a>(collection: &[Item<'a>], item: &[Item<'a>]) -> Result<Collection<'a>, EvalError> {
    let Some(item) = singleton(item, "in/contains")? else {
        return Ok(Collection::new());
    };
    Ok(smallvec![Item::Boolean(
        collection
            .iter()
            .any(|c| value::equals(c, item) == Some(true)),
    )])
}

fn arithmetic<'a>(op: BinaryOp, a: Item<'a>, b: Item<'a>) -> Result<Option<Item<'a>>, EvalError> {
    use BinaryOp::*;
    if let (Item::Integer(x), Item::Integer(y)) = (&a, &b) {
        let (x, y) = (*x, *y);
        return Ok(match op {
            Add => x.checked_add(y).map(Item::Integer),
            Subtract => x.checked_sub(y).map(Item::Integer),
            Multiply => x.checked_mul(y).map(Item::Integer),
            Divide => (y != 0)
                .then(|| Decimal::from(x).checked_div(Decimal::from(y)))
                .flatten()
                .map(Item::Decimal),
            IntegerDivide => x.checked_div(y).map(Item::Integer),
            _ => x.checked_rem(y).map(Item::Integer),
        });
    }
    let decimal = |item: &Item| match item {
        Item::Integer(i) => Some(Decimal::from(*i)),
        Item::Decimal(d) => Some(*d),
        _ => None,
    };
    if let (Some(x), Some(y)) = (decimal(&a), decimal(&b)) {
        return Ok(match op {
            Add => x.checked_add(y),
            Subtract => x.checked_sub(y),
            Multiply => x.checked_mul(y),
            Divide => x.checked_div(y),
            IntegerDivide => x.checked_div(y).map(|q| q.trunc()),
            _ => x.checked_rem(y),
        }
        .map(|d| {
            if op == IntegerDivide {
                Item::Integer(i64::try_from(d).unwrap_or_default())
            } else {
                Item::Decimal(d)
            }
        }));
    }
    match (op, &a, &b) {
        (Add, Item::String(x), Item::String(y)) => Ok(Some(Item::string(format!("{x}{y}")))),
        _ => fail(format!(
            "cannot apply {op:?} to {} and {}",
            a.type_name().unwrap_or("?"),
            b.type_name().unwrap_or("?")
        )),
    }
}
