//! Issue 9, item 1: cancellation, both ways.
//!
//! A call whose future is dropped before its outcome (or whose
//! `CallHandle::cancel` is called) sends `cancel {id}` to a peer that
//! announced the `cancel` capability; the peer drops the hook's future and
//! answers `CANCELLED`, unless the hook asked to keep running. Every
//! request gets exactly one `res`. Each ordering of a cancel against its
//! request is checked from a real server to a real agent, from the agent to
//! the server, and on the wire with raw peers on each side: cancel while
//! the hook runs, before the request went out, after it was answered, twice,
//! for an id never sent, and before its request. A peer written before
//! capabilities never receives a `cancel`, and 10,000 cancelled calls leave
//! every map of both sides empty.

mod common;
mod raw_server;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agent_tunnel::client::{AgentClient, ServerHandle};
use agent_tunnel::protocol::{codec, Caps, LinkHandle};
use agent_tunnel::server::{Agent, AgentServer};
use agent_tunnel::{codes, Call, Error, HookError};
use common::*;
use futures_util::future::join_all;
use futures_util::SinkExt;
use raw_server::RawServer;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

/// Counts the hooks that started and the hook futures still alive.
#[derive(Clone)]
struct Probe {
    started: watch::Sender<usize>,
    live: Arc<AtomicUsize>,
}

struct Alive(Arc<AtomicUsize>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Probe {
    fn new() -> Probe {
        Probe {
            started: watch::channel(0).0,
            live: Arc::default(),
        }
    }

    /// Marks a hook started; the guard marks its future gone when dropped.
    fn enter(&self) -> Alive {
        self.live.fetch_add(1, Ordering::SeqCst);
        self.started.send_modify(|n| *n += 1);
        Alive(Arc::clone(&self.live))
    }

    fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    fn started(&self) -> usize {
        *self.started.borrow()
    }

    async fn wait_started(&self, n: usize) {
        let mut rx = self.started.subscribe();
        within(rx.wait_for(|s| *s >= n)).await.expect("probe alive");
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

/// The hooks both sides get: `slow` never finishes (until dropped),
/// `stubborn` keeps running through a cancel and reports it, `echo`.
fn install<P: Clone + Send + Sync + 'static>(
    hooks: &agent_tunnel::protocol::Hooks<P>,
    probe: &Probe,
) {
    let p = probe.clone();
    hooks.on_hook("slow", move |_: Value, _: Call<P>| {
        let alive = p.enter();
        async move {
            let _alive = alive;
            std::future::pending::<()>().await;
            Ok::<_, HookError>("never")
        }
    });
    let p = probe.clone();
    hooks.on_hook("stubborn", move |_: Value, call: Call<P>| {
        let alive = p.enter();
        async move {
            let _alive = alive;
            call.keep_running();
            assert!(!call.is_cancelled());
            call.cancelled().await;
            Ok::<_, HookError>(json!({"cancelled": call.is_cancelled(), "finished": true}))
        }
    });
    hooks.on_hook("echo", |v: Value, _: Call<P>| async move {
        Ok::<_, HookError>(v)
    });
}

/// A server and one agent, each with the hooks of [`install`], and the
/// agent's handle on its link (taken from a call to its `capture` hook).
struct Pair {
    server: AgentServer,
    client: AgentClient,
    agent: Agent,
    on_server: Probe,
    on_agent: Probe,
    /// The agent's side of the link.
    agent_link: LinkHandle,
    /// The server as the agent's hooks see it.
    server_handle: ServerHandle,
}

async fn pair_with(builder: agent_tunnel::server::ServerBuilder) -> Pair {
    let server = start(builder).await;
    let on_server = Probe::new();
    let on_agent = Probe::new();
    install(server.hooks(), &on_server);
    let captured: Arc<std::sync::Mutex<Option<ServerHandle>>> = Arc::default();
    let slot = Arc::clone(&captured);
    let builder = client_builder(&server).default_timeout(LONG).on_hook(
        "capture",
        move |_: Value, call: Call<ServerHandle>| {
            *slot.lock().expect("slot") = Some(call.peer.clone());
            async { Ok::<_, HookError>(()) }
        },
    );
    let client = connect(&server, builder).await;
    install(client.hooks(), &on_agent);
    let name = client.name().expect("named");
    let agent = server.agent(&name).expect("registered");
    within(agent.send::<_, ()>("capture", &()))
        .await
        .expect("capture");
    let server_handle = captured.lock().expect("slot").clone().expect("captured");
    Pair {
        agent_link: server_handle.link().clone(),
        server_handle,
        server,
        client,
        agent,
        on_server,
        on_agent,
    }
}

async fn pair() -> Pair {
    pair_with(server_builder().default_timeout(LONG)).await
}

impl Pair {
    /// Both sides hold nothing for any call: no pending request, nothing
    /// served, no hook task, no cancellable entry.
    async fn settle(&self) {
        let (server, agent, a, b) = (
            self.agent.link().clone(),
            self.agent_link.clone(),
            self.on_server.clone(),
            self.on_agent.clone(),
        );
        until("both sides to be idle", move || {
            [&server, &agent].iter().all(|l| {
                l.pending_requests() == 0
                    && l.serving_requests() == 0
                    && l.running_hooks() == 0
                    && l.cancellable_requests() == 0
            }) && a.live() == 0
                && b.live() == 0
        })
        .await;
        let stats = self.server.stats();
        assert_eq!(
            (
                stats.pending_requests,
                stats.serving_requests,
                stats.running_hooks
            ),
            (0, 0, 0),
            "{stats:?}"
        );
        assert_eq!(self.client.pending_requests(), 0);
    }

    async fn close(self) {
        within(self.client.close()).await;
        within(self.server.shutdown()).await;
    }
}

// ------------------------------------------------------- server -> agent

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_agree_on_both_capabilities() {
    let p = pair().await;
    assert_eq!(p.agent.link().peer_caps(), Caps::SUPPORTED);
    assert_eq!(p.agent_link.peer_caps(), Caps::SUPPORTED);
    p.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_servers_call_drops_the_agents_hook() {
    let p = pair().await;
    let agent = p.agent.clone();
    let call = tokio::spawn(async move { agent.send::<_, Value>("slow", &()).await });
    p.on_agent.wait_started(1).await;
    // The hook starts in the driver; its request enters the table right after.
    let link = p.agent_link.clone();
    until("the request to be cancellable", move || {
        link.cancellable_requests() == 1
    })
    .await;
    call.abort();
    // The agent drops the hook's future: its cancel arrived.
    let probe = p.on_agent.clone();
    until("the agent's hook to be dropped", move || probe.live() == 0).await;
    p.settle().await;
    // The link is fine and serves on.
    let back: Value = within(p.agent.send("echo", &json!(1))).await.expect("echo");
    assert_eq!(back, json!(1));
    p.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_cancel_ends_with_cancelled_once_the_agent_stopped() {
    let p = pair().await;
    let mut call = p.agent.send_cancellable::<_, Value>("slow", &());
    // Polled until the hook runs.
    tokio::select! {
        _ = &mut call => panic!("slow finished"),
        _ = p.on_agent.wait_started(1) => {}
    }
    call.cancel();
    assert!(call.is_cancelled());
    let err = within(call).await.expect_err("cancelled");
    assert!(matches!(err, Error::Cancelled), "{err:?}");
    assert_eq!(err.code(), codes::CANCELLED);
    // The CANCELLED answer comes after the hook's future is gone.
    assert_eq!(p.on_agent.live(), 0);
    p.settle().await;
    p.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cancelled_before_it_went_out_sends_nothing() {
    let p = pair().await;
    let call = p.agent.send_cancellable::<_, Value>("slow", &());
    call.cancel();
    let err = within(call).await.expect_err("cancelled");
    assert!(matches!(err, Error::Cancelled), "{err:?}");
    // A call after it is served in order: had the first gone out, its hook
    // would have started before this one was read.
    let back: Value = within(p.agent.send("echo", &"after")).await.expect("echo");
    assert_eq!(back, json!("after"));
    assert_eq!(
        p.on_agent.started(),
        0,
        "the cancelled call never reached the agent"
    );
    // Cancelling a finished call, through a canceller, changes nothing.
    let call = p.agent.send_cancellable::<_, Value>("echo", &"done");
    let stop = call.canceller();
    assert_eq!(within(call).await.expect("echo"), json!("done"));
    stop.cancel();
    p.settle().await;
    p.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_that_keeps_running_answers_with_its_own_result() {
    let p = pair().await;
    let mut call = p.agent.send_cancellable::<_, Value>("stubborn", &());
    tokio::select! {
        _ = &mut call => panic!("stubborn finished early"),
        _ = p.on_agent.wait_started(1) => {}
    }
    call.cancel();
    let got = within(call).await.expect("its own result");
    assert_eq!(got, json!({"cancelled": true, "finished": true}));
    p.settle().await;
    p.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_send_all_midway_cancels_every_agents_call() {
    let server = start(server_builder().default_timeout(LONG)).await;
    let probe = Probe::new();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let client = connect(&server, client_builder(&server)).await;
        install(client.hooks(), &probe);
        clients.push(client);
    }
    let all = {
        let server = server.clone();
        tokio::spawn(async move { server.send_all::<_, Value>("slow", &()).await })
    };
    probe.wait_started(3).await;
    assert_eq!(server.stats().pending_requests, 3);
    all.abort();
    let p = probe.clone();
    until("every agent's hook to be dropped", move || p.live() == 0).await;
    let s = server.clone();
    until("the server to hold no call", move || {
        let stats = s.stats();
        stats.pending_requests == 0 && stats.running_hooks == 0
    })
    .await;
    for agent in server.agents() {
        assert_eq!(agent.link().pending_requests(), 0);
    }
    for client in clients {
        within(client.close()).await;
    }
    within(server.shutdown()).await;
}

// ------------------------------------------------------- agent -> server

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_an_agents_call_drops_the_servers_hook() {
    let p = pair().await;
    let client = p.client.clone();
    let call = tokio::spawn(async move { client.send::<_, Value>("slow", &()).await });
    p.on_server.wait_started(1).await;
    let link = p.agent.link().clone();
    until("the request to be cancellable", move || {
        link.cancellable_requests() == 1
    })
    .await;
    call.abort();
    let probe = p.on_server.clone();
    until("the server's hook to be dropped", move || probe.live() == 0).await;
    p.settle().await;
    p.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_explicit_cancel_and_a_server_hook_that_keeps_running() {
    let p = pair().await;
    let mut call = p.server_handle.send_cancellable::<_, Value>("slow", &());
    tokio::select! {
        _ = &mut call => panic!("slow finished"),
        _ = p.on_server.wait_started(1) => {}
    }
    call.cancel();
    assert!(matches!(within(call).await, Err(Error::Cancelled)));
    assert_eq!(p.on_server.live(), 0);

    let mut call = p
        .server_handle
        .send_cancellable::<_, Value>("stubborn", &());
    tokio::select! {
        _ = &mut call => panic!("stubborn finished early"),
        _ = p.on_server.wait_started(2) => {}
    }
    call.cancel();
    assert_eq!(
        within(call).await.expect("its own result"),
        json!({"cancelled": true, "finished": true})
    );

    // Before it went out: nothing reaches the server.
    let call = p.server_handle.send_cancellable::<_, Value>("slow", &());
    call.cancel();
    assert!(matches!(within(call).await, Err(Error::Cancelled)));
    let back: Value = within(p.client.send("echo", &"after")).await.expect("echo");
    assert_eq!(back, json!("after"));
    assert_eq!(p.on_server.started(), 2);
    p.settle().await;
    p.close().await;
}

// ---------------------------------------------- the server, on the wire

/// The raw agent's next frame, which must be the `res` of `id`.
async fn res_of(ws: &mut RawWs, id: u64) -> Value {
    let v = recv_json(ws).await;
    assert_eq!(v["t"], "res", "{v}");
    assert_eq!(v["id"], id, "expected the answer to {id}, got {v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_handles_every_ordering_of_a_cancel() {
    let server = start(server_builder().default_timeout(LONG)).await;
    let probe = Probe::new();
    install(server.hooks(), &probe);
    let (mut ws, name) = raw_agent(&server).await;
    let link = server.agent(&name).expect("registered").link().clone();
    let req = |id: u64, action: &str, body: Value| {
        Message::text(json!({"t":"req","id":id,"action":action,"body":body}).to_string())
    };
    let cancel = |id: u64| Message::text(codec::encode_cancel(id));

    // During: the hook runs; the cancel drops it; one CANCELLED answer.
    within(ws.send(req(1, "slow", json!(null))))
        .await
        .expect("send");
    probe.wait_started(1).await;
    within(ws.send(cancel(1))).await.expect("send");
    let v = res_of(&mut ws, 1).await;
    assert_eq!(v["err"]["code"], codes::CANCELLED, "{v}");
    assert_eq!(probe.live(), 0);

    // Twice: the second changes nothing, and no second answer comes (the
    // next frame is the echo's).
    within(ws.send(req(2, "slow", json!(null))))
        .await
        .expect("send");
    probe.wait_started(2).await;
    within(ws.feed(cancel(2))).await.expect("feed");
    within(ws.feed(cancel(2))).await.expect("feed");
    within(ws.flush()).await.expect("flush");
    assert_eq!(res_of(&mut ws, 2).await["err"]["code"], codes::CANCELLED);
    within(ws.send(cancel(2))).await.expect("send");
    within(ws.send(req(3, "echo", json!("three"))))
        .await
        .expect("send");
    assert_eq!(res_of(&mut ws, 3).await["ok"], "three");

    // After its answer, for an id never sent, and before its request: all
    // ignored; the request that follows is served as usual.
    within(ws.send(cancel(3))).await.expect("send");
    within(ws.send(cancel(999_999))).await.expect("send");
    within(ws.send(cancel(4))).await.expect("send");
    within(ws.send(req(4, "echo", json!("four"))))
        .await
        .expect("send");
    assert_eq!(res_of(&mut ws, 4).await["ok"], "four");

    // In the same write as its request: one answer, CANCELLED.
    within(ws.feed(req(5, "slow", json!(null))))
        .await
        .expect("feed");
    within(ws.feed(cancel(5))).await.expect("feed");
    within(ws.flush()).await.expect("flush");
    assert_eq!(res_of(&mut ws, 5).await["err"]["code"], codes::CANCELLED);

    // A hook that keeps running answers with its own result.
    within(ws.send(req(6, "stubborn", json!(null))))
        .await
        .expect("send");
    probe.wait_started(4).await;
    within(ws.send(cancel(6))).await.expect("send");
    assert_eq!(
        res_of(&mut ws, 6).await["ok"],
        json!({"cancelled": true, "finished": true})
    );

    within(ws.send(req(7, "echo", json!("end"))))
        .await
        .expect("send");
    assert_eq!(res_of(&mut ws, 7).await["ok"], "end");
    assert_eq!(
        (
            link.serving_requests(),
            link.running_hooks(),
            link.cancellable_requests()
        ),
        (0, 0, 0)
    );
    assert_eq!(probe.live(), 0);
    within(ws.close(None)).await.expect("close");
    within(server.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_capabilities_never_receives_a_cancel() {
    // A raw agent announces nothing, as one written before capabilities.
    let server = start(server_builder().default_timeout(LONG)).await;
    let (mut ws, name) = raw_agent(&server).await;
    let agent = server.agent(&name).expect("registered");
    assert_eq!(agent.link().peer_caps(), Caps::NONE);

    let mut call = agent.send_cancellable::<_, Value>("anything", &1);
    let first = tokio::select! {
        _ = &mut call => panic!("answered without an answer"),
        v = recv_json(&mut ws) => v,
    };
    assert_eq!(first["t"], "req");
    // Cancelled: forgotten here at once, and nothing is sent.
    call.cancel();
    assert!(matches!(within(call).await, Err(Error::Cancelled)));
    let agent2 = agent.clone();
    let dropped = tokio::spawn(async move { agent2.send::<_, Value>("dropped", &2).await });
    assert_eq!(recv_json(&mut ws).await["action"], "dropped");
    dropped.abort();
    let _ = dropped.await;
    assert_eq!(agent.link().pending_requests(), 0);
    // The next frame the agent sees is the next request, not a cancel.
    let agent3 = agent.clone();
    let next = tokio::spawn(async move { agent3.send::<_, Value>("next", &3).await });
    let v = recv_json(&mut ws).await;
    assert_eq!(
        (v["t"].as_str(), v["action"].as_str()),
        (Some("req"), Some("next")),
        "{v}"
    );
    let id = v["id"].as_u64().expect("id");
    send_json(&mut ws, &json!({"t":"res","id":id,"ok":"fine"})).await;
    assert_eq!(
        within(next).await.expect("task").expect("answer"),
        json!("fine")
    );
    // A late answer to the cancelled request is dropped quietly.
    let cancelled_id = first["id"].as_u64().expect("id");
    send_json(&mut ws, &json!({"t":"res","id":cancelled_id,"ok":"late"})).await;
    assert_eq!(agent.link().pending_requests(), 0);
    within(ws.close(None)).await.expect("close");
    within(server.shutdown()).await;
}

// ----------------------------------------------- the agent, on the wire

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_handles_every_ordering_of_a_cancel() {
    init_tracing();
    let raw = RawServer::bind(Caps::SUPPORTED).await;
    let probe = Probe::new();
    let builder = AgentClient::builder(&raw.url(), SECRET).ping_interval(None);
    let connecting = tokio::spawn(builder.connect());
    let mut link = raw.accept().await;
    assert_eq!(link.agent_caps, Caps::SUPPORTED);
    let client = within(connecting).await.expect("task").expect("connects");
    install(client.hooks(), &probe);
    let req =
        |id: u64, action: &str| json!({"t":"req","id":id,"action":action,"body":"x"}).to_string();

    link.send(&req(1, "slow")).await;
    probe.wait_started(1).await;
    link.send(&codec::encode_cancel(1)).await;
    let v = link.recv().await;
    assert_eq!(
        (v["id"].as_u64(), v["err"]["code"].as_str()),
        (Some(1), Some(codes::CANCELLED))
    );
    assert_eq!(probe.live(), 0);

    link.send(&req(2, "slow")).await;
    probe.wait_started(2).await;
    link.send(&codec::encode_cancel(2)).await;
    link.send(&codec::encode_cancel(2)).await;
    assert_eq!(link.recv().await["id"], 2);
    for id in [2, 3, 999_999] {
        link.send(&codec::encode_cancel(id)).await;
    }
    link.send(&req(3, "echo")).await;
    let v = link.recv().await;
    assert_eq!(v, json!({"t":"res","id":3,"ok":"x"}));

    link.send(&req(4, "stubborn")).await;
    probe.wait_started(3).await;
    link.send(&codec::encode_cancel(4)).await;
    let v = link.recv().await;
    assert_eq!(v["ok"], json!({"cancelled": true, "finished": true}), "{v}");
    assert_eq!(probe.live(), 0);
    within(client.close()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_sends_cancel_to_a_capable_server_and_none_to_an_old_one() {
    init_tracing();
    for caps in [Caps::SUPPORTED, Caps::NONE] {
        let raw = RawServer::bind(caps).await;
        let builder = AgentClient::builder(&raw.url(), SECRET)
            .ping_interval(None)
            .default_timeout(LONG);
        let connecting = tokio::spawn(builder.connect());
        let mut link = raw.accept().await;
        let client = within(connecting).await.expect("task").expect("connects");
        let capable = caps.contains(Caps::CANCEL);

        // A call dropped while it waits.
        let c = client.clone();
        let call = tokio::spawn(async move { c.send::<_, Value>("long", &()).await });
        let v = link.recv().await;
        assert_eq!(v["action"], "long");
        let dropped = v["id"].as_u64().expect("id");
        call.abort();
        let _ = call.await;
        // A call that times out.
        let c = client.clone();
        let timed_out = tokio::spawn(async move {
            c.send_timeout::<_, Value>("short", &(), Duration::from_millis(100))
                .await
        });
        let v = link.recv().await;
        if capable {
            assert_eq!(v, json!({"t":"cancel","id":dropped}));
        }
        let v = if capable { link.recv().await } else { v };
        assert_eq!(v["action"], "short", "{v}");
        let short = v["id"].as_u64().expect("id");
        let err = within(timed_out)
            .await
            .expect("task")
            .expect_err("times out");
        assert_eq!(err.code(), codes::TIMEOUT);
        // The terminal answers of both find nobody, as they should.
        for id in [dropped, short] {
            link.send(&format!(
                r#"{{"t":"res","id":{id},"err":{{"code":"CANCELLED","message":""}}}}"#
            ))
            .await;
        }
        let c = client.clone();
        let next = tokio::spawn(async move { c.send::<_, Value>("next", &()).await });
        let v = link.recv().await;
        if capable {
            assert_eq!(v, json!({"t":"cancel","id":short}));
        }
        let v = if capable { link.recv().await } else { v };
        // An old server sees only requests.
        assert_eq!(v["action"], "next", "{v}");
        let next_id = v["id"].as_u64().expect("id");
        link.send(&format!(r#"{{"t":"res","id":{next_id},"ok":"fine"}}"#))
            .await;
        assert_eq!(
            within(next).await.expect("task").expect("answer"),
            json!("fine")
        );
        assert_eq!(client.pending_requests(), 0);
        within(client.close()).await;
    }
}

// -------------------------------------------------------------- leaks

/// `n` calls from `link` to the peer's `slow` hook, in batches of the
/// in-flight limit: each batch waits until every hook runs, then is
/// dropped, so each call is cancelled while its hook runs.
async fn cancel_many(link: &LinkHandle, peer: &LinkHandle, probe: &Probe, n: usize) {
    let batch = 200;
    let mut done = 0;
    while done < n {
        let size = batch.min(n - done);
        let calls: Vec<_> = (0..size)
            .map(|_| link.call::<_, Value>("slow", &(), LONG))
            .collect();
        let mut all = Box::pin(join_all(calls));
        tokio::select! {
            _ = &mut all => panic!("slow calls finished"),
            _ = probe.wait_started(done + size) => {}
        }
        drop(all);
        done += size;
        assert_eq!(link.pending_requests(), 0);
        // The next batch finds every serving permit free again.
        let peer = peer.clone();
        until("the peer to drop a batch", move || {
            peer.serving_requests() == 0
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_cancelled_calls_leave_nothing_behind() {
    let p = pair_with(server_builder().default_timeout(LONG)).await;
    cancel_many(p.agent.link(), &p.agent_link, &p.on_agent, 5_000).await;
    cancel_many(&p.agent_link, p.agent.link(), &p.on_server, 5_000).await;
    p.settle().await;
    assert!(p.server.stats().agents == 1);
    // Still serving both ways.
    let back: Value = within(p.agent.send("echo", &"alive")).await.expect("echo");
    assert_eq!(back, json!("alive"));
    let back: Value = within(p.client.send("echo", &"alive")).await.expect("echo");
    assert_eq!(back, json!("alive"));
    p.close().await;
}
