//! Issue 8: bounds on connections before they authenticate.

mod common;
mod hostile_support;

use std::time::Duration;

use agent_tunnel::protocol::LinkConfig;
use common::*;
use futures_util::future::join_all;
use hostile_support::wait_stats;
use hostile_support::wire::Wire;

/// Item 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_that_never_read_cannot_park_a_handshake_write() {
    const PEERS: usize = 10;
    let mut link = LinkConfig::default();
    link.close_timeout = Duration::from_millis(300);
    link.ping_interval = None;
    let server = within(
        server_builder()
            .link_config(link)
            .handshake_timeout(Duration::from_millis(500))
            .listen(small_send_buffer_listener()),
    )
    .await
    .expect("server starts");
    let addr = server.local_addr();
    let t0 = std::time::Instant::now();
    let peers = join_all((0..PEERS).map(|_| async move {
        let w = Wire::connect_with(addr, None, Some(4096))
            .await
            .expect("connect");
        let mut w = w.upgraded(addr).await;
        w.tx.flood_pings(2_000).await;
        w.tx.send_text(r#"{"t":"req","id":1,"action":"x","body":null}"#)
            .await;
        w
    }))
    .await;
    eprintln!("sent in {:?}; stats {:?}", t0.elapsed(), server.stats());
    wait_stats(&server, "every connection task to end", |s| {
        s.connections == 0
    })
    .await;
    within(server.shutdown()).await;
    drop(peers);
}

/// A listener on 127.0.0.1:0 whose accepted sockets inherit a small, fixed
/// send buffer (Linux copies the listener's buffer sizes and turns off
/// their autotuning), so a peer that never reads fills the server's socket
/// buffers with a few hundred pongs rather than megabytes.
fn small_send_buffer_listener() -> tokio::net::TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_send_buffer_size(4096).expect("SO_SNDBUF");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    socket.listen(1024).expect("listen")
}
