//! Issue 9, item 2: progress and streamed results, both ways.
//!
//! A handler sends items through `Call::stream` and progress through
//! `Call::progress`; a caller that asked with `call_stream` gets them as a
//! `Stream`, then the final result. Flow control is by credit: a slow
//! consumer slows the producer (measured), dropping the stream cancels the
//! handler, an error after some items reaches the caller after them, a
//! plain call to a streaming handler gets only its result, and a peer
//! without the `stream` capability is never asked (UNSUPPORTED). Raw peers
//! that send items for unknown or ended ids, beyond their credit, or
//! credit that overflows are closed with 4000, and only their own link.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agent_tunnel::client::{AgentClient, ServerHandle};
use agent_tunnel::protocol::handshake::{ClientHandshake, Identity};
use agent_tunnel::protocol::{transport, Caps, Event, Hooks, LinkHandle, Secret, StreamOptions};
use agent_tunnel::server::{Agent, AgentServer, ServerEvent};
use agent_tunnel::{codes, Call, Error, HookError};
use common::*;
use futures_util::StreamExt;
use serde_json::{json, Map, Value};
use tokio::sync::watch;

/// Sent-item counter a handler bumps, watched by the test.
#[derive(Clone, Default)]
struct Sent(Arc<AtomicUsize>);

impl Sent {
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

fn hook_error(e: Error) -> HookError {
    HookError::new(e.code(), e.to_string())
}

/// `count n`: items 0..n, progress first, result n. `forever`: items until
/// the sink fails, then reports how (on `ended`). `broken`: 3 items, then
/// an error. `blob`: n items of 1 KiB. `silent`: never sends nor ends.
fn install<P: Clone + Send + Sync + 'static>(
    hooks: &Hooks<P>,
    sent: &Sent,
    ended: &watch::Sender<Option<String>>,
) {
    let s = sent.clone();
    hooks.on_hook("count", move |n: u64, call: Call<P>| {
        let s = s.clone();
        async move {
            call.progress(&json!({"of": n}));
            let mut items = call.stream::<u64>();
            for i in 0..n {
                items.send(&i).await.map_err(hook_error)?;
                s.0.fetch_add(1, Ordering::SeqCst);
            }
            Ok::<_, HookError>(n)
        }
    });
    let s = sent.clone();
    hooks.on_hook("blob", move |n: u64, call: Call<P>| {
        let s = s.clone();
        async move {
            let chunk = "x".repeat(1024);
            let mut items = call.stream::<str>();
            for _ in 0..n {
                items.send(&chunk).await.map_err(hook_error)?;
                s.0.fetch_add(1, Ordering::SeqCst);
            }
            Ok::<_, HookError>(n)
        }
    });
    let done = ended.clone();
    hooks.on_hook("forever", move |_: Value, call: Call<P>| {
        let done = done.clone();
        async move {
            call.keep_running();
            let mut items = call.stream::<u64>();
            let mut i = 0u64;
            let why = loop {
                if let Err(e) = items.send(&i).await {
                    break e.code().to_owned();
                }
                i += 1;
            };
            done.send_replace(Some(why));
            Ok::<_, HookError>(i)
        }
    });
    hooks.on_hook("silent", |_: Value, _: Call<P>| async move {
        std::future::pending::<()>().await;
        Ok::<_, HookError>(0u64)
    });
    hooks.on_hook("broken", |_: Value, call: Call<P>| async move {
        let mut items = call.stream::<u64>();
        for i in 0..3u64 {
            items.send(&i).await.map_err(hook_error)?;
        }
        Err::<u64, _>(HookError::new("BROKEN", "disk on fire"))
    });
}

struct Pair {
    server: AgentServer,
    client: AgentClient,
    agent: Agent,
    /// The agent's side of the link.
    agent_link: LinkHandle,
    on_server: (Sent, watch::Sender<Option<String>>),
    on_agent: (Sent, watch::Sender<Option<String>>),
}

async fn pair() -> Pair {
    pair_with(server_builder().default_timeout(LONG)).await
}

async fn pair_with(builder: agent_tunnel::server::ServerBuilder) -> Pair {
    let server = start(builder).await;
    let on_server = (Sent::default(), watch::channel(None).0);
    let on_agent = (Sent::default(), watch::channel(None).0);
    install(server.hooks(), &on_server.0, &on_server.1);
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
    install(client.hooks(), &on_agent.0, &on_agent.1);
    let name = client.name().expect("named");
    let agent = server.agent(&name).expect("registered");
    within(agent.send::<_, ()>("capture", &()))
        .await
        .expect("capture");
    let handle = captured.lock().expect("slot").clone().expect("captured");
    Pair {
        agent_link: handle.link().clone(),
        server,
        client,
        agent,
        on_server,
        on_agent,
    }
}

fn opts() -> StreamOptions {
    StreamOptions::new(LONG)
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

/// Takes every event of `count n` and checks them: progress first, items
/// 0..n in order, then the result.
async fn take_count(link: &LinkHandle, n: u64) {
    let mut s = within(link.call_stream::<_, u64, u64>("count", &n, opts()))
        .await
        .expect("stream opens");
    let mut next = 0u64;
    let mut progress = 0;
    let end = within(async {
        while let Some(event) = s.next().await {
            match event.expect("no error") {
                Event::Progress(p) => {
                    assert_eq!(next, 0, "progress was reported before any item");
                    assert_eq!(p.get(), json!({"of": n}).to_string());
                    progress += 1;
                }
                Event::Item(i) => {
                    assert_eq!(i, next, "items in order, none lost");
                    next += 1;
                }
                Event::End(r) => return Some(r),
            }
        }
        None
    })
    .await;
    assert_eq!(end, Some(n));
    assert_eq!((next, progress), (n, 1));
    assert!(s.next().await.is_none(), "nothing after the end");
    assert!(s.peak_buffered() <= opts().initial_credit() as usize);
}

#[tokio::test]
async fn ten_thousand_items_arrive_in_order_both_ways() {
    let p = pair().await;
    take_count(p.agent.link(), 10_000).await;
    take_count(&p.agent_link, 10_000).await;
    assert_eq!(p.on_agent.0.get(), 10_000);
    assert_eq!(p.on_server.0.get(), 10_000);
    let (a, b) = (p.agent.link().clone(), p.agent_link.clone());
    until("both sides idle", move || {
        [&a, &b]
            .iter()
            .all(|l| l.pending_requests() == 0 && l.running_hooks() == 0)
    })
    .await;
}

#[tokio::test]
async fn the_server_and_client_entry_points_stream_too() {
    let p = pair().await;
    let name = p.agent.name().to_owned();
    let s =
        within(
            p.server
                .send_to_streaming::<_, u64, u64>(name.as_str(), "count", &300u64, opts()),
        )
        .await
        .expect("opens");
    assert_eq!(within(s.outcome()).await.expect("outcome"), 300);
    let s = within(
        p.client
            .send_streaming::<_, u64, u64>("count", &300u64, opts()),
    )
    .await
    .expect("opens");
    assert_eq!(within(s.outcome()).await.expect("outcome"), 300);
    let err = within(
        p.server
            .send_to_streaming::<_, u64, u64>("nobody", "count", &1u64, opts()),
    )
    .await
    .expect_err("no such agent");
    assert_eq!(err.code(), codes::UNKNOWN_AGENT);
}

#[tokio::test]
async fn streams_work_over_signed_links() {
    // Items, progress and credit are signed like every frame after the
    // handshake (a forged one closes with 4002, as tests/signed.rs shows
    // for every frame kind).
    let p = pair_with(server_builder().default_timeout(LONG).sign_frames(true)).await;
    take_count(p.agent.link(), 1_000).await;
    take_count(&p.agent_link, 1_000).await;
}

#[tokio::test]
async fn a_slow_consumer_keeps_the_producer_bounded() {
    let p = pair().await;
    let credit = 8u32;
    let sent = p.on_agent.0.clone();
    let agent_side = p.agent_link.clone();
    let queued = Peak::watch(move || agent_side.queued_bytes());
    let mut s = within(p.agent.link().call_stream::<_, String, u64>(
        "blob",
        &2_000u64,
        opts().credit(credit),
    ))
    .await
    .expect("opens");
    let mut taken = 0usize;
    let mut worst_ahead = 0usize;
    loop {
        let event = within(s.next()).await.expect("not over").expect("no error");
        match event {
            Event::Item(chunk) => {
                assert_eq!(chunk.len(), 1024);
                taken += 1;
                // The producer is never more than the credit ahead of what
                // the consumer took.
                let ahead = sent.get().saturating_sub(taken);
                worst_ahead = worst_ahead.max(ahead);
                assert!(ahead <= credit as usize, "{ahead} items ahead");
                if taken % 100 == 0 {
                    // A consumer slower than the producer.
                    tokio::task::yield_now().await;
                    until("the producer to wait for credit", || {
                        sent.get() >= taken.saturating_sub(1)
                    })
                    .await;
                }
            }
            Event::End(n) => {
                assert_eq!(n, 2_000);
                break;
            }
            Event::Progress(_) => {}
        }
    }
    let peak_queued = queued.stop().await;
    assert!(s.peak_buffered() <= credit as usize);
    // Credit bounds what the producer queues too: at most `credit` items
    // of about 1 KiB each (plus the answer), far below the link's budget.
    assert!(peak_queued <= (credit as usize + 2) * 1100, "{peak_queued}");
    eprintln!(
        "slow consumer: credit {credit}, producer at most {worst_ahead} items ahead, \
         caller buffered at most {}, producer queued at most {peak_queued} bytes",
        s.peak_buffered()
    );
}

#[tokio::test]
async fn dropping_the_stream_cancels_the_handler_both_ways() {
    let p = pair().await;
    for (link, ended, serving) in [
        (p.agent.link().clone(), &p.on_agent.1, p.agent_link.clone()),
        (p.agent_link.clone(), &p.on_server.1, p.agent.link().clone()),
    ] {
        let mut rx = ended.subscribe();
        let mut s = within(link.call_stream::<_, u64, u64>("forever", &(), opts()))
            .await
            .expect("opens");
        for want in 0..5u64 {
            match within(s.next()).await.expect("item").expect("ok") {
                Event::Item(i) => assert_eq!(i, want),
                other => panic!("{other:?}"),
            }
        }
        drop(s);
        let why = within(rx.wait_for(Option::is_some))
            .await
            .expect("the handler saw the end")
            .clone();
        assert_eq!(why.as_deref(), Some(codes::CANCELLED));
        ended.send_replace(None);
        let (a, b) = (link.clone(), serving.clone());
        until("the call to leave both sides", move || {
            a.pending_requests() == 0 && b.running_hooks() == 0
        })
        .await;
        assert!(!link.is_closed(), "a dropped stream does not end the link");
    }
}

#[tokio::test]
async fn an_error_mid_stream_reaches_the_caller_after_its_items() {
    let p = pair().await;
    for link in [p.agent.link(), &p.agent_link] {
        let mut s = within(link.call_stream::<_, u64, u64>("broken", &(), opts()))
            .await
            .expect("opens");
        for want in 0..3u64 {
            match within(s.next()).await.expect("item").expect("ok") {
                Event::Item(i) => assert_eq!(i, want),
                other => panic!("{other:?}"),
            }
        }
        match within(s.next()).await.expect("an outcome") {
            Err(Error::Remote(e)) => assert_eq!(e.code, "BROKEN"),
            other => panic!("{other:?}"),
        }
        assert!(s.next().await.is_none());
    }
}

#[tokio::test]
async fn a_plain_call_to_a_streaming_handler_gets_only_the_result() {
    let p = pair().await;
    let n: u64 = within(p.agent.send("count", &500u64))
        .await
        .expect("result");
    assert_eq!(n, 500);
    let n: u64 = within(p.agent_link.call("count", &500u64, LONG))
        .await
        .expect("result");
    assert_eq!(n, 500);
    // The untyped form and `outcome` on the way.
    let body = agent_tunnel::protocol::RawValue::from_string("7".into()).expect("raw");
    let r = within(p.agent.link().request_stream("count", &body, opts()))
        .await
        .expect("opens");
    assert_eq!(within(r.outcome()).await.expect("outcome").get(), "7");
}

#[tokio::test]
async fn the_idle_timeout_replaces_the_whole_call_timeout() {
    let p = pair().await;
    // `silent` never sends: only the idle timeout can end the call, and
    // the handler is cancelled with it.
    let idle = Duration::from_millis(200);
    let mut s = within(p.agent.link().call_stream::<_, u64, u64>(
        "silent",
        &(),
        opts().idle_timeout(idle),
    ))
    .await
    .expect("opens");
    match within(s.next()).await.expect("an outcome") {
        Err(Error::Timeout(d)) => assert_eq!(d, idle),
        other => panic!("{other:?}"),
    }
    assert!(s.next().await.is_none());
    let serving = p.agent_link.clone();
    until("the handler to be cancelled", move || {
        serving.running_hooks() == 0
    })
    .await;
    // While items keep coming, the idle timeout never fires, however long
    // the whole call takes.
    let mut s = within(p.agent.link().call_stream::<_, u64, u64>(
        "count",
        &3000u64,
        opts().idle_timeout(Duration::from_secs(5)),
    ))
    .await
    .expect("opens");
    let r = within(async {
        loop {
            if let Event::End(r) = s.next().await.expect("more").expect("ok") {
                return r;
            }
        }
    })
    .await;
    assert_eq!(r, 3000);
}

/// A raw agent that announces `caps`.
async fn raw_agent_with(server: &AgentServer, caps: Caps) -> (RawWs, String) {
    let mut events = server.events();
    let mut ws = raw_connect(server).await;
    let secret = Secret::from(SECRET);
    let mut hs = ClientHandshake::new(Identity::default(), Map::new()).with_caps(caps);
    let hello = within(transport::recv_frame(&mut ws)).await.expect("hello");
    let auth = hs.on_hello(&secret, hello).expect("auth");
    within(transport::send_frame(&mut ws, &auth))
        .await
        .expect("sent");
    let answer = within(transport::recv_frame(&mut ws))
        .await
        .expect("answer");
    let est = hs.on_answer(&secret, answer).expect("welcome");
    wait_for(&mut events, |e| match e {
        ServerEvent::AgentConnected(a) if a.name() == est.name => Some(()),
        _ => None,
    })
    .await;
    (ws, est.name)
}

#[tokio::test]
async fn a_peer_without_the_capability_gets_no_stream() {
    let server = start_server().await;
    let (mut ws, name) = raw_agent_with(&server, Caps::CANCEL.union(Caps::NOTE)).await;
    let agent = server.agent(&name).expect("registered");
    let err = within(agent.link().call_stream::<_, u64, u64>("count", &1, opts()))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), codes::UNSUPPORTED);
    // Nothing was sent: the next frame the raw agent reads is this note's.
    within(agent.link().notify("after", &1))
        .await
        .expect("note");
    assert_eq!(recv_json(&mut ws).await["t"], "note");
}

/// Serves one raw agent with `caps`, and a well-behaved one beside it.
async fn hostile(frames: impl FnOnce(&mut Vec<Value>, u64)) {
    let server = start(server_builder().default_timeout(LONG)).await;
    let sent = Sent::default();
    install(server.hooks(), &sent, &watch::channel(None).0);
    let (good, _) = connect_plain(&server).await;
    let (mut ws, name) = raw_agent_with(&server, Caps::SUPPORTED).await;
    let agent = server.agent(&name).expect("registered");
    // A streamed call to the raw agent, so it holds a real id with credit 2.
    // Held unpolled, so it grants no more credit than the first 2.
    let held = within(
        agent
            .link()
            .call_stream::<_, u64, u64>("feed", &(), opts().credit(2)),
    )
    .await
    .expect("opens");
    let req = recv_json(&mut ws).await;
    assert_eq!(req["t"], "req");
    assert_eq!(req["stream"], json!({"credit": 2}));
    let id = req["id"].as_u64().expect("id");
    let mut out = Vec::new();
    frames(&mut out, id);
    for frame in &out {
        send_json(&mut ws, frame).await;
    }
    let closed = expect_close(&mut ws).await;
    assert_eq!(closed.code, 4000, "{closed:?} after {out:?}");
    assert!(within(agent.link().closed()).await.code == 4000);
    drop(held);
    still_served(&server, &good).await;
}

/// Only the offending link ended: the well-behaved agent is served both
/// ways.
async fn still_served(server: &AgentServer, good: &AgentClient) {
    let n: u64 = within(good.send("count", &3u64)).await.expect("served");
    assert_eq!(n, 3);
    let other = server.agent(&good.name().expect("named")).expect("there");
    assert!(!other.link().is_closed());
}

#[tokio::test]
async fn items_in_flight_when_the_caller_drops_its_stream_are_discarded() {
    // The caller dropped its stream (and sent `cancel`) while the callee
    // was still sending within its credit: those items, and the `res`,
    // are not a protocol violation.
    let server = start(server_builder().default_timeout(LONG)).await;
    install(server.hooks(), &Sent::default(), &watch::channel(None).0);
    let (mut ws, name) = raw_agent_with(&server, Caps::SUPPORTED).await;
    let agent = server.agent(&name).expect("registered");
    let s = within(
        agent
            .link()
            .call_stream::<_, u64, u64>("feed", &(), opts().credit(2)),
    )
    .await
    .expect("opens");
    let req = recv_json(&mut ws).await;
    let id = req["id"].as_u64().expect("id");
    drop(s);
    assert_eq!(recv_json(&mut ws).await, json!({"t": "cancel", "id": id}));
    for frame in [
        json!({"t": "item", "id": id, "body": 0}),
        json!({"t": "prog", "id": id, "body": 50}),
        json!({"t": "item", "id": id, "body": 1}),
        json!({"t": "res", "id": id, "err": {"code": "CANCELLED", "message": ""}}),
        // A plain request after them: its answer shows they were read.
        json!({"t": "req", "id": 1, "action": "count", "body": 2}),
    ] {
        send_json(&mut ws, &frame).await;
    }
    let res = recv_json(&mut ws).await;
    assert_eq!(res, json!({"t": "res", "id": 1, "ok": 2}));
    assert!(!agent.link().is_closed());
    assert_eq!(agent.link().pending_requests(), 0);
}

#[tokio::test]
async fn hostile_items_beyond_credit_close_4000() {
    hostile(|out, id| {
        for i in 0..3 {
            out.push(json!({"t": "item", "id": id, "body": i}));
        }
    })
    .await;
}

#[tokio::test]
async fn hostile_items_for_unknown_ids_close_4000() {
    hostile(|out, id| out.push(json!({"t": "item", "id": id + 1000, "body": 1}))).await;
}

#[tokio::test]
async fn hostile_items_after_the_end_close_4000() {
    hostile(|out, id| {
        out.push(json!({"t": "res", "id": id, "ok": 1}));
        out.push(json!({"t": "item", "id": id, "body": 1}));
    })
    .await;
}

/// A raw agent that asks the server for a stream of `blob`, then misbehaves.
async fn hostile_caller(frames: impl FnOnce(&mut Vec<Value>)) {
    let server = start(server_builder().default_timeout(LONG)).await;
    let sent = Sent::default();
    install(server.hooks(), &sent, &watch::channel(None).0);
    let (good, _) = connect_plain(&server).await;
    let (mut ws, _) = raw_agent_with(&server, Caps::SUPPORTED).await;
    let mut out = Vec::new();
    frames(&mut out);
    for frame in &out {
        send_json(&mut ws, frame).await;
    }
    let closed = loop {
        match within(futures_util::StreamExt::next(&mut ws)).await {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(f))) => {
                break f.map(|f| u16::from(f.code))
            }
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(closed, Some(4000), "after {out:?}");
    still_served(&server, &good).await;
}

#[tokio::test]
async fn hostile_credit_overflow_closes_4000() {
    hostile_caller(|out| {
        out.push(
            json!({"t": "req", "id": 1, "action": "silent", "body": null,
                        "stream": {"credit": 65536}}),
        );
        out.push(json!({"t": "credit", "id": 1, "n": 1}));
    })
    .await;
}

#[tokio::test]
async fn hostile_zero_credit_closes_4000() {
    hostile_caller(|out| {
        out.push(json!({"t": "req", "id": 1, "action": "blob", "body": 10,
                        "stream": {"credit": 0}}));
    })
    .await;
    hostile_caller(|out| {
        out.push(
            json!({"t": "req", "id": 1, "action": "silent", "body": null,
                        "stream": {"credit": 1}}),
        );
        out.push(json!({"t": "credit", "id": 1, "n": 0}));
    })
    .await;
}

#[tokio::test]
async fn hostile_malformed_stream_frames_close_4000() {
    for frame in [
        json!({"t": "item", "body": 1}),
        json!({"t": "credit", "id": 1}),
        json!({"t": "credit", "id": 1, "n": -1}),
        json!({"t": "credit", "id": 1, "n": 4_294_967_296u64}),
        json!({"t": "req", "id": 1, "action": "silent", "body": null, "stream": {"credit": 65_537}}),
        json!({"t": "req", "id": 1, "action": "silent", "body": null, "stream": {}}),
        json!({"t": "req", "id": 1, "action": "silent", "body": null, "stream": 5}),
    ] {
        hostile_caller(|out| out.push(frame)).await;
    }
}

#[tokio::test]
async fn a_stream_request_without_the_capability_closes_4000() {
    // A peer that did not announce `stream` but asks for one anyway.
    let server = start(server_builder().default_timeout(LONG)).await;
    install(server.hooks(), &Sent::default(), &watch::channel(None).0);
    let (mut ws, _) = raw_agent_with(&server, Caps::CANCEL).await;
    send_json(
        &mut ws,
        &json!({"t": "req", "id": 1, "action": "count", "body": 1, "stream": {"credit": 4}}),
    )
    .await;
    assert_eq!(expect_close(&mut ws).await.code, 4000);
}
