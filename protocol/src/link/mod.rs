//! The Link: one authenticated WebSocket connection, used the same way by the
//! server and by agents.
//!
//! ```text
//! caller ─request()─► pending.register(id) ─► queue (bounded) ─┐
//!                                                               ▼
//! socket ◄──────── writes, batched, one flush per round ◄── driver task (owns the socket)
//! socket ─────────► reads ─┬─ res{id}  ─► pending.complete(id) ─► caller
//!                          ├─ req      ─► hooks: answered inline, or on a task ─► queue
//!                          ├─ note     ─► hooks, nothing answered (dropped past the bound)
//!                          ├─ cancel   ─► serving.cancel(id): the hook task answers CANCELLED
//!                          ├─ item/prog ─► the caller's stream inbox (bounded by its credit)
//!                          ├─ credit   ─► the serving outlet: its ItemSink may send more
//!                          └─ close/err ─► pending fails every waiter; driver closes
//! ```
//!
//! One task, the driver, owns the socket both ways: it reads, writes in
//! batches, and signs frames when the session asks for it, so sequence numbers
//! follow the order on the wire. A hook that finishes at once is answered by
//! the driver itself; one that waits runs on a task of its own, so a slow hook
//! never holds up another request.
//!
//! What a link holds is bounded: requests in flight either way
//! ([`LinkConfig::max_in_flight`]), bytes waiting to be written
//! ([`LinkConfig::max_queued_bytes`]: past it the link stops reading and
//! producers wait for room), and the life of a hook task (it ends with the
//! link, and at [`LinkConfig::max_hook_time`] at the latest).
//!
//! Cancellation and notifications work the same both ways, with a peer
//! that announced them (see [`Caps`]): a call whose future is dropped
//! before its outcome sends `cancel {id}` (see [`CallHandle`] for an
//! explicit cancel), the peer's hook sees it through
//! [`Call::cancelled`](crate::Call::cancelled) and is dropped unless it
//! [keeps running](crate::Call::keep_running), and every request still
//! gets exactly one `res`, `CANCELLED` for one stopped this way.
//! Streamed results ([`LinkHandle::call_stream`], capability `stream`)
//! send `item` and `prog` frames before that `res`, paced by the caller's
//! `credit` (see [`CallStream`]).
//! [`LinkHandle::notify`] sends a `note`: the peer runs the hook and
//! answers nothing.

mod budget;
mod config;
mod counters;
mod driver;
mod inbound;
mod outgoing;
mod pending;
pub(crate) mod serving;
pub(crate) mod stream;

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use tokio::io::{AsyncRead, AsyncWrite};

use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use config::*;
pub use counters::{CounterSnapshot, Counters, Direction, CALL_LATENCY_BUCKETS};
pub use outgoing::{CallHandle, Canceller};
pub use stream::{CallStream, Event, ItemSink, StreamOptions, DEFAULT_CREDIT};

use crate::binary;
use crate::body::Body;
use crate::caps::Caps;
use crate::close::CloseReason;
use crate::codec;
use crate::error::Error;
use crate::frame::Frame;
use crate::frame::{RequestId, StreamOpen};
use crate::handshake::Session;
use crate::hooks::Hooks;
use crate::signed::{self, Signer, Verifier};
use budget::Budget;
use outgoing::CallGuard;
use pending::Pending;
use serving::Serving;

/// Which end of the link this is; it picks the direction bytes of signed frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The control plane.
    Server,
    /// An agent.
    Agent,
}

/// What the writer task sends.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// One encoded frame.
    Text(String),
    /// A heartbeat ping.
    Ping,
    /// A frame written as it is, never signed: the handshake's last frame,
    /// queued ahead of everything else.
    Unsigned(String),
    /// One binary frame after [`signed::BINARY_PREFIX`] bytes of room for
    /// its signature, so that signing it copies nothing.
    Binary(Vec<u8>),
}

impl Outbound {
    /// What the frame counts for in the link's byte budget.
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Outbound::Text(text) | Outbound::Unsigned(text) => text.len(),
            Outbound::Binary(buf) => buf.len().saturating_sub(signed::BINARY_PREFIX),
            Outbound::Ping => 0,
        }
    }

    /// A binary frame whose body is the bytes `value` serializes as; `None`
    /// for a value that does not serialize as bytes. `head` is only built
    /// for one that does.
    pub(crate) fn binary_of<T: Serialize + ?Sized>(
        kind: binary::Kind,
        id: RequestId,
        head: impl FnOnce() -> Vec<u8>,
        value: &T,
    ) -> Option<Outbound> {
        if !crate::body::is_bytes(value) {
            return None;
        }
        let head = head();
        let mut buf = Vec::with_capacity(signed::BINARY_PREFIX + binary::HEADER + head.len());
        buf.resize(signed::BINARY_PREFIX, 0);
        binary::encode_into(&mut buf, kind, id, &head, &[]);
        crate::body::append_bytes(value, &mut buf).then_some(Outbound::Binary(buf))
    }

    /// A binary frame (see [`crate::binary`]).
    pub(crate) fn binary(
        kind: crate::binary::Kind,
        id: crate::frame::RequestId,
        head: &[u8],
        body: &[u8],
    ) -> Outbound {
        let mut buf = Vec::with_capacity(
            signed::BINARY_PREFIX + crate::binary::HEADER + head.len() + body.len(),
        );
        buf.resize(signed::BINARY_PREFIX, 0);
        crate::binary::encode_into(&mut buf, kind, id, head, body);
        Outbound::Binary(buf)
    }

    /// The `res` frame of a result: bytes as a binary frame when the peer
    /// takes them, JSON otherwise.
    pub(crate) fn result(id: crate::frame::RequestId, body: &Body, peer_caps: Caps) -> Outbound {
        match body {
            Body::Json(raw) => Outbound::Text(codec::encode_res(id, Ok(raw))),
            Body::Bytes(bytes) if peer_caps.contains(Caps::BINARY) => {
                Outbound::binary(crate::binary::Kind::Res, id, &[], bytes)
            }
            Body::Bytes(_) => Outbound::Text(codec::encode_res(id, Ok(&body.clone().into_json()))),
        }
    }
}

pub(crate) struct Shared {
    config: LinkConfig,
    /// Which end of the link this is.
    pub(crate) role: Role,
    /// Totals shared with the other links of this side.
    pub(crate) counters: Arc<Counters>,
    /// Largest frame this side sends, before any signed envelope: what the
    /// peer accepts, less room for the envelope when frames are signed.
    pub(crate) max_out: usize,
    /// What the peer agreed to in the handshake.
    pub(crate) peer_caps: Caps,
    pending: Pending,
    /// The peer's requests served on hook tasks, for its cancels.
    pub(crate) calls: Arc<Serving>,
    /// Permits for the peer's notes being served.
    pub(crate) notes: Arc<Semaphore>,
    /// Notes of the peer dropped: past the bound, or while draining.
    pub(crate) dropped_notes: AtomicU64,
    /// The peer's streamed requests being served, for its `credit` frames.
    pub(crate) outlets:
        parking_lot::Mutex<std::collections::HashMap<crate::frame::RequestId, Arc<stream::Outlet>>>,
    tx: mpsc::Sender<Outbound>,
    /// Set once, by whoever first asks the link to close; the driver sends it.
    pub(crate) close_request: parking_lot::Mutex<Option<(u16, String)>>,
    /// Cancelled when the link is asked to close.
    pub(crate) close_token: CancellationToken,
    /// The reason the link ended, once it has.
    ended: watch::Sender<Option<CloseReason>>,
    /// Cancelled with the reason set: hook tasks stop, producers waiting
    /// for room give up.
    pub(crate) end: CancellationToken,
    /// Cancelled when the driver has let go of the socket.
    pub(crate) stop: CancellationToken,
    /// Permits for requests this side serves.
    serving: Arc<Semaphore>,
    /// The hook tasks of this link; closed when the driver exits, so
    /// [`LinkHandle::stopped`] can wait until every one is gone.
    pub(crate) hook_tasks: TaskTracker,
    /// Bytes queued for the peer (see [`budget`]).
    pub(crate) budget: Budget,
    /// Set by [`LinkHandle::drain`]: new requests either way are refused
    /// with `SHUTDOWN`, while those in flight finish.
    pub(crate) draining: std::sync::atomic::AtomicBool,
    /// Messages read so far, for liveness probes.
    pub(crate) seen: AtomicU64,
    /// Probes waiting for the next message; the reader only notifies when set.
    pub(crate) probing: AtomicUsize,
    pub(crate) seen_notify: Notify,
}

impl Shared {
    /// The reason the link closed, once it has.
    pub(crate) fn pending_closed(&self) -> Option<CloseReason> {
        self.pending.closed()
    }

    /// Counts one message read from the peer.
    pub(crate) fn saw_message(&self) {
        self.seen.fetch_add(1, Ordering::Relaxed);
        if self.probing.load(Ordering::Acquire) > 0 {
            self.seen_notify.notify_waiters();
        }
    }

    /// Records why the link ended (the first reason wins) and fails every
    /// waiting caller with it.
    pub(crate) fn finish(&self, reason: CloseReason) {
        let reason = self.pending.close(reason);
        self.ended.send_if_modified(|slot| {
            if slot.is_none() {
                *slot = Some(reason);
                true
            } else {
                false
            }
        });
        self.end.cancel();
    }

    /// Ends the link locally and asks the writer to send a close frame.
    pub(crate) fn request_close(&self, code: u16, reason: &str) {
        let reason = crate::close::truncate_reason(reason);
        self.finish(CloseReason::local(code, reason));
        {
            let mut slot = self.close_request.lock();
            if slot.is_none() {
                *slot = Some((code, reason.to_owned()));
            }
        }
        self.close_token.cancel();
    }
}

/// A handle to one link; clones share it. Dropping handles does not close the
/// link: call [`LinkHandle::close`].
#[derive(Clone)]
pub struct LinkHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LinkHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkHandle")
            .field("closed", &self.close_reason())
            .field("pending", &self.shared.pending.len())
            .finish()
    }
}

impl LinkHandle {
    /// Sends a request with a raw body and waits for its response, an error or
    /// the timeout. Fails at once with `BUSY` when `max_in_flight` requests
    /// wait already, and with `CONNECTION_CLOSED` when the link is (or goes)
    /// down. While the link's queue holds [`LinkConfig::max_queued_bytes`]
    /// (the peer reads slowly, or not at all), the request waits for room,
    /// within its timeout.
    ///
    /// Dropping the future before the outcome, or the timeout passing,
    /// cancels the request at the peer when it supports that (see
    /// [`CallHandle`]).
    pub async fn request(
        &self,
        action: &str,
        body: &RawValue,
        timeout: Duration,
    ) -> Result<Box<RawValue>, Error> {
        self.exchange(action, timeout, raw_req(action, None, body), None)
            .await
            .map(Body::into_json)
    }

    /// [`LinkHandle::request`] for a call the server relays from agent
    /// `from`: the frame carries `from`, which the callee's hooks read as
    /// [`Call::relayed_from`](crate::Call::relayed_from). Dropping the
    /// future cancels the request, as for [`LinkHandle::request`].
    pub async fn request_relayed(
        &self,
        from: &str,
        action: &str,
        body: &RawValue,
        timeout: Duration,
    ) -> Result<Box<RawValue>, Error> {
        self.exchange(action, timeout, raw_req(action, Some(from), body), None)
            .await
            .map(Body::into_json)
    }

    /// Sends a request with a body that is JSON or bytes and waits for its
    /// result, JSON or bytes as the peer's hook answered: the untyped form
    /// of [`LinkHandle::call`] for bodies that may be bytes. A
    /// [`Body::Bytes`] goes in a binary frame to a peer with the `binary`
    /// capability, and as a JSON array of numbers to one without. Dropping
    /// the future cancels the request, as for [`LinkHandle::request`].
    ///
    /// ```no_run
    /// # async fn demo(link: agent_protocol::LinkHandle) -> Result<(), agent_protocol::Error> {
    /// use agent_protocol::{Body, Bytes};
    /// use std::time::Duration;
    /// let sent = Body::Bytes(Bytes::from_static(b"\x7fELF"));
    /// let back = link.request_body("echo", &sent, Duration::from_secs(5)).await?;
    /// assert_eq!(back.as_bytes().map(|b| &b[..]), Some(&b"\x7fELF"[..]));
    /// # Ok(()) }
    /// ```
    pub async fn request_body(
        &self,
        action: &str,
        body: &Body,
        timeout: Duration,
    ) -> Result<Body, Error> {
        let encode = body_req(&self.shared, action, None, body);
        self.exchange(action, timeout, encode, None).await
    }

    /// Sends a request with a typed body and decodes the typed response.
    /// A body or response that does not (de)serialize gives `INVALID_MESSAGE`.
    /// Dropping the future cancels the request, as for
    /// [`LinkHandle::request`].
    pub async fn call<B, R>(&self, action: &str, body: &B, timeout: Duration) -> Result<R, Error>
    where
        B: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let res = self
            .exchange(
                action,
                timeout,
                typed_req(&self.shared, action, None, body),
                None,
            )
            .await?;
        res.decode()
            .map_err(|e| Error::InvalidMessage(format!("response to {action:?}: {e}")))
    }

    /// [`LinkHandle::call`], as a [`CallHandle`] that can also be cancelled
    /// on purpose with [`CallHandle::cancel`]. The body is serialized now;
    /// the request goes out when the handle is first polled.
    ///
    /// ```no_run
    /// # async fn demo(link: agent_protocol::LinkHandle) {
    /// use std::time::Duration;
    /// let call = link.call_cancellable::<_, u64>("count", &(), Duration::from_secs(5));
    /// call.cancel();
    /// // Not sent yet: it ends at once.
    /// assert_eq!(call.await.unwrap_err().code(), "CANCELLED");
    /// # }
    /// ```
    pub fn call_cancellable<B, R>(&self, action: &str, body: &B, timeout: Duration) -> CallHandle<R>
    where
        B: Serialize + ?Sized,
        R: DeserializeOwned + Send + 'static,
    {
        let token = CancellationToken::new();
        let body = Body::encode(body);
        let link = self.clone();
        let action = action.to_owned();
        let cancel = token.clone();
        CallHandle::new(token, async move {
            let body = body.map_err(|e| Error::InvalidMessage(format!("request body: {e}")))?;
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let encode = body_req(&link.shared, &action, None, &body);
            let res = link
                .exchange(&action, timeout, encode, Some(&cancel))
                .await?;
            res.decode()
                .map_err(|e| Error::InvalidMessage(format!("response to {action:?}: {e}")))
        })
    }

    /// Registers a request, writes its frame (`encode` serializes the body
    /// straight into it) and waits for the outcome, or for `cancel` when
    /// given.
    async fn exchange(
        &self,
        action: &str,
        timeout: Duration,
        encode: impl EncodeReq,
        cancel: Option<&CancellationToken>,
    ) -> Result<Body, Error> {
        if self.is_draining() {
            return Err(Error::Shutdown);
        }
        if !crate::name::is_valid_action(action) {
            return Err(Error::InvalidMessage(crate::name::invalid_action(action)));
        }
        let (id, mut rx) = self
            .shared
            .pending
            .register(self.shared.config.max_in_flight)?;
        let mut guard = CallGuard::new(&self.shared, id);
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let frame = encode(id, Some(timeout_ms), None)
            .map_err(|e| Error::InvalidMessage(format!("request body: {e}")))?;
        if frame.bytes() > self.shared.max_out {
            return Err(Error::InvalidMessage(format!(
                "request of {} bytes exceeds the message limit of {}",
                frame.bytes(),
                self.shared.max_out
            )));
        }
        let exchange = async {
            let shared = &self.shared;
            let queue = async {
                let room = shared.budget.reserve(frame.bytes(), &shared.end).await?;
                shared.tx.send(frame).await.ok()?;
                room.queued();
                Some(())
            };
            let queued = match cancel {
                None => queue.await,
                Some(cancel) => tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Err(Error::Cancelled),
                    queued = queue => queued,
                },
            };
            if queued.is_none() {
                return Err(self.closed_error());
            }
            guard.sent();
            let reply = match cancel {
                None => (&mut rx).await,
                Some(cancel) => tokio::select! {
                    biased;
                    reply = &mut rx => reply,
                    _ = cancel.cancelled() => {
                        if !guard.cancel_now() {
                            return Err(Error::Cancelled);
                        }
                        // The peer answers with one terminal `res`.
                        match (&mut rx).await {
                            Ok(Err(Error::Remote(e))) if e.code == crate::codes::CANCELLED => {
                                Ok(Err(Error::Cancelled))
                            }
                            other => other,
                        }
                    }
                },
            };
            guard.answered();
            match reply {
                Ok(reply) => reply,
                Err(_) => Err(self.closed_error()),
            }
        };
        let started = std::time::Instant::now();
        let result = match tokio::time::timeout_at(crate::time::deadline_in(timeout), exchange)
            .await
        {
            Ok(reply) => reply,
            Err(_) if cancel.is_some_and(CancellationToken::is_cancelled) => Err(Error::Cancelled),
            Err(_) => Err(Error::Timeout(timeout)),
        };
        self.shared.counters.call_out(&result, started.elapsed());
        result
    }

    /// Sends a request whose result is streamed: the peer's handler sends
    /// items (see [`Call::stream`](crate::Call::stream)) and progress
    /// ([`Call::progress`](crate::Call::progress)) before its final result,
    /// and the returned [`CallStream`] yields them as they arrive. Returns
    /// once the request is queued.
    ///
    /// Flow control and timeouts are set by [`StreamOptions`]: at most its
    /// credit of items is buffered here, and the peer's handler waits while
    /// the consumer is behind. Fails with `UNSUPPORTED` when the peer did
    /// not announce the `stream` capability (nothing is sent), and
    /// otherwise as [`LinkHandle::call`] does. Dropping the stream before
    /// its end cancels the request.
    ///
    /// ```no_run
    /// # async fn demo(link: agent_protocol::LinkHandle) -> Result<(), agent_protocol::Error> {
    /// use agent_protocol::StreamOptions;
    /// use std::time::Duration;
    /// let total: u64 = link
    ///     .call_stream::<_, u64, u64>("count", &10, StreamOptions::new(Duration::from_secs(5)))
    ///     .await?
    ///     .outcome()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn call_stream<B, T, R>(
        &self,
        action: &str,
        body: &B,
        opts: StreamOptions,
    ) -> Result<CallStream<T, R>, Error>
    where
        B: Serialize + ?Sized,
    {
        self.open_stream(action, opts, typed_req(&self.shared, action, None, body))
            .await
    }

    /// [`LinkHandle::call_stream`] with a raw body, yielding raw items and
    /// a raw result.
    pub async fn request_stream(
        &self,
        action: &str,
        body: &RawValue,
        opts: StreamOptions,
    ) -> Result<CallStream<Box<RawValue>, Box<RawValue>>, Error> {
        self.open_stream(action, opts, raw_req(action, None, body))
            .await
    }

    async fn open_stream<T, R>(
        &self,
        action: &str,
        opts: StreamOptions,
        encode: impl EncodeReq,
    ) -> Result<CallStream<T, R>, Error> {
        let shared = &self.shared;
        if self.is_draining() {
            return Err(Error::Shutdown);
        }
        if !shared.peer_caps.contains(Caps::STREAM) {
            return Err(Error::Unsupported(
                "streamed results: the peer did not announce the `stream` capability".into(),
            ));
        }
        if !crate::name::is_valid_action(action) {
            return Err(Error::InvalidMessage(crate::name::invalid_action(action)));
        }
        let inbox = Arc::new(stream::Inbox::new(opts.initial_credit()));
        let id = shared
            .pending
            .register_stream(shared.config.max_in_flight, Arc::clone(&inbox))?;
        // From here the stream owns the entry: dropping it (on any error
        // below) takes it out again, or cancels once the `req` is queued.
        let mut stream = CallStream::new(Arc::clone(shared), id, inbox, opts);
        let open = crate::frame::StreamOpen {
            credit: opts.initial_credit(),
        };
        let frame = encode(id, opts.wire_timeout(), Some(open))
            .map_err(|e| Error::InvalidMessage(format!("request body: {e}")))?;
        if frame.bytes() > shared.max_out {
            return Err(Error::InvalidMessage(format!(
                "request of {} bytes exceeds the message limit of {}",
                frame.bytes(),
                shared.max_out
            )));
        }
        let queue = async {
            let room = shared.budget.reserve(frame.bytes(), &shared.end).await?;
            shared.tx.send(frame).await.ok()?;
            room.queued();
            Some(())
        };
        let by = crate::time::deadline_in(opts.initial_window());
        match tokio::time::timeout_at(by, queue).await {
            Ok(Some(())) => Ok(stream),
            Ok(None) => {
                stream.unsent();
                Err(self.closed_error())
            }
            Err(_) => {
                stream.unsent();
                Err(Error::Timeout(opts.initial_window()))
            }
        }
    }

    /// Sends a notification: the peer runs its hook `action` with `body`
    /// and answers nothing (its result is discarded there, an error only
    /// logged). Returns once the `note` is queued, waiting for room while
    /// the link's queue is full.
    ///
    /// Fails with `UNSUPPORTED` when the peer did not announce the `note`
    /// capability (a peer written before notifications; nothing is sent),
    /// `SHUTDOWN` while draining, `CONNECTION_CLOSED` when the link is
    /// down, and `INVALID_MESSAGE` when `action` is not an action name, the
    /// body does not serialize or the note is bigger than the peer accepts. Delivery is not confirmed: the
    /// peer drops a note when it serves `max_in_flight` notes already (it
    /// counts them, see [`LinkHandle::dropped_notes`]), or when the link
    /// ends first.
    ///
    /// ```no_run
    /// # async fn demo(link: agent_protocol::LinkHandle) -> Result<(), agent_protocol::Error> {
    /// link.notify("progress", &serde_json::json!({"done": 50})).await?;
    /// # Ok(()) }
    /// ```
    pub async fn notify<B>(&self, action: &str, body: &B) -> Result<(), Error>
    where
        B: Serialize + ?Sized,
    {
        self.send_note(action, |buf| serde_json::to_writer(buf, body))
            .await
    }

    /// [`LinkHandle::notify`] with a body that is JSON already.
    pub async fn notify_raw(&self, action: &str, body: &RawValue) -> Result<(), Error> {
        let raw = body.get().as_bytes();
        self.send_note(action, |buf| {
            buf.extend_from_slice(raw);
            Ok(())
        })
        .await
    }

    async fn send_note(
        &self,
        action: &str,
        write_body: impl FnOnce(&mut Vec<u8>) -> Result<(), serde_json::Error>,
    ) -> Result<(), Error> {
        let shared = &self.shared;
        if self.is_draining() {
            return Err(Error::Shutdown);
        }
        if !shared.peer_caps.contains(Caps::NOTE) {
            return Err(Error::Unsupported(
                "notifications: the peer did not announce the `note` capability".into(),
            ));
        }
        if self.is_closed() {
            return Err(self.closed_error());
        }
        if !crate::name::is_valid_action(action) {
            return Err(Error::InvalidMessage(crate::name::invalid_action(action)));
        }
        let text = codec::encode_note_with(action, write_body)
            .map_err(|e| Error::InvalidMessage(format!("note body: {e}")))?;
        if text.len() > shared.max_out {
            return Err(Error::InvalidMessage(format!(
                "note of {} bytes exceeds the message limit of {}",
                text.len(),
                shared.max_out
            )));
        }
        let Some(room) = shared.budget.reserve(text.len(), &shared.end).await else {
            return Err(self.closed_error());
        };
        if shared.tx.send(Outbound::Text(text)).await.is_err() {
            return Err(self.closed_error());
        }
        room.queued();
        Ok(())
    }

    fn closed_error(&self) -> Error {
        match self.shared.pending.closed() {
            Some(reason) => Error::ConnectionClosed(reason),
            None => {
                Error::ConnectionClosed(CloseReason::local(crate::close::ABNORMAL, "link stopped"))
            }
        }
    }

    /// Stops taking new requests, either way, while those in flight finish:
    /// from now on this side's calls fail at once with `SHUTDOWN`, and the
    /// peer's new requests are answered with a `SHUTDOWN` error. The server
    /// drains every link when its shutdown begins. There is no way back:
    /// close the link once it is idle.
    pub fn drain(&self) {
        self.shared.draining.store(true, Ordering::Release);
    }

    /// True once [`LinkHandle::drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::Acquire)
    }

    /// Closes the link with a close code and reason text. Requests in flight
    /// fail at once; the peer receives the close frame.
    pub fn close(&self, code: u16, reason: &str) {
        self.shared.request_close(code, reason);
    }

    /// Waits until the link has ended and returns why.
    pub async fn closed(&self) -> CloseReason {
        let mut rx = self.shared.ended.subscribe();
        let reason = match rx.wait_for(Option::is_some).await {
            Ok(r) => r.clone(),
            // The sender lives in `shared`, which we hold, so it cannot drop.
            Err(_) => None,
        };
        reason.unwrap_or_else(|| CloseReason::local(crate::close::ABNORMAL, "link stopped"))
    }

    /// Waits until the link's driver has stopped and released the socket,
    /// and every hook task of the link is gone (they are cancelled when the
    /// link ends, so this does not wait for them to finish their work).
    pub async fn stopped(&self) {
        self.shared.stop.cancelled().await;
        self.shared.hook_tasks.wait().await;
    }

    /// Why the link ended, or `None` while it is up.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared.ended.borrow().clone()
    }

    /// True once the link has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.ended.borrow().is_some()
    }

    /// Pings the peer and waits up to `timeout` for any message from it.
    /// True when the peer showed it is alive; false when it stayed silent or
    /// the link is closed.
    pub async fn probe(&self, timeout: Duration) -> bool {
        struct Probing<'a>(&'a AtomicUsize);
        impl Drop for Probing<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        if self.is_closed() {
            return false;
        }
        let shared = &self.shared;
        shared.probing.fetch_add(1, Ordering::AcqRel);
        let _probing = Probing(&shared.probing);
        let before = shared.seen.load(Ordering::Acquire);
        if shared.tx.try_send(Outbound::Ping).is_err() {
            // A full queue means the writer is stuck or the link is busy;
            // the wait below tells which.
            tracing::debug!("probe ping not queued");
        }
        let deadline = crate::time::deadline_in(timeout);
        loop {
            let notified = shared.seen_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if shared.seen.load(Ordering::Acquire) != before {
                return true;
            }
            if self.is_closed() {
                return false;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    /// Requests this side sent that still wait for a response.
    pub fn pending_requests(&self) -> usize {
        self.shared.pending.len()
    }

    /// Requests from the peer this side is serving now: hooks running, and
    /// answers waiting for room in the queue.
    pub fn serving_requests(&self) -> usize {
        self.shared
            .config
            .max_in_flight
            .saturating_sub(self.shared.serving.available_permits())
    }

    /// Hook tasks of this link alive now: hooks that did not finish at once
    /// and run on a task of their own (for requests and notes alike), until
    /// they have answered or been cancelled (by the peer, when the link
    /// ends, or at [`LinkConfig::max_hook_time`]).
    pub fn running_hooks(&self) -> usize {
        self.shared.hook_tasks.len()
    }

    /// Notes from the peer this side is serving now (hooks of notes still
    /// running); at most `max_in_flight`, counted apart from requests.
    pub fn serving_notes(&self) -> usize {
        self.shared
            .config
            .max_in_flight
            .saturating_sub(self.shared.notes.available_permits())
    }

    /// Notes from the peer dropped unserved since the link started: those
    /// that arrived while `max_in_flight` notes were being served already,
    /// or while the link was draining. A note has no answer, so the peer
    /// never learns of a drop; this count is the only trace (the drops are
    /// also logged, rate-limited).
    pub fn dropped_notes(&self) -> u64 {
        self.shared.dropped_notes.load(Ordering::Relaxed)
    }

    /// Requests of the peer on hook tasks that a `cancel` can reach now:
    /// the table the link keeps for cancels, which empties as those hooks
    /// end. For tests and diagnostics.
    #[doc(hidden)]
    pub fn cancellable_requests(&self) -> usize {
        self.shared.calls.len()
    }

    /// The capabilities the peer agreed to in the handshake (none for a
    /// peer that announced none): whether this side sends it `cancel` and
    /// `note` frames.
    pub fn peer_caps(&self) -> Caps {
        self.shared.peer_caps
    }

    /// Bytes of frames waiting to be written to the peer, counted against
    /// [`LinkConfig::max_queued_bytes`].
    pub fn queued_bytes(&self) -> usize {
        self.shared.budget.queued()
    }

    /// The link's limits.
    pub fn config(&self) -> &LinkConfig {
        &self.shared.config
    }
}

/// Writes a request's frame once its id is known, from the id, the
/// timeout and the stream request it carries.
trait EncodeReq:
    FnOnce(RequestId, Option<u64>, Option<StreamOpen>) -> Result<Outbound, serde_json::Error>
{
}

impl<F> EncodeReq for F where
    F: FnOnce(RequestId, Option<u64>, Option<StreamOpen>) -> Result<Outbound, serde_json::Error>
{
}

/// The frame of a request whose body is JSON already, copied in as it is.
fn raw_req<'a>(action: &'a str, from: Option<&'a str>, body: &'a RawValue) -> impl EncodeReq + 'a {
    move |id, timeout_ms, stream| {
        let raw = body.get().as_bytes();
        codec::encode_req_parts(id, action, timeout_ms, stream, from, |buf| {
            buf.extend_from_slice(raw);
            Ok(())
        })
        .map(Outbound::Text)
    }
}

/// The frame of a request with a typed body, serialized straight into it:
/// a binary frame when the body serializes as bytes and the peer takes
/// them, text otherwise.
fn typed_req<'a, B: Serialize + ?Sized>(
    shared: &'a Shared,
    action: &'a str,
    from: Option<&'a str>,
    body: &'a B,
) -> impl EncodeReq + 'a {
    move |id, timeout_ms, stream| {
        if shared.peer_caps.contains(Caps::BINARY) {
            let head = || binary::req_head(action, timeout_ms, stream, from);
            if let Some(frame) = Outbound::binary_of(binary::Kind::Req, id, head, body) {
                return Ok(frame);
            }
        }
        codec::encode_req_parts(id, action, timeout_ms, stream, from, |buf| {
            serde_json::to_writer(buf, body)
        })
        .map(Outbound::Text)
    }
}

/// The frame of a request with a [`Body`].
fn body_req<'a>(
    shared: &'a Shared,
    action: &'a str,
    from: Option<&'a str>,
    body: &'a Body,
) -> impl EncodeReq + 'a {
    move |id, timeout_ms, stream| match body {
        Body::Json(raw) => raw_req(action, from, raw)(id, timeout_ms, stream),
        Body::Bytes(bytes) => typed_req(shared, action, from, bytes)(id, timeout_ms, stream),
    }
}

/// Starts the driver task of an authenticated connection.
///
/// However that task ends (the link closes, it panics, the runtime drops
/// it), the link ends with it: [`LinkHandle::closed`] returns, calls in
/// flight fail with `CONNECTION_CLOSED`, and hook tasks are cancelled.
/// Limits come from `config`, which the builders check with
/// [`LinkConfig::validate`]; timer values that skipped that check are
/// clamped, not trusted.
///
/// `make_peer` builds the value handed to hooks as [`crate::Call::peer`]; it
/// receives the link's handle so the peer value can call back over it.
/// `first`, when given, is written before anything else and never signed:
/// the server passes its `welcome` here, so the agent is registered before
/// it learns that it is.
pub fn spawn<S, P>(
    ws: WebSocketStream<S>,
    role: Role,
    config: LinkConfig,
    session: Option<&Session>,
    hooks: Hooks<P>,
    first: Option<&Frame>,
    make_peer: impl FnOnce(LinkHandle) -> P,
) -> (LinkHandle, P)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    P: Clone + Send + Sync + 'static,
{
    let counters = Arc::default();
    spawn_counted(ws, role, config, session, hooks, first, counters, make_peer)
}

/// Like [`spawn`], adding the link's calls and bytes to `counters`, which
/// a side shares between all its links.
#[allow(clippy::too_many_arguments)]
pub fn spawn_counted<S, P>(
    ws: WebSocketStream<S>,
    role: Role,
    config: LinkConfig,
    session: Option<&Session>,
    hooks: Hooks<P>,
    first: Option<&Frame>,
    counters: Arc<Counters>,
    make_peer: impl FnOnce(LinkHandle) -> P,
) -> (LinkHandle, P)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    P: Clone + Send + Sync + 'static,
{
    counters.opened();
    let (tx, rx) = mpsc::channel(config.write_queue.max(1));
    let budget = Budget::new(config.queued_bytes_limit());
    if let Some(frame) = first {
        let frame = Outbound::Unsigned(codec::encode(frame));
        budget.add(frame.bytes());
        // The queue is new and has room, so this cannot fail.
        let _ = tx.try_send(frame);
    }
    let signing = session.filter(|s| s.sign);
    let max_out = match signing {
        Some(_) => config.send_limit().saturating_sub(FRAME_OVERHEAD),
        None => config.send_limit(),
    };
    let shared = Arc::new(Shared {
        role,
        max_out,
        peer_caps: session.map_or(Caps::NONE, |s| s.caps),
        calls: Arc::new(Serving::default()),
        notes: Arc::new(Semaphore::new(config.max_in_flight)),
        dropped_notes: AtomicU64::new(0),
        outlets: parking_lot::Mutex::new(std::collections::HashMap::new()),
        serving: Arc::new(Semaphore::new(config.max_in_flight)),
        draining: std::sync::atomic::AtomicBool::new(false),
        config,
        counters,
        pending: Pending::default(),
        tx,
        close_request: parking_lot::Mutex::new(None),
        close_token: CancellationToken::new(),
        ended: watch::channel(None).0,
        end: CancellationToken::new(),
        stop: CancellationToken::new(),
        hook_tasks: TaskTracker::new(),
        budget,
        seen: AtomicU64::new(0),
        probing: AtomicUsize::new(0),
        seen_notify: Notify::new(),
    });
    let handle = LinkHandle {
        shared: Arc::clone(&shared),
    };
    let peer = make_peer(handle.clone());
    let (send_dir, recv_dir) = match role {
        Role::Server => (signed::SERVER_TO_AGENT, signed::AGENT_TO_SERVER),
        Role::Agent => (signed::AGENT_TO_SERVER, signed::SERVER_TO_AGENT),
    };
    let signer = signing.map(|s| Signer::new(s.key.clone(), send_dir));
    let verifier = signing.map(|s| Verifier::new(s.key.clone(), recv_dir));
    tokio::spawn(
        driver::run(ws, rx, shared, signer, verifier, hooks, peer.clone())
            .instrument(tracing::Span::current()),
    );
    (handle, peer)
}
