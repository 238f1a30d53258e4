//! The other nodes as the node's checkpointer sees them (see [`crate::durable::checkpointer`]):
//! the up remote peers of the driver's view, asked over the agent streams.

use std::sync::Weak;

use tether_actors::call::BoxFuture;
use tether_actors::{AgentError, AgentId, Checkpoint};

use super::driver::Driver;
use crate::agents::protocol::{Answer, Request};
use crate::agents::ControlPlane;
use crate::durable::checkpointer::{Replicas, GATHER_TIMEOUT, REPLICA_TIMEOUT};

/// [`Replicas`] over a node's driver (weak: the driver owns the checkpointer).
pub(crate) struct DriverReplicas(pub(crate) Weak<Driver>);

fn gone() -> AgentError {
    AgentError::Internal("the node is stopping".into())
}

fn unexpected(what: &str, a: Answer) -> AgentError {
    AgentError::Internal(format!("unexpected answer to {what}: {a:?}"))
}

impl Replicas for DriverReplicas {
    fn remotes(&self) -> Vec<String> {
        let Some(d) = self.0.upgrade() else {
            return Vec::new();
        };
        let view = d.view();
        let me = d.me();
        view.up
            .remotes()
            .filter(|n| *n != me)
            .map(str::to_owned)
            .collect()
    }

    fn replicate(
        &self,
        node: &str,
        cps: Vec<Checkpoint>,
    ) -> BoxFuture<'static, Result<(), AgentError>> {
        let (d, node) = (self.0.clone(), node.to_owned());
        Box::pin(async move {
            let io = d.upgrade().ok_or_else(gone)?.io().clone();
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
        let (d, node, id) = (self.0.clone(), node.to_owned(), id.clone());
        Box::pin(async move {
            let io = d.upgrade().ok_or_else(gone)?.io().clone();
            let make = |req| Request::Newest { req, id };
            match io.request(&node, make, GATHER_TIMEOUT).await? {
                Answer::Checkpoint(cp) => Ok(cp.map(|b| *b)),
                other => Err(unexpected("a checkpoint query", other)),
            }
        })
    }
}
