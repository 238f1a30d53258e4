//! tether-node-local: what only a device node does.
//!
//! A local node owns local files, user-facing work and sensitive data. It may go offline at
//! any time and must keep working when it does. These duties are the [`LocalRole`], plugged
//! into the cluster core ([`tether_cluster::role::RoleCore`]):
//!
//! - [`offline`]: cut off from every remote node, the node is `offline`, not down; its agents
//!   keep running.
//! - [`outbox`]: tells to agents it cannot reach wait on disk, bounded, in order.
//! - [`drain`]: how they leave it after heal: in order per target, at least once.
//! - local-only agents: activated here and registered nowhere else ([`LocalRole`]'s
//!   `spawn_private`); what they send stays on the device (the guard in the node's send path).
//!
//! Through the cluster's dialing rule a local node always opens its connections to remote
//! nodes, so it works from behind NAT and firewalls. Later parts of this crate: the link
//! monitor and the offloading policy.

pub mod drain;
pub mod offline;
pub mod outbox;

use std::path::Path;
use std::time::Duration;

use tether_actors::{AgentError, Envelope};
use tether_cluster::core::ActivateOrder;
use tether_cluster::directory::DirAnswer;
use tether_cluster::role::{Claim, Cx, NodeMode, OutboxCounters, RoleCore, Standing};
use tether_cluster::{Node, NodeConfig, NodeError, Role};
use tracing::{debug, info, warn};

use drain::{Drain, Settled};
use offline::Offline;
use outbox::{Outbox, OutboxError, Store};

/// The local role's duties (see the crate doc).
#[derive(Debug)]
pub struct LocalRole {
    offline: Offline,
    outbox: Outbox<Box<dyn Store>>,
    drain: Drain,
    delivered: u64,
    dropped: u64,
    /// The cluster is stopping: the outbox is kept as it is for the next start.
    stopping: bool,
}

impl LocalRole {
    /// The duties of a local node whose outbox is kept in `store` (named `path` in errors),
    /// holding at most `max` messages.
    ///
    /// # Errors
    /// [`OutboxError`] if the outbox cannot be read.
    pub fn new(path: &Path, store: Box<dyn Store>, max: usize) -> Result<Self, OutboxError> {
        Ok(Self {
            offline: Offline::default(),
            outbox: Outbox::with_store(path, store, max)?,
            drain: Drain::default(),
            delivered: 0,
            dropped: 0,
            stopping: false,
        })
    }

    fn apply(&mut self, settled: Vec<Settled>) {
        for Settled::Ack(id, delivered) in settled {
            if !delivered && self.stopping {
                // what the directory says while the cluster stops is no reason to give up
                continue;
            }
            if delivered {
                self.delivered += 1;
            } else {
                self.dropped += 1;
            }
            if let Err(e) = self.outbox.ack(id) {
                warn!(error = %e, "outbox: a delivered message could not be marked; after a \
                    restart it is sent again and refused as a duplicate");
            }
        }
    }

    fn drain(&mut self, cx: &mut Cx<'_>, by_time: bool) {
        if self.outbox.depth() == 0 || self.drain.running() || self.stopping {
            return;
        }
        let settled = self.drain.start(cx, self.outbox.pending(), by_time);
        self.apply(settled);
    }
}

impl RoleCore for LocalRole {
    fn role(&self) -> Role {
        Role::Local
    }

    fn mode(&self) -> NodeMode {
        self.offline.mode()
    }

    fn standing(&self) -> Standing {
        Standing::default()
    }

    fn tick(&mut self, cx: &mut Cx<'_>, _gap: Duration) {
        self.offline.tick(cx);
        self.drain(cx, true);
    }

    fn cluster_stopping(&mut self, _cx: &mut Cx<'_>) {
        self.stopping = true;
    }

    fn membership_changed(&mut self, cx: &mut Cx<'_>) {
        self.drain(cx, false);
    }

    fn spawn_private(&mut self, cx: &mut Cx<'_>, reply: u64, claim: Claim) {
        if let Some(n) = claim.target.as_deref().filter(|n| *n != cx.me()) {
            let e = AgentError::LocalOnly {
                reason: format!(
                    "{} is local-only: it cannot be placed on {n}; its state and messages stay \
                     on {}",
                    claim.id,
                    cx.me()
                ),
            };
            return cx.complete(reply, Err(e));
        }
        let epoch = match cx.host.epoch_of(&claim.id) {
            Some(running) => running,
            None => cx.new_epoch(0),
        };
        let order = ActivateOrder {
            token: 0,
            record: claim.spec.record(),
            id: claim.id,
            epoch,
            policy: claim.spec.policy,
            group: claim.spec.group,
            trace: claim.trace,
        };
        cx.activate_for(reply, order);
    }

    fn answer(&mut self, cx: &mut Cx<'_>, req: u64, result: Result<DirAnswer, AgentError>) {
        let settled = self.drain.answer(cx, req, result);
        self.apply(settled);
    }

    fn outbox_depth(&self) -> Option<usize> {
        Some(self.outbox.depth())
    }

    fn outbox_holds(&self, target: &tether_actors::AgentId) -> bool {
        self.outbox.holds(target)
    }

    fn queue(
        &mut self,
        cx: &mut Cx<'_>,
        env: Envelope,
        queued_ms: u64,
    ) -> Result<usize, AgentError> {
        let _ = cx;
        let (target, trace) = (env.target.clone(), env.trace);
        match self.outbox.push(env, queued_ms) {
            Ok(depth) => {
                if depth == 1 {
                    info!(%target, "outbox: tells to unreachable agents are queued from now on");
                }
                debug!(%target, trace_id = %trace.trace_id_hex(), depth, "tell queued");
                Ok(depth)
            }
            Err(OutboxError::Full { max }) => {
                warn!(%target, trace_id = %trace.trace_id_hex(), max, "tell refused: the outbox is full");
                Err(AgentError::OutboxFull { max })
            }
            Err(e) => {
                warn!(%target, trace_id = %trace.trace_id_hex(), error = %e, "tell could not be queued");
                Err(AgentError::Internal(e.to_string()))
            }
        }
    }

    fn delivered(&mut self, cx: &mut Cx<'_>, qid: u64, result: Result<(), AgentError>) {
        let settled = self.drain.delivered(cx, qid, result);
        self.apply(settled);
    }

    fn outbox_counters(&self) -> Option<OutboxCounters> {
        Some(OutboxCounters {
            depth: self.outbox.depth() as u64,
            max: self.outbox.max() as u64,
            delivered: self.delivered,
            dropped: self.dropped,
        })
    }
}
/// Starts a local node. The configuration's role is set to [`Role::Local`]; its outbox is
/// `outbox.log` in the node's state directory.
///
/// # Errors
/// Whatever [`Node::start`] reports: a bad name, missing certificates, a busy address; an
/// outbox that cannot be read.
pub async fn start(mut cfg: NodeConfig) -> Result<Node, NodeError> {
    cfg.role = Role::Local;
    let path = cfg.node_dir.path().join(outbox::FILE_NAME);
    let store = Box::new(outbox::FileStore::new(&path));
    let role =
        LocalRole::new(&path, store, cfg.outbox_max).map_err(|e| NodeError::Role(e.to_string()))?;
    Node::start_with(cfg, Box::new(role)).await
}
