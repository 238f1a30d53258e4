//! Where this node sends messages for agents it does not host: one route per agent id.
//!
//! ```text
//!   no entry ──▶ hosted here? deliver : queue the message and look the agent up (Resolving)
//!   Resolving(queue) ──▶ found: Remote(location), the queue is sent in order; failed: each
//!                        queued message fails (or waits in a local node's outbox)
//!   Remote(location) ──▶ sent straight to the host's peer queue
//!   forgotten when a send through it fails (moved, stale epoch, host gone)
//! ```
//!
//! An agent hosted here has no entry: the host answers for it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dashmap::DashMap;
use tether_actors::{AgentError, AgentId, Body, Contract, IdHash, TraceContext};
use tokio::sync::oneshot;

use crate::directory::Location;

/// A message on its way out, before it is addressed to an activation.
pub(crate) struct Outgoing {
    pub(crate) target: AgentId,
    pub(crate) body: Body,
    pub(crate) contract: Contract,
    pub(crate) sender: Arc<str>,
    pub(crate) seq: u64,
    pub(crate) trace: TraceContext,
    pub(crate) ask: Option<(oneshot::Sender<Result<Body, AgentError>>, Duration)>,
}

/// How to reach an agent that this node does not host.
pub(crate) enum Route {
    /// Found here by a lookup while messages waited for it.
    Local,
    /// Shared, so that a send takes a reference rather than copying the node's name.
    Remote(Arc<Location>),
    /// Messages queued in order while the route is looked up. (A typed body is `Send` but not
    /// `Sync`; the mutex makes the queue shareable, and is only taken on this path.)
    Resolving(Mutex<Vec<Outgoing>>),
}

/// The routes of one node.
#[derive(Default)]
pub(crate) struct Routes(pub(crate) DashMap<AgentId, Route, IdHash>);

impl Routes {
    /// Records where `id` runs (a route being resolved keeps its queue: the resolver
    /// installs the route).
    pub(crate) fn set(&self, me: &str, id: &AgentId, loc: &Location) {
        if loc.node == me {
            // hosted here: the host answers for it, no entry is kept (one less per agent)
            return self.forget(id);
        }
        if !matches!(self.0.get(id).as_deref(), Some(Route::Resolving(_))) {
            self.0
                .insert(id.clone(), Route::Remote(Arc::new(loc.clone())));
        }
    }

    /// Forgets the route of `id` (not one being resolved).
    pub(crate) fn forget(&self, id: &AgentId) {
        self.0
            .remove_if(id, |_, r| !matches!(r, Route::Resolving(_)));
    }

    /// Forgets every route through `peer`.
    pub(crate) fn forget_peer(&self, peer: &str) {
        self.0
            .retain(|_, r| !matches!(r, Route::Remote(l) if l.node == peer));
    }

    /// Forgets every known route (a fence: whatever ran here or elsewhere is to be found
    /// again).
    pub(crate) fn clear(&self) {
        self.0.retain(|_, r| matches!(r, Route::Resolving(_)));
    }

    /// The host of `id`'s remote route, if it has one.
    pub(crate) fn remote_host(&self, id: &AgentId) -> Option<Option<String>> {
        match self.0.get(id).as_deref() {
            Some(Route::Remote(loc)) => Some(Some(loc.node.clone())),
            Some(Route::Local | Route::Resolving(_)) => Some(None),
            None => None,
        }
    }
}

/// Takes a resolving queue's messages out (poisoning cannot lose them).
pub(crate) fn take_queue(q: Mutex<Vec<Outgoing>>) -> Vec<Outgoing> {
    q.into_inner().unwrap_or_else(PoisonError::into_inner)
}
