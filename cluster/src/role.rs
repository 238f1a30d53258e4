//! How a node role plugs into the cluster core: the [`RoleCore`] trait.
//!
//! `tether-cluster` holds the mechanism every node shares (membership, the directory's
//! requester and host sides, routing, transport). What only one kind of node does lives in its
//! role crate and reaches the core through this trait, sans-IO like the core itself:
//!
//! | duty | local node (`tether-node-local`) | remote node (`tether-node-remote`) |
//! |---|---|---|
//! | heartbeats of a peer decided down | always admitted | held until it fenced (quarantine) |
//! | every tick | offline mode | split-brain resolver, self-fence after a pause, lease |
//! | directory owner (claims, lookups, entries, backups, failover) | never an owner | the owner's duties |
//! | local-only spawns | activated here, registered nowhere | refused |
//! | an agent that ends here | reported to its owner and backup | the same, or kept for the owner while fenced |
//!
//! The core calls a role with a [`Cx`]: the time, the membership table, a read-only view of
//! the host, and the outputs to fill. A role never performs I/O; it asks the core to send
//! messages ([`Cx::send`], [`Cx::request`]), to answer ([`Cx::reply`]) or to activate an agent
//! here ([`Cx::activate`]), and the node (or the simulator) carries that out.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tether_actors::{Activation, AgentError, AgentId, Envelope, TraceContext};

use crate::directory::{self, AgentSpec, DirAnswer, DirMsg};
pub use crate::effects::NodeMode;
use crate::effects::{ActivateOrder, Effects, HostView, Output, Ticket};
use crate::identity::Role;
use crate::membership::detector::PeerState;
use crate::membership::Heartbeat;
use crate::membership::{Members, UpView};
pub use crate::notices::NoticeTo;

/// Whether the node may act now: not fenced, and its lease (if it has one) not past. A node
/// that was paused past its lease refuses what it finds waiting when it resumes, before its
/// ticker can fence it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Standing {
    /// Fenced: no agent is hosted or activated here.
    pub fenced: bool,
    /// Until when the node may act (`None`: no lease, always).
    pub lease_until: Option<Instant>,
}

impl Standing {
    /// Why the node must not act at `now`, if it must not.
    pub fn refusal(&self, me: &str, now: Instant) -> Option<AgentError> {
        if self.fenced {
            return Some(AgentError::Fenced {
                node: me.to_owned(),
            });
        }
        if self.lease_until.is_some_and(|until| now > until) {
            return Some(AgentError::PausedPastLease {
                node: me.to_owned(),
            });
        }
        None
    }
}

/// What a role adds to this node's heartbeats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeartbeatFlags {
    /// Fences completed in this incarnation.
    pub fences: u64,
    /// Fenced now.
    pub fenced: bool,
    /// "You were decided down in my view: fence before rejoining."
    pub down: bool,
}

/// Counters a role reports in the node's status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoleCounters {
    /// Agents this node (as directory owner) activated again after their node went down.
    pub failovers: u64,
    /// Agents of a downed node that could not be activated again.
    pub unavailable: u64,
}

/// A tell waiting in a local node's outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    /// Its number in the outbox (increasing with the order of queueing).
    pub id: u64,
    /// When it was queued (unix ms).
    pub queued_ms: u64,
    /// The message.
    pub env: Envelope,
}

/// A local node's outbox figures, for status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxCounters {
    /// Messages waiting.
    pub depth: u64,
    /// The bound.
    pub max: u64,
    /// Messages delivered from the outbox since the node started.
    pub delivered: u64,
    /// Messages given up (the target does not exist, failed for good, or refused the
    /// contract); each was logged with its trace id.
    pub dropped: u64,
}

/// Who waits for the answer to a claim or a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyTo {
    /// A request of this node ([`crate::core::ClusterCore::spawn`], `lookup`).
    Local(Ticket),
    /// A peer's request.
    Peer {
        /// The peer.
        node: String,
        /// Its request id.
        req: u64,
    },
}

/// A get-or-spawn, as the owner receives it.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The agent.
    pub id: AgentId,
    /// How to spawn it.
    pub spec: AgentSpec,
    /// The node to run on, if one was named.
    pub target: Option<String>,
    /// Trace of the spawn.
    pub trace: TraceContext,
    /// The node that asked (alive: it just spoke, so it is a candidate even before this node
    /// heard its first heartbeat).
    pub requester: String,
}

/// The duties of one node role, driven by the core (see the module doc).
pub trait RoleCore: Send + 'static {
    /// Local or remote.
    fn role(&self) -> Role;

    /// The mode this role puts the node in.
    fn mode(&self) -> NodeMode;

    /// Whether the node may act now.
    fn standing(&self) -> Standing;

    /// Counters for the node's status.
    fn counters(&self) -> RoleCounters {
        RoleCounters::default()
    }

    /// Whether the heartbeat `hb` of `peer` feeds its detector (its report is recorded in
    /// `cx.members` already).
    fn admit_heartbeat(&mut self, cx: &mut Cx<'_>, peer: &str, hb: &Heartbeat) -> bool {
        let _ = (cx, peer, hb);
        true
    }

    /// What this node's heartbeat to `peer` says beyond liveness.
    fn heartbeat_flags(&self, peer: &str) -> HeartbeatFlags {
        let _ = peer;
        HeartbeatFlags::default()
    }

    /// Every tick, after the detectors; `gap` is the time since the previous tick (a long one:
    /// the node was paused or starved).
    fn tick(&mut self, cx: &mut Cx<'_>, gap: Duration);

    /// A peer became up, or was decided down, or left.
    fn membership_changed(&mut self, cx: &mut Cx<'_>) {
        let _ = cx;
    }

    /// The whole cluster is stopping (an operator's `tether down`): nodes that leave now are
    /// not to have their agents placed again. Nothing undoes it: the node stops too.
    fn cluster_stopping(&mut self, cx: &mut Cx<'_>) {
        let _ = cx;
    }

    /// Why a directory request from `from` is refused now, if it is (a quarantined peer; a
    /// fenced or paused node).
    fn refusal(&self, cx: &Cx<'_>, from: &str, msg: &DirMsg) -> Option<AgentError> {
        let _ = (cx, from, msg);
        None
    }

    /// A get-or-spawn for an id this node owns (in its view).
    fn claim(&mut self, cx: &mut Cx<'_>, reply: ReplyTo, claim: Claim) {
        let _ = claim;
        cx.reply(reply, Err(not_an_owner(cx)));
    }

    /// A lookup for an id this node owns (in its view).
    fn lookup(&mut self, cx: &mut Cx<'_>, reply: ReplyTo, id: AgentId) {
        let _ = id;
        cx.reply(reply, Err(not_an_owner(cx)));
    }

    /// The commit of a live migration of an id this node owns: move its entry from `from` to
    /// `to` if it still names `from` (see [`DirMsg::Move`]).
    fn commit_move(
        &mut self,
        cx: &mut Cx<'_>,
        reply: ReplyTo,
        id: AgentId,
        from: crate::directory::Location,
        to: crate::directory::Location,
    ) {
        let _ = (id, from, to);
        cx.reply(reply, Err(not_an_owner(cx)));
    }

    /// Whether this node, as an owner, is placing `id` now (a probe from another owner is
    /// then answered "unavailable": its placement could double this one).
    fn placing(&self, id: &AgentId) -> bool {
        let _ = id;
        false
    }

    /// A spawn of a local-only agent on this node.
    fn spawn_private(&mut self, cx: &mut Cx<'_>, reply: Ticket, claim: Claim);

    /// A directory notice for owners and backups (`Backup`, `Handoff`, `Evicted`,
    /// `Exited`), from a peer or from this node (see [`Cx::notify`]); the core acknowledges it
    /// when this returns. It may come more than once: applying it again must change nothing.
    fn notice(&mut self, cx: &mut Cx<'_>, from: &str, msg: DirMsg) {
        let _ = (cx, from, msg);
    }

    /// The answer to a request the role sent with [`Cx::request`] (or its failure: a
    /// timeout, the peer lost).
    fn answer(&mut self, cx: &mut Cx<'_>, req: u64, result: Result<DirAnswer, AgentError>) {
        let _ = (cx, req, result);
    }

    /// The result of an activation the role ordered with [`Cx::activate`].
    fn activated(&mut self, cx: &mut Cx<'_>, token: u64, result: Result<Activation, AgentError>) {
        let _ = (cx, token, result);
    }

    /// An agent ended on this node for good (`reason`: its failure, `None`: a clean stop).
    fn agent_exited(&mut self, cx: &mut Cx<'_>, id: AgentId, epoch: u64, reason: Option<String>) {
        cx.report_exit(id, epoch, reason);
    }

    /// A fence ordered with [`Output::Fence`] finished: the activations it stopped, with
    /// their spawn records.
    fn fence_done(&mut self, cx: &mut Cx<'_>, stopped: Vec<(AgentId, u64, AgentSpec)>) {
        let _ = (cx, stopped);
    }

    /// Messages in the node's outbox (`None`: the role keeps none).
    fn outbox_depth(&self) -> Option<usize> {
        None
    }

    /// Whether tells to `target` wait in the outbox (a new one must queue behind them).
    fn outbox_holds(&self, target: &AgentId) -> bool {
        let _ = target;
        false
    }

    /// Puts a tell in the outbox (`queued_ms`: the wall-clock time, unix ms); returns the depth
    /// after it.
    ///
    /// # Errors
    /// [`AgentError::OutboxFull`] at the bound; what the store says.
    fn queue(
        &mut self,
        cx: &mut Cx<'_>,
        env: Envelope,
        queued_ms: u64,
    ) -> Result<usize, AgentError> {
        let _ = (env, queued_ms);
        Err(AgentError::Internal(format!("{} keeps no outbox", cx.me())))
    }

    /// The result of a delivery ordered with [`Output::Deliver`].
    fn delivered(&mut self, cx: &mut Cx<'_>, qid: u64, result: Result<(), AgentError>) {
        let _ = (cx, qid, result);
    }

    /// The outbox's figures.
    fn outbox_counters(&self) -> Option<OutboxCounters> {
        None
    }
}

fn not_an_owner(cx: &Cx<'_>) -> AgentError {
    AgentError::NoDirectory(format!(
        "{} is not a directory owner (only remote nodes are)",
        cx.me()
    ))
}

/// What the core lends a role for one call.
pub struct Cx<'a> {
    /// The time of the input being handled.
    pub now: Instant,
    /// The membership table.
    pub members: &'a mut Members,
    /// The agents this node hosts, read-only.
    pub host: &'a dyn HostView,
    pub(crate) io: &'a mut Effects,
}

impl Cx<'_> {
    /// This node's name.
    pub fn me(&self) -> &str {
        &self.members.me().name
    }

    /// The up members now.
    pub fn up_view(&self) -> UpView {
        self.members.up_view()
    }

    /// The owner and backup of `id` among the up remote nodes.
    pub fn owner_and_backup(&self, id: &AgentId) -> (Option<String>, Option<String>) {
        let view = self.up_view();
        let (o, b) = directory::owner_and_backup(id.as_str(), view.remotes());
        (o.map(str::to_owned), b.map(str::to_owned))
    }

    /// The incarnation of node `node` as known here (this node's own included).
    pub fn life_of(&self, node: &str) -> Option<u64> {
        if node == self.me() {
            return Some(self.members.me().incarnation);
        }
        self.members.get(node).map(|m| m.info.incarnation)
    }

    /// A new epoch for an activation, one generation past `newest` (the newest this node
    /// knows of, 0 if none), tagged so that no other allocation, on any node or in any
    /// incarnation, yields it (see [`tether_actors::epoch`]).
    pub fn new_epoch(&mut self, newest: u64) -> u64 {
        self.io.epochs += 1;
        let me = self.members.me();
        let tag = tether_actors::epoch::tag_of(&me.name, me.incarnation, self.io.epochs);
        tether_actors::epoch::next(newest, tag)
    }

    /// A move's epoch for an activation now at `current` (see
    /// [`tether_actors::epoch::next_move`]), tagged as [`Cx::new_epoch`] tags.
    pub fn move_epoch(&mut self, current: u64) -> u64 {
        self.io.epochs += 1;
        let me = self.members.me();
        let tag = tether_actors::epoch::tag_of(&me.name, me.incarnation, self.io.epochs);
        tether_actors::epoch::next_move(current, tag)
    }

    /// A peer's state (`None`: unknown).
    pub fn state_of(&self, node: &str) -> Option<PeerState> {
        self.members.state_of(node)
    }

    /// Sends `msg` to `to` (in order with what was sent to it before).
    pub fn send(&mut self, to: &str, msg: DirMsg) {
        self.io.send(to, msg);
    }

    /// Sends a request made by `make` (given its request id) to `to`, and waits at most
    /// `deadline` for its answer, which comes to [`RoleCore::answer`].
    ///
    /// # Errors
    /// [`AgentError::NodeUnreachable`] at once when `to` is known to be unreachable or down.
    pub fn request(
        &mut self,
        to: &str,
        deadline: Duration,
        make: impl FnOnce(u64) -> DirMsg,
    ) -> Result<u64, AgentError> {
        let state = self.members.state_of(to);
        self.io
            .request_for_role(to, state, (self.now + deadline, deadline), make)
    }

    /// Answers a claim or lookup.
    pub fn reply(&mut self, to: ReplyTo, result: Result<DirAnswer, AgentError>) {
        match to {
            ReplyTo::Local(ticket) => self.io.complete(ticket, result, self.members),
            ReplyTo::Peer { node, req } => self.io.send(&node, DirMsg::Answer { req, result }),
        }
    }

    /// Completes a request of this node.
    pub fn complete(&mut self, ticket: Ticket, result: Result<DirAnswer, AgentError>) {
        self.io.complete(ticket, result, self.members);
    }

    /// Orders an activation on this node; its result comes to [`RoleCore::activated`] with
    /// the returned token.
    pub fn activate(
        &mut self,
        id: AgentId,
        epoch: u64,
        spec: &AgentSpec,
        record: std::sync::Arc<tether_actors::SpawnRecord>,
        trace: TraceContext,
    ) -> u64 {
        self.io.activate_for_role(ActivateOrder {
            token: 0,
            id,
            epoch,
            record,
            policy: spec.policy,
            group: spec.group.clone(),
            trace,
        })
    }

    /// Orders an activation whose result completes request `ticket` of this node.
    pub fn activate_for(&mut self, ticket: Ticket, order: ActivateOrder) {
        self.io.activate_for_ticket(ticket, order);
    }

    /// Decides `peer` down (the split-brain resolver); the requests waiting on it fail and the
    /// role hears of the change once this call returns. Whether it was downed (only an
    /// unreachable, silent peer can be).
    pub fn decide_down(&mut self, peer: &str) -> bool {
        if self.members.decide_down(peer, self.now).is_none() {
            return false;
        }
        self.io.peer_lost(peer);
        self.io.membership_changed();
        true
    }

    /// Emits an output for the node.
    pub fn emit(&mut self, out: Output) {
        self.io.emit(out);
    }

    /// Sends notice `msg` (`Backup`, `Handoff`, `Evicted` or `Exited`; its `req` is set at
    /// every try) to the id's owner or backup, until it is acknowledged or a newer notice of
    /// the same kind about the same id replaces it (see [`crate::notices`]). A notice for this
    /// very node comes to [`RoleCore::notice`] once the current call returns.
    pub fn notify(&mut self, to: NoticeTo, msg: DirMsg) {
        self.io.notices.add(to, msg, self.now);
    }

    /// Reports that an agent of this node ended to its owner and backup (`Exited`).
    pub fn report_exit(&mut self, id: AgentId, epoch: u64, reason: Option<String>) {
        for to in [NoticeTo::Owner, NoticeTo::Backup] {
            let msg = DirMsg::Exited {
                req: 0,
                id: id.clone(),
                epoch,
                reason: reason.clone(),
            };
            self.notify(to, msg);
        }
    }
}

/// The split-brain resolver's timers (remote nodes; see `tether-node-remote`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SbrConfig {
    /// How long the set of unreachable members must stay the same before deciding.
    pub stable_after: Duration,
    /// How much longer the winning side waits before deciding the others down.
    pub down_margin: Duration,
}

impl Default for SbrConfig {
    fn default() -> Self {
        Self {
            stable_after: Duration::from_millis(400),
            down_margin: Duration::from_millis(1100),
        }
    }
}
