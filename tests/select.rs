//! Issue 10, items 2 and 3: selectors and calls to a subset. `select`
//! evaluates a selector against the connected agents' labels and names;
//! `Selection::send_all` returns every selected agent's own result;
//! `call_each` yields results as agents answer, at most `concurrency` at
//! a time, each under its own timeout, and once dropped calls no one else
//! and cancels the calls in flight; `Selection::notify` notifies only the
//! selected.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agent_tunnel::client::AgentClient;
use agent_tunnel::server::{AgentServer, Selector};
use agent_tunnel::{codes, HookError};
use common::*;
use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;

fn sel(s: &str) -> Selector {
    s.parse().expect("valid selector")
}

/// Six agents: A0001..A0006 with region eu/us alternating, roles db, web,
/// cache in turn, and `canary` on A0001 and A0004. Each answers `whoami`
/// with its name.
async fn fleet(server: &AgentServer) -> Vec<AgentClient> {
    let mut clients = Vec::new();
    for i in 0..6 {
        let mut b = client_builder(server)
            .label("region", ["eu", "us"][i % 2])
            .label("role", ["db", "web", "cache"][i % 3])
            .on_hook("whoami", |_: Value, call| async move {
                Ok::<_, HookError>(call.peer.name().to_owned())
            });
        if i % 3 == 0 {
            b = b.label("canary", "");
        }
        clients.push(connect(server, b).await);
    }
    clients
}

fn names(agents: &[agent_tunnel::server::Agent]) -> Vec<String> {
    agents.iter().map(|a| a.name().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectors_pick_agents_by_label_and_name() {
    let server = start_server().await;
    let _fleet = fleet(&server).await;
    let table: &[(&str, &[&str])] = &[
        ("", &["A0001", "A0002", "A0003", "A0004", "A0005", "A0006"]),
        ("region=eu", &["A0001", "A0003", "A0005"]),
        ("region==us,role=db", &["A0004"]),
        ("role in (db,cache)", &["A0001", "A0003", "A0004", "A0006"]),
        ("role notin (db,cache)", &["A0002", "A0005"]),
        ("region!=eu", &["A0002", "A0004", "A0006"]),
        ("canary", &["A0001", "A0004"]),
        ("!canary,region=eu", &["A0003", "A0005"]),
        // `!=` and `notin` match agents without the key.
        (
            "zone!=b",
            &["A0001", "A0002", "A0003", "A0004", "A0005", "A0006"],
        ),
        (
            "zone notin (a)",
            &["A0001", "A0002", "A0003", "A0004", "A0005", "A0006"],
        ),
        ("zone", &[]),
        ("zone=a", &[]),
        ("name=A0003", &["A0003"]),
        ("name in (A0002,A0005,A0099),region=us", &["A0002"]),
        ("name notin (A0001),canary", &["A0004"]),
        ("region=eu,region=us", &[]),
    ];
    for (s, want) in table {
        let selection = server.select(sel(s));
        assert_eq!(names(&selection.agents()), *want, "{s:?}");
        assert_eq!(selection.count(), want.len(), "{s:?}");
    }
    // Built in code, the same.
    let built = Selector::all()
        .in_("role", ["db", "cache"])
        .expect("valid")
        .exists("canary")
        .expect("valid");
    assert_eq!(names(&server.select(built).agents()), ["A0001", "A0004"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selector_parse_errors_name_the_place_and_what_was_expected() {
    for (text, at, says) in [
        ("role in db", 8, "expected `(` after `in`, found `db`"),
        ("region=eu,", 10, "expected a key or `!`, found the end"),
        ("role in (db,,cache)", 12, "expected a value, found `,`"),
        (
            "region=eu west",
            10,
            "expected `,` or the end, found `west`",
        ),
        ("region=-eu", 7, "invalid value \"-eu\""),
        ("name=bad/name", 5, "invalid agent name"),
    ] {
        let err = text.parse::<Selector>().expect_err(text);
        assert_eq!(err.position(), Some(at), "{text}: {err}");
        assert!(err.to_string().contains(says), "{text}: {err}");
        assert!(err
            .to_string()
            .starts_with(&format!("invalid selector at byte {at}: ")));
        let as_error: agent_tunnel::Error = err.into();
        assert_eq!(as_error.code(), codes::CONFIG);
    }
    // Serialised as its text, and read back (the form another node gets).
    let s = sel("region=eu, role in (db,cache), !draining");
    let json = serde_json::to_string(&s).expect("serialises");
    assert_eq!(json, r#""region=eu,role in (cache,db),!draining""#);
    assert_eq!(serde_json::from_str::<Selector>(&json).expect("parses"), s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_all_on_a_selection_calls_only_the_selected() {
    let server = start_server().await;
    let _fleet = fleet(&server).await;
    let results = within(
        server
            .select(sel("region=us"))
            .send_all::<_, String>("whoami", &()),
    )
    .await
    .expect("some agents");
    assert_eq!(
        results.keys().cloned().collect::<Vec<_>>(),
        ["A0002", "A0004", "A0006"]
    );
    for (name, result) in &results {
        assert_eq!(result.as_ref().expect("answers"), name);
    }
    // `select(all)` is `send_all`.
    let all = within(
        server
            .select(Selector::all())
            .send_all::<_, String>("whoami", &()),
    )
    .await
    .expect("agents");
    let plain = within(server.send_all::<_, String>("whoami", &()))
        .await
        .expect("agents");
    assert_eq!(
        all.keys().collect::<Vec<_>>(),
        plain.keys().collect::<Vec<_>>()
    );
    assert_eq!(all.len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selector_that_matches_nothing() {
    let server = start_server().await;
    let _fleet = fleet(&server).await;
    let nothing = server.select(sel("role=mainframe"));
    assert_eq!(nothing.count(), 0);
    assert!(nothing.agents().is_empty());
    // send_all: NO_CONNECTED_AGENTS, so a mistyped selector is not a no-op.
    let err = within(nothing.send_all::<_, Value>("whoami", &()))
        .await
        .expect_err("nothing selected");
    assert_eq!(err.code(), codes::NO_CONNECTED_AGENTS);
    // call_each: an empty stream.
    let mut each = nothing
        .call_each::<_, String>("whoami", &())
        .expect("body serialises");
    assert_eq!(each.selected(), 0);
    assert!(within(each.next()).await.is_none());
    assert_eq!(server.stats().pending_requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_each_yields_every_result_as_it_arrives() {
    let server = start_server().await;
    let _fleet = fleet(&server).await;
    let mut each = server
        .select(sel("role in (db,web)"))
        .call_each::<_, String>("whoami", &())
        .expect("body serialises");
    assert_eq!(each.selected(), 4);
    let mut got = BTreeSet::new();
    while let Some((name, result)) = within(each.next()).await {
        assert_eq!(result.expect("answers"), name);
        assert!(got.insert(name), "each agent once");
    }
    assert_eq!(
        got.into_iter().collect::<Vec<_>>(),
        ["A0001", "A0002", "A0004", "A0005"]
    );
    // It is a Stream too.
    let results: Vec<_> = within(
        server
            .select(sel("canary"))
            .call_each::<_, String>("whoami", &())
            .expect("serialises")
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(results.len(), 2);
}

/// Agents whose `work` hook reports that it started, then waits for a
/// permit from the test; `running` counts the hooks running now and
/// `peak` the most at once.
struct Workers {
    clients: Vec<AgentClient>,
    started: mpsc::UnboundedReceiver<String>,
    /// Names of agents whose `work` hook was stopped before it finished
    /// (cancelled by the server).
    stopped: mpsc::UnboundedReceiver<String>,
    permits: Arc<tokio::sync::Semaphore>,
    peak: Arc<AtomicUsize>,
}

/// Sends its name when dropped before [`Unfinished::done`].
struct Unfinished(Option<(mpsc::UnboundedSender<String>, String)>);

impl Unfinished {
    fn done(mut self) {
        self.0 = None;
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some((tx, name)) = self.0.take() {
            let _ = tx.send(name);
        }
    }
}

async fn workers(server: &AgentServer, n: usize) -> Workers {
    let (tx, started) = mpsc::unbounded_channel();
    let (stop_tx, stopped) = mpsc::unbounded_channel();
    let permits = Arc::new(tokio::sync::Semaphore::new(0));
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..n {
        let (tx, stop_tx, permits, running, peak) = (
            tx.clone(),
            stop_tx.clone(),
            Arc::clone(&permits),
            Arc::clone(&running),
            Arc::clone(&peak),
        );
        let b = client_builder(server)
            .label("pool", "workers")
            .on_hook("ping", |_: Value, _| async { Ok::<_, HookError>(()) })
            .on_hook("stall", |_: Value, _| async {
                std::future::pending::<()>().await;
                Ok::<_, HookError>(())
            })
            .on_hook("work", move |_: Value, call| {
                let (tx, stop_tx, permits, running, peak) = (
                    tx.clone(),
                    stop_tx.clone(),
                    Arc::clone(&permits),
                    Arc::clone(&running),
                    Arc::clone(&peak),
                );
                async move {
                    let name = call.peer.name().to_owned();
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    let _ = tx.send(name.clone());
                    // Reports the hook dropped before it got its permit.
                    let unfinished = Unfinished(Some((stop_tx, name)));
                    let permit = permits.acquire().await;
                    unfinished.done();
                    running.fetch_sub(1, Ordering::SeqCst);
                    permit.map(|p| p.forget()).map_err(HookError::internal)?;
                    Ok::<_, HookError>("done")
                }
            });
        clients.push(connect(server, b).await);
    }
    Workers {
        clients,
        started,
        stopped,
        permits,
        peak,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_each_keeps_to_its_concurrency() {
    let server = start_server().await;
    let mut w = workers(&server, 6).await;
    let each = server
        .select(sel("pool=workers"))
        .call_each::<_, String>("work", &())
        .expect("serialises")
        .concurrency(2)
        .timeout(LONG);
    let consumer = tokio::spawn(async move { each.collect::<Vec<_>>().await });
    // Two start; a round trip to every agent then shows that no other
    // `work` call went out before them (each link keeps its order).
    for _ in 0..2 {
        within(w.started.recv()).await.expect("a call started");
    }
    let pings = within(
        server
            .select(Selector::all())
            .send_all::<_, Value>("ping", &()),
    )
    .await
    .expect("agents");
    assert!(pings.values().all(Result::is_ok));
    assert_eq!(w.peak.load(Ordering::SeqCst), 2);
    assert!(w.started.try_recv().is_err(), "a third call started");
    // Then one finishes at a time and the next takes its place.
    for _ in 0..4 {
        w.permits.add_permits(1);
        within(w.started.recv()).await.expect("a call started");
    }
    w.permits.add_permits(2);
    let results = within(consumer).await.expect("consumer");
    assert_eq!(results.len(), 6);
    assert!(results
        .iter()
        .all(|(_, r)| r.as_deref().ok() == Some("done")));
    assert!(
        w.peak.load(Ordering::SeqCst) <= 2,
        "at most two at once, saw {}",
        w.peak.load(Ordering::SeqCst)
    );
    drop(w.clients);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_call_each_calls_no_one_else() {
    let server = start_server().await;
    let mut w = workers(&server, 4).await;
    let mut each = server
        .select(sel("pool=workers"))
        .call_each::<_, String>("work", &())
        .expect("serialises")
        .concurrency(1)
        .timeout(LONG);
    let next = tokio::spawn(async move {
        let first = each.next().await;
        (first, each)
    });
    let first = within(w.started.recv()).await.expect("the first call");
    assert_eq!(first, "A0001", "agents are called in name order");
    // Only the first is in flight: the next waits for it.
    assert_eq!(server.stats().pending_requests, 1);
    w.permits.add_permits(1);
    let (result, mut each) = within(next).await.expect("first result");
    assert_eq!(
        result.map(|(n, r)| (n, r.ok())),
        Some((first, Some("done".into())))
    );
    // Nothing more goes out until the stream is read again.
    assert_eq!(server.stats().pending_requests, 0);
    // Reading it again calls the next agent; dropping it while that call
    // is in flight cancels the call (the agent stops its hook) and starts
    // no other.
    let reading = tokio::spawn(async move { each.next().await });
    let second = within(w.started.recv()).await.expect("the second call");
    assert_eq!(second, "A0002");
    reading.abort();
    assert!(within(reading).await.is_err(), "dropped while waiting");
    assert_eq!(server.stats().pending_requests, 0);
    assert_eq!(within(w.stopped.recv()).await.as_deref(), Some("A0002"));
    w.permits.add_permits(10);
    // Every agent answers a later call, and none saw a third `work`.
    let later = within(
        server
            .select(sel("pool=workers"))
            .send_all::<_, String>("work", &()),
    )
    .await
    .expect("agents");
    assert_eq!(later.len(), 4);
    let mut more = Vec::new();
    while let Ok(name) = w.started.try_recv() {
        more.push(name);
    }
    assert_eq!(more.len(), 4, "only the four later calls: {more:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_each_gives_each_agent_its_own_timeout_and_reports_the_gone() {
    let server = start_server().await;
    let mut w = workers(&server, 3).await;
    let mut events = server.events();
    // A0003 leaves before its turn.
    let gone = w.clients.pop().expect("three");
    let gone_name = gone.name().expect("named");
    within(gone.close()).await;
    wait_disconnected(&mut events, &gone_name).await;

    let selection = server.select(sel("pool=workers"));
    // Selected while A0003 was gone: two.
    assert_eq!(selection.count(), 2);
    let results: Vec<_> = within(
        selection
            .call_each::<_, ()>("stall", &())
            .expect("serialises")
            .timeout(Duration::from_millis(200))
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(results.len(), 2);
    for (name, r) in &results {
        assert_eq!(
            r.as_ref().expect_err("stalls").code(),
            codes::TIMEOUT,
            "{name}"
        );
    }

    // An agent that was selected and left before its turn: AGENT_NOT_CONNECTED.
    let mut each = selection
        .call_each::<_, String>("work", &())
        .expect("serialises")
        .concurrency(1)
        .timeout(LONG);
    let first_turn = tokio::spawn(async move {
        let r = each.next().await;
        (r, each)
    });
    within(w.started.recv()).await.expect("A0001 called");
    let second = w.clients.pop().expect("two");
    let second_name = second.name().expect("named");
    within(second.close()).await;
    wait_disconnected(&mut events, &second_name).await;
    w.permits.add_permits(1);
    let (r, mut each) = within(first_turn).await.expect("joined");
    assert_eq!(r.expect("first").1.as_deref().ok(), Some("done"));
    let (name, r) = within(each.next()).await.expect("second");
    assert_eq!(name, second_name);
    assert_eq!(r.expect_err("gone").code(), codes::AGENT_NOT_CONNECTED);
    assert!(within(each.next()).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_on_a_selection_reaches_only_the_selected() {
    let server = start_server().await;
    let (tx, mut noted) = mpsc::unbounded_channel();
    let mut clients = Vec::new();
    for region in ["eu", "us", "eu", "us"] {
        let tx = tx.clone();
        let b = client_builder(&server).label("region", region).on_hook(
            "noted",
            move |_: Value, call| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(call.peer.name().to_owned());
                    Ok::<_, HookError>(())
                }
            },
        );
        clients.push(connect(&server, b).await);
    }
    let sent = within(server.select(sel("region=us")).notify("noted", &()))
        .await
        .expect("some agents");
    assert_eq!(sent.keys().cloned().collect::<Vec<_>>(), ["A0002", "A0004"]);
    assert!(sent.values().all(Result::is_ok));
    let mut got = BTreeSet::new();
    for _ in 0..2 {
        got.insert(within(noted.recv()).await.expect("a note ran"));
    }
    assert_eq!(got.into_iter().collect::<Vec<_>>(), ["A0002", "A0004"]);
    // Nobody selected: NO_CONNECTED_AGENTS, as for send_all.
    let err = within(server.select(sel("region=ap")).notify("noted", &()))
        .await
        .expect_err("nobody");
    assert_eq!(err.code(), codes::NO_CONNECTED_AGENTS);
    // notify_all is select(all).notify.
    let all = within(server.notify_all("noted", &()))
        .await
        .expect("agents");
    assert_eq!(all.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_serialise_fails_the_whole_call() {
    let server = start_server().await;
    let _fleet = fleet(&server).await;
    let mut bad = std::collections::HashMap::new();
    bad.insert((1, 2), "tuple keys are not JSON");
    let selection = server.select(Selector::all());
    let err = selection
        .call_each::<_, Value>("whoami", &bad)
        .expect_err("does not serialise");
    assert_eq!(err.code(), codes::INVALID_MESSAGE);
    let err = within(selection.send_all::<_, Value>("whoami", &bad))
        .await
        .expect_err("does not serialise");
    assert_eq!(err.code(), codes::INVALID_MESSAGE);
}
