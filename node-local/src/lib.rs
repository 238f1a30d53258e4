//! tether-node-local: the local role, a node on the user's device.
//!
//! A local node owns local files, user-facing work and sensitive data. It may go offline at
//! any time and must keep working when it does. What the role does today:
//! - it starts a cluster node with role `local` ([`start`]);
//! - through the cluster's dialing rule a local node always opens its connections to remote
//!   nodes, so it works from behind NAT and firewalls.
//!
//! The offline outbox, the sensitivity guard (`local-only` data never leaves the device) and
//! file access are this crate's next parts (see DESIGN.md, "Membership, failure detection,
//! split brain" and "Agents").

use tether_cluster::{Node, NodeConfig, NodeError, Role};

/// Starts a local node. The configuration's role is set to [`Role::Local`].
///
/// # Errors
/// Whatever [`Node::start`] reports: a bad name, missing certificates, a busy address.
pub async fn start(mut cfg: NodeConfig) -> Result<Node, NodeError> {
    cfg.role = Role::Local;
    Node::start(cfg).await
}
