//! `AgentRef`: the location-transparent handle.
//!
//! The same code talks to an agent on this node or another: the [`Router`] (the cluster
//! runtime) finds the host through the directory and follows the agent. Local sends pass the
//! typed value; remote sends encode it with the wire codec.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crate::agent::{Agent, AgentError};
use crate::envelope::Contract;
use crate::id::AgentId;
use crate::kind::{Body, BoxFuture};

/// Sends messages by agent id; implemented by the node runtime.
pub trait Router: Send + Sync + 'static {
    /// Fire and forget. On an error found before the message left, the body comes back.
    ///
    /// # Errors
    /// The [`AgentError`] and the unsent body.
    fn tell(
        &self,
        target: &AgentId,
        body: Body,
        contract: Contract,
    ) -> Result<(), (AgentError, Body)>;

    /// Request and reply, within `deadline`.
    fn ask(
        &self,
        target: &AgentId,
        body: Body,
        contract: Contract,
        deadline: Duration,
    ) -> BoxFuture<'static, Result<Body, AgentError>>;
}

/// Why a `tell` failed; gives the message back.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct TellError<M> {
    /// What went wrong.
    pub error: AgentError,
    /// The message, unsent (None if it had already been encoded and cannot be given back).
    pub message: Option<M>,
}

/// A handle on agent `A` by id.
pub struct AgentRef<A> {
    id: AgentId,
    router: Arc<dyn Router>,
    _kind: PhantomData<fn(A)>,
}

impl<A> Clone for AgentRef<A> {
    fn clone(&self) -> Self {
        Self {
            id: self.id.clone(),
            router: self.router.clone(),
            _kind: PhantomData,
        }
    }
}

impl<A> std::fmt::Debug for AgentRef<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AgentRef({})", self.id)
    }
}

impl<A: Agent> AgentRef<A> {
    /// A handle on `id` through `router`.
    pub fn new(id: AgentId, router: Arc<dyn Router>) -> Self {
        Self {
            id,
            router,
            _kind: PhantomData,
        }
    }

    /// The agent's id.
    pub fn id(&self) -> &AgentId {
        &self.id
    }

    fn contract() -> Contract {
        Contract {
            name: A::KIND.into(),
            version: A::CONTRACT_VERSION,
        }
    }

    /// Sends `msg` without waiting for a reply. Messages from one sender reach the agent in
    /// the order sent.
    ///
    /// # Errors
    /// [`TellError`] with the message when it could not be sent (unknown agent, unreachable
    /// host, local-only rule). A failure on the receiving side is reported to this node's log.
    pub fn tell(&self, msg: A::Msg) -> Result<(), TellError<A::Msg>> {
        self.router
            .tell(&self.id, Body::typed(msg), Self::contract())
            .map_err(|(error, body)| TellError {
                error,
                message: body.decode().ok(),
            })
    }

    /// Sends `msg` and waits for the reply, at most `deadline`.
    ///
    /// # Errors
    /// [`AgentError`]: [`AgentError::Timeout`] past the deadline, and the same errors as `tell`.
    ///
    /// # Cancel safety
    /// Dropping the future abandons the reply; the message may still be handled.
    pub async fn ask(&self, msg: A::Msg, deadline: Duration) -> Result<A::Reply, AgentError> {
        let body = self
            .router
            .ask(&self.id, Body::typed(msg), Self::contract(), deadline)
            .await?;
        body.decode().map_err(|reason| AgentError::BadPayload {
            id: format!("reply of {}", self.id),
            reason,
        })
    }
}
