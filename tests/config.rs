//! Server settings that cannot work are refused at start with `CONFIG`,
//! before any port is bound, instead of panicking or misbehaving later.

mod common;

use std::time::Duration;

use agent_tunnel::codes;
use agent_tunnel::protocol::LinkConfig;
use agent_tunnel::server::ServerBuilder;
use common::*;

#[tokio::test]
async fn invalid_server_settings_fail_with_config_at_start() {
    let zero_hook_time = {
        let mut link = LinkConfig::default();
        link.max_hook_time = Duration::ZERO;
        link
    };
    let small_queue = {
        let mut link = LinkConfig::default();
        link.max_queued_bytes = Some(1024);
        link
    };
    let bad: Vec<(&str, ServerBuilder)> = vec![
        ("no secret", agent_tunnel::server::AgentServer::builder()),
        ("empty secret", server_builder().secret("")),
        (
            "no # in the name format",
            server_builder().name_format("AGENT"),
        ),
        ("two runs of #", server_builder().name_format("A##-##")),
        (
            "zero ping interval",
            server_builder().ping_interval(Some(Duration::ZERO)),
        ),
        ("zero in flight", server_builder().max_in_flight(0)),
        ("tiny messages", server_builder().max_message_bytes(100)),
        (
            "zero handshake timeout",
            server_builder().handshake_timeout(Duration::ZERO),
        ),
        (
            "zero upgrade timeout",
            server_builder().upgrade_timeout(Duration::ZERO),
        ),
        (
            "zero call timeout",
            server_builder().default_timeout(Duration::ZERO),
        ),
        (
            "tiny handshake messages",
            server_builder().max_handshake_message_bytes(10),
        ),
        (
            "zero hook time",
            server_builder().link_config(zero_hook_time),
        ),
        (
            "queue smaller than a message",
            server_builder().link_config(small_queue),
        ),
    ];
    for (what, builder) in bad {
        let err = within(builder.start("127.0.0.1:0")).await.expect_err(what);
        assert_eq!(err.code(), codes::CONFIG, "{what}: {err}");
    }
    // The defaults themselves start.
    let server = start(server_builder()).await;
    server.shutdown().await;
}
