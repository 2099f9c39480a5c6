//! The totals of `AgentServer::counters` and `AgentClient::counters`:
//! calls either way by outcome code, latency, bytes and links, kept after
//! the links are gone.

mod common;

use std::time::Duration;

use agent_tunnel::server::ServerEvent;
use agent_tunnel::HookError;
use common::*;
use serde_json::Value;

#[tokio::test]
async fn calls_bytes_and_links_are_counted_on_both_sides() {
    let server = start_server().await;
    server.on_hook("up", |_: Value, _| async move { Ok::<_, HookError>(1) });
    let client = connect(
        &server,
        client_builder(&server)
            .name("c1")
            .on_hook("ok", |_: Value, _| async move { Ok::<_, HookError>(()) })
            .on_hook("slow", |_: Value, _| async move {
                std::future::pending::<()>().await;
                Ok::<_, HookError>(())
            }),
    )
    .await;
    let _: () = within(server.send_to("c1", "ok", &())).await.unwrap();
    let _: () = within(server.send_to("c1", "ok", &())).await.unwrap();
    let missing = within(server.send_to::<_, Value>("c1", "missing", &())).await;
    assert_eq!(missing.unwrap_err().code(), "UNKNOWN_ACTION");
    let slow =
        within(server.send_to_timeout::<_, Value>("c1", "slow", &(), Duration::from_millis(20)))
            .await;
    assert_eq!(slow.unwrap_err().code(), "TIMEOUT");
    let up: i64 = within(client.send("up", &())).await.unwrap();
    assert_eq!(up, 1);

    let s = server.counters();
    assert_eq!(s.calls_out.get("OK"), Some(&2));
    assert_eq!(s.calls_out.get("UNKNOWN_ACTION"), Some(&1));
    assert_eq!(s.calls_out.get("TIMEOUT"), Some(&1));
    assert_eq!(s.calls_in.get("OK"), Some(&1));
    assert_eq!(s.call_latency_count, 4);
    assert_eq!(
        s.call_latency_buckets.last(),
        Some(&4),
        "every call is under 30 s"
    );
    assert_eq!(s.links_opened, 1);
    assert!(s.bytes_in > 0 && s.bytes_out > 0);

    let stats = client.stats();
    assert!(stats.connected);
    assert_eq!((stats.pending_requests, stats.queued_bytes), (0, 0));
    let c = client.counters();
    assert_eq!(c.calls_in.get("OK"), Some(&2));
    assert_eq!(c.calls_in.get("UNKNOWN_ACTION"), Some(&1));
    assert_eq!(c.calls_out.get("OK"), Some(&1));
    assert_eq!(c.links_opened, 1);
    assert!(c.bytes_in > 0 && c.bytes_out > 0);

    // The totals outlive the link.
    let before = server.counters();
    let mut events = server.events();
    client.close().await;
    wait_for(&mut events, |e| match e {
        ServerEvent::AgentDisconnected(a, _) if a.name() == "c1" => Some(()),
        _ => None,
    })
    .await;
    assert_eq!(server.counters().calls_out, before.calls_out);
    assert_eq!(client.stats(), agent_tunnel::client::ClientStats::default());
}
