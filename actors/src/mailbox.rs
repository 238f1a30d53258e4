//! An agent's mailbox: batched delivery to its actor.
//!
//! Messages for an agent ([`Call`]s) queue in its [`Mailbox`], not one by one in the ractor
//! mailbox. The actor gets one [`Wake`] through ractor when the mailbox goes from idle to
//! holding mail, and then takes what waits in batches: one ractor message per batch instead of
//! one per message, and no box per message. Signals (stop, kill, supervision) still go through
//! ractor and are seen between batches, which are at most [`BATCH`] calls long.
//!
//! ```text
//!            post (Wake sent)                  take: something waited
//!   idle ----------------------> armed ------------------------------+
//!    ^                            |  ^                               | handle at most BATCH,
//!    |  take: nothing waited      |  |  post: no Wake (one is due)   | then Wake itself
//!    +----------------------------+  +-------------------------------+
//!
//!   any state --close--> closed: posts are refused, what waited is dropped
//! ```
//!
//! Invariant: while the mailbox is open and holds a call, exactly one `Wake` is on its way to
//! the actor or the actor is handling a batch and will wake itself again. The state lives
//! under one lock, taken once per post and once per batch by the actor.
//!
//! Order: one queue per agent, first in first out, so messages from one sender keep their
//! order. When the actor stops, fails or is killed, its state is dropped and closes the
//! mailbox: waiting calls are dropped with it, and their askers learn that the instance went
//! away (as with messages left in a ractor mailbox).

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};

use ractor::ActorRef;

use crate::kind::Call;

/// Calls handled per ractor message before the actor lets signals and other actors in.
pub const BATCH: usize = 256;

/// The only message an agent's actor gets through ractor: mail is waiting.
#[derive(Debug, Clone, Copy)]
pub struct Wake;

impl ractor::Message for Wake {}

/// The queue of one agent (see the module doc).
#[derive(Default)]
pub struct Mailbox {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<Call>,
    armed: bool,
    closed: bool,
}

/// What [`Mailbox::post`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Posted {
    /// Queued; a `Wake` is already due.
    Queued,
    /// Queued, and the mailbox was idle: the caller must send the actor a `Wake`.
    WakeActor,
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
        m.queue.push_back(call);
        Ok(if std::mem::replace(&mut m.armed, true) {
            Posted::Queued
        } else {
            Posted::WakeActor
        })
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
        Ok(if std::mem::replace(&mut m.armed, true) {
            Posted::Queued
        } else {
            Posted::WakeActor
        })
    }

    /// Moves every waiting call to the back of `into` and says whether there were any; when
    /// there were none the mailbox goes idle (the next post wakes the actor).
    pub fn take(&self, into: &mut VecDeque<Call>) -> bool {
        let mut m = self.lock();
        if m.queue.is_empty() {
            m.armed = false;
            return false;
        }
        if into.is_empty() {
            // keep both buffers' capacity: no allocation per batch
            std::mem::swap(&mut m.queue, into);
        } else {
            into.append(&mut m.queue);
        }
        true
    }

    /// Refuses later posts and drops what waits (outside the lock); returns how many calls
    /// were dropped.
    pub fn close(&self) -> usize {
        let dropped = {
            let mut m = self.lock();
            m.closed = true;
            m.armed = false;
            std::mem::take(&mut m.queue)
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

    /// The ractor actor (stop, kill, supervision).
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
}
