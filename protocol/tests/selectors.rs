//! Property tests (proptest) of labels and selectors: text and serde round
//! trips, the parser on arbitrary text, the syntax against a model written
//! from the documented rules, and the algebra of the operators.

use agent_protocol::labels::{validate_key, validate_value, Labels, MAX_LABELS};
use agent_protocol::selector::{Op, Selector};
use proptest::prelude::*;
use proptest::test_runner::Config;

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

/// A label key: a few fixed ones (so terms and labels meet), keywords, and
/// generated keys with and without a prefix.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["region", "role", "zone", "canary", "acme.io/tier"])
            .prop_map(str::to_owned),
        1 => prop::sample::select(vec!["in", "notin"]).prop_map(str::to_owned),
        2 => "([a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?(\\.[a-z0-9]{1,4}){0,2}/)?[A-Za-z0-9]([A-Za-z0-9._-]{0,8}[A-Za-z0-9])?"
            .prop_filter("not the reserved key", |k| k != "name"),
    ]
}

/// A label value: a few fixed ones, the empty one, and generated ones.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["eu", "us", "db", "cache", "in"]).prop_map(str::to_owned),
        1 => Just(String::new()),
        2 => "[A-Za-z0-9]([A-Za-z0-9._-]{0,8}[A-Za-z0-9])?",
    ]
}

fn agent_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (1u32..6).prop_map(|n| format!("A{n:04}")),
        1 => "[A-Za-z0-9._-]{1,64}",
    ]
}

fn labels() -> impl Strategy<Value = Labels> {
    prop::collection::btree_map(key(), value(), 0..6)
        .prop_map(|m| Labels::from_pairs(m).expect("keys and values are valid"))
}

fn nonempty_values() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(value().prop_filter("not empty", |v| !v.is_empty()), 1..4)
}

/// One term, added to a selector by its builder.
#[derive(Debug, Clone)]
enum T {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
    Names(Vec<String>),
}

fn term() -> impl Strategy<Value = T> {
    prop_oneof![
        (key(), value()).prop_map(|(k, v)| T::Eq(k, v)),
        (key(), value()).prop_map(|(k, v)| T::NotEq(k, v)),
        (key(), nonempty_values()).prop_map(|(k, v)| T::In(k, v)),
        (key(), nonempty_values()).prop_map(|(k, v)| T::NotIn(k, v)),
        key().prop_map(T::Exists),
        key().prop_map(T::NotExists),
        prop::collection::vec(agent_name(), 1..3).prop_map(T::Names),
    ]
}

fn add(s: Selector, t: &T) -> Selector {
    match t {
        T::Eq(k, v) => s.eq(k, v),
        T::NotEq(k, v) => s.not_eq(k, v),
        T::In(k, v) => s.in_(k, v),
        T::NotIn(k, v) => s.not_in(k, v),
        T::Exists(k) => s.exists(k),
        T::NotExists(k) => s.not_exists(k),
        T::Names(n) => s.names(n),
    }
    .expect("generated terms are valid")
}

fn selector() -> impl Strategy<Value = Selector> {
    prop::collection::vec(term(), 0..5).prop_map(|ts| ts.iter().fold(Selector::all(), add))
}

// ---------------------------------------------------------------------------
// A model of the key syntax, written from the rules in the docs.
// ---------------------------------------------------------------------------

fn model_name_like(s: &str, max: usize, may_be_empty: bool) -> bool {
    let b = s.as_bytes();
    if b.is_empty() {
        return may_be_empty;
    }
    b.len() <= max
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
}

fn model_key(k: &str) -> bool {
    if k == "name" {
        return false;
    }
    let parts: Vec<&str> = k.split('/').collect();
    match parts.as_slice() {
        [name] => model_name_like(name, 63, false),
        [prefix, name] => {
            prefix.len() <= 253
                && prefix.split('.').all(|p| {
                    !p.is_empty()
                        && p.bytes()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                        && !p.starts_with('-')
                        && !p.ends_with('-')
                })
                && model_name_like(name, 63, false)
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn key_and_value_checks_agree_with_the_documented_rules(
        k in "[a-zA-Z0-9._/-]{0,12}|[a-z.-]{1,6}/[A-Za-z0-9._-]{0,6}",
        v in "[a-zA-Z0-9._/ -]{0,12}",
    ) {
        prop_assert_eq!(validate_key(&k).is_ok(), model_key(&k), "key {:?}", k);
        prop_assert_eq!(validate_value("k", &v).is_ok(), model_name_like(&v, 63, true), "value {:?}", v);
    }

    #[test]
    fn labels_round_trip_as_text_and_json(l in labels()) {
        prop_assert_eq!(l.to_string().parse::<Labels>().unwrap(), l.clone());
        let json = serde_json::to_string(&l).unwrap();
        prop_assert_eq!(serde_json::from_str::<Labels>(&json).unwrap(), l.clone());
        // The same as a plain JSON object of strings.
        let map: std::collections::BTreeMap<String, String> = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(map.len(), l.len());
        prop_assert!(l.len() <= MAX_LABELS);
    }

    #[test]
    fn selectors_round_trip_as_text_and_json(s in selector()) {
        let text = s.to_string();
        let back: Selector = text.parse().map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
        prop_assert_eq!(&back, &s, "{}", text);
        let json = serde_json::to_string(&s).unwrap();
        prop_assert_eq!(serde_json::from_str::<Selector>(&json).unwrap(), s.clone());
        // Whitespace around separators and sets changes nothing.
        let spaced = text.replace(',', " , ").replace(" in (", "  in\t( ").replace(')', " ) ");
        prop_assert_eq!(spaced.parse::<Selector>().unwrap(), s);
    }

    #[test]
    fn any_text_parses_or_fails_cleanly(text in "[a-z0-9 !=(),./_-]{0,24}|\\PC{0,16}") {
        match text.parse::<Selector>() {
            Ok(s) => {
                // What parses has a canonical form that parses to the same.
                prop_assert_eq!(s.to_string().parse::<Selector>().unwrap(), s);
            }
            Err(e) => {
                let at = e.position().unwrap();
                prop_assert!(at <= text.len() && text.is_char_boundary(at), "{:?}: {}", text, e);
                prop_assert!(!e.message().is_empty());
            }
        }
    }

    #[test]
    fn negated_operators_are_complements(k in key(), v in value(), vs in nonempty_values(), name in agent_name(), l in labels()) {
        let m = |s: Selector| s.matches(&name, &l);
        let all = Selector::all;
        prop_assert_eq!(m(all().not_eq(&k, &v).unwrap()), !m(all().eq(&k, &v).unwrap()));
        prop_assert_eq!(m(all().not_in(&k, &vs).unwrap()), !m(all().in_(&k, &vs).unwrap()));
        prop_assert_eq!(m(all().not_exists(&k).unwrap()), !m(all().exists(&k).unwrap()));
        // `in` is the OR of its `=`s; `=` implies exists.
        let any_eq = vs.iter().any(|v| m(all().eq(&k, v).unwrap()));
        prop_assert_eq!(m(all().in_(&k, &vs).unwrap()), any_eq);
        if m(all().eq(&k, &v).unwrap()) {
            prop_assert!(m(all().exists(&k).unwrap()));
        }
        // A missing key passes exactly the negative operators.
        if l.get(&k).is_none() {
            prop_assert!(!m(all().eq(&k, &v).unwrap()) && !m(all().in_(&k, &vs).unwrap()));
            prop_assert!(m(all().not_eq(&k, &v).unwrap()) && m(all().not_in(&k, &vs).unwrap()));
        }
    }

    #[test]
    fn a_selector_is_the_and_of_its_terms(s in selector(), name in agent_name(), l in labels()) {
        let terms = s.conjunctions()[0].terms();
        prop_assert_eq!(s.matches(&name, &l), terms.iter().all(|t| t.matches(&name, &l)));
        for t in terms {
            prop_assert_eq!(t.is_positive(), matches!(t.op(), Op::Eq(_) | Op::In(_) | Op::Exists));
        }
    }

    #[test]
    fn the_name_term_selects_by_name(name in agent_name(), other in agent_name(), l in labels()) {
        let s = Selector::all().name(&name).unwrap();
        prop_assert!(s.matches(&name, &l));
        prop_assert_eq!(s.matches(&other, &l), other == name);
    }
}
