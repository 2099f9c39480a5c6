//! Streamed results (capability `stream`, `docs/PROTOCOL.md` 5.11): the
//! caller's [`CallStream`] and its inbox, and the serving side's outlet
//! behind [`Call::progress`](crate::Call::progress) and
//! [`Call::stream`](crate::Call::stream).
//!
//! Flow control is by credit, counted in items: the `req` grants the first
//! [`StreamOptions::credit`] items, the caller tops credit up as its
//! consumer takes items (by half the initial credit at a time), and the
//! serving side's [`ItemSink::send`] waits while no credit is left. So the
//! caller buffers at most `credit` items, and the producer waits instead of
//! growing anything. A peer that sends an item beyond its credit, or for a
//! request that is not streaming, breaks the protocol (close 4000).
//!
//! Progress is not credited: a caller keeps only the latest progress value
//! it has not yet yielded, and a producer whose link queue is full drops
//! it, so neither side grows with it.

use std::collections::VecDeque;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::Stream;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::outgoing::{send_cancel, send_control};
use super::{Outbound, Shared};
use crate::binary;
use crate::body::Body;
use crate::caps::Caps;
use crate::codec;
use crate::error::{codes, Error};
use crate::frame::{RequestId, MAX_CREDIT};

/// Default initial credit of a stream, in items.
pub const DEFAULT_CREDIT: u32 = 32;

/// How a streamed call is made: its timeout, and its flow control.
///
/// By default the timeout covers the whole call, from the `req` to the
/// final result. With [`StreamOptions::idle_timeout`] it does not: the call
/// then fails only when no event (item, progress, or the end) arrives for
/// that long, and the `req` carries no `timeout_ms`, so the serving side
/// bounds the hook with its own `max_hook_time` alone.
///
/// ```
/// use std::time::Duration;
/// use agent_protocol::StreamOptions;
/// let opts = StreamOptions::new(Duration::from_secs(600))
///     .credit(64)
///     .idle_timeout(Duration::from_secs(30));
/// assert_eq!(opts.initial_credit(), 64);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamOptions {
    timeout: Duration,
    idle: Option<Duration>,
    credit: u32,
}

impl StreamOptions {
    /// A whole-call `timeout`, with [`DEFAULT_CREDIT`] items of credit and
    /// no idle timeout.
    #[must_use]
    pub fn new(timeout: Duration) -> Self {
        StreamOptions {
            timeout,
            idle: None,
            credit: DEFAULT_CREDIT,
        }
    }

    /// Items the peer may send ahead of the consumer (default
    /// [`DEFAULT_CREDIT`]; clamped to 1 to [`MAX_CREDIT`]). The caller
    /// buffers at most this many items, each at most `max_message_bytes`.
    #[must_use]
    pub fn credit(mut self, credit: u32) -> Self {
        self.credit = credit.clamp(1, MAX_CREDIT);
        self
    }

    /// Replaces the whole-call timeout (default: none) by one between two
    /// events of the stream.
    #[must_use]
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle = Some(idle);
        self
    }

    /// The initial credit.
    pub fn initial_credit(&self) -> u32 {
        self.credit
    }

    /// The whole-call timeout given to [`StreamOptions::new`] (what bounds
    /// the wait for a connection, even with an idle timeout).
    pub fn whole_timeout(&self) -> Duration {
        self.timeout
    }

    /// The idle timeout, when one replaces the whole-call timeout.
    pub fn idle(&self) -> Option<Duration> {
        self.idle
    }

    /// What `req.timeout_ms` says: the whole-call timeout, or nothing with
    /// an idle timeout.
    pub(crate) fn wire_timeout(&self) -> Option<u64> {
        match self.idle {
            Some(_) => None,
            None => Some(u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX)),
        }
    }

    fn window(&self) -> Duration {
        self.idle.unwrap_or(self.timeout)
    }

    /// How long the `req` may wait for room in the queue.
    pub(crate) fn initial_window(&self) -> Duration {
        self.window()
    }
}

/// One event of a [`CallStream`].
#[derive(Debug, Clone)]
pub enum Event<T, R> {
    /// The latest progress the handler reported (earlier values it
    /// reported while the consumer was busy are coalesced into this one).
    Progress(Box<RawValue>),
    /// The next item, in the order the handler sent them.
    Item(T),
    /// The final result; the stream ends after it.
    End(R),
}

#[derive(Default)]
struct InboxState {
    items: VecDeque<Body>,
    progress: Option<Box<RawValue>>,
    outcome: Option<Result<Body, Error>>,
    /// Items the peer may still send.
    allowed: u32,
    /// The caller went away: items are discarded until the `res`.
    dropped: bool,
    peak: usize,
    waker: Option<Waker>,
}

/// What the reader fills for one streamed call.
#[derive(Default)]
pub(crate) struct Inbox {
    state: Mutex<InboxState>,
}

impl Inbox {
    pub(crate) fn new(credit: u32) -> Self {
        Inbox {
            state: Mutex::new(InboxState {
                allowed: credit,
                ..InboxState::default()
            }),
        }
    }

    fn wake(st: &mut InboxState) {
        if let Some(w) = st.waker.take() {
            w.wake();
        }
    }

    /// An `item` frame; an error is a protocol violation.
    pub(crate) fn item(&self, body: Body) -> Result<(), String> {
        let mut st = self.state.lock();
        if st.dropped {
            return Ok(());
        }
        if st.allowed == 0 {
            return Err("item beyond the stream's credit".into());
        }
        st.allowed -= 1;
        st.items.push_back(body);
        st.peak = st.peak.max(st.items.len());
        Self::wake(&mut st);
        Ok(())
    }

    /// A `prog` frame: only the latest is kept.
    pub(crate) fn progress(&self, body: Box<RawValue>) {
        let mut st = self.state.lock();
        if !st.dropped {
            st.progress = Some(body);
            Self::wake(&mut st);
        }
    }

    /// The terminal `res`, or the link's end.
    pub(crate) fn finish(&self, reply: Result<Body, Error>) {
        let mut st = self.state.lock();
        st.outcome = Some(reply);
        Self::wake(&mut st);
    }

    /// True once the caller went away.
    pub(crate) fn abandoned(&self) -> bool {
        self.state.lock().dropped
    }

    /// The caller went away; true when it had not seen the outcome.
    pub(crate) fn abandon(&self) -> bool {
        let mut st = self.state.lock();
        st.dropped = true;
        st.items.clear();
        st.progress = None;
        st.outcome.is_none()
    }
}

/// The streamed result of a call: a [`Stream`] of [`Event`]s (progress,
/// items of type `T`, and finally [`Event::End`] with the result `R`), or
/// one error, after which it ends. Made by
/// [`LinkHandle::call_stream`](super::LinkHandle::call_stream) and
/// [`LinkHandle::request_stream`](super::LinkHandle::request_stream).
///
/// Dropping it before the end cancels the request at the peer (as dropping
/// any call does); items in flight are discarded. An item that does not
/// decode as `T` ends the stream with `INVALID_MESSAGE` and cancels the
/// request. The caller's timeout is described at [`StreamOptions`]; a
/// remote error, sent after some items, arrives after those items.
///
/// ```no_run
/// # async fn demo(link: agent_protocol::LinkHandle) -> Result<(), agent_protocol::Error> {
/// use futures_util::StreamExt;
/// use agent_protocol::{Event, StreamOptions};
/// use std::time::Duration;
/// let mut lines = link
///     .call_stream::<_, String, u64>("tail", &"/var/log/app", StreamOptions::new(Duration::from_secs(60)))
///     .await?;
/// while let Some(event) = lines.next().await {
///     match event? {
///         Event::Progress(p) => println!("progress {p}"),
///         Event::Item(line) => println!("{line}"),
///         Event::End(count) => println!("{count} lines"),
///     }
/// }
/// # Ok(()) }
/// ```
#[must_use = "a stream does nothing unless polled"]
pub struct CallStream<T, R> {
    shared: Arc<Shared>,
    id: RequestId,
    inbox: Arc<Inbox>,
    opts: StreamOptions,
    /// Items taken since credit was last granted.
    taken: u32,
    deadline: Pin<Box<tokio::time::Sleep>>,
    done: bool,
    _types: PhantomData<fn() -> (T, R)>,
}

impl<T, R> std::fmt::Debug for CallStream<T, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallStream")
            .field("id", &self.id)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<T, R> CallStream<T, R> {
    pub(crate) fn new(
        shared: Arc<Shared>,
        id: RequestId,
        inbox: Arc<Inbox>,
        opts: StreamOptions,
    ) -> Self {
        CallStream {
            shared,
            id,
            inbox,
            opts,
            taken: 0,
            deadline: Box::pin(tokio::time::sleep_until(crate::time::deadline_in(
                opts.window(),
            ))),
            done: false,
            _types: PhantomData,
        }
    }

    /// Items received and not yet taken by the consumer (at most the
    /// initial credit).
    pub fn buffered(&self) -> usize {
        self.inbox.state.lock().items.len()
    }

    /// The most items this stream ever held buffered: never more than its
    /// initial credit. For tests and diagnostics.
    pub fn peak_buffered(&self) -> usize {
        self.inbox.state.lock().peak
    }

    /// The request id on the wire, for diagnostics.
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// Grants the peer the items taken since the last grant, once they are
    /// half the initial credit (or the whole credit of 1).
    fn grant(&mut self) {
        self.taken += 1;
        let step = (self.opts.credit / 2).max(1);
        if self.taken >= step {
            let n = std::mem::take(&mut self.taken);
            self.inbox.state.lock().allowed += n;
            send_control(
                &self.shared,
                Outbound::Text(codec::encode_credit(self.id, n)),
            );
        }
    }

    /// The `req` never went out: the entry goes, nothing is sent.
    pub(crate) fn unsent(&mut self) {
        self.done = true;
        self.inbox.abandon();
        self.shared.pending.forget(self.id);
    }

    fn end(&mut self) {
        self.done = true;
        if self.inbox.abandon() {
            send_cancel(&self.shared, self.id);
        }
    }
}

impl<T: DeserializeOwned, R: DeserializeOwned> CallStream<T, R> {
    /// Waits for the final result, discarding items and progress.
    pub async fn outcome(mut self) -> Result<R, Error> {
        use futures_util::StreamExt;
        while let Some(event) = self.next().await {
            if let Event::End(r) = event? {
                return Ok(r);
            }
        }
        Err(Error::Cancelled)
    }
}

impl<T: DeserializeOwned, R: DeserializeOwned> Stream for CallStream<T, R> {
    type Item = Result<Event<T, R>, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        enum Got {
            Progress(Box<RawValue>),
            Item(Body),
            End(Result<Body, Error>),
        }
        let got = {
            let mut st = this.inbox.state.lock();
            if let Some(p) = st.progress.take() {
                Some(Got::Progress(p))
            } else if let Some(item) = st.items.pop_front() {
                Some(Got::Item(item))
            } else if let Some(outcome) = st.outcome.take() {
                Some(Got::End(outcome))
            } else {
                st.waker = Some(cx.waker().clone());
                None
            }
        };
        let event = match got {
            Some(Got::Progress(p)) => Ok(Event::Progress(p)),
            Some(Got::Item(body)) => {
                this.grant();
                match body.decode() {
                    Ok(item) => Ok(Event::Item(item)),
                    Err(e) => {
                        this.end();
                        Err(Error::InvalidMessage(format!("stream item: {e}")))
                    }
                }
            }
            Some(Got::End(outcome)) => {
                this.done = true;
                match outcome {
                    Ok(body) => body
                        .decode()
                        .map(Event::End)
                        .map_err(|e| Error::InvalidMessage(format!("stream result: {e}"))),
                    Err(Error::Remote(e)) if e.code == codes::CANCELLED => Err(Error::Cancelled),
                    Err(e) => Err(e),
                }
            }
            None => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    this.end();
                    return Poll::Ready(Some(Err(Error::Timeout(this.opts.window()))));
                }
                return Poll::Pending;
            }
        };
        if this.opts.idle.is_some() {
            let next = crate::time::deadline_in(this.opts.window());
            this.deadline.as_mut().reset(next);
        }
        Poll::Ready(Some(event))
    }
}

impl<T, R> Drop for CallStream<T, R> {
    fn drop(&mut self) {
        if !self.done {
            self.end();
        }
    }
}

/// The serving side of one streamed request.
pub(crate) struct Outlet {
    shared: Weak<Shared>,
    id: RequestId,
    credit: Semaphore,
    /// The request's outcome is decided: nothing more may be sent.
    done: AtomicBool,
    /// Held while an item is queued, so the terminal `res` follows every
    /// item sent before the outcome was decided.
    order: tokio::sync::Mutex<()>,
    token: OnceLock<CancellationToken>,
}

impl Outlet {
    pub(crate) fn new(shared: &Arc<Shared>, id: RequestId, credit: u32) -> Self {
        Outlet {
            shared: Arc::downgrade(shared),
            id,
            credit: Semaphore::new(credit as usize),
            done: AtomicBool::new(false),
            order: tokio::sync::Mutex::new(()),
            token: OnceLock::new(),
        }
    }

    pub(crate) fn set_token(&self, token: CancellationToken) {
        let _ = self.token.set(token);
    }

    /// A `credit {id, n}` from the caller; an error is a violation.
    pub(crate) fn grant(&self, n: u32) -> Result<(), String> {
        let now = self.credit.available_permits();
        if n == 0 || now.saturating_add(n as usize) > MAX_CREDIT as usize {
            return Err(format!("credit of {n} overflows the stream's credit"));
        }
        self.credit.add_permits(n as usize);
        Ok(())
    }

    /// The outcome is decided: waits for an item being queued, then lets
    /// no more through.
    pub(crate) async fn close(&self) {
        let _order = self.order.lock().await;
        self.done.store(true, Ordering::Release);
        self.credit.close();
        if let Some(shared) = self.shared.upgrade() {
            shared.outlets.lock().remove(&self.id);
        }
    }

    fn progress(&self, write: impl FnOnce(&mut Vec<u8>) -> Result<(), serde_json::Error>) -> bool {
        if self.done.load(Ordering::Acquire) {
            return false;
        }
        let Some(shared) = self.shared.upgrade() else {
            return false;
        };
        let Ok(text) = codec::encode_item_with("prog", self.id, write) else {
            return false;
        };
        if text.len() > shared.max_out || shared.budget.is_full() {
            return false;
        }
        let frame = Outbound::Text(text);
        let bytes = frame.bytes();
        shared.budget.add(bytes);
        if shared.tx.try_send(frame).is_err() {
            shared.budget.release(bytes);
            return false;
        }
        true
    }

    async fn send<T: Serialize + ?Sized>(&self, item: &T) -> Result<(), Error> {
        let shared = self
            .shared
            .upgrade()
            .ok_or_else(|| Error::InvalidMessage("the link is gone".into()))?;
        let binary = match shared.peer_caps.contains(Caps::BINARY) {
            true => Outbound::binary_of(binary::Kind::Item, self.id, Vec::new, item),
            false => None,
        };
        let frame = match binary {
            Some(frame) => frame,
            None => {
                codec::encode_item_with("item", self.id, |buf| serde_json::to_writer(buf, item))
                    .map(Outbound::Text)
                    .map_err(|e| Error::InvalidMessage(format!("stream item: {e}")))?
            }
        };
        if frame.bytes() > shared.max_out {
            return Err(Error::InvalidMessage(format!(
                "stream item of {} bytes exceeds the message limit of {}",
                frame.bytes(),
                shared.max_out
            )));
        }
        let cancelled = async {
            match self.token.get() {
                Some(t) => t.cancelled().await,
                None => std::future::pending().await,
            }
        };
        let ended = || {
            Error::ConnectionClosed(shared.pending_closed().unwrap_or_else(|| {
                crate::close::CloseReason::local(crate::close::ABNORMAL, "link stopped")
            }))
        };
        let permit = tokio::select! {
            biased;
            _ = shared.end.cancelled() => return Err(ended()),
            _ = cancelled => return Err(Error::Cancelled),
            permit = self.credit.acquire() => permit.map_err(|_| Error::Cancelled)?,
        };
        permit.forget();
        let _order = self.order.lock().await;
        if self.done.load(Ordering::Acquire) {
            return Err(Error::Cancelled);
        }
        let Some(room) = shared.budget.reserve(frame.bytes(), &shared.end).await else {
            return Err(ended());
        };
        if shared.tx.send(frame).await.is_err() {
            return Err(ended());
        }
        room.queued();
        Ok(())
    }
}

/// A handler's sink for the items of its streamed result, from
/// [`Call::stream`](crate::Call::stream). Items of type `T` go out in the
/// order sent, each as one `item` frame; [`ItemSink::send`] waits while
/// the caller's credit is spent, so a slow consumer slows the handler.
///
/// For a request that did not ask to stream (a plain call, a notification,
/// a call outside a link) items are discarded and `send` returns at once:
/// such a caller gets only the final result.
///
/// ```no_run
/// # use agent_protocol::{Hooks, HookError};
/// # let hooks: Hooks<()> = Hooks::new();
/// hooks.on_hook("count", |n: u64, call| async move {
///     let mut items = call.stream::<u64>();
///     for i in 0..n {
///         call.progress(&(i * 100 / n.max(1)));
///         items.send(&i).await.map_err(|e| HookError::new("STREAM", e.to_string()))?;
///     }
///     Ok::<_, HookError>(n)
/// });
/// ```
pub struct ItemSink<T: ?Sized> {
    outlet: Option<Arc<Outlet>>,
    _types: PhantomData<fn(&T)>,
}

impl<T: ?Sized> std::fmt::Debug for ItemSink<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ItemSink")
            .field("streaming", &self.is_streaming())
            .finish()
    }
}

impl<T: ?Sized> ItemSink<T> {
    pub(crate) fn new(outlet: Option<Arc<Outlet>>) -> Self {
        ItemSink {
            outlet,
            _types: PhantomData,
        }
    }

    /// True when the caller takes a streamed result, so items reach it.
    pub fn is_streaming(&self) -> bool {
        self.outlet.is_some()
    }
}

impl<T: Serialize + ?Sized> ItemSink<T> {
    /// Sends one item, waiting for credit and for room in the link's queue.
    /// Fails with `CANCELLED` once the caller cancelled (or dropped its
    /// stream) or the request's outcome is decided, `CONNECTION_CLOSED` when
    /// the link ends, and `INVALID_MESSAGE` for an item that does not
    /// serialize or exceeds the message limit.
    pub async fn send(&mut self, item: &T) -> Result<(), Error> {
        match &self.outlet {
            Some(outlet) => outlet.send(item).await,
            None => Ok(()),
        }
    }
}

/// [`Call::progress`](crate::Call::progress).
pub(crate) fn progress<T: Serialize + ?Sized>(outlet: Option<&Arc<Outlet>>, value: &T) -> bool {
    outlet.is_some_and(|o| o.progress(|buf| serde_json::to_writer(buf, value)))
}
