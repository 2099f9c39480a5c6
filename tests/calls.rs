//! Issue 2, item 5: calls. `send_to` by name and by `&Agent`, typed and
//! untyped; default and per-call timeouts; `UNKNOWN_AGENT` versus
//! `AGENT_NOT_CONNECTED`; `send_all` with every agent's own result, run
//! concurrently; `NO_CONNECTED_AGENTS`; a call in flight fails at once when
//! its link drops; a late response is dropped quietly; responses are matched
//! only on their own link.

mod common;

use std::sync::Arc;
use std::time::Duration;

use agent_tunnel::client::ServerHandle;
use agent_tunnel::protocol::frame::{Frame, Outcome};
use agent_tunnel::protocol::{Call, Hooks};
use agent_tunnel::server::Agent;
use agent_tunnel::{codes, HookError};
use common::*;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Barrier};

const SHORT: Duration = Duration::from_millis(200);

/// `block`: reports that it started, then waits for a gate that never opens.
fn install_block<P: Clone + Send + Sync + 'static>(hooks: &Hooks<P>, started: mpsc::Sender<()>) {
    let never = Gate::new();
    hooks.on_hook("block", move |_: Value, _: Call<P>| {
        let started = started.clone();
        let never = never.wait();
        async move {
            let _ = started.send(()).await;
            never.await;
            Ok::<_, HookError>("unreachable")
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_to_by_name_and_by_agent_typed_and_untyped() {
    let server = start_server().await;
    server.on_hook("mul", |(a, b): (i64, i64), _| async move {
        Ok::<_, HookError>(a * b)
    });
    let client = connect(
        &server,
        client_builder(&server)
            .on_hook("add", |(a, b): (i64, i64), _| async move {
                Ok::<_, HookError>(a + b)
            })
            .on_hook("echo", |v: Value, _| async move { Ok::<_, HookError>(v) }),
    )
    .await;
    let name = client.name().unwrap();
    let agent: Agent = server.agent(&name).expect("connected");

    let by_name: i64 = within(server.send_to(name.as_str(), "add", &(2, 3)))
        .await
        .unwrap();
    assert_eq!(by_name, 5);
    let by_string: i64 = within(server.send_to(name.clone(), "add", &(4, 4)))
        .await
        .unwrap();
    assert_eq!(by_string, 8);
    let by_handle: i64 = within(server.send_to(&agent, "add", &(1, 1)))
        .await
        .unwrap();
    assert_eq!(by_handle, 2);
    let on_handle: i64 = within(agent.send("add", &(10, 20))).await.unwrap();
    assert_eq!(on_handle, 30);
    let untyped: Value = within(server.send_to(&agent, "echo", &json!({"a": [1, null]})))
        .await
        .unwrap();
    assert_eq!(untyped, json!({"a": [1, null]}));

    // And the other way.
    let typed: i64 = within(client.send("mul", &(6, 7))).await.unwrap();
    assert_eq!(typed, 42);
    let untyped: Value = within(client.send("mul", &json!([3, 3]))).await.unwrap();
    assert_eq!(untyped, json!(9));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builders_default_timeout_ends_calls_with_timeout() {
    let server = start(server_builder().default_timeout(SHORT)).await;
    let (started_tx, _started) = mpsc::channel(8);
    install_block(server.hooks(), started_tx.clone());
    server.on_hook("echo", |v: Value, _| async move { Ok::<_, HookError>(v) });
    let hooks: Hooks<ServerHandle> = Hooks::new();
    install_block(&hooks, started_tx);
    hooks.on_hook("echo", |v: Value, _| async move { Ok::<_, HookError>(v) });
    let client = connect(
        &server,
        client_builder(&server).default_timeout(SHORT).hooks(hooks),
    )
    .await;
    let name = client.name().unwrap();
    let agent = server.agent(&name).unwrap();

    let err = within(server.send_to::<_, Value>(name.as_str(), "block", &()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::TIMEOUT, "{err}");
    let err = within(agent.send::<_, Value>("block", &()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::TIMEOUT, "{err}");
    let err = within(client.send::<_, Value>("block", &()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::TIMEOUT, "{err}");

    // A timeout ends the call, not the link. (A long timeout here: a
    // loaded machine must not turn these answers into timeouts.)
    let v: Value = within(server.send_to_timeout(name.as_str(), "echo", &1, LONG))
        .await
        .unwrap();
    assert_eq!(v, json!(1));
    let v: Value = within(client.send_timeout("echo", &2, LONG)).await.unwrap();
    assert_eq!(v, json!(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_call_timeout_overrides_the_default() {
    let server = start(server_builder().default_timeout(LONG)).await;
    let (started_tx, _started) = mpsc::channel(8);
    install_block(server.hooks(), started_tx.clone());
    let hooks: Hooks<ServerHandle> = Hooks::new();
    install_block(&hooks, started_tx);
    let client = connect(
        &server,
        client_builder(&server).default_timeout(LONG).hooks(hooks),
    )
    .await;
    let name = client.name().unwrap();
    let agent = server.agent(&name).unwrap();

    let err = within(server.send_to_timeout::<_, Value>(name.as_str(), "block", &(), SHORT))
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::TIMEOUT, "{err}");
    let err = within(agent.send_timeout::<_, Value>("block", &(), SHORT))
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::TIMEOUT, "{err}");
    let err = within(client.send_timeout::<_, Value>("block", &(), SHORT))
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::TIMEOUT, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_response_after_a_timeout_is_dropped_quietly() {
    let server = start(server_builder().default_timeout(LONG)).await;
    let mut events = server.events();
    let (mut ws, name) = raw_agent(&server).await;

    let err = within(server.send_to_timeout::<_, Value>(name.as_str(), "work", &1, SHORT))
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::TIMEOUT, "{err}");

    // The agent answers after the caller gave up.
    let first = recv_json(&mut ws).await;
    assert_eq!(first["t"], "req");
    assert_eq!(first["body"], json!(1));
    send_json(
        &mut ws,
        &json!({"t": "res", "id": first["id"], "ok": "late"}),
    )
    .await;

    // The next call gets its own answer, over the same link.
    let second = tokio::spawn({
        let server = server.clone();
        let name = name.clone();
        async move { server.send_to::<_, Value>(name, "work", &2).await }
    });
    let req = recv_json(&mut ws).await;
    assert_eq!(req["body"], json!(2));
    assert_ne!(req["id"], first["id"]);
    send_json(
        &mut ws,
        &json!({"t": "res", "id": req["id"], "ok": "second"}),
    )
    .await;
    assert_eq!(within(second).await.unwrap().unwrap(), json!("second"));
    assert!(server.agent(&name).is_some_and(|a| a.is_connected()));
    while let Ok(e) = events.try_recv() {
        assert!(
            !matches!(e, agent_tunnel::server::ServerEvent::AgentDisconnected(..)),
            "a late response must not end the link: {e:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_are_matched_only_on_their_own_link() {
    let server = start(server_builder().default_timeout(LONG)).await;
    server.on_hook("ping", |_: Value, _| async { Ok::<_, HookError>("pong") });
    let (started_tx, mut started) = mpsc::channel(1);
    let gate = Gate::new();
    let release = gate.clone();
    let honest = connect(
        &server,
        client_builder(&server).on_hook("work", move |_: Value, _| {
            let started = started_tx.clone();
            let released = release.wait();
            async move {
                let _ = started.send(()).await;
                released.await;
                Ok::<_, HookError>("real")
            }
        }),
    )
    .await;
    let honest_name = honest.name().unwrap();
    let (mut forger, _) = raw_agent(&server).await;

    let call = tokio::spawn({
        let server = server.clone();
        let name = honest_name.clone();
        async move { server.send_to::<_, Value>(name, "work", &()).await }
    });
    within(started.recv()).await.expect("honest hook started");

    // Another agent answers request ids it was never sent.
    for id in 0..8 {
        send_json(&mut forger, &json!({"t": "res", "id": id, "ok": "forged"})).await;
    }
    // A round trip the forger starts: by its answer, the server has read
    // the forged frames before it.
    send_json(
        &mut forger,
        &json!({"t": "req", "id": 1, "action": "ping", "body": null}),
    )
    .await;
    let res = recv_json(&mut forger).await;
    assert_eq!(res, json!({"t": "res", "id": 1, "ok": "pong"}));

    gate.open();
    assert_eq!(within(call).await.unwrap().unwrap(), json!("real"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_agent_for_a_name_never_given_and_not_connected_for_an_offline_one() {
    let server = start_server().await;
    let err = within(server.send_to::<_, Value>("A0042", "x", &()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::UNKNOWN_AGENT, "{err}");

    let (client, name) = connect_plain(&server).await;
    let agent = server.agent(&name).unwrap();
    close_and_wait(&server, client, &name).await;
    let err = within(server.send_to::<_, Value>(name.as_str(), "x", &()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::AGENT_NOT_CONNECTED, "{err}");
    let err = within(server.send_to::<_, Value>(&agent, "x", &()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::AGENT_NOT_CONNECTED, "{err}");
    // A name never given stays unknown, whatever else happened.
    let err = within(server.send_to::<_, Value>("A0002", "x", &()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::UNKNOWN_AGENT, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_all_runs_concurrently_and_returns_every_agents_own_result() {
    let server = start(server_builder().default_timeout(LONG)).await;
    // Every hook waits until all three are running: were the calls made one
    // after the other, the first would wait forever.
    let barrier = Arc::new(Barrier::new(3));
    let mut clients = Vec::new();
    for fail in [false, true, false] {
        let barrier = Arc::clone(&barrier);
        let client = connect(
            &server,
            client_builder(&server)
                .on_hook("status", move |_: Value, call: Call<ServerHandle>| {
                    let barrier = Arc::clone(&barrier);
                    async move {
                        barrier.wait().await;
                        if fail {
                            return Err(HookError::new("DISK_FULL", "no space left")
                                .with_data(json!({"free": 0})));
                        }
                        Ok(format!("{} ok", call.peer.name()))
                    }
                })
                .on_hook("maybe_hang", move |_: Value, _| async move {
                    if fail {
                        std::future::pending::<()>().await;
                    }
                    Ok::<_, HookError>("done")
                }),
        )
        .await;
        clients.push(client);
    }
    let names: Vec<String> = clients.iter().map(|c| c.name().unwrap()).collect();

    let results = within(server.send_all::<_, String>("status", &()))
        .await
        .expect("send_all itself succeeds");
    assert_eq!(
        results.keys().cloned().collect::<Vec<_>>(),
        names,
        "one result per agent, keyed by name"
    );
    assert_eq!(
        results[&names[0]].as_ref().unwrap(),
        &format!("{} ok", names[0])
    );
    let err = results[&names[1]].as_ref().unwrap_err();
    assert_eq!(err.code(), "DISK_FULL");
    assert_eq!(err.remote().unwrap().data, Some(json!({"free": 0})));
    assert_eq!(
        results[&names[2]].as_ref().unwrap(),
        &format!("{} ok", names[2])
    );

    // One agent timing out does not hold up or fail the others. The timeout
    // leaves the others ample time to answer, even on a loaded machine.
    let results =
        within(server.send_all_timeout::<_, String>("maybe_hang", &(), Duration::from_secs(1)))
            .await
            .unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[&names[0]].as_deref().unwrap(), "done");
    assert_eq!(
        results[&names[1]].as_ref().unwrap_err().code(),
        codes::TIMEOUT
    );
    assert_eq!(results[&names[2]].as_deref().unwrap(), "done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_all_without_agents_is_no_connected_agents() {
    let server = start_server().await;
    let err = within(server.send_all::<_, Value>("x", &()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::NO_CONNECTED_AGENTS, "{err}");

    let (client, name) = connect_plain(&server).await;
    close_and_wait(&server, client, &name).await;
    let err = within(server.send_all::<_, Value>("x", &()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::NO_CONNECTED_AGENTS, "{err}");
}

/// A server and one agent, each with a `block` hook; returns both in-flight
/// calls (server → agent and agent → server) once both hooks are running.
async fn two_calls_in_flight() -> (
    agent_tunnel::server::AgentServer,
    agent_tunnel::client::AgentClient,
    String,
    tokio::task::JoinHandle<Result<Value, agent_tunnel::Error>>,
    tokio::task::JoinHandle<Result<Value, agent_tunnel::Error>>,
) {
    let server = start(server_builder().default_timeout(LONG)).await;
    let (started_tx, mut started) = mpsc::channel(2);
    install_block(server.hooks(), started_tx.clone());
    let hooks: Hooks<ServerHandle> = Hooks::new();
    install_block(&hooks, started_tx);
    let client = connect(
        &server,
        client_builder(&server).default_timeout(LONG).hooks(hooks),
    )
    .await;
    let name = client.name().unwrap();

    let to_agent = tokio::spawn({
        let server = server.clone();
        let name = name.clone();
        async move { server.send_to_timeout(name, "block", &(), LONG).await }
    });
    let to_server = tokio::spawn({
        let client = client.clone();
        async move { client.send_timeout("block", &(), LONG).await }
    });
    within(started.recv()).await.unwrap();
    within(started.recv()).await.unwrap();
    (server, client, name, to_agent, to_server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_flight_fail_at_once_when_the_server_disconnects_the_agent() {
    let (server, _client, name, to_agent, to_server) = two_calls_in_flight().await;
    server.disconnect(&name, "maintenance").unwrap();

    // Well before the 60 s call timeout.
    let err = within(to_agent).await.unwrap().unwrap_err();
    assert_eq!(err.code(), codes::CONNECTION_CLOSED, "{err}");
    let err = within(to_server).await.unwrap().unwrap_err();
    assert_eq!(err.code(), codes::CONNECTION_CLOSED, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_flight_fail_at_once_when_the_client_closes() {
    let (_server, client, _name, to_agent, to_server) = two_calls_in_flight().await;
    within(client.close()).await;

    let err = within(to_agent).await.unwrap().unwrap_err();
    assert_eq!(err.code(), codes::CONNECTION_CLOSED, "{err}");
    let err = within(to_server).await.unwrap().unwrap_err();
    assert_eq!(err.code(), codes::CONNECTION_CLOSED, "{err}");
}

/// An answer already queued when this side closes the link still goes out,
/// before the close frame: here the hook disconnects its own caller and
/// answers at once, so its answer and the close are decided together.
#[tokio::test]
async fn an_answer_queued_when_the_link_closes_is_sent_before_the_close() {
    let server = start_server().await;
    server.on_hook(
        "bye",
        |_: Value, call: agent_tunnel::Call<Agent>| async move {
            call.peer.disconnect("done here");
            Ok::<_, HookError>(json!("last words"))
        },
    );
    let (mut ws, _name) = raw_agent(&server).await;
    send_json(
        &mut ws,
        &json!({"t":"req","id":1,"action":"bye","body":null,"timeout_ms":5000}),
    )
    .await;
    let closed = expect_close(&mut ws).await;
    assert_eq!(
        closed.code,
        agent_tunnel::protocol::close::FORCED_DISCONNECT
    );
    let answers: Vec<String> = closed
        .decoded()
        .into_iter()
        .filter_map(|f| match f {
            Frame::Res(res) if res.id == 1 => match res.outcome {
                Outcome::Ok(body) => Some(body.get().to_owned()),
                Outcome::Err(e) => panic!("the hook's answer became {e}"),
            },
            _ => None,
        })
        .collect();
    assert_eq!(answers, [r#""last words""#]);
    server.shutdown().await;
}
