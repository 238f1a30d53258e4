//! [`AgentError`]: why an operation on an agent failed. It travels on the wire, so the sender of
//! a message that failed on another node gets the same typed error as for a local one.
//!
//! The variants say what a caller can do next: [`AgentError::is_retryable`] is true for the
//! conditions that pass (a node unreachable, fenced or paused, the directory out of reach, a
//! timeout), false for answers that stay true until something changes (no such agent, a kind
//! not registered, a payload or contract that does not fit, a placement rule).

use serde::{Deserialize, Serialize};

use crate::id::AgentId;

/// Why an operation on an agent failed (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AgentError {
    /// No such agent in the cluster: its directory owner knows of no activation of it (never
    /// spawned, or stopped). Spawn it to create it.
    #[error("no agent {id}: its directory owner knows of none (spawn it to create it)")]
    NotFound {
        /// The id asked for.
        id: String,
    },
    /// The message reached a node that does not run the agent (it moved, or the route was
    /// stale): it was not delivered. Retry: the route is looked up again.
    #[error(
        "{id} does not run on {node} (it moved or the route was stale); not delivered, ask again"
    )]
    NotHere {
        /// The agent.
        id: String,
        /// The node the message reached.
        node: String,
    },
    /// The agent moved to another node (a live migration): the message was not delivered
    /// here. Send it to `to`, as `epoch` (a node's router does, and keeps the new route).
    #[error("{id} moved to {to}; not delivered here, send it there")]
    Moved {
        /// The agent.
        id: String,
        /// Where it runs now.
        to: String,
        /// Its epoch there.
        epoch: u64,
    },
    /// A live migration of the agent could not be done; the agent keeps serving where it was
    /// (unless `reason` says otherwise).
    #[error("{id} was not moved: {reason}")]
    NotMoved {
        /// The agent.
        id: String,
        /// Why.
        reason: String,
    },
    /// The agent cannot be reached now, and whether it exists cannot be told from here: its
    /// directory owner is fenced or cut off, or its host is gone and it is being placed again.
    /// Retry later (unlike [`AgentError::NotFound`], which its owner says for sure).
    #[error("{id} is unavailable now: {reason}")]
    Unavailable {
        /// The agent.
        id: String,
        /// Why, and what is under way.
        reason: String,
    },
    /// The agent id is not a valid `KIND/KEY`.
    #[error("bad agent id: {0}")]
    BadId(String),
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
    /// No node of that name is known in the cluster.
    #[error("no node named {node:?} in this cluster")]
    NoSuchNode {
        /// The name asked for.
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
    /// The sending node keeps messages for agents it cannot reach, and its outbox is full:
    /// this one was not queued.
    #[error(
        "the outbox is full: {max} messages already wait for agents this node cannot reach \
         (raise --outbox-max, or wait until the cluster is reachable); this message was not queued"
    )]
    OutboxFull {
        /// The bound.
        max: usize,
    },
    /// The agent holds as many waiting messages as it may (it is restarting).
    #[error("{id} is restarting and already holds {held} messages")]
    MailboxFull {
        /// The agent.
        id: String,
        /// How many wait.
        held: usize,
    },
    /// The node is fenced: on the losing side of a split, it hosts and activates nothing
    /// until it sees every remote node again.
    #[error("node {node} is fenced (on the losing side of a split); it hosts no agent")]
    Fenced {
        /// The node.
        node: String,
    },
    /// The node was paused past its lease (a SIGSTOP, a VM freeze): it refuses work until it
    /// has fenced.
    #[error("node {node} was paused past its lease; it refuses work until it has fenced")]
    PausedPastLease {
        /// The node.
        node: String,
    },
    /// The sending node was decided down and has not fenced since: its requests are refused
    /// until it does.
    #[error("node {node} was decided down and has not fenced since; its requests are refused")]
    Quarantined {
        /// The node refused.
        node: String,
    },
    /// A local-only agent's data would leave its node: refused.
    #[error("local-only: {reason}")]
    LocalOnly {
        /// What was refused, and why.
        reason: String,
    },
    /// The placement labels rule the requested node (or every node) out.
    #[error("placement: {reason}")]
    Placement {
        /// Which rule.
        reason: String,
    },
    /// The node's supervision cannot take the agent (its supervisor failed, or the named
    /// group does not exist).
    #[error("supervision: {reason}")]
    Supervision {
        /// What is wrong.
        reason: String,
    },
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

    /// Whether trying again later may succeed with nothing else changed: the condition is
    /// transient (a node unreachable, fenced, paused or quarantined, the directory out of
    /// reach, a timeout, a full outbox or mailbox).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            AgentError::NodeUnreachable { .. }
                | AgentError::NotHere { .. }
                | AgentError::Moved { .. }
                | AgentError::Unavailable { .. }
                | AgentError::Timeout { .. }
                | AgentError::OutboxFull { .. }
                | AgentError::MailboxFull { .. }
                | AgentError::Fenced { .. }
                | AgentError::PausedPastLease { .. }
                | AgentError::Quarantined { .. }
                | AgentError::NoDirectory(_)
        )
    }
}
