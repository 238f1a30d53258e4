//! The door of the host: the checks a message passes before it reaches an agent's mailbox
//! (see the [module doc](super) for the list), and the hand-over.

use std::sync::atomic::Ordering;

use super::{Delivery, Host, Hosted, Spec, MAX_QUEUED_WHILE_DOWN, SESSION_SHIFT};
use crate::body::Body;
use crate::call::{Call, ReplyTx};
use crate::envelope::{Contract, TellRun};
use crate::error::AgentError;
use crate::id::AgentId;
use crate::stats::AgentStats;

impl Host {
    /// Hands a message to a hosted agent after the checks at the door (see the module doc).
    ///
    /// # Errors
    /// [`AgentError`] saying which check refused it; the reply sender, if any, is dropped.
    pub fn deliver(
        &self,
        d: Delivery,
        body: Body,
        reply: Option<ReplyTx>,
    ) -> Result<(), AgentError> {
        self.try_deliver(d, body, reply).map_err(|(e, _)| e)
    }

    /// [`Host::deliver`], giving the reply sender back with the error (the caller answers
    /// its asker with the error itself, with no task in between).
    ///
    /// # Errors
    /// As [`Host::deliver`].
    pub fn try_deliver(
        &self,
        d: Delivery,
        body: Body,
        reply: Option<ReplyTx>,
    ) -> Result<(), (AgentError, Option<ReplyTx>)> {
        self.try_deliver_from(None, d, body, reply)
    }

    /// [`Host::try_deliver`] of a message that came from node `peer` (None: from this
    /// node): an agent installed here for a move takes what its source relays at once, and
    /// holds the rest until the source has handed everything over (see [`super::moving`]).
    ///
    /// # Errors
    /// As [`Host::deliver`].
    pub fn try_deliver_from(
        &self,
        peer: Option<&str>,
        d: Delivery,
        body: Body,
        reply: Option<ReplyTx>,
    ) -> Result<(), (AgentError, Option<ReplyTx>)> {
        if let Some(h) = self.agents.get(&d.target) {
            return self.deliver_running(&h, d, body, reply);
        }
        if let Some(mut slot) = self.down.get_mut(&d.target) {
            let (spec, stats) = (slot.spec.clone(), slot.stats.clone());
            if let Err(e) = self.check(&d, &spec, &stats) {
                return Err((e, reply));
            }
            let queue = slot
                .queue
                .get_mut()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if queue.len() >= MAX_QUEUED_WHILE_DOWN {
                let e = AgentError::MailboxFull {
                    id: d.target.to_string(),
                    held: MAX_QUEUED_WHILE_DOWN,
                };
                return Err((e, reply));
            }
            stats.received.fetch_add(1, Ordering::Relaxed);
            queue.push_back((d, body, reply));
            return Ok(());
        }
        if let Some(i) = self.installed.get(&d.target) {
            // relayed by the source: addressed to the new epoch (a sender that still has an
            // older route, the source's own included, waits with the others)
            if d.epoch == i.hosted.spec.epoch && peer.is_some_and(|p| *p == *i.source) {
                let h = i.hosted.clone();
                drop(i);
                return self.deliver_running(&h, d, body, reply);
            }
            if let Err(e) = self.check(&d, &i.hosted.spec, &i.hosted.stats) {
                return Err((e, reply));
            }
            i.hosted.stats.received.fetch_add(1, Ordering::Relaxed);
            i.queue
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push_back((d, body, reply));
            return Ok(());
        }
        // the slot may have been promoted to running between the looks
        if let Some(h) = self.agents.get(&d.target).map(|h| h.clone()) {
            return self.deliver_running(&h, d, body, reply);
        }
        if self.moved.contains_key(&d.target) {
            let (target, call) = into_call(d, body, reply);
            match self.forward(&target, call) {
                Ok(()) => return Ok(()),
                Err(call) => {
                    let e = AgentError::NotHere {
                        id: target.to_string(),
                        node: self.node.to_string(),
                    };
                    return Err((e, call.reply));
                }
            }
        }
        let e = match self.failed.get(&d.target) {
            Some(f) => AgentError::Failed {
                id: d.target.to_string(),
                reason: f.1.clone(),
            },
            None => AgentError::NotFound {
                id: d.target.to_string(),
            },
        };
        Err((e, reply))
    }

    /// [`Host::try_deliver`] if `target` runs here or waits here to restart: `make` builds
    /// the delivery only then, with one look at the running agents. None: not hosted here
    /// (`make` was not called).
    pub fn deliver_if_here(
        &self,
        target: &AgentId,
        make: impl FnOnce() -> (Delivery, Body, Option<ReplyTx>),
    ) -> Option<Result<(), (AgentError, Option<ReplyTx>)>> {
        if let Some(h) = self.agents.get(target) {
            let (d, body, reply) = make();
            return Some(self.deliver_running(&h, d, body, reply));
        }
        if self.down.contains_key(target)
            || self.installed.contains_key(target)
            || self.moved.contains_key(target)
        {
            let (d, body, reply) = make();
            return Some(self.try_deliver(d, body, reply));
        }
        None
    }

    fn deliver_running(
        &self,
        h: &Hosted,
        d: Delivery,
        body: Body,
        reply: Option<ReplyTx>,
    ) -> Result<(), (AgentError, Option<ReplyTx>)> {
        if let Err(e) = self.check(&d, &h.spec, &h.stats) {
            return Err((e, reply));
        }
        h.stats.received.fetch_add(1, Ordering::Relaxed);
        let (target, call) = into_call(d, body, reply);
        h.actor.send(call).or_else(|call| {
            // frozen for a move since it was looked up: it waits in the move's slot
            if let Some(slot) = self
                .down
                .get(&target)
                .filter(|s| s.status == super::DownStatus::Moving)
            {
                let mut q = slot
                    .queue
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                q.push_back(held(&target, *call));
                return Ok(());
            }
            h.stats.settle(1);
            let e = AgentError::Failed {
                id: target.to_string(),
                reason: "stopped".into(),
            };
            Err((e, call.reply))
        })
    }

    fn check(&self, d: &Delivery, spec: &Spec, stats: &AgentStats) -> Result<(), AgentError> {
        check_head(&d.target, d.epoch, d.contract.as_ref(), spec)?;
        if d.seq != 0 && d.in_process && spec.floor != spec.epoch {
            stats.raise_seq(&d.sender, d.seq);
        }
        if d.seq != 0 && !d.in_process {
            stats.with_last_seq(&d.sender, |last| {
                admit_seq(last, d.seq, stats).map_err(|()| AgentError::Duplicate {
                    id: d.target.to_string(),
                    sender: d.sender.to_string(),
                    seq: d.seq,
                })
            })?;
        }
        Ok(())
    }

    /// Delivers a run of tells from a peer (see [`TellRun`]) as its envelopes one by one
    /// would be, in order: to a running agent with one look at it, one epoch and contract
    /// check, one lock on its sequence table and one on its mailbox. Returns the messages
    /// refused, with why.
    pub fn deliver_run(&self, run: TellRun) -> Vec<(u64, AgentError)> {
        self.deliver_run_from(None, run)
    }

    /// [`Host::deliver_run`] of a run that came from node `peer` (see
    /// [`Host::try_deliver_from`]).
    pub fn deliver_run_from(&self, peer: Option<&str>, run: TellRun) -> Vec<(u64, AgentError)> {
        let Some(h) = self.agents.get(&run.target) else {
            // not running here: queued while it restarts or moves, or refused, one by one
            return run
                .into_envelopes()
                .filter_map(|env| {
                    let seq = env.seq;
                    let (d, body) = Delivery::from_envelope(env);
                    self.try_deliver_from(peer, d, body, None)
                        .err()
                        .map(|(e, _)| (seq, e))
                })
                .collect();
        };
        let TellRun {
            target,
            epoch,
            sender,
            contract,
            encoding,
            msgs,
            bytes: _,
        } = run;
        if let Err(e) = check_head(&target, epoch, Some(&contract), &h.spec) {
            return msgs.iter().map(|m| (m.seq, e.clone())).collect();
        }
        let mut refused = Vec::new();
        let mut calls = Vec::with_capacity(msgs.len());
        h.stats.with_last_seq(&sender, |last| {
            for m in msgs {
                if m.seq != 0 && admit_seq(last, m.seq, &h.stats).is_err() {
                    let e = AgentError::Duplicate {
                        id: target.to_string(),
                        sender: sender.to_string(),
                        seq: m.seq,
                    };
                    refused.push((m.seq, e));
                    continue;
                }
                calls.push(Call {
                    body: Body::Encoded(encoding, m.body),
                    trace: m.trace,
                    sender: Some(sender.clone()),
                    seq: m.seq,
                    reply: None,
                });
            }
        });
        h.stats
            .received
            .fetch_add(calls.len() as u64, Ordering::Relaxed);
        if let Err(mut back) = h.actor.send_all(calls) {
            // frozen for a move since it was looked up: they wait in the move's slot
            if let Some(slot) = self
                .down
                .get(&target)
                .filter(|s| s.status == super::DownStatus::Moving)
            {
                let mut q = slot
                    .queue
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                for c in back.drain(..) {
                    q.push_back(held(&target, c));
                }
            }
            h.stats.settle(back.len() as u64);
            refused.extend(back.into_iter().map(|c| {
                let e = AgentError::Failed {
                    id: target.to_string(),
                    reason: "stopped".into(),
                };
                (c.seq, e)
            }));
        }
        refused
    }
}

/// Whether `seq` is the first number of a newer session than `last`'s.
fn starts_session(seq: u64, last: u64) -> bool {
    seq >> SESSION_SHIFT > last >> SESSION_SHIFT && seq & ((1 << SESSION_SHIFT) - 1) == 1
}

/// The actor message for a delivered message.
pub(super) fn into_call(d: Delivery, body: Body, reply: Option<ReplyTx>) -> (AgentId, Call) {
    let call = Call {
        body,
        trace: d.trace,
        sender: Some(d.sender),
        seq: d.seq,
        reply,
    };
    (d.target, call)
}

/// The epoch and contract checks of a delivery.
fn check_head(
    target: &AgentId,
    epoch: u64,
    contract: Option<&Contract>,
    spec: &Spec,
) -> Result<(), AgentError> {
    if epoch != 0 && epoch < spec.floor {
        return Err(AgentError::StaleEpoch {
            id: target.to_string(),
            sent: epoch,
            current: spec.epoch,
        });
    }
    if let Some(c) = contract {
        let mine = spec.kind.contract();
        if *c != mine {
            return Err(AgentError::Contract {
                id: target.to_string(),
                expected: mine.to_string(),
                got: c.to_string(),
            });
        }
    }
    Ok(())
}

/// The duplicate and gap check of one sequenced message: `Err` for a duplicate (counted);
/// a gap is counted and the message accepted.
fn admit_seq(last: &mut u64, seq: u64, stats: &AgentStats) -> Result<(), ()> {
    if seq <= *last {
        stats.duplicates.fetch_add(1, Ordering::Relaxed);
        return Err(());
    }
    if seq != *last + 1 && !starts_session(seq, *last) {
        stats.gaps.fetch_add(1, Ordering::Relaxed);
    }
    *last = seq;
    Ok(())
}

/// A call, admitted already, as a move's slot holds it.
fn held(target: &AgentId, call: Call) -> (super::Delivery, Body, Option<ReplyTx>) {
    let d = super::Delivery {
        target: target.clone(),
        epoch: 0,
        sender: call.sender.unwrap_or_else(|| "".into()),
        seq: call.seq,
        trace: call.trace,
        contract: None,
        in_process: true,
    };
    (d, call.body, call.reply)
}
