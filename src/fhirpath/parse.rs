//! FHIRPath text to a syntax tree.
//!
//! A hand-written lexer and a precedence-climbing parser for the FHIRPath N1 grammar. Function names
//! are resolved against the function table while parsing, so an unknown function or a wrong number of
//! arguments is a parse error naming the function and its position, never an empty result at run time.

use std::fmt;

use rust_decimal::Decimal;

use super::functions::{self, Function};
use super::temporal::{DateTimeValue, TimeValue};

/// A parse error: what was wrong and the character offset where it was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("FHIRPath syntax error at position {position}: {message}")]
pub struct ParseError {
    pub position: usize,
    pub message: String,
}

fn error<T>(position: usize, message: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError {
        position,
        message: message.into(),
    })
}

/// A literal written in the expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Boolean(bool),
    Integer(i64),
    Decimal(Decimal),
    String(String),
    Date(DateTimeValue),
    DateTime(DateTimeValue),
    Time(TimeValue),
    Quantity(Decimal, String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Implies,
    Or,
    Xor,
    And,
    In,
    Contains,
    Equal,
    NotEqual,
    Equivalent,
    NotEquivalent,
    Less,
    Greater,
    LessOrEqual,
    GreaterOrEqual,
    Union,
    Add,
    Subtract,
    Concatenate,
    Multiply,
    Divide,
    IntegerDivide,
    Modulo,
}

/// The syntax tree of an expression.
#[derive(Debug, Clone)]
pub enum Expr {
    /// `{}`
    Empty,
    Literal(Literal),
    /// `$this`
    This,
    /// `$index`
    Index,
    /// `$total`
    Total,
    /// `%name`: a constant or environment variable.
    Variable(String),
    /// `base.name`, or `name` alone (then `base` is `None`: a child of the focus, or the focus itself
    /// when `name` is its resource type).
    Member {
        base: Option<Box<Expr>>,
        name: String,
    },
    /// `base.function(args)`; arguments stay unevaluated so `where`, `select`, `exists` can run them
    /// once per item.
    Call {
        base: Option<Box<Expr>>,
        function: &'static Function,
        args: Vec<Expr>,
    },
    Indexer(Box<Expr>, Box<Expr>),
    Negate(Box<Expr>),
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
    /// `expr is Type` / `expr as Type`
    Is(Box<Expr>, String),
    As(Box<Expr>, String),
}

impl Expr {
    /// The type name an argument spells, for `ofType(Quantity)`, `is(FHIR.string)` and the like.
    pub fn type_name(&self) -> Option<&str> {
        match self {
            Expr::Member { base: None, name } => Some(name),
            Expr::Member {
                base: Some(base),
                name,
            } => match base.as_ref() {
                Expr::Member {
                    base: None,
                    name: namespace,
                } if namespace == "FHIR" || namespace == "System" => Some(name),
                _ => None,
            },
            _ => None,
        }
    }

    /// Every `%variable` the expression reads, so a view can reject an undefined constant up front.
    pub fn variables<'e>(&'e self, out: &mut Vec<&'e str>) {
        match self {
            Expr::Variable(name) => out.push(name),
            Expr::Member { base, .. } => {
                if let Some(base) = base {
                    base.variables(out)
                }
            }
            Expr::Call { base, args, .. } => {
                if let Some(base) = base {
                    base.variables(out)
                }
                args.iter().for_each(|arg| arg.variables(out));
            }
            Expr::Indexer(a, b) | Expr::Binary(_, a, b) => {
                a.variables(out);
                b.variables(out);
            }
            Expr::Negate(a) | Expr::Is(a, _) | Expr::As(a, _) => a.variables(out),
            Expr::Empty | Expr::Literal(_) | Expr::This | Expr::Index | Expr::Total => {}
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Identifier(String),
    /// A `backtick`-delimited identifier: never a keyword.
    Delimited(String),
    String(String),
    Number(String),
    DateTime(String),
    Time(String),
    Variable(String),
    Special(&'static str),
    Symbol(&'static str),
    End,
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Identifier(s) | Token::Delimited(s) => write!(f, "'{s}'"),
            Token::String(s) => write!(f, "string '{s}'"),
            Token::Number(s) => write!(f, "number {s}"),
            Token::DateTime(s) | Token::Time(s) => write!(f, "@{s}"),
            Token::Variable(s) => write!(f, "%{s}"),
            Token::Special(s) | Token::Symbol(s) => write!(f, "'{s}'"),
            Token::End => write!(f, "end of expression"),
        }
    }
}

const SYMBOLS: [&str; 22] = [
    "<=", ">=", "!=", "!~", "=", "~", "<", ">", "(", ")", "[", "]", "{", "}", ".", ",", "+", "-",
    "*", "/", "|", "&",
];

fn lex(text: &str) -> Result<Vec<(Token, usize)>, ParseError> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if text[i..].starts_with("//") {
            i = text[i..].find('\n').map_or(bytes.len(), |n| i + n);
            continue;
        }
        if text[i..].starts_with("/*") {
            i = text[i + 2..]
                .find("*/")
                .map(|n| i + n + 4)
                .ok_or(ParseError {
                    position: i,
                    message: "unterminated comment".into(),
                })?;
            continue;
        }
        let token = if c == b'\'' || c == b'`' {
            let (value, end) = quoted(text, i, c)?;
            i = end;
            if c == b'\'' {
                Token::String(value)
            } else {
                Token::Delimited(value)
            }
        } else if c.is_ascii_digit() {
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if i + 1 < bytes.len() && bytes[i] == b'.' && bytes[i + 1].is_ascii_digit() {
                i += 1;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
            }
            // A long-integer suffix (`10L`) is read as an integer.
            if i < bytes.len() && bytes[i] == b'L' {
                i += 1;
                Token::Number(text[start..i - 1].to_string())
            } else {
                Token::Number(text[start..i].to_string())
            }
        } else if c == b'@' {
            i += 1;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || b"-:.+TZ".contains(&bytes[i]))
            {
                i += 1;
            }
            let literal = &text[start + 1..i];
            if let Some(time) = literal.strip_prefix('T') {
                Token::Time(time.to_string())
            } else {
                Token::DateTime(literal.to_string())
            }
        } else if c == b'%' {
            i += 1;
            if i < bytes.len() && (bytes[i] == b'`' || bytes[i] == b'\'') {
                let (value, end) = quoted(text, i, bytes[i])?;
                i = end;
                Token::Variable(value)
            } else {
                let name_start = i;
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b'-')
                {
                    i += 1;
                }
                if name_start == i {
                    return error(start, "'%' must be followed by a variable name");
                }
                Token::Variable(text[name_start..i].to_string())
            }
        } else if c == b'$' {
            i += 1;
            while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
                i += 1;
            }
            match &text[start..i] {
                "$this" => Token::Special("$this"),
                "$index" => Token::Special("$index"),
                "$total" => Token::Special("$total"),
                other => return error(start, format!("unknown special variable '{other}'")),
            }
        } else if c.is_ascii_alphabetic() || c == b'_' {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            Token::Identifier(text[start..i].to_string())
        } else if let Some(symbol) = SYMBOLS.iter().find(|s| text[i..].starts_with(**s)) {
            i += symbol.len();
            Token::Symbol(symbol)
        } else {
            let found = text[i..].chars().next().unwrap_or(' ');
            return error(i, format!("unexpected character '{found}'"));
        };
        tokens.push((token, start));
    }
    tokens.push((Token::End, text.len()));
    Ok(tokens)
}

/// A quoted string or delimited identifier with FHIRPath escapes; returns the value and the offset
/// after the closing quote.
fn quoted(text: &str, start: usize, quote: u8) -> Result<(String, usize), ParseError> {
    let mut value = String::new();
    let mut chars = text[start + 1..].char_indices();
    while let Some((offset, c)) = chars.next() {
        if c as u32 == quote as u32 {
            return Ok((value, start + 1 + offset + 1));
        }
        if c != '\\' {
            value.push(c);
            continue;
        }
        let Some((_, escaped)) = chars.next() else {
            break;
        };
        match escaped {
            'n' => value.push('\n'),
            'r' => value.push('\r'),
            't' => value.push('\t'),
            'f' => value.push('\u{c}'),
            'u' => {
                let hex: String = chars.by_ref().take(4).map(|(_, c)| c).collect();
                let code = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32);
                value.push(code.ok_or(ParseError {
                    position: start + 1 + offset,
                    message: format!("bad unicode escape \\u{hex}"),
                })?);
            }
            other => value.push(other),
        }
    }
    error(start, "unterminated string")
}

/// Parses a whole expression.
pub fn parse(text: &str) -> Result<Expr, ParseError> {
    let tokens = lex(text)?;
    let mut parser = Parser {
        tokens,
        next: 0,
        depth: 0,
    };
    let expr = parser.expression(0)?;
    match parser.peek() {
        Token::End => Ok(expr),
        other => error(parser.position(), format!("unexpected {other}")),
    }
}

struct Parser {
    tokens: Vec<(Token, usize)>,
    next: usize,
    /// How deep the tree being built nests here: nested terms plus the operators, members and
    /// calls wrapped around them so far.
    depth: usize,
}

/// How deep an expression may nest. Evaluation recurses once per level, so a fuzzed `((((…`,
/// `----…` or `a.b.c.…` thousands deep overflowed the stack; real views nest about ten deep.
const MAX_DEPTH: usize = 64;

/// Binary operators by precedence, lowest first (FHIRPath N1 §"Operator precedence").
fn binary_operator(token: &Token) -> Option<(BinaryOp, u8)> {
    let op = match token {
        Token::Identifier(word) => match word.as_str() {
            "implies" => (BinaryOp::Implies, 1),
            "or" => (BinaryOp::Or, 2),
            "xor" => (BinaryOp::Xor, 2),
            "and" => (BinaryOp::And, 3),
            "in" => (BinaryOp::In, 4),
            "contains" => (BinaryOp::Contains, 4),
            "div" => (BinaryOp::IntegerDivide, 10),
            "mod" => (BinaryOp::Modulo, 10),
            _ => return None,
        },
        Token::Symbol(symbol) => match *symbol {
            "=" => (BinaryOp::Equal, 5),
            "!=" => (BinaryOp::NotEqual, 5),
            "~" => (BinaryOp::Equivalent, 5),
            "!~" => (BinaryOp::NotEquivalent, 5),
            "<" => (BinaryOp::Less, 6),
            ">" => (BinaryOp::Greater, 6),
            "<=" => (BinaryOp::LessOrEqual, 6),
            ">=" => (BinaryOp::GreaterOrEqual, 6),
            "|" => (BinaryOp::Union, 7),
            "+" => (BinaryOp::Add, 9),
            "-" => (BinaryOp::Subtract, 9),
            "&" => (BinaryOp::Concatenate, 9),
            "*" => (BinaryOp::Multiply, 10),
            "/" => (BinaryOp::Divide, 10),
            _ => return None,
        },
        _ => return None,
    };
    Some(op)
}

/// Precedence of `is` and `as`, between union and addition.
const TYPE_PRECEDENCE: u8 = 8;

impl Parser {
    fn peek(&self) -> &Token {
        &self.tokens[self.next].0
    }

    fn position(&self) -> usize {
        self.tokens[self.next].1
    }

    fn advance(&mut self) -> (Token, usize) {
        let token = self.tokens[self.next].clone();
        if self.next + 1 < self.tokens.len() {
            self.next += 1;
        }
        token
    }

    fn expect(&mut self, symbol: &'static str) -> Result<(), ParseError> {
        if self.peek() == &Token::Symbol(symbol) {
            self.advance();
            Ok(())
        } else {
            error(
                self.position(),
                format!("expected '{symbol}', found {}", self.peek()),
            )
        }
    }

    /// One level deeper, or an error past [`MAX_DEPTH`].
    fn deeper(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return error(
                self.position(),
                format!("the expression nests more than {MAX_DEPTH} deep"),
            );
        }
        Ok(())
    }

    fn expression(&mut self, min_precedence: u8) -> Result<Expr, ParseError> {
        let entry = self.depth;
        self.deeper()?;
        let mut left = self.unary()?;
        loop {
            let token = self.peek().clone();
            if let Token::Identifier(word) = &token
                && (word == "is" || word == "as")
                && TYPE_PRECEDENCE >= min_precedence
            {
                self.advance();
                self.deeper()?;
                let type_name = self.type_specifier()?;
                left = if word == "is" {
                    Expr::Is(Box::new(left), type_name)
                } else {
                    Expr::As(Box::new(left), type_name)
                };
                continue;
            }
            let Some((op, precedence)) = binary_operator(&token) else {
                break;
            };
            if precedence < min_precedence {
                break;
            }
            self.advance();
            self.deeper()?;
            let right = self.expression(precedence + 1)?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
        self.depth = entry;
        Ok(left)
    }

    fn type_specifier(&mut self) -> Result<String, ParseError> {
        let position = self.position();
        let mut name = match self.advance().0 {
            Token::Identifier(name) | Token::Delimited(name) => name,
            other => return error(position, format!("expected a type name, found {other}")),
        };
        if self.peek() == &Token::Symbol(".") && (name == "FHIR" || name == "System") {
            self.advance();
            let position = self.position();
            name = match self.advance().0 {
                Token::Identifier(name) | Token::Delimited(name) => name,
                other => return error(position, format!("expected a type name, found {other}")),
            };
        }
        Ok(name)
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        let entry = self.depth;
        let expr = match self.peek() {
            Token::Symbol("-") => {
                self.advance();
                self.deeper()?;
                Expr::Negate(Box::new(self.unary()?))
            }
            Token::Symbol("+") => {
                self.advance();
                self.deeper()?;
                self.unary()?
            }
            _ => self.postfix()?,
        };
        self.depth = entry;
        Ok(expr)
    }

    fn postfix(&mut self) -> Result<Expr, ParseError> {
        let entry = self.depth;
        let mut expr = self.term()?;
        loop {
            match self.peek() {
                Token::Symbol(".") => {
                    self.advance();
                    self.deeper()?;
                    expr = self.invocation(Some(Box::new(expr)))?;
                }
                Token::Symbol("[") => {
                    self.advance();
                    self.deeper()?;
                    let index = self.expression(0)?;
                    self.expect("]")?;
                    expr = Expr::Indexer(Box::new(expr), Box::new(index));
                }
                _ => {
                    self.depth = entry;
                    return Ok(expr);
                }
            }
        }
    }

    fn term(&mut self) -> Result<Expr, ParseError> {
        let position = self.position();
        match self.peek().clone() {
            Token::Symbol("(") => {
                self.advance();
                let inner = self.expression(0)?;
                self.expect(")")?;
                Ok(inner)
            }
            Token::Symbol("{") => {
                self.advance();
                self.expect("}")?;
                Ok(Expr::Empty)
            }
            Token::String(value) => {
                self.advance();
                Ok(Expr::Literal(Literal::String(value)))
            }
            Token::Number(text) => {
                self.advance();
                self.number(&text, position)
            }
            Token::DateTime(text) => {
                self.advance();
                let value = DateTimeValue::parse_literal(&text).ok_or(ParseError {
                    position,
                    message: format!("invalid date/time literal @{text}"),
                })?;
                Ok(Expr::Literal(if value.has_time() || text.ends_with('T') {
                    Literal::DateTime(value)
                } else {
                    Literal::Date(value)
                }))
            }
            Token::Time(text) => {
                self.advance();
                let value = TimeValue::parse(&text).ok_or(ParseError {
                    position,
                    message: format!("invalid time literal @T{text}"),
                })?;
                Ok(Expr::Literal(Literal::Time(value)))
            }
            Token::Variable(name) => {
                self.advance();
                Ok(Expr::Variable(name))
            }
            Token::Special(special) => {
                self.advance();
                Ok(match special {
                    "$this" => Expr::This,
                    "$index" => Expr::Index,
                    _ => Expr::Total,
                })
            }
            Token::Identifier(word) if word == "true" || word == "false" => {
                self.advance();
                Ok(Expr::Literal(Literal::Boolean(word == "true")))
            }
            Token::Identifier(_) | Token::Delimited(_) => self.invocation(None),
            other => error(position, format!("unexpected {other}")),
        }
    }

    /// A member name or a function call, after a `.` or at the start of a term.
    fn invocation(&mut self, base: Option<Box<Expr>>) -> Result<Expr, ParseError> {
        let position = self.position();
        let (name, delimited) = match self.advance().0 {
            Token::Identifier(name) => (name, false),
            Token::Delimited(name) => (name, true),
            Token::Special("$this") if base.is_none() => return Ok(Expr::This),
            other => return error(position, format!("expected a name, found {other}")),
        };
        if delimited || self.peek() != &Token::Symbol("(") {
            return Ok(Expr::Member { base, name });
        }
        self.advance();
        let mut args = Vec::new();
        if self.peek() != &Token::Symbol(")") {
            loop {
                args.push(self.expression(0)?);
                if self.peek() == &Token::Symbol(",") {
                    self.advance();
                    continue;
                }
                break;
            }
        }
        self.expect(")")?;
        let function = functions::lookup(&name).ok_or(ParseError {
            position,
            message: format!("unknown function '{name}'"),
        })?;
        if args.len() < function.min_args || args.len() > function.max_args {
            let expected = if function.min_args == function.max_args {
                format!("{}", function.min_args)
            } else {
                format!("{} to {}", function.min_args, function.max_args)
            };
            return error(
                position,
                format!(
                    "function '{name}' takes {expected} argument(s), {} given",
                    args.len()
                ),
            );
        }
        if function.type_argument && args.first().is_some_and(|arg| arg.type_name().is_none()) {
            return error(
                position,
                format!("function '{name}' takes a type name such as Quantity or Patient"),
            );
        }
        Ok(Expr::Call {
            base,
            function,
            args,
        })
    }

    fn number(&mut self, text: &str, position: usize) -> Result<Expr, ParseError> {
        // A number followed by a unit string or a calendar word is a quantity.
        let unit = match self.peek().clone() {
            Token::String(unit) => Some(unit),
            Token::Identifier(word) if is_calendar_unit(&word) => Some(word),
            _ => None,
        };
        let decimal = || {
            text.parse::<Decimal>().map_err(|_| ParseError {
                position,
                message: format!("number {text} out of range"),
            })
        };
        if let Some(unit) = unit {
            self.advance();
            return Ok(Expr::Literal(Literal::Quantity(decimal()?, unit)));
        }
        if text.contains('.') {
            Ok(Expr::Literal(Literal::Decimal(decimal()?)))
        } else {
            let value = text.parse::<i64>().map_err(|_| ParseError {
                position,
                message: format!("integer {text} out of range"),
            })?;
            Ok(Expr::Literal(Literal::Integer(value)))
        }
    }
}

fn is_calendar_unit(word: &str) -> bool {
    matches!(
        word,
        "year"
            | "years"
            | "month"
            | "months"
            | "week"
            | "weeks"
            | "day"
            | "days"
            | "hour"
            | "hours"
            | "minute"
            | "minutes"
            | "second"
            | "seconds"
            | "millisecond"
            | "milliseconds"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_puts_and_below_equality() {
        let expr = parse("a = 1 and b = 2").unwrap();
        assert!(matches!(expr, Expr::Binary(BinaryOp::And, _, _)));
        let expr = parse("1 + 2 * 3").unwrap();
        let Expr::Binary(BinaryOp::Add, _, right) = expr else {
            panic!("{expr:?}")
        };
        assert!(matches!(*right, Expr::Binary(BinaryOp::Multiply, _, _)));
    }

    /// Found by the fuzzer: each of these, thousands deep, overflowed the stack.
    #[test]
    fn expressions_nested_too_deep_are_an_error_not_a_crash() {
        for deep in [
            format!("{}1{}", "(".repeat(5_000), ")".repeat(5_000)),
            format!("{}1", "-".repeat(100_000)),
            format!("a{}", ".b".repeat(10_000)),
            format!("1{}", " + 1".repeat(10_000)),
            format!("a{}", "[0]".repeat(10_000)),
            format!(
                "a.where({}b{})",
                "c.exists(".repeat(1_000),
                ")".repeat(1_000)
            ),
        ] {
            let error = parse(&deep).unwrap_err();
            assert!(error.message.contains("nests more than 64 deep"), "{error}");
        }
        // What real views write stays well inside the limit.
        parse(&format!("a{}", ".b".repeat(40))).unwrap();
        parse("component.where(code.coding.exists(system = 'http://loinc.org' and code = '8480-6')).value.ofType(Quantity).value.first()").unwrap();
    }

    #[test]
    fn unknown_function_names_itself_and_its_position() {
        let error = parse("name.given.frobnicate()").unwrap_err();
        assert_eq!(error.position, 11);
        assert!(error.message.contains("'frobnicate'"), "{error}");
    }

    #[test]
    fn wrong_arity_is_a_parse_error() {
        let error = parse("name.first(1)").unwrap_err();
        assert!(error.message.contains("takes 0 argument"), "{error}");
    }

    #[test]
    fn garbage_is_rejected() {
        assert!(parse("@@").is_err());
        assert!(parse("name.").is_err());
        assert!(parse("(name").is_err());
        assert!(parse("'open").is_err());
    }

    #[test]
    fn literals() {
        assert!(
            matches!(parse("'a\\'b'").unwrap(), Expr::Literal(Literal::String(s)) if s == "a'b")
        );
        assert!(
            matches!(parse("4 'mg'").unwrap(), Expr::Literal(Literal::Quantity(_, u)) if u == "mg")
        );
        assert!(matches!(
            parse("@2020-01-02").unwrap(),
            Expr::Literal(Literal::Date(_))
        ));
        assert!(matches!(
            parse("@2020-01-02T10:00:00Z").unwrap(),
            Expr::Literal(Literal::DateTime(_))
        ));
        assert!(matches!(
            parse("@T10:30").unwrap(),
            Expr::Literal(Literal::Time(_))
        ));
        assert!(matches!(parse("`div`").unwrap(), Expr::Member { name, .. } if name == "div"));
    }
}
