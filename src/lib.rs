//! tether: hybrid orchestration of supervised, location-transparent agents over QUIC.
//!
//! This crate is the library a program embeds (and the home of the `tether` CLI):
//! [`Node::builder`] starts a node, [`Node::spawn`] gets or spawns an agent anywhere in the
//! cluster, and an [`AgentRef`] talks to it wherever it runs. [`prelude`] has what a program
//! usually needs.
//!
//! Map of the workspace:
//! - [`actors`] (`tether-actors`): the agent model: `Agent`, `AgentRef`, ids, placement, the
//!   wire codec.
//! - [`supervision`] (`tether-supervision`): restart strategies and supervision trees.
//! - [`cluster`] (`tether-cluster`): what every node shares: QUIC + mTLS transport, the fault
//!   layer, membership, the directory, the sans-IO cluster core and its simulator, the control
//!   plane.
//! - [`node_local`] and [`node_remote`]: what each node role adds (offline mode and the outbox;
//!   split brain, fencing, the directory owner and failover).

#[doc(hidden)] // the entry points of the fuzz targets and of tests/decoders.rs
pub mod decoders;
pub mod logging;
mod node;
pub mod prelude;
#[doc(hidden)] // the CLI's and the bench's tables
pub mod table;

pub use node::{start, Node, NodeBuilder, Spawn};
pub use tether_actors::{
    Agent, AgentError, AgentId, AgentRef, Compute, Ctx, Durability, Failure, Kinds, Placement,
    Prefer, Sensitivity, TellError,
};
pub use tether_cluster::{NodeError, NodeInfo, NodeMode, NodeStatus, Role, Timing};
pub use tether_supervision::{
    AgentPolicy, Backoff, GroupSpec, Intensity, RestartType, Strategy, SupervisionError,
};

pub use tether_actors as actors;
pub use tether_cluster as cluster;
pub use tether_node_local as node_local;
pub use tether_node_remote as node_remote;
pub use tether_supervision as supervision;
