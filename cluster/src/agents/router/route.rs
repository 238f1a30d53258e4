//! Routing one message: to the host, to a peer, or behind a lookup (see
//! [`crate::agents::routes`]).

use std::sync::Arc;

use tether_actors::call::ReplyTx;
use tether_actors::{AgentError, AgentId, Body, Delivery, Envelope, TraceContext};
use tracing::debug;

use super::Router;
use crate::agents::encode_for_wire;
use crate::agents::routes::{take_queue, Outgoing, Route};
use crate::directory::Location;

/// How long this node's senders of an agent that moved here wait for the barrier along their
/// old route (see [`Router::arrived`]) before they send here anyway.
const BARRIER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// What a delivery to this node's host came to.
pub(super) enum LocalOutcome {
    /// Handed to the agent (or held for its restart).
    Handed(AgentId),
    /// Refused for a reason that leaves the route as it is (answered or logged).
    Refused,
    /// The agent is not (or no longer) running here: its route is stale.
    Stale(AgentId),
}

/// What [`Router::deliver_if_hosted`] did.
enum HereOrNot {
    /// Handed to the host (or refused by it).
    Delivered(LocalOutcome),
    /// Not hosted here: the message, untouched.
    NotHere(Outgoing),
}

impl Router {
    /// Sends one message: at once if the agent is hosted here or its route is known, else
    /// queued in order behind a lookup.
    ///
    /// An agent hosted here has no route entry: with no entry, the host is asked first. A
    /// route being resolved is never bypassed, so that a message cannot overtake the ones
    /// queued before it while the agent was being found (or spawned here).
    ///
    /// Returns the target when the message went to an agent of this node (a handle may then
    /// keep a port into it).
    pub(super) fn route(&self, out: Outgoing) -> Option<AgentId> {
        use dashmap::Entry;
        // fast path: a known route, read without cloning the key
        enum Known {
            Local,
            Remote(Arc<Location>),
            Resolving,
            Absent,
        }
        let known = match self.routes.0.get(&out.target).as_deref() {
            Some(Route::Local) => Known::Local,
            Some(Route::Remote(loc)) => Known::Remote(loc.clone()),
            Some(Route::Resolving(_)) => Known::Resolving,
            None => Known::Absent,
        };
        let out = match known {
            Known::Local => return self.deliver_local_or_forget(out),
            Known::Remote(loc) => {
                self.deliver_remote(&loc, out);
                return None;
            }
            // no entry: an agent hosted here has none
            Known::Absent => match self.deliver_if_hosted(out) {
                HereOrNot::Delivered(outcome) => return self.forget_if_stale(outcome),
                HereOrNot::NotHere(out) => out,
            },
            Known::Resolving => out,
        };
        match self.routes.0.entry(out.target.clone()) {
            Entry::Occupied(mut o) => match o.get_mut() {
                Route::Local => {
                    drop(o);
                    self.deliver_local_or_forget(out)
                }
                Route::Remote(loc) => {
                    let loc = loc.clone();
                    drop(o);
                    self.deliver_remote(&loc, out);
                    None
                }
                Route::Resolving(q) => {
                    q.get_mut()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(out);
                    None
                }
            },
            Entry::Vacant(v) => {
                let target = out.target.clone();
                v.insert(Route::Resolving(std::sync::Mutex::new(vec![out])));
                if let Some(router) = self.myself.upgrade() {
                    tokio::spawn(async move { router.resolve(target).await });
                }
                None
            }
        }
    }

    /// [`Router::deliver_local`], forgetting the route when it turned out stale; returns the
    /// target when the message went to it.
    fn deliver_local_or_forget(&self, out: Outgoing) -> Option<AgentId> {
        let outcome = self.deliver_local(out);
        self.forget_if_stale(outcome)
    }

    /// Forgets the route of a stale delivery; returns the target of one that was handed over.
    fn forget_if_stale(&self, outcome: LocalOutcome) -> Option<AgentId> {
        match outcome {
            LocalOutcome::Handed(target) => Some(target),
            LocalOutcome::Refused => None,
            LocalOutcome::Stale(target) => {
                self.routes.forget(&target);
                None
            }
        }
    }

    /// An agent moved here runs (see `Request::Barrier`). If this node's senders had a route
    /// to it elsewhere, what they sent that way is still coming back relayed: their new
    /// messages wait (the route is being resolved) until a barrier passed along the old way
    /// comes back, then the route is resolved again (here, as a rule) and they go on, in order.
    pub(crate) fn arrived(self: &Arc<Self>, id: AgentId) {
        let via = {
            let Some(mut entry) = self.routes.0.get_mut(&id) else {
                return; // no route: this node's senders find it here already
            };
            let via = match &*entry {
                Route::Remote(loc) if loc.node != self.me => loc.node.clone(),
                _ => return,
            };
            *entry = Route::Resolving(std::sync::Mutex::new(Vec::new()));
            via
        };
        let me = self.clone();
        tokio::spawn(async move {
            let barrier = |req| crate::agents::protocol::Request::Barrier {
                req,
                id: id.clone(),
                relayed: true,
            };
            if let Err(e) = me.io.request(&via, barrier, BARRIER_WAIT).await {
                debug!(agent = %id, %via, error = %e, "no barrier back along the old way");
            }
            me.resolve(id).await;
        });
    }

    pub(super) async fn resolve(&self, target: AgentId) {
        let found = self.lookup(&target).await;
        // take the queue and install the route under the entry lock, so that no message
        // sent meanwhile overtakes the queued ones
        let queued = {
            let mut entry = match self.routes.0.get_mut(&target) {
                Some(e) => e,
                None => return,
            };
            let queued = match std::mem::replace(&mut *entry, Route::Local) {
                Route::Resolving(q) => take_queue(q),
                other => {
                    *entry = other;
                    Vec::new()
                }
            };
            match &found {
                Ok(loc) if loc.node == self.me => *entry = Route::Local,
                Ok(loc) => *entry = Route::Remote(Arc::new(loc.clone())),
                Err(_) => {}
            }
            if found.is_ok() {
                let mut stale = false;
                for out in queued {
                    match &*entry {
                        Route::Local => {
                            stale |= matches!(self.deliver_local(out), LocalOutcome::Stale(_));
                        }
                        Route::Remote(loc) => self.deliver_remote(loc, out),
                        Route::Resolving(_) => unreachable!("the route was just installed"),
                    }
                }
                // forget a stale route only once the entry's lock is released (DashMap
                // locks are not re-entrant)
                drop(entry);
                if stale {
                    self.routes.forget(&target);
                }
                return;
            }
            queued
        };
        self.routes
            .0
            .remove_if(&target, |_, r| matches!(r, Route::Local));
        // the lookup failed: every queued message fails with its error, except tells that a
        // local node keeps in its outbox because the cluster cannot be reached
        if let Err(e) = found {
            let keep = self.keeps_outbox() && e.is_retryable();
            for out in queued {
                if keep && out.ask.is_none() {
                    let (target, seq, trace) = (out.target.clone(), out.seq, out.trace);
                    if let Err((e, _)) = self.queue(out) {
                        self.tell_failed(&target, seq, &trace, &e);
                    }
                    continue;
                }
                self.fail(out, e.clone());
            }
        }
    }

    fn fail(&self, out: Outgoing, e: AgentError) {
        match out.ask {
            Some((tx, _)) => {
                let _ = tx.send(Err(e));
            }
            None => self.tell_failed(&out.target, out.seq, &out.trace, &e),
        }
    }

    /// Delivers to an agent of this node. A stale outcome (the agent is not here any more)
    /// is for the caller to forget, outside any routes lock.
    fn deliver_local(&self, out: Outgoing) -> LocalOutcome {
        let (target, trace) = (out.target.clone(), out.trace);
        let (d, body, reply) = local_parts(out);
        self.local_outcome(target, trace, self.host.try_deliver(d, body, reply))
    }

    /// [`Router::deliver_local`] if the target runs (or restarts) here, with one look at the
    /// host; else the message comes back untouched.
    fn deliver_if_hosted(&self, out: Outgoing) -> HereOrNot {
        let (target, trace) = (out.target.clone(), out.trace);
        let mut slot = Some(out);
        let done = self.host.deliver_if_here(&target, || {
            local_parts(slot.take().expect("the message is taken once"))
        });
        match done {
            Some(result) => HereOrNot::Delivered(self.local_outcome(target, trace, result)),
            None => HereOrNot::NotHere(
                slot.take()
                    .expect("not hosted here: the message was not taken"),
            ),
        }
    }

    /// After a delivery here: a failed tell is counted and logged, a failed ask is answered.
    fn local_outcome(
        &self,
        target: AgentId,
        trace: TraceContext,
        result: Result<(), (AgentError, Option<ReplyTx>)>,
    ) -> LocalOutcome {
        let Err((e, reply)) = result else {
            return LocalOutcome::Handed(target);
        };
        let stale = matches!(
            e,
            AgentError::NotFound { .. } | AgentError::NotHere { .. } | AgentError::Failed { .. }
        );
        match reply {
            // the agent answers an asker directly; if the instance fails with the message in
            // its mailbox, the asker sees the reply dropped (see `ask`)
            Some(tx) => {
                let _ = tx.send(Err(e));
            }
            None => self.tell_failed(&target, 0, &trace, &e),
        }
        if stale {
            LocalOutcome::Stale(target)
        } else {
            LocalOutcome::Refused
        }
    }

    fn deliver_remote(&self, loc: &Location, out: Outgoing) {
        let target = out.target.clone();
        let (encoding, body) = match encode_for_wire(out.body) {
            Ok(x) => x,
            Err(e) => {
                return match out.ask {
                    Some((tx, _)) => {
                        let _ = tx.send(Err(e));
                    }
                    None => self.tell_failed(&target, out.seq, &out.trace, &e),
                }
            }
        };
        let env = Envelope {
            target,
            epoch: loc.epoch,
            sender: out.sender,
            seq: out.seq,
            trace: out.trace,
            contract: out.contract,
            encoding,
            body,
        };
        match out.ask {
            None => {
                debug!(target = %env.target, node = %loc.node, trace_id = %env.trace.trace_id_hex(), "tell");
                self.io.send_tell(&loc.node, env);
            }
            Some((tx, deadline)) => {
                debug!(target = %env.target, node = %loc.node, trace_id = %env.trace.trace_id_hex(), "ask");
                self.io.send_ask(&loc.node, env, tx, deadline);
            }
        }
    }
}

/// A message for an agent of this node, as the host takes it (an asker's reply sender goes
/// with it: the agent answers directly).
fn local_parts(out: Outgoing) -> (Delivery, Body, Option<ReplyTx>) {
    let d = Delivery {
        target: out.target,
        epoch: 0,
        sender: out.sender,
        seq: out.seq,
        trace: out.trace,
        contract: match &out.body {
            Body::Typed(_) => None,
            Body::Encoded(..) => Some(out.contract),
        },
        in_process: true,
    };
    (d, out.body, out.ask.map(|(tx, _)| tx.into()))
}
