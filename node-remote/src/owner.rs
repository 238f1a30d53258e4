//! The directory owner's duties: get-or-spawn (claims), lookups, and the entries they keep.
//!
//! Each id's entry is kept by its owner (the first rendezvous choice among the up remote
//! nodes, see [`tether_cluster::directory::placement`]). Work on one id runs one item at a time,
//! in arrival order, which is what makes a race of two spawns of one id yield one agent:
//!
//! ```text
//! claim ──▶ entry known, not failed, its host alive ─────────────────▶ answer (created: false)
//!       ──▶ otherwise probe the hosts ── a newer activation found, alive ─▶ adopt it, answer
//!                                     ── none (or its host is gone) ──▶ place: choose a node,
//!                                        a new epoch (next generation), Activate there ──▶ record the
//!                                        entry, copy it to the backup, answer (created: true)
//! lookup ─▶ entry known ─▶ answer; else probe the hosts ─▶ answer what they say
//! ```
//!
//! A failover places an agent that prefers neither side on a remote node if one fits.
//!
//! A probe asks every up node that registered the kind whether it runs the agent; a node that
//! does not answer fails the probe ([`AgentError::NoDirectory`]): without its answer a new
//! activation could double one that runs there. A fenced owner decides no claim.
//!
//! Failover, hand-over and backups are in [`crate::failover`].

pub(crate) mod entries;
mod moves;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use tether_actors::{Activation, AgentError, AgentId, IdHash, Prefer, TraceContext};
use tether_cluster::core::{LOOKUP_TIMEOUT, SPAWN_TIMEOUT};
use tether_cluster::directory::{self, Candidate, DirAnswer, DirMsg, Location, PlacementError};
use tether_cluster::membership::detector::PeerState;
use tether_cluster::role::{Claim, Cx, NoticeTo, ReplyTo};
use tether_cluster::Role;
use tracing::debug;

use entries::{Entries, Entry, Spec};

/// Who waits for a claim.
#[derive(Debug, Clone)]
pub(crate) enum ClaimFor {
    /// A requester (this node, or a peer).
    Reply(ReplyTo),
    /// A failover of this owner, attempt `n` (see [`crate::failover`]).
    Failover(u32),
}

#[derive(Debug)]
enum Work {
    /// Boxed: a claim carries the agent's spawn record; lookups are many and small.
    Claim(ClaimFor, Box<Claim>),
    Lookup(ReplyTo),
}

/// What the work at the front of an id's queue is doing.
#[derive(Debug, Default)]
enum Phase {
    #[default]
    Idle,
    /// Hosts were asked whether they run the agent.
    Probing {
        /// Requests not answered yet.
        asked: HashSet<u64>,
        best: Option<Location>,
        unanswered: Vec<String>,
    },
    /// An activation was ordered (here: a token; elsewhere: a request).
    Activating { waiting: u64, spec: Arc<Spec> },
}

#[derive(Debug, Default)]
struct Run {
    queue: VecDeque<Work>,
    phase: Phase,
}

/// How a claim ended, for the failover bookkeeping.
pub(crate) type Finished = (AgentId, ClaimFor, Result<Activation, AgentError>);

/// The owner side of the directory on one remote node.
#[derive(Debug, Default)]
pub(crate) struct Owner {
    pub(crate) entries: Entries,
    runs: HashMap<AgentId, Run, IdHash>,
    /// Requests and activation tokens of this owner -> the id they are for.
    waits: HashMap<u64, AgentId>,
    /// Failover claims that ended, for [`crate::failover`] to account for.
    pub(crate) finished: Vec<Finished>,
    /// The whole cluster is stopping: no claim places anything.
    pub(crate) stopping: bool,
}

impl Owner {
    /// A claim for an id this node owns.
    pub(crate) fn claim(&mut self, cx: &mut Cx<'_>, fenced: bool, who: ClaimFor, claim: Claim) {
        if fenced {
            let e = AgentError::Fenced {
                node: cx.me().to_owned(),
            };
            return self.finish(cx, claim.id.clone(), who, Err(e));
        }
        if self.stopping {
            let e = AgentError::Unavailable {
                id: claim.id.to_string(),
                reason: "the cluster is stopping".into(),
            };
            return self.finish(cx, claim.id.clone(), who, Err(e));
        }
        let id = claim.id.clone();
        tracing::debug!(agent = %id, ?who, requester = %claim.requester, "claim");
        self.runs
            .entry(id.clone())
            .or_default()
            .queue
            .push_back(Work::Claim(who, Box::new(claim)));
        self.step(cx, &id);
    }

    /// A lookup for an id this node owns. An entry whose activation is gone (and did not fail
    /// for good) is failed over first: the lookup is answered once that is done.
    pub(crate) fn lookup(&mut self, cx: &mut Cx<'_>, fenced: bool, reply: ReplyTo, id: AgentId) {
        let gone = self
            .entries
            .get(&id)
            .filter(|e| Self::replaceable(cx, &id, e))
            .cloned();
        if let Some(e) = gone {
            let Some(spec) = e.spec else {
                let e = AgentError::Unavailable {
                    id: id.to_string(),
                    reason: format!(
                        "its node {} lost it, and no spawn record of it is held here",
                        e.node
                    ),
                };
                return cx.reply(reply, Err(e));
            };
            let claim = Self::failover_claim(cx.me(), &id, &spec);
            self.claim(cx, fenced, ClaimFor::Failover(1), claim);
        }
        if let Some(e) = self
            .entries
            .get(&id)
            .filter(|_| !self.runs.contains_key(&id))
        {
            if let Some(reason) = &e.failed {
                debug!(agent = %id, %reason, "lookup of a failed agent");
            }
            let loc = Location {
                node: e.node.to_string(),
                epoch: e.epoch,
            };
            return cx.reply(reply, Ok(DirAnswer::Location(Some(loc))));
        }
        self.runs
            .entry(id.clone())
            .or_default()
            .queue
            .push_back(Work::Lookup(reply));
        self.step(cx, &id);
    }

    /// Whether a claim of `id` is under way here (probing or activating).
    pub(crate) fn placing(&self, id: &AgentId) -> bool {
        self.runs.get(id).is_some_and(|r| {
            matches!(r.queue.front(), Some(Work::Claim(..))) && !matches!(r.phase, Phase::Idle)
        })
    }

    /// Whether the activation an entry names is gone for good: its host was decided down or
    /// restarted since (a new life hosts nothing of the old one), or it is this node and its
    /// host does not run it. Such an entry is failed over.
    pub(crate) fn gone(cx: &Cx<'_>, id: &AgentId, e: &Entry) -> bool {
        if *e.node == *cx.me() {
            return cx.life_of(&e.node) != Some(e.life) || !cx.host.holds(id, e.epoch);
        }
        match cx.members.get(&e.node) {
            None => false,
            Some(m) => m.state() == PeerState::Down || m.info.incarnation > e.life,
        }
    }

    /// Whether an entry's agent is to be placed again: its activation is gone or was stopped
    /// by a fence, and it did not fail for good.
    pub(crate) fn replaceable(cx: &Cx<'_>, id: &AgentId, e: &Entry) -> bool {
        e.failed.is_none() && (e.evicted || Self::gone(cx, id, e))
    }

    /// Whether the activation an entry names can be running now: not gone, and (on a peer)
    /// the peer is up.
    pub(crate) fn alive(cx: &Cx<'_>, id: &AgentId, e: &Entry) -> bool {
        !Self::gone(cx, id, e)
            && (*e.node == *cx.me() || cx.state_of(&e.node) == Some(PeerState::Up))
    }

    /// Runs the work of `id` until it waits for something (or there is none left).
    fn step(&mut self, cx: &mut Cx<'_>, id: &AgentId) {
        loop {
            let Some(run) = self.runs.get_mut(id) else {
                return;
            };
            if !matches!(run.phase, Phase::Idle) {
                return;
            }
            let Some(front) = run.queue.front() else {
                self.runs.remove(id);
                return;
            };
            match front {
                Work::Lookup(_) => match self.entries.get(id) {
                    Some(e) => {
                        let loc = Location {
                            node: e.node.to_string(),
                            epoch: e.epoch,
                        };
                        self.pop_lookup(cx, id, Ok(Some(loc)));
                    }
                    None => {
                        if let Some(done) = self.probe(cx, id) {
                            self.probed(cx, id, done);
                        }
                    }
                },
                Work::Claim(..) => {
                    let known = self.entries.get(id).cloned();
                    match known {
                        Some(e) if e.usable() && Self::alive(cx, id, &e) => {
                            self.adopt(cx, id, e);
                        }
                        // its host cannot be reached but was not decided down: the activation
                        // may still run there, and is never doubled
                        Some(e) if e.usable() && !Self::gone(cx, id, &e) => {
                            self.pop_claim(cx, id, Err(out_of_reach(id, &e)));
                        }
                        // the entry's host is gone or the agent failed: a newer activation
                        // may exist that this node did not hear of (it was placed while this
                        // node was cut off); or there is no entry: ask the hosts
                        _ => {
                            if let Some(done) = self.probe(cx, id) {
                                self.probed(cx, id, done);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Asks every up node that could host `id` whether it does. Returns the result at once
    /// when no request is needed.
    fn probe(
        &mut self,
        cx: &mut Cx<'_>,
        id: &AgentId,
    ) -> Option<Result<Option<Location>, AgentError>> {
        if let Some(epoch) = cx.host.epoch_of(id) {
            let here = Location {
                node: cx.me().to_owned(),
                epoch,
            };
            return Some(Ok(Some(here)));
        }
        if cx.host.installing(id).is_some() {
            // a move's target before its hand-over (see `probed` in the core)
            return Some(Err(AgentError::Unavailable {
                id: id.to_string(),
                reason: format!("a move is installing it on {}", cx.me()),
            }));
        }
        // every remote node not decided down (it may run the agent, or, as the owner in its
        // view, be placing it: it then answers "unavailable"), and every up local node that
        // could host it. A remote node that cannot be asked fails the probe. A local node that
        // cannot be asked is skipped: it is never decided down, and what the directory placed
        // there has an entry
        let peers: Vec<String> = cx
            .members
            .peers()
            .filter(|m| m.state() != PeerState::Down)
            .filter(|m| {
                m.info.role == Role::Remote
                    || (m.state() == PeerState::Up && m.info.kinds.iter().any(|k| k == id.kind()))
            })
            .map(|m| m.info.name.clone())
            .collect();
        if peers.is_empty() {
            return Some(Ok(None));
        }
        let mut asked = HashSet::new();
        let mut unanswered = Vec::new();
        for peer in peers {
            let probe = |req| DirMsg::Probe {
                req,
                id: id.clone(),
            };
            match cx.request(&peer, LOOKUP_TIMEOUT, probe) {
                Ok(req) => {
                    asked.insert(req);
                    self.waits.insert(req, id.clone());
                }
                Err(e) => unanswered.push(format!("{peer}: {e}")),
            }
        }
        if asked.is_empty() {
            return Some(Err(probe_failed(id, &unanswered)));
        }
        tracing::debug!(agent = %id, asked = asked.len(), "probe");
        let run = self.runs.get_mut(id).expect("the run probing");
        run.phase = Phase::Probing {
            asked,
            best: None,
            unanswered,
        };
        None
    }

    /// The probe of `id` ended.
    fn probed(
        &mut self,
        cx: &mut Cx<'_>,
        id: &AgentId,
        result: Result<Option<Location>, AgentError>,
    ) {
        let front_is_lookup = self
            .runs
            .get(id)
            .and_then(|r| r.queue.front())
            .is_some_and(|w| matches!(w, Work::Lookup(_)));
        if front_is_lookup {
            if let Ok(Some(found)) = &result {
                let life = cx.life_of(&found.node).unwrap_or_default();
                self.entries.found(id, &found.node, life, found.epoch);
            }
            return self.pop_lookup(cx, id, result);
        }
        let found = match result {
            Ok(found) => found,
            Err(e) => return self.pop_claim(cx, id, Err(e)),
        };
        let known = self.entries.get(id).cloned();
        let mut entry_of = |f: &Location| {
            let life = cx.life_of(&f.node).unwrap_or_default();
            Entry::found(self.entries.name(&f.node), life, f.epoch)
        };
        // a newer activation found wins; so does any found where the known one was stopped
        // (evicted, failed): it serves now, and placing another would double it (a move made
        // on one side of a split can give the other side's failover an older epoch)
        let existing = match (known, found) {
            (Some(e), Some(f)) if f.epoch > e.epoch || !e.usable() => Some(Entry {
                spec: e.spec.clone(),
                ..entry_of(&f)
            }),
            (Some(e), _) => Some(e),
            (None, Some(f)) => Some(entry_of(&f)),
            (None, None) => None,
        };
        let mut prev_epoch = 0;
        if let Some(e) = existing {
            if e.usable() && Self::alive(cx, id, &e) {
                return self.adopt(cx, id, e);
            }
            if e.usable() && !Self::gone(cx, id, &e) {
                // it runs on a node that is not up in this view (joining, or unreachable) but
                // not gone either: never doubled
                return self.pop_claim(cx, id, Err(out_of_reach(id, &e)));
            }
            prev_epoch = e.epoch;
        }
        self.place(cx, id, prev_epoch);
    }

    /// The agent runs already: the entry is kept and the claim answered.
    fn adopt(&mut self, cx: &mut Cx<'_>, id: &AgentId, e: Entry) {
        let act = Activation {
            id: id.clone(),
            node: e.node.to_string(),
            epoch: e.epoch,
            created: false,
        };
        self.entries.insert(id.clone(), e);
        self.pop_claim(cx, id, Ok(act));
    }

    /// Chooses a node for the claim at the front of `id`'s queue and orders its activation
    /// with the next epoch.
    fn place(&mut self, cx: &mut Cx<'_>, id: &AgentId, prev_epoch: u64) {
        let Some(Work::Claim(who, claim)) = self.runs.get(id).and_then(|r| r.queue.front()) else {
            return;
        };
        let mut claim = (**claim).clone();
        if matches!(who, ClaimFor::Failover(_)) && claim.spec.placement.prefer == Prefer::Any {
            // an agent that does not ask for a device goes back to the backend when its node
            // is lost: a device may go offline, and it was only chosen for its load
            claim.spec.placement.prefer = Prefer::Remote;
        }
        let (owner, _) = cx.owner_and_backup(id);
        if owner.as_deref() != Some(cx.me()) {
            // the view changed while the hosts were asked: the new owner places it (a
            // failover claim is dropped; a requester asks again)
            let e = AgentError::NoDirectory(format!(
                "the owner of {id} changed to {} while placing it; ask again",
                owner.as_deref().unwrap_or("no node")
            ));
            return self.pop_claim(cx, id, Err(e));
        }
        let node = match self.choose(cx, &claim) {
            Ok(n) => n,
            Err(e) => return self.pop_claim(cx, id, Err(e)),
        };
        let epoch = cx.new_epoch(prev_epoch);
        tracing::debug!(agent = %id, %node, epoch, "place");
        let record = claim.spec.record();
        let spec = Arc::new(Spec {
            record: record.clone(),
            policy: claim.spec.policy.into(),
            group: claim.spec.group.clone(),
        });
        let waiting = if node == cx.me() {
            cx.activate(id.clone(), epoch, &claim.spec, record, claim.trace)
        } else {
            let activate = |req| DirMsg::Activate {
                req,
                id: id.clone(),
                epoch,
                spec: Box::new(claim.spec.clone()),
                trace: claim.trace,
            };
            match cx.request(&node, SPAWN_TIMEOUT, activate) {
                Ok(req) => req,
                Err(e) => return self.pop_claim(cx, id, Err(e)),
            }
        };
        self.waits.insert(waiting, id.clone());
        if let Some(run) = self.runs.get_mut(id) {
            run.phase = Phase::Activating { waiting, spec };
        }
    }

    /// The node a claim goes to: the one it names (if it fits), or placement's choice.
    fn choose(&self, cx: &Cx<'_>, claim: &Claim) -> Result<String, AgentError> {
        let candidates = self.candidates(cx, claim.id.kind(), &claim.requester);
        let Some(t) = &claim.target else {
            return directory::choose(claim.id.kind(), &claim.spec.placement, &candidates)
                .map(|c| c.name.clone())
                .map_err(|e| match e {
                    PlacementError::NoKind(_) | PlacementError::NoFit { .. } => {
                        AgentError::Placement {
                            reason: e.to_string(),
                        }
                    }
                });
        };
        let c = candidates
            .iter()
            .find(|c| &c.name == t)
            .ok_or_else(|| AgentError::NodeUnreachable { node: t.clone() })?;
        if !c.has_kind {
            return Err(AgentError::UnknownKind {
                kind: claim.id.kind().to_owned(),
                node: t.clone(),
                registered: cx.members.kinds_of(&c.name).join(", "),
            });
        }
        directory::fits(&claim.spec.placement, c.role, &c.caps).map_err(|why| {
            AgentError::Placement {
                reason: format!("{} cannot run on {t}: {why}", claim.id),
            }
        })?;
        Ok(t.clone())
    }

    /// Up nodes (this one included) as placement candidates for `kind`; the load is the number
    /// of agents this owner placed there. A node that says it is fenced takes no agent.
    fn candidates(&self, cx: &Cx<'_>, kind: &str, requester: &str) -> Vec<Candidate> {
        let view = cx.up_view();
        let fenced = |name: &str| cx.members.get(name).is_some_and(|m| m.report.fenced);
        let mut members: Vec<(String, Role, bool)> = view
            .members(kind)
            .filter(|(name, _, _)| !fenced(name))
            .map(|(name, role, has)| (name.to_owned(), role, has))
            .collect();
        if !members.iter().any(|(n, _, _)| n == requester) {
            if let Some(role) = cx.members.role_of(requester) {
                let has = cx.members.kinds_of(requester).iter().any(|k| k == kind);
                members.push((requester.to_owned(), role, has));
            }
        }
        members
            .into_iter()
            .map(|(name, role, has_kind)| Candidate {
                load: self.entries.load(&name),
                caps: cx.members.caps_of(&name).to_vec(),
                has_kind,
                name,
                role,
            })
            .collect()
    }

    /// An answer to a probe or a remote activation of this owner.
    pub(crate) fn answer(
        &mut self,
        cx: &mut Cx<'_>,
        req: u64,
        result: Result<DirAnswer, AgentError>,
    ) {
        let Some(id) = self.waits.remove(&req) else {
            return;
        };
        let Some(run) = self.runs.get_mut(&id) else {
            return;
        };
        let probing = matches!(&run.phase, Phase::Probing { asked, .. } if asked.contains(&req));
        let activating = matches!(&run.phase, Phase::Activating { waiting, .. } if *waiting == req);
        if activating {
            let result = match result {
                Ok(DirAnswer::Activation(a)) => Ok(a),
                Ok(other) => Err(AgentError::Internal(format!(
                    "expected an activation, got {other:?}"
                ))),
                Err(e) => Err(e),
            };
            return self.activated(cx, &id, result);
        }
        if !probing {
            return;
        }
        let Phase::Probing {
            asked,
            best,
            unanswered,
        } = &mut run.phase
        else {
            return;
        };
        asked.remove(&req);
        match result {
            Ok(DirAnswer::Location(Some(l))) => {
                if best.as_ref().is_none_or(|b| l.epoch > b.epoch) {
                    *best = Some(l);
                }
            }
            Ok(DirAnswer::Location(None)) => {}
            Ok(other) => unanswered.push(format!("answered {other:?}")),
            Err(e) => unanswered.push(e.to_string()),
        }
        if !asked.is_empty() {
            return;
        }
        let done = if unanswered.is_empty() {
            Ok(best.take())
        } else {
            Err(probe_failed(&id, unanswered))
        };
        run.phase = Phase::Idle;
        self.probed(cx, &id, done);
        self.step(cx, &id);
    }

    /// The result of an activation this owner ordered on its own node.
    pub(crate) fn activated_here(
        &mut self,
        cx: &mut Cx<'_>,
        token: u64,
        result: Result<Activation, AgentError>,
    ) {
        if let Some(id) = self.waits.remove(&token) {
            self.activated(cx, &id, result);
        }
    }

    fn activated(&mut self, cx: &mut Cx<'_>, id: &AgentId, result: Result<Activation, AgentError>) {
        let Some(run) = self.runs.get_mut(id) else {
            return;
        };
        let Phase::Activating { spec, .. } = std::mem::take(&mut run.phase) else {
            return;
        };
        if let Ok(act) = &result {
            let node = self.entries.name(&act.node);
            let entry = Entry {
                node,
                life: cx.life_of(&act.node).unwrap_or_default(),
                epoch: act.epoch,
                failed: None,
                evicted: false,
                spec: Some(spec),
                copied_to: None,
            };
            self.entries.insert(id.clone(), entry);
            copy_to_backup(&mut self.entries, cx, id);
        }
        self.pop_claim(cx, id, result);
        self.step(cx, id);
    }

    fn pop_lookup(
        &mut self,
        cx: &mut Cx<'_>,
        id: &AgentId,
        result: Result<Option<Location>, AgentError>,
    ) {
        let Some(run) = self.runs.get_mut(id) else {
            return;
        };
        run.phase = Phase::Idle;
        if let Some(Work::Lookup(reply)) = run.queue.pop_front() {
            cx.reply(reply, result.map(DirAnswer::Location));
        }
    }

    fn pop_claim(&mut self, cx: &mut Cx<'_>, id: &AgentId, result: Result<Activation, AgentError>) {
        let Some(run) = self.runs.get_mut(id) else {
            return;
        };
        run.phase = Phase::Idle;
        if let Some(Work::Claim(who, _)) = run.queue.pop_front() {
            self.finish(cx, id.clone(), who, result);
        }
    }

    fn finish(
        &mut self,
        cx: &mut Cx<'_>,
        id: AgentId,
        who: ClaimFor,
        result: Result<Activation, AgentError>,
    ) {
        match who {
            ClaimFor::Reply(to) => cx.reply(to, result.map(DirAnswer::Activation)),
            failover @ ClaimFor::Failover(_) => self.finished.push((id, failover, result)),
        }
    }

    /// A claim with a fresh trace, for a failover of `id` from its spawn record.
    pub(crate) fn failover_claim(me: &str, id: &AgentId, spec: &Spec) -> Claim {
        Claim {
            id: id.clone(),
            spec: spec.agent_spec(),
            target: None,
            trace: TraceContext::new_root(),
            requester: me.to_owned(),
        }
    }
}

/// Sends a copy of `id`'s entry to the id's backup (or hands it to its owner, when this node
/// holds the entry without owning it). The copy is delivered at least once, to whichever node
/// is the backup when it is tried; the entry records the backup (and its life) it was meant
/// for, so that a new backup, or one that restarted and forgot it, gets it again.
pub(crate) fn copy_to_backup(entries: &mut Entries, cx: &mut Cx<'_>, id: &AgentId) {
    let (owner, backup) = cx.owner_and_backup(id);
    let owned = owner.as_deref() == Some(cx.me());
    let meant = backup.map(|b| {
        let life = cx.life_of(&b).unwrap_or_default();
        (Box::<str>::from(b), life)
    });
    let copy = match entries.get_mut(id) {
        Some(e) => {
            if owned {
                e.copied_to = meant;
            }
            e.copy(id)
        }
        None => None,
    };
    let Some(entry) = copy else { return };
    if owned {
        cx.notify(NoticeTo::Backup, DirMsg::Backup { req: 0, entry });
    } else {
        cx.notify(NoticeTo::Owner, DirMsg::Handoff { req: 0, entry });
    }
}

/// Why a claim of `id` cannot be answered while the node that runs it, per `e`, is out of
/// reach (but not decided down).
fn out_of_reach(id: &AgentId, e: &Entry) -> AgentError {
    AgentError::Unavailable {
        id: id.to_string(),
        reason: format!(
            "it runs on {}, which cannot be reached now; it is placed again only if {} is \
             decided down",
            e.node, e.node
        ),
    }
}

fn probe_failed(id: &AgentId, unanswered: &[String]) -> AgentError {
    AgentError::NoDirectory(format!(
        "could not ask every node whether it runs {id}: {}",
        unanswered.join("; ")
    ))
}
