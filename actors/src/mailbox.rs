//! An agent's mailbox: batched delivery to its actor, and no actor hop while it is awake.
//!
//! Messages for an agent ([`Call`]s) queue in its [`Mailbox`], not one by one in the ractor
//! mailbox. The first message wakes the actor with one [`Wake`] through ractor; the actor then
//! stays in that handler, taking what waits in batches (one lock per batch, no box per
//! message), and when nothing waits it **listens**: it waits in the handler with its task's
//! waker left in the mailbox, and the next post wakes the task directly. A request and its
//! reply then cost two task wake-ups and no ractor message (a ractor message per wake-up was
//! half the cost of a local ask: the send, its channel, the actor loop's select over its
//! ports).
//!
//! ```text
//!                post: Wake through ractor
//!   idle ──────────────────────────────────▶ armed ◀──────────────────────────┐
//!    ▲                                         │ take: something waited        │ post: wake the
//!    │ released (a stop is coming) and         │ (handle it, take again)       │ waiting task
//!    │ nothing waits: back to the actor loop   ▼                               │
//!    └──────────────────────────────────── take: nothing waited ──▶ listening ─┘
//!
//!   any state ──close──▶ closed: posts are refused, what waited is dropped
//! ```
//!
//! Invariant: while the mailbox is open and holds a call, a `Wake` is on its way to the actor,
//! or the actor is in its handler and will take it (it is working, or listening and the post
//! woke it).
//!
//! Signals: ractor lets a kill interrupt a handler, but a stop waits for the handler to
//! return. So whoever stops an agent [releases](Mailbox::release) its mailbox first: a
//! listening actor returns to the actor loop, a working one returns after its current batch
//! (at most [`BATCH`] calls), and the stop comes in. Between batches the actor also spends
//! one unit of tokio's cooperative budget, so that a busy agent lets the other tasks of its
//! worker run, as it did when each batch was a ractor message.
//!
//! Order: one queue per agent, first in first out, so messages from one sender keep their
//! order. When the actor stops, fails or is killed, its state is dropped and closes the
//! mailbox: waiting calls are dropped with it, and their askers learn that the instance went
//! away (as with messages left in a ractor mailbox).

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use ractor::ActorRef;

use crate::kind::Call;

/// Calls handled per batch, before the actor checks for a stop and spends cooperative budget.
pub const BATCH: usize = 256;

/// The ractor message that brings an idle agent's actor into its handler: mail is waiting.
#[derive(Debug, Clone, Copy)]
pub struct Wake;

impl ractor::Message for Wake {}

/// The queue of one agent (see the module doc).
#[derive(Default)]
pub struct Mailbox {
    inner: Mutex<Inner>,
}

/// Kept small: the mailbox is one allocation per agent, idle agents included (three words of
/// queue, two of waker, three flags).
#[derive(Default)]
struct Inner {
    queue: Vec<Call>,
    /// The actor is in its handler, or a `Wake` is due to bring it there (`armed` or
    /// `listening` in the module doc's diagram); false: `idle`.
    awake: bool,
    /// While it listens: the actor's task, woken by the next post.
    listener: Option<Waker>,
    released: bool,
    closed: bool,
}

/// What [`Mailbox::post`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Posted {
    /// Queued; the actor will take it (a `Wake` is due, or it was woken).
    Queued,
    /// Queued, and the actor was idle: the caller must send it a `Wake`.
    WakeActor,
}

/// What [`Mailbox::poll_take`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Took {
    /// Calls were moved into the batch.
    Calls,
    /// The mailbox was released (or closed) and nothing waits: the actor goes back to its loop.
    Released,
}

impl Mailbox {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `call`; gives it back if the mailbox is closed (the actor is gone).
    ///
    /// # Errors
    /// The call, unqueued.
    pub fn post(&self, call: Call) -> Result<Posted, Box<Call>> {
        let mut m = self.lock();
        if m.closed {
            return Err(Box::new(call));
        }
        m.queue.push(call);
        let (posted, woken) = m.arm();
        drop(m);
        wake(woken);
        Ok(posted)
    }

    /// Queues `calls` in order under one lock; gives them back if the mailbox is closed.
    ///
    /// # Errors
    /// The calls, unqueued.
    pub fn post_all(&self, calls: Vec<Call>) -> Result<Posted, Vec<Call>> {
        let mut m = self.lock();
        if m.closed {
            return Err(calls);
        }
        m.queue.extend(calls);
        let (posted, woken) = m.arm();
        drop(m);
        wake(woken);
        Ok(posted)
    }

    /// Moves every waiting call to the back of `into` and says whether there were any; when
    /// there were none the mailbox goes idle (the next post sends a `Wake`).
    pub fn take(&self, into: &mut VecDeque<Call>) -> bool {
        let mut m = self.lock();
        if m.queue.is_empty() {
            m.awake = false;
            m.listener = None;
            return false;
        }
        m.move_into(into);
        true
    }

    /// Moves every waiting call to the back of `into`; when none waits, listens (the task of
    /// `cx` is woken by the next post or by [`Mailbox::release`]), or, once released, goes
    /// idle and says so.
    pub fn poll_take(&self, into: &mut VecDeque<Call>, cx: &mut Context<'_>) -> Poll<Took> {
        let mut m = self.lock();
        if !m.queue.is_empty() {
            m.move_into(into);
            m.listener = None;
            return Poll::Ready(Took::Calls);
        }
        if m.released || m.closed {
            m.awake = false;
            m.listener = None;
            return Poll::Ready(Took::Released);
        }
        match &mut m.listener {
            Some(w) if w.will_wake(cx.waker()) => {}
            other => *other = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// A stop is coming through ractor: the actor stops listening and returns to its loop
    /// after the batch it is handling, so that ractor can deliver the stop.
    pub fn release(&self) {
        let woken = {
            let mut m = self.lock();
            m.released = true;
            m.listener.take()
        };
        wake(woken);
    }

    /// Whether [`Mailbox::release`] was called.
    pub fn released(&self) -> bool {
        self.lock().released
    }

    /// Refuses later posts and drops what waits (outside the lock); returns how many calls
    /// were dropped.
    pub fn close(&self) -> usize {
        let (dropped, _waker) = {
            let mut m = self.lock();
            m.closed = true;
            m.awake = false;
            (std::mem::take(&mut m.queue), m.listener.take())
        };
        dropped.len()
    }

    /// Calls waiting (not yet taken by the actor).
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    /// After a post: what the poster must do to have the actor take it, and the task of a
    /// listening actor, to be woken once the lock is let go.
    fn arm(&mut self) -> (Posted, Option<Waker>) {
        if std::mem::replace(&mut self.awake, true) {
            (Posted::Queued, self.listener.take())
        } else {
            (Posted::WakeActor, None)
        }
    }

    fn move_into(&mut self, into: &mut VecDeque<Call>) {
        if into.is_empty() {
            // trade buffers: no allocation per batch (a Vec and a VecDeque convert into each
            // other in place)
            let queue = std::mem::take(&mut self.queue);
            self.queue = Vec::from(std::mem::replace(into, VecDeque::from(queue)));
        } else {
            into.extend(self.queue.drain(..));
        }
    }
}

fn wake(w: Option<Waker>) {
    if let Some(w) = w {
        w.wake();
    }
}

/// A running agent's actor and its mailbox: how the host sends to it and stops it.
#[derive(Clone)]
pub struct AgentActorRef {
    actor: ActorRef<Wake>,
    mailbox: std::sync::Arc<Mailbox>,
}

impl AgentActorRef {
    pub(crate) fn new(actor: ActorRef<Wake>, mailbox: std::sync::Arc<Mailbox>) -> Self {
        Self { actor, mailbox }
    }

    /// Queues `call` for the agent, waking its actor if it was idle.
    ///
    /// # Errors
    /// The call, when the actor is gone.
    pub fn send(&self, call: Call) -> Result<(), Box<Call>> {
        if self.mailbox.post(call)? == Posted::WakeActor {
            // the actor may be stopping: then its state closes the mailbox, and the call
            // just queued goes with it (as if it had been in the ractor mailbox)
            let _ = self.actor.send_message(Wake);
        }
        Ok(())
    }

    /// Queues `calls` for the agent in order, waking its actor if it was idle.
    ///
    /// # Errors
    /// The calls, when the actor is gone.
    pub fn send_all(&self, calls: Vec<Call>) -> Result<(), Vec<Call>> {
        if calls.is_empty() {
            return Ok(());
        }
        if self.mailbox.post_all(calls)? == Posted::WakeActor {
            // as in `send`
            let _ = self.actor.send_message(Wake);
        }
        Ok(())
    }

    /// The host no longer lists this instance as running: its mailbox refuses later posts
    /// (they go the long way, see [`crate::host::LocalPort`]) and what waited is dropped, as
    /// it would be with the instance.
    pub fn close(&self) {
        self.mailbox.close();
    }

    /// Asks the actor to stop: its mailbox is released first (see the module doc), so that
    /// a listening actor lets the stop in.
    pub fn stop(&self, reason: Option<String>) {
        self.mailbox.release();
        self.actor.stop(reason);
    }

    /// [`AgentActorRef::stop`], waiting at most `timeout` for the actor to end.
    ///
    /// # Errors
    /// ractor's error when the actor did not stop in time.
    pub async fn stop_and_wait(
        &self,
        reason: Option<String>,
        timeout: Option<std::time::Duration>,
    ) -> Result<(), ractor::RactorErr<ractor::actor::messages::StopMessage>> {
        self.mailbox.release();
        self.actor.stop_and_wait(reason, timeout).await
    }

    /// The ractor actor (kill, supervision; stop through [`AgentActorRef::stop`]).
    pub fn actor(&self) -> &ActorRef<Wake> {
        &self.actor
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::TraceContext;
    use crate::kind::Body;

    fn call(n: u64) -> Call {
        Call {
            body: Body::typed(n),
            trace: TraceContext::new_root(),
            sender: None,
            seq: n,
            reply: None,
        }
    }

    #[test]
    fn wakes_only_when_idle_and_goes_idle_when_nothing_waits() {
        let m = Mailbox::default();
        assert_eq!(m.post(call(1)).ok(), Some(Posted::WakeActor));
        assert_eq!(m.post(call(2)).ok(), Some(Posted::Queued));
        let mut batch = VecDeque::new();
        assert!(m.take(&mut batch));
        assert_eq!(batch.iter().map(|c| c.seq).collect::<Vec<_>>(), [1, 2]);
        // still armed while the actor works: a post does not wake it again
        assert_eq!(m.post(call(3)).ok(), Some(Posted::Queued));
        batch.clear();
        assert!(m.take(&mut batch));
        assert_eq!(batch.len(), 1);
        // nothing waits: idle, and the next post wakes the actor
        assert!(!m.take(&mut batch));
        assert_eq!(m.post(call(4)).ok(), Some(Posted::WakeActor));
    }

    #[test]
    fn post_all_queues_in_order_and_wakes_once() {
        let m = Mailbox::default();
        assert_eq!(
            m.post_all(vec![call(1), call(2)]).ok(),
            Some(Posted::WakeActor)
        );
        assert_eq!(m.post_all(vec![call(3)]).ok(), Some(Posted::Queued));
        let mut batch = VecDeque::new();
        assert!(m.take(&mut batch));
        assert_eq!(batch.iter().map(|c| c.seq).collect::<Vec<_>>(), [1, 2, 3]);
        m.close();
        let back = m.post_all(vec![call(4), call(5)]).unwrap_err();
        assert_eq!(back.iter().map(|c| c.seq).collect::<Vec<_>>(), [4, 5]);
    }

    #[test]
    fn take_keeps_order_when_the_batch_is_not_empty() {
        let m = Mailbox::default();
        let mut batch: VecDeque<Call> = [call(1)].into();
        m.post(call(2)).unwrap();
        m.post(call(3)).unwrap();
        assert!(m.take(&mut batch));
        assert_eq!(batch.iter().map(|c| c.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(m.is_empty());
    }

    #[test]
    fn a_closed_mailbox_refuses_and_drops_what_waited() {
        let m = Mailbox::default();
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let mut asked = call(1);
        asked.reply = Some(tx.into());
        m.post(asked).unwrap();
        m.post(call(2)).unwrap();
        assert_eq!(m.close(), 2);
        // the asker learns the instance went away
        assert!(matches!(
            rx.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Closed)
        ));
        assert_eq!(m.post(call(3)).map_err(|c| c.seq).err(), Some(3));
        assert!(m.is_empty());
    }

    /// Counts the wake-ups of the wakers made from it.
    #[derive(Default)]
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    impl Count {
        fn get(&self) -> usize {
            self.0.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    /// A mailbox, a counting waker and an empty batch.
    fn fresh() -> (Mailbox, std::sync::Arc<Count>, Waker, VecDeque<Call>) {
        let count = std::sync::Arc::new(Count::default());
        let w = Waker::from(count.clone());
        (Mailbox::default(), count, w, VecDeque::new())
    }

    fn poll_take(m: &Mailbox, batch: &mut VecDeque<Call>, w: &Waker) -> Poll<Took> {
        m.poll_take(batch, &mut Context::from_waker(w))
    }

    #[test]
    fn a_listening_actor_is_woken_by_a_post_not_sent_a_wake() {
        let (m, count, w, mut batch) = fresh();
        // the first post brings the actor in through ractor
        assert_eq!(m.post(call(1)).ok(), Some(Posted::WakeActor));
        assert_eq!(poll_take(&m, &mut batch, &w), Poll::Ready(Took::Calls));
        batch.clear();
        // nothing waits: it listens
        assert_eq!(poll_take(&m, &mut batch, &w), Poll::Pending);
        assert_eq!(count.get(), 0);
        // a post wakes its task, once, and needs no Wake
        assert_eq!(m.post(call(2)).ok(), Some(Posted::Queued));
        assert_eq!(m.post(call(3)).ok(), Some(Posted::Queued));
        assert_eq!(count.get(), 1);
        assert_eq!(poll_take(&m, &mut batch, &w), Poll::Ready(Took::Calls));
        assert_eq!(batch.iter().map(|c| c.seq).collect::<Vec<_>>(), [2, 3]);
    }

    #[test]
    fn release_brings_a_listening_actor_back_to_its_loop_after_what_waits() {
        let (m, count, w, mut batch) = fresh();
        m.post(call(1)).unwrap();
        assert_eq!(poll_take(&m, &mut batch, &w), Poll::Ready(Took::Calls));
        batch.clear();
        assert_eq!(poll_take(&m, &mut batch, &w), Poll::Pending);
        m.release();
        assert_eq!(count.get(), 1, "release wakes the listener");
        assert!(m.released());
        assert_eq!(poll_take(&m, &mut batch, &w), Poll::Ready(Took::Released));
        // back in the actor loop: the next post sends a Wake again
        assert_eq!(m.post(call(2)).ok(), Some(Posted::WakeActor));
        // released with mail waiting: the mail is taken first
        assert_eq!(poll_take(&m, &mut batch, &w), Poll::Ready(Took::Calls));
        assert_eq!(batch.len(), 1);
    }

    #[test]
    fn close_drops_the_listener() {
        let (m, count, w, mut batch) = fresh();
        assert_eq!(poll_take(&m, &mut batch, &w), Poll::Pending);
        assert_eq!(std::sync::Arc::strong_count(&count), 3); // here, `w`, the mailbox
        m.close();
        assert_eq!(std::sync::Arc::strong_count(&count), 2);
        assert_eq!(poll_take(&m, &mut batch, &w), Poll::Ready(Took::Released));
    }

    /// The mailbox is one allocation per agent, idle ones included: it stays in glibc's
    /// 80-byte class (an `Arc` of it is 72 bytes). One size class up made the resident bytes
    /// per idle agent vary from run to run, by up to 180 bytes (`tether bench`).
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn the_mailbox_stays_small() {
        assert!(
            std::mem::size_of::<Mailbox>() <= 56,
            "{}",
            std::mem::size_of::<Mailbox>()
        );
    }
}
