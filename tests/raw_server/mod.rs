//! A raw server for the cancel and notify suites: it accepts one real
//! `AgentClient`, runs the server's side of the handshake with the
//! library's state machine (announcing the capabilities it is given, or
//! none, as a server written before capabilities), and then lets the test
//! send and read frames by hand. What the agent's side does with cancels
//! and notes, and what it sends, is seen exactly on the wire.

#![allow(dead_code)]

use std::net::SocketAddr;

use agent_tunnel::protocol::frame::{Frame, Limits};
use agent_tunnel::protocol::handshake::ServerHandshake;
use agent_tunnel::protocol::{codec, transport, Caps, Secret, SUBPROTOCOL};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::common::{within, SECRET};

/// A listener waiting for one agent.
pub struct RawServer {
    listener: TcpListener,
    caps: Caps,
}

/// The raw server's end of one authenticated agent link.
pub struct RawLink {
    pub ws: WebSocketStream<TcpStream>,
    /// What the agent announced in `auth`.
    pub agent_caps: Caps,
}

impl RawServer {
    /// Listens on 127.0.0.1:0 and will announce `caps`.
    pub async fn bind(caps: Caps) -> RawServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        RawServer { listener, caps }
    }

    /// The `ws://` URL of this server.
    pub fn url(&self) -> String {
        let addr: SocketAddr = self.listener.local_addr().expect("local addr");
        format!("ws://{addr}")
    }

    /// Accepts one agent and welcomes it as `A0001`.
    pub async fn accept(&self) -> RawLink {
        let (tcp, _) = within(self.listener.accept()).await.expect("accept");
        #[allow(clippy::result_large_err)]
        let callback = |_: &Request, mut resp: Response| {
            resp.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_static(SUBPROTOCOL),
            );
            Ok(resp)
        };
        let mut ws = within(tokio_tungstenite::accept_hdr_async(tcp, callback))
            .await
            .expect("upgrade");
        let secret = Secret::from(SECRET);
        let hs = ServerHandshake::new(false).with_caps(self.caps);
        within(transport::send_frame(&mut ws, &hs.hello()))
            .await
            .expect("hello");
        let Frame::Auth(auth) = within(transport::recv_frame(&mut ws)).await.expect("auth") else {
            panic!("expected auth")
        };
        let verified = hs.verify_auth(&secret, auth).expect("auth verifies");
        let agent_caps = verified.caps();
        let limits = Limits {
            max_message_bytes: 1 << 20,
            max_in_flight: 256,
            ping_interval_ms: 0,
        };
        let (welcome, _) = hs.welcome(&secret, &verified, "A0001", true, None, limits);
        within(transport::send_frame(&mut ws, &welcome))
            .await
            .expect("welcome");
        RawLink { ws, agent_caps }
    }
}

impl RawLink {
    /// Sends one frame's text.
    pub async fn send(&mut self, text: &str) {
        within(self.ws.send(Message::text(text.to_owned())))
            .await
            .expect("raw send");
    }

    /// Reads the next text frame as JSON, skipping pings and pongs.
    pub async fn recv(&mut self) -> Value {
        loop {
            match within(self.ws.next()).await {
                Some(Ok(Message::Text(t))) => {
                    let text = t.as_str();
                    // Every frame the agent sends is a valid frame.
                    codec::decode(text).expect("the agent sends valid frames");
                    return serde_json::from_str(text).expect("JSON");
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }
}
