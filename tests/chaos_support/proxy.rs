//! A seeded, bounded fault-injecting TCP proxy.
//!
//! Every accepted connection is forwarded to the upstream address by two
//! pumps (one per direction) and gets a fault driver of its own, with its own
//! generator forked from the run's seed. While the proxy is *unleashed*, each
//! driver waits a random gap, then injects one fault:
//!
//! * **cut**: both sockets are closed (the endpoints see the TCP close);
//! * **stall**: nothing is forwarded, either way, for a while (bytes are held,
//!   not lost), long enough at times for the heartbeats to declare the link
//!   dead;
//! * **delay burst**: for a while, every chunk waits a random time before it
//!   is forwarded;
//! * **split burst**: for a while, every chunk is written in several small
//!   writes (partial writes: the peer reads frames in pieces).
//!
//! Outside bursts, single chunks are delayed or split at a small rate. The
//! proxy never drops, reorders or alters bytes within a connection: every
//! fault is one the network really produces, so a correct tunnel must survive
//! all of them. [`ChaosProxy::calm`] ends every fault in progress and stops
//! injecting; connections made since are forwarded cleanly.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use super::rng::Rng;

/// Most connections one proxy accepts (a bound on its accept loop).
const MAX_CONNECTIONS: u64 = 1_000_000;
/// Most faults one connection receives (a bound on its driver's loop).
const MAX_FAULTS_PER_CONNECTION: u32 = 10_000;
/// Largest chunk read at once.
const CHUNK: usize = 16 * 1024;

/// What faults to inject, and how often.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// Time between two faults on one connection.
    pub gap: (Duration, Duration),
    /// Chance (‰) that a connection's first fault comes within `early` of its
    /// accept, so that some handshakes are hit.
    pub early_permille: u64,
    /// See `early_permille`.
    pub early: Duration,
    /// Chance (‰) that a connection made while unleashed is cut after a
    /// random number of bytes, up to `handshake_bytes`: most such cuts land
    /// in the middle of the WebSocket upgrade or the handshake.
    pub handshake_cut_permille: u64,
    /// See `handshake_cut_permille`.
    pub handshake_bytes: u64,
    /// Relative weights of cut, stall, delay burst and split burst.
    pub weights: [u64; 4],
    /// How long a stall lasts.
    pub stall: (Duration, Duration),
    /// How long a delay or split burst lasts.
    pub burst: (Duration, Duration),
    /// How long one chunk is delayed.
    pub delay: (Duration, Duration),
    /// Chance (‰), outside bursts, that a chunk is delayed; the same again
    /// that it is split.
    pub chunk_permille: u64,
    /// Largest piece of a split chunk.
    pub max_piece: usize,
}

impl Default for ChaosConfig {
    fn default() -> Self {
        ChaosConfig {
            gap: (Duration::from_millis(300), Duration::from_millis(2500)),
            early_permille: 100,
            early: Duration::from_millis(40),
            handshake_cut_permille: 150,
            handshake_bytes: 1500,
            weights: [30, 30, 20, 20],
            stall: (Duration::from_millis(100), Duration::from_millis(1500)),
            burst: (Duration::from_millis(200), Duration::from_millis(1500)),
            delay: (Duration::from_millis(1), Duration::from_millis(120)),
            chunk_permille: 30,
            max_piece: 64,
        }
    }
}

/// How many faults a proxy injected.
#[derive(Debug, Clone, Copy, Default)]
pub struct FaultReport {
    pub connections: u64,
    pub cuts: u64,
    /// Connections cut after a byte budget (see `handshake_cut_permille`).
    pub byte_cuts: u64,
    pub stalls: u64,
    pub delay_bursts: u64,
    pub split_bursts: u64,
    pub delayed_chunks: u64,
    pub split_chunks: u64,
}

impl FaultReport {
    /// Adds another proxy's counts.
    pub fn add(&mut self, o: &FaultReport) {
        self.connections += o.connections;
        self.cuts += o.cuts;
        self.byte_cuts += o.byte_cuts;
        self.stalls += o.stalls;
        self.delay_bursts += o.delay_bursts;
        self.split_bursts += o.split_bursts;
        self.delayed_chunks += o.delayed_chunks;
        self.split_chunks += o.split_chunks;
    }

    /// Cuts, stalls and bursts (single delayed or split chunks not counted).
    pub fn faults(&self) -> u64 {
        self.cuts + self.byte_cuts + self.stalls + self.delay_bursts + self.split_bursts
    }
}

impl fmt::Display for FaultReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} faults: {} cuts, {} cuts after a few bytes, {} stalls, {} delay bursts, \
             {} split bursts (+ {} chunks delayed, {} chunks split) over {} connections",
            self.faults(),
            self.cuts,
            self.byte_cuts,
            self.stalls,
            self.delay_bursts,
            self.split_bursts,
            self.delayed_chunks,
            self.split_chunks,
            self.connections
        )
    }
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    cuts: AtomicU64,
    byte_cuts: AtomicU64,
    stalls: AtomicU64,
    delay_bursts: AtomicU64,
    split_bursts: AtomicU64,
    delayed_chunks: AtomicU64,
    split_chunks: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The fault state of one connection, shared by its pumps and its driver.
#[derive(Debug, Clone, Copy, Default)]
struct Conn {
    cut: bool,
    stall_until: Option<Instant>,
    delay_until: Option<Instant>,
    split_until: Option<Instant>,
}

struct Shared {
    upstream: SocketAddr,
    config: ChaosConfig,
    seed: u64,
    /// True while faults are injected.
    chaos: watch::Sender<bool>,
    /// True once frozen: nothing is forwarded any more, on any connection.
    frozen: watch::Sender<bool>,
    counts: Counters,
    conns: Mutex<HashMap<u64, Arc<watch::Sender<Conn>>>>,
}

/// The proxy; dropping it cuts every connection.
pub struct ChaosProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for c in self.shared.conns.lock().unwrap().values() {
            c.send_modify(|c| c.cut = true);
        }
    }
}

impl ChaosProxy {
    /// Starts a proxy on 127.0.0.1:0 in front of `upstream`, forwarding
    /// cleanly until [`ChaosProxy::unleash`].
    pub async fn start(upstream: SocketAddr, config: ChaosConfig, seed: u64) -> ChaosProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            upstream,
            config,
            seed,
            chaos: watch::channel(false).0,
            frozen: watch::channel(false).0,
            counts: Counters::default(),
            conns: Mutex::default(),
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        ChaosProxy {
            addr,
            shared,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Starts injecting faults, on current and new connections.
    pub fn unleash(&self) {
        self.shared.chaos.send_replace(true);
    }

    /// Stops injecting faults: stalls and bursts in progress end now, and no
    /// new fault starts. Connections already cut stay cut.
    pub fn calm(&self) {
        // Off first: a driver checks it under each connection's lock.
        self.shared.chaos.send_replace(false);
        for c in self.shared.conns.lock().unwrap().values() {
            c.send_modify(|c| {
                c.stall_until = None;
                c.delay_until = None;
                c.split_until = None;
            });
        }
    }

    /// Stops forwarding for good, on every connection, current and new,
    /// keeping the sockets open: the peers see a silent, half-open link that
    /// only their heartbeats can find dead. No fault is injected any more.
    pub fn freeze(&self) {
        self.calm();
        self.shared.frozen.send_replace(true);
    }

    /// Cuts every current connection now (whether or not unleashed).
    pub fn cut_all(&self) {
        for c in self.shared.conns.lock().unwrap().values() {
            if c.send_if_modified(|c| !std::mem::replace(&mut c.cut, true)) {
                bump(&self.shared.counts.cuts);
            }
        }
    }

    /// Connections currently forwarded.
    pub fn open_connections(&self) -> usize {
        self.shared.conns.lock().unwrap().len()
    }

    pub fn faults(&self) -> FaultReport {
        let c = &self.shared.counts;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FaultReport {
            connections: get(&c.connections),
            cuts: get(&c.cuts),
            byte_cuts: get(&c.byte_cuts),
            stalls: get(&c.stalls),
            delay_bursts: get(&c.delay_bursts),
            split_bursts: get(&c.split_bursts),
            delayed_chunks: get(&c.delayed_chunks),
            split_chunks: get(&c.split_chunks),
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for id in 0..MAX_CONNECTIONS {
        let Ok((down, _)) = listener.accept().await else {
            return;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let up = match tokio::time::timeout(
                Duration::from_secs(5),
                TcpStream::connect(shared.upstream),
            )
            .await
            {
                Ok(Ok(up)) => up,
                _ => return,
            };
            bump(&shared.counts.connections);
            // Small writes must leave as small segments.
            let _ = down.set_nodelay(true);
            let _ = up.set_nodelay(true);
            let ctl = Arc::new(watch::channel(Conn::default()).0);
            shared.conns.lock().unwrap().insert(id, Arc::clone(&ctl));
            let (dr, dw) = down.into_split();
            let (ur, uw) = up.into_split();
            let seed = shared.seed;
            let mut rng = Rng::fork(seed, id * 4);
            let cfg = &shared.config;
            let budget = AtomicU64::new(
                if *shared.chaos.borrow() && rng.chance(cfg.handshake_cut_permille) {
                    rng.range(1, cfg.handshake_bytes)
                } else {
                    UNLIMITED
                },
            );
            let to_server = pump(dr, uw, &ctl, &budget, Rng::fork(seed, id * 4 + 1), &shared);
            let to_agent = pump(ur, dw, &ctl, &budget, Rng::fork(seed, id * 4 + 2), &shared);
            let driver = drive(&ctl, Rng::fork(seed, id * 4 + 3), &shared);
            // When either direction ends, the whole connection ends.
            tokio::join!(then_cut(to_server, &ctl), then_cut(to_agent, &ctl), driver);
            shared.conns.lock().unwrap().remove(&id);
        });
    }
}

async fn then_cut(pump: impl std::future::Future<Output = ()>, ctl: &watch::Sender<Conn>) {
    pump.await;
    ctl.send_modify(|c| c.cut = true);
}

/// Injects faults into one connection while the proxy is unleashed, until
/// the connection ends.
async fn drive(ctl: &watch::Sender<Conn>, mut rng: Rng, shared: &Shared) {
    let cfg = &shared.config;
    let counts = &shared.counts;
    let mut state = ctl.subscribe();
    let mut chaos = shared.chaos.subscribe();
    for i in 0..MAX_FAULTS_PER_CONNECTION {
        tokio::select! {
            on = chaos.wait_for(|on| *on) => if on.is_err() { return },
            _ = state.wait_for(|c| c.cut) => return,
        }
        let gap = if i == 0 && rng.chance(cfg.early_permille) {
            rng.millis(Duration::ZERO, cfg.early)
        } else {
            rng.millis(cfg.gap.0, cfg.gap.1)
        };
        tokio::select! {
            _ = tokio::time::sleep(gap) => {}
            _ = chaos.wait_for(|on| !on) => continue,
            _ = state.wait_for(|c| c.cut) => return,
        }
        let kind = rng.weighted(&cfg.weights);
        let until = Instant::now()
            + match kind {
                1 => rng.millis(cfg.stall.0, cfg.stall.1),
                _ => rng.millis(cfg.burst.0, cfg.burst.1),
            };
        // Decided under the connection's lock, which `calm` takes after
        // turning chaos off: no fault starts after a calm.
        let mut applied = false;
        ctl.send_if_modified(|c| {
            if !*shared.chaos.borrow() || c.cut {
                return false;
            }
            match kind {
                0 => c.cut = true,
                1 => c.stall_until = Some(until),
                2 => c.delay_until = Some(until),
                _ => c.split_until = Some(until),
            }
            applied = true;
            true
        });
        if applied {
            bump(match kind {
                0 => &counts.cuts,
                1 => &counts.stalls,
                2 => &counts.delay_bursts,
                _ => &counts.split_bursts,
            });
        }
    }
}

/// Forwards one direction, applying the connection's faults, until either
/// side closes or the connection is cut.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    ctl: &watch::Sender<Conn>,
    budget: &AtomicU64,
    mut rng: Rng,
    shared: &Shared,
) {
    let cfg = &shared.config;
    let counts = &shared.counts;
    let mut state = ctl.subscribe();
    let mut buf = vec![0u8; CHUNK];
    // Bounded by the bytes a test sends; each round forwards at least one.
    loop {
        let n = tokio::select! {
            _ = state.wait_for(|c| c.cut) => return,
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
        };
        if *shared.frozen.borrow() || !wait_out_stall(&mut state).await {
            // Frozen: hold the bytes and the sockets until cut.
            let _ = state.wait_for(|c| c.cut).await;
            return;
        }
        let now = Instant::now();
        let conn = *state.borrow();
        let chaos = *shared.chaos.borrow();
        let delay =
            chaos && (conn.delay_until.is_some_and(|t| t > now) || rng.chance(cfg.chunk_permille));
        let split = chaos
            && n > 1
            && (conn.split_until.is_some_and(|t| t > now) || rng.chance(cfg.chunk_permille));
        if delay {
            bump(&counts.delayed_chunks);
            let d = rng.millis(cfg.delay.0, cfg.delay.1);
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = state.wait_for(|c| c.cut) => return,
            }
        }
        // A byte budget (both directions together) cuts the connection
        // once spent.
        let allowed = if chaos { take(budget, n) } else { n };
        let chunk = &buf[..allowed];
        let n = allowed;
        if split {
            bump(&counts.split_chunks);
            let mut at = 0;
            while at < n {
                let piece = (rng.range(1, cfg.max_piece.max(1) as u64) as usize).min(n - at);
                if !write_or_cut(&mut to, &chunk[at..at + piece], &mut state).await {
                    return;
                }
                at += piece;
                // Let the peer read what came so far now and then.
                if rng.chance(250) {
                    tokio::task::yield_now().await;
                }
            }
        } else if !write_or_cut(&mut to, chunk, &mut state).await {
            return;
        }
        if budget.load(Ordering::Acquire) == 0 {
            let cut = ctl.send_if_modified(|c| {
                let now = *shared.chaos.borrow() && !c.cut;
                c.cut |= now;
                now
            });
            if cut {
                bump(&counts.byte_cuts);
                return;
            }
        }
    }
}

/// A connection with no byte budget.
const UNLIMITED: u64 = u64::MAX;

/// Takes up to `n` bytes from `budget`; returns how many may be forwarded.
fn take(budget: &AtomicU64, n: usize) -> usize {
    let n = n as u64;
    let spent = budget.fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
        (b != UNLIMITED).then(|| b.saturating_sub(n))
    });
    match spent {
        Err(_) => n as usize,
        Ok(before) => before.min(n) as usize,
    }
}

/// Waits while the connection is stalled; false once it is cut.
async fn wait_out_stall(state: &mut watch::Receiver<Conn>) -> bool {
    // A stall only ends or is replaced by a driver that injects a bounded
    // number of faults, so this loop is bounded too.
    for _ in 0..=MAX_FAULTS_PER_CONNECTION {
        let conn = *state.borrow_and_update();
        if conn.cut {
            return false;
        }
        match conn.stall_until {
            Some(until) if until > Instant::now() => {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => {}
                    changed = state.changed() => if changed.is_err() { return false },
                }
            }
            _ => return true,
        }
    }
    true
}

async fn write_or_cut(
    to: &mut OwnedWriteHalf,
    bytes: &[u8],
    state: &mut watch::Receiver<Conn>,
) -> bool {
    tokio::select! {
        r = to.write_all(bytes) => r.is_ok(),
        _ = state.wait_for(|c| c.cut) => false,
    }
}
