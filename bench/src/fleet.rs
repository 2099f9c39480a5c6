//! Many agents at once, for the fan-out and memory scenarios.
//!
//! The server and the agents run in two child processes (this binary
//! re-executed with a hidden subcommand), so the server's resident memory is
//! measured alone and each process needs one descriptor per connection, not
//! two. The parent drives both with one-line commands on their stdin and reads
//! one-line answers on their stdout:
//!
//! ```text
//! bench __server KIND IP            -> "ADDR ip:port"
//!     rss                           -> "RSS bytes"
//!     wait N MS                     -> "COUNT n"   (connections the server holds)
//!     fanout ROUNDS MS              -> "FANOUT ok failed ns,ns,..."
//! bench __agents KIND ADDR N CONC   -> "READY n ms rss-delta-bytes" | "FAIL n message"
//!     call                          -> "CALLED ok failed" (jsonrpsee: each client calls once)
//! ```
//!
//! Both children exit when their stdin closes, and on their own after
//! [`CHILD_LIFETIME`] whatever happens.

use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::str::FromStr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::common::{next_loopback, Body, Context, Res};
use crate::{raw, rpc, sys, tunnel};

/// A child process never outlives this, whatever the parent does.
pub const CHILD_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// Which implementation a fleet runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tunnel,
    Raw,
    Rpc,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tunnel => "tunnel",
            Kind::Raw => "raw",
            Kind::Rpc => "rpc",
        }
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Res<Self> {
        match s {
            "tunnel" => Ok(Kind::Tunnel),
            "raw" => Ok(Kind::Raw),
            "rpc" => Ok(Kind::Rpc),
            other => Err(format!("unknown kind {other:?}")),
        }
    }
}

fn arg<T: FromStr>(args: &[String], i: usize, what: &str) -> Res<T> {
    args.get(i)
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("argument {i} ({what}) missing or invalid"))
}

// ---------------------------------------------------------------------------
// The server child.

enum FleetServer {
    Tunnel(agent_server::AgentServer),
    Raw(raw::FanOutServer),
    Rpc(jsonrpsee::server::ServerHandle),
}

/// `bench __server KIND IP`
pub async fn server_child(args: &[String]) -> Res<()> {
    let kind: Kind = arg(args, 0, "kind")?;
    let ip: IpAddr = arg(args, 1, "ip")?;
    sys::raise_nofile()?;
    let bind = SocketAddr::new(ip, 0);
    let (server, addr) = match kind {
        Kind::Tunnel => {
            let s = tunnel::server(bind, false).await?;
            let a = s.local_addr();
            (FleetServer::Tunnel(s), a)
        }
        Kind::Raw => {
            let (s, a) = raw::FanOutServer::start(bind).await?;
            (FleetServer::Raw(s), a)
        }
        Kind::Rpc => {
            let (s, a) = rpc::server(bind).await?;
            (FleetServer::Rpc(s), a)
        }
    };
    println!("ADDR {addr}");
    let body = Body::sample();
    let deadline = tokio::time::Instant::now() + CHILD_LIFETIME;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        let line = match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Ok(Ok(Some(l))) => l,
            _ => break,
        };
        let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        match words.first().map(String::as_str) {
            Some("rss") => println!("RSS {}", sys::rss_bytes()?),
            Some("wait") => {
                let n: usize = arg(&words, 1, "n")?;
                let ms: u64 = arg(&words, 2, "ms")?;
                let timeout = Duration::from_millis(ms);
                let count = match &server {
                    FleetServer::Tunnel(s) => tunnel::wait_for_agents(s, n, timeout).await,
                    FleetServer::Raw(s) => {
                        let end = Instant::now() + timeout;
                        while s.live() < n && Instant::now() < end {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        s.live()
                    }
                    // jsonrpsee does not tell; the agents' READY means the
                    // upgrades are done.
                    FleetServer::Rpc(_) => n,
                };
                println!("COUNT {count}");
            }
            Some("fanout") => {
                let rounds: usize = arg(&words, 1, "rounds")?;
                let ms: u64 = arg(&words, 2, "ms")?;
                let timeout = Duration::from_millis(ms);
                let (mut ok, mut failed, mut times) = (0, 0, Vec::new());
                for _ in 0..rounds {
                    let t0 = Instant::now();
                    let (o, f) = match &server {
                        FleetServer::Tunnel(s) => tunnel::fan_out(s, &body, timeout).await,
                        FleetServer::Raw(s) => s.round(&body, timeout).await,
                        FleetServer::Rpc(_) => (0, 0),
                    };
                    times.push(t0.elapsed().as_nanos().to_string());
                    ok += o;
                    failed += f;
                }
                println!("FANOUT {ok} {failed} {}", times.join(","));
            }
            Some("quit") | None => break,
            Some(other) => println!("ERR unknown command {other}"),
        }
    }
    if let FleetServer::Rpc(h) = &server {
        let _ = h.stop();
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The agents child.

enum Peer {
    Tunnel(agent_client::AgentClient),
    /// The echo task runs on its own; nothing to hold.
    Raw,
    Rpc(jsonrpsee::ws_client::WsClient),
}

async fn connect_one(kind: Kind, addr: SocketAddr) -> Res<Peer> {
    let mut last = String::new();
    for attempt in 0..3 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let r = match kind {
            Kind::Tunnel => tunnel::agent(&tunnel::url(addr)).await.map(Peer::Tunnel),
            Kind::Raw => raw::connect(addr).await.map(|ws| {
                tokio::spawn(raw::echo_loop(ws));
                Peer::Raw
            }),
            Kind::Rpc => rpc::client(addr).await.map(Peer::Rpc),
        };
        match r {
            Ok(p) => return Ok(p),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// One call from one client to the server (jsonrpsee's only traffic).
async fn call_once(peer: &Peer, body: &Body) -> bool {
    match peer {
        Peer::Rpc(c) => rpc::RpcCaller::echo(c, body).await.is_ok(),
        Peer::Tunnel(c) => c.send::<_, Body>(crate::common::ECHO, body).await.is_ok(),
        Peer::Raw => true,
    }
}

/// `bench __agents KIND ADDR N CONCURRENCY`
pub async fn agents_child(args: &[String]) -> Res<()> {
    let kind: Kind = arg(args, 0, "kind")?;
    let addr: SocketAddr = arg(args, 1, "addr")?;
    let n: usize = arg(args, 2, "n")?;
    let concurrency: usize = arg(args, 3, "concurrency")?;
    sys::raise_nofile()?;
    let rss0 = sys::rss_bytes()?;
    let t0 = Instant::now();
    let results: Vec<Res<Peer>> = futures_util::stream::iter(0..n)
        .map(|_| connect_one(kind, addr))
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let elapsed = t0.elapsed();
    let mut peers = Vec::with_capacity(n);
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(p) => peers.push(p),
            Err(e) => errors.push(e),
        }
    }
    if let Some(first) = errors.first() {
        println!("FAIL {} {first}", errors.len());
    } else {
        let rss = sys::rss_bytes()?.saturating_sub(rss0);
        println!("READY {} {} {rss}", peers.len(), elapsed.as_millis());
    }
    let body = Body::sample();
    let deadline = tokio::time::Instant::now() + CHILD_LIFETIME;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        let line = match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Ok(Ok(Some(l))) => l,
            _ => break,
        };
        match line.trim() {
            "call" => {
                let calls: Vec<_> = peers.iter().map(|p| call_once(p, &body)).collect();
                let outcomes: Vec<bool> = futures_util::stream::iter(calls)
                    .buffer_unordered(256)
                    .collect()
                    .await;
                let ok = outcomes.iter().filter(|o| **o).count();
                println!("CALLED {ok} {}", outcomes.len() - ok);
            }
            "quit" | "" => break,
            other => println!("ERR unknown command {other}"),
        }
    }
    // Exit without closing 10,000 links one by one; the kernel closes them.
    Ok(())
}

// ---------------------------------------------------------------------------
// The parent's side.

/// A child process of this binary, driven over its stdin and stdout.
struct ChildIo {
    what: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
}

impl ChildIo {
    fn spawn(args: &[String], what: &str) -> Res<Self> {
        let exe = std::env::current_exe().ctx("locating the bench binary")?;
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .ctx(&format!("starting the {what} child process"))?;
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| format!("{what}: no stdout pipe"))?;
        Ok(ChildIo {
            what: what.to_owned(),
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        })
    }

    async fn line(&mut self, timeout: Duration) -> Res<String> {
        match tokio::time::timeout(timeout, self.lines.next_line()).await {
            Ok(Ok(Some(l))) => Ok(l),
            Ok(Ok(None)) => Err(format!("{}: child process ended early", self.what)),
            Ok(Err(e)) => Err(format!("{}: reading its output: {e}", self.what)),
            Err(_) => Err(format!("{}: no answer within {timeout:?}", self.what)),
        }
    }

    async fn ask(&mut self, command: &str, timeout: Duration) -> Res<String> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| format!("{}: stdin closed", self.what))?;
        stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .ctx(&format!("{}: sending {command:?}", self.what))?;
        stdin.flush().await.ctx("flushing a child's stdin")?;
        self.line(timeout).await
    }

    /// Closes stdin so the child exits; kills it if it does not within 10 s.
    async fn finish(mut self) {
        drop(self.stdin.take());
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }
}

fn field<T: FromStr>(line: &str, tag: &str, i: usize) -> Res<T> {
    let mut words = line.split_whitespace();
    if words.next() != Some(tag) {
        return Err(format!("expected {tag}, got {line:?}"));
    }
    words
        .nth(i)
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| format!("malformed answer {line:?}"))
}

/// A server child and an agents child of one kind, all agents connected.
pub struct Fleet {
    kind: Kind,
    n: usize,
    server: ChildIo,
    agents: ChildIo,
    round_ms: u64,
    /// Time for the agents child to connect all agents.
    pub connect: Duration,
    /// Server RSS growth per agent: idle, and after one round of traffic.
    pub idle_per_agent: f64,
    pub after_per_agent: f64,
    /// Agents process RSS growth per agent (client side, for information).
    pub client_per_agent: f64,
    /// Time of each full fan-out round so far (none for jsonrpsee).
    pub rounds: Vec<Duration>,
}

impl Fleet {
    /// Starts a server child and an agents child of `kind`, connects `n`
    /// agents `concurrency` at a time, and measures the server's RSS before,
    /// idle after `settle`, and after one round of traffic to each agent.
    pub async fn start(kind: Kind, n: usize, concurrency: usize, settle: Duration) -> Res<Self> {
        let ip = next_loopback();
        let what = format!("{} server", kind.as_str());
        let mut server = ChildIo::spawn(
            &["__server".into(), kind.as_str().into(), ip.to_string()],
            &what,
        )?;
        let addr: SocketAddr = field(&server.line(Duration::from_secs(30)).await?, "ADDR", 0)?;
        let ask = Duration::from_secs(60);
        // Let the runtime's threads and the allocator's arenas come up first.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let base: u64 = field(&server.ask("rss", ask).await?, "RSS", 0)?;

        let what = format!("{} agents", kind.as_str());
        let mut agents = ChildIo::spawn(
            &[
                "__agents".into(),
                kind.as_str().into(),
                addr.to_string(),
                n.to_string(),
                concurrency.to_string(),
            ],
            &what,
        )?;
        let ready_timeout = Duration::from_secs(60) + Duration::from_millis(n as u64 * 20);
        let ready = agents.line(ready_timeout).await?;
        if ready.starts_with("FAIL") {
            return Err(format!("{what}: {ready}"));
        }
        let connected: usize = field(&ready, "READY", 0)?;
        let connect_ms: u64 = field(&ready, "READY", 1)?;
        let client_rss: u64 = field(&ready, "READY", 2)?;
        let count: usize = field(
            &server.ask(&format!("wait {n} 30000"), ask).await?,
            "COUNT",
            0,
        )?;
        if connected < n || count < n {
            return Err(format!(
                "{what}: only {connected} agents connected and {count} registered of {n}"
            ));
        }
        tokio::time::sleep(settle).await;
        let idle: u64 = field(&server.ask("rss", ask).await?, "RSS", 0)?;
        let per = |rss: u64| rss.saturating_sub(base) as f64 / n as f64;
        let mut fleet = Fleet {
            kind,
            n,
            server,
            agents,
            round_ms: 30_000 + n as u64 * 5,
            connect: Duration::from_millis(connect_ms),
            idle_per_agent: per(idle),
            after_per_agent: 0.0,
            client_per_agent: client_rss as f64 / n as f64,
            rounds: Vec::new(),
        };
        if kind == Kind::Rpc {
            // jsonrpsee servers cannot call their clients: each client calls once.
            let called = fleet.agents.ask("call", ask).await?;
            let failed: usize = field(&called, "CALLED", 1)?;
            if failed > 0 {
                return Err(format!("{what}: {failed} calls failed"));
            }
        } else {
            fleet.round().await?;
        }
        let after: u64 = field(&fleet.server.ask("rss", ask).await?, "RSS", 0)?;
        fleet.after_per_agent = per(after);
        Ok(fleet)
    }

    /// One more fan-out round, timed inside the server process.
    pub async fn round(&mut self) -> Res<Duration> {
        let timeout = Duration::from_millis(self.round_ms + 10_000);
        let line = self
            .server
            .ask(&format!("fanout 1 {}", self.round_ms), timeout)
            .await?;
        let ok: usize = field(&line, "FANOUT", 0)?;
        let failed: usize = field(&line, "FANOUT", 1)?;
        if failed > 0 || ok != self.n {
            return Err(format!(
                "{} fan-out to {}: {ok} answered, {failed} failed",
                self.kind.as_str(),
                self.n
            ));
        }
        let ns: u64 = field(&line, "FANOUT", 2)?;
        let d = Duration::from_nanos(ns);
        self.rounds.push(d);
        Ok(d)
    }

    /// Stops both children.
    pub async fn finish(self) {
        self.agents.finish().await;
        self.server.finish().await;
    }
}
