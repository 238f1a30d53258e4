//! Offline mode: a local node that reaches no remote node keeps its agents running, queues
//! what it sends them in its outbox, and says `offline` in `tether status`.
//!
//! Membership never downs a local node: a partition only makes it offline, and it comes back
//! when a remote node is heard again. A node that starts while cut off is offline from its
//! first tick (it has met no remote node yet).

use tether_cluster::core::Output;
use tether_cluster::membership::detector::PeerState;
use tether_cluster::role::{Cx, NodeMode};
use tether_cluster::Role;
use tracing::{info, warn};

/// The offline check of one local node.
#[derive(Debug, Default)]
pub(crate) struct Offline {
    offline: bool,
    checked: bool,
}

impl Offline {
    /// The mode now.
    pub(crate) fn mode(&self) -> NodeMode {
        if self.offline {
            NodeMode::Offline
        } else {
            NodeMode::Up
        }
    }

    /// Checks the remote members; returns whether the node just came online again.
    pub(crate) fn tick(&mut self, cx: &mut Cx<'_>) -> bool {
        let offline = !cx
            .members
            .peers()
            .any(|m| m.info.role == Role::Remote && m.state() == PeerState::Up);
        let changed = offline != self.offline || !self.checked;
        let back = self.offline && !offline;
        self.offline = offline;
        if changed {
            if offline {
                warn!("offline: no remote node is reachable; local agents keep running");
            } else if self.checked {
                info!("online again: a remote node is reachable");
            }
            self.checked = true;
            cx.emit(Output::Mode(self.mode()));
        }
        back
    }
}
