//! The invariants, checked after every step of a simulation (see [`super`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use tether_actors::AgentId;

/// An invariant that did not hold, with when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Virtual time since the start of the run.
    pub at: Duration,
    /// Which invariant, and what was seen.
    pub what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at {:.3}s: {}", self.at.as_secs_f64(), self.what)
    }
}

impl std::error::Error for Violation {}

/// One activation ever made in a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Made {
    /// The node.
    pub node: String,
    /// Its incarnation then.
    pub incarnation: u64,
    /// When.
    pub at: Duration,
}

/// A tell kept in a local node's outbox: who, to whom, its number.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct QueuedTell {
    /// The sending node.
    pub sender: String,
    /// The target.
    pub target: AgentId,
    /// Its sequence number.
    pub seq: u64,
}

/// What a run did, for the checks and the report.
#[derive(Debug, Default)]
pub struct History {
    /// Every activation: (id, epoch) -> where and when.
    pub made: BTreeMap<(AgentId, u64), Vec<Made>>,
    /// Agents whose spawn was acknowledged.
    pub spawned: BTreeSet<AgentId>,
    /// Local-only agents (their data must stay on their node).
    pub local_only: BTreeSet<AgentId>,
    /// Tells accepted into an outbox.
    pub queued: BTreeSet<QueuedTell>,
    /// Outbox tells applied by an agent.
    pub applied_queued: BTreeSet<QueuedTell>,
    /// Operations acknowledged to a client, and those that failed.
    pub acked: u64,
    /// Operations that failed with an error.
    pub failed: u64,
    /// Messages carried between nodes.
    pub messages: u64,
}

impl History {
    /// Records an activation; a second activation with an epoch used before is a violation.
    pub fn activated(
        &mut self,
        id: &AgentId,
        epoch: u64,
        made: Made,
        at: Duration,
    ) -> Result<(), Violation> {
        let entry = self.made.entry((id.clone(), epoch)).or_default();
        let first = entry.first().cloned();
        entry.push(made.clone());
        match first {
            Some(before) => Err(Violation {
                at,
                what: format!(
                    "epoch {epoch} of {id} used twice: on {}#{} at {:.3}s, then on {}#{}",
                    before.node,
                    before.incarnation,
                    before.at.as_secs_f64(),
                    made.node,
                    made.incarnation
                ),
            }),
            None => Ok(()),
        }
    }

    /// An outbox tell was applied: every earlier tell of its sender to its target that was
    /// queued must have been applied before it (order, at least once).
    pub fn applied_from_outbox(&mut self, t: QueuedTell, at: Duration) -> Result<(), Violation> {
        let missing: Vec<u64> = self
            .queued
            .iter()
            .filter(|q| q.sender == t.sender && q.target == t.target && q.seq < t.seq)
            .filter(|q| !self.applied_queued.contains(q))
            .map(|q| q.seq)
            .collect();
        self.applied_queued.insert(t.clone());
        if missing.is_empty() {
            return Ok(());
        }
        Err(Violation {
            at,
            what: format!(
                "{}'s tell {} to {} applied before its earlier tells {missing:?}",
                t.sender, t.seq, t.target
            ),
        })
    }
}
