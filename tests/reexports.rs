//! The rustls types the TLS builders take are reachable through
//! `agent_tunnel::rustls`, so a hand-built configuration needs no rustls
//! dependency of its own (and cannot mismatch its version).

use std::sync::Arc;

use agent_tunnel::client::AgentClient;
use agent_tunnel::rustls;
use agent_tunnel::server::AgentServer;

#[tokio::test]
async fn hand_built_tls_configs_use_the_reexported_rustls() {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    // Accepted as it is by the builder: the same rustls.
    let _builder = AgentClient::builder("wss://127.0.0.1:1", "s").tls_config(Arc::new(client));

    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .expect("server config");
    let server = AgentServer::builder()
        .secret("s")
        .tls_config(Arc::new(server))
        .start("127.0.0.1:0")
        .await
        .expect("a TLS server starts");
    server.shutdown().await;
}
