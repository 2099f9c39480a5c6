//! Issue 2, item 4: hooks, the same on both sides. Catch-all first, then the
//! action's handlers in declaration order; the last non-empty result wins; the
//! first error stops the chain and reaches the caller as it is;
//! `UNKNOWN_ACTION`; typed and untyped handlers; `INVALID_MESSAGE`; a panic is
//! `INTERNAL_ERROR` and nothing else suffers; handlers run concurrently; a
//! server hook sees the calling `Agent`.

mod common;

use std::sync::{Arc, Mutex};

use agent_tunnel::client::ServerHandle;
use agent_tunnel::protocol::{handler, Call, Hooks};
use agent_tunnel::{codes, HookError};
use common::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc;

type Log = Arc<Mutex<Vec<String>>>;

fn push(log: &Log, entry: String) {
    log.lock().unwrap().push(entry);
}

fn entries(log: &Log) -> Vec<String> {
    std::mem::take(&mut *log.lock().unwrap())
}

/// The same chain on either side's registry. The catch-all is registered
/// after the first `chain` handler on purpose: it must still run first.
fn install_chain<P: Clone + Send + Sync + 'static>(hooks: &Hooks<P>, log: &Log) {
    let l = Arc::clone(log);
    hooks.on_hook("chain", move |body: Value, _: Call<P>| {
        let l = Arc::clone(&l);
        async move {
            push(&l, format!("h1:{body}"));
            Ok::<_, HookError>("from h1")
        }
    });
    let l = Arc::clone(log);
    hooks.on_any(move |_: Value, call: Call<P>| {
        let l = Arc::clone(&l);
        async move {
            push(&l, format!("any:{}", call.action));
            if &*call.action == "guarded" {
                return Err(HookError::new("DENIED", "the catch-all says no"));
            }
            Ok(())
        }
    });
    let l = Arc::clone(log);
    hooks.on_hook("chain", move |_: Value, _: Call<P>| {
        let l = Arc::clone(&l);
        async move {
            push(&l, "h2".into());
            Ok::<_, HookError>(json!({"from": "h2"}))
        }
    });
    let l = Arc::clone(log);
    hooks.on_hook("chain", move |_: Value, _: Call<P>| {
        let l = Arc::clone(&l);
        async move {
            push(&l, "h3".into());
            // Empty: does not replace h2's result.
            Ok::<_, HookError>(None::<String>)
        }
    });

    let l = Arc::clone(log);
    hooks.on_hook("fail", move |_: Value, _: Call<P>| {
        let l = Arc::clone(&l);
        async move {
            push(&l, "f1".into());
            Ok::<_, HookError>("fine so far")
        }
    });
    let l = Arc::clone(log);
    hooks.on_hook("fail", move |_: Value, _: Call<P>| {
        let l = Arc::clone(&l);
        async move {
            push(&l, "f2".into());
            Err::<(), _>(
                HookError::new("FORBIDDEN", "not on a Sunday").with_data(json!({"day": 7})),
            )
        }
    });
    let l = Arc::clone(log);
    hooks.on_hook("fail", move |_: Value, _: Call<P>| {
        let l = Arc::clone(&l);
        async move {
            push(&l, "f3".into());
            Ok::<_, HookError>("must not run")
        }
    });

    let l = Arc::clone(log);
    hooks.on_hook("guarded", move |_: Value, _: Call<P>| {
        let l = Arc::clone(&l);
        async move {
            push(&l, "guarded:own".into());
            Ok::<_, HookError>("must not run")
        }
    });
    hooks.on_hook("empty", |_: Value, _: Call<P>| async {
        Ok::<_, HookError>(())
    });

    // Several at once.
    hooks.on_hooks([
        (
            "double",
            handler(|n: i64, _: Call<P>| async move { Ok::<_, HookError>(n * 2) }),
        ),
        (
            "negate",
            handler(|n: i64, _: Call<P>| async move { Ok::<_, HookError>(-n) }),
        ),
    ]);
}

/// Checks the chain's outcomes through `call`, which reaches the side whose
/// registry logs to `log`.
async fn check_chain<F, Fut>(log: &Log, call: F)
where
    F: Fn(&'static str, Value) -> Fut,
    Fut: std::future::Future<Output = Result<Value, agent_tunnel::Error>>,
{
    // Order, and the last non-empty result.
    let out = within(call("chain", json!(1))).await.unwrap();
    assert_eq!(out, json!({"from": "h2"}));
    assert_eq!(entries(log), ["any:chain", "h1:1", "h2", "h3"]);

    // The first error stops the chain and arrives as the handler raised it.
    let err = within(call("fail", json!(null))).await.unwrap_err();
    assert_eq!(err.code(), "FORBIDDEN", "{err}");
    let remote = err.remote().expect("a remote error");
    assert_eq!(remote.message, "not on a Sunday");
    assert_eq!(remote.data, Some(json!({"day": 7})));
    assert_eq!(entries(log), ["any:fail", "f1", "f2"]);

    // An error in the catch-all stops the action's own handlers.
    let err = within(call("guarded", json!(null))).await.unwrap_err();
    assert_eq!(err.code(), "DENIED", "{err}");
    assert_eq!(entries(log), ["any:guarded"]);

    // All results empty: the response is null.
    assert_eq!(
        within(call("empty", json!(null))).await.unwrap(),
        Value::Null
    );
    assert_eq!(entries(log), ["any:empty"]);

    // Handlers registered several at once.
    assert_eq!(within(call("double", json!(21))).await.unwrap(), json!(42));
    assert_eq!(within(call("negate", json!(5))).await.unwrap(), json!(-5));
    assert_eq!(entries(log), ["any:double", "any:negate"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_rules_hold_on_the_server() {
    let server = start_server().await;
    let log = Log::default();
    install_chain(server.hooks(), &log);
    let (client, _) = connect_plain(&server).await;

    check_chain(&log, |action, body| {
        let client = client.clone();
        async move { client.send::<_, Value>(action, &body).await }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_rules_hold_on_the_agent() {
    let server = start_server().await;
    let log = Log::default();
    let hooks: Hooks<ServerHandle> = Hooks::new();
    install_chain(&hooks, &log);
    let client = connect(&server, client_builder(&server).hooks(hooks)).await;
    let name = client.name().unwrap();

    check_chain(&log, |action, body| {
        let server = server.clone();
        let name = name.clone();
        async move { server.send_to::<_, Value>(name, action, &body).await }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_without_a_handler_is_unknown_action_both_ways() {
    let server = start_server().await;
    server.on_hook("known", |_: Value, _| async { Ok::<_, HookError>(1) });
    let client = connect(
        &server,
        client_builder(&server).on_hook("known", |_: Value, _| async { Ok::<_, HookError>(2) }),
    )
    .await;
    let name = client.name().unwrap();

    let err = within(client.send::<_, Value>("nope", &()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::UNKNOWN_ACTION, "{err}");
    let err = within(server.send_to::<_, Value>(name.as_str(), "nope", &()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::UNKNOWN_ACTION, "{err}");

    // The link is fine afterwards.
    assert_eq!(
        within(client.send::<_, i64>("known", &())).await.unwrap(),
        1
    );
    assert_eq!(
        within(server.send_to::<_, i64>(name.as_str(), "known", &()))
            .await
            .unwrap(),
        2
    );
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Resize {
    volume: String,
    gb: u32,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Resized {
    volume: String,
    total_gb: u32,
}

async fn resize(r: Resize) -> Result<Resized, HookError> {
    Ok(Resized {
        total_gb: r.gb + 100,
        volume: r.volume,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_and_untyped_handlers_and_invalid_bodies_on_the_server() {
    let server = start_server().await;
    server.on_hook("resize", |r: Resize, _| resize(r));
    server.on_hook("echo", |v: Value, _| async move { Ok::<_, HookError>(v) });
    let (client, _) = connect_plain(&server).await;

    let typed: Resized = within(client.send(
        "resize",
        &Resize {
            volume: "data".into(),
            gb: 5,
        },
    ))
    .await
    .unwrap();
    assert_eq!(
        typed,
        Resized {
            volume: "data".into(),
            total_gb: 105
        }
    );
    let untyped: Value = within(client.send("resize", &json!({"volume": "logs", "gb": 1})))
        .await
        .unwrap();
    assert_eq!(untyped, json!({"volume": "logs", "total_gb": 101}));
    let echoed: Value = within(client.send("echo", &json!([1, "two", {"three": 3}])))
        .await
        .unwrap();
    assert_eq!(echoed, json!([1, "two", {"three": 3}]));

    // A body the handler's type does not accept.
    let err = within(client.send::<_, Value>("resize", &json!({"volume": 1})))
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::INVALID_MESSAGE, "{err}");
    assert!(
        err.remote().is_some(),
        "the handler side refused it: {err:?}"
    );
    // A response the caller's type does not accept.
    let err = within(client.send::<_, Vec<u8>>("echo", &json!({"not": "a list"})))
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::INVALID_MESSAGE, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_and_untyped_handlers_and_invalid_bodies_on_the_agent() {
    let server = start_server().await;
    let client = connect(
        &server,
        client_builder(&server)
            .on_hook("resize", |r: Resize, _| resize(r))
            .on_hook("echo", |v: Value, _| async move { Ok::<_, HookError>(v) }),
    )
    .await;
    let name = client.name().unwrap();

    let typed: Resized = within(server.send_to(
        name.as_str(),
        "resize",
        &Resize {
            volume: "data".into(),
            gb: 1,
        },
    ))
    .await
    .unwrap();
    assert_eq!(typed.total_gb, 101);
    let untyped: Value = within(server.send_to(name.as_str(), "echo", &json!({"k": [1, 2]})))
        .await
        .unwrap();
    assert_eq!(untyped, json!({"k": [1, 2]}));

    let err = within(server.send_to::<_, Value>(name.as_str(), "resize", &json!("text")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::INVALID_MESSAGE, "{err}");
    assert!(err.remote().is_some(), "the agent refused it: {err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_hook_is_internal_error_and_everyone_keeps_being_served() {
    let server = start_server().await;
    server.on_hook("boom", |_: Value, _| async {
        if true {
            panic!("bug in a server hook");
        }
        Ok::<_, HookError>(())
    });
    server.on_hook("echo", |v: Value, _| async move { Ok::<_, HookError>(v) });
    let agent_hooks = || {
        client_builder(&server)
            .on_hook("ping", |_: Value, _| async { Ok::<_, HookError>("pong") })
            .on_hook("boom", |_: Value, _| async {
                if true {
                    panic!("bug in an agent hook");
                }
                Ok::<_, HookError>(())
            })
    };
    let a = connect(&server, agent_hooks()).await;
    let b = connect(&server, agent_hooks()).await;
    let a_name = a.name().unwrap();
    let b_name = b.name().unwrap();

    let err = within(a.send::<_, Value>("boom", &())).await.unwrap_err();
    assert_eq!(err.code(), codes::INTERNAL_ERROR, "{err}");

    // The caller, the other agent and the server all carry on.
    assert_eq!(
        within(a.send::<_, Value>("echo", &json!("a")))
            .await
            .unwrap(),
        json!("a")
    );
    assert_eq!(
        within(b.send::<_, Value>("echo", &json!("b")))
            .await
            .unwrap(),
        json!("b")
    );
    let all = within(server.send_all::<_, String>("ping", &()))
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    assert!(
        all.values().all(|r| matches!(r.as_deref(), Ok("pong"))),
        "{all:?}"
    );

    // The same holds for a panic in an agent's hook.
    let err = within(server.send_to::<_, Value>(b_name.as_str(), "boom", &()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::INTERNAL_ERROR, "{err}");
    assert!(b.is_ready());
    for name in [&a_name, &b_name] {
        let pong: String = within(server.send_to(name.as_str(), "ping", &()))
            .await
            .unwrap();
        assert_eq!(pong, "pong");
    }
}

/// Registers `slow` (reports that it started, then waits for `gate`) and
/// `fast` on a registry.
fn install_slow_and_fast<P: Clone + Send + Sync + 'static>(
    hooks: &Hooks<P>,
    started: mpsc::Sender<()>,
    gate: &Gate,
) {
    let gate = gate.clone();
    hooks.on_hook("slow", move |_: Value, _: Call<P>| {
        let started = started.clone();
        let released = gate.wait();
        async move {
            let _ = started.send(()).await;
            released.await;
            Ok::<_, HookError>("slow done")
        }
    });
    hooks.on_hook("fast", |_: Value, _: Call<P>| async {
        Ok::<_, HookError>("fast done")
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_agent_hook_does_not_delay_another_request_on_the_same_link() {
    let server = start_server().await;
    let (started_tx, mut started) = mpsc::channel(1);
    let gate = Gate::new();
    let hooks: Hooks<ServerHandle> = Hooks::new();
    install_slow_and_fast(&hooks, started_tx, &gate);
    let client = connect(&server, client_builder(&server).hooks(hooks)).await;
    let name = client.name().unwrap();

    let slow = tokio::spawn({
        let server = server.clone();
        let name = name.clone();
        async move {
            server
                .send_to_timeout::<_, String>(name, "slow", &(), LONG)
                .await
        }
    });
    within(started.recv()).await.expect("slow hook started");
    // The slow hook holds on until the fast call has come back: were hooks
    // run one at a time, this would never return.
    let fast: String = within(server.send_to(name.as_str(), "fast", &()))
        .await
        .unwrap();
    assert_eq!(fast, "fast done");
    gate.open();
    assert_eq!(within(slow).await.unwrap().unwrap(), "slow done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_server_hook_does_not_delay_another_request_on_the_same_link() {
    let server = start_server().await;
    let (started_tx, mut started) = mpsc::channel(1);
    let gate = Gate::new();
    install_slow_and_fast(server.hooks(), started_tx, &gate);
    let (client, _) = connect_plain(&server).await;

    let slow = tokio::spawn({
        let client = client.clone();
        async move { client.send_timeout::<_, String>("slow", &(), LONG).await }
    });
    within(started.recv()).await.expect("slow hook started");
    let fast: String = within(client.send("fast", &())).await.unwrap();
    assert_eq!(fast, "fast done");
    gate.open();
    assert_eq!(within(slow).await.unwrap().unwrap(), "slow done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_hook_sees_which_agent_called() {
    let server = start_server().await;
    server.on_hook("whoami", |_: Value, call| async move {
        let role = call.peer.meta().get("role").cloned().unwrap_or(Value::Null);
        Ok::<_, HookError>(json!({"name": call.peer.name(), "role": role}))
    });
    // The peer is the calling agent's handle: the hook can call it back.
    server.on_hook("callback", |_: Value, call| async move {
        let ident: String = call
            .peer
            .send("ident", &())
            .await
            .map_err(|e| HookError::new("CALLBACK_FAILED", e.to_string()))?;
        Ok::<_, HookError>(ident)
    });
    let agent = |role: &'static str| {
        client_builder(&server).meta("role", role).on_hook(
            "ident",
            move |_: Value, call: Call<ServerHandle>| async move {
                // An agent's hook sees its own name on the link.
                Ok::<_, HookError>(format!("{role} as {}", call.peer.name()))
            },
        )
    };
    let db = connect(&server, agent("db")).await;
    let web = connect(&server, agent("web")).await;

    for (client, role) in [(&db, "db"), (&web, "web")] {
        let name = client.name().unwrap();
        let me: Value = within(client.send("whoami", &())).await.unwrap();
        assert_eq!(me, json!({"name": name, "role": role}));
        let ident: String = within(client.send("callback", &())).await.unwrap();
        assert_eq!(ident, format!("{role} as {name}"));
    }
}

/// A server hook that calls an agent onward passes the agent's failure back
/// with `?`: a remote error keeps its own code, message and data, and the
/// library's own errors keep their codes.
#[tokio::test]
async fn a_hook_calling_onward_passes_errors_back_with_the_question_mark() {
    let server = start_server().await;
    let relay = server.clone();
    server.on_hook("relay", move |to: String, _call| {
        let relay = relay.clone();
        async move {
            let answer: Value = relay.send_to(to.as_str(), "disk", &json!({})).await?;
            Ok::<_, HookError>(answer)
        }
    });
    let worker = connect(
        &server,
        client_builder(&server).on_hook("disk", |_: Value, _call| async {
            Err::<Value, _>(
                HookError::new("DISK_FULL", "no space left").with_data(json!({"free": 0})),
            )
        }),
    )
    .await;
    let worker_name = worker.name().expect("named");
    let (caller, _) = connect_plain(&server).await;

    let err = within(caller.send::<_, Value>("relay", &worker_name))
        .await
        .expect_err("the worker fails");
    let remote = err.remote().expect("a remote error");
    assert_eq!(remote.code, "DISK_FULL");
    assert_eq!(remote.message, "no space left");
    assert_eq!(remote.data, Some(json!({"free": 0})));

    let err = within(caller.send::<_, Value>("relay", "never-given"))
        .await
        .expect_err("no such agent");
    assert_eq!(err.code(), codes::UNKNOWN_AGENT);
    server.shutdown().await;
}

/// A catch-all alone answers every action, even one without a handler of
/// its own; `UNKNOWN_ACTION` comes only from a catch-all that says so.
#[tokio::test]
async fn a_catch_all_alone_answers_actions_without_their_own_handler() {
    let server = start_server().await;
    server.on_any(
        |_: Value, call: Call<agent_tunnel::server::Agent>| async move {
            match &*call.action {
                "known" => Ok(json!({"served": "known"})),
                other => Err(HookError::new(
                    codes::UNKNOWN_ACTION,
                    format!("no hook for {other:?}"),
                )),
            }
        },
    );
    let (client, _) = connect_plain(&server).await;
    let ok: Value = within(client.send("known", &json!(null)))
        .await
        .expect("the catch-all answers");
    assert_eq!(ok, json!({"served": "known"}));
    let err = within(client.send::<_, Value>("other", &json!(null)))
        .await
        .expect_err("the catch-all refuses");
    assert_eq!(err.code(), codes::UNKNOWN_ACTION);
    server.shutdown().await;
}
