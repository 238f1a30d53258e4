//! The other nodes as the node's checkpointer sees them (see [`crate::durable::checkpointer`]):
//! the up remote peers of the control plane's view, asked over the agent streams.

use std::sync::{Arc, Weak};

use tether_actors::call::BoxFuture;
use tether_actors::{AgentError, AgentId, Checkpoint};

use crate::agents::peer_io::PeerIo;
use crate::agents::protocol::{Answer, Request};
use crate::agents::ControlPlane;
use crate::durable::checkpointer::{Replicas, GATHER_TIMEOUT, REPLICA_TIMEOUT};

/// [`Replicas`] over a node's control plane (weak: the driver owns the checkpointer) and its
/// agent streams.
pub(crate) struct NodeReplicas {
    pub(crate) me: String,
    pub(crate) control: Weak<dyn ControlPlane>,
    pub(crate) io: Arc<PeerIo>,
}

fn unexpected(what: &str, a: Answer) -> AgentError {
    AgentError::Internal(format!("unexpected answer to {what}: {a:?}"))
}

impl Replicas for NodeReplicas {
    fn remotes(&self) -> Vec<String> {
        let Some(control) = self.control.upgrade() else {
            return Vec::new();
        };
        let view = control.view();
        view.up
            .remotes()
            .filter(|n| *n != self.me)
            .map(str::to_owned)
            .collect()
    }

    fn replicate(
        &self,
        node: &str,
        cps: Vec<Checkpoint>,
    ) -> BoxFuture<'static, Result<(), AgentError>> {
        let (io, node) = (self.io.clone(), node.to_owned());
        Box::pin(async move {
            let make = |req| Request::Replicate { req, cps };
            match io.request(&node, make, REPLICA_TIMEOUT).await? {
                Answer::Stored => Ok(()),
                other => Err(unexpected("a replica", other)),
            }
        })
    }

    fn newest(
        &self,
        node: &str,
        id: &AgentId,
    ) -> BoxFuture<'static, Result<Option<Checkpoint>, AgentError>> {
        let (io, node, id) = (self.io.clone(), node.to_owned(), id.clone());
        Box::pin(async move {
            let make = |req| Request::Newest { req, id };
            match io.request(&node, make, GATHER_TIMEOUT).await? {
                Answer::Checkpoint(cp) => Ok(cp.map(|b| *b)),
                other => Err(unexpected("a checkpoint query", other)),
            }
        })
    }
}
