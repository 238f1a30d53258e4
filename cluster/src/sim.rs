//! A deterministic simulator: N cluster cores on a virtual clock over a seeded network.
//!
//! Each simulated node is the real [`ClusterCore`] with its real role (the caller's
//! [`Roles`] builds them: `tether-node-remote` and `tether-node-local`), a simulated host
//! ([`host`]) and a small data plane: clients spawn agents, ask them and tell them, as users
//! of a node would. The network ([`net`]) carries heartbeats as datagrams and everything else
//! on ordered, reliable links, through the real fault rules ([`crate::net::fault`]). Faults are
//! steps of the run: partitions (symmetric, one-way, halves, bridges, rings), pauses past the
//! lease, crashes and restarts.
//!
//! Nothing reads a clock or a random source outside the run: time is virtual, and every
//! random choice (latencies, losses, the fault schedule in [`schedule`]) comes from the seed.
//! So a seed replays its run exactly, and a failing seed is a test.
//!
//! After every event the invariants are checked ([`check`]):
//! - at most one activation of an agent serves at a time (hosted on a node that is alive,
//!   running, not fenced and within its lease);
//! - an epoch is never used twice for one id;
//! - every request of a node ends by its deadline;
//! - a tell from an outbox is applied only after the earlier ones of its sender to its target;
//! - no message carries a local-only agent's data off its node.
//!
//! And once the faults are healed and the cluster has settled ([`Sim::settled`]): every agent
//! whose spawn was acknowledged runs exactly once, and every tell kept in an outbox for it
//! was applied.

pub mod check;
mod driver;
mod host;
mod moves;
mod net;
pub(crate) mod rng;
pub mod schedule;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tether_actors::{AgentId, Envelope};

pub use check::{History, Violation};
pub use rng::Rng;

use crate::core::{ActivateOrder, ClusterCore, Ticket};
use crate::directory::DirMsg;
use crate::identity::{NodeInfo, Role};
use crate::membership::detector::DetectorConfig;
use crate::membership::Heartbeat;
use crate::net::fault::{Action, Direction, FaultRule, PeerMatch};
use crate::role::RoleCore;
use host::SimHost;
use net::{Link, Net};

/// The kinds every simulated node registers.
pub const KINDS: &[&str] = &["counter", "private"];

/// Builds a node's role. It is called again for a node that restarts: whatever the role keeps
/// across a crash (a local node's outbox) is the caller's to keep.
pub trait Roles {
    /// The role of `node` (its incarnation included), started at `now`.
    fn make(&mut self, node: &NodeInfo, now: Instant) -> Box<dyn RoleCore>;
}

impl<F: FnMut(&NodeInfo, Instant) -> Box<dyn RoleCore>> Roles for F {
    fn make(&mut self, node: &NodeInfo, now: Instant) -> Box<dyn RoleCore> {
        self(node, now)
    }
}

/// The shape and the timers of a simulated cluster.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Remote nodes (`r1`...).
    pub remotes: usize,
    /// Local nodes (`l1`...).
    pub locals: usize,
    /// How often each node ticks.
    pub heartbeat: Duration,
    /// The failure detector's thresholds.
    pub detector: DetectorConfig,
    /// One-way latency, uniform between these (ms).
    pub latency_ms: (u64, u64),
    /// How long an activation takes (`init`).
    pub activation: Duration,
    /// How long a fence takes to stop a node's agents.
    pub fence: Duration,
    /// A link whose path is cut this long dies (QUIC's idle timeout).
    pub idle_timeout: Duration,
    /// How long a path must be open both ways before a new link is up.
    pub redial: Duration,
    /// How long a delivery from an outbox may take.
    pub deliver_timeout: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            remotes: 3,
            locals: 1,
            heartbeat: Duration::from_millis(100),
            detector: DetectorConfig::default(),
            latency_ms: (1, 5),
            activation: Duration::from_millis(2),
            fence: Duration::from_millis(20),
            idle_timeout: Duration::from_secs(10),
            redial: Duration::from_millis(100),
            deliver_timeout: Duration::from_secs(5),
        }
    }
}

/// What travels on a link's stream.
#[derive(Debug, Clone)]
pub(crate) enum Wire {
    Dir(DirMsg),
    Data(DataMsg),
}

/// The simulated data plane's messages (the node's agent protocol, cut down to what the
/// invariants need).
#[derive(Debug, Clone)]
pub(crate) enum DataMsg {
    /// A client's request to an agent (an ask, or a tell sent at once).
    Apply {
        op: u64,
        id: AgentId,
        epoch: u64,
        sender: String,
        seq: u64,
    },
    /// Its answer.
    Applied {
        op: u64,
        result: Result<(), tether_actors::AgentError>,
    },
    /// A tell from an outbox.
    Deliver { qid: u64, env: Envelope },
    /// Its answer.
    Delivered {
        qid: u64,
        result: Result<(), tether_actors::AgentError>,
    },
    /// A move's install, source to target (see [`moves`]).
    Install {
        op: u64,
        id: AgentId,
        epoch: u64,
        marks: BTreeMap<String, u64>,
        spec: Option<Box<crate::directory::AgentSpec>>,
    },
    /// Its answer.
    Installed { op: u64, ok: bool },
    /// The source handed everything over: the target serves.
    Drained { id: AgentId, epoch: u64 },
    /// The move was aborted: the target drops what it installed.
    Discard { id: AgentId, epoch: u64 },
}

#[derive(Debug)]
pub(crate) enum Kind {
    Tick {
        node: usize,
        life: u64,
    },
    Arrive {
        from: usize,
        to: usize,
        generation: u64,
        wire: Wire,
    },
    Datagram {
        from: usize,
        to: usize,
        generation: u64,
        hb: Heartbeat,
    },
    Activated {
        node: usize,
        life: u64,
        order: ActivateOrder,
    },
    Fenced {
        node: usize,
        life: u64,
    },
    /// A move's source stops waiting for the install.
    MoveTimeout {
        node: usize,
        life: u64,
        op: u64,
    },
    /// A move's source asks again where the agent of an unanswered commit runs.
    Outcome {
        node: usize,
        life: u64,
        op: u64,
    },
    /// A move's target asks the directory whether what it installed runs there.
    InstallCheck {
        node: usize,
        life: u64,
        id: AgentId,
        epoch: u64,
    },
    Links,
}

#[derive(Debug)]
struct Event {
    at: Duration,
    seq: u64,
    kind: Kind,
}

impl PartialEq for Event {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Event {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// What a node's request (a ticket of its core) is for.
#[derive(Debug, Clone)]
pub(crate) enum Purpose {
    Spawn {
        op: u64,
        id: AgentId,
    },
    LookupForApply {
        op: u64,
        id: AgentId,
        seq: u64,
    },
    /// A move's commit at the owner.
    Commit {
        op: u64,
    },
    /// Where the agent of a commit that was not answered runs.
    Outcome {
        op: u64,
    },
    /// Whether the host an owner's entry names runs the agent.
    Verify {
        op: u64,
        stale: crate::directory::Location,
    },
    /// A move's target asking where the agent it installed runs.
    InstallCheck {
        id: AgentId,
        epoch: u64,
    },
}

/// A client operation waiting for its end.
#[derive(Debug, Clone)]
pub(crate) struct Waiting {
    pub(crate) node: usize,
    pub(crate) deadline: Duration,
    pub(crate) what: String,
}

/// One simulated node.
pub(crate) struct SimNode {
    pub(crate) info: NodeInfo,
    /// `None` while crashed.
    pub(crate) core: Option<ClusterCore>,
    pub(crate) host: Arc<SimHost>,
    /// Bumped at every restart: events of an older life are dropped.
    pub(crate) life: u64,
    pub(crate) paused_until: Option<Duration>,
    /// When it last resumed from a pause (its ticker runs late once then).
    pub(crate) resumed_at: Duration,
    /// Events that came while paused, handled at resume in order.
    pub(crate) deferred: Vec<Kind>,
    pub(crate) tickets: BTreeMap<Ticket, Purpose>,
    /// Deliveries from the outbox in flight: qid -> (host node, deadline).
    pub(crate) delivers: BTreeMap<u64, (usize, Duration)>,
    /// Applies sent by this node's clients: op -> (host node, deadline).
    pub(crate) applies: BTreeMap<u64, (usize, Duration)>,
    /// Peers whose requests are refused.
    pub(crate) quarantined: BTreeSet<String>,
    /// Next sequence number per target, for this node as a sender.
    pub(crate) seqs: BTreeMap<AgentId, u64>,
    /// How it saw its peers at the last trace line (for tracing changes only).
    pub(crate) seen: String,
    /// Moves this node is the source of, by op.
    pub(crate) moves: BTreeMap<u64, moves::Move>,
}

/// A simulation (see the module doc).
pub struct Sim<R: Roles> {
    /// The seed of this run.
    pub seed: u64,
    pub(crate) cfg: SimConfig,
    pub(crate) rng: Rng,
    pub(crate) base: Instant,
    pub(crate) now: Duration,
    pub(crate) nodes: Vec<SimNode>,
    pub(crate) net: Net<Wire>,
    queue: BinaryHeap<Reverse<Event>>,
    seq: u64,
    roles: R,
    pub(crate) next_op: u64,
    /// Client operations waiting: op -> what and until when.
    pub(crate) waiting: BTreeMap<u64, Waiting>,
    /// What happened, for the checks.
    pub history: History,
    /// The first violation, once seen.
    pub violation: Option<Violation>,
    /// Print what happens (links, directory messages, activations, fences) to stderr: for
    /// reading a failing seed's run.
    pub trace: bool,
}

impl<R: Roles> Sim<R> {
    /// A cluster of `cfg.remotes` remote and `cfg.locals` local nodes, every link up, run from
    /// `seed`.
    pub fn new(seed: u64, cfg: SimConfig, roles: R) -> Self {
        let n = cfg.remotes + cfg.locals;
        let mut sim = Self {
            seed,
            rng: Rng::new(seed),
            base: Instant::now(),
            now: Duration::ZERO,
            nodes: Vec::with_capacity(n),
            net: Net::new(n, cfg.latency_ms),
            queue: BinaryHeap::new(),
            seq: 0,
            roles,
            next_op: 0,
            waiting: BTreeMap::new(),
            history: History::default(),
            violation: None,
            trace: false,
            cfg,
        };
        for i in 0..n {
            let (name, role) = if i < sim.cfg.remotes {
                (format!("r{}", i + 1), Role::Remote)
            } else {
                (format!("l{}", i + 1 - sim.cfg.remotes), Role::Local)
            };
            let info = NodeInfo {
                name,
                role,
                addr: net::addr(i),
                incarnation: 1,
                kinds: KINDS.iter().map(|k| (*k).to_owned()).collect(),
                caps: Vec::new(),
            };
            sim.nodes.push(SimNode {
                info,
                core: None,
                host: Arc::default(),
                life: 0,
                paused_until: None,
                resumed_at: Duration::ZERO,
                deferred: Vec::new(),
                tickets: BTreeMap::new(),
                delivers: BTreeMap::new(),
                applies: BTreeMap::new(),
                quarantined: BTreeSet::new(),
                seqs: BTreeMap::new(),
                seen: String::new(),
                moves: BTreeMap::new(),
            });
        }
        for i in 0..n {
            sim.boot(i);
        }
        sim.push(Duration::ZERO, Kind::Links);
        sim
    }

    /// The time of virtual instant `t`.
    pub(crate) fn at(&self, t: Duration) -> Instant {
        self.base + t
    }

    /// Writes a line of the run's trace (see [`Sim::trace`]).
    pub(crate) fn say(&self, node: Option<usize>, what: impl std::fmt::Display) {
        if self.trace {
            let who = node.map_or("sim", |i| self.nodes[i].info.name.as_str());
            eprintln!("{:>9.3} {who:>4} {what}", self.now.as_secs_f64());
        }
    }

    pub(crate) fn push(&mut self, at: Duration, kind: Kind) {
        self.seq += 1;
        self.queue.push(Reverse(Event {
            at,
            seq: self.seq,
            kind,
        }));
    }

    /// Starts (or restarts) node `i` with a new core and an empty host.
    fn boot(&mut self, i: usize) {
        let now = self.at(self.now);
        let node = &mut self.nodes[i];
        node.life += 1;
        node.info.incarnation = node.life;
        node.paused_until = None;
        node.deferred.clear();
        node.tickets.clear();
        node.delivers.clear();
        node.applies.clear();
        node.quarantined.clear();
        node.host = Arc::default();
        let role = self.roles.make(&node.info, now);
        let host: Arc<dyn crate::core::HostView> = node.host.clone();
        let mut core = ClusterCore::new(node.info.clone(), self.cfg.detector, role, host);
        // every node knows every other from its seeds and gossip
        for j in 0..self.nodes.len() {
            if j != i {
                core.learn(self.nodes[j].info.clone(), now);
            }
        }
        self.nodes[i].core = Some(core);
        let life = self.nodes[i].life;
        let first = self.now + self.cfg.heartbeat;
        self.push(first, Kind::Tick { node: i, life });
    }

    /// The node named `name`.
    pub fn index(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.info.name == name)
            .unwrap_or_else(|| panic!("no node {name} in the simulation"))
    }

    /// The names of the nodes, remote nodes first.
    pub fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.info.name.clone()).collect()
    }

    /// Virtual time since the start.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Runs every event up to `now + d`, checking the invariants after each; stops at the
    /// first violation.
    ///
    /// # Errors
    /// The first [`Violation`].
    pub fn run_for(&mut self, d: Duration) -> Result<(), Violation> {
        let until = self.now + d;
        while let Some(Reverse(ev)) = self.queue.peek() {
            if ev.at > until {
                break;
            }
            let Some(Reverse(ev)) = self.queue.pop() else {
                break;
            };
            self.now = ev.at;
            self.handle(ev.kind);
            self.check()?;
        }
        self.now = until;
        self.check()
    }

    fn handle(&mut self, kind: Kind) {
        let node = match &kind {
            Kind::Tick { node, .. }
            | Kind::Activated { node, .. }
            | Kind::Fenced { node, .. }
            | Kind::MoveTimeout { node, .. }
            | Kind::Outcome { node, .. }
            | Kind::InstallCheck { node, .. } => Some(*node),
            Kind::Arrive { to, .. } | Kind::Datagram { to, .. } => Some(*to),
            Kind::Links => None,
        };
        if let Some(i) = node {
            if self.nodes[i].core.is_none() {
                return; // crashed: what was on its way is gone
            }
            if self.nodes[i].paused_until.is_some_and(|t| t > self.now) {
                if !matches!(kind, Kind::Datagram { .. }) {
                    self.nodes[i].deferred.push(kind);
                }
                return;
            }
        }
        match kind {
            Kind::Links => {
                self.links();
                let next = self.now + Duration::from_millis(50);
                self.push(next, Kind::Links);
            }
            other => self.handle_at_node(other),
        }
    }

    /// The periodic upkeep of links: troubled links die after the idle timeout, dead ones come
    /// back once their path has been open long enough; held messages move on.
    fn links(&mut self) {
        self.resume_due();
        let n = self.net.size();
        for a in 0..n {
            for b in (a + 1)..n {
                self.link_upkeep(a, b);
            }
        }
    }

    fn resume_due(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].paused_until.is_some_and(|t| t <= self.now) {
                self.nodes[i].paused_until = None;
                self.nodes[i].resumed_at = self.now;
                let deferred = std::mem::take(&mut self.nodes[i].deferred);
                for kind in deferred {
                    self.handle_at_node(kind);
                }
                if self.nodes[i].core.is_some() {
                    // its ticker runs late once, as a resumed process's does
                    let life = self.nodes[i].life;
                    self.push(self.now, Kind::Tick { node: i, life });
                }
            }
        }
    }

    fn alive(&self, i: usize) -> bool {
        self.nodes[i].core.is_some()
    }

    fn running(&self, i: usize) -> bool {
        self.alive(i) && self.nodes[i].paused_until.is_none_or(|t| t <= self.now)
    }

    fn link_upkeep(&mut self, a: usize, b: usize) {
        let open = !self.net.cut(a, b) && !self.net.cut(b, a);
        let troubled = !open || !self.running(a) || !self.running(b);
        let crashed = !self.alive(a) || !self.alive(b);
        let now = self.now;
        match self.net.link(a, b).clone() {
            Link::Up {
                generation,
                troubled_since,
            } => {
                let since = if troubled {
                    Some(troubled_since.unwrap_or(now))
                } else {
                    None
                };
                let dead = crashed
                    || since.is_some_and(|t| now.saturating_sub(t) >= self.cfg.idle_timeout);
                if dead {
                    self.link_down(a, b, generation);
                } else {
                    *self.net.link_mut(a, b) = Link::Up {
                        generation,
                        troubled_since: since,
                    };
                    self.release_held(a, b, generation);
                    self.release_held(b, a, generation);
                }
            }
            Link::Down {
                generation,
                open_since,
            } => {
                let ready = open && self.running(a) && self.running(b);
                let since = if ready {
                    Some(open_since.unwrap_or(now))
                } else {
                    None
                };
                if since.is_some_and(|t| now.saturating_sub(t) >= self.cfg.redial) {
                    self.link_up(a, b, generation + 1);
                } else {
                    *self.net.link_mut(a, b) = Link::Down {
                        generation,
                        open_since: since,
                    };
                }
            }
        }
    }

    fn link_down(&mut self, a: usize, b: usize, generation: u64) {
        self.say(
            None,
            format!(
                "link {}-{} down",
                self.nodes[a].info.name, self.nodes[b].info.name
            ),
        );
        *self.net.link_mut(a, b) = Link::Down {
            generation,
            open_since: None,
        };
        for (x, y) in [(a, b), (b, a)] {
            let lane = self.net.lanes.get_mut(&(x, y)).expect("lane");
            let lost = lane.held.len();
            lane.held.clear();
            if lost > 0 {
                tracing::debug!(
                    from = x,
                    to = y,
                    lost,
                    "sim: link broke, held messages lost"
                );
            }
        }
    }

    fn link_up(&mut self, a: usize, b: usize, generation: u64) {
        self.say(
            None,
            format!(
                "link {}-{} up",
                self.nodes[a].info.name, self.nodes[b].info.name
            ),
        );
        *self.net.link_mut(a, b) = Link::Up {
            generation,
            troubled_since: None,
        };
        let now = self.at(self.now);
        let (ia, ib) = (self.nodes[a].info.clone(), self.nodes[b].info.clone());
        // the hello: each learns the other's current life
        for (x, info) in [(a, ib), (b, ia)] {
            if let Some(core) = self.nodes[x].core.as_mut() {
                let peer = info.name.clone();
                core.learn(info, now);
                core.linked(&peer);
            }
        }
        for (x, y) in [(a, b), (b, a)] {
            let waiting =
                std::mem::take(&mut self.net.lanes.get_mut(&(x, y)).expect("lane").waiting);
            for wire in waiting {
                self.transmit(x, y, generation, wire);
            }
        }
        self.pump(a);
        self.pump(b);
    }

    /// Moves what was held on `from -> to` on, if the path is open now.
    fn release_held(&mut self, from: usize, to: usize, generation: u64) {
        if self.net.cut(from, to) {
            return;
        }
        let held = std::mem::take(&mut self.net.lanes.get_mut(&(from, to)).expect("lane").held);
        for wire in held {
            self.schedule_arrival(from, to, generation, wire);
        }
    }

    fn schedule_arrival(&mut self, from: usize, to: usize, generation: u64, wire: Wire) {
        let lat = self.net.latency(&mut self.rng) + self.net.stream_delay(from, to);
        let lane = self.net.lanes.get_mut(&(from, to)).expect("lane");
        let at = (self.now + lat).max(lane.last_arrival);
        lane.last_arrival = at;
        self.push(
            at,
            Kind::Arrive {
                from,
                to,
                generation,
                wire,
            },
        );
    }

    /// Puts a message on the pair's link (see [`net`]).
    pub(crate) fn transmit(&mut self, from: usize, to: usize, generation: u64, wire: Wire) {
        self.history.messages += 1;
        if self.net.cut(from, to) {
            let lane = self.net.lanes.get_mut(&(from, to)).expect("lane");
            lane.held.push_back(wire);
        } else {
            self.schedule_arrival(from, to, generation, wire);
        }
    }

    /// Sends `wire` from `from` to `to`: on the link, or waiting for the next one.
    pub(crate) fn send(&mut self, from: usize, to: usize, wire: Wire) {
        if let Err(v) = self.check_wire(from, to, &wire) {
            self.violation.get_or_insert(v);
        }
        match self.net.up(from, to) {
            Some(g) => self.transmit(from, to, g, wire),
            None => self
                .net
                .lanes
                .get_mut(&(from, to))
                .expect("lane")
                .waiting
                .push_back(wire),
        }
    }

    // ---------------------------------------------------------------- faults

    fn rule(peer: usize, direction: Direction) -> FaultRule {
        FaultRule {
            peer: PeerMatch::Addr(net::addr(peer)),
            peer_name: None,
            direction,
            action: Action::Drop,
            tag: "partition".into(),
        }
    }

    /// Cuts every node of one group from every node of the others, both ways (nodes named in
    /// no group keep talking to all), as `tether partition` does.
    pub fn partition(&mut self, groups: &[Vec<usize>]) {
        for (gi, g) in groups.iter().enumerate() {
            for &a in g {
                let rules: Vec<FaultRule> = groups
                    .iter()
                    .enumerate()
                    .filter(|(gj, _)| *gj != gi)
                    .flat_map(|(_, other)| other.iter().map(|&b| Self::rule(b, Direction::Both)))
                    .collect();
                self.net.rules[a].replace_tag("partition", rules);
            }
        }
    }

    /// Drops what `from` sends to `to` (a one-way cut).
    pub fn cut_one_way(&mut self, from: usize, to: usize) {
        let mut rules: Vec<FaultRule> = self.net.rules[from].rules().to_vec();
        rules.push(Self::rule(to, Direction::Out));
        self.net.rules[from].replace_tag("partition", rules);
    }

    /// Cuts exactly the pairs listed, both ways.
    pub fn cut_pairs(&mut self, pairs: &[(usize, usize)]) {
        for &(a, b) in pairs {
            for (x, y) in [(a, b), (b, a)] {
                let mut rules: Vec<FaultRule> = self.net.rules[x].rules().to_vec();
                rules.push(Self::rule(y, Direction::Both));
                self.net.rules[x].replace_tag("partition", rules);
            }
        }
    }

    /// Removes every fault rule.
    pub fn heal(&mut self) {
        for r in &mut self.net.rules {
            r.clear();
        }
    }

    /// Crashes node `i`: its core, host and what it had in flight are gone.
    pub fn crash(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.core = None;
        node.host.clear();
        node.moves.clear();
        node.paused_until = None;
        node.deferred.clear();
        // its clients went down with it
        self.waiting.retain(|_, w| w.node != i);
    }

    /// Restarts crashed node `i` with a new incarnation.
    pub fn restart(&mut self, i: usize) {
        if self.nodes[i].core.is_none() {
            self.boot(i);
        }
    }

    /// Pauses node `i` for `d` (SIGSTOP, a VM freeze): it handles nothing until then.
    pub fn pause(&mut self, i: usize, d: Duration) {
        if self.alive(i) {
            self.nodes[i].paused_until = Some(self.now + d);
        }
    }
}
