//! What every scenario shares: the request body, the measuring loops and the
//! statistics.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};

use crate::sys::Usage;

/// Errors of the harness are messages: it reports them and stops.
pub type Res<T> = Result<T, String>;

/// Adds context to an error.
pub trait Context<T> {
    fn ctx(self, what: &str) -> Res<T>;
}

impl<T, E: std::fmt::Display> Context<T> for Result<T, E> {
    fn ctx(self, what: &str) -> Res<T> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

/// The request body of every scenario: a typed status report of about 100
/// bytes of JSON. Every implementation parses it and serializes it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Body {
    pub id: u64,
    pub host: String,
    pub region: String,
    pub cpu: f64,
    pub mem_mb: u32,
    pub tags: Vec<String>,
    pub ok: bool,
}

impl Body {
    pub fn sample() -> Self {
        Body {
            id: 1_234_567,
            host: "agent-0042".to_owned(),
            region: "eu-west".to_owned(),
            cpu: 0.42,
            mem_mb: 1536,
            tags: vec!["web".to_owned(), "prod".to_owned()],
            ok: true,
        }
    }

    pub fn json() -> String {
        serde_json::to_string(&Self::sample()).unwrap_or_default()
    }
}

/// The action every implementation serves.
pub const ECHO: &str = "echo";

/// A fresh loopback address for each server, so that every scenario has its
/// own space of (source port, destination) pairs and no TIME_WAIT left by an
/// earlier one gets in the way.
pub fn next_loopback() -> IpAddr {
    static NEXT: AtomicU8 = AtomicU8::new(10);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n.max(2)))
}

pub fn bind_addr() -> SocketAddr {
    SocketAddr::new(next_loopback(), 0)
}

/// Per-call deadline: nothing in the harness waits forever.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// One call after another on one connection.
pub trait Caller {
    async fn call(&mut self) -> Res<()>;
}

/// Calls that may run concurrently on one connection.
pub trait SharedCaller {
    async fn call(&self) -> Res<()>;
}

/// Throughput and latency of one implementation in one scenario.
#[derive(Debug, Clone)]
pub struct Throughput {
    /// Median over the trials, calls per second.
    pub rate: f64,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
    pub trials: Vec<f64>,
    pub calls: usize,
    /// Process CPU time (user + system, both ends) per call.
    pub cpu_per_call: Duration,
    pub allocs_per_call: f64,
    /// Context switches of the process per call.
    pub switches_per_call: f64,
}

/// Collects the trials of one implementation in one scenario. Trials of the
/// implementations are interleaved, so that a slow spell of the machine
/// falls on all of them alike.
#[derive(Debug, Default)]
pub struct Recorder {
    rates: Vec<f64>,
    latencies: Vec<Duration>,
    calls: usize,
    usage: Usage,
}

impl Recorder {
    pub fn finish(mut self) -> Throughput {
        self.latencies.sort_unstable();
        let (p50, p99) = if self.latencies.is_empty() {
            (None, None)
        } else {
            (
                Some(percentile(&self.latencies, 50.0)),
                Some(percentile(&self.latencies, 99.0)),
            )
        };
        let calls = self.calls.max(1) as f64;
        Throughput {
            rate: median(&self.rates),
            p50,
            p99,
            trials: self.rates,
            calls: self.calls,
            cpu_per_call: self.usage.cpu.div_f64(calls),
            allocs_per_call: self.usage.allocations as f64 / calls,
            switches_per_call: self.usage.switches as f64 / calls,
        }
    }

    /// Starts a trial: what the process has used so far.
    pub fn start(&self) -> (Instant, Usage) {
        (Instant::now(), Usage::now())
    }

    pub fn add_trial(&mut self, calls: usize, start: (Instant, Usage)) {
        let elapsed = start.0.elapsed();
        self.usage.add(Usage::now().since(start.1));
        self.rates.push(calls as f64 / elapsed.as_secs_f64());
        self.calls += calls;
    }
}

/// A whole trial must end within this.
pub const TRIAL_TIMEOUT: Duration = Duration::from_secs(120);

async fn bounded<T>(what: &str, f: impl Future<Output = Res<T>>) -> Res<T> {
    match tokio::time::timeout(TRIAL_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => Err(format!("{what} did not finish within {TRIAL_TIMEOUT:?}")),
    }
}

/// One trial of sequential round trips: `calls` calls, one after another,
/// each timed.
pub async fn sequential_trial<C: Caller>(c: &mut C, calls: usize, rec: &mut Recorder) -> Res<()> {
    let mut lat = Vec::with_capacity(calls);
    let start = rec.start();
    bounded("a sequential trial", async {
        for _ in 0..calls {
            let t = Instant::now();
            c.call().await?;
            lat.push(t.elapsed());
        }
        Ok(())
    })
    .await?;
    rec.add_trial(calls, start);
    rec.latencies.extend(lat);
    Ok(())
}

/// Warm-up calls, not recorded.
pub async fn warm_up<C: Caller>(c: &mut C, calls: usize) -> Res<()> {
    bounded("warm-up", async {
        for _ in 0..calls {
            c.call().await?;
        }
        Ok(())
    })
    .await
}

/// One trial of `calls` calls with `depth` kept in flight on one connection
/// from one task.
pub async fn in_flight_trial<C: SharedCaller>(
    c: &C,
    depth: usize,
    calls: usize,
    rec: Option<&mut Recorder>,
) -> Res<()> {
    let start = Recorder::default().start();
    bounded("an in-flight trial", async {
        let mut running = FuturesUnordered::new();
        let mut started = 0;
        while started < calls.min(depth) {
            running.push(c.call());
            started += 1;
        }
        while let Some(done) = running.next().await {
            done?;
            if started < calls {
                running.push(c.call());
                started += 1;
            }
        }
        Ok(())
    })
    .await?;
    if let Some(rec) = rec {
        rec.add_trial(calls, start);
    }
    Ok(())
}

/// Runs a call under [`CALL_TIMEOUT`].
pub async fn timed<T>(f: impl Future<Output = Res<T>>) -> Res<T> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => Err(format!("call did not finish within {CALL_TIMEOUT:?}")),
    }
}

/// The median of a set of figures (mean of the middle two for an even count).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let mid = s.len() / 2;
    if s.len() % 2 == 1 {
        s[mid]
    } else {
        (s[mid - 1] + s[mid]) / 2.0
    }
}

/// Nearest-rank percentile of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
