//! A name store of your own: this one keeps each document as a JSON file in a
//! directory chosen by AGENT_TUNNEL_STORE_DIR (a temporary directory when
//! unset) and logs every load and save. It shows that a server restarted on
//! the same store keeps counting, and an agent keeps its name.
//!
//! Run with: cargo run --example file_store

use std::path::PathBuf;

use agent_tunnel::client::AgentClient;
use agent_tunnel::protocol::store::{NameStore, StoreError, StoreFuture};
use agent_tunnel::server::AgentServer;
use serde_json::Value;

/// Keeps one document as `<dir>/<key>.json`.
struct DirStore {
    dir: PathBuf,
    key: &'static str,
}

impl DirStore {
    fn path(&self) -> PathBuf {
        self.dir.join(format!("{}.json", self.key))
    }
}

impl NameStore for DirStore {
    fn load(&self) -> StoreFuture<'_, Option<Value>> {
        Box::pin(async move {
            let path = self.path();
            let doc = match tokio::fs::read(&path).await {
                Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(StoreError::new)?),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(StoreError::new(e)),
            };
            println!(
                "  [store {}] load -> {}",
                self.key,
                if doc.is_some() { "found" } else { "empty" }
            );
            Ok(doc)
        })
    }

    fn save<'a>(&'a self, doc: &'a Value) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            // Write beside the target, then rename over it: never a torn file.
            let tmp = self.dir.join(format!("{}.json.tmp", self.key));
            tokio::fs::write(&tmp, serde_json::to_vec(doc).map_err(StoreError::new)?).await?;
            tokio::fs::rename(&tmp, self.path()).await?;
            println!("  [store {}] saved", self.key);
            Ok(())
        })
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let dir = std::env::var("AGENT_TUNNEL_STORE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| tmp.path().to_path_buf());
    println!("store directory: {}", dir.display());

    let secret = "store-example";
    let mut addr = "127.0.0.1:0".parse::<std::net::SocketAddr>()?;
    for run in 1..=2 {
        println!("server run {run}");
        let server = AgentServer::builder()
            .secret(secret)
            .store(DirStore {
                dir: dir.clone(),
                key: "server",
            })
            .start(addr)
            .await?;
        addr = server.local_addr();
        let url = format!("ws://{addr}");
        let agent = AgentClient::builder(&url, secret)
            .store(DirStore {
                dir: dir.clone(),
                key: "agent",
            })
            .connect()
            .await?;
        let newcomer = AgentClient::builder(&url, secret).connect().await?;
        println!(
            "  agent with a store: {}; agent without one: {}",
            agent.name().unwrap_or_default(),
            newcomer.name().unwrap_or_default()
        );
        agent.close().await;
        newcomer.close().await;
        server.shutdown().await;
    }
    Ok(())
}
