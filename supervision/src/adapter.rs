//! The ractor adapter: supervisors as actors, carrying out the strategy core's directives.
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
//! ## Spawning under the root: no round trip through the root actor
//!
//! A spawn under the root (the default) activates the agent in the caller's own task, linked
//! to the root, as a bare ractor spawn would; the root takes the child in afterwards, through
//! its [`Intake`]. A spawn into a group asks the group's actor, which activates and adopts in
//! one step (a group can be restarted by its parent, and its adoptions go in order with that).
//!
//! ```text
//! caller:  lock: refuse if the root failed; in_flight += 1
//!          host.activate(.., linked to root)          (init runs here, in the caller's task)
//!          lock: in_flight -= 1; push (agent, policy, actor);
//!                an exit of that actor already in `early` -> remove it, cast Exited to the root;
//!                in_flight == 0 -> clear `early`
//! root:    every message and supervision event starts with: lock; adopt every pushed child
//!          an exit of an actor still unknown then -> `early` if in_flight > 0, else dropped
//!          (it is the exit of a child that left the root, e.g. fenced)
//! ```
//!
//! The exit of a new child can overtake the caller's push: ractor hands a supervisor its
//! supervision events before its messages, and the child runs as soon as it is linked. Both
//! sides take the intake's lock for their whole step, so such an exit is either seen by the
//! root after the adoption, or found by the caller in `early` and replayed: never neither.
//! `early` only holds exits while an activation is in flight, so it stays small.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tether_actors::host::{now_unix_ms, RunOptions};
use tether_actors::{Activation, AgentError, AgentId, Host, Placement, SpawnRecord, TraceContext};
use tracing::{error, info, warn};

use crate::policy::{AgentPolicy, Intensity, RestartType, StoredPolicy, Strategy};
use crate::strategy::{ChildId, ChildSpec, ChildStatus, Core, Directive, Exit};
use crate::tree::{AgentNode, Failure, NodeTree, SupervisorNode};

/// How long a snapshot of one supervisor may take.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(2);

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
}

/// Messages of a supervisor actor.
pub enum SupMsg {
    /// Activate an agent under this supervisor.
    Add(Box<AddAgent>, RpcReplyPort<Result<Activation, AgentError>>),
    /// Create a group under this (root) supervisor.
    AddGroup(GroupSpec, RpcReplyPort<Result<(), String>>),
    /// A backoff delay ran out: start this child.
    Start(ChildId),
    /// Report the subtree.
    Snapshot(RpcReplyPort<SupervisorNode>),
    /// Stop every agent of the subtree for good (the node is fenced); reply how many.
    Fence(RpcReplyPort<usize>),
    /// An exit the root saw before the child's adoption, handed back by the caller that
    /// adopted it (see "Spawning under the root").
    Exited(ActorId, Exit),
}

impl ractor::Message for SupMsg {}

enum Kind {
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

struct ChildInfo {
    kind: Kind,
    /// Boxed: most children never fail, and every child pays for the inline size.
    last_failure: Option<Box<Failure>>,
}

/// The root's intake (see "Spawning under the root" above).
#[derive(Default)]
struct Intake {
    /// Activated by callers, not yet taken into the root's state.
    adopted: Vec<(AgentId, StoredPolicy, ActorId)>,
    /// Exits of actors the root did not know yet, while activations were in flight.
    early: HashMap<ActorId, Exit>,
    /// Activations under way in callers' tasks.
    in_flight: usize,
    /// The root gave up (escalated): it takes no new child.
    failed: Option<String>,
}

/// An activation under way in a caller's task; dropping it (done, failed or cancelled)
/// takes it off the count.
struct InFlight<'a> {
    intake: &'a Mutex<Intake>,
}

impl InFlight<'_> {
    fn enter<'a>(intake: &'a Mutex<Intake>, node: &str) -> Result<InFlight<'a>, AgentError> {
        let mut i = lock(intake);
        if let Some(reason) = &i.failed {
            return Err(AgentError::Refused(format!(
                "the root supervisor of {node} has failed: {reason}"
            )));
        }
        i.in_flight += 1;
        Ok(InFlight { intake })
    }

    /// Hands the started child to the root; returns an exit of it that the root saw first.
    fn adopt(self, id: AgentId, policy: StoredPolicy, actor: ActorId) -> Option<Exit> {
        let mut i = lock(self.intake);
        i.adopted.push((id, policy, actor));
        i.early.remove(&actor)
        // `self` drops here, after the push, still counted while the exit was looked for
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut i = lock(self.intake);
        i.in_flight -= 1;
        if i.in_flight == 0 {
            // no activation is under way: what is left are exits of children gone for good
            i.early.clear();
        }
    }
}

impl Intake {
    /// The root saw `actor` end without knowing it: kept while an activation is in flight
    /// (it may be that activation's child), dropped otherwise (a child that left the root).
    fn unknown_exit(&mut self, actor: ActorId, exit: Exit) {
        if self.in_flight > 0 {
            self.early.insert(actor, exit);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Shared between the node handle and every supervisor actor: what outlives one actor.
struct Shared {
    host: Arc<Host>,
    /// The root's intake.
    intake: Mutex<Intake>,
    /// Members of each group, in start order (a restarted group adopts them again).
    members: Mutex<HashMap<String, Vec<(AgentId, StoredPolicy)>>>,
    groups: Mutex<HashMap<String, ActorRef<SupMsg>>>,
}

struct SupervisorActor {
    shared: Arc<Shared>,
    name: String,
    strategy: Strategy,
    intensity: Intensity,
}

struct State {
    core: Core,
    children: HashMap<ChildId, ChildInfo>,
    by_actor: HashMap<ActorId, ChildId>,
    next: ChildId,
    failed: Option<String>,
}

fn run_options(policy: &AgentPolicy, me: &ActorRef<SupMsg>) -> RunOptions {
    RunOptions {
        supervisor: Some(me.get_cell()),
        handler_timeout: policy.handler_timeout,
        start_timeout: policy.start_timeout,
        shutdown_timeout: policy.shutdown_timeout,
    }
}

/// Activates `a` on the host, linked to supervisor `sup`; with the id of the actor it started.
async fn activate_linked(
    host: &Host,
    a: &AddAgent,
    sup: &ActorRef<SupMsg>,
) -> Result<(Activation, Option<ActorId>), AgentError> {
    host.activate(
        a.id.clone(),
        a.epoch,
        a.record.clone(),
        a.trace,
        run_options(&a.policy, sup),
    )
    .await
}

fn policy_text(p: &AgentPolicy) -> String {
    let restart = match p.restart {
        RestartType::Permanent => "permanent",
        RestartType::Transient => "transient",
        RestartType::Temporary => "temporary",
    };
    let mut s = format!(
        "{restart} {}/{}s",
        p.intensity.max_restarts,
        p.intensity.within.as_secs_f64()
    );
    if let Some(t) = p.handler_timeout {
        s.push_str(&format!(" handler<{}ms", t.as_millis()));
    }
    s
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
            return Err(AgentError::Refused(format!(
                "supervisor {} has failed: {reason}",
                self.name
            )));
        }
        let (act, actor) = activate_linked(&self.shared.host, &a, me).await?;
        if act.created {
            self.adopt(st, a.id.clone(), a.policy.into(), actor);
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
    /// the root"); the intake's lock is returned, still held, so that an exit of an actor
    /// that is still unknown can be kept under it. Other supervisors have no intake.
    fn take_in(&self, st: &mut State) -> Option<std::sync::MutexGuard<'_, Intake>> {
        if self.name != "root" {
            return None;
        }
        let mut intake = lock(&self.shared.intake);
        for (id, policy, actor) in intake.adopted.drain(..) {
            if let Some(reason) = &st.failed {
                // it started while the root gave up: it goes the way of the others
                self.shared
                    .host
                    .give_up(&id, &format!("root supervisor gave up: {reason}"));
            }
            self.adopt(st, id, policy, Some(actor));
        }
        Some(intake)
    }

    /// Makes a running agent (its instance `actor`) a child of this supervisor.
    fn adopt(
        &self,
        st: &mut State,
        id: AgentId,
        policy: StoredPolicy,
        actor: Option<ActorId>,
    ) -> ChildId {
        let child = st.next;
        st.next += 1;
        st.core.add_child(self.child_spec(child, &policy.get()));
        if let Some(aid) = actor {
            st.by_actor.insert(aid, child);
        }
        st.children.insert(
            child,
            ChildInfo {
                kind: Kind::Agent { id, policy },
                last_failure: None,
            },
        );
        child
    }

    async fn start_group(
        &self,
        me: &ActorRef<SupMsg>,
        spec: &GroupSpec,
    ) -> Result<ActorRef<SupMsg>, String> {
        let actor = SupervisorActor {
            shared: self.shared.clone(),
            name: spec.name.clone(),
            strategy: spec.strategy,
            intensity: spec.intensity,
        };
        let (aref, _) = Actor::spawn_linked(None, actor, (), me.get_cell())
            .await
            .map_err(|e| e.to_string())?;
        self.shared
            .groups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(spec.name.clone(), aref.clone());
        Ok(aref)
    }

    /// Stops every agent under this supervisor (and its groups) without restarting them: they
    /// leave the supervisor first, so their exits are not failures to act on.
    async fn fence(&self, st: &mut State) -> usize {
        let host = self.shared.host.clone();
        let mut stopped = 0;
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
                        stopped += n;
                    }
                }
                continue;
            }
            let Some(info) = st.children.remove(&c) else {
                continue;
            };
            st.core.remove_child(c);
            st.by_actor.retain(|_, v| *v != c);
            if let Kind::Agent { id, .. } = info.kind {
                host.stop(&id, false).await;
                host.forget(&id);
                stopped += 1;
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
                    if let Some(info) = st.children.remove(&c) {
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
                    Ok(()) => {
                        if let Some(aid) = self.shared.host.actor_id(&id) {
                            st.by_actor.retain(|_, c| *c != child);
                            st.by_actor.insert(aid, child);
                        }
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
                    Err(e) => Err(e),
                }
            }
        };
        match result {
            Ok(()) => st.core.started(child),
            // a start that fails is a failure of the child, counted like any other
            Err(reason) => Box::pin(self.on_exit(me, st, child, Exit::Failed(reason))).await,
        }
    }

    async fn snapshot(&self, st: &State) -> SupervisorNode {
        let host = &self.shared.host;
        let mut agents = Vec::new();
        let mut supervisors = Vec::new();
        let mut ids: Vec<&ChildId> = st.children.keys().collect();
        ids.sort();
        for c in ids {
            let info = &st.children[c];
            let view = st.core.view(*c);
            match &info.kind {
                Kind::Agent { id, policy } => {
                    let hi = host.info(id);
                    let status = match (&view, hi.as_ref().map(|i| i.status.as_str())) {
                        (_, Some("running")) => ChildStatus::Running,
                        (_, Some("backing-off")) => ChildStatus::BackingOff,
                        (_, Some("restarting")) => ChildStatus::Restarting,
                        (Some(v), _) => v.status.clone(),
                        (None, _) => ChildStatus::Stopped,
                    };
                    let p = hi.as_ref().map(|i| i.placement.clone()).unwrap_or_default();
                    agents.push(AgentNode {
                        id: id.to_string(),
                        status,
                        restarts: view.as_ref().map(|v| v.restarts).unwrap_or(0),
                        last_failure: info.last_failure.as_deref().cloned(),
                        uptime_ms: hi.as_ref().map(|i| i.uptime_ms).unwrap_or(0),
                        mailbox: hi.as_ref().map(|i| i.mailbox).unwrap_or(0),
                        epoch: hi.as_ref().map(|i| i.epoch).unwrap_or(0),
                        placement: placement_text(&p),
                        policy: policy_text(&policy.get()),
                    });
                }
                Kind::Group { spec, actor } => {
                    let live = match actor {
                        Some(a)
                            if view
                                .as_ref()
                                .is_some_and(|v| v.status == ChildStatus::Running) =>
                        {
                            a.call(SupMsg::Snapshot, Some(SNAPSHOT_TIMEOUT))
                                .await
                                .ok()
                                .and_then(|r| r.success_or(()).ok())
                        }
                        _ => None,
                    };
                    let mut node = live.unwrap_or_else(|| SupervisorNode {
                        name: spec.name.clone(),
                        strategy: spec.strategy,
                        status: ChildStatus::Stopped,
                        restarts: 0,
                        intensity: intensity_text(&spec.intensity),
                        last_failure: None,
                        supervisors: Vec::new(),
                        agents: Vec::new(),
                    });
                    if let Some(v) = &view {
                        if node.status == ChildStatus::Running || v.status != ChildStatus::Running {
                            node.status = v.status.clone();
                        }
                        node.restarts = v.restarts;
                    }
                    node.last_failure = info.last_failure.as_deref().cloned();
                    supervisors.push(node);
                }
            }
        }
        SupervisorNode {
            name: self.name.clone(),
            strategy: self.strategy,
            status: if st.failed.is_some() {
                ChildStatus::Failed
            } else {
                ChildStatus::Running
            },
            restarts: 0,
            intensity: intensity_text(&self.intensity),
            last_failure: st.failed.as_ref().map(|r| Failure {
                at_unix_ms: now_unix_ms(),
                reason: r.clone(),
            }),
            supervisors,
            agents,
        }
    }
}

fn intensity_text(i: &Intensity) -> String {
    format!("{}/{}s", i.max_restarts, i.within.as_secs_f64())
}

fn placement_text(p: &Placement) -> String {
    let sens = match p.sensitivity {
        tether_actors::Sensitivity::Public => "public",
        tether_actors::Sensitivity::Internal => "internal",
        tether_actors::Sensitivity::LocalOnly => "local-only",
    };
    let compute = match p.compute {
        tether_actors::Compute::Light => "light",
        tether_actors::Compute::Heavy => "heavy",
    };
    let prefer = match p.prefer {
        tether_actors::Prefer::Local => "local",
        tether_actors::Prefer::Remote => "remote",
        tether_actors::Prefer::Any => "any",
    };
    format!("{sens} {compute} prefer={prefer}")
}

impl Actor for SupervisorActor {
    type Msg = SupMsg;
    type State = State;
    type Arguments = ();

    async fn pre_start(&self, me: ActorRef<SupMsg>, _: ()) -> Result<State, ActorProcessingErr> {
        let mut st = State {
            core: Core::new(self.strategy, self.intensity),
            children: HashMap::new(),
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
                Ok(()) => {
                    let actor = self.shared.host.actor_id(&id);
                    self.adopt(&mut st, id, policy, actor);
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
        drop(self.take_in(st));
        match msg {
            SupMsg::Exited(actor, exit) => {
                if let Some(child) = st.by_actor.remove(&actor) {
                    self.on_exit(&me, st, child, exit).await;
                }
            }
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
                    let _ =
                        reply.send(Err(format!("a group named {:?} exists already", spec.name)));
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
                let n = self.fence(st).await;
                let _ = reply.send(n);
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
                    _ => Exit::Normal,
                };
                (cell, exit)
            }
            _ => return Ok(()),
        };
        let actor = cell.get_id();
        let intake = self.take_in(st);
        let Some(child) = st.by_actor.remove(&actor) else {
            // not (yet) a child: a caller may still be about to hand it over
            if let Some(mut intake) = intake {
                intake.unknown_exit(actor, exit);
            }
            return Ok(());
        };
        drop(intake);
        self.on_exit(&me, st, child, exit).await;
        Ok(())
    }
}

/// A node's supervision: its root supervisor and groups.
pub struct NodeSupervisor {
    root: ActorRef<SupMsg>,
    shared: Arc<Shared>,
    node: String,
}

impl std::fmt::Debug for NodeSupervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSupervisor")
            .field("node", &self.node)
            .finish()
    }
}

impl NodeSupervisor {
    /// Starts the root supervisor of a node (one-for-one, `intensity` for the whole node).
    ///
    /// # Errors
    /// The actor did not start.
    pub async fn start(host: Arc<Host>, intensity: Intensity) -> Result<Self, String> {
        let node = host.node().to_owned();
        let shared = Arc::new(Shared {
            host,
            intake: Mutex::default(),
            members: Mutex::new(HashMap::new()),
            groups: Mutex::new(HashMap::new()),
        });
        let root = SupervisorActor {
            shared: shared.clone(),
            name: "root".into(),
            strategy: Strategy::OneForOne,
            intensity,
        };
        let (root, _) = Actor::spawn(None, root, ())
            .await
            .map_err(|e| e.to_string())?;
        Ok(Self { root, shared, node })
    }

    /// Activates an agent under the root, or under group `group`.
    ///
    /// # Errors
    /// [`AgentError`] from the host, or [`AgentError::Refused`] for an unknown group.
    pub async fn activate(
        &self,
        a: AddAgent,
        group: Option<&str>,
    ) -> Result<Activation, AgentError> {
        let target = match group {
            None => return self.activate_under_root(a).await,
            Some(g) => self
                .shared
                .groups
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(g)
                .cloned()
                .ok_or_else(|| {
                    AgentError::Refused(format!("no supervisor group {g:?} on node {}", self.node))
                })?,
        };
        let timeout = a.policy.start_timeout + Duration::from_secs(5);
        match target
            .call(|port| SupMsg::Add(Box::new(a), port), Some(timeout))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(r)) => r,
            Ok(_) => Err(AgentError::Timeout {
                ms: timeout.as_millis() as u64,
            }),
            Err(e) => Err(AgentError::Internal(format!("supervisor unavailable: {e}"))),
        }
    }

    /// Activates an agent under the root in this task, and hands it to the root (see
    /// "Spawning under the root").
    async fn activate_under_root(&self, a: AddAgent) -> Result<Activation, AgentError> {
        let flight = InFlight::enter(&self.shared.intake, &self.node)?;
        let (act, actor) = activate_linked(&self.shared.host, &a, &self.root).await?;
        if let Some(actor) = actor {
            if let Some(exit) = flight.adopt(a.id, a.policy.into(), actor) {
                // it ended before the root knew it: the root hears of it now
                let _ = self.root.cast(SupMsg::Exited(actor, exit));
            }
        }
        Ok(act)
    }

    /// Creates a group supervisor under the root.
    ///
    /// # Errors
    /// A message if the name is taken or the actor does not start.
    pub async fn add_group(&self, spec: GroupSpec) -> Result<(), String> {
        match self
            .root
            .call(|port| SupMsg::AddGroup(spec, port), Some(SNAPSHOT_TIMEOUT))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(r)) => r,
            Ok(_) => Err("the root supervisor did not answer".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The node's tree.
    ///
    /// # Errors
    /// A message if the root supervisor does not answer.
    pub async fn snapshot(&self) -> Result<NodeTree, String> {
        match self
            .root
            .call(SupMsg::Snapshot, Some(SNAPSHOT_TIMEOUT * 2))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(root)) => Ok(NodeTree {
                node: self.node.clone(),
                root,
            }),
            Ok(_) => Err("the root supervisor did not answer in time".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Stops every agent of this node for good, without restarts (the node is fenced: it is
    /// on the losing side of a split, and the winning side will activate them anew). Returns
    /// how many were stopped.
    ///
    /// # Errors
    /// A message if the root supervisor does not answer.
    pub async fn fence(&self) -> Result<usize, String> {
        match self
            .root
            .call(SupMsg::Fence, Some(SNAPSHOT_TIMEOUT * 8))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(n)) => Ok(n),
            Ok(_) => Err("the root supervisor did not answer in time".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Stops the root supervisor (node shutdown).
    pub fn stop(&self) {
        self.root.stop(Some("node shutting down".into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_actors::builtin::{self, FlakyMsg};
    use tether_actors::{Body, Delivery, Encoding};

    fn id(s: &str) -> AgentId {
        s.parse().unwrap()
    }

    fn actor(n: u64) -> ActorId {
        ActorId::Local(n)
    }

    #[test]
    fn an_unknown_exit_is_kept_only_while_an_activation_is_in_flight() {
        let intake = Mutex::new(Intake::default());
        // nothing in flight: the exit is of a child that left (fenced), not kept
        lock(&intake).unknown_exit(actor(1), Exit::Normal);
        assert!(lock(&intake).early.is_empty());

        let a = InFlight::enter(&intake, "n1").unwrap();
        let b = InFlight::enter(&intake, "n1").unwrap();
        lock(&intake).unknown_exit(actor(2), Exit::Failed("boom".into()));
        lock(&intake).unknown_exit(actor(3), Exit::Normal);
        // the caller that started actor 2 finds its exit, and only its own
        assert_eq!(
            a.adopt(id("flaky/a"), StoredPolicy::default(), actor(2)),
            Some(Exit::Failed("boom".into()))
        );
        assert_eq!(lock(&intake).in_flight, 1);
        assert!(lock(&intake).early.contains_key(&actor(3)));
        assert_eq!(lock(&intake).adopted.len(), 1);
        // the last activation ends without a child: what is left can be no one's
        drop(b);
        assert_eq!(lock(&intake).in_flight, 0);
        assert!(lock(&intake).early.is_empty());
    }

    #[test]
    fn a_failed_root_takes_no_new_child() {
        let intake = Mutex::new(Intake::default());
        lock(&intake).failed = Some("too many restarts".into());
        let err = InFlight::enter(&intake, "n1").err().unwrap();
        assert!(
            matches!(&err, AgentError::Refused(m) if m.contains("too many restarts")),
            "{err}"
        );
        assert_eq!(lock(&intake).in_flight, 0);
    }

    async fn until(what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ok() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The race that the intake closes, made to happen: the child fails and the root sees
    /// its exit before the caller hands the child over; the caller finds the exit and
    /// replays it, and the root restarts the child.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_exit_that_overtakes_the_adoption_is_replayed_and_the_child_restarted() {
        let host = Host::new("n1", builtin::all());
        let sup = NodeSupervisor::start(host.clone(), Intensity::default())
            .await
            .unwrap();
        let flaky = id("flaky/early");
        let policy = AgentPolicy::default();
        let (encoding, args) = Body::encode((), Some(Encoding::Json))
            .unwrap()
            .into_wire()
            .unwrap();
        let flight = InFlight::enter(&sup.shared.intake, "n1").unwrap();
        let (act, started) = host
            .activate(
                flaky.clone(),
                1,
                Arc::new(SpawnRecord {
                    encoding,
                    args,
                    placement: Placement::default(),
                }),
                TraceContext::new_root(),
                run_options(&policy, &sup.root),
            )
            .await
            .unwrap();
        assert!(act.created);
        let started = started.unwrap();
        let crash = Delivery {
            target: flaky.clone(),
            epoch: 1,
            sender: "tester".into(),
            seq: 0,
            trace: TraceContext::new_root(),
            contract: None,
            in_process: true,
        };
        host.deliver(crash, Body::typed(FlakyMsg::Crash), None)
            .unwrap();
        until("the root to keep the early exit", || {
            lock(&sup.shared.intake).early.contains_key(&started)
        })
        .await;
        let exit = flight.adopt(flaky.clone(), policy.into(), started);
        assert!(
            matches!(&exit, Some(Exit::Failed(r)) if r.contains("crash")),
            "{exit:?}"
        );
        let _ = sup.root.cast(SupMsg::Exited(started, exit.unwrap()));
        until("the restart", || {
            host.actor_id(&flaky).is_some_and(|a| a != started)
        })
        .await;
        let tree = sup.snapshot().await.unwrap();
        let node = tree
            .root
            .agents
            .iter()
            .find(|a| a.id == "flaky/early")
            .unwrap();
        assert_eq!(node.restarts, 1, "{node:?}");
        assert_eq!(node.status, ChildStatus::Running, "{node:?}");
        assert!(lock(&sup.shared.intake).early.is_empty());
        sup.stop();
    }
}
