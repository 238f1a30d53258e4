//! The split-brain driver of a remote node: the keep-majority [`rule`] applied to this node's
//! view at every tick, the decisions carried out (fence this node, or decide peers down), and
//! the node's lease.
//!
//! ```text
//! every tick:
//!   ran late by more than the lease (paused, starved) ──▶ self-fence, held until that fence
//!                                                          is done and every member is seen
//!   rule over (members, reachable) ──▶ Down(names): each downed unless a member on this side
//!                                       still hears it (the veto); downed peers are held in
//!                                       quarantine and their agents fail over
//!   fence wanted = the rule fenced us ∨ self-fence ∨ an up peer says we are down
//!     wanted, not fenced ──▶ fence: stop every agent here (Output::Fence), mode `fenced`
//!     not wanted, fenced, no fence in progress ──▶ lift it, mode `up`, report evictions
//!   lease renewed: requests are served until now + lease
//! ```
//!
//! The lease is `suspect_after + stable_after`: less than the others wait before deciding this
//! node down (`+ down_margin`), so a node resuming from a pause refuses work before anyone could
//! have replaced what it runs.

pub mod rule;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tether_cluster::core::Output;
use tether_cluster::membership::detector::{DetectorConfig, PeerState};
use tether_cluster::role::{Cx, NodeMode, SbrConfig};
use tether_cluster::Role;
use tracing::{debug, info, warn};

use crate::quarantine::Quarantine;
use rule::{Action, Resolver};

/// What a tick changed about this node's fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FenceChange {
    /// Nothing.
    None,
    /// The node fenced itself.
    Fenced,
    /// The fence was lifted.
    Lifted,
}

/// The split-brain state of one remote node.
#[derive(Debug)]
pub(crate) struct SplitBrain {
    resolver: Resolver,
    lease: Duration,
    fenced: bool,
    fences_begun: u64,
    fences_done: u64,
    /// Set when this node finds it did not run for longer than its lease: the fence count
    /// then. Held until that fence is done and every remote member is reachable again.
    self_fence: Option<u64>,
    lease_until: Option<Instant>,
}

impl SplitBrain {
    pub(crate) fn new(sbr: SbrConfig, detector: DetectorConfig, now: Instant) -> Self {
        Self {
            resolver: Resolver::new(sbr, now),
            lease: detector.suspect_after + sbr.stable_after,
            fenced: false,
            fences_begun: 0,
            fences_done: 0,
            self_fence: None,
            lease_until: None,
        }
    }

    pub(crate) fn fenced(&self) -> bool {
        self.fenced
    }

    pub(crate) fn fences_done(&self) -> u64 {
        self.fences_done
    }

    pub(crate) fn lease_until(&self) -> Option<Instant> {
        self.lease_until
    }

    pub(crate) fn fence_done(&mut self) {
        self.fences_done += 1;
    }

    /// One tick (see the module doc). Returns what changed about the fence, and whether
    /// peers were decided down.
    pub(crate) fn tick(
        &mut self,
        cx: &mut Cx<'_>,
        gap: Duration,
        quarantine: &mut Quarantine,
    ) -> (FenceChange, bool) {
        if gap > self.lease {
            warn!(
                paused_ms = gap.as_millis() as u64,
                lease_ms = self.lease.as_millis() as u64,
                "this node did not run for longer than its lease (paused or starved): the \
                 others may have decided it down, so it fences before doing anything else"
            );
            // the fence that answers it: the current one if this node is fenced already (its
            // agents are stopped, or being stopped), else the next
            let current = u64::from(self.fenced);
            self.self_fence = Some(self.fences_begun - current);
        }
        let (members, reachable) = sides(cx);
        let downed = match self.resolver.observe(cx.now, &members, &reachable) {
            Action::Fence => {
                let unreachable: Vec<&String> = members.difference(&reachable).collect();
                warn!(
                    ?unreachable,
                    "this node is on the losing side of a split (keep-majority over remote nodes)"
                );
                false
            }
            Action::Down(names) => down_peers(cx, names, quarantine),
            Action::None | Action::Unfence => false,
        };
        let change = self.fence_or_lift(cx, &members, &reachable);
        // after the split check: a node resuming from a pause is fenced before it serves
        self.lease_until = Some(cx.now + self.lease);
        (change, downed)
    }

    fn fence_or_lift(
        &mut self,
        cx: &mut Cx<'_>,
        members: &BTreeSet<String>,
        reachable: &BTreeSet<String>,
    ) -> FenceChange {
        let told: Vec<String> = cx
            .members
            .peers()
            .filter(|m| m.report.says_im_down && m.detector.state() == PeerState::Up)
            .map(|m| m.info.name.clone())
            .collect();
        if self
            .self_fence
            .is_some_and(|at| self.fences_done > at && reachable == members)
        {
            info!("the fence after a pause is done and every remote member is reachable");
            self.self_fence = None;
        }
        let want = self.resolver.fenced() || self.self_fence.is_some() || !told.is_empty();
        let in_progress = self.fences_begun > self.fences_done;
        if want && !self.fenced {
            if !told.is_empty() {
                warn!(by = ?told, "this node was decided down by the majority: fencing before it rejoins");
            }
            warn!("fenced: stopping the agents hosted here; no activation or claim until the fence lifts");
            self.fenced = true;
            self.fences_begun += 1;
            cx.emit(Output::Fence);
            cx.emit(Output::Mode(NodeMode::Fenced));
            return FenceChange::Fenced;
        }
        if !want && self.fenced && !in_progress {
            info!("fence lifted: every remote member is reachable again and none holds this node down");
            self.fenced = false;
            cx.emit(Output::Mode(NodeMode::Up));
            return FenceChange::Lifted;
        }
        FenceChange::None
    }
}

/// The remote members that have not left (this node included), and those this node sees up
/// and that hear it (a peer that cannot hear this node is not on its side, even if this node
/// hears it: so a node nobody hears fences like any minority).
///
/// A member decided down still counts: views of who is down differ between nodes (a node cut
/// off while the others took a downed node back still holds it down), and a majority must be
/// a majority of the same set on every side. So a cluster of N remote nodes keeps running
/// while a majority of them is up together; a node that is gone for good is removed by
/// leaving cleanly.
fn sides(cx: &Cx<'_>) -> (BTreeSet<String>, BTreeSet<String>) {
    let me = cx.me().to_owned();
    let mut members = BTreeSet::from([me.clone()]);
    let mut reachable = members.clone();
    for m in cx.members.peers() {
        if m.info.role != Role::Remote || m.left {
            continue;
        }
        members.insert(m.info.name.clone());
        if m.detector.state() == PeerState::Up && !m.report.unreachable.contains(&me) {
            reachable.insert(m.info.name.clone());
        }
    }
    (members, reachable)
}

/// The rule decided `names` down (this side holds the majority): each is downed unless a
/// member on this side still hears it; the downed are held in quarantine. Returns whether
/// anyone was downed.
fn down_peers(cx: &mut Cx<'_>, names: Vec<String>, quarantine: &mut Quarantine) -> bool {
    let mut downed = Vec::new();
    for name in names {
        // what the candidate itself reports, while it is heard: a deaf node (it hears no one,
        // everyone hears it) is seen by nobody. A silent candidate's last report is stale
        // (from before the cut, perhaps from when another member was paused): it counts as
        // hearing everyone, which only makes a veto likelier
        let its_reports = cx
            .members
            .get(&name)
            .filter(|m| !m.detector.is_silent(cx.now))
            .map(|m| m.report.unreachable.clone())
            .unwrap_or_default();
        let seen_by: Vec<String> = cx
            .members
            .peers()
            .filter(|m| {
                m.info.role == Role::Remote
                    && m.info.name != name
                    && !m.left
                    && m.detector.state() == PeerState::Up
                    && !m.report.unreachable.contains(&name)
                    && !its_reports.contains(&m.info.name)
            })
            .map(|m| m.info.name.clone())
            .collect();
        if !seen_by.is_empty() {
            debug!(peer = %name, ?seen_by, "not decided down: members on this side still see it");
            continue;
        }
        let report = cx
            .members
            .get(&name)
            .map(|m| (m.report.clone(), m.info.incarnation));
        if cx.decide_down(&name) {
            if let Some((r, life)) = report {
                quarantine.hold(&name, life, &r);
            }
            cx.emit(Output::Quarantine {
                peer: name.clone(),
                on: true,
            });
            downed.push(name);
        }
    }
    if !downed.is_empty() {
        warn!(
            ?downed,
            "split-brain resolver: decided down (this side holds the majority)"
        );
    }
    !downed.is_empty()
}
