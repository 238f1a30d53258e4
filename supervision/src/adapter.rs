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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use std::sync::Weak;
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
    /// Reply once the children activated so far are taken in (see "Spawning under the root").
    Settle(RpcReplyPort<()>),
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
    adopted: Vec<(AgentId, StoredPolicy)>,
    /// The root gave up (escalated): it takes no new child.
    failed: Option<String>,
}

impl Intake {
    /// Refuses a new child once the root has failed.
    fn open(&self, node: &str) -> Result<(), AgentError> {
        match &self.failed {
            Some(reason) => Err(AgentError::Refused(format!(
                "the root supervisor of {node} has failed: {reason}"
            ))),
            None => Ok(()),
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
    /// The actors of supervised agents that started, not yet ended: actor -> agent (see
    /// "Which agent a supervision event is about").
    started: Mutex<HashMap<ActorId, AgentId>>,
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
    /// Agent children.
    by_agent: HashMap<AgentId, ChildId>,
    /// Group children, by their supervisor's actor.
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

/// Activates `a` on the host, supervised by `sup`; `created` is called as in
/// [`Host::activate`].
async fn activate_linked(
    host: &Host,
    a: &AddAgent,
    sup: &ActorRef<SupMsg>,
    created: impl FnOnce(),
) -> Result<Activation, AgentError> {
    host.activate(
        a.id.clone(),
        a.epoch,
        a.record.clone(),
        a.trace,
        run_options(&a.policy, sup),
        created,
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
            let Some(info) = Self::forget_child(st, c) else {
                continue;
            };
            st.core.remove_child(c);
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
            // taken in above, as at every message
            SupMsg::Settle(reply) => {
                let _ = reply.send(());
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
        self.take_in(st);
        // none: an actor of an instance already replaced, or of a child that left (fenced)
        let Some(child) = self.child_of(st, &cell.get_id()) else {
            return Ok(());
        };
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
            host: host.clone(),
            intake: Mutex::default(),
            started: Mutex::default(),
            members: Mutex::new(HashMap::new()),
            groups: Mutex::new(HashMap::new()),
        });
        let weak: Weak<Shared> = Arc::downgrade(&shared);
        let listening = host.set_start_listener(Arc::new(move |agent: &AgentId, actor| {
            if let Some(shared) = weak.upgrade() {
                lock(&shared.started).insert(actor, agent.clone());
            }
        }));
        if !listening {
            return Err(format!("node {node} has a supervisor already"));
        }
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
        lock(&self.shared.intake).open(&self.node)?;
        let adopt = || {
            lock(&self.shared.intake)
                .adopted
                .push((a.id.clone(), a.policy.into()));
        };
        activate_linked(&self.shared.host, &a, &self.root, adopt).await
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

    /// Waits until the root has taken in every agent activated under it so far. The root
    /// takes children in at its next message or supervision event anyway; this makes it
    /// happen now (for measuring what a child costs it, for tests).
    ///
    /// # Errors
    /// A message if the root supervisor does not answer.
    pub async fn settle(&self) -> Result<(), String> {
        match self.root.call(SupMsg::Settle, Some(SNAPSHOT_TIMEOUT)).await {
            Ok(ractor::rpc::CallResult::Success(())) => Ok(()),
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
    use tokio::sync::oneshot;

    fn id(s: &str) -> AgentId {
        s.parse().unwrap()
    }

    #[test]
    fn a_failed_root_takes_no_new_child() {
        let mut intake = Intake::default();
        assert!(intake.open("n1").is_ok());
        intake.failed = Some("too many restarts".into());
        let err = intake.open("n1").err().unwrap();
        assert!(
            matches!(&err, AgentError::Refused(m) if m.contains("too many restarts")),
            "{err}"
        );
    }

    async fn until(what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ok() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn add(key: &str) -> AddAgent {
        let (encoding, args) = Body::encode((), Some(Encoding::Json))
            .unwrap()
            .into_wire()
            .unwrap();
        AddAgent {
            id: id(&format!("flaky/{key}")),
            epoch: 1,
            record: Arc::new(SpawnRecord {
                encoding,
                args,
                placement: Placement::default(),
            }),
            // no backoff: a restart follows its failure at once, before the events that
            // the restart's stops caused are handled
            policy: AgentPolicy {
                backoff: crate::policy::Backoff::none(),
                ..AgentPolicy::default()
            },
            trace: TraceContext::new_root(),
        }
    }

    /// Asks `target` (a flaky agent) `msg`; the reply's error text on failure.
    async fn ask(host: &Host, target: &AgentId, msg: FlakyMsg) -> Result<String, String> {
        let (tx, rx) = oneshot::channel();
        let d = Delivery {
            target: target.clone(),
            epoch: 0,
            sender: "tester".into(),
            seq: 0,
            trace: TraceContext::new_root(),
            contract: None,
            in_process: true,
        };
        host.deliver(d, Body::typed(msg), Some(tx.into()))
            .map_err(|e| e.to_string())?;
        match rx.await {
            Ok(Ok(b)) => b.decode::<String>(),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no reply".into()),
        }
    }

    async fn child(sup: &NodeSupervisor, path: &[&str], agent: &str) -> AgentNode {
        let tree = sup.snapshot().await.unwrap();
        let mut node = &tree.root;
        for g in path {
            node = node.supervisors.iter().find(|s| s.name == *g).unwrap();
        }
        node.agents.iter().find(|a| a.id == agent).unwrap().clone()
    }

    async fn supervised() -> (Arc<Host>, NodeSupervisor) {
        let host = Host::new("n1", builtin::all());
        let sup = NodeSupervisor::start(host.clone(), Intensity::default())
            .await
            .unwrap();
        (host, sup)
    }

    /// A one-for-all group `g` with two flaky agents, `a` and `b`, never sent anything.
    async fn one_for_all_pair(sup: &NodeSupervisor) -> (AgentId, AgentId) {
        sup.add_group(GroupSpec {
            name: "g".into(),
            strategy: Strategy::OneForAll,
            intensity: Intensity::default(),
        })
        .await
        .unwrap();
        let (a, b) = (add("a"), add("b"));
        let ids = (a.id.clone(), b.id.clone());
        sup.activate(a, Some("g")).await.unwrap();
        sup.activate(b, Some("g")).await.unwrap();
        ids
    }

    /// The exits for good that the host reports: agent and reason.
    fn exits(host: &Host) -> tokio::sync::mpsc::UnboundedReceiver<(String, Option<String>)> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        host.set_exit_listener(Arc::new(move |id: &AgentId, _, reason| {
            let _ = tx.send((id.to_string(), reason));
        }));
        rx
    }

    /// An agent's actor starts at its first message, after the root took the agent in; its
    /// failure reaches the root through the actor the host reported, and the root restarts
    /// it. The restarted instance is dormant again, and the map of started actors is empty.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_agent_started_at_its_first_message_is_restarted_when_it_fails() {
        let (host, sup) = supervised().await;
        let a = add("lazy");
        let flaky = a.id.clone();
        assert!(sup.activate(a, None).await.unwrap().created);
        assert_eq!(
            host.actor_id(&flaky),
            None,
            "no actor before the first message"
        );
        let crashed = ask(&host, &flaky, FlakyMsg::Crash).await;
        assert!(crashed.is_err_and(|e| e.contains("crash")));
        until("the restart", || {
            host.info(&flaky).is_some_and(|i| i.status == "running")
                && lock(&sup.shared.started).is_empty()
        })
        .await;
        let node = child(&sup, &[], "flaky/lazy").await;
        assert_eq!(node.restarts, 1, "{node:?}");
        assert_eq!(node.status, ChildStatus::Running, "{node:?}");
        assert_eq!(host.actor_id(&flaky), None, "restarted dormant");
        assert_eq!(ask(&host, &flaky, FlakyMsg::Ping).await.unwrap(), "pong");
        assert_eq!(lock(&sup.shared.started).len(), 1);
        sup.stop();
    }

    /// One-for-all: a sibling whose actor had started is stopped for the restart, and its
    /// actor's end is reported after the restart. That event is stale (the host said which
    /// actor the restart replaced) and must not restart the sibling a second time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stale_exit_of_a_replaced_instance_is_dropped() {
        let (host, sup) = supervised().await;
        let (fa, fb) = one_for_all_pair(&sup).await;
        // both actors start
        assert_eq!(ask(&host, &fa, FlakyMsg::Ping).await.unwrap(), "pong");
        assert_eq!(ask(&host, &fb, FlakyMsg::Ping).await.unwrap(), "pong");
        let old_b = host.actor_id(&fb).unwrap();
        assert!(ask(&host, &fa, FlakyMsg::Crash).await.is_err());
        until("both restarted, their old actors forgotten", || {
            [&fa, &fb]
                .iter()
                .all(|id| host.info(id).is_some_and(|i| i.status == "running"))
                && lock(&sup.shared.started).is_empty()
        })
        .await;
        // give a stale event the time to be (mis)handled
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (na, nb) = (
            child(&sup, &["g"], "flaky/a").await,
            child(&sup, &["g"], "flaky/b").await,
        );
        assert_eq!(na.restarts, 1, "{na:?}");
        assert_eq!(nb.restarts, 1, "{nb:?}");
        assert_eq!(nb.status, ChildStatus::Running, "{nb:?}");
        assert_eq!(
            host.actor_id(&fb),
            None,
            "b was restarted once, dormant, and not again by {old_b:?}'s end"
        );
        assert_eq!(ask(&host, &fb, FlakyMsg::Ping).await.unwrap(), "pong");
        sup.stop();
    }

    /// One-for-all with a sibling that never got mail: it has no actor to stop, so the stop
    /// runs its `on_stop` and the restart starts it dormant again, with the others.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dormant_sibling_is_stopped_and_restarted_with_the_others() {
        let (host, sup) = supervised().await;
        let mut exits = exits(&host);
        let (fa, fb) = one_for_all_pair(&sup).await;
        assert!(ask(&host, &fa, FlakyMsg::Crash).await.is_err());
        until("both restarted", || {
            [&fa, &fb]
                .iter()
                .all(|id| host.info(id).is_some_and(|i| i.status == "running"))
        })
        .await;
        let nb = child(&sup, &["g"], "flaky/b").await;
        assert_eq!(nb.restarts, 1, "{nb:?}");
        assert_eq!(host.actor_id(&fb), None);
        assert_eq!(ask(&host, &fb, FlakyMsg::Ping).await.unwrap(), "pong");
        // no exit for good was reported: a failure that is restarted is not one, nor is a
        // stop for a sibling's restart
        assert!(exits.try_recv().is_err());
        sup.stop();
    }

    /// A fenced node stops its agents for good, whether their actors ever started or not;
    /// each is reported as a clean stop and none is restarted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fencing_stops_dormant_and_started_agents_alike() {
        let (host, sup) = supervised().await;
        let mut exits = exits(&host);
        let (a, b) = (add("started"), add("dormant"));
        let fa = a.id.clone();
        sup.activate(a, None).await.unwrap();
        sup.activate(b, None).await.unwrap();
        assert_eq!(ask(&host, &fa, FlakyMsg::Ping).await.unwrap(), "pong");
        assert_eq!(sup.fence().await.unwrap(), 2);
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let e = tokio::time::timeout(Duration::from_secs(5), exits.recv())
                .await
                .expect("both stops are reported")
                .unwrap();
            seen.push(e);
        }
        seen.sort();
        assert_eq!(
            seen,
            [
                ("flaky/dormant".into(), None),
                ("flaky/started".into(), None)
            ]
        );
        // give a late supervision event the time to be (mis)handled: nothing restarts
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(host.list().is_empty(), "{:?}", host.list());
        assert!(lock(&sup.shared.started).is_empty());
        sup.stop();
    }
}
