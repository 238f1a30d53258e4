//! Seeded fault schedules: what a run does, drawn from its seed.
//!
//! A run has three phases:
//! 1. the cluster forms and agents are spawned (counters anywhere, a private agent on each
//!    local node);
//! 2. one to three fault episodes, each a fault held for a while and then undone, while
//!    clients keep asking and telling through random nodes: a remote node isolated, the
//!    remote nodes split in halves, a one-way cut, a bridge (two remote nodes cut apart, a
//!    third hearing both), a remote node crashed and restarted, a remote node paused past its
//!    lease, a local node cut off, a node's links at 10% loss;
//! 3. everything healed, and time to settle; then [`Sim::settled`] is checked.

use std::time::Duration;

use super::{Roles, Sim, SimConfig, Violation};
use crate::core::LinkEnd;
use crate::net::fault::{Action as FaultAction, Direction, FaultRule, PeerMatch};

/// A fault of an episode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Cut a remote node from every other node.
    Isolate(usize),
    /// Split the remote nodes in two groups (local nodes stay with the first).
    Halves(Vec<usize>, Vec<usize>),
    /// Drop what `.0` sends to `.1`.
    OneWay(usize, usize),
    /// Cut `.0` and `.1` apart; every other node hears both.
    Bridge(usize, usize),
    /// Crash a node, restart it at the end of the episode.
    Crash(usize),
    /// Pause a node for the episode.
    Pause(usize),
    /// Cut a local node from every other node.
    CutLocal(usize),
    /// 10% loss on a node's datagrams, both ways.
    Loss(usize),
}

/// One step of a schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Spawn `key` from node `node` (`true`: a private, local-only agent).
    Spawn(usize, String, bool),
    /// Ask agent `key` (a counter) from node `node`.
    Ask(usize, String),
    /// Tell agent `key` (a counter) from node `node`.
    Tell(usize, String),
    /// Start a fault.
    Fault(Fault),
    /// Undo every fault: heal the rules, restart crashed nodes (paused nodes resume by
    /// themselves).
    Heal,
    /// Move agent `key` (a counter) from where it serves to another remote node (the `.1`th
    /// of the others); see `super::moves`.
    Move(String, usize),
}

/// A schedule: steps at virtual times, and how long to let the cluster settle after the last.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The cluster's shape.
    pub cfg: SimConfig,
    /// The steps, in time order.
    pub steps: Vec<(Duration, Step)>,
    /// When the run ends (the settled checks come then).
    pub end: Duration,
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The schedule of `seed`: 3 or 5 remote nodes and one local node, 1 to 3 fault episodes.
pub fn random(seed: u64) -> Schedule {
    let mut rng = super::Rng::new(seed ^ 0x5eed_5eed_5eed_5eed);
    let remotes = if rng.chance(0.3) { 5 } else { 3 };
    let cfg = SimConfig {
        remotes,
        locals: 1,
        ..SimConfig::default()
    };
    let n = remotes + 1;
    let local = remotes;
    let keys: Vec<String> = (0..6).map(|k| format!("c{k}")).collect();
    let mut steps = Vec::new();
    // phase 1: the cluster forms (a few heartbeats), then agents are spawned
    let mut t = ms(1500);
    for k in &keys {
        steps.push((
            t,
            Step::Spawn(rng.below(n as u64) as usize, k.clone(), false),
        ));
        t += ms(20 + rng.below(80));
    }
    steps.push((t, Step::Spawn(local, "p0".into(), true)));
    // phase 2: fault episodes under load
    t += ms(500);
    let episodes = 1 + rng.below(3);
    for _ in 0..episodes {
        let fault = random_fault(&mut rng, remotes, local);
        steps.push((t, Step::Fault(fault)));
        let hold = ms(1000 + rng.below(11_000));
        load(&mut rng, &mut steps, t, t + hold, n, &keys);
        t += hold;
        steps.push((t, Step::Heal));
        let gap = ms(1000 + rng.below(4000));
        load(&mut rng, &mut steps, t, t + gap, n, &keys);
        t += gap;
    }
    steps.push((t, Step::Heal));
    steps.sort_by_key(|(at, _)| *at);
    // phase 3: settle (the failover window, the outbox's passes, a restarted node rejoining)
    Schedule {
        cfg,
        steps,
        end: t + Duration::from_secs(25),
    }
}

/// [`random`]`(seed)` with live migrations among the faults: one every 0.3 to 1.2 s from the
/// first fault to the last heal, of a random counter to a random remote node (drawn from a
/// stream of their own, so the rest of the schedule is `random(seed)`'s).
pub fn random_with_moves(seed: u64) -> Schedule {
    let mut s = random(seed);
    let mut rng = super::Rng::new(seed ^ 0x0307_e5e5_0307_e5e5);
    let first = s
        .steps
        .iter()
        .find(|(_, st)| matches!(st, Step::Fault(_)))
        .map_or(Duration::ZERO, |(at, _)| *at);
    let last = s.steps.last().map_or(Duration::ZERO, |(at, _)| *at);
    let mut t = first;
    while t < last {
        let key = format!("c{}", rng.below(6));
        s.steps.push((t, Step::Move(key, rng.below(4) as usize)));
        t += ms(300 + rng.below(900));
    }
    s.steps.sort_by_key(|(at, _)| *at);
    s
}

fn random_fault(rng: &mut super::Rng, remotes: usize, local: usize) -> Fault {
    let r = |rng: &mut super::Rng| rng.below(remotes as u64) as usize;
    match rng.below(8) {
        0 => Fault::Isolate(r(rng)),
        1 => {
            let cut = 1 + rng.below((remotes / 2) as u64) as usize;
            let (a, b): (Vec<usize>, Vec<usize>) = (0..remotes).partition(|i| *i >= cut);
            let mut a = a;
            a.push(local);
            Fault::Halves(a, b)
        }
        2 => {
            let a = r(rng);
            let b = (a + 1 + rng.below(remotes as u64 - 1) as usize) % remotes;
            Fault::OneWay(a, b)
        }
        3 => {
            let a = r(rng);
            let b = (a + 1) % remotes;
            Fault::Bridge(a, b)
        }
        4 => Fault::Crash(r(rng)),
        5 => Fault::Pause(r(rng)),
        6 => Fault::CutLocal(local),
        _ => Fault::Loss(r(rng)),
    }
}

/// Client operations between `from` and `to`: about one every 150 ms.
fn load(
    rng: &mut super::Rng,
    steps: &mut Vec<(Duration, Step)>,
    from: Duration,
    to: Duration,
    n: usize,
    keys: &[String],
) {
    let mut t = from + ms(rng.below(150));
    while t < to {
        let node = rng.below(n as u64) as usize;
        let key = keys[rng.below(keys.len() as u64) as usize].clone();
        let step = if node == n - 1 && rng.chance(0.6) {
            Step::Tell(node, key)
        } else {
            Step::Ask(node, key)
        };
        steps.push((t, step));
        t += ms(50 + rng.below(200));
    }
}

impl<R: Roles> Sim<R> {
    /// Applies one step now.
    pub fn step(&mut self, step: &Step) {
        if !matches!(step, Step::Ask(..) | Step::Tell(..)) {
            self.say(None, format!("{step:?}"));
        }
        let id = |key: &str| tether_actors::AgentId::new("counter", key).expect("a valid id");
        match step {
            Step::Spawn(node, key, local_only) => self.spawn(*node, key, *local_only),
            Step::Ask(node, key) => self.ask(*node, &id(key)),
            Step::Tell(node, key) => self.tell(*node, &id(key)),
            Step::Fault(f) => self.fault(f),
            Step::Move(key, to) => self.migrate(key, *to),
            Step::Heal => {
                self.heal();
                for i in 0..self.nodes.len() {
                    self.restart(i);
                }
            }
        }
    }

    fn fault(&mut self, f: &Fault) {
        let n = self.nodes.len();
        match f {
            Fault::Isolate(i) | Fault::CutLocal(i) => {
                let others: Vec<usize> = (0..n).filter(|j| j != i).collect();
                self.partition(&[vec![*i], others]);
            }
            Fault::Halves(a, b) => self.partition(&[a.clone(), b.clone()]),
            Fault::OneWay(a, b) => self.cut_one_way(*a, *b),
            Fault::Bridge(a, b) => self.cut_pairs(&[(*a, *b)]),
            Fault::Crash(i) => self.crash(*i),
            Fault::Pause(i) => self.pause(*i, Duration::from_secs(8)),
            Fault::Loss(i) => {
                let rule = |peer: usize| FaultRule {
                    peer: PeerMatch::Addr(super::net::addr(peer)),
                    peer_name: None,
                    direction: Direction::Both,
                    action: FaultAction::Loss { percent: 10.0 },
                    tag: "quality".into(),
                };
                let rules = (0..n).filter(|j| j != i).map(rule).collect();
                self.net.rules[*i].replace_tag("quality", rules);
            }
        }
    }

    /// Runs a whole schedule: its steps at their times, then the settled checks.
    ///
    /// # Errors
    /// The first [`Violation`].
    pub fn run_schedule(&mut self, s: &Schedule) -> Result<(), Violation> {
        for (at, step) in &s.steps {
            if *at > self.now {
                let d = *at - self.now;
                self.run_for(d)?;
            }
            self.step(step);
        }
        let rest = s.end.saturating_sub(self.now);
        self.run_for(rest)?;
        self.settled()?;
        self.cluster_down()
    }

    /// An operator's `tether down` of the settled cluster: every node is asked to stop with
    /// the cluster (but, now and then, one the request does not reach), in a random order, at
    /// random times; each then stops, closing its links with the cluster-down code (a close
    /// may be lost). Nothing may be placed again meanwhile, and no outbox tell given up.
    ///
    /// # Errors
    /// The first [`Violation`].
    pub fn cluster_down(&mut self) -> Result<(), Violation> {
        let placed: usize = self.history.made.values().map(Vec::len).sum();
        let dropped = |sim: &Self| -> u64 {
            let cores = sim.nodes.iter().filter_map(|n| n.core.as_ref());
            cores
                .filter_map(|c| c.outbox_counters())
                .map(|o| o.dropped)
                .sum()
        };
        let dropped_before = dropped(self);
        let n = self.nodes.len();
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            order.swap(i, self.rng.below(i as u64 + 1) as usize);
        }
        let missed = self.rng.chance(0.3).then(|| order[0]);
        self.say(
            None,
            format!("cluster down, in order {order:?}, missed {missed:?}"),
        );
        for &i in &order {
            let gap = ms(self.rng.below(400));
            self.run_for(gap)?;
            if Some(i) != missed {
                let now = self.at(self.now);
                if let Some(c) = self.nodes[i].core.as_mut() {
                    c.cluster_stopping(now);
                }
                self.pump(i);
            }
        }
        for &i in &order {
            let gap = ms(self.rng.below(1500));
            self.run_for(gap)?;
            if dropped(self) != dropped_before {
                return self.fail("an outbox tell was given up while the cluster stopped".into());
            }
            self.stop_with_cluster(i);
        }
        let now_placed: usize = self.history.made.values().map(Vec::len).sum();
        if now_placed != placed {
            let what = format!(
                "{} activation(s) placed while the cluster stopped",
                now_placed - placed
            );
            return self.fail(what);
        }
        Ok(())
    }

    /// Node `i` stops with the cluster: its peers hear the close (unless it is lost), and it
    /// is gone.
    fn stop_with_cluster(&mut self, i: usize) {
        let name = self.nodes[i].info.name.clone();
        for j in 0..self.nodes.len() {
            if j == i || self.net.up(i, j).is_none() || self.rng.chance(0.2) {
                continue;
            }
            let now = self.at(self.now);
            if let Some(c) = self.nodes[j].core.as_mut() {
                c.link_closed(&name, LinkEnd::ClusterDown, now);
            }
            self.pump(j);
        }
        self.crash(i);
    }
}

/// What one seeded run did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Its seed.
    pub seed: u64,
    /// Its schedule's steps (for the report of a failure).
    pub steps: usize,
    /// Client operations acknowledged and failed.
    pub acked: u64,
    /// Client operations that failed with an error.
    pub failed: u64,
    /// Messages carried.
    pub messages: u64,
}

/// Runs the schedule of `seed` with the roles `roles` builds.
///
/// # Errors
/// The seed, its schedule and the violation, formatted for a test failure.
pub fn run<R: Roles>(seed: u64, roles: R) -> Result<Outcome, String> {
    run_traced(seed, roles, false)
}

/// [`run`], printing the run's trace (see [`Sim::trace`]).
///
/// # Errors
/// As [`run`].
pub fn run_traced<R: Roles>(seed: u64, roles: R, trace: bool) -> Result<Outcome, String> {
    run_schedule_of(seed, &random(seed), roles, trace)
}

/// Runs [`random_with_moves`]`(seed)` (see [`run`]).
///
/// # Errors
/// As [`run`].
pub fn run_with_moves<R: Roles>(seed: u64, roles: R, trace: bool) -> Result<Outcome, String> {
    run_schedule_of(seed, &random_with_moves(seed), roles, trace)
}

fn run_schedule_of<R: Roles>(
    seed: u64,
    s: &Schedule,
    roles: R,
    trace: bool,
) -> Result<Outcome, String> {
    let mut sim = Sim::new(seed, s.cfg.clone(), roles);
    sim.trace = trace;
    match sim.run_schedule(s) {
        Ok(()) => Ok(Outcome {
            seed,
            steps: s.steps.len(),
            acked: sim.history.acked,
            failed: sim.history.failed,
            messages: sim.history.messages,
        }),
        Err(v) => {
            let faults: Vec<String> = s
                .steps
                .iter()
                .filter(|(_, st)| matches!(st, Step::Fault(_) | Step::Heal | Step::Move(..)))
                .map(|(at, st)| format!("{:.3}s {st:?}", at.as_secs_f64()))
                .collect();
            Err(format!(
                "seed {seed} ({} remote nodes; nodes {:?}): {v}\nfaults: {}",
                s.cfg.remotes,
                sim.names(),
                faults.join(", ")
            ))
        }
    }
}
