//! Keeping the directory in line with membership: failover, backups, hand-overs, evictions.
//!
//! Every entry an owner places is copied to the id's backup (the second rendezvous choice),
//! which becomes the owner when the owner goes down and then holds what it needs to fail the
//! agents over. On every membership change the reconciler walks the entries this node holds:
//!
//! ```text
//! owned here,   host decided down ──▶ fail over: claim it again from its spawn record
//!                                     (placed on a surviving node with a higher epoch)
//! owned here,   backup changed    ──▶ copy the entry to the new backup
//! owned elsewhere                 ──▶ hand the entry to its owner (Handoff); keep a copy only
//!                                     as the backup, or while its host is down
//! ```
//!
//! A failover whose probe could not ask every host is tried again, a few times, a second apart.
//! A fence stops the activations of its node; when it lifts they are reported to their owners
//! (`Evicted`), which place them again unless a newer activation exists.

use std::time::{Duration, Instant};

use tether_actors::{Activation, AgentError, AgentId};
use tether_cluster::directory::{AgentSpec, DirMsg, EntryCopy};
use tether_cluster::role::{Cx, NoticeTo, RoleCounters};
use tracing::{debug, warn};

use crate::owner::{copy_to_backup, ClaimFor, Owner};

/// The first pause before a failover that did not succeed is tried again; it doubles with
/// every attempt, up to [`FAILOVER_RETRY_MAX`].
const FAILOVER_RETRY: Duration = Duration::from_millis(500);
/// The longest pause between two tries of a failover.
const FAILOVER_RETRY_MAX: Duration = Duration::from_secs(5);

/// The reconciler's state on one remote node.
#[derive(Debug, Default)]
pub(crate) struct Failover {
    /// Failovers to try again: when, which, which attempt.
    retries: Vec<(Instant, AgentId, u32)>,
    /// Activations a fence stopped, reported to their owners when the fence is lifted, with
    /// their spawn records.
    evicted: Vec<(AgentId, u64, Option<AgentSpec>)>,
    pub(crate) counters: RoleCounters,
}

impl Failover {
    /// Brings the directory in line with the current view (see the module doc).
    pub(crate) fn reconcile(&mut self, owner: &mut Owner, cx: &mut Cx<'_>, fenced: bool) {
        if fenced {
            return; // a fenced node acts for no one; it reconciles when the fence lifts
        }
        let me = cx.me().to_owned();
        for id in owner.entries.ids() {
            let (o, b) = cx.owner_and_backup(&id);
            let Some(o) = o else { return };
            let Some(e) = owner.entries.get(&id).cloned() else {
                continue;
            };
            let dead = Owner::gone(cx, &id, &e);
            if o == me {
                let replace = Owner::replaceable(cx, &id, &e);
                let backup_now = b.as_deref().map(|b| (b, cx.life_of(b).unwrap_or_default()));
                let copied = e.copied_to.as_ref().map(|(n, life)| (&**n, *life));
                if replace {
                    self.fail_over(owner, cx, id, 1);
                } else if copied != backup_now {
                    copy_to_backup(&mut owner.entries, cx, &id);
                }
                continue;
            }
            if let Some(entry) = e.copy(&id) {
                cx.notify(NoticeTo::Owner, DirMsg::Handoff { req: 0, entry });
            }
            if b.as_deref() != Some(me.as_str()) && !dead {
                owner.entries.remove(&id);
            }
        }
    }

    /// Activates `id` again (its host is down, or a fence stopped it), from the spawn record
    /// in its entry. The claim probes the hosts first, so a newer activation that exists
    /// elsewhere is adopted rather than doubled.
    pub(crate) fn fail_over(
        &mut self,
        owner: &mut Owner,
        cx: &mut Cx<'_>,
        id: AgentId,
        attempt: u32,
    ) {
        let Some(e) = owner.entries.get(&id) else {
            return;
        };
        if owner.stopping {
            debug!(agent = %id, "not placed again: the cluster is stopping");
            return;
        }
        let Some(spec) = e.spec.clone() else {
            self.counters.unavailable += 1;
            warn!(agent = %id, node = %e.node, "unavailable: its node is down and no spawn record of it is held here");
            return;
        };
        let claim = Owner::failover_claim(cx.me(), &id, &spec);
        owner.claim(cx, false, ClaimFor::Failover(attempt), claim);
        self.account(owner, cx);
    }

    /// Accounts for the failover claims that ended.
    pub(crate) fn account(&mut self, owner: &mut Owner, cx: &mut Cx<'_>) {
        for (id, who, result) in std::mem::take(&mut owner.finished) {
            let ClaimFor::Failover(attempt) = who else {
                continue;
            };
            self.failover_ended(cx, id, attempt, result);
        }
    }

    fn failover_ended(
        &mut self,
        cx: &Cx<'_>,
        id: AgentId,
        attempt: u32,
        result: Result<Activation, AgentError>,
    ) {
        match result {
            Ok(a) if a.created => {
                self.counters.failovers += 1;
                warn!(agent = %id, to = %a.node, epoch = a.epoch, "failed over");
            }
            Ok(a) => {
                debug!(agent = %id, node = %a.node, epoch = a.epoch, "already active elsewhere")
            }
            // no node could take it now, or a host could not be asked whether it runs a newer
            // activation (placing one then could double it): tried again, with a growing pause,
            // for as long as its entry says it is gone and this node owns it
            Err(err) => {
                if attempt == 1 {
                    self.counters.unavailable += 1;
                    warn!(agent = %id, error = %err, "unavailable for now: it cannot run on any eligible node; retrying");
                } else {
                    debug!(agent = %id, attempt, error = %err, "failover not done yet");
                }
                let pause = FAILOVER_RETRY
                    .saturating_mul(1 << (attempt - 1).min(8))
                    .min(FAILOVER_RETRY_MAX);
                self.retries.push((cx.now + pause, id, attempt + 1));
            }
        }
    }

    /// Runs the failovers due again: those whose entry still says the agent is gone, on a
    /// node that still owns it and is not fenced.
    pub(crate) fn retry_due(&mut self, owner: &mut Owner, cx: &mut Cx<'_>, fenced: bool) {
        let now = cx.now;
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retries)
            .into_iter()
            .partition(|(at, _, _)| *at <= now);
        self.retries = later;
        for (at, id, attempt) in due {
            if fenced {
                // not now: the fence's lift reconciles everything it holds
                self.retries.push((at, id, attempt));
                continue;
            }
            let (o, _) = cx.owner_and_backup(&id);
            let still_gone = owner
                .entries
                .get(&id)
                .is_some_and(|e| Owner::replaceable(cx, &id, e));
            if !still_gone {
                continue;
            }
            if o.as_deref() == Some(cx.me()) {
                self.fail_over(owner, cx, id, attempt);
            } else {
                // the id moved to another owner meanwhile: it places the agent, from this
                // node's entry (which may be the only one that knows the agent is gone)
                copy_to_backup(&mut owner.entries, cx, &id);
            }
        }
    }

    /// An activation of this node ended while fenced: its owner learns it when the fence
    /// lifts.
    pub(crate) fn evicted_here(&mut self, id: AgentId, epoch: u64) {
        if !self.evicted.iter().any(|(i, e, _)| *i == id && *e == epoch) {
            self.evicted.push((id, epoch, None));
        }
    }

    /// The fence stopped these activations: their spawn records are kept for the report.
    pub(crate) fn fenced_here(&mut self, stopped: Vec<(AgentId, u64, AgentSpec)>) {
        for (id, epoch, spec) in stopped {
            match self
                .evicted
                .iter_mut()
                .find(|(i, e, _)| *i == id && *e == epoch)
            {
                Some(known) => known.2 = Some(spec),
                None => self.evicted.push((id, epoch, Some(spec))),
            }
        }
    }

    /// The fence lifted: the activations it stopped are reported to their owners.
    pub(crate) fn fence_lifted(&mut self, owner: &mut Owner, cx: &mut Cx<'_>) {
        for (id, epoch, spec) in std::mem::take(&mut self.evicted) {
            let msg = DirMsg::Evicted {
                req: 0,
                id,
                epoch,
                spec,
            };
            cx.notify(NoticeTo::Owner, msg);
        }
        self.reconcile(owner, cx, false);
    }

    /// Owner side of `Evicted`: a fence on `from` stopped activation `epoch` of `id`. A
    /// fenced node records it and places the agent again when its own fence lifts.
    pub(crate) fn evicted_from(
        &mut self,
        owner: &mut Owner,
        cx: &mut Cx<'_>,
        (id, epoch, spec): (AgentId, u64, Option<AgentSpec>),
        from: &str,
        fenced: bool,
    ) {
        let life = cx.life_of(from).unwrap_or_default();
        let matches = match owner.entries.get_mut(&id) {
            Some(e) if &*e.node == from && e.epoch == epoch => {
                e.evicted = true;
                true
            }
            Some(e) if e.epoch >= epoch => false,
            // not known here yet (this owner restarted, or took over before the entry's
            // hand-over came): the fact is kept, and the hand-over brings the spawn record
            _ => {
                owner.entries.found(&id, from, life, epoch);
                if let Some(e) = owner.entries.get_mut(&id) {
                    e.evicted = true;
                }
                true
            }
        };
        if let Some(spec) = spec.filter(|_| matches) {
            // the host's record fills in an entry rebuilt without one
            owner.entries.merge(EntryCopy {
                id: id.clone(),
                node: from.to_owned(),
                life,
                epoch,
                spec,
                failed: None,
                evicted: true,
            });
        }
        if !matches {
            debug!(agent = %id, epoch, %from, "eviction of an activation that is no longer current");
        } else if !fenced {
            self.fail_over(owner, cx, id, 1);
        }
    }

    /// Owner side of `Handoff`: the entry is merged (the newest epoch wins, so a fenced node
    /// learns of activations placed while it was cut off), and failed over if its activation
    /// is gone and this node may act.
    pub(crate) fn handoff(
        &mut self,
        owner: &mut Owner,
        cx: &mut Cx<'_>,
        entry: EntryCopy,
        fenced: bool,
    ) {
        let id = entry.id.clone();
        owner.entries.merge(entry);
        let replace = owner
            .entries
            .get(&id)
            .is_some_and(|e| Owner::replaceable(cx, &id, e));
        if replace && !fenced {
            self.fail_over(owner, cx, id, 1);
        }
    }
}
