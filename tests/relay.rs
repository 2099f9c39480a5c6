//! Issue 10, item 5: agent-to-agent calls through the server, with policy.
//!
//! An agent calls another agent's hook with `send_to_agent`; the server
//! relays it only when its relay policy allows (default: nothing,
//! `FORBIDDEN`), the callee sees the caller's name in
//! `Call::relayed_from`, its answer or error comes back unchanged, and a
//! caller that drops its call cancels the callee's hook.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use agent_tunnel::client::{AgentClient, ServerHandle};
use agent_tunnel::server::Agent;
use agent_tunnel::{codes, Call, Error, HookError};
use common::*;
use serde_json::{json, Value};
use tokio::sync::oneshot;

/// Hooks every agent here gets: `whoami` answers who relayed the call,
/// `echo` its body, `full` a coded error with data, and `count` counts.
fn install(client: &AgentClient, runs: &Arc<AtomicUsize>) {
    client.on_hook("whoami", |_: Value, call: Call<ServerHandle>| async move {
        Ok::<_, HookError>(call.relayed_from().map(str::to_owned))
    });
    client.on_hook("echo", |v: Value, _: Call<ServerHandle>| async move {
        Ok::<_, HookError>(v)
    });
    client.on_hook("full", |_: Value, _: Call<ServerHandle>| async move {
        Err::<(), _>(HookError::new("DISK_FULL", "no space left").with_data(json!({"free": 0})))
    });
    let runs = Arc::clone(runs);
    client.on_hook("count", move |_: Value, _: Call<ServerHandle>| {
        runs.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, HookError>(()) }
    });
}

/// A connected agent with the hooks of [`install`], its name, and how often
/// its `count` hook ran.
async fn agent(
    server: &agent_tunnel::server::AgentServer,
) -> (AgentClient, String, Arc<AtomicUsize>) {
    let (client, name) = connect_plain(server).await;
    let runs = Arc::default();
    install(&client, &runs);
    (client, name, runs)
}

fn code(e: &Error) -> &str {
    e.code()
}

#[tokio::test]
async fn relay_is_forbidden_by_default_and_the_callee_never_runs() {
    let server = start_server().await;
    let (a, _, _) = agent(&server).await;
    let (_b, b_name, b_runs) = agent(&server).await;
    let err = within(a.send_to_agent::<_, Value>(&b_name, "count", &()))
        .await
        .unwrap_err();
    assert_eq!(code(&err), codes::FORBIDDEN, "{err}");
    assert!(matches!(err, Error::Remote(_)), "{err:?}");
    // Refused before the target is looked up: an unknown name gets the same.
    let err = within(a.send_to_agent::<_, Value>("Z9999", "count", &()))
        .await
        .unwrap_err();
    assert_eq!(code(&err), codes::FORBIDDEN, "{err}");
    assert_eq!(b_runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_allowed_relay_answers_and_the_callee_sees_the_callers_name() {
    let asked: Arc<Mutex<Vec<(String, String, String)>>> = Arc::default();
    let seen = Arc::clone(&asked);
    let server = start(
        server_builder().relay_policy(move |from: &Agent, to, action| {
            seen.lock()
                .unwrap()
                .push((from.name().to_owned(), to.to_owned(), action.to_owned()));
            true
        }),
    )
    .await;
    let (a, a_name, _) = agent(&server).await;
    let (_b, b_name, _) = agent(&server).await;
    let who: Option<String> = within(a.send_to_agent(&b_name, "whoami", &()))
        .await
        .unwrap();
    assert_eq!(who.as_deref(), Some(a_name.as_str()));
    let body = json!({"a": [1, 2.5, "x"], "b": null});
    let back: Value = within(a.send_to_agent(&b_name, "echo", &body))
        .await
        .unwrap();
    assert_eq!(back, body);
    assert_eq!(
        asked.lock().unwrap()[0],
        (a_name.clone(), b_name.clone(), "whoami".to_owned())
    );
    // A call the server makes itself carries no name.
    let direct: Option<String> = within(server.send_to(b_name.as_str(), "whoami", &()))
        .await
        .unwrap();
    assert_eq!(direct, None);
}

#[tokio::test]
async fn the_policy_decides_per_target_and_action() {
    let allowed: Arc<Mutex<String>> = Arc::default();
    let target = Arc::clone(&allowed);
    let server = start(server_builder().relay_policy(move |_: &Agent, to, action| {
        *target.lock().unwrap() == to && action == "echo"
    }))
    .await;
    let (a, _, _) = agent(&server).await;
    let (_b, b_name, b_runs) = agent(&server).await;
    let (_c, c_name, _) = agent(&server).await;
    *allowed.lock().unwrap() = b_name.clone();
    let ok: u32 = within(a.send_to_agent(&b_name, "echo", &7)).await.unwrap();
    assert_eq!(ok, 7);
    let err = within(a.send_to_agent::<_, Value>(&b_name, "count", &()))
        .await
        .unwrap_err();
    assert_eq!(code(&err), codes::FORBIDDEN, "{err}");
    let err = within(a.send_to_agent::<_, Value>(&c_name, "echo", &7))
        .await
        .unwrap_err();
    assert_eq!(code(&err), codes::FORBIDDEN, "{err}");
    assert_eq!(b_runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn unknown_offline_and_revoked_targets_get_their_codes() {
    let server = start(server_builder().relay_policy(|_: &Agent, _, _| true)).await;
    let (a, _, _) = agent(&server).await;
    let (b, b_name, _) = agent(&server).await;
    let (_c, c_name, _) = agent(&server).await;
    let err = within(a.send_to_agent::<_, Value>("Z9999", "echo", &1))
        .await
        .unwrap_err();
    assert_eq!(code(&err), codes::UNKNOWN_AGENT, "{err}");
    close_and_wait(&server, b, &b_name).await;
    let err = within(a.send_to_agent::<_, Value>(&b_name, "echo", &1))
        .await
        .unwrap_err();
    assert_eq!(code(&err), codes::AGENT_NOT_CONNECTED, "{err}");
    within(server.revoke(&c_name, "retired")).await.unwrap();
    let err = within(a.send_to_agent::<_, Value>(&c_name, "echo", &1))
        .await
        .unwrap_err();
    assert_eq!(code(&err), codes::REVOKED, "{err}");
}

#[tokio::test]
async fn the_callees_error_passes_through_with_its_code_and_data() {
    let server = start(server_builder().relay_policy(|_: &Agent, _, _| true)).await;
    let (a, _, _) = agent(&server).await;
    let (_b, b_name, _) = agent(&server).await;
    let err = within(a.send_to_agent::<_, Value>(&b_name, "full", &()))
        .await
        .unwrap_err();
    match err {
        Error::Remote(e) => {
            assert_eq!(e.code, "DISK_FULL");
            assert_eq!(e.message, "no space left");
            assert_eq!(e.data, Some(json!({"free": 0})));
        }
        other => panic!("expected the callee's error, got {other:?}"),
    }
    let err = within(a.send_to_agent::<_, Value>(&b_name, "nope", &()))
        .await
        .unwrap_err();
    assert_eq!(code(&err), codes::UNKNOWN_ACTION, "{err}");
}

/// Tells when the hook's future is dropped.
struct Dropped(Option<oneshot::Sender<()>>);

impl Drop for Dropped {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

#[tokio::test]
async fn a_caller_that_drops_its_call_cancels_the_callees_hook() {
    let server = start(server_builder().relay_policy(|_: &Agent, _, _| true)).await;
    let (a, _, _) = agent(&server).await;
    let (b, b_name, _) = agent(&server).await;
    let (started_tx, started_rx) = oneshot::channel::<()>();
    let (dropped_tx, dropped_rx) = oneshot::channel::<()>();
    let hook = Arc::new(Mutex::new(Some((started_tx, dropped_tx))));
    b.on_hook("slow", move |_: Value, _: Call<ServerHandle>| {
        let taken = hook.lock().unwrap().take();
        async move {
            let Some((started, dropped)) = taken else {
                return Err(HookError::new("AGAIN", "called twice"));
            };
            let _guard = Dropped(Some(dropped));
            let _ = started.send(());
            std::future::pending::<()>().await;
            Ok::<_, HookError>(())
        }
    });
    {
        let call = a.send_to_agent::<_, Value>(&b_name, "slow", &());
        tokio::select! {
            r = call => panic!("the slow hook answered: {r:?}"),
            r = within(started_rx) => r.expect("the hook started"),
        }
        // The call is dropped here.
    }
    within(dropped_rx)
        .await
        .expect("the callee's hook was dropped");
    // Nothing of the call is left on either link.
    let a_name = a.name().unwrap();
    let on_server = server.agent(&a_name).unwrap();
    within(async {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(5));
        while on_server.link().running_hooks() > 0 || a.pending_requests() > 0 {
            tick.tick().await;
        }
    })
    .await;
}

#[tokio::test]
async fn an_agent_may_relay_to_itself_when_the_policy_allows() {
    let server = start(server_builder().relay_policy(|_: &Agent, _, _| true)).await;
    let (a, a_name, _) = agent(&server).await;
    let who: Option<String> = within(a.send_to_agent(&a_name, "whoami", &()))
        .await
        .unwrap();
    assert_eq!(who.as_deref(), Some(a_name.as_str()));
}

#[tokio::test]
async fn a_user_catch_all_on_the_server_never_sees_the_relay_action() {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let server = start(server_builder().relay_policy(|_: &Agent, _, _| true)).await;
    let log = Arc::clone(&seen);
    server.on_any(move |_: Value, call: Call<Agent>| {
        log.lock().unwrap().push(call.action.to_string());
        async move { Err::<(), _>(HookError::new("NO", "refused by the catch-all")) }
    });
    let (a, _, _) = agent(&server).await;
    let (_b, b_name, _) = agent(&server).await;
    let v: u32 = within(a.send_to_agent(&b_name, "echo", &3)).await.unwrap();
    assert_eq!(v, 3);
    assert!(seen.lock().unwrap().is_empty());
}
