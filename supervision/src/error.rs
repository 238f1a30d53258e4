//! [`SupervisionError`]: why a request to a node's supervision failed.

/// Why a request to a node's supervision failed (activations fail with
/// [`tether_actors::AgentError`], which travels on the wire).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SupervisionError {
    /// A group of that name exists already on the node.
    #[error("a supervisor group named {0:?} exists already")]
    GroupExists(String),
    /// A supervisor actor could not be started.
    #[error("a supervisor could not start: {0}")]
    Start(String),
    /// The node already has a supervision (one per host).
    #[error("node {0} has a supervisor already")]
    AlreadySupervised(String),
    /// A supervisor did not answer within its deadline, or is gone (the node is stopping).
    #[error("the {what} supervisor did not answer: {reason}")]
    Unavailable {
        /// Which supervisor (`root`, or a group's name).
        what: String,
        /// Why (a timeout, or that it stopped).
        reason: String,
    },
}
