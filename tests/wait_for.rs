//! Issue 10, item 4: waiting for agents. `wait_for(name, timeout)` resolves
//! when the agent is connected; `call(name).when_online()` waits for the
//! agent to (re)connect up to the call's deadline before sending;
//! `wait_for_count(selector, n, timeout)` resolves once enough agents are
//! selected. Waiters are bounded (`BUSY`), end at their deadline, when
//! their caller drops them, at revocation (`REVOKED`) and at shutdown
//! (`SHUTDOWN`).

mod common;

use std::sync::Arc;
use std::time::Duration;

use agent_tunnel::client::Backoff;
use agent_tunnel::server::{AgentServer, Selector};
use agent_tunnel::{codes, HookError, MemoryStore, NameStore};
use common::*;
use serde_json::Value;

fn sel(s: &str) -> Selector {
    s.parse().expect("valid selector")
}

/// Waits until the server counts `n` waiters.
async fn waiters(server: &AgentServer, n: usize) {
    within(async {
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        while server.stats().waiters != n {
            tick.tick().await;
        }
    })
    .await;
}

fn echo(b: agent_tunnel::client::ClientBuilder) -> agent_tunnel::client::ClientBuilder {
    b.on_hook("echo", |v: Value, _| async move { Ok::<_, HookError>(v) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_a_connected_agent_resolves_at_once() {
    let server = start_server().await;
    let (_c, name) = connect_plain(&server).await;
    let agent = within(server.wait_for(&name, Duration::from_millis(1)))
        .await
        .expect("connected");
    assert_eq!(agent.name(), name);
    assert_eq!(server.stats().waiters, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_resolves_when_the_agent_reconnects() {
    let server = start_server().await;
    let client = connect(
        &server,
        client_builder(&server).reconnect(
            Backoff::default()
                .initial_delay(Duration::from_millis(200))
                .max_delay(Duration::from_millis(200)),
        ),
    )
    .await;
    let name = client.name().expect("named");
    let old = server.agent(&name).expect("listed").connection_id();
    server.disconnect(&name, "restart").expect("connected");
    let waiting = {
        let server = server.clone();
        let name = name.clone();
        tokio::spawn(async move { server.wait_for(&name, LIMIT).await })
    };
    let agent = within(waiting).await.expect("joined").expect("back");
    assert_eq!(agent.name(), name);
    assert_ne!(agent.connection_id(), old);
    assert!(agent.is_connected());
    assert_eq!(server.stats().waiters, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_a_name_never_given_resolves_when_an_agent_chooses_it() {
    let server = start_server().await;
    let waiting = {
        let server = server.clone();
        tokio::spawn(async move { server.wait_for("db-7", LIMIT).await })
    };
    waiters(&server, 1).await;
    let _c = connect(&server, client_builder(&server).name("db-7")).await;
    let agent = within(waiting).await.expect("joined").expect("connected");
    assert_eq!(agent.name(), "db-7");
    // A name no agent can have fails at once.
    let err = within(server.wait_for("bad name", LIMIT))
        .await
        .expect_err("invalid");
    assert_eq!(err.code(), codes::UNKNOWN_AGENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_times_out_and_leaves_no_waiter() {
    let server = start_server().await;
    let err = within(server.wait_for("A0042", Duration::from_millis(50)))
        .await
        .expect_err("nobody");
    assert_eq!(err.code(), codes::TIMEOUT);
    assert_eq!(server.stats().waiters, 0);
    // A dropped wait leaves none either.
    let waiting = {
        let server = server.clone();
        tokio::spawn(async move { server.wait_for("A0042", LIMIT).await })
    };
    waiters(&server, 1).await;
    waiting.abort();
    let _ = waiting.await;
    assert_eq!(server.stats().waiters, 0);
    assert!(server.stats().is_idle());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_bounded() {
    let err = within(server_builder().max_waiters(0).start("127.0.0.1:0"))
        .await
        .expect_err("zero waiters");
    assert_eq!(err.code(), codes::CONFIG);

    let server = start(server_builder().max_waiters(2)).await;
    let spawn_wait = |name: &'static str| {
        let server = server.clone();
        tokio::spawn(async move { server.wait_for(name, LIMIT).await })
    };
    let a = spawn_wait("A0001");
    let b = spawn_wait("A0002");
    waiters(&server, 2).await;
    let err = within(server.wait_for("A0003", LIMIT))
        .await
        .expect_err("full");
    assert_eq!(err.code(), codes::BUSY);
    let err = within(server.wait_for_count(&sel("role=db"), 1, LIMIT))
        .await
        .expect_err("full");
    assert_eq!(err.code(), codes::BUSY);
    let err = within(
        server
            .call("A0003")
            .when_online()
            .timeout(LIMIT)
            .send::<_, Value>("echo", &()),
    )
    .await
    .expect_err("full");
    assert_eq!(err.code(), codes::BUSY);
    // A wait that ends frees its place.
    a.abort();
    let _ = a.await;
    waiters(&server, 1).await;
    let c = {
        let server = server.clone();
        tokio::spawn(async move { server.wait_for("A0003", LIMIT).await })
    };
    waiters(&server, 2).await;
    b.abort();
    c.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_every_waiter_with_shutdown() {
    let server = start_server().await;
    let by_name = {
        let server = server.clone();
        tokio::spawn(async move { server.wait_for("A0042", LIMIT).await })
    };
    let by_count = {
        let server = server.clone();
        tokio::spawn(async move { server.wait_for_count(&sel("role=db"), 3, LIMIT).await })
    };
    let by_call = {
        let server = server.clone();
        tokio::spawn(async move {
            server
                .call("A0042")
                .when_online()
                .timeout(LIMIT)
                .send::<_, Value>("echo", &())
                .await
        })
    };
    waiters(&server, 3).await;
    within(server.shutdown()).await;
    for (what, result) in [
        (
            "wait_for",
            within(by_name).await.expect("joined").map(|_| ()),
        ),
        (
            "wait_for_count",
            within(by_count).await.expect("joined").map(|_| ()),
        ),
        (
            "when_online",
            within(by_call).await.expect("joined").map(|_| ()),
        ),
    ] {
        assert_eq!(result.expect_err(what).code(), codes::SHUTDOWN, "{what}");
    }
    assert_eq!(server.stats().waiters, 0);
    // New waits after shutdown fail at once.
    let err = within(server.wait_for("A0042", LIMIT))
        .await
        .expect_err("stopped");
    assert_eq!(err.code(), codes::SHUTDOWN);
    let err = within(server.wait_for_count(&sel("x"), 1, LIMIT))
        .await
        .expect_err("stopped");
    assert_eq!(err.code(), codes::SHUTDOWN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_name_ends_its_waiters() {
    let server = start_server().await;
    let waiting = {
        let server = server.clone();
        tokio::spawn(async move { server.wait_for("A0042", LIMIT).await })
    };
    waiters(&server, 1).await;
    within(server.revoke("A0042", "decommissioned"))
        .await
        .expect("revoked");
    let err = within(waiting).await.expect("joined").expect_err("revoked");
    assert_eq!(err.code(), codes::REVOKED);
    let err = within(server.wait_for("A0042", LIMIT))
        .await
        .expect_err("revoked");
    assert_eq!(err.code(), codes::REVOKED);
    assert_eq!(server.stats().waiters, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_online_sends_once_the_agent_is_back() {
    let server = start_server().await;
    // One identity for both runs of the agent, so the second reclaims the name.
    let store: Arc<dyn NameStore> = Arc::new(MemoryStore::new());
    let agent = || echo(client_builder(&server)).store_arc(Arc::clone(&store));
    let client = connect(&server, agent()).await;
    let name = client.name().expect("named");
    close_and_wait(&server, client, &name).await;
    // Without the option: at once, AGENT_NOT_CONNECTED.
    let err = within(server.call(name.as_str()).send::<_, Value>("echo", &1))
        .await
        .expect_err("offline");
    assert_eq!(err.code(), codes::AGENT_NOT_CONNECTED);
    let err = within(server.send_to::<_, Value>(name.as_str(), "echo", &1))
        .await
        .expect_err("offline");
    assert_eq!(err.code(), codes::AGENT_NOT_CONNECTED);
    // With it: sent once the agent is back, within the call's deadline.
    let call = {
        let server = server.clone();
        let name = name.clone();
        tokio::spawn(async move {
            server
                .call(name)
                .when_online()
                .timeout(LIMIT)
                .send::<_, Value>("echo", &"hello")
                .await
        })
    };
    waiters(&server, 1).await;
    let back = connect(&server, agent()).await;
    assert_eq!(back.name().as_deref(), Some(name.as_str()));
    let answer = within(call).await.expect("joined").expect("answered");
    assert_eq!(answer, "hello");
    assert_eq!(server.stats().waiters, 0);
    // Connected: sent at once, the option changes nothing.
    let answer: Value = within(server.call(name.as_str()).when_online().send("echo", &2))
        .await
        .expect("answered");
    assert_eq!(answer, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_online_gives_up_at_the_deadline_without_sending() {
    let server = start_server().await;
    let (client, name) = connect_plain(&server).await;
    close_and_wait(&server, client, &name).await;
    let err = within(
        server
            .call(name.as_str())
            .when_online()
            .timeout(Duration::from_millis(100))
            .send::<_, Value>("echo", &()),
    )
    .await
    .expect_err("never back");
    assert_eq!(err.code(), codes::AGENT_NOT_CONNECTED);
    assert_eq!(server.stats().waiters, 0);
    // A revoked name is not waited for.
    within(server.revoke(&name, "gone")).await.expect("revoked");
    let err = within(
        server
            .call(name.as_str())
            .when_online()
            .timeout(LIMIT)
            .send::<_, Value>("echo", &()),
    )
    .await
    .expect_err("revoked");
    assert_eq!(err.code(), codes::REVOKED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_count_follows_connects_and_label_changes() {
    let server = start_server().await;
    let dbs = sel("role=db");
    // Already there: at once.
    assert_eq!(
        within(server.wait_for_count(&dbs, 0, Duration::from_millis(1)))
            .await
            .expect("zero"),
        0
    );
    let waiting = {
        let server = server.clone();
        let dbs = dbs.clone();
        tokio::spawn(async move { server.wait_for_count(&dbs, 2, LIMIT).await })
    };
    waiters(&server, 1).await;
    let _db = connect(&server, client_builder(&server).label("role", "db")).await;
    let web = connect(&server, client_builder(&server).label("role", "web")).await;
    // One db and one web: still waiting.
    assert_eq!(server.stats().waiters, 1);
    assert!(!waiting.is_finished());
    // The web agent becomes a db: two.
    let web = server.agent(&web.name().expect("named")).expect("listed");
    web.set_label("role", "db").expect("valid");
    let n = within(waiting).await.expect("joined").expect("reached");
    assert_eq!(n, 2);
    assert_eq!(server.stats().waiters, 0);

    // A count that never comes times out.
    let err = within(server.wait_for_count(&dbs, 3, Duration::from_millis(50)))
        .await
        .expect_err("only two");
    assert_eq!(err.code(), codes::TIMEOUT);

    // An agent that leaves counts down: two dbs, one leaves, two more needed.
    let waiting = {
        let server = server.clone();
        let dbs = dbs.clone();
        tokio::spawn(async move { server.wait_for_count(&dbs, 3, LIMIT).await })
    };
    waiters(&server, 1).await;
    let mut events = server.events();
    web.disconnect("bye");
    wait_disconnected(&mut events, web.name()).await;
    let _db2 = connect(&server, client_builder(&server).label("role", "db")).await;
    assert!(!waiting.is_finished());
    let _db3 = connect(&server, client_builder(&server).label("role", "db")).await;
    let n = within(waiting).await.expect("joined").expect("reached");
    assert_eq!(n, 3);
}
