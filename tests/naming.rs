//! Issue 2, item 2: naming. The `name_format` counter, `first_time`, name
//! reclaim with the stored token, `DUPLICATE_ID`, `NAME_TAKEN` for a claim
//! without the token, names of the agent's own choosing, and no name given
//! twice across a server restart with a `FileStore`. Issue 8: a first-time
//! grant given again to the agent that proves its `bind`.

mod common;

use std::sync::Arc;

use agent_tunnel::client::Backoff;
use agent_tunnel::protocol::close;
use agent_tunnel::protocol::crypto::Key;
use agent_tunnel::protocol::handshake::Identity;
use agent_tunnel::server::AgentServer;
use agent_tunnel::{codes, FileStore, HookError, MemoryStore, NameStore};
use common::*;
use serde_json::Value;

/// Connects `n` clients one after the other and returns them with the names
/// they were given, in order.
async fn connect_many(
    server: &AgentServer,
    n: usize,
) -> (Vec<agent_tunnel::client::AgentClient>, Vec<String>) {
    let mut clients = Vec::new();
    let mut names = Vec::new();
    for _ in 0..n {
        let (c, name) = connect_plain(server).await;
        clients.push(c);
        names.push(name);
    }
    (clients, names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn format_a_hash_counts_from_one_and_grows_past_its_width() {
    let server = start(server_builder().name_format("A#")).await;
    let (_clients, names) = connect_many(&server, 10).await;
    let expected: Vec<String> = (1..=10).map(|n| format!("A{n}")).collect();
    assert_eq!(names, expected);
    let listed: Vec<String> = server
        .agents()
        .iter()
        .map(|a| a.name().to_owned())
        .collect();
    assert_eq!(listed.len(), 10);
    for name in &expected {
        assert!(listed.contains(name), "{name} missing from {listed:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn format_pads_the_counter_to_the_width_of_its_run() {
    let server = start(server_builder().name_format("A###")).await;
    let (_clients, names) = connect_many(&server, 3).await;
    assert_eq!(names, ["A001", "A002", "A003"]);

    // Text may stand on both sides of the run.
    let server = start(server_builder().name_format("node-##-eu")).await;
    let (_clients, names) = connect_many(&server, 2).await;
    assert_eq!(names, ["node-01-eu", "node-02-eu"]);

    // The default format is `A####`.
    let server = start_server().await;
    let (_client, name) = connect_plain(&server).await;
    assert_eq!(name, "A0001");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_without_a_counter_is_a_config_error() {
    let err = within(server_builder().name_format("agent").start("127.0.0.1:0"))
        .await
        .expect_err("a format with no `#` must be refused");
    assert_eq!(err.code(), codes::CONFIG, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_time_is_true_only_when_the_name_is_newly_given() {
    let server = start_server().await;
    let store: Arc<dyn NameStore> = Arc::new(MemoryStore::new());

    let first = connect(
        &server,
        client_builder(&server).store_arc(Arc::clone(&store)),
    )
    .await;
    let name = first.name().unwrap();
    assert!(server.agent(&name).unwrap().first_time());
    close_and_wait(&server, first, &name).await;

    // The same identity comes back: same name, not new.
    let again = connect(
        &server,
        client_builder(&server).store_arc(Arc::clone(&store)),
    )
    .await;
    assert_eq!(again.name().as_deref(), Some(name.as_str()));
    assert!(!server.agent(&name).unwrap().first_time());

    // A fresh identity gets a new name, new to it.
    let (_other, other_name) = connect_plain(&server).await;
    assert_ne!(other_name, name);
    assert!(server.agent(&other_name).unwrap().first_time());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_name_and_token_reclaim_the_name_through_a_file_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.json");
    let server = start_server().await;
    let _before = connect_plain(&server).await;

    let client = connect(
        &server,
        client_builder(&server).store(FileStore::new(&path)),
    )
    .await;
    let name = client.name().unwrap();
    assert_eq!(name, "A0002");
    close_and_wait(&server, client, &name).await;
    // Other agents come and go in between.
    let (_after, after_name) = connect_plain(&server).await;
    assert_eq!(after_name, "A0003");

    // A new process with the same file gets its name back.
    let client = connect(
        &server,
        client_builder(&server).store(FileStore::new(&path)),
    )
    .await;
    assert_eq!(client.name().as_deref(), Some("A0002"));
    let agent = server.agent("A0002").expect("reclaimed agent is live");
    assert!(!agent.first_time());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_live_connection_for_a_connected_name_gets_duplicate_id() {
    let server = start_server().await;
    server.on_hook("whoami", |_: Value, call| async move {
        Ok::<_, HookError>(call.peer.name().to_owned())
    });
    let store: Arc<dyn NameStore> = Arc::new(MemoryStore::new());
    let live = connect(
        &server,
        client_builder(&server)
            .store_arc(Arc::clone(&store))
            .on_hook("ping", |_: Value, _| async { Ok::<_, HookError>("pong") }),
    )
    .await;
    let name = live.name().unwrap();

    // Same name and a valid token, but the name is connected already.
    let err = within(
        client_builder(&server)
            .store_arc(Arc::clone(&store))
            .reconnect(Backoff::disabled())
            .connect(),
    )
    .await
    .expect_err("a second live connection must be refused");
    assert_eq!(err.code(), codes::DUPLICATE_ID, "{err}");

    // The live agent keeps its name and its link.
    let pong: String = within(server.send_to(name.as_str(), "ping", &()))
        .await
        .unwrap();
    assert_eq!(pong, "pong");
    let me: String = within(live.send("whoami", &())).await.unwrap();
    assert_eq!(me, name);
    assert_eq!(server.agents().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_duplicate_is_closed_with_4003() {
    let server = start_server().await;
    let store: Arc<dyn NameStore> = Arc::new(MemoryStore::new());
    let _live = connect(
        &server,
        client_builder(&server).store_arc(Arc::clone(&store)),
    )
    .await;
    // The client keeps its name and token in the store; read them back.
    let doc = store
        .load()
        .await
        .unwrap()
        .expect("the client saved its identity");
    let name = doc["name"]
        .as_str()
        .expect("name in the identity")
        .to_owned();
    let token = Key::from_hex(doc["token"].as_str().expect("token in the identity")).unwrap();

    let mut ws = raw_connect(&server).await;
    let err = raw_handshake(
        &mut ws,
        SECRET,
        Identity {
            name: Some(name),
            token: Some(token),
            bind: None,
        },
    )
    .await
    .expect_err("a duplicate must be refused");
    assert_eq!(err.code(), codes::DUPLICATE_ID);
    assert_eq!(expect_close(&mut ws).await.code, close::DUPLICATE_ID);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claiming_a_given_name_without_its_token_is_name_taken() {
    let server = start_server().await;
    let (victim, name) = connect_plain(&server).await;
    assert_eq!(name, "A0001");

    // While the owner is connected: refused, and the owner stays.
    let err = within(
        client_builder(&server)
            .name("A0001")
            .reconnect(Backoff::disabled())
            .connect(),
    )
    .await
    .expect_err("a takeover must be refused");
    assert_eq!(err.code(), codes::NAME_TAKEN, "{err}");
    assert!(server.agent("A0001").is_some_and(|a| a.is_connected()));
    assert!(victim.is_ready());

    // While the owner is offline: still refused.
    close_and_wait(&server, victim, &name).await;
    let err = within(
        client_builder(&server)
            .name("A0001")
            .reconnect(Backoff::disabled())
            .connect(),
    )
    .await
    .expect_err("a takeover must be refused");
    assert_eq!(err.code(), codes::NAME_TAKEN, "{err}");
    assert!(server.agent("A0001").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_claim_is_refused_with_4004() {
    let server = start_server().await;
    let (_owner, name) = connect_plain(&server).await;

    // Holds the shared secret, names the name, and makes up a token.
    let mut ws = raw_connect(&server).await;
    let err = raw_handshake(
        &mut ws,
        SECRET,
        Identity {
            name: Some(name),
            token: Some(Key::random()),
            bind: None,
        },
    )
    .await
    .expect_err("a forged claim must be refused");
    assert_eq!(err.code(), codes::NAME_TAKEN);
    assert_eq!(expect_close(&mut ws).await.code, close::NAME_REFUSED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_may_choose_its_own_name_and_it_is_bound_the_same_way() {
    let server = start_server().await;
    let store: Arc<dyn NameStore> = Arc::new(MemoryStore::new());

    let chosen = connect(
        &server,
        client_builder(&server)
            .name("build-box-7")
            .store_arc(Arc::clone(&store)),
    )
    .await;
    assert_eq!(chosen.name().as_deref(), Some("build-box-7"));
    assert!(server.agent("build-box-7").unwrap().first_time());
    // Choosing a name takes nothing from the counter's sequence.
    let (_assigned, assigned) = connect_plain(&server).await;
    assert_eq!(assigned, "A0001");

    close_and_wait(&server, chosen, "build-box-7").await;
    // Someone else cannot take it...
    let err = within(
        client_builder(&server)
            .name("build-box-7")
            .reconnect(Backoff::disabled())
            .connect(),
    )
    .await
    .expect_err("a chosen name is bound to its token");
    assert_eq!(err.code(), codes::NAME_TAKEN, "{err}");
    // ...but its owner gets it back.
    let back = connect(
        &server,
        client_builder(&server)
            .name("build-box-7")
            .store_arc(Arc::clone(&store)),
    )
    .await;
    assert_eq!(back.name().as_deref(), Some("build-box-7"));
    assert!(!server.agent("build-box-7").unwrap().first_time());

    // A name outside the allowed syntax is refused.
    let err = within(
        client_builder(&server)
            .name("has space")
            .reconnect(Backoff::disabled())
            .connect(),
    )
    .await
    .expect_err("an invalid name must be refused");
    assert_eq!(err.code(), codes::INVALID_NAME, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_is_never_given_twice_across_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server_file = dir.path().join("server.json");
    let agent_file = dir.path().join("agent.json");

    let first = start(server_builder().store(FileStore::new(&server_file))).await;
    let a = connect(
        &first,
        client_builder(&first).store(FileStore::new(&agent_file)),
    )
    .await;
    let (b, b_name) = connect_plain(&first).await;
    assert_eq!(a.name().as_deref(), Some("A0001"));
    assert_eq!(b_name, "A0002");
    close_and_wait(&first, a, "A0001").await;
    close_and_wait(&first, b, "A0002").await;
    within(first.shutdown()).await;

    // A new server process on the same store file.
    let second = start(server_builder().store(FileStore::new(&server_file))).await;
    let (_fresh, fresh) = connect_plain(&second).await;
    assert_eq!(fresh, "A0003", "a name given before the restart came back");
    // It still knows the names it gave, and the tokens it gave still hold.
    let err = within(second.send_to::<_, Value>("A0002", "x", &()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::AGENT_NOT_CONNECTED, "{err}");
    let a = connect(
        &second,
        client_builder(&second).store(FileStore::new(&agent_file)),
    )
    .await;
    assert_eq!(a.name().as_deref(), Some("A0001"));
    assert!(!second.agent("A0001").unwrap().first_time());
}

/// Does one raw handshake with `identity` and drops the connection.
async fn raw_try(
    server: &AgentServer,
    identity: Identity,
) -> Result<agent_tunnel::protocol::handshake::Established, agent_tunnel::Error> {
    let mut ws = raw_connect(server).await;
    raw_handshake(&mut ws, SECRET, identity).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_first_welcome_was_lost_gets_the_same_grant_with_its_bind() {
    let server = start_server().await;
    let mut events = server.events();
    let bind = Key::random();
    let lost = Identity {
        name: Some("lost-welcome".into()),
        token: None,
        bind: Some(bind.clone()),
    };
    // The welcome is read here, but the agent is taken not to have got it.
    let first = raw_try(&server, lost.clone()).await.expect("welcome");
    assert!(first.first_time);
    wait_disconnected(&mut events, "lost-welcome").await;

    // The same bind: the same grant, token and all.
    let again = raw_try(&server, lost.clone())
        .await
        .expect("the same grant");
    assert_eq!(again.name, "lost-welcome");
    assert!(again.first_time);
    assert_eq!(again.identity.token, first.identity.token);
    assert_eq!(again.identity.bind, None, "a token replaces the bind");
    wait_disconnected(&mut events, "lost-welcome").await;

    // Another bind, or none: the name is someone else's.
    for other in [Some(Key::random()), None] {
        let err = raw_try(
            &server,
            Identity {
                bind: other,
                ..lost.clone()
            },
        )
        .await
        .expect_err("only the bind of the grant repeats it");
        assert_eq!(err.code(), codes::NAME_TAKEN, "{err}");
    }

    // Once the agent reclaims the name with its token, the bind is spent.
    let reclaim = raw_try(&server, again.identity.clone())
        .await
        .expect("reclaim");
    assert!(!reclaim.first_time);
    wait_disconnected(&mut events, "lost-welcome").await;
    let err = raw_try(&server, lost).await.expect_err("the bind is spent");
    assert_eq!(err.code(), codes::NAME_TAKEN, "{err}");

    // An assigned name: the same number again, and the counter moves on
    // only for other agents.
    let assigned = Identity {
        bind: Some(Key::random()),
        ..Identity::default()
    };
    let first = raw_try(&server, assigned.clone()).await.expect("welcome");
    assert_eq!(first.name, "A0001");
    wait_disconnected(&mut events, "A0001").await;
    let again = raw_try(&server, assigned).await.expect("the same grant");
    assert_eq!(again.name, "A0001");
    assert!(again.first_time);
    assert_eq!(again.identity.token, first.identity.token);
    let (_other, other) = connect_plain(&server).await;
    assert_eq!(other, "A0002");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_bind_is_a_protocol_error() {
    use agent_tunnel::protocol::frame::Frame;
    use agent_tunnel::protocol::handshake::ClientHandshake;
    use agent_tunnel::protocol::{transport, Secret};

    let server = start_server().await;
    let mut ws = raw_connect(&server).await;
    let hello = within(transport::recv_frame(&mut ws)).await.unwrap();
    let mut hs = ClientHandshake::new(Identity::default(), Default::default());
    let Frame::Auth(mut auth) = hs.on_hello(&Secret::from(SECRET), hello).unwrap() else {
        panic!("not auth")
    };
    auth.bind = Some("not hex".into());
    within(transport::send_frame(&mut ws, &Frame::Auth(auth)))
        .await
        .unwrap();
    let closed = expect_close(&mut ws).await;
    assert_eq!(closed.code, close::PROTOCOL_ERROR);
    assert!(
        matches!(closed.decoded().as_slice(), [Frame::Reject(r)] if r.code == codes::PROTOCOL_ERROR),
        "{closed:?}"
    );
    assert!(server.agents().is_empty());
}
