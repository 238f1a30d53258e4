//! [`Router`]: what sends messages by agent id; the node's runtime implements it, and
//! [`AgentRef`](crate::AgentRef) and [`Ctx`](crate::Ctx) send through it.

use std::sync::Arc;
use std::time::Duration;

use crate::body::Body;
use crate::call::BoxFuture;
use crate::envelope::Contract;
use crate::error::AgentError;
use crate::id::AgentId;
use crate::port::PortCache;
use crate::record::Activation;

/// Who a send comes from, when it is an agent: its sender name, and whether what it sends must
/// stay on this node. `None` at a send: the node itself (or the agent whose handler runs in
/// the current task).
#[derive(Debug, Clone)]
pub struct SendAs {
    /// `node/kind/key`.
    pub sender: Arc<str>,
    /// The agent is local-only.
    pub local_only: bool,
}

/// Where the reply to an ask comes: the router sends the request with its sender.
pub type ReplyRx = tokio::sync::oneshot::Receiver<Result<Body, AgentError>>;

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
        from: Option<&SendAs>,
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
        from: Option<&SendAs>,
    ) -> Result<ReplyRx, AgentError>;

    /// No reply to an ask to `target` came within its deadline.
    fn ask_timed_out(&self, target: &AgentId);

    /// Get-or-spawn `id` with `args` on this node (an agent spawning another).
    fn spawn_here(
        &self,
        id: AgentId,
        args: Body,
        from: Option<&SendAs>,
    ) -> BoxFuture<'_, Result<Activation, AgentError>>;
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
    (body, contract): (Body, Contract),
    deadline: Duration,
    from: Option<&SendAs>,
) -> Result<Body, AgentError> {
    let rx = router.send_ask(target, port, body, contract, deadline, from)?;
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
