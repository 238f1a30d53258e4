//! An agent's host during a live migration: freezing it at a message boundary, holding what
//! comes meanwhile, and after the move forwarding what still comes here (the node's
//! migration protocol is in `tether_cluster::migration`).
//!
//! ```text
//! source: freeze ──▶ slot `moving`: messages wait in it, in order (as while restarting)
//!           │        the instance stops at its next message boundary (never mid-handler) and
//!           │        hands over its state and the calls it had not handled
//!           ├─ committed: moved(to, e') ──▶ the calls handed over, then what waited, go to
//!           │             the forwarder in order; later messages too (a tombstone), for
//!           │             TOMBSTONE, then the id is unknown here
//!           └─ aborted:   unfreeze ──▶ a new instance from the frozen state, same epoch;
//!                         the calls handed over, then what waited, reach it in order
//! target: activate_from(checkpoint) ──▶ dormant until its first message; discard on abort
//! ```
//!
//! The frozen checkpoint's version is `(epoch, u64::MAX)`: the activation's last, newer than
//! any checkpoint it took. Its marks are the door's sequence table when the slot replaced the
//! instance, lowered below each sender's first call handed over: the target takes those calls
//! again, and refuses what the instance had handled.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::door::into_call;
use super::{Down, DownStatus, Host, Hosted};
use crate::call::Call;
use crate::durable::{Checkpoint, SenderMark, Version};
use crate::envelope::Contract;
use crate::error::AgentError;
use crate::id::AgentId;
use crate::mailbox::{Freezing, Frozen};
use crate::record::SpawnRecord;

/// How long a moved agent's messages are forwarded from its old host.
pub const TOMBSTONE: Duration = Duration::from_secs(30);

/// Sends a call for a moved agent on to its new host: `(target, contract, node, epoch, call)`.
pub type Forwarder = Arc<dyn Fn(&AgentId, Contract, &str, u64, Call) + Send + Sync>;

/// Told when an agent moved here runs for everyone: the agent, and the node it came from.
pub type ArrivalHook = Arc<dyn Fn(&AgentId, &str) + Send + Sync>;

/// Where a moved agent went.
#[derive(Debug, Clone)]
pub(super) struct Tombstone {
    pub(super) to: Arc<str>,
    pub(super) epoch: u64,
    pub(super) at: Instant,
}

/// An agent installed for a move, not yet running for everyone (see the module doc): what
/// its source relays (from the source, addressed to the new epoch) goes in at once, in the
/// source's order; what anyone else sends waits until the source says it handed everything
/// over, so that no sender's later message overtakes an earlier one still on its way
/// through the source.
pub(super) struct Installed {
    /// The node it comes from: what that node relays goes in at once.
    pub(super) source: Arc<str>,
    pub(super) hosted: Hosted,
    /// What others sent meanwhile, in order.
    pub(super) queue: std::sync::Mutex<super::Waiting>,
}

/// A frozen agent, as the mover ships it.
pub struct FrozenAgent {
    /// Its state, epoch and marks (the version is the activation's last).
    pub checkpoint: Checkpoint,
    /// How it was spawned.
    pub record: Arc<SpawnRecord>,
    /// Calls it had not handled, in order (they go to the target after the commit).
    pub calls: Vec<Call>,
    /// When it handled its last message (the move's pause starts then).
    pub frozen_at: Instant,
}

impl std::fmt::Debug for FrozenAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrozenAgent")
            .field("id", &self.checkpoint.id)
            .field("version", &self.checkpoint.version)
            .field("calls", &self.calls.len())
            .finish()
    }
}

fn not_moved(id: &AgentId, reason: impl Into<String>) -> AgentError {
    AgentError::NotMoved {
        id: id.to_string(),
        reason: reason.into(),
    }
}

impl Host {
    /// Registers where calls for moved agents go. Returns false if one was registered.
    pub fn set_forwarder(&self, f: Forwarder) -> bool {
        self.forwarder.set(f).is_ok()
    }

    /// Registers what is told when an agent moved here runs. Returns false if one was
    /// registered already.
    pub fn set_arrival_listener(&self, f: ArrivalHook) -> bool {
        self.arrived.set(f).is_ok()
    }

    /// Where `id` went, if it moved from here within [`TOMBSTONE`].
    pub fn moved_to(&self, id: &AgentId) -> Option<(String, u64)> {
        let t = self.moved.get(id)?;
        if t.at.elapsed() > TOMBSTONE {
            drop(t);
            self.moved.remove(id);
            return None;
        }
        Some((t.to.to_string(), t.epoch))
    }

    /// Hands a call for a moved agent to the forwarder; gives it back if there is none.
    pub(super) fn forward(&self, id: &AgentId, call: Call) -> Result<(), Box<Call>> {
        let (Some((to, epoch)), Some(f)) = (self.moved_to(id), self.forwarder.get()) else {
            return Err(Box::new(call));
        };
        let Ok(kind) = self.kind(id.kind()) else {
            return Err(Box::new(call));
        };
        f(id, kind.contract(), &to, epoch, call);
        Ok(())
    }

    /// Freezes `id` for a move (see the module doc): waits at most `within` for its handler
    /// to reach a message boundary.
    ///
    /// # Errors
    /// [`AgentError::NotMoved`] saying why (local-only, restarting, a handler over `within`,
    /// a state that does not encode); the agent then keeps running here.
    /// [`AgentError::NotFound`] if it does not run here.
    pub async fn freeze(&self, id: &AgentId, within: Duration) -> Result<FrozenAgent, AgentError> {
        let h = match self.agents.get(id) {
            Some(h) => h.clone(),
            None if self.down.contains_key(id) => {
                return Err(not_moved(id, "it is restarting or moving here"))
            }
            None => return Err(AgentError::NotFound { id: id.to_string() }),
        };
        if h.spec.record.placement.is_local_only() {
            return Err(not_moved(
                id,
                "it is local-only: its state never leaves its device",
            ));
        }
        let marks = self.hold_for_move(id, &h)?;
        let (tx, mut rx) = oneshot::channel();
        let frozen: Result<Frozen, AgentError> = match h.actor.freeze(tx) {
            Freezing::Dormant(agent, calls) => match agent.freeze() {
                Ok((state, timers)) => Ok(Frozen {
                    state,
                    timers,
                    calls,
                }),
                Err((agent, e)) => {
                    h.actor.unfreeze_dormant(agent, calls);
                    Err(e)
                }
            },
            Freezing::Actor => match tokio::time::timeout(within, &mut rx).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(not_moved(id, "it ended while it was being frozen")),
                Err(_) => {
                    rx.close();
                    h.actor.cancel_freeze();
                    rx.try_recv().unwrap_or_else(|_| {
                        Err(not_moved(
                            id,
                            format!(
                                "its handler did not reach a message boundary within {} ms",
                                within.as_millis()
                            ),
                        ))
                    })
                }
            },
            Freezing::Gone => Err(not_moved(id, "it stopped")),
        };
        let frozen = match frozen {
            Ok(f) => f,
            Err(e) => {
                self.unhold(id, h);
                return Err(e);
            }
        };
        let frozen_at = Instant::now();
        let marks = lower_marks(marks, &frozen.calls);
        debug!(agent = %id, calls = frozen.calls.len(), "frozen for a move");
        Ok(FrozenAgent {
            checkpoint: Checkpoint {
                id: id.clone(),
                version: Version {
                    epoch: h.spec.epoch,
                    seq: u64::MAX,
                },
                state: frozen.state,
                marks,
                timers: frozen.timers,
                taken_unix_ms: super::now_unix_ms(),
                since_epoch: h.spec.floor,
            },
            record: h.spec.record.clone(),
            calls: frozen.calls,
            frozen_at,
        })
    }

    /// Puts `id` in a `moving` slot (its messages wait there); the door's sequence table then.
    fn hold_for_move(
        &self,
        id: &AgentId,
        h: &Hosted,
    ) -> Result<HashMap<Arc<str>, u64>, AgentError> {
        let dashmap::Entry::Vacant(slot) = self.down.entry(id.clone()) else {
            return Err(not_moved(id, "it is restarting or moving here"));
        };
        if self
            .agents
            .remove_if(id, |_, x| x.spec.epoch == h.spec.epoch)
            .is_none()
        {
            return Err(not_moved(id, "it stopped"));
        }
        let marks = h
            .stats
            .last_seq
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_deref()
            .cloned()
            .unwrap_or_default();
        slot.insert(Down {
            actor: h.actor.actor_id(),
            spec: h.spec.clone(),
            status: DownStatus::Moving,
            reason: "moving".into(),
            queue: std::sync::Mutex::new(VecDeque::new()),
            stats: h.stats.clone(),
        });
        Ok(marks)
    }

    /// A freeze that did not happen: the instance is listed again and what waited reaches it.
    fn unhold(&self, id: &AgentId, h: Hosted) {
        let dashmap::Entry::Occupied(mut slot) = self.down.entry(id.clone()) else {
            return;
        };
        if slot.get().status != DownStatus::Moving {
            return;
        }
        let queued = std::mem::take(
            slot.get_mut()
                .queue
                .get_mut()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for (d, body, reply) in queued {
            let (_, call) = into_call(d, body, reply);
            if h.actor.send(call).is_err() {
                h.stats.settle(1);
            }
        }
        let actor = h.actor.clone();
        self.agents.insert(id.clone(), h);
        slot.remove();
        actor.start_if_timed();
    }

    /// The move of `id` committed (it runs on `to` as `epoch`): the calls the frozen instance
    /// handed over, then what waited here, go to the forwarder in order, and so does what
    /// comes later, for [`TOMBSTONE`].
    pub fn moved(&self, id: &AgentId, to: &str, epoch: u64, calls: Vec<Call>) {
        let dashmap::Entry::Occupied(mut slot) = self.down.entry(id.clone()) else {
            return;
        };
        let queued = std::mem::take(
            slot.get_mut()
                .queue
                .get_mut()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let stats = slot.get().stats.clone();
        // under the slot's lock: no later message overtakes these
        self.moved.insert(
            id.clone(),
            Tombstone {
                to: to.into(),
                epoch,
                at: Instant::now(),
            },
        );
        let held = queued
            .into_iter()
            .map(|(d, body, reply)| into_call(d, body, reply).1);
        for call in calls.into_iter().chain(held) {
            stats.settle(1);
            if let Err(call) = self.forward(id, call) {
                if let Some(r) = call.reply {
                    let _ = r.send(Err(AgentError::Moved {
                        id: id.to_string(),
                        to: to.to_owned(),
                        epoch,
                    }));
                }
            }
        }
        slot.remove();
        info!(agent = %id, %to, epoch, "moved");
    }

    /// The move of `id` was aborted after it froze: it runs here again from its frozen state
    /// (same epoch), and the calls it handed over, then what waited, reach it in order.
    ///
    /// # Errors
    /// [`AgentError::Failed`] if it cannot start again (its state does not decode): what
    /// waited fails with it.
    pub async fn unfreeze(&self, frozen: FrozenAgent) -> Result<(), AgentError> {
        let id = frozen.checkpoint.id.clone();
        let Some((spec, stats)) = self
            .down
            .get(&id)
            .filter(|d| d.status == DownStatus::Moving)
            .map(|d| (d.spec.clone(), d.stats.clone()))
        else {
            return Err(AgentError::NotFound { id: id.to_string() });
        };
        let cp = Arc::new(frozen.checkpoint);
        let started = self
            .start(
                &id,
                &spec,
                crate::TraceContext::new_root(),
                stats.clone(),
                Some(cp),
            )
            .await;
        let actor = match started {
            Ok(a) => a,
            Err(e) => {
                warn!(agent = %id, error = %e, "a move was aborted and the agent could not start again");
                self.give_up(&id, &e.to_string());
                return Err(e);
            }
        };
        for call in frozen.calls {
            if actor.send(call).is_err() {
                stats.settle(1);
            }
        }
        let h = Hosted {
            actor,
            spec,
            started: Instant::now(),
            stats,
        };
        self.unhold(&id, h);
        info!(agent = %id, "move aborted; the agent runs here again");
        Ok(())
    }

    /// Announces that `id` will be installed here as `epoch` for a move from `source`: that
    /// activation is held (see [`Host::drained`]) rather than listed as running.
    pub fn expect_install(&self, id: &AgentId, epoch: u64, source: &str) {
        self.installing.insert((id.clone(), epoch), source.into());
    }

    /// An activation just made: held if a move announced it; else given back to be listed.
    pub(super) fn hold_installed(
        &self,
        id: &AgentId,
        epoch: u64,
        hosted: Hosted,
    ) -> Option<Hosted> {
        let Some((_, source)) = self.installing.remove(&(id.clone(), epoch)) else {
            return Some(hosted);
        };
        self.installed.insert(
            id.clone(),
            Installed {
                source,
                hosted,
                queue: std::sync::Mutex::new(VecDeque::new()),
            },
        );
        None
    }

    /// Whether `id` is installed here as `epoch`, held for its move.
    pub fn is_installed(&self, id: &AgentId, epoch: u64) -> bool {
        self.installed_epoch(id) == Some(epoch)
    }

    /// The epoch `id` is installed here as, held for its move, if it is.
    pub fn installed_epoch(&self, id: &AgentId) -> Option<u64> {
        self.installed.get(id).map(|i| i.hosted.spec.epoch)
    }

    /// The source of `id`'s move has handed everything over (after the commit): the agent
    /// runs here for everyone, what others sent meanwhile first, in order.
    pub fn drained(&self, id: &AgentId, epoch: u64) {
        let Some(mut i) = self
            .installed
            .get_mut(id)
            .filter(|i| i.hosted.spec.epoch == epoch)
        else {
            return;
        };
        // under the entry's lock: a sender that finds it here waits, then finds it running
        let queued = std::mem::take(
            i.queue
                .get_mut()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for (d, body, reply) in queued {
            let (_, call) = into_call(d, body, reply);
            if i.hosted.actor.send(call).is_err() {
                i.hosted.stats.settle(1);
            }
        }
        self.moved.remove(id);
        self.agents.insert(id.clone(), i.hosted.clone());
        i.hosted.actor.start_if_timed();
        let source = i.source.clone();
        drop(i);
        self.installed.remove(id);
        if let Some(f) = self.arrived.get() {
            f(id, &source); // this node's senders send here directly, once nothing overtakes
        }
        debug!(agent = %id, epoch, "installed agent runs");
    }

    /// A frozen agent whose move lost to a placement elsewhere: neither it nor what waited
    /// for it runs here; the askers learn it is not here (their next send finds it).
    pub fn drop_frozen(&self, id: &AgentId, calls: Vec<Call>) {
        let Some((_, slot)) = self
            .down
            .remove_if(id, |_, d| d.status == DownStatus::Moving)
        else {
            return;
        };
        let waited = slot
            .queue
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .into_iter()
            .map(|(d, body, reply)| into_call(d, body, reply).1);
        for call in calls.into_iter().chain(waited) {
            slot.stats.settle(1);
            if let Some(r) = call.reply {
                let _ = r.send(Err(AgentError::NotHere {
                    id: id.to_string(),
                    node: self.node.to_string(),
                }));
            }
        }
        warn!(agent = %id, "frozen instance dropped: the agent was placed elsewhere");
    }

    /// Drops an instance installed for a move that was aborted (no `on_stop`: it never ran for
    /// everyone); what others sent it meanwhile goes where the agent still runs, if this node
    /// knows, else fails with why.
    pub fn discard(&self, id: &AgentId, epoch: u64) {
        self.installing.remove(&(id.clone(), epoch));
        if let Some((_, i)) = self
            .installed
            .remove_if(id, |_, i| i.hosted.spec.epoch == epoch)
        {
            i.hosted.actor.close();
            let queued = i
                .queue
                .into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (d, body, reply) in queued {
                let (_, call) = into_call(d, body, reply);
                if let Err(call) = self.forward(id, call) {
                    if let Some(r) = call.reply {
                        let _ = r.send(Err(AgentError::NotHere {
                            id: id.to_string(),
                            node: self.node.to_string(),
                        }));
                    }
                }
            }
            debug!(agent = %id, epoch, "installed instance discarded");
        }
        if let Some((_, h)) = self.agents.remove_if(id, |_, h| h.spec.epoch == epoch) {
            h.actor.close();
        }
    }
}

/// The marks a frozen agent hands over: each sender's mark lowered below its first call
/// handed over (the target takes those again).
fn lower_marks(mut marks: HashMap<Arc<str>, u64>, calls: &[Call]) -> Vec<SenderMark> {
    for c in calls {
        if let (Some(sender), true) = (&c.sender, c.seq != 0) {
            if let Some(m) = marks.get_mut(&**sender) {
                *m = (*m).min(c.seq - 1);
            }
        }
    }
    marks
        .into_iter()
        .map(|(sender, seq)| SenderMark { sender, seq })
        .collect()
}
