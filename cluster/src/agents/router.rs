//! The send path: [`Router`] numbers a message, checks where it may go, and hands it to the
//! host, a peer's queue, or a local node's outbox (see the [module doc](super)).

mod route;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tether_actors::call::{Call, ReplyTx};
use tether_actors::origin::CURRENT_AGENT;
use tether_actors::router::{ReplyRx, SendAs};
use tether_actors::PortCache;
use tether_actors::{
    Activation, AgentError, AgentId, Body, Contract, Envelope, Host, IdHash, TraceContext,
};
use tokio::sync::oneshot;

use super::peer_io::PeerIo;
use super::routes::{Outgoing, Routes};
use super::{encode_for_wire, ControlRef, Counters, SpawnOptions, Target};
use crate::directory::{AgentSpec, DirAnswer, Location};
use crate::membership::detector::PeerState;
use crate::role::Claim;

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

/// The send path of one node.
pub struct Router {
    me: String,
    /// `me` as the sender of this node's own messages (shared, not copied per message).
    me_sender: Arc<str>,
    host: Arc<Host>,
    control: ControlRef,
    pub(crate) io: Arc<PeerIo>,
    pub(crate) routes: Arc<Routes>,
    pub(crate) counters: Arc<Counters>,
    /// Per target: the last number this node (as a sender) gave it.
    node_seqs: DashMap<AgentId, u64, IdHash>,
    /// Per (agent sender, target): the last number given.
    seqs: DashMap<(Arc<str>, AgentId), u64>,
    /// Added to every sequence number this node assigns: its incarnation, shifted (see
    /// [`tether_actors::host::SESSION_SHIFT`]), so that numbers keep growing across restarts.
    seq_base: u64,
    /// This router, for the lookups it starts in tasks of their own.
    myself: std::sync::Weak<Router>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("me", &self.me).finish()
    }
}

impl Router {
    pub(crate) fn new(
        me: &str,
        incarnation: u64,
        host: Arc<Host>,
        control: ControlRef,
        (io, routes, counters): (Arc<PeerIo>, Arc<Routes>, Arc<Counters>),
    ) -> Arc<Self> {
        let router = Arc::new_cyclic(|myself| Self {
            myself: myself.clone(),
            me: me.to_owned(),
            me_sender: me.into(),
            host,
            control,
            io,
            routes,
            counters,
            node_seqs: DashMap::default(),
            seqs: DashMap::new(),
            seq_base: incarnation << tether_actors::host::SESSION_SHIFT,
        });
        // an agent that moved here: this node's senders switch to it once nothing overtakes
        let arrivals = Arc::downgrade(&router);
        router
            .host
            .set_arrival_listener(Arc::new(move |id, _source| {
                if let Some(r) = arrivals.upgrade() {
                    r.arrived(id.clone());
                }
            }));
        router
    }

    /// The agents this node hosts.
    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// Asks waiting for an answer from a peer.
    pub fn pending_asks(&self) -> usize {
        self.io.pending()
    }

    // ---------------------------------------------------------------- spawning and lookups

    /// Get-or-spawn `id` with `args` (`opts.placement` overrides the kind's labels).
    ///
    /// # Errors
    /// [`AgentError`]: placement and local-only rules, unknown kind, no directory, unreachable
    /// node, failed init, timeout.
    pub async fn spawn(
        &self,
        id: AgentId,
        args: Body,
        opts: SpawnOptions,
        target: Target,
    ) -> Result<Activation, AgentError> {
        let SpawnOptions {
            placement,
            policy,
            group,
            durability,
        } = opts;
        if group.is_some() && target == Target::Placed {
            return Err(AgentError::Placement {
                reason: "a supervisor group lives on one node: name the node (--on) to spawn \
                         into a group"
                    .into(),
            });
        }
        let (placement, args) = match self.host.kind(id.kind()) {
            Ok(kind) => {
                let (p, args) = kind.placement(args)?;
                (placement.unwrap_or(p), args)
            }
            // the kind lives elsewhere: the labels are the user's or the defaults
            Err(_) => (placement.unwrap_or_default(), args),
        };
        let (args_encoding, args) = encode_for_wire(args)?;
        let claim = Claim {
            id,
            spec: AgentSpec {
                args_encoding,
                args,
                placement,
                policy,
                group,
                durability,
            },
            target: None,
            trace: TraceContext::current_or_new(),
            requester: self.me.clone(),
        };
        let act = match self.control.spawn(claim, target).await? {
            DirAnswer::Activation(a) => a,
            other => {
                return Err(AgentError::Internal(format!(
                    "unexpected answer to a spawn: {other:?}"
                )))
            }
        };
        let loc = Location {
            node: act.node.clone(),
            epoch: act.epoch,
        };
        self.routes.set(&self.me, &act.id, &loc);
        Ok(act)
    }

    /// Where `id` runs, asking its directory owner if needed.
    ///
    /// # Errors
    /// [`AgentError::NotFound`] if it runs nowhere, or why it cannot be told.
    pub async fn lookup(&self, id: &AgentId) -> Result<Location, AgentError> {
        if let Some(epoch) = self.host.epoch_of(id) {
            return Ok(Location {
                node: self.me.clone(),
                epoch,
            });
        }
        let loc = match self.control.lookup(id).await {
            Ok(Ok(DirAnswer::Location(Some(loc)))) => loc,
            Ok(Ok(DirAnswer::Location(None))) => {
                return Err(AgentError::NotFound { id: id.to_string() })
            }
            Ok(Ok(other)) => {
                return Err(AgentError::Internal(format!(
                    "unexpected answer to a lookup: {other:?}"
                )))
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(AgentError::Internal("the node is stopping".into())),
        };
        self.routes.set(&self.me, id, &loc);
        Ok(loc)
    }

    // ---------------------------------------------------------------- telling

    /// Tells `target`: sent now, or, on a local node that cannot reach it, kept in the outbox.
    ///
    /// # Errors
    /// Local-only rules, a full outbox ([`AgentError::OutboxFull`]); the body comes back.
    pub fn tell_or_queue(
        &self,
        target: &AgentId,
        body: Body,
        contract: Contract,
    ) -> Result<Sent, (AgentError, Body)> {
        self.tell_via(target, None, body, contract, None)
    }

    /// [`Router::tell_or_queue`], through a handle's port when it has one (see [`PortCache`]).
    /// A tell takes the port only while the outbox is empty: one waiting in it for the same
    /// target must not be overtaken.
    fn tell_via(
        &self,
        target: &AgentId,
        port: Option<&PortCache>,
        body: Body,
        contract: Contract,
        from: Option<&SendAs>,
    ) -> Result<Sent, (AgentError, Body)> {
        let out = self.outgoing(target, body, contract, from)?;
        let outbox_empty = self.control.outbox_depth().unwrap_or(0) == 0;
        let out = match port {
            Some(port) if outbox_empty => match Self::through_port(port, out) {
                None => return Ok(Sent::Now),
                Some(out) => out,
            },
            _ => out,
        };
        if self.must_queue(&out.target) {
            return self.queue(out).map(|depth| Sent::Queued { depth });
        }
        self.route_and_keep_port(out, port);
        Ok(Sent::Now)
    }

    /// Whether a tell to `target` must wait in the outbox: it has messages queued there
    /// (order), or its host or directory owner is not up from here. Always false on a node
    /// without an outbox.
    fn must_queue(&self, target: &AgentId) -> bool {
        let Some(depth) = self.control.outbox_depth() else {
            return false;
        };
        if depth != 0 && self.control.outbox_holds(target) {
            return true;
        }
        if self.host.epoch_of(target).is_some() {
            return false;
        }
        let view = self.control.view();
        let node = match self.routes.remote_host(target) {
            Some(Some(host)) => host,
            Some(None) => return false, // resolving: it goes behind the lookup
            None => match view.owner_of(target.as_str()) {
                Some(owner) => owner.to_owned(),
                None => return true, // no remote node is up: no directory to ask
            },
        };
        view.state_of(&node) != Some(PeerState::Up)
    }

    /// Puts a tell in the outbox. The body comes back with the error when it cannot be.
    fn queue(&self, out: Outgoing) -> Result<usize, (AgentError, Body)> {
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
            body: body.clone(),
        };
        self.control
            .queue(env)
            .map_err(|e| (e, Body::Encoded(encoding, body)))
    }

    /// The sender of a message: the agent it comes from (named by its handle or context, or
    /// running the current task), or this node.
    fn sender(&self, from: Option<&SendAs>) -> (Arc<str>, bool) {
        if let Some(f) = from {
            return (f.sender.clone(), f.local_only);
        }
        CURRENT_AGENT
            .try_with(|o| (o.sender(), o.local_only))
            .unwrap_or_else(|_| (self.me_sender.clone(), false))
    }

    fn next_seq(&self, sender: &Arc<str>, target: &AgentId) -> u64 {
        if **sender == *self.me {
            // this node as the sender (the common case): keyed by target alone, and looked up
            // without allocating once the counter exists
            if let Some(mut n) = self.node_seqs.get_mut(target) {
                *n += 1;
                return self.seq_base + *n;
            }
            let mut n = self.node_seqs.entry(target.clone()).or_insert(0);
            *n += 1;
            return self.seq_base + *n;
        }
        let mut e = self
            .seqs
            .entry((sender.clone(), target.clone()))
            .or_insert(0);
        *e += 1;
        self.seq_base + *e
    }

    /// A message from the current sender, numbered, after the local-only check.
    fn outgoing(
        &self,
        target: &AgentId,
        body: Body,
        contract: Contract,
        from: Option<&SendAs>,
    ) -> Result<Outgoing, (AgentError, Body)> {
        let (sender, local_only) = self.sender(from);
        // asked only where it matters: a typed body, or a local-only sender (the send path
        // asks the host again when it routes)
        let here = || self.host.epoch_of(target).is_some();
        if local_only && !here() {
            let e = AgentError::LocalOnly {
                reason: format!(
                    "a local-only agent cannot send to {target}, which does not run on {}",
                    self.me
                ),
            };
            return Err((e, body));
        }
        // a message that may leave this node is encoded now, so that one that must not (it
        // holds `LocalOnly` data) is refused to its sender, not lost later on the way
        let body = match body {
            Body::Typed(_) if !here() => {
                let encoded = tether_actors::local_only::guard(
                    || body.wire_bytes(),
                    |reason| AgentError::Internal(format!("message does not encode: {reason}")),
                );
                match encoded {
                    Ok((encoding, bytes)) => Body::Encoded(encoding, bytes),
                    Err(e) => return Err((e, body)),
                }
            }
            body => body,
        };
        let seq = self.next_seq(&sender, target);
        Ok(Outgoing {
            target: target.clone(),
            body,
            contract,
            sender,
            seq,
            trace: TraceContext::current_or_new(),
            ask: None,
        })
    }

    /// Sends `out` through the handle's port into the running instance, if it has one and
    /// the body is typed (an encoded body has a contract to check at the door). Returns the
    /// message, untouched, when it must go the long way (a stale port is forgotten).
    fn through_port(port: &PortCache, out: Outgoing) -> Option<Outgoing> {
        if !matches!(out.body, Body::Typed(_)) {
            return Some(out);
        }
        let mut cached = port.lock();
        let Some(p) = cached.as_ref() else {
            return Some(out);
        };
        let Outgoing {
            target,
            body,
            contract,
            sender,
            seq,
            trace,
            ask,
        } = out;
        let deadline = ask.as_ref().map(|(_, d)| *d);
        let call = Call {
            body,
            trace,
            sender: Some(sender),
            seq,
            reply: ask.map(|(tx, _)| tx.into()),
        };
        let Err(call) = p.send(call) else {
            return None;
        };
        *cached = None;
        let Call {
            body,
            trace,
            sender,
            seq,
            reply,
        } = *call;
        Some(Outgoing {
            target,
            body,
            contract,
            sender: sender.expect("the call was made with its sender"),
            seq,
            trace,
            ask: reply.and_then(ReplyTx::into_channel).zip(deadline),
        })
    }

    /// Routes `out`; when it was a typed message delivered to an agent running here, the
    /// handle's port is set to that instance for the next sends.
    fn route_and_keep_port(&self, out: Outgoing, port: Option<&PortCache>) {
        let keep = port.filter(|_| matches!(out.body, Body::Typed(_)));
        if let (Some(target), Some(port)) = (self.route(out), keep) {
            *port.lock() = self.host.port(&target);
        }
    }

    /// Whether this node keeps an outbox (tells that cannot be routed wait there).
    fn keeps_outbox(&self) -> bool {
        self.control.outbox_depth().is_some()
    }

    /// Counts and logs a failed tell.
    fn tell_failed(&self, target: &AgentId, seq: u64, trace: &TraceContext, e: &AgentError) {
        super::tell_failed(
            &self.counters,
            target,
            seq,
            &trace.trace_id_hex().to_string(),
            e,
        );
    }

    /// The number of tells that failed so far.
    pub fn tell_failures(&self) -> u64 {
        self.counters.tell_failures.load(Ordering::Relaxed)
    }
}

/// Why an ask cannot go now: tells to its agent wait in the outbox.
pub(crate) fn waiting_in_outbox(target: &AgentId) -> AgentError {
    AgentError::Unavailable {
        id: target.to_string(),
        reason: "tells to it wait in this node's outbox until it can be reached; an ask must not \
                 overtake them: ask again once they are delivered"
            .into(),
    }
}

impl tether_actors::Router for Router {
    fn tell(
        &self,
        target: &AgentId,
        port: &PortCache,
        body: Body,
        contract: Contract,
        from: Option<&SendAs>,
    ) -> Result<(), (AgentError, Body)> {
        self.tell_via(target, Some(port), body, contract, from)
            .map(|_| ())
    }

    fn send_ask(
        &self,
        target: &AgentId,
        port: &PortCache,
        body: Body,
        contract: Contract,
        deadline: Duration,
        from: Option<&SendAs>,
    ) -> Result<ReplyRx, AgentError> {
        if self.control.outbox_depth().unwrap_or(0) != 0 && self.control.outbox_holds(target) {
            // asks are never queued, and one must not overtake the tells that wait for the
            // same agent (its sequence number would make them duplicates)
            return Err(waiting_in_outbox(target));
        }
        let mut out = self
            .outgoing(target, body, contract, from)
            .map_err(|(e, _)| e)?;
        let (tx, rx) = oneshot::channel();
        out.ask = Some((tx, deadline));
        // asks are never queued in the outbox: the port is always theirs to take
        if let Some(out) = Self::through_port(port, out) {
            self.route_and_keep_port(out, Some(port));
        }
        Ok(rx)
    }

    fn ask_timed_out(&self, target: &AgentId) {
        // a remote host may have moved or gone: look it up again next time (an agent hosted
        // here has no route entry; this forgets nothing)
        self.routes.forget(target);
    }

    fn spawn_here(
        &self,
        id: AgentId,
        args: Body,
        from: Option<&SendAs>,
    ) -> tether_actors::call::BoxFuture<'_, Result<Activation, AgentError>> {
        let trace = TraceContext::current_or_new();
        let local_only = from.is_some_and(|f| f.local_only);
        Box::pin(async move {
            let opts = SpawnOptions::default();
            let act = trace
                .scope(self.spawn(id, args, opts, Target::Here))
                .await?;
            if local_only && act.node != self.me {
                // not reached: a spawn on this node runs here
                return Err(AgentError::LocalOnly {
                    reason: format!("{} runs on {}", act.id, act.node),
                });
            }
            Ok(act)
        })
    }
}
