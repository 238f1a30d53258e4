//! [`Checkpoint`]: what an activation needs to be started again without losing anything
//! acknowledged, and its [`Version`].

use std::sync::Arc;

use crate::id::AgentId;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Which checkpoint is newer: `(epoch, seq)`, compared in that order. A newer activation's
/// epoch has a higher generation (the high bits), so it always wins; within one activation the
/// checkpoint taken after more handled messages wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    /// The activation's epoch.
    pub epoch: u64,
    /// Messages the activation had handled when the checkpoint was taken.
    pub seq: u64,
}

impl Version {
    /// The version of a checkpoint taken when the activation was frozen for a move: its last.
    pub fn is_final(&self) -> bool {
        self.seq == u64::MAX
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "epoch {} seq {}",
            crate::epoch::Shown(self.epoch),
            self.seq
        )
    }
}

/// The highest sequence number an activation has taken from one sender.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderMark {
    /// The sender, as envelopes name it.
    pub sender: Arc<str>,
    /// Its highest sequence number taken.
    pub seq: u64,
}

/// A timer of the agent, as an absolute deadline (so it fires at the same time wherever the
/// agent is started again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timer {
    /// The timer's name, as the agent set it.
    pub name: String,
    /// When it fires, in milliseconds since the Unix epoch.
    pub deadline_unix_ms: u64,
}

/// One agent's state at one point of one activation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The agent.
    pub id: AgentId,
    /// Epoch and handled messages.
    pub version: Version,
    /// The agent's `State`, encoded (MessagePack).
    pub state: Bytes,
    /// Per-sender high-water marks.
    pub marks: Vec<SenderMark>,
    /// Timers, as absolute deadlines.
    pub timers: Vec<Timer>,
    /// When it was taken, in milliseconds since the Unix epoch.
    pub taken_unix_ms: u64,
    /// The first epoch of the agent's line of moves up to this activation (0: this
    /// activation's own): a message addressed to any epoch of that line is the agent's, not
    /// a stale route's (see `tether_cluster::migration`).
    #[serde(default)]
    pub since_epoch: u64,
}

impl Checkpoint {
    /// Bytes the checkpoint's contents take (state, marks, timers), for limits and reports.
    pub fn size(&self) -> usize {
        self.state.len()
            + self.marks.iter().map(|m| m.sender.len() + 8).sum::<usize>()
            + self.timers.iter().map(|t| t.name.len() + 8).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::epoch;

    #[test]
    fn a_newer_activation_wins_over_any_seq_of_an_older_one() {
        let e1 = epoch::next(0, epoch::tag_of("r1", 1, 1));
        let e2 = epoch::next(e1, epoch::tag_of("r2", 1, 1));
        let old = Version {
            epoch: e1,
            seq: u64::MAX,
        };
        let new = Version { epoch: e2, seq: 0 };
        assert!(new > old);
        assert!(
            Version { epoch: e1, seq: 5 } > Version { epoch: e1, seq: 4 },
            "within an activation, later wins"
        );
    }
}
