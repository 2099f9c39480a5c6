//! Reconnect delays: exponential backoff with full jitter.

use std::time::Duration;

/// How the client retries after losing its link. `Default` gives the
/// documented defaults.
///
/// The n-th retry waits a random time between zero and
/// `min(max_delay, initial_delay × factor^n)` ("full jitter"), so a fleet
/// that lost its server does not come back in lockstep.
///
/// ```
/// use std::time::Duration;
/// use agent_client::Backoff;
/// let policy = Backoff::default()
///     .initial_delay(Duration::from_millis(100))
///     .max_delay(Duration::from_secs(10))
///     .max_retries(Some(20));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct Backoff {
    pub(crate) enabled: bool,
    pub(crate) initial_delay: Duration,
    pub(crate) factor: f64,
    pub(crate) max_delay: Duration,
    pub(crate) max_retries: Option<u32>,
    pub(crate) healthy_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            enabled: true,
            initial_delay: Duration::from_millis(250),
            factor: 2.0,
            max_delay: Duration::from_secs(30),
            max_retries: None,
            healthy_after: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// No reconnecting: a lost link stays lost.
    pub fn disabled() -> Self {
        Backoff {
            enabled: false,
            ..Backoff::default()
        }
    }

    /// The ceiling of the first retry's delay. Default 250 ms.
    pub fn initial_delay(mut self, d: Duration) -> Self {
        self.initial_delay = d;
        self
    }

    /// How much the ceiling grows per retry (at least 1). Default 2.
    pub fn factor(mut self, f: f64) -> Self {
        self.factor = if f.is_finite() { f.max(1.0) } else { 1.0 };
        self
    }

    /// The highest ceiling. Default 30 s.
    pub fn max_delay(mut self, d: Duration) -> Self {
        self.max_delay = d;
        self
    }

    /// Retries before giving up; `None` retries forever. Default `None`.
    pub fn max_retries(mut self, n: Option<u32>) -> Self {
        self.max_retries = n;
        self
    }

    /// How long a link must stay up before the retry count starts over.
    /// Default 30 s.
    pub fn healthy_after(mut self, d: Duration) -> Self {
        self.healthy_after = d;
        self
    }

    /// The delay before retry number `retry` (0-based), or `None` when the
    /// retries are used up.
    pub(crate) fn delay(&self, retry: u32) -> Option<Duration> {
        if !self.enabled || self.max_retries.is_some_and(|max| retry >= max) {
            return None;
        }
        let exp = self.factor.powi(i32::try_from(retry.min(64)).unwrap_or(64));
        let ceiling = self.initial_delay.as_secs_f64() * exp;
        let ceiling = ceiling.min(self.max_delay.as_secs_f64());
        let jittered = rand::random::<f64>() * ceiling;
        Some(Duration::from_secs_f64(jittered.max(0.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_under_the_growing_ceiling_and_stop_after_max() {
        let b = Backoff::default()
            .initial_delay(Duration::from_millis(100))
            .factor(2.0)
            .max_delay(Duration::from_secs(1))
            .max_retries(Some(6));
        for retry in 0..6 {
            let ceiling = (0.1 * 2f64.powi(retry as i32)).min(1.0);
            for _ in 0..50 {
                let d = b.delay(retry).unwrap();
                assert!(d.as_secs_f64() <= ceiling + 1e-9, "{d:?} > {ceiling}");
            }
        }
        assert_eq!(b.delay(6), None);
        assert_eq!(Backoff::disabled().delay(0), None);
    }

    #[test]
    fn jitter_spreads_delays() {
        let b = Backoff::default();
        let delays: std::collections::HashSet<u128> =
            (0..20).map(|_| b.delay(3).unwrap().as_nanos()).collect();
        assert!(delays.len() > 10);
    }
}
