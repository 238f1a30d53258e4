//! An agent's mailbox: its actor started at the first message, batched delivery to it, and no
//! actor hop while it is awake.
//!
//! An agent is ready once its `init` has run (at spawn, in the spawner's task), but its ractor
//! actor starts only when the first message is posted, as Orleans activates a grain at its
//! first call: until then the mailbox holds the agent, [`Dormant`], and an agent that is never
//! sent anything costs no task. The first post starts the actor under the mailbox's lock, so
//! that whoever looks next (another sender, a stop) finds either the dormant agent or its
//! actor, never neither. A start can fail only when the agent's supervisor is itself stopping
//! (ractor refuses the link) or the runtime is gone: the mailbox then closes and the message
//! is refused, as it would be by an actor killed with its supervisor; the supervisor's
//! restart (a group's) or the node's shutdown replaces or ends the instance.
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
//!   dormant ──first post: start the actor, Wake──▶ armed
//!   dormant ──stop: on_stop in the stopper's task──▶ closed      (no actor ever ran)
//!
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
//! return. So whoever stops an agent [releases](Mailbox::release_for_stop) its mailbox first: a
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
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use ractor::{ActorId, ActorRef};
use tracing::warn;

use crate::call::{BoxFuture, Call};
use crate::durable::Timer;

/// Calls handled per batch, before the actor checks for a stop and spends cooperative budget.
pub const BATCH: usize = 256;

/// The ractor message that brings an idle agent's actor into its handler: mail is waiting.
#[derive(Debug, Clone, Copy)]
pub struct Wake;

impl ractor::Message for Wake {}

/// An agent ready to run (its `init` done) whose actor has not started: the mailbox holds it
/// until the first post (see the module doc).
pub trait Dormant: Send {
    /// Starts the agent's actor, serving `mailbox`; the actor then waits for a [`Wake`].
    /// Called under the mailbox's lock: it must not touch the mailbox.
    ///
    /// # Errors
    /// Why the actor could not start.
    fn start(self: Box<Self>, mailbox: Arc<Mailbox>) -> Result<ActorRef<Wake>, String>;

    /// Stops the agent without ever starting its actor, as a stopping actor would end: its
    /// `on_stop`, then its exit hook (a clean stop).
    fn stop(self: Box<Self>) -> BoxFuture<'static, ()>;

    /// Ends the agent for a move, without `on_stop` or exit hook: its state, encoded, and its
    /// timers; or why the state does not encode (the agent is then given back, unchanged).
    ///
    /// # Errors
    /// The agent, and why its state does not encode.
    #[allow(clippy::type_complexity)]
    fn freeze(
        self: Box<Self>,
    ) -> Result<(bytes::Bytes, Vec<Timer>), (Box<dyn Dormant>, crate::error::AgentError)>;

    /// Whether the agent must run before any mail comes: it has timers set.
    fn wants_wake(&self) -> bool {
        false
    }
}

/// The queue of one agent (see the module doc).
#[derive(Default)]
pub struct Mailbox {
    inner: Mutex<Inner>,
    /// The agent's actor, once the first post started it.
    actor: OnceLock<ActorRef<Wake>>,
}

/// Freeze requests not yet taken, by mailbox (its address): kept out of the mailbox, which
/// every agent pays for, since moves are rare.
static FREEZERS: Mutex<Vec<(usize, FreezeTx)>> = Mutex::new(Vec::new());
/// How many freeze requests wait in the whole process: an actor looks at its own mailbox
/// between messages only when some do.
static FREEZES_WAITING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Kept small: the mailbox is one allocation per agent, idle agents included (three words of
/// queue, two of waker, two of the dormant agent, five flags).
#[derive(Default)]
struct Inner {
    /// A live migration asked the actor to freeze at its next message boundary (its channel
    /// waits in [`FREEZERS`]).
    freeze_wanted: bool,
    /// Frozen: posts are refused (they go to the host's slot for the move), what waits is
    /// handed over with the state.
    frozen: bool,
    /// Until the first post: the agent, its actor not started.
    dormant: Option<Box<dyn Dormant>>,
    queue: Vec<Call>,
    /// The actor is in its handler, or a `Wake` is due to bring it there (`armed` or
    /// `listening` in the module doc's diagram); false: `idle`.
    awake: bool,
    /// While it listens: the actor's task, woken by the next post.
    listener: Option<Waker>,
    released: bool,
    closed: bool,
}

/// What a frozen agent hands over (see [`Mailbox::freeze`]): its state, encoded, and the
/// calls it had not handled, in order.
pub struct Frozen {
    /// The agent's `State` (MessagePack).
    pub state: bytes::Bytes,
    /// Its timers, as deadlines.
    pub timers: Vec<Timer>,
    /// Calls taken but not handled, then what waited in the mailbox.
    pub calls: Vec<Call>,
}

/// Where a freezing actor answers: the state and calls, or why it could not freeze (it then
/// goes on running).
pub type FreezeTx = tokio::sync::oneshot::Sender<Result<Frozen, crate::error::AgentError>>;

/// What [`Mailbox::freeze`] found.
pub enum Freezing {
    /// The agent never got mail: freeze it here ([`Dormant::freeze`]); these calls waited.
    Dormant(Box<dyn Dormant>, Vec<Call>),
    /// Its actor runs: it answers on the channel at its next message boundary.
    Actor,
    /// Nothing to freeze: the mailbox was closed.
    Gone,
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

/// What a stop found in the mailbox (see [`Mailbox::release_for_stop`]).
pub enum Stopping {
    /// The agent never got mail: it is stopped without an actor.
    Dormant(Box<dyn Dormant>),
    /// Its actor runs: stop it through ractor.
    Actor(ActorRef<Wake>),
    /// Nothing to stop: the mailbox was closed before an actor started.
    Gone,
}

impl Stopping {
    /// Stops the agent without waiting; a dormant agent's `on_stop` runs in a task of its own.
    pub fn begin(self, reason: Option<String>) {
        match self {
            Stopping::Dormant(agent) => {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(agent.stop());
                }
            }
            Stopping::Actor(a) => a.stop(reason),
            Stopping::Gone => {}
        }
    }

    /// Stops the agent, waiting at most `timeout` for it to end (a dormant agent's `on_stop`
    /// runs in this task, under the same timeout).
    ///
    /// # Errors
    /// [`StopTimedOut`] when it did not end in time: kill it.
    pub async fn wait(
        self,
        reason: Option<String>,
        timeout: Option<Duration>,
    ) -> Result<(), StopTimedOut> {
        match self {
            Stopping::Dormant(agent) => match timeout {
                Some(t) => tokio::time::timeout(t, agent.stop())
                    .await
                    .map_err(|_| StopTimedOut),
                None => {
                    agent.stop().await;
                    Ok(())
                }
            },
            Stopping::Actor(a) => a
                .stop_and_wait(reason, timeout)
                .await
                .map_err(|_| StopTimedOut),
            Stopping::Gone => Ok(()),
        }
    }
}

impl Mailbox {
    /// The mailbox of an agent ready to run: its actor starts at the first post.
    pub fn dormant(agent: Box<dyn Dormant>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                dormant: Some(agent),
                ..Inner::default()
            }),
            actor: OnceLock::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts the actor of a dormant agent, under the lock (see the module doc); false if it
    /// could not start (the mailbox is then closed).
    fn start(self: &Arc<Self>, m: &mut Inner) -> bool {
        let Some(agent) = m.dormant.take() else {
            return true;
        };
        match agent.start(self.clone()) {
            Ok(actor) => {
                let _ = self.actor.set(actor);
                true
            }
            Err(reason) => {
                warn!(%reason, "an agent's actor did not start; its mailbox is closed");
                m.closed = true;
                false
            }
        }
    }

    /// Queues `call`, starting the agent's actor if it was dormant; gives the call back if
    /// the mailbox is closed (the actor is gone).
    ///
    /// # Errors
    /// The call, unqueued.
    pub fn post(self: &Arc<Self>, call: Call) -> Result<Posted, Box<Call>> {
        let mut m = self.lock();
        if m.closed || m.frozen || !self.start(&mut m) {
            return Err(Box::new(call));
        }
        if m.queue.capacity() == 0 {
            // room for one: an agent asked one thing at a time never needs more, and keeps
            // 128 bytes rather than the 512 of a first push's four
            m.queue.reserve_exact(1);
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
    pub fn post_all(self: &Arc<Self>, calls: Vec<Call>) -> Result<Posted, Vec<Call>> {
        let mut m = self.lock();
        if m.closed || m.frozen || !self.start(&mut m) {
            return Err(calls);
        }
        m.queue.extend(calls);
        let (posted, woken) = m.arm();
        drop(m);
        wake(woken);
        Ok(posted)
    }

    /// Starts the actor of a dormant agent that has timers set (it must run before any mail
    /// comes); whether a `Wake` must be sent.
    fn start_if_timed(self: &Arc<Self>) -> bool {
        let mut m = self.lock();
        let timed = m.dormant.as_ref().is_some_and(|d| d.wants_wake());
        if !timed || m.closed || m.frozen || !self.start(&mut m) {
            return false;
        }
        let (posted, woken) = m.arm();
        drop(m);
        wake(woken);
        posted == Posted::WakeActor
    }

    /// Moves every waiting call to the back of `into` and says whether there were any; when
    /// there were none the mailbox goes idle (the next post sends a `Wake`).
    pub fn take(&self, into: &mut VecDeque<Call>) -> bool {
        let mut m = self.lock();
        if m.queue.is_empty() {
            m.awake = false;
            m.listener = None;
            m.keep_one_buffer(into);
            return false;
        }
        m.move_into(into);
        true
    }

    /// Moves every waiting call to the back of `into`; when none waits, listens (the task of
    /// `cx` is woken by the next post or by [`Mailbox::release_for_stop`]), or, once released, goes
    /// idle and says so.
    pub fn poll_take(&self, into: &mut VecDeque<Call>, cx: &mut Context<'_>) -> Poll<Took> {
        let mut m = self.lock();
        if !m.queue.is_empty() {
            m.move_into(into);
            m.listener = None;
            return Poll::Ready(Took::Calls);
        }
        m.keep_one_buffer(into);
        if m.freeze_wanted {
            // a freeze is asked: the actor takes it (it stays awake)
            m.listener = None;
            return Poll::Ready(Took::Released);
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

    /// Whether [`Mailbox::release_for_stop`] was called.
    pub fn released(&self) -> bool {
        self.lock().released
    }

    /// A live migration: posts are refused from now on (the host holds what comes for the
    /// move). A dormant agent is handed out with what waited; a running actor is asked to
    /// freeze at its next message boundary and answers on `tx` (a listening one is woken).
    pub fn freeze(&self, tx: FreezeTx) -> Freezing {
        let (freezing, woken) = {
            let mut m = self.lock();
            if m.closed {
                return Freezing::Gone;
            }
            m.frozen = true;
            match m.dormant.take() {
                Some(agent) => {
                    let calls = std::mem::take(&mut m.queue);
                    (Freezing::Dormant(agent, calls), None)
                }
                None if self.actor.get().is_some() => {
                    if !std::mem::replace(&mut m.freeze_wanted, true) {
                        FREEZES_WAITING.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                    }
                    let mut freezers = FREEZERS.lock().unwrap_or_else(PoisonError::into_inner);
                    freezers.retain(|(k, _)| *k != self.key());
                    freezers.push((self.key(), tx));
                    drop(freezers);
                    let woken = m.listener.take();
                    if !m.awake {
                        // idle: bring it into its handler, where it freezes
                        m.awake = true;
                        drop(m);
                        self.wake_actor();
                        return Freezing::Actor;
                    }
                    (Freezing::Actor, woken)
                }
                None => (Freezing::Gone, None),
            }
        };
        wake(woken);
        freezing
    }

    /// For the actor: the freeze request, if one came; what waits is moved to the back of
    /// `into`.
    pub fn take_freeze(&self, into: &mut VecDeque<Call>) -> Option<FreezeTx> {
        let mut m = self.lock();
        let tx = self.withdraw_freeze(&mut m)?;
        into.extend(m.queue.drain(..));
        Some(tx)
    }

    /// The mover gave up waiting: a freeze the actor has not taken is withdrawn, and posts
    /// are taken again (one it took ends when its answer finds no mover: it thaws itself).
    pub fn cancel_freeze(&self) {
        let mut m = self.lock();
        drop(self.withdraw_freeze(&mut m));
        m.frozen = false;
    }

    /// This mailbox's key in [`FREEZERS`].
    fn key(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }

    /// Takes this mailbox's freeze request, if one waits (under its lock).
    fn withdraw_freeze(&self, m: &mut Inner) -> Option<FreezeTx> {
        if !std::mem::take(&mut m.freeze_wanted) {
            return None;
        }
        FREEZES_WAITING.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        let mut freezers = FREEZERS.lock().unwrap_or_else(PoisonError::into_inner);
        let at = freezers.iter().position(|(k, _)| *k == self.key())?;
        Some(freezers.swap_remove(at).1)
    }

    /// A dormant agent whose freeze failed goes back, with what waited.
    pub fn unfreeze_dormant(&self, agent: Box<dyn Dormant>, calls: Vec<Call>) {
        let mut m = self.lock();
        m.dormant = Some(agent);
        let later = std::mem::replace(&mut m.queue, calls);
        m.queue.extend(later);
        m.frozen = false;
    }

    /// For the actor: the freeze could not be done; posts are taken again.
    pub fn thaw(&self) {
        self.lock().frozen = false;
    }

    /// Whether a freeze was asked and not yet taken (checked by the actor between messages).
    pub fn freeze_asked(&self) -> bool {
        FREEZES_WAITING.load(std::sync::atomic::Ordering::Acquire) > 0 && self.lock().freeze_wanted
    }

    /// A stop is coming: a dormant agent is taken out (the mailbox closes: it will never
    /// start); a running actor is released, returned to be stopped through ractor: it stops
    /// listening and returns to its loop after the batch it is handling, so that ractor can
    /// deliver the stop.
    pub fn release_for_stop(&self) -> Stopping {
        let (stopping, woken) = {
            let mut m = self.lock();
            m.released = true;
            match m.dormant.take() {
                Some(agent) => {
                    m.closed = true;
                    (Stopping::Dormant(agent), None)
                }
                None => {
                    let stopping = match self.actor.get() {
                        Some(a) => Stopping::Actor(a.clone()),
                        None => Stopping::Gone,
                    };
                    (stopping, m.listener.take())
                }
            }
        };
        wake(woken);
        stopping
    }

    /// Refuses later posts and drops what waits, and a dormant agent (outside the lock: it
    /// ends as a killed actor would, without `on_stop`); returns how many calls were dropped.
    pub fn close(&self) -> usize {
        let (dropped, _waker, _dormant) = {
            let mut m = self.lock();
            m.closed = true;
            m.awake = false;
            (
                std::mem::take(&mut m.queue),
                m.listener.take(),
                m.dormant.take(),
            )
        };
        dropped.len()
    }

    /// Sends a [`Wake`] to the actor, if it started.
    fn wake_actor(&self) {
        if let Some(a) = self.actor.get() {
            // the actor may be stopping: then its state closes the mailbox, and what was
            // just queued goes with it (as if it had been in the ractor mailbox)
            let _ = a.send_message(Wake);
        }
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

impl Drop for Mailbox {
    /// A freeze asked of an agent that ended meanwhile is withdrawn (its mover sees the
    /// channel closed).
    fn drop(&mut self) {
        let mut m = std::mem::take(self.inner.get_mut().unwrap_or_else(PoisonError::into_inner));
        drop(self.withdraw_freeze(&mut m));
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

    /// Nothing waits: an emptied batch gives its buffer back to the queue if the queue has
    /// none, so that an agent between messages holds one buffer, not two (the buffers trade
    /// places at each take).
    fn keep_one_buffer(&mut self, into: &mut VecDeque<Call>) {
        if into.is_empty() && self.queue.capacity() == 0 && into.capacity() > 0 {
            self.queue = Vec::from(std::mem::take(into));
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

/// An agent instance as the host holds it: its mailbox, and through it its actor once started.
/// How the host sends to it and stops it.
#[derive(Clone)]
pub struct AgentActorRef {
    mailbox: Arc<Mailbox>,
}

/// A stop that did not end the agent within its timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopTimedOut;

impl AgentActorRef {
    /// An agent ready to run; its actor starts at the first message (see the module doc).
    pub fn dormant(agent: Box<dyn Dormant>) -> Self {
        Self {
            mailbox: Arc::new(Mailbox::dormant(agent)),
        }
    }

    /// Queues `call` for the agent, starting or waking its actor if it was dormant or idle.
    ///
    /// # Errors
    /// The call, when the actor is gone.
    pub fn send(&self, call: Call) -> Result<(), Box<Call>> {
        if self.mailbox.post(call)? == Posted::WakeActor {
            self.mailbox.wake_actor();
        }
        Ok(())
    }

    /// Queues `calls` for the agent in order, starting or waking its actor if it was dormant
    /// or idle.
    ///
    /// # Errors
    /// The calls, when the actor is gone.
    pub fn send_all(&self, calls: Vec<Call>) -> Result<(), Vec<Call>> {
        if calls.is_empty() {
            return Ok(());
        }
        if self.mailbox.post_all(calls)? == Posted::WakeActor {
            self.mailbox.wake_actor();
        }
        Ok(())
    }

    /// Starts the agent's actor if it is dormant with timers set: called once the host lists
    /// the instance as running (not before: an instance installed for a move must not run
    /// until its source handed over).
    pub fn start_if_timed(&self) {
        if self.mailbox.start_if_timed() {
            self.mailbox.wake_actor();
        }
    }

    /// The host no longer lists this instance as running: its mailbox refuses later posts
    /// (they go the long way, see [`crate::host::LocalPort`]) and what waited is dropped, as
    /// it would be with the instance; a dormant agent is dropped without `on_stop`.
    pub fn close(&self) {
        self.mailbox.close();
    }

    /// A stop is coming (see [`Mailbox::release_for_stop`]): what to stop. Take it before the
    /// host unlists the instance, so that a dormant agent is stopped with its `on_stop`
    /// rather than dropped by the close.
    pub fn release_for_stop(&self) -> Stopping {
        self.mailbox.release_for_stop()
    }

    /// Asks the agent to stop without waiting: its mailbox is released first (see the module
    /// doc), so that a listening actor lets the stop in; a dormant agent's `on_stop` runs in
    /// a task of its own.
    pub fn stop(&self, reason: Option<String>) {
        self.release_for_stop().begin(reason);
    }

    /// [`AgentActorRef::stop`], waiting at most `timeout` for the agent to end (a dormant
    /// agent's `on_stop` runs in this task, under the same timeout).
    ///
    /// # Errors
    /// [`StopTimedOut`] when it did not end in time: kill it.
    pub async fn stop_and_wait(
        &self,
        reason: Option<String>,
        timeout: Option<Duration>,
    ) -> Result<(), StopTimedOut> {
        self.release_for_stop().wait(reason, timeout).await
    }

    /// Ends the agent at once: its actor is killed (no `on_stop`), a dormant agent dropped.
    pub fn kill(&self) {
        self.mailbox.close();
        if let Some(a) = self.mailbox.actor.get() {
            a.kill();
        }
    }

    /// A live migration: see [`Mailbox::freeze`].
    pub fn freeze(&self, tx: FreezeTx) -> Freezing {
        self.mailbox.freeze(tx)
    }

    /// Posts are taken again after a freeze that could not be completed.
    pub fn thaw(&self) {
        self.mailbox.thaw();
    }

    /// See [`Mailbox::cancel_freeze`].
    pub fn cancel_freeze(&self) {
        self.mailbox.cancel_freeze();
    }

    /// See [`Mailbox::unfreeze_dormant`].
    pub fn unfreeze_dormant(&self, agent: Box<dyn Dormant>, calls: Vec<Call>) {
        self.mailbox.unfreeze_dormant(agent, calls);
    }

    /// The id of the agent's actor, once it started.
    pub fn actor_id(&self) -> Option<ActorId> {
        self.mailbox.actor.get().map(|a| a.get_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::Body;
    use crate::envelope::TraceContext;

    fn call(n: u64) -> Call {
        Call {
            body: Body::typed(n),
            trace: TraceContext::new_root(),
            sender: None,
            seq: n,
            reply: None,
        }
    }

    fn mailbox() -> Arc<Mailbox> {
        Arc::new(Mailbox::default())
    }

    #[test]
    fn wakes_only_when_idle_and_goes_idle_when_nothing_waits() {
        let m = mailbox();
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
        let m = mailbox();
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
    fn between_messages_an_agent_holds_one_buffer() {
        let m = mailbox();
        let mut batch = VecDeque::new();
        for n in 1..=3 {
            m.post(call(n)).unwrap();
            assert!(m.take(&mut batch));
            batch.clear();
            // nothing waits: the batch's buffer goes back to the queue
            assert!(!m.take(&mut batch));
            assert_eq!(batch.capacity(), 0, "after message {n}");
            assert!(m.lock().queue.capacity() > 0);
        }
    }

    #[test]
    fn take_keeps_order_when_the_batch_is_not_empty() {
        let m = mailbox();
        let mut batch: VecDeque<Call> = [call(1)].into();
        m.post(call(2)).unwrap();
        m.post(call(3)).unwrap();
        assert!(m.take(&mut batch));
        assert_eq!(batch.iter().map(|c| c.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(m.is_empty());
    }

    #[test]
    fn a_closed_mailbox_refuses_and_drops_what_waited() {
        let m = mailbox();
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
    fn fresh() -> (Arc<Mailbox>, std::sync::Arc<Count>, Waker, VecDeque<Call>) {
        let count = std::sync::Arc::new(Count::default());
        let w = Waker::from(count.clone());
        (mailbox(), count, w, VecDeque::new())
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
        assert!(matches!(m.release_for_stop(), Stopping::Gone));
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

    /// A dormant agent that counts its starts and stops; its actor does nothing.
    struct Probe {
        starts: Arc<std::sync::atomic::AtomicUsize>,
        stops: Arc<std::sync::atomic::AtomicUsize>,
    }

    struct Idle;

    impl ractor::Actor for Idle {
        type Msg = Wake;
        type State = ();
        type Arguments = ();

        async fn pre_start(
            &self,
            _: ActorRef<Wake>,
            _: (),
        ) -> Result<(), ractor::ActorProcessingErr> {
            Ok(())
        }
    }

    impl Dormant for Probe {
        fn start(self: Box<Self>, _: Arc<Mailbox>) -> Result<ActorRef<Wake>, String> {
            self.starts
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (a, _) =
                ractor::ActorRuntime::spawn_instant(None, Idle, ()).map_err(|e| e.to_string())?;
            Ok(a)
        }

        fn stop(self: Box<Self>) -> BoxFuture<'static, ()> {
            Box::pin(async move {
                self.stops.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })
        }

        fn freeze(
            self: Box<Self>,
        ) -> Result<(bytes::Bytes, Vec<Timer>), (Box<dyn Dormant>, crate::error::AgentError)>
        {
            Ok((bytes::Bytes::from_static(b"probe"), Vec::new()))
        }
    }

    type Counts = (
        Arc<std::sync::atomic::AtomicUsize>,
        Arc<std::sync::atomic::AtomicUsize>,
    );

    fn dormant() -> (AgentActorRef, Counts) {
        let (starts, stops) = Counts::default();
        let probe = Probe {
            starts: starts.clone(),
            stops: stops.clone(),
        };
        (AgentActorRef::dormant(Box::new(probe)), (starts, stops))
    }

    fn n(c: &std::sync::atomic::AtomicUsize) -> usize {
        c.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[tokio::test]
    async fn a_dormant_agent_starts_its_actor_at_the_first_post_and_only_then() {
        let (a, (starts, _)) = dormant();
        assert_eq!((n(&starts), a.actor_id()), (0, None));
        a.send(call(1)).unwrap();
        let actor = a.actor_id().expect("started by the first post");
        a.send_all(vec![call(2), call(3)]).unwrap();
        assert_eq!(n(&starts), 1);
        assert_eq!(a.actor_id(), Some(actor));
        assert_eq!(a.mailbox.len(), 3);
        a.kill();
    }

    #[tokio::test]
    async fn a_stop_takes_a_dormant_agent_out_runs_its_stop_and_closes() {
        let (a, (starts, stops)) = dormant();
        a.stop_and_wait(None, Some(Duration::from_secs(1)))
            .await
            .unwrap();
        assert_eq!((n(&starts), n(&stops)), (0, 1));
        assert_eq!(a.send(call(1)).map_err(|c| c.seq).err(), Some(1));
        // nothing left to stop
        assert!(matches!(a.release_for_stop(), Stopping::Gone));
    }

    #[tokio::test]
    async fn close_drops_a_dormant_agent_without_starting_or_stopping_it() {
        let (a, (starts, stops)) = dormant();
        a.close();
        assert_eq!(a.send(call(1)).map_err(|c| c.seq).err(), Some(1));
        assert!(matches!(a.release_for_stop(), Stopping::Gone));
        assert_eq!((n(&starts), n(&stops)), (0, 0));
    }

    /// The mailbox is one allocation per agent, idle ones included: it stays in glibc's
    /// 112-byte class (an `Arc` of it is at most 104 bytes), so that the resident bytes per
    /// idle agent do not move between size classes from one change to the next (one size
    /// class up once made them vary from run to run by up to 180 bytes in the bench).
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn the_mailbox_stays_small() {
        assert!(
            std::mem::size_of::<Mailbox>() <= 88,
            "{}",
            std::mem::size_of::<Mailbox>()
        );
    }
}
