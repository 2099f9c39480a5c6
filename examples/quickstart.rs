//! An embedded control plane and three agents in one process: hooks both
//! ways, `send_to`, `send_all` with per-agent results, a remote error and a
//! timeout.
//!
//! Run with: cargo run --example quickstart

use std::time::Duration;

use agent_tunnel::client::AgentClient;
use agent_tunnel::server::{AgentServer, ServerEvent};
use agent_tunnel::HookError;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Serialize, Deserialize, Debug)]
struct Disk {
    mount: String,
    free_gb: u32,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secret = "quickstart-secret";

    // The control plane: port 0 picks a free port.
    let server = AgentServer::builder()
        .secret(secret)
        .name_format("A###")
        .start("127.0.0.1:0")
        .await?;
    let url = format!("ws://{}", server.local_addr());
    println!("server listening on {url}");

    // A hook on the server that agents call; it knows which agent called.
    server.on_hook("report", |disk: Disk, call| async move {
        println!("  server <- {} reports {disk:?}", call.peer.name());
        Ok::<_, HookError>(json!({"ack": true}))
    });
    let mut events = server.events();

    // Three agents, each with hooks the server can call.
    let mut agents = Vec::new();
    for (i, region) in ["eu", "us", "ap"].into_iter().enumerate() {
        let free_gb = 10 * (i as u32 + 1);
        let client = AgentClient::builder(&url, secret)
            .meta("region", region)
            .on_hook("disk", move |_: Value, call| async move {
                Ok::<_, HookError>(Disk {
                    mount: format!("/data-{}", call.peer.name()),
                    free_gb,
                })
            })
            .on_hook("restart", move |service: String, _| async move {
                if service == "database" && region == "us" {
                    return Err(
                        HookError::new("FORBIDDEN", "database restarts are frozen in us")
                            .with_data(json!({"region": region})),
                    );
                }
                Ok(format!("{service} restarted in {region}"))
            })
            .on_hook("slow", |_: Value, _| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok::<_, HookError>("finally")
            })
            .connect()
            .await?;
        println!("agent ready as {}", client.name().unwrap_or_default());
        agents.push(client);
    }
    for _ in 0..3 {
        if let Ok(ServerEvent::AgentConnected(agent)) = events.recv().await {
            println!(
                "  event: {} connected from {} (meta {:?}, first time: {})",
                agent.name(),
                agent.peer_addr(),
                agent.meta(),
                agent.first_time()
            );
        }
    }

    // Agent -> server.
    let ack: Value = agents[0]
        .send(
            "report",
            &Disk {
                mount: "/".into(),
                free_gb: 3,
            },
        )
        .await?;
    println!("A001 got {ack}");

    // Server -> one agent, typed.
    let disk: Disk = server.send_to("A002", "disk", &json!({})).await?;
    println!("send_to A002 disk -> {disk:?}");

    // Server -> every agent: each agent's own result, by name.
    println!("send_all restart database:");
    for (name, result) in server.send_all::<_, String>("restart", "database").await? {
        match result {
            Ok(msg) => println!("  {name}: ok {msg:?}"),
            Err(e) => println!(
                "  {name}: error {} ({}) data {:?}",
                e.code(),
                e,
                e.remote().and_then(|r| r.data.clone())
            ),
        }
    }

    // A call that outlives its timeout.
    let late = server
        .send_to_timeout::<_, Value>("A003", "slow", &json!(null), Duration::from_millis(200))
        .await;
    println!("send_to A003 slow with 200 ms -> {}", late.unwrap_err());

    // A name never given.
    let unknown = server
        .send_to::<_, Value>("A999", "disk", &json!(null))
        .await;
    println!("send_to A999 -> {}", unknown.unwrap_err());

    for a in &agents {
        a.close().await;
    }
    server.shutdown().await;
    println!("done");
    Ok(())
}
