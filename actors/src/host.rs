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
//!    which are checked). For an agent that arrived by a move it still raises the table
//!    (without refusing): older messages of the same sender, relayed by the move's source,
//!    may come after it and must then be refused, not applied out of order.
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

mod door;
mod lifecycle;
mod moving;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use ractor::{ActorCell, ActorId};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::body::Body;
use crate::call::ReplyTx;
use crate::durable::{CheckpointInfo, CheckpointSink, Durability};
use crate::envelope::{Contract, Envelope, TraceContext};
use crate::error::AgentError;
use crate::id::{AgentId, IdHash};
use crate::kind::{ErasedKind, ExitHook, Gate, StartHook};
use crate::mailbox::AgentActorRef;
use crate::placement::Placement;
pub use crate::port::LocalPort;
pub use crate::record::Activation;
use crate::record::SpawnRecord;
use crate::stats::AgentStats;
pub use moving::{ArrivalHook, Forwarder, FrozenAgent, TOMBSTONE};

/// Sequence numbers are `session << SESSION_SHIFT | n`, `n` from 1 (see the module doc).
pub const SESSION_SHIFT: u32 = 40;

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
    /// The oldest epoch a message may be addressed to: this activation's, or the first of
    /// the line of moves it came by (see [`moving`]).
    floor: u64,
    run: StoredRun,
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

/// Why a down agent is not running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DownStatus {
    /// Its supervisor is restarting it.
    Restarting,
    /// Waiting for its backoff delay.
    BackingOff,
    /// Frozen for a live migration: messages wait for its outcome.
    Moving,
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
    /// How durable its state is.
    #[serde(default)]
    pub durability: Durability,
    /// Its newest checkpoint known here, if it is durable and has one.
    #[serde(default)]
    pub checkpoint: Option<CheckpointInfo>,
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
    /// The node's runtime, which agents' contexts send through (set once the node built it).
    router: std::sync::OnceLock<Weak<dyn crate::router::Router>>,
    /// Where durable agents' checkpoints go (the node's checkpointer).
    checkpoints: std::sync::OnceLock<Arc<dyn CheckpointSink>>,
    /// Agents that moved away, for a while (see [`moving`]).
    moved: DashMap<AgentId, moving::Tombstone, IdHash>,
    /// Agents installed for a move, held until their source has handed everything over.
    installed: DashMap<AgentId, moving::Installed, IdHash>,
    /// Installs announced for a move, by agent and epoch: the source node.
    installing: DashMap<(AgentId, u64), Arc<str>>,
    /// Where messages for moved agents go.
    forwarder: std::sync::OnceLock<Forwarder>,
    /// Told when an agent moved here runs (the node forgets its route to where it was).
    arrived: std::sync::OnceLock<moving::ArrivalHook>,
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
            router: std::sync::OnceLock::new(),
            checkpoints: std::sync::OnceLock::new(),
            moved: DashMap::default(),
            installed: DashMap::default(),
            installing: DashMap::default(),
            forwarder: std::sync::OnceLock::new(),
            arrived: std::sync::OnceLock::new(),
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

    /// Registers the node's runtime, which the contexts of agents started from now on send
    /// through ([`crate::Ctx::tell`], [`crate::Ctx::spawn`]...). Returns false if one was
    /// registered already.
    pub fn set_router(&self, router: Weak<dyn crate::router::Router>) -> bool {
        self.router.set(router).is_ok()
    }

    /// Registers where the checkpoints of durable agents started from now on go, and where
    /// they start from. Returns false if a checkpointer was registered already. A host with
    /// none runs durable agents as `none` ones.
    pub fn set_checkpoints(&self, sink: Arc<dyn CheckpointSink>) -> bool {
        self.checkpoints.set(sink).is_ok()
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
        self.agents.get(id).map(|h| {
            let moved_here = h.spec.floor != h.spec.epoch;
            LocalPort::new(h.actor.clone(), h.stats.clone()).noting_seqs(moved_here)
        })
    }

    /// One agent's report.
    pub fn info(&self, id: &AgentId) -> Option<AgentInfo> {
        let base =
            |epoch, record: &SpawnRecord, status: &str, reason, uptime_ms, stats: &AgentStats| {
                let durability = record.durability;
                AgentInfo {
                    id: id.clone(),
                    node: self.node.to_string(),
                    epoch,
                    placement: record.placement.clone(),
                    status: status.to_owned(),
                    reason,
                    uptime_ms,
                    received: stats.received.load(Ordering::Relaxed),
                    gaps: stats.gaps.load(Ordering::Relaxed),
                    duplicates: stats.duplicates.load(Ordering::Relaxed),
                    mailbox: stats.waiting(),
                    lost: stats.lost.load(Ordering::Relaxed),
                    durability,
                    checkpoint: durability
                        .is_durable()
                        .then(|| self.checkpoints.get().and_then(|c| c.info(id)))
                        .flatten(),
                }
            };
        if let Some(h) = self.agents.get(id) {
            return Some(base(
                h.spec.epoch,
                &h.spec.record,
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
                DownStatus::Moving => "moving",
            };
            return Some(base(
                d.spec.epoch,
                &d.spec.record,
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
            durability: Durability::None,
            checkpoint: None,
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

    /// How durable a hosted agent is.
    pub fn durability_of(&self, id: &AgentId) -> Option<Durability> {
        self.agents
            .get(id)
            .map(|h| h.spec.record.durability)
            .or_else(|| self.down.get(id).map(|d| d.spec.record.durability))
    }

    /// The epoch and spawn record of a hosted agent (running, restarting or down).
    pub fn record_of(&self, id: &AgentId) -> Option<(u64, Arc<SpawnRecord>)> {
        self.agents
            .get(id)
            .map(|h| (h.spec.epoch, h.spec.record.clone()))
            .or_else(|| {
                self.down
                    .get(id)
                    .map(|d| (d.spec.epoch, d.spec.record.clone()))
            })
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

/// Milliseconds since the Unix epoch, for failure times in reports.
pub fn now_unix_ms() -> u64 {
    crate::timers::now_unix_ms()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::{self, CounterMsg};
    use crate::call::Call;
    use crate::envelope::{Encoding, TellRun};
    use bytes::Bytes;
    use tokio::sync::oneshot;

    fn host() -> Arc<Host> {
        Host::new(
            "n1",
            [builtin::basic(), builtin::demo(&std::env::temp_dir())].concat(),
        )
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
                durability: crate::durable::Durability::None,
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

    // on paused time: a stop that waited for the shutdown timeout would move the clock by it
    #[tokio::test(start_paused = true)]
    async fn an_awake_agent_stops_at_once_not_after_its_shutdown_timeout() {
        let h = host();
        let mut exits = exits(&h);
        start(&h, "counter/awake", 1).await.unwrap();
        // after a message the agent listens in its handler (see the mailbox module)
        let got = ask(&h, d("counter/awake", 0), Body::typed(CounterMsg::Get)).await;
        assert_eq!(got.unwrap().decode::<i64>().unwrap(), 0);
        let t0 = tokio::time::Instant::now();
        h.stop(&id("counter/awake"), false).await;
        // the default shutdown timeout is 5 s: a stop that waited for it would end in a kill,
        // and a killed agent's stop is not reported as a clean exit
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
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
            _: &crate::agent::Ctx<Self>,
            _: serde_json::Value,
        ) -> Result<(), crate::agent::Failure> {
            panic!("init went wrong")
        }

        async fn handle(
            &self,
            _: &crate::agent::Ctx<Self>,
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
