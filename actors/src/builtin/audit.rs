//! `audit`: an agent that checks delivery end to end. Every message it handles is recorded by
//! its sender and sequence number, the numbers the sender's node gives its messages to this
//! agent, one after another: a number skipped is a message lost, a number seen again or out of
//! order is a duplicate or a reordering. Its state (the record) is what a migration or a
//! checkpoint carries, so the record spans every activation the agent had.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::agent::{Agent, Ctx, Failure};
use crate::host::SESSION_SHIFT;

/// The `audit` kind.
#[derive(Debug, Default, Clone, Copy)]
pub struct Audit;

/// `audit` messages: anything to record, or a request for the record (recorded too).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditMsg {
    /// Record this message (its payload is not kept).
    Note(serde_json::Value),
    /// Record this message and answer with the record.
    Report,
}

/// What one sender's messages looked like.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditLine {
    /// Messages handled.
    pub count: u64,
    /// The highest sequence number seen (0: the sender numbers nothing).
    pub last: u64,
    /// Numbers skipped: messages sent before a later one that never arrived (so far).
    pub gaps: u64,
    /// Numbers at or below one seen before: duplicates or reorderings.
    pub repeats: u64,
}

impl AuditLine {
    fn record(&mut self, seq: u64) {
        self.count += 1;
        if seq == 0 {
            return;
        }
        let same_session = self.last >> SESSION_SHIFT == seq >> SESSION_SHIFT;
        if self.last != 0 && seq <= self.last {
            self.repeats += 1;
            return;
        }
        if self.last != 0 && same_session {
            self.gaps += seq - self.last - 1;
        }
        self.last = seq;
    }
}

impl Agent for Audit {
    const KIND: &'static str = "audit";
    type Args = serde_json::Value;
    type Msg = AuditMsg;
    /// Per sender.
    type Reply = BTreeMap<String, AuditLine>;
    type State = BTreeMap<String, AuditLine>;

    async fn init(&self, _: &Ctx<Self>, _: serde_json::Value) -> Result<Self::State, Failure> {
        Ok(BTreeMap::new())
    }

    async fn handle(
        &self,
        ctx: &Ctx<Self>,
        record: &mut Self::State,
        msg: AuditMsg,
    ) -> Result<Self::Reply, Failure> {
        let sender = ctx.sender().unwrap_or("-").to_owned();
        record.entry(sender).or_default().record(ctx.seq());
        Ok(match msg {
            AuditMsg::Note(_) => BTreeMap::new(),
            AuditMsg::Report => record.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_and_repeats_are_counted_and_a_new_session_is_neither() {
        let mut l = AuditLine::default();
        for seq in [1, 2, 3, 5, 5, 4, 6] {
            l.record(seq);
        }
        assert_eq!((l.count, l.last, l.gaps, l.repeats), (7, 6, 1, 2));
        l.record((2 << SESSION_SHIFT) | 1);
        assert_eq!(
            (l.gaps, l.repeats),
            (1, 2),
            "a restarted sender starts anew"
        );
    }
}
