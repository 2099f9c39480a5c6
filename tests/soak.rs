//! Soak: many agents and many calls both ways on one server, with no fault
//! injected. Every call must succeed (errors by code must all be zero), no
//! response may reach the wrong caller, and the server must forget every
//! agent once they leave. It reports calls/s and the process's resident
//! memory (VmRSS) before, during and after.
//!
//! `soak_smoke` (50 agents × 20 calls each way) runs in the normal suite;
//! `soak_full` (1,000 agents × 100 calls each way) is ignored:
//!
//! ```text
//! cargo test -p agent-tunnel --release --test soak -- --ignored --nocapture
//! ```
//!
//! The agents live in the same process as the server, so the memory figures
//! are the whole process's: server and agents together. 1,000 agents need
//! about 2,100 file descriptors (one socket on each side per agent); the test
//! raises the soft limit to the hard one with `prlimit` (util-linux) when
//! needed, and otherwise fails naming the `ulimit -n` to run it under.
//!
//! Memory is measured two ways, at the baseline (server started, no agent),
//! with the fleet connected, at the peak (sampled every 100 ms), after the
//! calls, and after every agent closed and the server's stats are back to
//! zero:
//!
//! * **heap**: bytes allocated and not freed, counted by a global allocator
//!   wrapping the system one (`chaos_support::alloc`). This is the leak
//!   check. A connected agent costs about 33 KiB of heap (its link on both
//!   ends, tasks, buffers). After close the heap must be within
//!   `HEAP_SLACK_KIB` + `HEAP_SLACK_PER_AGENT` × agents (256 KiB + 256 B per
//!   agent) of the baseline: the slack covers what is kept on purpose, sized
//!   by the most agents connected at once (the registry's hash-table capacity,
//!   about 100 KiB after 1,000 agents; the runtime's queues). A second,
//!   identical round must not leave more than `ROUND_SLACK_KIB` (64 KiB)
//!   more heap behind than the first: what is kept on purpose is kept once,
//!   while a leak grows every round. So the full run fails on a leak of about
//!   0.5 KiB per agent, the smoke run (50 agents) on one of 1.3 KiB per agent
//!   (leaking each agent's server handle, for one, leaks 2.7 KiB).
//! * **VmRSS** from /proc/self/status, as the operating system sees the
//!   process. Freed memory stays mapped by the allocator until trimmed, so the
//!   test calls glibc's `malloc_trim` before each figure taken at rest; even
//!   then pages partly used by live allocations and the worker threads'
//!   arenas stay resident, so after close VmRSS must be within
//!   `RSS_SLACK_KIB` (8 MiB) + 10% of the run's RSS growth of the baseline.
//!   (Skipped on C libraries without `malloc_trim`.)

mod chaos_support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_tunnel::client::AgentClient;
use agent_tunnel::server::{AgentServer, ServerStats};
use agent_tunnel::MemoryStore;
use chaos_support::alloc::{live_bytes, Counting};
use chaos_support::echo::{agent_call, agent_echo, broadcast, server_call, server_echo, CallPlan};
use chaos_support::proc::{ensure_nofile, open_fds, rss_kib, trim_heap, CAN_TRIM};
use chaos_support::tally::Tally;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

#[global_allocator]
static ALLOC: Counting = Counting;

const SECRET: &str = "soak-secret";
/// Generous: no call may fail, and a loaded machine is slow, not broken.
const CALLS: CallPlan = CallPlan {
    timeout: Duration::from_secs(30),
    margin: Duration::from_secs(5),
    guard: Duration::from_secs(30),
    routine: &[],
};
/// Bound on every wait for a state.
const SETTLE: Duration = Duration::from_secs(60);
/// Handshakes at once while the fleet connects.
const CONNECTING: usize = 64;
/// Heap the process may keep after every agent left, besides
/// `HEAP_SLACK_PER_AGENT` bytes per agent (see the module docs).
const HEAP_SLACK_KIB: u64 = 256;
const HEAP_SLACK_PER_AGENT: u64 = 256;
/// RSS slack after close, besides 10% of the run's RSS growth.
const RSS_SLACK_KIB: u64 = 8 * 1024;
/// Heap growth allowed from one round's after-close to the next's.
const ROUND_SLACK_KIB: u64 = 64;

struct Soak {
    name: &'static str,
    agents: usize,
    calls: usize,
    rounds: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_smoke() {
    run(Soak {
        name: "smoke",
        agents: 50,
        calls: 20,
        rounds: 2,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "soak: 1,000 agents x 100 calls each way, two rounds; run with --release"]
async fn soak_full() {
    run(Soak {
        name: "full",
        agents: 1000,
        calls: 100,
        rounds: 2,
    })
    .await;
}

/// Memory at one point, in KiB: the process's resident set and the heap
/// bytes it holds (allocated, not freed).
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    rss: u64,
    heap: u64,
}

impl Sample {
    fn now() -> Sample {
        Sample {
            rss: rss_kib().unwrap_or(0),
            heap: (live_bytes() / 1024) as u64,
        }
    }

    fn max(self, o: Sample) -> Sample {
        Sample {
            rss: self.rss.max(o.rss),
            heap: self.heap.max(o.heap),
        }
    }
}

impl std::fmt::Display for Sample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RSS {} KiB / heap {} KiB", self.rss, self.heap)
    }
}

/// Memory figures of one round.
#[derive(Debug, Clone, Copy, Default)]
struct Mem {
    connected: Sample,
    peak: Sample,
    after_load: Sample,
    /// After every agent closed, the server's stats are zero and the
    /// allocator's free memory was handed back.
    after_close: Sample,
}

async fn run(soak: Soak) {
    ensure_nofile(2 * soak.agents as u64 + 256);
    let server = AgentServer::builder()
        .secret(SECRET)
        .start("127.0.0.1:0")
        .await
        .expect("server starts");
    server_echo(&server);
    let url = format!("ws://{}", server.local_addr());
    let fds_before = open_fds();
    trim_heap();
    let base = Sample::now();
    println!(
        "soak {}: {} agents x {} calls each way, {} round(s); baseline {base}, {:?} fds",
        soak.name, soak.agents, soak.calls, soak.rounds, fds_before
    );

    let mut rounds = Vec::new();
    let mut total = Tally::default();
    for round in 1..=soak.rounds {
        let (tally, mem, rate) = one_round(&soak, &server, &url, round).await;
        println!(
            "soak {} round {round}: {tally}; {rate:.0} calls/s",
            soak.name
        );
        println!(
            "soak {} round {round} memory: baseline {base}; connected {}; peak {}; \
             after load {}; after close {}; heap per connected agent {:.1} KiB",
            soak.name,
            mem.connected,
            mem.peak,
            mem.after_load,
            mem.after_close,
            mem.connected.heap.saturating_sub(base.heap) as f64 / soak.agents as f64
        );
        for s in &tally.samples {
            println!("  sample: {s}");
        }
        rounds.push(mem);
        total.merge(tally);
    }
    server.shutdown().await;
    trim_heap();
    println!(
        "soak {}: after shutdown {}, {:?} fds",
        soak.name,
        Sample::now(),
        open_fds()
    );

    assert_eq!(
        total.error_count(),
        0,
        "no call fails in a soak: errors by code {:?}, {:?}",
        total.errors,
        total.samples
    );
    assert_eq!(total.misrouted, 0, "{:?}", total.samples);
    assert_eq!(total.hung + total.late, 0, "{:?}", total.samples);
    assert_eq!(
        total.ok,
        (soak.rounds * soak.agents * (2 * soak.calls + 1)) as u64,
        "every call succeeded"
    );

    // Memory returns close to its baseline once every agent has gone.
    let first = rounds[0];
    let heap_allowed =
        base.heap + HEAP_SLACK_KIB + HEAP_SLACK_PER_AGENT * soak.agents as u64 / 1024;
    assert!(
        first.after_close.heap <= heap_allowed,
        "the heap returns to its baseline after close: {} KiB > {heap_allowed} KiB \
         (baseline {base}, peak {})",
        first.after_close.heap,
        first.peak
    );
    if base.rss > 0 && CAN_TRIM {
        let growth = first.peak.rss.saturating_sub(base.rss);
        let rss_allowed = base.rss + RSS_SLACK_KIB + growth / 10;
        assert!(
            first.after_close.rss <= rss_allowed,
            "RSS returns close to its baseline after close: {} KiB > {rss_allowed} KiB \
             (baseline {base}, peak {})",
            first.after_close.rss,
            first.peak
        );
    }
    for (i, later) in rounds.iter().enumerate().skip(1) {
        let allowed = first.after_close.heap + ROUND_SLACK_KIB;
        assert!(
            later.after_close.heap <= allowed,
            "round {} left more heap behind than round 1: {} KiB > {allowed} KiB",
            i + 1,
            later.after_close.heap
        );
    }
}

/// Connects the fleet, runs the calls, closes the fleet; returns the calls'
/// outcomes, the memory figures and the call rate.
async fn one_round(
    soak: &Soak,
    server: &AgentServer,
    url: &str,
    round: usize,
) -> (Tally, Mem, f64) {
    let mut mem = Mem::default();
    // Sample the peak while the round runs (bounded: one sample per 100 ms
    // for at most an hour, and it stops with the round).
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let stop = Arc::clone(&stop);
        async move {
            let mut peak = Sample::now();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            for _ in 0..36_000 {
                tick.tick().await;
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                peak = peak.max(Sample::now());
            }
            peak
        }
    });

    // Connect, a bounded number of handshakes at a time.
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(CONNECTING));
    let mut joins = JoinSet::new();
    for i in 0..soak.agents {
        let gate = Arc::clone(&gate);
        let url = url.to_owned();
        joins.spawn(async move {
            let _permit = gate.acquire_owned().await.expect("gate open");
            let builder = agent_echo(
                AgentClient::builder(&url, SECRET).store_arc(Arc::new(MemoryStore::new())),
            );
            let client = tokio::time::timeout(SETTLE, builder.connect())
                .await
                .unwrap_or_else(|_| panic!("agent {i} connects in time"))
                .unwrap_or_else(|e| panic!("agent {i} connects: {e}"));
            let name = client.name().expect("a connected agent has a name");
            (client, name)
        });
    }
    let mut agents = Vec::with_capacity(soak.agents);
    while let Some(joined) = joins.join_next().await {
        agents.push(joined.expect("connect task"));
    }
    let connect_time = started.elapsed();
    let names: BTreeSet<String> = agents.iter().map(|(_, n)| n.clone()).collect();
    assert_eq!(names.len(), soak.agents, "every agent has its own name");
    assert_eq!(server.stats().agents, soak.agents);
    mem.connected = Sample::now();

    // Calls, both ways, every agent at once; each caller makes its calls in
    // sequence.
    let started = Instant::now();
    let mut load = JoinSet::new();
    let calls = soak.calls;
    for (client, name) in &agents {
        let (client, me) = (client.clone(), name.clone());
        load.spawn(async move {
            let mut t = Tally::default();
            for _ in 0..calls {
                t.merge(agent_call(&client, &me, 0, &CALLS).await);
            }
            t
        });
        let (server, name) = (server.clone(), name.clone());
        load.spawn(async move {
            let mut t = Tally::default();
            for _ in 0..calls {
                t.merge(server_call(&server, &name, 0, &CALLS).await);
            }
            t
        });
    }
    let mut tally = Tally::default();
    while let Some(t) = load.join_next().await {
        tally.merge(t.expect("caller task"));
    }
    // One broadcast reaches every agent.
    tally.merge(broadcast(server, &names, 0, &CALLS).await);
    let load_time = started.elapsed();
    let rate = (tally.calls()) as f64 / load_time.as_secs_f64().max(0.001);
    mem.after_load = Sample::now();
    let busy = server.stats();
    assert_eq!(busy.pending_requests, 0, "{busy:?}");
    for (client, name) in &agents {
        assert_eq!(client.pending_requests(), 0, "{name} holds no request");
    }

    // Close; the server forgets every agent.
    let started = Instant::now();
    let closes = agents.iter().map(|(c, _)| c.close());
    tokio::time::timeout(SETTLE, futures_util::future::join_all(closes))
        .await
        .expect("clients close in time");
    drop(agents);
    let empty = wait_stats(server, ServerStats::is_idle).await;
    let close_time = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.await.expect("sampler");
    mem.peak = peak.max(mem.connected).max(mem.after_load);
    trim_heap();
    mem.after_close = Sample::now();
    println!(
        "soak {} round {round}: connect {connect_time:.1?}, load {load_time:.1?}, \
         close {close_time:.1?}; stats after close {empty:?}",
        soak.name
    );
    (tally, mem, rate)
}

/// Polls the server's stats (there is no event for them) every 50 ms until
/// `done`, within `SETTLE`.
async fn wait_stats(server: &AgentServer, done: impl Fn(&ServerStats) -> bool) -> ServerStats {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut last = server.stats();
    for _ in 0..SETTLE.as_millis() / 50 {
        tick.tick().await;
        last = server.stats();
        if done(&last) {
            return last;
        }
    }
    panic!("the server did not forget its agents: {last:?}");
}
