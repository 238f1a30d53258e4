//! An agent's life on its host: activation, exit, restart, give-up and stop.
//!
//! A supervised agent that fails goes *down* (its slot keeps what it needs to start again, and
//! the messages that arrive meanwhile); its supervisor calls [`Host::restart`] or
//! [`Host::give_up`]. An unsupervised agent that fails is *failed* for good.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use ractor::{ActorCell, ActorId};
use tracing::{debug, info, warn};

use super::door::into_call;
use super::{Activation, Down, DownStatus, Host, Hosted, RunOptions, Spec, StoredRun};
use crate::durable::Checkpoint;
use crate::envelope::TraceContext;
use crate::error::AgentError;
use crate::id::AgentId;
use crate::kind::SpawnSpec;
use crate::mailbox::AgentActorRef;
use crate::record::SpawnRecord;
use crate::stats::AgentStats;

impl Host {
    /// Starts `id` here with `epoch`, or returns the running activation. `init` runs in this
    /// task; the agent's actor starts at its first message (see [`crate::mailbox`]).
    /// `created` is called when the agent was created, just before it can be sent anything
    /// (its supervisor takes it in there: no exit of the agent can come before).
    ///
    /// # Errors
    /// [`AgentError::UnknownKind`], [`AgentError::BadPayload`] for args that do not decode,
    /// [`AgentError::Failed`] when `init` fails or overruns its start timeout.
    pub async fn activate(
        &self,
        id: AgentId,
        epoch: u64,
        record: Arc<SpawnRecord>,
        trace: TraceContext,
        run: RunOptions,
        created: impl FnOnce(),
    ) -> Result<Activation, AgentError> {
        self.activate_from(id, epoch, record, trace, run, None, created)
            .await
    }

    /// [`Host::activate`], starting from `restore` instead of `init` (the target of a move);
    /// with none, a durable agent starts from its newest checkpoint known here, if any.
    ///
    /// # Errors
    /// As [`Host::activate`]; [`AgentError::Failed`] when the checkpoint does not decode.
    #[allow(clippy::too_many_arguments)]
    pub async fn activate_from(
        &self,
        id: AgentId,
        epoch: u64,
        record: Arc<SpawnRecord>,
        trace: TraceContext,
        run: RunOptions,
        restore: Option<Arc<Checkpoint>>,
        created: impl FnOnce(),
    ) -> Result<Activation, AgentError> {
        let kind = self.kind(id.kind())?;
        let lock = self.activating.entry(id.clone()).or_default().clone();
        let _guard = lock.lock().await;
        if let Some(epoch) = self.epoch_of(&id) {
            return Ok(Activation {
                id: id.clone(),
                node: self.node.to_string(),
                epoch,
                created: false,
            });
        }
        // moved here: messages addressed to the epochs it came by are its own
        let floor = restore
            .as_deref()
            .filter(|cp| cp.version.is_final())
            .map_or(epoch, |cp| match cp.since_epoch {
                0 => cp.version.epoch,
                since => since,
            });
        let spec = Spec {
            kind,
            record,
            epoch,
            floor,
            run: StoredRun::new(run),
        };
        let stats = Arc::<AgentStats>::default();
        let actor = self
            .start(&id, &spec, trace, stats.clone(), restore)
            .await?;
        self.failed.remove(&id);
        created();
        let hosted = Hosted {
            actor,
            spec,
            started: Instant::now(),
            stats,
        };
        // the target of a move: held until the source has handed everything over
        if let Some(hosted) = self.hold_installed(&id, epoch, hosted) {
            self.moved.remove(&id);
            let actor = hosted.actor.clone();
            self.agents.insert(id.clone(), hosted);
            actor.start_if_timed();
        }
        drop(_guard);
        self.activating.remove(&id);
        // at debug, as OTP's progress reports and Akka's lifecycle logs: a node that spawns
        // thousands of agents would otherwise write a line for each (and at `info`, that line
        // cost a fifth of a spawn)
        debug!(agent = %id, epoch, trace_id = %trace.trace_id_hex(), "agent activated");
        Ok(Activation {
            id,
            node: self.node.to_string(),
            epoch,
            created: true,
        })
    }

    pub(super) async fn start(
        &self,
        id: &AgentId,
        spec: &Spec,
        trace: TraceContext,
        stats: Arc<AgentStats>,
        restore: Option<Arc<Checkpoint>>,
    ) -> Result<AgentActorRef, AgentError> {
        let on_exit = self.on_exit.clone();
        let (durable, restore) = self.durable_spec(id, spec, &stats, restore);
        spec.kind
            .spawn(SpawnSpec {
                id: id.clone(),
                epoch: spec.epoch,
                node: self.node.clone(),
                record: spec.record.clone(),
                trace,
                on_exit,
                stats,
                local_only: spec.record.placement.is_local_only(),
                supervisor: spec.run.supervisor.clone(),
                on_start: spec
                    .run
                    .supervisor
                    .as_ref()
                    .and_then(|_| self.start_listener.get().cloned()),
                handler_timeout: spec.run.timeouts().handler,
                start_timeout: spec.run.timeouts().start,
                gate: self.gate.get().cloned(),
                router: self.router.get().cloned(),
                durable,
                restore,
            })
            .await
    }

    /// How an agent starts: from `restore` (a move), else, if it is durable, from its newest
    /// checkpoint known here, with the door's sequence table seeded from the marks (a resend
    /// of what the checkpoint covers is a duplicate); and its checkpointing, if it is durable
    /// and the host has a checkpointer.
    fn durable_spec(
        &self,
        id: &AgentId,
        spec: &Spec,
        stats: &AgentStats,
        restore: Option<Arc<Checkpoint>>,
    ) -> (Option<crate::kind::DurableSpec>, Option<Arc<Checkpoint>>) {
        let mode = spec.record.durability;
        let sink = self
            .checkpoints
            .get()
            .filter(|_| mode.is_durable())
            .cloned();
        let restore = restore.or_else(|| sink.as_ref().and_then(|s| s.latest(id)));
        if let Some(cp) = &restore {
            let mut guard = stats
                .last_seq
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let table = guard.get_or_insert_with(Box::default);
            for m in &cp.marks {
                let last = table.entry(m.sender.clone()).or_insert(0);
                *last = (*last).max(m.seq);
            }
            info!(agent = %id, epoch = spec.epoch, from = %cp.version, "starting from its checkpoint");
        }
        let durable = sink.map(|sink| crate::kind::DurableSpec { mode, sink });
        (durable, restore)
    }

    pub(super) fn exited(&self, id: &AgentId, epoch: u64, reason: Option<String>) {
        let supervised = self
            .agents
            .get(id)
            .is_some_and(|h| h.spec.epoch == epoch && h.spec.run.supervisor.is_some());
        if let (Some(r), true) = (&reason, supervised) {
            // hold the down slot's lock while the instance leaves, so that a sender never
            // finds the agent in neither map (see `deliver`)
            if let dashmap::Entry::Vacant(slot) = self.down.entry(id.clone()) {
                if let Some((_, h)) = self.agents.remove_if(id, |_, h| h.spec.epoch == epoch) {
                    h.actor.close();
                    Self::count_lost(id, &h.stats);
                    slot.insert(Down {
                        actor: h.actor.actor_id(),
                        spec: h.spec,
                        status: DownStatus::Restarting,
                        reason: r.clone(),
                        queue: std::sync::Mutex::new(VecDeque::new()),
                        stats: h.stats,
                    });
                }
            }
            return;
        }
        let Some((_, h)) = self.agents.remove_if(id, |_, h| h.spec.epoch == epoch) else {
            return;
        };
        h.actor.close();
        if reason.is_some() {
            Self::count_lost(id, &h.stats);
        }
        match &reason {
            Some(r) => {
                self.failed.insert(id.clone(), (epoch, r.clone()));
                self.notify_exit(id, epoch, reason);
            }
            None => {
                debug!(agent = %id, epoch, "agent stopped");
                self.notify_exit(id, epoch, None);
            }
        }
    }

    /// What still waits in a failed instance's mailbox dies with it: count it and say so.
    fn count_lost(id: &AgentId, stats: &AgentStats) {
        let lost = stats.waiting();
        if lost > 0 {
            stats.settle(lost);
            stats.lost.fetch_add(lost, Ordering::Relaxed);
            warn!(agent = %id, lost, "messages waiting in the failed instance's mailbox were lost");
        }
    }

    fn notify_exit(&self, id: &AgentId, epoch: u64, reason: Option<String>) {
        if let Some(l) = self.exit_listener.get() {
            l(id, epoch, reason);
        }
    }

    /// The supervisor chose to wait before restarting `id`.
    pub fn backing_off(&self, id: &AgentId) {
        if let Some(mut d) = self.down.get_mut(id) {
            d.status = DownStatus::BackingOff;
        }
    }

    /// Starts a down agent again (same id, epoch and arguments), then hands it the messages
    /// that waited, in order. Returns the actor of the instance it replaced, if that one had
    /// started: its supervision events are now stale.
    ///
    /// # Errors
    /// [`AgentError::NotFound`] if it is not down here; [`AgentError::Failed`] if it failed
    /// to start (it stays down; its supervisor counts the failure).
    pub async fn restart(
        &self,
        id: &AgentId,
        supervisor: Option<ActorCell>,
    ) -> Result<Option<ActorId>, AgentError> {
        let (mut spec, stats, replaced) = match self.down.get(id) {
            Some(d) => (d.spec.clone(), d.stats.clone(), d.actor),
            None => {
                // a running agent that the supervisor stopped for a sibling's restart
                let Some((_, h)) = self.agents.remove(id) else {
                    return Err(AgentError::NotFound { id: id.to_string() });
                };
                h.actor.close();
                let replaced = h.actor.actor_id();
                (h.spec, h.stats, replaced)
            }
        };
        if supervisor.is_some() {
            spec.run.supervisor = supervisor;
        }
        let actor = self
            .start(id, &spec, TraceContext::new_root(), stats.clone(), None)
            .await?;
        // promote the slot under its entry lock: the waiting messages go first, then the
        // instance becomes visible to new senders, then the slot goes (see `deliver`)
        let hosted = Hosted {
            actor: actor.clone(),
            spec,
            started: Instant::now(),
            stats: stats.clone(),
        };
        match self.down.entry(id.clone()) {
            dashmap::Entry::Occupied(mut slot) => {
                let queued = std::mem::take(
                    slot.get_mut()
                        .queue
                        .get_mut()
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                );
                for (d, body, reply) in queued {
                    let (_, call) = into_call(d, body, reply);
                    if actor.send(call).is_err() {
                        stats.settle(1);
                    }
                }
                self.agents.insert(id.clone(), hosted);
                slot.remove();
            }
            dashmap::Entry::Vacant(_) => {
                self.agents.insert(id.clone(), hosted);
            }
        }
        actor.start_if_timed();
        info!(agent = %id, "agent restarted");
        Ok(replaced)
    }

    /// The supervisor gave up on `id`: it stays failed, and the messages that waited fail.
    pub fn give_up(&self, id: &AgentId, reason: &str) {
        let Some((_, d)) = self.down.remove(id) else {
            return;
        };
        warn!(agent = %id, %reason, "agent given up");
        let err = AgentError::Failed {
            id: id.to_string(),
            reason: reason.to_owned(),
        };
        for (_, _, reply) in d
            .queue
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            d.stats.settle(1);
            if let Some(r) = reply {
                let _ = r.send(Err(err.clone()));
            }
        }
        self.failed
            .insert(id.clone(), (d.spec.epoch, reason.to_owned()));
        self.notify_exit(id, d.spec.epoch, Some(reason.to_owned()));
    }

    /// Forgets a down or failed agent (its supervisor removed it).
    pub fn forget(&self, id: &AgentId) {
        if let Some((_, d)) = self.down.remove(id) {
            self.notify_exit(id, d.spec.epoch, Some(d.reason));
        }
    }

    /// Stops a running agent: asks it to stop, waits its shutdown timeout, then kills it.
    /// With `for_restart` the slot is kept (the supervisor starts it again).
    pub async fn stop(&self, id: &AgentId, for_restart: bool) {
        let Some(h) = self.agents.get(id).map(|h| h.clone()) else {
            return;
        };
        // before the instance is unlisted (which closes its mailbox): a dormant agent is then
        // stopped with its `on_stop`, not dropped
        let stopping = h.actor.release_for_stop();
        if for_restart {
            // as in `exited`: the down slot's lock is held while the instance leaves
            if let dashmap::Entry::Vacant(slot) = self.down.entry(id.clone()) {
                if let Some((_, h)) = self.agents.remove(id) {
                    h.actor.close();
                }
                slot.insert(Down {
                    actor: h.actor.actor_id(),
                    spec: h.spec.clone(),
                    status: DownStatus::Restarting,
                    reason: "stopped for a sibling's restart".into(),
                    queue: std::sync::Mutex::new(VecDeque::new()),
                    stats: h.stats.clone(),
                });
            }
        }
        let timeout = h.spec.run.timeouts().shutdown;
        if stopping
            .wait(Some("stopped by its supervisor".into()), Some(timeout))
            .await
            .is_err()
        {
            warn!(agent = %id, ?timeout, "agent did not stop in time; killed");
            h.actor.kill();
        }
    }
}
