//! Issue 2, item 8: limits with documented defaults. An oversized message
//! closes only its own link with 1009; past `max_in_flight` callers get
//! `BUSY`.

mod common;

use agent_tunnel::client::{ClientEvent, ServerHandle};
use agent_tunnel::protocol::handshake::Identity;
use agent_tunnel::protocol::link::{DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_MESSAGE_BYTES};
use agent_tunnel::protocol::{close, Call, Hooks, LinkConfig};
use agent_tunnel::server::ServerEvent;
use agent_tunnel::{codes, HookError};
use common::*;
use serde_json::{json, Value};
use tokio::sync::mpsc;

const KIB: usize = 1024;

/// `block` reports that it started and waits for `gate`; `echo` echoes.
fn install<P: Clone + Send + Sync + 'static>(
    hooks: &Hooks<P>,
    started: mpsc::Sender<()>,
    gate: &Gate,
) {
    let gate = gate.clone();
    hooks.on_hook("block", move |_: Value, _: Call<P>| {
        let started = started.clone();
        let released = gate.wait();
        async move {
            let _ = started.send(()).await;
            released.await;
            Ok::<_, HookError>("released")
        }
    });
    hooks.on_hook("echo", |v: Value, _: Call<P>| async move {
        Ok::<_, HookError>(v)
    });
}

fn echo_agent(server: &agent_tunnel::server::AgentServer) -> agent_tunnel::client::ClientBuilder {
    client_builder(server).on_hook("echo", |v: Value, _| async move { Ok::<_, HookError>(v) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limits_have_their_documented_defaults() {
    assert_eq!(DEFAULT_MAX_MESSAGE_BYTES, 1 << 20);
    assert_eq!(DEFAULT_MAX_IN_FLIGHT, 256);
    let link = LinkConfig::default();
    assert_eq!(link.max_message_bytes, DEFAULT_MAX_MESSAGE_BYTES);
    assert_eq!(link.max_in_flight, DEFAULT_MAX_IN_FLIGHT);

    // A server left at its defaults announces them and enforces the size.
    let server = start_server().await;
    server.on_hook("echo", |v: Value, _| async move { Ok::<_, HookError>(v) });
    let mut ws = raw_connect(&server).await;
    let est = raw_handshake(&mut ws, SECRET, Identity::default())
        .await
        .unwrap();
    assert_eq!(est.limits.max_message_bytes, 1 << 20);
    assert_eq!(est.limits.max_in_flight, 256);

    let under = "x".repeat((1 << 20) - KIB);
    send_json(
        &mut ws,
        &json!({"t": "req", "id": 1, "action": "echo", "body": under}),
    )
    .await;
    // The answer is as big as the request: fine for the server to send, too.
    let res = recv_json(&mut ws).await;
    assert_eq!(res["id"], 1);
    assert_eq!(res["ok"].as_str().map(str::len), Some((1 << 20) - KIB));

    let over = "x".repeat((1 << 20) + KIB);
    send_json(
        &mut ws,
        &json!({"t": "req", "id": 2, "action": "echo", "body": over}),
    )
    .await;
    assert_eq!(expect_close(&mut ws).await.code, close::TOO_BIG);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_closes_only_its_own_link_with_1009() {
    let server = start(server_builder().max_message_bytes(KIB)).await;
    server.on_hook("echo", |v: Value, _| async move { Ok::<_, HookError>(v) });
    let mut events = server.events();
    let bystander = connect(&server, echo_agent(&server)).await;
    let bystander_name = bystander.name().unwrap();
    let (mut ws, name) = raw_agent(&server).await;

    send_json(
        &mut ws,
        &json!({"t": "req", "id": 1, "action": "echo", "body": "x".repeat(4 * KIB)}),
    )
    .await;
    let closed = expect_close(&mut ws).await;
    assert_eq!(closed.code, close::TOO_BIG);
    assert_eq!(closed.code, 1009);
    assert_eq!(wait_disconnected(&mut events, &name).await, close::TOO_BIG);

    // The other agent works both ways, with messages under the limit.
    let v: Value = within(bystander.send("echo", &"y".repeat(KIB / 2)))
        .await
        .unwrap();
    assert_eq!(v.as_str().map(str::len), Some(KIB / 2));
    let v: Value = within(server.send_to(bystander_name.as_str(), "echo", &"z"))
        .await
        .unwrap();
    assert_eq!(v, json!("z"));
    assert!(bystander.is_ready());
}

/// The server announces its limit in `welcome`; an agent holds its own
/// requests to it, so one too big for the server fails alone, with
/// `INVALID_MESSAGE`, and the link and the agent's other calls go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_bigger_than_the_server_accepts_fails_alone() {
    let server = start(server_builder().max_message_bytes(KIB)).await;
    server.on_hook("echo", |v: Value, _| async move { Ok::<_, HookError>(v) });
    // This client would accept big messages; the server does not.
    let client = connect(&server, client_builder(&server).max_message_bytes(64 * KIB)).await;
    let mut client_events = client.events();

    let err = within(client.send_timeout::<_, Value>("echo", &"x".repeat(4 * KIB), LONG))
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::INVALID_MESSAGE, "{err}");
    assert!(err.to_string().contains("1024"), "{err}");

    let v: Value = within(client.send("echo", &"fine")).await.unwrap();
    assert_eq!(v, json!("fine"));
    assert!(client.is_ready());
    while let Ok(e) = client_events.try_recv() {
        assert!(!matches!(e, ClientEvent::Disconnected(_)), "{e:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_closes_a_link_that_sends_it_too_much() {
    let server = start_server().await;
    let mut events = server.events();
    let small = connect(&server, echo_agent(&server).max_message_bytes(KIB)).await;
    let small_name = small.name().unwrap();
    let bystander = connect(&server, echo_agent(&server)).await;
    let bystander_name = bystander.name().unwrap();

    let err = within(server.send_to_timeout::<_, Value>(
        small_name.as_str(),
        "echo",
        &"x".repeat(4 * KIB),
        LONG,
    ))
    .await
    .unwrap_err();
    assert_eq!(err.code(), codes::CONNECTION_CLOSED, "{err}");
    let code = wait_for(&mut events, |e| match e {
        ServerEvent::AgentDisconnected(a, r) if a.name() == small_name => Some(r.code),
        _ => None,
    })
    .await;
    assert_eq!(code, close::TOO_BIG);

    let v: Value = within(server.send_to(bystander_name.as_str(), "echo", &"x".repeat(4 * KIB)))
        .await
        .unwrap();
    assert_eq!(v.as_str().map(str::len), Some(4 * KIB));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_in_flight_the_caller_gets_busy() {
    let server = start(server_builder().max_in_flight(2).default_timeout(LONG)).await;
    let (started_tx, mut started) = mpsc::channel(4);
    let gate = Gate::new();
    let hooks: Hooks<ServerHandle> = Hooks::new();
    install(&hooks, started_tx, &gate);
    let client = connect(&server, client_builder(&server).hooks(hooks)).await;
    let name = client.name().unwrap();

    let calls: Vec<_> = (0..2)
        .map(|_| {
            let server = server.clone();
            let name = name.clone();
            tokio::spawn(async move { server.send_to::<_, String>(name, "block", &()).await })
        })
        .collect();
    within(started.recv()).await.unwrap();
    within(started.recv()).await.unwrap();

    // Two wait already: the third is refused at once, not queued.
    let err = within(server.send_to::<_, String>(name.as_str(), "echo", &"third"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::BUSY, "{err}");

    gate.open();
    for call in calls {
        assert_eq!(within(call).await.unwrap().unwrap(), "released");
    }
    // Room again once they finished.
    let v: String = within(server.send_to(name.as_str(), "echo", &"again"))
        .await
        .unwrap();
    assert_eq!(v, "again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_in_flight_the_serving_side_answers_busy() {
    let server = start(server_builder().max_in_flight(2).default_timeout(LONG)).await;
    let (started_tx, mut started) = mpsc::channel(4);
    let gate = Gate::new();
    install(server.hooks(), started_tx, &gate);
    // The client would send more; the server serves two at a time.
    let client = connect(
        &server,
        client_builder(&server)
            .max_in_flight(16)
            .default_timeout(LONG),
    )
    .await;

    let calls: Vec<_> = (0..2)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.send::<_, String>("block", &()).await })
        })
        .collect();
    within(started.recv()).await.unwrap();
    within(started.recv()).await.unwrap();

    let err = within(client.send::<_, String>("echo", &"third"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::BUSY, "{err}");

    gate.open();
    for call in calls {
        assert_eq!(within(call).await.unwrap().unwrap(), "released");
    }
    let v: String = within(client.send("echo", &"again")).await.unwrap();
    assert_eq!(v, "again");
}
