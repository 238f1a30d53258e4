//! Store and forward on a local node: which tells wait in the [outbox](super::outbox), and how
//! they leave it.
//!
//! ```text
//! tell ──▶ must_queue? ── no ──▶ route (at once, or behind a lookup) ──▶ lookup fails because
//!             │                                                         the cluster cannot be
//!            yes: the target has queued messages, or its host / the     reached: queued too
//!             │   directory owner is not up from here
//!             ▼
//!          outbox (on disk, bounded: full ⇒ the sender gets AgentError::OutboxFull)
//!             │  drainer: on every membership change, and every 500 ms while not empty
//!             ▼
//!          for each message, oldest first, skipping targets already blocked in this pass:
//!            lookup ─▶ Deliver (answered once in the mailbox) ─▶ ack (removed from the file)
//!              unreachable / timeout / refused by a fenced node ─▶ target blocked until the
//!                                                                  next pass (order kept)
//!              duplicate ─▶ it was delivered before (an answer lost, a restart): ack
//!              no such agent, failed for good, contract ─▶ logged with its trace id,
//!                                                         counted as dropped, ack
//! ```
//!
//! Only remote nodes are ever down for a local node; a local node itself goes `offline`
//! (membership never downs it) and its agents keep running.
//!
//! **Guarantees.** A queued tell is delivered at least once and in order per target, across
//! restarts of the local node; the receiver's sequence check (sessions: the sender's
//! incarnation) turns a resend into a refused duplicate, so it is applied once as long as the
//! activation that received it lives (a failover starts a new activation, which has not seen
//! the old numbers). A tell sent directly is at most once, as everywhere: one in flight when
//! the link is cut, before the node sees the cluster as unreachable (about 1.2 s), is lost.
//! Asks are never queued: they fail at once with the reason.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;

use tether_actors::{AgentError, AgentId, Body, Envelope};
use tracing::{debug, info, warn};

use super::outbox::Outbox;
use super::protocol::{Answer, Request};
use super::{encode_for_wire, AgentSystem, Outgoing, Route};
use crate::detector::PeerState;

/// How long one queued message may take to be delivered before the pass moves on.
const DELIVER_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a non-empty outbox is tried again without a membership change.
const DRAIN_RETRY: Duration = Duration::from_millis(500);

/// How a tell left the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// On its way (or delivered, for an agent of this node).
    Now,
    /// Kept in the outbox until its target can be reached; `depth` messages wait now.
    Queued {
        /// Messages in the outbox after this one was queued.
        depth: usize,
    },
}

/// The outbox's figures, for status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutboxCounters {
    /// Messages waiting.
    pub depth: u64,
    /// The bound.
    pub max: u64,
    /// Messages delivered from the outbox since the node started.
    pub delivered: u64,
    /// Messages given up (the target does not exist, failed for good, or refused the
    /// contract); each was logged with its trace id.
    pub dropped: u64,
}

/// What became of one queued message in a pass.
enum Outcome {
    Delivered,
    /// Try again in a later pass; later messages to the same target wait.
    Retry(AgentError),
    /// Drop it (logged).
    GiveUp(AgentError),
}

fn lock(ob: &std::sync::Mutex<Outbox>) -> std::sync::MutexGuard<'_, Outbox> {
    ob.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl AgentSystem {
    /// Whether a tell to `target` must wait in the outbox: it has messages queued there
    /// (order), or its host or directory owner is not up from here. Always false on remote
    /// nodes, which have no outbox.
    pub(super) fn must_queue(&self, target: &AgentId) -> bool {
        let Some(ob) = &self.outbox else { return false };
        if self.outbox_depth.load(Ordering::Acquire) != 0 && lock(ob).holds(target) {
            return true;
        }
        if self.host.epoch_of(target).is_some() {
            return false;
        }
        let Ok(net) = self.net() else { return false };
        let host = match self.routes.get(target).as_deref() {
            Some(Route::Local | Route::Resolving(_)) => return false,
            Some(Route::Remote(loc)) => Some(loc.node.clone()),
            None => None,
        };
        let node = match host {
            Some(n) => n,
            None => match self.owner_of(target) {
                Ok(owner) => owner,
                Err(_) => return true, // no remote node is up: no directory to ask
            },
        };
        net.peer_state(&node) != Some(PeerState::Up)
    }

    /// Puts a tell in the outbox. The body comes back with the error when it cannot be.
    pub(super) fn queue(&self, out: Outgoing) -> Result<usize, (AgentError, Body)> {
        let Some(ob) = &self.outbox else {
            return Err((
                AgentError::Internal("this node has no outbox".into()),
                out.body,
            ));
        };
        let (encoding, body) = match encode_for_wire(out.body) {
            Ok(x) => x,
            Err(e) => {
                return Err((
                    e,
                    Body::Encoded(tether_actors::Encoding::Json, Default::default()),
                ))
            }
        };
        let env = Envelope {
            target: out.target,
            epoch: 0,
            sender: out.sender,
            seq: out.seq,
            trace: out.trace,
            contract: out.contract,
            encoding,
            body,
        };
        let mut ob = lock(ob);
        if ob.depth() >= ob.max() {
            let e = super::outbox::OutboxError::Full { max: ob.max() };
            warn!(target = %env.target, trace_id = %env.trace.trace_id_hex(), error = %e, "tell refused");
            return Err((
                AgentError::OutboxFull(e.to_string()),
                Body::Encoded(env.encoding, env.body),
            ));
        }
        let (target, trace) = (env.target.clone(), env.trace);
        match ob.push(env, tether_actors::host::now_unix_ms()) {
            Ok(depth) => {
                self.outbox_depth.store(depth, Ordering::Release);
                if depth == 1 {
                    info!(%target, "outbox: tells to unreachable agents are queued from now on");
                }
                debug!(%target, trace_id = %trace.trace_id_hex(), depth, "tell queued");
                Ok(depth)
            }
            Err(e) => {
                warn!(%target, trace_id = %trace.trace_id_hex(), error = %e, "tell could not be queued");
                Err((
                    AgentError::Internal(e.to_string()),
                    Body::Encoded(tether_actors::Encoding::Json, Default::default()),
                ))
            }
        }
    }

    /// The outbox's figures; `None` on a node without one.
    pub fn outbox_counters(&self) -> Option<OutboxCounters> {
        let ob = self.outbox.as_ref()?;
        let ob = lock(ob);
        Some(OutboxCounters {
            depth: ob.depth() as u64,
            max: ob.max() as u64,
            delivered: self.outbox_delivered.load(Ordering::Relaxed),
            dropped: self.outbox_dropped.load(Ordering::Relaxed),
        })
    }

    /// Drains the outbox whenever membership changes, and every [`DRAIN_RETRY`] while it is
    /// not empty, until the node stops.
    pub(crate) async fn drainer(
        sys: Weak<AgentSystem>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let Some(wake) = sys.upgrade().map(|s| s.outbox_wake.clone()) else {
            return;
        };
        loop {
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(DRAIN_RETRY) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let Some(s) = sys.upgrade() else { return };
            if s.outbox_depth.load(Ordering::Acquire) != 0 {
                s.drain_once().await;
            }
        }
    }

    /// One pass over the outbox, oldest message first.
    async fn drain_once(&self) {
        let Some(ob) = &self.outbox else { return };
        let pending = lock(ob).pending();
        let mut blocked: HashSet<AgentId> = HashSet::new();
        let (mut delivered, mut retry) = (0usize, 0usize);
        for q in pending {
            if blocked.contains(&q.env.target) {
                continue;
            }
            let outcome = self.deliver_queued(&q.env).await;
            let (target, trace) = (&q.env.target, q.env.trace.trace_id_hex());
            match outcome {
                Outcome::Delivered => {
                    delivered += 1;
                    self.outbox_delivered.fetch_add(1, Ordering::Relaxed);
                }
                Outcome::Retry(e) => {
                    debug!(%target, trace_id = %trace, error = %e, "outbox: not yet");
                    retry += 1;
                    blocked.insert(q.env.target.clone());
                    continue;
                }
                Outcome::GiveUp(e) => {
                    self.outbox_dropped.fetch_add(1, Ordering::Relaxed);
                    self.tell_failures.fetch_add(1, Ordering::Relaxed);
                    warn!(%target, seq = q.env.seq, trace_id = %trace, error = %e,
                        queued_ms = q.queued_ms, "outbox: tell given up");
                }
            }
            let mut ob = lock(ob);
            if let Err(e) = ob.ack(q.id) {
                warn!(error = %e, "outbox: a delivered message could not be marked; after a \
                    restart it is sent again and refused as a duplicate");
            }
            self.outbox_depth.store(ob.depth(), Ordering::Release);
        }
        if delivered > 0 {
            let depth = self.outbox_depth.load(Ordering::Acquire);
            info!(
                delivered,
                waiting = depth,
                blocked = blocked.len(),
                "outbox drained"
            );
        } else if retry > 0 {
            debug!(blocked = blocked.len(), "outbox: no target reachable yet");
        }
    }

    /// Delivers one queued message and waits for the host to confirm it reached the mailbox.
    async fn deliver_queued(&self, env: &Envelope) -> Outcome {
        let target = &env.target;
        let loc = match self.lookup(target).await {
            Ok(loc) => loc,
            Err(e @ (AgentError::NotFound { .. } | AgentError::Failed { .. })) => {
                return Outcome::GiveUp(e)
            }
            Err(e) => return Outcome::Retry(e),
        };
        let mut env = env.clone();
        env.epoch = loc.epoch;
        let result = if loc.node == self.me {
            self.deliver_envelope(env, None).map_err(|(e, _)| e)
        } else {
            let req = Request::Deliver { req: 0, env };
            match self.request(&loc.node, req, DELIVER_TIMEOUT).await {
                Ok(Answer::Delivered) => Ok(()),
                Ok(other) => Err(AgentError::Internal(format!(
                    "unexpected answer to a delivery: {other:?}"
                ))),
                Err(e) => Err(e),
            }
        };
        match result {
            Ok(()) | Err(AgentError::Duplicate { .. }) => Outcome::Delivered,
            Err(
                e @ (AgentError::Contract { .. }
                | AgentError::BadPayload { .. }
                | AgentError::Failed { .. }),
            ) => Outcome::GiveUp(e),
            Err(e) => {
                // the route was stale (moved, newer epoch) or the host went away: look it up
                // again in the next pass
                self.forget_route(target);
                Outcome::Retry(e)
            }
        }
    }
}
