//! Rules of docs/PROTOCOL.md that an independent implementation must follow
//! exactly, checked against the implementation: the agent refuses an
//! upgrade without the subprotocol (3.2), closes with the documented code
//! for its own handshake failures (7.5), decides by `welcome.token` alone
//! (5.3); the server ignores a `claim` without a `name` (5.2); both sides
//! enforce the action name syntax.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use agent_tunnel::client::{AgentClient, Backoff};
use agent_tunnel::protocol::crypto::{self, Key};
use agent_tunnel::protocol::frame::{Auth, Frame, Limits, Outcome, Welcome};
use agent_tunnel::protocol::handshake::{ClientHandshake, Identity, ServerHandshake};
use agent_tunnel::protocol::name::NameFormat;
use agent_tunnel::protocol::{close, codec, transport, Secret, SUBPROTOCOL};
use agent_tunnel::{codes, HookError};
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

const LIMITS: Limits = Limits {
    max_message_bytes: 1 << 20,
    max_in_flight: 16,
    ping_interval_ms: 0,
};

/// What a fake server does with the upgrade's subprotocol header.
#[derive(Clone, Copy)]
enum Select {
    /// Answers with `agent-tunnel.v1`, as a real server does.
    Ours,
    /// Answers without the header.
    Nothing,
    /// Answers with another subprotocol.
    Other,
}

/// A fake server on 127.0.0.1:0 that upgrades one connection at a time as
/// `select` says, runs `script` on it, and reports what the script returns.
async fn fake<F, Fut, T>(select: Select, script: F) -> (SocketAddr, mpsc::UnboundedReceiver<T>)
where
    F: Fn(Ws) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let script = Arc::new(script);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            #[allow(clippy::result_large_err)]
            let negotiate =
                move |_: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
                    let value = match select {
                        Select::Ours => Some(SUBPROTOCOL),
                        Select::Nothing => None,
                        Select::Other => Some("something-else.v1"),
                    };
                    if let Some(v) = value {
                        resp.headers_mut()
                            .insert("sec-websocket-protocol", HeaderValue::from_static(v));
                    }
                    Ok(resp)
                };
            let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, negotiate).await else {
                continue;
            };
            let script = Arc::clone(&script);
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(script(ws).await);
            });
        }
    });
    (addr, rx)
}

/// Reads until the agent's close frame and returns its code (`None` when the
/// connection ended without one).
async fn agent_close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Close(Some(f)))) => return Some(u16::from(f.code)),
            Some(Ok(Message::Close(None))) => return Some(close::NORMAL),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

fn agent(addr: SocketAddr) -> agent_tunnel::client::ClientBuilder {
    AgentClient::builder(&format!("ws://{addr}"), SECRET)
        .no_heartbeat()
        .reconnect(Backoff::disabled())
}

// ----------------------------------------------------- 3.2: subprotocol

#[tokio::test]
async fn an_upgrade_that_does_not_select_the_subprotocol_is_refused() {
    for select in [Select::Nothing, Select::Other] {
        let (addr, mut frames_sent) = fake(select, |mut ws: Ws| async move {
            // A hello the agent must never read.
            let hs = ServerHandshake::new(false);
            let _ = ws.send(Message::text(codec::encode(&hs.hello()))).await;
        })
        .await;
        let err = within(agent(addr).connect()).await.unwrap_err();
        assert_eq!(err.code(), codes::PROTOCOL_ERROR, "{err}");
        assert!(err.to_string().contains(SUBPROTOCOL), "{err}");
        // The fake server did upgrade, so the refusal is the agent's.
        within(frames_sent.recv()).await.expect("the fake upgraded");
    }
}

// ------------------------------------- 7.5: the agent's own close codes

/// Connects an agent to a fake server running `script` and returns the
/// close code the agent sent and the error `connect()` reported.
async fn agent_failure<F, Fut>(script: F) -> (Option<u16>, agent_tunnel::Error)
where
    F: Fn(Ws) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Option<u16>> + Send + 'static,
{
    let (addr, mut codes_seen) = fake(Select::Ours, script).await;
    let err = within(agent(addr).connect()).await.unwrap_err();
    let code = within(codes_seen.recv()).await.expect("the script ran");
    (code, err)
}

#[tokio::test]
async fn the_agent_closes_with_the_documented_code_for_its_handshake_failures() {
    // A first frame that is not hello.
    let (code, err) = agent_failure(|mut ws: Ws| async move {
        let _ = ws
            .send(Message::text(r#"{"t":"res","id":1,"ok":null}"#))
            .await;
        agent_close_code(&mut ws).await
    })
    .await;
    assert_eq!((code, err.code()), (Some(4000), codes::PROTOCOL_ERROR));

    // A hello whose nonce is not 64 hex digits.
    let (code, err) = agent_failure(|mut ws: Ws| async move {
        let _ = ws
            .send(Message::text(
                r#"{"t":"hello","v":1,"nonce":"xyz","sign":false}"#,
            ))
            .await;
        agent_close_code(&mut ws).await
    })
    .await;
    assert_eq!((code, err.code()), (Some(4000), codes::PROTOCOL_ERROR));

    // Not JSON at all.
    let (code, err) = agent_failure(|mut ws: Ws| async move {
        let _ = ws.send(Message::text("hello?")).await;
        agent_close_code(&mut ws).await
    })
    .await;
    assert_eq!((code, err.code()), (Some(4000), codes::PROTOCOL_ERROR));

    // Another protocol version.
    let (code, err) = agent_failure(|mut ws: Ws| async move {
        let hello = ServerHandshake::new(false).hello();
        let text = codec::encode(&hello).replace(r#""v":1"#, r#""v":2"#);
        let _ = ws.send(Message::text(text)).await;
        agent_close_code(&mut ws).await
    })
    .await;
    assert_eq!((code, err.code()), (Some(4008), codes::UNSUPPORTED_VERSION));

    // A genuine hello, then a welcome whose token is malformed (its proof is
    // right, so only the token is wrong).
    let (code, err) = agent_failure(|mut ws: Ws| async move {
        let hs = ServerHandshake::new(false);
        let _ = ws.send(Message::text(codec::encode(&hs.hello()))).await;
        let Ok(Frame::Auth(auth)) = transport::recv_frame(&mut ws).await else {
            return None;
        };
        let secret = Secret::from(SECRET);
        let verified = hs.verify_auth(&secret, auth).ok()?;
        let (welcome, _) = hs.welcome(&secret, &verified, "A0001", true, None, LIMITS);
        let Frame::Welcome(mut w) = welcome else {
            return None;
        };
        w.token = Some("not hex".into());
        let _ = ws
            .send(Message::text(codec::encode(&Frame::Welcome(w))))
            .await;
        agent_close_code(&mut ws).await
    })
    .await;
    assert_eq!((code, err.code()), (Some(4000), codes::PROTOCOL_ERROR));

    // A genuine hello, then a frame that is neither welcome nor reject.
    let (code, err) = agent_failure(|mut ws: Ws| async move {
        let hs = ServerHandshake::new(false);
        let _ = ws.send(Message::text(codec::encode(&hs.hello()))).await;
        let _ = transport::recv_frame(&mut ws).await;
        let _ = ws.send(Message::text(codec::encode(&hs.hello()))).await;
        agent_close_code(&mut ws).await
    })
    .await;
    assert_eq!((code, err.code()), (Some(4000), codes::PROTOCOL_ERROR));

    // A welcome whose proof fails.
    let (code, err) = agent_failure(|mut ws: Ws| async move {
        let hs = ServerHandshake::new(false);
        let _ = ws.send(Message::text(codec::encode(&hs.hello()))).await;
        let Ok(Frame::Auth(auth)) = transport::recv_frame(&mut ws).await else {
            return None;
        };
        let impostor = Secret::from("not the secret");
        let verified = hs.verify_auth(&Secret::from(SECRET), auth).ok()?;
        let (welcome, _) = hs.welcome(&impostor, &verified, "A0001", true, None, LIMITS);
        let _ = ws.send(Message::text(codec::encode(&welcome))).await;
        agent_close_code(&mut ws).await
    })
    .await;
    assert_eq!((code, err.code()), (Some(4001), codes::SERVER_UNVERIFIED));
}

// ------------------------------------------ 5.3: token over first_time

/// Runs a handshake in memory: the agent with `identity` against a server
/// answering `name` with `first_time` and `token`.
fn welcome_with(identity: Identity, name: &str, first_time: bool, token: Option<&Key>) -> Identity {
    let secret = Secret::from(SECRET);
    let server = ServerHandshake::new(false);
    let mut client = ClientHandshake::new(identity, Map::new());
    let Frame::Auth(auth) = client.on_hello(&secret, server.hello()).unwrap() else {
        panic!("not auth")
    };
    let verified = server.verify_auth(&secret, auth).unwrap();
    let (welcome, _) = server.welcome(&secret, &verified, name, first_time, token, LIMITS);
    let Frame::Welcome(Welcome { .. }) = &welcome else {
        panic!("not welcome")
    };
    client.on_answer(&secret, welcome).unwrap().identity
}

#[test]
fn the_agent_decides_by_the_token_not_by_first_time() {
    let key = Key::random();
    let held = crypto::name_token(&key, "A0007");
    let given = crypto::name_token(&key, "A0008");
    let holding = Identity {
        name: Some("A0007".into()),
        token: Some(held.clone()),
        bind: None,
    };
    // A token with first_time false is stored all the same.
    let id = welcome_with(Identity::default(), "A0008", false, Some(&given));
    assert_eq!(id.token, Some(given.clone()));
    // No token with first_time true keeps the token held for that name.
    let id = welcome_with(holding.clone(), "A0007", true, None);
    assert_eq!(id.token, Some(held.clone()));
    // ... but not for another name.
    let id = welcome_with(holding, "A0008", true, None);
    assert_eq!((id.name.as_deref(), id.token), (Some("A0008"), None));
}

// -------------------------------------------- 5.2: claim without a name

#[tokio::test]
async fn a_claim_without_a_name_is_ignored_and_a_fresh_name_assigned() {
    let server = start_server().await;
    let (first, _) = connect_plain(&server).await;
    let taken = first.name().unwrap();

    let secret = Secret::from(SECRET);
    let mut ws = raw_connect(&server).await;
    let Frame::Hello(hello) = within(transport::recv_frame(&mut ws)).await.unwrap() else {
        panic!("not hello")
    };
    let nonce_s = crypto::decode_hex32(&hello.nonce).unwrap();
    let nonce_c = crypto::random_bytes();
    let proof = crypto::client_proof_input(&secret, &nonce_s, &nonce_c, "").finish();
    let auth = Frame::Auth(Auth {
        nonce: hex(&nonce_c),
        name: None,
        // A well-formed claim, as if for the name the first agent holds.
        claim: Some(hex(&crypto::random_bytes())),
        bind: None,
        meta: Map::new(),
        labels: Map::new(),
        proof: hex(&proof),
        caps: Vec::new(),
    });
    within(transport::send_frame(&mut ws, &auth)).await.unwrap();
    let Frame::Welcome(welcome) = within(transport::recv_frame(&mut ws)).await.unwrap() else {
        panic!("a claim without a name must not be refused")
    };
    assert!(welcome.first_time);
    assert!(welcome.token.is_some());
    assert_ne!(welcome.name, taken);
    let format: NameFormat = "A####".parse().unwrap();
    assert!(
        format.parse_name(&welcome.name).is_some(),
        "{}",
        welcome.name
    );
    server.shutdown().await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------- action names

#[tokio::test]
async fn action_names_are_checked_on_both_sides_and_the_link_stays_up() {
    let server = start_server().await;
    server.on_hook("ping", |_: Value, _| async { Ok::<_, HookError>("pong") });
    let (client, _) = connect_plain(&server).await;
    for bad in ["", "has space", "tab\there", "é", &"x".repeat(129)] {
        let err = within(client.send::<_, Value>(bad, &json!(null)))
            .await
            .expect_err("an invalid action is refused locally");
        assert_eq!(err.code(), codes::INVALID_MESSAGE, "{bad:?}: {err}");
    }
    let pong: String = within(client.send("ping", &())).await.unwrap();
    assert_eq!(pong, "pong");

    // A peer that sends one anyway gets INVALID_MESSAGE for that request.
    let (mut ws, _) = raw_agent(&server).await;
    send_json(
        &mut ws,
        &json!({"t":"req","id":1,"action":"two words","body":null,"timeout_ms":1000}),
    )
    .await;
    let res = recv_json(&mut ws).await;
    assert_eq!(res["id"], 1);
    assert_eq!(res["err"]["code"], codes::INVALID_MESSAGE, "{res}");
    send_json(
        &mut ws,
        &json!({"t":"req","id":2,"action":"ping","body":null,"timeout_ms":1000}),
    )
    .await;
    let res = recv_json(&mut ws).await;
    let frame = codec::decode(&res.to_string()).unwrap();
    assert!(
        matches!(frame, Frame::Res(ref r) if r.id == 2 && matches!(&r.outcome, Outcome::Ok(b) if b.get() == r#""pong""#)),
        "{res}"
    );
    server.shutdown().await;
}
