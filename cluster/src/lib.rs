//! tether-cluster: the mechanism every node shares.
//!
//! Where to start reading: [`core`], a node's cluster core as a sans-IO state machine, and
//! [`role`], how the two node roles (`tether-node-local`, `tether-node-remote`) plug into it;
//! then [`node`], which drives it over QUIC.
//!
//! Map of the crate, from the bottom up:
//! - [`identity`]: node names, roles, [`NodeInfo`], who dials whom.
//! - [`net`]: certificates and mutual TLS, the QUIC endpoint and its fault layer, framing of
//!   tether's own streams and datagrams, the live links, what a node keeps on disk.
//! - [`membership`]: the membership table, the failure detector and the link rule (sans-IO).
//! - [`directory`]: where agents run: the owner of an id, placement, the directory's messages.
//! - [`durable`]: agents' checkpoints and their stores (and the design of failover with state
//!   and live migration).
//! - [`role`]: the [`role::RoleCore`] trait a node role implements, and what the core lends it.
//! - [`effects`]: what a core asks its node to do, and its requests in flight.
//! - [`migration`]: live migration (freeze, ship, commit): the protocol and its report.
//! - [`core`]: [`core::ClusterCore`], membership + directory + the role, sans-IO.
//! - [`sim`]: a deterministic simulator of N cores on a virtual clock; seeded fault schedules.
//! - [`agents`]: the data plane: sends by agent id, a peer's streams, the peer queues.
//! - [`control`]: the operator's control plane: protocol, server, client.
//! - [`node`]: the running node: the core's driver, ticker, links, ractor_cluster bridge.

pub mod agents;
pub mod control;
pub mod core;
pub mod directory;
pub mod durable;
pub mod effects;
pub mod identity;
pub mod membership;
pub mod migration;
pub mod net;
pub mod node;
pub mod notices;
pub mod role;
pub mod sim;

pub use agents::{SpawnOptions, Target};
pub use control::{
    ControlClient, ControlError, ControlRequest, ControlResponse, NodeStatus, PeerStatus,
};
pub use identity::{NodeInfo, Role};
pub use membership::detector::PeerState;
pub use node::{Node, NodeConfig, NodeError, Timing};
pub use role::NodeMode;
pub use tether_actors::Kinds;
