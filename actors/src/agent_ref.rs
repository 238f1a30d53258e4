//! `AgentRef`: the location-transparent handle.
//!
//! The same code talks to an agent on this node or another: the [`Router`] (the cluster
//! runtime) finds the host through the directory and follows the agent. Local sends pass the
//! typed value; remote sends encode it with the wire codec.

use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::agent::{Agent, AgentError};
use crate::body::Body;
use crate::envelope::Contract;
use crate::host::LocalPort;
use crate::id::AgentId;

/// Where the reply to an ask comes: the router sends the request with its sender.
pub type ReplyRx = tokio::sync::oneshot::Receiver<Result<Body, AgentError>>;

/// Where a handle last found its agent running on this node: a [`LocalPort`] into that
/// instance, which the router fills on a local send and uses for the typed sends after it,
/// so that they skip the route and host look-ups. A stale port (the instance ended) refuses
/// the message, the router sends it the long way and forgets the port. Each handle has its
/// own; a clone starts with the port of the handle it came from.
#[derive(Default)]
pub struct PortCache(Mutex<Option<LocalPort>>);

impl PortCache {
    /// The cached port, locked: the caller sends through it while holding the lock (sends
    /// through one handle take its mailbox's lock in turn anyway).
    pub fn lock(&self) -> MutexGuard<'_, Option<LocalPort>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Clone for PortCache {
    fn clone(&self) -> Self {
        Self(Mutex::new(self.lock().clone()))
    }
}

/// Sends messages by agent id; implemented by the node runtime.
pub trait Router: Send + Sync + 'static {
    /// Fire and forget. On an error found before the message left, the body comes back.
    ///
    /// # Errors
    /// The [`AgentError`] and the unsent body.
    fn tell(
        &self,
        target: &AgentId,
        port: &PortCache,
        body: Body,
        contract: Contract,
    ) -> Result<(), (AgentError, Body)>;

    /// Sends a request; its reply comes on the returned receiver, within `deadline` or not at
    /// all ([`ask`] waits for it). Every path answers an ask it gives up on, except the
    /// mailbox of a local instance that failed with the message still in it: there the
    /// receiver closes unanswered.
    ///
    /// # Errors
    /// The same as `tell`, found before the request left.
    fn send_ask(
        &self,
        target: &AgentId,
        port: &PortCache,
        body: Body,
        contract: Contract,
        deadline: Duration,
    ) -> Result<ReplyRx, AgentError>;

    /// No reply to an ask to `target` came within its deadline.
    fn ask_timed_out(&self, target: &AgentId);
}

/// Request and reply through `router`, within `deadline` (`port`: see [`PortCache`]).
///
/// # Errors
/// [`AgentError::Timeout`] past the deadline; what [`Router::send_ask`] returns; the agent's
/// error.
pub async fn ask(
    router: &dyn Router,
    target: &AgentId,
    port: &PortCache,
    body: Body,
    contract: Contract,
    deadline: Duration,
) -> Result<Body, AgentError> {
    let rx = router.send_ask(target, port, body, contract, deadline)?;
    match tokio::time::timeout(deadline, rx).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(_)) => Err(AgentError::lost_with_failed_instance(target)),
        Err(_) => {
            router.ask_timed_out(target);
            Err(AgentError::Timeout {
                ms: deadline.as_millis() as u64,
            })
        }
    }
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
    port: PortCache,
    _kind: PhantomData<fn(A)>,
}

impl<A> Clone for AgentRef<A> {
    fn clone(&self) -> Self {
        Self {
            id: self.id.clone(),
            router: self.router.clone(),
            port: self.port.clone(),
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
            .tell(&self.id, &self.port, Body::typed(msg), Self::contract())
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
            Body::typed(msg),
            Self::contract(),
            deadline,
        )
        .await?;
        body.decode().map_err(|reason| AgentError::BadPayload {
            id: format!("reply of {}", self.id),
            reason,
        })
    }
}
