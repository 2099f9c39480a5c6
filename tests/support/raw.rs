//! A raw WebSocket peer that speaks the protocol by hand, for injecting what
//! a well-behaved client never sends.

use std::time::Duration;

use agent_tunnel::protocol::codec;
use agent_tunnel::protocol::frame::Frame;
use agent_tunnel::protocol::handshake::{ClientHandshake, Established, Identity};
use agent_tunnel::protocol::{Secret, SUBPROTOCOL};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a WebSocket to `addr` offering the agent-tunnel subprotocol.
pub async fn open(addr: std::net::SocketAddr) -> Ws {
    let mut req = format!("ws://{addr}/").into_client_request().unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade");
    ws
}

/// Reads the next frame as text.
pub async fn next_text(ws: &mut Ws) -> String {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("timed out reading")
            .expect("stream ended")
            .expect("read error");
        match msg {
            Message::Text(t) => return t.as_str().to_owned(),
            Message::Close(c) => panic!("closed while waiting for text: {c:?}"),
            _ => continue,
        }
    }
}

/// Does the whole handshake by hand.
pub async fn handshake(ws: &mut Ws, secret: &str) -> Established {
    let secret = Secret::from(secret);
    let mut hs = ClientHandshake::new(Identity::default(), Default::default());
    let hello = codec::decode(&next_text(ws).await).unwrap();
    let auth = hs.on_hello(&secret, hello).unwrap();
    send(ws, &codec::encode(&auth)).await;
    let answer = codec::decode(&next_text(ws).await).unwrap();
    hs.on_answer(&secret, answer).expect("welcome")
}

pub async fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text.to_owned())).await.expect("send");
}

/// Reads until the server's close frame and returns its code and reason.
pub async fn close_code(ws: &mut Ws) -> (u16, String) {
    let fut = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(c)))) => {
                    return (u16::from(c.code), c.reason.as_str().to_owned())
                }
                Some(Ok(Message::Close(None))) => return (1005, String::new()),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("read error before close: {e}"),
                None => panic!("stream ended without a close frame"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .expect("timed out waiting for close")
}

/// A `req` frame's text.
pub fn req(id: u64, action: &str, body: &str) -> String {
    format!(r#"{{"t":"req","id":{id},"action":"{action}","body":{body}}}"#)
}

/// Decodes a frame.
pub fn decode(text: &str) -> Frame {
    codec::decode(text).unwrap()
}
