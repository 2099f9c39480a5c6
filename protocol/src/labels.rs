//! Agent labels: small `key=value` maps that a [`Selector`] picks agents by.
//!
//! An agent presents labels when it connects, the server may set or override
//! them, and [`crate::selector`] evaluates selectors against them. This
//! module holds the value type and its validation only; no index, no
//! network.
//!
//! # Syntax
//!
//! The rules are those of Kubernetes labels.
//!
//! A **key** is an optional prefix and a name, `prefix/name`:
//!
//! * the **name** (required) is 1 to 63 characters of ASCII letters, digits,
//!   `-`, `_` and `.`, beginning and ending with a letter or digit;
//! * the **prefix** (optional) is a DNS subdomain of at most 253
//!   characters: lowercase letters, digits, `-` and `.`, each dot-separated
//!   part beginning and ending with a letter or digit; it is followed by `/`.
//!
//! A **value** is 0 to 63 characters of ASCII letters, digits, `-`, `_` and
//! `.`, beginning and ending with a letter or digit when not empty.
//!
//! The key `name` (without a prefix) is reserved: in a selector it stands
//! for the agent's name, so no label may use it (`acme.io/name` is fine).
//! An agent carries at most [`MAX_LABELS`] labels.
//!
//! | key | |
//! |---|---|
//! | `region`, `tier.v2`, `acme.io/role`, `a-b_c` | valid |
//! | `-region`, `region-`, `acme.io/`, `/role`, `Acme.io/role`, `a/b/c`, `name` | invalid |
//!
//! ```
//! use agent_protocol::labels::Labels;
//!
//! let mut labels = Labels::new();
//! labels.insert("region", "eu")?;
//! labels.insert("acme.io/role", "db")?;
//! labels.insert("canary", "")?; // an empty value is allowed
//! assert_eq!(labels.get("region"), Some("eu"));
//! assert_eq!(labels.to_string(), "acme.io/role=db,canary=,region=eu");
//!
//! // The same labels from their text form, and the errors say what is wrong.
//! let parsed: Labels = "region=eu, acme.io/role=db, canary=".parse()?;
//! assert_eq!(parsed, labels);
//! let err = labels.insert("region", "eu west").unwrap_err();
//! assert!(err.to_string().contains("letters, digits"), "{err}");
//! # Ok::<(), agent_protocol::labels::LabelError>(())
//! ```
//!
//! On the wire (`auth.labels`), labels are a JSON object of strings:
//! `{"region": "eu", "acme.io/role": "db"}`.
//!
//! [`Selector`]: crate::selector::Selector

use std::borrow::Cow;
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;
use crate::log_limit::clip;

/// Longest name part of a key, in characters.
pub const MAX_KEY_NAME_LEN: usize = 63;

/// Longest prefix of a key (without its `/`), in characters.
pub const MAX_KEY_PREFIX_LEN: usize = 253;

/// Longest value, in characters.
pub const MAX_VALUE_LEN: usize = 63;

/// Most labels one agent may carry.
pub const MAX_LABELS: usize = 64;

/// The reserved key: in a selector it stands for the agent's name.
pub const NAME_KEY: &str = "name";

/// How much of a peer's key or value an error message repeats.
const ECHO_LEN: usize = 64;

/// Why a label key, a value or a set of labels is not acceptable.
///
/// Converts into [`Error::Config`] (`CONFIG`) for `?` in code that returns
/// [`Error`].
///
/// ```
/// use agent_protocol::labels::{validate_key, LabelError};
/// let err = validate_key("acme.io/").unwrap_err();
/// assert!(matches!(err, LabelError::InvalidKey { .. }));
/// assert_eq!(err.to_string(), r#"invalid label key "acme.io/": the name after the prefix is empty"#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LabelError {
    /// The key breaks the key syntax.
    #[error("invalid label key {key:?}: {reason}")]
    InvalidKey {
        /// The offending key (clipped when long).
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The value breaks the value syntax.
    #[error("invalid value {value:?} for label {key:?}: {reason}")]
    InvalidValue {
        /// The label's key (clipped when long).
        key: String,
        /// The offending value (clipped when long).
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The key is [`NAME_KEY`], which selectors use for the agent's name.
    #[error("label key \"name\" is reserved: in a selector it stands for the agent's name")]
    ReservedKey,
    /// More than [`MAX_LABELS`] labels.
    #[error("more than {MAX_LABELS} labels")]
    TooMany,
    /// The same key twice in one set of labels.
    #[error("label key {0:?} appears twice")]
    Duplicate(String),
    /// Text that is not a list of `key=value` pairs.
    #[error("invalid labels: {0}")]
    Malformed(String),
}

impl From<LabelError> for Error {
    fn from(e: LabelError) -> Self {
        Error::Config(e.to_string())
    }
}

fn echo(text: &str) -> String {
    clip(text, ECHO_LEN).into_owned()
}

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

/// Checks the name part of a key, or a non-empty value: the same charset
/// rule. `Err` holds the reason.
fn check_name_like(s: &str, max: usize, what_long: &'static str) -> Result<(), &'static str> {
    let bytes = s.as_bytes();
    if bytes.len() > max {
        return Err(what_long);
    }
    if !bytes.iter().all(|&b| is_name_char(b)) {
        return Err("only ASCII letters, digits, `-`, `_` and `.` are allowed");
    }
    match (bytes.first(), bytes.last()) {
        (Some(f), Some(l)) if f.is_ascii_alphanumeric() && l.is_ascii_alphanumeric() => Ok(()),
        (Some(_), Some(_)) => Err("must begin and end with a letter or digit"),
        _ => Ok(()),
    }
}

/// Checks a DNS subdomain (the prefix of a key), as Kubernetes does.
fn check_prefix(prefix: &str) -> Result<(), &'static str> {
    if prefix.is_empty() {
        return Err("the prefix before `/` is empty");
    }
    if prefix.len() > MAX_KEY_PREFIX_LEN {
        return Err("the prefix is longer than 253 characters");
    }
    let part_ok = |part: &[u8]| {
        matches!((part.first(), part.last()),
            (Some(f), Some(l)) if f.is_ascii_alphanumeric() && l.is_ascii_alphanumeric())
            && part
                .iter()
                .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if prefix.as_bytes().split(|&b| b == b'.').all(part_ok) {
        Ok(())
    } else {
        Err("the prefix must be a DNS subdomain: lowercase letters, digits, `-` and `.`, each dot-separated part beginning and ending with a letter or digit")
    }
}

/// Checks a label key (see the [module docs](self) for the syntax). The
/// reserved key `name` fails with [`LabelError::ReservedKey`].
///
/// ```
/// use agent_protocol::labels::validate_key;
/// assert!(validate_key("region").is_ok());
/// assert!(validate_key("acme.io/role").is_ok());
/// assert!(validate_key("").is_err());
/// assert!(validate_key("-region").is_err());
/// assert!(validate_key("ACME.io/role").is_err());
/// assert!(validate_key("name").is_err());
/// ```
pub fn validate_key(key: &str) -> Result<(), LabelError> {
    if key == NAME_KEY {
        return Err(LabelError::ReservedKey);
    }
    validate_key_syntax(key)
}

/// The key syntax alone, `name` included: selectors accept it.
pub(crate) fn validate_key_syntax(key: &str) -> Result<(), LabelError> {
    let invalid = |reason| LabelError::InvalidKey {
        key: echo(key),
        reason,
    };
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        check_prefix(prefix).map_err(invalid)?;
        if name.contains('/') {
            return Err(invalid("a key holds at most one `/`"));
        }
        if name.is_empty() {
            return Err(invalid("the name after the prefix is empty"));
        }
    } else if name.is_empty() {
        return Err(invalid("the key is empty"));
    }
    check_name_like(
        name,
        MAX_KEY_NAME_LEN,
        "the name is longer than 63 characters",
    )
    .map_err(invalid)
}

/// Checks the value of label `key` (0 to 63 characters; see the
/// [module docs](self)). `key` only names the label in the error.
///
/// ```
/// use agent_protocol::labels::validate_value;
/// assert!(validate_value("region", "eu-west-1").is_ok());
/// assert!(validate_value("canary", "").is_ok());
/// assert!(validate_value("region", "eu west").is_err());
/// assert!(validate_value("region", "-eu").is_err());
/// assert!(validate_value("region", &"x".repeat(64)).is_err());
/// ```
pub fn validate_value(key: &str, value: &str) -> Result<(), LabelError> {
    check_name_like(
        value,
        MAX_VALUE_LEN,
        "the value is longer than 63 characters",
    )
    .map_err(|reason| LabelError::InvalidValue {
        key: echo(key),
        value: echo(value),
        reason,
    })
}

/// An agent's labels: at most [`MAX_LABELS`] valid `key=value` pairs, kept
/// sorted by key. Serialised as a JSON object; its `Display` and `FromStr`
/// form is `key=value` pairs joined by `,`.
///
/// Every way in validates: [`Labels::insert`], parsing, deserialising.
///
/// ```
/// use agent_protocol::labels::Labels;
/// let labels = Labels::new().with("region", "eu")?.with("role", "db")?;
/// assert_eq!(serde_json::to_string(&labels).unwrap(), r#"{"region":"eu","role":"db"}"#);
/// let back: Labels = serde_json::from_str(r#"{"role":"db","region":"eu"}"#).unwrap();
/// assert_eq!(back, labels);
/// assert!(serde_json::from_str::<Labels>(r#"{"name":"x"}"#).is_err());
/// # Ok::<(), agent_protocol::labels::LabelError>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Labels {
    /// Sorted by key, keys unique. A vector: agents carry a handful of
    /// labels, and a server holds many agents.
    pairs: Vec<(String, String)>,
}

impl Labels {
    /// No labels.
    pub fn new() -> Self {
        Labels::default()
    }

    /// Labels from `(key, value)` pairs; a key that appears twice is an
    /// error.
    ///
    /// ```
    /// use agent_protocol::labels::Labels;
    /// let labels = Labels::from_pairs([("region", "eu"), ("role", "db")])?;
    /// assert_eq!(labels.len(), 2);
    /// assert!(Labels::from_pairs([("a", "1"), ("a", "2")]).is_err());
    /// # Ok::<(), agent_protocol::labels::LabelError>(())
    /// ```
    pub fn from_pairs<I, K, V>(pairs: I) -> Result<Self, LabelError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut labels = Labels::new();
        for (k, v) in pairs {
            let (k, v) = (k.as_ref(), v.as_ref());
            if labels.contains_key(k) {
                return Err(LabelError::Duplicate(echo(k)));
            }
            labels.insert(k, v)?;
        }
        Ok(labels)
    }

    /// Sets `key` to `value` and returns the value it had. Fails on an
    /// invalid key or value, and on a new key past [`MAX_LABELS`]; the
    /// labels are unchanged then.
    pub fn insert(&mut self, key: &str, value: &str) -> Result<Option<String>, LabelError> {
        validate_key(key)?;
        validate_value(key, value)?;
        match self.position(key) {
            Ok(i) => Ok(Some(std::mem::replace(
                &mut self.pairs[i].1,
                value.to_owned(),
            ))),
            Err(i) => {
                if self.pairs.len() >= MAX_LABELS {
                    return Err(LabelError::TooMany);
                }
                self.pairs.insert(i, (key.to_owned(), value.to_owned()));
                Ok(None)
            }
        }
    }

    /// [`Labels::insert`] for building: `Labels::new().with("a", "1")?`.
    pub fn with(mut self, key: &str, value: &str) -> Result<Self, LabelError> {
        self.insert(key, value)?;
        Ok(self)
    }

    /// Removes `key` and returns its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let i = self.position(key).ok()?;
        Some(self.pairs.remove(i).1)
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        let i = self.position(key).ok()?;
        self.pairs.get(i).map(|(_, v)| v.as_str())
    }

    /// True when `key` is set (to any value, the empty one included).
    pub fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_ok()
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The labels as `(key, value)`, sorted by key.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Sets every label of `other` here (its values win), as one change:
    /// when the result would hold more than [`MAX_LABELS`], nothing changes.
    ///
    /// ```
    /// use agent_protocol::labels::Labels;
    /// let mut labels: Labels = "region=eu,role=db".parse()?;
    /// labels.extend_from(&"role=cache,zone=b".parse()?)?;
    /// assert_eq!(labels.to_string(), "region=eu,role=cache,zone=b");
    /// # Ok::<(), agent_protocol::labels::LabelError>(())
    /// ```
    pub fn extend_from(&mut self, other: &Labels) -> Result<(), LabelError> {
        let added = other.iter().filter(|(k, _)| !self.contains_key(k)).count();
        if self.len() + added > MAX_LABELS {
            return Err(LabelError::TooMany);
        }
        for (k, v) in other.iter() {
            // Valid already, and room was checked above.
            match self.position(k) {
                Ok(i) => v.clone_into(&mut self.pairs[i].1),
                Err(i) => self.pairs.insert(i, (k.to_owned(), v.to_owned())),
            }
        }
        Ok(())
    }

    fn position(&self, key: &str) -> Result<usize, usize> {
        self.pairs.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }
}

impl<'a> IntoIterator for &'a Labels {
    type Item = (&'a str, &'a str);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, String)>,
        fn(&'a (String, String)) -> (&'a str, &'a str),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// `key=value` pairs sorted by key, joined by `,` (the empty string for no
/// labels); [`FromStr`](std::str::FromStr) reads it back.
impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

/// Reads `key=value` pairs separated by `,`, with optional whitespace
/// around each key and value; the empty string is no labels.
impl std::str::FromStr for Labels {
    type Err = LabelError;

    fn from_str(s: &str) -> Result<Self, LabelError> {
        if s.trim().is_empty() {
            return Ok(Labels::new());
        }
        let pairs = s
            .split(',')
            .map(|pair| {
                pair.split_once('=')
                    .map(|(k, v)| (k.trim(), v.trim()))
                    .ok_or_else(|| {
                        LabelError::Malformed(format!(
                            "expected `key=value`, found {:?}",
                            echo(pair.trim())
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Labels::from_pairs(pairs)
    }
}

impl Serialize for Labels {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.len()))?;
        for (k, v) in self.iter() {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct LabelsVisitor;

        impl<'de> Visitor<'de> for LabelsVisitor {
            type Value = Labels;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of label keys to string values")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Labels, A::Error> {
                let mut labels = Labels::new();
                // Borrowed where the input allows, owned where it has escapes.
                while let Some((k, v)) = map.next_entry::<Cow<'de, str>, Cow<'de, str>>()? {
                    if labels.contains_key(&k) {
                        return Err(serde::de::Error::custom(LabelError::Duplicate(echo(&k))));
                    }
                    labels.insert(&k, &v).map_err(serde::de::Error::custom)?;
                }
                Ok(labels)
            }
        }

        d.deserialize_map(LabelsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_kubernetes_rules() {
        let ok = [
            "a",
            "region",
            "Region",
            "a.b-c_d",
            "x9",
            "acme.io/role",
            "a/b",
            "a-1.b-2/c",
            "acme.io/name",
        ];
        for k in ok {
            assert_eq!(validate_key(k), Ok(()), "{k}");
        }
        let name63 = "n".repeat(63);
        assert!(validate_key(&name63).is_ok());
        assert!(validate_key(&"n".repeat(64)).is_err());
        let prefix253 = format!("{}.{}", "p".repeat(126), "q".repeat(126));
        assert_eq!(prefix253.len(), 253);
        assert!(validate_key(&format!("{prefix253}/{name63}")).is_ok());
        assert!(validate_key(&format!("{prefix253}x/a")).is_err());

        let bad = [
            ("", "the key is empty"),
            ("-a", "begin and end"),
            ("a-", "begin and end"),
            (".a", "begin and end"),
            ("a b", "only ASCII"),
            ("é", "only ASCII"),
            ("a=b", "only ASCII"),
            ("/a", "prefix before `/` is empty"),
            ("acme.io/", "name after the prefix is empty"),
            ("a/b/c", "at most one `/`"),
            ("Acme.io/a", "DNS subdomain"),
            ("acme..io/a", "DNS subdomain"),
            ("-acme.io/a", "DNS subdomain"),
            ("acme_io/a", "DNS subdomain"),
        ];
        for (k, why) in bad {
            let err = validate_key(k).unwrap_err();
            assert!(
                matches!(&err, LabelError::InvalidKey { key, reason } if key == k && reason.contains(why)),
                "{k}: {err}"
            );
        }
        assert_eq!(validate_key("name"), Err(LabelError::ReservedKey));
    }

    #[test]
    fn values_follow_the_kubernetes_rules() {
        for v in ["", "a", "eu-west-1", "v1.2_3", &"v".repeat(63)] {
            assert_eq!(validate_value("k", v), Ok(()), "{v}");
        }
        for (v, why) in [
            ("-a", "begin and end"),
            ("a_", "begin and end"),
            ("a b", "only ASCII"),
            ("a/b", "only ASCII"),
            (&"v".repeat(64) as &str, "longer than 63"),
        ] {
            let err = validate_value("k", v).unwrap_err();
            assert!(err.to_string().contains(why), "{v}: {err}");
            assert!(err.to_string().contains("\"k\""), "{err}");
        }
    }

    #[test]
    fn errors_clip_long_input() {
        let long = "x".repeat(10_000) + " ";
        let msg = validate_key(&long).unwrap_err().to_string();
        assert!(msg.len() < 300, "{}", msg.len());
        let msg = validate_value(&long, &long).unwrap_err().to_string();
        assert!(msg.len() < 300, "{}", msg.len());
    }

    #[test]
    fn insert_get_remove_keep_order() {
        let mut l = Labels::new();
        assert_eq!(l.insert("b", "2"), Ok(None));
        assert_eq!(l.insert("a", "1"), Ok(None));
        assert_eq!(l.insert("b", "3"), Ok(Some("2".into())));
        assert_eq!(l.iter().collect::<Vec<_>>(), [("a", "1"), ("b", "3")]);
        assert_eq!(l.get("b"), Some("3"));
        assert_eq!(l.get("c"), None);
        assert!(l.insert("c", "bad value").is_err());
        assert!(l.insert("name", "x").is_err());
        assert_eq!(l.len(), 2);
        assert_eq!(l.remove("a"), Some("1".into()));
        assert_eq!(l.remove("a"), None);
        assert_eq!(l.to_string(), "b=3");
    }

    #[test]
    fn at_most_max_labels() {
        let mut l = Labels::new();
        for i in 0..MAX_LABELS {
            l.insert(&format!("k{i}"), "v").unwrap();
        }
        assert_eq!(l.insert("one-more", "v"), Err(LabelError::TooMany));
        // Replacing a value is not a new label.
        assert_eq!(l.insert("k0", "w"), Ok(Some("v".into())));
        let more = Labels::new().with("another", "v").unwrap();
        assert_eq!(l.extend_from(&more), Err(LabelError::TooMany));
        assert_eq!(l.len(), MAX_LABELS);
        let json = serde_json::to_string(
            &(0..=MAX_LABELS)
                .map(|i| (format!("k{i}"), "v".to_string()))
                .collect::<std::collections::BTreeMap<_, _>>(),
        )
        .unwrap();
        let err = serde_json::from_str::<Labels>(&json).unwrap_err();
        assert!(err.to_string().contains("more than 64 labels"), "{err}");
    }

    #[test]
    fn text_form_round_trips_and_reports_errors() {
        let l: Labels = " region = eu ,role=db,empty=".parse().unwrap();
        assert_eq!(l.to_string(), "empty=,region=eu,role=db");
        assert_eq!(l.to_string().parse::<Labels>().unwrap(), l);
        assert_eq!("".parse::<Labels>().unwrap(), Labels::new());
        assert!(matches!(
            "region".parse::<Labels>(),
            Err(LabelError::Malformed(m)) if m.contains("expected `key=value`")
        ));
        assert!(matches!(
            "a=1,a=2".parse::<Labels>(),
            Err(LabelError::Duplicate(k)) if k == "a"
        ));
        assert!("a=1,".parse::<Labels>().is_err());
    }

    #[test]
    fn serde_is_a_json_object_and_validates() {
        let l = Labels::from_pairs([("acme.io/role", "db"), ("region", "eu")]).unwrap();
        let json = serde_json::to_string(&l).unwrap();
        assert_eq!(json, r#"{"acme.io/role":"db","region":"eu"}"#);
        assert_eq!(serde_json::from_str::<Labels>(&json).unwrap(), l);
        // Escaped strings are fine too.
        let escaped: Labels = serde_json::from_str(r#"{"regi\u006fn":"eu"}"#).unwrap();
        assert_eq!(escaped.get("region"), Some("eu"));
        for (bad, why) in [
            (r#"{"a":"1","a":"2"}"#, "appears twice"),
            (r#"{"a b":"1"}"#, "invalid label key"),
            (r#"{"a":"x y"}"#, "invalid value"),
            (r#"{"a":1}"#, "invalid type"),
            (r#"["a"]"#, "an object of label keys"),
            (r#"{"name":"A1"}"#, "reserved"),
        ] {
            let err = serde_json::from_str::<Labels>(bad).unwrap_err();
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn label_errors_are_config_errors() {
        let e: Error = LabelError::TooMany.into();
        assert_eq!(e.code(), "CONFIG");
    }
}
