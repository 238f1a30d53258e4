//! Live migration: an agent moves to another node with its state, its unhandled messages and
//! its senders' sequence marks, and at most one instance of it runs at any time.
//!
//! # Protocol: freeze, ship, commit
//! ```text
//!  source (runs it as e)                     target                      owner of the id
//!  checks: not local-only, a root child, the target up, has the kind, placement allows
//!  freeze at the next message boundary (a handler over FREEZE_WITHIN aborts the move);
//!  what comes meanwhile waits here, in order
//!  new epoch e' ── Install{e', spec, checkpoint} ─▶ started from the checkpoint, dormant
//!                                                  (nothing routes to it yet)
//!               ◀──────────────────── Installed ──
//!  ── Move{from (source, e), to (target, e')} ──────────────────────────────▶ compare-and-set
//!                                                                             the entry, copy
//!               ◀─────────────────────────────────────────────── activation ─ to the backup
//!  forget it in the supervision tree; the calls it had not handled, then what waited, go to
//!  the target in order (one agent stream: nothing overtakes them), and whatever comes for it
//!  here for TOMBSTONE; this node's own senders route to the target at once
//!
//!  failure before the commit (target refuses or is unreachable, the owner refuses):
//!    Discard{e'} ─▶ target drops the instance; the source runs it again from the frozen
//!    state, same epoch, messages in order
//!  commit answer lost (timeout, owner lost): the commit is asked again (the owner answers
//!    "already there" to a repeat); still unknown after COMMIT_TRIES, the owner the commit
//!    went to is asked where the agent runs (its entry tells, the commit having reached it
//!    first on the same stream): the target (committed), the source (abort), elsewhere (a
//!    failover won: neither runs); while it cannot say, the agent stays frozen
//!  a move's target not told within DRAIN_WAIT asks the directory: named, it runs; not, it
//!    drops what it installed
//! ```
//!
//! **Why at most one instance.** The target's instance receives nothing until the owner's
//! entry names it (nothing routes there before), and the source's instance is frozen from
//! before the install until either the entry names the target (then it never runs again
//! here) or the move is aborted (then the target's instance was discarded, or never existed).
//!
//! **What is not lost.** The frozen checkpoint holds the state after the last handled
//! message; every message not handled is handed over in order, and the target's sequence
//! marks are the source's lowered below each sender's first message handed over, so those
//! are taken again and nothing handled is taken twice. A durable agent's frozen checkpoint
//! (version `(e, u64::MAX)`, the activation's last) is stored on the target before it runs.

use serde::{Deserialize, Serialize};
use std::time::Duration;

use tether_actors::AgentError;

/// How long the source waits for the agent's handler to reach a message boundary.
pub const FREEZE_WITHIN: Duration = Duration::from_secs(5);
/// How long the target may take to install the agent.
pub const INSTALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times a commit whose answer did not come is asked.
pub const COMMIT_TRIES: u32 = 5;
/// How long a migration asked of another node may take, end to end.
pub const MIGRATE_TIMEOUT: Duration = Duration::from_secs(40);

/// What a move did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoveReport {
    /// The agent.
    pub agent: String,
    /// Where it ran.
    pub from: String,
    /// Where it runs now.
    pub to: String,
    /// Its epoch there.
    pub epoch: u64,
    /// Milliseconds from its last message handled at the source until it could run at the
    /// target (the commit, and its unhandled messages on their way).
    pub pause_ms: f64,
    /// Bytes of its state.
    pub state_bytes: usize,
}

/// What a drain did: the agents moved, and those that stayed, with why.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DrainReport {
    /// The moves.
    pub moved: Vec<MoveReport>,
    /// Agents that stayed: id, why.
    pub stayed: Vec<(String, String)>,
}

/// What the answer to a commit means for the source.
#[derive(Debug, Clone, PartialEq)]
pub enum CommitOutcome {
    /// The owner's entry names the target.
    Committed,
    /// The owner refused for sure (another move or a failover won, a fenced owner): abort.
    Refused(AgentError),
    /// No answer that says: ask again.
    Unknown(AgentError),
    /// The owner placed the agent elsewhere meanwhile: neither instance of the move runs.
    Elsewhere(AgentError),
}

impl CommitOutcome {
    /// Classifies the result of one commit request.
    pub fn of(result: Result<(), AgentError>) -> Self {
        match result {
            Ok(()) => Self::Committed,
            Err(e @ (AgentError::NotMoved { .. } | AgentError::Fenced { .. })) => Self::Refused(e),
            Err(e) => Self::Unknown(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_definite_refusal_aborts_a_commit() {
        assert_eq!(CommitOutcome::of(Ok(())), CommitOutcome::Committed);
        let refused = AgentError::NotMoved {
            id: "counter/a".into(),
            reason: "the directory has it elsewhere".into(),
        };
        assert!(matches!(
            CommitOutcome::of(Err(refused)),
            CommitOutcome::Refused(_)
        ));
        for e in [
            AgentError::Timeout { ms: 5000 },
            AgentError::NodeUnreachable { node: "r1".into() },
            AgentError::NoDirectory("no remote node".into()),
            AgentError::Unavailable {
                id: "counter/a".into(),
                reason: "placing".into(),
            },
        ] {
            assert!(
                matches!(CommitOutcome::of(Err(e.clone())), CommitOutcome::Unknown(_)),
                "{e}"
            );
        }
    }
}
