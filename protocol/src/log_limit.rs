//! Rate limits for log lines that a peer can trigger at will.
//!
//! A peer that panics a hook, fails its handshake or breaks the protocol in a
//! loop must not be able to fill the operator's logs. Each such call site
//! owns a [`LogLimit`]: it lets a few lines through per window and counts the
//! rest, and the next line that passes says how many were held back.
//!
//! ```
//! use agent_protocol::log_limit::LogLimit;
//!
//! static HOOK_PANICS: LogLimit = LogLimit::per_second(5);
//! if let Some(suppressed) = HOOK_PANICS.allow() {
//!     tracing::error!(suppressed, "hook panicked");
//! }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The window every limit counts in.
const WINDOW: Duration = Duration::from_secs(1);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Lets at most `max` log lines through per second; see the module docs.
#[derive(Debug)]
pub struct LogLimit {
    max: u64,
    /// Window number (seconds since the process's first use) in the high
    /// 40 bits, lines let through in it in the low 24.
    state: AtomicU64,
    suppressed: AtomicU64,
}

const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

impl LogLimit {
    /// A limit of `max` lines per second (at least one).
    pub const fn per_second(max: u64) -> Self {
        LogLimit {
            max: if max == 0 { 1 } else { max },
            state: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line may be logged now, `n` being how many were held
    /// back since the last one that passed; `None` when this one is held
    /// back too.
    pub fn allow(&self) -> Option<u64> {
        let window = epoch().elapsed().as_secs() / WINDOW.as_secs().max(1) + 1;
        let mut cur = self.state.load(Ordering::Relaxed);
        loop {
            let (w, n) = (cur >> COUNT_BITS, cur & COUNT_MASK);
            let next = if w == window {
                if n >= self.max {
                    self.suppressed.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                (window << COUNT_BITS) | (n + 1)
            } else {
                (window << COUNT_BITS) | 1
            };
            match self
                .state
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some(self.suppressed.swap(0, Ordering::Relaxed)),
                Err(actual) => cur = actual,
            }
        }
    }
}

/// Text a peer chose, cut to `max` bytes at a character boundary for a log
/// line or an error message, with `…` when something was cut.
///
/// ```
/// use agent_protocol::log_limit::clip;
/// assert_eq!(clip("status", 64), "status");
/// assert_eq!(clip(&"x".repeat(100), 8), "xxxxxxxx…");
/// ```
pub fn clip(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}…", &text[..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_the_first_lines_through_then_counts_the_rest() {
        let limit = LogLimit::per_second(3);
        let passed: Vec<_> = (0..10).filter_map(|_| limit.allow()).collect();
        // Normally all ten fall in one window; a window boundary in between
        // lets a few more through, never all.
        assert!(passed.len() >= 3 && passed.len() < 10, "{passed:?}");
        assert_eq!(passed[0], 0);
    }

    #[test]
    fn clip_keeps_characters_whole() {
        let s = "é".repeat(10);
        let c = clip(&s, 5);
        assert!(c.starts_with("éé") && c.ends_with('…'));
    }
}
