//! tether-node-remote: the remote role, a backend node.
//!
//! Remote nodes run heavy compute and the small coordinator that decides placement, failover
//! and the steps that need one owner. What the role does today: it starts a cluster node with
//! role `remote` ([`start`]); remote nodes accept the connections of local nodes and dial each
//! other by name order.
//!
//! The coordinator, the compute pool, the rebalancer and the split-brain resolver's
//! "stop my agents on the minority side" duty are this crate's next parts (see DESIGN.md).

use tether_cluster::{Node, NodeConfig, NodeError, Role};

/// Starts a remote node. The configuration's role is set to [`Role::Remote`].
///
/// # Errors
/// Whatever [`Node::start`] reports: a bad name, missing certificates, a busy address.
pub async fn start(mut cfg: NodeConfig) -> Result<Node, NodeError> {
    cfg.role = Role::Remote;
    Node::start(cfg).await
}
