//! [`AgentError`]: why an operation on an agent failed. It travels on the wire, so the sender of
//! a message that failed on another node gets the same typed error as for a local one.

use serde::{Deserialize, Serialize};

use crate::id::AgentId;

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
