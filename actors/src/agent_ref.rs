//! `AgentRef`: the location-transparent handle.
//!
//! The same code talks to an agent on this node or another: the [`Router`] (the cluster
//! runtime) finds the host through the directory and follows the agent. Local sends pass the
//! typed value; remote sends encode it with the wire codec.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crate::agent::{Agent, AgentError, Ctx};
use crate::body::Body;
use crate::envelope::Contract;
use crate::id::AgentId;
use crate::port::PortCache;
use crate::router::{ask, Router, SendAs};

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
///
/// A handle made from an agent's context ([`Ctx::agent_ref`](crate::Ctx::agent_ref)) sends as
/// that agent wherever it is used, also from a task the agent's handler started: its messages
/// carry the agent as their sender, and a local-only agent's stay on its node.
pub struct AgentRef<A> {
    id: AgentId,
    router: Arc<dyn Router>,
    port: PortCache,
    from: Option<SendAs>,
    _kind: PhantomData<fn(A)>,
}

impl<A> Clone for AgentRef<A> {
    fn clone(&self) -> Self {
        Self {
            id: self.id.clone(),
            router: self.router.clone(),
            port: self.port.clone(),
            from: self.from.clone(),
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
            port: PortCache::default(),
            from: None,
            _kind: PhantomData,
        }
    }

    /// A handle on `id` through `router` that sends as `from`.
    pub fn sending_as(id: AgentId, router: Arc<dyn Router>, from: SendAs) -> Self {
        Self {
            from: Some(from),
            ..Self::new(id, router)
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
            .tell(
                &self.id,
                &self.port,
                Body::typed(msg),
                Self::contract(),
                self.from.as_ref(),
            )
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
        let body = ask(
            self.router.as_ref(),
            &self.id,
            &self.port,
            (Body::typed(msg), Self::contract()),
            deadline,
            self.from.as_ref(),
        )
        .await?;
        body.decode().map_err(|reason| AgentError::BadPayload {
            id: format!("reply of {}", self.id),
            reason,
        })
    }
}

/// How an agent talks to others: handles, tells, asks and spawns that send as it.
impl<A: ?Sized> Ctx<A> {
    /// A handle on agent `id` of kind `B` that sends as this agent.
    ///
    /// # Errors
    /// [`AgentError::Internal`] if this agent runs on no node (a test host without one).
    pub fn agent_ref<B: Agent>(&self, id: AgentId) -> Result<AgentRef<B>, AgentError> {
        Ok(AgentRef::sending_as(id, self.router()?, self.send_as()))
    }

    /// Tells agent `to` of kind `B` `msg`, as this agent.
    ///
    /// # Errors
    /// As [`AgentRef::tell`]: the message comes back.
    pub fn tell<B: Agent>(&self, to: &AgentId, msg: B::Msg) -> Result<(), TellError<B::Msg>> {
        match self.agent_ref::<B>(to.clone()) {
            Ok(r) => r.tell(msg),
            Err(error) => Err(TellError {
                error,
                message: Some(msg),
            }),
        }
    }

    /// Asks agent `to` of kind `B` `msg`, as this agent, and waits at most `deadline`.
    ///
    /// # Errors
    /// As [`AgentRef::ask`].
    pub async fn ask<B: Agent>(
        &self,
        to: &AgentId,
        msg: B::Msg,
        deadline: Duration,
    ) -> Result<B::Reply, AgentError> {
        self.agent_ref::<B>(to.clone())?.ask(msg, deadline).await
    }

    /// Gets or spawns agent `key` of kind `B` on this agent's node.
    ///
    /// # Errors
    /// As a node's spawn: an unknown kind, a failed `init`, placement rules.
    pub async fn spawn<B: Agent>(
        &self,
        key: &str,
        args: B::Args,
    ) -> Result<AgentRef<B>, AgentError> {
        let id = AgentId::new(B::KIND, key).map_err(|e| AgentError::BadId(e.to_string()))?;
        let args = Body::typed(args);
        let router = self.router()?;
        let from = self.send_as();
        router.spawn_here(id.clone(), args, Some(&from)).await?;
        Ok(AgentRef::sending_as(id, router, from))
    }
}

impl<A: Agent> Ctx<A> {
    /// A handle on this agent itself, sending as it.
    ///
    /// # Errors
    /// [`AgentError::Internal`] if this agent runs on no node (a test host without one).
    pub fn myself(&self) -> Result<AgentRef<A>, AgentError> {
        self.agent_ref::<A>(self.id().clone())
    }
}
