//! Which agent a send comes from: its identity as a sender, whether what it sends must stay
//! on this node, and the node's runtime it sends through.
//!
//! An agent's [`Origin`] is made once per instance and shared: its context
//! ([`Ctx`](crate::Ctx)) and every handle it makes ([`Ctx::agent_ref`](crate::Ctx::agent_ref),
//! [`Ctx::myself`](crate::Ctx::myself)) carry it, so a send made in a task the handler started
//! (`tokio::spawn`) is still the agent's: its sender, and its local-only rule.
//!
//! While an agent runs its `init` or a handler, [`CURRENT_AGENT`] names it too, for sends made
//! through handles that were not made from its context, and for log formatters
//! ([`log_context`]): a handler's lines say which agent and trace they belong to without a
//! span per message.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use crate::envelope::TraceContext;
use crate::id::AgentId;
use crate::router::Router;

/// An agent as the sender of messages (see the module doc).
pub struct Origin {
    /// The agent.
    pub id: AgentId,
    /// Its node.
    pub node: Arc<str>,
    /// How its messages name their sender, `node/kind/key`: made at its first send.
    sender: OnceLock<Arc<str>>,
    /// It is local-only: its messages may not leave this node.
    pub local_only: bool,
    /// The node's runtime (absent for an agent run without a node, in tests).
    router: Option<Weak<dyn Router>>,
    /// The agent asked to stop after the message it handles.
    stop: AtomicBool,
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origin")
            .field("id", &self.id)
            .field("node", &self.node)
            .field("local_only", &self.local_only)
            .finish()
    }
}

impl Origin {
    /// The origin of agent `id` of node `node`, sending through `router`.
    pub fn new(
        id: AgentId,
        node: Arc<str>,
        local_only: bool,
        router: Option<Weak<dyn Router>>,
    ) -> Self {
        Self {
            id,
            node,
            sender: OnceLock::new(),
            local_only,
            router,
            stop: AtomicBool::new(false),
        }
    }

    /// How the agent's messages name their sender: `node/kind/key`.
    pub fn sender(&self) -> Arc<str> {
        self.sender
            .get_or_init(|| format!("{}/{}", self.node, self.id).into())
            .clone()
    }

    /// The node's runtime, if the node still runs.
    pub fn router(&self) -> Option<Arc<dyn Router>> {
        self.router.as_ref().and_then(Weak::upgrade)
    }

    /// Asks that the agent stop for good after the message it handles.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Whether the agent asked to stop.
    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }
}

tokio::task_local! {
    /// Set while an agent handles a message or runs `init`.
    pub static CURRENT_AGENT: Arc<Origin>;
}

/// The agent whose handler (or `init`) the current task runs, and the trace of the message it
/// handles; `None` outside any agent: what a log line written now belongs to.
///
/// A log formatter reads it as it writes a line (the `tether` binary's does), so that a
/// handler's lines carry the agent's id and the trace id, and a message whose handler logs
/// nothing pays nothing for it.
pub fn log_context() -> Option<(AgentId, TraceContext)> {
    let id = CURRENT_AGENT.try_with(|o| o.id.clone()).ok()?;
    Some((id, TraceContext::current()?))
}
