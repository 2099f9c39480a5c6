//! What the link does with each message it reads: verify signed frames,
//! complete pending requests by id, serve incoming requests (refusing with
//! `BUSY` past the in-flight limit) and notes (dropping them past it), act
//! on cancels, and turn every kind of bad input into a close with its
//! documented code.
//!
//! Everything here runs for a peer's input, at the peer's pace: text the
//! peer chose is clipped before it reaches a log line or an error message,
//! and each log line is rate-limited.

use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tracing::Instrument;

use super::counters::{self, Direction};
use super::serving::{CallCtl, Cancelled};
use super::stream::Outlet;
use super::{Outbound, Shared};
use crate::binary::{self, BinFrame};
use crate::body::{Body, BodyRef};
use crate::caps::Caps;
use crate::close::{self, CloseReason};
use crate::codec;
use crate::codec::CallRef;
use crate::error::{codes, Error, HookError};
use crate::frame::{Frame, Outcome, RequestId, Res, StreamOpen, MAX_CREDIT};
use crate::hooks::Hooks;
use crate::log_limit::{clip, LogLimit};
use crate::signed::Verifier;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Bytes;

/// A violation that ends the link: close code and reason text.
pub(crate) type Violation = (u16, String);

/// Close code for text that is not UTF-8 (RFC 6455 §7.4.1).
pub(crate) const INVALID_PAYLOAD: u16 = 1007;

/// Longest piece of peer-chosen text (a reason, a decode error) in a log
/// line or an error message.
pub(crate) const REASON_CLIP: usize = 200;

static READ_ERRORS: LogLimit = LogLimit::per_second(5);
static STRAY_FRAMES: LogLimit = LogLimit::per_second(5);
static STRAY_CANCELS: LogLimit = LogLimit::per_second(5);
static DROPPED_NOTES: LogLimit = LogLimit::per_second(5);
static NOTE_ERRORS: LogLimit = LogLimit::per_second(5);

pub(crate) fn read_error(shared: &Shared, e: WsError) {
    match e {
        WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
            if let Some(suppressed) = READ_ERRORS.allow() {
                tracing::debug!(size, max_size, suppressed, "message too big");
            }
            shared.request_close(
                close::TOO_BIG,
                &format!("message of {size} bytes exceeds the limit of {max_size}"),
            );
        }
        WsError::Capacity(e) => shared.request_close(close::TOO_BIG, &e.to_string()),
        WsError::Utf8(_) => shared.request_close(INVALID_PAYLOAD, "text frame is not UTF-8"),
        // A peer or network that drops TCP without a close frame is a lost
        // connection, not a protocol violation by the peer.
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            shared.finish(CloseReason::remote(close::ABNORMAL, "connection reset"));
        }
        WsError::Protocol(e) => {
            shared.request_close(close::PROTOCOL_ERROR, &clip(&e.to_string(), REASON_CLIP));
        }
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            shared.finish(CloseReason::remote(close::ABNORMAL, "connection closed"));
        }
        other => {
            let error = other.to_string();
            let error = clip(&error, REASON_CLIP);
            if let Some(suppressed) = READ_ERRORS.allow() {
                tracing::debug!(%error, suppressed, "read failed");
            }
            shared.finish(CloseReason::remote(close::ABNORMAL, error));
        }
    }
}

/// Handles one text message; returns a frame to send at once, if any.
pub(crate) fn on_text<P>(
    text: &str,
    shared: &Arc<Shared>,
    verifier: &mut Option<Verifier>,
    hooks: &Hooks<P>,
    peer: &P,
) -> Result<Option<Outbound>, Violation>
where
    P: Clone + Send + Sync + 'static,
{
    let text = match verifier {
        Some(v) => v.verify(text).map_err(|e| {
            (
                close::BAD_SIGNATURE,
                clip(&e.to_string(), REASON_CLIP).into(),
            )
        })?,
        None => text,
    };
    // The two frames of every call, read in place; anything else through
    // the general parser.
    match codec::decode_call_ref(text) {
        Some(CallRef::Req {
            id,
            action,
            body,
            timeout_ms,
        }) => {
            return Ok(serve(
                id,
                action,
                BodyRef::Json(body),
                timeout_ms,
                None,
                None,
                shared,
                hooks,
                peer,
            ));
        }
        Some(CallRef::Ok { id, body }) => {
            complete(shared, id, Ok(Body::Json(body.to_owned())));
            return Ok(None);
        }
        Some(CallRef::Note { action, body }) => {
            serve_note(action, body, shared, hooks, peer);
            return Ok(None);
        }
        Some(CallRef::Cancel { id }) => {
            cancel(shared, id);
            return Ok(None);
        }
        None => {}
    }
    // Decode errors come clipped from the codec.
    let frame = codec::decode_general(text).map_err(|e| (close::PROTOCOL_ERROR, e.to_string()))?;
    match frame {
        Frame::Res(Res { id, outcome }) => {
            let reply = match outcome {
                Outcome::Ok(body) => Ok(Body::Json(body)),
                Outcome::Err(e) => Err(Error::Remote(e)),
            };
            complete(shared, id, reply);
            Ok(None)
        }
        Frame::Req(r) => {
            check_stream_open(shared, r.stream)?;
            check_from(shared, r.from.as_deref())?;
            Ok(serve(
                r.id,
                &r.action,
                BodyRef::Json(&r.body),
                r.timeout_ms,
                r.stream,
                r.from.as_deref(),
                shared,
                hooks,
                peer,
            ))
        }
        Frame::Item(i) => {
            shared
                .pending
                .item(i.id, Body::Json(i.body))
                .map_err(|e| (close::PROTOCOL_ERROR, e))?;
            Ok(None)
        }
        Frame::Credit(c) => {
            let outlet = shared.outlets.lock().get(&c.id).cloned();
            match outlet {
                Some(outlet) => outlet.grant(c.n).map_err(|e| (close::PROTOCOL_ERROR, e))?,
                // Late (the request was answered meanwhile) or unknown:
                // credit for nothing changes nothing.
                None if c.n == 0 => {
                    return Err((close::PROTOCOL_ERROR, "credit of 0".into()));
                }
                None => {}
            }
            Ok(None)
        }
        Frame::Note(n) => {
            serve_note(&n.action, &n.body, shared, hooks, peer);
            Ok(None)
        }
        Frame::Cancel(c) => {
            cancel(shared, c.id);
            Ok(None)
        }
        Frame::Prog(p) => {
            // Progress is advisory: for a request that is not streamed (or
            // has ended) it is ignored, as protocol v1 said of `prog`.
            if !shared.pending.progress(p.id, p.body) {
                if let Some(suppressed) = STRAY_FRAMES.allow() {
                    tracing::debug!(
                        id = p.id,
                        suppressed,
                        "prog for no streamed request ignored"
                    );
                }
            }
            Ok(None)
        }
        other => Err((
            close::PROTOCOL_ERROR,
            format!("unexpected {} frame after the handshake", other.kind()),
        )),
    }
}

/// A `req.stream` is valid only with the capability and a credit in range.
fn check_stream_open(shared: &Shared, stream: Option<StreamOpen>) -> Result<(), Violation> {
    let Some(open) = stream else { return Ok(()) };
    if !shared.peer_caps.contains(Caps::STREAM) {
        return Err((
            close::PROTOCOL_ERROR,
            "req.stream without the `stream` capability".into(),
        ));
    }
    if open.credit == 0 || open.credit > MAX_CREDIT {
        return Err((
            close::PROTOCOL_ERROR,
            format!(
                "req.stream.credit of {} is not 1 to {MAX_CREDIT}",
                open.credit
            ),
        ));
    }
    Ok(())
}

/// `req.from` names the caller of a call the server relays: only the
/// server may send it, so an agent cannot pass itself off as another.
fn check_from(shared: &Shared, from: Option<&str>) -> Result<(), Violation> {
    if from.is_some() && shared.role == super::Role::Server {
        return Err((
            close::PROTOCOL_ERROR,
            "req.from is for the server's relayed calls only".into(),
        ));
    }
    Ok(())
}

/// Handles one binary message (capability `binary`); returns a frame to
/// send at once, if any. A signed link verifies it first, so a corrupted
/// message ends the link with 4002 whatever it holds.
pub(crate) fn on_binary<P>(
    msg: Bytes,
    shared: &Arc<Shared>,
    verifier: &mut Option<Verifier>,
    hooks: &Hooks<P>,
    peer: &P,
) -> Result<Option<Outbound>, Violation>
where
    P: Clone + Send + Sync + 'static,
{
    let msg = match verifier {
        Some(v) => v.verify_binary(&msg).map_err(|e| {
            (
                close::BAD_SIGNATURE,
                clip(&e.to_string(), REASON_CLIP).into(),
            )
        })?,
        None => msg,
    };
    if !shared.peer_caps.contains(Caps::BINARY) {
        return Err((
            close::PROTOCOL_ERROR,
            "binary frame without the `binary` capability".into(),
        ));
    }
    match binary::decode(&msg).map_err(|e| (close::PROTOCOL_ERROR, e.to_string()))? {
        BinFrame::Req { id, head, body } => {
            check_stream_open(shared, head.stream)?;
            check_from(shared, head.from.as_deref())?;
            Ok(serve(
                id,
                &head.action,
                BodyRef::Bytes(&body),
                head.timeout_ms,
                head.stream,
                head.from.as_deref(),
                shared,
                hooks,
                peer,
            ))
        }
        BinFrame::Res { id, body } => {
            complete(shared, id, Ok(Body::Bytes(body)));
            Ok(None)
        }
        BinFrame::Item { id, body } => {
            shared
                .pending
                .item(id, Body::Bytes(body))
                .map_err(|e| (close::PROTOCOL_ERROR, e))?;
            Ok(None)
        }
        // A kind added to the codec but not handled here.
        #[allow(unreachable_patterns)]
        _ => Err((close::PROTOCOL_ERROR, "unexpected binary frame".into())),
    }
}

fn complete(shared: &Shared, id: RequestId, reply: Result<Body, Error>) {
    // The `CANCELLED` answer to a call whose caller dropped it finds nobody,
    // as it should: no log line for that.
    let cancelled = matches!(&reply, Err(Error::Remote(e)) if e.code == codes::CANCELLED);
    if !shared.pending.complete(id, reply) && !cancelled {
        if let Some(suppressed) = STRAY_FRAMES.allow() {
            tracing::debug!(
                id,
                suppressed,
                "response nobody waits for (late or unknown id); dropped"
            );
        }
    }
}

/// A `cancel {id}` from the peer: the hook task serving `id` stops and
/// answers `CANCELLED`. A cancel for a request answered already, or never
/// served, changes nothing (debug log, rate-limited, for the latter).
fn cancel(shared: &Shared, id: RequestId) {
    if shared.calls.cancel(id) == Cancelled::Unknown {
        if let Some(suppressed) = STRAY_CANCELS.allow() {
            tracing::debug!(
                id,
                suppressed,
                "cancel for a request not being served (answered at once, or unknown); ignored"
            );
        }
    }
}

/// Serves one request: answers at once (`BUSY`, or a hook that finished
/// without waiting) or hands the hook to a task of its own, which answers
/// through the queue.
///
/// A hook task belongs to its link: it is cancelled (its future dropped)
/// when the link ends, it stops at the sooner of the peer's `timeout_ms`
/// and [`LinkConfig::max_hook_time`](super::LinkConfig::max_hook_time),
/// and it holds its serving permit until its answer is queued, so
/// `max_in_flight` bounds answers waiting for room too. The peer's
/// `cancel` drops it too, and it answers `CANCELLED` (unless the hook asked
/// to keep running). `from` is a relayed call's caller (`req.from`).
// The request's parts are passed apart, so that the direct path copies nothing.
#[allow(clippy::too_many_arguments)]
fn serve<P>(
    id: RequestId,
    action: &str,
    body: BodyRef<'_>,
    timeout_ms: Option<u64>,
    stream: Option<StreamOpen>,
    from: Option<&str>,
    shared: &Arc<Shared>,
    hooks: &Hooks<P>,
    peer: &P,
) -> Option<Outbound>
where
    P: Clone + Send + Sync + 'static,
{
    if shared.draining.load(std::sync::atomic::Ordering::Acquire) {
        let shutdown = HookError::new(codes::SHUTDOWN, "shutting down: no new requests");
        shared.counters.call(Direction::In, codes::SHUTDOWN);
        return Some(Outbound::Text(codec::encode_res(id, Err(&shutdown))));
    }
    if !crate::name::is_valid_action(action) {
        let invalid = HookError::invalid_message(crate::name::invalid_action(action));
        shared.counters.call(Direction::In, codes::INVALID_MESSAGE);
        return Some(Outbound::Text(codec::encode_res(id, Err(&invalid))));
    }
    let Ok(permit) = Arc::clone(&shared.serving).try_acquire_owned() else {
        let busy = HookError::new(
            codes::BUSY,
            format!(
                "more than {} requests in flight",
                shared.config.max_in_flight
            ),
        );
        shared.counters.call(Direction::In, codes::BUSY);
        return Some(Outbound::Text(codec::encode_res(id, Err(&busy))));
    };
    let max_out = shared.max_out;
    let outlet = match stream {
        Some(open) => {
            if shared.outlets.lock().contains_key(&id) {
                let dup = HookError::invalid_message(format!("request {id} is streaming already"));
                return Some(Outbound::Text(codec::encode_res(id, Err(&dup))));
            }
            Some(Arc::new(Outlet::new(shared, id, open.credit)))
        }
        None => None,
    };
    let ctl = shared.calls.first_poll(id, outlet.clone());
    let mut work = hooks.start_with(action, body, peer.clone(), ctl, from);
    // Most hooks finish without waiting: answer those here and spare a task.
    // A hook that waits goes on in its own task, so it never holds up the
    // link or any other request. A streamed request always gets a task: its
    // answer must follow its items through the queue.
    if outlet.is_none() {
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        if let std::task::Poll::Ready(result) = Pin::new(&mut work).poll(&mut cx) {
            shared.calls.first_done();
            drop(permit);
            return Some(answer(id, &result, max_out, shared));
        }
    }
    let token = shared.calls.to_task(id);
    if let Some(outlet) = &outlet {
        outlet.set_token(token.clone());
        shared.outlets.lock().insert(id, Arc::clone(outlet));
    }
    // Nobody waits past the caller's timeout, and nothing runs past
    // this side's own cap.
    let max = shared.config.max_hook_time;
    let limit = timeout_ms.map_or(max, |ms| Duration::from_millis(ms).min(max));
    let deadline = crate::time::deadline_in(limit);
    let owned = Arc::clone(shared);
    let span = tracing::debug_span!("hook", id);
    let task = async move {
        let shared = &*owned;
        // Leaves the table however the task ends.
        let mut entry = Entry {
            shared,
            id,
            done: false,
        };
        let run = async move {
            let outcome = {
                let work = tokio::time::timeout_at(deadline, work);
                tokio::pin!(work);
                let mut watching = true;
                loop {
                    tokio::select! {
                        biased;
                        outcome = &mut work => break Some(outcome),
                        _ = token.cancelled(), if watching => {
                            if shared.calls.keeps(id) {
                                // It sees the cancel, and runs on.
                                watching = false;
                            } else {
                                break None;
                            }
                        }
                    }
                }
                // A cancelled hook's future is dropped here.
            };
            entry.finish();
            if let Some(outlet) = &outlet {
                // Items queued so far go before the answer; none after.
                outlet.close().await;
            }
            let result = match outcome {
                Some(Ok(result)) => result,
                Some(Err(_)) => Err(HookError::new(
                    codes::TIMEOUT,
                    format!("hook did not finish within {} ms", limit.as_millis()),
                )),
                None => Err(HookError::new(codes::CANCELLED, "cancelled by the caller")),
            };
            // Only the encoded answer waits for room.
            let frame = answer(id, &result, max_out, shared);
            drop(result);
            // Wait for room rather than grow the queue; give up only
            // when the link ends (and then the answer has nowhere to go).
            let Some(room) = shared.budget.reserve(frame.bytes(), &shared.end).await else {
                return;
            };
            if shared.tx.send(frame).await.is_ok() {
                room.queued();
            }
            // Held until now, so answers waiting for room count
            // against `max_in_flight` too.
            drop(permit);
        };
        // The link's end drops the hook's future, wherever it is.
        let _ = shared.end.run_until_cancelled(run).await;
    };
    shared.hook_tasks.spawn(task.instrument(span));
    None
}

/// A hook task's place in the link's table of cancellable requests.
struct Entry<'a> {
    shared: &'a Shared,
    id: RequestId,
    done: bool,
}

impl Entry<'_> {
    /// The outcome is decided: a cancel from now on is late.
    fn finish(&mut self) {
        if !self.done {
            self.done = true;
            self.shared.calls.finish(self.id);
        }
    }
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Serves one note: runs its hook and discards the result, logging an
/// error (rate-limited). Past `max_in_flight` notes being served, or while
/// the link drains, the note is dropped and counted.
fn serve_note<P>(action: &str, body: &RawValue, shared: &Arc<Shared>, hooks: &Hooks<P>, peer: &P)
where
    P: Clone + Send + Sync + 'static,
{
    let draining = shared.draining.load(std::sync::atomic::Ordering::Acquire);
    let permit = match Arc::clone(&shared.notes).try_acquire_owned() {
        Ok(permit) if !draining => permit,
        _ => {
            let dropped = shared
                .dropped_notes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
            if let Some(suppressed) = DROPPED_NOTES.allow() {
                tracing::debug!(
                    action = %clip(action, crate::hooks::ACTION_CLIP),
                    dropped,
                    draining,
                    suppressed,
                    "note dropped: the link serves as many notes as it may, or drains"
                );
            }
            return;
        }
    };
    if !crate::name::is_valid_action(action) {
        drop(permit);
        note_failed(
            action,
            Some(HookError::invalid_message(crate::name::invalid_action(
                action,
            ))),
        );
        return;
    }
    let mut work = hooks.start_with(
        action,
        BodyRef::Json(body),
        peer.clone(),
        CallCtl::Note,
        None,
    );
    let waker = futures_util::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    match Pin::new(&mut work).poll(&mut cx) {
        std::task::Poll::Ready(result) => {
            drop(permit);
            note_failed(action, result.err());
        }
        std::task::Poll::Pending => {
            let max = shared.config.max_hook_time;
            let deadline = crate::time::deadline_in(max);
            let action: Box<str> = clip(action, crate::hooks::ACTION_CLIP).into();
            let owned = Arc::clone(shared);
            let span = tracing::debug_span!("note");
            let task = async move {
                let run = async move {
                    let failed = match tokio::time::timeout_at(deadline, work).await {
                        Ok(result) => result.err(),
                        Err(_) => Some(HookError::new(
                            codes::TIMEOUT,
                            format!("hook did not finish within {} ms", max.as_millis()),
                        )),
                    };
                    drop(permit);
                    note_failed(&action, failed);
                };
                let _ = owned.end.run_until_cancelled(run).await;
            };
            shared.hook_tasks.spawn(task.instrument(span));
        }
    }
}

/// Logs a note's error, the only place it goes: at debug level for what the
/// peer caused (no such hook, a body of the wrong shape), as a warning for
/// the hook's own errors.
fn note_failed(action: &str, error: Option<HookError>) {
    let Some(e) = error else { return };
    let Some(suppressed) = NOTE_ERRORS.allow() else {
        return;
    };
    let action = clip(action, crate::hooks::ACTION_CLIP);
    let message = clip(&e.message, REASON_CLIP);
    if e.code == codes::UNKNOWN_ACTION || e.code == codes::INVALID_MESSAGE {
        tracing::debug!(%action, code = %e.code, %message, suppressed, "note not served");
    } else {
        tracing::warn!(%action, code = %e.code, %message, suppressed, "note hook failed");
    }
}

/// The `res` frame for a hook's result; `INVALID_MESSAGE` instead when it
/// would be bigger than the peer accepts.
fn answer(
    id: RequestId,
    result: &Result<Body, HookError>,
    max_out: usize,
    shared: &Shared,
) -> Outbound {
    shared.counters.call(
        Direction::In,
        result
            .as_ref()
            .map_or_else(|e| e.code.as_str(), |_| counters::OK),
    );
    let frame = match result {
        Ok(body) => Outbound::result(id, body, shared.peer_caps),
        Err(e) => Outbound::Text(codec::encode_res(id, Err(e))),
    };
    if frame.bytes() > max_out {
        let too_big = HookError::invalid_message(format!(
            "response of {} bytes exceeds the message limit of {max_out}",
            frame.bytes()
        ));
        return Outbound::Text(codec::encode_res(id, Err(&too_big)));
    }
    frame
}
