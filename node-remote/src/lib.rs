//! tether-node-remote: what only a backend node does.
//!
//! A remote node runs heavy compute, keeps the directory (each agent id's entry lives on one
//! remote node, its owner, and is copied to a second, its backup), and decides, with the other
//! remote nodes, who keeps running when the network splits. These duties are the remote
//! [`RemoteRole`], plugged into the cluster core ([`tether_cluster::role::RoleCore`]):
//!
//! - [`split_brain`]: the keep-majority rule at every tick; fence this node or decide peers
//!   down (with the veto for indirect connections); self-fence after a pause; the lease.
//! - [`quarantine`]: a peer decided down is held until it proves it fenced.
//! - [`owner`]: the directory owner: claims (get-or-spawn), lookups, probes, epochs, entries.
//! - [`failover`]: failover of agents whose node was decided down, backups, hand-overs,
//!   evictions by a fence.
//!
//! Where to start reading: [`RemoteRole`], then [`split_brain`] and [`owner`]. Later parts of
//! this crate: the rebalancer and the coordinator.

pub mod split_brain;

mod failover;
mod owner;
mod quarantine;

use std::time::{Duration, Instant};

use tether_actors::{Activation, AgentError, AgentId};
use tether_cluster::directory::{AgentSpec, DirAnswer, DirMsg, Location};
use tether_cluster::membership::detector::DetectorConfig;
use tether_cluster::membership::Heartbeat;
use tether_cluster::role::{
    Claim, Cx, HeartbeatFlags, NodeMode, ReplyTo, RoleCore, RoleCounters, SbrConfig, Standing,
};
use tether_cluster::{Node, NodeConfig, NodeError, Role};
use tracing::info;

use failover::Failover;
use owner::{ClaimFor, Owner};
use quarantine::{Quarantine, Verdict};
use split_brain::{FenceChange, SplitBrain};

/// The remote role's duties (see the crate doc).
#[derive(Debug)]
pub struct RemoteRole {
    split: SplitBrain,
    quarantine: Quarantine,
    owner: Owner,
    failover: Failover,
}

impl RemoteRole {
    /// The duties of a remote node with these timers, starting at `now`.
    pub fn new(sbr: SbrConfig, detector: DetectorConfig, now: Instant) -> Self {
        Self {
            split: SplitBrain::new(sbr, detector, now),
            quarantine: Quarantine::default(),
            owner: Owner::default(),
            failover: Failover::default(),
        }
    }

    /// Directory entries held here (owned and backed up).
    pub fn entries(&self) -> usize {
        self.owner.entries.len()
    }
}

impl RoleCore for RemoteRole {
    fn role(&self) -> Role {
        Role::Remote
    }

    fn mode(&self) -> NodeMode {
        if self.split.fenced() {
            NodeMode::Fenced
        } else {
            NodeMode::Up
        }
    }

    fn standing(&self) -> Standing {
        Standing {
            fenced: self.split.fenced(),
            lease_until: self.split.lease_until(),
        }
    }

    fn counters(&self) -> RoleCounters {
        self.failover.counters
    }

    fn admit_heartbeat(&mut self, cx: &mut Cx<'_>, peer: &str, hb: &Heartbeat) -> bool {
        let Some(member) = cx.members.get(peer) else {
            return false;
        };
        match self.quarantine.judge(member, hb) {
            Verdict::Free => true,
            Verdict::Held => false,
            Verdict::Released => {
                info!(
                    peer,
                    "a node decided down has fenced (or restarted): taken back"
                );
                cx.emit(tether_cluster::core::Output::Quarantine {
                    peer: peer.to_owned(),
                    on: false,
                });
                true
            }
        }
    }

    fn heartbeat_flags(&self, peer: &str) -> HeartbeatFlags {
        HeartbeatFlags {
            fences: self.split.fences_done(),
            fenced: self.split.fenced(),
            down: self.quarantine.is_held(peer),
        }
    }

    fn tick(&mut self, cx: &mut Cx<'_>, gap: Duration) {
        let (change, _downed) = self.split.tick(cx, gap, &mut self.quarantine);
        if change == FenceChange::Lifted {
            self.failover.fence_lifted(&mut self.owner, cx);
        }
        let fenced = self.split.fenced();
        self.failover.retry_due(&mut self.owner, cx, fenced);
        self.failover.account(&mut self.owner, cx);
    }

    fn membership_changed(&mut self, cx: &mut Cx<'_>) {
        self.failover
            .reconcile(&mut self.owner, cx, self.split.fenced());
        self.failover.account(&mut self.owner, cx);
    }

    fn cluster_stopping(&mut self, _cx: &mut Cx<'_>) {
        self.owner.stopping = true;
    }

    fn refusal(&self, cx: &Cx<'_>, from: &str, msg: &DirMsg) -> Option<AgentError> {
        if self.quarantine.is_held(from) {
            return Some(AgentError::Quarantined {
                node: from.to_owned(),
            });
        }
        match msg {
            // a fenced node may have missed what the other side placed meanwhile: it answers
            // no lookup ("unavailable now", never "no such agent")
            DirMsg::Claim { .. }
            | DirMsg::Activate { .. }
            | DirMsg::Lookup { .. }
            | DirMsg::Move { .. } => self.standing().refusal(cx.me(), cx.now),
            _ => None,
        }
    }

    fn claim(&mut self, cx: &mut Cx<'_>, reply: ReplyTo, claim: Claim) {
        let fenced = self.split.fenced();
        self.owner.claim(cx, fenced, ClaimFor::Reply(reply), claim);
        self.failover.account(&mut self.owner, cx);
    }

    fn lookup(&mut self, cx: &mut Cx<'_>, reply: ReplyTo, id: AgentId) {
        let fenced = self.split.fenced();
        self.owner.lookup(cx, fenced, reply, id);
        self.failover.account(&mut self.owner, cx);
    }

    fn placing(&self, id: &AgentId) -> bool {
        self.owner.placing(id)
    }

    fn commit_move(
        &mut self,
        cx: &mut Cx<'_>,
        reply: ReplyTo,
        id: AgentId,
        from: Location,
        to: Location,
    ) {
        let result = self
            .owner
            .commit_move(cx, self.split.fenced(), &id, &from, &to);
        cx.reply(reply, result.map(DirAnswer::Activation));
    }

    fn spawn_private(&mut self, cx: &mut Cx<'_>, reply: u64, claim: Claim) {
        let e = AgentError::LocalOnly {
            reason: format!(
                "{} is local-only and {} is a remote node: local-only agents run on the local \
                 node that spawns them",
                claim.id,
                cx.me()
            ),
        };
        cx.complete(reply, Err(e));
    }

    fn notice(&mut self, cx: &mut Cx<'_>, from: &str, msg: DirMsg) {
        match msg {
            DirMsg::Backup { entry, .. } => self.owner.entries.merge(entry),
            DirMsg::Handoff { entry, .. } => {
                self.failover
                    .handoff(&mut self.owner, cx, entry, self.split.fenced())
            }
            DirMsg::Evicted {
                id, epoch, spec, ..
            } => {
                let fenced = self.split.fenced();
                self.failover
                    .evicted_from(&mut self.owner, cx, (id, epoch, spec), from, fenced)
            }
            DirMsg::Exited {
                id, epoch, reason, ..
            } => self.owner.entries.record_exit(&id, epoch, reason),
            _ => {}
        }
        self.failover.account(&mut self.owner, cx);
    }

    fn answer(&mut self, cx: &mut Cx<'_>, req: u64, result: Result<DirAnswer, AgentError>) {
        self.owner.answer(cx, req, result);
        self.failover.account(&mut self.owner, cx);
    }

    fn activated(&mut self, cx: &mut Cx<'_>, token: u64, result: Result<Activation, AgentError>) {
        self.owner.activated_here(cx, token, result);
        self.failover.account(&mut self.owner, cx);
    }

    fn agent_exited(&mut self, cx: &mut Cx<'_>, id: AgentId, epoch: u64, reason: Option<String>) {
        if self.split.fenced() {
            // stopped by the fence: not an exit the agent chose; its owner places it again
            // (or finds it failed over) once the fence lifts
            self.failover.evicted_here(id, epoch);
            return;
        }
        cx.report_exit(id, epoch, reason);
    }

    fn fence_done(&mut self, _cx: &mut Cx<'_>, stopped: Vec<(AgentId, u64, AgentSpec)>) {
        tracing::warn!(stopped = stopped.len(), "fenced: hosted agents stopped");
        self.failover.fenced_here(stopped);
        self.split.fence_done();
    }
}
/// Starts a remote node. The configuration's role is set to [`Role::Remote`].
///
/// # Errors
/// Whatever [`Node::start`] reports: a bad name, missing certificates, a busy address.
pub async fn start(mut cfg: NodeConfig) -> Result<Node, NodeError> {
    cfg.role = Role::Remote;
    let role = RemoteRole::new(cfg.timing.sbr, cfg.timing.detector, Instant::now());
    Node::start_with(cfg, Box::new(role)).await
}
