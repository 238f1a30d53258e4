//! Snapshots of supervision trees: what a node reports and `tether tree` draws.
//!
//! `cluster -> nodes -> supervisors -> agents`. Every field is plain data (serde), so a tree
//! can be shown, stored as the last known view of a node, and compared.

use serde::{Deserialize, Serialize};

use tether_actors::Placement;

use crate::policy::{AgentPolicy, Intensity, Strategy};
use crate::strategy::ChildStatus;

/// One node's tree: its root supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeTree {
    /// The node.
    pub node: String,
    /// The root supervisor.
    pub root: SupervisorNode,
}

/// A supervisor and its children.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SupervisorNode {
    /// Its name (`root`, or a group name).
    pub name: String,
    /// Its strategy.
    pub strategy: Strategy,
    /// running, restarting, backing-off, stopped, failed.
    pub status: ChildStatus,
    /// Times it was restarted by its parent.
    pub restarts: u32,
    /// Its budget: at most N restarts in T.
    pub intensity: Intensity,
    /// Why it last failed (escalated).
    pub last_failure: Option<Failure>,
    /// Child supervisors.
    pub supervisors: Vec<SupervisorNode>,
    /// Agents.
    pub agents: Vec<AgentNode>,
}

/// A failure: when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// The reason.
    pub reason: String,
}

/// An agent in the tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentNode {
    /// `kind/key`.
    pub id: String,
    /// running, restarting, backing-off, stopped, failed.
    pub status: ChildStatus,
    /// Restarts so far.
    pub restarts: u32,
    /// Last failure.
    pub last_failure: Option<Failure>,
    /// Milliseconds since it last started (0 when not running).
    pub uptime_ms: u64,
    /// Messages waiting.
    pub mailbox: u64,
    /// Activation epoch.
    pub epoch: u64,
    /// Placement labels.
    pub placement: Placement,
    /// Its restart type, budget and timeouts.
    pub policy: AgentPolicy,
}
