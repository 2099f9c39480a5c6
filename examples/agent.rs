//! An agent to run against `examples/server.rs`.
//!
//! Run with: cargo run --example agent -- --secret s3cret [--url ws://127.0.0.1:7800] [--store identity.json] [--name my-agent]
//!
//! It serves the hooks `info` (answers `{"name", "pid", "uptime_s"}`) and
//! `ping` (answers `"pong"`), and calls the server's `report` every 5 s with
//! `{"uptime_s": …}`: what `examples/server.rs` offers and calls. It follows
//! the server's signing policy by itself.
//!
//! Every flag may also come from the environment: AGENT_TUNNEL_SECRET,
//! AGENT_TUNNEL_URL, AGENT_TUNNEL_STORE, AGENT_TUNNEL_NAME. With a store the
//! agent keeps its name across restarts. Ctrl-C closes it.

use std::time::{Duration, Instant};

use agent_tunnel::client::{AgentClient, ClientEvent};
use agent_tunnel::{FileStore, HookError};
use serde_json::{json, Value};

fn arg(flag: &str, env: &str) -> Option<String> {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == flag {
            return args.next();
        }
    }
    std::env::var(env).ok()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let Some(secret) = arg("--secret", "AGENT_TUNNEL_SECRET") else {
        eprintln!(
            "usage: agent --secret SECRET [--url ws://HOST:PORT] [--store FILE] [--name NAME]"
        );
        std::process::exit(2);
    };
    let url = arg("--url", "AGENT_TUNNEL_URL").unwrap_or_else(|| "ws://127.0.0.1:7800".into());
    let started = Instant::now();
    let mut builder = AgentClient::builder(&url, secret)
        .meta("pid", std::process::id())
        .on_hook("info", move |_: Value, call| async move {
            Ok::<_, HookError>(json!({
                "name": call.peer.name(),
                "pid": std::process::id(),
                "uptime_s": started.elapsed().as_secs(),
            }))
        })
        .on_hook("ping", |_: Value, _| async { Ok::<_, HookError>("pong") });
    if let Some(path) = arg("--store", "AGENT_TUNNEL_STORE") {
        builder = builder.store(FileStore::new(path));
    }
    if let Some(name) = arg("--name", "AGENT_TUNNEL_NAME") {
        builder = builder.name(&name);
    }
    let client = builder.connect().await?;
    println!("ready as {}", client.name().unwrap_or_default());

    let mut events = client.events();
    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            Ok(event) = events.recv() => match event {
                ClientEvent::Disconnected(reason) => println!("disconnected: {reason}"),
                ClientEvent::Reconnected { name } => println!("reconnected as {name}"),
                ClientEvent::GaveUp(e) => { println!("gave up: {e}"); break; }
                _ => {}
            },
            _ = ticker.tick() => {
                let load = json!({"uptime_s": started.elapsed().as_secs()});
                match client.send::<_, Value>("report", &load).await {
                    Ok(v) => println!("report -> {v}"),
                    Err(e) => println!("report failed: {} ({e})", e.code()),
                }
            }
        }
    }
    client.close().await;
    Ok(())
}
