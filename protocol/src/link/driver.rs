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
//!
//! Backpressure: while the link's byte budget is spent (or [`OUT_LIMIT`]
//! frames wait), the driver reads nothing from the peer, so it serves no new
//! request; producers wait for room. A peer that takes none of the queued
//! frames for [`LinkConfig::drain_timeout`](super::LinkConfig::drain_timeout)
//! is closed with 4011, whatever else it sends.
//!
//! However the driver ends (its loop returns, it panics, its task is
//! aborted), a guard finishes the link: every waiter fails with
//! `CONNECTION_CLOSED`, hook tasks are cancelled, and
//! [`LinkHandle::stopped`](super::LinkHandle::stopped) resolves once they
//! are gone.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::inbound::{self, REASON_CLIP};
use super::{Outbound, Shared, MIN_PING_INTERVAL};
use crate::close::{self, CloseReason};
use crate::hooks::Hooks;
use crate::log_limit::{clip, LogLimit};
use crate::signed::{Signer, Verifier};
use crate::time::deadline_in;

/// Most messages read between two rounds of writing.
const READ_BURST: usize = 64;
/// Most frames waiting to be written; past it the driver stops reading and
/// taking from the queue until the socket drains (backpressure).
const OUT_LIMIT: usize = 1024;

/// Peer-triggered closes: one log line per few links, not one per link.
static VIOLATIONS: LogLimit = LogLimit::per_second(5);
static STALLS: LogLimit = LogLimit::per_second(5);

fn to_message(out: Outbound, signer: &mut Option<Signer>) -> Message {
    match out {
        Outbound::Text(text) => match signer {
            Some(s) => Message::text(s.sign(&text)),
            None => Message::text(text),
        },
        Outbound::Ping => Message::Ping(Bytes::new()),
        Outbound::Unsigned(text) => Message::text(text),
        Outbound::Binary(mut buf) => match signer {
            Some(s) => {
                s.sign_binary(&mut buf);
                Message::Binary(Bytes::from(buf))
            }
            // The room kept for a signature is left out, without a copy.
            None => Message::Binary(Bytes::from(buf).slice(crate::signed::BINARY_PREFIX..)),
        },
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
    /// The queue stayed full, the peer taking nothing, for the drain timeout.
    NotReading,
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

/// Finishes the link however the driver ends, unwinding and abort included.
struct Exit<'a>(&'a Shared);

impl Drop for Exit<'_> {
    fn drop(&mut self) {
        let shared = self.0;
        shared.finish(CloseReason::local(close::ABNORMAL, "link stopped"));
        shared.hook_tasks.close();
        shared.stop.cancel();
    }
}

/// A deadline far enough away to mean "not armed".
fn never() -> Instant {
    deadline_in(Duration::MAX)
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn run<S, P>(
    ws: WebSocketStream<S>,
    rx: mpsc::Receiver<Outbound>,
    shared: Arc<Shared>,
    mut signer: Option<Signer>,
    mut verifier: Option<Verifier>,
    hooks: Hooks<P>,
    peer: P,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    P: Clone + Send + Sync + 'static,
{
    // Declared before the socket and the queue, so those are dropped (the
    // socket released) before the guard says the link has stopped.
    let _exit = Exit(&shared);
    let mut ws = ws;
    let mut rx = rx;
    let config = &shared.config;
    // Builders refuse a zero interval; a config that skipped them is
    // clamped rather than left to spin or panic.
    let period = config.ping_interval.map(|p| p.max(MIN_PING_INTERVAL));
    let ticker = tokio::time::sleep_until(period.map_or_else(never, deadline_in));
    tokio::pin!(ticker);
    let drain_timeout = config.drain_timeout.max(MIN_PING_INTERVAL);
    let drain = tokio::time::sleep_until(never());
    tokio::pin!(drain);
    // The drain deadline is armed: the queue is full and the peer takes
    // nothing of it.
    let mut stalled = false;
    // Something left the queue (or the WebSocket layer's buffer) since the
    // drain deadline was last set.
    let mut progressed = false;
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
            if period.is_some() && ticker.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Tick);
            }
            while out.len() < OUT_LIMIT {
                match rx.poll_recv(cx) {
                    Poll::Ready(Some(frame)) => out.push_back(frame),
                    // `shared` holds a sender, so the queue never ends.
                    Poll::Ready(None) | Poll::Pending => break,
                }
            }
            // Reading pauses while the queue is full: a peer that does not
            // read gets no more answers queued for it.
            let backlog = out.len() >= OUT_LIMIT || shared.budget.is_full();
            let mut read_skipped = true;
            if !backlog && burst < READ_BURST {
                read_skipped = false;
                if let Poll::Ready(msg) = Pin::new(&mut ws).poll_next(cx) {
                    burst += 1;
                    return Poll::Ready(Event::Read(msg));
                }
            }
            burst = 0;
            let mut written = 0usize;
            let mut frames = 0usize;
            let mut failed = None;
            while !out.is_empty() {
                match Pin::new(&mut ws).poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        let Some(frame) = out.pop_front() else { break };
                        written += frame.bytes();
                        frames += 1;
                        if let Err(e) = Pin::new(&mut ws).start_send(to_message(frame, &mut signer))
                        {
                            failed = Some(e);
                            break;
                        }
                        dirty = true;
                    }
                    Poll::Ready(Err(e)) => {
                        failed = Some(e);
                        break;
                    }
                    Poll::Pending => break,
                }
            }
            // One subtraction per round, not per frame.
            shared.budget.release(written);
            shared.counters.wrote(written);
            if let Some(e) = failed {
                return Poll::Ready(Event::WriteFailed(e));
            }
            progressed |= frames > 0;
            if dirty {
                match Pin::new(&mut ws).poll_flush(cx) {
                    Poll::Ready(Ok(())) => {
                        dirty = false;
                        progressed = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Event::WriteFailed(e)),
                    Poll::Pending => {}
                }
            }
            // Writing made room, or reading paused for the burst: look
            // again, so a waker is registered for everything this task
            // waits on.
            if read_skipped && (frames > 0 || !backlog) {
                continue;
            }
            if backlog {
                if out.is_empty() && !dirty {
                    // Full, yet nothing to write: the budget is held by
                    // producers about to queue, or one that gives up; the
                    // latter must wake us, or reading would never resume.
                    shared.budget.wake_driver_on_room(cx.waker());
                    if !shared.budget.is_full() {
                        continue;
                    }
                    stalled = false;
                } else if !stalled || progressed {
                    // Stuck, or it took something since: the peer gets the
                    // whole drain timeout from here.
                    stalled = true;
                    progressed = false;
                    drain.as_mut().reset(deadline_in(drain_timeout));
                }
            } else {
                stalled = false;
                progressed = false;
            }
            if stalled && drain.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::NotReading);
            }
            return Poll::Pending;
        })
        .await;

        match event {
            Event::Close => break Ending::Close { read: true },
            Event::WriteFailed(e) => {
                let error = clip(&e.to_string(), REASON_CLIP).into_owned();
                tracing::debug!(%error, "write failed");
                shared.finish(CloseReason::remote(
                    close::ABNORMAL,
                    format!("write failed: {error}"),
                ));
                break Ending::Gone;
            }
            Event::NotReading => {
                if let Some(suppressed) = STALLS.allow() {
                    tracing::debug!(
                        queued = shared.budget.queued(),
                        suppressed,
                        "closing link: peer does not read"
                    );
                }
                shared.request_close(close::NOT_READING, "peer does not read");
                // The peer takes nothing, so nothing would carry its reply.
                break Ending::Close { read: false };
            }
            Event::Tick => {
                if let Some(p) = period {
                    ticker.as_mut().reset(deadline_in(p));
                }
                if stalled {
                    // Not reading, this side cannot see the peer's signs
                    // of life: the drain timeout judges it meanwhile.
                    continue;
                }
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
                        shared.counters.read(text.len());
                        inbound::on_text(text.as_str(), &shared, &mut verifier, &hooks, &peer)
                    }
                    Some(Ok(Message::Binary(data))) => {
                        shared.counters.read(data.len());
                        inbound::on_binary(data, &shared, &mut verifier, &hooks, &peer)
                    }
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
                    Ok(Some(frame)) => {
                        shared.budget.add(frame.bytes());
                        out.push_back(frame);
                    }
                    Ok(None) => {}
                    Err((code, reason)) => {
                        if let Some(suppressed) = VIOLATIONS.allow() {
                            let reason = clip(&reason, REASON_CLIP);
                            tracing::debug!(
                                code,
                                %reason,
                                suppressed,
                                "closing link: peer broke the protocol"
                            );
                        }
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
            let by = deadline_in(timeout);
            if read {
                // A close this side chose (shutdown after its grace, a
                // disconnect, a client's close) first writes what is queued,
                // so no answer a hook gave is lost; within the close timeout,
                // as the peer may not read. Requests among them were failed
                // locally already: their late answers are dropped.
                let queued = async {
                    while let Ok(frame) = rx.try_recv() {
                        out.push_back(frame);
                    }
                    while let Some(frame) = out.pop_front() {
                        ws.feed(to_message(frame, &mut signer)).await?;
                    }
                    ws.flush().await
                };
                let _ = tokio::time::timeout_at(by, queued).await;
            }
            let sent = tokio::time::timeout_at(by, ws.send(Message::Close(Some(frame)))).await;
            if read && matches!(sent, Ok(Ok(()))) {
                // Wait for the peer's close reply, so the code reaches it.
                let _ = tokio::time::timeout_at(deadline_in(timeout), drain_ws(&mut ws)).await;
            }
        }
        Ending::PeerClosed => {
            // tungstenite queued the close reply; flushing sends it.
            let _ = tokio::time::timeout_at(deadline_in(timeout), ws.flush()).await;
            let _ = tokio::time::timeout_at(deadline_in(timeout), drain_ws(&mut ws)).await;
        }
        Ending::Gone => {}
    }
    // `_exit` finishes the link and releases the waiters, after the socket
    // is dropped.
}

/// Reads until the stream ends or fails.
async fn drain_ws<S>(ws: &mut WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(Ok(_)) = ws.next().await {}
}
