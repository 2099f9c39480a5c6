//! The map of requests this side sent and still waits for, keyed by id.
//!
//! A request enters the map before its bytes go out; the reader completes it by
//! id; when the link ends every waiter fails at once with the link's reason. A
//! guard (in `outgoing`) removes an entry whose caller timed out or went
//! away, so a late response finds nothing and is dropped quietly.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use crate::body::Body;
use crate::close::CloseReason;
use crate::error::Error;
use crate::frame::RequestId;

use super::stream::Inbox;

/// What a waiting caller receives.
pub(crate) type Reply = Result<Body, Error>;

/// One request waiting for its outcome.
enum Waiter {
    /// A plain call: one outcome.
    Call(oneshot::Sender<Reply>),
    /// A streamed call: items, progress, then one outcome. It stays here
    /// after its caller went away, until its `res`, so that items still in
    /// flight are not taken for a protocol violation.
    Stream(Arc<Inbox>),
}

#[derive(Default)]
struct State {
    next_id: RequestId,
    waiting: HashMap<RequestId, Waiter>,
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
        st.waiting.insert(id, Waiter::Call(tx));
        Ok((id, rx))
    }

    /// Registers a streamed request, as [`Pending::register`] does.
    pub(crate) fn register_stream(
        &self,
        limit: usize,
        inbox: Arc<Inbox>,
    ) -> Result<RequestId, Error> {
        let mut st = self.state.lock();
        if let Some(reason) = &st.closed {
            return Err(Error::ConnectionClosed(reason.clone()));
        }
        if st.waiting.len() >= limit {
            return Err(Error::Busy);
        }
        st.next_id = st.next_id.wrapping_add(1);
        let id = st.next_id;
        st.waiting.insert(id, Waiter::Stream(inbox));
        Ok(id)
    }

    /// Completes request `id`; false when nobody waits for it (any more).
    pub(crate) fn complete(&self, id: RequestId, reply: Reply) -> bool {
        let tx = self.state.lock().waiting.remove(&id);
        match tx {
            Some(Waiter::Call(tx)) => tx.send(reply).is_ok(),
            Some(Waiter::Stream(inbox)) => {
                let seen = !inbox.abandoned();
                inbox.finish(reply);
                seen
            }
            None => false,
        }
    }

    /// An `item` for request `id`; an error is a protocol violation.
    pub(crate) fn item(&self, id: RequestId, body: Body) -> Result<(), String> {
        let inbox = match self.state.lock().waiting.get(&id) {
            Some(Waiter::Stream(inbox)) => Arc::clone(inbox),
            Some(Waiter::Call(_)) => {
                return Err(format!("item for request {id}, which is not streamed"))
            }
            None => return Err(format!("item for request {id}, unknown or ended")),
        };
        inbox.item(body)
    }

    /// A `prog` for request `id`: kept for a streamed request, ignored
    /// otherwise (progress is advisory).
    pub(crate) fn progress(&self, id: RequestId, body: Box<RawValue>) -> bool {
        let inbox = match self.state.lock().waiting.get(&id) {
            Some(Waiter::Stream(inbox)) => Arc::clone(inbox),
            _ => return false,
        };
        inbox.progress(body);
        true
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
        for (_, waiter) in waiting {
            let closed = Err(Error::ConnectionClosed(reason.clone()));
            match waiter {
                Waiter::Call(tx) => {
                    let _ = tx.send(closed);
                }
                Waiter::Stream(inbox) => inbox.finish(closed),
            }
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
