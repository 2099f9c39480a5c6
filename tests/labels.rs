//! Issue 10, item 1: labels. An agent presents labels at connect
//! (`ClientBuilder::label`, checked at connect: `CONFIG`), sent in
//! `auth.labels` and checked again by the server (a proven `reject`
//! `INVALID_MESSAGE`, close 4000); the admission hook `on_admit` sets,
//! overrides or refuses (`NOT_ADMITTED`, close 4012; a panicking hook:
//! `INTERNAL_ERROR`, 1011); the server changes them later
//! (`Agent::set_label`, `remove_label`, `set_labels`); they show on the
//! `Agent` in events and in `agents()`, and last one connection.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_tunnel::client::Backoff;
use agent_tunnel::protocol::codec;
use agent_tunnel::protocol::frame::Frame;
use agent_tunnel::protocol::handshake::{ClientHandshake, Identity};
use agent_tunnel::protocol::{close, transport, Secret};
use agent_tunnel::server::{Labels, NotAdmitted, Selector, ServerEvent};
use agent_tunnel::{codes, Error};
use common::*;
use serde_json::{json, Map, Value};

fn labels(s: &str) -> Labels {
    s.parse().expect("valid labels")
}

fn sel(s: &str) -> Selector {
    s.parse().expect("valid selector")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presented_labels_show_on_the_agent_in_events_and_in_agents() {
    let server = start_server().await;
    let mut events = server.events();
    let client = within(
        client_builder(&server)
            .label("region", "eu")
            .label("acme.io/role", "db")
            .label("canary", "")
            .label("region", "eu-west") // a later value for the same key wins
            .connect(),
    )
    .await
    .expect("connects");
    let name = client.name().expect("named");
    let from_event = wait_for(&mut events, |e| match e {
        ServerEvent::AgentConnected(a) if a.name() == name => Some(a),
        _ => None,
    })
    .await;
    let want = labels("acme.io/role=db,canary=,region=eu-west");
    assert_eq!(from_event.labels(), want);
    assert_eq!(server.agent(&name).expect("listed").labels(), want);
    let listed = server.agents();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].labels(), want);
    assert!(format!("{:?}", listed[0]).contains("region"));

    // An agent without labels has none.
    let (_plain, plain) = connect_plain(&server).await;
    assert!(server.agent(&plain).expect("listed").labels().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_label_fails_connect_with_config_before_dialing() {
    let server = start_server().await;
    for (key, value, says) in [
        (
            "region",
            "eu west",
            "invalid value \"eu west\" for label \"region\"",
        ),
        ("-region", "eu", "invalid label key \"-region\""),
        ("Acme.io/role", "db", "DNS subdomain"),
        ("name", "A1", "reserved"),
        ("k", &"v".repeat(64) as &str, "longer than 63"),
    ] {
        let err = within(client_builder(&server).label(key, value).connect())
            .await
            .expect_err("refused");
        assert_eq!(err.code(), codes::CONFIG, "{key}={value}: {err}");
        assert!(err.to_string().contains(says), "{err}");
    }
    let mut builder = client_builder(&server);
    for i in 0..65 {
        builder = builder.label(&format!("k{i}"), "v");
    }
    let err = within(builder.connect()).await.expect_err("too many");
    assert!(err.to_string().contains("more than 64 labels"), "{err}");
    // Nothing reached the server.
    assert_eq!(server.handshake_failure_counts().values().sum::<u64>(), 0);
    assert_eq!(server.stats().agents, 0);
}

/// Runs a raw handshake whose `auth` carries `labels` as given, and
/// returns how the server ended it, with whether its `reject` was proven.
async fn raw_auth_with_labels(
    server: &agent_tunnel::server::AgentServer,
    labels: Value,
) -> (Closed, bool) {
    let secret = Secret::from(SECRET);
    let mut ws = raw_connect(server).await;
    let mut hs = ClientHandshake::new(Identity::default(), Map::new());
    let hello = within(transport::recv_frame(&mut ws)).await.expect("hello");
    let auth = hs.on_hello(&secret, hello).expect("auth");
    let mut auth: Value = serde_json::from_str(&codec::encode(&auth)).expect("json");
    auth["labels"] = labels;
    send_json(&mut ws, &auth).await;
    let closed = expect_close(&mut ws).await;
    let proven = closed.decoded().iter().any(|f| match f {
        Frame::Reject(r) => hs.reject_is_proven(&secret, r),
        _ => false,
    });
    (closed, proven)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_refuses_invalid_labels_with_a_proven_invalid_message() {
    let server = start_server().await;
    for (bad, says) in [
        (json!({"region": "eu west"}), "invalid value"),
        (json!({"a b": "x"}), "invalid label key"),
        (json!({"name": "A1"}), "reserved"),
        (json!({"region": 7}), "invalid type"),
    ] {
        let (closed, proven) = raw_auth_with_labels(&server, bad.clone()).await;
        assert_eq!(closed.code, close::PROTOCOL_ERROR, "{bad}");
        let reject = closed
            .decoded()
            .into_iter()
            .find_map(|f| match f {
                Frame::Reject(r) => Some(r),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{bad}: a reject before the close"));
        assert_eq!(reject.code, codes::INVALID_MESSAGE, "{bad}");
        assert!(
            reject.message.starts_with("auth.labels: "),
            "{}",
            reject.message
        );
        assert!(reject.message.contains(says), "{bad}: {}", reject.message);
        assert!(proven, "{bad}: the refusal carries the server's proof");
    }
    // `labels` that is not an object is a malformed frame: closed, no reject.
    let (closed, _) = raw_auth_with_labels(&server, json!(["region=eu"])).await;
    assert_eq!(closed.code, close::PROTOCOL_ERROR);
    assert!(closed.decoded().is_empty());
    // No name was spent on any of them, and the server goes on.
    assert_eq!(server.stats().agents, 0);
    let (_c, name) = connect_plain(&server).await;
    assert_eq!(name, "A0001");
    assert_eq!(
        server
            .handshake_failure_counts()
            .get(codes::INVALID_MESSAGE)
            .copied(),
        Some(4)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_admit_sets_and_overrides_labels_and_sees_the_agent() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = Arc::clone(&seen);
    let server = start(server_builder().on_admit(move |agent| {
        seen2.lock().unwrap().push((
            agent.name().to_owned(),
            agent.first_time(),
            agent.is_tls(),
            agent.peer_addr().ip().is_loopback(),
            agent.meta().get("build").cloned(),
            agent.labels().clone(),
        ));
        let mut l = agent.labels().clone();
        // The server's word on the role; a label the agent may not set.
        l.insert("role", "web")
            .map_err(|e| NotAdmitted::new(e.to_string()))?;
        l.remove("acme.io/trusted");
        l.insert("admitted-by", "policy-7")
            .map_err(|e| NotAdmitted::new(e.to_string()))?;
        Ok(l)
    }))
    .await;
    let client = connect(
        &server,
        client_builder(&server)
            .meta("build", 42)
            .label("region", "eu")
            .label("role", "db")
            .label("acme.io/trusted", "yes"),
    )
    .await;
    let name = client.name().expect("named");
    let agent = server.agent(&name).expect("listed");
    assert_eq!(
        agent.labels(),
        labels("admitted-by=policy-7,region=eu,role=web")
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![(
            name.clone(),
            true,
            false,
            true,
            Some(json!(42)),
            labels("acme.io/trusted=yes,region=eu,role=db")
        )]
    );
    // Selections see what the hook decided, not what the agent said.
    assert_eq!(server.select(sel("role=web")).count(), 1);
    assert_eq!(server.select(sel("role=db")).count(), 0);
    assert_eq!(server.select(sel("acme.io/trusted")).count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_admit_refuses_with_a_proven_not_admitted_and_4012() {
    let server = start(server_builder().on_admit(|agent| {
        if agent.labels().get("env") == Some("prod") {
            return Err(NotAdmitted::new(
                "prod agents belong to another control plane",
            ));
        }
        Ok(agent.labels().clone())
    }))
    .await;
    let err = within(client_builder(&server).label("env", "prod").connect())
        .await
        .expect_err("refused");
    match &err {
        Error::Rejected { code, message } => {
            assert_eq!(code, codes::NOT_ADMITTED);
            assert_eq!(message, "prod agents belong to another control plane");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    // On the wire: a proven reject, then close code 4012.
    let (closed, proven) = raw_auth_with_labels(&server, json!({"env": "prod"})).await;
    assert_eq!(closed.code, close::NOT_ADMITTED);
    assert!(proven);
    assert_eq!(
        server
            .handshake_failure_counts()
            .get(codes::NOT_ADMITTED)
            .copied(),
        Some(2)
    );
    // Others are admitted, and the refused one was never listed.
    let (_ok, name) = connect_plain(&server).await;
    assert_eq!(server.agents().len(), 1);
    assert_eq!(server.agents()[0].name(), name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_admission_hook_refuses_that_agent_and_the_server_goes_on() {
    let server = start(server_builder().on_admit(|agent| {
        if agent.labels().contains_key("boom") {
            panic!("admission hook bug");
        }
        Ok(agent.labels().clone())
    }))
    .await;
    let err = within(client_builder(&server).label("boom", "").connect())
        .await
        .expect_err("refused");
    assert_eq!(err.code(), codes::INTERNAL_ERROR, "{err}");
    let (closed, _) = raw_auth_with_labels(&server, json!({"boom": ""})).await;
    assert_eq!(closed.code, close::INTERNAL_ERROR);
    let (_ok, _) = connect_plain(&server).await;
    assert_eq!(server.stats().agents, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_changes_are_checked_and_seen_by_later_selections() {
    let server = start_server().await;
    let client = connect(&server, client_builder(&server).label("role", "db")).await;
    let name = client.name().expect("named");
    let agent = server.agent(&name).expect("listed");
    let draining = sel("draining");
    let serving = sel("role=db,!draining");
    assert_eq!(server.select(serving.clone()).count(), 1);

    assert_eq!(agent.set_label("draining", "yes").expect("valid"), None);
    assert_eq!(server.select(draining.clone()).count(), 1);
    assert_eq!(server.select(serving.clone()).count(), 0);
    assert_eq!(agent.labels().get("draining"), Some("yes"));
    // Another handle of the same connection sees it too.
    assert_eq!(server.agents()[0].labels().get("draining"), Some("yes"));

    for (k, v) in [("draining", "no way"), ("name", "x"), ("", "x")] {
        let err = agent.set_label(k, v).expect_err("invalid");
        assert_eq!(err.code(), codes::CONFIG, "{k}={v}: {err}");
    }
    assert_eq!(agent.labels().get("draining"), Some("yes"), "unchanged");

    assert_eq!(agent.remove_label("draining"), Some("yes".into()));
    assert_eq!(agent.remove_label("draining"), None);
    assert_eq!(server.select(serving.clone()).count(), 1);

    agent.set_labels(labels("role=cache"));
    assert_eq!(server.select(serving).count(), 0);
    assert_eq!(server.select(sel("role=cache")).agents()[0].name(), name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_last_one_connection_and_come_back_as_presented() {
    let server = start_server().await;
    let client = connect(
        &server,
        client_builder(&server)
            .label("role", "db")
            .reconnect(Backoff::default().initial_delay(Duration::from_millis(10))),
    )
    .await;
    let name = client.name().expect("named");
    let first = server.agent(&name).expect("listed");
    first.set_label("draining", "yes").expect("valid");
    let old_id = first.connection_id();

    server.disconnect(&name, "maintenance").expect("connected");
    // The disconnected handle keeps what it had; changing it touches no
    // selection.
    first.set_label("stale", "yes").expect("valid");
    assert_eq!(server.select(sel("stale")).count(), 0);

    let again = within(server.wait_for(&name, LIMIT)).await.expect("back");
    assert_ne!(again.connection_id(), old_id);
    assert_eq!(again.labels(), labels("role=db"));
    assert_eq!(server.select(sel("draining")).count(), 0);
    assert_eq!(server.select(sel("role=db")).count(), 1);
}
