//! Baseline: raw tokio-tungstenite, the limit of this stack. The echo side
//! parses every message into the typed body and serializes it again; it
//! writes replies without a flush while more requests are already read, and
//! flushes once when it would wait, as a tuned server would. Both ends use
//! the same WebSocket buffers as agent-tunnel's links
//! (`LinkConfig::default().websocket()`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::common::{Body, Caller, Context, Recorder, Res, CALL_TIMEOUT};

pub fn ws_config() -> WebSocketConfig {
    agent_protocol::LinkConfig::default().websocket()
}

type Ws = WebSocketStream<TcpStream>;

/// Parses a request and serializes the reply, as an application would.
fn echo_text(text: &str) -> Option<String> {
    let body: Body = serde_json::from_str(text).ok()?;
    serde_json::to_string(&body).ok()
}

/// Answers every text message with its parsed and re-serialized body until
/// the connection ends.
pub async fn echo_loop<S: AsyncRead + AsyncWrite + Unpin>(mut ws: WebSocketStream<S>) {
    let mut ready = None;
    loop {
        let next = match ready.take() {
            Some(m) => m,
            None => match ws.next().await {
                Some(m) => m,
                None => return,
            },
        };
        match next {
            Ok(Message::Text(t)) => {
                let Some(out) = echo_text(t.as_str()) else {
                    return;
                };
                if ws.feed(Message::text(out)).await.is_err() {
                    return;
                }
            }
            Ok(Message::Close(_)) | Err(_) => {
                let _ = ws.flush().await;
                return;
            }
            Ok(_) => {}
        }
        // Batch replies: flush only when no further request is ready.
        match ws.next().now_or_never() {
            Some(Some(m)) => ready = Some(m),
            Some(None) => return,
            None => {
                if ws.flush().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Binds `bind` and runs `serve` on every connection in a task of its own,
/// after the connection's WebSocket upgrade (done in that task too).
async fn serve_ws<F, Fut>(bind: SocketAddr, what: &str, serve: F) -> Res<SocketAddr>
where
    F: Fn(Ws) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind(bind)
        .await
        .ctx(&format!("binding the {what}"))?;
    let addr = listener.local_addr().ctx("raw server address")?;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let serve = serve.clone();
            tokio::spawn(async move {
                if let Ok(ws) =
                    tokio_tungstenite::accept_async_with_config(tcp, Some(ws_config())).await
                {
                    serve(ws).await;
                }
            });
        }
    });
    Ok(addr)
}

/// An echo server: one task per connection running [`echo_loop`].
pub async fn echo_server(bind: SocketAddr) -> Res<SocketAddr> {
    serve_ws(bind, "raw server", echo_loop).await
}

/// Opens one raw WebSocket client connection.
pub async fn connect(addr: SocketAddr) -> Res<Ws> {
    let tcp = TcpStream::connect(addr).await.ctx("raw TCP connect")?;
    let _ = tcp.set_nodelay(true);
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        format!("ws://{addr}/"),
        tcp,
        Some(ws_config()),
    )
    .await
    .ctx("raw WebSocket upgrade")?;
    Ok(ws)
}

type WsItem = Option<Result<Message, WsError>>;

/// The body in one read result; `Ok(None)` for control frames.
fn body_of(item: WsItem) -> Res<Option<Body>> {
    match item {
        Some(Ok(Message::Text(t))) => serde_json::from_str(t.as_str())
            .map(Some)
            .ctx("raw reply body"),
        Some(Ok(Message::Close(_))) | None => Err("raw connection closed".into()),
        Some(Ok(_)) => Ok(None),
        Some(Err(e)) => Err(format!("raw read: {e}")),
    }
}

/// Reads the next text message and parses it as the body.
async fn read_body<St>(stream: &mut St) -> Res<Body>
where
    St: futures_util::Stream<Item = Result<Message, WsError>> + Unpin,
{
    loop {
        if let Some(body) = body_of(stream.next().await)? {
            return Ok(body);
        }
    }
}

/// Sequential calls on one raw connection.
pub struct RawCaller {
    pub ws: Ws,
    pub body: Body,
}

impl Caller for RawCaller {
    async fn call(&mut self) -> Res<()> {
        let text = serde_json::to_string(&self.body).ctx("serializing")?;
        self.ws.send(Message::text(text)).await.ctx("raw send")?;
        let got = read_body(&mut self.ws).await?;
        if got.id != self.body.id {
            return Err("raw echo returned another body".into());
        }
        Ok(())
    }
}

/// One trial of `depth` calls in flight on one raw connection: the echo
/// answers in order, so no ids are needed; requests are written in batches
/// and flushed once before the client waits.
pub async fn in_flight_trial(
    ws: &mut Ws,
    body: &Body,
    depth: usize,
    calls: usize,
    rec: Option<&mut Recorder>,
) -> Res<()> {
    let start = Recorder::default().start();
    pipeline(ws, body, depth, calls).await?;
    if let Some(rec) = rec {
        rec.add_trial(calls, start);
    }
    Ok(())
}

async fn pipeline(ws: &mut Ws, body: &Body, depth: usize, calls: usize) -> Res<()> {
    let run = async {
        let mut sent = 0;
        let mut received = 0;
        while sent < calls.min(depth) {
            let text = serde_json::to_string(body).ctx("serializing")?;
            ws.feed(Message::text(text)).await.ctx("raw send")?;
            sent += 1;
        }
        let mut ready: Option<WsItem> = None;
        while received < calls {
            let item = match ready.take() {
                Some(item) => item,
                None => {
                    // Flush once before waiting, not once per request.
                    ws.flush().await.ctx("raw flush")?;
                    ws.next().await
                }
            };
            if let Some(got) = body_of(item)? {
                if got.id != body.id {
                    return Err("raw echo returned another body".into());
                }
                received += 1;
                if sent < calls {
                    let text = serde_json::to_string(body).ctx("serializing")?;
                    ws.feed(Message::text(text)).await.ctx("raw send")?;
                    sent += 1;
                }
            }
            ready = ws.next().now_or_never();
        }
        Ok(())
    };
    match tokio::time::timeout(CALL_TIMEOUT.saturating_mul(4), run).await {
        Ok(r) => r,
        Err(_) => Err("raw pipeline did not finish in time".into()),
    }
}

// ---------------------------------------------------------------------------
// Fan-out: one server, many raw clients that echo; the server writes to all of
// them and waits for every reply, the way agent-tunnel's send_all does.

type Command = (Message, oneshot::Sender<Res<Body>>);

/// The raw fan-out server: each connection is one task that owns the socket
/// and takes requests from a channel.
#[derive(Clone, Default)]
pub struct FanOutServer {
    conns: Arc<Mutex<Vec<mpsc::Sender<Command>>>>,
    live: Arc<AtomicUsize>,
}

impl FanOutServer {
    pub async fn start(bind: SocketAddr) -> Res<(Self, SocketAddr)> {
        let server = FanOutServer::default();
        let s = server.clone();
        let addr = serve_ws(bind, "raw fan-out server", move |ws| {
            let s = s.clone();
            async move {
                let (tx, rx) = mpsc::channel(1);
                s.conns.lock().await.push(tx);
                s.live.fetch_add(1, Ordering::Relaxed);
                conn_task(ws, rx).await;
                s.live.fetch_sub(1, Ordering::Relaxed);
            }
        })
        .await?;
        Ok((server, addr))
    }

    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// One round: the body to every connection, every reply awaited and
    /// parsed. Returns (answered correctly, failed).
    pub async fn round(&self, body: &Body, timeout: Duration) -> (usize, usize) {
        let conns = self.conns.lock().await.clone();
        let Ok(text) = serde_json::to_string(body) else {
            return (0, conns.len());
        };
        let msg = Message::Text(Utf8Bytes::from(text));
        let calls = conns.iter().map(|tx| {
            let msg = msg.clone();
            async move {
                let (otx, orx) = oneshot::channel();
                tx.send((msg, otx)).await.ok()?;
                match tokio::time::timeout(timeout, orx).await {
                    Ok(Ok(Ok(b))) => Some(b),
                    _ => None,
                }
            }
        });
        let replies = join_all(calls).await;
        let ok = replies
            .iter()
            .filter(|r| matches!(r, Some(b) if b.id == body.id))
            .count();
        (ok, replies.len() - ok)
    }
}

async fn conn_task(mut ws: Ws, mut rx: mpsc::Receiver<Command>) {
    loop {
        tokio::select! {
            cmd = rx.recv() => {
                let Some((msg, reply)) = cmd else { return };
                if let Err(e) = ws.send(msg).await {
                    let _ = reply.send(Err(format!("raw send: {e}")));
                    return;
                }
                let got = read_body(&mut ws).await;
                let failed = got.is_err();
                let _ = reply.send(got);
                if failed {
                    return;
                }
            }
            // Cancel-safe: `next` loses no message when the other branch wins.
            msg = ws.next() => match msg {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            }
        }
    }
}
