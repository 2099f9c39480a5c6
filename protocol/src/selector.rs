//! Selectors: which agents a call goes to, by name and by [labels].
//!
//! A [`Selector`] is a value: parsed from text or built in code, compared,
//! serialised, and evaluated anywhere with [`Selector::matches`]. The
//! server's index evaluates it without scanning every agent; this module
//! knows nothing of servers.
//!
//! # Syntax
//!
//! The semantics are those of Kubernetes label selectors. A selector is a
//! list of terms separated by `,`, and an agent is selected when **every**
//! term matches (AND). Whitespace around tokens is ignored.
//!
//! | term | selects agents |
//! |---|---|
//! | `key=value`, `key==value` | with the label `key` set to `value` |
//! | `key!=value` | without the label `key`, or with another value |
//! | `key in (v1,v2)` | with `key` set to one of the values |
//! | `key notin (v1,v2)` | without the label `key`, or with none of the values |
//! | `key` | with the label `key` (any value) |
//! | `!key` | without the label `key` |
//!
//! The key `name` stands for the agent's name, which every agent has: so
//! `name=A0042` selects that agent, `name in (A0001,A0002)` those two, and
//! `name notin (A0003)` all but one. (No label may use the key `name`; see
//! [`crate::labels`].) Keys and values follow the label syntax; a value
//! compared with `name` is an agent name (1 to 64 ASCII letters, digits,
//! `-`, `_` or `.`).
//!
//! A value after `=`, `==` or `!=` may be empty (`canary=` selects agents
//! whose `canary` label is the empty string); the values inside `( )` may
//! not be, and a set holds at least one value. `in` and `notin` are
//! operators only where an operator is expected, so a label may be called
//! `in`. The empty selector (`""`, [`Selector::all`]) selects every agent.
//!
//! ```
//! use agent_protocol::labels::Labels;
//! use agent_protocol::selector::Selector;
//!
//! let s: Selector = "region=eu, role in (db,cache), !draining".parse()?;
//! let db: Labels = "region=eu,role=db".parse()?;
//! assert!(s.matches("A0001", &db));
//! assert!(!s.matches("A0002", &"region=eu,role=db,draining=yes".parse()?));
//! assert!(!s.matches("A0003", &"region=us,role=db".parse()?));
//!
//! // Its text form is canonical and parses back to the same selector.
//! assert_eq!(s.to_string(), "region=eu,role in (cache,db),!draining");
//! assert_eq!(s.to_string().parse::<Selector>()?, s);
//!
//! // The same selector, built in code.
//! let built = Selector::all()
//!     .eq("region", "eu")?
//!     .in_("role", ["db", "cache"])?
//!     .not_exists("draining")?;
//! assert_eq!(built, s);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Parse errors give the byte offset where the text went wrong and what was
//! expected there:
//!
//! ```
//! use agent_protocol::selector::Selector;
//! let err = "region=eu,role in db".parse::<Selector>().unwrap_err();
//! assert_eq!(err.position(), Some(18));
//! assert_eq!(err.to_string(), "invalid selector at byte 18: expected `(` after `in`, found `db`");
//! ```
//!
//! # Serde
//!
//! A selector serialises as its text form, a JSON string:
//! `"region=eu,role in (cache,db)"`. Deserialising parses it, so a peer
//! can neither send an invalid selector nor one this version cannot read.
//!
//! # Later: OR
//!
//! A selector is a list of [`Conjunction`]s, any of which may match; today
//! the syntax and the builders make exactly one. Code that evaluates a
//! selector through [`Selector::conjunctions`] (as the server's index does)
//! keeps working when a syntax for OR is added.
//!
//! [labels]: crate::labels

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;
use crate::labels::{validate_key_syntax, validate_value, Labels, NAME_KEY};
use crate::log_limit::clip;
use crate::name::is_valid_name;

/// How much of an offending token an error message repeats.
const ECHO_LEN: usize = 32;

/// What a term tests: the agent's name, or one of its labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Field {
    /// The agent's name (the key `name`); every agent has one.
    Name,
    /// The label of this key.
    Label(String),
}

impl Field {
    /// The key as written in a selector (`name` for [`Field::Name`]).
    pub fn key(&self) -> &str {
        match self {
            Field::Name => NAME_KEY,
            Field::Label(k) => k,
        }
    }

    /// This field's value for the agent `name` with `labels`.
    pub fn value<'a>(&'a self, name: &'a str, labels: &'a Labels) -> Option<&'a str> {
        match self {
            Field::Name => Some(name),
            Field::Label(k) => labels.get(k),
        }
    }

    fn parse(key: &str) -> Result<Field, String> {
        if key == NAME_KEY {
            return Ok(Field::Name);
        }
        validate_key_syntax(key).map_err(|e| e.to_string())?;
        Ok(Field::Label(key.to_owned()))
    }

    /// Checks a value compared with this field.
    fn check_value(&self, value: &str) -> Result<(), String> {
        match self {
            Field::Name if is_valid_name(value) => Ok(()),
            Field::Name => Err(format!(
                "invalid agent name {:?}: a name is 1 to 64 ASCII letters, digits, `-`, `_` or `.`",
                clip(value, ECHO_LEN)
            )),
            Field::Label(k) => validate_value(k, value).map_err(|e| e.to_string()),
        }
    }
}

/// What a term requires of its field's value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// `key=value`: present and equal.
    Eq(String),
    /// `key!=value`: absent, or not equal.
    NotEq(String),
    /// `key in (…)`: present and one of these (never empty).
    In(BTreeSet<String>),
    /// `key notin (…)`: absent, or none of these (never empty).
    NotIn(BTreeSet<String>),
    /// `key`: present.
    Exists,
    /// `!key`: absent.
    NotExists,
}

/// One test of a [`Conjunction`]: a field and what its value must be.
/// Made only by parsing and by the [`Selector`] builders, so its key and
/// values are always valid.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Term {
    field: Field,
    op: Op,
}

impl Term {
    /// What the term tests.
    pub fn field(&self) -> &Field {
        &self.field
    }

    /// What it requires.
    pub fn op(&self) -> &Op {
        &self.op
    }

    /// True when the agent `name` with `labels` passes this term. An agent
    /// without the key passes `!=`, `notin` and `!key`, and fails the rest.
    pub fn matches(&self, name: &str, labels: &Labels) -> bool {
        let value = self.field.value(name, labels);
        match &self.op {
            Op::Eq(want) => value == Some(want.as_str()),
            Op::NotEq(not) => value != Some(not.as_str()),
            Op::In(set) => value.is_some_and(|v| set.contains(v)),
            Op::NotIn(set) => value.is_none_or(|v| !set.contains(v)),
            Op::Exists => value.is_some(),
            Op::NotExists => value.is_none(),
        }
    }

    /// True when only agents that have the field can pass (`=`, `in`,
    /// exists): an index may start from the agents that have it.
    pub fn is_positive(&self) -> bool {
        matches!(self.op, Op::Eq(_) | Op::In(_) | Op::Exists)
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = self.field.key();
        let set = |f: &mut fmt::Formatter<'_>, op: &str, set: &BTreeSet<String>| {
            write!(f, "{key} {op} (")?;
            for (i, v) in set.iter().enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                f.write_str(v)?;
            }
            f.write_str(")")
        };
        match &self.op {
            Op::Eq(v) => write!(f, "{key}={v}"),
            Op::NotEq(v) => write!(f, "{key}!={v}"),
            Op::In(s) => set(f, "in", s),
            Op::NotIn(s) => set(f, "notin", s),
            Op::Exists => f.write_str(key),
            Op::NotExists => write!(f, "!{key}"),
        }
    }
}

/// Terms that must all match (AND); no terms match every agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Conjunction {
    terms: Vec<Term>,
}

impl Conjunction {
    /// The terms, in the order they were written.
    pub fn terms(&self) -> &[Term] {
        &self.terms
    }

    /// True when every term matches.
    pub fn matches(&self, name: &str, labels: &Labels) -> bool {
        self.terms.iter().all(|t| t.matches(name, labels))
    }
}

impl fmt::Display for Conjunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.terms.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{t}")?;
        }
        Ok(())
    }
}

/// Which agents to address: see the [module docs](self) for the syntax and
/// the semantics.
///
/// Build one in code from [`Selector::all`] (each builder checks its key
/// and values), or parse one with [`str::parse`]. `Display` gives the
/// canonical text form, which parses back to an equal selector.
///
/// ```
/// use agent_protocol::selector::Selector;
/// let canaries = Selector::all().exists("canary")?.not_eq("region", "us")?;
/// assert_eq!(canaries.to_string(), "canary,region!=us");
/// let two = Selector::all().names(["A0002", "A0001"])?;
/// assert_eq!(two.to_string(), "name in (A0001,A0002)");
/// assert_eq!(serde_json::to_string(&two).unwrap(), r#""name in (A0001,A0002)""#);
/// # Ok::<(), agent_protocol::selector::SelectorError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    /// One conjunction until OR exists; see the module docs.
    conj: Conjunction,
}

impl Selector {
    /// The selector of every agent (no terms; the text form is `""`).
    pub fn all() -> Self {
        Selector::default()
    }

    /// True when this selects every agent (it has no terms).
    pub fn is_all(&self) -> bool {
        self.conj.terms.is_empty()
    }

    /// The conjunctions, any of which may match. Today there is always
    /// exactly one.
    pub fn conjunctions(&self) -> &[Conjunction] {
        std::slice::from_ref(&self.conj)
    }

    /// True when the agent `name` with `labels` is selected.
    pub fn matches(&self, name: &str, labels: &Labels) -> bool {
        self.conjunctions().iter().any(|c| c.matches(name, labels))
    }

    /// Every term of `self` and then of `other` (AND).
    #[must_use]
    pub fn and(mut self, other: Selector) -> Self {
        self.conj.terms.extend(other.conj.terms);
        self
    }

    fn push(
        mut self,
        key: &str,
        op: impl FnOnce(&Field) -> Result<Op, String>,
    ) -> Result<Self, SelectorError> {
        let field = Field::parse(key).map_err(SelectorError::built)?;
        let op = op(&field).map_err(SelectorError::built)?;
        self.conj.terms.push(Term { field, op });
        Ok(self)
    }

    /// Adds `key=value`.
    pub fn eq(self, key: &str, value: &str) -> Result<Self, SelectorError> {
        self.push(key, |f| {
            f.check_value(value).map(|()| Op::Eq(value.to_owned()))
        })
    }

    /// Adds `key!=value`.
    pub fn not_eq(self, key: &str, value: &str) -> Result<Self, SelectorError> {
        self.push(key, |f| {
            f.check_value(value).map(|()| Op::NotEq(value.to_owned()))
        })
    }

    /// Adds `key in (values)`; `values` must not be empty.
    pub fn in_<I>(self, key: &str, values: I) -> Result<Self, SelectorError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        self.push(key, |f| set_of(f, values).map(Op::In))
    }

    /// Adds `key notin (values)`; `values` must not be empty.
    pub fn not_in<I>(self, key: &str, values: I) -> Result<Self, SelectorError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        self.push(key, |f| set_of(f, values).map(Op::NotIn))
    }

    /// Adds `key` (the label is present).
    pub fn exists(self, key: &str) -> Result<Self, SelectorError> {
        self.push(key, |_| Ok(Op::Exists))
    }

    /// Adds `!key` (the label is absent).
    pub fn not_exists(self, key: &str) -> Result<Self, SelectorError> {
        self.push(key, |_| Ok(Op::NotExists))
    }

    /// Adds `name=agent`: the agent of this name.
    pub fn name(self, agent: &str) -> Result<Self, SelectorError> {
        self.eq(NAME_KEY, agent)
    }

    /// Adds `name in (agents)`: the agents of these names.
    pub fn names<I>(self, agents: I) -> Result<Self, SelectorError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        self.in_(NAME_KEY, agents)
    }
}

fn set_of<I>(field: &Field, values: I) -> Result<BTreeSet<String>, String>
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    let mut set = BTreeSet::new();
    for v in values {
        let v = v.as_ref();
        if v.is_empty() {
            return Err(format!(
                "an empty value cannot stand in a set (for {:?}); write `key=` or `key!=` for it",
                field.key()
            ));
        }
        field.check_value(v)?;
        set.insert(v.to_owned());
    }
    if set.is_empty() {
        return Err(format!("the set of values for {:?} is empty", field.key()));
    }
    Ok(set)
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.conj, f)
    }
}

impl std::str::FromStr for Selector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, SelectorError> {
        Parser::new(s).selector()
    }
}

impl TryFrom<&str> for Selector {
    type Error = SelectorError;

    fn try_from(s: &str) -> Result<Self, SelectorError> {
        s.parse()
    }
}

impl Serialize for Selector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Cow::<'de, str>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A selector that does not parse, or a builder given an invalid key or
/// value. Converts into [`Error::Config`] (`CONFIG`).
///
/// ```
/// use agent_protocol::selector::Selector;
/// let err = "role in (db,".parse::<Selector>().unwrap_err();
/// assert_eq!(err.position(), Some(12));
/// assert_eq!(err.message(), "expected a value, found the end");
/// let err = Selector::all().eq("region", "eu west").unwrap_err();
/// assert_eq!(err.position(), None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectorError {
    position: Option<usize>,
    message: String,
}

impl SelectorError {
    fn at(position: usize, message: impl Into<String>) -> Self {
        SelectorError {
            position: Some(position),
            message: message.into(),
        }
    }

    fn built(message: String) -> Self {
        SelectorError {
            position: None,
            message,
        }
    }

    /// The byte offset in the text where parsing failed (for ASCII text,
    /// the 0-based column); `None` for an error from a builder.
    pub fn position(&self) -> Option<usize> {
        self.position
    }

    /// What went wrong, without the position.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for SelectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some(p) => write!(f, "invalid selector at byte {p}: {}", self.message),
            None => write!(f, "invalid selector: {}", self.message),
        }
    }
}

impl std::error::Error for SelectorError {}

impl From<SelectorError> for Error {
    fn from(e: SelectorError) -> Self {
        Error::Config(e.to_string())
    }
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok<'a> {
    /// A run of characters other than whitespace and `!=(),`.
    Ident(&'a str),
    Eq,
    DoubleEq,
    NotEq,
    Bang,
    Open,
    Close,
    Comma,
    End,
}

impl fmt::Display for Tok<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Ident(s) => write!(f, "`{}`", clip(s, ECHO_LEN)),
            Tok::Eq => f.write_str("`=`"),
            Tok::DoubleEq => f.write_str("`==`"),
            Tok::NotEq => f.write_str("`!=`"),
            Tok::Bang => f.write_str("`!`"),
            Tok::Open => f.write_str("`(`"),
            Tok::Close => f.write_str("`)`"),
            Tok::Comma => f.write_str("`,`"),
            Tok::End => f.write_str("the end"),
        }
    }
}

fn is_special(c: char) -> bool {
    c.is_whitespace() || matches!(c, '!' | '=' | '(' | ')' | ',')
}

/// A recursive-descent parser over a one-token lookahead lexer; it never
/// indexes the text except at character boundaries it found itself.
struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str) -> Self {
        Parser { text, pos: 0 }
    }

    /// The next token and where it starts, without consuming it.
    fn peek(&self) -> (usize, Tok<'a>, usize) {
        let rest = self.text.get(self.pos..).unwrap_or("");
        let trimmed = rest.trim_start();
        let start = self.pos + (rest.len() - trimmed.len());
        let mut chars = trimmed.chars();
        let (tok, len) = match chars.next() {
            None => (Tok::End, 0),
            Some('=') if chars.next() == Some('=') => (Tok::DoubleEq, 2),
            Some('=') => (Tok::Eq, 1),
            Some('!') if chars.next() == Some('=') => (Tok::NotEq, 2),
            Some('!') => (Tok::Bang, 1),
            Some('(') => (Tok::Open, 1),
            Some(')') => (Tok::Close, 1),
            Some(',') => (Tok::Comma, 1),
            Some(_) => {
                let len = trimmed.find(is_special).unwrap_or(trimmed.len());
                (Tok::Ident(trimmed.get(..len).unwrap_or("")), len)
            }
        };
        (start, tok, start + len)
    }

    fn next(&mut self) -> (usize, Tok<'a>) {
        let (start, tok, end) = self.peek();
        self.pos = end;
        (start, tok)
    }

    fn selector(mut self) -> Result<Selector, SelectorError> {
        let mut conj = Conjunction::default();
        if self.peek().1 == Tok::End {
            return Ok(Selector { conj });
        }
        loop {
            conj.terms.push(self.term()?);
            match self.next() {
                (_, Tok::Comma) => {}
                (_, Tok::End) => return Ok(Selector { conj }),
                (at, tok) => {
                    return Err(SelectorError::at(
                        at,
                        format!("expected `,` or the end, found {tok}"),
                    ))
                }
            }
        }
    }

    fn field(at: usize, key: &str) -> Result<Field, SelectorError> {
        Field::parse(key).map_err(|m| SelectorError::at(at, m))
    }

    fn term(&mut self) -> Result<Term, SelectorError> {
        let (at, tok) = self.next();
        match tok {
            Tok::Bang => match self.next() {
                (at, Tok::Ident(key)) => Ok(Term {
                    field: Self::field(at, key)?,
                    op: Op::NotExists,
                }),
                (at, tok) => Err(SelectorError::at(
                    at,
                    format!("expected a key after `!`, found {tok}"),
                )),
            },
            Tok::Ident(key) => {
                let field = Self::field(at, key)?;
                let (op_at, op, _) = self.peek();
                let op = match op {
                    Tok::Eq | Tok::DoubleEq => {
                        self.next();
                        Op::Eq(self.value(&field)?)
                    }
                    Tok::NotEq => {
                        self.next();
                        Op::NotEq(self.value(&field)?)
                    }
                    Tok::Ident("in") => {
                        self.next();
                        Op::In(self.set(&field, "in")?)
                    }
                    Tok::Ident("notin") => {
                        self.next();
                        Op::NotIn(self.set(&field, "notin")?)
                    }
                    Tok::Comma | Tok::End => Op::Exists,
                    tok => {
                        return Err(SelectorError::at(
                            op_at,
                            format!(
                                "expected `=`, `==`, `!=`, `in`, `notin`, `,` or the end after the key, found {tok}"
                            ),
                        ))
                    }
                };
                Ok(Term { field, op })
            }
            tok => Err(SelectorError::at(
                at,
                format!("expected a key or `!`, found {tok}"),
            )),
        }
    }

    /// The value after `=`, `==` or `!=`; empty when a `,` or the end
    /// follows.
    fn value(&mut self, field: &Field) -> Result<String, SelectorError> {
        let (at, tok, _) = self.peek();
        let value = match tok {
            Tok::Ident(v) => {
                self.next();
                v
            }
            Tok::Comma | Tok::End => "",
            tok => {
                return Err(SelectorError::at(
                    at,
                    format!("expected a value, `,` or the end, found {tok}"),
                ))
            }
        };
        field
            .check_value(value)
            .map_err(|m| SelectorError::at(at, m))?;
        Ok(value.to_owned())
    }

    /// `( value {, value} )` after `in` or `notin`.
    fn set(&mut self, field: &Field, op: &str) -> Result<BTreeSet<String>, SelectorError> {
        match self.next() {
            (_, Tok::Open) => {}
            (at, tok) => {
                return Err(SelectorError::at(
                    at,
                    format!("expected `(` after `{op}`, found {tok}"),
                ))
            }
        }
        let mut set = BTreeSet::new();
        loop {
            match self.next() {
                (at, Tok::Ident(v)) => {
                    field.check_value(v).map_err(|m| SelectorError::at(at, m))?;
                    set.insert(v.to_owned());
                }
                (at, tok) => {
                    return Err(SelectorError::at(
                        at,
                        format!("expected a value, found {tok}"),
                    ))
                }
            }
            match self.next() {
                (_, Tok::Comma) => {}
                (_, Tok::Close) => return Ok(set),
                (at, tok) => {
                    return Err(SelectorError::at(
                        at,
                        format!("expected `,` or `)`, found {tok}"),
                    ))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(s: &str) -> Labels {
        s.parse().unwrap()
    }

    fn sel(s: &str) -> Selector {
        s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn err(s: &str) -> (usize, String) {
        let e = s.parse::<Selector>().unwrap_err();
        (e.position().unwrap(), e.message().to_owned())
    }

    #[test]
    fn each_operator_with_and_without_the_key() {
        let eu = labels("region=eu");
        let us = labels("region=us");
        let none = Labels::new();
        let empty = labels("region=");
        // (selector, eu, us, no key, empty value)
        let table = [
            ("region=eu", true, false, false, false),
            ("region==eu", true, false, false, false),
            ("region!=eu", false, true, true, true),
            ("region in (eu,ap)", true, false, false, false),
            ("region notin (eu,ap)", false, true, true, true),
            ("region", true, true, false, true),
            ("!region", false, false, true, false),
            ("region=", false, false, false, true),
            ("region!=", true, true, true, false),
        ];
        for (s, a, b, c, d) in table {
            let s = sel(s);
            assert_eq!(
                [
                    s.matches("A1", &eu),
                    s.matches("A1", &us),
                    s.matches("A1", &none),
                    s.matches("A1", &empty)
                ],
                [a, b, c, d],
                "{s}"
            );
        }
    }

    #[test]
    fn terms_are_anded_and_empty_selects_all() {
        let s = sel("region=eu,role in (db,cache),!draining");
        assert!(s.matches("A1", &labels("region=eu,role=db")));
        assert!(s.matches("A1", &labels("region=eu,role=cache,zone=b")));
        assert!(!s.matches("A1", &labels("region=eu,role=web")));
        assert!(!s.matches("A1", &labels("region=eu,role=db,draining=")));
        assert!(!s.matches("A1", &labels("role=db")));
        for all in ["", "  ", "\t"] {
            let s = sel(all);
            assert!(s.is_all());
            assert_eq!(s, Selector::all());
            assert!(s.matches("A1", &Labels::new()));
        }
        assert_eq!(Selector::all().to_string(), "");
        // Contradictions are allowed and select nothing.
        assert!(!sel("a=1,a=2").matches("A1", &labels("a=1")));
    }

    #[test]
    fn name_is_a_term() {
        let l = labels("region=eu");
        assert!(sel("name=A0042").matches("A0042", &l));
        assert!(!sel("name=A0042").matches("A0043", &l));
        assert!(sel("name in (A0001,A0002)").matches("A0002", &l));
        assert!(sel("name notin (A0001)").matches("A0002", &l));
        assert!(sel("name!=A0001").matches("A0002", &l));
        assert!(sel("name").matches("A0002", &l));
        assert!(!sel("!name").matches("A0002", &l));
        assert!(sel("name=A0042,region=eu").matches("A0042", &l));
        // A name may be 64 characters and begin with `-`; a label value may not.
        let long = "-".repeat(64);
        assert!(sel(&format!("name={long}")).matches(&long, &l));
        assert_eq!(
            sel("name=A1").conjunctions()[0].terms()[0].field(),
            &Field::Name
        );
        let (at, m) = err("name=");
        assert_eq!(at, 5);
        assert!(m.contains("invalid agent name"), "{m}");
        let (at, m) = err("name in (A1,a/b)");
        assert_eq!(at, 12);
        assert!(m.contains("invalid agent name \"a/b\""), "{m}");
        // Not a label key, so `acme.io/name` is an ordinary label.
        assert!(sel("acme.io/name=x").matches("A1", &labels("acme.io/name=x")));
    }

    #[test]
    fn display_is_canonical() {
        for (input, canonical) in [
            ("a=1", "a=1"),
            ("a == 1", "a=1"),
            (" a != 1 ", "a!=1"),
            ("a in ( z , y,z )", "a in (y,z)"),
            ("a notin(b)", "a notin (b)"),
            ("a,  !b", "a,!b"),
            ("a=,b!=", "a=,b!="),
            (
                "in in (in),notin notin (notin),in=notin",
                "in in (in),notin notin (notin),in=notin",
            ),
            ("acme.io/role=db", "acme.io/role=db"),
        ] {
            let s = sel(input);
            assert_eq!(s.to_string(), canonical, "{input}");
            assert_eq!(sel(canonical), s, "{input}");
        }
    }

    #[test]
    fn parse_errors_say_where_and_what() {
        let table: &[(&str, usize, &str)] = &[
            (",", 0, "expected a key or `!`, found `,`"),
            ("a=1,", 4, "expected a key or `!`, found the end"),
            ("a=1,,b", 4, "expected a key or `!`, found `,`"),
            ("=1", 0, "expected a key or `!`, found `=`"),
            ("!", 1, "expected a key after `!`, found the end"),
            ("!=a", 0, "expected a key or `!`, found `!=`"),
            ("!a=1", 2, "expected `,` or the end, found `=`"),
            (
                "a b",
                2,
                "expected `=`, `==`, `!=`, `in`, `notin`, `,` or the end after the key, found `b`",
            ),
            ("a (b)", 2, "found `(`"),
            (
                "region=eu,role in db",
                18,
                "expected `(` after `in`, found `db`",
            ),
            ("a notin", 7, "expected `(` after `notin`, found the end"),
            ("a in ()", 6, "expected a value, found `)`"),
            ("a in (b,)", 8, "expected a value, found `)`"),
            ("a in (b c)", 8, "expected `,` or `)`, found `c`"),
            ("a in (b", 7, "expected `,` or `)`, found the end"),
            ("a=(b)", 2, "expected a value, `,` or the end, found `(`"),
            ("a=b=c", 3, "expected `,` or the end, found `=`"),
            ("a=b c", 4, "expected `,` or the end, found `c`"),
            ("a===b", 3, "expected a value, `,` or the end, found `=`"),
            ("-a=1", 0, "invalid label key \"-a\""),
            ("a/b/c", 0, "at most one `/`"),
            ("region=eu,Acme.io/x", 10, "DNS subdomain"),
            ("a=-1", 2, "invalid value \"-1\" for label \"a\""),
            ("a in (ok,-bad)", 9, "invalid value \"-bad\""),
            ("a=é", 2, "only ASCII"),
            ("ключ", 0, "only ASCII"),
        ];
        for &(input, at, want) in table {
            let (got_at, msg) = err(input);
            assert!(msg.contains(want), "{input:?}: {msg}");
            assert_eq!(got_at, at, "{input:?}: {msg}");
        }
        // The position counts bytes.
        let (at, _) = err("é=1,a b");
        assert_eq!(at, 0);
        let (at, m) = err("a=1 ,  é");
        assert_eq!(at, 7);
        assert!(m.contains("only ASCII"), "{m}");
        // Long tokens are clipped in messages.
        let long = format!("a {}", "x".repeat(10_000));
        let (_, m) = err(&long);
        assert!(m.len() < 200, "{}", m.len());
    }

    #[test]
    fn builders_validate_and_equal_parsing() {
        let built = Selector::all()
            .eq("a", "1")
            .unwrap()
            .not_eq("b", "")
            .unwrap()
            .in_("c", ["x", "y"])
            .unwrap()
            .not_in("d", vec!["z".to_string()])
            .unwrap()
            .exists("e")
            .unwrap()
            .not_exists("f")
            .unwrap()
            .name("A1")
            .unwrap()
            .names(["A2", "A3"])
            .unwrap();
        assert_eq!(
            built.to_string(),
            "a=1,b!=,c in (x,y),d notin (z),e,!f,name=A1,name in (A2,A3)"
        );
        assert_eq!(sel(&built.to_string()), built);
        let a = Selector::all().eq("a", "1").unwrap();
        let b = Selector::all().exists("b").unwrap();
        assert_eq!(a.and(b), sel("a=1,b"));

        for e in [
            Selector::all().eq("a b", "1").unwrap_err(),
            Selector::all().eq("a", "1 2").unwrap_err(),
            Selector::all().in_("a", Vec::<String>::new()).unwrap_err(),
            Selector::all().in_("a", ["x", ""]).unwrap_err(),
            Selector::all().name("").unwrap_err(),
            Selector::all().exists("").unwrap_err(),
        ] {
            assert_eq!(e.position(), None, "{e}");
            assert!(e.to_string().starts_with("invalid selector: "), "{e}");
        }
        assert!(Selector::all()
            .in_("a", Vec::<String>::new())
            .unwrap_err()
            .message()
            .contains("empty"));
    }

    #[test]
    fn serde_is_the_text_form() {
        let s = sel("region=eu,role in (db,cache),!draining");
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#""region=eu,role in (cache,db),!draining""#);
        assert_eq!(serde_json::from_str::<Selector>(&json).unwrap(), s);
        let e = serde_json::from_str::<Selector>(r#""a in b""#).unwrap_err();
        assert!(e.to_string().contains("at byte 5"), "{e}");
        assert!(serde_json::from_str::<Selector>("{}").is_err());
        let e: Error = "a in b".parse::<Selector>().unwrap_err().into();
        assert_eq!(e.code(), "CONFIG");
    }
}
