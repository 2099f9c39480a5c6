//! Callers waiting for the fleet to change: for an agent of a name to
//! connect (`wait_for`, calls `when_online`), or for a selector to select
//! enough agents (`wait_for_count`).
//!
//! The table lives under the registry's lock and is told of every change
//! the registry makes (an agent admitted or removed, its labels changed),
//! so a waiter registered under that lock can never miss the change it
//! waits for. A count waiter keeps a running count of the agents its
//! selector selects, set from the index when it registers and moved by
//! each change, so no change ever recounts the fleet.
//!
//! The table is bounded: past its limit a new waiter is refused with
//! `BUSY`. Each waiter leaves it when it is answered, when its caller stops
//! waiting (deadline or drop: its guard cancels it), or at shutdown, which
//! answers every waiter with `SHUTDOWN` and refuses new ones.

use std::collections::HashMap;

use agent_protocol::labels::Labels;
use agent_protocol::selector::Selector;
use agent_protocol::Error;
use tokio::sync::oneshot;

/// What a waiter is answered with.
pub(crate) type Answer<T> = Result<T, Error>;

/// A waiter for a name: its id and where its answer goes.
type NameWaiter<T> = (u64, oneshot::Sender<Answer<T>>);

struct CountWaiter {
    selector: Selector,
    want: usize,
    have: usize,
    tx: oneshot::Sender<Answer<usize>>,
}

/// The waiters, generic over the agent handle so the table is tested alone.
pub(crate) struct Waiters<T> {
    limit: usize,
    next_id: u64,
    closed: bool,
    /// Name → the waiters for it, by id.
    by_name: HashMap<String, Vec<NameWaiter<T>>>,
    /// Id → a waiter for a count.
    counts: HashMap<u64, CountWaiter>,
    len: usize,
}

/// What registering a waiter gives: its id (to cancel it) and where its
/// answer arrives.
pub(crate) struct Ticket<A> {
    pub(crate) id: u64,
    pub(crate) rx: oneshot::Receiver<Answer<A>>,
}

impl<T: Clone> Waiters<T> {
    pub(crate) fn new(limit: usize) -> Self {
        Waiters {
            limit,
            next_id: 0,
            closed: false,
            by_name: HashMap::new(),
            counts: HashMap::new(),
            len: 0,
        }
    }

    /// Waiters registered and not yet answered.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn admit_one(&mut self) -> Result<u64, Error> {
        if self.closed {
            return Err(Error::Shutdown);
        }
        if self.len >= self.limit {
            return Err(Error::Busy);
        }
        self.next_id += 1;
        self.len += 1;
        Ok(self.next_id)
    }

    /// Registers a wait for the agent `name` to connect. The caller checked,
    /// under the same lock, that it is not connected now.
    pub(crate) fn wait_name(&mut self, name: &str) -> Result<Ticket<T>, Error> {
        let id = self.admit_one()?;
        let (tx, rx) = oneshot::channel();
        self.by_name
            .entry(name.to_owned())
            .or_default()
            .push((id, tx));
        Ok(Ticket { id, rx })
    }

    /// Registers a wait for `selector` to select `want` agents; `have` is
    /// how many it selects now (fewer than `want`), counted under the same
    /// lock.
    pub(crate) fn wait_count(
        &mut self,
        selector: Selector,
        want: usize,
        have: usize,
    ) -> Result<Ticket<usize>, Error> {
        let id = self.admit_one()?;
        let (tx, rx) = oneshot::channel();
        self.counts.insert(
            id,
            CountWaiter {
                selector,
                want,
                have,
                tx,
            },
        );
        Ok(Ticket { id, rx })
    }

    /// Forgets the count waiter `id` (its caller stopped waiting). Nothing
    /// happens when it was answered already.
    pub(crate) fn cancel_count(&mut self, id: u64) {
        if self.counts.remove(&id).is_some() {
            self.len -= 1;
        }
    }

    /// Forgets the waiter `id` for `name`, like [`Self::cancel_count`].
    pub(crate) fn cancel_name(&mut self, name: &str, id: u64) {
        let Some(list) = self.by_name.get_mut(name) else {
            return;
        };
        if let Some(i) = list.iter().position(|(w, _)| *w == id) {
            list.swap_remove(i);
            self.len -= 1;
        }
        if list.is_empty() {
            self.by_name.remove(name);
        }
    }

    /// The agent `name` with `labels` was admitted as `agent`.
    pub(crate) fn admitted(&mut self, name: &str, labels: &Labels, agent: &T) {
        if let Some(list) = self.by_name.remove(name) {
            self.len -= list.len();
            for (_, tx) in list {
                // A waiter that gave up meanwhile dropped its receiver: fine.
                let _ = tx.send(Ok(agent.clone()));
            }
        }
        if self.counts.is_empty() {
            return;
        }
        for w in self.counts.values_mut() {
            if w.selector.matches(name, labels) {
                w.have += 1;
            }
        }
        self.answer_reached();
    }

    /// The agent `name` with `labels` left.
    pub(crate) fn removed(&mut self, name: &str, labels: &Labels) {
        for w in self.counts.values_mut() {
            if w.selector.matches(name, labels) {
                w.have = w.have.saturating_sub(1);
            }
        }
    }

    /// The labels of the connected agent `name` changed from `old` to `new`.
    pub(crate) fn relabelled(&mut self, name: &str, old: &Labels, new: &Labels) {
        if self.counts.is_empty() {
            return;
        }
        for w in self.counts.values_mut() {
            match (w.selector.matches(name, old), w.selector.matches(name, new)) {
                (false, true) => w.have += 1,
                (true, false) => w.have = w.have.saturating_sub(1),
                _ => {}
            }
        }
        self.answer_reached();
    }

    /// Answers the count waiters that reached their target.
    fn answer_reached(&mut self) {
        let reached: Vec<u64> = self
            .counts
            .iter()
            .filter(|(_, w)| w.have >= w.want)
            .map(|(id, _)| *id)
            .collect();
        for id in reached {
            if let Some(w) = self.counts.remove(&id) {
                self.len -= 1;
                let _ = w.tx.send(Ok(w.have));
            }
        }
    }

    /// Answers every waiter for `name` with `error` (the name was revoked).
    pub(crate) fn fail_name(&mut self, name: &str, error: &Error) {
        if let Some(list) = self.by_name.remove(name) {
            self.len -= list.len();
            for (_, tx) in list {
                let _ = tx.send(Err(error.clone()));
            }
        }
    }

    /// Shutdown: answers every waiter with `SHUTDOWN` and refuses new ones.
    pub(crate) fn close(&mut self) {
        self.closed = true;
        for (_, list) in self.by_name.drain() {
            for (_, tx) in list {
                let _ = tx.send(Err(Error::Shutdown));
            }
        }
        for (_, w) in self.counts.drain() {
            let _ = w.tx.send(Err(Error::Shutdown));
        }
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(s: &str) -> Selector {
        s.parse().unwrap()
    }

    fn labels(s: &str) -> Labels {
        s.parse().unwrap()
    }

    #[test]
    fn a_name_waiter_gets_the_agent_that_connects() {
        let mut w: Waiters<String> = Waiters::new(8);
        let mut a = w.wait_name("A1").unwrap();
        let mut b = w.wait_name("A1").unwrap();
        let mut other = w.wait_name("A2").unwrap();
        assert_eq!(w.len(), 3);
        w.admitted("A1", &Labels::new(), &"handle-1".to_string());
        assert_eq!(a.rx.try_recv().unwrap().unwrap(), "handle-1");
        assert_eq!(b.rx.try_recv().unwrap().unwrap(), "handle-1");
        assert!(other.rx.try_recv().is_err());
        assert_eq!(w.len(), 1);
        w.cancel_name("A2", other.id);
        assert_eq!(w.len(), 0);
        assert!(w.by_name.is_empty());
    }

    #[test]
    fn count_waiters_follow_admits_removals_and_label_changes() {
        let mut w: Waiters<String> = Waiters::new(8);
        let mut t = w.wait_count(sel("role=db"), 2, 0).unwrap();
        let h = String::new();
        w.admitted("A1", &labels("role=web"), &h);
        w.admitted("A2", &labels("role=db"), &h);
        w.removed("A2", &labels("role=db"));
        w.admitted("A3", &labels("role=db"), &h);
        assert!(t.rx.try_recv().is_err(), "one of two");
        w.relabelled("A1", &labels("role=web"), &labels("role=db"));
        assert_eq!(t.rx.try_recv().unwrap().unwrap(), 2);
        assert_eq!(w.len(), 0);

        // A label change away counts down.
        let mut t = w.wait_count(sel("role=db"), 3, 2).unwrap();
        w.relabelled("A1", &labels("role=db"), &labels("role=web"));
        w.admitted("A4", &labels("role=db"), &h);
        assert!(t.rx.try_recv().is_err());
        w.admitted("A5", &labels("role=db"), &h);
        assert_eq!(t.rx.try_recv().unwrap().unwrap(), 3);
    }

    #[test]
    fn the_table_is_bounded_and_shutdown_answers_everyone() {
        let mut w: Waiters<String> = Waiters::new(2);
        let mut a = w.wait_name("A1").unwrap();
        let mut b = w.wait_count(sel("x"), 1, 0).unwrap();
        assert!(matches!(w.wait_name("A2"), Err(Error::Busy)));
        // A cancelled waiter frees its place.
        w.cancel_name("A1", a.id);
        let mut a = {
            let _ = a.rx.try_recv();
            w.wait_name("A1").unwrap()
        };
        w.close();
        assert!(matches!(a.rx.try_recv().unwrap(), Err(Error::Shutdown)));
        assert!(matches!(b.rx.try_recv().unwrap(), Err(Error::Shutdown)));
        assert!(matches!(w.wait_name("A3"), Err(Error::Shutdown)));
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn a_revoked_name_fails_its_waiters() {
        let mut w: Waiters<String> = Waiters::new(4);
        let mut a = w.wait_name("A1").unwrap();
        w.fail_name(
            "A1",
            &Error::Rejected {
                code: "REVOKED".into(),
                message: String::new(),
            },
        );
        assert_eq!(a.rx.try_recv().unwrap().unwrap_err().code(), "REVOKED");
        assert_eq!(w.len(), 0);
    }
}
