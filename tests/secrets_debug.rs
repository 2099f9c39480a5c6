//! No secret reaches `Debug`: every public type that holds the shared
//! secret, the server key, a name token, a proof or a claim is formatted
//! (plain and `{:#?}`) and searched for those bytes, as text and as hex.

mod common;

use std::sync::Arc;

use agent_tunnel::protocol::crypto::Key;
use agent_tunnel::protocol::frame::{Frame, Limits};
use agent_tunnel::protocol::handshake::{ClientHandshake, Identity, Refusal, ServerHandshake};
use agent_tunnel::protocol::{MemoryStore, NameStore, Secret};
use agent_tunnel::server::AgentServer;
use common::*;
use serde_json::{Map, Value};

/// Fails when `text` holds any of `secrets`.
fn assert_clean(what: &str, text: &str, secrets: &[String]) {
    for s in secrets {
        assert!(!s.is_empty());
        assert!(
            !text.contains(s.as_str()),
            "{what} shows a secret value in its Debug output: {text}"
        );
    }
}

/// Formats `value` both ways and checks each.
fn check(what: &str, value: &impl std::fmt::Debug, secrets: &[String]) {
    assert_clean(what, &format!("{value:?}"), secrets);
    assert_clean(what, &format!("{value:#?}"), secrets);
}

fn hex_of(doc: &Value, field: &str) -> String {
    doc.get(field)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("stored document has no {field}: {doc}"))
        .to_owned()
}

#[tokio::test]
async fn handshake_values_redact_proofs_tokens_claims_and_keys() {
    let secret_text = "debug-redaction-secret";
    let secret = Secret::from(secret_text);
    let server_key = Key::random();
    let name = "web-1";
    let token = agent_tunnel::protocol::crypto::name_token(&server_key, name);
    let bind = Key::random();

    let server = ServerHandshake::new(true);
    let mut client = ClientHandshake::new(
        Identity {
            name: Some(name.into()),
            token: Some(token.clone()),
            bind: Some(bind.clone()),
        },
        Map::new(),
    );
    let auth = client.on_hello(&secret, server.hello()).expect("auth");
    let Frame::Auth(auth_frame) = auth.clone() else {
        panic!("not auth: {auth:?}")
    };
    let proof = auth_frame.proof.clone();
    let claim = auth_frame.claim.clone().expect("a claim for a held token");
    let verified = server
        .verify_auth(&secret, auth_frame.clone())
        .expect("proof verifies");
    let limits = Limits {
        max_message_bytes: 1 << 20,
        max_in_flight: 8,
        ping_interval_ms: 0,
    };
    let (welcome, session) = server.welcome(&secret, &verified, name, true, Some(&token), limits);
    let Frame::Welcome(welcome_frame) = welcome.clone() else {
        panic!("not welcome")
    };
    let server_proof = welcome_frame.proof.clone();
    let established = client.on_answer(&secret, welcome.clone()).expect("welcome");
    let refusal = server.prove_refusal(
        &secret,
        &verified,
        Refusal::new(
            "NAME_TAKEN",
            "taken",
            agent_tunnel::protocol::close::NAME_REFUSED,
        ),
    );
    let reject = refusal.frame();
    let Frame::Reject(reject_frame) = reject.clone() else {
        panic!("not reject")
    };
    let reject_proof = reject_frame.proof.clone().expect("a proven refusal");

    // A first connection sends its bind instead of a claim.
    let mut first = ClientHandshake::new(
        Identity {
            name: Some("web-2".into()),
            token: None,
            bind: Some(bind.clone()),
        },
        Map::new(),
    );
    let first_auth = first.on_hello(&secret, server.hello()).expect("auth");
    let Frame::Auth(first_auth_frame) = first_auth.clone() else {
        panic!("not auth")
    };
    assert_eq!(
        first_auth_frame.bind.as_deref(),
        Some(bind.to_hex().as_str())
    );
    let first_verified = server
        .verify_auth(&secret, first_auth_frame.clone())
        .expect("proof verifies");

    let secrets = vec![
        bind.to_hex(),
        secret_text.to_owned(),
        server_key.to_hex(),
        token.to_hex(),
        session.key.to_hex(),
        proof,
        claim,
        server_proof,
        reject_proof,
    ];
    check("Secret", &secret, &secrets);
    check("Key (server key)", &server_key, &secrets);
    check("Key (token)", &token, &secrets);
    check("Frame::Auth", &auth, &secrets);
    check("Auth", &auth_frame, &secrets);
    check("VerifiedAuth", &verified, &secrets);
    check("Frame::Welcome", &welcome, &secrets);
    check("Welcome", &welcome_frame, &secrets);
    check("Frame::Auth (bind)", &first_auth, &secrets);
    check("Auth (bind)", &first_auth_frame, &secrets);
    check("VerifiedAuth (bind)", &first_verified, &secrets);
    check("ClientHandshake (bind)", &first, &secrets);
    check("Refusal", &refusal, &secrets);
    check("Frame::Reject", &reject, &secrets);
    check("Reject", &reject_frame, &secrets);
    check("Session", &session, &secrets);
    check("Established", &established, &secrets);
    check("Identity", &established.identity, &secrets);
    check("ClientHandshake", &client, &secrets);
    check("ServerHandshake", &server, &secrets);
}

#[tokio::test]
async fn stores_builders_and_handles_redact_the_server_key_and_tokens() {
    let server_store = Arc::new(MemoryStore::new());
    let builder = server_builder().store_arc(server_store.clone());
    check("ServerBuilder", &builder, &[SECRET.to_owned()]);
    let server: AgentServer = start(builder).await;

    let agent_store = Arc::new(MemoryStore::new());
    let client_builder = client_builder(&server).store_arc(agent_store.clone());
    check("ClientBuilder", &client_builder, &[SECRET.to_owned()]);
    let client = connect(&server, client_builder).await;

    let server_doc = within(server_store.load())
        .await
        .expect("server store loads")
        .expect("the server saved its key");
    let agent_doc = within(agent_store.load())
        .await
        .expect("agent store loads")
        .expect("the agent saved its identity");
    let secrets = vec![
        SECRET.to_owned(),
        hex_of(&server_doc, "key"),
        hex_of(&agent_doc, "token"),
    ];
    check("MemoryStore (server)", &*server_store, &secrets);
    check("MemoryStore (agent)", &*agent_store, &secrets);
    check("AgentServer", &server, &secrets);
    check("AgentClient", &client, &secrets);
    for agent in server.agents() {
        check("Agent", &agent, &secrets);
        check("LinkHandle", agent.link(), &secrets);
    }
    check("Hooks", server.hooks(), &secrets);
    client.close().await;
    server.shutdown().await;
}
