//! The data plane of a node: messages to agents by id, wherever they run.
//!
//! ```text
//! AgentRef::tell/ask ──▶ Router (router.rs)
//!                          ├─ hosted here            ──▶ Host::deliver (typed, no encoding)
//!                          ├─ route known, remote    ──▶ peer queue ──▶ agent stream (in order)
//!                          ├─ a local node's outbox  ──▶ kept on disk until the target is reached
//!                          └─ route unknown          ──▶ queued in order while the node's
//!                                                        directory looks it up, then flushed
//! agent stream from a peer ──▶ Inbound (inbound.rs): Tell/Tells/Deliver/Ask ─▶ Host, after the
//!                                quarantine and standing checks; directory messages ─▶ core
//! ```
//!
//! The directory (lookups, spawns, the role's duties) is the node's control plane, reached
//! through [`ControlPlane`], which the node's driver implements over its cluster core.
//!
//! **Ordering.** Per sender (this node, or one of its agents) and target, messages are numbered
//! from 1 and travel in one ordered queue: the per-target queue while the route is resolved,
//! then the per-peer queue and its single QUIC stream. The host checks the numbers.
//!
//! **Delivery.** A tell is at most once: a tell that fails on the receiving side is reported
//! back (`TellFailed`) and logged here with its trace id; one caught in a connection that
//! breaks is lost (unless it waits in a local node's outbox). An ask always ends: with the
//! reply, a typed error, or a timeout at its deadline, and at once with
//! [`AgentError::NodeUnreachable`] when the host's node becomes unreachable.
//!
//! **Local-only.** A `local-only` agent's messages never leave its node: a send from it (its
//! handler, or any task holding a ref it made) to an agent that does not run here is refused,
//! and a peer's message for it is answered as if it did not exist.

pub(crate) mod forward;
pub(crate) mod inbound;
pub(crate) mod peer_io;
#[doc(hidden)] // the node's send queues; public only for the micro bench
pub mod peer_queue;
pub mod protocol;
pub mod router;
pub mod routes;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tether_actors::{AgentError, AgentId, Envelope, Placement};
use tether_supervision::AgentPolicy;
use tokio::sync::oneshot;

use crate::core::Target as CoreTarget;
use crate::directory::{DirAnswer, DirMsg};
use crate::membership::View;
use crate::role::Claim;

pub use router::{Router, Sent};

/// Where a spawn should happen.
pub type Target = CoreTarget;

/// How a spawn is done: labels, supervision, group.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpawnOptions {
    /// Placement labels overriding the kind's.
    pub placement: Option<Placement>,
    /// Restart policy and timeouts.
    pub policy: AgentPolicy,
    /// The supervisor group to run under (it lives on one node: give the target node).
    pub group: Option<String>,
    /// How durable its state is (default `none`: see [`Durability`]).
    ///
    /// [`Durability`]: tether_actors::Durability
    pub durability: tether_actors::Durability,
}

/// Counters of the data plane, for status.
#[derive(Debug, Default)]
pub struct Counters {
    /// Agent-protocol frames received from peers.
    pub frames_in: AtomicU64,
    /// Tells that failed (refused by the receiver, or lost with a broken stream).
    pub tell_failures: AtomicU64,
}

/// What the data plane needs of the node's control plane (its cluster core).
pub trait ControlPlane: Send + Sync + 'static {
    /// The membership snapshot now.
    fn view(&self) -> Arc<View>;

    /// Where `id` runs: ends with its location, or why not.
    fn lookup(&self, id: &AgentId) -> oneshot::Receiver<Result<DirAnswer, AgentError>>;

    /// Get-or-spawn: the activation, or why not. An activation on this node runs in the
    /// caller's task (as a bare actor spawn would).
    fn spawn(
        &self,
        claim: Claim,
        target: Target,
    ) -> tether_actors::call::BoxFuture<'_, Result<DirAnswer, AgentError>>;

    /// A directory message from a peer.
    fn receive(&self, from: &str, msg: DirMsg);

    /// Messages in a local node's outbox (`None`: the node keeps none). Read without a lock.
    fn outbox_depth(&self) -> Option<usize>;

    /// The node's checkpointer (replicas from peers are stored there).
    fn checkpointer(&self) -> Arc<crate::durable::Checkpointer>;

    /// Installs `id` as `epoch` from `cp` (the target of a move; see [`crate::migration`]).
    fn install(
        &self,
        from: &str,
        id: AgentId,
        epoch: u64,
        spec: crate::directory::AgentSpec,
        cp: tether_actors::Checkpoint,
    ) -> tether_actors::call::BoxFuture<'_, Result<tether_actors::Activation, AgentError>>;

    /// A barrier along the way to `id` came from `peer`: done once it has been passed on to
    /// where this node forwards `id`'s messages, if it does (see `Request::Barrier`).
    fn barrier(
        &self,
        peer: &str,
        id: AgentId,
    ) -> tether_actors::call::BoxFuture<'_, Result<(), AgentError>>;

    /// Drops the instance of `id` installed as `epoch` (a move aborted).
    fn discard(&self, id: &AgentId, epoch: u64) -> tether_actors::call::BoxFuture<'_, ()>;

    /// Moves `id`, which runs here, to `to` (see [`crate::migration`]).
    fn migrate_here(
        &self,
        id: AgentId,
        to: Option<String>,
    ) -> tether_actors::call::BoxFuture<'_, Result<crate::migration::MoveReport, AgentError>>;

    /// Whether tells to `id` wait in the outbox.
    fn outbox_holds(&self, id: &AgentId) -> bool;

    /// Puts a tell in the outbox.
    ///
    /// # Errors
    /// A full outbox, a store that cannot be written.
    fn queue(&self, env: Envelope) -> Result<usize, AgentError>;

    /// Why requests that act (deliveries, activations) are refused now (fenced, paused past
    /// the lease). Read without a lock: it is asked for every request from a peer.
    fn refusal(&self) -> Option<AgentError>;

    /// Whether `peer`'s requests are refused (decided down, not fenced since).
    fn is_quarantined(&self, peer: &str) -> bool;
}

/// A typed failure of a tell, counted and logged.
pub(crate) fn tell_failed(
    counters: &Counters,
    target: &AgentId,
    seq: u64,
    trace: &str,
    e: &AgentError,
) {
    counters
        .tell_failures
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::warn!(%target, seq, trace_id = %trace, error = %e, "tell failed");
}

/// Encodes a body for the wire (typed values become MessagePack).
pub(crate) fn encode_for_wire(
    body: tether_actors::Body,
) -> Result<(tether_actors::Encoding, bytes::Bytes), AgentError> {
    tether_actors::local_only::guard(
        || body.into_wire(),
        |reason| AgentError::Internal(format!("message does not encode: {reason}")),
    )
}

/// A shared reference to a control plane.
pub type ControlRef = Arc<dyn ControlPlane>;
