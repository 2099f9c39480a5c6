//! Issue 9, item 7: hostile peers against cancellation and notifications.
//! Raw agents send what a well-behaved agent never does, at a real server
//! on 127.0.0.1:0, while a good agent keeps calling both ways (the
//! harness of `tests/hostile.rs`); each attack gets the outcome
//! `docs/PROTOCOL.md` gives it and ends only the offending link, or is
//! ignored:
//!
//! | attack | outcome |
//! |---|---|
//! | a flood of `cancel` for ids never sent | ignored; nothing stored; the link serves on |
//! | a flood of `cancel` for one request being served | one `res` `CANCELLED`, then ignored |
//! | a flood of `note` for unknown actions, or whose hook fails | ignored, nothing answered |
//! | `note`s past `max_in_flight` being served | dropped and counted; never more served |
//! | a `note` bigger than the message limit | close 1009 |
//! | `cancel` without an id, or with one that is not a u64 | close 4000 |
//! | `note` without an action, or with one that is not a string | close 4000 |
//! | `caps` in `auth` that is not an array of strings | close 4000, no `reject` |

mod common;
mod hostile_support;

use agent_tunnel::codes;
use agent_tunnel::protocol::close;
use common::*;
use futures_util::{SinkExt, StreamExt};
use hostile_support::{builder, disconnected, Harness, Peak};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const KIB: usize = 1024;
const MAX_MESSAGE: usize = 16 * KIB;
const FLIGHT: usize = 4;
const MAX_ROUNDS: u64 = 20_000;

async fn harness() -> Harness {
    Harness::start(
        builder()
            .max_message_bytes(MAX_MESSAGE)
            .max_in_flight(FLIGHT),
    )
    .await
}

/// Sends `frames` in one write.
async fn burst(ws: &mut RawWs, frames: impl IntoIterator<Item = String>) {
    for f in frames {
        within(ws.feed(Message::text(f))).await.expect("feed");
    }
    within(ws.flush()).await.expect("flush");
}

/// The link still answers, and its next frame is this request's answer.
async fn still_served(ws: &mut RawWs, id: u64) {
    send_json(ws, &json!({"t":"req","id":id,"action":"echo","body":id})).await;
    assert_eq!(
        recv_json(ws).await,
        json!({"t":"res","id":id,"ok":id}),
        "the link still serves, and nothing else came first"
    );
}

async fn leave(mut ws: RawWs, h: &Harness, name: &str) {
    let mut events = h.server.events();
    within(ws.close(None)).await.expect("close");
    within(async { while let Some(Ok(_)) = ws.next().await {} }).await;
    if h.server.agent(name).is_some() {
        disconnected(&mut events, name).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_cancels_is_ignored_and_stores_nothing() {
    let h = harness().await;
    let good = h.keep_calling("cancel-flood", MAX_ROUNDS);
    let (mut ws, name) = raw_agent(&h.server).await;
    let link = h.server.agent(&name).expect("registered").link().clone();
    let l = link.clone();
    let peak = Peak::watch(move || l.cancellable_requests());
    for round in 0..20u64 {
        burst(
            &mut ws,
            (0..1000u64).map(|i| format!(r#"{{"t":"cancel","id":{}}}"#, round * 1000 + i)),
        )
        .await;
        still_served(&mut ws, 1_000_000 + round).await;
    }
    burst(
        &mut ws,
        [u64::MAX, 0, 1 << 53].map(|id| format!(r#"{{"t":"cancel","id":{id}}}"#)),
    )
    .await;
    still_served(&mut ws, 7).await;
    assert_eq!(
        peak.stop().await,
        0,
        "a cancel for an unknown id stores nothing"
    );

    // Many cancels of one request being served: one CANCELLED answer.
    const KEY: &str = "cancel-one";
    send_json(
        &mut ws,
        &json!({"t":"req","id":5,"action":"block","body":KEY}),
    )
    .await;
    h.blockers.wait_started(KEY, 1).await;
    burst(
        &mut ws,
        (0..500).map(|_| r#"{"t":"cancel","id":5}"#.to_owned()),
    )
    .await;
    let v = recv_json(&mut ws).await;
    assert_eq!(
        (v["id"].as_u64(), v["err"]["code"].as_str()),
        (Some(5), Some(codes::CANCELLED))
    );
    still_served(&mut ws, 8).await;
    assert_eq!(
        (
            link.serving_requests(),
            link.running_hooks(),
            link.cancellable_requests()
        ),
        (0, 0, 0)
    );
    good.stop().await;
    leave(ws, &h, &name).await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notes_for_unknown_actions_and_failing_hooks_are_ignored() {
    let h = harness().await;
    let good = h.keep_calling("note-flood", MAX_ROUNDS);
    let (mut ws, name) = raw_agent(&h.server).await;
    let link = h.server.agent(&name).expect("registered").link().clone();
    for round in 0..10u64 {
        burst(
            &mut ws,
            (0..500u64).map(|i| {
                json!({"t":"note","action":format!("no-such-{i}-{}", "x".repeat(300)),"body":i})
                    .to_string()
            }),
        )
        .await;
        // `echo` exists but cannot take this body as a note either way; a
        // note's result is discarded whatever it is.
        burst(
            &mut ws,
            (0..100).map(|_| r#"{"t":"note","action":"echo","body":{"x":1}}"#.to_owned()),
        )
        .await;
        still_served(&mut ws, round).await;
    }
    assert_eq!(
        link.dropped_notes(),
        0,
        "hooks that finish at once are never dropped"
    );
    good.stop().await;
    leave(ws, &h, &name).await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notes_past_the_bound_are_dropped_and_never_more_are_served() {
    let h = harness().await;
    const KEY: &str = "note-bound";
    let (mut ws, name) = raw_agent(&h.server).await;
    let link = h.server.agent(&name).expect("registered").link().clone();
    let l = link.clone();
    let peak = Peak::watch(move || l.serving_notes());
    burst(
        &mut ws,
        (0..200).map(|_| json!({"t":"note","action":"block","body":KEY}).to_string()),
    )
    .await;
    still_served(&mut ws, 1).await;
    h.blockers.wait_started(KEY, FLIGHT).await;
    assert_eq!(link.dropped_notes(), 200 - FLIGHT as u64);
    assert_eq!(link.serving_notes(), FLIGHT);
    h.blockers.release(KEY);
    still_served(&mut ws, 2).await;
    assert!(peak.stop().await <= FLIGHT);
    leave(ws, &h, &name).await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_cancels_and_notes_close_only_their_link() {
    let h = harness().await;
    let good = h.keep_calling("malformed", MAX_ROUNDS);
    let big = format!(
        r#"{{"t":"note","action":"echo","body":"{}"}}"#,
        "x".repeat(MAX_MESSAGE + 1)
    );
    let cases: Vec<(String, u16)> = vec![
        (big, close::TOO_BIG),
        (r#"{"t":"cancel"}"#.into(), close::PROTOCOL_ERROR),
        (r#"{"t":"cancel","id":"5"}"#.into(), close::PROTOCOL_ERROR),
        (r#"{"t":"cancel","id":-1}"#.into(), close::PROTOCOL_ERROR),
        (
            r#"{"t":"cancel","id":18446744073709551616}"#.into(),
            close::PROTOCOL_ERROR,
        ),
        (r#"{"t":"note","body":1}"#.into(), close::PROTOCOL_ERROR),
        (
            r#"{"t":"note","action":7,"body":1}"#.into(),
            close::PROTOCOL_ERROR,
        ),
        (
            r#"{"t":"req","id":1,"action":"echo","body":1,"caps":"all"}"#.into(),
            close::PROTOCOL_ERROR,
        ),
    ];
    for (text, code) in cases {
        let mut events = h.server.events();
        let (mut ws, name) = raw_agent(&h.server).await;
        within(ws.send(Message::text(text.clone())))
            .await
            .expect("send");
        let closed = expect_close(&mut ws).await;
        let shown: String = text.chars().take(80).collect();
        assert_eq!(closed.code, code, "{shown}");
        assert!(closed.frames.is_empty(), "{shown}: {:?}", closed.frames);
        assert_eq!(disconnected(&mut events, &name).await, code, "{shown}");
    }
    good.stop().await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_of_the_wrong_type_in_auth_close_the_handshake() {
    let h = harness().await;
    for caps in [
        json!("cancel"),
        json!(5),
        json!([1, 2]),
        json!({"cancel": true}),
    ] {
        let mut ws = raw_connect(&h.server).await;
        let hello = recv_json(&mut ws).await;
        assert_eq!(hello["t"], "hello");
        assert_eq!(
            hello["caps"],
            json!(["cancel", "note", "stream", "binary"]),
            "the server announces both"
        );
        let auth: Value = json!({
            "t": "auth",
            "nonce": "02".repeat(32),
            "meta": {},
            "proof": "00".repeat(32),
            "caps": caps,
        });
        send_json(&mut ws, &auth).await;
        let closed = expect_close(&mut ws).await;
        assert_eq!(closed.code, close::PROTOCOL_ERROR, "caps {caps}");
        assert!(closed.frames.is_empty(), "no reject: {:?}", closed.frames);
    }
    h.finish().await;
}
