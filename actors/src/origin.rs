//! Which agent the current task works for: the sender of what it sends, and whether that must
//! stay on this node.
//!
//! While an agent runs its `init` or a handler, [`CURRENT_AGENT`] names it. Log formatters read
//! it ([`log_context`]) so that a handler's lines say which agent and trace they belong to
//! without a span per message.

use std::sync::Arc;

use crate::envelope::TraceContext;
use crate::id::AgentId;

/// The agent whose handler (or init) the current task runs: who is sending, and whether what
/// it sends must stay on this node.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The agent.
    pub id: AgentId,
    /// Its node.
    pub node: Arc<str>,
    /// How its messages name their sender, `node/kind/key`: made at the first send of a
    /// batch, kept for the batch (an idle agent holds no copy of it).
    sender: std::sync::OnceLock<Arc<str>>,
    /// It is local-only: its messages may not leave this node.
    pub local_only: bool,
}

impl Origin {
    /// The origin of agent `id` of node `node`.
    pub fn new(id: AgentId, node: Arc<str>, local_only: bool) -> Self {
        Self {
            id,
            node,
            sender: std::sync::OnceLock::new(),
            local_only,
        }
    }

    /// How the agent's messages name their sender: `node/kind/key`.
    pub fn sender(&self) -> Arc<str> {
        self.sender
            .get_or_init(|| format!("{}/{}", self.node, self.id).into())
            .clone()
    }
}

tokio::task_local! {
    /// Set while an agent handles a message or runs `init`.
    pub static CURRENT_AGENT: Origin;
}

/// The agent whose handler (or `init`) the current task runs, and the trace of the message it
/// handles; `None` outside any agent: what a log line written now belongs to.
///
/// A log formatter reads it as it writes a line (the `tether` binary's does), so that a
/// handler's lines carry the agent's id and the trace id, and a message whose handler logs
/// nothing pays nothing for it. See "Logs and spans" in the module doc.
pub fn log_context() -> Option<(AgentId, TraceContext)> {
    let id = CURRENT_AGENT.try_with(|o| o.id.clone()).ok()?;
    Some((id, TraceContext::current()?))
}
