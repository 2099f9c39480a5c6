//! The label index: which connected agents carry which labels, so that a
//! [`Selector`] is evaluated without looking at every agent.
//!
//! It holds every indexed name with its labels, and an inverted index
//! label key → value → names. [`LabelIndex::select`] takes, for each
//! conjunction of the selector, the term with the smallest candidate set
//! among its positive terms (`key=value` and `name=…`: one posting set;
//! `key in (…)`: the union of a few; `key` exists: every value's set) and
//! tests only those candidates against the whole conjunction with
//! [`Selector::matches`], so the semantics are the selector's own.
//! Selecting 100 agents of 100,000 by `role=db` reads 100 entries.
//!
//! A conjunction with no positive term (`!draining`, `region!=us`,
//! `region notin (us)`, or the empty selector of every agent) has no set to
//! start from and scans every indexed agent.
//!
//! The index is a plain value; the registry keeps it under its own lock so
//! that it always agrees with the set of live agents.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use agent_protocol::labels::Labels;
use agent_protocol::selector::{Conjunction, Field, Op, Selector};

/// Names are shared between the agent map and every posting set.
type Name = Arc<str>;

#[derive(Default)]
pub(crate) struct LabelIndex {
    /// Every indexed agent and its labels.
    agents: HashMap<Name, Labels>,
    /// Label key → value → the agents with that label.
    postings: HashMap<String, HashMap<String, HashSet<Name>>>,
}

/// Where a conjunction's candidates come from.
enum Start<'a> {
    /// These names only (a `name` term).
    Names(Vec<&'a str>),
    /// The agents of these posting sets.
    Sets(Vec<&'a HashSet<Name>>),
    /// Every agent.
    Scan,
}

impl LabelIndex {
    /// Number of indexed agents.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.agents.len()
    }

    /// The labels `name` is indexed with.
    #[cfg(test)]
    pub(crate) fn labels(&self, name: &str) -> Option<&Labels> {
        self.agents.get(name)
    }

    /// Indexes `name` with `labels`, replacing what it had.
    pub(crate) fn insert(&mut self, name: &str, labels: &Labels) {
        self.remove(name);
        let name: Name = Arc::from(name);
        for (k, v) in labels {
            self.postings
                .entry(k.to_owned())
                .or_default()
                .entry(v.to_owned())
                .or_default()
                .insert(Arc::clone(&name));
        }
        self.agents.insert(name, labels.clone());
    }

    /// Drops `name`, returning the labels it was indexed with.
    pub(crate) fn remove(&mut self, name: &str) -> Option<Labels> {
        let labels = self.agents.remove(name)?;
        for (k, v) in &labels {
            self.unpost(k, v, name);
        }
        Some(labels)
    }

    /// Gives `name` the labels `labels`, touching only the postings that
    /// change. Indexes it when it was not.
    pub(crate) fn update(&mut self, name: &str, labels: &Labels) {
        let Some((shared, old)) = self.agents.remove_entry(name) else {
            self.insert(name, labels);
            return;
        };
        for (k, v) in &old {
            if labels.get(k) != Some(v) {
                self.unpost(k, v, name);
            }
        }
        for (k, v) in labels {
            if old.get(k) != Some(v) {
                self.postings
                    .entry(k.to_owned())
                    .or_default()
                    .entry(v.to_owned())
                    .or_default()
                    .insert(Arc::clone(&shared));
            }
        }
        self.agents.insert(shared, labels.clone());
    }

    fn unpost(&mut self, key: &str, value: &str, name: &str) {
        let Some(values) = self.postings.get_mut(key) else {
            return;
        };
        if let Some(names) = values.get_mut(value) {
            names.remove(name);
            if names.is_empty() {
                values.remove(value);
            }
        }
        if values.is_empty() {
            self.postings.remove(key);
        }
    }

    /// The indexed agents `selector` selects, sorted by name.
    pub(crate) fn select(&self, selector: &Selector) -> Vec<Name> {
        let mut out: BTreeSet<Name> = BTreeSet::new();
        for conj in selector.conjunctions() {
            self.select_conjunction(conj, &mut out);
        }
        out.into_iter().collect()
    }

    /// How many indexed agents `selector` selects.
    pub(crate) fn count(&self, selector: &Selector) -> usize {
        match selector.conjunctions() {
            [conj] => {
                let mut n = 0;
                self.for_each_match(conj, |_| n += 1);
                n
            }
            _ => self.select(selector).len(),
        }
    }

    fn select_conjunction(&self, conj: &Conjunction, out: &mut BTreeSet<Name>) {
        self.for_each_match(conj, |name| {
            out.insert(Arc::clone(name));
        });
    }

    /// Calls `f` once for each agent that `conj` selects.
    fn for_each_match(&self, conj: &Conjunction, mut f: impl FnMut(&Name)) {
        let mut test = |name: &Name, labels: &Labels| {
            if conj.matches(name, labels) {
                f(name);
            }
        };
        match self.start(conj) {
            Start::Names(names) => {
                for n in names {
                    if let Some((name, labels)) = self.agents.get_key_value(n) {
                        test(name, labels);
                    }
                }
            }
            Start::Sets(sets) => {
                // The values of an `in` set are distinct, so an agent is in
                // at most one of these sets: no duplicates.
                for name in sets.into_iter().flatten() {
                    if let Some(labels) = self.agents.get(name) {
                        test(name, labels);
                    }
                }
            }
            Start::Scan => {
                for (name, labels) in &self.agents {
                    test(name, labels);
                }
            }
        }
    }

    /// The positive term of `conj` with the fewest candidates.
    fn start<'a>(&'a self, conj: &'a Conjunction) -> Start<'a> {
        let mut best: Option<(usize, Start<'a>)> = None;
        for term in conj.terms() {
            let candidate = match (term.field(), term.op()) {
                (Field::Name, Op::Eq(n)) => (1, Start::Names(vec![n.as_str()])),
                (Field::Name, Op::In(set)) => (
                    set.len(),
                    Start::Names(set.iter().map(String::as_str).collect()),
                ),
                (Field::Label(key), Op::Eq(v)) => {
                    let set = self.postings.get(key).and_then(|vals| vals.get(v));
                    (
                        set.map_or(0, HashSet::len),
                        Start::Sets(set.into_iter().collect()),
                    )
                }
                (Field::Label(key), Op::In(values)) => {
                    let sets: Vec<_> = match self.postings.get(key) {
                        Some(vals) => values.iter().filter_map(|v| vals.get(v)).collect(),
                        None => Vec::new(),
                    };
                    (sets.iter().map(|s| s.len()).sum(), Start::Sets(sets))
                }
                (Field::Label(key), Op::Exists) => {
                    let sets: Vec<_> = self
                        .postings
                        .get(key)
                        .map(|vals| vals.values().collect())
                        .unwrap_or_default();
                    (sets.iter().map(|s| s.len()).sum(), Start::Sets(sets))
                }
                // Negative terms, and `name` exists (every agent), narrow nothing.
                _ => continue,
            };
            if best.as_ref().is_none_or(|(cost, _)| candidate.0 < *cost) {
                let done = candidate.0 == 0;
                best = Some(candidate);
                if done {
                    break;
                }
            }
        }
        best.map_or(Start::Scan, |(_, start)| start)
    }

    /// How many candidates `select` would test for `selector`: for tests
    /// and the benchmark's claims.
    #[cfg(test)]
    fn candidates(&self, selector: &Selector) -> usize {
        selector
            .conjunctions()
            .iter()
            .map(|conj| match self.start(conj) {
                Start::Names(n) => n.len(),
                Start::Sets(s) => s.iter().map(|s| s.len()).sum(),
                Start::Scan => self.agents.len(),
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels(s: &str) -> Labels {
        s.parse().unwrap()
    }

    fn sel(s: &str) -> Selector {
        s.parse().unwrap()
    }

    fn names(v: Vec<Name>) -> Vec<String> {
        v.iter().map(|n| n.to_string()).collect()
    }

    fn fleet(n: usize) -> LabelIndex {
        let mut ix = LabelIndex::default();
        for i in 0..n {
            let role = if i % 1000 == 0 { "db" } else { "web" };
            let region = ["eu", "us", "ap"][i % 3];
            ix.insert(
                &format!("A{i:06}"),
                &labels(&format!("role={role},region={region}")),
            );
        }
        ix
    }

    #[test]
    fn selects_from_the_smallest_posting_set() {
        let ix = fleet(100_000);
        let s = sel("region=eu,role=db");
        assert_eq!(ix.candidates(&s), 100);
        // i % 1000 == 0 and i % 3 == 0: every third of the hundred.
        assert_eq!(ix.select(&s).len(), 34);
        assert_eq!(ix.count(&s), 34);
        assert_eq!(ix.candidates(&sel("role in (db,none)")), 100);
        assert_eq!(ix.candidates(&sel("name in (A000001,A000002),role")), 2);
        assert_eq!(ix.select(&sel("name in (A000001,A000002),role")).len(), 2);
        // Absent values give an empty start, not a scan.
        assert_eq!(ix.candidates(&sel("role=none,region")), 0);
        assert_eq!(ix.candidates(&sel("nokey,region=eu")), 0);
        // Only negative terms: a scan.
        assert_eq!(ix.candidates(&sel("!draining")), 100_000);
        assert_eq!(ix.candidates(&sel("")), 100_000);
        assert_eq!(ix.count(&sel("role!=web")), 100);
    }

    #[test]
    fn insert_update_remove_keep_postings_exact() {
        let mut ix = LabelIndex::default();
        ix.insert("A1", &labels("region=eu,role=db"));
        ix.insert("A2", &labels("region=eu"));
        assert_eq!(names(ix.select(&sel("region=eu"))), ["A1", "A2"]);
        ix.update("A1", &labels("region=us,role=db,canary="));
        assert_eq!(names(ix.select(&sel("region=eu"))), ["A2"]);
        assert_eq!(names(ix.select(&sel("canary"))), ["A1"]);
        assert_eq!(ix.labels("A1"), Some(&labels("canary=,region=us,role=db")));
        // Inserting an indexed name replaces its labels.
        ix.insert("A2", &labels("role=db"));
        assert_eq!(names(ix.select(&sel("role=db"))), ["A1", "A2"]);
        assert!(ix.select(&sel("region=eu")).is_empty());
        assert_eq!(ix.remove("A1"), Some(labels("canary=,region=us,role=db")));
        assert_eq!(ix.remove("A1"), None);
        assert_eq!(names(ix.select(&sel(""))), ["A2"]);
        ix.update("A3", &Labels::new());
        assert_eq!(ix.len(), 2);
        assert!(ix.remove("A2").is_some() && ix.remove("A3").is_some());
        assert!(ix.postings.is_empty(), "empty postings are dropped");
        assert!(ix.agents.is_empty());
    }

    fn label_set() -> impl Strategy<Value = Labels> {
        let key = prop::sample::select(vec!["region", "role", "zone", "canary"]);
        let value = prop::sample::select(vec!["", "a", "b", "c"]);
        prop::collection::btree_map(key, value, 0..4).prop_map(|m| Labels::from_pairs(m).unwrap())
    }

    fn selector() -> impl Strategy<Value = Selector> {
        let key = || prop::sample::select(vec!["region", "role", "zone", "canary", "other"]);
        let val = || prop::sample::select(vec!["a", "b", "c", "d"]);
        let name = || (0u8..12).prop_map(|i| format!("A{i}"));
        let term = prop_oneof![
            (key(), val()).prop_map(|(k, v)| format!("{k}={v}")),
            key().prop_map(|k| format!("{k}=")),
            (key(), val()).prop_map(|(k, v)| format!("{k}!={v}")),
            (key(), val(), val()).prop_map(|(k, a, b)| format!("{k} in ({a},{b})")),
            (key(), val()).prop_map(|(k, v)| format!("{k} notin ({v})")),
            key().prop_map(str::to_owned),
            key().prop_map(|k| format!("!{k}")),
            name().prop_map(|n| format!("name={n}")),
            (name(), name()).prop_map(|(a, b)| format!("name in ({a},{b})")),
            name().prop_map(|n| format!("name!={n}")),
        ];
        prop::collection::vec(term, 0..4).prop_map(|ts| ts.join(",").parse().unwrap())
    }

    /// An operation on the index and on a plain map beside it.
    #[derive(Debug, Clone)]
    enum Step {
        Insert(u8, Labels),
        Update(u8, Labels),
        Remove(u8),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u8..12, label_set()).prop_map(|(n, l)| Step::Insert(n, l)),
            (0u8..12, label_set()).prop_map(|(n, l)| Step::Update(n, l)),
            (0u8..12).prop_map(Step::Remove),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn select_equals_a_brute_force_scan(
            steps in prop::collection::vec(step(), 0..40),
            selectors in prop::collection::vec(selector(), 1..6),
        ) {
            let mut ix = LabelIndex::default();
            let mut model: HashMap<String, Labels> = HashMap::new();
            for s in &steps {
                match s {
                    Step::Insert(n, l) => {
                        ix.insert(&format!("A{n}"), l);
                        model.insert(format!("A{n}"), l.clone());
                    }
                    Step::Update(n, l) => {
                        ix.update(&format!("A{n}"), l);
                        model.insert(format!("A{n}"), l.clone());
                    }
                    Step::Remove(n) => {
                        prop_assert_eq!(ix.remove(&format!("A{n}")), model.remove(&format!("A{n}")));
                    }
                }
            }
            prop_assert_eq!(ix.len(), model.len());
            for s in &selectors {
                let mut want: Vec<String> = model
                    .iter()
                    .filter(|(n, l)| s.matches(n, l))
                    .map(|(n, _)| n.clone())
                    .collect();
                want.sort();
                prop_assert_eq!(names(ix.select(s)), want.clone(), "{}", s);
                prop_assert_eq!(ix.count(s), want.len());
            }
            // Postings hold exactly the model's labels.
            let posted: usize = ix.postings.values().flat_map(|v| v.values()).map(HashSet::len).sum();
            prop_assert_eq!(posted, model.values().map(Labels::len).sum::<usize>());
        }
    }
}
