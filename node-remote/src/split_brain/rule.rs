//! The split-brain rule: who keeps running when the remote nodes are split (sans-IO).
//!
//! Only remote nodes run it, and only remote nodes count. Local nodes are never downed by a
//! partition: cut off from the remote nodes they go `offline` and keep their agents running.
//!
//! **Rule: keep-majority over the remote members, after a stability window.**
//!
//! ```text
//!   members   = every remote node that has not left (this node included; one decided
//!               down still counts: it may be back on the other side of the split)
//!   reachable = members this node sees up, and that hear it (itself included)
//!
//!   every member reachable, or a winning side stable for `stable_after` ─▶ a fence is lifted
//!   otherwise:
//!     2·|reachable| >  |members|   majority ─┐
//!     2·|reachable| == |members|   tie: the side holding the lowest member name wins
//!     2·|reachable| <  |members|   minority ─┴─▶ on the losing side for `stable_after` without
//!                                               a break: fence: stop every agent hosted here
//!   a winning side waits until the unreachable set has not changed for
//!   `stable_after + down_margin`, then decides the unreachable members down (their agents are
//!   then re-activated on this side with higher epochs)
//! ```
//!
//! Why it is safe: two sides of one split see complementary reachable sets, so at most one
//! holds a strict majority, and in a tie exactly one holds the lowest name. The losing side
//! fences at `stable_after`; the winning side downs it at `stable_after + down_margin`, so the
//! old instances are stopped before new ones start. The margin covers a clock-free difference
//! in when the two sides noticed the split (at most the detector's suspicion window) plus the
//! time a fence takes to stop agents.
//!
//! **Indirect connections** (a bridge, a ring): the sides' views are not complementary, and
//! two nodes that cannot hear each other may both see a majority. So a winning node downs a
//! member only if every member on its side reports it unreachable too (heartbeats carry each
//! node's unreachable set); a member some of them still hear is left alone. That costs
//! availability (nothing reaches it from here), never a second activation.
//!
//! **Zombies** (a node paused by SIGSTOP or a VM pause through its own fence): a node decided
//! down stays down, and every request it sends is refused, until it reports (in its
//! heartbeats) a fence completed after the decision. Heartbeats to it say "you are down", so
//! it fences as soon as it hears any. And a node whose own ticker finds it did not run for
//! longer than its lease (`suspect_after + stable_after`, less than the others need to down
//! it) refuses requests from peers and fences before doing anything else.
//!
//! Views are not required to be consistent (one-way partitions, rings): every node applies the
//! rule to what it sees, and a node that sees a minority fences itself even if others see it.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tether_cluster::role::SbrConfig;

/// What the node should do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing new.
    None,
    /// This node is on the losing side: stop every agent hosted here, refuse new ones.
    Fence,
    /// Every member is reachable again: lift the fence.
    Unfence,
    /// This node is on the winning side: these members are down.
    Down(Vec<String>),
}

/// Which side this node is on for a given view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Every member is reachable.
    Whole,
    /// A strict majority, or the tie-winning half.
    Wins,
    /// A minority, or the tie-losing half.
    Loses,
}

/// The keep-majority rule for one view (`reachable` includes this node).
pub fn side(members: &BTreeSet<String>, reachable: &BTreeSet<String>) -> Side {
    let seen = members.intersection(reachable).count();
    if seen == members.len() {
        return Side::Whole;
    }
    match (2 * seen).cmp(&members.len()) {
        std::cmp::Ordering::Greater => Side::Wins,
        std::cmp::Ordering::Less => Side::Loses,
        std::cmp::Ordering::Equal => match members.iter().next() {
            Some(lowest) if reachable.contains(lowest) => Side::Wins,
            _ => Side::Loses,
        },
    }
}

/// The resolver of one remote node.
#[derive(Debug, Clone)]
pub struct Resolver {
    cfg: SbrConfig,
    unreachable: BTreeSet<String>,
    stable_since: Instant,
    /// Since when this node has been on a losing side without a break (whatever the
    /// unreachable set did meanwhile).
    losing_since: Option<Instant>,
    fenced: bool,
}

impl Resolver {
    /// A resolver that has seen nothing unusual yet.
    pub fn new(cfg: SbrConfig, now: Instant) -> Self {
        Self {
            cfg,
            unreachable: BTreeSet::new(),
            stable_since: now,
            losing_since: None,
            fenced: false,
        }
    }

    /// Whether this node has fenced itself.
    pub fn fenced(&self) -> bool {
        self.fenced
    }

    /// When the current unreachable set was first seen.
    pub fn stable_since(&self) -> Instant {
        self.stable_since
    }

    /// Feeds the current view; returns what to do. `members` are the remote nodes not decided
    /// down (this node included); `reachable` those seen up (this node included).
    pub fn observe(
        &mut self,
        now: Instant,
        members: &BTreeSet<String>,
        reachable: &BTreeSet<String>,
    ) -> Action {
        let unreachable: BTreeSet<String> = members.difference(reachable).cloned().collect();
        if unreachable != self.unreachable {
            self.unreachable = unreachable;
            self.stable_since = now;
        }
        let stable_for = now.saturating_duration_since(self.stable_since);
        let side = side(members, reachable);
        let losing_for = if side == Side::Loses {
            now.saturating_duration_since(*self.losing_since.get_or_insert(now))
        } else {
            self.losing_since = None;
            Duration::ZERO
        };
        match side {
            Side::Whole => {
                if self.fenced {
                    self.fenced = false;
                    return Action::Unfence;
                }
                Action::None
            }
            // the losing side's clock does not restart when its own side changes (a member
            // comes back from a pause, another leaves it): the winning side downs it
            // `stable_after + down_margin` after it saw the split, whatever happened here
            Side::Loses if losing_for >= self.cfg.stable_after && !self.fenced => {
                self.fenced = true;
                Action::Fence
            }
            // back on the winning side for a stable window (a member that stays away, dead for
            // good, must not keep the rest fenced forever)
            Side::Wins if self.fenced && stable_for >= self.cfg.stable_after => {
                self.fenced = false;
                Action::Unfence
            }
            Side::Wins
                if !self.fenced && stable_for >= self.cfg.stable_after + self.cfg.down_margin =>
            {
                Action::Down(self.unreachable.iter().cloned().collect())
            }
            _ => Action::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_losing_side_that_changes_still_fences_in_time() {
        // r2 alone, then joined by r1 back from a pause: still a minority of five; the fence
        // keeps the time of the split, not of the change (seed 17942)
        let t0 = Instant::now();
        let cfg = SbrConfig::default();
        let mut r = Resolver::new(cfg, t0);
        let m = set(&["r1", "r2", "r3", "r4", "r5"]);
        assert_eq!(r.observe(t0, &m, &set(&["r2"])), Action::None);
        let half = cfg.stable_after / 2;
        assert_eq!(r.observe(t0 + half, &m, &set(&["r1", "r2"])), Action::None);
        assert_eq!(
            r.observe(t0 + cfg.stable_after, &m, &set(&["r1", "r2"])),
            Action::Fence
        );
    }

    #[test]
    fn majority_downs_the_isolated_node_after_the_window_and_margin() {
        let t0 = Instant::now();
        let cfg = SbrConfig::default();
        let mut r = Resolver::new(cfg, t0);
        let m = set(&["r1", "r2", "r3"]);
        assert_eq!(r.observe(t0, &m, &m), Action::None);
        let seen = set(&["r1", "r2"]);
        assert_eq!(r.observe(t0 + S, &m, &seen), Action::None);
        assert_eq!(
            r.observe(t0 + S + cfg.stable_after, &m, &seen),
            Action::None
        );
        assert_eq!(
            r.observe(t0 + S + cfg.stable_after + cfg.down_margin, &m, &seen),
            Action::Down(vec!["r3".into()])
        );
    }

    #[test]
    fn the_isolated_node_fences_then_unfences_when_it_sees_everyone() {
        let t0 = Instant::now();
        let cfg = SbrConfig::default();
        let mut r = Resolver::new(cfg, t0);
        let m = set(&["r1", "r2", "r3"]);
        let seen = set(&["r3"]);
        assert_eq!(r.observe(t0, &m, &seen), Action::None);
        assert_eq!(r.observe(t0 + cfg.stable_after, &m, &seen), Action::Fence);
        assert!(r.fenced());
        assert_eq!(r.observe(t0 + 10 * S, &m, &seen), Action::None);
        assert_eq!(r.observe(t0 + 11 * S, &m, &m), Action::Unfence);
        assert!(!r.fenced());
    }

    #[test]
    fn a_change_of_view_restarts_the_window() {
        let t0 = Instant::now();
        let cfg = SbrConfig::default();
        let mut r = Resolver::new(cfg, t0);
        let m = set(&["r1", "r2", "r3", "r4", "r5"]);
        r.observe(t0, &m, &set(&["r1", "r2", "r3", "r4"]));
        // r4 goes too: the window starts again at t0 + 2 s
        r.observe(t0 + 2 * S, &m, &set(&["r1", "r2", "r3"]));
        let late = t0 + 2 * S + cfg.stable_after + cfg.down_margin;
        assert_eq!(
            r.observe(
                late - Duration::from_millis(1),
                &m,
                &set(&["r1", "r2", "r3"])
            ),
            Action::None
        );
        assert_eq!(
            r.observe(late, &m, &set(&["r1", "r2", "r3"])),
            Action::Down(vec!["r4".into(), "r5".into()])
        );
    }

    #[test]
    fn a_tie_goes_to_the_side_with_the_lowest_name() {
        let m = set(&["r1", "r2", "r3", "r4"]);
        assert_eq!(side(&m, &set(&["r1", "r4"])), Side::Wins);
        assert_eq!(side(&m, &set(&["r2", "r3"])), Side::Loses);
        let two = set(&["r1", "r2"]);
        assert_eq!(side(&two, &set(&["r1"])), Side::Wins);
        assert_eq!(side(&two, &set(&["r2"])), Side::Loses);
    }

    #[test]
    fn a_single_remote_node_always_keeps_running() {
        let m = set(&["r1"]);
        assert_eq!(side(&m, &m), Side::Whole);
    }

    /// When the nodes notice a split, after it happened: at most the detector's suspicion
    /// window, plus a heartbeat interval (the last heartbeat heard may be that old) and a tick.
    fn noticed_within_ms() -> u64 {
        let suspect = tether_cluster::membership::detector::DetectorConfig::default().suspect_after;
        let heartbeat = tether_cluster::Timing::default().heartbeat_interval;
        (suspect + 2 * heartbeat).as_millis() as u64
    }

    proptest! {
        /// Split the members into two sides that see exactly their own side: at most one side
        /// wins, and every member on the losing side fences strictly before any member of the
        /// winning side decides anyone down.
        #[test]
        fn two_sides_never_both_win_and_fencing_comes_first(
            n in 1usize..9,
            mask in any::<u16>(),
            noticed in proptest::collection::vec(0u64..noticed_within_ms(), 9),
        ) {
            let names: Vec<String> = (1..=n).map(|i| format!("r{i}")).collect();
            let members: BTreeSet<String> = names.iter().cloned().collect();
            let a: BTreeSet<String> = names.iter().enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0).map(|(_, s)| s.clone()).collect();
            let b: BTreeSet<String> = members.difference(&a).cloned().collect();
            let sa = side(&members, &a);
            let sb = side(&members, &b);
            if a.is_empty() || b.is_empty() {
                prop_assert!(sa == Side::Whole || sb == Side::Whole);
                return Ok(());
            }
            prop_assert!(!(sa == Side::Wins && sb == Side::Wins));
            prop_assert!(sa == Side::Wins || sb == Side::Wins, "one side must win");

            // every node notices the split within the detector's suspicion window, a heartbeat
            // and a tick after it happened, then runs its resolver every 50 ms
            let cfg = SbrConfig::default();
            let t0 = Instant::now();
            let mut last_fence = None;
            let mut first_down = None;
            for (i, name) in names.iter().enumerate() {
                let mine = if a.contains(name) { &a } else { &b };
                let mut r = Resolver::new(cfg, t0);
                r.observe(t0, &members, &members);
                let start = t0 + Duration::from_millis(noticed[i]);
                let mut t = start;
                while t < start + 10 * S {
                    match r.observe(t, &members, mine) {
                        Action::Fence => last_fence = last_fence.max(Some(t)),
                        Action::Down(_) => {
                            first_down = Some(first_down.map_or(t, |d: Instant| d.min(t)));
                            break;
                        }
                        _ => {}
                    }
                    t += Duration::from_millis(50);
                }
            }
            let (fence, down) = (last_fence.expect("the losing side fences"), first_down.expect("the winners down"));
            prop_assert!(fence < down, "fence at {:?} after down at {:?}", fence - t0, down - t0);
        }
    }
}
