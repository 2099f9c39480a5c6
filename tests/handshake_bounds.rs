//! Issue 8: what a connection may cost the server before it authenticates.
//!
//! - Every write before authentication has a deadline: a peer that never
//!   reads cannot park a connection task (item 1), and shutdown ends
//!   unfinished handshakes at once.
//! - Handshake slots are shared fairly: idle sockets from a few addresses
//!   cannot lock a new agent out, and the first bytes (TLS and the HTTP
//!   upgrade) have a deadline of their own, `upgrade_timeout` (item 4).
//! - The handshake's message is small: an `auth` over
//!   `max_handshake_message_bytes` closes with 1009 before it is buffered,
//!   while frames sent right after `auth` still reach the link (item 5).
//! - Failed handshakes are reported apart from the lifecycle events (item 6).
//! - With mutual TLS, the agent's verified certificate is on its `Agent`
//!   (item 16).
//! - Timeouts of `Duration::MAX` overflow nothing (item 14).
//!
//! Real server on 127.0.0.1:0, real agents and hand-made peers; every wait
//! is bounded by `LIMIT`, and the only timing asserted is that nothing
//! happens before a deadline.

mod common;
mod hostile_support;
mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agent_tunnel::client::{AgentClient, Backoff};
use agent_tunnel::codes;
use agent_tunnel::protocol::handshake::{ClientHandshake, Identity};
use agent_tunnel::protocol::{close, codec, LinkConfig, MemoryStore, NameStore, Secret};
use agent_tunnel::server::{AgentServer, ServerEvent};
use agent_tunnel::HookError;
use common::*;
use futures_util::future::join_all;
use futures_util::{SinkExt, StreamExt};
use hostile_support::wire::{self, frame, header, Wire};
use hostile_support::{handshake_failed, wait_stats, Peak};
use serde_json::{json, Map, Value};
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

const KIB: usize = 1024;

/// A wrong proof: well-formed, but made with no secret at all.
fn wrong_auth() -> String {
    json!({"t": "auth", "nonce": "ab".repeat(32), "meta": {}, "proof": "00".repeat(32)}).to_string()
}

/// A valid frame that is not `auth`.
const NOT_AUTH: &str = r#"{"t":"req","id":1,"action":"x","body":null}"#;

/// A listener on 127.0.0.1:0 whose accepted sockets inherit a small, fixed
/// send buffer (Linux copies the listener's buffer sizes to them and turns
/// off their autotuning), so a peer that never reads fills the server's
/// socket buffers with a few hundred pongs instead of megabytes.
fn small_send_buffer_listener() -> tokio::net::TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_send_buffer_size(4096).expect("SO_SNDBUF");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    socket.listen(1024).expect("listen")
}

/// A peer that never reads: a small receive buffer, the upgrade, then pings
/// until the pongs fill every buffer between the server and it (the
/// server's writes block from then on), then `bad` where `auth` belongs, so
/// the server has a `reject` to write that cannot go out.
async fn deaf_peer(addr: SocketAddr, bad: &str) -> Wire {
    let w = Wire::connect_with(addr, None, Some(4096))
        .await
        .expect("connect");
    let mut w = w.upgraded(addr).await;
    w.tx.flood_pings(2_000).await;
    w.tx.send_text(bad).await;
    w
}

fn deaf_server() -> agent_tunnel::server::ServerBuilder {
    let mut link = LinkConfig::default();
    link.ping_interval = None;
    link.close_timeout = Duration::from_millis(300);
    server_builder().link_config(link)
}

/// Polls `ok` every few milliseconds until it holds; fails after `LIMIT`.
async fn wait_until(what: &str, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + LIMIT;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tick.tick().await;
    }
}

// ------------------------------------------------------------------ item 1

/// Ten peers that never read, then send a frame that is not `auth` (five)
/// or a wrong proof (five): the server's `reject` cannot go out, yet every
/// connection task ends (within `close_timeout` of the failure) and the
/// server shuts down at once. Before the fix, the `reject` write had no
/// deadline: all ten tasks stayed parked forever, holding their sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_that_never_read_cannot_park_a_connection_task() {
    let server = within(
        deaf_server()
            .handshake_timeout(Duration::from_millis(500))
            .listen(small_send_buffer_listener()),
    )
    .await
    .expect("server starts");
    let addr = server.local_addr();
    let bad: Vec<String> = (0..10)
        .map(|i| {
            if i % 2 == 0 {
                NOT_AUTH.to_owned()
            } else {
                wrong_auth()
            }
        })
        .collect();
    let peers = join_all(bad.iter().map(|b| deaf_peer(addr, b))).await;

    wait_stats(&server, "every connection task to end", |s| {
        s.connections == 0 && s.handshakes == 0
    })
    .await;
    let counts = server.handshake_failure_counts();
    assert_eq!(
        counts.values().sum::<u64>(),
        10,
        "one failure per peer: {counts:?}"
    );
    within(server.shutdown()).await;
    // Held to the end: a peer that hangs up would free the server's writes.
    drop(peers);
}

/// The same peers against a server whose handshake deadline is far away:
/// shutdown still returns at once (the failed handshakes' writes are bounded
/// by `close_timeout`, not by the deadline), with the peers still connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_not_held_up_by_peers_that_never_read() {
    let server = within(
        deaf_server()
            .handshake_timeout(Duration::from_secs(600))
            .listen(small_send_buffer_listener()),
    )
    .await
    .expect("server starts");
    let addr = server.local_addr();
    let peers = join_all((0..10).map(|_| deaf_peer(addr, NOT_AUTH))).await;
    // Each failure is counted when decided, before the server tries to
    // tell the peer: all ten are telling now, or done.
    wait_until("ten failed handshakes", || {
        server
            .handshake_failure_counts()
            .get(codes::PROTOCOL_ERROR)
            .copied()
            == Some(10)
    })
    .await;
    within(server.shutdown()).await;
    assert_eq!(server.stats().connections, 0);
    drop(peers);
}

// ------------------------------------------------------------------ item 4

/// Four addresses open as many idle connections as they can (64 against a
/// pool of 16, each address allowed all 16): the pool keeps an equal share
/// for each, and a well-behaved agent from a fifth address still gets in,
/// by evicting an idle connection of the biggest holder. Both deadlines
/// are far off, so nothing but that fairness can let the agent in. Before
/// the fix, 127.0.0.2 held all 16 slots and the agent was dropped at accept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_from_a_few_addresses_cannot_lock_an_agent_out() {
    const POOL: usize = 16;
    const SQUATTERS: [u8; 4] = [2, 3, 4, 5];
    let server = start(
        server_builder()
            .max_pending_handshakes(POOL)
            .max_pending_handshakes_per_ip(POOL)
            .upgrade_timeout(Duration::from_secs(600))
            .handshake_timeout(Duration::from_secs(600)),
    )
    .await;
    let addr = server.local_addr();
    let peak = {
        let server = server.clone();
        Peak::watch(move || server.stats().handshakes)
    };

    let dropped = Arc::new(AtomicUsize::new(0));
    let mut squatters = Vec::new();
    for last in SQUATTERS {
        let ip = IpAddr::from([127, 0, 0, last]);
        for _ in 0..POOL {
            let mut w = Wire::connect_with(addr, Some(ip), None)
                .await
                .unwrap_or_else(|e| panic!("connect from {ip}: {e}"));
            let dropped = Arc::clone(&dropped);
            squatters.push(tokio::spawn(async move {
                w.rx.closed().await;
                dropped.fetch_add(1, Ordering::SeqCst);
                w
            }));
        }
    }
    let opened = SQUATTERS.len() * POOL;
    // Every squatter accepted or dropped: the pool is full, the rest gone.
    wait_until("the squatters to fill the pool", || {
        dropped.load(Ordering::SeqCst) == opened - POOL
    })
    .await;
    assert_eq!(server.stats().handshakes, POOL);

    let client = connect(
        &server,
        client_builder(&server).reconnect(Backoff::disabled()),
    )
    .await;
    let name = client.name().expect("a name");
    assert!(server.agent(&name).is_some());
    // The agent took an idle squatter's place, reported as BUSY.
    wait_until("the evicted squatter to be dropped", || {
        dropped.load(Ordering::SeqCst) == opened - POOL + 1
    })
    .await;
    assert!(
        server
            .handshake_failure_counts()
            .get(codes::BUSY)
            .is_some_and(|n| *n >= 1),
        "{:?}",
        server.handshake_failure_counts()
    );
    let peak = peak.stop().await;
    assert!(peak <= POOL, "{peak} handshakes at once, pool {POOL}");

    within(client.close()).await;
    // Shutdown ends the idle handshakes at once, deadlines or not.
    within(server.shutdown()).await;
    for s in squatters {
        within(s).await.expect("squatter task");
    }
}

/// The first bytes have a deadline of their own: a silent TCP connection,
/// and one that sends half an upgrade request, are dropped without a
/// response once `upgrade_timeout` passes, though the handshake deadline is
/// ten minutes away. Over TLS, the TLS handshake is under it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_has_a_short_deadline_of_its_own() {
    const UPGRADE: Duration = Duration::from_millis(300);
    let pki = support::certs::pki("upgrade CA");
    let plain = start(
        server_builder()
            .upgrade_timeout(UPGRADE)
            .handshake_timeout(Duration::from_secs(600)),
    )
    .await;
    let tls = start(
        server_builder()
            .upgrade_timeout(UPGRADE)
            .handshake_timeout(Duration::from_secs(600))
            .tls_pem(pki.server_cert_pem.clone(), pki.server_key_pem.clone()),
    )
    .await;
    let request = wire::upgrade_request(plain.local_addr());
    let cases: [(&AgentServer, &[u8], &str); 3] = [
        (&plain, b"", "silent TCP"),
        (&plain, &request[..request.len() / 2], "half an upgrade"),
        (&tls, b"", "silent TCP on the TLS port"),
    ];
    for (server, bytes, what) in cases {
        let mut failures = server.handshake_failures();
        let t0 = Instant::now();
        let mut w = Wire::connect(server.local_addr()).await;
        let peer = w.local_addr();
        w.tx.send_raw(bytes).await;
        let got = w.rx.expect_dropped().await;
        assert!(
            t0.elapsed() >= UPGRADE,
            "{what}: dropped before the deadline"
        );
        assert!(got.is_empty(), "{what}: no response, got {got:?}");
        assert_eq!(
            handshake_failed(&mut failures, peer).await,
            codes::HANDSHAKE_TIMEOUT,
            "{what}"
        );
    }
    within(plain.shutdown()).await;
    within(tls.shutdown()).await;
}

/// Once upgraded, a connection has the whole handshake deadline: the upgrade
/// deadline no longer applies to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_connection_keeps_the_whole_handshake_deadline() {
    const HANDSHAKE: Duration = Duration::from_millis(1500);
    let server = start(
        server_builder()
            .upgrade_timeout(Duration::from_millis(200))
            .handshake_timeout(HANDSHAKE),
    )
    .await;
    let t0 = Instant::now();
    let mut ws = raw_connect(&server).await;
    assert_eq!(recv_json(&mut ws).await["t"], "hello");
    let closed = expect_close(&mut ws).await;
    assert!(t0.elapsed() >= HANDSHAKE, "closed after {:?}", t0.elapsed());
    assert_eq!(closed.code, close::HANDSHAKE_TIMEOUT);
    within(server.shutdown()).await;
}

// ------------------------------------------------------------------ item 5

/// An `auth` of 100 KiB, under the link's 1 MiB limit but over the 64 KiB
/// handshake limit: close 1009 and no `reject` (before the fix the server
/// buffered and parsed it, and answered `WRONG_SECRET`). A header that
/// announces such a message is refused on its own, before the payload
/// arrives. Agents with modest metadata still connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_auth_is_closed_with_1009_before_it_is_buffered() {
    let server = start(server_builder().handshake_timeout(Duration::from_secs(600))).await;
    let mut failures = server.handshake_failures();

    let mut ws = raw_connect(&server).await;
    let peer = ws.get_ref().local_addr().expect("local addr");
    assert_eq!(recv_json(&mut ws).await["t"], "hello");
    let auth = json!({"t": "auth", "nonce": "ab".repeat(32), "proof": "00".repeat(32),
                      "meta": {"pad": "x".repeat(100 * KIB)}});
    within(ws.send(Message::text(auth.to_string())))
        .await
        .expect("send");
    let closed = expect_close(&mut ws).await;
    assert_eq!(closed.code, close::TOO_BIG, "{closed:?}");
    assert!(closed.frames.is_empty(), "no reject: {closed:?}");
    assert_eq!(
        handshake_failed(&mut failures, peer).await,
        codes::PROTOCOL_ERROR
    );

    // The header alone: nothing of the 100 KiB is ever sent.
    let mut w = Wire::upgrade(server.local_addr()).await;
    let peer = w.local_addr();
    let _hello = w.rx.read_text().await;
    w.tx.send_raw(&header(
        true,
        0,
        wire::OP_TEXT,
        100 * KIB as u64,
        Some([1, 2, 3, 4]),
    ))
    .await;
    let closed = w.rx.expect_close_frame().await;
    assert_eq!(closed.code, close::TOO_BIG, "{closed:?}");
    drop(w);
    assert_eq!(
        handshake_failed(&mut failures, peer).await,
        codes::PROTOCOL_ERROR
    );

    // A real agent with 8 KiB of metadata.
    let client = connect(
        &server,
        client_builder(&server)
            .reconnect(Backoff::disabled())
            .meta("pad", "y".repeat(8 * KIB)),
    )
    .await;
    let name = client.name().expect("a name");
    let agent = server.agent(&name).expect("registered");
    assert_eq!(agent.meta()["pad"].as_str().map(str::len), Some(8 * KIB));
    within(client.close()).await;
    within(server.shutdown()).await;
}

/// The limit covers only the first message: a 100 KiB request sent in the
/// same write as `auth` (frames right after `auth` belong to the link) is
/// served whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_request_right_after_auth_still_reaches_the_link() {
    let server = start_server().await;
    server.on_hook("echo", |v: Value, _| async move { Ok::<_, HookError>(v) });
    let mut w = Wire::upgrade(server.local_addr()).await;
    let secret = Secret::from(SECRET);
    let mut hs = ClientHandshake::new(Identity::default(), Map::new());
    let hello = codec::decode(&w.rx.read_text().await).expect("hello decodes");
    let auth = codec::encode(&hs.on_hello(&secret, hello).expect("valid hello"));
    let big = "z".repeat(100 * KIB);
    let req = json!({"t": "req", "id": 1, "action": "echo", "body": big}).to_string();
    let mut bytes = frame(true, wire::OP_TEXT, auth.as_bytes(), true);
    bytes.extend(frame(true, wire::OP_TEXT, req.as_bytes(), true));
    w.tx.send_raw(&bytes).await;
    let welcome = codec::decode(&w.rx.read_text().await).expect("welcome decodes");
    hs.on_answer(&secret, welcome).expect("welcomed");
    let res: Value = serde_json::from_str(&w.rx.read_text().await).expect("res");
    assert_eq!(res["id"], 1, "{}", clip(&res));
    assert_eq!(res["ok"].as_str(), Some(big.as_str()));
    drop(w);
    within(server.shutdown()).await;
}

fn clip(v: &Value) -> String {
    v.to_string().chars().take(200).collect()
}

#[tokio::test]
async fn a_tiny_handshake_message_limit_is_a_config_error() {
    let err = server_builder()
        .max_handshake_message_bytes(100)
        .start("127.0.0.1:0")
        .await
        .expect_err("refused");
    assert_eq!(err.code(), codes::CONFIG, "{err}");
}

// ------------------------------------------------------------------ item 6

/// 200 connections with a wrong secret while 20 agents come and go: the
/// lifecycle receiver sees exactly the 40 lifecycle events, nothing else
/// and nothing skipped; the failure receiver and the counts see all 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_failures_stay_out_of_the_lifecycle_events() {
    const WRONG: usize = 200;
    const AGENTS: usize = 20;
    let server = start_server().await;
    let mut events = server.events();
    let mut failures = server.handshake_failures();

    let url = url(&server);
    let flood = futures_util::stream::iter(0..WRONG)
        .map(|_| {
            let url = url.clone();
            async move {
                AgentClient::builder(&url, "not-the-secret")
                    .ping_interval(None)
                    .reconnect(Backoff::disabled())
                    .connect()
                    .await
                    .expect_err("a wrong secret is refused")
                    .code()
                    .to_owned()
            }
        })
        // Below the per-source bound, so none is dropped at accept.
        .buffer_unordered(16)
        .collect::<Vec<String>>();
    let comings_and_goings = async {
        let mut names = Vec::new();
        for _ in 0..AGENTS {
            let (client, name) = connect_plain(&server).await;
            close_and_wait(&server, client, &name).await;
            names.push(name);
        }
        names
    };
    let (codes_seen, names) = within(async { tokio::join!(flood, comings_and_goings) }).await;
    assert!(
        codes_seen.iter().all(|c| c == codes::WRONG_SECRET),
        "{codes_seen:?}"
    );

    let mut connected = Vec::new();
    let mut disconnected = Vec::new();
    loop {
        match events.try_recv() {
            Ok(ServerEvent::AgentConnected(a)) => connected.push(a.name().to_owned()),
            Ok(ServerEvent::AgentDisconnected(a, _)) => disconnected.push(a.name().to_owned()),
            Ok(other) => panic!("only lifecycle events: {other:?}"),
            Err(broadcast::error::TryRecvError::Empty) => break,
            Err(e) => panic!("lifecycle events lost: {e:?}"),
        }
    }
    assert_eq!(connected, names);
    assert_eq!(disconnected, names);

    let mut wrong = 0;
    while let Ok(f) = failures.try_recv() {
        assert_eq!(f.code, codes::WRONG_SECRET, "{f:?}");
        assert!(f.peer_addr.ip().is_loopback());
        wrong += 1;
    }
    assert_eq!(wrong, WRONG);
    let counts = server.handshake_failure_counts();
    assert_eq!(counts.get(codes::WRONG_SECRET), Some(&(WRONG as u64)));
    assert_eq!(counts.len(), 1, "{counts:?}");
    within(server.shutdown()).await;
}

// ----------------------------------------------------------------- item 16

fn tls_client(url: &str, ca_pem: &str) -> agent_tunnel::client::ClientBuilder {
    AgentClient::builder(url, SECRET)
        .ping_interval(None)
        .reconnect(Backoff::disabled())
        .tls_ca_pem(ca_pem.to_owned())
}

/// With mutual TLS, the agent's verified certificate is on its `Agent`,
/// exactly as it presented it; without client certificates, and over plain
/// `ws://`, there is none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_carries_its_verified_client_certificate() {
    let pki = support::certs::pki("mtls identity CA");
    let mtls = start(
        server_builder()
            .tls_pem(pki.server_cert_pem.clone(), pki.server_key_pem.clone())
            .tls_client_ca_pem(pki.ca_pem.clone()),
    )
    .await;
    let url = format!("wss://localhost:{}", mtls.local_addr().port());
    let client = connect(
        &mtls,
        tls_client(&url, &pki.ca_pem)
            .tls_client_cert_pem(pki.client_cert_pem.clone(), pki.client_key_pem.clone()),
    )
    .await;
    let agent = mtls
        .agent(&client.name().expect("a name"))
        .expect("registered");
    assert!(agent.is_tls());
    let chain = agent.peer_certificates().expect("a verified chain");
    let ders: Vec<&[u8]> = chain.iter().map(|c| c.as_ref()).collect();
    assert_eq!(ders, vec![pki.client_cert_der.as_slice()]);
    within(client.close()).await;
    within(mtls.shutdown()).await;

    // TLS without client certificates.
    let tls =
        start(server_builder().tls_pem(pki.server_cert_pem.clone(), pki.server_key_pem.clone()))
            .await;
    let url = format!("wss://localhost:{}", tls.local_addr().port());
    let client = connect(&tls, tls_client(&url, &pki.ca_pem)).await;
    let agent = tls
        .agent(&client.name().expect("a name"))
        .expect("registered");
    assert!(agent.is_tls());
    assert!(agent.peer_certificates().is_none());
    within(client.close()).await;
    within(tls.shutdown()).await;

    // Plain ws://.
    let plain = start_server().await;
    let (client, name) = connect_plain(&plain).await;
    assert!(plain
        .agent(&name)
        .expect("registered")
        .peer_certificates()
        .is_none());
    within(client.close()).await;
    within(plain.shutdown()).await;
}

// ----------------------------------------------------------------- item 14

/// `Duration::MAX` for every server timeout: the server starts, serves an
/// agent both ways, probes a live holder when a second agent reclaims its
/// name (refused `DUPLICATE_ID`), and shuts down at once with an idle TCP
/// connection and an upgraded one still in their handshakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_of_duration_max_overflow_nothing() {
    let server = start(
        server_builder()
            .handshake_timeout(Duration::MAX)
            .upgrade_timeout(Duration::MAX)
            .shutdown_grace(Duration::MAX)
            .probe_timeout(Duration::MAX),
    )
    .await;
    server.on_hook("echo", |v: Value, _| async move { Ok::<_, HookError>(v) });
    let store: Arc<dyn NameStore> = Arc::new(MemoryStore::new());
    let client = connect(
        &server,
        client_builder(&server)
            .reconnect(Backoff::disabled())
            .store_arc(Arc::clone(&store))
            .on_hook("echo", |v: Value, _| async move { Ok::<_, HookError>(v) }),
    )
    .await;
    let name = client.name().expect("a name");
    let up: Value = within(client.send("echo", &json!("up")))
        .await
        .expect("agent -> server");
    assert_eq!(up, json!("up"));
    let down: Value = within(server.send_to(name.as_str(), "echo", &json!("down")))
        .await
        .expect("server -> agent");
    assert_eq!(down, json!("down"));

    // Same name and token: the server probes the live holder, which answers.
    let twin = within(
        client_builder(&server)
            .reconnect(Backoff::disabled())
            .store_arc(store)
            .connect(),
    )
    .await
    .expect_err("the name is held");
    assert_eq!(twin.code(), codes::DUPLICATE_ID, "{twin}");

    let mut idle = Wire::connect(server.local_addr()).await;
    let mut upgraded = raw_connect(&server).await;
    assert_eq!(recv_json(&mut upgraded).await["t"], "hello");
    wait_stats(&server, "both handshakes under way", |s| s.handshakes == 2).await;
    within(server.shutdown()).await;
    assert!(idle.rx.expect_dropped().await.is_empty());
    assert_eq!(expect_close(&mut upgraded).await.code, close::GOING_AWAY);
    within(client.close()).await;
}
