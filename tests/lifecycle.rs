//! Connection lifecycle: reconnect with backoff (server restart, network cut,
//! half-open links), heartbeats, graceful shutdown, client close, forced
//! disconnect and revocation.

mod support;

use std::sync::Arc;
use std::time::Duration;

use agent_tunnel::client::{AgentClient, Backoff, ClientEvent};
use agent_tunnel::protocol::close;
use agent_tunnel::server::{AgentServer, ServerBuilder, ServerEvent};
use agent_tunnel::{FileStore, HookError, MemoryStore};
use serde_json::{json, Value};
use support::proxy::Proxy;
use support::{soon, wait_for};
use tokio::sync::Notify;

const SECRET: &str = "lifecycle-secret";

fn fast_backoff() -> Backoff {
    Backoff::default()
        .initial_delay(Duration::from_millis(20))
        .max_delay(Duration::from_millis(200))
}

fn server() -> ServerBuilder {
    AgentServer::builder().secret(SECRET)
}

fn echo_client(url: &str) -> agent_tunnel::client::ClientBuilder {
    AgentClient::builder(url, SECRET)
        .reconnect(fast_backoff())
        .on_hook("echo", |v: Value, _| async move { Ok::<_, HookError>(v) })
}

async fn assert_round_trips(server: &AgentServer, client: &AgentClient, name: &str) {
    let v: Value = server
        .send_to(name, "echo", &json!({"to": name}))
        .await
        .expect("server -> agent");
    assert_eq!(v, json!({"to": name}));
    let v: Value = client.send("whoami", &()).await.expect("agent -> server");
    assert_eq!(v, json!(name));
}

fn whoami(server: &AgentServer) {
    server.on_hook("whoami", |_: Value, call| async move {
        Ok::<_, HookError>(call.peer.name().to_owned())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_comes_back_under_its_name_after_a_server_restart_on_the_same_port() {
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("server-names.json");
    let s1 = server()
        .store(FileStore::new(&store_path))
        .start("127.0.0.1:0")
        .await
        .unwrap();
    let addr = s1.local_addr();
    whoami(&s1);
    let client = echo_client(&format!("ws://{addr}"))
        .connect()
        .await
        .unwrap();
    let name = client.name().unwrap();
    assert_round_trips(&s1, &client, &name).await;
    let mut events = client.events();

    s1.shutdown().await;
    let reason = wait_for(&mut events, "Disconnected", |e| match e {
        ClientEvent::Disconnected(r) => Some(r.clone()),
        _ => None,
    })
    .await;
    assert_eq!(reason.code, close::GOING_AWAY, "{reason}");
    // While the server is down, calls fail at once or wait for a reconnect
    // attempt; either way they never hang past their timeout.
    let offline = client
        .send_timeout::<_, Value>("whoami", &(), Duration::from_millis(50))
        .await;
    assert!(offline.is_err());

    let s2 = server()
        .store(FileStore::new(&store_path))
        .start(addr)
        .await
        .unwrap();
    whoami(&s2);
    let mut s2_events = s2.events();
    let back = wait_for(&mut events, "Reconnected", |e| match e {
        ClientEvent::Reconnected { name } => Some(name.clone()),
        _ => None,
    })
    .await;
    assert_eq!(back, name);
    if let Some(agent) = s2.agent(&name) {
        assert!(!agent.first_time(), "a reclaimed name is not new");
    } else {
        let agent = wait_for(&mut s2_events, "AgentConnected", |e| match e {
            ServerEvent::AgentConnected(a) => Some(a.clone()),
            _ => None,
        })
        .await;
        assert!(!agent.first_time());
    }
    assert_round_trips(&s2, &client, &name).await;
    // The restarted server continues the counter: a new agent gets a new name.
    let other = echo_client(&format!("ws://{addr}"))
        .connect()
        .await
        .unwrap();
    assert_ne!(other.name().unwrap(), name);
    client.close().await;
    other.close().await;
    s2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reconnects_after_the_network_cuts_it_off() {
    let s = server().start("127.0.0.1:0").await.unwrap();
    whoami(&s);
    let proxy = Proxy::start(s.local_addr()).await;
    let client = echo_client(&proxy.url()).connect().await.unwrap();
    let name = client.name().unwrap();
    let mut events = client.events();
    let mut s_events = s.events();

    proxy.cut();
    wait_for(&mut events, "Disconnected", |e| {
        matches!(e, ClientEvent::Disconnected(_)).then_some(())
    })
    .await;
    let back = wait_for(&mut events, "Reconnected", |e| match e {
        ClientEvent::Reconnected { name } => Some(name.clone()),
        _ => None,
    })
    .await;
    assert_eq!(back, name);
    // The server saw the old link go and the same name come back.
    wait_for(&mut s_events, "old link gone", |e| match e {
        ServerEvent::AgentDisconnected(a, _) if a.name() == name => Some(()),
        _ => None,
    })
    .await;
    soon("agent registered again", async {
        let mut ev = s.events();
        if s.agent(&name).is_none() {
            wait_for(&mut ev, "AgentConnected", |e| match e {
                ServerEvent::AgentConnected(a) if a.name() == name => Some(()),
                _ => None,
            })
            .await;
        }
    })
    .await;
    assert_round_trips(&s, &client, &name).await;
    client.close().await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reclaim_replaces_a_half_open_link_instead_of_failing_with_duplicate_id() {
    // The server pings rarely, so it still holds the old link when the agent,
    // which pings often, has given up on it and reconnects.
    let s = server()
        .ping_interval(Some(Duration::from_secs(3600)))
        .probe_timeout(Duration::from_millis(300))
        .start("127.0.0.1:0")
        .await
        .unwrap();
    whoami(&s);
    let proxy = Proxy::start(s.local_addr()).await;
    let client = echo_client(&proxy.url())
        .ping_interval(Some(Duration::from_millis(100)))
        .missed_pongs(2)
        .connect()
        .await
        .unwrap();
    let name = client.name().unwrap();
    let mut events = client.events();
    let mut s_events = s.events();

    proxy.freeze();
    let reason = wait_for(&mut events, "client Disconnected", |e| match e {
        ClientEvent::Disconnected(r) => Some(r.clone()),
        _ => None,
    })
    .await;
    assert_eq!(reason.code, close::HEARTBEAT_TIMEOUT, "{reason}");
    let back = wait_for(&mut events, "Reconnected", |e| match e {
        ClientEvent::Reconnected { name } => Some(name.clone()),
        _ => None,
    })
    .await;
    assert_eq!(back, name);
    let (old, why) = wait_for(&mut s_events, "stale link replaced", |e| match e {
        ServerEvent::AgentDisconnected(a, r) => Some((a.clone(), r.clone())),
        _ => None,
    })
    .await;
    assert_eq!(old.name(), name);
    assert_eq!(why.code, close::HEARTBEAT_TIMEOUT, "{why}");
    assert_round_trips(&s, &client, &name).await;
    client.close().await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_live_agent_reclaiming_a_connected_name_gets_duplicate_id() {
    let s = server()
        .probe_timeout(Duration::from_secs(5))
        .start("127.0.0.1:0")
        .await
        .unwrap();
    let url = format!("ws://{}", s.local_addr());
    let store = Arc::new(MemoryStore::new());
    let first = echo_client(&url)
        .store_arc(store.clone())
        .connect()
        .await
        .unwrap();
    // Same identity, while the first is alive and answering pings.
    let second = echo_client(&url).store_arc(store).connect().await;
    assert_eq!(second.unwrap_err().code(), "DUPLICATE_ID");
    assert!(first.is_ready());
    first.close().await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_find_a_silent_peer_on_both_sides() {
    let s = server()
        .ping_interval(Some(Duration::from_millis(100)))
        .missed_pongs(2)
        .start("127.0.0.1:0")
        .await
        .unwrap();
    let proxy = Proxy::start(s.local_addr()).await;
    let client = echo_client(&proxy.url())
        .ping_interval(Some(Duration::from_millis(100)))
        .missed_pongs(2)
        .reconnect(Backoff::disabled())
        .connect()
        .await
        .unwrap();
    let name = client.name().unwrap();
    let mut events = client.events();
    let mut s_events = s.events();

    proxy.freeze();
    let (agent, why) = wait_for(&mut s_events, "server AgentDisconnected", |e| match e {
        ServerEvent::AgentDisconnected(a, r) => Some((a.clone(), r.clone())),
        _ => None,
    })
    .await;
    assert_eq!(agent.name(), name);
    assert_eq!(why.code, close::HEARTBEAT_TIMEOUT);
    assert!(s.agent(&name).is_none(), "registry entry freed");
    let reason = wait_for(&mut events, "client Disconnected", |e| match e {
        ClientEvent::Disconnected(r) => Some(r.clone()),
        _ => None,
    })
    .await;
    assert_eq!(reason.code, close::HEARTBEAT_TIMEOUT);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_calls_in_flight_finish_then_closes_with_1001() {
    let s = server()
        .shutdown_grace(Duration::from_secs(30))
        .start("127.0.0.1:0")
        .await
        .unwrap();
    let started = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let (st, rel) = (started.clone(), release.clone());
    let client = echo_client(&format!("ws://{}", s.local_addr()))
        .on_hook("work", move |_: Value, _| {
            let (st, rel) = (st.clone(), rel.clone());
            async move {
                st.notify_one();
                rel.notified().await;
                Ok::<_, HookError>("finished")
            }
        })
        .connect()
        .await
        .unwrap();
    let name = client.name().unwrap();
    let mut events = client.events();

    let s2 = s.clone();
    let n2 = name.clone();
    let call = tokio::spawn(async move { s2.send_to::<_, String>(n2.as_str(), "work", &()).await });
    soon("hook started", started.notified()).await;
    let s3 = s.clone();
    let shutdown = tokio::spawn(async move { s3.shutdown().await });
    // Shutdown waits for the call; release it, and it completes normally.
    assert!(!shutdown.is_finished());
    release.notify_one();
    assert_eq!(soon("call", call).await.unwrap().unwrap(), "finished");
    soon("shutdown", shutdown).await.unwrap();
    let reason = wait_for(&mut events, "Disconnected", |e| match e {
        ClientEvent::Disconnected(r) => Some(r.clone()),
        _ => None,
    })
    .await;
    assert_eq!(reason.code, close::GOING_AWAY);
    // The port no longer accepts.
    assert!(tokio::net::TcpStream::connect(s.local_addr())
        .await
        .is_err());
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_fails_calls_that_outlive_the_grace() {
    let s = server()
        .shutdown_grace(Duration::from_millis(200))
        .start("127.0.0.1:0")
        .await
        .unwrap();
    let started = Arc::new(Notify::new());
    let st = started.clone();
    let client = echo_client(&format!("ws://{}", s.local_addr()))
        .on_hook("hang", move |_: Value, _| {
            let st = st.clone();
            async move {
                st.notify_one();
                std::future::pending::<()>().await;
                Ok::<_, HookError>(())
            }
        })
        .connect()
        .await
        .unwrap();
    let name = client.name().unwrap();
    let s2 = s.clone();
    let call = tokio::spawn(async move {
        s2.send_to_timeout::<_, Value>(name.as_str(), "hang", &(), Duration::from_secs(300))
            .await
    });
    soon("hook started", started.notified()).await;
    soon("shutdown", s.shutdown()).await;
    let err = soon("call", call).await.unwrap().unwrap_err();
    assert_eq!(err.code(), "CONNECTION_CLOSED");
    assert!(err.to_string().contains("1001"), "{err}");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_close_and_drop_end_the_link_cleanly_without_reconnecting() {
    let s = server().start("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", s.local_addr());
    let mut s_events = s.events();

    let client = echo_client(&url).connect().await.unwrap();
    client.close().await;
    let why = wait_for(&mut s_events, "AgentDisconnected", |e| match e {
        ServerEvent::AgentDisconnected(_, r) => Some(r.clone()),
        _ => None,
    })
    .await;
    assert_eq!(why.code, close::NORMAL);
    assert_eq!(
        client.send::<_, Value>("x", &()).await.unwrap_err().code(),
        "OFFLINE"
    );

    let dropped = echo_client(&url).connect().await.unwrap();
    let dropped_name = dropped.name().unwrap();
    drop(dropped);
    let (agent, why) = wait_for(&mut s_events, "AgentDisconnected after drop", |e| match e {
        ServerEvent::AgentDisconnected(a, r) => Some((a.clone(), r.clone())),
        _ => None,
    })
    .await;
    assert_eq!(agent.name(), dropped_name);
    assert_eq!(why.code, close::NORMAL);
    assert!(s.agents().is_empty());
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_disconnect_reports_the_reason_and_the_agent_comes_back() {
    let s = server().start("127.0.0.1:0").await.unwrap();
    whoami(&s);
    let client = echo_client(&format!("ws://{}", s.local_addr()))
        .connect()
        .await
        .unwrap();
    let name = client.name().unwrap();
    let mut events = client.events();
    s.disconnect(&name, "maintenance window").unwrap();
    let reason = wait_for(&mut events, "Disconnected", |e| match e {
        ClientEvent::Disconnected(r) => Some(r.clone()),
        _ => None,
    })
    .await;
    assert_eq!(reason.code, close::FORCED_DISCONNECT);
    assert_eq!(reason.reason, "maintenance window");
    let back = wait_for(&mut events, "Reconnected", |e| match e {
        ClientEvent::Reconnected { name } => Some(name.clone()),
        _ => None,
    })
    .await;
    assert_eq!(back, name);
    assert_round_trips(&s, &client, &name).await;
    client.close().await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_name_is_told_not_to_come_back() {
    let s = server().start("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", s.local_addr());
    let store = Arc::new(MemoryStore::new());
    let client = echo_client(&url)
        .store_arc(store.clone())
        .connect()
        .await
        .unwrap();
    let name = client.name().unwrap();
    let mut events = client.events();
    s.revoke(&name, "decommissioned").await.unwrap();
    let reason = wait_for(&mut events, "Disconnected", |e| match e {
        ClientEvent::Disconnected(r) => Some(r.clone()),
        _ => None,
    })
    .await;
    assert_eq!(reason.code, close::REVOKED);
    let gave_up = wait_for(&mut events, "GaveUp", |e| match e {
        ClientEvent::GaveUp(err) => Some(err.clone()),
        _ => None,
    })
    .await;
    assert_eq!(gave_up.code(), "REVOKED");
    assert_eq!(
        client.send::<_, Value>("x", &()).await.unwrap_err().code(),
        "OFFLINE"
    );
    // The same identity is refused at the handshake too.
    let again = echo_client(&url).store_arc(store).connect().await;
    assert_eq!(again.unwrap_err().code(), "REVOKED");
    assert!(s.is_revoked(&name));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_gives_up_after_its_last_retry() {
    let s = server().start("127.0.0.1:0").await.unwrap();
    let client = AgentClient::builder(&format!("ws://{}", s.local_addr()), SECRET)
        .reconnect(
            Backoff::default()
                .initial_delay(Duration::from_millis(5))
                .max_delay(Duration::from_millis(20))
                .max_retries(Some(3)),
        )
        .connect()
        .await
        .unwrap();
    let mut events = client.events();
    s.shutdown().await;
    let mut failures = 0;
    let why = wait_for(&mut events, "GaveUp", |e| match e {
        ClientEvent::Error(_) => {
            failures += 1;
            None
        }
        ClientEvent::GaveUp(err) => Some(err.clone()),
        _ => None,
    })
    .await;
    assert_eq!(failures, 3, "one failed attempt per retry");
    assert_eq!(why.code(), "TRANSPORT", "{why}");
    assert_eq!(
        client.send::<_, Value>("x", &()).await.unwrap_err().code(),
        "OFFLINE"
    );
}

/// Kicks the agent and waits for it to come back (or give up).
async fn kick_and_wait(
    s: &AgentServer,
    name: &str,
    events: &mut tokio::sync::broadcast::Receiver<ClientEvent>,
) -> Result<String, String> {
    s.disconnect(name, "kick").unwrap();
    wait_for(events, "Reconnected or GaveUp", |e| match e {
        ClientEvent::Reconnected { name } => Some(Ok(name.clone())),
        ClientEvent::GaveUp(err) => Some(Err(err.code().to_owned())),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_count_starts_over_after_a_healthy_link() {
    let s = server().start("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", s.local_addr());
    let one_retry = Backoff::default()
        .initial_delay(Duration::from_millis(5))
        .max_retries(Some(1));

    // Every link counts as healthy at once: each kick gets a fresh retry.
    let client = echo_client(&url)
        .reconnect(one_retry.clone().healthy_after(Duration::ZERO))
        .connect()
        .await
        .unwrap();
    let name = client.name().unwrap();
    let mut events = client.events();
    for _ in 0..3 {
        assert_eq!(
            kick_and_wait(&s, &name, &mut events).await,
            Ok(name.clone())
        );
        soon("registered again", async {
            while s.agent(&name).is_none() {
                tokio::task::yield_now().await;
            }
        })
        .await;
    }
    client.close().await;

    // No link counts as healthy: the second kick finds the retry used up.
    let client = echo_client(&url)
        .reconnect(one_retry.healthy_after(Duration::from_secs(3600)))
        .connect()
        .await
        .unwrap();
    let name = client.name().unwrap();
    let mut events = client.events();
    assert_eq!(
        kick_and_wait(&s, &name, &mut events).await,
        Ok(name.clone())
    );
    soon("registered again", async {
        while s.agent(&name).is_none() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let second = kick_and_wait(&s, &name, &mut events).await;
    assert!(second.is_err(), "{second:?}");
    s.shutdown().await;
}
