//! Signed mode: with `sign_frames(true)` every frame after the handshake
//! carries a MAC under the session key over a per-direction sequence number;
//! forged, replayed, reordered and dropped frames end the link with 4002.

mod support;

use agent_tunnel::client::AgentClient;
use agent_tunnel::protocol::close;
use agent_tunnel::protocol::frame::{Frame, Outcome};
use agent_tunnel::protocol::signed::{Signer, Verifier, AGENT_TO_SERVER, SERVER_TO_AGENT};
use agent_tunnel::server::AgentServer;
use agent_tunnel::HookError;
use serde_json::{json, Value};
use support::raw;

const SECRET: &str = "signed-secret";

async fn signed_server() -> AgentServer {
    let server = AgentServer::builder()
        .secret(SECRET)
        .sign_frames(true)
        .start("127.0.0.1:0")
        .await
        .unwrap();
    server.on_hook("echo", |v: Value, _| async move { Ok::<_, HookError>(v) });
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_client_follows_the_signing_policy_both_ways() {
    let server = signed_server().await;
    let client = AgentClient::builder(&format!("ws://{}", server.local_addr()), SECRET)
        .on_hook(
            "double",
            |n: i64, _| async move { Ok::<_, HookError>(n * 2) },
        )
        .connect()
        .await
        .unwrap();
    let name = client.name().unwrap();
    for i in 0..20 {
        let v: Value = client.send("echo", &json!({"i": i})).await.unwrap();
        assert_eq!(v, json!({"i": i}));
        let d: i64 = server.send_to(name.as_str(), "double", &i).await.unwrap();
        assert_eq!(d, i * 2);
    }
    client.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_signs_its_frames_in_sequence() {
    let server = signed_server().await;
    let mut ws = raw::open(server.local_addr()).await;
    let est = raw::handshake(&mut ws, SECRET).await;
    assert!(est.session.sign);
    let mut signer = Signer::new(est.session.key.clone(), AGENT_TO_SERVER);
    let mut verifier = Verifier::new(est.session.key.clone(), SERVER_TO_AGENT);
    for id in 1..=3 {
        raw::send(
            &mut ws,
            &signer.sign(&raw::req(id, "echo", &id.to_string())),
        )
        .await;
        let text = raw::next_text(&mut ws).await;
        let inner = verifier.verify(&text).expect("server frame verifies");
        match raw::decode(inner) {
            Frame::Res(res) => {
                assert_eq!(res.id, id);
                assert!(matches!(res.outcome, Outcome::Ok(b) if b.get() == id.to_string()));
            }
            other => panic!("expected res, got {other:?}"),
        }
    }
    server.shutdown().await;
}

/// Opens a signed session and returns the socket and the agent's signer.
async fn session(server: &AgentServer) -> (raw::Ws, Signer) {
    let mut ws = raw::open(server.local_addr()).await;
    let est = raw::handshake(&mut ws, SECRET).await;
    (ws, Signer::new(est.session.key, AGENT_TO_SERVER))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_frame_closes_the_link_with_4002() {
    let server = signed_server().await;
    let (mut ws, mut signer) = session(&server).await;
    let good = signer.sign(&raw::req(1, "echo", "1"));
    let forged = good.replace(r#""body":1"#, r#""body":2"#);
    assert_ne!(good, forged);
    raw::send(&mut ws, &forged).await;
    let (code, reason) = raw::close_code(&mut ws).await;
    assert_eq!(code, close::BAD_SIGNATURE, "{reason}");
    assert!(reason.contains("MAC"), "{reason}");
    drop(ws);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_frame_closes_the_link_with_4002() {
    let server = signed_server().await;
    let (mut ws, mut signer) = session(&server).await;
    let frame = signer.sign(&raw::req(1, "echo", "1"));
    raw::send(&mut ws, &frame).await;
    let _answer = raw::next_text(&mut ws).await;
    raw::send(&mut ws, &frame).await;
    let (code, reason) = raw::close_code(&mut ws).await;
    assert_eq!(code, close::BAD_SIGNATURE, "{reason}");
    assert!(reason.contains("sequence"), "{reason}");
    drop(ws);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordered_frames_close_the_link_with_4002() {
    let server = signed_server().await;
    let (mut ws, mut signer) = session(&server).await;
    let first = signer.sign(&raw::req(1, "echo", "1"));
    let second = signer.sign(&raw::req(2, "echo", "2"));
    raw::send(&mut ws, &second).await;
    raw::send(&mut ws, &first).await;
    let (code, reason) = raw::close_code(&mut ws).await;
    assert_eq!(code, close::BAD_SIGNATURE, "{reason}");
    drop(ws);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_frame_closes_the_link_with_4002() {
    let server = signed_server().await;
    let (mut ws, mut signer) = session(&server).await;
    let first = signer.sign(&raw::req(1, "echo", "1"));
    raw::send(&mut ws, &first).await;
    let _answer = raw::next_text(&mut ws).await;
    let _lost = signer.sign(&raw::req(2, "echo", "2"));
    let third = signer.sign(&raw::req(3, "echo", "3"));
    raw::send(&mut ws, &third).await;
    let (code, reason) = raw::close_code(&mut ws).await;
    assert_eq!(code, close::BAD_SIGNATURE, "{reason}");
    assert!(reason.contains("expected 1, got 2"), "{reason}");
    drop(ws);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_frame_in_signed_mode_closes_the_link_with_4002() {
    let server = signed_server().await;
    let (mut ws, _signer) = session(&server).await;
    raw::send(&mut ws, &raw::req(1, "echo", "1")).await;
    let (code, reason) = raw::close_code(&mut ws).await;
    assert_eq!(code, close::BAD_SIGNATURE, "{reason}");
    assert!(reason.contains("not signed"), "{reason}");
    drop(ws);
    server.shutdown().await;
}
