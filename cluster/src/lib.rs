//! tether-cluster: nodes, their QUIC transport, and how they see each other.
//!
//! Where to start reading: [`node`] runs a node; [`link`] and [`detector`] are the two state
//! machines it drives, written without I/O and tested on virtual time.
//!
//! Map of the crate:
//! - [`identity`]: node names, roles, [`NodeInfo`], who dials whom.
//! - [`certs`]: the cluster CA and node/operator certificates (rcgen), on disk.
//! - [`tls`]: rustls configurations for mutual TLS; the peer's name comes from its certificate.
//! - [`transport`]: quinn endpoints (keep-alive, idle timeout, keys from the node secret);
//!   [`transport::conn_task`]: a connection's driver and its agent streams' readers in one task.
//! - [`fault`]: the fault layer: ordered drop/loss/delay rules on every datagram.
//! - [`wire`]: framing of tether's own streams and heartbeat datagrams.
//! - [`link`]: the link protocol: one connection per pair, agreed by both sides (sans-IO).
//! - [`detector`]: the failure detector: up / unreachable (sans-IO).
//! - [`sbr`]: the split-brain resolver: keep-majority over remote nodes; fence or down (sans-IO).
//! - [`statedir`]: what a node keeps on disk: secret, incarnation, `node.json`.
//! - [`node`]: the running node: accept, dial, heartbeats, gossip, ractor_cluster bridge.
//! - [`agents`]: the agent runtime: spawn by kind anywhere, route by id, the directory;
//!   a local node's durable outbox ([`agents::outbox`]) for tells it cannot deliver yet.
//! - [`control`]: the operator's control plane: status, waits, fault rules, agents, shutdown.

pub mod agents;
pub mod control;
pub mod detector;
pub mod identity;
pub mod link;
pub mod net;
pub mod node;
pub mod sbr;

pub use agents::{SpawnOptions, Target};
pub use control::{
    ControlClient, ControlError, ControlRequest, ControlResponse, NodeMode, NodeStatus, PeerStatus,
};
pub use detector::PeerState;
pub use identity::{NodeInfo, Role};
pub use node::{Node, NodeConfig, NodeError, Timing};
pub use tether_actors::Kinds;
