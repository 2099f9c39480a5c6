//! The bound on a link's queued outbound bytes.
//!
//! Every frame waiting to be written counts here, from the moment it is
//! queued until the driver hands it to the WebSocket layer. Callers and hook
//! tasks reserve room before they queue and wait while there is none; the
//! driver counts the answers it makes itself, and stops reading from the
//! peer while the budget is spent. So a peer that sends requests but never
//! reads the answers cannot make its link grow: it only stops being served,
//! and the driver closes it once it has made no room for
//! [`LinkConfig::drain_timeout`](super::LinkConfig::drain_timeout).
//!
//! The cost per frame is one atomic add on the way in and one subtraction
//! per round of writing on the way out; waiting only begins once the budget
//! is spent.

use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::task::AtomicWaker;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub(crate) struct Budget {
    limit: usize,
    /// Bytes reserved or queued and not yet written.
    queued: AtomicUsize,
    /// Producers waiting for room; the driver only notifies when set.
    waiting: AtomicUsize,
    room: Notify,
    /// The driver, when it waits for room that only a producer giving up a
    /// reservation can make (it is not reading, and has nothing to write).
    driver: AtomicWaker,
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Self {
        Budget {
            limit,
            queued: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            room: Notify::new(),
            driver: AtomicWaker::new(),
        }
    }

    /// Bytes queued now.
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    /// True when the budget is spent: the driver stops reading.
    pub(crate) fn is_full(&self) -> bool {
        self.queued() >= self.limit
    }

    /// Counts `bytes` when they fit; a frame always fits an empty queue, so
    /// even one bigger than the limit goes out, alone.
    fn try_take(&self, bytes: usize) -> bool {
        let mut cur = self.queued.load(Ordering::SeqCst);
        loop {
            if cur != 0 && cur.saturating_add(bytes) > self.limit {
                return false;
            }
            match self.queued.compare_exchange_weak(
                cur,
                cur.saturating_add(bytes),
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Waits until `bytes` fit, then counts them. `None` once `gone` is
    /// cancelled (the link ended): nothing will make room any more.
    pub(crate) async fn reserve<'a>(
        &'a self,
        bytes: usize,
        gone: &CancellationToken,
    ) -> Option<Reservation<'a>> {
        if self.try_take(bytes) {
            return Some(Reservation {
                budget: self,
                bytes,
            });
        }
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            // Enabled before the check, so a release in between still wakes us.
            notified.as_mut().enable();
            if self.try_take(bytes) {
                return Some(Reservation {
                    budget: self,
                    bytes,
                });
            }
            if gone.is_cancelled() {
                return None;
            }
            tokio::select! {
                biased;
                _ = gone.cancelled() => return None,
                _ = notified => {}
            }
        }
    }

    /// Counts a frame the driver queued itself; it only makes one after it
    /// found room, so this may pass the limit by one frame at most.
    pub(crate) fn add(&self, bytes: usize) {
        self.queued.fetch_add(bytes, Ordering::SeqCst);
    }

    /// Uncounts bytes written (or given back) and wakes whoever waits.
    pub(crate) fn release(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        self.queued.fetch_sub(bytes, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.room.notify_waiters();
        }
    }

    /// The driver asks to be woken when a producer gives room back.
    pub(crate) fn wake_driver_on_room(&self, waker: &std::task::Waker) {
        self.driver.register(waker);
    }
}

/// Room counted for one frame until it is queued; dropped before that (the
/// caller gave up), it gives the room back.
pub(crate) struct Reservation<'a> {
    budget: &'a Budget,
    bytes: usize,
}

impl Reservation<'_> {
    /// The frame is queued: the driver uncounts it once written.
    pub(crate) fn queued(mut self) {
        self.bytes = 0;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.release(self.bytes);
            self.budget.driver.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_producer_waits_for_room_and_gets_it_on_release() {
        let budget = std::sync::Arc::new(Budget::new(100));
        let gone = CancellationToken::new();
        budget.reserve(80, &gone).await.expect("room").queued();
        // 80 + 30 > 100: waits.
        let waiting = {
            let (budget, gone) = (budget.clone(), gone.clone());
            tokio::spawn(async move {
                budget
                    .reserve(30, &gone)
                    .await
                    .map(Reservation::queued)
                    .is_some()
            })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        budget.release(80);
        let got = tokio::time::timeout(Duration::from_secs(10), waiting).await;
        assert!(matches!(got, Ok(Ok(true))));
        assert_eq!(budget.queued(), 30);
    }

    #[tokio::test]
    async fn a_waiting_producer_gives_up_when_the_link_ends() {
        let budget = Budget::new(10);
        let gone = CancellationToken::new();
        budget.reserve(10, &gone).await.expect("room").queued();
        assert!(budget.is_full());
        gone.cancel();
        assert!(budget.reserve(1, &gone).await.is_none());
    }

    #[tokio::test]
    async fn a_reservation_dropped_unqueued_gives_its_room_back() {
        let budget = Budget::new(10);
        let gone = CancellationToken::new();
        let r = budget.reserve(7, &gone).await.expect("room");
        assert_eq!(budget.queued(), 7);
        drop(r);
        assert_eq!(budget.queued(), 0);
        // An empty queue takes a frame bigger than the limit, alone.
        budget.reserve(50, &gone).await.expect("room").queued();
        assert!(budget.is_full());
    }
}
