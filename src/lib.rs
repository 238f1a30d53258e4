//! tether: hybrid orchestration of supervised, location-transparent agents over QUIC.
//!
//! This crate is the facade over the workspace and the home of the `tether` CLI.
//!
//! Map of the workspace:
//! - [`actors`] (`tether-actors`): the agent model and the wire codec.
//! - [`supervision`] (`tether-supervision`): restart strategies and supervision trees.
//! - [`cluster`] (`tether-cluster`): nodes, QUIC + mTLS transport, the fault layer,
//!   membership and failure detection, the operator's control plane.
//! - [`node_local`] and [`node_remote`]: what the two node roles add on top of the cluster.

pub use tether_actors as actors;
pub use tether_cluster as cluster;
pub use tether_node_local as node_local;
pub use tether_node_remote as node_remote;
pub use tether_supervision as supervision;
