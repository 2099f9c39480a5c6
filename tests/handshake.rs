//! Issue 2, item 1: the handshake. Challenge-response over the shared secret,
//! mutual proof, `WRONG_SECRET` with close code 4001, the handshake deadline
//! (4005), nothing served before authentication (4000), and the
//! `agent-tunnel.v1` subprotocol.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agent_tunnel::client::{AgentClient, Backoff};
use agent_tunnel::protocol::crypto::{self, Key};
use agent_tunnel::protocol::frame::{Frame, Limits, Welcome};
use agent_tunnel::protocol::handshake::{ClientHandshake, Identity, ServerHandshake};
use agent_tunnel::protocol::{close, codec, codes, transport, Secret, SUBPROTOCOL};
use agent_tunnel::HookError;
use common::*;
use futures_util::StreamExt;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

/// The hex text of `s`, to make sure it does not travel in that form either.
fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_fails_the_client_with_wrong_secret() {
    let server = start_server().await;
    let mut failures = server.handshake_failures();

    let err = within(
        AgentClient::builder(&url(&server), "not-the-secret")
            .reconnect(Backoff::disabled())
            .connect(),
    )
    .await
    .expect_err("a wrong secret must not connect");
    assert_eq!(err.code(), codes::WRONG_SECRET, "{err}");

    let code = wait_for(&mut failures, |f| Some(f.code)).await;
    assert_eq!(code, codes::WRONG_SECRET);
    assert!(server.agents().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_gets_a_reject_and_close_code_4001() {
    let server = start_server().await;
    let mut ws = raw_connect(&server).await;

    let err = raw_handshake(&mut ws, "not-the-secret", Identity::default())
        .await
        .expect_err("the server must refuse a wrong proof");
    // The `reject` frame reached the peer with its code...
    assert_eq!(err.code(), codes::WRONG_SECRET, "{err}");
    // ...followed by the documented close code.
    let closed = expect_close(&mut ws).await;
    assert_eq!(closed.code, close::AUTH_FAILED);
    assert_eq!(closed.code, 4001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth_replayed_on_another_connection_is_refused() {
    let server = start_server().await;

    // A genuine auth for the first connection's challenge.
    let mut first = raw_connect(&server).await;
    let secret = Secret::from(SECRET);
    let mut hs = ClientHandshake::new(Identity::default(), Map::new());
    let hello = within(transport::recv_frame(&mut first)).await.unwrap();
    let auth = hs.on_hello(&secret, hello).unwrap();
    within(transport::send_frame(&mut first, &auth))
        .await
        .unwrap();
    let answer = within(transport::recv_frame(&mut first)).await.unwrap();
    hs.on_answer(&secret, answer)
        .expect("the genuine auth is welcomed");

    // The same bytes replayed to a fresh challenge prove nothing.
    let mut second = raw_connect(&server).await;
    let _hello = within(transport::recv_frame(&mut second)).await.unwrap();
    within(transport::send_frame(&mut second, &auth))
        .await
        .unwrap();
    match within(transport::recv_frame(&mut second)).await.unwrap() {
        Frame::Reject(r) => assert_eq!(r.code, codes::WRONG_SECRET),
        other => panic!("a replayed auth must be rejected, got {other:?}"),
    }
    assert_eq!(expect_close(&mut second).await.code, close::AUTH_FAILED);
}

/// What the impostor server saw.
struct Impostor {
    /// The `auth` frame the client sent, as text on the wire.
    auth_text: String,
    /// The close code the client answered the forged `welcome` with.
    close_code: u16,
}

/// Accepts the agent-tunnel subprotocol, as a real server does.
#[allow(clippy::result_large_err)]
fn accept_subprotocol(_req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    resp.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    Ok(resp)
}

/// A server that speaks the protocol but does not know the secret: it
/// computes its `welcome` proof with a secret of its own.
async fn impostor_server() -> (SocketAddr, JoinHandle<Impostor>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_hdr_async(tcp, accept_subprotocol)
            .await
            .unwrap();
        let nonce_s = [7u8; 32];
        let hs = ServerHandshake::with_nonce(nonce_s, false);
        transport::send_frame(&mut ws, &hs.hello()).await.unwrap();
        let auth_text = match ws.next().await {
            Some(Ok(Message::Text(t))) => t.as_str().to_owned(),
            other => panic!("expected auth, got {other:?}"),
        };
        let Ok(Frame::Auth(auth)) = codec::decode(&auth_text) else {
            panic!("expected auth, got {auth_text}");
        };
        let nonce_c = crypto::decode_hex32(&auth.nonce).expect("auth nonce is hex");
        let proof = crypto::server_proof_input(
            &Secret::from("the-impostor-does-not-know-it"),
            &nonce_s,
            &nonce_c,
            "A0001",
        )
        .finish();
        let welcome = Frame::Welcome(Welcome {
            name: "A0001".into(),
            first_time: true,
            token: Some(Key::random().to_hex()),
            proof: Key::from_bytes(proof).to_hex(),
            limits: Limits {
                max_message_bytes: 1 << 20,
                max_in_flight: 8,
                ping_interval_ms: 0,
            },
            caps: Vec::new(),
        });
        transport::send_frame(&mut ws, &welcome).await.unwrap();
        let closed = expect_close(&mut ws).await;
        Impostor {
            auth_text,
            close_code: closed.code,
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_refuses_a_server_that_does_not_know_the_secret() {
    init_tracing();
    let (addr, impostor) = impostor_server().await;
    let client = AgentClient::builder(&format!("ws://{addr}"), SECRET)
        .reconnect(Backoff::disabled())
        .connect();
    let err = within(client)
        .await
        .expect_err("the impostor must be refused");
    assert_eq!(err.code(), codes::SERVER_UNVERIFIED, "{err}");

    let seen = within(impostor).await.unwrap();
    assert_eq!(seen.close_code, close::AUTH_FAILED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_never_crosses_the_wire() {
    init_tracing();
    // What a real client sends...
    let (addr, impostor) = impostor_server().await;
    let client = AgentClient::builder(&format!("ws://{addr}"), SECRET)
        .reconnect(Backoff::disabled())
        .connect();
    let _ = within(client).await;
    let seen = within(impostor).await.unwrap();
    let auth: Value = serde_json::from_str(&seen.auth_text).unwrap();
    assert!(auth["proof"].is_string(), "auth carries a proof: {auth}");

    // ...and what a real server sends, all the way to `welcome`.
    let server = start_server().await;
    let mut ws = raw_connect(&server).await;
    let hello = recv_json(&mut ws).await;
    let mut hs = ClientHandshake::new(Identity::default(), Map::new());
    let auth_frame = hs
        .on_hello(
            &Secret::from(SECRET),
            codec::decode(&hello.to_string()).unwrap(),
        )
        .unwrap();
    within(transport::send_frame(&mut ws, &auth_frame))
        .await
        .unwrap();
    let welcome = recv_json(&mut ws).await;
    assert_eq!(welcome["t"], "welcome");

    for text in [seen.auth_text, hello.to_string(), welcome.to_string()] {
        assert!(!text.contains(SECRET), "secret on the wire: {text}");
        assert!(!text.contains(&hex(SECRET)), "secret on the wire: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_past_its_deadline_is_closed_with_4005() {
    // Long enough for the upgrade itself on a loaded machine, short enough
    // to keep the test quick.
    let server = start(server_builder().handshake_timeout(Duration::from_secs(1))).await;
    let mut failures = server.handshake_failures();

    // Upgrade, read the challenge, and never answer it.
    let mut ws = raw_connect(&server).await;
    let hello = recv_json(&mut ws).await;
    assert_eq!(hello["t"], "hello");
    let closed = expect_close(&mut ws).await;
    assert_eq!(closed.code, close::HANDSHAKE_TIMEOUT);
    assert_eq!(closed.code, 4005);

    let code = wait_for(&mut failures, |f| Some(f.code)).await;
    assert_eq!(code, codes::HANDSHAKE_TIMEOUT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gives_up_on_a_server_that_never_says_hello() {
    init_tracing();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let silent = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_hdr_async(tcp, accept_subprotocol)
            .await
            .unwrap();
        // Hold the socket open without a word until the client goes.
        while let Some(Ok(_)) = ws.next().await {}
    });

    let err = within(
        AgentClient::builder(&format!("ws://{addr}"), SECRET)
            .handshake_timeout(Duration::from_millis(300))
            .reconnect(Backoff::disabled())
            .connect(),
    )
    .await
    .expect_err("no hello, no connection");
    assert_eq!(err.code(), codes::HANDSHAKE_TIMEOUT, "{err}");
    within(silent).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_before_auth_is_refused_with_4000_and_never_served() {
    let server = start_server().await;
    let served = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&served);
    server.on_hook("secret-stuff", move |_: Value, _| {
        let flag = Arc::clone(&flag);
        async move {
            flag.store(true, Ordering::SeqCst);
            Ok::<_, HookError>("leaked")
        }
    });
    let mut failures = server.handshake_failures();

    let mut ws = raw_connect(&server).await;
    let hello = recv_json(&mut ws).await;
    assert_eq!(hello["t"], "hello");
    send_json(
        &mut ws,
        &json!({"t": "req", "id": 1, "action": "secret-stuff", "body": null}),
    )
    .await;
    let closed = expect_close(&mut ws).await;
    assert_eq!(closed.code, close::PROTOCOL_ERROR);
    assert_eq!(closed.code, 4000);
    for frame in closed.decoded() {
        match frame {
            Frame::Reject(r) => assert_eq!(r.code, codes::PROTOCOL_ERROR),
            other => panic!("nothing but a reject may answer, got {other:?}"),
        }
    }

    let code = wait_for(&mut failures, |f| Some(f.code)).await;
    assert_eq!(code, codes::PROTOCOL_ERROR);
    assert!(!served.load(Ordering::SeqCst), "a hook ran before auth");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_without_the_subprotocol_is_refused() {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let server = start_server().await;

    match within(raw_upgrade(server.local_addr(), false)).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), 400),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("an upgrade without {SUBPROTOCOL} must be refused"),
    }

    // The same server upgrades a peer that offers it.
    let mut ws = raw_connect(&server).await;
    assert_eq!(recv_json(&mut ws).await["t"], "hello");
}
