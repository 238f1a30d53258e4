//! The fault layer: every datagram a node sends or receives passes an ordered list of rules.
//!
//! Rules are small and run in order; the first verdict that is not [`Verdict::Pass`] wins
//! (as in turmoil). A rule matches a direction and a peer (one address, or any cluster node)
//! and acts: drop everything, drop a percentage, or delay by a fixed time plus jitter. QUIC sees
//! real packet loss, so its timers and the failure detector react as to a real fault.
//!
//! Rules act between nodes only. [`PeerMatch::AnyNode`] matches the addresses of cluster
//! members, never the operator's CLI, so a partitioned node can still be inspected and healed.
//!
//! Delay applies to outgoing datagrams (a receive-side delay would need a second queue; a
//! delay on both peers' sends gives the same round trip). Randomness (loss, jitter) comes from
//! a seeded generator, and the seed is logged so that a run can be replayed.
//!
//! [`RuleSet::verdict`] is pure; [`FaultSocket`] applies it to quinn's UDP socket.

use std::collections::HashSet;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use serde::{Deserialize, Serialize};

/// Which datagrams a rule looks at, seen from the node that holds the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Datagrams arriving from the peer.
    In,
    /// Datagrams sent to the peer.
    Out,
    /// Both.
    Both,
}

impl Direction {
    fn covers(self, d: Direction) -> bool {
        self == Direction::Both || self == d
    }
}

/// Which peer a rule is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerMatch {
    /// One peer, by the address of its QUIC endpoint.
    Addr(SocketAddr),
    /// Any member of the cluster (not the operator's control connections).
    AnyNode,
}

/// What a matching rule does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Drop every datagram.
    Drop,
    /// Drop this share of datagrams, in percent (0 to 100).
    Loss {
        /// Percentage dropped.
        percent: f64,
    },
    /// Hold outgoing datagrams for `ms` plus a uniform jitter of up to `jitter_ms`.
    Delay {
        /// Fixed delay in milliseconds.
        ms: u64,
        /// Extra random delay, 0 to this many milliseconds.
        jitter_ms: u64,
    },
}

/// One fault rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultRule {
    /// The peer it applies to.
    pub peer: PeerMatch,
    /// The peer's name, for display only.
    #[serde(default)]
    pub peer_name: Option<String>,
    /// Which datagrams.
    pub direction: Direction,
    /// What happens to them.
    pub action: Action,
    /// Who installed it (`partition`, `quality`, ...); lets a command replace its own rules.
    pub tag: String,
}

impl fmt::Display for FaultRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = match (&self.peer, &self.peer_name) {
            (_, Some(n)) => n.clone(),
            (PeerMatch::Addr(a), None) => a.to_string(),
            (PeerMatch::AnyNode, None) => "every node".to_owned(),
        };
        let dir = match self.direction {
            Direction::In => "from",
            Direction::Out => "to",
            Direction::Both => "to/from",
        };
        match &self.action {
            Action::Drop => write!(f, "drop all {dir} {who}"),
            Action::Loss { percent } => write!(f, "drop {percent}% {dir} {who}"),
            Action::Delay { ms, jitter_ms } => {
                write!(f, "delay {dir} {who} by {ms} ms")?;
                if *jitter_ms > 0 {
                    write!(f, " ± {jitter_ms} ms")?;
                }
                Ok(())
            }
        }
    }
}

/// Why a rule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// A loss percentage outside 0..=100.
    #[error("loss must be between 0 and 100 percent, got {0}")]
    BadLoss(String),
    /// A delay on incoming datagrams, which the layer does not do.
    #[error("delay applies to outgoing datagrams only; use direction `out`")]
    InboundDelay,
}

impl FaultRule {
    /// Checks the rule's numbers.
    ///
    /// # Errors
    /// [`RuleError`] naming the bad value.
    pub fn validate(&self) -> Result<(), RuleError> {
        match &self.action {
            Action::Loss { percent } if !(0.0..=100.0).contains(percent) || percent.is_nan() => {
                Err(RuleError::BadLoss(percent.to_string()))
            }
            Action::Delay { .. } if self.direction != Direction::Out => {
                Err(RuleError::InboundDelay)
            }
            _ => Ok(()),
        }
    }
}

/// The fate of one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver it.
    Pass,
    /// Drop it.
    Drop,
    /// Deliver it after this long.
    Delay(Duration),
}

/// An ordered list of rules.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleSet {
    rules: Vec<FaultRule>,
}

impl RuleSet {
    /// The rules, in order.
    pub fn rules(&self) -> &[FaultRule] {
        &self.rules
    }

    /// Replaces every rule tagged `tag` with `rules` (appended at the end).
    pub fn replace_tag(&mut self, tag: &str, rules: Vec<FaultRule>) {
        self.rules.retain(|r| r.tag != tag);
        self.rules.extend(rules);
    }

    /// Removes every rule.
    pub fn clear(&mut self) {
        self.rules.clear();
    }

    /// The verdict for a datagram going `dir` to or from `addr`.
    ///
    /// `is_node` says whether an address belongs to a cluster member; `rand` returns uniform
    /// 64-bit values. Pure: the same inputs and random values give the same verdict.
    pub fn verdict(
        &self,
        dir: Direction,
        addr: SocketAddr,
        is_node: impl Fn(&SocketAddr) -> bool,
        mut rand: impl FnMut() -> u64,
    ) -> Verdict {
        for rule in &self.rules {
            if !rule.direction.covers(dir) {
                continue;
            }
            let matches = match &rule.peer {
                PeerMatch::Addr(a) => *a == addr,
                PeerMatch::AnyNode => is_node(&addr),
            };
            if !matches {
                continue;
            }
            match rule.action {
                Action::Drop => return Verdict::Drop,
                Action::Loss { percent } => {
                    // map the random value to [0, 100)
                    let roll = (rand() >> 11) as f64 / (1u64 << 53) as f64 * 100.0;
                    if roll < percent {
                        return Verdict::Drop;
                    }
                }
                Action::Delay { ms, jitter_ms } => {
                    let jitter = if jitter_ms == 0 {
                        0
                    } else {
                        rand() % (jitter_ms + 1)
                    };
                    return Verdict::Delay(Duration::from_millis(ms + jitter));
                }
            }
        }
        Verdict::Pass
    }
}

/// The live rules of one node, shared by its socket and its control plane.
#[derive(Debug)]
pub struct FaultLayer {
    active: AtomicBool,
    rules: RwLock<RuleSet>,
    nodes: RwLock<HashSet<SocketAddr>>,
    rng: AtomicU64,
    seed: u64,
    dropped: AtomicU64,
    delayed: AtomicU64,
}

impl FaultLayer {
    /// A layer with no rules; `seed` drives loss and jitter.
    pub fn new(seed: u64) -> Arc<Self> {
        Arc::new(Self {
            active: AtomicBool::new(false),
            rules: RwLock::new(RuleSet::default()),
            nodes: RwLock::new(HashSet::new()),
            rng: AtomicU64::new(seed | 1),
            seed,
            dropped: AtomicU64::new(0),
            delayed: AtomicU64::new(0),
        })
    }

    /// The seed of the loss and jitter generator.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// A copy of the current rules.
    pub fn rules(&self) -> RuleSet {
        // invariant: no code panics while holding this lock, so it is never poisoned
        self.rules.read().expect("fault rules lock").clone()
    }

    /// Replaces the rules tagged `tag`.
    ///
    /// # Errors
    /// [`RuleError`] if a rule is invalid; then nothing changes.
    pub fn replace_tag(&self, tag: &str, rules: Vec<FaultRule>) -> Result<RuleSet, RuleError> {
        for r in &rules {
            r.validate()?;
        }
        let mut set = self.rules.write().expect("fault rules lock");
        set.replace_tag(tag, rules);
        self.active.store(!set.rules.is_empty(), Ordering::Release);
        Ok(set.clone())
    }

    /// Removes every rule.
    pub fn clear(&self) -> RuleSet {
        let mut set = self.rules.write().expect("fault rules lock");
        let old = set.clone();
        set.clear();
        self.active.store(false, Ordering::Release);
        old
    }

    /// Records the set of cluster member addresses (what [`PeerMatch::AnyNode`] matches).
    pub fn set_node_addrs(&self, addrs: impl IntoIterator<Item = SocketAddr>) {
        *self.nodes.write().expect("fault nodes lock") = addrs.into_iter().collect();
    }

    /// Datagrams dropped and delayed so far.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.dropped.load(Ordering::Relaxed),
            self.delayed.load(Ordering::Relaxed),
        )
    }

    fn next_rand(&self) -> u64 {
        // xorshift64*; racing callers may reuse a state, which is harmless for fault rolls
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.store(x, Ordering::Relaxed);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn verdict(&self, dir: Direction, addr: SocketAddr) -> Verdict {
        if !self.active.load(Ordering::Acquire) {
            return Verdict::Pass;
        }
        let rules = self.rules.read().expect("fault rules lock");
        let nodes = self.nodes.read().expect("fault nodes lock");
        let v = rules.verdict(dir, addr, |a| nodes.contains(a), || self.next_rand());
        match v {
            Verdict::Drop => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Verdict::Delay(_) => {
                self.delayed.fetch_add(1, Ordering::Relaxed);
            }
            Verdict::Pass => {}
        }
        v
    }
}

/// quinn's UDP socket behind the fault layer.
#[derive(Debug)]
pub struct FaultSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    layer: Arc<FaultLayer>,
}

impl FaultSocket {
    /// Wraps `inner`; every datagram is judged by `layer`.
    pub fn new(inner: Arc<dyn AsyncUdpSocket>, layer: Arc<FaultLayer>) -> Arc<Self> {
        Arc::new(Self { inner, layer })
    }

    fn send_one(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        match self.layer.verdict(Direction::Out, transmit.destination) {
            Verdict::Pass => self.inner.try_send(transmit),
            // a dropped datagram looks sent, as on a real lossy network
            Verdict::Drop => Ok(()),
            Verdict::Delay(d) => {
                let inner = self.inner.clone();
                let destination = transmit.destination;
                let ecn = transmit.ecn;
                let src_ip = transmit.src_ip;
                let contents = transmit.contents.to_vec();
                let segment_size = transmit.segment_size;
                tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    let t = Transmit {
                        destination,
                        ecn,
                        contents: &contents,
                        segment_size,
                        src_ip,
                    };
                    // UDP: a datagram that cannot be sent now is lost, as a router would lose it
                    let _ = inner.try_send(&t);
                });
                Ok(())
            }
        }
    }
}

impl AsyncUdpSocket for FaultSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        if !self.layer.active.load(Ordering::Acquire) {
            return self.inner.try_send(transmit);
        }
        match transmit.segment_size {
            // judge each datagram of a GSO batch on its own, so loss is per datagram
            Some(seg) if seg < transmit.contents.len() => {
                for chunk in transmit.contents.chunks(seg) {
                    let one = Transmit {
                        destination: transmit.destination,
                        ecn: transmit.ecn,
                        contents: chunk,
                        segment_size: None,
                        src_ip: transmit.src_ip,
                    };
                    self.send_one(&one)?;
                }
                Ok(())
            }
            _ => self.send_one(transmit),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let n = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            };
            if !self.layer.active.load(Ordering::Acquire) {
                return Poll::Ready(Ok(n));
            }
            // keep the entries that pass, compacted to the front; quinn reads the buffers
            // through the same slice, so swapping entries keeps data and metadata together
            let mut kept = 0;
            for i in 0..n {
                if self.layer.verdict(Direction::In, meta[i].addr) == Verdict::Pass {
                    if kept != i {
                        bufs.swap(kept, i);
                        meta[kept] = meta[i];
                    }
                    kept += 1;
                }
            }
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
            // everything was dropped: poll again so the waker is registered by the inner socket
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    fn rule(peer: PeerMatch, direction: Direction, action: Action) -> FaultRule {
        FaultRule {
            peer,
            peer_name: None,
            direction,
            action,
            tag: "t".into(),
        }
    }

    fn set(rules: Vec<FaultRule>) -> RuleSet {
        let mut s = RuleSet::default();
        s.replace_tag("t", rules);
        s
    }

    #[test]
    fn no_rules_pass_everything() {
        let s = RuleSet::default();
        assert_eq!(
            s.verdict(Direction::In, addr(1), |_| true, || 0),
            Verdict::Pass
        );
    }

    #[test]
    fn one_way_drop_only_drops_its_direction() {
        let s = set(vec![rule(
            PeerMatch::Addr(addr(1)),
            Direction::Out,
            Action::Drop,
        )]);
        assert_eq!(
            s.verdict(Direction::Out, addr(1), |_| true, || 0),
            Verdict::Drop
        );
        assert_eq!(
            s.verdict(Direction::In, addr(1), |_| true, || 0),
            Verdict::Pass
        );
        assert_eq!(
            s.verdict(Direction::Out, addr(2), |_| true, || 0),
            Verdict::Pass
        );
    }

    #[test]
    fn any_node_never_matches_the_operator() {
        let s = set(vec![rule(
            PeerMatch::AnyNode,
            Direction::Both,
            Action::Drop,
        )]);
        let is_node = |a: &SocketAddr| a.port() < 100;
        assert_eq!(
            s.verdict(Direction::In, addr(5), is_node, || 0),
            Verdict::Drop
        );
        assert_eq!(
            s.verdict(Direction::In, addr(5000), is_node, || 0),
            Verdict::Pass
        );
    }

    #[test]
    fn first_non_pass_verdict_wins() {
        let s = set(vec![
            rule(
                PeerMatch::AnyNode,
                Direction::Out,
                Action::Loss { percent: 0.0 },
            ),
            rule(
                PeerMatch::AnyNode,
                Direction::Out,
                Action::Delay {
                    ms: 5,
                    jitter_ms: 0,
                },
            ),
            rule(PeerMatch::AnyNode, Direction::Out, Action::Drop),
        ]);
        assert_eq!(
            s.verdict(Direction::Out, addr(1), |_| true, || 0),
            Verdict::Delay(Duration::from_millis(5))
        );
    }

    #[test]
    fn loss_rate_is_close_to_the_percentage() {
        let s = set(vec![rule(
            PeerMatch::AnyNode,
            Direction::Both,
            Action::Loss { percent: 10.0 },
        )]);
        let layer = FaultLayer::new(42);
        let dropped = (0..100_000)
            .filter(|_| {
                s.verdict(Direction::In, addr(1), |_| true, || layer.next_rand()) == Verdict::Drop
            })
            .count();
        assert!(
            (9_000..11_000).contains(&dropped),
            "dropped {dropped} of 100000"
        );
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let s = set(vec![rule(
            PeerMatch::AnyNode,
            Direction::Out,
            Action::Delay {
                ms: 10,
                jitter_ms: 5,
            },
        )]);
        let layer = FaultLayer::new(7);
        for _ in 0..1000 {
            match s.verdict(Direction::Out, addr(1), |_| true, || layer.next_rand()) {
                Verdict::Delay(d) => assert!((10..=15).contains(&(d.as_millis() as u64))),
                v => panic!("unexpected {v:?}"),
            }
        }
    }

    #[test]
    fn replace_tag_keeps_other_tags() {
        let layer = FaultLayer::new(1);
        let mut q = rule(
            PeerMatch::AnyNode,
            Direction::Both,
            Action::Loss { percent: 5.0 },
        );
        q.tag = "quality".into();
        layer.replace_tag("quality", vec![q]).unwrap();
        let mut p = rule(PeerMatch::Addr(addr(1)), Direction::Both, Action::Drop);
        p.tag = "partition".into();
        layer.replace_tag("partition", vec![p.clone()]).unwrap();
        layer.replace_tag("partition", vec![p]).unwrap();
        assert_eq!(layer.rules().rules().len(), 2);
        layer.clear();
        assert!(layer.rules().rules().is_empty());
        assert_eq!(layer.verdict(Direction::In, addr(1)), Verdict::Pass);
    }

    #[test]
    fn invalid_rules_are_refused_and_change_nothing() {
        let layer = FaultLayer::new(1);
        let bad = rule(
            PeerMatch::AnyNode,
            Direction::Both,
            Action::Loss { percent: 120.0 },
        );
        assert!(layer.replace_tag("t", vec![bad]).is_err());
        let inbound_delay = rule(
            PeerMatch::AnyNode,
            Direction::In,
            Action::Delay {
                ms: 1,
                jitter_ms: 0,
            },
        );
        assert_eq!(
            layer.replace_tag("t", vec![inbound_delay]),
            Err(RuleError::InboundDelay)
        );
        assert!(layer.rules().rules().is_empty());
    }

    #[test]
    fn rules_read_as_sentences() {
        let mut r = rule(PeerMatch::Addr(addr(1)), Direction::Both, Action::Drop);
        r.peer_name = Some("r2".into());
        assert_eq!(r.to_string(), "drop all to/from r2");
        let d = rule(
            PeerMatch::AnyNode,
            Direction::Out,
            Action::Delay {
                ms: 50,
                jitter_ms: 10,
            },
        );
        assert_eq!(d.to_string(), "delay to every node by 50 ms ± 10 ms");
    }
}
