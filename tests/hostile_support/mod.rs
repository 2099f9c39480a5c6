//! The hostile-peer suite's harness: a real server with the hooks the attacks
//! aim at, a well-behaved agent that keeps calling both ways while they run,
//! a process-wide panic counter, and the end-of-test checks.

// Shared by the hostile and handshake-bounds suites; each uses a part.
#![allow(dead_code)]

pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use agent_tunnel::client::{AgentClient, Backoff, ClientEvent};
use agent_tunnel::server::{
    AgentServer, HandshakeFailure, ServerBuilder, ServerEvent, ServerStats,
};
use agent_tunnel::HookError;
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::common::{self, within, Gate, LIMIT, LONG};

// ------------------------------------------------------------------ panics

/// Panics seen anywhere in this test process since it started.
static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Installs, once per process, a panic hook that counts every panic (on any
/// thread, including the server's tasks, whose panics tokio would otherwise
/// swallow into a `JoinError`) and then runs the previous hook, so the
/// message is still printed.
pub fn count_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
}

/// Fails when anything in this process panicked. Nothing in this suite
/// panics on purpose, so a count above zero is either a server panic or a
/// failing test (whose own message is printed above).
pub fn assert_no_panics() {
    let n = PANICS.load(Ordering::SeqCst);
    assert_eq!(
        n, 0,
        "{n} panic(s) in this test process; see the panic messages above"
    );
}

// ---------------------------------------------------------------- blockers

/// Named gates for hooks that block until the test releases them, each with
/// a count of the calls that reached it.
#[derive(Clone, Default)]
pub struct Blockers(Arc<Mutex<HashMap<String, Blocker>>>);

#[derive(Clone)]
pub struct Blocker {
    pub gate: Gate,
    pub started: watch::Sender<usize>,
}

impl Blockers {
    /// The blocker named `key`, created on first use.
    pub fn get(&self, key: &str) -> Blocker {
        self.0
            .lock()
            .expect("blockers lock")
            .entry(key.to_owned())
            .or_insert_with(|| Blocker {
                gate: Gate::new(),
                started: watch::channel(0).0,
            })
            .clone()
    }

    /// Runs one blocking call: counts it, then waits for the gate.
    pub fn block(&self, key: &str) -> impl std::future::Future<Output = ()> + Send + 'static {
        let b = self.get(key);
        b.started.send_modify(|n| *n += 1);
        b.gate.wait()
    }

    /// Waits until `n` calls reached the blocker `key`.
    pub async fn wait_started(&self, key: &str, n: usize) {
        let mut rx = self.get(key).started.subscribe();
        within(rx.wait_for(|started| *started >= n))
            .await
            .expect("blocker alive");
    }

    /// Opens the gate of `key` for good.
    pub fn release(&self, key: &str) {
        self.get(key).gate.open();
    }
}

// ------------------------------------------------------------- good agent

/// The well-behaved agent and the server it talks to.
#[derive(Clone)]
pub struct Good {
    pub server: AgentServer,
    pub client: AgentClient,
    pub name: String,
}

impl Good {
    /// One call each way, each checked for the exact answer.
    pub async fn round(&self, tag: &str, i: u64) {
        let up = json!({"tag": tag, "i": i, "dir": "agent->server"});
        let got: Value = within(self.client.send_timeout("echo", &up, LONG))
            .await
            .unwrap_or_else(|e| panic!("good agent's call {tag}#{i} failed: {e}"));
        assert_eq!(got, up, "good agent got a wrong answer");

        let down = json!({"tag": tag, "i": i, "dir": "server->agent"});
        let got: Value =
            within(
                self.server
                    .send_to_timeout(self.name.as_str(), "echo", &down, LONG),
            )
            .await
            .unwrap_or_else(|e| panic!("server's call {tag}#{i} to the good agent failed: {e}"));
        assert_eq!(got, down, "server got a wrong answer from the good agent");
    }

    /// `n` rounds in a row.
    pub async fn rounds(&self, tag: &str, n: u64) {
        for i in 0..n {
            self.round(tag, i).await;
        }
    }
}

/// Rounds of the good agent running in the background.
pub struct Background {
    stop: watch::Sender<bool>,
    task: JoinHandle<u64>,
}

impl Background {
    /// Stops after the round in progress and returns how many rounds ran;
    /// fails the test if any of them failed or none ran.
    pub async fn stop(self) -> u64 {
        self.stop.send_replace(true);
        let rounds = within(self.task)
            .await
            .expect("the good agent's calls all succeeded");
        assert!(rounds > 0, "the good agent made no call during the attack");
        rounds
    }
}

// ---------------------------------------------------------------- harness

/// A server under attack, with a good agent connected to it.
pub struct Harness {
    pub server: AgentServer,
    pub good: Good,
    /// Gates for the server's `block` hook and the good agent's `hold` hook.
    pub blockers: Blockers,
    /// Set if the server ever ran `secret-stuff` (only authenticated agents
    /// may reach it; none of the attacks authenticates before trying).
    pub leaked: Arc<AtomicBool>,
    good_events: broadcast::Receiver<ClientEvent>,
}

/// A server builder for the attacks: the test secret, heartbeats off.
pub fn builder() -> ServerBuilder {
    common::server_builder().default_timeout(LONG)
}

impl Harness {
    /// Starts `builder` with the suite's hooks and connects the good agent.
    ///
    /// Server hooks: `echo` returns its body; `block` (body: a blocker name)
    /// waits for that blocker's gate; `secret-stuff` records that it ran.
    /// Good agent hooks: `echo`, and `hold` (body: a blocker name) which
    /// waits for the gate and answers `"held"`.
    pub async fn start(builder: ServerBuilder) -> Harness {
        count_panics();
        let server = common::start(builder).await;
        let blockers = Blockers::default();
        let leaked = Arc::new(AtomicBool::new(false));

        server.on_hook("echo", |v: Value, _| async move { Ok::<_, HookError>(v) });
        let b = blockers.clone();
        server.on_hook("block", move |key: String, _| {
            let wait = b.block(&key);
            async move {
                wait.await;
                Ok::<_, HookError>("released")
            }
        });
        let flag = Arc::clone(&leaked);
        server.on_hook("secret-stuff", move |_: Value, _| {
            flag.store(true, Ordering::SeqCst);
            async { Ok::<_, HookError>("leaked") }
        });

        let b = blockers.clone();
        let client_builder = common::client_builder(&server)
            .reconnect(Backoff::disabled())
            .default_timeout(LONG)
            .on_hook("echo", |v: Value, _| async move { Ok::<_, HookError>(v) })
            .on_hook("hold", move |key: String, _| {
                let wait = b.block(&key);
                async move {
                    wait.await;
                    Ok::<_, HookError>("held")
                }
            });
        let good_events = client_builder.events();
        let client = common::connect(&server, client_builder).await;
        let name = client.name().expect("good agent has a name");
        let good = Good {
            server: server.clone(),
            client,
            name,
        };
        good.rounds("before", 3).await;
        Harness {
            server,
            good,
            blockers,
            leaked,
            good_events,
        }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Starts the good agent calling both ways in a loop until stopped, at
    /// most `max` rounds.
    pub fn keep_calling(&self, tag: &'static str, max: u64) -> Background {
        let (stop, stop_rx) = watch::channel(false);
        let good = self.good.clone();
        let task = tokio::spawn(async move {
            let mut i = 0;
            loop {
                good.round(tag, i).await;
                i += 1;
                if *stop_rx.borrow() || i >= max {
                    return i;
                }
            }
        });
        Background { stop, task }
    }

    /// Waits until the server's stats satisfy `ok`, polling them; fails with
    /// the last stats seen after [`LIMIT`].
    pub async fn wait_stats(&self, what: &str, ok: impl Fn(&ServerStats) -> bool) -> ServerStats {
        wait_stats(&self.server, what, ok).await
    }

    /// The end of every test: the good agent still answers both ways, the
    /// attackers left nothing behind (no reserved name, no handshake, no
    /// request in flight, only the good agent's connection), the good agent
    /// never lost its link, and nothing panicked.
    pub async fn finish(mut self) {
        self.good.rounds("after", 3).await;
        let stats = self
            .wait_stats("the attackers to be gone", |s| {
                s.agents == 1
                    && s.reserved_names == 0
                    && s.handshakes == 0
                    && s.connections == 1
                    && s.pending_requests == 0
                    && s.serving_requests == 0
            })
            .await;
        assert_eq!(stats.agents, 1);
        let names: Vec<String> = self
            .server
            .agents()
            .iter()
            .map(|a| a.name().to_owned())
            .collect();
        assert_eq!(names, vec![self.good.name.clone()], "only the good agent");
        assert!(self.good.client.is_ready(), "the good agent is ready");
        assert!(
            !self.leaked.load(Ordering::SeqCst),
            "a hook ran for a peer that never authenticated"
        );
        loop {
            match self.good_events.try_recv() {
                Ok(
                    e @ (ClientEvent::Disconnected(_)
                    | ClientEvent::Error(_)
                    | ClientEvent::GaveUp(_)
                    | ClientEvent::Reconnected { .. }),
                ) => panic!("the good agent was disturbed: {e:?}"),
                Ok(_) => continue,
                Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
                Err(_) => break,
            }
        }
        assert_no_panics();
        within(self.good.client.close()).await;
        within(self.server.shutdown()).await;
    }
}

/// Waits until `server`'s stats satisfy `ok`, polling them every few
/// milliseconds; fails with the last stats seen after [`LIMIT`].
pub async fn wait_stats(
    server: &AgentServer,
    what: &str,
    ok: impl Fn(&ServerStats) -> bool,
) -> ServerStats {
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let stats = server.stats();
        if ok(&stats) {
            return stats;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last stats: {stats:?}"
        );
        tick.tick().await;
    }
}

/// Waits for the handshake failure of the connection from `peer` and
/// returns its code.
pub async fn handshake_failed(
    rx: &mut broadcast::Receiver<HandshakeFailure>,
    peer: SocketAddr,
) -> String {
    common::wait_for(rx, |f| (f.peer_addr == peer).then(|| f.code.to_owned())).await
}

/// Waits for the `AgentDisconnected` event of `name` and returns its close
/// code.
pub async fn disconnected(rx: &mut broadcast::Receiver<ServerEvent>, name: &str) -> u16 {
    common::wait_disconnected(rx, name).await
}

/// Collects the handshake failure codes of every connection in `peers`,
/// whatever order they come in.
pub async fn handshake_failures(
    rx: &mut broadcast::Receiver<HandshakeFailure>,
    peers: &[SocketAddr],
) -> HashMap<SocketAddr, String> {
    let mut got = HashMap::new();
    within(async {
        while got.len() < peers.len() {
            match rx.recv().await {
                Ok(f) if peers.contains(&f.peer_addr) => {
                    got.insert(f.peer_addr, f.code.to_owned());
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    panic!("missed {n} handshake failures")
                }
                Err(broadcast::error::RecvError::Closed) => panic!("failure channel closed"),
            }
        }
    })
    .await;
    got
}

pub use crate::common::Peak;
