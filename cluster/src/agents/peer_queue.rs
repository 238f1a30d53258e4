//! The queue of requests for one peer, between the senders and the peer's writer task.
//!
//! Senders (any thread) push under a short lock; the writer takes everything waiting at once
//! (a swap of buffers under the lock) and writes it in batches. The writer is woken only when it had found the queue empty
//! and parked, so a burst of sends costs one lock each and one wake-up in all:
//!
//! ```text
//!               push (wake: the writer parked)          take: something waited
//!   parked -----------------------------------> busy ---------------------------+
//!     ^                                          |  ^                           | write it,
//!     |  take: nothing waited                    |  |  push: no wake (busy)     | take again
//!     +------------------------------------------+  +---------------------------+
//! ```
//!
//! Invariant: while a request waits, the writer is busy or a wake-up is stored for it
//! (`Notify` keeps one permit when no one waits yet), so no push is left unwritten.
//! Order: first in, first out, one queue per peer, so one sender's messages to one agent keep
//! their order on the wire.

use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

/// A first-in first-out queue with one consumer that parks when it is empty.
#[derive(Debug)]
pub struct PeerQueue<T> {
    inner: Mutex<Inner<T>>,
    wake: Notify,
}

#[derive(Debug)]
struct Inner<T> {
    items: Vec<T>,
    parked: bool,
}

impl<T> Default for PeerQueue<T> {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                items: Vec::new(),
                parked: false,
            }),
            wake: Notify::new(),
        }
    }
}

impl<T> PeerQueue<T> {
    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `item`, waking the consumer if it parked.
    pub fn push(&self, item: T) {
        self.push_with(|items| items.push(item));
    }

    /// Queues what `add` puts at the back of the waiting items (it may also extend the last
    /// one), waking the consumer if it parked. `add` runs under the queue's lock.
    pub fn push_with(&self, add: impl FnOnce(&mut Vec<T>)) {
        let wake = {
            let mut q = self.lock();
            add(&mut q.items);
            std::mem::replace(&mut q.parked, false)
        };
        if wake {
            self.wake.notify_one();
        }
    }

    /// Waits until something is queued, then takes all of it, oldest first, into `into`
    /// (which must be empty: the two buffers trade places, so the lock is held for a swap
    /// and neither side allocates in a steady stream). Only one task may take.
    ///
    /// # Cancel safety
    /// Cancel safe: items are moved only when it returns.
    pub async fn take(&self, into: &mut Vec<T>) {
        debug_assert!(into.is_empty(), "take into an empty buffer");
        loop {
            {
                let mut q = self.lock();
                if !q.items.is_empty() {
                    std::mem::swap(&mut q.items, into);
                    return;
                }
                q.parked = true;
            }
            self.wake.notified().await;
        }
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn takes_everything_in_order() {
        let q = PeerQueue::default();
        for i in 0..5 {
            q.push(i);
        }
        let mut out = Vec::new();
        q.take(&mut out).await;
        assert_eq!(out, [0, 1, 2, 3, 4]);
        assert!(q.is_empty());
        q.push(5);
        out.clear();
        q.take(&mut out).await;
        assert_eq!(out, [5]);
    }

    #[tokio::test]
    async fn push_with_may_extend_the_last_item() {
        let q = PeerQueue::default();
        q.push(vec![1]);
        q.push_with(|items: &mut Vec<Vec<i32>>| items.last_mut().unwrap().push(2));
        let mut out = Vec::new();
        q.take(&mut out).await;
        assert_eq!(out, [vec![1, 2]]);
    }

    #[tokio::test]
    async fn a_parked_taker_is_woken_by_a_push() {
        let q = Arc::new(PeerQueue::default());
        let taker = {
            let q = q.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                q.take(&mut out).await;
                out
            })
        };
        // a current-thread runtime: yielding lets the taker run until it parks
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!taker.is_finished(), "nothing to take yet");
        assert!(q.lock().parked, "the taker parked on the empty queue");
        q.push(7);
        let out = tokio::time::timeout(Duration::from_secs(5), taker)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(out, [7]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_push_is_lost_between_threads() {
        const N: u64 = 200_000;
        let q = Arc::new(PeerQueue::default());
        let pushers: Vec<_> = (0..2u64)
            .map(|p| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for i in 0..N {
                        q.push((p, i));
                    }
                })
            })
            .collect();
        let mut last = [None::<u64>; 2];
        let mut got = 0;
        let mut out = Vec::new();
        while got < 2 * N {
            tokio::time::timeout(Duration::from_secs(10), q.take(&mut out))
                .await
                .expect("a waiting push wakes the taker");
            for (p, i) in out.drain(..) {
                // each pusher's items arrive in its order, none twice or missing
                assert_eq!(last[p as usize].map_or(0, |l| l + 1), i);
                last[p as usize] = Some(i);
                got += 1;
            }
        }
        for p in pushers {
            p.join().unwrap();
        }
        assert!(q.is_empty());
    }
}
