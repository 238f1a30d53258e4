//! Kinds: a registered agent type, erased so that a node can create agents by kind name.
//!
//! The erased layer decodes a body into the agent's message type, fallibly, and sends the reply
//! back in the form the request came in (typed, MessagePack or JSON).
//!
//! ```text
//! Host ── spawn(kind) ──▶ ErasedKind: A::init, in the spawner's task ──▶ Prepared<A> (dormant,
//!                          held by the agent's mailbox)
//!        first message ──▶ AgentActor<A> (a ractor actor per agent that got mail)
//!                          handle:    decode ─▶ A::handle ─▶ encode reply
//!                          post_stop: A::on_stop (a dormant agent's stop runs it without one)
//! ```
//!
//! The actor itself is in [`actor`].

mod actor;
mod saver;

use std::future::Future;
use std::sync::Arc;

use tracing::Instrument;

use crate::agent::{Agent, Ctx};
use crate::body::{decode_slice, Body};
use crate::call::BoxFuture;
use crate::envelope::{Contract, TraceContext};
use crate::error::AgentError;
use crate::id::AgentId;
use crate::mailbox::AgentActorRef;
use crate::origin::{Origin, CURRENT_AGENT};
use crate::placement::Placement;
use crate::record::SpawnRecord;
use crate::stats::AgentStats;
use actor::{AgentActor, Prepared};
pub use saver::DurableSpec;
use saver::Saver;

/// The stop reason of an agent that stopped itself ([`Ctx::stop`]): its supervisor removes it
/// rather than restart it.
pub const SELF_STOP: &str = "stopped by itself";

/// The stop reason of an agent frozen for a live migration: it goes on elsewhere, so its
/// supervisor neither restarts nor removes it here (the move's outcome decides).
pub const MOVED: &str = "frozen for a move";

/// Called once when an agent's actor ends: `None` for a clean stop, else the failure.
pub type ExitHook = Arc<dyn Fn(&AgentId, u64, Option<String>) + Send + Sync>;

/// Called when a supervised agent's actor starts (at its first message): the agent and the
/// actor, so that its supervisor can tell whose supervision events the actor's are.
pub type StartHook = Arc<dyn Fn(&AgentId, ractor::ActorId) + Send + Sync>;

/// What a node needs to start one agent.
pub struct SpawnSpec {
    /// The agent.
    pub id: AgentId,
    /// Its activation epoch.
    pub epoch: u64,
    /// The hosting node's name.
    pub node: Arc<str>,
    /// Spawn arguments (read from the record, not copied: it outlives the instance).
    pub record: Arc<SpawnRecord>,
    /// Trace of the spawn.
    pub trace: TraceContext,
    /// Called when the agent ends.
    pub on_exit: ExitHook,
    /// The agent's counters (the actor keeps `queued` true).
    pub stats: Arc<AgentStats>,
    /// The agent is local-only.
    pub local_only: bool,
    /// The supervisor actor to link to (its `handle_supervisor_evt` sees the agent fail).
    pub supervisor: Option<ractor::ActorCell>,
    /// Told when the actor starts (supervised agents).
    pub on_start: Option<StartHook>,
    /// A handler running longer than this fails the agent.
    pub handler_timeout: Option<std::time::Duration>,
    /// `init` must finish within this.
    pub start_timeout: std::time::Duration,
    /// Asked before each message is handled; a reason closes the door (see [`Gate`]).
    pub gate: Option<Gate>,
    /// The node's runtime, which the agent's context sends through.
    pub router: Option<std::sync::Weak<dyn crate::router::Router>>,
    /// Its checkpointing, if it is durable (see [`crate::durable`]).
    pub durable: Option<DurableSpec>,
    /// The checkpoint it starts from instead of `init` (a restart or failover of a durable
    /// agent, a move).
    pub restore: Option<Arc<crate::durable::Checkpoint>>,
}

/// Asked before each message reaches the handler: `Some(error)` means the node must not act
/// now (it was paused past its lease, or it is fenced), and the message is refused with the
/// reason instead of handled. This catches what was already in a mailbox when the node was
/// paused (SIGSTOP, a VM freeze), which resumes before the node's ticker can fence it.
pub type Gate = Arc<dyn Fn() -> Option<AgentError> + Send + Sync>;

/// A kind as the node sees it: by name, without its types.
pub trait ErasedKind: Send + Sync {
    /// The kind name.
    fn name(&self) -> &'static str;
    /// The message contract.
    fn contract(&self) -> Contract;
    /// Placement labels for these spawn arguments (decoding them).
    fn placement(&self, args: Body) -> Result<(Placement, Body), AgentError>;
    /// Prepares an agent: runs its `init` (in the caller's task, under the start timeout);
    /// its actor starts at its first message (see [`crate::mailbox`]).
    fn spawn(&self, spec: SpawnSpec) -> BoxFuture<'_, Result<AgentActorRef, AgentError>>;
}

/// Erases agent kind `A`.
pub fn erase<A: Agent>(behaviour: A) -> Arc<dyn ErasedKind> {
    Arc::new(KindImpl {
        behaviour: Arc::new(behaviour),
    })
}

struct KindImpl<A> {
    behaviour: Arc<A>,
}

impl<A: Agent> ErasedKind for KindImpl<A> {
    fn name(&self) -> &'static str {
        A::KIND
    }

    fn contract(&self) -> Contract {
        Contract {
            name: A::KIND.into(),
            version: A::CONTRACT_VERSION,
        }
    }

    fn placement(&self, args: Body) -> Result<(Placement, Body), AgentError> {
        let bad = |reason| AgentError::BadPayload {
            id: format!("{} args", A::KIND),
            reason,
        };
        if let Body::Encoded(e, b) = &args {
            // read, not consumed: the arguments travel on as they came
            let typed: A::Args = decode_slice(*e, b).map_err(bad)?;
            return Ok((self.behaviour.placement(&typed), args));
        }
        let like = args.encoding();
        let typed: A::Args = args.decode().map_err(bad)?;
        let p = self.behaviour.placement(&typed);
        Ok((p, Body::encode(typed, like).map_err(bad)?))
    }

    fn spawn(&self, spec: SpawnSpec) -> BoxFuture<'_, Result<AgentActorRef, AgentError>> {
        let behaviour = self.behaviour.clone();
        Box::pin(async move {
            let id = spec.id.clone();
            let failed = |reason| AgentError::Failed {
                id: id.to_string(),
                reason,
            };
            let args: A::Args =
                decode_slice(spec.record.encoding, &spec.record.args).map_err(|reason| {
                    AgentError::BadPayload {
                        id: format!("{id} args"),
                        reason,
                    }
                })?;
            let restore = spec.restore;
            let saver = spec.durable.as_ref().map(|d| {
                Box::new(Saver::new(
                    d,
                    restore.as_deref(),
                    spec.epoch,
                    spec.local_only,
                ))
            });
            let origin = Arc::new(Origin::new(
                spec.id,
                spec.node,
                spec.local_only,
                spec.router,
            ));
            let mut ctx = Ctx::<A>::new(origin, spec.epoch, spec.trace);
            if let Some(cp) = &restore {
                ctx.timers = crate::timers::Timers::from_list(&cp.timers);
            }
            let actor = AgentActor::<A> {
                behaviour,
                handler_timeout: spec.handler_timeout,
                gate: spec.gate,
            };
            let state = match restore {
                // started again from its checkpoint: `init` ran for an earlier activation
                Some(cp) => crate::codec::decode::<A::State>(&cp.state).map_err(|e| {
                    failed(format!(
                        "its checkpoint ({}) does not decode as its kind's state: {e}",
                        cp.version
                    ))
                })?,
                // `init` runs here, in the spawner's task: its errors are the spawn's, and
                // the actor starts at the first message (see `crate::mailbox`)
                None => {
                    let span = tracing::debug_span!("agent", id = %ctx.id(), trace_id = %ctx.trace.trace_id_hex());
                    let init = CURRENT_AGENT
                        .scope(
                            ctx.origin.clone(),
                            ctx.trace.scope(actor.behaviour.init(&ctx, args)),
                        )
                        .instrument(span);
                    tokio::time::timeout(spec.start_timeout, catch_unwind(init))
                        .await
                        .map_err(|_| {
                            failed(format!(
                                "init did not finish within {:?}",
                                spec.start_timeout
                            ))
                        })?
                        .map_err(|panic| failed(format!("init panicked: {panic}")))?
                        .map_err(|e| failed(format!("init failed: {e}")))?
                }
            };
            Ok(AgentActorRef::dormant(Box::new(Prepared {
                actor,
                state,
                ctx,
                on_exit: spec.on_exit,
                stats: spec.stats,
                supervisor: spec.supervisor,
                on_start: spec.on_start,
                saver,
            })))
        })
    }
}

/// Runs `f`, turning a panic into its message (as ractor does for an actor's handlers).
async fn catch_unwind<F: Future>(f: F) -> Result<F::Output, String> {
    let mut f = std::pin::pin!(f);
    std::future::poll_fn(|cx| {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f.as_mut().poll(cx))) {
            Ok(p) => p.map(Ok),
            Err(panic) => std::task::Poll::Ready(Err(panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into()))),
        }
    })
    .await
}
