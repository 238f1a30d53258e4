//! Store and forward: how tells leave a local node's [outbox](crate::outbox), sans-IO.
//!
//! ```text
//! tell ──▶ the node's send path: must it wait? ── no ──▶ sent at once (or behind a lookup)
//!            yes: the target has queued messages, or its host / directory owner is not up
//!             ▼
//!          outbox (on disk, bounded: full ⇒ the sender gets AgentError::OutboxFull)
//!             │  a pass: at every membership change, and every 500 ms while not empty
//!             ▼
//!          for each message, oldest first, skipping targets already blocked in this pass:
//!            lookup ─▶ Deliver (answered once in the mailbox) ─▶ ack (removed from the log)
//!              unreachable / timeout / refused by a fenced node ─▶ target blocked until the
//!                                                                  next pass (order kept)
//!              duplicate ─▶ it was delivered before (an answer lost, a restart): ack
//!              no such agent, failed for good, contract ─▶ logged with its trace id,
//!                                                         counted as dropped, ack
//! ```
//!
//! One message is in flight at a time: a pass waits for each outcome before it takes the next,
//! so a target's messages reach it in queue order. The lookup is a directory request of this
//! node; the delivery is carried out by the node ([`Output::Deliver`]) and reported back.
//!
//! **Guarantees.** A queued tell is delivered at least once and in order per target, across
//! restarts of the local node; the receiver's sequence check (sessions: the sender's
//! incarnation) turns a resend into a refused duplicate, so it is applied once as long as the
//! activation that received it lives (a failover starts a new activation, which has not seen
//! the old numbers). Asks are never queued: they fail at once with the reason.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use tether_actors::{AgentError, AgentId};
use tether_cluster::core::{Output, LOOKUP_TIMEOUT};
use tether_cluster::directory::{self, DirAnswer, DirMsg};
use tether_cluster::membership::detector::PeerState;
use tether_cluster::role::{Cx, Queued};
use tracing::{debug, info, warn};

/// How often a non-empty outbox is tried again without a membership change.
pub const DRAIN_RETRY: Duration = Duration::from_millis(500);

/// What became of one queued message in a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It reached the agent's mailbox (or had before): acknowledged.
    Delivered,
    /// Try again in a later pass; later messages to the same target wait.
    Retry(AgentError),
    /// Dropped (logged): the target does not exist, failed for good, or refuses it.
    GiveUp(AgentError),
}

impl Outcome {
    /// The outcome of a lookup that failed.
    fn of_lookup(e: AgentError) -> Self {
        match e {
            AgentError::NotFound { .. } | AgentError::Failed { .. } => Outcome::GiveUp(e),
            e => Outcome::Retry(e),
        }
    }

    /// The outcome of a delivery.
    pub fn of_delivery(result: Result<(), AgentError>) -> Self {
        match result {
            Ok(()) | Err(AgentError::Duplicate { .. }) => Outcome::Delivered,
            Err(
                e @ (AgentError::Contract { .. }
                | AgentError::BadPayload { .. }
                | AgentError::Failed { .. }),
            ) => Outcome::GiveUp(e),
            // the route was stale (moved, newer epoch) or the host went away: look it up again
            // in the next pass
            Err(e) => Outcome::Retry(e),
        }
    }
}

/// Where the message in flight is.
#[derive(Debug)]
enum Step {
    LookingUp(u64),
    Delivering,
}

#[derive(Debug)]
struct Pass {
    pending: VecDeque<Queued>,
    blocked: HashSet<AgentId>,
    current: Option<(Queued, Step)>,
    delivered: usize,
    retry: usize,
}

/// What a pass asks of the outbox.
#[derive(Debug, Clone, PartialEq)]
pub enum Settled {
    /// Remove message `id` from the outbox: delivered (`true`) or given up (`false`).
    Ack(u64, bool),
}

/// The drain passes of one local node.
#[derive(Debug, Default)]
pub struct Drain {
    pass: Option<Pass>,
    last_end: Option<Instant>,
}

impl Drain {
    /// Whether a pass is under way.
    pub fn running(&self) -> bool {
        self.pass.is_some()
    }

    /// Starts a pass over `pending` (oldest first) unless one runs; `due` says whether one
    /// is due by time (a tick) rather than asked for (a membership change).
    pub fn start(&mut self, cx: &mut Cx<'_>, pending: Vec<Queued>, by_time: bool) -> Vec<Settled> {
        if self.pass.is_some() || pending.is_empty() {
            return Vec::new();
        }
        if by_time && self.last_end.is_some_and(|t| cx.now < t + DRAIN_RETRY) {
            return Vec::new();
        }
        self.pass = Some(Pass {
            pending: pending.into(),
            blocked: HashSet::new(),
            current: None,
            delivered: 0,
            retry: 0,
        });
        self.advance(cx)
    }

    /// Takes the next message of the pass until one is in flight or the pass ends.
    fn advance(&mut self, cx: &mut Cx<'_>) -> Vec<Settled> {
        let mut settled = Vec::new();
        loop {
            let Some(pass) = self.pass.as_mut() else {
                return settled;
            };
            if pass.current.is_some() {
                return settled;
            }
            let Some(q) = pass.pending.pop_front() else {
                self.end(cx);
                return settled;
            };
            if pass.blocked.contains(&q.env.target) {
                continue;
            }
            if let Some(done) = self.send_next(cx, q) {
                settled.extend(done);
            }
        }
    }

    /// Starts the delivery of `q`: at once when it runs here, else after a lookup. Returns what
    /// settled at once, if it did.
    fn send_next(&mut self, cx: &mut Cx<'_>, q: Queued) -> Option<Vec<Settled>> {
        let pass = self.pass.as_mut().expect("a pass runs");
        if let Some(epoch) = cx.host.epoch_of(&q.env.target) {
            let mut env = q.env.clone();
            env.epoch = epoch;
            let node = cx.me().to_owned();
            cx.emit(Output::Deliver {
                qid: q.id,
                node,
                env,
            });
            pass.current = Some((q, Step::Delivering));
            return None;
        }
        let view = cx.up_view();
        let owner = directory::owner(q.env.target.as_str(), view.remotes()).map(str::to_owned);
        let looked_up = match owner {
            None => Err(AgentError::NoDirectory(
                "no remote node is reachable from this node".into(),
            )),
            Some(owner) => {
                let id = q.env.target.clone();
                cx.request(&owner, LOOKUP_TIMEOUT, |req| DirMsg::Lookup { req, id })
            }
        };
        match looked_up {
            Ok(req) => {
                pass.current = Some((q, Step::LookingUp(req)));
                None
            }
            Err(e) => Some(self.outcome(cx, q, Outcome::Retry(e))),
        }
    }

    /// The answer to a lookup of the pass. Returns what settled.
    pub fn answer(
        &mut self,
        cx: &mut Cx<'_>,
        req: u64,
        result: Result<DirAnswer, AgentError>,
    ) -> Vec<Settled> {
        let Some(pass) = self.pass.as_mut() else {
            return Vec::new();
        };
        let Some((q, Step::LookingUp(r))) = pass.current.take() else {
            return Vec::new();
        };
        if r != req {
            pass.current = Some((q, Step::LookingUp(r)));
            return Vec::new();
        }
        let loc = match result {
            Ok(DirAnswer::Location(Some(loc))) => loc,
            Ok(DirAnswer::Location(None)) => {
                let e = AgentError::NotFound {
                    id: q.env.target.to_string(),
                };
                return self.settle(cx, q, Outcome::GiveUp(e));
            }
            Ok(other) => {
                let e = AgentError::Internal(format!("unexpected answer: {other:?}"));
                return self.settle(cx, q, Outcome::Retry(e));
            }
            Err(e) => return self.settle(cx, q, Outcome::of_lookup(e)),
        };
        if loc.node != cx.me() && cx.state_of(&loc.node) != Some(PeerState::Up) {
            let e = AgentError::NodeUnreachable { node: loc.node };
            return self.settle(cx, q, Outcome::Retry(e));
        }
        let mut env = q.env.clone();
        env.epoch = loc.epoch;
        cx.emit(Output::Deliver {
            qid: q.id,
            node: loc.node,
            env,
        });
        pass.current = Some((q, Step::Delivering));
        Vec::new()
    }

    /// The result of the delivery in flight. Returns what settled.
    pub fn delivered(
        &mut self,
        cx: &mut Cx<'_>,
        qid: u64,
        result: Result<(), AgentError>,
    ) -> Vec<Settled> {
        let Some(pass) = self.pass.as_mut() else {
            return Vec::new();
        };
        match pass.current.take() {
            Some((q, Step::Delivering)) if q.id == qid => {
                self.settle(cx, q, Outcome::of_delivery(result))
            }
            other => {
                pass.current = other;
                Vec::new()
            }
        }
    }

    fn settle(&mut self, cx: &mut Cx<'_>, q: Queued, outcome: Outcome) -> Vec<Settled> {
        let mut settled = self.outcome(cx, q, outcome);
        settled.extend(self.advance(cx));
        settled
    }

    /// Records what became of `q`.
    fn outcome(&mut self, _cx: &Cx<'_>, q: Queued, outcome: Outcome) -> Vec<Settled> {
        let Some(pass) = self.pass.as_mut() else {
            return Vec::new();
        };
        let (target, trace) = (&q.env.target, q.env.trace.trace_id_hex());
        match outcome {
            Outcome::Delivered => {
                pass.delivered += 1;
                vec![Settled::Ack(q.id, true)]
            }
            Outcome::Retry(e) => {
                debug!(%target, trace_id = %trace, error = %e, "outbox: not yet");
                pass.retry += 1;
                pass.blocked.insert(q.env.target.clone());
                Vec::new()
            }
            Outcome::GiveUp(e) => {
                warn!(%target, seq = q.env.seq, trace_id = %trace, error = %e,
                    queued_ms = q.queued_ms, "outbox: tell given up");
                vec![Settled::Ack(q.id, false)]
            }
        }
    }

    fn end(&mut self, cx: &Cx<'_>) {
        let Some(pass) = self.pass.take() else { return };
        self.last_end = Some(cx.now);
        if pass.delivered > 0 {
            info!(
                delivered = pass.delivered,
                blocked = pass.blocked.len(),
                "outbox drained"
            );
        } else if pass.retry > 0 {
            debug!(
                blocked = pass.blocked.len(),
                "outbox: no target reachable yet"
            );
        }
    }
}
