//! [`SpawnRecord`]: how an agent was spawned, kept to start it again (a restart, a failover);
//! [`Activation`]: where and as which epoch it runs.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::id::AgentId;

use crate::durable::Durability;
use crate::envelope::Encoding;
use crate::placement::Placement;

/// How an agent was spawned: its arguments, encoded, and its placement labels. One record is
/// shared by the host that runs the agent (a restart starts it again from it) and the
/// directory entry that placed it (a failover activates it elsewhere from it): every agent
/// pays for one copy, not two.
#[derive(Debug, Clone, PartialEq)]
pub struct SpawnRecord {
    /// How `args` are encoded.
    pub encoding: Encoding,
    /// The spawn arguments.
    pub args: Bytes,
    /// The labels it was placed by.
    pub placement: Placement,
    /// How durable its state is.
    pub durability: Durability,
}

/// The result of an activation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activation {
    /// The agent.
    pub id: AgentId,
    /// Where it runs.
    pub node: String,
    /// Its epoch.
    pub epoch: u64,
    /// `false` when it was running already (get-or-spawn).
    pub created: bool,
}
