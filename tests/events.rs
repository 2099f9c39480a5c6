//! Issue 2, item 6: events and the `Agent` handle. Server `AgentConnected` /
//! `AgentDisconnected` with the reason; client `Connected`, `Ready`,
//! `Disconnected`, `Error`; the handle's fields, typed user data, `send`,
//! `disconnect`; `server.agents()`.

mod common;

use std::net::IpAddr;
use std::time::SystemTime;

use agent_tunnel::client::{AgentClient, Backoff, ClientEvent};
use agent_tunnel::protocol::close;
use agent_tunnel::server::{Agent, ServerEvent};
use agent_tunnel::{codes, HookError};
use common::*;
use serde_json::{json, Value};

fn connected(e: ServerEvent) -> Option<Agent> {
    match e {
        ServerEvent::AgentConnected(a) => Some(a),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_reports_connects_and_disconnects_with_the_reason() {
    let server = start_server().await;
    let mut events = server.events();

    // No reconnecting, so the agent stays gone once disconnected.
    let client = connect(
        &server,
        client_builder(&server).reconnect(Backoff::disabled()),
    )
    .await;
    let name = client.name().unwrap();
    let agent = wait_for(&mut events, connected).await;
    assert_eq!(agent.name(), name);

    server.disconnect(&name, "maintenance window").unwrap();
    let (gone, reason) = wait_for(&mut events, |e| match e {
        ServerEvent::AgentDisconnected(a, r) => Some((a, r)),
        _ => None,
    })
    .await;
    assert_eq!(gone.name(), name);
    assert_eq!(reason.code, close::FORCED_DISCONNECT);
    assert_eq!(reason.reason, "maintenance window");
    drop(client);

    // An agent that leaves on its own closes normally.
    let (client, name) = connect_plain(&server).await;
    let agent = wait_for(&mut events, connected).await;
    assert_eq!(agent.name(), name);
    within(client.close()).await;
    let (gone, reason) = wait_for(&mut events, |e| match e {
        ServerEvent::AgentDisconnected(a, r) => Some((a, r)),
        _ => None,
    })
    .await;
    assert_eq!(gone.name(), name);
    assert_eq!(reason.code, close::NORMAL);
}

/// Collects client events up to and including the first `pick` accepts.
async fn events_until(
    rx: &mut tokio::sync::broadcast::Receiver<ClientEvent>,
    pick: impl Fn(&ClientEvent) -> bool,
) -> Vec<ClientEvent> {
    let mut seen = Vec::new();
    wait_for(rx, |e| {
        let done = pick(&e);
        seen.push(e);
        done.then_some(())
    })
    .await;
    seen
}

// The current-thread runtime runs the client's connection task only once the
// test yields, so subscribing right after `start()` misses no event.
#[tokio::test(flavor = "current_thread")]
async fn the_client_reports_connected_ready_and_disconnected() {
    let server = start_server().await;
    let mut server_events = server.events();
    let client = client_builder(&server)
        .reconnect(Backoff::disabled())
        .start()
        .await
        .unwrap();
    let mut events = client.events();

    let seen = events_until(&mut events, |e| matches!(e, ClientEvent::Ready { .. })).await;
    assert!(
        matches!(
            seen.as_slice(),
            [ClientEvent::Connected, ClientEvent::Ready { name, first_time: true }] if name == "A0001"
        ),
        "{seen:?}"
    );
    assert_eq!(client.name().as_deref(), Some("A0001"));

    // The server lists the agent once it reported it connected.
    wait_for(&mut server_events, connected).await;
    server.disconnect("A0001", "go away").unwrap();
    let reason = wait_for(&mut events, |e| match e {
        ClientEvent::Disconnected(r) => Some(r),
        _ => None,
    })
    .await;
    assert_eq!(reason.code, close::FORCED_DISCONNECT);
    assert_eq!(reason.reason, "go away");
    assert!(!client.is_ready());
}

#[tokio::test(flavor = "current_thread")]
async fn the_client_reports_an_error_for_a_refused_handshake() {
    let server = start_server().await;
    let client = AgentClient::builder(&url(&server), "wrong secret")
        .reconnect(Backoff::disabled())
        .start()
        .await
        .unwrap();
    let mut events = client.events();

    let seen = events_until(&mut events, |e| matches!(e, ClientEvent::Error(_))).await;
    match seen.as_slice() {
        [ClientEvent::Connected, ClientEvent::Error(e)] => {
            assert_eq!(e.code(), codes::WRONG_SECRET, "{e}")
        }
        other => panic!("expected Connected then Error, got {other:?}"),
    }
    assert!(!client.is_ready());
}

#[derive(Debug, PartialEq)]
struct Role(&'static str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_handle_carries_what_the_server_learned() {
    let server = start_server().await;
    let mut events = server.events();

    let before = SystemTime::now();
    let client = connect(
        &server,
        client_builder(&server)
            .reconnect(Backoff::disabled())
            .meta("region", "eu-west")
            .meta("slots", 4)
            .on_hook("echo", |v: Value, _| async move { Ok::<_, HookError>(v) }),
    )
    .await;
    let after = SystemTime::now();
    let mut client_events = client.events();
    let agent = wait_for(&mut events, connected).await;

    assert_eq!(agent.name(), "A0001");
    assert_eq!(Some(agent.name().to_owned()), client.name());
    assert!(agent.first_time());
    assert_eq!(agent.peer_addr().ip(), IpAddr::from([127, 0, 0, 1]));
    assert_ne!(agent.peer_addr().port(), 0);
    assert_ne!(agent.peer_addr(), server.local_addr());
    assert!(!agent.is_tls());
    assert_eq!(
        Value::Object(agent.meta().clone()),
        json!({"region": "eu-west", "slots": 4})
    );
    assert!(before <= agent.connected_at() && agent.connected_at() <= after);
    assert!(agent.is_connected());

    // The typed slot is shared by every handle on the same agent.
    assert_eq!(agent.data::<Role>(), None);
    agent.set_data(Role("builder"));
    let listed = server.agent("A0001").unwrap();
    assert_eq!(listed.data::<Role>().as_deref(), Some(&Role("builder")));
    assert_eq!(listed.data::<u32>(), None, "slots are per type");
    listed.set_data(Role("database"));
    listed.set_data(7u32);
    assert_eq!(agent.data::<Role>().as_deref(), Some(&Role("database")));
    assert_eq!(agent.data::<u32>().as_deref(), Some(&7));

    // Calls through the handle.
    let v: Value = within(agent.send("echo", &json!({"x": 1}))).await.unwrap();
    assert_eq!(v, json!({"x": 1}));

    // server.agents() lists the connected ones, by name.
    let (_second, second) = connect_plain(&server).await;
    let names: Vec<String> = server
        .agents()
        .iter()
        .map(|a| a.name().to_owned())
        .collect();
    assert_eq!(names, ["A0001".to_owned(), second.clone()]);

    // Disconnect through the handle.
    agent.disconnect("retired");
    let reason = wait_for(&mut client_events, |e| match e {
        ClientEvent::Disconnected(r) => Some(r),
        _ => None,
    })
    .await;
    assert_eq!(reason.code, close::FORCED_DISCONNECT);
    assert_eq!(reason.reason, "retired");
    assert_eq!(
        wait_disconnected(&mut events, "A0001").await,
        close::FORCED_DISCONNECT
    );
    let names: Vec<String> = server
        .agents()
        .iter()
        .map(|a| a.name().to_owned())
        .collect();
    assert_eq!(names, [second]);

    // The handle outlives the link: fields still read, calls fail.
    assert!(!agent.is_connected());
    assert_eq!(agent.name(), "A0001");
    assert_eq!(
        agent.close_reason().map(|r| r.code),
        Some(close::FORCED_DISCONNECT)
    );
    let err = within(agent.send::<_, Value>("echo", &1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::CONNECTION_CLOSED, "{err}");
}
