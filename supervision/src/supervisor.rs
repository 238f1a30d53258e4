//! Supervisors as ractor actors, carrying out the strategy core's directives.
//!
//! ```text
//! root (SupervisorActor, one-for-one)
//!  ├─ agent actors spawned linked to root (each with its own policy and budget)
//!  └─ group supervisors (SupervisorActor, any strategy), linked to root
//!      └─ agent actors spawned linked to the group
//! ```
//!
//! Every supervisor actor owns one [`Core`]. ractor tells it when a linked child fails or stops
//! (`handle_supervisor_evt`); it feeds the core and carries the directives out on the host:
//! stop a sibling (then kill it after its shutdown timeout), start again now or after the
//! backoff (a timer message to itself), forget, give up, or escalate. A group that escalates
//! fails itself, so its parent sees a failed child and applies its own strategy; a group that
//! its parent restarts adopts its agents again (the member list lives outside the actor). A
//! root that escalates stops every agent of the node and stays `failed`.
//!
//! Restarted agents keep their id, epoch and arguments (the host keeps them), and messages
//! sent meanwhile wait in the host and reach the new instance: refs keep working.
//!
//! ## Which agent a supervision event is about
//!
//! An agent's ractor actor starts at its first message, not at spawn (see
//! `tether_actors::mailbox`), so a supervisor does not know its agents' actors when it takes
//! them in. The host tells the node's supervision when a supervised agent's actor starts
//! ([`Host::set_start_listener`]): the actor goes into a map shared by the node's
//! supervisors, actor -> agent, and an event of that actor is the agent's. The entry goes with
//! the event (one per actor: its end), or when the host restarts the agent (the old
//! instance's event, if it still comes, is stale and is dropped). Group supervisors are
//! mapped by their own actor ids.
//!
//! ## Spawning under the root: no round trip through the root actor
//!
//! A spawn under the root (the default) activates the agent in the caller's own task, as a
//! bare ractor spawn would; the root takes the child in afterwards, through its [`Intake`].
//! The caller pushes the child into the intake just before the host lists the agent
//! ([`Host::activate`]): nothing can be sent to it before, so no actor of it runs and no
//! exit of it can reach the root before the child is there to take in. The root takes in
//! what was pushed at the start of every message and supervision event. A spawn into a group
//! asks the group's actor, which activates and adopts in one step (a group can be restarted
//! by its parent, and its adoptions go in order with that).

mod snapshot;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tether_actors::host::{now_unix_ms, RunOptions};
use tether_actors::{Activation, AgentError, AgentId, Host, SpawnRecord, TraceContext};
use tracing::{error, info, warn};

use crate::error::SupervisionError;
use crate::policy::{AgentPolicy, Intensity, RestartType, StoredPolicy, Strategy};
use crate::strategy::{ChildId, ChildSpec, Core, Directive, Exit};
use crate::tree::{Failure, SupervisorNode};

/// How long a snapshot of one supervisor may take.
pub(crate) const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(2);

/// A group supervisor's definition.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSpec {
    /// Its name (unique on the node).
    pub name: String,
    /// Its strategy.
    pub strategy: Strategy,
    /// Its budget; past it the group escalates to the root.
    pub intensity: Intensity,
}

/// What a new agent child needs.
pub struct AddAgent {
    /// The agent.
    pub id: AgentId,
    /// Its epoch.
    pub epoch: u64,
    /// Its arguments and labels (shared with the directory entry that placed it).
    pub record: Arc<SpawnRecord>,
    /// Its policy.
    pub policy: AgentPolicy,
    /// Trace of the spawn.
    pub trace: TraceContext,
    /// The checkpoint it starts from instead of `init` (the target of a move).
    pub restore: Option<Arc<tether_actors::Checkpoint>>,
}

/// Messages of a supervisor actor.
pub enum SupMsg {
    /// Activate an agent under this supervisor.
    Add(Box<AddAgent>, RpcReplyPort<Result<Activation, AgentError>>),
    /// Create a group under this (root) supervisor.
    AddGroup(GroupSpec, RpcReplyPort<Result<(), SupervisionError>>),
    /// A backoff delay ran out: start this child.
    Start(ChildId),
    /// Report the subtree.
    Snapshot(RpcReplyPort<SupervisorNode>),
    /// Stop every agent of the subtree for good (the node is fenced); reply how many.
    Fence(RpcReplyPort<Vec<Fenced>>),
    /// Reply once the children activated so far are taken in (see "Spawning under the root").
    Settle(RpcReplyPort<()>),
    /// An agent child moved to another node: forget it here without stopping anything.
    Forget(AgentId, RpcReplyPort<bool>),
    /// The policy of an agent child, if it is one of this supervisor's.
    PolicyOf(AgentId, RpcReplyPort<Option<AgentPolicy>>),
}

impl ractor::Message for SupMsg {}

pub(crate) enum Kind {
    Agent {
        id: AgentId,
        policy: StoredPolicy,
    },
    /// Boxed: groups are few, agents many (an agent child stays small).
    Group {
        spec: Box<GroupSpec>,
        actor: Option<ActorRef<SupMsg>>,
    },
}

/// An agent a fence stopped, with what it takes to activate it again elsewhere: the node
/// that placed it may be on the other side of the split, and this host may be the only one
/// on its side that knows how the agent was spawned.
#[derive(Debug, Clone)]
pub struct Fenced {
    /// The agent.
    pub id: AgentId,
    /// The activation stopped.
    pub epoch: u64,
    /// How it was spawned.
    pub record: Arc<SpawnRecord>,
    /// How it was supervised.
    pub policy: AgentPolicy,
    /// The supervisor group it ran under, if not the root.
    pub group: Option<String>,
}

pub(crate) struct ChildInfo {
    pub(crate) kind: Kind,
    /// Boxed: most children never fail, and every child pays for the inline size.
    pub(crate) last_failure: Option<Box<Failure>>,
}

/// The root's intake (see "Spawning under the root" above).
#[derive(Default)]
pub(crate) struct Intake {
    /// Activated by callers, not yet taken into the root's state.
    pub(crate) adopted: Vec<(AgentId, StoredPolicy)>,
    /// The root gave up (escalated): it takes no new child.
    pub(crate) failed: Option<String>,
}

impl Intake {
    /// Refuses a new child once the root has failed.
    pub(crate) fn open(&self, node: &str) -> Result<(), AgentError> {
        match &self.failed {
            Some(reason) => Err(AgentError::Supervision {
                reason: format!("the root supervisor of {node} has failed: {reason}"),
            }),
            None => Ok(()),
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Shared between the node handle and every supervisor actor: what outlives one actor.
pub(crate) struct Shared {
    pub(crate) host: Arc<Host>,
    /// The root's intake.
    pub(crate) intake: Mutex<Intake>,
    /// The actors of supervised agents that started, not yet ended: actor -> agent (see
    /// "Which agent a supervision event is about").
    pub(crate) started: Mutex<HashMap<ActorId, AgentId>>,
    /// Members of each group, in start order (a restarted group adopts them again).
    pub(crate) members: Mutex<HashMap<String, Vec<(AgentId, StoredPolicy)>>>,
    pub(crate) groups: Mutex<HashMap<String, ActorRef<SupMsg>>>,
}

pub(crate) struct SupervisorActor {
    pub(crate) shared: Arc<Shared>,
    pub(crate) name: String,
    pub(crate) strategy: Strategy,
    pub(crate) intensity: Intensity,
}

pub(crate) struct State {
    pub(crate) core: Core,
    pub(crate) children: HashMap<ChildId, ChildInfo>,
    /// Agent children.
    pub(crate) by_agent: HashMap<AgentId, ChildId>,
    /// Group children, by their supervisor's actor.
    pub(crate) by_actor: HashMap<ActorId, ChildId>,
    pub(crate) next: ChildId,
    pub(crate) failed: Option<String>,
}

fn run_options(policy: &AgentPolicy, me: &ActorRef<SupMsg>) -> RunOptions {
    RunOptions {
        supervisor: Some(me.get_cell()),
        handler_timeout: policy.handler_timeout,
        start_timeout: policy.start_timeout,
        shutdown_timeout: policy.shutdown_timeout,
    }
}

/// Activates `a` on the host, supervised by `sup`; `created` is called as in
/// [`Host::activate`].
pub(crate) async fn activate_linked(
    host: &Host,
    a: &AddAgent,
    sup: &ActorRef<SupMsg>,
    created: impl FnOnce(),
) -> Result<Activation, AgentError> {
    host.activate_from(
        a.id.clone(),
        a.epoch,
        a.record.clone(),
        a.trace,
        run_options(&a.policy, sup),
        a.restore.clone(),
        created,
    )
    .await
}

impl SupervisorActor {
    fn child_spec(&self, id: ChildId, policy: &AgentPolicy) -> ChildSpec {
        ChildSpec {
            id,
            restart: policy.restart,
            intensity: Some(policy.intensity),
            backoff: policy.backoff,
        }
    }

    async fn add_agent(
        &self,
        me: &ActorRef<SupMsg>,
        st: &mut State,
        a: AddAgent,
    ) -> Result<Activation, AgentError> {
        if let Some(reason) = &st.failed {
            return Err(AgentError::Supervision {
                reason: format!("supervisor {} has failed: {reason}", self.name),
            });
        }
        let act = activate_linked(&self.shared.host, &a, me, || {}).await?;
        if act.created {
            self.adopt(st, a.id.clone(), a.policy.into());
            if self.name != "root" {
                let mut m = self
                    .shared
                    .members
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                m.entry(self.name.clone())
                    .or_default()
                    .push((a.id, a.policy.into()));
            }
        }
        Ok(act)
    }

    /// The root takes in the children that callers activated under it (see "Spawning under
    /// the root"). Other supervisors have no intake.
    fn take_in(&self, st: &mut State) {
        if self.name != "root" {
            return;
        }
        let adopted = std::mem::take(&mut lock(&self.shared.intake).adopted);
        for (id, policy) in adopted {
            if let Some(reason) = &st.failed {
                // it started while the root gave up: it goes the way of the others
                self.shared
                    .host
                    .give_up(&id, &format!("root supervisor gave up: {reason}"));
            }
            self.adopt(st, id, policy);
        }
    }

    /// Makes an agent of the host a child of this supervisor.
    fn adopt(&self, st: &mut State, id: AgentId, policy: StoredPolicy) -> ChildId {
        let child = st.next;
        st.next += 1;
        st.core.add_child(self.child_spec(child, &policy.get()));
        st.by_agent.insert(id.clone(), child);
        st.children.insert(
            child,
            ChildInfo {
                kind: Kind::Agent { id, policy },
                last_failure: None,
            },
        );
        child
    }

    /// Drops a child from the maps (not from the core).
    fn forget_child(st: &mut State, child: ChildId) -> Option<ChildInfo> {
        let info = st.children.remove(&child)?;
        match &info.kind {
            Kind::Agent { id, .. } => {
                st.by_agent.remove(id);
            }
            Kind::Group { .. } => st.by_actor.retain(|_, c| *c != child),
        }
        Some(info)
    }

    /// The host restarted `id`: the actor of the instance it replaced is forgotten, so that
    /// its supervision event, if it still comes, is dropped as stale.
    fn replaced(&self, old: Option<ActorId>) {
        if let Some(old) = old {
            lock(&self.shared.started).remove(&old);
        }
    }

    /// The child a supervision event of `actor` is about (see "Which agent a supervision
    /// event is about"); the actor is forgotten either way.
    fn child_of(&self, st: &mut State, actor: &ActorId) -> Option<ChildId> {
        if let Some(child) = st.by_actor.remove(actor) {
            return Some(child);
        }
        let agent = lock(&self.shared.started).remove(actor)?;
        st.by_agent.get(&agent).copied()
    }

    async fn start_group(
        &self,
        me: &ActorRef<SupMsg>,
        spec: &GroupSpec,
    ) -> Result<ActorRef<SupMsg>, SupervisionError> {
        let actor = SupervisorActor {
            shared: self.shared.clone(),
            name: spec.name.clone(),
            strategy: spec.strategy,
            intensity: spec.intensity,
        };
        let (aref, _) = Actor::spawn_linked(None, actor, (), me.get_cell())
            .await
            .map_err(|e| SupervisionError::Start(e.to_string()))?;
        self.shared
            .groups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(spec.name.clone(), aref.clone());
        Ok(aref)
    }

    /// Stops every agent under this supervisor (and its groups) without restarting them: they
    /// leave the supervisor first, so their exits are not failures to act on.
    async fn fence(&self, st: &mut State) -> Vec<Fenced> {
        let host = self.shared.host.clone();
        let mut stopped = Vec::new();
        let children: Vec<ChildId> = st.children.keys().copied().collect();
        for c in children {
            let group = match st.children.get(&c).map(|i| &i.kind) {
                Some(Kind::Agent { .. }) => None,
                Some(Kind::Group { actor, .. }) => Some(actor.clone()),
                None => continue,
            };
            if let Some(actor) = group {
                if let Some(a) = actor {
                    if let Ok(ractor::rpc::CallResult::Success(n)) =
                        a.call(SupMsg::Fence, Some(SNAPSHOT_TIMEOUT * 4)).await
                    {
                        stopped.extend(n);
                    }
                }
                continue;
            }
            let Some(info) = Self::forget_child(st, c) else {
                continue;
            };
            st.core.remove_child(c);
            if let Kind::Agent { id, policy } = info.kind {
                let record = host.record_of(&id);
                host.stop(&id, false).await;
                host.forget(&id);
                if let Some((epoch, record)) = record {
                    let group = (self.name != "root").then(|| self.name.clone());
                    stopped.push(Fenced {
                        id,
                        epoch,
                        record,
                        policy: policy.get(),
                        group,
                    });
                }
            }
        }
        if self.name != "root" {
            if let Some(m) = self
                .shared
                .members
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get_mut(&self.name)
            {
                m.clear();
            }
        }
        stopped
    }

    async fn on_exit(&self, me: &ActorRef<SupMsg>, st: &mut State, child: ChildId, exit: Exit) {
        if let Exit::Failed(reason) = &exit {
            if let Some(c) = st.children.get_mut(&child) {
                c.last_failure = Some(Box::new(Failure {
                    at_unix_ms: now_unix_ms(),
                    reason: reason.clone(),
                }));
            }
        }
        let directives = st
            .core
            .on_exit(Instant::now(), child, exit, rand::random::<f64>());
        self.execute(me, st, directives).await;
    }

    async fn execute(&self, me: &ActorRef<SupMsg>, st: &mut State, directives: Vec<Directive>) {
        let host = self.shared.host.clone();
        for d in directives {
            match d {
                Directive::Stop(c) => match st.children.get(&c).map(|x| &x.kind) {
                    Some(Kind::Agent { id, .. }) => host.stop(id, true).await,
                    Some(Kind::Group { actor: Some(a), .. }) => {
                        a.stop(Some("stopped by its supervisor".into()))
                    }
                    _ => {}
                },
                Directive::Start { child, at } => {
                    let now = Instant::now();
                    if at > now {
                        if let Some(Kind::Agent { id, .. }) =
                            st.children.get(&child).map(|x| &x.kind)
                        {
                            host.backing_off(id);
                        }
                        me.send_after(at - now, move || SupMsg::Start(child));
                    } else {
                        self.start_child(me, st, child).await;
                    }
                }
                Directive::Remove(c) => {
                    if let Some(info) = Self::forget_child(st, c) {
                        if let Kind::Agent { id, .. } = info.kind {
                            host.forget(&id);
                        }
                    }
                }
                Directive::GiveUp { child, reason } => {
                    if let Some(info) = st.children.get_mut(&child) {
                        info.last_failure = Some(Box::new(Failure {
                            at_unix_ms: now_unix_ms(),
                            reason: reason.clone(),
                        }));
                        match &info.kind {
                            Kind::Agent { id, .. } => host.give_up(id, &reason),
                            Kind::Group { spec, .. } => self.give_up_group(&spec.name, &reason),
                        }
                    }
                }
                Directive::Escalate { reason } => {
                    st.failed = Some(reason.clone());
                    if self.name == "root" {
                        lock(&self.shared.intake).failed = Some(reason.clone());
                        error!(%reason, "root supervisor gave up: every agent of this node stops");
                        for info in st.children.values() {
                            if let Kind::Agent { id, .. } = &info.kind {
                                host.give_up(id, &format!("root supervisor gave up: {reason}"));
                            }
                        }
                    } else {
                        warn!(group = %self.name, %reason, "supervisor escalates to its parent");
                        // failing makes ractor report it to the parent as a failed child
                        me.stop(Some(format!("escalated: {reason}")));
                    }
                }
            }
        }
    }

    fn give_up_group(&self, name: &str, reason: &str) {
        let members = self
            .shared
            .members
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()
            .unwrap_or_default();
        for (id, _) in members {
            self.shared
                .host
                .give_up(&id, &format!("group {name} given up: {reason}"));
        }
    }

    async fn start_child(&self, me: &ActorRef<SupMsg>, st: &mut State, child: ChildId) {
        let Some(info) = st.children.get(&child) else {
            return;
        };
        let result = match &info.kind {
            Kind::Agent { id, .. } => {
                let id = id.clone();
                match self.shared.host.restart(&id, Some(me.get_cell())).await {
                    Ok(old) => {
                        self.replaced(old);
                        Ok(())
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            Kind::Group { spec, .. } => {
                let spec = spec.clone();
                match self.start_group(me, &spec).await {
                    Ok(a) => {
                        st.by_actor.retain(|_, c| *c != child);
                        st.by_actor.insert(a.get_id(), child);
                        if let Some(ChildInfo {
                            kind: Kind::Group { actor, .. },
                            ..
                        }) = st.children.get_mut(&child)
                        {
                            *actor = Some(a);
                        }
                        Ok(())
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        match result {
            Ok(()) => st.core.started(child),
            // a start that fails is a failure of the child, counted like any other
            Err(reason) => Box::pin(self.on_exit(me, st, child, Exit::Failed(reason))).await,
        }
    }
}

impl Actor for SupervisorActor {
    type Msg = SupMsg;
    type State = State;
    type Arguments = ();

    async fn pre_start(&self, me: ActorRef<SupMsg>, _: ()) -> Result<State, ActorProcessingErr> {
        let mut st = State {
            core: Core::new(self.strategy, self.intensity),
            children: HashMap::new(),
            by_agent: HashMap::new(),
            by_actor: HashMap::new(),
            next: 1,
            failed: None,
        };
        // a restarted group adopts its agents again: they wait, down, in the host
        let members = self
            .shared
            .members
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&self.name)
            .cloned()
            .unwrap_or_default();
        for (id, policy) in members {
            match self.shared.host.restart(&id, Some(me.get_cell())).await {
                Ok(old) => {
                    self.replaced(old);
                    self.adopt(&mut st, id, policy);
                }
                Err(e) => {
                    warn!(group = %self.name, agent = %id, error = %e, "could not restart a member")
                }
            }
        }
        if self.name != "root" {
            info!(group = %self.name, strategy = %self.strategy, "supervisor started");
        }
        Ok(st)
    }

    async fn handle(
        &self,
        me: ActorRef<SupMsg>,
        msg: SupMsg,
        st: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        self.take_in(st);
        match msg {
            SupMsg::Add(a, reply) => {
                let r = self.add_agent(&me, st, *a).await;
                let _ = reply.send(r);
            }
            SupMsg::AddGroup(spec, reply) => {
                if st
                    .children
                    .values()
                    .any(|c| matches!(&c.kind, Kind::Group { spec: s, .. } if s.name == spec.name))
                {
                    let _ = reply.send(Err(SupervisionError::GroupExists(spec.name)));
                    return Ok(());
                }
                match self.start_group(&me, &spec).await {
                    Ok(a) => {
                        let child = st.next;
                        st.next += 1;
                        st.core.add_child(ChildSpec {
                            id: child,
                            restart: RestartType::Permanent,
                            intensity: Some(Intensity::default()),
                            backoff: crate::policy::Backoff::default(),
                        });
                        st.by_actor.insert(a.get_id(), child);
                        st.children.insert(
                            child,
                            ChildInfo {
                                kind: Kind::Group {
                                    spec: Box::new(spec),
                                    actor: Some(a),
                                },
                                last_failure: None,
                            },
                        );
                        let _ = reply.send(Ok(()));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            SupMsg::Start(child) => self.start_child(&me, st, child).await,
            SupMsg::Snapshot(reply) => {
                let s = self.snapshot(st).await;
                let _ = reply.send(s);
            }
            SupMsg::Fence(reply) => {
                let stopped = self.fence(st).await;
                let _ = reply.send(stopped);
            }
            // taken in above, as at every message
            SupMsg::Settle(reply) => {
                let _ = reply.send(());
            }
            SupMsg::Forget(id, reply) => {
                let child = st.by_agent.get(&id).copied();
                if let Some(c) = child {
                    st.core.remove_child(c);
                    Self::forget_child(st, c);
                }
                let _ = reply.send(child.is_some());
            }
            SupMsg::PolicyOf(id, reply) => {
                let policy = st
                    .by_agent
                    .get(&id)
                    .and_then(|c| match &st.children.get(c)?.kind {
                        Kind::Agent { policy, .. } => Some(policy.get()),
                        Kind::Group { .. } => None,
                    });
                let _ = reply.send(policy);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<SupMsg>,
        evt: SupervisionEvent,
        st: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, exit) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell, Exit::Failed(err.to_string())),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                let exit = match reason {
                    Some(r) if r.starts_with("escalated: ") => Exit::Failed(r),
                    Some(r) if r == tether_actors::kind::SELF_STOP => Exit::Stopped,
                    Some(r) if r == tether_actors::kind::MOVED => {
                        // frozen for a move: it goes on elsewhere, or here again if the move
                        // is aborted; either way nothing is restarted or removed now
                        self.take_in(st);
                        let _ = self.child_of(st, &cell.get_id());
                        return Ok(());
                    }
                    _ => Exit::Normal,
                };
                (cell, exit)
            }
            _ => return Ok(()),
        };
        self.take_in(st);
        // none: an actor of an instance already replaced, or of a child that left (fenced)
        let Some(child) = self.child_of(st, &cell.get_id()) else {
            return Ok(());
        };
        self.on_exit(&me, st, child, exit).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_root_takes_no_new_child() {
        let mut intake = Intake::default();
        assert!(intake.open("n1").is_ok());
        intake.failed = Some("too many restarts".into());
        let err = intake.open("n1").err().unwrap();
        assert!(
            matches!(&err, AgentError::Supervision { reason } if reason.contains("too many restarts")),
            "{err}"
        );
    }
}
