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

use std::future::Future;
use std::sync::Arc;

use serde::{de::DeserializeOwned, Serialize};

use crate::envelope::TraceContext;
pub use crate::error::AgentError;
use crate::id::AgentId;
use crate::placement::Placement;

/// What a failing `init` or `handle` returns: any error, or a message (`"reason".into()`).
pub type Failure = Box<dyn std::error::Error + Send + Sync>;

/// What an agent knows about itself and the message it is handling.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub(crate) id: AgentId,
    pub(crate) epoch: u64,
    pub(crate) node: Arc<str>,
    pub(crate) trace: TraceContext,
    pub(crate) sender: Option<Arc<str>>,
    pub(crate) seq: u64,
}

impl Ctx {
    /// This agent's id.
    pub fn id(&self) -> &AgentId {
        &self.id
    }

    /// This activation's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The node hosting this agent.
    pub fn node(&self) -> &str {
        &self.node
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
        ctx: &Ctx,
        args: Self::Args,
    ) -> impl Future<Output = Result<Self::State, Failure>> + Send;

    /// Handles one message.
    fn handle(
        &self,
        ctx: &Ctx,
        state: &mut Self::State,
        msg: Self::Msg,
    ) -> impl Future<Output = Result<Self::Reply, Failure>> + Send;

    /// Runs when the agent stops cleanly.
    fn on_stop(&self, ctx: &Ctx, state: &mut Self::State) -> impl Future<Output = ()> + Send {
        let _ = (ctx, state);
        async {}
    }
}
