//! Durable agent state, as an agent's host sees it: how durable an agent is ([`Durability`]),
//! what a checkpoint holds ([`Checkpoint`]), and where its host hands checkpoints
//! ([`CheckpointSink`]; the node's implementation stores and replicates them, see
//! `tether_cluster::durable`).
//!
//! # What the agent's actor does
//! ```text
//! handled message or fired timer ─▶ seq += 1, the sender's mark, unsaved += 1
//!   `checkpoint`: unsaved ≥ EVERY_MSGS, or the oldest unsaved change is EVERY older
//!                 (checked after each batch, and by a timer while the agent idles)
//!   `acked`:      after each batch that changed anything; the batch's replies are held
//!                 ─▶ encode State ─▶ CheckpointSink::submit(checkpoint, release)
//!                                     release(Ok): the held replies go out
//!                                     release(Err): each asker gets the error
//! ```
//! A restarted or failed-over activation starts from [`CheckpointSink::latest`] instead of
//! `init` (a durable agent's state is kept by its id: spawning the id again resumes it); the door's sequence table is seeded from the checkpoint's marks, so a resend of a
//! message the checkpoint covers is refused as a duplicate and one it does not cover is taken.
//!
//! A checkpoint's marks are what the agent *handled*, not what the door admitted: a message
//! admitted but still in the mailbox when the checkpoint was taken is not covered by it, and
//! must be taken again if its sender resends it after a failover.
//!
//! A checkpoint also holds the agent's timers as wall-clock deadlines ([`crate::timers`]): the
//! activation that starts from it fires them when they fall due.

mod checkpoint;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use checkpoint::{Checkpoint, SenderMark, Timer, Version};

use crate::error::AgentError;
use crate::id::AgentId;

/// In `checkpoint` mode, a checkpoint is taken after this many handled messages...
pub const EVERY_MSGS: u64 = 100;
/// ...or when the oldest change not yet saved is this old, whichever comes first.
pub const EVERY: Duration = Duration::from_millis(1000);

/// How durable an agent's state is (chosen per agent at spawn; see the module doc).
///
/// The default is `none`: an agent's state is the application's, and durability costs a
/// disk write and a copy to another node per checkpoint, which an agent that is stateless, or
/// rebuilds its state from elsewhere, should not pay. Live migration moves the state whatever
/// the mode; the mode decides what survives losing the node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// No checkpoint: a failover starts the agent from `init`.
    #[default]
    None,
    /// A checkpoint after [`EVERY_MSGS`] messages or [`EVERY`] of unsaved changes: a failover
    /// loses at most that window.
    Checkpoint,
    /// A reply (and an outbox's delivery acknowledgement) leaves only once the checkpoint that
    /// covers its message is durable on the host and on its replica: nothing acknowledged is
    /// lost with one node.
    Acked,
}

impl Durability {
    /// Every mode, by its name.
    pub const ALL: [Durability; 3] = [Self::None, Self::Checkpoint, Self::Acked];

    /// Its name: `none`, `checkpoint` or `acked`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Checkpoint => "checkpoint",
            Self::Acked => "acked",
        }
    }

    /// Whether the agent is checkpointed at all.
    pub fn is_durable(self) -> bool {
        self != Self::None
    }
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Durability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| format!("unknown durability {s:?}: expected none, checkpoint or acked"))
    }
}

/// Called once when a submitted checkpoint is as durable as its agent's mode asks, or cannot
/// be.
pub type Release = Box<dyn FnOnce(Result<(), AgentError>) + Send>;

/// Where an agent's host reports on a checkpoint: what `tether agents` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// The checkpoint's activation epoch.
    pub epoch: u64,
    /// Messages handled when it was taken.
    pub seq: u64,
    /// Milliseconds since it was taken.
    pub age_ms: u64,
    /// Bytes of state, marks and timers.
    pub size: usize,
    /// Whether it is durable on this node's disk.
    pub stored: bool,
    /// The node holding its replica, if one confirmed it (none for a local-only agent).
    pub replica: Option<String>,
}

/// Where a host hands its agents' checkpoints (the node's checkpointer).
pub trait CheckpointSink: Send + Sync {
    /// Takes `cp` of an agent in `mode`; `local_only` checkpoints stay on this node. `release`
    /// is called once `cp` is durable as `mode` asks (on this node; and on the replica for
    /// `acked`), or with why it cannot be.
    fn submit(&self, cp: Checkpoint, mode: Durability, local_only: bool, release: Release);

    /// The newest checkpoint of `id` known here (submitted, stored, or received as a replica).
    fn latest(&self, id: &AgentId) -> Option<Arc<Checkpoint>>;

    /// What to report about `id`'s newest checkpoint.
    fn info(&self, id: &AgentId) -> Option<CheckpointInfo>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_names_round_trip_and_a_wrong_one_says_what_is_expected() {
        for d in Durability::ALL {
            assert_eq!(d.as_str().parse::<Durability>(), Ok(d));
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(json, format!("\"{d}\""));
        }
        let e = "always".parse::<Durability>().unwrap_err();
        assert!(e.contains("none, checkpoint or acked"), "{e}");
        assert_eq!(Durability::default(), Durability::None);
    }
}
