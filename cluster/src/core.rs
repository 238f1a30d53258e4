//! The cluster core of one node, sans-IO: membership, the directory's requester and host
//! sides, and the node's role ([`RoleCore`]), as one state machine.
//!
//! It never reads a clock, sleeps or touches a socket, as quinn-proto's `Connection` does not:
//! the node (or the simulator, [`crate::sim`]) feeds it inputs with the time they happened,
//! and takes its outputs with [`ClusterCore::poll_output`].
//!
//! ```text
//! inputs                                   outputs (poll_output)
//!   tick(now)              ──▶ ┌───────────┐ ──▶ Heartbeat{to, hb}     a datagram on the link
//!   learn(info)            ──▶ │ Members   │ ──▶ Send{to, DirMsg}      on the agent stream
//!   heartbeat(from, hb)    ──▶ │ RoleCore  │ ──▶ Activate(order)       on this node's host
//!   link_closed(peer)      ──▶ │ requests  │ ──▶ Fence                 stop every agent here
//!   receive(from, DirMsg)  ──▶ │ (tickets, │ ──▶ Done{ticket, result}  a spawn/lookup finished
//!   spawn / lookup         ──▶ │  waiters) │ ──▶ PeerLost, Quarantine, Mode
//!   activated / agent_exited / fence_done └───────────┘
//! ```
//!
//! **Requests and deadlines.** A spawn or lookup of this node returns a [`Ticket`]; it ends
//! with exactly one `Done`: the answer, an error, a timeout at its deadline (checked at every
//! tick), or [`AgentError::NodeUnreachable`] as soon as the peer it waits on is lost. The
//! role's own requests (an owner's probes and activations) end the same way, at
//! [`RoleCore::answer`].
//!
//! **Host side.** `Activate` from an owner becomes an [`Output::Activate`]; its result goes
//! back as an answer. `Probe` is answered from the host's view (a local-only agent is
//! invisible to other nodes).

mod moves;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tether_actors::{Activation, AgentError, AgentId, TraceContext};
use tracing::debug;

use crate::directory::{self, AgentSpec, DirAnswer, DirMsg, Location};
pub use crate::effects::{
    ActivateOrder, HostView, Output, Target, Ticket, LOOKUP_TIMEOUT, SPAWN_TIMEOUT,
};
use crate::effects::{ActivationFor, Effects, Waiter, Want};
use crate::identity::NodeInfo;
use crate::membership::detector::{DetectorConfig, PeerState, Transition};
use crate::membership::{Heartbeat, Learned, Members, UpView};
use crate::notices::Try;
use crate::role::{Claim, Cx, NodeMode, ReplyTo, RoleCore, RoleCounters, Standing};

/// One node's cluster core (see the module doc).
pub struct ClusterCore {
    members: Members,
    role: Box<dyn RoleCore>,
    host: Arc<dyn HostView>,
    io: Effects,
    last_tick: Option<Instant>,
    hb_seq: u64,
    stopping: bool,
}

/// How a link ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkEnd {
    /// Broken, or closed without a word about why: the detector decides what it means.
    Broken,
    /// The peer left the cluster cleanly.
    Left,
    /// The peer stopped with the whole cluster.
    ClusterDown,
}

impl std::fmt::Debug for ClusterCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCore")
            .field("me", &self.members.me().name)
            .field("role", &self.role.role())
            .finish()
    }
}

impl ClusterCore {
    /// Calls the role with a context, then settles what the call raised (peers lost,
    /// membership changed).
    fn call<R>(&mut self, now: Instant, f: impl FnOnce(&mut dyn RoleCore, &mut Cx<'_>) -> R) -> R {
        let r = self.raw_call(now, f);
        self.settle(now);
        r
    }

    fn raw_call<R>(
        &mut self,
        now: Instant,
        f: impl FnOnce(&mut dyn RoleCore, &mut Cx<'_>) -> R,
    ) -> R {
        let mut cx = Cx {
            now,
            members: &mut self.members,
            host: &*self.host,
            io: &mut self.io,
        };
        f(&mut *self.role, &mut cx)
    }

    /// Fails the requests waiting on lost peers and tells the role of membership changes,
    /// until neither is pending.
    fn settle(&mut self, now: Instant) {
        loop {
            if let Some(peer) = self.io.lost.pop() {
                self.fail_waiters(&peer, now);
                self.io.emit(Output::PeerLost(peer));
                continue;
            }
            if std::mem::take(&mut self.io.changed) {
                self.raw_call(now, |role, cx| role.membership_changed(cx));
                continue;
            }
            let tries = self
                .io
                .notices
                .due(&self.members, now, &mut self.io.next_id);
            if tries.is_empty() {
                return;
            }
            let me = self.me().to_owned();
            for t in tries {
                match t {
                    Try::Send { to, msg } => self.io.send(&to, msg),
                    Try::Here(msg) => self.raw_call(now, |role, cx| role.notice(cx, &me, msg)),
                }
            }
        }
    }

    /// The core of node `me`, with `role`'s duties, reading `host`.
    pub fn new(
        me: NodeInfo,
        detector: DetectorConfig,
        role: Box<dyn RoleCore>,
        host: Arc<dyn HostView>,
    ) -> Self {
        Self {
            members: Members::new(me, detector),
            role,
            host,
            io: Effects::default(),
            last_tick: None,
            hb_seq: 0,
            stopping: false,
        }
    }

    /// The membership table.
    pub fn members(&self) -> &Members {
        &self.members
    }

    /// This node's name.
    pub fn me(&self) -> &str {
        &self.members.me().name
    }

    /// The up members now.
    pub fn up_view(&self) -> UpView {
        self.members.up_view()
    }

    /// The node's mode.
    pub fn mode(&self) -> NodeMode {
        self.role.mode()
    }

    /// Whether the node may act now.
    pub fn standing(&self) -> Standing {
        self.role.standing()
    }

    /// The role's counters.
    pub fn role_counters(&self) -> RoleCounters {
        self.role.counters()
    }

    /// Requests of this node still waiting.
    pub fn pending(&self) -> usize {
        self.io.tickets.len()
    }

    /// Directory notices of this node not acknowledged yet.
    pub fn notices_pending(&self) -> usize {
        self.io.notices.len()
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.io.out.pop_front()
    }

    /// The periodic work: detectors, the role's decisions, deadlines, heartbeats.
    pub fn tick(&mut self, now: Instant) {
        let gap = self
            .last_tick
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        self.last_tick = Some(now);
        let transitions = self.members.tick(now);
        self.transitions(now, transitions);
        self.call(now, |role, cx| role.tick(cx, gap));
        self.expire(now);
        self.heartbeats();
    }

    /// Learned of a member (gossip or a handshake).
    pub fn learn(&mut self, info: NodeInfo, now: Instant) -> Learned {
        let name = info.name.clone();
        let learned = self.members.learn(info, now);
        if let Learned::Restarted(Some(t)) = learned {
            self.transitions(now, vec![(name, t)]);
        }
        learned
    }

    /// A link to `peer` was established.
    pub fn linked(&mut self, peer: &str) {
        self.members.linked(peer);
    }

    /// A heartbeat of `peer` arrived (on its current link).
    pub fn heartbeat(&mut self, from: &str, hb: &Heartbeat, now: Instant) {
        if self.members.record_report(from, hb).is_none() {
            return;
        }
        let admit = self.call(now, |role, cx| role.admit_heartbeat(cx, from, hb));
        if admit {
            if let Some(t) = self.members.heartbeat(from, hb.incarnation, now) {
                self.transitions(now, vec![(from.to_owned(), t)]);
            }
        }
    }

    /// This node is stopping with the whole cluster: the agents of the nodes that stop are not
    /// placed again (see [`RoleCore::cluster_stopping`]).
    pub fn cluster_stopping(&mut self, now: Instant) {
        if !std::mem::replace(&mut self.stopping, true) {
            tracing::info!("the cluster is stopping: nothing is placed again");
            self.call(now, |role, cx| role.cluster_stopping(cx));
        }
    }

    /// The link to `peer` closed, and how.
    pub fn link_closed(&mut self, peer: &str, end: LinkEnd, now: Instant) {
        match end {
            LinkEnd::Broken => return,
            LinkEnd::Left => {}
            LinkEnd::ClusterDown => self.cluster_stopping(now),
        }
        match self.members.left(peer, now) {
            Some(t) => self.transitions(now, vec![(peer.to_owned(), t)]),
            None => {
                self.io.peer_lost(peer);
                self.settle(now);
            }
        }
    }

    /// Peers lost fail their waiters; peers up or down change membership for the role.
    fn transitions(&mut self, now: Instant, ts: Vec<(String, Transition)>) {
        for (peer, t) in ts {
            if t.restarted {
                tracing::info!(peer, from = %t.from, to = %t.to, "peer restarted");
            } else if t.to == PeerState::Up {
                tracing::info!(peer, from = %t.from, "peer up");
            } else {
                tracing::warn!(peer, from = %t.from, to = %t.to, "peer {}", t.to);
            }
            if matches!(t.to, PeerState::Unreachable | PeerState::Down) {
                self.io.peer_lost(&peer);
            }
            if matches!(t.to, PeerState::Up | PeerState::Down) {
                self.io.membership_changed();
            }
        }
        self.settle(now);
    }

    /// Fails every request waiting on `peer`; its notices in flight are tried again.
    fn fail_waiters(&mut self, peer: &str, now: Instant) {
        self.io.notices.peer_lost(peer, now);
        let mut lost: Vec<u64> = self
            .io
            .sent
            .iter()
            .filter(|(_, s)| s.peer == peer)
            .map(|(r, _)| *r)
            .collect();
        lost.sort_unstable();
        for req in lost {
            let e = AgentError::NodeUnreachable {
                node: peer.to_owned(),
            };
            self.answered(req, Err(e), now);
        }
    }

    /// Ends the requests and tickets past their deadline.
    fn expire(&mut self, now: Instant) {
        let mut due: Vec<u64> = self
            .io
            .sent
            .iter()
            .filter(|(_, s)| s.deadline <= now)
            .map(|(r, _)| *r)
            .collect();
        due.sort_unstable();
        for req in due {
            let e = AgentError::Timeout {
                ms: self.io.sent[&req].allowed.as_millis() as u64,
            };
            self.answered(req, Err(e), now);
        }
        self.settle(now);
        let mut late: Vec<Ticket> = self
            .io
            .tickets
            .iter()
            .filter(|(_, t)| t.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        late.sort_unstable();
        for t in late {
            let ms = self.io.tickets[&t].want.allowed().as_millis() as u64;
            self.io
                .complete(t, Err(AgentError::Timeout { ms }), &self.members);
        }
    }

    fn heartbeats(&mut self) {
        self.hb_seq += 1;
        let unreachable = self.members.unreachable_remotes();
        let me = self.members.me().incarnation;
        let peers: Vec<String> = self.members.peers().map(|m| m.info.name.clone()).collect();
        for to in peers {
            let flags = self.role.heartbeat_flags(&to);
            let hb = Heartbeat {
                incarnation: me,
                seq: self.hb_seq,
                fences: flags.fences,
                fenced: flags.fenced,
                down: flags.down,
                unreachable: unreachable.clone(),
            };
            self.io.emit(Output::Heartbeat { to, hb });
        }
    }

    // ---------------------------------------------------------------- requests of this node

    /// Get-or-spawn `id`: ends with a `Done` carrying the activation.
    pub fn spawn(&mut self, now: Instant, claim: Claim, target: Target) -> Ticket {
        let ticket = self
            .io
            .new_ticket(Want::Activation, now + SPAWN_TIMEOUT, &claim.id);
        let target_node = match &target {
            Target::Here => Some(self.me().to_owned()),
            Target::On(n) => Some(n.clone()),
            Target::Placed => None,
        };
        let claim = Claim {
            target: target_node,
            ..claim
        };
        if claim.spec.placement.is_local_only() {
            self.call(now, |role, cx| role.spawn_private(cx, ticket, claim));
            return ticket;
        }
        if let Target::On(node) = &target {
            if let Err(e) = self.target_allows(&claim, node) {
                self.io.complete(ticket, Err(e), &self.members);
                return ticket;
            }
        }
        let view = self.members.up_view();
        let Some(owner) = directory::owner(claim.id.as_str(), view.remotes()).map(str::to_owned)
        else {
            let e = AgentError::NoDirectory("no remote node is reachable from this node".into());
            self.io.complete(ticket, Err(e), &self.members);
            return ticket;
        };
        if owner == self.me() {
            let reply = ReplyTo::Local(ticket);
            self.call(now, |role, cx| role.claim(cx, reply, claim));
            return ticket;
        }
        let state = self.members.state_of(&owner);
        let Claim {
            id,
            spec,
            target,
            trace,
            ..
        } = claim;
        self.io
            .request_for_ticket(ticket, &owner, state, &self.members, |req| DirMsg::Claim {
                req,
                id,
                spec: Box::new(spec),
                target,
                trace,
            });
        ticket
    }

    /// Whether the named node may host the claimed agent.
    fn target_allows(&self, claim: &Claim, node: &str) -> Result<(), AgentError> {
        let (p, caps) = (&claim.spec.placement, self.members.caps_of(node));
        let role = self
            .members
            .role_of(node)
            .ok_or_else(|| AgentError::NoSuchNode {
                node: node.to_owned(),
            })?;
        // on this node itself only its capabilities are checked here (as ever, its role is not)
        let me_fits = node == self.me() && directory::placement::missing_need(p, caps).is_none();
        let fit = if me_fits {
            Ok(())
        } else {
            directory::fits(p, role, caps)
        };
        fit.map_err(|why| AgentError::Placement {
            reason: format!("{} cannot run on {node}: {why}", claim.id),
        })
    }

    /// Where `id` runs: ends with a `Done` carrying its location.
    pub fn lookup(&mut self, now: Instant, id: AgentId) -> Ticket {
        let ticket = self
            .io
            .new_ticket(Want::Location, now + LOOKUP_TIMEOUT, &id);
        if let Some(epoch) = self.host.epoch_of(&id) {
            let loc = Location {
                node: self.me().to_owned(),
                epoch,
            };
            let found = Ok(DirAnswer::Location(Some(loc)));
            self.io.complete(ticket, found, &self.members);
            return ticket;
        }
        let view = self.members.up_view();
        let Some(owner) = directory::owner(id.as_str(), view.remotes()).map(str::to_owned) else {
            let e = AgentError::NoDirectory("no remote node is reachable from this node".into());
            self.io.complete(ticket, Err(e), &self.members);
            return ticket;
        };
        if owner == self.me() {
            let reply = ReplyTo::Local(ticket);
            self.call(now, |role, cx| role.lookup(cx, reply, id));
            return ticket;
        }
        let state = self.members.state_of(&owner);
        self.io
            .request_for_ticket(ticket, &owner, state, &self.members, |req| DirMsg::Lookup {
                req,
                id,
            });
        ticket
    }

    // ---------------------------------------------------------------- messages from peers

    /// A directory message from `from`.
    pub fn receive(&mut self, from: &str, msg: DirMsg, now: Instant) {
        if let DirMsg::Answer { req, result } = msg {
            self.answered(req, result, now);
            return self.settle(now);
        }
        let refused = self.raw_call(now, |role, cx| role.refusal(cx, from, &msg));
        if let Some(error) = refused {
            debug!(peer = %from, %error, "directory request refused");
            if let Some(req) = msg.request_id() {
                self.io.send(
                    from,
                    DirMsg::Answer {
                        req,
                        result: Err(error),
                    },
                );
            }
            return;
        }
        match msg {
            DirMsg::Claim {
                req,
                id,
                spec,
                target,
                trace,
            } => {
                let reply = ReplyTo::Peer {
                    node: from.to_owned(),
                    req,
                };
                if let Err(e) = id.validate() {
                    return self.reply(reply, Err(AgentError::BadId(e.to_string())));
                }
                if spec.placement.is_local_only() {
                    let e = AgentError::LocalOnly {
                        reason: format!(
                            "{id} is local-only and cannot be claimed from another node"
                        ),
                    };
                    return self.reply(reply, Err(e));
                }
                let claim = Claim {
                    id,
                    spec: *spec,
                    target,
                    trace,
                    requester: from.to_owned(),
                };
                self.call(now, |role, cx| role.claim(cx, reply, claim));
            }
            DirMsg::Lookup { req, id } => {
                let reply = ReplyTo::Peer {
                    node: from.to_owned(),
                    req,
                };
                self.call(now, |role, cx| role.lookup(cx, reply, id));
            }
            DirMsg::Activate {
                req,
                id,
                epoch,
                spec,
                trace,
            } => self.activate_for_peer(from, req, id, epoch, *spec, trace),
            DirMsg::Probe { req, id } => {
                let result = self.probed(&id);
                self.io.send(from, DirMsg::Answer { req, result });
            }
            DirMsg::Move {
                req,
                id,
                from: was,
                to,
            } => {
                let reply = ReplyTo::Peer {
                    node: from.to_owned(),
                    req,
                };
                self.call(now, |role, cx| role.commit_move(cx, reply, id, was, to));
            }
            notice @ (DirMsg::Backup { req, .. }
            | DirMsg::Handoff { req, .. }
            | DirMsg::Evicted { req, .. }
            | DirMsg::Exited { req, .. }) => {
                self.call(now, |role, cx| role.notice(cx, from, notice));
                let result = Ok(DirAnswer::Ack);
                self.io.send(from, DirMsg::Answer { req, result });
            }
            DirMsg::Answer { .. } => unreachable!("handled above"),
        }
    }

    /// Host side of `Probe`: whether `id` runs here (a local-only agent is invisible), or,
    /// if this node is placing it as its owner, that it cannot tell yet.
    fn probed(&self, id: &AgentId) -> Result<DirAnswer, AgentError> {
        if self.role.placing(id) {
            return Err(AgentError::Unavailable {
                id: id.to_string(),
                reason: format!("{} is placing it now", self.me()),
            });
        }
        if self.host.installing(id).is_some() {
            // between a move's commit and its hand-over neither end serves it: "not here"
            // from both would let the prober decide that the agent runs nowhere
            return Err(AgentError::Unavailable {
                id: id.to_string(),
                reason: format!("a move is installing it on {}", self.me()),
            });
        }
        let here = self
            .host
            .epoch_of(id)
            .filter(|_| !self.host.is_local_only(id));
        let loc = here.map(|epoch| Location {
            node: self.me().to_owned(),
            epoch,
        });
        Ok(DirAnswer::Location(loc))
    }

    fn reply(&mut self, to: ReplyTo, result: Result<DirAnswer, AgentError>) {
        match to {
            ReplyTo::Local(t) => self.io.complete(t, result, &self.members),
            ReplyTo::Peer { node, req } => self.io.send(&node, DirMsg::Answer { req, result }),
        }
    }

    /// Host side of `Activate`: activates here, answers with the result.
    fn activate_for_peer(
        &mut self,
        from: &str,
        req: u64,
        id: AgentId,
        epoch: u64,
        spec: AgentSpec,
        trace: TraceContext,
    ) {
        if spec.placement.is_local_only() {
            let e = AgentError::LocalOnly {
                reason: format!("{id} is local-only and cannot be activated from another node"),
            };
            let result = Err(e);
            self.io.send(from, DirMsg::Answer { req, result });
            return;
        }
        let token = self.io.next();
        self.io.activations.insert(
            token,
            ActivationFor::Peer {
                node: from.to_owned(),
                req,
            },
        );
        self.io.emit(Output::Activate(ActivateOrder {
            token,
            id,
            epoch,
            record: spec.record(),
            policy: spec.policy,
            group: spec.group,
            trace,
        }));
    }

    /// The answer to request `req` (or its failure).
    fn answered(&mut self, req: u64, result: Result<DirAnswer, AgentError>, now: Instant) {
        if self.io.notices.owns(req) {
            return self.io.notices.answered(req, result.map(drop), now);
        }
        let Some(sent) = self.io.sent.remove(&req) else {
            return; // a late answer, past its deadline
        };
        match sent.waiter {
            Waiter::Ticket(t) => self.io.complete(t, result, &self.members),
            // settled by whoever called: this runs inside `settle` too
            Waiter::Role => self.raw_call(now, |role, cx| role.answer(cx, req, result)),
        }
    }

    // ---------------------------------------------------------------- reports from the host

    /// An activation ordered with [`Output::Activate`] finished.
    pub fn activated(&mut self, token: u64, result: Result<Activation, AgentError>, now: Instant) {
        match self.io.activations.remove(&token) {
            Some(ActivationFor::Peer { node, req }) => {
                let result = result.map(DirAnswer::Activation);
                self.io.send(&node, DirMsg::Answer { req, result });
            }
            Some(ActivationFor::Ticket(t)) => {
                let result = result.map(DirAnswer::Activation);
                self.io.complete(t, result, &self.members);
            }
            Some(ActivationFor::Role) => {
                self.call(now, |role, cx| role.activated(cx, token, result));
            }
            None => {}
        }
    }

    /// An agent of this node ended for good.
    pub fn agent_exited(&mut self, id: AgentId, epoch: u64, reason: Option<String>, now: Instant) {
        self.call(now, |role, cx| role.agent_exited(cx, id, epoch, reason));
    }

    /// Messages in the outbox (`None`: this node keeps none).
    pub fn outbox_depth(&self) -> Option<usize> {
        self.role.outbox_depth()
    }

    /// Whether tells to `target` wait in the outbox.
    pub fn outbox_holds(&self, target: &AgentId) -> bool {
        self.role.outbox_holds(target)
    }

    /// The outbox's figures.
    pub fn outbox_counters(&self) -> Option<crate::role::OutboxCounters> {
        self.role.outbox_counters()
    }

    /// Puts a tell in the outbox (`queued_ms`: the wall-clock time, unix ms).
    ///
    /// # Errors
    /// As [`RoleCore::queue`].
    pub fn queue(
        &mut self,
        env: tether_actors::Envelope,
        now: Instant,
        queued_ms: u64,
    ) -> Result<usize, AgentError> {
        self.call(now, |role, cx| role.queue(cx, env, queued_ms))
    }

    /// A delivery ordered with [`Output::Deliver`] finished.
    pub fn delivered(&mut self, qid: u64, result: Result<(), AgentError>, now: Instant) {
        self.call(now, |role, cx| role.delivered(cx, qid, result));
    }

    /// The fence ordered with [`Output::Fence`] finished.
    pub fn fence_done(&mut self, stopped: Vec<(AgentId, u64, AgentSpec)>, now: Instant) {
        self.call(now, |role, cx| role.fence_done(cx, stopped));
    }
}
