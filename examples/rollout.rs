//! A rollout by label: thirty in-process agents with region and role
//! labels, an admission hook that marks a few as canaries, a quorum wait,
//! then an upgrade rolled out to a selector ten at a time, each result
//! printed as it arrives, stopping at the first failure.
//!
//! Run with: cargo run --example rollout

use std::time::Duration;

use agent_tunnel::client::AgentClient;
use agent_tunnel::server::{AgentServer, NotAdmitted, Selector};
use agent_tunnel::HookError;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secret = "rollout-secret";

    // The server marks every fifth agent (by the number in its name) a
    // canary, whatever the agent itself says.
    let server = AgentServer::builder()
        .secret(secret)
        .on_admit(|agent| {
            let mut labels = agent.labels().clone();
            let n: u64 = agent.name().trim_start_matches('A').parse().unwrap_or(0);
            if n % 5 == 0 {
                labels
                    .insert("canary", "true")
                    .map_err(|e| NotAdmitted::new(e.to_string()))?;
            }
            Ok(labels)
        })
        .start("127.0.0.1:0")
        .await?;
    let url = format!("ws://{}", server.local_addr());

    // The fleet: each agent presents its region and role.
    let mut fleet = Vec::new();
    for i in 0..30 {
        let region = ["eu", "us"][i % 2];
        let role = ["db", "web", "cache"][i % 3];
        let client = AgentClient::builder(&url, secret)
            .label("region", region)
            .label("role", role)
            .on_hook("upgrade", move |version: String, call| async move {
                // Some work, a little longer on some agents.
                let ms = 20 + 15 * (call.peer.name().len() as u64 % 3) + 5 * (i as u64 % 4);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                // One cache agent has no room for the new build.
                if i == 23 {
                    return Err(HookError::new("DISK_FULL", "no room for the new build"));
                }
                Ok::<_, HookError>(format!("{role}@{region} now runs {version}"))
            })
            .connect()
            .await?;
        fleet.push(client);
    }

    // Wait until the whole fleet is in before rolling out.
    let everyone = Selector::all();
    let n = server
        .wait_for_count(&everyone, 30, Duration::from_secs(10))
        .await?;
    println!("{n} agents connected");

    // Canaries first, all at once; any failure stops the rollout.
    let canaries = server.select("canary".parse::<Selector>()?);
    println!("upgrading {} canaries", canaries.count());
    let results = canaries.send_all::<_, String>("upgrade", "v2").await?;
    for (name, result) in &results {
        match result {
            Ok(msg) => println!("  canary {name}: {msg}"),
            Err(e) => println!("  canary {name}: {} ({e})", e.code()),
        }
    }
    if results.values().any(Result::is_err) {
        println!("a canary failed; stopping");
        return Ok(());
    }

    // Then web and db agents that are not canaries, ten at a time, each
    // result printed as it arrives, stopping at the first failure.
    let rest: Selector = "!canary,role in (db,web)".parse()?;
    let selection = server.select(rest.clone());
    println!(
        "rolling out to {} agents matching {rest}",
        selection.count()
    );
    let mut rollout = selection
        .call_each::<_, String>("upgrade", "v2")?
        .concurrency(10)
        .timeout(Duration::from_secs(5));
    while let Some((name, result)) = rollout.next().await {
        match result {
            Ok(msg) => println!("  {name}: {msg}"),
            Err(e) => {
                println!("  {name}: {} ({e}); stopping", e.code());
                break;
            }
        }
    }
    drop(rollout);

    // Caches last, three at a time; one of them fails, and the rollout
    // stops there: dropping the stream calls no one else.
    let caches = server.select("role=cache,!canary".parse::<Selector>()?);
    println!("rolling out to {} caches", caches.count());
    let mut rollout = caches
        .call_each::<_, String>("upgrade", "v2")?
        .concurrency(3);
    while let Some((name, result)) = rollout.next().await {
        match result {
            Ok(msg) => println!("  {name}: {msg}"),
            Err(e) => {
                println!("  {name}: {} ({e}); stopping the cache rollout", e.code());
                break;
            }
        }
    }
    drop(rollout);

    // The server can relabel an agent later; selections see it at once.
    if let Some(agent) = server.agents().first() {
        agent.set_label("draining", "true")?;
        println!(
            "{} drained; draining agents: {}",
            agent.name(),
            server.select("draining".parse::<Selector>()?).count()
        );
    }

    for client in fleet {
        client.close().await;
    }
    server.shutdown().await;
    Ok(())
}
