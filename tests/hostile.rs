//! Issue 5, item 2: hostile peers. Raw WebSocket and raw TCP connections
//! drive everything a well-behaved agent never sends at a real server on
//! 127.0.0.1:0, and each attack gets the outcome `docs/PROTOCOL.md` gives it
//! (a `reject` frame and a close code, a close code alone, a silent drop, or
//! `BUSY`).
//!
//! Every test also runs a well-behaved agent (a real `AgentClient`) on the
//! same server, calling both ways before, during and after the attack; every
//! one of its calls must succeed with the right answer and its link must
//! never drop. A process-wide panic hook counts panics, and each test ends
//! by asserting that none happened and that the attackers left nothing
//! behind in `server.stats()`: no reserved name, no handshake, no request
//! in flight, and only the good agent.
//!
//! One test per attack, then one that runs them all at once against a single
//! server. Waits are on events, reads and state, each under a timeout; the
//! only pacing is the slowloris attacker's own, which is the attack.
//!
//! Outcomes, per `docs/PROTOCOL.md` (7.3, 10, 12):
//!
//! | attack | outcome |
//! |---|---|
//! | wrong secret, malformed proof, replayed `auth` | `reject WRONG_SECRET`, close 4001 |
//! | name of another agent without (or with a forged) claim | `reject NAME_TAKEN`, close 4004 |
//! | claim that is not 64 hex digits | `reject PROTOCOL_ERROR`, close 4000 |
//! | a valid frame other than `auth` before authentication | `reject PROTOCOL_ERROR`, close 4000 |
//! | oversized message or frame, before or after authentication | close 1009, no `reject` |
//! | text that is not UTF-8, before or after authentication | close 1007, no `reject` |
//! | invalid JSON or invalid frame, before or after authentication | close 4000, no `reject` |
//! | unknown frame type (incl. `sig` on an unsigned link, handshake frames after it) | close 4000, no `reject` |
//! | binary message, WebSocket protocol violation | close 4000, no `reject` |
//! | `res` for an id never sent | dropped silently; the link and every other call go on |
//! | two `req` with the same id | both served, both answered (10.1) |
//! | bytes that are not a WebSocket upgrade | TCP dropped without a response (event `TRANSPORT`) |
//! | upgrade trickled a byte at a time, upgrade never finished, silent TCP | TCP dropped at the handshake deadline, no response |
//! | upgraded, then `auth` never (or only partly) sent | close 4005 at the handshake deadline |
//! | more connections in their handshake than the bound | the extra ones dropped at accept at once |
//! | requests past `max_in_flight` | `res` with `err.code` `BUSY` for each extra one |
//!
//! Two tests at the end guard fixes for problems this suite found: a
//! per-source bound on connections in their handshake (so one address cannot
//! lock every new agent out), and a write buffer with room for a burst of
//! small frames on a link whose message limit is below 4 KiB.

mod common;
mod hostile_support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use agent_tunnel::client::Backoff;
use agent_tunnel::codes;
use agent_tunnel::protocol::crypto::Key;
use agent_tunnel::protocol::frame::{Auth, Frame};
use agent_tunnel::protocol::handshake::{ClientHandshake, Established, Identity};
use agent_tunnel::protocol::{close, codec, transport, Secret};
use agent_tunnel::server::{ServerBuilder, ServerEvent};
use common::*;
use futures_util::future::join_all;
use futures_util::{SinkExt, StreamExt};
use hostile_support::wire::{self, frame, header, upgrade_request, Wire, WireClosed};
use hostile_support::{
    builder, disconnected, handshake_failed, handshake_failures, wait_stats, Harness, Peak,
};
use serde_json::{json, Map, Value};
use tokio::sync::broadcast;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

const KIB: usize = 1024;

/// The servers' largest message. Not smaller: below about 4 KiB the
/// server's writer fails on bursts of small frames (see
/// `a_burst_of_busy_answers_on_a_small_message_limit_keeps_the_link`).
const MAX_MESSAGE: usize = 16 * KIB;

/// The handshake deadline of every server here: long enough for a real
/// handshake on a loaded machine, short enough to keep the suite quick.
const DEADLINE: Duration = Duration::from_millis(1000);

/// How late after its deadline a connection may be closed and still count
/// as "closed at the deadline" on a loaded machine (the default deadline,
/// 10 s, is far outside it).
const MARGIN: Duration = Duration::from_secs(4);

/// Requests an agent's link may have served at once.
const FLIGHT: usize = 4;

/// The slowloris attacker's pace: one byte per tick. Slow enough that it
/// sends fewer than 64 separate packets before the deadline (the WebSocket
/// library's own small-packet check would cut it off earlier otherwise).
const TRICKLE: Duration = Duration::from_millis(25);

/// Upper bound on the good agent's background rounds in one test.
const MAX_ROUNDS: u64 = 20_000;

/// The server every attack runs against: 16 KiB messages, 4 requests in
/// flight per link, a 1 s handshake deadline.
fn hostile() -> ServerBuilder {
    builder()
        .handshake_timeout(DEADLINE)
        .max_message_bytes(MAX_MESSAGE)
        .max_in_flight(FLIGHT)
}

// --------------------------------------------------------------- helpers

fn peer_of(ws: &RawWs) -> SocketAddr {
    ws.get_ref().local_addr().expect("local addr")
}

fn req_text(id: u64, action: &str, body: Value) -> String {
    json!({"t": "req", "id": id, "action": action, "body": body}).to_string()
}

/// Asserts that a connection was closed no earlier than the handshake
/// deadline (measured from before its TCP connect) and not much later.
fn assert_at_deadline(elapsed: Duration, what: &str) {
    assert!(
        elapsed >= DEADLINE && elapsed < DEADLINE + MARGIN,
        "{what}: closed after {elapsed:?}; the handshake deadline is {DEADLINE:?}"
    );
}

/// The `reject` frames among the texts received before a close, as (code,
/// message); any frame but `hello` and `reject` fails the test.
fn reject_frames(texts: &[String]) -> Vec<(String, String)> {
    texts
        .iter()
        .filter_map(|t| {
            let v: Value = serde_json::from_str(t).expect("the server sends JSON");
            match v["t"].as_str() {
                Some("hello") => None,
                Some("reject") => Some((
                    v["code"].as_str().expect("reject.code").to_owned(),
                    v["message"].as_str().expect("reject.message").to_owned(),
                )),
                _ => panic!("only hello and reject may come before the close: {v}"),
            }
        })
        .collect()
}

/// The codes of the `reject` frames among the texts received before a close.
fn rejects(texts: &[String]) -> Vec<String> {
    reject_frames(texts)
        .into_iter()
        .map(|(code, _)| code)
        .collect()
}

/// How a handshake was refused, as the attacker and the server saw it.
#[derive(Debug)]
struct Refused {
    close: u16,
    reason: String,
    rejects: Vec<(String, String)>,
    event: String,
}

fn assert_refused(r: &Refused, close: u16, reject: Option<&str>, event: &str, what: &str) {
    assert_eq!(r.close, close, "close code for {what}: {r:?}");
    let got: Vec<&str> = r.rejects.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(
        got,
        Vec::from_iter(reject),
        "reject frame for {what}: {r:?}"
    );
    assert_eq!(r.event, event, "HandshakeFailure code for {what}: {r:?}");
    if let Some((_, message)) = r.rejects.first() {
        // Section 12: after a reject, the close reason is its message (cut
        // to the 123 bytes a close frame can hold).
        if message.len() <= 123 {
            assert_eq!(&r.reason, message, "close reason for {what}: {r:?}");
        } else {
            assert!(message.starts_with(r.reason.as_str()), "{what}: {r:?}");
        }
    }
    assert!(!r.reason.contains(SECRET), "the secret leaked: {r:?}");
}

/// Opens a WebSocket, reads `hello` (or not), sends `msg` where `auth`
/// belongs, and returns how the server refused the connection.
async fn refused_pre_auth(h: &Harness, read_hello: bool, msg: Message) -> Refused {
    let mut failures = h.server.handshake_failures();
    let mut ws = raw_connect(&h.server).await;
    let peer = peer_of(&ws);
    if read_hello {
        assert_eq!(recv_json(&mut ws).await["t"], "hello");
    }
    within(ws.send(msg)).await.expect("send");
    let closed = expect_close(&mut ws).await;
    Refused {
        close: closed.code,
        reason: closed.reason.clone(),
        rejects: reject_frames(&closed.frames),
        event: handshake_failed(&mut failures, peer).await,
    }
}

/// Answers `hello` with the `auth` a client with `identity` would send,
/// changed by `tweak`, and returns how the server refused it.
async fn refused_auth(h: &Harness, identity: Identity, tweak: impl FnOnce(&mut Auth)) -> Refused {
    let mut failures = h.server.handshake_failures();
    let mut ws = raw_connect(&h.server).await;
    let peer = peer_of(&ws);
    let mut hs = ClientHandshake::new(identity, Map::new());
    let hello = within(transport::recv_frame(&mut ws)).await.expect("hello");
    let Frame::Auth(mut auth) = hs.on_hello(&Secret::from(SECRET), hello).expect("hello") else {
        panic!("on_hello answers with auth");
    };
    tweak(&mut auth);
    within(transport::send_frame(&mut ws, &Frame::Auth(auth)))
        .await
        .expect("send auth");
    let closed = expect_close(&mut ws).await;
    Refused {
        close: closed.code,
        reason: closed.reason.clone(),
        rejects: reject_frames(&closed.frames),
        event: handshake_failed(&mut failures, peer).await,
    }
}

/// Runs the agent's side of the handshake and returns the exact `auth`
/// text it sent, as an eavesdropper would have captured it.
async fn handshake_capturing(
    ws: &mut RawWs,
    identity: Identity,
) -> (String, Result<Established, agent_tunnel::Error>) {
    let secret = Secret::from(SECRET);
    let mut hs = ClientHandshake::new(identity, Map::new());
    let hello = within(transport::recv_frame(ws)).await.expect("hello");
    let auth = codec::encode(&hs.on_hello(&secret, hello).expect("valid hello"));
    within(ws.send(Message::text(auth.clone())))
        .await
        .expect("send auth");
    let answer = within(transport::recv_frame(ws)).await.expect("answer");
    (auth, hs.on_answer(&secret, answer))
}

/// Authenticates a raw agent, sends `msg`, and returns the close code the
/// agent got and the one the server reported for its disconnect.
async fn closed_post_auth(h: &Harness, msg: Message) -> (u16, u16) {
    let mut events = h.server.events();
    let (mut ws, name) = raw_agent(&h.server).await;
    within(ws.send(msg)).await.expect("send");
    let closed = expect_close(&mut ws).await;
    assert!(
        closed.frames.is_empty(),
        "only the close answers: {:?}",
        closed.frames
    );
    (closed.code, disconnected(&mut events, &name).await)
}

/// Upgrades by hand, reads `hello`, writes `bytes` where `auth` belongs,
/// and returns the server's close frame and its `HandshakeFailure` code.
/// With `reply`, the close is answered; without, the socket is dropped
/// (for attacks that left a frame half-sent, after which a reply would be
/// read as its payload).
async fn wire_pre_auth(h: &Harness, bytes: &[u8], reply: bool) -> (WireClosed, String) {
    let mut failures = h.server.handshake_failures();
    let mut w = Wire::upgrade(h.addr()).await;
    let peer = w.local_addr();
    let hello: Value = serde_json::from_str(&w.rx.read_text().await).expect("hello");
    assert_eq!(hello["t"], "hello");
    w.tx.send_raw(bytes).await;
    let closed = if reply {
        w.expect_close().await
    } else {
        w.rx.expect_close_frame().await
    };
    drop(w);
    (closed, handshake_failed(&mut failures, peer).await)
}

/// Authenticates by hand, writes `bytes`, and returns the server's close
/// frame and the close code of its disconnect event.
async fn wire_post_auth(h: &Harness, bytes: &[u8]) -> (WireClosed, u16) {
    let mut events = h.server.events();
    let (mut w, est) = Wire::authenticated(h.addr(), SECRET).await;
    w.tx.send_raw(bytes).await;
    let closed = w.rx.expect_close_frame().await;
    drop(w);
    (closed, disconnected(&mut events, &est.name).await)
}

/// A raw agent leaves politely, and the server reports it gone.
async fn leave(mut ws: RawWs, events: &mut broadcast::Receiver<ServerEvent>, name: &str) {
    within(ws.close(None)).await.expect("close");
    within(async { while let Some(Ok(_)) = ws.next().await {} }).await;
    disconnected(events, name).await;
}

/// Reads `n` responses that must all be `BUSY`, and returns their ids.
async fn read_busy(ws: &mut RawWs, n: usize) -> BTreeSet<u64> {
    let mut ids = BTreeSet::new();
    for _ in 0..n {
        let v = recv_json(ws).await;
        assert_eq!(v["t"], "res", "{v}");
        assert_eq!(v["err"]["code"], codes::BUSY, "{v}");
        assert_eq!(
            v["err"]["message"],
            format!("more than {FLIGHT} requests in flight"),
            "{v}"
        );
        assert!(v.get("ok").is_none(), "{v}");
        ids.insert(v["id"].as_u64().expect("res.id"));
    }
    ids
}

// ---------------------------------------------------------------- attacks

/// A proof made with another secret, and proofs that are not even 64 hex
/// digits: `reject WRONG_SECRET`, close 4001.
async fn attack_wrong_secret(h: &Harness) {
    for name in [None, Some(h.good.name.clone())] {
        let mut failures = h.server.handshake_failures();
        let mut ws = raw_connect(&h.server).await;
        let peer = peer_of(&ws);
        let identity = Identity {
            name: name.clone(),
            token: None,
            bind: None,
        };
        let err = raw_handshake(&mut ws, "not-the-secret", identity)
            .await
            .expect_err("a wrong secret must not be welcomed");
        assert_eq!(err.code(), codes::WRONG_SECRET, "{err}");
        let closed = expect_close(&mut ws).await;
        assert_eq!(closed.code, close::AUTH_FAILED, "{closed:?}");
        assert!(!closed.reason.contains(SECRET));
        assert_eq!(
            handshake_failed(&mut failures, peer).await,
            codes::WRONG_SECRET
        );
    }
    let nonce = "ab".repeat(32);
    for proof in [
        "zz".repeat(32),
        "00".repeat(31),
        "0".repeat(65),
        String::new(),
        "00".repeat(32),
    ] {
        let auth = json!({"t": "auth", "nonce": nonce, "meta": {}, "proof": proof});
        let r = refused_pre_auth(h, true, Message::text(auth.to_string())).await;
        assert_refused(
            &r,
            close::AUTH_FAILED,
            Some(codes::WRONG_SECRET),
            codes::WRONG_SECRET,
            &format!("proof {proof:?}"),
        );
    }
}

/// A captured `auth` replayed on new connections (while its agent is
/// connected and after it left), and a captured reclaim replayed: `reject
/// WRONG_SECRET`, close 4001; the name is never handed over.
async fn attack_replayed_auth(h: &Harness) {
    let mut events = h.server.events();
    let mut victim = raw_connect(&h.server).await;
    let (captured, est) = handshake_capturing(&mut victim, Identity::default()).await;
    let est = est.expect("the genuine auth is welcomed");

    let r = refused_pre_auth(h, true, Message::text(captured.clone())).await;
    assert_refused(
        &r,
        close::AUTH_FAILED,
        Some(codes::WRONG_SECRET),
        codes::WRONG_SECRET,
        "auth replayed while its agent is connected",
    );
    assert!(h.server.agent(&est.name).is_some(), "the victim stays");
    leave(victim, &mut events, &est.name).await;

    // The victim comes back with its token (a reclaim) and leaves again.
    let mut again = raw_connect(&h.server).await;
    let (reclaim, est2) = handshake_capturing(&mut again, est.identity.clone()).await;
    let est2 = est2.expect("the genuine reclaim is welcomed");
    assert_eq!(est2.name, est.name);
    assert!(!est2.first_time);
    leave(again, &mut events, &est.name).await;

    for (text, what) in [
        (reclaim, "reclaim replayed while its agent is offline"),
        (captured, "auth replayed while its agent is offline"),
    ] {
        let r = refused_pre_auth(h, true, Message::text(text)).await;
        assert_refused(
            &r,
            close::AUTH_FAILED,
            Some(codes::WRONG_SECRET),
            codes::WRONG_SECRET,
            what,
        );
    }
    assert!(h.server.agent(&est.name).is_none(), "nobody got the name");
}

/// An agent that knows the secret asks for the name of a connected agent
/// and of an offline one, without a claim or with a claim under a made-up
/// token: `reject NAME_TAKEN`, close 4004. A claim that is not hex:
/// `reject PROTOCOL_ERROR`, close 4000. The owners keep their names.
async fn attack_name_takeover(h: &Harness) {
    let mut events = h.server.events();
    let mut owner = raw_connect(&h.server).await;
    let (_, est) = handshake_capturing(&mut owner, Identity::default()).await;
    let offline = est.expect("the owner is welcomed");
    leave(owner, &mut events, &offline.name).await;

    for target in [h.good.name.clone(), offline.name.clone()] {
        for token in [None, Some(Key::random())] {
            let forged = token.is_some();
            let identity = Identity {
                name: Some(target.clone()),
                token,
                bind: None,
            };
            let r = refused_auth(h, identity, |_| {}).await;
            assert_refused(
                &r,
                close::NAME_REFUSED,
                Some(codes::NAME_TAKEN),
                codes::NAME_TAKEN,
                &format!("takeover of {target} (forged claim: {forged})"),
            );
        }
        let identity = Identity {
            name: Some(target.clone()),
            token: None,
            bind: None,
        };
        let r = refused_auth(h, identity, |a| a.claim = Some("zz".repeat(32))).await;
        assert_refused(
            &r,
            close::PROTOCOL_ERROR,
            Some(codes::PROTOCOL_ERROR),
            codes::PROTOCOL_ERROR,
            &format!("takeover of {target} with a claim that is not hex"),
        );
    }

    // The connected owner was never disturbed, and the offline one gets its
    // name back with its token.
    assert!(h.server.agent(&h.good.name).is_some());
    let mut back = raw_connect(&h.server).await;
    let (_, est) = handshake_capturing(&mut back, offline.identity.clone()).await;
    let est = est.expect("the owner reclaims its name");
    assert_eq!(est.name, offline.name);
    assert!(!est.first_time);
    leave(back, &mut events, &offline.name).await;
}

/// A valid frame other than `auth` as the first frame: `reject
/// PROTOCOL_ERROR`, close 4000, and nothing is served.
async fn attack_frame_before_auth(h: &Harness) {
    let frames = [
        json!({"t": "req", "id": 1, "action": "secret-stuff", "body": null}),
        json!({"t": "res", "id": 1, "ok": "forged"}),
        json!({"t": "note", "action": "secret-stuff", "body": null}),
        json!({"t": "cancel", "id": 1}),
        json!({"t": "prog", "id": 1, "body": 50}),
        json!({"t": "hello", "v": 1, "nonce": "00".repeat(32), "sign": false}),
        json!({"t": "reject", "code": "WRONG_SECRET", "message": "no"}),
        json!({"t": "welcome", "name": "A0001", "first_time": true, "proof": "00".repeat(32),
               "limits": {"max_message_bytes": 1, "max_in_flight": 1, "ping_interval_ms": 0}}),
    ];
    for f in frames {
        let r = refused_pre_auth(h, true, Message::text(f.to_string())).await;
        assert_refused(
            &r,
            close::PROTOCOL_ERROR,
            Some(codes::PROTOCOL_ERROR),
            codes::PROTOCOL_ERROR,
            &f.to_string(),
        );
    }
    // Without even waiting for hello.
    let f = json!({"t": "req", "id": 1, "action": "secret-stuff", "body": null});
    let r = refused_pre_auth(h, false, Message::text(f.to_string())).await;
    assert_refused(
        &r,
        close::PROTOCOL_ERROR,
        Some(codes::PROTOCOL_ERROR),
        codes::PROTOCOL_ERROR,
        "req before hello",
    );
}

/// Messages over the 16 KiB limit: an `auth`, a header announcing 1 GiB,
/// one message after authentication, and one split in fragments each under
/// the limit. Close 1009, no `reject`.
async fn attack_oversized(h: &Harness) {
    let auth = json!({"t": "auth", "nonce": "ab".repeat(32), "meta": {"pad": "x".repeat(MAX_MESSAGE + KIB)},
                      "proof": "00".repeat(32)});
    let r = refused_pre_auth(h, true, Message::text(auth.to_string())).await;
    assert_refused(
        &r,
        close::TOO_BIG,
        None,
        codes::PROTOCOL_ERROR,
        "oversized auth",
    );

    // Refused on the header alone: nothing of the gigabyte is awaited.
    let (closed, event) = wire_pre_auth(
        h,
        &header(true, 0, wire::OP_TEXT, 1 << 30, Some([1, 2, 3, 4])),
        false,
    )
    .await;
    assert_eq!(closed.code, close::TOO_BIG, "{closed:?}");
    assert!(rejects(&closed.texts).is_empty(), "{closed:?}");
    assert_eq!(event, codes::PROTOCOL_ERROR);

    let big = req_text(1, "echo", json!("x".repeat(3 * MAX_MESSAGE)));
    let (code, event) = closed_post_auth(h, Message::text(big)).await;
    assert_eq!((code, event), (close::TOO_BIG, close::TOO_BIG));

    // Two fragments, each under the limit, together over it.
    let part = vec![b' '; MAX_MESSAGE / 2 + KIB];
    let mut bytes = frame(false, wire::OP_TEXT, &part, true);
    bytes.extend(frame(false, wire::OP_CONTINUATION, &part, true));
    let (closed, event) = wire_post_auth(h, &bytes).await;
    assert_eq!(
        (closed.code, event),
        (close::TOO_BIG, close::TOO_BIG),
        "{closed:?}"
    );
}

/// Text frames whose payload is not UTF-8, sent by hand: close 1007 before
/// and after authentication, no `reject`.
async fn attack_invalid_utf8(h: &Harness) {
    let bad_auth = frame(
        true,
        wire::OP_TEXT,
        b"{\"t\":\"auth\",\"nonce\":\"\xff\xfe\",\"proof\":\"00\"}",
        true,
    );
    let (closed, event) = wire_pre_auth(h, &bad_auth, true).await;
    assert_eq!(closed.code, 1007, "{closed:?}");
    assert!(rejects(&closed.texts).is_empty(), "{closed:?}");
    assert_eq!(event, codes::PROTOCOL_ERROR);

    let payloads: [&[u8]; 5] = [
        b"\xff\xfe\xfd",
        b"{\"t\":\"req\",\"id\":1,\"action\":\"echo\",\"body\":\"\xc3\x28\"}",
        b"{\"t\":\"req\",\"id\":1,\"action\":\"echo\"}\xe2\x82",
        b"{\"t\":\"req\",\"id\":1,\"action\":\"\xc0\xaf\"}",
        b"{\"t\":\"req\",\"id\":1,\"action\":\"\xed\xa0\x80\"}",
    ];
    for p in payloads {
        let (closed, event) = wire_post_auth(h, &frame(true, wire::OP_TEXT, p, true)).await;
        assert_eq!((closed.code, event), (1007, 1007), "{p:?}: {closed:?}");
    }
    // The bad byte in the continuation of a fragmented message.
    let mut bytes = frame(false, wire::OP_TEXT, b"{\"t\":\"req\",\"id\":1,", true);
    bytes.extend(frame(
        true,
        wire::OP_CONTINUATION,
        b"\"action\":\"\xff\"}",
        true,
    ));
    let (closed, event) = wire_post_auth(h, &bytes).await;
    assert_eq!((closed.code, event), (1007, 1007), "{closed:?}");
}

/// Text that is not JSON, not an object, or not a valid frame: close 4000,
/// no `reject`, before and after authentication.
async fn attack_invalid_json(h: &Harness) {
    let r = refused_pre_auth(h, true, Message::text("{\"t\":\"auth\",")).await;
    assert_refused(
        &r,
        close::PROTOCOL_ERROR,
        None,
        codes::PROTOCOL_ERROR,
        "truncated auth",
    );

    let invalid = [
        "{\"t\":\"req\",",
        "not json at all",
        "",
        "[1,2,3]",
        "\"req\"",
        "null",
        "{\"t\":\"req\",\"id\":1,\"action\":\"echo\"} {}",
        "{\"t\":\"req\",\"id\":\"seven\",\"action\":\"echo\"}",
        "{\"t\":\"req\",\"action\":\"echo\"}",
        "{\"t\":\"req\",\"id\":1,\"id\":2,\"action\":\"echo\"}",
        "{\"t\":\"req\",\"id\":-1,\"action\":\"echo\"}",
        "{\"t\":\"req\",\"id\":1.5,\"action\":\"echo\"}",
        "{\"t\":\"req\",\"id\":18446744073709551616,\"action\":\"echo\"}",
        "{\"t\":\"req\",\"id\":1,\"action\":\"echo\",\"name\":5}",
        "{\"t\":\"res\",\"id\":1,\"ok\":1,\"err\":{\"code\":\"X\"}}",
        "{\"t\":\"res\",\"id\":1}",
    ];
    for text in invalid {
        let (code, event) = closed_post_auth(h, Message::text(text)).await;
        assert_eq!(
            (code, event),
            (close::PROTOCOL_ERROR, close::PROTOCOL_ERROR),
            "{text:?}"
        );
    }
}

/// Valid JSON whose `t` names no frame (or a frame out of place): close
/// 4000, no `reject`, before and after authentication.
async fn attack_unknown_type(h: &Harness) {
    let sig = json!({"t": "sig", "seq": 0, "mac": "00".repeat(32),
                     "f": {"t": "req", "id": 1, "action": "echo", "body": 1}});
    for f in [json!({"t": "bogus", "nonce": "00".repeat(32)}), sig.clone()] {
        let r = refused_pre_auth(h, true, Message::text(f.to_string())).await;
        assert_refused(
            &r,
            close::PROTOCOL_ERROR,
            None,
            codes::PROTOCOL_ERROR,
            &f.to_string(),
        );
    }

    let after = [
        json!({"t": "bogus", "id": 1}),
        json!({"t": "REQ", "id": 1, "action": "echo"}),
        json!({"t": "", "id": 1}),
        json!({"id": 1, "action": "echo"}),
        json!({"t": 7, "id": 1}),
        json!({"t": null}),
        sig,
        json!({"t": "auth", "nonce": "00".repeat(32), "meta": {}, "proof": "00".repeat(32)}),
        json!({"t": "hello", "v": 1, "nonce": "00".repeat(32), "sign": false}),
        json!({"t": "reject", "code": "X", "message": "y"}),
    ];
    for f in after {
        let (code, event) = closed_post_auth(h, Message::text(f.to_string())).await;
        assert_eq!(
            (code, event),
            (close::PROTOCOL_ERROR, close::PROTOCOL_ERROR),
            "{f}"
        );
    }
}

/// `res` frames for ids the server never sent, on an authenticated link,
/// while the server waits for answers from the good agent and from the
/// attacker itself: dropped silently; every real call gets its own answer.
async fn attack_unknown_response(h: &Harness) {
    const KEY: &str = "unknown-response";
    // A call from the server to the good agent, parked in its `hold` hook.
    let parked = {
        let server = h.server.clone();
        let good = h.good.name.clone();
        tokio::spawn(async move {
            server
                .send_to_timeout::<_, String>(good.as_str(), "hold", &KEY, LONG)
                .await
        })
    };
    h.blockers.wait_started(KEY, 1).await;

    let mut events = h.server.events();
    let (mut ws, name) = raw_agent(&h.server).await;
    let mut ids: Vec<u64> = (0..=64).collect();
    ids.extend([1 << 53, u64::MAX - 1, u64::MAX]);
    for id in ids {
        send_json(&mut ws, &json!({"t": "res", "id": id, "ok": "forged"})).await;
        send_json(
            &mut ws,
            &json!({"t": "res", "id": id, "err": {"code": "FORGED", "message": "x"}}),
        )
        .await;
    }
    // The link is still up and served.
    within(ws.send(Message::text(req_text(1, "echo", json!("still here")))))
        .await
        .expect("send");
    let v = recv_json(&mut ws).await;
    assert_eq!(v, json!({"t": "res", "id": 1, "ok": "still here"}));

    // A call from the server to the attacker: a wrong id first, then the
    // right one; only the right one answers the call.
    let call = {
        let server = h.server.clone();
        let name = name.clone();
        tokio::spawn(async move {
            server
                .send_to_timeout::<_, Value>(name.as_str(), "question", &json!({"q": 1}), LONG)
                .await
        })
    };
    let req = recv_json(&mut ws).await;
    assert_eq!(req["t"], "req");
    assert_eq!(req["action"], "question");
    let id = req["id"].as_u64().expect("req.id");
    send_json(
        &mut ws,
        &json!({"t": "res", "id": id + 1000, "ok": "wrong"}),
    )
    .await;
    send_json(&mut ws, &json!({"t": "res", "id": id, "ok": {"a": 1}})).await;
    let answer = within(call).await.expect("call task").expect("call");
    assert_eq!(answer, json!({"a": 1}));
    // A second answer to the same id, now nobody waits: dropped too.
    send_json(&mut ws, &json!({"t": "res", "id": id, "ok": "late"})).await;

    h.blockers.release(KEY);
    let held = within(parked).await.expect("parked task");
    assert_eq!(held.expect("the good agent's own answer"), "held");

    within(ws.send(Message::text(req_text(2, "echo", json!("bye")))))
        .await
        .expect("send");
    assert_eq!(recv_json(&mut ws).await["ok"], "bye");
    leave(ws, &mut events, &name).await;
}

/// Two `req` with the same id: both served and both answered with that id
/// (10.1), whether they run one after the other or at the same time.
async fn attack_duplicate_ids(h: &Harness) {
    const KEY: &str = "duplicate-ids";
    let mut events = h.server.events();
    let (mut ws, name) = raw_agent(&h.server).await;
    let link = h.server.agent(&name).expect("registered").link().clone();

    for body in ["first", "second"] {
        within(ws.feed(Message::text(req_text(7, "echo", json!(body)))))
            .await
            .expect("feed");
    }
    within(ws.flush()).await.expect("flush");
    let mut bodies = BTreeSet::new();
    for _ in 0..2 {
        let v = recv_json(&mut ws).await;
        assert_eq!(v["id"], 7, "{v}");
        bodies.insert(v["ok"].as_str().expect("ok").to_owned());
    }
    assert_eq!(bodies, BTreeSet::from(["first".into(), "second".into()]));

    // Both in flight at once under the same id.
    for _ in 0..2 {
        within(ws.feed(Message::text(req_text(9, "block", json!(KEY)))))
            .await
            .expect("feed");
    }
    within(ws.flush()).await.expect("flush");
    h.blockers.wait_started(KEY, 2).await;
    assert_eq!(link.serving_requests(), 2);
    h.blockers.release(KEY);
    for _ in 0..2 {
        let v = recv_json(&mut ws).await;
        assert_eq!(v, json!({"t": "res", "id": 9, "ok": "released"}));
    }

    // An id reused after its answer is just another request.
    send_json(
        &mut ws,
        &json!({"t": "req", "id": 7, "action": "echo", "body": "third"}),
    )
    .await;
    assert_eq!(
        recv_json(&mut ws).await,
        json!({"t": "res", "id": 7, "ok": "third"})
    );
    leave(ws, &mut events, &name).await;
}

/// Sends `bytes` on a fresh TCP connection and returns what came back
/// before the server dropped it, with the `HandshakeFailure` code.
async fn garbage(h: &Harness, bytes: &[u8]) -> (Vec<u8>, String) {
    let mut failures = h.server.handshake_failures();
    let mut w = Wire::connect(h.addr()).await;
    let peer = w.local_addr();
    // The server may drop the connection before all of it is written.
    let _ = w.tx.try_send_raw(bytes).await;
    let got = w.rx.expect_dropped().await;
    (got, handshake_failed(&mut failures, peer).await)
}

/// Binary messages, WebSocket protocol violations, and bytes that are not
/// WebSocket at all.
async fn attack_binary_garbage(h: &Harness) {
    let junk = vec![0xde, 0xad, 0xbe, 0xef, 0x00, 0xff, 0x7b];
    // A binary message where `auth` belongs (after hello, or before it):
    // close 4000, no reject.
    for read_hello in [true, false] {
        let r = refused_pre_auth(h, read_hello, Message::binary(junk.clone())).await;
        assert_refused(
            &r,
            close::PROTOCOL_ERROR,
            None,
            codes::PROTOCOL_ERROR,
            "binary message in the handshake",
        );
    }
    // ...and after authentication: close 4000.
    let (code, event) = closed_post_auth(h, Message::binary(junk.clone())).await;
    assert_eq!(
        (code, event),
        (close::PROTOCOL_ERROR, close::PROTOCOL_ERROR)
    );

    // WebSocket protocol violations: close 4000.
    let text = req_text(1, "echo", json!(1));
    let mut rsv = header(true, 0b100, wire::OP_TEXT, 3, Some([0; 4]));
    rsv.extend_from_slice(b"abc");
    let mut reserved_opcode = header(true, 0, 0x3, 3, Some([0; 4]));
    reserved_opcode.extend_from_slice(b"abc");
    let violations: [(&str, Vec<u8>); 4] = [
        (
            "unmasked frame",
            frame(true, wire::OP_TEXT, text.as_bytes(), false),
        ),
        ("reserved bit set", rsv),
        ("reserved opcode", reserved_opcode),
        (
            "continuation of nothing",
            frame(true, wire::OP_CONTINUATION, b"x", true),
        ),
    ];
    let (closed, event) = wire_pre_auth(h, &frame(true, wire::OP_TEXT, b"{}", false), false).await;
    assert_eq!(
        closed.code,
        close::PROTOCOL_ERROR,
        "unmasked auth: {closed:?}"
    );
    assert!(rejects(&closed.texts).is_empty());
    assert_eq!(event, codes::PROTOCOL_ERROR);
    for (what, bytes) in violations {
        let (closed, event) = wire_post_auth(h, &bytes).await;
        assert_eq!(
            (closed.code, event),
            (close::PROTOCOL_ERROR, close::PROTOCOL_ERROR),
            "{what}: {closed:?}"
        );
    }

    // Not a WebSocket upgrade at all: the TCP connection is dropped without
    // a response, long before the deadline (`TRANSPORT`, not
    // `HANDSHAKE_TIMEOUT`).
    let mut tls_hello = vec![
        0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03,
    ];
    tls_hello.extend((0..=255u8).rev());
    tls_hello.extend_from_slice(b"\r\n\r\n");
    let mut zeros = vec![0u8; 64];
    zeros.extend_from_slice(b"\r\n\r\n");
    let inputs: [(&str, Vec<u8>); 5] = [
        ("TLS ClientHello", tls_hello),
        ("zero bytes", zeros),
        ("SSH banner", b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec()),
        (
            "HTTP without upgrade",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "upgrade followed by junk",
            [upgrade_request(h.addr()), junk.clone()].concat(),
        ),
    ];
    for (what, bytes) in inputs {
        let (got, event) = garbage(h, &bytes).await;
        assert!(
            got.is_empty(),
            "{what}: expected no response, got {:?}",
            String::from_utf8_lossy(&got)
        );
        assert_eq!(event, codes::TRANSPORT, "{what}");
    }

    // Header lines without end: cut off after the WebSocket library's 64 KiB
    // cap on a request head, not buffered until the deadline.
    let mut failures = h.server.handshake_failures();
    let mut w = Wire::connect(h.addr()).await;
    let peer = w.local_addr();
    w.tx.send_raw(b"GET / HTTP/1.1\r\n").await;
    let line = format!("X-Padding: {}\r\n", "a".repeat(1000)).into_bytes();
    let mut sent = 0usize;
    let got = {
        let dropped = w.rx.expect_dropped();
        tokio::pin!(dropped);
        loop {
            tokio::select! {
                got = &mut dropped => break got,
                written = w.tx.try_send_raw(&line) => match written {
                    Ok(()) => {
                        sent += line.len();
                        assert!(sent < 64 << 20, "the server keeps reading an endless request head");
                    }
                    Err(_) => break within(&mut dropped).await,
                },
            }
        }
    };
    assert!(got.is_empty(), "no response to an endless request head");
    assert_eq!(
        handshake_failed(&mut failures, peer).await,
        codes::TRANSPORT
    );
}

/// The upgrade request, and then an `auth` frame, trickled one byte per
/// tick: dropped (upgrade) or closed with 4005 (auth) at the deadline.
async fn attack_slowloris(h: &Harness) {
    let upgrade = async {
        let mut failures = h.server.handshake_failures();
        let t0 = Instant::now();
        let mut w = Wire::connect(h.addr()).await;
        let peer = w.local_addr();
        let request = upgrade_request(h.addr());
        let mut tick = tokio::time::interval(TRICKLE);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut sent = 0;
        let got = {
            let dropped = w.rx.expect_dropped();
            tokio::pin!(dropped);
            loop {
                tokio::select! {
                    got = &mut dropped => break got,
                    _ = tick.tick(), if sent < request.len() => {
                        if w.tx.try_send_raw(&request[sent..=sent]).await.is_err() {
                            break within(&mut dropped).await;
                        }
                        sent += 1;
                    }
                }
            }
        };
        assert_at_deadline(t0.elapsed(), "slowloris upgrade");
        assert!(sent < request.len(), "the request was never complete");
        assert!(
            got.is_empty(),
            "no response to an unfinished upgrade: {:?}",
            String::from_utf8_lossy(&got)
        );
        assert_eq!(
            handshake_failed(&mut failures, peer).await,
            codes::HANDSHAKE_TIMEOUT
        );
    };

    let auth = async {
        let mut failures = h.server.handshake_failures();
        let t0 = Instant::now();
        let mut w = Wire::upgrade(h.addr()).await;
        let peer = w.local_addr();
        let hello = codec::decode(&w.rx.read_text().await).expect("hello");
        let mut hs = ClientHandshake::new(Identity::default(), Map::new());
        let auth = hs.on_hello(&Secret::from(SECRET), hello).expect("hello");
        let bytes = frame(true, wire::OP_TEXT, codec::encode(&auth).as_bytes(), true);
        let mut tick = tokio::time::interval(TRICKLE);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut sent = 0;
        let closed = {
            let closed = w.rx.expect_close_frame();
            tokio::pin!(closed);
            loop {
                tokio::select! {
                    closed = &mut closed => break closed,
                    _ = tick.tick(), if sent < bytes.len() => {
                        w.tx.send_raw(&bytes[sent..=sent]).await;
                        sent += 1;
                    }
                }
            }
        };
        assert_at_deadline(t0.elapsed(), "slowloris auth");
        assert!(sent < bytes.len(), "the auth frame was never complete");
        assert_eq!(closed.code, close::HANDSHAKE_TIMEOUT, "{closed:?}");
        assert!(rejects(&closed.texts).is_empty());
        // No close reply: it would be read as the rest of the unfinished
        // frame. Hang up instead, so the server need not wait for one.
        drop(w);
        assert_eq!(
            handshake_failed(&mut failures, peer).await,
            codes::HANDSHAKE_TIMEOUT
        );
    };
    tokio::join!(upgrade, auth);
}

/// Handshakes that stop half-way: a silent TCP connection, an upgrade
/// request without its blank line, an upgraded socket that never answers
/// `hello`, and half an `auth` frame. Dropped (before the upgrade) or
/// closed with 4005 (after it) at the deadline.
async fn attack_never_finished(h: &Harness) {
    let silent_tcp = async {
        let mut failures = h.server.handshake_failures();
        let t0 = Instant::now();
        let mut w = Wire::connect(h.addr()).await;
        let got = w.rx.expect_dropped().await;
        assert_at_deadline(t0.elapsed(), "silent TCP connection");
        assert!(got.is_empty());
        assert_eq!(
            handshake_failed(&mut failures, w.local_addr()).await,
            codes::HANDSHAKE_TIMEOUT
        );
    };
    let unfinished_upgrade = async {
        let mut failures = h.server.handshake_failures();
        let t0 = Instant::now();
        let mut w = Wire::connect(h.addr()).await;
        let request = upgrade_request(h.addr());
        w.tx.send_raw(&request[..request.len() - 2]).await;
        let got = w.rx.expect_dropped().await;
        assert_at_deadline(t0.elapsed(), "upgrade without its blank line");
        assert!(got.is_empty());
        assert_eq!(
            handshake_failed(&mut failures, w.local_addr()).await,
            codes::HANDSHAKE_TIMEOUT
        );
    };
    let no_auth = async {
        let mut failures = h.server.handshake_failures();
        let t0 = Instant::now();
        let mut ws = raw_connect(&h.server).await;
        let peer = peer_of(&ws);
        assert_eq!(recv_json(&mut ws).await["t"], "hello");
        let closed = expect_close(&mut ws).await;
        assert_at_deadline(t0.elapsed(), "hello never answered");
        assert_eq!(closed.code, close::HANDSHAKE_TIMEOUT, "{closed:?}");
        assert!(rejects(&closed.frames).is_empty());
        assert_eq!(
            handshake_failed(&mut failures, peer).await,
            codes::HANDSHAKE_TIMEOUT
        );
    };
    let half_auth = async {
        let mut failures = h.server.handshake_failures();
        let t0 = Instant::now();
        let mut w = Wire::upgrade(h.addr()).await;
        let peer = w.local_addr();
        let _hello = w.rx.read_text().await;
        let body = format!("{{\"t\":\"auth\",\"pad\":\"{}\"}}", "x".repeat(200));
        let bytes = frame(true, wire::OP_TEXT, body.as_bytes(), true);
        w.tx.send_raw(&bytes[..bytes.len() / 2]).await;
        let closed = w.rx.expect_close_frame().await;
        assert_at_deadline(t0.elapsed(), "half an auth frame");
        assert_eq!(closed.code, close::HANDSHAKE_TIMEOUT, "{closed:?}");
        assert!(rejects(&closed.texts).is_empty());
        drop(w);
        assert_eq!(
            handshake_failed(&mut failures, peer).await,
            codes::HANDSHAKE_TIMEOUT
        );
    };
    tokio::join!(silent_tcp, unfinished_upgrade, no_auth, half_auth);
}

/// `count` TCP connections that never send a byte, all at once: each is
/// dropped at its handshake deadline without a response.
async fn attack_half_open(h: &Harness, count: usize) {
    let mut failures = h.server.handshake_failures();
    let mut opened = Vec::new();
    for _ in 0..count {
        let t0 = Instant::now();
        opened.push((t0, Wire::connect(h.addr()).await));
    }
    let peers: Vec<SocketAddr> = opened.iter().map(|(_, w)| w.local_addr()).collect();
    let ends = join_all(opened.iter_mut().map(|(t0, w)| async move {
        let got = w.rx.expect_dropped().await;
        (got, t0.elapsed())
    }))
    .await;
    for (got, elapsed) in ends {
        assert!(got.is_empty(), "a half-open connection got {got:?}");
        assert_at_deadline(elapsed, "half-open connection");
    }
    let got = handshake_failures(&mut failures, &peers).await;
    assert!(
        got.values().all(|c| c == codes::HANDSHAKE_TIMEOUT),
        "{got:?}"
    );
}

/// An authenticated peer floods requests for a hook that blocks: the first
/// `FLIGHT` are served, every one past them is answered `BUSY` at once
/// (never queued, never run), and the link never serves more than `FLIGHT`.
async fn attack_flood(h: &Harness) {
    const KEY: &str = "flood";
    let mut events = h.server.events();
    let (mut ws, name) = raw_agent(&h.server).await;
    let link = h.server.agent(&name).expect("registered").link().clone();
    let peak = {
        let link = link.clone();
        Peak::watch(move || link.serving_requests())
    };

    let limit = FLIGHT as u64;
    let extra = 60;
    for id in 1..=limit + extra {
        within(ws.feed(Message::text(req_text(id, "block", json!(KEY)))))
            .await
            .expect("feed");
    }
    within(ws.flush()).await.expect("flush");
    let busy = read_busy(&mut ws, extra as usize).await;
    assert_eq!(busy, (limit + 1..=limit + extra).collect::<BTreeSet<_>>());
    h.blockers.wait_started(KEY, FLIGHT).await;
    assert_eq!(link.serving_requests(), FLIGHT);

    // A second, bigger wave while the first ones still block.
    let wave = 1000..1200u64;
    for id in wave.clone() {
        within(ws.feed(Message::text(req_text(id, "block", json!(KEY)))))
            .await
            .expect("feed");
    }
    within(ws.flush()).await.expect("flush");
    let busy = read_busy(&mut ws, wave.clone().count()).await;
    assert_eq!(busy, wave.collect::<BTreeSet<_>>());
    assert_eq!(link.serving_requests(), FLIGHT);

    h.blockers.release(KEY);
    let mut released = BTreeSet::new();
    for _ in 0..limit {
        let v = recv_json(&mut ws).await;
        assert_eq!(v["ok"], "released", "{v}");
        released.insert(v["id"].as_u64().expect("res.id"));
    }
    assert_eq!(released, (1..=limit).collect::<BTreeSet<_>>());
    assert_eq!(
        *h.blockers.get(KEY).started.borrow(),
        FLIGHT,
        "a request answered BUSY must never run"
    );

    // Room again once they finished.
    wait_stats(&h.server, "the flood's hooks to finish", |_| {
        link.serving_requests() == 0
    })
    .await;
    send_json(
        &mut ws,
        &json!({"t": "req", "id": 5000, "action": "echo", "body": "room again"}),
    )
    .await;
    assert_eq!(
        recv_json(&mut ws).await,
        json!({"t": "res", "id": 5000, "ok": "room again"})
    );
    let peak = peak.stop().await;
    assert!(
        peak <= FLIGHT,
        "the flooded link served {peak} requests at once"
    );
    leave(ws, &mut events, &name).await;
}

// ------------------------------------------------------------ one by one

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_rejected_with_4001() {
    let h = Harness::start(hostile()).await;
    let calls = h.keep_calling("wrong-secret", MAX_ROUNDS);
    attack_wrong_secret(&h).await;
    calls.stop().await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_auth_is_rejected_with_4001() {
    let h = Harness::start(hostile()).await;
    let calls = h.keep_calling("replayed-auth", MAX_ROUNDS);
    attack_replayed_auth(&h).await;
    calls.stop().await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_takeover_without_the_token_is_refused_with_4004() {
    let h = Harness::start(hostile()).await;
    let calls = h.keep_calling("name-takeover", MAX_ROUNDS);
    attack_name_takeover(&h).await;
    calls.stop().await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_before_authentication_is_rejected_with_4000() {
    let h = Harness::start(hostile()).await;
    let calls = h.keep_calling("before-auth", MAX_ROUNDS);
    attack_frame_before_auth(&h).await;
    calls.stop().await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_closed_with_1009() {
    let h = Harness::start(hostile()).await;
    let calls = h.keep_calling("oversized", MAX_ROUNDS);
    attack_oversized(&h).await;
    calls.stop().await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_that_is_not_utf8_is_closed_with_1007() {
    let h = Harness::start(hostile()).await;
    let calls = h.keep_calling("invalid-utf8", MAX_ROUNDS);
    attack_invalid_utf8(&h).await;
    calls.stop().await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_json_is_closed_with_4000() {
    let h = Harness::start(hostile()).await;
    let calls = h.keep_calling("invalid-json", MAX_ROUNDS);
    attack_invalid_json(&h).await;
    calls.stop().await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_frame_type_is_closed_with_4000() {
    let h = Harness::start(hostile()).await;
    let calls = h.keep_calling("unknown-type", MAX_ROUNDS);
    attack_unknown_type(&h).await;
    calls.stop().await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_for_an_id_never_sent_is_dropped() {
    let h = Harness::start(hostile()).await;
    let calls = h.keep_calling("unknown-response", MAX_ROUNDS);
    attack_unknown_response(&h).await;
    calls.stop().await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_request_ids_are_both_served_and_answered() {
    let h = Harness::start(hostile()).await;
    let calls = h.keep_calling("duplicate-ids", MAX_ROUNDS);
    attack_duplicate_ids(&h).await;
    calls.stop().await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_and_garbage_bytes_are_closed_with_4000_or_dropped() {
    let h = Harness::start(hostile()).await;
    let calls = h.keep_calling("garbage", MAX_ROUNDS);
    attack_binary_garbage(&h).await;
    calls.stop().await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_handshake_is_closed_at_the_deadline() {
    let h = Harness::start(hostile()).await;
    let calls = h.keep_calling("slowloris", MAX_ROUNDS);
    attack_slowloris(&h).await;
    calls.stop().await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_never_finished_is_closed_at_the_deadline() {
    let h = Harness::start(hostile()).await;
    let calls = h.keep_calling("never-finished", MAX_ROUNDS);
    attack_never_finished(&h).await;
    calls.stop().await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_are_bounded_and_closed_at_the_deadline() {
    const BOUND: usize = 8;
    const EXTRA: usize = 4;
    let h = Harness::start(hostile().max_pending_handshakes(BOUND)).await;
    let calls = h.keep_calling("half-open", MAX_ROUNDS);
    let peak = {
        let server = h.server.clone();
        Peak::watch(move || server.stats().handshakes)
    };
    let mut failures = h.server.handshake_failures();

    let mut admitted = Vec::new();
    for _ in 0..BOUND {
        let t0 = Instant::now();
        admitted.push((t0, Wire::connect(h.addr()).await));
    }
    h.wait_stats("every slot taken", |s| s.handshakes == BOUND)
        .await;

    // Past the bound, each connection is dropped at accept, at once...
    let mut extra_peers = Vec::new();
    for _ in 0..EXTRA {
        let mut w = Wire::connect(h.addr()).await;
        extra_peers.push(w.local_addr());
        let got = w.rx.expect_dropped().await;
        assert!(got.is_empty(), "an extra connection got {got:?}");
    }
    // ...while the admitted ones still wait for their deadline: the extras
    // were not held until then.
    assert_eq!(
        h.server.stats().handshakes,
        BOUND,
        "the extra connections were dropped only after the admitted ones' deadline"
    );
    // The good agent, already connected, is served all along.
    h.good.rounds("saturated", 3).await;

    // Every admitted connection is dropped at its deadline, without a byte.
    let peers: Vec<SocketAddr> = admitted.iter().map(|(_, w)| w.local_addr()).collect();
    let ends = join_all(admitted.iter_mut().map(|(t0, w)| async move {
        let got = w.rx.expect_dropped().await;
        (got, t0.elapsed())
    }))
    .await;
    for (got, elapsed) in ends {
        assert!(got.is_empty(), "a half-open connection got {got:?}");
        assert_at_deadline(elapsed, "admitted half-open connection");
    }
    let got = handshake_failures(&mut failures, &peers).await;
    assert!(
        got.values().all(|c| c == codes::HANDSHAKE_TIMEOUT),
        "{got:?}"
    );
    // The extras never reached a handshake, so no event names them.
    while let Ok(f) = failures.try_recv() {
        assert!(!extra_peers.contains(&f.peer_addr), "{f:?}");
    }
    h.wait_stats("every slot free", |s| s.handshakes == 0).await;

    // The slots are free again: a new agent gets in.
    let late = connect(
        &h.server,
        client_builder(&h.server).reconnect(Backoff::disabled()),
    )
    .await;
    let late_name = late.name().expect("name");
    let v: Value = within(late.send("echo", &json!("late")))
        .await
        .expect("late call");
    assert_eq!(v, json!("late"));
    close_and_wait(&h.server, late, &late_name).await;

    let peak = peak.stop().await;
    assert!(peak <= BOUND, "{peak} handshakes at once, bound {BOUND}");
    assert_eq!(peak, BOUND);
    calls.stop().await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_flood_past_the_in_flight_limit_gets_busy() {
    let h = Harness::start(hostile()).await;
    let calls = h.keep_calling("flood", MAX_ROUNDS);
    let peak = {
        let server = h.server.clone();
        Peak::watch(move || server.stats().serving_requests)
    };
    attack_flood(&h).await;
    calls.stop().await;
    // The flooder's `FLIGHT`, plus the one call of the good agent's that
    // may be in its hook at the same moment.
    let peak = peak.stop().await;
    assert!(
        peak <= FLIGHT + 1,
        "the server served {peak} requests at once"
    );
    h.finish().await;
}

// --------------------------------------------------------------- at once

/// Every attack at the same time against one server, while the good agent
/// calls both ways in a loop. The handshake bound is set above what the
/// attackers hold at once, so that every attacker reaches the outcome it
/// checks (the bound itself is the subject of the half-open test above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attack_at_once_leaves_the_good_agent_unharmed() {
    const BOUND: usize = 256;
    // Every attacker is on 127.0.0.1, so its share may be the whole bound.
    let h = Harness::start(
        hostile()
            .max_pending_handshakes(BOUND)
            .max_pending_handshakes_per_ip(BOUND),
    )
    .await;
    let calls = h.keep_calling("all-at-once", MAX_ROUNDS);
    let peak = {
        let server = h.server.clone();
        Peak::watch(move || server.stats().handshakes)
    };
    tokio::join!(
        attack_wrong_secret(&h),
        attack_replayed_auth(&h),
        attack_name_takeover(&h),
        attack_frame_before_auth(&h),
        attack_oversized(&h),
        attack_invalid_utf8(&h),
        attack_invalid_json(&h),
        attack_unknown_type(&h),
        attack_unknown_response(&h),
        attack_duplicate_ids(&h),
        attack_binary_garbage(&h),
        attack_slowloris(&h),
        attack_never_finished(&h),
        attack_half_open(&h, 32),
        attack_flood(&h),
    );
    let rounds = calls.stop().await;
    let peak = peak.stop().await;
    assert!(peak <= BOUND, "{peak} handshakes at once, bound {BOUND}");
    eprintln!("good agent: {rounds} rounds both ways during the attacks; peak handshakes {peak}");
    h.finish().await;
}

// ------------------------------------------------------------- per-source bound

/// A per-source bound on connections in their handshake: a single address
/// can take only its share of the global bound, so a new agent from another
/// address still gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_lock_new_agents_out() {
    const BOUND: usize = 8;
    const PER_IP: usize = 4;
    let h = Harness::start(
        hostile()
            .handshake_timeout(Duration::from_secs(5))
            .max_pending_handshakes(BOUND)
            .max_pending_handshakes_per_ip(PER_IP),
    )
    .await;
    let mut squatters = Vec::new();
    for _ in 0..BOUND {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.2:0".parse().expect("addr"))
            .expect("bind 127.0.0.2");
        let tcp = within(socket.connect(h.addr())).await.expect("connect");
        squatters.push(Wire::from_tcp(tcp));
    }
    h.wait_stats("the address's share taken", |s| s.handshakes == PER_IP)
        .await;
    let late = within(
        client_builder(&h.server)
            .reconnect(Backoff::disabled())
            .connect(),
    )
    .await
    .expect("a new agent from 127.0.0.1 is admitted while 127.0.0.2 holds its share");
    within(late.close()).await;
    drop(squatters);
    h.finish().await;
}

/// The flood again, on a server whose message limit is 1 KiB. Its writer
/// feeds up to 64 queued frames before one flush, and tungstenite only
/// writes its buffer out once it holds more than `write_buffer` bytes: the
/// buffer's cap must leave room for that plus a whole message, or a burst of
/// ~45 `BUSY` answers overflows it and the link drops with 1006.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_busy_answers_on_a_small_message_limit_keeps_the_link() {
    let h = Harness::start(hostile().max_message_bytes(KIB)).await;
    attack_flood(&h).await;
    h.finish().await;
}
