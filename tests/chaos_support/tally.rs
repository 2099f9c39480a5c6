//! Outcome accounting for load under faults: every call's result and how
//! long it took against its timeout.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// How many failure descriptions a tally keeps (the counts stay exact).
const SAMPLES: usize = 8;

/// Outcomes of calls, mergeable across workers.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Calls that ended with a correct response.
    pub ok: u64,
    /// Calls that ended with an error, by code (`TIMEOUT` included).
    pub errors: BTreeMap<String, u64>,
    /// Responses that reached the wrong caller or were served by the wrong
    /// peer.
    pub misrouted: u64,
    /// Calls that ended later than their timeout plus the margin.
    pub late: u64,
    /// Calls that had not ended long after their timeout (abandoned).
    pub hung: u64,
    /// Largest time a call ran past its timeout.
    pub max_overrun: Duration,
    /// Which call that was.
    pub max_overrun_call: String,
    /// Longest call.
    pub max_elapsed: Duration,
    /// The first few failures, described.
    pub samples: Vec<String>,
}

impl Tally {
    pub fn calls(&self) -> u64 {
        self.ok + self.errors.values().sum::<u64>() + self.misrouted + self.hung
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn code(&self, code: &str) -> u64 {
        self.errors.get(code).copied().unwrap_or(0)
    }

    pub fn ok(&mut self) {
        self.ok += 1;
    }

    pub fn error(&mut self, code: &str) {
        *self.errors.entry(code.to_owned()).or_default() += 1;
    }

    pub fn misrouted(&mut self, what: String) {
        self.misrouted += 1;
        self.sample(format!("misrouted: {what}"));
    }

    pub fn hung(&mut self, what: String) {
        self.hung += 1;
        self.sample(format!("hung: {what}"));
    }

    /// Records how long a call took; flags it when it ran past
    /// `timeout + margin`.
    pub fn timing(&mut self, what: &str, elapsed: Duration, timeout: Duration, margin: Duration) {
        self.max_elapsed = self.max_elapsed.max(elapsed);
        let overrun = elapsed.saturating_sub(timeout);
        if overrun > self.max_overrun {
            self.max_overrun = overrun;
            self.max_overrun_call = what.to_owned();
        }
        if elapsed > timeout + margin {
            self.late += 1;
            self.sample(format!(
                "late: {what} took {elapsed:?} with a timeout of {timeout:?}"
            ));
        }
    }

    pub fn sample(&mut self, s: String) {
        if self.samples.len() < SAMPLES {
            self.samples.push(s);
        }
    }

    pub fn merge(&mut self, o: Tally) {
        self.ok += o.ok;
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.misrouted += o.misrouted;
        self.late += o.late;
        self.hung += o.hung;
        if o.max_overrun > self.max_overrun {
            self.max_overrun = o.max_overrun;
            self.max_overrun_call = o.max_overrun_call;
        }
        self.max_elapsed = self.max_elapsed.max(o.max_elapsed);
        for s in o.samples {
            self.sample(s);
        }
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} calls: {} ok, {} errors {:?}, {} misrouted, {} late, {} hung; \
             max overrun {:?} ({}), longest {:?}",
            self.calls(),
            self.ok,
            self.error_count(),
            self.errors,
            self.misrouted,
            self.late,
            self.hung,
            self.max_overrun,
            if self.max_overrun_call.is_empty() {
                "-"
            } else {
                &self.max_overrun_call
            },
            self.max_elapsed
        )
    }
}
