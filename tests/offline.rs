//! Issue 2, item 7: client offline semantics. A `send` issued while the
//! handshake is pending waits for it and succeeds; a `send` on a client whose
//! link is down fails at once with `OFFLINE`.

mod common;

use agent_tunnel::client::{AgentClient, Backoff, ClientEvent};
use agent_tunnel::{codes, HookError};
use common::*;
use futures_util::poll;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_during_the_handshake_waits_for_it_and_succeeds() {
    let server = start_server().await;
    server.on_hook("echo", |v: Value, _| async move { Ok::<_, HookError>(v) });

    // A gate in front of the server: the client's TCP connection is held
    // there, so its handshake cannot finish until the test lets it through.
    let gate = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = AgentClient::builder(&format!("ws://{}", gate.local_addr().unwrap()), SECRET)
        .ping_interval(None)
        .reconnect(Backoff::disabled());
    let client = client.start().await.unwrap();
    let (held, _) = within(gate.accept()).await.unwrap();
    assert!(!client.is_ready());

    // Issued now, the call neither fails nor completes: it waits.
    let mut call = Box::pin(client.send_timeout::<_, Value>("echo", &"hi", LONG));
    assert!(poll!(&mut call).is_pending());

    // Let the connection through to the real server.
    let mut upstream = TcpStream::connect(server.local_addr()).await.unwrap();
    tokio::spawn(async move {
        let mut held = held;
        let _ = tokio::io::copy_bidirectional(&mut held, &mut upstream).await;
    });
    let echoed = within(call).await.expect("the waiting call goes through");
    assert_eq!(echoed, Value::from("hi"));
    assert!(client.is_ready());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_while_the_link_is_down_fails_at_once_with_offline() {
    let server = start_server().await;
    server.on_hook("echo", |v: Value, _| async move { Ok::<_, HookError>(v) });
    let client = connect(
        &server,
        client_builder(&server).reconnect(Backoff::disabled()),
    )
    .await;
    let name = client.name().unwrap();
    let mut events = client.events();
    let v: Value = within(client.send("echo", &1)).await.unwrap();
    assert_eq!(v, Value::from(1));

    server.disconnect(&name, "bye").unwrap();
    wait_for(&mut events, |e| {
        matches!(e, ClientEvent::Disconnected(_)).then_some(())
    })
    .await;

    // A 60 s call timeout, answered well within the test's bound.
    let err = within(client.send_timeout::<_, Value>("echo", &2, LONG))
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::OFFLINE, "{err}");
    assert!(!client.is_ready());

    // Likewise once the client is closed.
    within(client.close()).await;
    let err = within(client.send_timeout::<_, Value>("echo", &3, LONG))
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::OFFLINE, "{err}");
}
