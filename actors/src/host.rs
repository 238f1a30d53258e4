//! The agents a node hosts: activation, delivery, restart, and the checks at the door.
//!
//! Delivery checks, in order, before a message reaches an agent's mailbox:
//! 1. the agent is hosted here (else [`AgentError::NotFound`], or [`AgentError::Failed`] with
//!    the reason if it failed here and was not restarted);
//! 2. the envelope's epoch is not older than the activation's (fencing: an old owner's
//!    messages and commands are refused with [`AgentError::StaleEpoch`]);
//! 3. the contract is the kind's;
//! 4. the sender's sequence number is new: a number already seen is a duplicate and refused
//!    ([`AgentError::Duplicate`]); a number past `last + 1` is delivered and counted as a gap
//!    (something before it was lost). Numbers are `session << SESSION_SHIFT | n`: a sender's
//!    node starts a new session (its incarnation) each time it starts, so its numbers keep
//!    growing across restarts, and the first number of a newer session is not a gap.
//!    A send from this very process ([`Delivery::in_process`]) skips this check: it is
//!    handed over once, in order, and never resent (resends come from outboxes and peers,
//!    which are checked).
//!
//! A supervised agent that fails is not forgotten: its slot goes *down* (restarting or backing
//! off) and keeps what it needs to start again (kind, arguments, epoch). Messages that arrive
//! meanwhile wait in the slot, in order, and reach the new instance; refs keep working. Its
//! supervisor decides: [`Host::restart`] or [`Host::give_up`].
//!
//! A handle that sends often to an agent running here keeps a [`LocalPort`]: the running
//! instance's mailbox and counters, so that its typed sends skip the look-ups (checks 1 to 4
//! do not apply to them: the instance is the one running, a typed value has no contract to
//! check, and the send is in process). The port is good for one instance: the host closes an
//! instance's mailbox when it stops listing it as running (failure, stop, a sibling's
//! restart), so a send through a stale port is refused with its message given back, and the
//! sender goes the long way, where the host holds it for the restart or answers why not.
//!
//! Activation is get-or-activate: a second activation of an id that runs here returns the
//! running one, also when both race (a per-id lock serializes them). Activating runs the
//! agent's `init` in the activating task; the agent's ractor actor starts at its first
//! message (see [`crate::mailbox`]): a running agent that was never sent anything holds its
//! state and mailbox, and no task. A stop of such an agent runs its `on_stop` in the stopping
//! task; a supervised agent's actor, once started, is reported to the start listener
//! ([`Host::set_start_listener`]), so that its supervisor knows whose events it sends.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dashmap::DashMap;
use ractor::{ActorCell, ActorId};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use crate::agent::AgentError;
use crate::envelope::{Contract, Encoding, Envelope, TellRun, TraceContext};
use crate::id::{AgentId, IdHash};
use crate::kind::{
    AgentStats, Body, Call, ErasedKind, ExitHook, Gate, ReplyTx, SpawnSpec, StartHook,
};
use crate::mailbox::AgentActorRef;
use crate::placement::Placement;

/// Sequence numbers are `session << SESSION_SHIFT | n`, `n` from 1 (see the module doc).
pub const SESSION_SHIFT: u32 = 40;

/// Whether `seq` is the first number of a newer session than `last`'s.
fn starts_session(seq: u64, last: u64) -> bool {
    seq >> SESSION_SHIFT > last >> SESSION_SHIFT && seq & ((1 << SESSION_SHIFT) - 1) == 1
}

/// Most messages kept for an agent while it restarts.
pub const MAX_QUEUED_WHILE_DOWN: usize = 10_000;

/// How an agent is run: its supervisor and its timeouts.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The supervisor actor to link the agent to; `None`: unsupervised (a failure is final).
    pub supervisor: Option<ActorCell>,
    /// A handler running longer than this fails the agent.
    pub handler_timeout: Option<Duration>,
    /// `init` must finish within this.
    pub start_timeout: Duration,
    /// A stopping agent gets this long, then it is killed.
    pub shutdown_timeout: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        let t = StoredRun::DEFAULT;
        Self {
            supervisor: None,
            handler_timeout: t.handler,
            start_timeout: t.start,
            shutdown_timeout: t.shutdown,
        }
    }
}

/// What a slot keeps to start the agent again.
#[derive(Clone)]
struct Spec {
    kind: Arc<dyn ErasedKind>,
    record: Arc<SpawnRecord>,
    epoch: u64,
    run: StoredRun,
}

/// How an agent was spawned: its arguments, encoded, and its placement labels. One record is
/// shared by the host that runs the agent (a restart starts it again from it) and the
/// directory entry that placed it (a failover activates it elsewhere from it): every agent
/// pays for one copy, not two.
#[derive(Debug, Clone, PartialEq)]
pub struct SpawnRecord {
    /// How `args` are encoded.
    pub encoding: Encoding,
    /// The spawn arguments.
    pub args: Bytes,
    /// The labels it was placed by.
    pub placement: Placement,
}

/// [`RunOptions`] as a hosted agent keeps them: the supervisor, and the timeouts only when
/// they differ from the defaults (most agents run with the defaults; every agent pays for
/// what is stored inline).
#[derive(Clone)]
struct StoredRun {
    supervisor: Option<ActorCell>,
    timeouts: Option<Box<Timeouts>>,
}

#[derive(Clone, Copy, PartialEq)]
struct Timeouts {
    handler: Option<Duration>,
    start: Duration,
    shutdown: Duration,
}

impl StoredRun {
    const DEFAULT: Timeouts = Timeouts {
        handler: None,
        start: Duration::from_secs(5),
        shutdown: Duration::from_secs(5),
    };

    fn new(run: RunOptions) -> Self {
        let t = Timeouts {
            handler: run.handler_timeout,
            start: run.start_timeout,
            shutdown: run.shutdown_timeout,
        };
        Self {
            supervisor: run.supervisor,
            timeouts: (t != Self::DEFAULT).then(|| Box::new(t)),
        }
    }

    fn timeouts(&self) -> Timeouts {
        self.timeouts.as_deref().copied().unwrap_or(Self::DEFAULT)
    }
}

/// A running agent.
#[derive(Clone)]
struct Hosted {
    actor: AgentActorRef,
    spec: Spec,
    started: Instant,
    stats: Arc<AgentStats>,
}

/// A direct way into one running instance of an agent of this node (see the module doc).
#[derive(Clone)]
pub struct LocalPort {
    actor: AgentActorRef,
    stats: Arc<AgentStats>,
}

impl std::fmt::Debug for LocalPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalPort")
    }
}

impl LocalPort {
    /// Hands a typed call from this process to the instance, as [`Host::deliver`] would.
    ///
    /// # Errors
    /// The call, untouched, when the instance is no longer the running one: send it the long
    /// way.
    pub fn send(&self, call: Call) -> Result<(), Box<Call>> {
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        self.actor.send(call).inspect_err(|_| self.stats.settle(1))
    }
}

/// Why a down agent is not running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DownStatus {
    /// Its supervisor is restarting it.
    Restarting,
    /// Waiting for its backoff delay.
    BackingOff,
}

type Waiting = VecDeque<(Delivery, Body, Option<ReplyTx>)>;

struct Down {
    spec: Spec,
    /// The actor of the instance that went down, if it had started (its supervisor forgets
    /// it at the restart: see [`Host::restart`]).
    actor: Option<ActorId>,
    status: DownStatus,
    reason: String,
    /// Messages that arrived while down. (A typed body is `Send` but not `Sync`; the mutex
    /// makes the slot shareable, and is only taken while down.)
    queue: std::sync::Mutex<Waiting>,
    stats: Arc<AgentStats>,
}

/// What the node reports about a hosted agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// The agent.
    pub id: AgentId,
    /// The hosting node.
    pub node: String,
    /// Activation epoch.
    pub epoch: u64,
    /// Placement labels.
    pub placement: Placement,
    /// `running`, `restarting`, `backing-off` or `failed`.
    pub status: String,
    /// Failure reason, if failed or down.
    pub reason: Option<String>,
    /// Milliseconds since the current instance started.
    pub uptime_ms: u64,
    /// Messages delivered.
    pub received: u64,
    /// Sequence gaps seen (should be 0).
    pub gaps: u64,
    /// Duplicates refused.
    pub duplicates: u64,
    /// Messages waiting in the mailbox (or in the slot while down).
    pub mailbox: u64,
    /// Messages lost in the mailbox of a failed instance.
    #[serde(default)]
    pub lost: u64,
}

/// The result of an activation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activation {
    /// The agent.
    pub id: AgentId,
    /// Where it runs.
    pub node: String,
    /// Its epoch.
    pub epoch: u64,
    /// `false` when it was running already (get-or-spawn).
    pub created: bool,
}

/// Message metadata checked at the door.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The target.
    pub target: AgentId,
    /// Epoch the sender knows (0: any).
    pub epoch: u64,
    /// Sender (`node` or `node/agent-id`), shared rather than copied per message.
    pub sender: Arc<str>,
    /// Sender's sequence number (0: unsequenced).
    pub seq: u64,
    /// Trace.
    pub trace: TraceContext,
    /// The payload's contract (None: typed local send, checked by the type system).
    pub contract: Option<Contract>,
    /// Sent from this process and handed over once: no duplicate or gap check (see the
    /// module doc).
    pub in_process: bool,
}

impl Delivery {
    /// A message from another node: its envelope's parts, and its body.
    pub fn from_envelope(env: Envelope) -> (Self, Body) {
        let d = Self {
            target: env.target,
            epoch: env.epoch,
            sender: env.sender,
            seq: env.seq,
            trace: env.trace,
            contract: Some(env.contract),
            in_process: false,
        };
        (d, Body::Encoded(env.encoding, env.body))
    }
}

/// The kinds a node can host and the agents it hosts.
pub struct Host {
    node: Arc<str>,
    kinds: BTreeMap<String, Arc<dyn ErasedKind>>,
    agents: DashMap<AgentId, Hosted, IdHash>,
    down: DashMap<AgentId, Down, IdHash>,
    failed: DashMap<AgentId, (u64, String), IdHash>,
    activating: DashMap<AgentId, Arc<Mutex<()>>, IdHash>,
    exit_listener: std::sync::OnceLock<ExitHook>,
    start_listener: std::sync::OnceLock<StartHook>,
    gate: std::sync::OnceLock<Gate>,
    /// What every instance calls when it ends (one for the host, shared by all agents).
    on_exit: ExitHook,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("node", &self.node)
            .field("kinds", &self.kinds.keys().collect::<Vec<_>>())
            .field("agents", &self.agents.len())
            .finish()
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Host {
    /// A host for node `node` with these kinds.
    pub fn new(node: &str, kinds: impl IntoIterator<Item = Arc<dyn ErasedKind>>) -> Arc<Self> {
        Arc::new_cyclic(|me: &Weak<Host>| Self {
            node: node.into(),
            kinds: kinds
                .into_iter()
                .map(|k| (k.name().to_owned(), k))
                .collect(),
            agents: DashMap::default(),
            down: DashMap::default(),
            failed: DashMap::default(),
            activating: DashMap::default(),
            exit_listener: std::sync::OnceLock::new(),
            start_listener: std::sync::OnceLock::new(),
            gate: std::sync::OnceLock::new(),
            on_exit: {
                let me = me.clone();
                Arc::new(move |id: &AgentId, epoch: u64, reason: Option<String>| {
                    if let Some(host) = me.upgrade() {
                        host.exited(id, epoch, reason);
                    }
                })
            },
        })
    }

    /// The node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Registers the one function told of every agent that ends here for good (after the host
    /// forgot it). Returns false if one was registered already.
    pub fn set_exit_listener(&self, f: ExitHook) -> bool {
        self.exit_listener.set(f).is_ok()
    }

    /// Registers the one function told when the actor of a supervised agent starts (at the
    /// agent's first message), with the actor's id: how its supervisor tells whose
    /// supervision events they are. Returns false if one was registered already.
    pub fn set_start_listener(&self, f: StartHook) -> bool {
        self.start_listener.set(f).is_ok()
    }

    /// Registers the [`Gate`] every agent started from now on asks before each message.
    /// Returns false if one was registered already.
    pub fn set_gate(&self, g: Gate) -> bool {
        self.gate.set(g).is_ok()
    }

    /// The kind names this node can host.
    pub fn kinds(&self) -> Vec<String> {
        self.kinds.keys().cloned().collect()
    }

    /// A registered kind.
    ///
    /// # Errors
    /// [`AgentError::UnknownKind`].
    pub fn kind(&self, name: &str) -> Result<Arc<dyn ErasedKind>, AgentError> {
        self.kinds
            .get(name)
            .cloned()
            .ok_or_else(|| AgentError::UnknownKind {
                kind: name.to_owned(),
                node: self.node.to_string(),
                registered: self.kinds().join(", "),
            })
    }

    /// The epoch of `id` if it runs here (or is restarting here).
    pub fn epoch_of(&self, id: &AgentId) -> Option<u64> {
        self.agents
            .get(id)
            .map(|h| h.spec.epoch)
            .or_else(|| self.down.get(id).map(|d| d.spec.epoch))
    }

    /// A port into `id`'s running instance, if it runs here (see the module doc).
    pub fn port(&self, id: &AgentId) -> Option<LocalPort> {
        self.agents.get(id).map(|h| LocalPort {
            actor: h.actor.clone(),
            stats: h.stats.clone(),
        })
    }

    /// Starts `id` here with `epoch`, or returns the running activation. `init` runs in this
    /// task; the agent's actor starts at its first message (see [`crate::mailbox`]).
    /// `created` is called when the agent was created, just before it can be sent anything
    /// (its supervisor takes it in there: no exit of the agent can come before).
    ///
    /// # Errors
    /// [`AgentError::UnknownKind`], [`AgentError::BadPayload`] for args that do not decode,
    /// [`AgentError::Failed`] when `init` fails or overruns its start timeout.
    pub async fn activate(
        &self,
        id: AgentId,
        epoch: u64,
        record: Arc<SpawnRecord>,
        trace: TraceContext,
        run: RunOptions,
        created: impl FnOnce(),
    ) -> Result<Activation, AgentError> {
        let kind = self.kind(id.kind())?;
        let lock = self.activating.entry(id.clone()).or_default().clone();
        let _guard = lock.lock().await;
        if let Some(epoch) = self.epoch_of(&id) {
            return Ok(Activation {
                id: id.clone(),
                node: self.node.to_string(),
                epoch,
                created: false,
            });
        }
        let spec = Spec {
            kind,
            record,
            epoch,
            run: StoredRun::new(run),
        };
        let stats = Arc::<AgentStats>::default();
        let actor = self.start(&id, &spec, trace, stats.clone()).await?;
        self.failed.remove(&id);
        created();
        self.agents.insert(
            id.clone(),
            Hosted {
                actor,
                spec,
                started: Instant::now(),
                stats,
            },
        );
        drop(_guard);
        self.activating.remove(&id);
        // at debug, as OTP's progress reports and Akka's lifecycle logs: a node that spawns
        // thousands of agents would otherwise write a line for each (and at `info`, that line
        // cost a fifth of a spawn)
        debug!(agent = %id, epoch, trace_id = %trace.trace_id_hex(), "agent activated");
        Ok(Activation {
            id,
            node: self.node.to_string(),
            epoch,
            created: true,
        })
    }

    async fn start(
        &self,
        id: &AgentId,
        spec: &Spec,
        trace: TraceContext,
        stats: Arc<AgentStats>,
    ) -> Result<AgentActorRef, AgentError> {
        let on_exit = self.on_exit.clone();
        spec.kind
            .spawn(SpawnSpec {
                id: id.clone(),
                epoch: spec.epoch,
                node: self.node.clone(),
                record: spec.record.clone(),
                trace,
                on_exit,
                stats,
                local_only: spec.record.placement.is_local_only(),
                supervisor: spec.run.supervisor.clone(),
                on_start: spec
                    .run
                    .supervisor
                    .as_ref()
                    .and_then(|_| self.start_listener.get().cloned()),
                handler_timeout: spec.run.timeouts().handler,
                start_timeout: spec.run.timeouts().start,
                gate: self.gate.get().cloned(),
            })
            .await
    }

    fn exited(&self, id: &AgentId, epoch: u64, reason: Option<String>) {
        let supervised = self
            .agents
            .get(id)
            .is_some_and(|h| h.spec.epoch == epoch && h.spec.run.supervisor.is_some());
        if let (Some(r), true) = (&reason, supervised) {
            // hold the down slot's lock while the instance leaves, so that a sender never
            // finds the agent in neither map (see `deliver`)
            if let dashmap::Entry::Vacant(slot) = self.down.entry(id.clone()) {
                if let Some((_, h)) = self.agents.remove_if(id, |_, h| h.spec.epoch == epoch) {
                    h.actor.close();
                    Self::count_lost(id, &h.stats);
                    slot.insert(Down {
                        actor: h.actor.actor_id(),
                        spec: h.spec,
                        status: DownStatus::Restarting,
                        reason: r.clone(),
                        queue: std::sync::Mutex::new(VecDeque::new()),
                        stats: h.stats,
                    });
                }
            }
            return;
        }
        let Some((_, h)) = self.agents.remove_if(id, |_, h| h.spec.epoch == epoch) else {
            return;
        };
        h.actor.close();
        if reason.is_some() {
            Self::count_lost(id, &h.stats);
        }
        match &reason {
            Some(r) => {
                self.failed.insert(id.clone(), (epoch, r.clone()));
                self.notify_exit(id, epoch, reason);
            }
            None => {
                debug!(agent = %id, epoch, "agent stopped");
                self.notify_exit(id, epoch, None);
            }
        }
    }

    /// What still waits in a failed instance's mailbox dies with it: count it and say so.
    fn count_lost(id: &AgentId, stats: &AgentStats) {
        let lost = stats.waiting();
        if lost > 0 {
            stats.settle(lost);
            stats.lost.fetch_add(lost, Ordering::Relaxed);
            warn!(agent = %id, lost, "messages waiting in the failed instance's mailbox were lost");
        }
    }

    fn notify_exit(&self, id: &AgentId, epoch: u64, reason: Option<String>) {
        if let Some(l) = self.exit_listener.get() {
            l(id, epoch, reason);
        }
    }

    /// The supervisor chose to wait before restarting `id`.
    pub fn backing_off(&self, id: &AgentId) {
        if let Some(mut d) = self.down.get_mut(id) {
            d.status = DownStatus::BackingOff;
        }
    }

    /// Starts a down agent again (same id, epoch and arguments), then hands it the messages
    /// that waited, in order. Returns the actor of the instance it replaced, if that one had
    /// started: its supervision events are now stale.
    ///
    /// # Errors
    /// [`AgentError::NotFound`] if it is not down here; [`AgentError::Failed`] if it failed
    /// to start (it stays down; its supervisor counts the failure).
    pub async fn restart(
        &self,
        id: &AgentId,
        supervisor: Option<ActorCell>,
    ) -> Result<Option<ActorId>, AgentError> {
        let (mut spec, stats, replaced) = match self.down.get(id) {
            Some(d) => (d.spec.clone(), d.stats.clone(), d.actor),
            None => {
                // a running agent that the supervisor stopped for a sibling's restart
                let Some((_, h)) = self.agents.remove(id) else {
                    return Err(AgentError::NotFound { id: id.to_string() });
                };
                h.actor.close();
                let replaced = h.actor.actor_id();
                (h.spec, h.stats, replaced)
            }
        };
        if supervisor.is_some() {
            spec.run.supervisor = supervisor;
        }
        let actor = self
            .start(id, &spec, TraceContext::new_root(), stats.clone())
            .await?;
        // promote the slot under its entry lock: the waiting messages go first, then the
        // instance becomes visible to new senders, then the slot goes (see `deliver`)
        let hosted = Hosted {
            actor: actor.clone(),
            spec,
            started: Instant::now(),
            stats: stats.clone(),
        };
        match self.down.entry(id.clone()) {
            dashmap::Entry::Occupied(mut slot) => {
                let queued = std::mem::take(
                    slot.get_mut()
                        .queue
                        .get_mut()
                        .unwrap_or_else(std::sync::PoisonError::into_inner),
                );
                for (d, body, reply) in queued {
                    let (_, call) = into_call(d, body, reply);
                    if actor.send(call).is_err() {
                        stats.settle(1);
                    }
                }
                self.agents.insert(id.clone(), hosted);
                slot.remove();
            }
            dashmap::Entry::Vacant(_) => {
                self.agents.insert(id.clone(), hosted);
            }
        }
        info!(agent = %id, "agent restarted");
        Ok(replaced)
    }

    /// The supervisor gave up on `id`: it stays failed, and the messages that waited fail.
    pub fn give_up(&self, id: &AgentId, reason: &str) {
        let Some((_, d)) = self.down.remove(id) else {
            return;
        };
        warn!(agent = %id, %reason, "agent given up");
        let err = AgentError::Failed {
            id: id.to_string(),
            reason: reason.to_owned(),
        };
        for (_, _, reply) in d
            .queue
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            d.stats.settle(1);
            if let Some(r) = reply {
                let _ = r.send(Err(err.clone()));
            }
        }
        self.failed
            .insert(id.clone(), (d.spec.epoch, reason.to_owned()));
        self.notify_exit(id, d.spec.epoch, Some(reason.to_owned()));
    }

    /// Forgets a down or failed agent (its supervisor removed it).
    pub fn forget(&self, id: &AgentId) {
        if let Some((_, d)) = self.down.remove(id) {
            self.notify_exit(id, d.spec.epoch, Some(d.reason));
        }
    }

    /// Stops a running agent: asks it to stop, waits its shutdown timeout, then kills it.
    /// With `for_restart` the slot is kept (the supervisor starts it again).
    pub async fn stop(&self, id: &AgentId, for_restart: bool) {
        let Some(h) = self.agents.get(id).map(|h| h.clone()) else {
            return;
        };
        // before the instance is unlisted (which closes its mailbox): a dormant agent is then
        // stopped with its `on_stop`, not dropped
        let stopping = h.actor.release_for_stop();
        if for_restart {
            // as in `exited`: the down slot's lock is held while the instance leaves
            if let dashmap::Entry::Vacant(slot) = self.down.entry(id.clone()) {
                if let Some((_, h)) = self.agents.remove(id) {
                    h.actor.close();
                }
                slot.insert(Down {
                    actor: h.actor.actor_id(),
                    spec: h.spec.clone(),
                    status: DownStatus::Restarting,
                    reason: "stopped for a sibling's restart".into(),
                    queue: std::sync::Mutex::new(VecDeque::new()),
                    stats: h.stats.clone(),
                });
            }
        }
        let timeout = h.spec.run.timeouts().shutdown;
        if stopping
            .wait(Some("stopped by its supervisor".into()), Some(timeout))
            .await
            .is_err()
        {
            warn!(agent = %id, ?timeout, "agent did not stop in time; killed");
            h.actor.kill();
        }
    }

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
                let e = AgentError::Refused(format!(
                    "{} is restarting and already holds {MAX_QUEUED_WHILE_DOWN} messages",
                    d.target
                ));
                return Err((e, reply));
            }
            stats.received.fetch_add(1, Ordering::Relaxed);
            queue.push_back((d, body, reply));
            return Ok(());
        }
        // the slot may have been promoted to running between the two looks
        if let Some(h) = self.agents.get(&d.target).map(|h| h.clone()) {
            return self.deliver_running(&h, d, body, reply);
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
        if self.down.contains_key(target) {
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
        h.actor.send(call).map_err(|call| {
            h.stats.settle(1);
            let e = AgentError::Failed {
                id: target.to_string(),
                reason: "stopped".into(),
            };
            (e, call.reply)
        })
    }

    fn check(&self, d: &Delivery, spec: &Spec, stats: &AgentStats) -> Result<(), AgentError> {
        check_head(&d.target, d.epoch, d.contract.as_ref(), spec)?;
        if d.seq != 0 && !d.in_process {
            with_last_seq(stats, &d.sender, |last| {
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
        let Some(h) = self.agents.get(&run.target) else {
            // not running here: queued while it restarts, or refused, one by one
            return run
                .into_envelopes()
                .filter_map(|env| {
                    let seq = env.seq;
                    let (d, body) = Delivery::from_envelope(env);
                    self.deliver(d, body, None).err().map(|e| (seq, e))
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
        with_last_seq(&h.stats, &sender, |last| {
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
        if let Err(back) = h.actor.send_all(calls) {
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

    /// One agent's report.
    pub fn info(&self, id: &AgentId) -> Option<AgentInfo> {
        let base =
            |epoch, placement: Placement, status: &str, reason, uptime_ms, stats: &AgentStats| {
                AgentInfo {
                    id: id.clone(),
                    node: self.node.to_string(),
                    epoch,
                    placement,
                    status: status.to_owned(),
                    reason,
                    uptime_ms,
                    received: stats.received.load(Ordering::Relaxed),
                    gaps: stats.gaps.load(Ordering::Relaxed),
                    duplicates: stats.duplicates.load(Ordering::Relaxed),
                    mailbox: stats.waiting(),
                    lost: stats.lost.load(Ordering::Relaxed),
                }
            };
        if let Some(h) = self.agents.get(id) {
            return Some(base(
                h.spec.epoch,
                h.spec.record.placement.clone(),
                "running",
                None,
                h.started.elapsed().as_millis() as u64,
                &h.stats,
            ));
        }
        if let Some(d) = self.down.get(id) {
            let status = match d.status {
                DownStatus::Restarting => "restarting",
                DownStatus::BackingOff => "backing-off",
            };
            return Some(base(
                d.spec.epoch,
                d.spec.record.placement.clone(),
                status,
                Some(d.reason.clone()),
                0,
                &d.stats,
            ));
        }
        self.failed.get(id).map(|f| AgentInfo {
            id: id.clone(),
            node: self.node.to_string(),
            epoch: f.0,
            placement: Placement::default(),
            status: "failed".into(),
            reason: Some(f.1.clone()),
            uptime_ms: 0,
            received: 0,
            gaps: 0,
            duplicates: 0,
            mailbox: 0,
            lost: 0,
        })
    }

    /// Every hosted, down and failed agent.
    pub fn list(&self) -> Vec<AgentInfo> {
        let mut ids: Vec<AgentId> = self.agents.iter().map(|e| e.key().clone()).collect();
        ids.extend(self.down.iter().map(|e| e.key().clone()));
        ids.extend(self.failed.iter().map(|e| e.key().clone()));
        ids.sort();
        ids.dedup();
        ids.iter().filter_map(|id| self.info(id)).collect()
    }

    /// The actor of a running agent, once it started (at its first message).
    pub fn actor_id(&self, id: &AgentId) -> Option<ActorId> {
        self.agents.get(id).and_then(|h| h.actor.actor_id())
    }

    /// Placement labels of a hosted agent.
    pub fn placement_of(&self, id: &AgentId) -> Option<Placement> {
        self.agents
            .get(id)
            .map(|h| h.spec.record.placement.clone())
            .or_else(|| self.down.get(id).map(|d| d.spec.record.placement.clone()))
    }

    /// The last failure of an agent, as (unix ms, reason), if it is down or failed.
    pub fn failure_of(&self, id: &AgentId) -> Option<String> {
        self.down
            .get(id)
            .map(|d| d.reason.clone())
            .or_else(|| self.failed.get(id).map(|f| f.1.clone()))
    }

    /// Stops every agent (node shutdown).
    pub fn stop_all(&self) {
        for e in self.agents.iter() {
            e.actor.stop(Some("node shutting down".into()));
        }
    }
}

/// The actor message for a delivered message.
fn into_call(d: Delivery, body: Body, reply: Option<ReplyTx>) -> (AgentId, Call) {
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
    if epoch != 0 && epoch < spec.epoch {
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

/// Runs `f` on the last sequence number accepted from `sender` (0: none yet), under the
/// agent's sequence lock.
fn with_last_seq<R>(stats: &AgentStats, sender: &Arc<str>, f: impl FnOnce(&mut u64) -> R) -> R {
    let mut guard = stats
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

/// Milliseconds since the Unix epoch, for failure times in reports.
pub fn now_unix_ms() -> u64 {
    unix_ms()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::{self, CounterMsg};
    use crate::envelope::Encoding;
    use bytes::Bytes;
    use tokio::sync::oneshot;

    fn host() -> Arc<Host> {
        Host::new("n1", builtin::all())
    }

    fn id(s: &str) -> AgentId {
        s.parse().unwrap()
    }

    fn d(target: &str, seq: u64) -> Delivery {
        Delivery {
            target: id(target),
            epoch: 0,
            sender: "tester".into(),
            seq,
            trace: TraceContext::new_root(),
            contract: None,
            in_process: false,
        }
    }

    async fn ask(h: &Host, dl: Delivery, body: Body) -> Result<Body, AgentError> {
        let (tx, rx) = oneshot::channel();
        h.deliver(dl, body, Some(tx.into()))?;
        rx.await
            .map_err(|_| AgentError::Internal("no reply".into()))?
    }

    /// Activates `id` with null args, unsupervised.
    async fn start(h: &Host, id_text: &str, epoch: u64) -> Result<Activation, AgentError> {
        h.activate(
            id(id_text),
            epoch,
            Arc::new(SpawnRecord {
                encoding: Encoding::Json,
                args: Bytes::from_static(b"null"),
                placement: Placement::default(),
            }),
            TraceContext::new_root(),
            RunOptions::default(),
            || {},
        )
        .await
    }

    fn json(v: serde_json::Value) -> Body {
        Body::json(&v)
    }

    #[tokio::test]
    async fn counter_speaks_json_msgpack_and_typed() {
        let h = host();
        let a = start(&h, "counter/a", 1).await.unwrap();
        assert!(a.created);
        h.deliver(d("counter/a", 1), json(serde_json::json!("inc")), None)
            .unwrap();
        let mp = Body::Encoded(
            Encoding::MsgPack,
            Bytes::from(crate::codec::encode(&CounterMsg::Add(5)).unwrap()),
        );
        h.deliver(d("counter/a", 2), mp, None).unwrap();
        let r = ask(&h, d("counter/a", 3), Body::typed(CounterMsg::Get))
            .await
            .unwrap();
        assert_eq!(r.decode::<i64>().unwrap(), 6);
        let r = ask(&h, d("counter/a", 4), json(serde_json::json!("get")))
            .await
            .unwrap();
        assert_eq!(r.to_json().unwrap(), serde_json::json!(6));
    }

    #[tokio::test]
    async fn bad_payload_is_an_error_and_the_agent_keeps_running() {
        let h = host();
        start(&h, "counter/b", 1).await.unwrap();
        let e = ask(&h, d("counter/b", 1), json(serde_json::json!({"mul": 2})))
            .await
            .unwrap_err();
        assert!(matches!(e, AgentError::BadPayload { .. }), "{e}");
        let garbage = Body::Encoded(Encoding::MsgPack, Bytes::from_static(&[0xc1, 0xc1]));
        let e = ask(&h, d("counter/b", 2), garbage).await.unwrap_err();
        assert!(matches!(e, AgentError::BadPayload { .. }), "{e}");
        let r = ask(&h, d("counter/b", 3), json(serde_json::json!("inc")))
            .await
            .unwrap();
        assert_eq!(r.to_json().unwrap(), serde_json::json!(1));
    }

    #[tokio::test]
    async fn unknown_agent_and_unknown_kind_are_typed_errors() {
        let h = host();
        let e = h
            .deliver(d("counter/none", 1), json(serde_json::json!("inc")), None)
            .unwrap_err();
        assert!(matches!(e, AgentError::NotFound { .. }));
        let e = start(&h, "nosuch/x", 1).await.unwrap_err();
        assert!(matches!(e, AgentError::UnknownKind { .. }), "{e}");
        assert!(
            e.to_string().contains("counter"),
            "lists what is registered: {e}"
        );
    }

    #[tokio::test]
    async fn a_failing_handler_fails_the_agent_with_its_reason() {
        let h = host();
        start(&h, "flaky/x", 1).await.unwrap();
        let e = ask(&h, d("flaky/x", 1), json(serde_json::json!("crash")))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, AgentError::Failed { reason, .. } if reason.contains("crash requested")),
            "{e}"
        );
        let e = h
            .deliver(d("flaky/x", 2), json(serde_json::json!("ping")), None)
            .unwrap_err();
        assert!(
            matches!(&e, AgentError::Failed { .. }),
            "later messages say it failed: {e}"
        );
        let listed = h.list();
        assert_eq!(listed[0].status, "failed");
    }

    #[test]
    fn run_options_are_stored_only_when_they_differ_from_the_defaults() {
        let d = StoredRun::new(RunOptions::default());
        assert!(d.timeouts.is_none());
        let t = d.timeouts();
        let def = RunOptions::default();
        assert_eq!(
            (t.handler, t.start, t.shutdown),
            (def.handler_timeout, def.start_timeout, def.shutdown_timeout)
        );
        let custom = StoredRun::new(RunOptions {
            handler_timeout: Some(Duration::from_millis(250)),
            ..RunOptions::default()
        });
        assert!(custom.timeouts.is_some());
        assert_eq!(custom.timeouts().handler, Some(Duration::from_millis(250)));
        assert_eq!(custom.timeouts().start, def.start_timeout);
    }

    fn run(target: &str, seqs: &[u64], contract: &str) -> TellRun {
        let inc = Bytes::from(serde_json::to_vec(&serde_json::json!("inc")).unwrap());
        TellRun {
            target: id(target),
            epoch: 1,
            sender: "peer".into(),
            contract: Contract {
                name: contract.to_owned().into(),
                version: 1,
            },
            encoding: Encoding::Json,
            msgs: seqs
                .iter()
                .map(|&seq| crate::envelope::RunMsg {
                    seq,
                    trace: TraceContext::new_root(),
                    body: inc.clone(),
                })
                .collect(),
            bytes: inc.len() * seqs.len(),
        }
    }

    async fn count(h: &Host, target: &str) -> i64 {
        ask(h, d(target, 0), Body::typed(CounterMsg::Get))
            .await
            .unwrap()
            .decode()
            .unwrap()
    }

    #[tokio::test]
    async fn a_run_is_delivered_in_order_with_duplicates_refused_one_by_one() {
        let h = host();
        start(&h, "counter/r", 1).await.unwrap();
        assert!(h
            .deliver_run(run("counter/r", &[1, 2, 3], "counter"))
            .is_empty());
        // 3 again is a duplicate; 4 and 5 go in
        let refused = h.deliver_run(run("counter/r", &[3, 4, 5], "counter"));
        assert_eq!(refused.len(), 1);
        assert!(matches!(refused[0], (3, AgentError::Duplicate { .. })));
        assert_eq!(count(&h, "counter/r").await, 5);
    }

    #[tokio::test]
    async fn a_run_of_a_wrong_contract_or_to_no_agent_is_refused_per_message() {
        let h = host();
        start(&h, "counter/w", 1).await.unwrap();
        let refused = h.deliver_run(run("counter/w", &[1, 2], "echo"));
        assert_eq!(refused.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [1, 2]);
        assert!(refused
            .iter()
            .all(|(_, e)| matches!(e, AgentError::Contract { .. })));
        let refused = h.deliver_run(run("counter/none", &[1, 2], "counter"));
        assert!(refused
            .iter()
            .all(|(_, e)| matches!(e, AgentError::NotFound { .. })));
        assert_eq!(refused.len(), 2);
        // nothing reached the counter, and the refused numbers were not taken
        assert_eq!(count(&h, "counter/w").await, 0);
        assert!(h
            .deliver_run(run("counter/w", &[1, 2], "counter"))
            .is_empty());
        assert_eq!(count(&h, "counter/w").await, 2);
    }

    #[tokio::test]
    async fn older_epochs_are_fenced_and_duplicates_refused() {
        let h = host();
        start(&h, "echo/e", 3).await.unwrap();
        let mut old = d("echo/e", 1);
        old.epoch = 2;
        assert!(matches!(
            h.deliver(old, json(serde_json::json!(1)), None),
            Err(AgentError::StaleEpoch { current: 3, .. })
        ));
        h.deliver(d("echo/e", 1), json(serde_json::json!(1)), None)
            .unwrap();
        assert!(matches!(
            h.deliver(d("echo/e", 1), json(serde_json::json!(1)), None),
            Err(AgentError::Duplicate { seq: 1, .. })
        ));
        h.deliver(d("echo/e", 5), json(serde_json::json!(1)), None)
            .unwrap();
        let info = &h.list()[0];
        assert_eq!((info.received, info.duplicates, info.gaps), (2, 1, 1));
    }

    #[tokio::test]
    async fn a_restarted_sender_starts_a_new_session_not_a_gap() {
        let h = host();
        start(&h, "echo/s", 1).await.unwrap();
        let session = |s: u64, n: u64| s << SESSION_SHIFT | n;
        for seq in [session(3, 1), session(3, 2), session(4, 1), session(4, 2)] {
            h.deliver(d("echo/s", seq), json(serde_json::json!(1)), None)
                .unwrap();
        }
        // a late message of the older session is a duplicate
        assert!(matches!(
            h.deliver(d("echo/s", session(3, 3)), json(serde_json::json!(1)), None),
            Err(AgentError::Duplicate { .. })
        ));
        // a newer session that does not start at 1 lost its beginning: a gap
        h.deliver(d("echo/s", session(5, 4)), json(serde_json::json!(1)), None)
            .unwrap();
        let info = &h.list()[0];
        assert_eq!((info.received, info.duplicates, info.gaps), (5, 1, 1));
    }

    #[tokio::test]
    async fn concurrent_activation_of_one_id_yields_one_agent() {
        let h = host();
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let h = h.clone();
            tasks.push(tokio::spawn(async move {
                start(&h, "counter/one", 1).await.unwrap()
            }));
        }
        let mut created = 0;
        for t in tasks {
            if t.await.unwrap().created {
                created += 1;
            }
        }
        assert_eq!(created, 1);
        assert_eq!(h.list().len(), 1);
    }

    /// A typed in-process call to a counter.
    fn typed_call(
        msg: CounterMsg,
        seq: u64,
    ) -> (Call, oneshot::Receiver<Result<Body, AgentError>>) {
        let (tx, rx) = oneshot::channel();
        let call = Call {
            body: Body::typed(msg),
            trace: TraceContext::new_root(),
            sender: Some("tester".into()),
            seq,
            reply: Some(tx.into()),
        };
        (call, rx)
    }

    #[tokio::test]
    async fn an_awake_agent_stops_at_once_not_after_its_shutdown_timeout() {
        let h = host();
        let mut exits = exits(&h);
        start(&h, "counter/awake", 1).await.unwrap();
        // after a message the agent listens in its handler (see the mailbox module)
        let got = ask(&h, d("counter/awake", 0), Body::typed(CounterMsg::Get)).await;
        assert_eq!(got.unwrap().decode::<i64>().unwrap(), 0);
        let t0 = Instant::now();
        h.stop(&id("counter/awake"), false).await;
        // the default shutdown timeout is 5 s: a stop that waited for it would end in a kill,
        // and a killed agent's stop is not reported as a clean exit
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        let (who, reason) = tokio::time::timeout(Duration::from_secs(2), exits.recv())
            .await
            .expect("the stop is reported")
            .unwrap();
        assert_eq!((who.to_string(), reason), ("counter/awake".into(), None));
    }

    #[tokio::test]
    async fn a_port_serves_its_instance_and_refuses_once_the_host_unlists_it() {
        let h = host();
        start(&h, "counter/p", 1).await.unwrap();
        let port = h.port(&id("counter/p")).expect("runs here");
        for seq in 1..=3 {
            port.send(typed_call(CounterMsg::Inc, seq).0).unwrap();
        }
        let (call, rx) = typed_call(CounterMsg::Get, 4);
        port.send(call).unwrap();
        assert_eq!(rx.await.unwrap().unwrap().decode::<i64>().unwrap(), 3);
        assert_eq!(h.info(&id("counter/p")).unwrap().received, 4);
        // stopped for a sibling's restart: no longer the running instance
        h.stop(&id("counter/p"), true).await;
        assert!(h.port(&id("counter/p")).is_none());
        let (call, _rx) = typed_call(CounterMsg::Inc, 5);
        let back = port.send(call).expect_err("a stale port refuses");
        // given back whole, to go the long way
        assert_eq!(back.seq, 5);
        assert!(matches!(
            back.body.decode::<CounterMsg>(),
            Ok(CounterMsg::Inc)
        ));
    }

    /// Records the exits the host reports.
    fn exits(h: &Host) -> tokio::sync::mpsc::UnboundedReceiver<(AgentId, Option<String>)> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        h.set_exit_listener(Arc::new(move |id: &AgentId, _, reason| {
            let _ = tx.send((id.clone(), reason));
        }));
        rx
    }

    #[tokio::test]
    async fn an_agent_never_sent_anything_has_no_actor_and_stops_cleanly() {
        let h = host();
        let mut exits = exits(&h);
        start(&h, "counter/quiet", 1).await.unwrap();
        assert_eq!(h.info(&id("counter/quiet")).unwrap().status, "running");
        assert_eq!(h.actor_id(&id("counter/quiet")), None);
        h.stop(&id("counter/quiet"), false).await;
        // its on_stop ran in the stopper's task, and the stop is reported as clean
        let (who, reason) = exits.try_recv().expect("reported by the time stop returns");
        assert_eq!((who.to_string(), reason), ("counter/quiet".into(), None));
        assert!(h.info(&id("counter/quiet")).is_none());
        let gone = ask(&h, d("counter/quiet", 0), Body::typed(CounterMsg::Get)).await;
        assert!(matches!(gone, Err(AgentError::NotFound { .. })), "{gone:?}");
    }

    #[tokio::test]
    async fn the_first_message_starts_the_actor_and_later_ones_reach_it() {
        let h = host();
        start(&h, "counter/first", 1).await.unwrap();
        for seq in 1..=3 {
            h.deliver(d("counter/first", seq), Body::typed(CounterMsg::Inc), None)
                .unwrap();
        }
        let actor = h
            .actor_id(&id("counter/first"))
            .expect("started by the first");
        let got = ask(&h, d("counter/first", 4), Body::typed(CounterMsg::Get)).await;
        assert_eq!(got.unwrap().decode::<i64>().unwrap(), 3);
        assert_eq!(
            h.actor_id(&id("counter/first")),
            Some(actor),
            "started once"
        );
    }

    /// An agent whose `init` panics.
    struct Panicky;

    impl crate::agent::Agent for Panicky {
        const KIND: &'static str = "panicky";
        type Args = serde_json::Value;
        type Msg = ();
        type Reply = ();
        type State = ();

        async fn init(
            &self,
            _: &crate::agent::Ctx,
            _: serde_json::Value,
        ) -> Result<(), crate::agent::Failure> {
            panic!("init went wrong")
        }

        async fn handle(
            &self,
            _: &crate::agent::Ctx,
            _: &mut (),
            _: (),
        ) -> Result<(), crate::agent::Failure> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn an_init_that_panics_fails_the_spawn_and_the_spawner_goes_on() {
        let h = Host::new("n1", [crate::kind::erase(Panicky)]);
        let err = start(&h, "panicky/a", 1).await.unwrap_err();
        assert!(
            matches!(&err, AgentError::Failed { reason, .. } if reason.contains("init panicked: init went wrong")),
            "{err}"
        );
        assert!(h.info(&id("panicky/a")).is_none());
    }
}
