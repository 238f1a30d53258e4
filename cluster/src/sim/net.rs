//! The simulated network: links between node pairs, fault rules, and what a message in flight
//! meets.
//!
//! A node's fault rules are the real [`RuleSet`]s (as `tether partition` installs them), read
//! through [`RuleSet::verdict`]: a datagram passes the sender's outgoing rules, then the
//! receiver's incoming ones. Heartbeats are datagrams: dropped when a rule drops them. Agent and
//! directory messages ride a reliable, ordered stream on the pair's link, as on QUIC:
//!
//! ```text
//!   sent, link up, path open ──▶ arrives after the latency, in order
//!   sent, link up, path cut  ──▶ held (QUIC retransmits) until the path opens: then arrives
//!   path cut (either way) or a node silent (paused) for idle_timeout, or a node crashed
//!                            ──▶ the link dies: what is held or in flight is lost
//!   sent, no link            ──▶ waits for the next link (as a node's peer queue does)
//!   link down, both nodes alive and the path open both ways for `redial` ──▶ a new link
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use crate::net::fault::{Direction, RuleSet, Verdict};

use super::rng::Rng;

/// The state of one unordered pair's link.
#[derive(Debug, Clone)]
pub(crate) enum Link {
    /// Up, in its `generation`-th life.
    Up {
        generation: u64,
        /// Since when a direction has been cut (or a node silent), if it is.
        troubled_since: Option<Duration>,
    },
    /// Down since `since`; the path has been open both ways since `open_since`, if it is.
    Down {
        generation: u64,
        open_since: Option<Duration>,
    },
}

/// One direction of a pair: what waits to be sent, and what is held in flight.
#[derive(Debug)]
pub(crate) struct Lane<M> {
    /// Sent while there was no link: goes out on the next one.
    pub(crate) waiting: VecDeque<M>,
    /// Sent on the link but not arrived while the path is cut: arrives when it opens.
    pub(crate) held: VecDeque<M>,
    /// Arrival time of the last message scheduled on this lane (arrivals keep their order).
    pub(crate) last_arrival: Duration,
}

impl<M> Default for Lane<M> {
    fn default() -> Self {
        Self {
            waiting: VecDeque::new(),
            held: VecDeque::new(),
            last_arrival: Duration::ZERO,
        }
    }
}

/// The network of a simulation.
#[derive(Debug)]
pub(crate) struct Net<M> {
    n: usize,
    pub(crate) rules: Vec<RuleSet>,
    addrs: Vec<SocketAddr>,
    pub(crate) links: BTreeMap<(usize, usize), Link>,
    pub(crate) lanes: BTreeMap<(usize, usize), Lane<M>>,
    pub(crate) latency_ms: (u64, u64),
}

/// The address of simulated node `i` (what fault rules match).
pub(crate) fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250 + 1) as u8], 7000))
}

impl<M> Net<M> {
    pub(crate) fn new(n: usize, latency_ms: (u64, u64)) -> Self {
        let mut links = BTreeMap::new();
        let mut lanes = BTreeMap::new();
        for a in 0..n {
            for b in 0..n {
                if a < b {
                    links.insert(
                        (a, b),
                        Link::Down {
                            generation: 0,
                            open_since: Some(Duration::ZERO),
                        },
                    );
                }
                if a != b {
                    lanes.insert((a, b), Lane::default());
                }
            }
        }
        Self {
            n,
            rules: vec![RuleSet::default(); n],
            addrs: (0..n).map(addr).collect(),
            links,
            lanes,
            latency_ms,
        }
    }

    pub(crate) fn size(&self) -> usize {
        self.n
    }

    /// The link of the pair `a`, `b`.
    pub(crate) fn link(&self, a: usize, b: usize) -> &Link {
        &self.links[&(a.min(b), a.max(b))]
    }

    pub(crate) fn link_mut(&mut self, a: usize, b: usize) -> &mut Link {
        self.links
            .get_mut(&(a.min(b), a.max(b)))
            .expect("a pair of nodes of the simulation")
    }

    /// The generation of the pair's link, if it is up.
    pub(crate) fn up(&self, a: usize, b: usize) -> Option<u64> {
        match self.link(a, b) {
            Link::Up { generation, .. } => Some(*generation),
            Link::Down { .. } => None,
        }
    }

    /// Whether the path `from` -> `to` drops everything now (a partition rule on either end).
    /// A loss rule does not cut a path: streams retransmit through it.
    pub(crate) fn cut(&self, from: usize, to: usize) -> bool {
        let is_node = |a: &SocketAddr| self.addrs.contains(a);
        let never = || u64::MAX; // a loss roll that never drops: only `Drop` rules cut
        let out = self.rules[from].verdict(Direction::Out, self.addrs[to], is_node, never);
        let inn = self.rules[to].verdict(Direction::In, self.addrs[from], is_node, never);
        out == Verdict::Drop || inn == Verdict::Drop
    }

    /// The extra delay the fault rules put on a stream's packets `from` -> `to` now.
    pub(crate) fn stream_delay(&self, from: usize, to: usize) -> Duration {
        let is_node = |a: &SocketAddr| self.addrs.contains(a);
        let never = || u64::MAX;
        [
            self.rules[from].verdict(Direction::Out, self.addrs[to], is_node, never),
            self.rules[to].verdict(Direction::In, self.addrs[from], is_node, never),
        ]
        .into_iter()
        .map(|v| match v {
            Verdict::Delay(d) => d,
            Verdict::Pass | Verdict::Drop => Duration::ZERO,
        })
        .sum()
    }

    /// The fate of a datagram `from` -> `to` now: `None` if dropped, else its extra delay.
    pub(crate) fn datagram(&self, from: usize, to: usize, rng: &mut Rng) -> Option<Duration> {
        let is_node = |a: &SocketAddr| self.addrs.contains(a);
        let mut extra = Duration::ZERO;
        for v in [
            self.rules[from].verdict(Direction::Out, self.addrs[to], is_node, || rng.next()),
            self.rules[to].verdict(Direction::In, self.addrs[from], is_node, || rng.next()),
        ] {
            match v {
                Verdict::Drop => return None,
                Verdict::Delay(d) => extra += d,
                Verdict::Pass => {}
            }
        }
        Some(extra)
    }

    /// A one-way latency.
    pub(crate) fn latency(&self, rng: &mut Rng) -> Duration {
        let (lo, hi) = self.latency_ms;
        Duration::from_millis(lo + rng.below(hi - lo + 1))
    }
}
