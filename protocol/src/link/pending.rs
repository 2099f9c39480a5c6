//! The map of requests this side sent and still waits for, keyed by id.
//!
//! A request enters the map before its bytes go out; the reader completes it by
//! id; when the link ends every waiter fails at once with the link's reason. A
//! guard removes an entry whose caller timed out or went away, so a late
//! response finds nothing and is dropped quietly.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use crate::close::CloseReason;
use crate::error::Error;
use crate::frame::RequestId;

/// What a waiting caller receives.
pub(crate) type Reply = Result<Box<RawValue>, Error>;

#[derive(Default)]
struct State {
    next_id: RequestId,
    waiting: HashMap<RequestId, oneshot::Sender<Reply>>,
    closed: Option<CloseReason>,
}

#[derive(Default)]
pub(crate) struct Pending {
    state: Mutex<State>,
}

impl Pending {
    /// Registers a new request, or refuses it: the link is closed, or `limit`
    /// requests wait already.
    pub(crate) fn register(
        self: &Arc<Self>,
        limit: usize,
    ) -> Result<(RequestId, oneshot::Receiver<Reply>, PendingGuard), Error> {
        let mut st = self.state.lock();
        if let Some(reason) = &st.closed {
            return Err(Error::ConnectionClosed(reason.clone()));
        }
        if st.waiting.len() >= limit {
            return Err(Error::Busy);
        }
        st.next_id = st.next_id.wrapping_add(1);
        let id = st.next_id;
        let (tx, rx) = oneshot::channel();
        st.waiting.insert(id, tx);
        Ok((
            id,
            rx,
            PendingGuard {
                pending: Some(Arc::clone(self)),
                id,
            },
        ))
    }

    /// Completes request `id`; false when nobody waits for it (any more).
    pub(crate) fn complete(&self, id: RequestId, reply: Reply) -> bool {
        let tx = self.state.lock().waiting.remove(&id);
        match tx {
            Some(tx) => tx.send(reply).is_ok(),
            None => false,
        }
    }

    /// Marks the link closed and fails every waiter with `reason`. Only the
    /// first reason counts; returns it.
    pub(crate) fn close(&self, reason: CloseReason) -> CloseReason {
        let (waiting, reason) = {
            let mut st = self.state.lock();
            let reason = st.closed.get_or_insert(reason).clone();
            (std::mem::take(&mut st.waiting), reason)
        };
        for (_, tx) in waiting {
            let _ = tx.send(Err(Error::ConnectionClosed(reason.clone())));
        }
        reason
    }

    /// The reason the link closed, once it has.
    pub(crate) fn closed(&self) -> Option<CloseReason> {
        self.state.lock().closed.clone()
    }

    /// How many requests wait.
    pub(crate) fn len(&self) -> usize {
        self.state.lock().waiting.len()
    }
}

/// Removes its request from the map when dropped (timeout, caller gone).
pub(crate) struct PendingGuard {
    pending: Option<Arc<Pending>>,
    id: RequestId,
}

impl PendingGuard {
    /// The request has its outcome, so the map no longer holds it: whoever
    /// sent the outcome took the entry out first.
    pub(crate) fn answered(&mut self) {
        self.pending = None;
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        if let Some(pending) = &self.pending {
            pending.state.lock().waiting.remove(&self.id);
        }
    }
}
