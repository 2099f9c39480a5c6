//! The caller's side of cancellation: the guard that every call holds while
//! it waits, and the [`CallHandle`] of a call that can be cancelled on
//! purpose.
//!
//! A call that ends without its outcome (its future dropped, its timeout
//! passed) after its `req` was queued sends `cancel {id}`, so the peer
//! stops the hook; the guard does it from `Drop`, without waiting. A call
//! whose outcome arrived, or whose `req` never left, sends nothing, nor
//! does one on a link that is down or to a peer without the `cancel`
//! capability (there the call is only forgotten here, as before
//! capabilities existed).
//!
//! A cancel frame is tiny and is counted in the link's byte budget like any
//! frame, even past its limit: every cancel follows a `req` that found room,
//! so they add at most a fraction of what those requests took. When the
//! write queue has no free slot at the moment of the drop, a small task
//! waits for one (it gives up when the link ends), so a cancel is never
//! lost while the link is up and the `req` it follows is always written
//! first.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;

use super::{Outbound, Shared};
use crate::caps::Caps;
use crate::codec;
use crate::error::Error;
use crate::frame::RequestId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Registered; the `req` is not queued.
    Unsent,
    /// The `req` is queued or written; no outcome yet.
    Sent,
    /// A cancel went out already, or cannot: dropping only forgets.
    Forget,
    /// The outcome arrived: the pending map no longer holds the call.
    Done,
}

/// Held by a call from its registration to its outcome.
pub(crate) struct CallGuard<'a> {
    shared: &'a Arc<Shared>,
    id: RequestId,
    state: State,
}

impl<'a> CallGuard<'a> {
    pub(crate) fn new(shared: &'a Arc<Shared>, id: RequestId) -> Self {
        CallGuard {
            shared,
            id,
            state: State::Unsent,
        }
    }

    /// The `req` is queued: from now on, giving up tells the peer.
    pub(crate) fn sent(&mut self) {
        self.state = State::Sent;
    }

    /// The outcome arrived.
    pub(crate) fn answered(&mut self) {
        self.state = State::Done;
    }

    /// An explicit cancel while the call waits: sends `cancel {id}` and
    /// keeps waiting for the peer's terminal `res`. False when the peer
    /// cannot be told (no capability, link down, `req` not sent): the call
    /// ends at once then.
    pub(crate) fn cancel_now(&mut self) -> bool {
        let told = self.state == State::Sent && send_cancel(self.shared, self.id);
        self.state = State::Forget;
        told
    }
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        match self.state {
            State::Done => {}
            State::Unsent | State::Forget => {
                self.shared.pending.forget(self.id);
            }
            State::Sent => {
                // Still in the map: no outcome arrived, so the peer may
                // still be serving it.
                if self.shared.pending.forget(self.id) {
                    send_cancel(self.shared, self.id);
                }
            }
        }
    }
}

/// Queues `cancel {id}` without waiting; true when it is (or will be) sent.
pub(crate) fn send_cancel(shared: &Arc<Shared>, id: RequestId) -> bool {
    if !shared.peer_caps.contains(Caps::CANCEL) {
        return false;
    }
    send_control(shared, Outbound::Text(codec::encode_cancel(id)))
}

/// Queues a small control frame (`cancel`, `credit`) without waiting; true
/// when it is (or will be) sent.
pub(crate) fn send_control(shared: &Arc<Shared>, frame: Outbound) -> bool {
    if shared.end.is_cancelled() {
        return false;
    }
    let bytes = frame.bytes();
    shared.budget.add(bytes);
    match shared.tx.try_send(frame) {
        Ok(()) => true,
        Err(TrySendError::Closed(_)) => {
            shared.budget.release(bytes);
            false
        }
        Err(TrySendError::Full(frame)) => match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let shared = Arc::clone(shared);
                runtime.spawn(async move {
                    let sent = tokio::select! {
                        biased;
                        _ = shared.end.cancelled() => false,
                        sent = shared.tx.send(frame) => sent.is_ok(),
                    };
                    if !sent {
                        shared.budget.release(bytes);
                    }
                });
                true
            }
            // No runtime: the link's own runtime is gone, and the link with it.
            Err(_) => {
                shared.budget.release(bytes);
                false
            }
        },
    }
}

/// A call that can be cancelled on purpose: a future of the call's result,
/// plus [`CallHandle::cancel`]. Made by
/// [`LinkHandle::call_cancellable`](super::LinkHandle::call_cancellable)
/// (and `Agent::send_cancellable`, `ServerHandle::send_cancellable`).
///
/// Like any future it does nothing until polled: await it, or spawn it.
/// Dropping it before its outcome cancels the call too (as dropping any
/// call's future does), without waiting for the peer.
///
/// After [`cancel`](CallHandle::cancel), the handle still resolves with the
/// call's one outcome, which is normally [`Error::Cancelled`] once the peer
/// confirmed that it stopped the hook (its `res` with `CANCELLED`). A hook
/// that asked to [keep running](crate::Call::keep_running) finishes instead,
/// and its real result is the outcome. A call not sent yet, or to a peer
/// without the `cancel` capability, ends at once with `Error::Cancelled`;
/// so does one whose timeout passes after the cancel.
///
/// ```no_run
/// # async fn demo(link: agent_protocol::LinkHandle, stop: tokio::sync::oneshot::Receiver<()>) {
/// use std::time::Duration;
/// let mut deploy = link.call_cancellable::<_, String>(
///     "deploy",
///     &"v2",
///     Duration::from_secs(600),
/// );
/// let outcome = tokio::select! {
///     outcome = &mut deploy => outcome,
///     _ = stop => {
///         // The operator gave up: ask the agent to stop, and wait until it did.
///         deploy.cancel();
///         deploy.await
///     }
/// };
/// match outcome {
///     Err(agent_protocol::Error::Cancelled) => println!("stopped"),
///     other => println!("deploy finished: {other:?}"),
/// }
/// # }
/// ```
#[must_use = "a call does nothing unless polled"]
pub struct CallHandle<R> {
    cancel: CancellationToken,
    fut: Pin<Box<dyn Future<Output = Result<R, Error>> + Send>>,
}

impl<R> CallHandle<R> {
    pub(crate) fn new(
        cancel: CancellationToken,
        fut: impl Future<Output = Result<R, Error>> + Send + 'static,
    ) -> Self {
        CallHandle {
            cancel,
            fut: Box::pin(fut),
        }
    }

    /// Cancels the call: the peer is told to stop its hook, and the handle
    /// resolves with the call's terminal outcome (see the type's docs).
    /// Calling it again does nothing more.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// True once [`cancel`](CallHandle::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// A handle that cancels this call from elsewhere (another task, an
    /// operator's "stop" button), while this handle is being awaited.
    ///
    /// ```no_run
    /// # async fn demo(link: agent_protocol::LinkHandle) {
    /// # use std::time::Duration;
    /// let call = link.call_cancellable::<_, ()>("tail", &"/var/log/app", Duration::from_secs(3600));
    /// let stop = call.canceller();
    /// tokio::spawn(async move { /* later */ stop.cancel() });
    /// let _ = call.await;
    /// # }
    /// ```
    pub fn canceller(&self) -> Canceller {
        Canceller(self.cancel.clone())
    }
}

impl<R> std::fmt::Debug for CallHandle<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallHandle")
            .field("cancelled", &self.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl<R> Future for CallHandle<R> {
    type Output = Result<R, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.fut.as_mut().poll(cx)
    }
}

/// Cancels the [`CallHandle`] it came from; cheap to clone. Cancelling a
/// call that has ended does nothing.
#[derive(Clone, Debug)]
pub struct Canceller(CancellationToken);

impl Canceller {
    /// Cancels the call (see [`CallHandle::cancel`]).
    pub fn cancel(&self) {
        self.0.cancel();
    }
}
