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

use std::collections::HashMap;
use std::sync::Arc;

use agent_protocol::CloseReason;
use parking_lot::RwLock;
use tokio::sync::broadcast;

use crate::agent::Agent;
use crate::events::ServerEvent;

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

#[derive(Default)]
struct State {
    slots: HashMap<String, Slot>,
    /// Set by shutdown: nothing is admitted any more.
    closed: bool,
}

pub(crate) struct Registry {
    state: RwLock<State>,
    events: broadcast::Sender<ServerEvent>,
}

impl Registry {
    pub(crate) fn new(events: broadcast::Sender<ServerEvent>) -> Arc<Self> {
        Arc::new(Registry {
            state: RwLock::default(),
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
    pub(crate) fn close(&self, each: impl Fn(&Agent)) {
        let mut st = self.state.write();
        st.closed = true;
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
