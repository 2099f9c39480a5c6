//! The echo hooks and checked calls shared by the chaos and soak suites.
//!
//! Every request body names its caller (or its callee) and carries a nonce
//! used once; each hook refuses a body that names another peer than the one
//! it was called by or on, and echoes the body with its own name; each caller
//! checks the caller, callee and nonce of the response. So a response that
//! reached the wrong caller, or a call served by the wrong peer, is counted
//! as misrouted.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agent_tunnel::client::{AgentClient, ClientBuilder};
use agent_tunnel::server::AgentServer;
use agent_tunnel::{Error, HookError};
use serde_json::{json, Value};

use super::tally::Tally;

/// Error code of a hook that was called by another agent than the body says.
pub const MISATTRIBUTED: &str = "MISATTRIBUTED";
/// Error code of a hook that got a call meant for another agent.
pub const MISDELIVERED: &str = "MISDELIVERED";

/// How calls are made and judged.
#[derive(Debug, Clone, Copy)]
pub struct CallPlan {
    /// Each call's timeout.
    pub timeout: Duration,
    /// How far past its timeout a call may end before it counts as late.
    pub margin: Duration,
    /// How far past its timeout a call is abandoned and counted as hung.
    pub guard: Duration,
    /// Error codes that are routine for this run (not sampled as failures).
    pub routine: &'static [&'static str],
}

static NONCE: AtomicU64 = AtomicU64::new(1);

/// A nonce never used before in this process.
pub fn nonce() -> u64 {
    NONCE.fetch_add(1, Ordering::Relaxed)
}

/// Simulated work: a hook takes the time its body asks for.
async fn work(body: &Value) {
    if let Some(ms) = body.get("delay_ms").and_then(Value::as_u64) {
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }
}

/// Registers the server's `echo` hook.
pub fn server_echo(server: &AgentServer) {
    server.on_hook("echo", |body: Value, call| async move {
        let me = call.peer.name().to_owned();
        if body.get("from").and_then(Value::as_str) != Some(me.as_str()) {
            return Err(HookError::new(
                MISATTRIBUTED,
                format!("{} came in on the link of {me}", body["from"]),
            ));
        }
        work(&body).await;
        Ok(json!({"from": body["from"], "nonce": body["nonce"], "by": me}))
    });
}

/// Adds the agent's `echo` hook.
pub fn agent_echo(builder: ClientBuilder) -> ClientBuilder {
    builder.on_hook("echo", |body: Value, call| async move {
        let me = call.peer.name().to_owned();
        if let Some(to) = body.get("to") {
            if to.as_str() != Some(me.as_str()) {
                return Err(HookError::new(
                    MISDELIVERED,
                    format!("a call for {to} reached {me}"),
                ));
            }
        }
        work(&body).await;
        Ok(json!({"to": body.get("to"), "nonce": body["nonce"], "by": me}))
    })
}

/// Runs one call under the hang guard, timing it.
async fn timed<T>(
    what: &str,
    plan: &CallPlan,
    tally: &mut Tally,
    call: impl Future<Output = T>,
) -> Option<T> {
    let start = Instant::now();
    let out = tokio::time::timeout(plan.timeout + plan.guard, call).await;
    let elapsed = start.elapsed();
    match out {
        Ok(v) => {
            tally.timing(what, elapsed, plan.timeout, plan.margin);
            Some(v)
        }
        Err(_) => {
            tally.hung(format!("{what}: no outcome after {elapsed:?}"));
            None
        }
    }
}

fn failed(tally: &mut Tally, plan: &CallPlan, what: &str, e: &Error) {
    match e.code() {
        MISATTRIBUTED | MISDELIVERED => tally.misrouted(format!("{what}: {e}")),
        code => {
            if !plan.routine.contains(&code) {
                tally.sample(format!("{what}: {e}"));
            }
            tally.error(code);
        }
    }
}

/// One call from agent `name` to the server; the response must echo this
/// caller and nonce, served on this agent's own link.
pub async fn agent_call(client: &AgentClient, name: &str, work_ms: u64, plan: &CallPlan) -> Tally {
    let mut tally = Tally::default();
    let n = nonce();
    let body = json!({"from": name, "nonce": n, "delay_ms": work_ms});
    let what = format!("{name} -> server #{n}");
    let call = client.send_timeout::<_, Value>("echo", &body, plan.timeout);
    match timed(&what, plan, &mut tally, call).await {
        None => {}
        Some(Ok(v)) => {
            if v["from"] == name && v["nonce"] == n && v["by"] == name {
                tally.ok();
            } else {
                tally.misrouted(format!("{what} got {v}"));
            }
        }
        Some(Err(e)) => failed(&mut tally, plan, &what, &e),
    }
    tally
}

/// One call from the server to agent `name`; the response must come from
/// that agent and echo this nonce.
pub async fn server_call(server: &AgentServer, name: &str, work_ms: u64, plan: &CallPlan) -> Tally {
    let mut tally = Tally::default();
    let n = nonce();
    let body = json!({"to": name, "nonce": n, "delay_ms": work_ms});
    let what = format!("server -> {name} #{n}");
    let call = server.send_to_timeout::<_, Value>(name, "echo", &body, plan.timeout);
    match timed(&what, plan, &mut tally, call).await {
        None => {}
        Some(Ok(v)) => {
            if v["to"] == name && v["nonce"] == n && v["by"] == name {
                tally.ok();
            } else {
                tally.misrouted(format!("{what} got {v}"));
            }
        }
        Some(Err(e)) => failed(&mut tally, plan, &what, &e),
    }
    tally
}

/// One `send_all`: each agent's result must come from that agent (one of
/// `names`) and echo this nonce. Counts one outcome per agent reached.
pub async fn broadcast(
    server: &AgentServer,
    names: &BTreeSet<String>,
    work_ms: u64,
    plan: &CallPlan,
) -> Tally {
    let mut tally = Tally::default();
    let n = nonce();
    let body = json!({"nonce": n, "delay_ms": work_ms});
    let what = format!("send_all #{n}");
    let call = server.send_all_timeout::<_, Value>("echo", &body, plan.timeout);
    match timed(&what, plan, &mut tally, call).await {
        None => {}
        Some(Ok(results)) => {
            for (name, r) in results {
                let what = format!("{what} -> {name}");
                if !names.contains(&name) {
                    tally.misrouted(format!("{what}: not one of the agents"));
                    continue;
                }
                match r {
                    Ok(v) if v["by"] == name.as_str() && v["nonce"] == n => tally.ok(),
                    Ok(v) => tally.misrouted(format!("{what} got {v}")),
                    Err(e) => failed(&mut tally, plan, &what, &e),
                }
            }
        }
        Some(Err(e)) => failed(&mut tally, plan, &what, &e),
    }
    tally
}
