//! Quarantine: a node decided down is held down until it proves it fenced.
//!
//! When this node's side decides a peer down, the peer may still run the activations that are
//! about to be failed over (it was paused, or cut off and slow to fence). So from the decision
//! on, the peer is *held*: its heartbeats do not bring it back up, its requests are refused
//! ([`tether_actors::AgentError::Quarantined`]), and this node's heartbeats to it say "you are
//! down", so that it fences as soon as it hears any. It is taken back once a heartbeat shows
//! it fenced after the decision (its fence count grew), or that the fence it was in then never
//! lifted, or that it is a new life (a restart hosts nothing old).

use std::collections::HashMap;

use tether_cluster::membership::Heartbeat;
use tether_cluster::membership::{Member, Report};

/// The peers held down, with what they reported when they were decided down.
#[derive(Debug, Default)]
pub(crate) struct Quarantine {
    /// Peer -> the life decided down, and the fences it had completed and whether it was
    /// fenced at the decision.
    held: HashMap<String, Held>,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    life: u64,
    fences: u64,
    fenced: bool,
}

/// What a heartbeat of a held peer does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The peer is not held: the heartbeat counts.
    Free,
    /// The peer proved it fenced (or restarted): released; the heartbeat counts.
    Released,
    /// Still held: the heartbeat is ignored.
    Held,
}

impl Quarantine {
    /// Holds life `life` of `peer`, decided down now, whose last report was `report`.
    pub(crate) fn hold(&mut self, peer: &str, life: u64, report: &Report) {
        let held = Held {
            life,
            fences: report.fences,
            fenced: report.fenced,
        };
        self.held.insert(peer.to_owned(), held);
    }

    /// Whether `peer` is held.
    pub(crate) fn is_held(&self, peer: &str) -> bool {
        self.held.contains_key(peer)
    }

    /// Judges a heartbeat of `member`.
    pub(crate) fn judge(&mut self, member: &Member, hb: &Heartbeat) -> Verdict {
        let Some(&held) = self.held.get(&member.info.name) else {
            return Verdict::Free;
        };
        // the life decided down, not the member's: a restart may be known (from its
        // handshake) before its first heartbeat comes
        let same_life = hb.incarnation <= held.life;
        let fenced_since =
            hb.fences > held.fences || (held.fenced && hb.fenced && hb.fences == held.fences);
        if same_life && !fenced_since {
            return Verdict::Held;
        }
        self.held.remove(&member.info.name);
        Verdict::Released
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tether_cluster::membership::detector::{Detector, DetectorConfig};
    use tether_cluster::{NodeInfo, Role};

    fn member(incarnation: u64) -> Member {
        Member {
            info: NodeInfo {
                name: "r2".into(),
                role: Role::Remote,
                addr: "127.0.0.1:1".parse().unwrap(),
                incarnation,
                kinds: Vec::new(),
                caps: Vec::new(),
            },
            detector: Detector::new(DetectorConfig::default(), incarnation, Instant::now()),
            left: false,
            report: Report::default(),
        }
    }

    fn hb(incarnation: u64, fences: u64, fenced: bool) -> Heartbeat {
        Heartbeat {
            incarnation,
            seq: 1,
            fences,
            fenced,
            down: false,
            unreachable: Vec::new(),
        }
    }

    #[test]
    fn a_held_peer_is_released_only_by_a_fence_since_or_a_new_life() {
        let mut q = Quarantine::default();
        let m = member(1);
        assert_eq!(q.judge(&m, &hb(1, 0, false)), Verdict::Free);
        q.hold(
            "r2",
            1,
            &Report {
                fences: 2,
                ..Report::default()
            },
        );
        assert!(q.is_held("r2"));
        assert_eq!(
            q.judge(&m, &hb(1, 2, false)),
            Verdict::Held,
            "no fence since"
        );
        assert_eq!(
            q.judge(&m, &hb(1, 2, true)),
            Verdict::Held,
            "fenced, not since"
        );
        assert_eq!(q.judge(&m, &hb(1, 3, false)), Verdict::Released);
        assert!(!q.is_held("r2"));
        q.hold("r2", 1, &Report::default());
        assert_eq!(
            q.judge(&m, &hb(2, 0, false)),
            Verdict::Released,
            "a restart"
        );
        q.hold("r2", 1, &Report::default());
        assert_eq!(
            q.judge(&member(2), &hb(2, 0, false)),
            Verdict::Released,
            "a restart whose handshake came before its heartbeat"
        );
        q.hold(
            "r2",
            1,
            &Report {
                fences: 1,
                fenced: true,
                ..Report::default()
            },
        );
        assert_eq!(
            q.judge(&m, &hb(1, 1, true)),
            Verdict::Released,
            "the fence it was in when decided down never lifted"
        );
    }
}
