//! A long command with a progress bar on the caller's side: the server asks
//! an agent to "scan" a number of files; the agent's hook reports progress
//! and streams one finding per file, and the server draws the progress with
//! `indicatif` as the items arrive, then prints the final result.
//!
//! Run with: cargo run --example progress

use std::time::Duration;

use agent_tunnel::client::AgentClient;
use agent_tunnel::server::{AgentServer, ServerEvent};
use agent_tunnel::{Event, HookError, StreamOptions};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Serialize, Deserialize, Debug)]
struct Finding {
    file: u64,
    bytes: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secret = "progress-secret";
    let server = AgentServer::builder()
        .secret(secret)
        .start("127.0.0.1:0")
        .await?;
    let url = format!("ws://{}", server.local_addr());
    let mut events = server.events();

    // The agent's long command: one item per file, progress every 10 files.
    let client = AgentClient::builder(&url, secret)
        .on_hook("scan", |files: u64, call| async move {
            let mut findings = call.stream::<Finding>();
            let mut total = 0u64;
            for file in 0..files {
                // Stands for real work.
                tokio::time::sleep(Duration::from_millis(5)).await;
                let bytes = 1000 + file * 37 % 4096;
                total += bytes;
                findings
                    .send(&Finding { file, bytes })
                    .await
                    .map_err(|e| HookError::new(e.code(), e.to_string()))?;
                if file % 10 == 0 {
                    call.progress(&json!({"done": file, "of": files}));
                }
            }
            Ok::<_, HookError>(json!({"files": files, "bytes": total}))
        })
        .connect()
        .await?;
    let name = client.name().unwrap_or_default();
    while let Ok(event) = events.recv().await {
        if matches!(&event, ServerEvent::AgentConnected(a) if a.name() == name) {
            break;
        }
    }
    let agent = server.agent(&name).ok_or("agent not registered")?;

    // The caller: a stream of findings, drawn as a progress bar. The whole
    // call may take up to a minute; 16 findings may wait unread.
    let files = 400u64;
    let bar = ProgressBar::new(files);
    bar.set_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} files {msg}",
    )?);
    let opts = StreamOptions::new(Duration::from_secs(60)).credit(16);
    let mut scan = agent
        .send_streaming::<_, Finding, serde_json::Value>("scan", &files, opts)
        .await?;
    let mut largest = 0;
    while let Some(event) = scan.next().await {
        match event? {
            Event::Progress(p) => bar.set_message(format!("(agent says {p})")),
            Event::Item(finding) => {
                largest = largest.max(finding.bytes);
                bar.inc(1);
            }
            Event::End(result) => {
                bar.finish_with_message("done");
                println!("result: {result}, largest file {largest} bytes");
            }
        }
    }
    client.close().await;
    server.shutdown().await;
    Ok(())
}
