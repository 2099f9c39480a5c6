//! Issue 9, item 3: notifications, both ways.
//!
//! `notify` sends a `note {action, body}` to a peer that announced the
//! `note` capability: the peer runs the same hooks as for a request, with
//! `Call::is_notification()` true, and answers nothing (its result is
//! discarded, an error only logged). Past `max_in_flight` notes being
//! served, a note is dropped and counted (`LinkHandle::dropped_notes`). A
//! peer written before capabilities is never sent a note: `notify` fails
//! with `UNSUPPORTED`.

mod common;
mod raw_server;

use std::time::Duration;

use agent_tunnel::client::{AgentClient, ServerHandle};
use agent_tunnel::protocol::{Caps, Hooks};
use agent_tunnel::server::Agent;
use agent_tunnel::{codes, Call, HookError};
use common::*;
use futures_util::SinkExt;
use raw_server::RawServer;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// What a `seen` hook reports: the action, the body, whether the call was
/// a notification, and who sent it.
type Seen = (String, Value, bool, String);

/// `seen` reports every call to the test; `fails` always errs; `hold`
/// waits for `gate`.
fn install<P, F>(hooks: &Hooks<P>, who: F, gate: &Gate) -> mpsc::UnboundedReceiver<Seen>
where
    P: Clone + Send + Sync + 'static,
    F: Fn(&P) -> String + Send + Sync + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    hooks.on_hook("seen", move |body: Value, call: Call<P>| {
        let _ = tx.send((
            call.action.to_string(),
            body,
            call.is_notification(),
            who(&call.peer),
        ));
        async { Ok::<_, HookError>("discarded") }
    });
    hooks.on_hook("fails", |_: Value, _: Call<P>| async {
        Err::<(), _>(HookError::new("DISK_FULL", "no space left"))
    });
    let gate = gate.clone();
    hooks.on_hook("hold", move |_: Value, _: Call<P>| {
        let open = gate.wait();
        async move {
            open.await;
            Ok::<_, HookError>(())
        }
    });
    rx
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    within(rx.recv()).await.expect("hook channel open")
}

/// Waits until `ok` holds, looking every few milliseconds, under [`LIMIT`].
async fn until(what: &str, ok: impl Fn() -> bool) {
    let waited = tokio::time::timeout(LIMIT, async {
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        while !ok() {
            tick.tick().await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_notifies_one_agent_and_all_of_them() {
    let server = start_server().await;
    let gate = Gate::new();
    let mut clients = Vec::new();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let client = connect(&server, client_builder(&server)).await;
        seen.push(install(
            client.hooks(),
            |s: &ServerHandle| s.name().to_owned(),
            &gate,
        ));
        clients.push(client);
    }
    let first = clients[0].name().expect("named");

    within(server.notify(first.as_str(), "seen", &json!({"n": 1})))
        .await
        .expect("notify");
    assert_eq!(
        next(&mut seen[0]).await,
        ("seen".to_owned(), json!({"n": 1}), true, first.clone())
    );
    let agent = server.agent(&first).expect("registered");
    within(agent.notify("seen", &json!({"n": 2})))
        .await
        .expect("notify");
    assert_eq!(next(&mut seen[0]).await.1, json!({"n": 2}));

    let sent = within(server.notify_all("seen", &"everyone"))
        .await
        .expect("notify_all");
    assert_eq!(sent.len(), 3);
    assert!(sent.values().all(Result::is_ok), "{sent:?}");
    for (client, rx) in clients.iter().zip(seen.iter_mut()) {
        let (_, body, note, name) = next(rx).await;
        assert_eq!((body, note), (json!("everyone"), true));
        assert_eq!(Some(name), client.name());
    }
    // A request to the same hook is no notification, and gets the result.
    let got: String = within(agent.send("seen", &3)).await.expect("send");
    assert_eq!(got, "discarded");
    assert!(!next(&mut seen[0]).await.2);
    // Nothing waits on either side for the notes.
    assert_eq!(server.stats().pending_requests, 0);
    let unknown = server.notify("A9999", "seen", &()).await.unwrap_err();
    assert_eq!(unknown.code(), codes::UNKNOWN_AGENT);
    for client in clients {
        within(client.close()).await;
    }
    within(server.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_notifies_the_server_from_the_client_and_from_a_hook() {
    let server = start_server().await;
    let gate = Gate::new();
    let mut seen = install(server.hooks(), |a: &Agent| a.name().to_owned(), &gate);
    let builder =
        client_builder(&server).on_hook("relay", |n: u64, call: Call<ServerHandle>| async move {
            call.peer.notify("seen", &json!({"relayed": n})).await?;
            Ok::<_, HookError>(())
        });
    let client = connect(&server, builder).await;
    let name = client.name().expect("named");

    within(client.notify("seen", &"hello"))
        .await
        .expect("notify");
    assert_eq!(
        next(&mut seen).await,
        ("seen".to_owned(), json!("hello"), true, name.clone())
    );
    within(server.send_to::<_, ()>(name.as_str(), "relay", &5))
        .await
        .expect("relay");
    assert_eq!(next(&mut seen).await.1, json!({"relayed": 5}));

    // Errors and unknown actions go nowhere: the link serves on.
    within(client.notify("fails", &())).await.expect("notify");
    within(client.notify("no-such-hook", &()))
        .await
        .expect("notify");
    // An action that is not an action name is refused here, unsent.
    let bad = within(client.notify("two words", &())).await.unwrap_err();
    assert_eq!(bad.code(), codes::INVALID_MESSAGE);
    within(client.notify("seen", &"after"))
        .await
        .expect("notify");
    assert_eq!(next(&mut seen).await.1, json!("after"));
    let agent = server.agent(&name).expect("registered");
    assert_eq!(agent.link().dropped_notes(), 0);
    assert_eq!(client.pending_requests(), 0);
    within(client.close()).await;
    within(server.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notes_past_the_in_flight_bound_are_dropped_and_counted() {
    const FLIGHT: usize = 4;
    let server = start(server_builder().max_in_flight(FLIGHT)).await;
    let gate = Gate::new();
    let mut seen = install(server.hooks(), |a: &Agent| a.name().to_owned(), &gate);
    let (mut ws, name) = raw_agent(&server).await;
    let link = server.agent(&name).expect("registered").link().clone();
    for i in 0..10 {
        within(ws.feed(Message::text(format!(
            r#"{{"t":"note","action":"hold","body":{i}}}"#
        ))))
        .await
        .expect("feed");
    }
    within(ws.flush()).await.expect("flush");
    // A request after them is read after them, and still served.
    send_json(
        &mut ws,
        &json!({"t":"req","id":1,"action":"seen","body":"req"}),
    )
    .await;
    assert_eq!(
        recv_json(&mut ws).await,
        json!({"t":"res","id":1,"ok":"discarded"})
    );
    assert_eq!(next(&mut seen).await.1, json!("req"));
    assert_eq!(link.serving_notes(), FLIGHT);
    assert_eq!(link.dropped_notes(), 10 - FLIGHT as u64);
    // Notes do not take the requests' permits.
    assert_eq!(link.serving_requests(), 0);
    gate.open();
    let l = link.clone();
    until("the held notes to finish", move || {
        l.serving_notes() == 0 && l.running_hooks() == 0
    })
    .await;
    // Room again: the next note is served.
    send_json(&mut ws, &json!({"t":"note","action":"seen","body":"again"})).await;
    assert_eq!(next(&mut seen).await.1, json!("again"));
    assert_eq!(link.dropped_notes(), 10 - FLIGHT as u64);

    // While draining, notes are dropped too, and notify refuses.
    link.drain();
    send_json(&mut ws, &json!({"t":"note","action":"seen","body":"late"})).await;
    send_json(
        &mut ws,
        &json!({"t":"req","id":2,"action":"seen","body":"late"}),
    )
    .await;
    assert_eq!(recv_json(&mut ws).await["err"]["code"], codes::SHUTDOWN);
    assert_eq!(link.dropped_notes(), 10 - FLIGHT as u64 + 1);
    let refused = link.notify("seen", &()).await.unwrap_err();
    assert_eq!(refused.code(), codes::SHUTDOWN);
    within(ws.close(None)).await.expect("close");
    within(server.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_note_gets_no_answer_on_the_wire() {
    let server = start_server().await;
    let gate = Gate::new();
    let mut seen = install(server.hooks(), |a: &Agent| a.name().to_owned(), &gate);
    let (mut ws, name) = raw_agent(&server).await;
    for note in [
        json!({"t":"note","action":"seen","body":[1,2]}),
        json!({"t":"note","action":"fails","body":null}),
        json!({"t":"note","action":"nobody-home","body":null}),
        json!({"t":"note","action":"seen"}),
    ] {
        send_json(&mut ws, &note).await;
    }
    assert_eq!(
        next(&mut seen).await,
        ("seen".into(), json!([1, 2]), true, name.clone())
    );
    assert_eq!(next(&mut seen).await.1, Value::Null);
    // The first frame back is the answer to this request: the notes got none.
    send_json(&mut ws, &json!({"t":"req","id":9,"action":"seen","body":0})).await;
    assert_eq!(
        recv_json(&mut ws).await,
        json!({"t":"res","id":9,"ok":"discarded"})
    );
    within(ws.close(None)).await.expect("close");
    within(server.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_without_the_capability_are_never_sent_a_note() {
    // An agent without capabilities (a raw one, as written before them).
    let server = start_server().await;
    let (mut ws, name) = raw_agent(&server).await;
    let err = within(server.notify(name.as_str(), "seen", &1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::UNSUPPORTED);
    let sent = within(server.notify_all("seen", &1))
        .await
        .expect("one agent");
    assert_eq!(sent[&name].as_ref().unwrap_err().code(), codes::UNSUPPORTED);
    // The raw agent's next frame is a request: no note came before it.
    let call = {
        let server = server.clone();
        let name = name.clone();
        tokio::spawn(async move { server.send_to::<_, Value>(name.as_str(), "q", &()).await })
    };
    let v = recv_json(&mut ws).await;
    assert_eq!(v["t"], "req", "{v}");
    send_json(&mut ws, &json!({"t":"res","id":v["id"],"ok":1})).await;
    assert_eq!(within(call).await.expect("task").expect("answer"), json!(1));
    within(ws.close(None)).await.expect("close");
    within(server.shutdown()).await;

    // A server without capabilities: the agent's notify fails the same way.
    let raw = RawServer::bind(Caps::NONE).await;
    let connecting = tokio::spawn(
        AgentClient::builder(&raw.url(), SECRET)
            .ping_interval(None)
            .connect(),
    );
    let mut link = raw.accept().await;
    let client = within(connecting).await.expect("task").expect("connects");
    let err = within(client.notify("seen", &1)).await.unwrap_err();
    assert_eq!(err.code(), codes::UNSUPPORTED);
    let c = client.clone();
    let call = tokio::spawn(async move { c.send::<_, Value>("q", &()).await });
    let v = link.recv().await;
    assert_eq!(v["t"], "req", "{v}");
    link.send(&format!(r#"{{"t":"res","id":{},"ok":2}}"#, v["id"]))
        .await;
    assert_eq!(within(call).await.expect("task").expect("answer"), json!(2));
    within(client.close()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_and_a_capable_raw_server_exchange_notes_on_the_wire() {
    init_tracing();
    let raw = RawServer::bind(Caps::SUPPORTED).await;
    let gate = Gate::new();
    let builder = AgentClient::builder(&raw.url(), SECRET).ping_interval(None);
    let connecting = tokio::spawn(builder.connect());
    let mut link = raw.accept().await;
    let client = within(connecting).await.expect("task").expect("connects");
    let mut seen = install(
        client.hooks(),
        |s: &ServerHandle| s.name().to_owned(),
        &gate,
    );

    within(client.notify("log", &json!({"line": "started"})))
        .await
        .expect("notify");
    assert_eq!(
        link.recv().await,
        json!({"t":"note","action":"log","body":{"line":"started"}})
    );
    link.send(r#"{"t":"note","action":"seen","body":{"from":"server"}}"#)
        .await;
    link.send(r#"{"t":"note","action":"fails","body":null}"#)
        .await;
    assert_eq!(
        next(&mut seen).await,
        (
            "seen".into(),
            json!({"from": "server"}),
            true,
            "A0001".into()
        )
    );
    // Nothing came back for either note: the next frame is this request.
    let c = client.clone();
    let call = tokio::spawn(async move { c.send::<_, Value>("q", &()).await });
    let v = link.recv().await;
    assert_eq!(v["t"], "req", "{v}");
    link.send(&format!(r#"{{"t":"res","id":{},"ok":3}}"#, v["id"]))
        .await;
    assert_eq!(within(call).await.expect("task").expect("answer"), json!(3));
    within(client.close()).await;
}
