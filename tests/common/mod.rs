//! Helpers shared by the integration tests: a real server on 127.0.0.1:0,
//! real clients, raw WebSocket peers that speak the handshake themselves,
//! and waits that always carry a timeout.
//!
//! Nothing here sleeps: every wait is on an event, a channel or a gate, and
//! every await that could hang sits under [`LIMIT`].

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use agent_tunnel::client::{AgentClient, ClientBuilder};
use agent_tunnel::protocol::codec;
use agent_tunnel::protocol::frame::Frame;
use agent_tunnel::protocol::handshake::{ClientHandshake, Established, Identity};
use agent_tunnel::protocol::{transport, Secret};
use agent_tunnel::server::{AgentServer, ServerBuilder, ServerEvent};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The shared secret of the test servers.
pub const SECRET: &str = "integration-test-secret";

/// The generous bound on every wait: a test that needs it has failed.
pub const LIMIT: Duration = Duration::from_secs(10);

/// A call timeout far longer than any test runs, to show that an error did
/// not come from a timeout.
pub const LONG: Duration = Duration::from_secs(60);

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Awaits `f`, failing the test if it takes longer than [`LIMIT`].
pub async fn within<F: Future>(f: F) -> F::Output {
    match tokio::time::timeout(LIMIT, f).await {
        Ok(out) => out,
        Err(_) => panic!("did not finish within {LIMIT:?}"),
    }
}

/// A server builder with the test secret and heartbeats off (no test here
/// is about heartbeats, and pings would only add frames to raw peers).
pub fn server_builder() -> ServerBuilder {
    init_tracing();
    AgentServer::builder().secret(SECRET).ping_interval(None)
}

/// Starts a server with the test defaults on 127.0.0.1:0.
pub async fn start_server() -> AgentServer {
    start(server_builder()).await
}

/// Starts `builder` on 127.0.0.1:0.
pub async fn start(builder: ServerBuilder) -> AgentServer {
    within(builder.start("127.0.0.1:0"))
        .await
        .expect("server starts")
}

/// The `ws://` URL of `server`.
pub fn url(server: &AgentServer) -> String {
    format!("ws://{}", server.local_addr())
}

/// A client builder for `server` with the test secret and heartbeats off.
pub fn client_builder(server: &AgentServer) -> ClientBuilder {
    AgentClient::builder(&url(server), SECRET).ping_interval(None)
}

/// Connects `builder` to `server` and waits until both sides are ready: the
/// client authenticated, and the server reported the agent connected.
///
/// The second wait matters: the server sends `welcome` before it registers
/// the agent, so right after `connect()` returns the server may not list the
/// agent yet.
pub async fn connect(server: &AgentServer, builder: ClientBuilder) -> AgentClient {
    let mut events = server.events();
    let client = within(builder.connect()).await.expect("client connects");
    let name = client.name().expect("a ready client has a name");
    wait_for(&mut events, |e| match e {
        ServerEvent::AgentConnected(a) if a.name() == name => Some(()),
        _ => None,
    })
    .await;
    client
}

/// Connects a plain client to `server` and returns it with its name.
pub async fn connect_plain(server: &AgentServer) -> (AgentClient, String) {
    let client = connect(server, client_builder(server)).await;
    let name = client.name().expect("a ready client has a name");
    (client, name)
}

/// Waits for the first event `pick` accepts, skipping the others.
pub async fn wait_for<E: Clone, T>(
    rx: &mut broadcast::Receiver<E>,
    mut pick: impl FnMut(E) -> Option<T>,
) -> T {
    within(async {
        loop {
            match rx.recv().await {
                Ok(e) => {
                    if let Some(t) = pick(e) {
                        return t;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => panic!("event channel closed"),
            }
        }
    })
    .await
}

/// Waits until the server reports that the agent `name` disconnected, and
/// returns its close code.
pub async fn wait_disconnected(rx: &mut broadcast::Receiver<ServerEvent>, name: &str) -> u16 {
    wait_for(rx, |e| match e {
        ServerEvent::AgentDisconnected(a, reason) if a.name() == name => Some(reason.code),
        _ => None,
    })
    .await
}

/// Closes `client` and waits until the server has seen the agent `name` go,
/// so the name is free for the next connection.
pub async fn close_and_wait(server: &AgentServer, client: AgentClient, name: &str) {
    let mut events = server.events();
    if server.agent(name).is_none() {
        within(client.close()).await;
        return;
    }
    within(client.close()).await;
    wait_disconnected(&mut events, name).await;
}

/// A gate hooks wait on until the test opens it. Cloneable; opening is
/// permanent, so no wake-up is ever lost.
#[derive(Clone)]
pub struct Gate {
    tx: watch::Sender<bool>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            tx: watch::channel(false).0,
        }
    }
}

impl Gate {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn open(&self) {
        self.tx.send_replace(true);
    }

    /// Resolves once the gate is open (at once if it is already).
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.tx.subscribe();
        async move {
            let _ = rx.wait_for(|open| *open).await;
        }
    }
}

// ---------------------------------------------------------------- raw peers

/// A WebSocket driven by the test itself.
pub type RawWs = WebSocketStream<TcpStream>;

/// Opens a WebSocket to `addr`, offering the agent-tunnel subprotocol when
/// `subprotocol` is true.
pub async fn raw_upgrade(
    addr: SocketAddr,
    subprotocol: bool,
) -> Result<RawWs, tokio_tungstenite::tungstenite::Error> {
    let tcp = TcpStream::connect(addr).await?;
    let mut request = format!("ws://{addr}/").into_client_request()?;
    if subprotocol {
        request.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(agent_tunnel::protocol::SUBPROTOCOL),
        );
    }
    let (ws, _response) = tokio_tungstenite::client_async(request, tcp).await?;
    Ok(ws)
}

/// Opens a WebSocket to `server` with the subprotocol; panics on failure.
pub async fn raw_connect(server: &AgentServer) -> RawWs {
    within(raw_upgrade(server.local_addr(), true))
        .await
        .expect("upgrade succeeds")
}

/// Runs the agent's side of the handshake on `ws` by hand.
pub async fn raw_handshake(
    ws: &mut RawWs,
    secret: &str,
    identity: Identity,
) -> Result<Established, agent_tunnel::Error> {
    let secret = Secret::from(secret);
    let mut hs = ClientHandshake::new(identity, Map::new());
    let hello = within(transport::recv_frame(ws)).await?;
    let auth = hs.on_hello(&secret, hello)?;
    within(transport::send_frame(ws, &auth)).await?;
    let answer = within(transport::recv_frame(ws)).await?;
    hs.on_answer(&secret, answer)
}

/// A raw peer that authenticated as an agent of `server`: returns the socket
/// and the name it was given, once the server reported the agent connected.
pub async fn raw_agent(server: &AgentServer) -> (RawWs, String) {
    let mut events = server.events();
    let mut ws = raw_connect(server).await;
    let est = raw_handshake(&mut ws, SECRET, Identity::default())
        .await
        .expect("raw handshake succeeds");
    wait_for(&mut events, |e| match e {
        ServerEvent::AgentConnected(a) if a.name() == est.name => Some(()),
        _ => None,
    })
    .await;
    (ws, est.name)
}

/// Sends one frame as JSON text.
pub async fn send_json(ws: &mut RawWs, value: &Value) {
    within(ws.send(Message::text(value.to_string())))
        .await
        .expect("raw send");
}

/// Reads the next text message as JSON, skipping pings and pongs; panics on
/// a close or an error.
pub async fn recv_json(ws: &mut RawWs) -> Value {
    loop {
        match within(ws.next()).await {
            Some(Ok(Message::Text(t))) => {
                return serde_json::from_str(t.as_str()).expect("peer sends JSON")
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// How the other side ended a raw connection.
#[derive(Debug)]
pub struct Closed {
    /// The close code.
    pub code: u16,
    /// The close text.
    pub reason: String,
    /// Text frames received before the close, decoded where they decode.
    pub frames: Vec<String>,
}

impl Closed {
    /// The frames received before the close that decode as protocol frames.
    pub fn decoded(&self) -> Vec<Frame> {
        self.frames
            .iter()
            .filter_map(|t| codec::decode(t).ok())
            .collect()
    }
}

/// Reads until the peer's close frame, answers it, and returns its code;
/// panics when the connection ends without one.
pub async fn expect_close(ws: &mut RawWs) -> Closed {
    let mut frames = Vec::new();
    loop {
        match within(ws.next()).await {
            Some(Ok(Message::Close(Some(f)))) => {
                // Read on, so tungstenite sends its close reply and the
                // other side's close handshake completes.
                within(async { while let Some(Ok(_)) = ws.next().await {} }).await;
                return Closed {
                    code: u16::from(f.code),
                    reason: f.reason.as_str().to_owned(),
                    frames,
                };
            }
            Some(Ok(Message::Close(None))) => panic!("close frame without a code"),
            Some(Ok(Message::Text(t))) => frames.push(t.as_str().to_owned()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("connection failed before a close frame: {e}"),
            None => panic!("connection ended without a close frame"),
        }
    }
}

/// The highest value a sample took while it was watched: a bound that holds
/// throughout, not just at the moments the test looks.
pub struct Peak {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<usize>,
}

impl Peak {
    /// Samples `sample` every millisecond until stopped.
    pub fn watch(sample: impl Fn() -> usize + Send + 'static) -> Peak {
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            let mut peak = 0;
            loop {
                peak = peak.max(sample());
                if *stop_rx.borrow() {
                    return peak;
                }
                tick.tick().await;
            }
        });
        Peak { stop, task }
    }

    /// Stops watching and returns the peak.
    pub async fn stop(self) -> usize {
        self.stop.send_replace(true);
        within(self.task).await.expect("peak watcher")
    }
}
