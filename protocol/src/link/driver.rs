//! The link's driver: the one task that owns the socket, both ways.
//!
//! It reads frames and handles them (responses complete waiting callers;
//! requests go to the hooks, and a hook that finishes at once is answered
//! right here), takes frames queued by callers and by hook tasks, writes
//! everything it has in order (signing each frame when the session asks for
//! it, so sequence numbers follow the wire), and flushes once per batch. It
//! never waits on a write while there is something to read, and reads at
//! most [`READ_BURST`] messages between two rounds of writing, so neither
//! direction starves the other. It also keeps the heartbeat and closes the
//! link with the right code.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::inbound;
use super::{Outbound, Shared};
use crate::close::{self, CloseReason};
use crate::hooks::Hooks;
use crate::signed::{Signer, Verifier};

/// Most messages read between two rounds of writing.
const READ_BURST: usize = 64;
/// Most frames waiting to be written; past it the driver stops reading and
/// taking from the queue until the socket drains (backpressure).
const OUT_LIMIT: usize = 1024;

fn to_message(out: Outbound, signer: &mut Option<Signer>) -> Message {
    match out {
        Outbound::Text(text) => match signer {
            Some(s) => Message::text(s.sign(&text)),
            None => Message::text(text),
        },
        Outbound::Ping => Message::Ping(Bytes::new()),
        Outbound::Unsigned(text) => Message::text(text),
    }
}

enum Event {
    /// This side asked to close.
    Close,
    /// Time for a heartbeat.
    Tick,
    /// A message (or the end, or an error) from the peer.
    Read(Option<Result<Message, WsError>>),
    /// Writing failed: the connection is gone.
    WriteFailed(WsError),
}

/// How the main loop ended.
enum Ending {
    /// Send a close frame; `read` says whether to wait for the reply.
    Close { read: bool },
    /// The peer closed: flush tungstenite's reply and wait for the end.
    PeerClosed,
    /// The connection is gone; nothing more to do.
    Gone,
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn run<S, P>(
    mut ws: WebSocketStream<S>,
    mut rx: mpsc::Receiver<Outbound>,
    shared: Arc<Shared>,
    mut signer: Option<Signer>,
    mut verifier: Option<Verifier>,
    hooks: Hooks<P>,
    peer: P,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    P: Clone + Send + Sync + 'static,
{
    let period = shared.config.ping_interval;
    let mut ticker = tokio::time::interval(period.unwrap_or(Duration::from_secs(3600)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.reset();
    let mut silent_ticks: u32 = 0;
    let mut out: VecDeque<Outbound> = VecDeque::new();
    let mut dirty = false;
    let mut burst = 0usize;
    let close_requested = shared.close_token.cancelled();
    tokio::pin!(close_requested);

    let ending = loop {
        let event = std::future::poll_fn(|cx| loop {
            if close_requested.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Close);
            }
            if period.is_some() && ticker.poll_tick(cx).is_ready() {
                return Poll::Ready(Event::Tick);
            }
            while out.len() < OUT_LIMIT {
                match rx.poll_recv(cx) {
                    Poll::Ready(Some(frame)) => out.push_back(frame),
                    // `shared` holds a sender, so the queue never ends.
                    Poll::Ready(None) | Poll::Pending => break,
                }
            }
            let mut read_skipped = true;
            if out.len() < OUT_LIMIT && burst < READ_BURST {
                read_skipped = false;
                if let Poll::Ready(msg) = Pin::new(&mut ws).poll_next(cx) {
                    burst += 1;
                    return Poll::Ready(Event::Read(msg));
                }
            }
            burst = 0;
            let before = out.len();
            while !out.is_empty() {
                match Pin::new(&mut ws).poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        let Some(frame) = out.pop_front() else { break };
                        if let Err(e) = Pin::new(&mut ws).start_send(to_message(frame, &mut signer))
                        {
                            return Poll::Ready(Event::WriteFailed(e));
                        }
                        dirty = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Event::WriteFailed(e)),
                    Poll::Pending => break,
                }
            }
            if dirty {
                match Pin::new(&mut ws).poll_flush(cx) {
                    Poll::Ready(Ok(())) => dirty = false,
                    Poll::Ready(Err(e)) => return Poll::Ready(Event::WriteFailed(e)),
                    Poll::Pending => {}
                }
            }
            // Writing made room, or reading paused for it: look again, so a
            // waker is registered for everything this task waits on.
            if read_skipped && (out.len() < before || out.len() < OUT_LIMIT) {
                continue;
            }
            return Poll::Pending;
        })
        .await;

        match event {
            Event::Close => break Ending::Close { read: true },
            Event::WriteFailed(e) => {
                tracing::debug!(error = %e, "write failed");
                shared.finish(CloseReason::remote(
                    close::ABNORMAL,
                    format!("write failed: {e}"),
                ));
                break Ending::Gone;
            }
            Event::Tick => {
                if silent_ticks >= shared.config.missed_pongs {
                    tracing::debug!("peer silent for {silent_ticks} ping intervals");
                    shared.request_close(close::HEARTBEAT_TIMEOUT, "heartbeat timeout");
                    // A dead peer sends no reply; do not wait for one.
                    break Ending::Close { read: false };
                }
                silent_ticks += 1;
                out.push_back(Outbound::Ping);
            }
            Event::Read(msg) => {
                silent_ticks = 0;
                shared.saw_message();
                let handled = match msg {
                    None => {
                        shared.finish(CloseReason::remote(close::ABNORMAL, "connection ended"));
                        break Ending::Gone;
                    }
                    Some(Err(e)) => {
                        inbound::read_error(&shared, e);
                        // After a read error the stream cannot be trusted:
                        // send the close (if one was asked for) and stop.
                        if shared.close_token.is_cancelled() {
                            break Ending::Close { read: false };
                        }
                        break Ending::Gone;
                    }
                    Some(Ok(Message::Text(text))) => {
                        inbound::on_text(text.as_str(), &shared, &mut verifier, &hooks, &peer)
                    }
                    Some(Ok(Message::Binary(_))) => Err((
                        close::PROTOCOL_ERROR,
                        "binary frames are not supported in protocol v1".to_owned(),
                    )),
                    Some(Ok(Message::Close(frame))) => {
                        let (code, reason) = match frame {
                            Some(f) => (u16::from(f.code), f.reason.as_str().to_owned()),
                            None => (close::NORMAL, String::new()),
                        };
                        shared.finish(CloseReason::remote(code, reason));
                        break Ending::PeerClosed;
                    }
                    // Pongs only prove liveness; tungstenite answers pings itself
                    // and sends the answer at the next write or flush.
                    Some(Ok(Message::Ping(_))) => {
                        dirty = true;
                        Ok(None)
                    }
                    Some(Ok(_)) => Ok(None),
                };
                match handled {
                    Ok(Some(frame)) => out.push_back(frame),
                    Ok(None) => {}
                    Err((code, reason)) => {
                        tracing::debug!(code, %reason, "closing link: peer broke the protocol");
                        shared.request_close(code, &reason);
                    }
                }
            }
        }
    };

    let timeout = shared.config.close_timeout;
    match ending {
        Ending::Close { read } => {
            let (code, reason) = shared
                .close_request
                .lock()
                .clone()
                .unwrap_or((close::ABNORMAL, String::new()));
            let frame = CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            };
            // Frames still queued are dropped: the link is over, and every
            // caller waiting on it has failed already.
            let sent = tokio::time::timeout(timeout, ws.send(Message::Close(Some(frame)))).await;
            if read && matches!(sent, Ok(Ok(()))) {
                // Wait for the peer's close reply, so the code reaches it.
                let _ = tokio::time::timeout(timeout, drain(&mut ws)).await;
            }
        }
        Ending::PeerClosed => {
            // tungstenite queued the close reply; flushing sends it.
            let _ = tokio::time::timeout(timeout, ws.flush()).await;
            let _ = tokio::time::timeout(timeout, drain(&mut ws)).await;
        }
        Ending::Gone => {}
    }
    shared.finish(CloseReason::local(close::ABNORMAL, "link stopped"));
    shared.stop.cancel();
}

/// Reads until the stream ends or fails.
async fn drain<S>(ws: &mut WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(Ok(_)) = ws.next().await {}
}
