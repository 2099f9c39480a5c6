//! `agent-tunnel agent`: an agent that serves `ping` and `info`, to stand
//! up a fleet without writing code.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use agent_client::AgentClient;
use agent_protocol::HookError;
use clap::Args;
use serde_json::{json, Map, Value};

use crate::{exit, init_logging, LogFormat};

#[derive(Args)]
pub struct AgentArgs {
    /// The server's URL (ws:// or wss://).
    #[arg(long, env = "AGENT_TUNNEL_URL")]
    url: String,
    /// A file holding the shared secret (else AGENT_TUNNEL_SECRET is used).
    #[arg(long, env = "AGENT_TUNNEL_SECRET_FILE")]
    secret_file: Option<PathBuf>,
    /// The name to ask for (default: one the server gives).
    #[arg(long)]
    name: Option<String>,
    /// A label, `key=value`; repeat for more.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Keep the name and token across restarts in this JSON file.
    #[arg(long)]
    store: Option<PathBuf>,
    /// A PEM CA certificate to trust for wss://.
    #[arg(long)]
    ca: Option<PathBuf>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("a label is key=value, not {s:?}")),
    }
}

/// The host's name, as the kernel knows it.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_owned())
}

fn secret(args: &AgentArgs) -> Result<String, String> {
    let secret = match &args.secret_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("--secret-file {}: {e}", path.display()))?,
        None => std::env::var("AGENT_TUNNEL_SECRET")
            .map_err(|_| "give --secret-file or set AGENT_TUNNEL_SECRET".to_owned())?,
    };
    let secret = secret.trim().to_owned();
    if secret.is_empty() {
        return Err("the secret is empty".into());
    }
    Ok(secret)
}

pub async fn run(args: AgentArgs) -> u8 {
    init_logging(LogFormat::Text);
    let secret = match secret(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let started = Instant::now();
    let labels: Map<String, Value> = args
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let mut b = AgentClient::builder(&args.url, secret);
    if let Some(name) = &args.name {
        b = b.name(name);
    }
    for (k, v) in &args.labels {
        b = b.label(k, v);
    }
    if let Some(store) = &args.store {
        b = b.store(agent_protocol::FileStore::new(store));
    }
    if let Some(ca) = &args.ca {
        b = b.tls_ca_pem_file(ca);
    }
    let host = host_name();
    let b = b
        .on_hook(
            "ping",
            |_: Value, _| async move { Ok::<_, HookError>("pong") },
        )
        .on_hook("info", move |_: Value, _| {
            let (host, labels) = (host.clone(), labels.clone());
            async move {
                Ok::<_, HookError>(json!({
                    "host": host,
                    "uptime_ms": u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    "labels": labels,
                    "version": env!("CARGO_PKG_VERSION"),
                }))
            }
        });
    // Keeps reconnecting by itself; the first connection is waited for so
    // the operator sees a name or a clear error.
    let client = match b.start().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    match client.wait_ready(Duration::from_secs(30)).await {
        Ok(()) => println!("connected as {}", client.name().unwrap_or_default()),
        Err(e) => eprintln!(
            "not connected yet ({}): retrying in the background",
            e.code()
        ),
    }
    crate::serve::wait_for_signal().await;
    client.close().await;
    exit::OK
}
