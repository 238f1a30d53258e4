//! The operator's control plane: the CLI talks to each node over QUIC with the operator's
//! certificate (ALPN `tether-ctl/1`). One request per bidi stream, one response back.
//!
//! Fault rules never apply to these connections (see [`crate::net::fault`]), so a partitioned
//! node can always be inspected and healed.
//!
//! - [`protocol`]: the requests, responses and the status they carry.
//! - [`server`]: serving an operator connection with the node's [`server::Handler`].
//! - [`client`]: [`ControlClient`], the CLI's side.

pub mod client;
pub mod protocol;
pub mod server;

pub use crate::role::NodeMode;
pub use client::{ControlClient, ControlError};
pub use protocol::{
    wait_satisfied, AgentCounters, ControlRequest, ControlResponse, NodeStatus, PeerStatus,
    MAX_WAIT,
};
