//! The link protocol: one QUIC connection per pair of nodes, agreed by both sides.
//!
//! Either node may open a connection (a seed join, a redial, a probe while the link is
//! suspect), so a pair can briefly have several. The **acceptor** of a connection decides
//! whether it becomes the pair's link and says so in `HelloAck`; the dialer adopts the
//! connection only on an accepting ack. So both sides always agree on a connection that has
//! been acked, and a loser is closed by its dialer.
//!
//! ```text
//! dialer                                   acceptor
//!   │── TLS (both certs, names checked) ──▶ │
//!   │── Hello{name, role, addr, inc, replace}▶│ decide(view, hello)
//!   │◀─ HelloAck{accepted | reason} ────────│ accepted: the new connection is the link
//!   │ accepted: adopt, close the old link    │           (the old one is closed)
//!   │ refused:  close this connection        │
//! ```
//!
//! [`decide`] is the acceptor's rule, in order:
//! 1. An older incarnation than the one known, while the known life is heard: refuse (a
//!    zombie). If the known life is silent the peer lost its state dir: accept.
//! 2. A newer incarnation: accept; the peer restarted.
//! 3. While this node has its own dial to the peer in flight, the designated dialer's
//!    connection wins (see [`designated_dialer`](crate::identity::designated_dialer)): the
//!    designated side refuses, the other accepts. This settles simultaneous dials.
//! 4. No link yet: accept.
//! 5. The current link is silent here, or the dialer says it cannot hear this side
//!    (`replace`): accept; a fresh connection recovers faster than a QUIC connection whose
//!    probe timer backed off during a long cut.
//! 6. Otherwise: refuse, the pair already has a working link.
//!
//! [`dial_due`] says when a node opens a connection: the designated dialer at once when
//! there is no link and at every probe interval while the link is silent; the other side
//! only after `fallback_after`, so that in the normal case only one side dials.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What the acceptor knows about its current relation with the dialing peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkView {
    /// A link to this peer is established.
    pub has_current: bool,
    /// The peer has been silent longer than the suspect window.
    pub current_silent: bool,
    /// This node has its own dial to the peer in flight.
    pub pending_dial: bool,
    /// The incarnation this node knows for the peer, if any.
    pub known_incarnation: Option<u64>,
    /// This node is the pair's designated dialer.
    pub i_am_designated: bool,
}

/// Why a connection was refused as the pair's link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// The hello came from an older life of the peer than the one this node hears.
    StaleIncarnation,
    /// The pair has a working link already.
    Duplicate,
    /// Both sides were dialing; the designated dialer's connection wins.
    SimultaneousDial,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::StaleIncarnation => "stale incarnation",
            Refusal::Duplicate => "duplicate connection",
            Refusal::SimultaneousDial => "simultaneous dial, the other connection wins",
        })
    }
}

/// The acceptor's verdict on a hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The connection becomes the link. `restarted` when the peer's incarnation changed.
    Accept {
        /// The hello carried another incarnation than the one known.
        restarted: bool,
    },
    /// The connection is refused; the dialer closes it.
    Refuse(Refusal),
}

/// The acceptor's rule (see the module doc for the order and the reasons).
pub fn decide(view: LinkView, incarnation: u64, replace: bool) -> Decision {
    if let Some(known) = view.known_incarnation {
        if incarnation < known {
            if view.has_current && !view.current_silent {
                return Decision::Refuse(Refusal::StaleIncarnation);
            }
            return Decision::Accept { restarted: true };
        }
        if incarnation > known {
            return Decision::Accept { restarted: true };
        }
    }
    if view.pending_dial {
        return if view.i_am_designated {
            Decision::Refuse(Refusal::SimultaneousDial)
        } else {
            Decision::Accept { restarted: false }
        };
    }
    if !view.has_current || view.current_silent || replace {
        return Decision::Accept { restarted: false };
    }
    Decision::Refuse(Refusal::Duplicate)
}

/// Timing of the dialing side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DialConfig {
    /// While the link is silent, the designated dialer opens a fresh connection this often.
    pub probe_interval: Duration,
    /// How long the non-designated side waits (no link, or a silent one) before it dials.
    pub fallback_after: Duration,
    /// Longest wait between redials after failures.
    pub max_backoff: Duration,
}

impl Default for DialConfig {
    fn default() -> Self {
        Self {
            probe_interval: Duration::from_millis(1000),
            fallback_after: Duration::from_millis(2500),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// Whether a node should open a connection to a peer now.
///
/// `trouble_for` is how long the pair has had no link, or a silent one (`None` when the link
/// is fine); `since_last_dial` is the time since this node's last attempt finished (`None` if
/// it never dialed); `failures` counts consecutive failed attempts, for the backoff.
pub fn dial_due(
    cfg: &DialConfig,
    i_am_designated: bool,
    trouble_for: Option<Duration>,
    since_last_dial: Option<Duration>,
    failures: u32,
) -> bool {
    let Some(trouble) = trouble_for else {
        return false;
    };
    if !i_am_designated && trouble < cfg.fallback_after {
        return false;
    }
    match since_last_dial {
        None => true,
        Some(elapsed) => elapsed >= backoff(cfg, failures),
    }
}

/// Wait before the next attempt after `failures` consecutive failures: 100 ms doubling, capped
/// at `max_backoff`, and never longer than the probe interval once the first failure is past
/// (a healed network should be found within about one probe interval).
pub fn backoff(cfg: &DialConfig, failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let exp = Duration::from_millis(100).saturating_mul(1u32 << failures.min(10).saturating_sub(1));
    exp.min(cfg.max_backoff)
        .min(cfg.probe_interval.max(Duration::from_millis(100)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> LinkView {
        LinkView {
            known_incarnation: Some(3),
            ..LinkView::default()
        }
    }

    #[test]
    fn first_connection_is_accepted() {
        assert_eq!(
            decide(LinkView::default(), 1, false),
            Decision::Accept { restarted: false }
        );
    }

    #[test]
    fn working_link_refuses_a_duplicate() {
        let v = LinkView {
            has_current: true,
            ..view()
        };
        assert_eq!(decide(v, 3, false), Decision::Refuse(Refusal::Duplicate));
    }

    #[test]
    fn silent_link_or_replace_request_is_replaced() {
        let silent = LinkView {
            has_current: true,
            current_silent: true,
            ..view()
        };
        assert_eq!(
            decide(silent, 3, false),
            Decision::Accept { restarted: false }
        );
        let heard = LinkView {
            has_current: true,
            ..view()
        };
        assert_eq!(
            decide(heard, 3, true),
            Decision::Accept { restarted: false }
        );
    }

    #[test]
    fn newer_incarnation_is_a_restart() {
        let v = LinkView {
            has_current: true,
            ..view()
        };
        assert_eq!(decide(v, 4, false), Decision::Accept { restarted: true });
    }

    #[test]
    fn zombie_is_refused_while_the_new_life_is_heard() {
        let v = LinkView {
            has_current: true,
            ..view()
        };
        assert_eq!(
            decide(v, 2, true),
            Decision::Refuse(Refusal::StaleIncarnation)
        );
        let lost_state = LinkView {
            has_current: true,
            current_silent: true,
            ..view()
        };
        assert_eq!(
            decide(lost_state, 1, false),
            Decision::Accept { restarted: true }
        );
    }

    /// Both nodes dial each other at once: each acceptor sees its own dial pending. Exactly
    /// one of the two connections is accepted, whichever order the hellos arrive in.
    #[test]
    fn simultaneous_dials_keep_exactly_one_connection() {
        for a_designated in [true, false] {
            let a = LinkView {
                pending_dial: true,
                i_am_designated: a_designated,
                ..LinkView::default()
            };
            let b = LinkView {
                pending_dial: true,
                i_am_designated: !a_designated,
                ..LinkView::default()
            };
            // a decides on b's connection, b on a's
            let a_accepts_bs = matches!(decide(a, 1, false), Decision::Accept { .. });
            let b_accepts_as = matches!(decide(b, 1, false), Decision::Accept { .. });
            assert!(a_accepts_bs ^ b_accepts_as);
            // the survivor is the designated dialer's connection
            assert_eq!(b_accepts_as, a_designated);
        }
    }

    #[test]
    fn only_the_designated_side_dials_at_first() {
        let cfg = DialConfig::default();
        let t = Some(Duration::from_millis(10));
        assert!(dial_due(&cfg, true, t, None, 0));
        assert!(!dial_due(&cfg, false, t, None, 0));
        assert!(dial_due(&cfg, false, Some(cfg.fallback_after), None, 0));
        assert!(!dial_due(&cfg, true, None, None, 0), "no trouble, no dial");
    }

    #[test]
    fn backoff_grows_and_is_capped_by_the_probe_interval() {
        let cfg = DialConfig::default();
        assert_eq!(backoff(&cfg, 0), Duration::ZERO);
        assert_eq!(backoff(&cfg, 1), Duration::from_millis(100));
        assert_eq!(backoff(&cfg, 2), Duration::from_millis(200));
        assert_eq!(backoff(&cfg, 30), cfg.probe_interval);
        assert!(!dial_due(
            &cfg,
            true,
            Some(Duration::from_secs(5)),
            Some(Duration::from_millis(150)),
            2
        ));
        assert!(dial_due(
            &cfg,
            true,
            Some(Duration::from_secs(5)),
            Some(Duration::from_millis(250)),
            2
        ));
    }
}
