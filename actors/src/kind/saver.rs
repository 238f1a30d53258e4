//! What a durable agent's actor keeps to checkpoint it: the activation's handled count, each
//! sender's handled mark, what is not saved yet, and (in `acked` mode) the replies waiting for
//! the checkpoint that covers them. See [`crate::durable`] for when checkpoints are taken.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use tokio::time::Instant;
use tracing::warn;

use crate::body::Body;
use crate::call::ReplyTx;
use crate::durable::{
    Checkpoint, CheckpointSink, Durability, SenderMark, Version, EVERY, EVERY_MSGS,
};
use crate::error::AgentError;
use crate::id::AgentId;

/// How a durable agent is checkpointed: its mode, and where its checkpoints go.
pub struct DurableSpec {
    /// The agent's durability (not `none`).
    pub mode: Durability,
    /// The node's checkpointer.
    pub sink: Arc<dyn CheckpointSink>,
}

type Held = Vec<(ReplyTx, Result<Body, AgentError>)>;

/// The checkpointing side of one durable activation (see the module doc).
pub(super) struct Saver {
    mode: Durability,
    sink: Arc<dyn CheckpointSink>,
    local_only: bool,
    /// Messages handled by the activation (continued from the checkpoint it started from, if
    /// that was of the same activation: a restart).
    seq: u64,
    marks: HashMap<Arc<str>, u64>,
    unsaved: u64,
    oldest_unsaved: Option<Instant>,
    held: Held,
}

impl Saver {
    pub(super) fn new(
        spec: &DurableSpec,
        restore: Option<&Checkpoint>,
        epoch: u64,
        local_only: bool,
    ) -> Self {
        let (seq, marks) = match restore {
            Some(cp) => (
                if cp.version.epoch == epoch {
                    cp.version.seq
                } else {
                    0
                },
                cp.marks.iter().map(|m| (m.sender.clone(), m.seq)).collect(),
            ),
            None => (0, HashMap::new()),
        };
        Self {
            mode: spec.mode,
            sink: spec.sink.clone(),
            local_only,
            seq,
            marks,
            unsaved: 0,
            oldest_unsaved: None,
            held: Vec::new(),
        }
    }

    /// A message from `sender` numbered `seq` was handled.
    pub(super) fn handled(&mut self, sender: Option<&Arc<str>>, seq: u64) {
        self.seq += 1;
        self.unsaved += 1;
        if self.oldest_unsaved.is_none() {
            self.oldest_unsaved = Some(Instant::now());
        }
        if let (Some(s), true) = (sender, seq != 0) {
            match self.marks.get_mut(&**s) {
                Some(m) => *m = (*m).max(seq),
                None => {
                    self.marks.insert(s.clone(), seq);
                }
            }
        }
    }

    /// Sends `out` to the asker, or holds it until the checkpoint covering it is durable
    /// (`acked`).
    pub(super) fn reply(&mut self, to: ReplyTx, out: Result<Body, AgentError>) {
        if self.mode == Durability::Acked {
            self.held.push((to, out));
        } else {
            let _ = to.send(out);
        }
    }

    /// Whether a checkpoint is due after a batch.
    pub(super) fn due(&self) -> bool {
        match self.mode {
            Durability::None => false,
            Durability::Acked => self.unsaved > 0 || !self.held.is_empty(),
            Durability::Checkpoint => {
                self.unsaved >= EVERY_MSGS
                    || self.oldest_unsaved.is_some_and(|t| t.elapsed() >= EVERY)
            }
        }
    }

    /// When an idle agent in `checkpoint` mode must save what it has not.
    pub(super) fn idle_deadline(&self) -> Option<Instant> {
        self.oldest_unsaved.map(|t| t + EVERY)
    }

    /// Takes a checkpoint of `state` (and the context's timers) and hands it to the sink with
    /// the held replies.
    pub(super) fn save<A: ?Sized, S: Serialize>(&mut self, ctx: &crate::Ctx<A>, state: &S) {
        let (id, epoch) = (ctx.id(), ctx.epoch);
        let held = std::mem::take(&mut self.held);
        self.unsaved = 0;
        self.oldest_unsaved = None;
        let encoded = crate::local_only::guard(
            || {
                let encode = || crate::codec::encode_bytes(state).map_err(|e| e.to_string());
                if self.local_only {
                    // a local-only agent's checkpoint stays in its device's own store
                    crate::local_only::on_device(encode)
                } else {
                    encode()
                }
            },
            |reason| AgentError::Internal(format!("the state of {id} does not encode: {reason}")),
        );
        let state = match encoded {
            Ok(s) => s,
            Err(e) => {
                warn!(agent = %id, error = %e, "no checkpoint taken");
                return release(held, Err(e));
            }
        };
        let cp = Checkpoint {
            id: id.clone(),
            version: Version {
                epoch,
                seq: self.seq,
            },
            state,
            marks: self
                .marks
                .iter()
                .map(|(sender, &seq)| SenderMark {
                    sender: sender.clone(),
                    seq,
                })
                .collect(),
            timers: ctx.timers.list(),
            taken_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            since_epoch: 0,
        };
        let release_held: crate::durable::Release = Box::new(move |r| release(held, r));
        self.sink
            .submit(cp, self.mode, self.local_only, release_held);
    }

    /// The instance failed: the replies held were for changes no checkpoint covers, which the
    /// next instance will not have.
    pub(super) fn fail_held(&mut self, id: &AgentId, reason: &str) {
        let e = AgentError::Failed {
            id: id.to_string(),
            reason: format!("{reason} (before the state this reply came from was saved)"),
        };
        release(std::mem::take(&mut self.held), Err(e));
    }
}

/// Sends the held replies, or `Err` to each of their askers.
fn release(held: Held, r: Result<(), AgentError>) {
    for (to, out) in held {
        let _ = to.send(match &r {
            Ok(()) => out,
            Err(e) => Err(e.clone()),
        });
    }
}
