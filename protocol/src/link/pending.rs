//! The map of requests this side sent and still waits for, keyed by id.
//!
//! A request enters the map before its bytes go out; the reader completes it by
//! id; when the link ends every waiter fails at once with the link's reason. A
//! guard (in `outgoing`) removes an entry whose caller timed out or went
//! away, so a late response finds nothing and is dropped quietly.

use std::collections::HashMap;

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
    /// requests wait already. The caller's [`CallGuard`](super::outgoing::CallGuard)
    /// takes the entry out again if no outcome arrives.
    pub(crate) fn register(
        &self,
        limit: usize,
    ) -> Result<(RequestId, oneshot::Receiver<Reply>), Error> {
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
        Ok((id, rx))
    }

    /// Completes request `id`; false when nobody waits for it (any more).
    pub(crate) fn complete(&self, id: RequestId, reply: Reply) -> bool {
        let tx = self.state.lock().waiting.remove(&id);
        match tx {
            Some(tx) => tx.send(reply).is_ok(),
            None => false,
        }
    }

    /// Takes request `id` out of the map without an outcome (its caller
    /// gave up); true when it was still there, so no outcome had arrived.
    pub(crate) fn forget(&self, id: RequestId) -> bool {
        self.state.lock().waiting.remove(&id).is_some()
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
