//! Issue 8, the agent side: an agent recovers from a server that lost its
//! store (items 11), gives up only on refusals it can trust (item 13), and
//! checks its builder (items 14, 18).
//!
//! The fake servers here are raw WebSocket listeners that speak the
//! subprotocol and send what a forger on the path could send: a `hello` with
//! another version, a `reject` without (or with a wrong) proof, a close 4007
//! before or after `welcome`. An agent started with `start()` must keep
//! coming back to them; each test counts the fake server's accepted
//! connections, so a client that gave up would never reach the count.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use agent_tunnel::client::{AgentClient, Backoff, ClientBuilder, ClientEvent};
use agent_tunnel::protocol::codec;
use agent_tunnel::protocol::crypto::Key;
use agent_tunnel::protocol::frame::{Frame, Limits};
use agent_tunnel::protocol::handshake::{Identity, ServerHandshake};
use agent_tunnel::protocol::{close, transport, Secret, SUBPROTOCOL};
use agent_tunnel::server::AgentServer;
use agent_tunnel::{codes, HookError, MemoryStore, NameStore};
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Quick retries, so a test sees several attempts at once.
fn fast() -> Backoff {
    Backoff::default()
        .initial_delay(Duration::from_millis(10))
        .max_delay(Duration::from_millis(50))
}

fn agent(url: &str) -> ClientBuilder {
    AgentClient::builder(url, SECRET)
        .no_heartbeat()
        .reconnect(fast())
        .on_hook("echo", |v: Value, _| async move { Ok::<_, HookError>(v) })
}

fn whoami(server: &AgentServer) {
    server.on_hook("whoami", |_: Value, call| async move {
        Ok::<_, HookError>(call.peer.name().to_owned())
    });
}

/// Every event received so far, without waiting.
fn drain(rx: &mut broadcast::Receiver<ClientEvent>) -> Vec<ClientEvent> {
    let mut seen = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(e) => seen.push(e),
            Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
            Err(_) => return seen,
        }
    }
}

fn assert_never_gave_up(events: &[ClientEvent]) {
    for e in events {
        assert!(
            !matches!(e, ClientEvent::GaveUp(_)),
            "the agent gave up: {events:?}"
        );
    }
}

/// A store holding the identity `name` + `token`, in the client's document
/// format.
async fn store_with(name: &str, token: Option<&Key>) -> Arc<MemoryStore> {
    let store = Arc::new(MemoryStore::new());
    let doc = json!({
        "version": 1,
        "name": name,
        "token": token.map(Key::to_hex),
    });
    store.save(&doc).await.unwrap();
    store
}

async fn stored(store: &MemoryStore) -> Value {
    store
        .load()
        .await
        .unwrap()
        .expect("the store holds a document")
}

// ------------------------------------------------------------ fake servers

type Ws = WebSocketStream<TcpStream>;

/// A fake server on 127.0.0.1:0: upgrades every connection with the
/// subprotocol, reports it on `accepted`, and runs `script` on it.
struct Fake {
    addr: SocketAddr,
    accepted: mpsc::UnboundedReceiver<()>,
}

impl Fake {
    async fn start<F, Fut>(script: F) -> Fake
    where
        F: Fn(Ws) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, accepted) = mpsc::unbounded_channel();
        let script = Arc::new(script);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, negotiate).await else {
                    continue;
                };
                let _ = tx.send(());
                tokio::spawn(script(ws));
            }
        });
        Fake { addr, accepted }
    }

    fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Waits until `n` more connections were accepted.
    async fn accepts(&mut self, n: usize) {
        for _ in 0..n {
            within(self.accepted.recv())
                .await
                .expect("the fake server runs");
        }
    }
}

/// Accepts the upgrade with the agent-tunnel subprotocol, as a real server
/// does (the error type is tungstenite's).
#[allow(clippy::result_large_err)]
fn negotiate(_: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    resp.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    Ok(resp)
}

async fn send_text(ws: &mut Ws, text: String) {
    let _ = ws.send(Message::text(text)).await;
}

/// Reads until the agent closes or goes away.
async fn drain_ws(mut ws: Ws) {
    while let Some(Ok(_)) = ws.next().await {}
}

/// A genuine `hello`, then reads the agent's `auth`.
async fn hello_and_auth(ws: &mut Ws) -> (ServerHandshake, Option<Frame>) {
    let hs = ServerHandshake::new(false);
    send_text(ws, codec::encode(&hs.hello())).await;
    let auth = transport::recv_frame(ws).await.ok();
    (hs, auth)
}

/// Runs an agent from `start()` against `fake` until the fake server saw
/// three connections, and returns the agent's events so far.
async fn keeps_coming_back(fake: &mut Fake) -> Vec<ClientEvent> {
    let builder = agent(&fake.url());
    let mut events = builder.events();
    let client = within(builder.start())
        .await
        .expect("start returns at once");
    fake.accepts(3).await;
    let seen = drain(&mut events);
    assert_never_gave_up(&seen);
    assert!(!client.is_ready());
    client.close().await;
    seen
}

fn error_codes(events: &[ClientEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Error(e) => Some(e.code().to_owned()),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------- item 13: forged refusals

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_hello_with_another_version_does_not_end_the_agent() {
    let mut fake = Fake::start(|mut ws| async move {
        let hello = json!({"t": "hello", "v": 2, "nonce": "ab".repeat(32), "sign": false});
        send_text(&mut ws, hello.to_string()).await;
        drain_ws(ws).await;
    })
    .await;
    let seen = keeps_coming_back(&mut fake).await;
    assert!(
        error_codes(&seen).contains(&codes::UNSUPPORTED_VERSION.to_owned()),
        "{seen:?}"
    );
    // connect() still reports the first attempt's failure at once.
    let err = within(agent(&fake.url()).connect()).await.unwrap_err();
    assert_eq!(err.code(), codes::UNSUPPORTED_VERSION, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reject_without_a_valid_proof_does_not_end_the_agent() {
    for proof in [None, Some("00".repeat(32)), Some("not hex".to_owned())] {
        let mut fake = Fake::start(move |mut ws| {
            let proof = proof.clone();
            async move {
                let _ = hello_and_auth(&mut ws).await;
                let mut reject = json!({"t": "reject", "code": "REVOKED", "message": "forged"});
                if let Some(p) = proof {
                    reject["proof"] = json!(p);
                }
                send_text(&mut ws, reject.to_string()).await;
                transport::close(&mut ws, close::REVOKED, "forged", Duration::from_secs(2)).await;
            }
        })
        .await;
        let seen = keeps_coming_back(&mut fake).await;
        assert!(
            error_codes(&seen)
                .iter()
                .filter(|c| *c == codes::REVOKED)
                .count()
                >= 2,
            "{seen:?}"
        );
        let err = within(agent(&fake.url()).connect()).await.unwrap_err();
        assert_eq!(err.code(), codes::REVOKED, "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_reject_of_any_final_looking_code_does_not_end_the_agent() {
    for code in [codes::WRONG_SECRET, codes::NAME_TAKEN, codes::INVALID_NAME] {
        let mut fake = Fake::start(move |mut ws| async move {
            let _ = hello_and_auth(&mut ws).await;
            let reject = json!({"t": "reject", "code": code, "message": "forged"});
            send_text(&mut ws, reject.to_string()).await;
            transport::close(
                &mut ws,
                close::NAME_REFUSED,
                "forged",
                Duration::from_secs(2),
            )
            .await;
        })
        .await;
        let store = store_with("A0042", Some(&Key::random())).await;
        let builder = agent(&fake.url()).store_arc(store.clone());
        let mut events = builder.events();
        let client = within(builder.start()).await.unwrap();
        fake.accepts(3).await;
        let seen = drain(&mut events);
        assert_never_gave_up(&seen);
        assert!(
            !seen
                .iter()
                .any(|e| matches!(e, ClientEvent::Renamed { .. })),
            "{code}: {seen:?}"
        );
        client.close().await;
        // A forged name refusal does not make the agent drop its name.
        let doc = stored(&store).await;
        assert_eq!(doc["name"], "A0042", "{code}: {doc}");
        assert!(doc["token"].is_string(), "{code}: {doc}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_4007_before_welcome_does_not_end_the_agent() {
    let mut fake = Fake::start(|mut ws| async move {
        let _ = hello_and_auth(&mut ws).await;
        transport::close(&mut ws, close::REVOKED, "forged", Duration::from_secs(2)).await;
    })
    .await;
    keeps_coming_back(&mut fake).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_welcome_whose_proof_fails_does_not_end_the_agent() {
    let mut fake = Fake::start(|mut ws| async move {
        let _ = hello_and_auth(&mut ws).await;
        let welcome = json!({
            "t": "welcome", "name": "A0001", "first_time": true, "proof": "00".repeat(32),
            "limits": {"max_message_bytes": 1 << 20, "max_in_flight": 8, "ping_interval_ms": 0},
        });
        send_text(&mut ws, welcome.to_string()).await;
        drain_ws(ws).await;
    })
    .await;
    let seen = keeps_coming_back(&mut fake).await;
    assert!(
        error_codes(&seen).contains(&codes::SERVER_UNVERIFIED.to_owned()),
        "{seen:?}"
    );
}

/// A close frame is not authenticated without TLS, even on a link whose
/// `welcome` proved the secret: a 4007 makes the agent come back and ask,
/// rather than give up on the word of whoever sent the frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_4007_after_welcome_over_ws_makes_the_agent_check_again() {
    let mut fake = Fake::start(|mut ws| async move {
        let (hs, auth) = hello_and_auth(&mut ws).await;
        let Some(Frame::Auth(auth)) = auth else {
            return;
        };
        let Ok(verified) = hs.verify_auth(&Secret::from(SECRET), auth) else {
            return;
        };
        let limits = Limits {
            max_message_bytes: 1 << 20,
            max_in_flight: 8,
            ping_interval_ms: 0,
        };
        let token = Key::random();
        let (welcome, _) = hs.welcome(
            &Secret::from(SECRET),
            &verified,
            "A0001",
            true,
            Some(&token),
            limits,
        );
        send_text(&mut ws, codec::encode(&welcome)).await;
        transport::close(&mut ws, close::REVOKED, "forged", Duration::from_secs(2)).await;
    })
    .await;
    let builder = agent(&fake.url());
    let mut events = builder.events();
    let client = within(builder.start()).await.unwrap();
    fake.accepts(3).await;
    let seen = drain(&mut events);
    assert_never_gave_up(&seen);
    let revoked_closes = seen
        .iter()
        .filter(|e| matches!(e, ClientEvent::Disconnected(r) if r.code == close::REVOKED))
        .count();
    assert!(revoked_closes >= 2, "{seen:?}");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_genuine_revocation_still_makes_the_agent_give_up() {
    let server = start_server().await;
    let store = Arc::new(MemoryStore::new());
    let builder = agent(&url(&server)).store_arc(store.clone());
    let mut events = builder.events();
    let client = within(builder.start()).await.unwrap();
    within(client.wait_ready(LIMIT)).await.unwrap();
    let name = client.name().unwrap();
    within(server.revoke(&name, "decommissioned"))
        .await
        .unwrap();
    // Closed with 4007, the agent checks once more and the server's proven
    // reject ends it.
    let mut after_close = Vec::new();
    let mut closed = false;
    let why = wait_for(&mut events, |e| {
        match &e {
            ClientEvent::Disconnected(r) if r.code == close::REVOKED => closed = true,
            ClientEvent::GaveUp(err) => return Some(err.clone()),
            _ if closed => after_close.push(e.clone()),
            _ => {}
        }
        None
    })
    .await;
    assert_eq!(why.code(), codes::REVOKED, "{why}");
    assert!(
        matches!(after_close.first(), Some(ClientEvent::Connected)),
        "{after_close:?}"
    );
    assert_eq!(
        client.send::<_, Value>("x", &()).await.unwrap_err().code(),
        codes::OFFLINE
    );

    // An agent that starts with the revoked identity gives up at its first
    // handshake, on the proven reject.
    let builder = agent(&url(&server)).store_arc(store);
    let mut events = builder.events();
    let _again = within(builder.start()).await.unwrap();
    let why = wait_for(&mut events, |e| match e {
        ClientEvent::GaveUp(err) => Some(err),
        _ => None,
    })
    .await;
    assert_eq!(why.code(), codes::REVOKED, "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_over_ws_is_retried_but_connect_reports_it_at_once() {
    let server = start_server().await;
    let mut events = server.handshake_failures();
    let err = within(
        AgentClient::builder(&url(&server), "not the secret")
            .no_heartbeat()
            .connect(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), codes::WRONG_SECRET, "{err}");

    let builder = AgentClient::builder(&url(&server), "not the secret")
        .no_heartbeat()
        .reconnect(fast());
    let mut client_events = builder.events();
    let client = within(builder.start()).await.unwrap();
    // Three refused handshakes on the server's side (the connect() above
    // was one).
    let mut refused = 0;
    wait_for(&mut events, |e| {
        if e.code == codes::WRONG_SECRET {
            refused += 1;
        }
        (refused == 4).then_some(())
    })
    .await;
    assert_never_gave_up(&drain(&mut client_events));
    client.close().await;
}

// --------------------------------- item 11: a server that lost its store

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_agent_takes_a_fresh_name_after_the_server_restarts_on_an_empty_store() {
    let s1 = start_server().await;
    let addr = s1.local_addr();
    let url = format!("ws://{addr}");
    let mut agents = Vec::new();
    for _ in 0..4 {
        let store = Arc::new(MemoryStore::new());
        let builder = agent(&url).store_arc(store.clone());
        let events = builder.events();
        let client = connect(&s1, builder).await;
        let name = client.name().unwrap();
        let token = stored(&store).await["token"].clone();
        agents.push((client, events, name, token, store));
    }
    // An agent with a name of its own choosing.
    let chosen_store = Arc::new(MemoryStore::new());
    let builder = agent(&url).name("web-1").store_arc(chosen_store.clone());
    let mut chosen_events = builder.events();
    let chosen = connect(&s1, builder).await;
    let chosen_token = stored(&chosen_store).await["token"].clone();

    // The server restarts on the same port with a new, empty MemoryStore:
    // a new key, a counter back at 1, no agent known.
    within(s1.shutdown()).await;
    let s2 = within(server_builder().start(addr))
        .await
        .expect("the port is free again once shutdown returned");
    whoami(&s2);

    let mut new_names = Vec::new();
    for (client, events, old, old_token, store) in &mut agents {
        let (was, now) = wait_for(events, |e| match e {
            ClientEvent::Renamed { old, new } => Some((old, new)),
            ClientEvent::GaveUp(err) => panic!("gave up: {err}"),
            _ => None,
        })
        .await;
        assert_eq!(&was, old);
        let first_time = wait_for(events, |e| match e {
            ClientEvent::Ready { name, first_time } if name == now => Some(first_time),
            ClientEvent::GaveUp(err) => panic!("gave up: {err}"),
            _ => None,
        })
        .await;
        assert!(first_time, "the new name is new to the new server");
        within(client.wait_ready(LIMIT)).await.unwrap();
        assert_eq!(client.name().as_deref(), Some(now.as_str()));
        // The new identity is in the agent's store, with a new token.
        let doc = stored(store).await;
        assert_eq!(doc["name"], json!(now), "{doc}");
        assert!(
            doc["token"].is_string() && doc["token"] != *old_token,
            "{doc}"
        );
        new_names.push(now);
    }
    let mut distinct = new_names.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), new_names.len(), "{new_names:?}");

    // The chosen name is new to the new server, which grants it again under
    // a fresh token.
    wait_for(&mut chosen_events, |e| match e {
        ClientEvent::Disconnected(_) => Some(()),
        _ => None,
    })
    .await;
    wait_for(&mut chosen_events, |e| match e {
        ClientEvent::Ready { name, first_time } if name == "web-1" => {
            assert!(first_time);
            Some(())
        }
        ClientEvent::Ready { name, .. } if name != "web-1" => panic!("renamed to {name}"),
        ClientEvent::GaveUp(err) => panic!("gave up: {err}"),
        _ => None,
    })
    .await;
    assert_ne!(stored(&chosen_store).await["token"], chosen_token);

    // Calls work both ways under the new names, and nobody gave up.
    for ((client, events, ..), name) in agents.iter_mut().zip(&new_names) {
        let me: String = within(client.send("whoami", &())).await.unwrap();
        assert_eq!(&me, name);
        let v: Value = within(s2.send_to(name.as_str(), "echo", &json!({"n": name})))
            .await
            .unwrap();
        assert_eq!(v, json!({"n": name}));
        assert_never_gave_up(&drain(events));
    }
    let me: String = within(chosen.send("whoami", &())).await.unwrap();
    assert_eq!(me, "web-1");
    assert_never_gave_up(&drain(&mut chosen_events));
    s2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_with_a_stored_name_the_server_never_gave_renames_instead_of_failing() {
    let server = start_server().await;
    let old_token = Key::random();
    let store = store_with("A0007", Some(&old_token)).await;
    let builder = agent(&url(&server)).store_arc(store.clone());
    let mut events = builder.events();
    let client = within(builder.connect())
        .await
        .expect("a stale identity is replaced, not a failure");
    assert_eq!(client.name().as_deref(), Some("A0001"));
    let seen = drain(&mut events);
    let renamed = seen.iter().find_map(|e| match e {
        ClientEvent::Renamed { old, new } => Some((old.clone(), new.clone())),
        _ => None,
    });
    assert_eq!(renamed, Some(("A0007".into(), "A0001".into())), "{seen:?}");
    let doc = stored(&store).await;
    assert_eq!(doc["name"], "A0001");
    assert_ne!(doc["token"], json!(old_token.to_hex()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chosen_name_another_agent_holds_is_final() {
    let server = start_server().await;
    let _holder = connect(&server, agent(&url(&server)).name("web-1")).await;
    // This agent holds a token the server does not know for the same name:
    // it drops the token, asks once more without it, and gives up.
    let store = store_with("web-1", Some(&Key::random())).await;
    let builder = agent(&url(&server)).name("web-1").store_arc(store.clone());
    let mut events = builder.events();
    let _client = within(builder.start()).await.unwrap();
    let why = wait_for(&mut events, |e| match e {
        ClientEvent::GaveUp(err) => Some(err),
        ClientEvent::Ready { name, .. } => panic!("ready as {name}"),
        _ => None,
    })
    .await;
    assert_eq!(why.code(), codes::NAME_TAKEN, "{why}");
    let doc = stored(&store).await;
    assert_eq!(doc["name"], "web-1", "{doc}");
    assert!(
        doc["token"].is_null(),
        "the stale token stays dropped: {doc}"
    );

    // connect() reports it at once.
    let err = within(agent(&url(&server)).name("web-1").connect())
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::NAME_TAKEN, "{err}");
}

// ------------------------------------------- items 14, 18: the builder

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_client_settings_fail_with_config_at_connect_and_start() {
    let server = start_server().await;
    let u = url(&server);
    let bad: Vec<(&str, ClientBuilder)> = vec![
        (
            "zero ping interval",
            agent(&u).ping_interval(Some(Duration::ZERO)),
        ),
        (
            "factor below 1",
            agent(&u).reconnect(Backoff::default().factor(0.5)),
        ),
        (
            "factor NaN",
            agent(&u).reconnect(Backoff::default().factor(f64::NAN)),
        ),
        (
            "max_delay below initial_delay",
            agent(&u).reconnect(
                Backoff::default()
                    .initial_delay(Duration::from_secs(2))
                    .max_delay(Duration::from_secs(1)),
            ),
        ),
        (
            "zero handshake timeout",
            agent(&u).handshake_timeout(Duration::ZERO),
        ),
        (
            "zero call timeout",
            agent(&u).default_timeout(Duration::ZERO),
        ),
        ("no trust anchor", {
            AgentClient::builder(&u.replacen("ws://", "wss://", 1), SECRET).tls_web_roots(false)
        }),
    ];
    for (what, builder) in bad {
        let err = within(builder.connect()).await.unwrap_err();
        assert_eq!(err.code(), codes::CONFIG, "{what}: {err}");
    }
    let err = within(agent(&u).ping_interval(Some(Duration::ZERO)).start())
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::CONFIG, "{err}");
    assert!(server.agents().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_max_timeouts_work() {
    let server = start_server().await;
    whoami(&server);
    let client = connect(
        &server,
        agent(&url(&server))
            .handshake_timeout(Duration::MAX)
            .default_timeout(Duration::MAX)
            .reconnect(
                Backoff::default()
                    .initial_delay(Duration::from_millis(1))
                    .max_delay(Duration::MAX)
                    .healthy_after(Duration::MAX),
            ),
    )
    .await;
    let name = client.name().unwrap();
    let me: String = within(client.send("whoami", &())).await.unwrap();
    assert_eq!(me, name);
    let me: String = within(client.send_timeout("whoami", &(), Duration::MAX))
        .await
        .unwrap();
    assert_eq!(me, name);
    // And the reconnect path, with its deadlines and delays, after a kick.
    let mut events = client.events();
    server.disconnect(&name, "kick").unwrap();
    let back = wait_for(&mut events, |e| match e {
        ClientEvent::Reconnected { name } => Some(name),
        _ => None,
    })
    .await;
    assert_eq!(back, name);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_all_added_on_a_running_client_serves_every_action() {
    let server = start_server().await;
    let (client, name) = connect_plain(&server).await;
    client.on_any(|body: Value, call| async move {
        Ok::<_, HookError>(json!({"action": &*call.action, "body": body}))
    });
    let v: Value = within(server.send_to(name.as_str(), "anything", &json!(7)))
        .await
        .unwrap();
    assert_eq!(v, json!({"action": "anything", "body": 7}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_heartbeat_turns_the_servers_pings_off_and_backoff_reads_as_numbers() {
    // The server announces its interval in welcome: 0 is no pings.
    let server = start(AgentServer::builder().secret(SECRET).no_heartbeat()).await;
    let mut ws = raw_connect(&server).await;
    let est = raw_handshake(&mut ws, SECRET, Identity::default())
        .await
        .unwrap();
    assert_eq!(est.limits.ping_interval_ms, 0);
    let pinging = start(AgentServer::builder().secret(SECRET)).await;
    let mut ws = raw_connect(&pinging).await;
    let est = raw_handshake(&mut ws, SECRET, Identity::default())
        .await
        .unwrap();
    assert_eq!(est.limits.ping_interval_ms, 5_000);

    // `max_retries(n)` takes a number: two failed retries, then GaveUp.
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = gone.local_addr().unwrap();
    drop(gone);
    let builder = AgentClient::builder(&format!("ws://{addr}"), SECRET)
        .no_heartbeat()
        .reconnect(fast().max_retries(2));
    let mut events = builder.events();
    let _client = within(builder.start()).await.unwrap();
    let mut errors = 0;
    let why = wait_for(&mut events, |e| match e {
        ClientEvent::Error(_) => {
            errors += 1;
            None
        }
        ClientEvent::GaveUp(err) => Some(err),
        _ => None,
    })
    .await;
    assert_eq!(errors, 3, "the first attempt and two retries");
    assert_eq!(why.code(), codes::TRANSPORT, "{why}");
}

/// What the server sends: a proof on every refusal after the agent's proof
/// verified, none before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_proves_its_refusals_once_the_agents_proof_verified() {
    use agent_tunnel::protocol::handshake::ClientHandshake;

    let server = start_server().await;
    let (_owner, name) = connect_plain(&server).await;
    for (secret, ask, code, proven) in [
        (SECRET, Some(name.as_str()), codes::NAME_TAKEN, true),
        (SECRET, Some("A0999"), codes::INVALID_NAME, true),
        ("not the secret", None, codes::WRONG_SECRET, false),
    ] {
        let mut ws = raw_connect(&server).await;
        let ask_for = Identity {
            name: ask.map(str::to_owned),
            ..Identity::default()
        };
        let mut hs = ClientHandshake::new(ask_for, serde_json::Map::new());
        let secret = Secret::from(secret);
        let hello = within(transport::recv_frame(&mut ws)).await.unwrap();
        let auth = hs.on_hello(&secret, hello).unwrap();
        within(transport::send_frame(&mut ws, &auth)).await.unwrap();
        let Frame::Reject(reject) = within(transport::recv_frame(&mut ws)).await.unwrap() else {
            panic!("{code}: expected a reject")
        };
        assert_eq!(reject.code, code);
        assert_eq!(reject.proof.is_some(), proven, "{code}: {reject:?}");
        assert_eq!(hs.reject_is_proven(&secret, &reject), proven, "{code}");
    }
}
