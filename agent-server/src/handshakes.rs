//! The bound on connections that have not authenticated yet: a pool of
//! handshake slots, a share per source, and fair eviction when the pool is
//! full.
//!
//! A connection takes a slot at accept and holds it until it is registered as
//! an agent or has finished closing; the accept loop drops connections it
//! cannot give a slot. Sources are IPv4 addresses and IPv6 /64 networks (one
//! host usually holds a whole /64), IPv4-mapped IPv6 counting as IPv4.
//!
//! When every slot is taken, a connection from a source holding less than an
//! equal share of the pool (its size divided by the sources holding slots)
//! evicts the oldest connection of the source holding the most that has not
//! finished its WebSocket upgrade yet. Such a connection has sent nothing of
//! value, costs its holder nothing to open again, and is the shape of a
//! flood of idle sockets; so a few busy addresses cannot lock every other
//! address out, while an address below its share never loses a slot.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use agent_protocol::log_limit::LogLimit;
use parking_lot::Mutex;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Evictions happen at a peer's will: their log line is rate-limited.
static EVICTION_LOGS: LogLimit = LogLimit::per_second(5);

/// Where connections are counted from: an IPv4 address, or an IPv6 /64.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct Source(IpAddr);

impl Source {
    /// The source `ip` counts against.
    pub(crate) fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source(IpAddr::V4(v4)),
            IpAddr::V6(v6) => {
                let network = u128::from(v6) & !u128::from(u64::MAX);
                Source(IpAddr::V6(Ipv6Addr::from(network)))
            }
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Why the accept loop drops a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// Its source holds `max_pending_handshakes_per_ip` slots.
    Source,
    /// Every slot is taken, and its source holds its equal share already
    /// (or no connection could be evicted).
    Pool,
}

impl fmt::Display for Full {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Full::Source => "too many pending handshakes from this source",
            Full::Pool => "too many pending handshakes",
        })
    }
}

/// The pool of handshake slots of one server.
pub(crate) struct Handshakes {
    max: usize,
    max_per_source: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    taken: usize,
    next_id: u64,
    sources: HashMap<Source, Holder>,
}

/// The slots one source holds.
#[derive(Default)]
struct Holder {
    count: usize,
    /// Connections not past their upgrade yet, by accept order (oldest
    /// first): the ones an eviction may close. Cancelling the token tells
    /// the connection; its slot is already counted free by then.
    idle: BTreeMap<u64, CancellationToken>,
}

impl Handshakes {
    /// A pool of `max` slots, at most `max_per_source` for one source (each
    /// at least 1).
    pub(crate) fn new(max: usize, max_per_source: usize) -> Arc<Self> {
        Arc::new(Handshakes {
            max: max.max(1),
            max_per_source: max_per_source.max(1),
            state: Mutex::default(),
        })
    }

    /// Slots taken now.
    pub(crate) fn taken(&self) -> usize {
        self.state.lock().taken
    }

    /// A slot for a connection from `ip`, evicting another source's idle
    /// connection when the pool is full and fairness allows it.
    pub(crate) fn take(self: &Arc<Self>, ip: IpAddr) -> Result<HandshakeSlot, Full> {
        let source = Source::of(ip);
        let mut st = self.state.lock();
        let held = st.sources.get(&source).map_or(0, |h| h.count);
        if held >= self.max_per_source {
            return Err(Full::Source);
        }
        if st.taken >= self.max {
            let holders = st.sources.len() + usize::from(held == 0);
            let share = (self.max / holders.max(1)).max(1);
            if held >= share {
                return Err(Full::Pool);
            }
            // The source holding the most, among those with a connection to
            // give; evicting from it only when it holds more than one slot
            // above the newcomer, so two sources never trade slots back and
            // forth.
            let victim = st
                .sources
                .iter()
                .filter(|(s, h)| **s != source && !h.idle.is_empty() && h.count > held + 1)
                .max_by_key(|(_, h)| h.count)
                .map(|(s, _)| *s);
            let Some(victim) = victim else {
                return Err(Full::Pool);
            };
            if let Some(h) = st.sources.get_mut(&victim) {
                if let Some((_, token)) = h.idle.pop_first() {
                    token.cancel();
                    h.count -= 1;
                    st.taken -= 1;
                    if let Some(suppressed) = EVICTION_LOGS.allow() {
                        tracing::debug!(source = %victim, for_source = %source, suppressed,
                            "evicted an idle handshake to make room");
                    }
                }
            }
            st.sources.retain(|_, h| h.count > 0);
            if st.taken >= self.max {
                return Err(Full::Pool);
            }
        }
        let id = st.next_id;
        st.next_id += 1;
        let evicted = CancellationToken::new();
        let holder = st.sources.entry(source).or_default();
        holder.count += 1;
        holder.idle.insert(id, evicted.clone());
        st.taken += 1;
        Ok(HandshakeSlot {
            pool: Arc::clone(self),
            source,
            id,
            evicted,
        })
    }
}

/// One connection's place in the pool; dropping it frees the place.
pub(crate) struct HandshakeSlot {
    pool: Arc<Handshakes>,
    source: Source,
    id: u64,
    evicted: CancellationToken,
}

impl HandshakeSlot {
    /// Resolves once the pool evicted this connection to make room for a
    /// fairer one; the connection then ends at once, without a response.
    pub(crate) fn evicted(&self) -> WaitForCancellationFuture<'_> {
        self.evicted.cancelled()
    }

    /// The WebSocket upgrade is done: from now on the connection is never
    /// evicted, only bounded by the handshake deadline. False when an
    /// eviction came first (its slot is no longer counted): the connection
    /// must end.
    pub(crate) fn upgraded(&self) -> bool {
        let mut st = self.pool.state.lock();
        if self.evicted.is_cancelled() {
            return false;
        }
        if let Some(h) = st.sources.get_mut(&self.source) {
            h.idle.remove(&self.id);
        }
        true
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut st = self.pool.state.lock();
        // An eviction counted the slot free already (under this lock).
        if self.evicted.is_cancelled() {
            return;
        }
        let Some(h) = st.sources.get_mut(&self.source) else {
            return;
        };
        h.idle.remove(&self.id);
        h.count = h.count.saturating_sub(1);
        if h.count == 0 {
            st.sources.remove(&self.source);
        }
        st.taken = st.taken.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn ipv6_counts_by_its_64_and_ipv4_by_its_address() {
        // One /64: every address in it is the same source.
        assert_eq!(
            Source::of(ip("2001:db8:1:2::1")),
            Source::of(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"))
        );
        assert_eq!(
            Source::of(ip("2001:db8:1:2:abcd::9")).to_string(),
            "2001:db8:1:2::/64"
        );
        // The next /64 is another source.
        assert_ne!(
            Source::of(ip("2001:db8:1:2::1")),
            Source::of(ip("2001:db8:1:3::1"))
        );
        // IPv4 by the whole address; IPv4-mapped IPv6 is that IPv4 address.
        assert_ne!(Source::of(ip("192.0.2.1")), Source::of(ip("192.0.2.2")));
        assert_eq!(
            Source::of(ip("::ffff:192.0.2.1")),
            Source::of(ip("192.0.2.1"))
        );
        assert_eq!(Source::of(ip("::ffff:192.0.2.1")).to_string(), "192.0.2.1");
        assert_ne!(
            Source::of(ip("::ffff:192.0.2.1")),
            Source::of(ip("::ffff:192.0.2.2"))
        );
    }

    #[test]
    fn a_source_gets_at_most_its_bound() {
        let pool = Handshakes::new(8, 2);
        let a = [pool.take(ip("10.0.0.1")), pool.take(ip("10.0.0.1"))];
        assert!(a.iter().all(Result::is_ok));
        assert_eq!(pool.take(ip("10.0.0.1")).err(), Some(Full::Source));
        // The same /64 is the same source.
        let b = [pool.take(ip("2001:db8::1")), pool.take(ip("2001:db8::2"))];
        assert!(b.iter().all(Result::is_ok));
        assert_eq!(pool.take(ip("2001:db8::3")).err(), Some(Full::Source));
        assert_eq!(pool.taken(), 4);
        drop(a);
        drop(b);
        assert_eq!(pool.taken(), 0);
    }

    #[test]
    fn a_full_pool_evicts_the_oldest_idle_connection_of_the_biggest_holder() {
        let pool = Handshakes::new(4, 4);
        let first: Vec<_> = (0..4)
            .map(|_| pool.take(ip("10.0.0.1")).expect("room"))
            .collect();
        // Full: a newcomer from another source takes the oldest slot.
        let b = pool.take(ip("10.0.0.2")).expect("evicts one");
        assert!(first[0].evicted.is_cancelled());
        assert!(first[1..].iter().all(|s| !s.evicted.is_cancelled()));
        assert_eq!(pool.taken(), 4);
        // 10.0.0.2 has 1 of its 2-slot share; 10.0.0.1 has 3: one more goes.
        let b2 = pool.take(ip("10.0.0.2")).expect("evicts another");
        assert!(first[1].evicted.is_cancelled());
        // Now both hold their share: nobody is evicted for either.
        assert_eq!(pool.take(ip("10.0.0.2")).err(), Some(Full::Pool));
        assert_eq!(pool.take(ip("10.0.0.1")).err(), Some(Full::Pool));
        // An upgraded connection is never evicted.
        for s in first[2..].iter().chain([&b, &b2]) {
            assert!(s.upgraded());
        }
        assert!(!first[0].upgraded(), "evicted before its upgrade finished");
        assert_eq!(pool.take(ip("10.0.0.3")).err(), Some(Full::Pool));
        // Dropping evicted slots frees nothing twice.
        drop(first);
        assert_eq!(pool.taken(), 2);
        drop((b, b2));
        assert_eq!(pool.taken(), 0);
    }
}
