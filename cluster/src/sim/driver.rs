//! A simulated node's I/O: it carries out its core's outputs as the real node does (messages
//! on links, heartbeats as datagrams, activations and fences on the host, deliveries from the
//! outbox), serves the data plane, and runs the clients' operations.

use std::time::Duration;

use bytes::Bytes;
use tether_actors::{
    Activation, AgentError, AgentId, Contract, Encoding, Envelope, Placement, Prefer, TraceContext,
};

use super::check::{Made, QueuedTell, Violation};
use super::{DataMsg, Kind, Purpose, Roles, Sim, Waiting, Wire};
use crate::core::{Output, Target, LOOKUP_TIMEOUT, SPAWN_TIMEOUT};
use crate::directory::{self, AgentSpec, DirAnswer, DirMsg};
use crate::identity::Role;
use crate::membership::detector::PeerState;
use crate::role::Claim;

/// The args of a local-only agent in the simulation: data that must never leave its node.
pub(crate) const SECRET: &[u8] = b"\"SECRET-LOCAL-ONLY\"";

/// How long a client waits for an agent's answer once it sent its request.
const APPLY_TIMEOUT: Duration = Duration::from_secs(5);

impl<R: Roles> Sim<R> {
    pub(super) fn handle_at_node(&mut self, kind: Kind) {
        match kind {
            Kind::Tick { node, life } => {
                if self.nodes[node].life != life || self.nodes[node].core.is_none() {
                    return;
                }
                let now = self.at(self.now);
                if let Some(c) = self.nodes[node].core.as_mut() {
                    c.tick(now);
                }
                self.expire_io(node);
                self.pump(node);
                let next = self.now + self.cfg.heartbeat;
                self.push(next, Kind::Tick { node, life });
            }
            Kind::Arrive {
                from,
                to,
                generation,
                wire,
            } => {
                if self.net.up(from, to) != Some(generation) {
                    return; // the link broke while it was on its way: lost
                }
                if self.net.cut(from, to) {
                    let lane = self.net.lanes.get_mut(&(from, to)).expect("lane");
                    lane.held.push_back(wire);
                    return;
                }
                self.arrive(from, to, wire);
            }
            Kind::Datagram {
                from,
                to,
                generation,
                hb,
            } => {
                if self.net.up(from, to) != Some(generation) {
                    return;
                }
                let (name, now) = (self.nodes[from].info.name.clone(), self.at(self.now));
                if let Some(c) = self.nodes[to].core.as_mut() {
                    c.heartbeat(&name, &hb, now);
                }
                self.pump(to);
            }
            Kind::Activated { node, life, order } => {
                if self.nodes[node].life == life {
                    self.activated(node, order);
                }
            }
            Kind::Fenced { node, life } => {
                if self.nodes[node].life == life {
                    self.fenced(node);
                }
            }
            Kind::MoveTimeout { node, life, op } => {
                if self.nodes[node].life == life {
                    self.move_timed_out(node, op);
                }
            }
            Kind::Outcome { node, life, op } => self.ask_outcome_again(node, life, op),
            Kind::InstallCheck {
                node,
                life,
                id,
                epoch,
            } => {
                if self.nodes[node].life == life {
                    self.check_install(node, id, epoch);
                }
            }
            Kind::Links => {}
        }
    }

    fn arrive(&mut self, from: usize, to: usize, wire: Wire) {
        match wire {
            Wire::Dir(msg) => {
                if self.trace {
                    self.say(
                        Some(to),
                        format!("<- {} {}", self.nodes[from].info.name, msg.summary()),
                    );
                }
                let (name, now) = (self.nodes[from].info.name.clone(), self.at(self.now));
                if let Some(c) = self.nodes[to].core.as_mut() {
                    c.receive(&name, msg, now);
                }
                self.pump(to);
            }
            Wire::Data(msg) => self.data(to, from, msg),
        }
    }

    fn activated(&mut self, i: usize, order: crate::core::ActivateOrder) {
        let now = self.at(self.now);
        let node = &self.nodes[i];
        let Some(core) = node.core.as_ref() else {
            return;
        };
        let result = if core.standing().fenced {
            Err(AgentError::Fenced {
                node: node.info.name.clone(),
            })
        } else {
            let local_only = order.record.placement.is_local_only();
            let spec = AgentSpec::of(&order.record, order.policy, order.group.clone());
            let (epoch, created) = node.host.activate(&order.id, order.epoch, local_only, spec);
            if created {
                self.say(Some(i), format!("activated {} at epoch {epoch}", order.id));
                let p = &order.record.placement;
                let replacement = tether_actors::epoch::generation(epoch) > 1;
                if replacement && node.info.role == Role::Local && p.prefer == Prefer::Any {
                    // every simulated remote node registers every kind, and the owner placing
                    // it is one: a failover never needs a device
                    let v = Violation {
                        at: self.now,
                        what: format!(
                            "{} failed over onto the device {}",
                            order.id, node.info.name
                        ),
                    };
                    self.violation.get_or_insert(v);
                }
                let made = Made {
                    node: node.info.name.clone(),
                    incarnation: node.info.incarnation,
                    at: self.now,
                };
                if let Err(v) = self.history.activated(&order.id, epoch, made, self.now) {
                    self.violation.get_or_insert(v);
                }
            }
            Ok(Activation {
                id: order.id.clone(),
                node: self.nodes[i].info.name.clone(),
                epoch,
                created,
            })
        };
        if let Some(c) = self.nodes[i].core.as_mut() {
            c.activated(order.token, result, now);
        }
        self.pump(i);
    }

    fn fenced(&mut self, i: usize) {
        let now = self.at(self.now);
        let stopped = self.nodes[i].host.clear();
        let names: Vec<_> = stopped.iter().map(|(id, epoch, _)| (id, epoch)).collect();
        self.say(Some(i), format!("fence stopped {names:?}"));
        if let Some(c) = self.nodes[i].core.as_mut() {
            let mut specs = Vec::new();
            for (id, epoch, spec) in stopped {
                c.agent_exited(id.clone(), epoch, None, now);
                specs.extend(spec.map(|s| (id, epoch, s)));
            }
            c.fence_done(specs, now);
        }
        self.pump(i);
    }

    /// Fails the deliveries and applies of node `i` past their deadline (the real node's
    /// request deadlines).
    fn expire_io(&mut self, i: usize) {
        let now = self.now;
        let late: Vec<u64> = self.nodes[i]
            .delivers
            .iter()
            .filter(|(_, (_, d))| *d <= now)
            .map(|(q, _)| *q)
            .collect();
        for qid in late {
            self.nodes[i].delivers.remove(&qid);
            let e = AgentError::Timeout {
                ms: self.cfg.deliver_timeout.as_millis() as u64,
            };
            let t = self.at(now);
            if let Some(c) = self.nodes[i].core.as_mut() {
                c.delivered(qid, Err(e), t);
            }
        }
        let late: Vec<u64> = self.nodes[i]
            .applies
            .iter()
            .filter(|(_, (_, d))| *d <= now)
            .map(|(op, _)| *op)
            .collect();
        for op in late {
            self.nodes[i].applies.remove(&op);
            self.op_ended(op, false);
        }
    }

    /// Carries out the outputs of node `i`'s core until there are none.
    pub(super) fn pump(&mut self, i: usize) {
        if self.trace {
            self.trace_view(i);
        }
        loop {
            let Some(out) = self.nodes[i].core.as_mut().and_then(|c| c.poll_output()) else {
                return;
            };
            self.output(i, out);
        }
    }

    /// Traces how node `i` sees its peers, when that changed.
    fn trace_view(&mut self, i: usize) {
        let Some(core) = self.nodes[i].core.as_ref() else {
            return;
        };
        let view: Vec<String> = core
            .members()
            .peers()
            .map(|m| {
                format!(
                    "{}={}{}",
                    m.info.name,
                    m.state(),
                    if m.report.unreachable.is_empty() {
                        String::new()
                    } else {
                        format!("(says {:?})", m.report.unreachable)
                    }
                )
            })
            .collect();
        let view = format!("{} mode={}", view.join(" "), core.mode());
        if view != self.nodes[i].seen {
            self.say(Some(i), format!("sees {view}"));
            self.nodes[i].seen = view;
        }
    }

    fn output(&mut self, i: usize, out: Output) {
        if self.trace && !matches!(out, Output::Heartbeat { .. } | Output::Send { .. }) {
            self.say(Some(i), format!("{out:?}"));
        }
        match out {
            Output::Send { to, msg } => {
                let j = self.index(&to);
                if self.trace && !matches!(msg, DirMsg::Answer { .. } | DirMsg::Lookup { .. }) {
                    self.say(Some(i), format!("-> {to} {}", msg.summary()));
                }
                // as a node's peer writer: with no link to a peer decided down, nothing goes
                let down = self.nodes[i]
                    .core
                    .as_ref()
                    .is_some_and(|c| c.members().state_of(&to) == Some(PeerState::Down));
                if !down || self.net.up(i, j).is_some() {
                    self.send(i, j, Wire::Dir(msg));
                }
            }
            Output::Heartbeat { to, hb } => {
                let j = self.index(&to);
                if let Some(generation) = self.net.up(i, j) {
                    if let Some(extra) = self.net.datagram(i, j, &mut self.rng) {
                        let at = self.now + self.net.latency(&mut self.rng) + extra;
                        let kind = Kind::Datagram {
                            from: i,
                            to: j,
                            generation,
                            hb,
                        };
                        self.push(at, kind);
                    }
                }
            }
            Output::Activate(order) => {
                let life = self.nodes[i].life;
                let at = self.now + self.cfg.activation;
                self.push(
                    at,
                    Kind::Activated {
                        node: i,
                        life,
                        order,
                    },
                );
            }
            Output::Fence => {
                let life = self.nodes[i].life;
                let at = self.now + self.cfg.fence;
                self.push(at, Kind::Fenced { node: i, life });
            }
            Output::Done { ticket, result } => self.done(i, ticket, result),
            Output::PeerLost(peer) => self.peer_lost(i, &peer),
            Output::Quarantine { peer, on } => {
                let q = &mut self.nodes[i].quarantined;
                if on {
                    q.insert(peer);
                } else {
                    q.remove(&peer);
                }
            }
            Output::Mode(_) => {}
            Output::Deliver { qid, node, env } => {
                let j = self.index(&node);
                if j == i {
                    let result = self.serve_env(i, i, &env);
                    let now = self.at(self.now);
                    if let Some(c) = self.nodes[i].core.as_mut() {
                        c.delivered(qid, result, now);
                    }
                } else {
                    let deadline = self.now + self.cfg.deliver_timeout;
                    self.nodes[i].delivers.insert(qid, (j, deadline));
                    self.send(i, j, Wire::Data(DataMsg::Deliver { qid, env }));
                }
            }
        }
    }

    fn peer_lost(&mut self, i: usize, peer: &str) {
        let j = self.index(peer);
        let lost: Vec<u64> = self.nodes[i]
            .delivers
            .iter()
            .filter(|(_, (to, _))| *to == j)
            .map(|(q, _)| *q)
            .collect();
        let now = self.at(self.now);
        for qid in lost {
            self.nodes[i].delivers.remove(&qid);
            let e = AgentError::NodeUnreachable {
                node: peer.to_owned(),
            };
            if let Some(c) = self.nodes[i].core.as_mut() {
                c.delivered(qid, Err(e), now);
            }
        }
        let ops: Vec<u64> = self.nodes[i]
            .applies
            .iter()
            .filter(|(_, (to, _))| *to == j)
            .map(|(op, _)| *op)
            .collect();
        for op in ops {
            self.nodes[i].applies.remove(&op);
            self.op_ended(op, false);
        }
    }

    fn done(&mut self, i: usize, ticket: u64, result: Result<DirAnswer, AgentError>) {
        let Some(purpose) = self.nodes[i].tickets.remove(&ticket) else {
            return;
        };
        match purpose {
            Purpose::Spawn { op, id } => {
                let ok = matches!(result, Ok(DirAnswer::Activation(_)));
                if ok {
                    self.history.spawned.insert(id);
                }
                self.op_ended(op, ok);
            }
            Purpose::LookupForApply { op, id, seq } => match result {
                Ok(DirAnswer::Location(Some(loc))) => {
                    let j = self.index(&loc.node);
                    let sender = self.nodes[i].info.name.clone();
                    if j == i {
                        let ok = self.serve(i, i, &id, loc.epoch, &sender, seq).is_ok();
                        self.op_ended(op, ok);
                        return;
                    }
                    let deadline = self.now + APPLY_TIMEOUT;
                    if let Some(w) = self.waiting.get_mut(&op) {
                        // the node gives up at its tick past the deadline
                        w.deadline = deadline + self.cfg.heartbeat;
                    }
                    self.nodes[i].applies.insert(op, (j, deadline));
                    let msg = DataMsg::Apply {
                        op,
                        id,
                        epoch: loc.epoch,
                        sender,
                        seq,
                    };
                    self.send(i, j, Wire::Data(msg));
                }
                _ => self.op_ended(op, false),
            },
            Purpose::Commit { op } => self.committed(i, op, result),
            Purpose::Outcome { op } => self.outcome(i, op, result),
            Purpose::Verify { op, stale } => self.verified(i, op, stale, result),
            Purpose::InstallCheck { id, epoch } => self.install_checked(i, id, epoch, result),
        }
    }

    pub(super) fn op_ended(&mut self, op: u64, ok: bool) {
        if self.waiting.remove(&op).is_some() {
            if ok {
                self.history.acked += 1;
            } else {
                self.history.failed += 1;
            }
        }
    }

    /// A data-plane message for node `at` from node `from`.
    fn data(&mut self, at: usize, from: usize, msg: DataMsg) {
        match msg {
            DataMsg::Apply {
                op,
                id,
                epoch,
                sender,
                seq,
            } => {
                let result = self.serve(at, from, &id, epoch, &sender, seq);
                self.send(at, from, Wire::Data(DataMsg::Applied { op, result }));
            }
            DataMsg::Applied { op, result } => {
                if self.nodes[at].applies.remove(&op).is_some() {
                    self.op_ended(op, result.is_ok());
                }
            }
            DataMsg::Deliver { qid, env } => {
                let result = self.serve_env(at, from, &env);
                self.send(at, from, Wire::Data(DataMsg::Delivered { qid, result }));
            }
            DataMsg::Delivered { qid, result } => {
                if self.nodes[at].delivers.remove(&qid).is_some() {
                    let now = self.at(self.now);
                    if let Some(c) = self.nodes[at].core.as_mut() {
                        c.delivered(qid, result, now);
                    }
                    self.pump(at);
                }
            }
            other => self.move_data(at, from, other),
        }
    }

    /// Node `at` serves a request from node `from`: quarantine, its standing, the host's door.
    fn serve(
        &mut self,
        at: usize,
        from: usize,
        id: &AgentId,
        epoch: u64,
        sender: &str,
        seq: u64,
    ) -> Result<(), AgentError> {
        let node = &self.nodes[at];
        let peer = &self.nodes[from].info.name;
        if from != at && node.quarantined.contains(peer) {
            return Err(AgentError::Quarantined { node: peer.clone() });
        }
        let core = node
            .core
            .as_ref()
            .ok_or_else(|| AgentError::NodeUnreachable {
                node: node.info.name.clone(),
            })?;
        if let Some(e) = core.standing().refusal(&node.info.name, self.at(self.now)) {
            return Err(e);
        }
        if from != at && crate::core::HostView::is_local_only(&*node.host, id) {
            return Err(AgentError::NotFound { id: id.to_string() });
        }
        node.host.admit(id, epoch, sender, seq).map(|_| ())
    }

    fn serve_env(&mut self, at: usize, from: usize, env: &Envelope) -> Result<(), AgentError> {
        let r = self.serve(at, from, &env.target, env.epoch, &env.sender, env.seq);
        if r.is_ok() {
            let t = QueuedTell {
                sender: env.sender.to_string(),
                target: env.target.clone(),
                seq: env.seq,
            };
            if let Err(v) = self.history.applied_from_outbox(t, self.now) {
                self.violation.get_or_insert(v);
            }
        }
        r
    }

    // ---------------------------------------------------------------- clients

    fn new_op(&mut self, node: usize, deadline: Duration, what: String) -> u64 {
        self.next_op += 1;
        let op = self.next_op;
        self.waiting.insert(
            op,
            Waiting {
                node,
                deadline,
                what,
            },
        );
        op
    }

    /// A client of node `i` gets-or-spawns agent `key` (`local_only`: a private agent, whose
    /// arguments must never leave the node). No-op on a node that is down or paused.
    pub fn spawn(&mut self, i: usize, key: &str, local_only: bool) {
        if !self.running_now(i) {
            return;
        }
        let kind = if local_only { "private" } else { "counter" };
        let id = AgentId::new(kind, key).expect("a valid id");
        if local_only {
            self.history.local_only.insert(id.clone());
        }
        let slack = self.cfg.heartbeat;
        let op = self.new_op(i, self.now + SPAWN_TIMEOUT + slack, format!("spawn {id}"));
        let spec = AgentSpec {
            args_encoding: Encoding::Json,
            args: Bytes::from_static(if local_only {
                super::driver::SECRET
            } else {
                b"{}"
            }),
            placement: if local_only {
                Placement::local_only()
            } else {
                Placement::default()
            },
            policy: Default::default(),
            group: None,
            durability: Default::default(),
        };
        let claim = Claim {
            id: id.clone(),
            spec,
            target: None,
            trace: TraceContext::new_root(),
            requester: self.nodes[i].info.name.clone(),
        };
        let now = self.at(self.now);
        let Some(core) = self.nodes[i].core.as_mut() else {
            return;
        };
        let ticket = core.spawn(now, claim, Target::Placed);
        self.nodes[i]
            .tickets
            .insert(ticket, Purpose::Spawn { op, id });
        self.pump(i);
    }

    fn running_now(&self, i: usize) -> bool {
        self.nodes[i].core.is_some() && self.nodes[i].paused_until.is_none_or(|t| t <= self.now)
    }

    fn next_seq(&mut self, i: usize, id: &AgentId) -> u64 {
        let s = self.nodes[i].seqs.entry(id.clone()).or_insert(0);
        *s += 1;
        *s
    }

    /// A client of node `i` sends agent `key` (a counter, or a private agent) a message that
    /// needs an answer.
    pub fn ask(&mut self, i: usize, id: &AgentId) {
        if !self.running_now(i) {
            return;
        }
        let holds = self.nodes[i]
            .core
            .as_ref()
            .is_some_and(|c| c.outbox_depth().unwrap_or(0) != 0 && c.outbox_holds(id));
        if holds {
            // as the node's router: an ask must not overtake tells waiting in the outbox
            self.history.failed += 1;
            return;
        }
        let seq = self.next_seq(i, id);
        let slack = self.cfg.heartbeat;
        let deadline = self.now + LOOKUP_TIMEOUT + APPLY_TIMEOUT + slack;
        let op = self.new_op(i, deadline, format!("ask {id}"));
        if self.nodes[i].host.list().iter().any(|(h, _)| h == id) {
            let sender = self.nodes[i].info.name.clone();
            let ok = self.serve(i, i, id, 0, &sender, seq).is_ok();
            return self.op_ended(op, ok);
        }
        let now = self.at(self.now);
        let Some(core) = self.nodes[i].core.as_mut() else {
            return;
        };
        let ticket = core.lookup(now, id.clone());
        let purpose = Purpose::LookupForApply {
            op,
            id: id.clone(),
            seq,
        };
        self.nodes[i].tickets.insert(ticket, purpose);
        self.pump(i);
    }

    /// A client of local node `i` tells agent `id`: kept in the outbox when its directory
    /// owner is out of reach or tells to it wait there already, else sent like an ask.
    pub fn tell(&mut self, i: usize, id: &AgentId) {
        if !self.running_now(i) {
            return;
        }
        let Some(core) = self.nodes[i].core.as_ref() else {
            return;
        };
        if core.outbox_depth().is_none() {
            return self.ask(i, id);
        }
        let view = core.up_view();
        let no_owner = directory::owner(id.as_str(), view.remotes()).is_none();
        let hosted = self.nodes[i].host.list().iter().any(|(h, _)| h == id);
        let must_queue = !hosted && (core.outbox_holds(id) || no_owner);
        if !must_queue {
            return self.ask(i, id);
        }
        let seq = self.next_seq(i, id);
        let sender = self.nodes[i].info.name.clone();
        let env = Envelope {
            target: id.clone(),
            epoch: 0,
            sender: sender.as_str().into(),
            seq,
            trace: TraceContext::new_root(),
            contract: Contract {
                name: id.kind().to_owned().into(),
                version: 1,
            },
            encoding: Encoding::Json,
            body: Bytes::from(format!("{seq}")),
        };
        let now = self.at(self.now);
        let queued_ms = self.now.as_millis() as u64;
        let Some(core) = self.nodes[i].core.as_mut() else {
            return;
        };
        match core.queue(env, now, queued_ms) {
            Ok(_) => {
                self.history.queued.insert(QueuedTell {
                    sender,
                    target: id.clone(),
                    seq,
                });
                self.history.acked += 1;
            }
            Err(_) => self.history.failed += 1,
        }
        self.pump(i);
    }

    // ---------------------------------------------------------------- checks

    /// A message about to leave `from` for `to` carries no local-only data.
    pub(super) fn check_wire(&self, from: usize, to: usize, wire: &Wire) -> Result<(), Violation> {
        let leak = |what: &str| Violation {
            at: self.now,
            what: format!(
                "local-only data on the wire from {} to {}: {what}",
                self.nodes[from].info.name, self.nodes[to].info.name
            ),
        };
        let spec_leaks = |s: &AgentSpec| {
            s.placement.is_local_only() || s.args.windows(SECRET.len()).any(|w| w == SECRET)
        };
        match wire {
            Wire::Dir(DirMsg::Claim { spec, id, .. } | DirMsg::Activate { spec, id, .. })
                if spec_leaks(spec) =>
            {
                Err(leak(&format!("the spawn of {id}")))
            }
            Wire::Dir(DirMsg::Backup { entry, .. } | DirMsg::Handoff { entry, .. })
                if spec_leaks(&entry.spec) =>
            {
                Err(leak(&format!("the entry of {}", entry.id)))
            }
            Wire::Data(DataMsg::Apply { id, .. })
            | Wire::Data(DataMsg::Deliver {
                env: Envelope { target: id, .. },
                ..
            }) if self.history.local_only.contains(id) => Err(leak(&format!("a message to {id}"))),
            _ => Ok(()),
        }
    }

    /// The invariants that hold after every step (see the module doc).
    pub(super) fn check(&mut self) -> Result<(), Violation> {
        if let Some(v) = self.violation.clone() {
            return Err(v);
        }
        let now = self.at(self.now);
        let mut serving: std::collections::BTreeMap<AgentId, Vec<String>> = Default::default();
        for n in &self.nodes {
            let Some(core) = n.core.as_ref() else {
                continue;
            };
            if n.paused_until.is_some_and(|t| t > self.now) {
                continue;
            }
            if core.standing().refusal(&n.info.name, now).is_some() {
                continue;
            }
            for (id, epoch) in n.host.list() {
                serving
                    .entry(id)
                    .or_default()
                    .push(format!("{}@{epoch}", n.info.name));
            }
        }
        if let Some((id, on)) = serving.iter().find(|(_, on)| on.len() > 1) {
            return self.fail(format!("{id} serves twice at once: {}", on.join(", ")));
        }
        // a paused process cannot keep a deadline: its waits count from when it runs again
        let late = |w: &&Waiting| {
            let n = &self.nodes[w.node];
            // (paused until it is resumed, at the next link upkeep past its pause)
            let paused = n.paused_until.is_some();
            let grace = n.resumed_at + self.cfg.heartbeat;
            !paused && w.deadline.max(grace) < self.now
        };
        if let Some((op, w)) = self.waiting.iter().find(|(_, w)| late(w)) {
            let what = format!(
                "a wait outlived its deadline: {} on {} (op {op})",
                w.what, self.nodes[w.node].info.name
            );
            return self.fail(what);
        }
        Ok(())
    }

    pub(super) fn fail(&mut self, what: String) -> Result<(), Violation> {
        let v = Violation { at: self.now, what };
        self.violation = Some(v.clone());
        Err(v)
    }

    /// The invariants of a healed, settled cluster: every agent whose spawn was acknowledged
    /// (local-only agents of a node that crashed aside) runs exactly once, and every tell kept
    /// in an outbox for it was applied.
    ///
    /// # Errors
    /// The first that does not hold.
    pub fn settled(&mut self) -> Result<(), Violation> {
        self.check()?;
        for id in self.history.spawned.clone() {
            if self.history.local_only.contains(&id) {
                continue;
            }
            let on: Vec<String> = self
                .nodes
                .iter()
                .filter(|n| n.core.is_some())
                .filter(|n| n.host.list().iter().any(|(h, _)| *h == id))
                .map(|n| n.info.name.clone())
                .collect();
            if on.len() != 1 {
                let where_ = if on.is_empty() {
                    "nowhere".to_owned()
                } else {
                    on.join(", ")
                };
                return self.fail(format!("after heal {id} runs {where_}, not exactly once"));
            }
        }
        let lost: Vec<String> = self
            .history
            .queued
            .iter()
            .filter(|q| self.history.spawned.contains(&q.target))
            .filter(|q| !self.history.applied_queued.contains(q))
            .map(|q| format!("{}#{} to {}", q.sender, q.seq, q.target))
            .collect();
        if !lost.is_empty() {
            return self.fail(format!(
                "after heal, outbox tells to existing agents were not applied: {}",
                lost.join(", ")
            ));
        }
        Ok(())
    }
}
