//! The failure detector: a sans-IO deadline detector, one per peer.
//!
//! ```text
//!             heartbeat                   silence > suspect_after
//!  joining ─────────────▶ up ─────────────────────────────▶ unreachable
//!     │                   ▲                                   │   │
//!     │ no heartbeat      └──────────── heartbeat ────────────┘   │ decide_down (resolver)
//!     │ within join_grace                                         ▼ or left (peer said so)
//!     └──────────────────────▶ unreachable                       down
//!                                                                 │ heartbeat
//!                                                                 ▼
//!                                                                 up
//! ```
//!
//! The detector never reads a clock: every call takes `now`. It knows nothing of sockets;
//! the node feeds it heartbeat arrivals and ticks it. A heartbeat from an older incarnation than
//! the one it tracks is ignored (a zombie cannot make a restarted node look alive); one from a
//! newer incarnation resets it, which is how a restart is noticed.
//!
//! A downed peer that is heard again comes back `up` (it rejoins). The detector never decides
//! `down` on its own: silence only makes a peer `unreachable`. `down` comes from the
//! split-brain resolver ([`crate::sbr`], remote nodes only) or from the peer announcing that
//! it leaves. A local node is never downed by silence: it is offline, and comes back.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How a node sees a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    /// Known (from a seed or gossip) but not heard from yet.
    Joining,
    /// Heartbeats arrive.
    Up,
    /// Suspected: no heartbeat for longer than `suspect_after`.
    Unreachable,
    /// Decided: by the split-brain resolver, or the peer left.
    Down,
}

impl std::fmt::Display for PeerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PeerState::Joining => "joining",
            PeerState::Up => "up",
            PeerState::Unreachable => "unreachable",
            PeerState::Down => "down",
        })
    }
}

impl std::str::FromStr for PeerState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "joining" => Ok(PeerState::Joining),
            "up" => Ok(PeerState::Up),
            "unreachable" => Ok(PeerState::Unreachable),
            "down" => Ok(PeerState::Down),
            other => Err(format!(
                "unknown peer state {other:?}: expected joining, up, unreachable or down"
            )),
        }
    }
}

/// The detector's thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetectorConfig {
    /// Silence after which an `up` peer becomes `unreachable`.
    pub suspect_after: Duration,
    /// How long a `joining` peer may stay silent before it counts as `unreachable`.
    pub join_grace: Duration,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            suspect_after: Duration::from_millis(800),
            join_grace: Duration::from_secs(5),
        }
    }
}

/// A state change the detector decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// State before.
    pub from: PeerState,
    /// State after.
    pub to: PeerState,
    /// Set when the change came with a newer incarnation (the peer restarted).
    pub restarted: bool,
}

/// One peer's failure detector.
#[derive(Debug, Clone)]
pub struct Detector {
    cfg: DetectorConfig,
    state: PeerState,
    incarnation: u64,
    /// Last heartbeat, or the moment the peer became known.
    last_heard: Instant,
    since: Instant,
    changes: u64,
}

impl Detector {
    /// A detector for a peer first known at `now`, in state `joining`.
    pub fn new(cfg: DetectorConfig, incarnation: u64, now: Instant) -> Self {
        Self {
            cfg,
            state: PeerState::Joining,
            incarnation,
            last_heard: now,
            since: now,
            changes: 0,
        }
    }

    /// The current state.
    pub fn state(&self) -> PeerState {
        self.state
    }

    /// The incarnation being tracked.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// When the current state began.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// How many state changes so far (a stable way to see that nothing happened).
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// When the last heartbeat arrived (or the peer became known).
    pub fn last_heard(&self) -> Instant {
        self.last_heard
    }

    /// Whether the peer has been silent for longer than `suspect_after`, whatever the state.
    pub fn is_silent(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_heard) > self.cfg.suspect_after
    }

    /// A heartbeat from incarnation `incarnation` arrived at `now`.
    pub fn heartbeat(&mut self, incarnation: u64, now: Instant) -> Option<Transition> {
        if incarnation < self.incarnation {
            return None;
        }
        let restarted = incarnation > self.incarnation;
        self.incarnation = incarnation;
        self.last_heard = now;
        if self.state == PeerState::Up && !restarted {
            return None;
        }
        Some(self.go(PeerState::Up, restarted, now))
    }

    /// Learned (from gossip or a handshake) that the peer now runs incarnation `incarnation`.
    ///
    /// A newer incarnation means the life being tracked is over: the detector starts again in
    /// `joining` until the new life is heard.
    pub fn observe_incarnation(&mut self, incarnation: u64, now: Instant) -> Option<Transition> {
        if incarnation <= self.incarnation {
            return None;
        }
        self.incarnation = incarnation;
        self.last_heard = now;
        Some(self.go(PeerState::Joining, true, now))
    }

    /// Advances time to `now`, deciding `unreachable` if the silence is long enough.
    pub fn tick(&mut self, now: Instant) -> Option<Transition> {
        let silent = now.saturating_duration_since(self.last_heard);
        let next = match self.state {
            PeerState::Joining if silent > self.cfg.join_grace => PeerState::Unreachable,
            PeerState::Up if silent > self.cfg.suspect_after => PeerState::Unreachable,
            _ => return None,
        };
        Some(self.go(next, false, now))
    }

    /// The split-brain resolver decided this peer `down`. Only an unreachable peer can be
    /// downed: one heard since is not.
    pub fn decide_down(&mut self, now: Instant) -> Option<Transition> {
        if self.state != PeerState::Unreachable || !self.is_silent(now) {
            return None;
        }
        Some(self.go(PeerState::Down, false, now))
    }

    /// The peer announced that it is leaving: decide `down` at once.
    pub fn left(&mut self, now: Instant) -> Option<Transition> {
        if self.state == PeerState::Down {
            return None;
        }
        Some(self.go(PeerState::Down, false, now))
    }

    fn go(&mut self, to: PeerState, restarted: bool, now: Instant) -> Transition {
        let t = Transition {
            from: self.state,
            to,
            restarted,
        };
        self.state = to;
        self.since = now;
        self.changes += 1;
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn cfg() -> DetectorConfig {
        DetectorConfig {
            suspect_after: ms(1200),
            join_grace: ms(5000),
        }
    }

    #[test]
    fn first_heartbeat_makes_peer_up() {
        let t0 = Instant::now();
        let mut d = Detector::new(cfg(), 1, t0);
        assert_eq!(d.state(), PeerState::Joining);
        let t = d.heartbeat(1, t0 + ms(10)).unwrap();
        assert_eq!((t.from, t.to), (PeerState::Joining, PeerState::Up));
        assert_eq!(d.heartbeat(1, t0 + ms(20)), None);
    }

    #[test]
    fn silence_past_suspect_after_is_unreachable_and_only_the_resolver_downs() {
        let t0 = Instant::now();
        let mut d = Detector::new(cfg(), 1, t0);
        d.heartbeat(1, t0);
        assert_eq!(
            d.tick(t0 + ms(1200)),
            None,
            "exactly the window is not yet silence"
        );
        let t = d.tick(t0 + ms(1201)).unwrap();
        assert_eq!(t.to, PeerState::Unreachable);
        assert_eq!(d.tick(t0 + ms(5000)), None);
        assert_eq!(d.tick(t0 + ms(60_000)), None, "silence alone never downs");
        assert_eq!(d.decide_down(t0 + ms(60_000)).unwrap().to, PeerState::Down);
        assert_eq!(d.decide_down(t0 + ms(60_001)), None);
    }

    #[test]
    fn a_peer_heard_again_cannot_be_downed() {
        let t0 = Instant::now();
        let mut d = Detector::new(cfg(), 1, t0);
        d.heartbeat(1, t0);
        assert_eq!(d.decide_down(t0 + ms(100)), None, "up");
        d.tick(t0 + ms(2000));
        d.heartbeat(1, t0 + ms(2100));
        assert_eq!(d.decide_down(t0 + ms(2200)), None, "up again");
    }

    #[test]
    fn heartbeat_returning_before_decision_is_up_again() {
        let t0 = Instant::now();
        let mut d = Detector::new(cfg(), 1, t0);
        d.heartbeat(1, t0);
        d.tick(t0 + ms(2000));
        assert_eq!(d.state(), PeerState::Unreachable);
        let t = d.heartbeat(1, t0 + ms(3000)).unwrap();
        assert_eq!(
            (t.from, t.to, t.restarted),
            (PeerState::Unreachable, PeerState::Up, false)
        );
    }

    #[test]
    fn gap_shorter_than_window_changes_nothing() {
        let t0 = Instant::now();
        let mut d = Detector::new(cfg(), 1, t0);
        d.heartbeat(1, t0);
        let before = d.changes();
        // a 1 s partition: ticks every 150 ms see no heartbeat, then heartbeats resume
        let mut now = t0;
        for _ in 0..7 {
            now += ms(150);
            assert_eq!(d.tick(now), None);
        }
        assert_eq!(d.heartbeat(1, now + ms(50)), None);
        assert_eq!(d.changes(), before);
    }

    #[test]
    fn older_incarnation_is_ignored_newer_is_a_restart() {
        let t0 = Instant::now();
        let mut d = Detector::new(cfg(), 5, t0);
        d.heartbeat(5, t0);
        d.tick(t0 + ms(2000));
        assert_eq!(
            d.heartbeat(4, t0 + ms(2100)),
            None,
            "a zombie does not revive the peer"
        );
        assert_eq!(d.state(), PeerState::Unreachable);
        let t = d.heartbeat(6, t0 + ms(2200)).unwrap();
        assert!(t.restarted);
        assert_eq!(d.incarnation(), 6);
        assert_eq!(d.state(), PeerState::Up);
    }

    #[test]
    fn gossip_of_newer_incarnation_restarts_tracking() {
        let t0 = Instant::now();
        let mut d = Detector::new(cfg(), 1, t0);
        d.heartbeat(1, t0);
        let t = d.observe_incarnation(2, t0 + ms(10)).unwrap();
        assert_eq!((t.to, t.restarted), (PeerState::Joining, true));
        assert_eq!(d.observe_incarnation(2, t0 + ms(20)), None);
    }

    #[test]
    fn silent_joiner_becomes_unreachable_after_grace() {
        let t0 = Instant::now();
        let mut d = Detector::new(cfg(), 1, t0);
        assert_eq!(d.tick(t0 + ms(4000)), None);
        assert_eq!(d.tick(t0 + ms(5001)).unwrap().to, PeerState::Unreachable);
    }

    /// At 10% loss, with the defaults and heartbeats every 100 ms (±10 ms) as a node sends
    /// them, an `up` peer is hardly ever suspected (that takes 8 losses in a row, a chance of
    /// 1e-8 per heartbeat), and a suspicion never lasts until the split-brain resolver could
    /// decide on it (the stable window and the margin: 15 more losses in a row): zero false
    /// downs. An hour of virtual time per seed, 20 seeds: about 720 000 heartbeats.
    #[test]
    fn ten_percent_loss_never_keeps_an_up_peer_suspected_long_enough_to_down_it() {
        let sbr = crate::role::SbrConfig::default();
        let decide = sbr.stable_after + sbr.down_margin;
        let mut suspicions = 0;
        for seed in 0..20u64 {
            let mut rng = crate::sim::rng::Rng::new(seed);
            let t0 = Instant::now();
            let mut d = Detector::new(DetectorConfig::default(), 1, t0);
            d.heartbeat(1, t0);
            let mut t = t0;
            let mut suspected_at = None;
            while t < t0 + Duration::from_secs(3600) {
                t += ms(90 + rng.below(21));
                if rng.below(100) >= 10 && d.heartbeat(1, t).is_some() {
                    let since: Instant = suspected_at.take().expect("was suspected");
                    assert!(
                        t - since < decide,
                        "seed {seed}: suspected for {:?}",
                        t - since
                    );
                }
                if d.tick(t).is_some() {
                    suspicions += 1;
                    suspected_at = Some(t);
                }
            }
        }
        assert!(suspicions < 5, "{suspicions} brief suspicions in 20 hours");
    }

    proptest! {
        /// Whatever the heartbeat schedule, the detector says `up` exactly when the last
        /// heartbeat is within the window, and never `down` by itself.
        #[test]
        fn state_matches_silence(gaps in proptest::collection::vec(0u64..4000, 1..60)) {
            let t0 = Instant::now();
            let mut d = Detector::new(cfg(), 1, t0);
            d.heartbeat(1, t0);
            let mut now = t0;
            let mut last = t0;
            for (i, gap) in gaps.iter().enumerate() {
                now += ms(*gap);
                d.tick(now);
                let silent = now - last;
                match d.state() {
                    PeerState::Up => prop_assert!(silent <= ms(1200)),
                    PeerState::Unreachable => prop_assert!(silent > ms(1200)),
                    PeerState::Down => prop_assert!(false, "silence never downs"),
                    PeerState::Joining => prop_assert!(false, "never joining after first heartbeat"),
                }
                if i % 2 == 0 {
                    d.heartbeat(1, now);
                    last = now;
                    prop_assert_eq!(d.state(), PeerState::Up);
                }
            }
        }
    }
}
