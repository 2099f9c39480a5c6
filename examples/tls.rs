//! A `wss://` server and agent in one process, with certificates made on the
//! spot by rcgen: a CA, a server certificate for localhost signed by it, and
//! an agent that trusts that CA.
//!
//! Run with: cargo run --example tls

use agent_tunnel::client::AgentClient;
use agent_tunnel::server::AgentServer;
use agent_tunnel::HookError;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A throwaway CA and a server certificate for localhost.
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let server_key = KeyPair::generate()?;
    let server_cert =
        CertificateParams::new(vec!["localhost".to_owned()])?.signed_by(&server_key, &ca)?;

    let server = AgentServer::builder()
        .secret("tls-example")
        .tls_pem(server_cert.pem(), server_key.serialize_pem())
        .start("127.0.0.1:0")
        .await?;
    server.on_hook("hello", |_: Value, call| async move {
        Ok::<_, HookError>(format!(
            "hello {}, tls: {}",
            call.peer.name(),
            call.peer.is_tls()
        ))
    });
    let url = format!("wss://localhost:{}", server.local_addr().port());
    println!("server listening on {url}");

    let agent = AgentClient::builder(&url, "tls-example")
        .tls_ca_pem(ca.pem())
        .on_hook("whoami", |_: Value, call| async move {
            Ok::<_, HookError>(call.peer.name().to_owned())
        })
        .connect()
        .await?;
    let name = agent.name().unwrap_or_default();
    println!("agent ready as {name} over TLS");

    let greeting: String = agent.send("hello", &()).await?;
    println!("agent -> server: {greeting}");
    let me: String = server.send_to(name.as_str(), "whoami", &()).await?;
    println!("server -> agent: {me}");

    agent.close().await;
    server.shutdown().await;
    Ok(())
}
