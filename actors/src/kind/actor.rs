//! The ractor actor of one agent: started at the agent's first message, it serves the agent's
//! mailbox in batches (see [`crate::mailbox`]).
//!
//! # Logs and spans
//!
//! A handler's log lines must say which agent and which trace they belong to, but a span per
//! message costs more than the rest of a local ask when a formatting subscriber is on
//! (PERF.md has the figures). So the per-message span (`agent`, with `id` and `trace_id`) is at
//! `debug`, for subscribers that want spans (an OpenTelemetry exporter, a debugging session),
//! and the agent and trace of the running handler are kept in task-locals that a formatter
//! reads only when it writes a line ([`crate::origin::log_context`]).
//!
//! # Memory
//!
//! An agent that never got mail costs its state and mailbox, and no task. An idle agent whose
//! actor started costs what its ractor task holds, and a task is as large as the largest
//! future it may await in place. So the agent's own futures (`init`, a batch of handlers with
//! their tracing and task-local wrappers, the loop an awake agent runs in its handler) are
//! boxed for the time they run: an idle agent's task holds a pointer instead of them.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::time::Instant;
use tracing::{debug, warn, Instrument};

use super::saver::Saver;
use super::{ExitHook, Gate, StartHook};
use crate::agent::{Agent, Ctx};
use crate::body::Body;
use crate::call::{BoxFuture, Call};
use crate::durable::Timer;
use crate::envelope::TraceContext;
use crate::error::AgentError;
use crate::mailbox::{Dormant, Frozen, Mailbox, Took, Wake, BATCH};
use crate::origin::CURRENT_AGENT;
use crate::stats::AgentStats;

/// An agent whose `init` has run, held by its mailbox until the first message starts its
/// actor (see [`crate::mailbox`]).
pub(super) struct Prepared<A: Agent> {
    pub(super) actor: AgentActor<A>,
    pub(super) state: A::State,
    pub(super) ctx: Ctx<A>,
    pub(super) on_exit: ExitHook,
    pub(super) stats: Arc<AgentStats>,
    pub(super) supervisor: Option<ractor::ActorCell>,
    pub(super) on_start: Option<StartHook>,
    pub(super) saver: Option<Box<Saver>>,
}

impl<A: Agent> Dormant for Prepared<A> {
    fn start(self: Box<Self>, mailbox: Arc<Mailbox>) -> Result<ActorRef<Wake>, String> {
        // ractor spawns a task: outside a runtime (a runtime shutting down) there is none
        tokio::runtime::Handle::try_current().map_err(|e| e.to_string())?;
        let Prepared {
            actor,
            state,
            ctx,
            on_exit,
            stats,
            supervisor,
            on_start,
            saver,
        } = *self;
        let id = on_start.as_ref().map(|_| ctx.id().clone());
        let args = (state, ctx, on_exit, stats, mailbox, saver);
        // ractor's spawn runs `pre_start` (which only takes the state in), links the actor
        // and spawns its task: with nothing to wait for, its first poll finishes it, here,
        // with no task of its own in between
        let spawn = async {
            match supervisor {
                Some(sup) => ractor::ActorRuntime::spawn_linked(None, actor, args, sup).await,
                None => ractor::ActorRuntime::spawn(None, actor, args).await,
            }
        };
        let polled = std::pin::pin!(spawn)
            .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
        let aref = match polled {
            std::task::Poll::Ready(Ok((aref, _))) => aref,
            std::task::Poll::Ready(Err(e)) => return Err(e.to_string()),
            std::task::Poll::Pending => return Err("ractor did not start the actor at once".into()),
        };
        if let (Some(hook), Some(id)) = (on_start, id) {
            hook(&id, aref.get_id());
        }
        Ok(aref)
    }

    fn freeze(
        self: Box<Self>,
    ) -> Result<(bytes::Bytes, Vec<Timer>), (Box<dyn Dormant>, AgentError)> {
        match encode_state(self.ctx.id(), &self.state) {
            Ok(state) => Ok((state, self.ctx.timers.list())),
            Err(e) => Err((self, e)),
        }
    }

    fn wants_wake(&self) -> bool {
        !self.ctx.timers.is_empty()
    }

    fn stop(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let Prepared {
                actor,
                mut state,
                ctx,
                on_exit,
                ..
            } = *self;
            actor.behaviour.on_stop(&ctx, &mut state).await;
            on_exit(ctx.id(), ctx.epoch, None);
        })
    }
}

/// The agent's state as a move ships it (MessagePack); a `LocalOnly` in it refuses.
fn encode_state<S: serde::Serialize>(
    id: &crate::id::AgentId,
    state: &S,
) -> Result<bytes::Bytes, AgentError> {
    crate::local_only::guard(
        || crate::codec::encode_bytes(state).map_err(|e| e.to_string()),
        |reason| AgentError::NotMoved {
            id: id.to_string(),
            reason: format!("its state does not encode: {reason}"),
        },
    )
}

pub(super) struct AgentActor<A> {
    pub(super) behaviour: Arc<A>,
    pub(super) handler_timeout: Option<std::time::Duration>,
    pub(super) gate: Option<Gate>,
}

pub(super) struct ActorState<A: Agent> {
    state: A::State,
    ctx: Ctx<A>,
    on_exit: ExitHook,
    exited: AtomicBool,
    stats: Arc<AgentStats>,
    mailbox: Arc<Mailbox>,
    /// Calls taken from the mailbox, not yet handled.
    batch: VecDeque<Call>,
    /// Checkpointing, for a durable agent.
    saver: Option<Box<Saver>>,
    /// Frozen for a move: it ends without `on_stop` (it goes on elsewhere).
    frozen: bool,
    /// The actor runs (linked, in its own task): from then on, its end closes the mailbox.
    /// Before, the state is dropped only by a start that failed, under the mailbox's lock,
    /// and the mailbox closes itself (see `Mailbox::start`).
    live: bool,
}

impl<A: Agent> Drop for ActorState<A> {
    /// However the actor ends (stop, failure, kill), what waits in its mailbox goes with it.
    fn drop(&mut self) {
        if self.live {
            self.mailbox.close();
        }
    }
}

impl<A: Agent> ActorState<A> {
    fn exit(&self, reason: Option<String>) {
        if !self.exited.swap(true, Ordering::AcqRel) {
            (self.on_exit)(self.ctx.id(), self.ctx.epoch, reason);
        }
    }
}

impl<A: Agent> Actor for AgentActor<A> {
    type Msg = Wake;
    type State = ActorState<A>;
    type Arguments = (
        A::State,
        Ctx<A>,
        ExitHook,
        Arc<AgentStats>,
        Arc<Mailbox>,
        Option<Box<Saver>>,
    );

    /// Takes in the agent's state: `init` ran at spawn (see [`crate::mailbox`]).
    async fn pre_start(
        &self,
        _me: ActorRef<Wake>,
        (state, ctx, on_exit, stats, mailbox, saver): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(ActorState {
            state,
            ctx,
            on_exit,
            exited: AtomicBool::new(false),
            stats,
            mailbox,
            batch: VecDeque::new(),
            saver,
            frozen: false,
            live: false,
        })
    }

    /// In the actor's task, linked: its end now closes the mailbox.
    async fn post_start(
        &self,
        _me: ActorRef<Wake>,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        st.live = true;
        Ok(())
    }

    /// Mail is waiting: the actor stays here, handling what waits in batches of at most
    /// [`BATCH`] and listening when nothing does, until its mailbox is released for a stop
    /// (see [`mailbox`]).
    ///
    /// [`mailbox`]: crate::mailbox
    async fn handle(
        &self,
        me: ActorRef<Wake>,
        _: Wake,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // boxed: the actor's task then holds a pointer while the agent is awake, and an
        // agent that never got mail pays nothing for it (see "Memory" in the module doc)
        Box::pin(self.serve(me, st)).await
    }

    async fn post_stop(
        &self,
        _me: ActorRef<Wake>,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if st.frozen {
            return Ok(()); // moved: it goes on elsewhere, nothing ends here
        }
        let ActorState { state, ctx, .. } = &mut *st;
        self.behaviour.on_stop(ctx, state).await;
        st.exit(None);
        Ok(())
    }
}

impl<A: Agent> AgentActor<A> {
    /// The agent is awake: it handles what waits in batches of at most [`BATCH`] and
    /// listens when nothing does, until its mailbox is released for a stop (see [`mailbox`]).
    ///
    /// [`mailbox`]: crate::mailbox
    async fn serve(
        &self,
        me: ActorRef<Wake>,
        st: &mut ActorState<A>,
    ) -> Result<(), ActorProcessingErr> {
        loop {
            if !st.ctx.timers.is_empty() {
                // boxed: an awake agent without timers keeps no room for this in its task
                Box::pin(self.fire_timers(st)).await?;
            }
            if st.batch.is_empty() {
                let save_at = st.saver.as_ref().and_then(|s| s.idle_deadline());
                let timer_at = st.ctx.timers.next().map(crate::timers::instant_of);
                let wake_at = match (save_at, timer_at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let mailbox = &st.mailbox;
                let batch = &mut st.batch;
                let take = std::future::poll_fn(|cx| mailbox.poll_take(batch, cx));
                let took = match wake_at {
                    None => take.await,
                    Some(at) => match tokio::time::timeout_at(at, take).await {
                        Ok(took) => took,
                        Err(_) => {
                            // a timer is due (it fires at the top of the loop), or changes
                            // wait unsaved while idle: save them now
                            let ActorState {
                                state, ctx, saver, ..
                            } = &mut *st;
                            if let Some(s) = saver
                                .as_mut()
                                .filter(|_| save_at.is_some_and(|t| t <= Instant::now()))
                            {
                                s.save(ctx, state);
                            }
                            continue;
                        }
                    },
                };
                if took == Took::Released {
                    if st.mailbox.freeze_asked() && self.freeze(&me, st) {
                        return Ok(());
                    }
                    if st.batch.is_empty() {
                        return Ok(()); // a stop is coming: let ractor deliver it
                    }
                }
            }
            self.run_batch(st).await?;
            if st.mailbox.freeze_asked() && self.freeze(&me, st) {
                return Ok(());
            }
            if st.ctx.origin.stop_requested() {
                // the agent asked to stop for good: its supervisor removes it
                me.stop(Some(super::SELF_STOP.into()));
                return Ok(());
            }
            if st.mailbox.released() {
                // let the stop in between batches; what still waits gets a Wake, so that
                // nothing is stranded if the stop does not come after all
                if st.batch.is_empty() && !st.mailbox.take(&mut st.batch) {
                    return Ok(());
                }
                let _ = me.send_message(Wake);
                return Ok(());
            }
            // as a ractor message per batch did: a busy agent lets its worker's other tasks run
            tokio::task::consume_budget().await;
        }
    }

    /// Freezes the agent for a move (see [`Mailbox::freeze`]): its state, encoded, and the
    /// calls not handled go to the mover, and the actor stops without `on_stop`. True when
    /// it froze; false when it goes on (its state does not encode, or the mover gave up),
    /// with whatever waits in its batch.
    fn freeze(&self, me: &ActorRef<Wake>, st: &mut ActorState<A>) -> bool {
        let Some(tx) = st.mailbox.take_freeze(&mut st.batch) else {
            return false;
        };
        let ActorState {
            state, ctx, saver, ..
        } = &mut *st;
        if let Some(s) = saver.as_mut().filter(|s| s.due()) {
            // replies held for a checkpoint go out once this one is durable
            s.save(ctx, state);
        }
        let timers = ctx.timers.list();
        let frozen = encode_state(ctx.id(), state).map(|state| Frozen {
            state,
            timers,
            calls: st.batch.drain(..).collect(),
        });
        let handed = frozen.as_ref().ok().map(|f| f.calls.len() as u64);
        match tx.send(frozen) {
            Ok(()) if handed.is_some() => {
                let handed = handed.unwrap_or(0);
                // the calls handed over left this mailbox unhandled
                st.stats.settle(handed);
                st.frozen = true;
                st.exited.store(true, Ordering::Release);
                me.stop(Some(super::MOVED.into()));
                true
            }
            // the state does not encode: the mover was told why; the agent goes on
            Ok(()) => {
                st.mailbox.thaw();
                false
            }
            Err(back) => {
                st.mailbox.thaw();
                if let Ok(f) = back {
                    st.batch.extend(f.calls);
                }
                false
            }
        }
    }

    /// Fires the timers due (see [`crate::timers`]), one at a time, each as a message would be
    /// handled: under the agent's scope, a trace of its own, the handler deadline; an `Err`
    /// fails the agent. Stops at a freeze or a stop asked for: the rest stay set.
    async fn fire_timers(&self, st: &mut ActorState<A>) -> Result<(), ActorProcessingErr> {
        while let Some(name) = st.ctx.timers.pop_due(crate::timers::now_unix_ms()) {
            if let Some(refusal) = self.gate.as_ref().and_then(|g| g()) {
                // the node must not act now (paused past its lease, fenced): the timer waits
                warn!(id = %st.ctx.id(), timer = %name, %refusal, "timer held");
                st.ctx.timers.set(name, crate::timers::now_unix_ms() + 100);
                return Ok(());
            }
            let trace = TraceContext::new_root();
            st.ctx.trace = trace;
            st.ctx.sender = None;
            st.ctx.seq = 0;
            let origin = st.ctx.origin.clone();
            let deadline = self.handler_timeout;
            let ActorState { state, ctx, .. } = &mut *st;
            let ctx: &Ctx<A> = ctx;
            let span = tracing::debug_span!("agent", id = %ctx.id(), trace_id = %trace.trace_id_hex(), timer = %name);
            let firing = async {
                let on_timer = self.behaviour.on_timer(ctx, state, &name);
                match deadline {
                    None => on_timer.await.map_err(|e| e.to_string()),
                    Some(d) => match tokio::time::timeout(d, on_timer).await {
                        Ok(r) => r.map_err(|e| e.to_string()),
                        Err(_) => Err(format!(
                            "timer {name} overran the {} ms handler deadline",
                            d.as_millis()
                        )),
                    },
                }
            };
            let result = Box::pin(CURRENT_AGENT.scope(origin, trace.scope(firing)))
                .instrument(span)
                .await;
            if let Err(reason) = result {
                warn!(id = %st.ctx.id(), timer = %name, %reason, "agent failed in a timer");
                if let Some(s) = st.saver.as_mut() {
                    s.fail_held(st.ctx.id(), &reason);
                }
                st.exit(Some(reason.clone()));
                return Err(reason.into());
            }
            if let Some(s) = st.saver.as_mut() {
                s.handled(None, 0);
            }
            if st.mailbox.freeze_asked() || st.ctx.origin.stop_requested() {
                break;
            }
        }
        let ActorState {
            state, ctx, saver, ..
        } = &mut *st;
        if let Some(s) = saver.as_mut().filter(|s| s.due()) {
            s.save(ctx, state);
        }
        Ok(())
    }

    /// Handles at most [`BATCH`] of the calls taken from the mailbox.
    ///
    /// The agent is the current one for the whole batch (its sends carry it as sender). The
    /// batch runs boxed: an idle actor's task then holds only a pointer, not the largest
    /// handler future of its kind (see "Memory" in the module doc). The trace scope is set
    /// once too; each message makes its own trace the current one.
    async fn run_batch(&self, st: &mut ActorState<A>) -> Result<(), ActorProcessingErr> {
        let origin = st.ctx.origin.clone();
        let trace = st.ctx.trace;
        Box::pin(CURRENT_AGENT.scope(
            origin,
            trace.scope(async {
                let mut handled = 0;
                for _ in 0..BATCH {
                    if st.mailbox.freeze_asked() {
                        break; // at a message boundary: the move takes the rest
                    }
                    let Some(call) = st.batch.pop_front() else {
                        break;
                    };
                    self.handle_call(call, st, &mut handled).await?;
                    if st.ctx.origin.stop_requested() {
                        break;
                    }
                }
                let ActorState {
                    state, ctx, saver, ..
                } = &mut *st;
                if let Some(s) = saver.as_mut().filter(|s| s.due()) {
                    s.save(ctx, state);
                }
                st.stats.settle(handled);
                Ok::<_, ActorProcessingErr>(())
            }),
        ))
        .await
    }

    /// Handles one message: the gate, decoding, the handler (under the message's trace), the
    /// reply. An error fails the agent. Runs inside the batch's `CURRENT_AGENT` and trace
    /// scopes; the message's trace is made the current one.
    async fn handle_call(
        &self,
        call: Call,
        st: &mut ActorState<A>,
        handled: &mut u64,
    ) -> Result<(), ActorProcessingErr> {
        // counted in the stats once per batch, or at once if this call fails the agent
        *handled += 1;
        if let Some(refusal) = self.gate.as_ref().and_then(|g| g()) {
            warn!(id = %st.ctx.id(), trace_id = %call.trace.trace_id_hex(), %refusal, "message refused before its handler");
            if let Some(r) = call.reply {
                let _ = r.send(Err(refusal));
            }
            return Ok(());
        }
        let like = call.body.encoding();
        let msg: A::Msg = match call.body.decode() {
            Ok(m) => m,
            Err(reason) => {
                warn!(id = %st.ctx.id(), trace_id = %call.trace.trace_id_hex(), %reason, "message does not decode; the agent keeps running");
                if let Some(r) = call.reply {
                    let _ = r.send(Err(AgentError::BadPayload {
                        id: st.ctx.id().to_string(),
                        reason,
                    }));
                }
                return Ok(());
            }
        };
        st.ctx.trace = call.trace;
        st.ctx.sender = call.sender;
        st.ctx.seq = call.seq;
        // at debug: see "Logs and spans" in the module doc
        let span =
            tracing::debug_span!("agent", id = %st.ctx.id(), trace_id = %call.trace.trace_id_hex());
        let deadline = self.handler_timeout;
        // borrow the context and the state apart: no per-message copy of the context
        let ActorState { state, ctx, .. } = &mut *st;
        let ctx: &Ctx<A> = ctx;
        call.trace.make_current();
        let result = async {
            debug!(seq = call.seq, sender = ?ctx.sender, "handling message");
            let handling = self.behaviour.handle(ctx, state, msg);
            match deadline {
                None => handling.await.map_err(|e| (e.to_string(), None)),
                Some(d) => match tokio::time::timeout(d, handling).await {
                    Ok(r) => r.map_err(|e| (e.to_string(), None)),
                    // an overrunning handler is a failure of the agent; the asker
                    // gets a timeout
                    Err(_) => Err((
                        format!("handler overran its {} ms deadline", d.as_millis()),
                        Some(AgentError::Timeout {
                            ms: d.as_millis() as u64,
                        }),
                    )),
                },
            }
        }
        .instrument(span)
        .await;
        match result {
            Ok(reply) => {
                if let Some(s) = st.saver.as_mut() {
                    s.handled(st.ctx.sender.as_ref(), st.ctx.seq);
                }
                if let Some(r) = call.reply {
                    let out = crate::local_only::guard(
                        || Body::encode(reply, like),
                        |reason| AgentError::Internal(format!("reply does not encode: {reason}")),
                    );
                    match st.saver.as_mut() {
                        Some(s) => s.reply(r, out),
                        None => {
                            let _ = r.send(out);
                        }
                    }
                }
                Ok(())
            }
            Err((reason, to_asker)) => {
                warn!(id = %st.ctx.id(), trace_id = %call.trace.trace_id_hex(), %reason, "agent failed");
                // leave the host first: whoever learns of the failure from the reply and sends
                // again reaches the restarted instance, not this dying one. What the stats
                // still count as waiting then is lost with the instance.
                st.stats.settle(std::mem::take(handled));
                if let Some(s) = st.saver.as_mut() {
                    s.fail_held(st.ctx.id(), &reason);
                }
                st.exit(Some(reason.clone()));
                if let Some(r) = call.reply {
                    let _ = r.send(Err(to_asker.unwrap_or_else(|| AgentError::Failed {
                        id: st.ctx.id().to_string(),
                        reason: reason.clone(),
                    })));
                }
                Err(reason.into())
            }
        }
    }
}
