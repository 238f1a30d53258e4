//! Membership: who is in the cluster and how this node sees each member (sans-IO).
//!
//! [`Members`] is the table: one [`Member`] per peer, with its failure [`Detector`] and what its
//! last heartbeat reported. It never reads a clock or touches a socket: the node feeds it what
//! it learns (gossip and hellos: [`Members::learn`]), heartbeats ([`Members::heartbeat`]), ticks
//! and closed links, and reads back transitions and views. Every change bumps
//! [`Members::version`], which is how the node knows when to publish a new view.
//!
//! ```text
//!   learn(info) ── new name ──────────▶ joining (detector) ── heartbeat ──▶ up
//!               ── newer incarnation ─▶ joining again (the old life is over: "restarted")
//!   heartbeat   ── the report (fences, fenced, "you are down", unreachable set) is kept;
//!                  the detector is fed only if the role admits it (a quarantined peer is not)
//!   tick        ── silent past suspect_after ──▶ unreachable
//!   decide_down ── (the split-brain resolver, remote role) ──▶ down
//!   left        ── the peer closed its connections with the shutdown code ──▶ down
//! ```
//!
//! [`UpView`]: the up members of one version of the table (directory owners, placement
//! candidates), built once per change.

pub mod detector;
pub mod link;

use std::collections::BTreeMap;
use std::time::Instant;

use detector::{Detector, DetectorConfig, PeerState, Transition};

use crate::identity::{validate_name, NodeInfo, Role};
use serde::{Deserialize, Serialize};

/// A heartbeat datagram.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The sender's incarnation.
    pub incarnation: u64,
    /// Sequence number, for loss accounting.
    pub seq: u64,
    /// How many fences the sender has completed in this incarnation (a node decided down is
    /// taken back only once it has fenced since).
    #[serde(default)]
    pub fences: u64,
    /// The sender is fenced now (it hosts nothing).
    #[serde(default)]
    pub fenced: bool,
    /// "You were decided down in my view: fence before rejoining."
    #[serde(default)]
    pub down: bool,
    /// The remote members the sender sees unreachable (or down). A majority downs a node
    /// only if every member on its side reports it unreachable (see `tether-node-remote`'s split-brain rule).
    #[serde(default)]
    pub unreachable: Vec<String>,
}

/// What a member's last heartbeat reported about itself and the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Fences it completed in the incarnation this node tracks.
    pub fences: u64,
    /// It is fenced now.
    pub fenced: bool,
    /// It decided this node down.
    pub says_im_down: bool,
    /// The remote members it sees unreachable (or down).
    pub unreachable: Vec<String>,
}

/// One peer as this node sees it.
#[derive(Debug, Clone)]
pub struct Member {
    /// What it announced (name, role, address, incarnation, kinds).
    pub info: NodeInfo,
    /// Its failure detector.
    pub detector: Detector,
    /// It shut down cleanly (closed its connections with the shutdown code).
    pub left: bool,
    /// Its last heartbeat's report.
    pub report: Report,
}

impl Member {
    /// Its state, `down` once it left.
    pub fn state(&self) -> PeerState {
        if self.left {
            PeerState::Down
        } else {
            self.detector.state()
        }
    }
}

/// What [`Members::learn`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// Nothing new.
    Unchanged,
    /// A member not known before.
    New,
    /// A newer life of a known member: links and dials to the old life are stale.
    Restarted(Option<Transition>),
    /// The same life at another address.
    Moved,
}

/// The membership table of one node.
#[derive(Debug, Clone)]
pub struct Members {
    me: NodeInfo,
    cfg: DetectorConfig,
    peers: BTreeMap<String, Member>,
    version: u64,
}

impl Members {
    /// A table that knows only this node.
    pub fn new(me: NodeInfo, cfg: DetectorConfig) -> Self {
        Self {
            me,
            cfg,
            peers: BTreeMap::new(),
            version: 0,
        }
    }

    /// This node.
    pub fn me(&self) -> &NodeInfo {
        &self.me
    }

    /// Bumped by every change of the table (states, members, reports that matter).
    pub fn version(&self) -> u64 {
        self.version
    }

    fn bump(&mut self) {
        self.version += 1;
    }

    /// Learns of a member (from gossip or a handshake).
    pub fn learn(&mut self, info: NodeInfo, now: Instant) -> Learned {
        if info.name == self.me.name || validate_name(&info.name).is_err() {
            return Learned::Unchanged;
        }
        let learned = match self.peers.get_mut(&info.name) {
            None => {
                let detector = Detector::new(self.cfg, info.incarnation, now);
                let m = Member {
                    info,
                    detector,
                    left: false,
                    report: Report::default(),
                };
                self.peers.insert(m.info.name.clone(), m);
                Learned::New
            }
            Some(m) if info.incarnation > m.info.incarnation => {
                let t = m.detector.observe_incarnation(info.incarnation, now);
                m.left = false;
                m.report = Report::default();
                m.info = info;
                Learned::Restarted(t)
            }
            Some(m) if info.incarnation == m.info.incarnation && info.addr != m.info.addr => {
                m.info.addr = info.addr;
                Learned::Moved
            }
            Some(_) => Learned::Unchanged,
        };
        if learned != Learned::Unchanged {
            self.bump();
        }
        learned
    }

    /// A link to `peer` was established: it has not left (any more).
    pub fn linked(&mut self, peer: &str) {
        if let Some(m) = self.peers.get_mut(peer) {
            if m.left {
                m.left = false;
                self.bump();
            }
        }
    }

    /// Records what a heartbeat of `peer` reports (before the role decides whether it is
    /// admitted). Returns the member, or `None` for an unknown peer.
    pub fn record_report(&mut self, peer: &str, hb: &Heartbeat) -> Option<&Member> {
        let m = self.peers.get_mut(peer)?;
        let mut changed =
            m.report.says_im_down != hb.down || m.report.unreachable != hb.unreachable;
        m.report.says_im_down = hb.down;
        m.report.unreachable.clone_from(&hb.unreachable);
        if hb.incarnation == m.detector.incarnation() {
            changed |= m.report.fenced != hb.fenced || hb.fences > m.report.fences;
            m.report.fences = m.report.fences.max(hb.fences);
            m.report.fenced = hb.fenced;
        }
        if changed {
            self.version += 1;
        }
        self.peers.get(peer)
    }

    /// Feeds an admitted heartbeat of `peer` to its detector.
    pub fn heartbeat(&mut self, peer: &str, incarnation: u64, now: Instant) -> Option<Transition> {
        let t = self
            .peers
            .get_mut(peer)?
            .detector
            .heartbeat(incarnation, now);
        if t.is_some() {
            self.bump();
        }
        t
    }

    /// Advances every detector to `now`.
    pub fn tick(&mut self, now: Instant) -> Vec<(String, Transition)> {
        let mut out = Vec::new();
        for (name, m) in &mut self.peers {
            if let Some(t) = m.detector.tick(now) {
                out.push((name.clone(), t));
            }
        }
        if !out.is_empty() {
            self.bump();
        }
        out
    }

    /// The split-brain resolver decided `peer` down.
    pub fn decide_down(&mut self, peer: &str, now: Instant) -> Option<Transition> {
        let t = self.peers.get_mut(peer)?.detector.decide_down(now);
        if t.is_some() {
            self.bump();
        }
        t
    }

    /// `peer` left the cluster (closed its connections with the shutdown code).
    pub fn left(&mut self, peer: &str, now: Instant) -> Option<Transition> {
        let m = self.peers.get_mut(peer)?;
        let was = m.left;
        m.left = true;
        let t = m.detector.left(now);
        if t.is_some() || !was {
            self.bump();
        }
        t
    }

    /// A member.
    pub fn get(&self, name: &str) -> Option<&Member> {
        self.peers.get(name)
    }

    /// Every member but this node, by name.
    pub fn peers(&self) -> impl Iterator<Item = &Member> {
        self.peers.values()
    }

    /// A member's state (`None`: unknown; this node is not a peer).
    pub fn state_of(&self, name: &str) -> Option<PeerState> {
        self.peers.get(name).map(Member::state)
    }

    /// A node's role, this one's included.
    pub fn role_of(&self, name: &str) -> Option<Role> {
        if name == self.me.name {
            return Some(self.me.role);
        }
        self.peers.get(name).map(|m| m.info.role)
    }

    /// The capabilities a node offers, this one's included (empty if unknown).
    pub fn caps_of(&self, name: &str) -> &[String] {
        if name == self.me.name {
            return &self.me.caps;
        }
        self.peers
            .get(name)
            .map(|m| m.info.caps.as_slice())
            .unwrap_or_default()
    }

    /// The kinds `name` registered (empty if unknown).
    pub fn kinds_of(&self, name: &str) -> &[String] {
        if name == self.me.name {
            return &self.me.kinds;
        }
        self.peers
            .get(name)
            .map(|m| m.info.kinds.as_slice())
            .unwrap_or_default()
    }

    /// Every member that has not left, this node last: what gossip carries.
    pub fn infos(&self) -> Vec<NodeInfo> {
        let mut v: Vec<NodeInfo> = self
            .peers
            .values()
            .filter(|m| !m.left)
            .map(|m| m.info.clone())
            .collect();
        v.push(self.me.clone());
        v
    }

    /// The remote members this node sees unreachable or down (what its heartbeats report).
    pub fn unreachable_remotes(&self) -> Vec<String> {
        self.peers
            .values()
            .filter(|m| {
                m.info.role == Role::Remote
                    && !m.left
                    && matches!(m.detector.state(), PeerState::Unreachable | PeerState::Down)
            })
            .map(|m| m.info.name.clone())
            .collect()
    }

    /// The up members now.
    pub fn up_view(&self) -> UpView {
        let mut members: Vec<(String, Role, Vec<String>)> = self
            .peers
            .values()
            .filter(|m| m.state() == PeerState::Up)
            .map(|m| (m.info.name.clone(), m.info.role, m.info.kinds.clone()))
            .collect();
        members.push((self.me.name.clone(), self.me.role, self.me.kinds.clone()));
        UpView {
            version: self.version,
            members,
        }
    }
}

/// What the data plane reads of membership: every peer's state, and the up members. A snapshot,
/// published at every change of the table.
#[derive(Debug, Clone)]
pub struct View {
    /// The table's version it was built from.
    pub version: u64,
    /// The up members.
    pub up: UpView,
    states: BTreeMap<String, PeerState>,
}

impl View {
    /// A peer's state (`None`: unknown).
    pub fn state_of(&self, name: &str) -> Option<PeerState> {
        self.states.get(name).copied()
    }

    /// The directory owner of `id` in this view.
    pub fn owner_of(&self, id: &str) -> Option<&str> {
        crate::directory::owner(id, self.up.remotes())
    }
}

impl Members {
    /// The snapshot the data plane reads.
    pub fn view(&self) -> View {
        View {
            version: self.version,
            up: self.up_view(),
            states: self
                .peers
                .iter()
                .map(|(n, m)| (n.clone(), m.state()))
                .collect(),
        }
    }
}

/// The up members of the cluster as of one version of the membership table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpView {
    /// The table's version it was built from.
    pub version: u64,
    /// Up nodes, this one last: name, role, the kinds it registered.
    members: Vec<(String, Role, Vec<String>)>,
}

impl UpView {
    /// Up remote nodes, this one included if remote: the directory owners.
    pub fn remotes(&self) -> impl Iterator<Item = &str> {
        self.members
            .iter()
            .filter(|(_, role, _)| *role == Role::Remote)
            .map(|(name, _, _)| name.as_str())
    }

    /// Up nodes (this one included): name, role, whether it registered `kind`.
    pub fn members<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = (&'a str, Role, bool)> {
        self.members
            .iter()
            .map(move |(name, role, kinds)| (name.as_str(), *role, kinds.iter().any(|k| k == kind)))
    }

    /// Up peers (this node excluded) that registered `kind`.
    pub fn peers_with_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a str> {
        let peers = &self.members[..self.members.len().saturating_sub(1)];
        peers
            .iter()
            .filter(move |(_, _, kinds)| kinds.iter().any(|k| k == kind))
            .map(|(name, _, _)| name.as_str())
    }

    /// Whether `name` is up in this view (this node always is).
    pub fn is_up(&self, name: &str) -> bool {
        self.members.iter().any(|(n, _, _)| n == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, role: Role, kinds: &[&str]) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            role,
            addr: "127.0.0.1:1".parse().unwrap(),
            incarnation: 1,
            kinds: kinds.iter().map(|k| (*k).to_owned()).collect(),
            caps: Vec::new(),
        }
    }

    fn hb(incarnation: u64) -> Heartbeat {
        Heartbeat {
            incarnation,
            seq: 0,
            fences: 0,
            fenced: false,
            down: false,
            unreachable: Vec::new(),
        }
    }

    fn sorted<'a>(it: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
        let mut v: Vec<&str> = it.collect();
        v.sort_unstable();
        v
    }

    /// The view holds the up members only (not joining, not left), this node included.
    #[test]
    fn the_up_view_holds_up_members_and_this_node() {
        let now = Instant::now();
        let mut m = Members::new(info("r0", Role::Remote, &["b"]), DetectorConfig::default());
        for (i, up, left) in [
            (info("r1", Role::Remote, &["a"]), true, false),
            (info("l1", Role::Local, &["a", "b"]), true, false),
            (info("r2", Role::Remote, &["a", "b"]), true, true),
            (info("r3", Role::Remote, &["b"]), false, false),
        ] {
            let name = i.name.clone();
            assert_eq!(m.learn(i, now), Learned::New);
            if up {
                assert!(m.heartbeat(&name, 1, now).is_some(), "joining -> up");
            }
            if left {
                m.left(&name, now);
            }
        }
        let view = m.up_view();
        assert_eq!(sorted(view.remotes()), ["r0", "r1"]);
        let mut with_a: Vec<(&str, bool)> = view.members("a").map(|(n, _, h)| (n, h)).collect();
        with_a.sort_unstable();
        assert_eq!(with_a, [("l1", true), ("r0", false), ("r1", true)]);
        assert_eq!(
            sorted(view.peers_with_kind("b")),
            ["l1"],
            "this node is not a peer"
        );
        assert_eq!(sorted(view.peers_with_kind("a")), ["l1", "r1"]);
    }

    #[test]
    fn a_newer_incarnation_starts_the_member_over_and_an_older_one_is_ignored() {
        let now = Instant::now();
        let mut m = Members::new(info("r0", Role::Remote, &[]), DetectorConfig::default());
        m.learn(info("r1", Role::Remote, &[]), now);
        m.heartbeat("r1", 1, now);
        m.left("r1", now);
        let v = m.version();
        let mut newer = info("r1", Role::Remote, &[]);
        newer.incarnation = 2;
        assert!(matches!(m.learn(newer, now), Learned::Restarted(Some(_))));
        assert!(m.version() > v);
        let r1 = m.get("r1").unwrap();
        assert!(!r1.left, "a new life has not left");
        assert_eq!(r1.state(), PeerState::Joining);
        assert_eq!(
            m.learn(info("r1", Role::Remote, &[]), now),
            Learned::Unchanged
        );
        assert_eq!(
            m.heartbeat("r1", 1, now),
            None,
            "a heartbeat of the old life"
        );
        assert!(m.heartbeat("r1", 2, now).is_some());
    }

    #[test]
    fn a_report_counts_fences_of_the_tracked_life_only() {
        let now = Instant::now();
        let mut m = Members::new(info("r0", Role::Remote, &[]), DetectorConfig::default());
        m.learn(info("r1", Role::Remote, &[]), now);
        let mut h = hb(1);
        h.fences = 2;
        h.fenced = true;
        h.down = true;
        let r = &m.record_report("r1", &h).unwrap().report;
        assert_eq!((r.fences, r.fenced, r.says_im_down), (2, true, true));
        let mut other_life = hb(5);
        other_life.fences = 9;
        let r = &m.record_report("r1", &other_life).unwrap().report;
        assert_eq!(r.fences, 2, "fences of another life are not this life's");
        assert!(m.record_report("nobody", &h).is_none());
    }
}
