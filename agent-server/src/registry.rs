//! The registry of connected agents, by name, and the events that report its
//! changes.
//!
//! A name is reserved while its handshake finishes and live once its link is
//! up. A live entry is added or removed together with its `AgentConnected` or
//! `AgentDisconnected` event, under the registry's lock, so the events for a
//! name arrive in the order the registry changed: the connection that gives
//! way is reported gone before the one that replaces it is reported in.
//! Whoever removes an entry reports it, so each connection is reported gone
//! exactly once; a link that ends removes only its own entry, so an agent
//! that already came back under the same name is never removed by its old
//! link.
//!
//! Shutdown closes the registry: from then on no agent is admitted, so none
//! can register after shutdown's sweep of the live agents and outlive it.
//!
//! Under the same lock the registry keeps the label index of the live
//! agents (`index`) and the callers waiting for agents (`waiters`), so a
//! selection, a count and a wait always agree with the registry, and no
//! waiter misses the change it waits for.

use std::collections::HashMap;
use std::sync::Arc;

use agent_protocol::labels::Labels;
use agent_protocol::selector::Selector;
use agent_protocol::{CloseReason, Error};
use parking_lot::RwLock;
use tokio::sync::broadcast;

use crate::agent::Agent;
use crate::events::ServerEvent;
use crate::index::LabelIndex;
use crate::waiters::{Ticket, Waiters};

enum Slot {
    Reserved,
    Live(Agent),
}

/// What the registry holds for a name.
pub(crate) enum Lookup {
    Live(Agent),
    Reserved,
    Absent,
}

/// Why a finished handshake was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The server is shutting down.
    Shutdown,
    /// The name was revoked while the handshake finished.
    Revoked,
}

struct State {
    slots: HashMap<String, Slot>,
    /// The live agents by label.
    index: LabelIndex,
    waiters: Waiters<Agent>,
    /// Set by shutdown: nothing is admitted any more.
    closed: bool,
}

/// What a wait finds: its answer now, or a ticket for a later one.
pub(crate) enum Wait<T> {
    Now(T),
    Later(WaitGuard, Ticket<T>),
}

pub(crate) struct Registry {
    state: RwLock<State>,
    events: broadcast::Sender<ServerEvent>,
}

impl Registry {
    /// A registry whose waiters are bounded by `max_waiters`.
    pub(crate) fn new(events: broadcast::Sender<ServerEvent>, max_waiters: usize) -> Arc<Self> {
        Arc::new(Registry {
            state: RwLock::new(State {
                slots: HashMap::new(),
                index: LabelIndex::default(),
                waiters: Waiters::new(max_waiters),
                closed: false,
            }),
            events,
        })
    }

    /// Reserves `name` for a handshake; `None` when it is taken. Dropping
    /// the reservation frees the name again.
    pub(crate) fn reserve(self: &Arc<Self>, name: &str) -> Option<Reservation> {
        let mut st = self.state.write();
        if st.slots.contains_key(name) {
            return None;
        }
        st.slots.insert(name.to_owned(), Slot::Reserved);
        Some(Reservation {
            registry: Arc::clone(self),
            name: name.to_owned(),
            armed: true,
        })
    }

    /// Turns a reservation into a live agent, unless the registry is closed
    /// or `is_revoked` says the name was revoked meanwhile; both are decided
    /// under the lock that shutdown and revocation's lookup take, so neither
    /// can miss an agent admitted here. `make` starts the agent's link from
    /// `input`, and gets `input` back untouched when the agent is refused.
    /// The `AgentConnected` event goes out before the lock is released.
    pub(crate) fn admit<T>(
        &self,
        mut reservation: Reservation,
        is_revoked: impl FnOnce(&str) -> bool,
        input: T,
        make: impl FnOnce(T) -> Agent,
    ) -> Result<Agent, (Refused, T)> {
        let mut st = self.state.write();
        // Freed or filled here, under the lock the guard's drop would take.
        reservation.armed = false;
        let name = reservation.name.as_str();
        let refused = if st.closed {
            Some(Refused::Shutdown)
        } else if is_revoked(name) {
            Some(Refused::Revoked)
        } else {
            None
        };
        if let Some(why) = refused {
            if matches!(st.slots.get(name), Some(Slot::Reserved)) {
                st.slots.remove(name);
            }
            return Err((why, input));
        }
        let agent = make(input);
        st.slots.insert(name.to_owned(), Slot::Live(agent.clone()));
        let labels = agent.labels();
        st.index.insert(name, &labels);
        st.waiters.admitted(name, &labels, &agent);
        let _ = self.events.send(ServerEvent::AgentConnected(agent.clone()));
        Ok(agent)
    }

    /// Removes `agent` if its entry is still this very connection, and
    /// reports it gone with `reason`; false when someone else removed it.
    pub(crate) fn remove(&self, agent: &Agent, reason: CloseReason) -> bool {
        let mut st = self.state.write();
        match st.slots.get(agent.name()) {
            Some(Slot::Live(a)) if a.same_connection(agent) => {
                st.slots.remove(agent.name());
                if let Some(labels) = st.index.remove(agent.name()) {
                    st.waiters.removed(agent.name(), &labels);
                }
                let _ = self
                    .events
                    .send(ServerEvent::AgentDisconnected(agent.clone(), reason));
                true
            }
            _ => false,
        }
    }

    /// Closes the registry for good: later handshakes are refused. `each`
    /// runs on every live agent under the lock, so none escapes it.
    /// Every waiter is answered with `SHUTDOWN`.
    pub(crate) fn close(&self, each: impl Fn(&Agent)) {
        let mut st = self.state.write();
        st.closed = true;
        st.waiters.close();
        for slot in st.slots.values() {
            if let Slot::Live(a) = slot {
                each(a);
            }
        }
    }

    pub(crate) fn get(&self, name: &str) -> Lookup {
        match self.state.read().slots.get(name) {
            Some(Slot::Live(a)) => Lookup::Live(a.clone()),
            Some(Slot::Reserved) => Lookup::Reserved,
            None => Lookup::Absent,
        }
    }

    /// Every live agent, sorted by name.
    pub(crate) fn live(&self) -> Vec<Agent> {
        let mut agents: Vec<Agent> = self
            .state
            .read()
            .slots
            .values()
            .filter_map(|s| match s {
                Slot::Live(a) => Some(a.clone()),
                Slot::Reserved => None,
            })
            .collect();
        agents.sort_by(|a, b| a.name().cmp(b.name()));
        agents
    }

    /// Number of names reserved by unfinished handshakes.
    pub(crate) fn reserved_count(&self) -> usize {
        self.state
            .read()
            .slots
            .values()
            .filter(|s| matches!(s, Slot::Reserved))
            .count()
    }

    /// The live agents `selector` selects, sorted by name.
    pub(crate) fn select(&self, selector: &Selector) -> Vec<Agent> {
        if selector.is_all() {
            return self.live();
        }
        let st = self.state.read();
        st.index
            .select(selector)
            .iter()
            .filter_map(|name| match st.slots.get(&**name) {
                Some(Slot::Live(a)) => Some(a.clone()),
                _ => None,
            })
            .collect()
    }

    /// How many live agents `selector` selects.
    pub(crate) fn count(&self, selector: &Selector) -> usize {
        self.state.read().index.count(selector)
    }

    /// Applies `change` to `agent`'s labels, keeping the index and the
    /// count waiters in step when it is the live connection of its name.
    /// `change` leaves the labels as they were when it fails.
    pub(crate) fn relabel<R>(
        &self,
        agent: &Agent,
        change: impl FnOnce(&mut Labels) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let mut st = self.state.write();
        let mut labels = agent.labels_lock();
        let old = labels.clone();
        let out = change(&mut labels)?;
        let live =
            matches!(st.slots.get(agent.name()), Some(Slot::Live(a)) if a.same_connection(agent));
        if live && *labels != old {
            st.index.update(agent.name(), &labels);
            st.waiters.relabelled(agent.name(), &old, &labels);
        }
        Ok(out)
    }

    /// The connected agent `name`, or a ticket to wait for it (bounded:
    /// `BUSY` past the limit; `SHUTDOWN` once closed). `is_revoked` is
    /// asked under the lock that revocation's [`Registry::fail_waiters`]
    /// takes, so a wait never outlives a revocation it raced with.
    pub(crate) fn wait_for(
        self: &Arc<Self>,
        name: &str,
        is_revoked: impl FnOnce(&str) -> bool,
    ) -> Result<Wait<Agent>, Error> {
        let mut st = self.state.write();
        if st.closed {
            return Err(Error::Shutdown);
        }
        if is_revoked(name) {
            return Err(Error::Revoked(name.to_owned()));
        }
        if let Some(Slot::Live(a)) = st.slots.get(name) {
            if a.is_connected() {
                return Ok(Wait::Now(a.clone()));
            }
        }
        let ticket = st.waiters.wait_name(name)?;
        let guard = WaitGuard {
            registry: Arc::clone(self),
            name: Some(name.to_owned()),
            id: ticket.id,
        };
        Ok(Wait::Later(guard, ticket))
    }

    /// How many live agents `selector` selects once that is `want` or more:
    /// now, or through a ticket, bounded like [`Registry::wait_for`].
    pub(crate) fn wait_for_count(
        self: &Arc<Self>,
        selector: &Selector,
        want: usize,
    ) -> Result<Wait<usize>, Error> {
        let mut st = self.state.write();
        if st.closed {
            return Err(Error::Shutdown);
        }
        let have = st.index.count(selector);
        if have >= want {
            return Ok(Wait::Now(have));
        }
        let ticket = st.waiters.wait_count(selector.clone(), want, have)?;
        let guard = WaitGuard {
            registry: Arc::clone(self),
            name: None,
            id: ticket.id,
        };
        Ok(Wait::Later(guard, ticket))
    }

    /// Answers every waiter for `name` with `error`.
    pub(crate) fn fail_waiters(&self, name: &str, error: &Error) {
        self.state.write().waiters.fail_name(name, error);
    }

    /// Callers waiting now.
    pub(crate) fn waiter_count(&self) -> usize {
        self.state.read().waiters.len()
    }

    /// Number of live agents.
    pub(crate) fn live_count(&self) -> usize {
        self.state
            .read()
            .slots
            .values()
            .filter(|s| matches!(s, Slot::Live(_)))
            .count()
    }
}

/// A name held for a handshake that has not finished; dropping it frees the
/// name, whoever drops it and whenever (a handshake given up at its
/// deadline, or a grant that finished after that).
pub(crate) struct Reservation {
    registry: Arc<Registry>,
    name: String,
    /// False once [`Registry::admit`] took the entry over.
    armed: bool,
}

impl Reservation {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Reservation").field(&self.name).finish()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut st = self.registry.state.write();
        if matches!(st.slots.get(&self.name), Some(Slot::Reserved)) {
            st.slots.remove(&self.name);
        }
    }
}

/// Takes a waiter out of the table when its caller stops waiting: at its
/// deadline, or when its future is dropped. Harmless after an answer.
pub(crate) struct WaitGuard {
    registry: Arc<Registry>,
    /// The name waited for; `None` for a count.
    name: Option<String>,
    id: u64,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        let mut st = self.registry.state.write();
        match &self.name {
            Some(name) => st.waiters.cancel_name(name, self.id),
            None => st.waiters.cancel_count(self.id),
        }
    }
}
