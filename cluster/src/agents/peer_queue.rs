//! The queue of frames for one stream, between its senders and the stream's writer task.
//!
//! Senders (any thread) push under a short lock; the writer takes everything waiting at once
//! (a swap of buffers under the lock) and writes it in batches. The writer is woken only when
//! it had found the queue empty and parked, so a burst of sends costs one lock each and one
//! wake-up in all:
//!
//! ```text
//!               push (wake: the writer parked)          take: something waited
//!   parked -----------------------------------> busy ---------------------------+
//!     ^                                          |  ^                           | write it,
//!     |  take: nothing waited                    |  |  push: no wake (busy)     | take again
//!     +------------------------------------------+  +---------------------------+
//! ```
//!
//! **Direct writes.** A writer that parks may lend its stream (the *sink*) to the queue. A
//! sender that finds the writer parked, nothing waiting and the sink lent writes its item
//! itself, in its own task, under the queue's lock: a lone request (an ask, its reply) then
//! costs no hand-off to the writer's task. The write must not wait; its outcome:
//! - [`Direct::Written`]: done, the writer stays parked;
//! - [`Direct::Refused`]: nothing was written (the stream is blocked or broken): the item is
//!   queued and the writer woken, as if it had been busy;
//! - [`Direct::Unfinished`]: part was written and the sink holds the rest: the writer is woken
//!   with nothing taken, gets the sink back and writes the rest before anything else.
//!
//! Invariants:
//! - while an item waits, the writer is busy or a wake-up is stored for it (`Notify` keeps one
//!   permit when no one waits yet), so no push is left unwritten;
//! - a direct write happens only while the writer is parked with nothing waiting and nothing
//!   unfinished, and under the lock every push takes, so it cannot overtake a queued item,
//!   and no push can overtake it;
//! - the sink is either with the writer or lent to the queue, never used by both.
//!
//! Order: first in, first out, one queue per stream, so one sender's messages to one agent
//! keep their order on the wire.

use std::sync::{Mutex, MutexGuard, PoisonError};

use quinn::SendStream;
use serde::Serialize;
use tokio::sync::Notify;

use crate::net::wire::{self, WireError};

/// A first-in first-out queue with one consumer that parks when it is empty, and may lend
/// its sink `S` to senders while it is parked.
#[derive(Debug)]
pub struct PeerQueue<T, S = ()> {
    inner: Mutex<Inner<T, S>>,
    wake: Notify,
}

#[derive(Debug)]
struct Inner<T, S> {
    items: Vec<T>,
    parked: bool,
    /// The consumer's sink, while it is parked.
    lent: Option<S>,
    /// A direct write left bytes in the sink: the consumer must write them.
    unfinished: bool,
    /// No more items are taken; pushes are dropped.
    closed: bool,
}

/// What a direct write did with an item (see the module doc).
#[derive(Debug)]
pub enum Direct<T> {
    /// The item is written whole.
    Written,
    /// Part of the item is written; the sink holds the rest for its writer.
    Unfinished,
    /// Nothing was written; the item goes to the queue.
    Refused(T),
}

impl<T, S> Default for PeerQueue<T, S> {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                items: Vec::new(),
                parked: false,
                lent: None,
                unfinished: false,
                closed: false,
            }),
            wake: Notify::new(),
        }
    }
}

impl<T, S> PeerQueue<T, S> {
    fn lock(&self) -> MutexGuard<'_, Inner<T, S>> {
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
            if q.closed {
                return;
            }
            add(&mut q.items);
            std::mem::replace(&mut q.parked, false)
        };
        if wake {
            self.wake.notify_one();
        }
    }

    /// Writes `item` with `write` on the lent sink when the consumer is parked with nothing
    /// waiting; otherwise, or when `write` refuses it, queues it as [`push`](Self::push)
    /// does. `write` runs under the queue's lock and must not block.
    pub fn push_or_write(&self, item: T, write: impl FnOnce(&mut S, T) -> Direct<T>) {
        let wake = {
            let mut q = self.lock();
            if q.closed {
                return;
            }
            let q = &mut *q;
            let outcome = match q.lent.as_mut() {
                Some(sink) if q.parked && q.items.is_empty() && !q.unfinished => write(sink, item),
                _ => Direct::Refused(item),
            };
            match outcome {
                Direct::Written => return,
                Direct::Unfinished => q.unfinished = true,
                Direct::Refused(item) => q.items.push(item),
            }
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
        self.take_lending(into, &mut None).await;
    }

    /// As [`take`](Self::take), and while it waits it lends `sink` (when `Some`) to senders
    /// for direct writes; it hands the sink back when it returns. Returns `false`, with
    /// nothing taken (and the sink back), once the queue is [closed](Self::close) and empty.
    ///
    /// # Cancel safety
    /// Items are moved only when it returns, but a cancelled call leaves the sink lent until
    /// the next call (or until the queue is dropped).
    pub async fn take_lending(&self, into: &mut Vec<T>, sink: &mut Option<S>) -> bool {
        debug_assert!(into.is_empty(), "take into an empty buffer");
        loop {
            {
                let mut q = self.lock();
                if !q.items.is_empty() || q.unfinished {
                    std::mem::swap(&mut q.items, into);
                    q.unfinished = false;
                    if sink.is_none() {
                        *sink = q.lent.take();
                    }
                    return true;
                }
                if q.closed {
                    if sink.is_none() {
                        *sink = q.lent.take();
                    }
                    return false;
                }
                q.parked = true;
                if sink.is_some() {
                    q.lent = sink.take();
                }
            }
            self.wake.notified().await;
        }
    }

    /// Closes the queue: later pushes are dropped; the consumer takes what waits (with its
    /// sink, to write it) and then learns it is closed.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
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

/// A stream's sending half as a frame writer that can also write without waiting: what a
/// [`PeerQueue`] lends to senders for direct writes (see the module doc). A direct write that
/// was only partly taken keeps the rest here; the stream's writer task writes it
/// ([`write_rest`](Self::write_rest)) before anything else.
#[derive(Debug)]
pub struct FrameSink {
    /// The stream; the writer task writes its batches to it directly.
    pub send: SendStream,
    rest: bytes::Bytes,
}

impl FrameSink {
    /// A sink over `send`, with nothing owed.
    pub fn new(send: SendStream) -> Self {
        Self {
            send,
            rest: bytes::Bytes::new(),
        }
    }

    /// Writes one frame of `value` if the stream takes it now, without waiting:
    /// - taken whole: [`Direct::Written`];
    /// - taken in part: [`Direct::Unfinished`], and this sink keeps the rest;
    /// - not taken (flow control, a failed stream, a value that does not encode):
    ///   [`Direct::Refused`] with `value`, so the writer task deals with it as with any
    ///   queued item.
    ///
    /// Must not be called while a rest is owed.
    pub fn try_write<T: Serialize>(&mut self, value: T) -> Direct<T> {
        use std::future::Future;
        use std::task::{Context, Poll, Waker};
        debug_assert!(self.rest.is_empty(), "a direct write while a rest is owed");
        let mut buf = Vec::with_capacity(192);
        if wire::encode_frame_as(&mut buf, &value, wire::Layout::Compact).is_err() {
            return Direct::Refused(value);
        }
        let mut chunks = [bytes::Bytes::from(buf)];
        // quinn's write is cancel safe: a write that is not ready took nothing (the waker it
        // leaves behind is a no-op; the writer task registers its own when it writes)
        let poll = {
            let write = std::pin::pin!(self.send.write_chunks(&mut chunks));
            write.poll(&mut Context::from_waker(Waker::noop()))
        };
        match poll {
            Poll::Ready(Ok(_)) if chunks[0].is_empty() => Direct::Written,
            Poll::Ready(Ok(_)) => {
                let [rest] = chunks;
                self.rest = rest;
                Direct::Unfinished
            }
            Poll::Ready(Err(_)) | Poll::Pending => Direct::Refused(value),
        }
    }

    /// Writes what a direct write left unwritten, if anything.
    ///
    /// # Errors
    /// [`WireError::Stream`] if the stream fails.
    pub async fn write_rest(&mut self) -> Result<(), WireError> {
        if self.rest.is_empty() {
            return Ok(());
        }
        let rest = std::mem::take(&mut self.rest);
        self.send
            .write_chunk(rest)
            .await
            .map_err(|e| WireError::Stream(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn takes_everything_in_order() {
        let q = PeerQueue::<_>::default();
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
        let q = PeerQueue::<_>::default();
        q.push(vec![1]);
        q.push_with(|items: &mut Vec<Vec<i32>>| items.last_mut().unwrap().push(2));
        let mut out = Vec::new();
        q.take(&mut out).await;
        assert_eq!(out, [vec![1, 2]]);
    }

    #[tokio::test]
    async fn a_parked_taker_is_woken_by_a_push() {
        let q = Arc::new(PeerQueue::<_>::default());
        let taker = {
            let q = q.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                q.take(&mut out).await;
                out
            })
        };
        until_parked(&q).await;
        assert!(!taker.is_finished(), "nothing to take yet");
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
        let q = Arc::new(PeerQueue::<_>::default());
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

    /// A sink that records what it was given; `rest` models an unfinished direct write.
    #[derive(Debug, Default)]
    struct Log {
        written: Vec<(u64, u64)>,
        rest: Option<(u64, u64)>,
        /// Direct writes tried.
        tried: usize,
    }

    impl Log {
        /// The writer's part: the unfinished rest first, then what it took.
        fn drain(&mut self, taken: &mut Vec<(u64, u64)>) {
            self.written.extend(self.rest.take());
            self.written.append(taken);
        }
    }

    fn direct(log: &mut Log, item: (u64, u64)) -> Direct<(u64, u64)> {
        log.tried += 1;
        match item.1 % 5 {
            0 => Direct::Refused(item),
            1 => {
                log.rest = Some(item);
                Direct::Unfinished
            }
            _ => {
                log.written.push(item);
                Direct::Written
            }
        }
    }

    /// Yields until the taker parked on the empty queue (a current-thread runtime runs it
    /// meanwhile); panics if it does not.
    async fn until_parked<T, S>(q: &PeerQueue<T, S>) {
        for _ in 0..100 {
            if q.lock().parked {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the taker did not park");
    }

    #[tokio::test]
    async fn a_parked_writer_lends_its_sink_to_a_direct_write() {
        let q = Arc::new(PeerQueue::<(u64, u64), Log>::default());
        let taker = {
            let q = q.clone();
            tokio::spawn(async move {
                let (mut out, mut sink) = (Vec::new(), Some(Log::default()));
                let open = q.take_lending(&mut out, &mut sink).await;
                (open, out, sink)
            })
        };
        until_parked(&q).await;
        q.push_or_write((0, 2), direct);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(
            !taker.is_finished(),
            "a whole direct write does not wake the writer"
        );
        assert!(q.lock().parked);
        q.close();
        let (open, out, sink) = taker.await.unwrap();
        assert!(!open && out.is_empty(), "closed, nothing to take");
        assert_eq!(sink.expect("the sink comes back").written, [(0, 2)]);
    }

    #[tokio::test]
    async fn a_refused_or_unfinished_write_wakes_the_writer_with_its_sink() {
        for (item, queued) in [((0, 5), true), ((0, 6), false)] {
            let q = Arc::new(PeerQueue::<(u64, u64), Log>::default());
            let taker = {
                let q = q.clone();
                tokio::spawn(async move {
                    let (mut out, mut sink) = (Vec::new(), Some(Log::default()));
                    assert!(q.take_lending(&mut out, &mut sink).await);
                    (out, sink.expect("the sink comes back"))
                })
            };
            until_parked(&q).await;
            q.push_or_write(item, direct);
            // while the writer owes the rest, nothing is written directly
            q.push_or_write((0, 7), direct);
            let (out, log) = tokio::time::timeout(Duration::from_secs(5), taker)
                .await
                .expect("woken")
                .unwrap();
            if queued {
                assert_eq!(out, [item, (0, 7)]);
                assert!(log.rest.is_none() && log.written.is_empty());
            } else {
                assert_eq!(out, [(0, 7)]);
                assert_eq!(log.rest, Some(item));
            }
        }
    }

    /// Closing does not take the sink from under items that wait: the writer gets both, then
    /// learns the queue is closed.
    #[tokio::test]
    async fn what_waits_at_close_is_taken_with_the_sink() {
        let q = Arc::new(PeerQueue::<(u64, u64), Log>::default());
        let writer = {
            let q = q.clone();
            tokio::spawn(async move {
                let (mut out, mut sink) = (Vec::new(), Some(Log::default()));
                assert!(q.take_lending(&mut out, &mut sink).await);
                let first = (std::mem::take(&mut out), sink.is_some());
                let open = q.take_lending(&mut out, &mut sink).await;
                (first, open, sink.is_some())
            })
        };
        until_parked(&q).await;
        q.push((0, 0));
        q.close();
        q.push((0, 1));
        let ((taken, had_sink), open, has_sink) = writer.await.unwrap();
        assert_eq!(taken, [(0, 0)], "a push after close is dropped");
        assert!(had_sink && has_sink && !open);
    }

    #[tokio::test]
    async fn a_direct_write_does_not_overtake_a_queued_item() {
        let q = PeerQueue::<(u64, u64), Log>::default();
        q.push((0, 0));
        q.push_or_write((0, 2), direct);
        let (mut out, mut sink) = (Vec::new(), Some(Log::default()));
        assert!(q.take_lending(&mut out, &mut sink).await);
        assert_eq!(out, [(0, 0), (0, 2)], "the writer was busy: both queued");
        assert!(sink.expect("never lent").written.is_empty());
    }

    /// Two threads send through direct writes (whole, unfinished or refused) while the
    /// writer drains: every item is written once, each sender's in its order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn direct_and_queued_items_keep_each_senders_order() {
        const N: u64 = 100_000;
        let q = Arc::new(PeerQueue::<(u64, u64), Log>::default());
        let pushers: Vec<_> = (0..2u64)
            .map(|p| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for i in 0..N {
                        q.push_or_write((p, i), direct);
                    }
                })
            })
            .collect();
        let writer = {
            let q = q.clone();
            tokio::spawn(async move {
                let (mut out, mut sink) = (Vec::new(), Some(Log::default()));
                while q.take_lending(&mut out, &mut sink).await {
                    sink.as_mut().expect("with the writer").drain(&mut out);
                }
                sink
            })
        };
        for p in pushers {
            p.join().unwrap();
        }
        q.close();
        let mut log = tokio::time::timeout(Duration::from_secs(10), writer)
            .await
            .expect("the writer ends once closed")
            .unwrap()
            .expect("the writer ends with its sink");
        assert!(log.tried > 0, "some sends found the writer parked");
        log.drain(&mut Vec::new());
        let mut last = [None::<u64>; 2];
        for (p, i) in &log.written {
            assert_eq!(last[*p as usize].map_or(0, |l| l + 1), *i);
            last[*p as usize] = Some(*i);
        }
        assert_eq!(log.written.len() as u64, 2 * N);
    }
}
