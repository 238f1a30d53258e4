//! Counters of one hosted agent, shared by its senders, its host and its actor.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The last sequence number seen from each sender.
pub type SeqTable = std::collections::HashMap<Arc<str>, u64>;

/// Counters of one hosted agent.
#[derive(Debug, Default)]
pub struct AgentStats {
    /// Messages handed to the agent.
    pub received: AtomicU64,
    /// Messages whose sequence number skipped ahead (a gap: something before was lost).
    pub gaps: AtomicU64,
    /// Messages refused as already delivered (sequence number not new).
    pub duplicates: AtomicU64,
    /// Messages that left the mailbox: handled, lost with a failed instance, or refused by
    /// a mailbox that closed. `received - done` wait (see [`AgentStats::waiting`]). The agent
    /// adds what it handled once per batch, so a sender and the agent do not write the same
    /// counter for every message.
    pub done: AtomicU64,
    /// Messages that were in the mailbox of an instance that failed, lost with it (as in
    /// Erlang, a failed instance's mailbox is not carried over; each loss is logged).
    pub lost: AtomicU64,
    /// Last sequence number seen per sender (kept across restarts: the stats outlive an
    /// instance). Per agent, so a lookup by `&str` needs no allocation.
    /// Made at the first message from another node or the outbox (an agent only sent to
    /// in process holds no table).
    pub last_seq: std::sync::Mutex<Option<Box<SeqTable>>>,
}

impl AgentStats {
    /// Runs `f` on the last sequence number accepted from `sender` (0: none yet), under the
    /// table's lock.
    pub fn with_last_seq<R>(&self, sender: &Arc<str>, f: impl FnOnce(&mut u64) -> R) -> R {
        let mut guard = self
            .last_seq
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let table = guard.get_or_insert_with(Box::default);
        let last = match table.get_mut(&**sender) {
            Some(l) => l,
            None => table.entry(sender.clone()).or_insert(0),
        };
        f(last)
    }

    /// Records that message `seq` of `sender` reached the agent without the door's check (in
    /// process): the door then refuses an older one that comes later (see `crate::host`).
    pub fn raise_seq(&self, sender: &Arc<str>, seq: u64) {
        self.with_last_seq(sender, |last| *last = (*last).max(seq));
    }

    /// Messages waiting for the agent (in its mailbox, or held while it restarts). Read
    /// without a lock: a snapshot, exact when no message is in flight.
    pub fn waiting(&self) -> u64 {
        let done = self.done.load(Ordering::Acquire);
        self.received.load(Ordering::Acquire).saturating_sub(done)
    }

    /// `n` messages left without being handled, or were handled (see `done`).
    pub fn settle(&self, n: u64) {
        if n > 0 {
            self.done.fetch_add(n, Ordering::AcqRel);
        }
    }
}
