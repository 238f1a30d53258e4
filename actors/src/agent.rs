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

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::envelope::TraceContext;
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

/// Why an operation on an agent failed. Travels on the wire, so the sender of a message that
/// failed on another node gets the same typed error as for a local one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum AgentError {
    /// No such agent in the cluster.
    #[error("no agent {id}")]
    NotFound {
        /// The id asked for.
        id: String,
    },
    /// The kind is not registered on the node that was asked to host it.
    #[error("node {node} cannot host kind {kind:?} (registered there: {registered})")]
    UnknownKind {
        /// The kind.
        kind: String,
        /// The node.
        node: String,
        /// The kinds it has.
        registered: String,
    },
    /// The payload does not decode as the agent's message (or args) type.
    #[error("{id} cannot read this payload: {reason}")]
    BadPayload {
        /// The target.
        id: String,
        /// The decoder's message.
        reason: String,
    },
    /// The message's contract is not the agent's.
    #[error("{id} speaks contract {expected}, the message has {got}")]
    Contract {
        /// The target.
        id: String,
        /// The agent's contract.
        expected: String,
        /// The message's.
        got: String,
    },
    /// The node that hosts (or should host) the agent cannot be reached.
    #[error("node {node} is unreachable")]
    NodeUnreachable {
        /// The node.
        node: String,
    },
    /// No answer within the deadline.
    #[error("no answer within {ms} ms")]
    Timeout {
        /// The deadline in milliseconds.
        ms: u64,
    },
    /// The agent failed (its handler or init returned an error, or it stopped).
    #[error("agent {id} failed: {reason}")]
    Failed {
        /// The agent.
        id: String,
        /// The failure.
        reason: String,
    },
    /// The message was addressed to an older activation than the current one (fencing).
    #[error("{id}: message for epoch {sent}, the agent is at epoch {current}")]
    StaleEpoch {
        /// The agent.
        id: String,
        /// The epoch the sender knew.
        sent: u64,
        /// The current epoch.
        current: u64,
    },
    /// The message was delivered before (same sender and sequence number): refused.
    #[error("duplicate: {id} already received message {seq} from {sender}")]
    Duplicate {
        /// The target.
        id: String,
        /// The sender.
        sender: String,
        /// The message's number.
        seq: u64,
    },
    /// The sending node keeps the message for later, but its outbox is full: the message
    /// was not queued.
    #[error("{0}")]
    OutboxFull(String),
    /// The operation is not allowed (placement, sensitivity...).
    #[error("refused: {0}")]
    Refused(String),
    /// The cluster directory cannot be reached.
    #[error("directory unavailable: {0}")]
    NoDirectory(String),
    /// Something the runtime did not expect; the text says what.
    #[error("{0}")]
    Internal(String),
}

impl AgentError {
    /// The error of an ask whose message was still in the mailbox of an instance of `id`
    /// that failed.
    pub fn lost_with_failed_instance(id: &AgentId) -> Self {
        AgentError::Failed {
            id: id.to_string(),
            reason: "the instance failed before handling this message (it was in its mailbox)"
                .into(),
        }
    }
}
