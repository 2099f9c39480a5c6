//! The requests of the peer this side serves on hook tasks, by id, each
//! with the cancellation token its hook sees as [`Call::cancelled`].
//!
//! Most hooks finish the moment they are first polled; those are answered
//! by the driver and never enter the table, and make no token: a hook's
//! [`Call`] only holds a reference to the table, its request id and a
//! serial number. A token is made on demand: when the request goes to a
//! hook task, or when the hook asks for it while it is first polled (the
//! table remembers the serial of that request, so a stale copy of an
//! earlier request's `Call` finds nothing).
//!
//! A `cancel {id}` cancels the token of the request(s) served under `id`;
//! the hook task then drops the hook and answers `CANCELLED`, unless the
//! hook asked to [keep running](Call::keep_running). A cancel that finds no
//! entry is ignored: the request was answered already (a bounded ring of
//! the most recently finished ids tells those apart for the log), or its id
//! was never served. Nothing here grows with what the peer sends: entries
//! exist only for hook tasks, which `max_in_flight` bounds.
//!
//! [`Call`]: crate::Call
//! [`Call::cancelled`]: crate::Call::cancelled
//! [`Call::keep_running`]: crate::Call::keep_running

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::stream::Outlet;
use crate::frame::RequestId;

/// How many recently finished ids a link remembers, to tell a late or
/// repeated cancel from one for an id never served (only for the log).
const RECENT: usize = 64;

#[derive(Default)]
struct Slot {
    /// Made on demand.
    token: Option<CancellationToken>,
    keep: bool,
}

impl Slot {
    fn token(&mut self) -> CancellationToken {
        self.token
            .get_or_insert_with(CancellationToken::new)
            .clone()
    }
}

struct Entry {
    slot: Slot,
    /// Requests served under this id at once (a peer that reuses an id in
    /// flight gets both served; one cancel cancels both).
    refs: u32,
    /// Tokens that hooks of such duplicates made in their first poll.
    others: Vec<CancellationToken>,
}

#[derive(Default)]
struct State {
    tasks: HashMap<RequestId, Entry>,
    /// The request being first polled, once its hook asked for its token
    /// or to keep running: (serial, slot).
    first: Option<(u64, Slot)>,
    recent: VecDeque<RequestId>,
}

/// The table of one link.
#[derive(Default)]
pub(crate) struct Serving {
    state: Mutex<State>,
    /// Serial of the request whose hook the driver polls for the first time
    /// (0: none). Only the driver writes it.
    first_serial: AtomicU64,
    /// Set when that hook touched its slot, so the driver locks only then.
    touched: AtomicBool,
    /// Last serial given; only the driver writes it.
    serial: AtomicU64,
}

/// What a cancel found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cancelled {
    /// A request being served: its token is cancelled now.
    Now,
    /// Cancelled already, or answered lately: nothing to do.
    Again,
    /// No request of that id is being served, nor was lately on a task.
    Unknown,
}

impl Serving {
    /// Opens the first poll of a new request `id` and returns what its
    /// `Call` holds. The driver calls [`Serving::first_done`] or
    /// [`Serving::to_task`] right after the poll.
    pub(crate) fn first_poll(
        self: &Arc<Self>,
        id: RequestId,
        outlet: Option<Arc<Outlet>>,
    ) -> CallCtl {
        let serial = self.serial.load(Ordering::Relaxed).wrapping_add(1).max(1);
        self.serial.store(serial, Ordering::Relaxed);
        self.first_serial.store(serial, Ordering::SeqCst);
        CallCtl::Req(Arc::clone(self), id, serial, outlet)
    }

    /// The first poll answered the request: nothing of it stays.
    pub(crate) fn first_done(&self) {
        self.first_serial.store(0, Ordering::SeqCst);
        // A load first: the common case, an untouched slot, takes no RMW.
        if self.touched.load(Ordering::SeqCst) && self.touched.swap(false, Ordering::SeqCst) {
            self.state.lock().first = None;
        }
    }

    /// The request goes on in a hook task: it enters the table, and the
    /// task watches the returned token. The task calls
    /// [`Serving::finish`] once its outcome is decided (or it is dropped).
    pub(crate) fn to_task(&self, id: RequestId) -> CancellationToken {
        self.first_serial.store(0, Ordering::SeqCst);
        let touched =
            self.touched.load(Ordering::SeqCst) && self.touched.swap(false, Ordering::SeqCst);
        let serial = self.serial.load(Ordering::Relaxed);
        let mut st = self.state.lock();
        let first = match st.first.take() {
            Some((s, slot)) if touched && s == serial => Some((s, slot)),
            _ => None,
        };
        let entry = st.tasks.entry(id).or_insert_with(|| Entry {
            slot: Slot::default(),
            refs: 0,
            others: Vec::new(),
        });
        entry.refs = entry.refs.saturating_add(1);
        if let Some((_, slot)) = first {
            // What the hook asked for during its first poll carries over.
            entry.slot.keep |= slot.keep;
            match (&entry.slot.token, slot.token) {
                (None, Some(token)) => entry.slot.token = Some(token),
                // A duplicate of an id in flight: cancelled together.
                (Some(served), Some(token)) => {
                    if served.is_cancelled() {
                        token.cancel();
                    }
                    entry.others.push(token);
                }
                (_, None) => {}
            }
        }
        entry.slot.token()
    }

    /// The hook task of `id` has decided its outcome, or was dropped.
    pub(crate) fn finish(&self, id: RequestId) {
        let mut st = self.state.lock();
        if let Some(entry) = st.tasks.get_mut(&id) {
            entry.refs = entry.refs.saturating_sub(1);
            if entry.refs == 0 {
                st.tasks.remove(&id);
                if st.recent.len() >= RECENT {
                    st.recent.pop_front();
                }
                st.recent.push_back(id);
            }
        }
    }

    /// A `cancel {id}` from the peer.
    pub(crate) fn cancel(&self, id: RequestId) -> Cancelled {
        let st = self.state.lock();
        match st.tasks.get(&id) {
            Some(entry) => match &entry.slot.token {
                Some(token) if token.is_cancelled() => Cancelled::Again,
                Some(token) => {
                    token.cancel();
                    entry.others.iter().for_each(CancellationToken::cancel);
                    Cancelled::Now
                }
                // `to_task` always makes the token.
                None => Cancelled::Again,
            },
            None if st.recent.contains(&id) => Cancelled::Again,
            None => Cancelled::Unknown,
        }
    }

    /// True when the hook of `id` asked to keep running through a cancel.
    pub(crate) fn keeps(&self, id: RequestId) -> bool {
        self.state
            .lock()
            .tasks
            .get(&id)
            .is_some_and(|e| e.slot.keep)
    }

    /// Requests in the table now.
    pub(crate) fn len(&self) -> usize {
        self.state.lock().tasks.len()
    }

    /// Runs `f` on the slot of the request (`id`, `serial`) while it is
    /// served; `None` once it is over.
    fn with_slot<R>(
        &self,
        id: RequestId,
        serial: u64,
        f: impl FnOnce(&mut Slot) -> R,
    ) -> Option<R> {
        let mut st = self.state.lock();
        if let Some(entry) = st.tasks.get_mut(&id) {
            return Some(f(&mut entry.slot));
        }
        // Marked before the serial is read: a driver that ends the first
        // poll meanwhile either sees the mark (and takes the slot, after
        // this lock) or this sees the poll over.
        self.touched.store(true, Ordering::SeqCst);
        if self.first_serial.load(Ordering::SeqCst) != serial {
            return None;
        }
        if !matches!(&st.first, Some((s, _)) if *s == serial) {
            st.first = Some((serial, Slot::default()));
        }
        let (_, slot) = st.first.as_mut()?;
        Some(f(slot))
    }
}

/// What a [`Call`](crate::Call) knows of its request, to see a cancel.
#[derive(Clone, Default)]
pub(crate) enum CallCtl {
    /// Not served by a link (`Hooks::dispatch`): never cancelled.
    #[default]
    Detached,
    /// A notification: it has no id, so it cannot be cancelled.
    Note,
    /// A request served by a link: its table, id and serial, and its
    /// outlet when the caller takes a streamed result.
    Req(Arc<Serving>, RequestId, u64, Option<Arc<Outlet>>),
}

impl std::fmt::Debug for CallCtl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallCtl::Detached => f.write_str("Detached"),
            CallCtl::Note => f.write_str("Note"),
            CallCtl::Req(_, id, _, _) => f.debug_tuple("Req").field(id).finish(),
        }
    }
}

impl CallCtl {
    pub(crate) fn is_note(&self) -> bool {
        matches!(self, CallCtl::Note)
    }

    /// The outlet of a streamed request.
    pub(crate) fn outlet(&self) -> Option<&Arc<Outlet>> {
        match self {
            CallCtl::Req(_, _, _, outlet) => outlet.as_ref(),
            _ => None,
        }
    }

    /// The request's token, while it is served.
    pub(crate) fn token(&self) -> Option<CancellationToken> {
        match self {
            CallCtl::Req(table, id, serial, _) => table.with_slot(*id, *serial, Slot::token),
            _ => None,
        }
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        match self {
            CallCtl::Req(table, id, serial, _) => table
                .with_slot(*id, *serial, |s| {
                    s.token
                        .as_ref()
                        .is_some_and(CancellationToken::is_cancelled)
                })
                .unwrap_or(false),
            _ => false,
        }
    }

    pub(crate) fn keep_running(&self) {
        if let CallCtl::Req(table, id, serial, _) = self {
            table.with_slot(*id, *serial, |s| s.keep = true);
        }
    }
}
