//! The agent runtime of a node: spawning by kind anywhere in the cluster, and routing messages
//! by agent id to wherever the agent runs.
//!
//! ```text
//! AgentRef::tell/ask ──▶ AgentSystem (Router)
//!                          ├─ route known, local  ──▶ Host::deliver (typed, no encoding)
//!                          ├─ route known, remote ──▶ peer queue ──▶ agent stream (QUIC, in order)
//!                          └─ route unknown       ──▶ queued in order while the directory
//!                                                     owner is asked (Lookup), then flushed
//! agent stream from a peer ──▶ serve(): Tell/Ask ─▶ Host::deliver; Claim/Lookup ─▶ directory;
//!                                       Activate/Probe ─▶ Host
//! ```
//!
//! **Directory.** Each id's entry is kept by its owner (see [`directory::owner`]): get-or-spawn
//! (`Claim`) is decided there, one claim per id at a time, which is what makes a race of two
//! spawns of one id yield one agent. The owner picks the node ([`directory::choose`]), gives the
//! activation the next epoch, and asks the host to start it. An owner without an entry asks the
//! hosts (`Probe`): they are the source of truth, so a new owner rebuilds what it needs.
//!
//! **Backup and failover.** The owner copies each entry, with the agent's spawn record, to the
//! id's backup (the second rendezvous choice, [`directory::owner_and_backup`]), which becomes
//! the owner when the owner goes down. On every membership change the reconciler fails over
//! the entries this node owns whose host was decided down, re-copies entries whose backup
//! changed, and hands entries it no longer owns to their owner (`Handoff`). Replacing a dead
//! activation first asks every up host for a newer one, and refuses if one cannot be asked.
//! A fenced node decides no claims and serves no deliveries; the activations its fence stopped
//! are reported to their owners (`Evicted`) when the fence lifts.
//!
//! **Ordering.** Per sender (this node, or one of its agents) and target, messages are numbered
//! from 1 and travel in one ordered queue: the per-target queue while the route is resolved,
//! then the per-peer queue and its single QUIC stream. The host checks the numbers.
//!
//! **Delivery.** A tell is at most once: a tell that fails on the receiving side is reported
//! back (`TellFailed`) and logged here with its trace id; one caught in a connection that
//! breaks is lost. An ask always ends: with the reply, a typed error, or a timeout at its
//! deadline, and at once with [`AgentError::NodeUnreachable`] when the host's node becomes
//! unreachable.
//!
//! **Local-only.** A `local-only` agent is private to the local node that runs it: it is never
//! claimed at a (remote) directory owner, never placed elsewhere, and neither its messages nor
//! those it sends leave the node. The checks run before any byte is written.

pub mod directory;
pub mod drain;
pub mod outbox;
pub mod peer_queue;
pub mod protocol;

pub use drain::{OutboxCounters, Sent};
use peer_queue::{FrameSink, PeerQueue};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use quinn::{RecvStream, SendStream};
use tether_actors::agent_ref::{PortCache, ReplyRx};
use tether_actors::call::{Call, ReplyTx};
use tether_actors::origin::CURRENT_AGENT;
use tether_actors::{
    Activation, AgentError, AgentId, AgentInfo, Body, Contract, Delivery, Encoding, Envelope, Host,
    IdHash, Placement, Router, SpawnRecord, TellRun, TraceContext,
};
use tether_supervision::{AddAgent, AgentPolicy, NodeSupervisor, StoredPolicy};
use tokio::sync::{oneshot, Mutex};
use tracing::{debug, error, info, warn};

use crate::detector::PeerState;
use crate::identity::Role;
use crate::net::wire::{self, StreamTag, WireError};
use crate::node::Shared;
use directory::{Candidate, PlacementError};
use protocol::{Answer, EntryCopy, Location, Request, Response, MAX_AGENT_FRAME};

/// How long a spawn may take end to end (claim, placement, activation).
pub const SPAWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// How many times a failover is tried when a host cannot be asked about newer activations.
const FAILOVER_ATTEMPTS: u32 = 5;
/// The pause between those tries.
const FAILOVER_RETRY: Duration = Duration::from_secs(1);

/// Where a spawn should happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// On this node.
    Here,
    /// On the named node.
    On(String),
    /// Where the placement labels choose.
    Placed,
}

/// How a spawn is done: labels, supervision, group.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpawnOptions {
    /// Placement labels overriding the kind's.
    pub placement: Option<Placement>,
    /// Restart policy and timeouts.
    pub policy: AgentPolicy,
    /// The supervisor group to run under (it lives on one node: give the target node).
    pub group: Option<String>,
}

/// A message waiting for its route.
struct Outgoing {
    target: AgentId,
    body: Body,
    contract: Contract,
    sender: Arc<str>,
    seq: u64,
    trace: TraceContext,
    ask: Option<(oneshot::Sender<Result<Body, AgentError>>, Duration)>,
}

/// How to reach an agent that this node does not host (an agent hosted here needs no
/// route: the host answers for it, see [`AgentSystem::route`]). `Local` remains for an agent
/// found here by a lookup while messages waited for it.
enum Route {
    Local,
    /// Shared, so that a send takes a reference rather than copying the node's name.
    Remote(Arc<Location>),
    /// Messages queued in order while the route is looked up. (A typed body is `Send` but not
    /// `Sync`; the mutex makes the queue shareable, and is only taken on this path.)
    Resolving(std::sync::Mutex<Vec<Outgoing>>),
}

/// A directory entry, kept by the owner and copied to the backup.
#[derive(Debug, Clone)]
struct DirEntry {
    /// Interned (see [`AgentSystem::node_name`]): every entry of a node shares its name.
    node: Arc<str>,
    epoch: u64,
    /// Boxed strings (16 bytes, not 24): every entry pays for the inline size, few use it.
    failed: Option<Box<str>>,
    /// How it was spawned, kept by the owner that placed it (and its backup) so it can be
    /// activated again elsewhere when its node is decided down. `None` for entries rebuilt by
    /// probing hosts.
    spec: Option<Arc<DirSpec>>,
    /// The node the owner last sent a copy of this entry to.
    copied_to: Option<Box<str>>,
}

impl DirEntry {
    fn copy(&self, id: &AgentId) -> Option<EntryCopy> {
        let spec = self.spec.as_ref()?;
        Some(EntryCopy {
            id: id.clone(),
            node: self.node.to_string(),
            epoch: self.epoch,
            args_encoding: spec.record.encoding,
            args: spec.record.args.clone(),
            placement: spec.record.placement.clone(),
            policy: spec.policy.get(),
            group: spec.group.clone(),
        })
    }

    fn from_copy(c: EntryCopy, node: Arc<str>) -> (AgentId, Self) {
        let e = DirEntry {
            node,
            epoch: c.epoch,
            failed: None,
            spec: Some(Arc::new(DirSpec {
                record: Arc::new(SpawnRecord {
                    encoding: c.args_encoding,
                    args: c.args,
                    placement: c.placement,
                }),
                policy: c.policy.into(),
                group: c.group,
            })),
            copied_to: None,
        };
        (c.id, e)
    }
}

/// What a failover needs to activate an agent again.
#[derive(Debug)]
struct DirSpec {
    /// Shared with the host, when the agent runs on this node.
    record: Arc<SpawnRecord>,
    policy: StoredPolicy,
    group: Option<String>,
}

/// The requests for one peer, and the agent stream they are written to.
type Requests = PeerQueue<Request, FrameSink>;

/// The answers to the requests of one agent stream a peer opened.
#[derive(Clone)]
struct Answers(Arc<PeerQueue<Response, FrameSink>>);

impl Answers {
    /// Writes `resp` at once when the stream's writer is idle, else queues it; dropped once
    /// the stream is gone.
    fn send(&self, resp: Response) {
        self.0.push_or_write(resp, FrameSink::try_write);
    }
}

struct Pending {
    peer: String,
    waiter: Waiter,
}

/// Who waits for a request's answer.
enum Waiter {
    /// [`AgentSystem::request`], which takes the answer as it is.
    Request(oneshot::Sender<Result<Answer, AgentError>>),
    /// An asker: the reply goes to it straight from the stream's reader, with no task in
    /// between. Its own deadline covers the wait; an entry whose asker gave up is swept.
    Ask {
        tx: oneshot::Sender<Result<Body, AgentError>>,
        target: AgentId,
    },
}

impl Waiter {
    /// Whether no one waits any more (an asker past its deadline).
    fn is_closed(&self) -> bool {
        match self {
            Waiter::Request(tx) => tx.is_closed(),
            Waiter::Ask { tx, .. } => tx.is_closed(),
        }
    }
}

/// Every this many asks to other nodes, entries of askers that gave up are swept.
const SWEEP_EVERY: u64 = 1024;

/// The agent runtime of one node.
pub struct AgentSystem {
    me: String,
    /// `me` as the sender of this node's own messages (shared, not copied per message).
    me_sender: Arc<str>,
    /// Other nodes' names as directory entries share them (see [`AgentSystem::node_name`]).
    names: std::sync::Mutex<Vec<Arc<str>>>,
    role: Role,
    host: Arc<Host>,
    sup: NodeSupervisor,
    net: OnceLock<Weak<Shared>>,
    myself: Weak<AgentSystem>,
    next_req: AtomicU64,
    pending: DashMap<u64, Pending>,
    routes: DashMap<AgentId, Route, IdHash>,
    seqs: DashMap<(String, AgentId), u64>,
    node_seqs: DashMap<AgentId, u64, IdHash>,
    outs: DashMap<String, Arc<Requests>>,
    dir: DashMap<AgentId, DirEntry, IdHash>,
    /// Entries of `dir` per hosting node (placement's load), kept in step by `dir_insert` and
    /// `dir_remove`.
    load: DashMap<String, usize>,
    claim_locks: DashMap<AgentId, Arc<Mutex<()>>, IdHash>,
    frames_in: AtomicU64,
    tell_failures: AtomicU64,
    /// Fence and lease: whether this node may act now (shared with the host's gate).
    standing: Arc<Standing>,
    failovers: AtomicU64,
    unavailable: AtomicU64,
    /// Activations a fence stopped, reported to their owners when the fence is lifted.
    evicted: std::sync::Mutex<Vec<(AgentId, u64)>>,
    /// Peers decided down that have not fenced since: their agent requests are refused.
    quarantined: DashMap<String, ()>,
    quarantined_n: std::sync::atomic::AtomicUsize,
    /// Wakes the reconciler (membership changed).
    reconcile: Arc<tokio::sync::Notify>,
    /// Added to every sequence number this node assigns: its incarnation, shifted (see
    /// [`tether_actors::host::SESSION_SHIFT`]), so that numbers keep growing across restarts.
    seq_base: u64,
    /// A local node's outbox (remote nodes have none): tells for unreachable agents.
    outbox: Option<std::sync::Mutex<outbox::Outbox>>,
    /// Its depth, read without the lock on every tell.
    outbox_depth: std::sync::atomic::AtomicUsize,
    /// Wakes the drainer (membership changed).
    outbox_wake: Arc<tokio::sync::Notify>,
    outbox_delivered: AtomicU64,
    outbox_dropped: AtomicU64,
}

impl std::fmt::Debug for AgentSystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentSystem")
            .field("me", &self.me)
            .field("host", &self.host)
            .finish()
    }
}

/// Whether this node may act now: not fenced, and its lease (renewed by every tick of the
/// node) not past. A node that was paused past its lease (SIGSTOP, a VM freeze) refuses what
/// it finds waiting when it resumes, before its ticker can fence it: requests from peers, and
/// (through the host's gate, asked before each handler call) messages already in mailboxes.
#[derive(Debug)]
struct Standing {
    me: String,
    /// Set while the node is fenced (losing side of a split): no activation here.
    fenced: std::sync::atomic::AtomicBool,
    /// Until when (on [`coarse_now_ms`]'s clock) this node may act.
    lease_until_ms: AtomicU64,
}

/// Milliseconds on the monotonic clock, read coarsely: the kernel's last tick (a few ms
/// old), several times cheaper than a precise read. The gate reads it before every message a
/// remote node's agent handles; a lease lasts seconds.
#[cfg(target_os = "linux")]
fn coarse_now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) only writes the timespec it is given, which lives on this
    // stack frame; CLOCK_MONOTONIC_COARSE exists on every Linux tokio supports
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    debug_assert_eq!(rc, 0, "CLOCK_MONOTONIC_COARSE is readable");
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Milliseconds on the monotonic clock (since the first read).
#[cfg(not(target_os = "linux"))]
fn coarse_now_ms() -> u64 {
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

impl Standing {
    fn refusal(&self) -> Option<String> {
        if self.fenced.load(Ordering::SeqCst) {
            return Some(format!(
                "node {} is fenced (on the losing side of a split); it hosts no agent",
                self.me
            ));
        }
        let until = self.lease_until_ms.load(Ordering::Relaxed);
        if until != u64::MAX && coarse_now_ms() > until {
            return Some(format!(
                "node {} was paused past its lease; it refuses work until it has fenced",
                self.me
            ));
        }
        None
    }
}

/// Counters of the agent runtime, for status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentCounters {
    /// Agent-protocol frames received from peers.
    pub frames_in: u64,
    /// Tells reported as failed by their receiving node.
    pub tell_failures: u64,
    /// Asks waiting for an answer.
    pub pending_asks: u64,
    /// Agents this node (as directory owner) activated again after their node went down.
    #[serde(default)]
    pub failovers: u64,
    /// Agents of a downed node that could not be activated elsewhere (no eligible node, or
    /// no spawn record).
    #[serde(default)]
    pub unavailable: u64,
}

impl AgentSystem {
    pub(crate) fn new(
        me: &str,
        (role, incarnation): (Role, u64),
        host: Arc<Host>,
        sup: NodeSupervisor,
        outbox: Option<outbox::Outbox>,
    ) -> Arc<Self> {
        let depth = outbox.as_ref().map_or(0, outbox::Outbox::depth);
        let sys = Arc::new_cyclic(|myself| Self {
            me: me.to_owned(),
            me_sender: me.into(),
            names: std::sync::Mutex::default(),
            role,
            host,
            sup,
            net: OnceLock::new(),
            myself: myself.clone(),
            next_req: AtomicU64::new(1),
            pending: DashMap::new(),
            routes: DashMap::default(),
            seqs: DashMap::new(),
            node_seqs: DashMap::default(),
            outs: DashMap::new(),
            dir: DashMap::default(),
            load: DashMap::new(),
            claim_locks: DashMap::default(),
            frames_in: AtomicU64::new(0),
            tell_failures: AtomicU64::new(0),
            standing: Arc::new(Standing {
                me: me.to_owned(),
                fenced: std::sync::atomic::AtomicBool::new(false),
                lease_until_ms: AtomicU64::new(u64::MAX),
            }),
            failovers: AtomicU64::new(0),
            unavailable: AtomicU64::new(0),
            evicted: std::sync::Mutex::new(Vec::new()),
            quarantined: DashMap::new(),
            quarantined_n: std::sync::atomic::AtomicUsize::new(0),
            reconcile: Arc::new(tokio::sync::Notify::new()),
            seq_base: incarnation << tether_actors::host::SESSION_SHIFT,
            outbox: outbox.map(std::sync::Mutex::new),
            outbox_depth: std::sync::atomic::AtomicUsize::new(depth),
            outbox_wake: Arc::new(tokio::sync::Notify::new()),
            outbox_delivered: AtomicU64::new(0),
            outbox_dropped: AtomicU64::new(0),
        });
        if role == Role::Remote {
            let standing = sys.standing.clone();
            sys.host.set_gate(Arc::new(move || standing.refusal()));
        }
        let weak = Arc::downgrade(&sys);
        sys.host
            .set_exit_listener(Arc::new(move |id, epoch, reason| {
                if let Some(sys) = weak.upgrade() {
                    sys.on_exit(id, epoch, reason);
                }
            }));
        sys
    }

    pub(crate) fn attach(&self, net: Weak<Shared>) {
        let _ = self.net.set(net);
    }

    fn net(&self) -> Result<Arc<Shared>, AgentError> {
        self.net
            .get()
            .and_then(Weak::upgrade)
            .ok_or_else(|| AgentError::Internal("node is shutting down".into()))
    }

    fn arc(&self) -> Arc<AgentSystem> {
        // invariant: `self` is only reachable through the Arc made in `new`
        self.myself
            .upgrade()
            .expect("agent system is alive while used")
    }

    /// The agents this node hosts.
    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// The node's supervision.
    pub fn supervisor(&self) -> &NodeSupervisor {
        &self.sup
    }

    /// Activates an agent here, under the node's supervision.
    async fn activate_here(
        &self,
        a: AddAgent,
        group: Option<&str>,
    ) -> Result<Activation, AgentError> {
        if self.standing.fenced.load(Ordering::Relaxed) {
            return Err(AgentError::Refused(format!(
                "node {} is fenced (on the losing side of a split); it activates no agent \
                 until it sees every remote node again",
                self.me
            )));
        }
        self.sup.activate(a, group).await
    }

    /// Fences this node (or lifts the fence): while fenced, no agent is activated here and no
    /// claim is decided here. Lifting it reports the activations the fence stopped to their
    /// owners, which place them again unless a newer activation exists (the other side
    /// failed them over while this node was cut off).
    pub(crate) fn set_fenced(&self, on: bool) {
        let was = self.standing.fenced.swap(on, Ordering::SeqCst);
        if was && !on {
            let evicted = std::mem::take(
                &mut *self
                    .evicted
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            for (id, epoch) in evicted {
                match self.owner_of(&id) {
                    Ok(owner) if owner == self.me => {
                        let sys = self.arc();
                        let me = self.me.clone();
                        tokio::spawn(async move { sys.evicted(id, epoch, &me).await });
                    }
                    Ok(owner) => self.send(&owner, Request::Evicted { id, epoch }),
                    Err(e) => {
                        warn!(agent = %id, error = %e, "a fence stopped it, and no owner is reachable to place it again")
                    }
                }
            }
            self.reconcile.notify_one();
        }
    }

    fn is_fenced(&self) -> bool {
        self.standing.fenced.load(Ordering::SeqCst)
    }

    /// Renews the lease: requests from peers are served for `lease` from now.
    pub(crate) fn renew_lease(&self, lease: Duration) {
        let until = coarse_now_ms() + lease.as_millis() as u64;
        self.standing.lease_until_ms.store(until, Ordering::Relaxed);
    }

    /// Why requests that act (deliveries, activations, claims) are refused now, if they are.
    fn not_serving(&self) -> Option<AgentError> {
        self.standing.refusal().map(AgentError::Refused)
    }

    /// Stops every hosted agent for good: the node is fenced, and the winning side of the
    /// split activates them anew with higher epochs. Returns how many were stopped.
    pub(crate) async fn fence(&self) -> usize {
        let n = match self.sup.fence().await {
            Ok(n) => {
                warn!(stopped = n, "fenced: hosted agents stopped");
                n
            }
            Err(e) => {
                error!(error = %e, "fenced, but the supervisor did not stop the agents");
                0
            }
        };
        self.routes.clear();
        n
    }

    /// Refuses (or accepts again) agent requests from `peer`: it was decided down and has
    /// not fenced since, so whatever it sends comes from instances that were replaced.
    pub(crate) fn set_quarantined(&self, peer: &str, on: bool) {
        let changed = if on {
            self.quarantined.insert(peer.to_owned(), ()).is_none()
        } else {
            self.quarantined.remove(peer).is_some()
        };
        if changed {
            self.quarantined_n
                .store(self.quarantined.len(), Ordering::SeqCst);
        }
    }

    fn is_quarantined(&self, peer: &str) -> bool {
        self.quarantined_n.load(Ordering::Relaxed) != 0 && self.quarantined.contains_key(peer)
    }

    /// Asks the reconciler to run (membership changed: a node came up or was decided down).
    pub(crate) fn request_reconcile(&self) {
        self.reconcile.notify_one();
        self.outbox_wake.notify_one();
    }

    /// Runs [`AgentSystem::reconcile_now`] whenever asked, until the node stops.
    pub(crate) async fn reconciler(
        sys: Weak<AgentSystem>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let Some(wake) = sys.upgrade().map(|s| s.reconcile.clone()) else {
            return;
        };
        loop {
            tokio::select! {
                _ = wake.notified() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let Some(s) = sys.upgrade() else { return };
            s.reconcile_now().await;
        }
    }

    /// Brings the directory in line with the current view, after a membership change:
    ///
    /// - an entry this node owns whose host is down is failed over: activated again on an
    ///   eligible surviving node with a higher epoch (or counted as unavailable);
    /// - an entry this node owns is copied to the id's backup when the backup changed;
    /// - an entry owned elsewhere (ownership moved, or this node was the backup) is handed
    ///   to the owner, which fails it over if its host is down; a copy is kept only by the
    ///   backup.
    async fn reconcile_now(&self) {
        let Ok(net) = self.net() else { return };
        if self.is_fenced() {
            return; // a fenced node acts for no one; it reconciles when the fence lifts
        }
        let view = net.up_remotes();
        let snapshot: Vec<(AgentId, DirEntry)> = self
            .dir
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        let mut again = Vec::new();
        for (id, e) in snapshot {
            let (owner, backup) = self.owner_and_backup(&id, Some(&view));
            let Some(owner) = owner else { return };
            let dead = *e.node != *self.me && net.peer_state(&e.node) == Some(PeerState::Down);
            if owner == self.me {
                if dead {
                    again.push(id);
                } else if e.copied_to.as_deref() != backup.as_deref() {
                    self.copy_to_backup(&id);
                }
                continue;
            }
            if let Some(copy) = e.copy(&id) {
                self.send(&owner, Request::Handoff { entry: copy });
            }
            if backup.as_deref() != Some(self.me.as_str()) && !dead {
                self.dir_remove(&id);
            }
        }
        let jobs = again.into_iter().map(|id| {
            let sys = self.arc();
            async move { sys.fail_over_one(id).await }
        });
        join_all(jobs).await;
    }

    /// Activates `id` again (its host is down, or a fence stopped it), from the spawn record
    /// in its entry. The claim probes the hosts first, so a newer activation that exists
    /// elsewhere is adopted rather than doubled.
    async fn fail_over_one(&self, id: AgentId) {
        let Some(e) = self.dir.get(&id).map(|e| e.clone()) else {
            return;
        };
        let Some(spec) = e.spec else {
            self.unavailable.fetch_add(1, Ordering::Relaxed);
            warn!(agent = %id, node = %e.node, "unavailable: its node is down and no spawn record of it is held here");
            return;
        };
        let mut attempt = 0;
        let r = loop {
            let r = self
                .claim(
                    id.clone(),
                    spec.record.clone(),
                    None,
                    TraceContext::new_root(),
                    &self.me,
                    (spec.policy.get(), spec.group.clone()),
                )
                .await;
            attempt += 1;
            match r {
                // a host did not answer the check for a newer activation: ask again, a few
                // times, rather than risk doubling one
                Err(AgentError::NoDirectory(_)) if attempt < FAILOVER_ATTEMPTS => {
                    tokio::time::sleep(FAILOVER_RETRY).await;
                }
                r => break r,
            }
        };
        match r {
            Ok(a) if a.created => {
                self.failovers.fetch_add(1, Ordering::Relaxed);
                warn!(agent = %id, from = %e.node, to = %a.node, epoch = a.epoch, "failed over");
            }
            Ok(a) => {
                debug!(agent = %id, node = %a.node, epoch = a.epoch, "already active elsewhere")
            }
            Err(err) => {
                self.unavailable.fetch_add(1, Ordering::Relaxed);
                warn!(agent = %id, from = %e.node, error = %err, "unavailable: it cannot run on any eligible node");
            }
        }
    }

    /// Owner side of [`Request::Evicted`]: a fence on `from` stopped activation `epoch` of `id`.
    async fn evicted(&self, id: AgentId, epoch: u64, from: &str) {
        let matches = match self.dir.get_mut(&id) {
            Some(mut e) if &*e.node == from && e.epoch == epoch => {
                e.failed = Some(format!("stopped by a fence on {from}").into());
                true
            }
            _ => false,
        };
        if matches {
            self.fail_over_one(id).await;
        } else {
            debug!(agent = %id, epoch, %from, "eviction of an activation that is no longer current");
        }
    }

    /// Merges an entry copy from another remote node; the newer epoch wins, and a copy of the
    /// same activation adds the spawn record if the entry lacked it.
    fn merge_entry(&self, copy: EntryCopy) {
        let node = self.node_name(&copy.node);
        let (id, new) = DirEntry::from_copy(copy, node);
        let keep_old = self.dir.get(&id).is_some_and(|old| {
            old.epoch > new.epoch || (old.epoch == new.epoch && old.spec.is_some())
        });
        if !keep_old {
            let failed = self
                .dir
                .get(&id)
                .filter(|old| old.epoch == new.epoch)
                .and_then(|old| old.failed.clone());
            self.dir_insert(id, DirEntry { failed, ..new });
        }
    }

    /// The owner and backup of `id` among the up remote nodes (`view`, or the current one).
    fn owner_and_backup(
        &self,
        id: &AgentId,
        view: Option<&[String]>,
    ) -> (Option<String>, Option<String>) {
        let owned =
            |(o, b): (Option<&str>, Option<&str>)| (o.map(str::to_owned), b.map(str::to_owned));
        match view {
            Some(v) => owned(directory::owner_and_backup(
                id.as_str(),
                v.iter().map(String::as_str),
            )),
            None => {
                let Ok(net) = self.net() else {
                    return (None, None);
                };
                let up = net.up_view();
                owned(directory::owner_and_backup(id.as_str(), up.remotes()))
            }
        }
    }

    /// Sends a copy of `id`'s entry to the id's backup (or to its owner, when this node holds
    /// the entry without owning it).
    fn copy_to_backup(&self, id: &AgentId) {
        let (owner, backup) = self.owner_and_backup(id, None);
        let to = if owner.as_deref() == Some(self.me.as_str()) {
            backup
        } else {
            owner
        };
        let Some(to) = to else { return };
        let copy = match self.dir.get_mut(id) {
            Some(mut e) => {
                e.copied_to = Some(to.as_str().into());
                e.copy(id)
            }
            None => None,
        };
        if let Some(entry) = copy {
            self.send(&to, Request::Backup { entry });
        }
    }

    /// Hosted agents, for status and `tether agents`.
    pub fn list(&self) -> Vec<AgentInfo> {
        self.host.list()
    }

    /// Counters for status.
    pub fn counters(&self) -> AgentCounters {
        AgentCounters {
            frames_in: self.frames_in.load(Ordering::Relaxed),
            tell_failures: self.tell_failures.load(Ordering::Relaxed),
            pending_asks: self.pending.len() as u64,
            failovers: self.failovers.load(Ordering::Relaxed),
            unavailable: self.unavailable.load(Ordering::Relaxed),
        }
    }

    fn next_seq(&self, sender: &str, target: &AgentId) -> u64 {
        if sender == self.me {
            // this node as the sender (the common case): keyed by target alone, and looked up
            // without allocating once the counter exists
            if let Some(mut n) = self.node_seqs.get_mut(target) {
                *n += 1;
                return self.seq_base + *n;
            }
            let mut n = self.node_seqs.entry(target.clone()).or_insert(0);
            *n += 1;
            return self.seq_base + *n;
        }
        let mut e = self
            .seqs
            .entry((sender.to_owned(), target.clone()))
            .or_insert(0);
        *e += 1;
        self.seq_base + *e
    }

    /// The sender of a message sent now: the current agent, or this node.
    fn sender(&self) -> (Arc<str>, bool) {
        CURRENT_AGENT
            .try_with(|o| (o.sender(), o.local_only))
            .unwrap_or_else(|_| (self.me_sender.clone(), false))
    }

    // ---------------------------------------------------------------- spawning

    /// Get-or-spawn `id` with `args` (`placement` overrides the kind's labels).
    ///
    /// # Errors
    /// [`AgentError`]: refused placement (local-only rules), unknown kind, no directory,
    /// unreachable node, failed init, timeout.
    pub async fn spawn(
        &self,
        id: AgentId,
        args: Body,
        opts: SpawnOptions,
        target: Target,
    ) -> Result<Activation, AgentError> {
        let SpawnOptions {
            placement,
            policy,
            group,
        } = opts;
        if group.is_some() && target == Target::Placed {
            return Err(AgentError::Refused(
                "a supervisor group lives on one node: name the node (--on) to spawn into a group"
                    .into(),
            ));
        }
        let trace = TraceContext::current_or_new();
        let (placement, args) = match self.host.kind(id.kind()) {
            Ok(kind) => {
                let (p, args) = kind.placement(args)?;
                (placement.unwrap_or(p), args)
            }
            // the kind lives elsewhere: the labels are the user's or the defaults
            Err(_) => (placement.unwrap_or_default(), args),
        };
        if placement.is_local_only() {
            return self
                .spawn_private(id, args, placement, target, trace, (policy, group))
                .await;
        }
        let net = self.net()?;
        if let Target::On(node) = &target {
            if node != &self.me {
                let role = net.peer_role(node).ok_or_else(|| {
                    AgentError::Refused(format!("no node named {node:?} in this cluster"))
                })?;
                directory::role_allows(&placement, role).map_err(|why| {
                    AgentError::Refused(format!("{id} cannot run on {node}: {why}"))
                })?;
            }
        }
        let target = match target {
            Target::Here => Some(self.me.clone()),
            Target::On(n) => Some(n),
            Target::Placed => None,
        };
        let (encoding, bytes) = encode_for_wire(args)?;
        let owner = self.owner_of(&id)?;
        let act = if owner == self.me {
            let me = self.me.clone();
            let how = (policy, group);
            let record = Arc::new(SpawnRecord {
                encoding,
                args: bytes,
                placement,
            });
            self.claim(id.clone(), record, target, trace, &me, how)
                .await?
        } else {
            let req = Request::Claim {
                req: 0,
                id: id.clone(),
                args_encoding: encoding,
                args: bytes,
                placement,
                target,
                trace,
                policy: Box::new(policy),
                group,
            };
            self.request(&owner, req, SPAWN_TIMEOUT)
                .await?
                .into_activation()?
        };
        self.set_route(&act.id, &act.node, act.epoch);
        Ok(act)
    }

    /// A local-only agent: activated here, registered nowhere else.
    async fn spawn_private(
        &self,
        id: AgentId,
        args: Body,
        placement: Placement,
        target: Target,
        trace: TraceContext,
        (policy, group): (AgentPolicy, Option<String>),
    ) -> Result<Activation, AgentError> {
        if self.role == Role::Remote {
            return Err(AgentError::Refused(format!(
                "{id} is local-only and {} is a remote node: local-only agents run on the local node that spawns them",
                self.me
            )));
        }
        if let Target::On(n) = &target {
            if n != &self.me {
                return Err(AgentError::Refused(format!(
                    "{id} is local-only: it cannot be placed on {n}; its state and messages stay on {}",
                    self.me
                )));
            }
        }
        let epoch = self.host.epoch_of(&id).unwrap_or(0).max(1);
        let (encoding, args) = encode_for_wire(args)?;
        let act = self
            .activate_here(
                AddAgent {
                    id,
                    epoch,
                    record: Arc::new(SpawnRecord {
                        encoding,
                        args,
                        placement,
                    }),
                    policy,
                    trace,
                },
                group.as_deref(),
            )
            .await?;
        self.forget_route(&act.id);
        Ok(act)
    }

    /// The directory owner of `id`.
    fn owner_of(&self, id: &AgentId) -> Result<String, AgentError> {
        let net = self.net()?;
        let up = net.up_view();
        directory::owner(id.as_str(), up.remotes())
            .map(str::to_owned)
            .ok_or_else(|| {
                AgentError::NoDirectory("no remote node is reachable from this node".into())
            })
    }

    /// Owner side of get-or-spawn. `requester` is the node that asked: it is alive (it just
    /// spoke), so it is a candidate even before this owner has heard its first heartbeat.
    #[allow(clippy::too_many_arguments)]
    async fn claim(
        &self,
        id: AgentId,
        record: Arc<SpawnRecord>,
        target: Option<String>,
        trace: TraceContext,
        requester: &str,
        (policy, group): (AgentPolicy, Option<String>),
    ) -> Result<Activation, AgentError> {
        if self.is_fenced() {
            return Err(AgentError::Refused(format!(
                "node {} is fenced (on the losing side of a split): it decides no claim until \
                 it sees every remote node again",
                self.me
            )));
        }
        let lock = self.claim_locks.entry(id.clone()).or_default().clone();
        let _guard = lock.lock().await;
        let net = self.net()?;
        let mut prev_epoch = 0;
        let known = self.dir.get(&id).map(|e| e.clone());
        let existing = match known {
            Some(e) if e.failed.is_none() && self.entry_alive(&net, &id, &e) => Some(e),
            // the entry's host is gone or the agent failed: a newer activation may exist that
            // this node did not hear of (it was placed while this node was cut off)
            Some(e) => match self.probe_hosts(&id).await? {
                Some(found) if found.epoch > e.epoch => Some(DirEntry {
                    spec: e.spec.clone(),
                    ..found
                }),
                _ => Some(e),
            },
            None => self.probe_hosts(&id).await?,
        };
        if let Some(e) = existing {
            if e.failed.is_none() && self.entry_alive(&net, &id, &e) {
                self.dir_insert(id.clone(), e.clone());
                return Ok(Activation {
                    id,
                    node: e.node.to_string(),
                    epoch: e.epoch,
                    created: false,
                });
            }
            prev_epoch = e.epoch;
        }
        let candidates = self.candidates(&net, id.kind(), requester);
        let node = match target {
            Some(t) => {
                let c = candidates
                    .iter()
                    .find(|c| c.name == t)
                    .ok_or_else(|| AgentError::NodeUnreachable { node: t.clone() })?;
                if !c.has_kind {
                    return Err(AgentError::UnknownKind {
                        kind: id.kind().to_owned(),
                        node: t,
                        registered: net.kinds_of(&c.name).join(", "),
                    });
                }
                directory::role_allows(&record.placement, c.role)
                    .map_err(|why| AgentError::Refused(format!("{id} cannot run on {t}: {why}")))?;
                t
            }
            None => directory::choose(id.kind(), &record.placement, &candidates)
                .map_err(|e| match e {
                    PlacementError::NoKind(_) | PlacementError::NoFit { .. } => {
                        AgentError::Refused(e.to_string())
                    }
                })?
                .name
                .clone(),
        };
        let epoch = prev_epoch + 1;
        let spawn_group = group.clone();
        let act = if node == self.me {
            let a = AddAgent {
                id: id.clone(),
                epoch,
                record: record.clone(),
                policy,
                trace,
            };
            self.activate_here(a, group.as_deref()).await?
        } else {
            let req = Request::Activate {
                req: 0,
                id: id.clone(),
                epoch,
                args_encoding: record.encoding,
                args: record.args.clone(),
                placement: record.placement.clone(),
                trace,
                policy: Box::new(policy),
                group,
            };
            self.request(&node, req, SPAWN_TIMEOUT)
                .await?
                .into_activation()?
        };
        self.dir_insert(
            id.clone(),
            DirEntry {
                node: self.node_name(&act.node),
                epoch: act.epoch,
                failed: None,
                spec: Some(Arc::new(DirSpec {
                    record,
                    policy: policy.into(),
                    group: spawn_group,
                })),
                copied_to: None,
            },
        );
        self.copy_to_backup(&id);
        drop(_guard);
        self.claim_locks.remove(&id);
        Ok(act)
    }

    /// Whether the activation an entry names can still be running: here, it is hosted; on a
    /// peer, the peer is up.
    fn entry_alive(&self, net: &Shared, id: &AgentId, e: &DirEntry) -> bool {
        if *e.node == *self.me {
            self.host.epoch_of(id) == Some(e.epoch)
        } else {
            net.peer_state(&e.node) == Some(PeerState::Up)
        }
    }

    /// Up nodes (this one included) as placement candidates for `kind`; the load is the number
    /// of agents this owner placed there.
    fn candidates(&self, net: &Shared, kind: &str, requester: &str) -> Vec<Candidate> {
        let mut members: Vec<(String, Role, bool)> = net
            .up_view()
            .members(kind)
            .map(|(name, role, has)| (name.to_owned(), role, has))
            .collect();
        if !members.iter().any(|(n, _, _)| n == requester) {
            if let Some(role) = net.peer_role(requester) {
                let has = net.kinds_of(requester).iter().any(|k| k == kind);
                members.push((requester.to_owned(), role, has));
            }
        }
        members
            .into_iter()
            .map(|(name, role, has_kind)| {
                let load = self.load.get(&name).map(|n| *n).unwrap_or(0);
                Candidate {
                    has_kind,
                    name,
                    role,
                    load,
                }
            })
            .collect()
    }

    /// Asks every up node that could host `id` whether it does (an owner rebuilding an entry,
    /// or checking for a newer activation before placing one).
    ///
    /// # Errors
    /// [`AgentError::NoDirectory`] if a node did not answer: without its answer a new
    /// activation could double one that runs there.
    async fn probe_hosts(&self, id: &AgentId) -> Result<Option<DirEntry>, AgentError> {
        if let Some(epoch) = self.host.epoch_of(id) {
            return Ok(Some(DirEntry {
                node: self.me_sender.clone(),
                epoch,
                failed: None,
                spec: None,
                copied_to: None,
            }));
        }
        let net = self.net()?;
        let peers: Vec<String> = net
            .up_view()
            .peers_with_kind(id.kind())
            .map(str::to_owned)
            .collect();
        if peers.is_empty() {
            return Ok(None);
        }
        let asks = peers.into_iter().map(|peer| {
            let sys = self.arc();
            let id = id.clone();
            async move {
                match sys
                    .request(&peer, Request::Probe { req: 0, id }, LOOKUP_TIMEOUT)
                    .await
                {
                    Ok(Answer::Location(l)) => Ok(l),
                    Ok(other) => Err(format!("{peer} answered {other:?}")),
                    Err(e) => Err(format!("{peer}: {e}")),
                }
            }
        });
        let mut best: Option<Location> = None;
        let mut unanswered = Vec::new();
        for r in join_all(asks).await {
            match r {
                Ok(Some(l)) if best.as_ref().is_none_or(|b| l.epoch > b.epoch) => best = Some(l),
                Ok(_) => {}
                Err(e) => unanswered.push(e),
            }
        }
        if !unanswered.is_empty() {
            return Err(AgentError::NoDirectory(format!(
                "could not ask every node whether it runs {id}: {}",
                unanswered.join("; ")
            )));
        }
        Ok(best.map(|l| DirEntry {
            node: self.node_name(&l.node),
            epoch: l.epoch,
            failed: None,
            spec: None,
            copied_to: None,
        }))
    }

    fn on_exit(&self, id: &AgentId, epoch: u64, reason: Option<String>) {
        self.routes.remove(id);
        if self.is_fenced() {
            // stopped by the fence: not an exit the agent chose; its owner places it again
            // (or finds it failed over) once the fence lifts
            self.evicted
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((id.clone(), epoch));
            return;
        }
        let (owner, backup) = self.owner_and_backup(id, None);
        for to in [owner, backup].into_iter().flatten() {
            if to == self.me {
                self.record_exit(id, epoch, reason.clone());
            } else {
                self.send(
                    &to,
                    Request::Exited {
                        id: id.clone(),
                        epoch,
                        reason: reason.clone(),
                    },
                );
            }
        }
    }

    fn dir_insert(&self, id: AgentId, e: DirEntry) {
        let node = e.node.clone();
        if let Some(old) = self.dir.insert(id, e) {
            self.dir_unload(&old.node);
        }
        match self.load.get_mut(&*node) {
            Some(mut n) => *n += 1,
            None => *self.load.entry(node.to_string()).or_insert(0) += 1,
        }
    }

    /// `node`'s name, shared: a directory entry holds a reference, not a copy (nodes are
    /// few, agents many).
    fn node_name(&self, node: &str) -> Arc<str> {
        if node == self.me {
            return self.me_sender.clone();
        }
        let mut names = self
            .names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = names.iter().find(|n| &***n == node) {
            return n.clone();
        }
        let n: Arc<str> = node.into();
        names.push(n.clone());
        n
    }

    fn dir_remove(&self, id: &AgentId) {
        if let Some((_, old)) = self.dir.remove(id) {
            self.dir_unload(&old.node);
        }
    }

    fn dir_unload(&self, node: &str) {
        if let Some(mut n) = self.load.get_mut(node) {
            *n = n.saturating_sub(1);
        }
    }

    fn record_exit(&self, id: &AgentId, epoch: u64, reason: Option<String>) {
        if let Some(mut e) = self.dir.get_mut(id) {
            if e.epoch == epoch {
                match reason {
                    Some(r) => e.failed = Some(r.into()),
                    None => {
                        drop(e);
                        self.dir_remove(id);
                    }
                }
            }
        }
    }

    // ---------------------------------------------------------------- routing

    /// Where `id` runs, asking its directory owner if needed.
    ///
    /// # Errors
    /// [`AgentError::NotFound`] if it runs nowhere, or the owner's errors.
    pub async fn lookup(&self, id: &AgentId) -> Result<Location, AgentError> {
        if let Some(epoch) = self.host.epoch_of(id) {
            return Ok(Location {
                node: self.me.clone(),
                epoch,
            });
        }
        let owner = self.owner_of(id)?;
        let found = if owner == self.me {
            self.lookup_owned(id).await?
        } else {
            self.request(
                &owner,
                Request::Lookup {
                    req: 0,
                    id: id.clone(),
                },
                LOOKUP_TIMEOUT,
            )
            .await?
            .into_location()?
        };
        let loc = found.ok_or_else(|| AgentError::NotFound { id: id.to_string() })?;
        if loc.node != self.me && self.net()?.peer_state(&loc.node) != Some(PeerState::Up) {
            // the owner still names a host this node cannot reach (not decided down yet, or
            // down and not failed over yet): no route is kept, the next message asks again
            return Err(AgentError::NodeUnreachable { node: loc.node });
        }
        self.set_route(id, &loc.node, loc.epoch);
        Ok(loc)
    }

    async fn lookup_owned(&self, id: &AgentId) -> Result<Option<Location>, AgentError> {
        let entry = match self.dir.get(id).map(|e| e.clone()) {
            Some(e) => Some(e),
            None => {
                let found = self.probe_hosts(id).await?;
                if let Some(e) = &found {
                    self.dir_insert(id.clone(), e.clone());
                }
                found
            }
        };
        let Some(entry) = entry else { return Ok(None) };
        if let Some(reason) = entry.failed {
            debug!(agent = %id, %reason, "lookup of a failed agent");
        }
        Ok(Some(Location {
            node: entry.node.to_string(),
            epoch: entry.epoch,
        }))
    }

    fn set_route(&self, id: &AgentId, node: &str, epoch: u64) {
        // a route being resolved keeps its queue; the resolver installs the route
        if node == self.me {
            // hosted here: the host answers for it, no entry is kept (one less per agent)
            self.forget_route(id);
            return;
        }
        let route = Route::Remote(Arc::new(Location {
            node: node.to_owned(),
            epoch,
        }));
        if !matches!(self.routes.get(id).as_deref(), Some(Route::Resolving(_))) {
            self.routes.insert(id.clone(), route);
        }
    }

    fn forget_route(&self, id: &AgentId) {
        self.routes
            .remove_if(id, |_, r| !matches!(r, Route::Resolving(_)));
    }

    /// Sends one message: at once if the agent is hosted here or its route is known, else
    /// queued in order behind a lookup.
    ///
    /// An agent hosted here has no route entry: with no entry, the host is asked first. A
    /// route being resolved is never bypassed, so that a message cannot overtake the ones
    /// queued before it while the agent was being found (or spawned here).
    ///
    /// Returns the target when the message went to an agent of this node (a handle may then
    /// keep a port into it, see [`PortCache`]).
    fn route(&self, out: Outgoing) -> Option<AgentId> {
        use dashmap::Entry;
        // fast path: a known route, read without cloning the key
        enum Known {
            Local,
            Remote(Arc<Location>),
            Resolving,
            Absent,
        }
        let known = match self.routes.get(&out.target).as_deref() {
            Some(Route::Local) => Known::Local,
            Some(Route::Remote(loc)) => Known::Remote(loc.clone()),
            Some(Route::Resolving(_)) => Known::Resolving,
            None => Known::Absent,
        };
        let out = match known {
            Known::Local => return self.deliver_local_or_forget(out),
            Known::Remote(loc) => {
                self.deliver_remote(&loc, out);
                return None;
            }
            // no entry: an agent hosted here has none
            Known::Absent => match self.deliver_if_hosted(out) {
                HereOrNot::Delivered(outcome) => return self.forget_if_stale(outcome),
                HereOrNot::NotHere(out) => out,
            },
            Known::Resolving => out,
        };
        match self.routes.entry(out.target.clone()) {
            Entry::Occupied(mut o) => match o.get_mut() {
                Route::Local => {
                    drop(o);
                    self.deliver_local_or_forget(out)
                }
                Route::Remote(loc) => {
                    let loc = loc.clone();
                    drop(o);
                    self.deliver_remote(&loc, out);
                    None
                }
                Route::Resolving(q) => {
                    q.get_mut()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(out);
                    None
                }
            },
            Entry::Vacant(v) => {
                let target = out.target.clone();
                v.insert(Route::Resolving(std::sync::Mutex::new(vec![out])));
                let sys = self.arc();
                tokio::spawn(async move { sys.resolve(target).await });
                None
            }
        }
    }

    /// [`AgentSystem::deliver_local`], forgetting the route when it turned out stale;
    /// returns the target when the message went to it.
    fn deliver_local_or_forget(&self, out: Outgoing) -> Option<AgentId> {
        let outcome = self.deliver_local(out);
        self.forget_if_stale(outcome)
    }

    /// Forgets the route of a stale delivery; returns the target of one that was handed over.
    fn forget_if_stale(&self, outcome: LocalOutcome) -> Option<AgentId> {
        match outcome {
            LocalOutcome::Handed(target) => Some(target),
            LocalOutcome::Refused => None,
            LocalOutcome::Stale(target) => {
                self.forget_route(&target);
                None
            }
        }
    }

    async fn resolve(&self, target: AgentId) {
        let found = self.lookup(&target).await;
        // take the queue and install the route under the entry lock, so that no message
        // sent meanwhile overtakes the queued ones
        let queued = {
            let mut entry = match self.routes.get_mut(&target) {
                Some(e) => e,
                None => return,
            };
            let queued = match std::mem::replace(&mut *entry, Route::Local) {
                Route::Resolving(q) => q
                    .into_inner()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
                other => {
                    *entry = other;
                    Vec::new()
                }
            };
            match &found {
                Ok(loc) if loc.node == self.me => *entry = Route::Local,
                Ok(loc) => *entry = Route::Remote(Arc::new(loc.clone())),
                Err(_) => {}
            }
            if found.is_ok() {
                let mut stale = false;
                for out in queued {
                    match &*entry {
                        Route::Local => {
                            stale |= matches!(self.deliver_local(out), LocalOutcome::Stale(_));
                        }
                        Route::Remote(loc) => self.deliver_remote(loc, out),
                        Route::Resolving(_) => unreachable!("the route was just installed"),
                    }
                }
                // forget a stale route only once the entry's lock is released (DashMap
                // locks are not re-entrant)
                drop(entry);
                if stale {
                    self.forget_route(&target);
                }
                return;
            }
            queued
        };
        self.routes
            .remove_if(&target, |_, r| matches!(r, Route::Local));
        // the lookup failed: every queued message fails with its error, except tells that a
        // local node keeps in its outbox because the cluster cannot be reached
        if let Err(e) = found {
            let keep = self.outbox.is_some()
                && matches!(
                    e,
                    AgentError::NodeUnreachable { .. }
                        | AgentError::NoDirectory(_)
                        | AgentError::Timeout { .. }
                );
            for out in queued {
                if keep && out.ask.is_none() {
                    let (target, seq, trace) = (out.target.clone(), out.seq, out.trace);
                    if let Err((e, _)) = self.queue(out) {
                        self.tell_failures.fetch_add(1, Ordering::Relaxed);
                        warn!(%target, seq, trace_id = %trace.trace_id_hex(), error = %e, "tell failed");
                    }
                    continue;
                }
                self.fail(out, e.clone());
            }
        }
    }

    fn fail(&self, out: Outgoing, e: AgentError) {
        match out.ask {
            Some((tx, _)) => {
                let _ = tx.send(Err(e));
            }
            None => {
                self.tell_failures.fetch_add(1, Ordering::Relaxed);
                warn!(target = %out.target, seq = out.seq, trace_id = %out.trace.trace_id_hex(), error = %e, "tell failed");
            }
        }
    }

    /// Delivers to an agent of this node. A stale outcome (the agent is not here any more)
    /// is for the caller to forget, outside any routes lock.
    fn deliver_local(&self, out: Outgoing) -> LocalOutcome {
        let (target, trace) = (out.target.clone(), out.trace);
        let (d, body, reply) = local_parts(out);
        self.local_outcome(target, trace, self.host.try_deliver(d, body, reply))
    }

    /// [`AgentSystem::deliver_local`] if the target runs (or restarts) here, with one look
    /// at the host; else the message comes back untouched.
    fn deliver_if_hosted(&self, out: Outgoing) -> HereOrNot {
        let (target, trace) = (out.target.clone(), out.trace);
        let mut slot = Some(out);
        let done = self.host.deliver_if_here(&target, || {
            local_parts(slot.take().expect("the message is taken once"))
        });
        match done {
            Some(result) => HereOrNot::Delivered(self.local_outcome(target, trace, result)),
            None => HereOrNot::NotHere(
                slot.take()
                    .expect("not hosted here: the message was not taken"),
            ),
        }
    }

    /// After a delivery here: a failed tell is counted and logged, a failed ask is answered.
    fn local_outcome(
        &self,
        target: AgentId,
        trace: TraceContext,
        result: Result<(), (AgentError, Option<ReplyTx>)>,
    ) -> LocalOutcome {
        let Err((e, reply)) = result else {
            return LocalOutcome::Handed(target);
        };
        let stale = matches!(e, AgentError::NotFound { .. } | AgentError::Failed { .. });
        match reply {
            // the agent answers an asker directly; if the instance fails with the message in
            // its mailbox, the asker sees the reply dropped (see `ask`)
            Some(tx) => {
                let _ = tx.send(Err(e));
            }
            None => {
                self.tell_failures.fetch_add(1, Ordering::Relaxed);
                warn!(target = %target, trace_id = %trace.trace_id_hex(), error = %e, "tell failed");
            }
        }
        if stale {
            LocalOutcome::Stale(target)
        } else {
            LocalOutcome::Refused
        }
    }

    fn deliver_remote(&self, loc: &Location, out: Outgoing) {
        let target = out.target.clone();
        let (encoding, body) = match encode_for_wire(out.body) {
            Ok(x) => x,
            Err(e) => return self.fail_parts(out.ask, &target, out.seq, &out.trace, e),
        };
        let env = Envelope {
            target,
            epoch: loc.epoch,
            sender: out.sender,
            seq: out.seq,
            trace: out.trace,
            contract: out.contract,
            encoding,
            body,
        };
        match out.ask {
            None => {
                debug!(target = %env.target, node = %loc.node, trace_id = %env.trace.trace_id_hex(), "tell");
                self.send_tell(&loc.node, env);
            }
            Some((tx, deadline)) => {
                debug!(target = %env.target, node = %loc.node, trace_id = %env.trace.trace_id_hex(), "ask");
                let req = self.next_req.fetch_add(1, Ordering::Relaxed);
                if req.is_multiple_of(SWEEP_EVERY) {
                    self.pending.retain(|_, p| !p.waiter.is_closed());
                }
                let waiter = Waiter::Ask {
                    tx,
                    target: env.target.clone(),
                };
                self.pending.insert(
                    req,
                    Pending {
                        peer: loc.node.clone(),
                        waiter,
                    },
                );
                self.send(
                    &loc.node,
                    Request::Ask {
                        req,
                        env,
                        deadline_ms: deadline.as_millis() as u64,
                    },
                );
            }
        }
    }

    fn fail_parts(
        &self,
        ask: Option<(oneshot::Sender<Result<Body, AgentError>>, Duration)>,
        target: &AgentId,
        seq: u64,
        trace: &TraceContext,
        e: AgentError,
    ) {
        match ask {
            Some((tx, _)) => {
                let _ = tx.send(Err(e));
            }
            None => {
                self.tell_failures.fetch_add(1, Ordering::Relaxed);
                warn!(%target, seq, trace_id = %trace.trace_id_hex(), error = %e, "tell failed");
            }
        }
    }

    /// Refuses a send that would carry local-only data off this node.
    fn check_local_only(
        &self,
        target: &AgentId,
        sender_local_only: bool,
    ) -> Result<(), AgentError> {
        if !sender_local_only {
            return Ok(());
        }
        if self.host.epoch_of(target).is_some() {
            return Ok(());
        }
        Err(AgentError::Refused(format!(
            "a local-only agent cannot send to {target}, which does not run on {}",
            self.me
        )))
    }

    fn outgoing(
        &self,
        target: &AgentId,
        body: Body,
        contract: Contract,
    ) -> Result<Outgoing, (AgentError, Body)> {
        let (sender, local_only) = self.sender();
        if let Err(e) = self.check_local_only(target, local_only) {
            return Err((e, body));
        }
        let seq = self.next_seq(&sender, target);
        Ok(Outgoing {
            target: target.clone(),
            body,
            contract,
            sender,
            seq,
            trace: TraceContext::current_or_new(),
            ask: None,
        })
    }

    // ---------------------------------------------------------------- requests to peers

    /// Sends `req` (its id is assigned here) to `peer` and waits for the answer.
    async fn request(
        &self,
        peer: &str,
        mut req: Request,
        deadline: Duration,
    ) -> Result<Answer, AgentError> {
        let id = self.next_req.fetch_add(1, Ordering::Relaxed);
        match &mut req {
            Request::Ask { req, .. }
            | Request::Deliver { req, .. }
            | Request::Claim { req, .. }
            | Request::Lookup { req, .. }
            | Request::Activate { req, .. }
            | Request::Probe { req, .. } => *req = id,
            Request::Tell { .. }
            | Request::Tells { .. }
            | Request::Exited { .. }
            | Request::Backup { .. }
            | Request::Handoff { .. }
            | Request::Evicted { .. } => {}
        }
        let net = self.net()?;
        // fail fast only when the peer is known to be gone; a joining peer may already have
        // a link (it may be the very node asking)
        if matches!(
            net.peer_state(peer),
            None | Some(PeerState::Unreachable | PeerState::Down)
        ) {
            return Err(AgentError::NodeUnreachable {
                node: peer.to_owned(),
            });
        }
        let (tx, rx) = oneshot::channel();
        self.pending.insert(
            id,
            Pending {
                peer: peer.to_owned(),
                waiter: Waiter::Request(tx),
            },
        );
        self.send(peer, req);
        match tokio::time::timeout(deadline, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(AgentError::Internal("request abandoned".into())),
            Err(_) => {
                self.pending.remove(&id);
                Err(AgentError::Timeout {
                    ms: deadline.as_millis() as u64,
                })
            }
        }
    }

    /// Sends `req` to `peer`: written at once, in this task, when the peer's writer is idle
    /// (see [`peer_queue`]), else queued behind what waits. Starts the writer if needed.
    fn send(&self, peer: &str, req: Request) {
        self.with_queue(peer, |q| q.push_or_write(req, FrameSink::try_write));
    }

    /// Queues a tell for `peer`: it joins the run of tells at the back of the queue when it
    /// shares that run's head (see [`TellRun`]), else starts a run. The peer receives one
    /// frame per run.
    fn send_tell(&self, peer: &str, env: Envelope) {
        self.with_queue(peer, |q| {
            q.push_with(|items| match items.last_mut() {
                Some(Request::Tells { run }) if run.admits(&env) => run.push(env),
                _ => items.push(Request::Tells {
                    run: TellRun::of(env),
                }),
            });
        });
    }

    /// Runs `f` on `peer`'s queue, starting the peer's writer if needed.
    fn with_queue(&self, peer: &str, f: impl FnOnce(&Requests)) {
        if let Some(q) = self.outs.get(peer) {
            return f(&q);
        }
        let q = self
            .outs
            .entry(peer.to_owned())
            .or_insert_with(|| {
                let q = Arc::new(PeerQueue::default());
                tokio::spawn(peer_writer(self.arc(), peer.to_owned(), q.clone()));
                q
            })
            .clone();
        f(&q);
    }

    /// Fails every request waiting on `peer` (its node became unreachable or left).
    pub(crate) fn peer_lost(&self, peer: &str) {
        let lost: Vec<u64> = self
            .pending
            .iter()
            .filter(|p| p.peer == peer)
            .map(|p| *p.key())
            .collect();
        for req in lost {
            if let Some((_, p)) = self.pending.remove(&req) {
                let e = AgentError::NodeUnreachable {
                    node: peer.to_owned(),
                };
                self.finish(p, Err(e));
            }
        }
        self.routes
            .retain(|_, r| !matches!(r, Route::Remote(l) if l.node == peer));
    }

    /// Hands a request's answer to whoever waits for it.
    fn finish(&self, p: Pending, result: Result<Answer, AgentError>) {
        match p.waiter {
            Waiter::Request(tx) => {
                let _ = tx.send(result);
            }
            Waiter::Ask { tx, target } => {
                let r = match result {
                    Ok(Answer::Reply { encoding, body }) => Ok(Body::Encoded(encoding, body)),
                    Ok(other) => Err(AgentError::Internal(format!(
                        "unexpected answer to an ask: {other:?}"
                    ))),
                    Err(e) => Err(e),
                };
                if matches!(
                    r,
                    Err(AgentError::NotFound { .. }
                        | AgentError::StaleEpoch { .. }
                        | AgentError::Timeout { .. }
                        | AgentError::NodeUnreachable { .. })
                ) {
                    self.forget_route(&target);
                }
                let _ = tx.send(r);
            }
        }
    }

    fn answer(&self, resp: Response) {
        match resp {
            Response::Done { req, result } => {
                if let Some((_, p)) = self.pending.remove(&req) {
                    self.finish(p, result);
                }
            }
            Response::TellFailed { target, seq, error } => {
                self.tell_failures.fetch_add(1, Ordering::Relaxed);
                if matches!(
                    error,
                    AgentError::NotFound { .. }
                        | AgentError::StaleEpoch { .. }
                        | AgentError::Failed { .. }
                ) {
                    self.forget_route(&target);
                }
                warn!(%target, seq, %error, "tell failed on the receiving node");
            }
        }
    }

    // ---------------------------------------------------------------- serving peers

    /// Serves an agent stream a peer opened.
    pub(crate) async fn serve(
        self: Arc<Self>,
        peer: String,
        send: SendStream,
        recv: RecvStream,
    ) -> Result<(), WireError> {
        // answers are written by the task that has them (an agent's reply is written by the
        // agent's task) when the writer is idle, else queued for it: see `peer_queue`
        let tx = Answers(Arc::new(PeerQueue::default()));
        let writer = {
            let queue = tx.0.clone();
            tokio::spawn(async move {
                let mut sink = Some(FrameSink::new(send));
                let mut batch = Vec::new();
                while queue.take_lending(&mut batch, &mut sink).await {
                    let Some(stream) = sink.as_mut() else { break };
                    if stream.write_rest().await.is_err()
                        || write_batch(&mut stream.send, &batch).await.is_err()
                    {
                        break;
                    }
                    batch.clear();
                }
                // a broken stream takes no more answers
                queue.close();
            })
        };
        let mut frames = wire::FrameReader::new(recv, MAX_AGENT_FRAME);
        let result = loop {
            let req = match frames.next::<Request>().await {
                Ok(Some(r)) => r,
                Ok(None) => break Ok(()),
                Err(WireError::Stream(_)) => break Ok(()),
                Err(e) => break Err(e),
            };
            self.frames_in.fetch_add(1, Ordering::Relaxed);
            self.handle_request(&peer, req, &tx);
        };
        // the peer's reader is gone with the stream: what is queued is written if it can be,
        // later answers are dropped
        tx.0.close();
        let _ = writer.await;
        result
    }

    fn handle_request(&self, peer: &str, req: Request, tx: &Answers) {
        if self.is_quarantined(peer) {
            let error = AgentError::Refused(format!(
                "node {peer} was decided down and has not fenced since; its requests are \
                 refused until it does"
            ));
            debug!(%peer, "request from a quarantined node refused");
            self.refuse(req, error, tx);
            return;
        }
        if matches!(
            req,
            Request::Tell { .. }
                | Request::Tells { .. }
                | Request::Deliver { .. }
                | Request::Ask { .. }
                | Request::Claim { .. }
                | Request::Activate { .. }
        ) {
            if let Some(error) = self.not_serving() {
                self.refuse(req, error, tx);
                return;
            }
        }
        match req {
            Request::Tell { env } => {
                let (target, seq) = (env.target.clone(), env.seq);
                if let Err((error, _)) = self.deliver_envelope(env, None) {
                    debug!(%peer, %target, %error, "tell refused");
                    tx.send(Response::TellFailed { target, seq, error });
                }
            }
            Request::Tells { run } => {
                let target = run.target.clone();
                for (seq, error) in self.deliver_run(run) {
                    debug!(%peer, %target, seq, %error, "tell refused");
                    tx.send(Response::TellFailed {
                        target: target.clone(),
                        seq,
                        error,
                    });
                }
            }
            Request::Deliver { req, env } => {
                let result = self
                    .deliver_envelope(env, None)
                    .map(|()| Answer::Delivered)
                    .map_err(|(e, _)| e);
                tx.send(Response::Done { req, result });
            }
            Request::Ask {
                req,
                env,
                // the asker's own deadline bounds its wait; this side does not wait at all:
                // the agent's task hands the reply to the stream's writer
                deadline_ms: _,
            } => {
                let target = env.target.clone();
                let answers = tx.clone();
                let reply = ReplyTx::callback(move |reply| {
                    let result = match reply {
                        Some(Ok(body)) => body
                            .into_wire()
                            .map(|(encoding, body)| Answer::Reply { encoding, body })
                            .map_err(|reason| {
                                AgentError::Internal(format!("reply does not encode: {reason}"))
                            }),
                        Some(Err(e)) => Err(e),
                        None => Err(AgentError::lost_with_failed_instance(&target)),
                    };
                    answers.send(Response::Done { req, result });
                });
                if let Err((e, reply)) = self.deliver_envelope(env, Some(reply)) {
                    match reply {
                        Some(reply) => {
                            let _ = reply.send(Err(e));
                        }
                        None => {
                            tx.send(Response::Done {
                                req,
                                result: Err(e),
                            });
                        }
                    }
                }
            }
            Request::Claim {
                req,
                id,
                args_encoding,
                args,
                placement,
                target,
                trace,
                policy,
                group,
            } => {
                let sys = self.arc();
                let tx = tx.clone();
                let requester = peer.to_owned();
                tokio::spawn(async move {
                    let result = match id.validate() {
                        Err(e) => Err(AgentError::Refused(e.to_string())),
                        Ok(()) if placement.is_local_only() => Err(AgentError::Refused(format!(
                            "{id} is local-only and cannot be claimed here"
                        ))),
                        Ok(()) => sys
                            .claim(
                                id,
                                Arc::new(SpawnRecord {
                                    encoding: args_encoding,
                                    args,
                                    placement,
                                }),
                                target,
                                trace,
                                &requester,
                                (*policy, group),
                            )
                            .await
                            .map(Answer::Activation),
                    };
                    tx.send(Response::Done { req, result });
                });
            }
            Request::Lookup { req, id } => {
                let sys = self.arc();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let result = sys.lookup_owned(&id).await.map(Answer::Location);
                    tx.send(Response::Done { req, result });
                });
            }
            Request::Activate {
                req,
                id,
                epoch,
                args_encoding,
                args,
                placement,
                trace,
                policy,
                group,
            } => {
                let sys = self.arc();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let result = if placement.is_local_only() {
                        Err(AgentError::Refused(format!(
                            "{id} is local-only and cannot be activated from another node"
                        )))
                    } else {
                        let a = AddAgent {
                            id,
                            epoch,
                            record: Arc::new(SpawnRecord {
                                encoding: args_encoding,
                                args,
                                placement,
                            }),
                            policy: *policy,
                            trace,
                        };
                        sys.activate_here(a, group.as_deref())
                            .await
                            .map(Answer::Activation)
                    };
                    tx.send(Response::Done { req, result });
                });
            }
            Request::Probe { req, id } => {
                let loc = self.host.epoch_of(&id).filter(|_| {
                    // a local-only agent is invisible to other nodes
                    !self
                        .host
                        .placement_of(&id)
                        .is_some_and(|p| p.is_local_only())
                });
                tx.send(Response::Done {
                    req,
                    result: Ok(Answer::Location(loc.map(|epoch| Location {
                        node: self.me.clone(),
                        epoch,
                    }))),
                });
            }
            Request::Exited { id, epoch, reason } => self.record_exit(&id, epoch, reason),
            Request::Backup { entry } => self.merge_entry(entry),
            Request::Handoff { entry } => {
                let id = entry.id.clone();
                self.merge_entry(entry);
                let dead = self.dir.get(&id).is_some_and(|e| {
                    *e.node != *self.me
                        && self
                            .net()
                            .is_ok_and(|n| n.peer_state(&e.node) == Some(PeerState::Down))
                });
                if dead {
                    let sys = self.arc();
                    tokio::spawn(async move { sys.fail_over_one(id).await });
                }
            }
            Request::Evicted { id, epoch } => {
                let sys = self.arc();
                let from = peer.to_owned();
                tokio::spawn(async move { sys.evicted(id, epoch, &from).await });
            }
        }
    }

    /// Answers a request with `error` (a tell with `TellFailed`), and drops notices.
    fn refuse(&self, req: Request, error: AgentError, tx: &Answers) {
        match req {
            Request::Tell { env } => tx.send(Response::TellFailed {
                target: env.target,
                seq: env.seq,
                error,
            }),
            Request::Tells { run } => {
                for m in run.msgs {
                    tx.send(Response::TellFailed {
                        target: run.target.clone(),
                        seq: m.seq,
                        error: error.clone(),
                    });
                }
            }
            Request::Ask { req, .. }
            | Request::Deliver { req, .. }
            | Request::Claim { req, .. }
            | Request::Lookup { req, .. }
            | Request::Activate { req, .. }
            | Request::Probe { req, .. } => tx.send(Response::Done {
                req,
                result: Err(error),
            }),
            Request::Exited { .. }
            | Request::Backup { .. }
            | Request::Handoff { .. }
            | Request::Evicted { .. } => {}
        }
    }

    /// Delivers a message from a peer; on failure the error, and the reply sender (if the
    /// message was an ask) to answer with it.
    fn deliver_envelope(
        &self,
        env: Envelope,
        reply: Option<ReplyTx>,
    ) -> Result<(), (AgentError, Option<ReplyTx>)> {
        let (target, sender, trace) = (env.target.clone(), env.sender.clone(), env.trace);
        let r = self.deliver_envelope_checked(env, reply);
        if let Err((e, _)) = &r {
            info!(%target, %sender, trace_id = %trace.trace_id_hex(), error = %e, "delivery refused");
        }
        r
    }

    fn deliver_envelope_checked(
        &self,
        env: Envelope,
        reply: Option<ReplyTx>,
    ) -> Result<(), (AgentError, Option<ReplyTx>)> {
        if let Err(e) = env.target.validate() {
            return Err((AgentError::Refused(e.to_string()), reply));
        }
        if self
            .host
            .placement_of(&env.target)
            .is_some_and(|p| p.is_local_only())
        {
            // never reached from another node: answer as if it did not exist
            let e = AgentError::NotFound {
                id: env.target.to_string(),
            };
            return Err((e, reply));
        }
        let (d, body) = Delivery::from_envelope(env);
        self.host.try_deliver(d, body, reply)
    }

    /// A run of tells from a peer, checked as [`Self::deliver_envelope`] checks one; returns
    /// the messages refused, with why.
    fn deliver_run(&self, run: TellRun) -> Vec<(u64, AgentError)> {
        let refused = if let Err(e) = run.target.validate() {
            Some(AgentError::Refused(e.to_string()))
        } else if self
            .host
            .placement_of(&run.target)
            .is_some_and(|p| p.is_local_only())
        {
            Some(AgentError::NotFound {
                id: run.target.to_string(),
            })
        } else {
            None
        };
        let (target, sender) = (run.target.clone(), run.sender.clone());
        let failed = match refused {
            Some(e) => run.msgs.iter().map(|m| (m.seq, e.clone())).collect(),
            None => self.host.deliver_run(run),
        };
        for (seq, e) in &failed {
            info!(%target, %sender, seq, error = %e, "delivery refused");
        }
        failed
    }
}

impl AgentSystem {
    /// Tells `target`: sent now, or, on a local node that cannot reach it, kept in the outbox
    /// (see [`drain`]).
    ///
    /// # Errors
    /// Local-only rules, a full outbox ([`AgentError::OutboxFull`]); the body comes back.
    pub fn tell_or_queue(
        &self,
        target: &AgentId,
        body: Body,
        contract: Contract,
    ) -> Result<Sent, (AgentError, Body)> {
        self.tell_via(target, None, body, contract)
    }

    /// [`AgentSystem::tell_or_queue`], through a handle's port when it has one (see
    /// [`PortCache`]). A tell takes the port only while the outbox is empty: one waiting in
    /// it for the same target must not be overtaken.
    fn tell_via(
        &self,
        target: &AgentId,
        port: Option<&PortCache>,
        body: Body,
        contract: Contract,
    ) -> Result<Sent, (AgentError, Body)> {
        let out = self.outgoing(target, body, contract)?;
        let out = match port {
            Some(port) if self.outbox_depth.load(Ordering::Acquire) == 0 => {
                match Self::through_port(port, out) {
                    None => return Ok(Sent::Now),
                    Some(out) => out,
                }
            }
            _ => out,
        };
        if self.must_queue(&out.target) {
            return self.queue(out).map(|depth| Sent::Queued { depth });
        }
        self.route_and_keep_port(out, port);
        Ok(Sent::Now)
    }

    /// Sends `out` through the handle's port into the running instance, if it has one and
    /// the body is typed (an encoded body has a contract to check at the door). Returns the
    /// message, untouched, when it must go the long way (a stale port is forgotten).
    fn through_port(port: &PortCache, out: Outgoing) -> Option<Outgoing> {
        if !matches!(out.body, Body::Typed(_)) {
            return Some(out);
        }
        let mut cached = port.lock();
        let Some(p) = cached.as_ref() else {
            return Some(out);
        };
        let Outgoing {
            target,
            body,
            contract,
            sender,
            seq,
            trace,
            ask,
        } = out;
        let deadline = ask.as_ref().map(|(_, d)| *d);
        let call = Call {
            body,
            trace,
            sender: Some(sender),
            seq,
            reply: ask.map(|(tx, _)| tx.into()),
        };
        let Err(call) = p.send(call) else {
            return None;
        };
        *cached = None;
        let Call {
            body,
            trace,
            sender,
            seq,
            reply,
        } = *call;
        Some(Outgoing {
            target,
            body,
            contract,
            sender: sender.expect("the call was made with its sender"),
            seq,
            trace,
            ask: reply.and_then(ReplyTx::into_channel).zip(deadline),
        })
    }

    /// Routes `out`; when it was a typed message delivered to an agent running here, the
    /// handle's port is set to that instance for the next sends.
    fn route_and_keep_port(&self, out: Outgoing, port: Option<&PortCache>) {
        let keep = port.filter(|_| matches!(out.body, Body::Typed(_)));
        if let (Some(target), Some(port)) = (self.route(out), keep) {
            *port.lock() = self.host.port(&target);
        }
    }
}

impl Router for AgentSystem {
    fn tell(
        &self,
        target: &AgentId,
        port: &PortCache,
        body: Body,
        contract: Contract,
    ) -> Result<(), (AgentError, Body)> {
        self.tell_via(target, Some(port), body, contract)
            .map(|_| ())
    }

    fn send_ask(
        &self,
        target: &AgentId,
        port: &PortCache,
        body: Body,
        contract: Contract,
        deadline: Duration,
    ) -> Result<ReplyRx, AgentError> {
        let mut out = self.outgoing(target, body, contract).map_err(|(e, _)| e)?;
        let (tx, rx) = oneshot::channel();
        out.ask = Some((tx, deadline));
        // asks are never queued in the outbox: the port is always theirs to take
        if let Some(out) = Self::through_port(port, out) {
            self.route_and_keep_port(out, Some(port));
        }
        Ok(rx)
    }

    fn ask_timed_out(&self, target: &AgentId) {
        // a remote host may have moved or gone: look it up again next time (an agent hosted
        // here has no route entry; this forgets nothing)
        self.forget_route(target);
    }
}

/// What a delivery to this node's host came to.
enum LocalOutcome {
    /// Handed to the agent (or held for its restart).
    Handed(AgentId),
    /// Refused for a reason that leaves the route as it is (answered or logged).
    Refused,
    /// The agent is not (or no longer) running here: its route is stale.
    Stale(AgentId),
}

/// What [`AgentSystem::deliver_if_hosted`] did.
enum HereOrNot {
    /// Handed to the host (or refused by it).
    Delivered(LocalOutcome),
    /// Not hosted here: the message, untouched.
    NotHere(Outgoing),
}

/// A message for an agent of this node, as the host takes it (an asker's reply sender goes
/// with it: the agent answers directly).
fn local_parts(out: Outgoing) -> (Delivery, Body, Option<ReplyTx>) {
    let d = Delivery {
        target: out.target,
        epoch: 0,
        sender: out.sender,
        seq: out.seq,
        trace: out.trace,
        contract: match &out.body {
            Body::Typed(_) => None,
            Body::Encoded(..) => Some(out.contract),
        },
        in_process: true,
    };
    (d, out.body, out.ask.map(|(tx, _)| tx.into()))
}

/// Encodes a body for the wire (typed values become MessagePack).
fn encode_for_wire(body: Body) -> Result<(Encoding, Bytes), AgentError> {
    body.into_wire()
        .map_err(|reason| AgentError::Internal(format!("message does not encode: {reason}")))
}

/// Requests a peer writer's buffer keeps room for between bursts.
const WRITE_BATCH: usize = 4096;

async fn write_batch<T: serde::Serialize>(
    send: &mut SendStream,
    batch: &[T],
) -> Result<(), WireError> {
    let mut buf = Vec::with_capacity(batch.len() * 192);
    for item in batch {
        wire::encode_frame_as(&mut buf, item, wire::Layout::Compact)?;
    }
    wire::write_frames(send, buf).await
}

/// The writer of one peer's queue: opens an agent stream on the current link, writes requests
/// in order (batched), and reads the answers from the same stream. When the link breaks it
/// waits for the next one; requests caught in the break are lost (asks among them fail when
/// the peer is declared unreachable or at their deadline).
async fn peer_writer(sys: Arc<AgentSystem>, peer: String, queue: Arc<Requests>) {
    // one buffer for every batch: no growth while a steady stream is taken
    let mut batch: Vec<Request> = Vec::with_capacity(WRITE_BATCH);
    loop {
        let Ok(net) = sys.net() else { return };
        let Some((conn, tasks)) = net.link_of(&peer).await else {
            // no link and none coming: fail what waits, keep serving later sends
            for r in batch.drain(..) {
                fail_request(&sys, &peer, r);
            }
            queue.take(&mut batch).await;
            continue;
        };
        let (mut send, recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(e) => {
                debug!(%peer, error = %e, "cannot open an agent stream");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if wire::write_tag(&mut send, StreamTag::Agents).await.is_err() {
            continue;
        }
        // the answers' reader runs in the connection's task: see `transport::conn_task`
        let reader = {
            let sys = sys.clone();
            let peer = peer.clone();
            tasks.spawn(async move {
                let mut frames = wire::FrameReader::new(recv, MAX_AGENT_FRAME);
                loop {
                    match frames.next::<Response>().await {
                        Ok(Some(r)) => sys.answer(r),
                        Ok(None) | Err(WireError::Stream(_)) => return,
                        Err(e) => {
                            warn!(%peer, error = %e, "bad answer on the agent stream");
                            return;
                        }
                    }
                }
            })
        };
        // what waited for this stream (taken while there was no link) goes first; then the
        // stream is lent to senders whenever this task waits
        let mut taken = !batch.is_empty();
        let mut sink = Some(FrameSink::new(send));
        loop {
            if !taken {
                queue.take_lending(&mut batch, &mut sink).await;
            }
            taken = false;
            let Some(stream) = sink.as_mut() else {
                // not reached: `take_lending` always hands the sink back with what it took
                break;
            };
            let rest_lost = stream.write_rest().await.is_err();
            let (written, unencodable) = if rest_lost {
                (0, Vec::new())
            } else {
                write_requests(&mut stream.send, &batch).await
            };
            let broken = rest_lost || written < batch.len();
            if broken {
                let lost = batch.len() - written;
                info!(%peer, lost, "agent stream broke; requests in it are lost");
            }
            let mut unencodable = unencodable.into_iter().peekable();
            for (i, r) in batch.drain(..).enumerate() {
                if unencodable.peek().is_some_and(|(at, _)| *at == i) {
                    let (_, e) = unencodable.next().expect("peeked");
                    fail_request_with(&sys, r, AgentError::Internal(e.to_string()));
                } else if i >= written {
                    fail_request(&sys, &peer, r);
                }
            }
            if broken {
                break;
            }
            if batch.capacity() > 4 * WRITE_BATCH {
                // a burst grew it: give the memory back
                batch = Vec::with_capacity(WRITE_BATCH);
            }
        }
        reader.abort();
    }
}

/// Writes `batch` in order, in writes of about [`WRITE_BYTES`]. Returns how many requests
/// were written (all of them unless the stream broke: the rest, and those of the write that
/// failed, were not) and those that could not be encoded (index and error; skipped).
async fn write_requests(
    send: &mut SendStream,
    batch: &[Request],
) -> (usize, Vec<(usize, WireError)>) {
    let mut unencodable = Vec::new();
    let mut buf = Vec::new();
    // requests before this index are written
    let mut flushed = 0;
    for (i, r) in batch.iter().enumerate() {
        if let Err(e) = wire::encode_frame_as(&mut buf, r, wire::Layout::Compact) {
            unencodable.push((i, e));
        }
        let due = buf.len() >= WRITE_BYTES || (i + 1 == batch.len() && !buf.is_empty());
        if due
            && wire::write_frames(send, std::mem::take(&mut buf))
                .await
                .is_err()
        {
            return (flushed, unencodable);
        }
        if buf.is_empty() {
            flushed = i + 1;
        }
    }
    (flushed, unencodable)
}

/// Bytes of frames a peer writer gathers before it writes them to its stream.
const WRITE_BYTES: usize = 256 * 1024;

fn fail_request(sys: &AgentSystem, peer: &str, r: Request) {
    let e = AgentError::NodeUnreachable {
        node: peer.to_owned(),
    };
    fail_request_with(sys, r, e);
}

/// Fails a request that will not reach its peer with `e`: an asker learns it, a tell is
/// counted and logged.
fn fail_request_with(sys: &AgentSystem, r: Request, e: AgentError) {
    match r {
        Request::Tell { env } => {
            sys.tell_failures.fetch_add(1, Ordering::Relaxed);
            warn!(target = %env.target, seq = env.seq, trace_id = %env.trace.trace_id_hex(), error = %e, "tell failed");
        }
        Request::Tells { run } => {
            for env in run.into_envelopes() {
                sys.tell_failures.fetch_add(1, Ordering::Relaxed);
                warn!(target = %env.target, seq = env.seq, trace_id = %env.trace.trace_id_hex(), error = %e, "tell failed");
            }
        }
        Request::Ask { req, .. }
        | Request::Deliver { req, .. }
        | Request::Claim { req, .. }
        | Request::Lookup { req, .. }
        | Request::Activate { req, .. }
        | Request::Probe { req, .. } => {
            if let Some((_, p)) = sys.pending.remove(&req) {
                sys.finish(p, Err(e));
            }
        }
        Request::Exited { .. }
        | Request::Backup { .. }
        | Request::Handoff { .. }
        | Request::Evicted { .. } => {}
    }
}

/// Runs futures concurrently; outputs in order.
async fn join_all<F: std::future::Future + Send + 'static>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}
