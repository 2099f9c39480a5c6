//! The reader task: the only owner of the socket's stream.
//!
//! It completes pending requests by id, starts a task per incoming request
//! (refusing with `BUSY` past the in-flight limit), verifies signed frames,
//! keeps the heartbeat, and turns every kind of bad input into a close with
//! its documented code.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::SplitStream;
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;

use super::{Outbound, Shared};
use crate::close::{self, CloseReason};
use crate::codec;
use crate::error::{codes, Error, HookError};
use crate::frame::{Frame, Outcome, Req, Res};
use crate::hooks::Hooks;
use crate::signed::Verifier;

type Stream<S> = SplitStream<WebSocketStream<S>>;

/// A violation that ends the link: close code and reason text.
type Violation = (u16, String);

/// Close code for text that is not UTF-8 (RFC 6455 §7.4.1).
const INVALID_PAYLOAD: u16 = 1007;

pub(crate) async fn run<S, P>(
    mut stream: Stream<S>,
    shared: Arc<Shared>,
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
    // After this side asked to close, frames are only read to see the reply.
    let mut closing = false;

    loop {
        tokio::select! {
            biased;
            // Cancel-safe: a token only observes.
            _ = shared.stop.cancelled() => break,
            // Cancel-safe: a tick that loses the race comes again.
            _ = ticker.tick(), if period.is_some() => {
                if silent_ticks >= shared.config.missed_pongs {
                    tracing::debug!("peer silent for {silent_ticks} ping intervals");
                    shared.request_close(close::HEARTBEAT_TIMEOUT, "heartbeat timeout");
                    break;
                }
                silent_ticks += 1;
                let _ = shared.tx.try_send(Outbound::Ping);
            }
            // Cancel-safe: `next` on a split stream loses no message.
            msg = stream.next() => {
                silent_ticks = 0;
                shared.saw_message();
                let result = match msg {
                    None => {
                        shared.finish(CloseReason::remote(close::ABNORMAL, "connection ended"));
                        break;
                    }
                    Some(Err(e)) => {
                        read_error(&shared, e);
                        break;
                    }
                    Some(Ok(_)) if closing => Ok(()),
                    Some(Ok(Message::Text(text))) => {
                        on_text(text.as_str(), &shared, &mut verifier, &hooks, &peer).await
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
                        // Keep reading so tungstenite flushes its close reply;
                        // the stream ends right after.
                        closing = true;
                        Ok(())
                    }
                    // Pongs only prove liveness; tungstenite answers pings itself.
                    Some(Ok(_)) => Ok(()),
                };
                if let Err((code, reason)) = result {
                    tracing::debug!(code, %reason, "closing link: peer broke the protocol");
                    shared.request_close(code, &reason);
                    closing = true;
                }
            }
        }
    }
    shared.stop.cancel();
}

fn read_error(shared: &Shared, e: WsError) {
    match e {
        WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
            tracing::debug!(size, max_size, "message too big");
            shared.request_close(
                close::TOO_BIG,
                &format!("message of {size} bytes exceeds the limit of {max_size}"),
            );
        }
        WsError::Capacity(e) => shared.request_close(close::TOO_BIG, &e.to_string()),
        WsError::Utf8(_) => shared.request_close(INVALID_PAYLOAD, "text frame is not UTF-8"),
        WsError::Protocol(e) => shared.request_close(close::PROTOCOL_ERROR, &e.to_string()),
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            shared.finish(CloseReason::remote(close::ABNORMAL, "connection closed"));
        }
        other => {
            tracing::debug!(error = %other, "read failed");
            shared.finish(CloseReason::remote(close::ABNORMAL, other.to_string()));
        }
    }
}

async fn on_text<P>(
    text: &str,
    shared: &Arc<Shared>,
    verifier: &mut Option<Verifier>,
    hooks: &Hooks<P>,
    peer: &P,
) -> Result<(), Violation>
where
    P: Clone + Send + Sync + 'static,
{
    let text = match verifier {
        Some(v) => v
            .verify(text)
            .map_err(|e| (close::BAD_SIGNATURE, e.to_string()))?,
        None => text,
    };
    let frame = codec::decode(text).map_err(|e| (close::PROTOCOL_ERROR, e.to_string()))?;
    match frame {
        Frame::Res(Res { id, outcome }) => {
            let reply = match outcome {
                Outcome::Ok(body) => Ok(body),
                Outcome::Err(e) => Err(Error::Remote(e)),
            };
            if !shared.pending.complete(id, reply) {
                tracing::debug!(
                    id,
                    "response nobody waits for (late or unknown id); dropped"
                );
            }
            Ok(())
        }
        Frame::Req(req) => {
            serve(req, shared, hooks, peer).await;
            Ok(())
        }
        Frame::Note(_) | Frame::Cancel(_) | Frame::Prog(_) => {
            tracing::debug!(kind = frame.kind(), "reserved frame ignored");
            Ok(())
        }
        other => Err((
            close::PROTOCOL_ERROR,
            format!("unexpected {} frame after the handshake", other.kind()),
        )),
    }
}

async fn serve<P>(req: Req, shared: &Arc<Shared>, hooks: &Hooks<P>, peer: &P)
where
    P: Clone + Send + Sync + 'static,
{
    let Ok(permit) = Arc::clone(&shared.serving).try_acquire_owned() else {
        let busy = HookError::new(
            codes::BUSY,
            format!(
                "more than {} requests in flight",
                shared.config.max_in_flight
            ),
        );
        // Waiting here slows a peer that floods us, which is the point.
        let _ = shared
            .tx
            .send(Outbound::Text(codec::encode_res(req.id, Err(&busy))))
            .await;
        return;
    };
    let hooks = hooks.clone();
    let peer = peer.clone();
    let max_out = shared.max_out;
    let Req {
        id,
        action,
        body,
        timeout_ms,
    } = req;
    let mut work = Box::pin(async move {
        let work = hooks.dispatch(&action, body, peer);
        let result = match timeout_ms {
            // Nobody waits past the caller's timeout, so stop there.
            Some(ms) => tokio::time::timeout(Duration::from_millis(ms), work)
                .await
                .unwrap_or_else(|_| {
                    Err(HookError::new(
                        codes::TIMEOUT,
                        format!("hook did not finish within {ms} ms"),
                    ))
                }),
            None => work.await,
        };
        let text = match &result {
            Ok(body) => codec::encode_res(id, Ok(body)),
            Err(e) => codec::encode_res(id, Err(e)),
        };
        if text.len() > max_out {
            let too_big = HookError::invalid_message(format!(
                "response of {} bytes exceeds the message limit of {max_out}",
                text.len()
            ));
            return Outbound::Text(codec::encode_res(id, Err(&too_big)));
        }
        Outbound::Text(text)
    });
    // Most hooks finish without waiting: answer those here and spare a task.
    // A hook that waits goes on in its own task, so it never holds up the
    // reader or any other request.
    match futures_util::poll!(work.as_mut()) {
        std::task::Poll::Ready(out) => {
            drop(permit);
            let _ = shared.tx.send(out).await;
        }
        std::task::Poll::Pending => {
            let tx = shared.tx.clone();
            let span = tracing::debug_span!("hook", id);
            tokio::spawn(
                async move {
                    let out = work.await;
                    drop(permit);
                    let _ = tx.send(out).await;
                }
                .instrument(span),
            );
        }
    }
}
