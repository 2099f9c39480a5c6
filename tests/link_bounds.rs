//! Issue 8 (hardening), the Link's bounds: what one peer can make a link
//! hold, and how a link ends.
//!
//! * A peer that never reads but keeps sending requests (and pings) holds
//!   at most the link's byte budget: the server's memory stays bounded and
//!   the link is closed with 4011 once the queue has stayed full for the
//!   drain timeout. Frames that wait for room are delayed, never lost.
//! * Hook tasks belong to their link: its end cancels them, `stopped()` and
//!   the server's shutdown wait until they are gone, and no hook runs past
//!   `max_hook_time` whatever timeout the peer asked for.
//! * A link whose driver fails in any way (a panic included) still ends:
//!   `closed()` returns and calls in flight fail with `CONNECTION_CLOSED`;
//!   a timer config that skipped validation is clamped, not a panic.
//!
//! The tests of this file run one at a time (see [`SERIAL`]): one of them
//! measures the process's memory.

mod common;

use std::collections::BTreeSet;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use agent_tunnel::protocol::handshake::Identity;
use agent_tunnel::protocol::link::{self, LinkHandle, Role};
use agent_tunnel::protocol::{close, codec, Hooks, LinkConfig, RawValue, SUBPROTOCOL};
use agent_tunnel::server::{AgentServer, ServerEvent};
use agent_tunnel::{codes, HookError};
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::Role as WsRole;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// One test at a time: the memory test must not see the others' memory.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The process's resident memory, in bytes (`/proc/self/statm`, in pages
/// of 4 KiB on the platforms this runs on).
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("statm has a resident field");
    pages * 4096
}

/// Counts live hook futures: one is created inside each handler call and
/// dropped with the hook's future.
#[derive(Clone, Default)]
struct LiveHooks {
    live: Arc<AtomicUsize>,
    started: Arc<AtomicUsize>,
}

struct Alive(Arc<AtomicUsize>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl LiveHooks {
    /// A hook that never finishes.
    fn install(&self, server: &AgentServer) {
        let this = self.clone();
        server.on_hook("forever", move |_: Value, _| {
            this.live.fetch_add(1, Ordering::SeqCst);
            this.started.fetch_add(1, Ordering::SeqCst);
            let alive = Alive(Arc::clone(&this.live));
            async move {
                let _alive = alive;
                std::future::pending::<()>().await;
                Ok::<_, HookError>(())
            }
        });
    }

    fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    async fn wait_started(&self, n: usize) {
        let started = Arc::clone(&self.started);
        until("hooks to start", move || {
            started.load(Ordering::SeqCst) >= n
        })
        .await;
    }
}

/// Waits until `ok` holds, looking every few milliseconds, under [`LIMIT`].
async fn until(what: &str, ok: impl Fn() -> bool) {
    let waited = tokio::time::timeout(LIMIT, async {
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        while !ok() {
            tick.tick().await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting for {what}");
}

fn req(id: u64, action: &str, timeout_ms: Option<u64>) -> Message {
    let mut frame = json!({"t": "req", "id": id, "action": action, "body": null});
    if let Some(ms) = timeout_ms {
        frame["timeout_ms"] = json!(ms);
    }
    Message::text(frame.to_string())
}

// ------------------------------------------------------------ item 2

/// A raw agent whose socket has a tiny receive buffer, so what the server
/// writes backs up at once.
async fn tiny_buffer_agent(server: &AgentServer) -> (RawWs, String) {
    let mut events = server.events();
    let addr = server.local_addr();
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(4 * KIB as u32)
        .expect("SO_RCVBUF");
    let tcp = within(socket.connect(addr)).await.expect("connect");
    let mut request = format!("ws://{addr}/")
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    let (mut ws, _) = within(tokio_tungstenite::client_async(request, tcp))
        .await
        .expect("upgrade");
    let est = raw_handshake(&mut ws, SECRET, Identity::default())
        .await
        .expect("handshake");
    wait_for(&mut events, |e| match e {
        ServerEvent::AgentConnected(a) if a.name() == est.name => Some(()),
        _ => None,
    })
    .await;
    (ws, est.name)
}

/// The attack of the review: authenticate, never read, send requests whose
/// answers are far bigger than they are (half answered at once by the
/// driver, half from hook tasks), and pings to look alive. Before the fix
/// the server queued about 2,048 answers (65 MiB of growth measured with
/// 64 KiB answers; 250 MiB in the review's run) and never closed the link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_stays_bounded_and_is_closed_with_4011() {
    let _serial = SERIAL.lock().await;
    /// The bound on the whole process's growth (the budget is 4 MiB plus
    /// the WebSocket layer's 1 MiB, plus one answer per hook task waiting
    /// for room: 256 × 64 KiB).
    const BOUND: usize = 64 * MIB;
    const ANSWER: usize = 64 * KIB;

    let mut config = LinkConfig::default();
    // Heartbeats on: the attacker's pings must not keep the link alive.
    config.ping_interval = Some(Duration::from_millis(300));
    config.missed_pongs = 2;
    config.drain_timeout = Duration::from_secs(1);
    let server = start(server_builder().link_config(config)).await;
    let big = Arc::new("x".repeat(ANSWER));
    let b = Arc::clone(&big);
    server.on_hook("big", move |_: Value, _| {
        let b = Arc::clone(&b);
        async move { Ok::<_, HookError>(b.as_str().to_owned()) }
    });
    let b = Arc::clone(&big);
    server.on_hook("big-later", move |_: Value, _| {
        let b = Arc::clone(&b);
        async move {
            tokio::task::yield_now().await;
            Ok::<_, HookError>(b.as_str().to_owned())
        }
    });

    let mut events = server.events();
    let (mut ws, name) = tiny_buffer_agent(&server).await;
    let link = server.agent(&name).expect("registered").link().clone();
    let base = rss();
    let peak_rss = Peak::watch(rss);
    let peak_queued = {
        let link = link.clone();
        Peak::watch(move || link.queued_bytes())
    };
    let started = tokio::time::Instant::now();

    // Writes block once the server stops reading and the socket buffers
    // are full; they fail once it has closed the connection. The socket
    // stays open (and unread) until the server closes the link.
    let flood = tokio::spawn(async move {
        let mut sent = 0u64;
        for id in 1..=6000u64 {
            let action = if id % 2 == 0 { "big" } else { "big-later" };
            if ws.feed(req(id, action, None)).await.is_err() {
                break;
            }
            if id % 16 == 0 && ws.feed(Message::Ping(Default::default())).await.is_err() {
                break;
            }
            if id % 64 == 0 && ws.flush().await.is_err() {
                break;
            }
            sent = id;
        }
        let _ = ws.flush().await;
        (sent, ws)
    });

    let code = wait_disconnected(&mut events, &name).await;
    let closed_after = started.elapsed();
    let peak_rss = peak_rss.stop().await;
    let peak_queued = peak_queued.stop().await;
    let growth = peak_rss.saturating_sub(base);
    let (sent, ws) = within(flood).await.expect("flood task");
    drop(ws);
    eprintln!(
        "peer that never reads: {sent} requests sent; closed with {code} after {closed_after:?}; \
         RSS growth {:.1} MiB (bound {} MiB); peak queued {} KiB",
        growth as f64 / MIB as f64,
        BOUND / MIB,
        peak_queued / KIB,
    );
    assert_eq!(
        code,
        close::NOT_READING,
        "closed as a peer that does not read"
    );
    assert_eq!(
        link.close_reason().map(|r| r.code),
        Some(close::NOT_READING)
    );
    let limit = link.config().queued_bytes_limit();
    assert!(
        peak_queued <= limit + link.config().max_message_bytes,
        "queued {peak_queued} bytes; the budget is {limit}"
    );
    assert!(
        growth < BOUND,
        "the server grew by {growth} bytes for a peer that never reads"
    );
    within(link.stopped()).await;
    assert_eq!(link.running_hooks(), 0);

    // The server goes on serving others.
    server.on_hook("echo", |v: Value, _| async move { Ok::<_, HookError>(v) });
    let (client, _) = connect_plain(&server).await;
    let got: Value = within(client.send_timeout("echo", &json!("still here"), LONG))
        .await
        .expect("echo");
    assert_eq!(got, json!("still here"));
    within(client.close()).await;
    within(server.shutdown()).await;
}

/// With room for one message only, answers from hook tasks and requests
/// from server callers wait for room while the peer reads nothing; once it
/// reads, every one of them arrives, and the queue never held more than
/// its budget (plus one frame the driver made itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_that_wait_for_room_are_delayed_never_lost() {
    let _serial = SERIAL.lock().await;
    const MESSAGE: usize = 64 * KIB;
    const ANSWERS: u64 = 200;
    const CALLS: usize = 50;
    let mut config = LinkConfig::default();
    config.ping_interval = None;
    config.max_message_bytes = MESSAGE;
    config.max_queued_bytes = Some(MESSAGE);
    config.drain_timeout = LONG;
    let server = start(server_builder().link_config(config)).await;
    let blob = "b".repeat(16 * KIB);
    let b = blob.clone();
    server.on_hook("blob", move |_: Value, _| {
        let b = b.clone();
        async move {
            tokio::task::yield_now().await;
            Ok::<_, HookError>(b)
        }
    });
    let (mut ws, name) = tiny_buffer_agent(&server).await;
    let link = server.agent(&name).expect("registered").link().clone();
    let peak = {
        let link = link.clone();
        Peak::watch(move || link.queued_bytes())
    };

    for id in 1..=ANSWERS {
        within(ws.feed(req(id, "blob", None))).await.expect("feed");
    }
    within(ws.flush()).await.expect("flush");
    let calls: Vec<_> = (0..CALLS)
        .map(|i| {
            let server = server.clone();
            let name = name.clone();
            let body = json!({"i": i, "pad": "p".repeat(16 * KIB)});
            tokio::spawn(async move {
                let got: Value = server
                    .send_to_timeout(name.as_str(), "echo", &body, LONG)
                    .await?;
                assert_eq!(got, body);
                Ok::<_, agent_tunnel::Error>(())
            })
        })
        .collect();
    // Nothing is read yet: the hooks and callers must be waiting for room.
    until("answers and calls to wait for room", || {
        link.queued_bytes() >= MESSAGE / 2
    })
    .await;

    let mut answers = BTreeSet::new();
    let mut served = 0;
    while answers.len() < ANSWERS as usize || served < CALLS {
        let frame = recv_json(&mut ws).await;
        match frame["t"].as_str() {
            Some("res") => {
                assert_eq!(frame["ok"].as_str(), Some(blob.as_str()), "answer intact");
                assert!(answers.insert(frame["id"].as_u64().expect("id")));
            }
            Some("req") => {
                let answer = json!({"t": "res", "id": frame["id"], "ok": frame["body"]});
                send_json(&mut ws, &answer).await;
                served += 1;
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
    assert_eq!(answers, (1..=ANSWERS).collect::<BTreeSet<_>>());
    for call in calls {
        within(call)
            .await
            .expect("call task")
            .expect("every call succeeded");
    }
    let peak = peak.stop().await;
    assert!(
        peak <= 2 * MESSAGE,
        "queued {peak} bytes with a budget of {MESSAGE}"
    );
    assert!(!link.is_closed());
    within(server.shutdown()).await;
}

// ------------------------------------------------------------ item 3

/// Connect, start hooks that never finish, leave: over and over. Before the
/// fix, 2,560 hook futures were still alive after `shutdown()` returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_only_once_every_hook_future_is_gone() {
    let _serial = SERIAL.lock().await;
    const CYCLES: usize = 40;
    const HOOKS: usize = 64;
    let server = start(server_builder().shutdown_grace(Duration::from_millis(100))).await;
    let hooks = LiveHooks::default();
    hooks.install(&server);

    let mut kept = Vec::new();
    for cycle in 0..CYCLES {
        let (mut ws, name) = raw_agent(&server).await;
        for id in 1..=HOOKS as u64 {
            // No timeout of the peer's, or one far away: neither ends them.
            let timeout = (id % 2 == 0).then_some(3_600_000);
            within(ws.feed(req(id, "forever", timeout)))
                .await
                .expect("feed");
        }
        within(ws.flush()).await.expect("flush");
        hooks.wait_started((cycle + 1) * HOOKS).await;
        if cycle >= CYCLES - 2 {
            // The last two stay connected, for shutdown to close.
            let link = server.agent(&name).expect("registered").link().clone();
            until("the hook tasks to be counted", || {
                link.running_hooks() == HOOKS
            })
            .await;
            kept.push(ws);
        } else {
            let _ = within(ws.close(None)).await;
        }
    }
    let stats = server.stats();
    assert_eq!(stats.running_hooks, 2 * HOOKS, "{stats:?}");

    within(server.shutdown()).await;
    assert_eq!(hooks.live(), 0, "hook futures alive after shutdown");
    let stats = server.stats();
    assert_eq!(stats.running_hooks, 0, "{stats:?}");
    assert!(stats.is_idle(), "{stats:?}");
    drop(kept);
}

/// A link's end, without any shutdown, drops its hook futures; `stopped()`
/// returns once they are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_links_end_cancels_its_hooks() {
    let _serial = SERIAL.lock().await;
    let server = start_server().await;
    let hooks = LiveHooks::default();
    hooks.install(&server);
    for how in ["peer closes", "server disconnects"] {
        let (mut ws, name) = raw_agent(&server).await;
        let link = server.agent(&name).expect("registered").link().clone();
        for id in 1..=32 {
            within(ws.feed(req(id, "forever", None)))
                .await
                .expect("feed");
        }
        within(ws.flush()).await.expect("flush");
        until("32 hook tasks", || link.running_hooks() == 32).await;
        assert_eq!(hooks.live(), 32);
        assert_eq!(server.stats().running_hooks, 32);

        match how {
            "peer closes" => {
                let _ = within(ws.close(None)).await;
            }
            _ => {
                server.disconnect(&name, "bye").expect("connected");
                let _ = expect_close(&mut ws).await;
            }
        }
        drop(ws);
        within(link.stopped()).await;
        assert_eq!(hooks.live(), 0, "{how}: hook futures outlived the link");
        assert_eq!(link.running_hooks(), 0, "{how}");
    }
    within(server.shutdown()).await;
}

/// A peer's `timeout_ms` (or its absence) cannot make a hook run past this
/// side's `max_hook_time`: the hook is dropped and answers `TIMEOUT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_hook_runs_past_max_hook_time() {
    let _serial = SERIAL.lock().await;
    let mut config = LinkConfig::default();
    config.ping_interval = None;
    config.max_hook_time = Duration::from_millis(200);
    let server = start(server_builder().link_config(config)).await;
    let hooks = LiveHooks::default();
    hooks.install(&server);
    let (mut ws, name) = raw_agent(&server).await;
    let link = server.agent(&name).expect("registered").link().clone();
    within(ws.feed(req(1, "forever", Some(u64::MAX))))
        .await
        .expect("feed");
    within(ws.feed(req(2, "forever", None)))
        .await
        .expect("feed");
    within(ws.flush()).await.expect("flush");
    let mut timed_out = BTreeSet::new();
    for _ in 0..2 {
        let frame = recv_json(&mut ws).await;
        assert_eq!(frame["err"]["code"], codes::TIMEOUT, "{frame}");
        timed_out.insert(frame["id"].as_u64().expect("id"));
    }
    assert_eq!(timed_out, BTreeSet::from([1, 2]));
    until("the hooks to be dropped", || {
        hooks.live() == 0 && link.running_hooks() == 0
    })
    .await;
    assert_eq!(link.serving_requests(), 0);
    within(server.shutdown()).await;
}

// ------------------------------------------------------------ item 14

/// A transport that panics on its next write once armed: a stand-in for any
/// bug that makes the driver panic.
struct Boom {
    inner: DuplexStream,
    armed: Arc<AtomicBool>,
}

impl AsyncRead for Boom {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Boom {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        assert!(
            !self.armed.load(Ordering::SeqCst),
            "transport bug (on purpose, in a test)"
        );
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A link on one end of an in-memory pipe, with no handshake; the other
/// end is returned as a WebSocket the test drives.
async fn piped<S>(
    config: LinkConfig,
    wrap: impl FnOnce(DuplexStream) -> S,
) -> (LinkHandle, WebSocketStream<DuplexStream>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    init_tracing();
    let (a, b) = tokio::io::duplex(64 * KIB);
    let ws = WebSocketStream::from_raw_socket(wrap(a), WsRole::Client, None).await;
    let peer = WebSocketStream::from_raw_socket(b, WsRole::Server, None).await;
    let hooks: Hooks<LinkHandle> = Hooks::new();
    let (link, _) = link::spawn(ws, Role::Agent, config, None, hooks, None, |h| h);
    (link, peer)
}

/// Answers every request with its own body until the stream ends.
fn echo_peer(mut peer: WebSocketStream<DuplexStream>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(Ok(msg)) = peer.next().await {
            if let Message::Text(text) = msg {
                if let Ok(agent_tunnel::protocol::Frame::Req(r)) = codec::decode(text.as_str()) {
                    let res = codec::encode_res(r.id, Ok(&r.body));
                    if peer.send(Message::text(res)).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_that_panics_still_ends_its_link() {
    let _serial = SERIAL.lock().await;
    let armed = Arc::new(AtomicBool::new(false));
    let mut config = LinkConfig::default();
    config.ping_interval = None;
    let a = Arc::clone(&armed);
    let (link, mut peer) = piped(config, move |inner| Boom { inner, armed: a }).await;
    let body = RawValue::from_string("1".to_owned()).expect("json");

    // A call in flight: the peer reads it and never answers.
    let first = {
        let (link, body) = (link.clone(), body.clone());
        tokio::spawn(async move { link.request("x", &body, LONG).await })
    };
    match within(peer.next()).await {
        Some(Ok(Message::Text(_))) => {}
        other => panic!("expected the request, got {other:?}"),
    }
    // The next write panics inside the driver.
    armed.store(true, Ordering::SeqCst);
    let second = {
        let link = link.clone();
        tokio::spawn(async move { link.request("y", &body, LONG).await })
    };

    let reason = within(link.closed()).await;
    assert_eq!(reason.code, close::ABNORMAL, "{reason}");
    for call in [first, second] {
        let err = within(call)
            .await
            .expect("call task")
            .expect_err("the link is gone");
        assert_eq!(err.code(), codes::CONNECTION_CLOSED, "{err}");
    }
    within(link.stopped()).await;
    assert!(link.is_closed());
}

/// Timer values the builders refuse, given to `link::spawn` directly: the
/// driver clamps them instead of panicking (a zero interval) or
/// overflowing (an interval too long to add to now).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timer_values_that_skipped_validation_do_not_break_the_link() {
    let _serial = SERIAL.lock().await;
    for interval in [Duration::ZERO, Duration::MAX] {
        let mut config = LinkConfig::default();
        config.ping_interval = Some(interval);
        // Pings every millisecond must not close the link on a loaded
        // machine: only the clamping is under test here.
        config.missed_pongs = u32::MAX;
        config.drain_timeout = Duration::ZERO;
        config.close_timeout = Duration::MAX;
        assert_eq!(config.validate().unwrap_err().code(), codes::CONFIG);
        let (link, peer) = piped(config, |s| s).await;
        let echo = echo_peer(peer);
        let body = RawValue::from_string(r#"{"n":1}"#.to_owned()).expect("json");
        for _ in 0..3 {
            let got = within(link.request("echo", &body, LONG))
                .await
                .unwrap_or_else(|e| panic!("interval {interval:?}: {e}"));
            assert_eq!(got.get(), body.get());
        }
        link.close(close::NORMAL, "done");
        within(link.closed()).await;
        within(link.stopped()).await;
        within(echo).await.expect("echo peer");
    }
}
