//! The `Agent` trait: what a user writes.
//!
//! An agent kind is a behaviour (`Self`, built once per node when the kind is registered) plus
//! serde types for its arguments, messages, replies and state. The state is what a checkpoint
//! stores and what moves on migration; the behaviour holds whatever the node gives every agent
//! of the kind (configuration, clients).
//!
//! A handler that returns `Err` fails the agent: it stops (its supervisor decides what next)
//! and the asker gets [`AgentError::Failed`]. An application error that should not stop the
//! agent belongs in the reply type (`type Reply = Result<T, MyError>`).
//!
//! **One reply type per kind.** A kind has one message type and one reply type, not a reply
//! type per message (as kameo's `Message<M>` has): a kind's messages cross nodes, come from the
//! CLI as JSON and are decoded by kind name alone, so a kind's contract is one message schema
//! and one reply schema, which a peer or an operator can check without the Rust types. A kind
//! that answers different messages differently uses an enum as its `Reply`.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::{de::DeserializeOwned, Serialize};

use crate::envelope::TraceContext;
pub use crate::error::AgentError;
use crate::id::AgentId;
use crate::origin::Origin;
use crate::placement::Placement;
use crate::router::{Router, SendAs};
use crate::timers::Timers;

/// What a failing `init` or `handle` returns: any error, or a message (`"reason".into()`).
pub type Failure = Box<dyn std::error::Error + Send + Sync>;

/// What an agent knows about itself and the message it is handling, and what it can do from
/// there: talk to other agents ([`Ctx::tell`], [`Ctx::ask`], [`Ctx::agent_ref`]), spawn one
/// ([`Ctx::spawn`]), get a handle on itself ([`Ctx::myself`]) or stop ([`Ctx::stop`]).
///
/// Handles made here send as this agent, in whatever task they are used: a task the handler
/// starts (`tokio::spawn`) still sends as the agent, and a local-only agent's sends still stay
/// on its node.
pub struct Ctx<A: ?Sized> {
    pub(crate) origin: Arc<Origin>,
    pub(crate) epoch: u64,
    pub(crate) trace: TraceContext,
    pub(crate) sender: Option<Arc<str>>,
    pub(crate) seq: u64,
    pub(crate) timers: Timers,
    pub(crate) _kind: PhantomData<fn(&A)>,
}

impl<A: ?Sized> std::fmt::Debug for Ctx<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("id", &self.origin.id)
            .field("epoch", &self.epoch)
            .field("node", &self.origin.node)
            .field("seq", &self.seq)
            .finish()
    }
}

impl<A: ?Sized> Ctx<A> {
    /// A context for `origin`'s activation `epoch`, in trace `trace`.
    pub(crate) fn new(origin: Arc<Origin>, epoch: u64, trace: TraceContext) -> Self {
        Self {
            origin,
            epoch,
            trace,
            sender: None,
            seq: 0,
            timers: Timers::default(),
            _kind: PhantomData,
        }
    }

    /// This agent's id.
    pub fn id(&self) -> &AgentId {
        &self.origin.id
    }

    /// This activation's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The node hosting this agent.
    pub fn node(&self) -> &str {
        &self.origin.node
    }

    /// The trace of the message being handled (or of the spawn, in `init`).
    pub fn trace(&self) -> &TraceContext {
        &self.trace
    }

    /// Who sent the message being handled (`node` or `node/agent-id`), if anyone.
    pub fn sender(&self) -> Option<&str> {
        self.sender.as_deref()
    }

    /// The sender's sequence number for this message (per sender and target, from 1).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// This agent as a sender.
    pub(crate) fn send_as(&self) -> SendAs {
        SendAs {
            sender: self.origin.sender(),
            local_only: self.origin.local_only,
        }
    }

    pub(crate) fn router(&self) -> Result<Arc<dyn Router>, AgentError> {
        self.origin
            .router()
            .ok_or_else(|| AgentError::Internal(format!("{} runs on no node", self.id())))
    }

    /// Stops this agent for good once the current message is handled (its `on_stop` runs; its
    /// supervisor does not restart it).
    pub fn stop(&self) {
        self.origin.request_stop();
    }

    /// Sets timer `name` to fire after `delay` ([`Agent::on_timer`]), replacing a timer of
    /// that name. Timers are kept as wall-clock deadlines with the agent's state: they move
    /// with it, and survive a restart or failover as far as its durability does (see
    /// [`crate::timers`]).
    ///
    /// # Panics
    /// If `name` is empty or longer than [`crate::timers::MAX_NAME`] bytes.
    pub fn set_timer(&self, name: impl Into<String>, delay: std::time::Duration) {
        let at = crate::timers::now_unix_ms().saturating_add(delay.as_millis() as u64);
        self.set_timer_at(name, at);
    }

    /// Sets timer `name` to fire at `deadline_unix_ms` (milliseconds since the Unix epoch; a
    /// deadline passed fires at the next message boundary), replacing a timer of that name.
    ///
    /// # Panics
    /// If `name` is empty or longer than [`crate::timers::MAX_NAME`] bytes.
    pub fn set_timer_at(&self, name: impl Into<String>, deadline_unix_ms: u64) {
        let name = name.into();
        crate::timers::check_name(&name);
        self.timers.set(name, deadline_unix_ms);
    }

    /// Cancels timer `name`; whether it was set.
    pub fn cancel_timer(&self, name: &str) -> bool {
        self.timers.cancel(name)
    }

    /// The timers set, by name, with their deadlines.
    pub fn timers(&self) -> Vec<crate::durable::Timer> {
        self.timers.list()
    }
}

/// An agent kind.
pub trait Agent: Send + Sync + 'static {
    /// The kind name: how other nodes ask for this kind (`[a-z0-9_.-]`).
    const KIND: &'static str;
    /// Version of the message contract; a message carrying another version is refused.
    const CONTRACT_VERSION: u32 = 1;

    /// Spawn arguments.
    type Args: Serialize + DeserializeOwned + Send + 'static;
    /// Messages.
    type Msg: Serialize + DeserializeOwned + Send + 'static;
    /// Replies to `ask`.
    type Reply: Serialize + DeserializeOwned + Send + 'static;
    /// State: what a checkpoint stores and a migration moves.
    type State: Serialize + DeserializeOwned + Send + 'static;

    /// Placement labels of an agent spawned with `args` (default: internal, light, any).
    fn placement(&self, args: &Self::Args) -> Placement {
        let _ = args;
        Placement::default()
    }

    /// Builds the initial state.
    fn init(
        &self,
        ctx: &Ctx<Self>,
        args: Self::Args,
    ) -> impl Future<Output = Result<Self::State, Failure>> + Send;

    /// Handles one message.
    fn handle(
        &self,
        ctx: &Ctx<Self>,
        state: &mut Self::State,
        msg: Self::Msg,
    ) -> impl Future<Output = Result<Self::Reply, Failure>> + Send;

    /// Timer `name` fired (see [`Ctx::set_timer`]). It runs between messages, as a message
    /// is handled: an `Err` fails the agent. The timer is gone from the table by then; set it
    /// again here for a periodic one. Default: nothing.
    fn on_timer(
        &self,
        ctx: &Ctx<Self>,
        state: &mut Self::State,
        name: &str,
    ) -> impl Future<Output = Result<(), Failure>> + Send {
        let _ = (ctx, state, name);
        async { Ok(()) }
    }

    /// Runs when the agent stops cleanly.
    fn on_stop(&self, ctx: &Ctx<Self>, state: &mut Self::State) -> impl Future<Output = ()> + Send {
        let _ = (ctx, state);
        async {}
    }
}
