//! The registry of connected agents, by name.
//!
//! A name is reserved while its handshake finishes and live once its link is
//! up; a link that ends removes only its own entry, so an agent that already
//! came back under the same name is never removed by its old link.

use std::collections::HashMap;

use parking_lot::RwLock;

use crate::agent::Agent;

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

#[derive(Default)]
pub(crate) struct Registry {
    map: RwLock<HashMap<String, Slot>>,
}

impl Registry {
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.map.read().contains_key(name)
    }

    /// Reserves `name` for a handshake; false when it is taken.
    pub(crate) fn reserve(&self, name: &str) -> bool {
        let mut map = self.map.write();
        if map.contains_key(name) {
            return false;
        }
        map.insert(name.to_owned(), Slot::Reserved);
        true
    }

    /// Drops a reservation whose handshake failed.
    pub(crate) fn release(&self, name: &str) {
        let mut map = self.map.write();
        if matches!(map.get(name), Some(Slot::Reserved)) {
            map.remove(name);
        }
    }

    /// Turns a reservation into a live agent.
    pub(crate) fn activate(&self, agent: Agent) {
        self.map
            .write()
            .insert(agent.name().to_owned(), Slot::Live(agent));
    }

    /// Removes `agent`, if its entry is still this very connection.
    pub(crate) fn remove(&self, agent: &Agent) -> bool {
        let mut map = self.map.write();
        match map.get(agent.name()) {
            Some(Slot::Live(a)) if a.same_connection(agent) => {
                map.remove(agent.name());
                true
            }
            _ => false,
        }
    }

    pub(crate) fn get(&self, name: &str) -> Lookup {
        match self.map.read().get(name) {
            Some(Slot::Live(a)) => Lookup::Live(a.clone()),
            Some(Slot::Reserved) => Lookup::Reserved,
            None => Lookup::Absent,
        }
    }

    /// Every live agent, sorted by name.
    pub(crate) fn live(&self) -> Vec<Agent> {
        let mut agents: Vec<Agent> = self
            .map
            .read()
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
        self.map
            .read()
            .values()
            .filter(|s| matches!(s, Slot::Reserved))
            .count()
    }

    /// Number of live agents.
    pub(crate) fn live_count(&self) -> usize {
        self.map
            .read()
            .values()
            .filter(|s| matches!(s, Slot::Live(_)))
            .count()
    }
}
