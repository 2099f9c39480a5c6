//! TLS (`wss://`) with rustls on both sides, certificates made at test time.

mod support;

use std::time::Duration;

use agent_tunnel::client::{AgentClient, Backoff};
use agent_tunnel::server::AgentServer;
use agent_tunnel::HookError;
use serde_json::{json, Value};
use support::certs::pki;
use support::{soon, wait_for};

const SECRET: &str = "tls-secret";

fn client(url: &str) -> agent_tunnel::client::ClientBuilder {
    AgentClient::builder(url, SECRET)
        .reconnect(Backoff::disabled())
        .handshake_timeout(Duration::from_secs(10))
        .on_hook("echo", |v: Value, _| async move { Ok::<_, HookError>(v) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_talks_to_server_over_wss_with_a_custom_ca() {
    let pki = pki("test CA");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, &pki.server_cert_pem).unwrap();
    std::fs::write(&key, &pki.server_key_pem).unwrap();
    let server = AgentServer::builder()
        .secret(SECRET)
        .tls_pem_files(&cert, &key)
        .start("127.0.0.1:0")
        .await
        .unwrap();
    server.on_hook("tls?", |_: Value, call| async move {
        Ok::<_, HookError>(call.peer.is_tls())
    });
    let url = format!("wss://localhost:{}", server.local_addr().port());
    let agent = client(&url)
        .tls_ca_pem(pki.ca_pem.clone())
        .connect()
        .await
        .unwrap();
    let name = agent.name().unwrap();
    assert!(agent.send::<_, bool>("tls?", &()).await.unwrap());
    let v: Value = server
        .send_to(name.as_str(), "echo", &json!([1, 2]))
        .await
        .unwrap();
    assert_eq!(v, json!([1, 2]));
    assert!(server.agent(&name).unwrap().is_tls());
    agent.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_and_plain_clients_fail_cleanly_without_disturbing_others() {
    let pki = pki("good CA");
    let other = pki_other();
    let server = AgentServer::builder()
        .secret(SECRET)
        .tls_pem(pki.server_cert_pem.clone(), pki.server_key_pem.clone())
        .start("127.0.0.1:0")
        .await
        .unwrap();
    let port = server.local_addr().port();
    let mut failures = server.handshake_failures();
    let good = client(&format!("wss://localhost:{port}"))
        .tls_ca_pem(pki.ca_pem.clone())
        .connect()
        .await
        .unwrap();
    let good_name = good.name().unwrap();

    // A client that trusts another CA refuses the server's certificate.
    let err = client(&format!("wss://localhost:{port}"))
        .tls_ca_pem(other)
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.code(), "TRANSPORT");
    assert!(err.to_string().contains("TLS handshake failed"), "{err}");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );

    // A plain ws:// client against the TLS port fails with a transport error.
    let err = client(&format!("ws://127.0.0.1:{port}"))
        .connect()
        .await
        .unwrap_err();
    assert_eq!(err.code(), "TRANSPORT", "{err}");
    wait_for(
        &mut failures,
        "a handshake failure for the plain client",
        |f| (f.code == "TRANSPORT").then_some(()),
    )
    .await;

    // The good agent never noticed.
    assert!(good.is_ready());
    let v: Value = server
        .send_to(good_name.as_str(), "echo", &"still here")
        .await
        .unwrap();
    assert_eq!(v, json!("still here"));
    good.close().await;
    server.shutdown().await;
}

fn pki_other() -> String {
    pki("some other CA").ca_pem
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate_from_the_ca() {
    let pki = pki("mtls CA");
    let server = AgentServer::builder()
        .secret(SECRET)
        .tls_pem(pki.server_cert_pem.clone(), pki.server_key_pem.clone())
        .tls_client_ca_pem(pki.ca_pem.clone())
        .start("127.0.0.1:0")
        .await
        .unwrap();
    let url = format!("wss://localhost:{}", server.local_addr().port());

    let with_cert = client(&url)
        .tls_ca_pem(pki.ca_pem.clone())
        .tls_client_cert_pem(pki.client_cert_pem.clone(), pki.client_key_pem.clone())
        .connect()
        .await
        .unwrap();
    assert!(with_cert.is_ready());

    // Without a certificate the server ends the TLS session; with TLS 1.3 the
    // client may only learn it at its first read, which is the handshake.
    let without = soon(
        "client without certificate",
        client(&url).tls_ca_pem(pki.ca_pem.clone()).connect(),
    )
    .await;
    assert_eq!(without.unwrap_err().code(), "TRANSPORT");

    with_cert.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn bad_tls_files_are_a_clear_config_error() {
    let err = AgentServer::builder()
        .secret(SECRET)
        .tls_pem_files("/nonexistent/cert.pem", "/nonexistent/key.pem")
        .start("127.0.0.1:0")
        .await
        .unwrap_err();
    assert_eq!(err.code(), "CONFIG");
    assert!(err.to_string().contains("certificate file"), "{err}");

    let pki = pki("ca");
    // Key and certificate swapped (the mistake websocket-agent made).
    let err = AgentServer::builder()
        .secret(SECRET)
        .tls_pem(pki.server_key_pem.clone(), pki.server_cert_pem.clone())
        .start("127.0.0.1:0")
        .await
        .unwrap_err();
    assert_eq!(err.code(), "CONFIG", "{err}");
}

// ------------------------------------------------------------------ issue 8

/// A TLS server with `pki`'s certificate, and its `wss://localhost` URL.
async fn tls_server(pki: &support::certs::Pki) -> (AgentServer, String) {
    let server = AgentServer::builder()
        .secret(SECRET)
        .tls_pem(pki.server_cert_pem.clone(), pki.server_key_pem.clone())
        .start("127.0.0.1:0")
        .await
        .unwrap();
    let url = format!("wss://localhost:{}", server.local_addr().port());
    (server, url)
}

/// Item 16: naming a CA trusts that CA alone (the web roots come back only
/// on request; the unit tests in agent-client's tls.rs count the roots).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_ca_alone_is_trusted_and_web_roots_come_back_only_on_request() {
    let pki = pki("private CA");
    let (server, url) = tls_server(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();

    // The private CA, from a file, alone: trusted.
    let only = client(&url)
        .tls_ca_pem_file(&ca_file)
        .connect()
        .await
        .unwrap();
    only.close().await;
    // Beside the web roots: trusted too.
    let both = client(&url)
        .tls_ca_pem(pki.ca_pem.clone())
        .tls_web_roots(true)
        .connect()
        .await
        .unwrap();
    both.close().await;
    // Another private CA, even with the web roots: refused.
    for web_roots in [false, true] {
        let err = client(&url)
            .tls_ca_pem(pki_other())
            .tls_web_roots(web_roots)
            .connect()
            .await
            .unwrap_err();
        assert_eq!(err.code(), "TRANSPORT", "{err}");
        assert!(err.to_string().contains("certificate"), "{err}");
    }
    server.shutdown().await;
}

/// Item 13: over wss:// the channel authenticates the server, so its
/// refusals are final at once: a wrong secret, and a revocation's close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_wss_a_wrong_secret_and_a_revocation_are_final_at_once() {
    use agent_tunnel::client::ClientEvent;

    let pki = pki("final CA");
    let (server, url) = tls_server(&pki).await;
    let fast = Backoff::default()
        .initial_delay(Duration::from_millis(10))
        .max_delay(Duration::from_millis(50));

    let wrong = AgentClient::builder(&url, "not the secret")
        .tls_ca_pem(pki.ca_pem.clone())
        .reconnect(fast.clone());
    let mut events = wrong.events();
    let _wrong = soon("start", wrong.start()).await.unwrap();
    let mut attempts = 0;
    let why = wait_for(&mut events, "GaveUp", |e| match e {
        ClientEvent::Connected => {
            attempts += 1;
            None
        }
        ClientEvent::GaveUp(err) => Some(err.clone()),
        _ => None,
    })
    .await;
    assert_eq!(why.code(), "WRONG_SECRET", "{why}");
    assert_eq!(attempts, 1, "given up after the first refusal");

    let builder = client(&url).tls_ca_pem(pki.ca_pem.clone()).reconnect(fast);
    let mut events = builder.events();
    let agent = builder.connect().await.unwrap();
    let name = agent.name().unwrap();
    server.revoke(&name, "decommissioned").await.unwrap();
    let mut after_close = Vec::new();
    let mut closed = false;
    let why = wait_for(&mut events, "GaveUp", |e| {
        match e {
            ClientEvent::Disconnected(r) if r.code == 4007 => closed = true,
            ClientEvent::GaveUp(err) => return Some(err.clone()),
            _ if closed => after_close.push(format!("{e:?}")),
            _ => {}
        }
        None
    })
    .await;
    assert_eq!(why.code(), "REVOKED", "{why}");
    assert!(after_close.is_empty(), "no reconnect: {after_close:?}");
    server.shutdown().await;
}
