//! Counters every link of one side adds to: calls by direction and outcome
//! code, call latency, bytes read and written, links opened.
//!
//! A server (or a client) holds one [`Counters`] for all its links, so the
//! totals outlive the links. Nothing here is per agent: the number of
//! entries is fixed but for outcome codes, which are capped (past
//! [`MAX_CODES`] distinct codes a direction counts the rest as `OTHER`, so
//! a peer inventing codes cannot grow it without bound). With the cargo
//! feature `metrics`, the same events are also recorded through the
//! `metrics` facade (see [`Counters`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the call latency buckets, in seconds.
pub const CALL_LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

/// Distinct outcome codes kept apart per direction.
pub const MAX_CODES: usize = 64;

/// The outcome of a call that succeeded.
pub const OK: &str = "OK";

/// Which way a call went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// This side called the peer.
    Out,
    /// The peer called this side.
    In,
}

impl Direction {
    /// `"out"` or `"in"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Out => "out",
            Direction::In => "in",
        }
    }
}

/// Counts shared by the links of one side.
///
/// With the cargo feature `metrics` each event is also recorded through
/// the `metrics` facade: counters `agent_tunnel_calls_total{direction,
/// code}`, `agent_tunnel_bytes_total{direction}` and
/// `agent_tunnel_links_opened_total`, and the histogram
/// `agent_tunnel_call_seconds` (calls out; give the exporter
/// [`CALL_LATENCY_BUCKETS`] as its buckets).
#[derive(Debug, Default)]
pub struct Counters {
    calls: parking_lot::Mutex<BTreeMap<(Direction, String), u64>>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    links: AtomicU64,
    latency: [AtomicU64; CALL_LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct CounterSnapshot {
    /// Calls this side made, by outcome (`OK` or the error code).
    pub calls_out: BTreeMap<String, u64>,
    /// Calls the peers made to this side, by the outcome it answered.
    pub calls_in: BTreeMap<String, u64>,
    /// Bytes of text frames read.
    pub bytes_in: u64,
    /// Bytes of frames written (before any signed envelope).
    pub bytes_out: u64,
    /// Links opened: handshakes that succeeded.
    pub links_opened: u64,
    /// Calls out per latency bucket (cumulative, bounds
    /// [`CALL_LATENCY_BUCKETS`]).
    pub call_latency_buckets: Vec<u64>,
    /// Calls out timed.
    pub call_latency_count: u64,
    /// Their total duration, in seconds.
    pub call_latency_sum: f64,
}

impl Counters {
    /// Counts one call and its outcome code.
    pub fn call(&self, direction: Direction, code: &str) {
        let mut calls = self.calls.lock();
        let distinct = calls.keys().filter(|(d, _)| *d == direction).count();
        let code = if distinct < MAX_CODES || calls.contains_key(&(direction, code.to_owned())) {
            code
        } else {
            "OTHER"
        };
        *calls.entry((direction, code.to_owned())).or_default() += 1;
        drop(calls);
        #[cfg(feature = "metrics")]
        metrics::counter!("agent_tunnel_calls_total", "direction" => direction.as_str(), "code" => code.to_owned())
            .increment(1);
    }

    /// Counts one call this side made, its outcome and how long it took.
    pub(crate) fn call_out<T>(&self, result: &Result<T, crate::Error>, took: Duration) {
        self.call(
            Direction::Out,
            result.as_ref().map_or_else(|e| e.code(), |_| OK),
        );
        let secs = took.as_secs_f64();
        for (bound, n) in CALL_LATENCY_BUCKETS.iter().zip(&self.latency) {
            if secs <= *bound {
                n.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.latency_sum_us.fetch_add(us, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::histogram!("agent_tunnel_call_seconds").record(secs);
    }

    /// Counts bytes read.
    pub(crate) fn read(&self, bytes: usize) {
        let n = u64::try_from(bytes).unwrap_or(u64::MAX);
        self.bytes_in.fetch_add(n, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("agent_tunnel_bytes_total", "direction" => "in").increment(n);
    }

    /// Counts bytes written.
    pub(crate) fn wrote(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let n = u64::try_from(bytes).unwrap_or(u64::MAX);
        self.bytes_out.fetch_add(n, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("agent_tunnel_bytes_total", "direction" => "out").increment(n);
    }

    /// Counts a link opened.
    pub(crate) fn opened(&self) {
        self.links.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("agent_tunnel_links_opened_total").increment(1);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> CounterSnapshot {
        let mut snap = CounterSnapshot {
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            links_opened: self.links.load(Ordering::Relaxed),
            call_latency_buckets: self
                .latency
                .iter()
                .map(|n| n.load(Ordering::Relaxed))
                .collect(),
            call_latency_count: self.latency_count.load(Ordering::Relaxed),
            call_latency_sum: Duration::from_micros(self.latency_sum_us.load(Ordering::Relaxed))
                .as_secs_f64(),
            ..CounterSnapshot::default()
        };
        for ((direction, code), n) in self.calls.lock().iter() {
            let map = match direction {
                Direction::Out => &mut snap.calls_out,
                Direction::In => &mut snap.calls_in,
            };
            map.insert(code.clone(), *n);
        }
        snap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_past_the_cap_count_as_other() {
        let c = Counters::default();
        for i in 0..MAX_CODES + 10 {
            c.call(Direction::In, &format!("C{i}"));
        }
        c.call(Direction::In, "C0");
        let s = c.snapshot();
        assert_eq!(s.calls_in.len(), MAX_CODES + 1);
        assert_eq!(s.calls_in["OTHER"], 10);
        assert_eq!(s.calls_in["C0"], 2);
        assert!(s.calls_out.is_empty());
    }

    #[test]
    fn latency_buckets_are_cumulative() {
        let c = Counters::default();
        c.call_out(&Ok::<_, crate::Error>(()), Duration::from_millis(3));
        c.call_out(&Err::<(), _>(crate::Error::Busy), Duration::from_secs(60));
        let s = c.snapshot();
        assert_eq!(s.calls_out["OK"], 1);
        assert_eq!(s.calls_out["BUSY"], 1);
        assert_eq!(s.call_latency_count, 2);
        assert_eq!(s.call_latency_buckets[0], 0);
        assert_eq!(s.call_latency_buckets[2], 1);
        assert_eq!(s.call_latency_buckets[CALL_LATENCY_BUCKETS.len() - 1], 1);
    }
}

#[cfg(all(test, feature = "metrics"))]
mod facade_tests {
    use super::*;
    use metrics::{
        Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    };
    use std::sync::Arc;

    /// Sums what each counter key received, and counts histogram samples.
    #[derive(Default)]
    struct Sums(parking_lot::Mutex<BTreeMap<String, f64>>);

    struct Entry(Arc<Sums>, String);

    impl metrics::CounterFn for Entry {
        fn increment(&self, n: u64) {
            *self.0 .0.lock().entry(self.1.clone()).or_default() += n as f64;
        }
        fn absolute(&self, _: u64) {}
    }

    impl metrics::HistogramFn for Entry {
        fn record(&self, _: f64) {
            *self.0 .0.lock().entry(self.1.clone()).or_default() += 1.0;
        }
    }

    struct Rec(Arc<Sums>);

    fn name(key: &Key) -> String {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        format!("{}{{{}}}", key.name(), labels.join(","))
    }

    impl Recorder for Rec {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            Counter::from_arc(Arc::new(Entry(Arc::clone(&self.0), name(key))))
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::from_arc(Arc::new(Entry(Arc::clone(&self.0), name(key))))
        }
    }

    #[test]
    fn the_facade_sees_the_same_events() {
        let sums = Arc::new(Sums::default());
        let rec = Rec(Arc::clone(&sums));
        metrics::with_local_recorder(&rec, || {
            let c = Counters::default();
            c.call_out(&Ok::<_, crate::Error>(()), Duration::from_millis(1));
            c.call(Direction::In, "BUSY");
            c.read(10);
            c.wrote(7);
            c.opened();
        });
        let sums = sums.0.lock();
        assert_eq!(sums["agent_tunnel_calls_total{code=OK,direction=out}"], 1.0);
        assert_eq!(
            sums["agent_tunnel_calls_total{code=BUSY,direction=in}"],
            1.0
        );
        assert_eq!(sums["agent_tunnel_bytes_total{direction=in}"], 10.0);
        assert_eq!(sums["agent_tunnel_bytes_total{direction=out}"], 7.0);
        assert_eq!(sums["agent_tunnel_links_opened_total{}"], 1.0);
        assert_eq!(sums["agent_tunnel_call_seconds{}"], 1.0);
    }
}
