//! Deadline arithmetic that never overflows.
//!
//! `Instant + Duration` panics when the sum does not fit, and every timeout of
//! agent-tunnel comes from a builder a user sets (`Duration::MAX` included).
//! These helpers saturate to a deadline far in the future instead.

use std::time::Duration;

use tokio::time::Instant;

/// A deadline so far ahead that nothing waits for it in practice (about 30
/// years), used where `now + duration` would overflow.
const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `start + after`, or a deadline about 30 years past `start` when the sum
/// would overflow.
///
/// ```
/// use std::time::Duration;
/// use agent_protocol::time::deadline_from;
/// let now = tokio::time::Instant::now();
/// assert!(deadline_from(now, Duration::MAX) > now);
/// ```
pub fn deadline_from(start: Instant, after: Duration) -> Instant {
    start
        .checked_add(after)
        .or_else(|| start.checked_add(FAR))
        .unwrap_or(start)
}

/// `now + after`, saturating like [`deadline_from`].
pub fn deadline_in(after: Duration) -> Instant {
    deadline_from(Instant::now(), after)
}

/// The sooner of two deadlines.
pub fn sooner(a: Instant, b: Instant) -> Instant {
    a.min(b)
}
