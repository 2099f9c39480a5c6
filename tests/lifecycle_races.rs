//! Issue 8: the server's lifecycle under races. Shutdown and revocation
//! racing handshakes that are finishing; calls during shutdown; the order of
//! events when a reconnect replaces a stale link; `disconnect` and calls to a
//! revoked name; a grant whose save outlives the handshake deadline.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_tunnel::client::{AgentClient, Backoff, ClientEvent};
use agent_tunnel::protocol::close;
use agent_tunnel::protocol::crypto::Key;
use agent_tunnel::protocol::handshake::Identity;
use agent_tunnel::server::{AgentServer, ServerEvent, StoreError, StoreFuture};
use agent_tunnel::{codes, HookError, NameStore};
use common::*;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

/// What the next save of a [`Controlled`] store does.
enum NextSave {
    /// Tells `started`, then waits for `gate`; then saves, or fails when
    /// `fail` is set.
    Hold {
        gate: Gate,
        started: oneshot::Sender<()>,
        fail: bool,
    },
}

/// A name store whose next save the test controls: it blocks until the test
/// opens a gate, and then saves or fails. Every other save succeeds at once.
#[derive(Default)]
struct Controlled {
    doc: Mutex<Option<Value>>,
    next: Mutex<Option<NextSave>>,
}

impl Controlled {
    /// Makes the next save wait for the returned gate; the receiver resolves
    /// once that save has started.
    fn hold_next(&self) -> (Gate, oneshot::Receiver<()>) {
        self.hold(false)
    }

    /// Like [`Controlled::hold_next`], and then the save fails.
    fn hold_then_fail_next(&self) -> (Gate, oneshot::Receiver<()>) {
        self.hold(true)
    }

    fn hold(&self, fail: bool) -> (Gate, oneshot::Receiver<()>) {
        let gate = Gate::new();
        let (started, rx) = oneshot::channel();
        *self.next.lock().unwrap() = Some(NextSave::Hold {
            gate: gate.clone(),
            started,
            fail,
        });
        (gate, rx)
    }
}

impl NameStore for Controlled {
    fn load(&self) -> StoreFuture<'_, Option<Value>> {
        let doc = self.doc.lock().unwrap().clone();
        Box::pin(async move { Ok(doc) })
    }

    fn save<'a>(&'a self, doc: &'a Value) -> StoreFuture<'a, ()> {
        let next = self.next.lock().unwrap().take();
        Box::pin(async move {
            match next {
                Some(NextSave::Hold {
                    gate,
                    started,
                    fail,
                }) => {
                    let _ = started.send(());
                    gate.wait().await;
                    if fail {
                        return Err(StoreError::new("disk full"));
                    }
                }
                None => {}
            }
            *self.doc.lock().unwrap() = Some(doc.clone());
            Ok(())
        })
    }
}

/// Waits until `server` lists no agent of this name.
async fn wait_unlisted(server: &AgentServer, name: &str) {
    within(async {
        while server.agent(name).is_some() {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

fn fast_backoff() -> Backoff {
    Backoff::default()
        .initial_delay(Duration::from_millis(1))
        .max_delay(Duration::from_millis(5))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_agents_whose_handshake_finishes_while_it_runs() {
    for round in 0..100 {
        let server = start(server_builder().shutdown_grace(Duration::from_secs(30))).await;
        let (_early, _) = connect_plain(&server).await;
        // Agents that connect, and keep reconnecting, while shutdown runs.
        let mut clients: Vec<AgentClient> = Vec::new();
        let mut events = server.events();
        for _ in 0..16 {
            let c = within(client_builder(&server).reconnect(fast_backoff()).start())
                .await
                .expect("client starts");
            clients.push(c);
        }
        // Shut down once the first of them is in: the others are then in
        // every stage of their handshakes.
        wait_for(&mut events, |e| {
            matches!(e, agent_tunnel::server::ServerEvent::AgentConnected(_)).then_some(())
        })
        .await;
        match tokio::time::timeout(LIMIT, server.shutdown()).await {
            Ok(()) => {}
            Err(_) => panic!("round {round}: shutdown hung; stats {:?}", server.stats()),
        }
        assert!(
            server.agents().is_empty(),
            "round {round}: {:?}",
            server.agents()
        );
        assert!(
            server.stats().is_idle(),
            "round {round}: {:?}",
            server.stats()
        );
        for c in clients {
            within(c.close()).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_racing_a_first_connection_of_the_name_always_wins() {
    let store = Arc::new(Controlled::default());
    let server = start(server_builder().store_arc(store.clone())).await;
    for round in 0..500u32 {
        let name = format!("racer-{round}");
        // Hold the agent's handshake in the save of its new name; revoke
        // then waits for that grant, and runs the moment it is done.
        let (gate, started) = store.hold_next();
        let builder = client_builder(&server)
            .name(&name)
            .reconnect(fast_backoff());
        let mut events = builder.events();
        let connecting = tokio::spawn(async move { within(builder.connect()).await });
        within(started).await.expect("the grant saves");
        let revoking = {
            let (server, name) = (server.clone(), name.clone());
            tokio::spawn(async move { server.revoke(&name, "decommissioned").await })
        };
        for _ in 0..round % 8 {
            tokio::task::yield_now().await;
        }
        gate.open();
        within(revoking).await.unwrap().expect("revoked");
        // Either the handshake is refused, or the link it got is closed
        // with 4007 and the agent gives up.
        match within(connecting).await.unwrap() {
            Err(agent_tunnel::Error::ConnectionClosed(r)) => {
                assert_eq!(r.code, close::REVOKED, "round {round}: {r}")
            }
            Err(e) => assert_eq!(e.code(), codes::REVOKED, "round {round}: {e}"),
            Ok(client) => {
                {
                    let why = wait_for(&mut events, |e| match e {
                        ClientEvent::GaveUp(err) => Some(err),
                        _ => None,
                    })
                    .await;
                    assert_eq!(why.code(), codes::REVOKED, "round {round}: {why}");
                }
                within(client.close()).await;
            }
        }
        wait_unlisted(&server, &name).await;
        assert!(server.is_revoked(&name));
        assert_eq!(server.stats().reserved_names, 0, "round {round}");
    }
    within(server.shutdown()).await;
}

/// A client call loop: calls until the first error, reports its first
/// success on `up`, and returns the error.
async fn client_loop(client: AgentClient, up: mpsc::Sender<()>) -> agent_tunnel::Error {
    let mut reported = false;
    for i in 0u64.. {
        match client.send::<_, u64>("work", &i).await {
            Ok(n) => assert_eq!(n, i),
            Err(e) => return e,
        }
        if !reported {
            reported = true;
            let _ = up.send(()).await;
        }
    }
    unreachable!("the loop runs until an error")
}

/// How a server call loop reaches the agents.
#[derive(Clone, Copy, Debug)]
enum Via {
    SendTo,
    Handle,
    SendAll,
}

/// A server call loop: calls until the first error, reports its first
/// success on `up`, and returns the error.
async fn server_loop(
    server: AgentServer,
    name: String,
    via: Via,
    up: mpsc::Sender<()>,
) -> agent_tunnel::Error {
    let agent = server.agent(&name).expect("connected");
    let mut reported = false;
    for i in 0u64.. {
        let result = match via {
            Via::SendTo => server.send_to::<_, u64>(name.as_str(), "echo", &i).await,
            Via::Handle => agent.send::<_, u64>("echo", &i).await,
            Via::SendAll => match server.send_all::<_, u64>("echo", &i).await {
                Ok(all) => all.into_values().find(|r| r.is_err()).unwrap_or(Ok(i)),
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(n) => assert_eq!(n, i),
            Err(e) => return e,
        }
        if !reported {
            reported = true;
            let _ = up.send(()).await;
        }
    }
    unreachable!("the loop runs until an error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_refuses_new_calls_both_ways_and_ends_once_those_in_flight_do() {
    let grace = Duration::from_secs(30);
    let server = start(server_builder().shutdown_grace(grace)).await;
    server.on_hook("work", |n: u64, _| async move { Ok::<_, HookError>(n) });
    // One agent's call to the server, and one call of the server to an
    // agent, stay in flight until the test lets them finish.
    let to_server = Gate::new();
    let (held_tx, mut held) = mpsc::channel::<()>(2);
    {
        let (gate, held_tx) = (to_server.clone(), held_tx.clone());
        server.on_hook("hold", move |_: Value, _| {
            let (wait, held_tx) = (gate.wait(), held_tx.clone());
            async move {
                let _ = held_tx.send(()).await;
                wait.await;
                Ok::<_, HookError>("held by the server")
            }
        });
    }
    let to_agent = Gate::new();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (gate, held_tx) = (to_agent.clone(), held_tx.clone());
        let builder = client_builder(&server)
            .reconnect(Backoff::disabled())
            .on_hook("echo", |n: u64, _| async move { Ok::<_, HookError>(n) })
            .on_hook("hold", move |_: Value, _| {
                let (wait, held_tx) = (gate.wait(), held_tx.clone());
                async move {
                    let _ = held_tx.send(()).await;
                    wait.await;
                    Ok::<_, HookError>("held by the agent")
                }
            });
        let client = connect(&server, builder).await;
        let name = client.name().expect("named");
        clients.push((client, name));
    }

    // Steady traffic both ways.
    let (up_tx, mut up) = mpsc::channel::<()>(16);
    let mut loops = Vec::new();
    for (client, _) in &clients {
        loops.push(tokio::spawn(client_loop(client.clone(), up_tx.clone())));
    }
    for ((_, name), via) in clients.iter().zip([Via::SendTo, Via::Handle, Via::SendAll]) {
        loops.push(tokio::spawn(server_loop(
            server.clone(),
            name.clone(),
            via,
            up_tx.clone(),
        )));
    }
    for _ in 0..loops.len() {
        within(up.recv()).await.expect("every loop makes calls");
    }
    let held_by_server = {
        let client = clients[0].0.clone();
        tokio::spawn(async move { client.send::<_, String>("hold", &()).await })
    };
    let held_by_agent = {
        let (server, name) = (server.clone(), clients[1].1.clone());
        tokio::spawn(async move {
            server
                .send_to::<_, String>(name.as_str(), "hold", &())
                .await
        })
    };
    within(held.recv()).await.expect("a call is held");
    within(held.recv()).await.expect("a call is held");

    let began = Instant::now();
    let shutdown = {
        let server = server.clone();
        tokio::spawn(async move { server.shutdown().await })
    };
    within(async {
        while !server.is_stopped() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    // Every loop ends at its first call after shutdown began, with SHUTDOWN
    // (the agents' from the server's answer), though the grace still runs.
    for (i, l) in loops.into_iter().enumerate() {
        let err = within(l).await.unwrap();
        assert_eq!(err.code(), codes::SHUTDOWN, "loop {i}: {err}");
    }
    let (client, name) = &clients[2];
    let agent = server
        .agent(name)
        .expect("still connected during the grace");
    for err in [
        within(server.send_to::<_, Value>(name.as_str(), "echo", &1))
            .await
            .unwrap_err(),
        within(agent.send::<_, Value>("echo", &1))
            .await
            .unwrap_err(),
        within(server.send_all::<_, Value>("echo", &1))
            .await
            .unwrap_err(),
        within(client.send::<_, Value>("work", &1))
            .await
            .unwrap_err(),
    ] {
        assert_eq!(err.code(), codes::SHUTDOWN, "{err}");
    }
    assert!(!shutdown.is_finished(), "calls in flight get their grace");

    // The calls in flight finish normally, and shutdown follows at once.
    to_server.open();
    to_agent.open();
    assert_eq!(
        within(held_by_server).await.unwrap().unwrap(),
        "held by the server"
    );
    assert_eq!(
        within(held_by_agent).await.unwrap().unwrap(),
        "held by the agent"
    );
    within(shutdown).await.unwrap();
    let took = began.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "shutdown took {took:?} of a {grace:?} grace"
    );
    assert!(server.agents().is_empty());
    for (client, _) in clients {
        within(client.close()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_link_replaced_by_a_reconnect_is_reported_gone_before_the_new_one_is_in() {
    let server = start(server_builder().probe_timeout(Duration::from_millis(200))).await;
    let mut events = server.events();
    // An agent whose link then goes half-open: it never reads again, so it
    // answers no ping.
    let mut old_ws = raw_connect(&server).await;
    let first = raw_handshake(&mut old_ws, SECRET, Identity::default())
        .await
        .expect("welcome");
    let name = first.name.clone();
    let old = wait_for(&mut events, |e| match e {
        ServerEvent::AgentConnected(a) if a.name() == name => Some(a),
        _ => None,
    })
    .await;

    // The agent comes back with its name and token.
    let mut new_ws = raw_connect(&server).await;
    let back = raw_handshake(&mut new_ws, SECRET, first.identity.clone())
        .await
        .expect("the stale link gives way");
    assert_eq!(back.name, name);
    assert!(!back.first_time);

    // Old out, then new in.
    let (gone, why) = wait_for(&mut events, |e| match e {
        ServerEvent::AgentConnected(a) => Some((a, None)),
        ServerEvent::AgentDisconnected(a, r) => Some((a, Some(r))),
        _ => None,
    })
    .await;
    let why = why.unwrap_or_else(|| panic!("{} connected before the old link went", gone.name()));
    assert_eq!(gone.connection_id(), old.connection_id());
    assert_eq!(why.code, close::HEARTBEAT_TIMEOUT, "{why}");
    let new = wait_for(&mut events, |e| match e {
        ServerEvent::AgentConnected(a) => Some(a),
        ServerEvent::AgentDisconnected(a, r) => {
            panic!(
                "{} (connection {}) gone again: {r}",
                a.name(),
                a.connection_id()
            )
        }
        _ => None,
    })
    .await;
    assert_eq!(new.name(), name);
    assert!(new.connection_id() > old.connection_id());
    assert_eq!(
        server.agent(&name).map(|a| a.connection_id()),
        Some(new.connection_id())
    );

    // Once the old connection's task is over, nothing more can report it:
    // it was reported gone exactly once.
    within(async {
        while server.stats().connections > 1 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    loop {
        match events.try_recv() {
            Ok(ServerEvent::AgentDisconnected(a, r)) => {
                panic!("connection {} reported gone again: {r}", a.connection_id())
            }
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    drop(old_ws);
    within(server.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_takes_a_name_or_a_handle_and_is_done_when_it_returns() {
    let server = start_server().await;
    let plain = || client_builder(&server).reconnect(Backoff::disabled());
    let by_handle = connect(&server, plain()).await;
    let by_name = connect(&server, plain()).await;
    let by_agent = connect(&server, plain()).await;
    let mut seen = Vec::new();
    for (client, how) in [
        (&by_handle, "handle"),
        (&by_name, "name"),
        (&by_agent, "agent"),
    ] {
        let name = client.name().expect("named");
        let agent = server.agent(&name).expect("listed");
        let mut events = server.events();
        match how {
            "handle" => server.disconnect(&agent, how).expect("connected"),
            "name" => server.disconnect(name.as_str(), how).expect("connected"),
            _ => agent.disconnect(how),
        }
        // Done on return: unlisted, offline, and reported.
        assert!(server.agent(&name).is_none(), "{how}");
        assert!(!agent.is_connected(), "{how}");
        match events.try_recv() {
            Ok(ServerEvent::AgentDisconnected(a, r)) => {
                assert_eq!(a.connection_id(), agent.connection_id());
                assert_eq!((r.code, r.reason.as_str()), (close::FORCED_DISCONNECT, how));
            }
            other => panic!("{how}: expected the disconnect event at once, got {other:?}"),
        }
        let err = server
            .send_to::<_, Value>(name.as_str(), "echo", &())
            .await
            .unwrap_err();
        assert_eq!(err.code(), codes::AGENT_NOT_CONNECTED, "{how}: {err}");
        let err = server.disconnect(name.as_str(), "again").unwrap_err();
        assert_eq!(err.code(), codes::AGENT_NOT_CONNECTED, "{how}: {err}");
        seen.push(agent.connection_id());
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    let err = server.disconnect("never-given", "x").unwrap_err();
    assert_eq!(err.code(), codes::UNKNOWN_AGENT, "{err}");
    within(server.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_a_revoked_name_fail_with_revoked() {
    let server = start_server().await;
    let (client, name) = connect_plain(&server).await;
    within(server.revoke(&name, "decommissioned"))
        .await
        .expect("revoked");
    assert!(server.agent(&name).is_none(), "revoke disconnects at once");
    let err = server
        .send_to::<_, Value>(name.as_str(), "echo", &())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, agent_tunnel::Error::Revoked(n) if *n == name),
        "{err:?}"
    );
    assert_eq!(err.code(), codes::REVOKED);
    let err = server.disconnect(name.as_str(), "x").unwrap_err();
    assert_eq!(err.code(), codes::REVOKED, "{err}");
    // Lifted, the name is a known one that is offline.
    within(server.unrevoke(&name)).await.expect("unrevoked");
    let err = server
        .send_to::<_, Value>(name.as_str(), "echo", &())
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::AGENT_NOT_CONNECTED, "{err}");
    within(client.close()).await;
    within(server.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_whose_save_outlives_the_handshake_deadline_commits_or_undoes_as_a_whole() {
    let store = Arc::new(Controlled::default());
    let server = start(
        server_builder()
            .store_arc(store.clone())
            .handshake_timeout(Duration::from_millis(300)),
    )
    .await;
    let mut events = server.handshake_failures();

    // One try: the handshake is given up at its deadline while its grant
    // waits in a save; then the save goes on.
    let timed_out = |identity: Identity, fail: bool| {
        let (server, store) = (server.clone(), store.clone());
        async move {
            let (gate, started) = if fail {
                store.hold_then_fail_next()
            } else {
                store.hold_next()
            };
            let mut ws = raw_connect(&server).await;
            let outcome = raw_handshake(&mut ws, SECRET, identity).await;
            assert!(outcome.is_err(), "no welcome before the deadline");
            within(started).await.expect("the grant was saving");
            gate.open();
        }
    };
    let retry = |identity: Identity| {
        let server = server.clone();
        async move {
            let mut ws = raw_connect(&server).await;
            let outcome = raw_handshake(&mut ws, SECRET, identity).await;
            (ws, outcome)
        }
    };

    // The save completes after the deadline: the name is the agent's, and
    // its retry with the same bind gets it, with its token.
    let late = Identity {
        name: Some("late".into()),
        token: None,
        bind: Some(Key::random()),
    };
    timed_out(late.clone(), false).await;
    let code = wait_for(&mut events, |e| Some(e.code)).await;
    assert_eq!(code, codes::HANDSHAKE_TIMEOUT);
    let (_late_ws, est) = retry(late.clone()).await;
    let est = est.expect("the committed name is given again");
    assert_eq!(est.name, "late");
    assert!(est.first_time);
    assert!(est.identity.token.is_some());
    assert_eq!(server.stats().reserved_names, 0, "a reservation leaked");

    // The save fails after the deadline: nothing was given, and the name is
    // free for anyone.
    let undone = Identity {
        name: Some("undone".into()),
        token: None,
        bind: Some(Key::random()),
    };
    timed_out(undone, true).await;
    let (_undone_ws, est) = retry(Identity {
        name: Some("undone".into()),
        ..Identity::default()
    })
    .await;
    let est = est.expect("an undone name is free");
    assert_eq!(est.name, "undone");
    assert!(est.first_time);

    // An assigned name: committed after the deadline, given again to the
    // same bind; the counter moves on for everyone else.
    let assigned = Identity {
        bind: Some(Key::random()),
        ..Identity::default()
    };
    timed_out(assigned.clone(), false).await;
    let (_a_ws, est) = retry(assigned).await;
    let est = est.expect("the committed number is given again");
    assert_eq!(est.name, "A0001");
    assert!(est.first_time);
    let (_other, other) = connect_plain(&server).await;
    assert_eq!(other, "A0002");
    assert_eq!(server.stats().reserved_names, 0, "a reservation leaked");
    within(server.shutdown()).await;
}
