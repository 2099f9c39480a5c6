//! Reconnect delays: exponential backoff with full jitter.

use std::time::Duration;

use agent_protocol::Error;

/// How the client retries after losing its link. `Default` gives the
/// documented defaults.
///
/// The n-th retry waits a random time between zero and
/// `min(max_delay, initial_delay × factor^n)` ("full jitter"), so a fleet
/// that lost its server does not come back in lockstep. The values are
/// checked when the client starts: a `factor` below 1 or not finite, or a
/// `max_delay` below `initial_delay`, fails `connect`/`start` with `CONFIG`.
///
/// ```
/// use std::time::Duration;
/// use agent_client::Backoff;
/// let policy = Backoff::default()
///     .initial_delay(Duration::from_millis(100))
///     .max_delay(Duration::from_secs(10))
///     .max_retries(20);
/// let forever = Backoff::default().unlimited_retries();
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

    /// How much the ceiling grows per retry: finite and at least 1 (else
    /// `CONFIG` at start). Default 2.
    pub fn factor(mut self, f: f64) -> Self {
        self.factor = f;
        self
    }

    /// The highest ceiling, at least `initial_delay` (else `CONFIG` at
    /// start). Default 30 s.
    pub fn max_delay(mut self, d: Duration) -> Self {
        self.max_delay = d;
        self
    }

    /// Retries in a row before giving up: `.max_retries(5)`; `None` (or
    /// [`Backoff::unlimited_retries`]) retries forever. Default: forever.
    pub fn max_retries(mut self, n: impl Into<Option<u32>>) -> Self {
        self.max_retries = n.into();
        self
    }

    /// Retries forever (the default): the same as `max_retries(None)`.
    pub fn unlimited_retries(mut self) -> Self {
        self.max_retries = None;
        self
    }

    /// How long a link must stay up before the retry count starts over.
    /// Default 30 s.
    pub fn healthy_after(mut self, d: Duration) -> Self {
        self.healthy_after = d;
        self
    }

    /// Checks the values `delay` relies on; the builder calls it at start.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if !self.factor.is_finite() || self.factor < 1.0 {
            return Err(Error::Config(format!(
                "backoff factor must be finite and at least 1, not {}",
                self.factor
            )));
        }
        if self.max_delay < self.initial_delay {
            return Err(Error::Config(format!(
                "backoff max_delay ({:?}) must be at least initial_delay ({:?})",
                self.max_delay, self.initial_delay
            )));
        }
        Ok(())
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
        // A ceiling near `Duration::MAX` can round past it as f64.
        Some(Duration::try_from_secs_f64(jittered.max(0.0)).unwrap_or(self.max_delay))
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
            .max_retries(6);
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
    fn retry_limits_read_as_numbers_or_none() {
        assert_eq!(Backoff::default().max_retries(5).max_retries, Some(5));
        assert_eq!(Backoff::default().max_retries(Some(5)).max_retries, Some(5));
        assert_eq!(Backoff::default().max_retries(None).max_retries, None);
        let b = Backoff::default().max_retries(5).unlimited_retries();
        assert_eq!(b.max_retries, None);
        assert_eq!(b, Backoff::default());
        assert_eq!(Backoff::default().max_retries(0).delay(0), None);
    }

    #[test]
    fn bad_values_are_config_errors_and_huge_ones_do_not_overflow() {
        assert!(Backoff::default().validate().is_ok());
        for f in [0.5, 0.0, -1.0, f64::NAN, f64::INFINITY] {
            let err = Backoff::default().factor(f).validate().unwrap_err();
            assert_eq!(err.code(), "CONFIG", "factor {f}");
        }
        let err = Backoff::default()
            .initial_delay(Duration::from_secs(2))
            .max_delay(Duration::from_secs(1))
            .validate()
            .unwrap_err();
        assert_eq!(err.code(), "CONFIG");
        let huge = Backoff::default()
            .initial_delay(Duration::MAX)
            .max_delay(Duration::MAX)
            .factor(1e300);
        assert!(huge.validate().is_ok());
        for retry in [0, 1, 63, 64, u32::MAX] {
            assert!(huge.delay(retry).is_some());
        }
    }

    #[test]
    fn jitter_spreads_delays() {
        let b = Backoff::default();
        let delays: std::collections::HashSet<u128> =
            (0..20).map(|_| b.delay(3).unwrap().as_nanos()).collect();
        assert!(delays.len() > 10);
    }
}
