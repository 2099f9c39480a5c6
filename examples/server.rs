//! A control plane to run in one terminal while `examples/agent.rs` runs in
//! another.
//!
//! Run with: cargo run --example server -- --secret s3cret [--addr 127.0.0.1:7800] [--store names.json] [--sign]
//!
//! Every flag may also come from the environment: AGENT_TUNNEL_SECRET,
//! AGENT_TUNNEL_ADDR, AGENT_TUNNEL_STORE, AGENT_TUNNEL_SIGN=1. `--sign`
//! requires signed frames (docs/PROTOCOL.md section 9). Ctrl-C shuts down
//! gracefully.
//!
//! It offers the hook `report` (any body; answers `{"ok": true}`), calls
//! `info` on every agent that connects, and calls `ping` on every agent
//! every 10 s: what `examples/agent.rs` serves, and what another
//! implementation under test should too.

use std::time::Duration;

use agent_tunnel::server::{AgentServer, ServerEvent};
use agent_tunnel::{FileStore, HookError};
use serde_json::{json, Value};

/// True when `flag` is on the command line or `env` is set to 1 or true.
fn switch(flag: &str, env: &str) -> bool {
    std::env::args().skip(1).any(|a| a == flag)
        || std::env::var(env).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

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
        eprintln!("usage: server --secret SECRET [--addr HOST:PORT] [--store FILE] [--sign]");
        std::process::exit(2);
    };
    let addr = arg("--addr", "AGENT_TUNNEL_ADDR").unwrap_or_else(|| "127.0.0.1:7800".into());
    let sign = switch("--sign", "AGENT_TUNNEL_SIGN");
    let mut builder = AgentServer::builder().secret(secret).sign_frames(sign);
    if let Some(path) = arg("--store", "AGENT_TUNNEL_STORE") {
        builder = builder.store(FileStore::new(path));
    }
    let server = builder.start(addr.as_str()).await?;
    println!(
        "listening on ws://{}{}",
        server.local_addr(),
        if sign { " (signed frames)" } else { "" }
    );

    server.on_hook("report", |load: Value, call| async move {
        println!("{} reports {load}", call.peer.name());
        Ok::<_, HookError>(json!({"ok": true}))
    });

    let mut events = server.events();
    let mut failures = server.handshake_failures();
    let mut ticker = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            Ok(event) = events.recv() => match event {
                ServerEvent::AgentConnected(agent) => {
                    println!("+ {} from {} meta {:?}", agent.name(), agent.peer_addr(), agent.meta());
                    let agent2 = agent.clone();
                    tokio::spawn(async move {
                        match agent2.send::<_, Value>("info", &()).await {
                            Ok(info) => println!("  {} info: {info}", agent2.name()),
                            Err(e) => println!("  {} info failed: {e}", agent2.name()),
                        }
                    });
                }
                ServerEvent::AgentDisconnected(agent, reason) => {
                    println!("- {} ({reason})", agent.name());
                }
                _ => {}
            },
            Ok(f) = failures.recv() => println!("! handshake from {} failed: {}", f.peer_addr, f.code),
            _ = ticker.tick() => {
                match server.send_all::<_, Value>("ping", &()).await {
                    Ok(results) => {
                        for (name, result) in results {
                            println!("  ping {name}: {}", match result {
                                Ok(v) => v.to_string(),
                                Err(e) => format!("error {}", e.code()),
                            });
                        }
                    }
                    Err(e) => println!("  ping: {e}"),
                }
            }
        }
    }
    println!("shutting down");
    server.shutdown().await;
    Ok(())
}
