//! A handle's direct way into one running instance of an agent of this node ([`LocalPort`],
//! kept in the handle's [`PortCache`]): typed sends through it skip the route and host
//! look-ups (see [`crate::host`]).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::call::Call;
use crate::mailbox::AgentActorRef;
use crate::stats::AgentStats;

/// A direct way into one running instance of an agent of this node.
#[derive(Clone)]
pub struct LocalPort {
    actor: AgentActorRef,
    stats: Arc<AgentStats>,
    /// Record each call's sequence number in the door's table (an agent that arrived by a
    /// move: see `Host`'s door).
    note_seqs: bool,
}

impl std::fmt::Debug for LocalPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalPort")
    }
}

impl LocalPort {
    /// A port into the instance run by `actor`.
    pub fn new(actor: AgentActorRef, stats: Arc<AgentStats>) -> Self {
        Self {
            actor,
            stats,
            note_seqs: false,
        }
    }

    /// This port records each call's sequence number in the door's table, when `on`.
    pub fn noting_seqs(mut self, on: bool) -> Self {
        self.note_seqs = on;
        self
    }

    /// Hands a typed call from this process to the instance, as the host's door would.
    ///
    /// # Errors
    /// The call, untouched, when the instance is no longer the running one: send it the long
    /// way.
    pub fn send(&self, call: Call) -> Result<(), Box<Call>> {
        if let (true, Some(sender)) = (self.note_seqs && call.seq != 0, &call.sender) {
            self.stats.raise_seq(sender, call.seq);
        }
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        self.actor.send(call).inspect_err(|_| self.stats.settle(1))
    }
}

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
