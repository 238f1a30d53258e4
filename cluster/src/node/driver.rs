//! The driver of a node's [`ClusterCore`]: inputs go in under its lock, outputs are carried
//! out as the core asks.
//!
//! ```text
//! ticker, link tasks, agent streams, the data plane ──▶ with(core: input) ──▶ outputs:
//!   Send, Heartbeat   ──▶ written under the core's lock (peer queues and datagrams do not
//!                         wait), so that the order of messages to a peer is the core's
//!   Activate          ──▶ on the host, under the node's supervision: in the spawner's own
//!                         task for its own spawn, else in a task; the result goes back in
//!   Fence             ──▶ every agent stopped for good, in a task; then fence_done
//!   Deliver           ──▶ a tell from the outbox to its host, in a task; then delivered
//!   Done              ──▶ the waiting request's channel
//!   PeerLost, Quarantine, Mode ──▶ the data plane's tables and the published state
//! ```
//!
//! What the data plane reads on every message (the membership view, whether the node may act,
//! who is quarantined, the outbox's depth) is published outside the lock after every input.

use crate::durable::{CheckpointStore, Checkpointer};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tether_actors::{Activation, AgentError, AgentId, Envelope, Host};
use tether_supervision::{AddAgent, NodeSupervisor};
use tokio::sync::{oneshot, watch};
use tracing::{error, warn};

use crate::agents::inbound::deliver_here;
use crate::agents::peer_io::PeerIo;
use crate::agents::routes::Routes;
use crate::agents::{ControlPlane, Target};
use crate::core::{ActivateOrder, ClusterCore, Output, Ticket};
use crate::directory::{AgentSpec, DirAnswer, DirMsg};
use crate::membership::detector::PeerState;
use crate::membership::View;
use crate::net::links::Links;
use crate::role::{Claim, Standing};

/// How long a delivery from the outbox may take.
const DELIVER_TIMEOUT: Duration = Duration::from_secs(5);

/// What a request of this node waits on.
type Reply = oneshot::Sender<Result<DirAnswer, AgentError>>;

/// Whether the node may act, readable without the core's lock: the host's gate asks it before
/// every message an agent handles.
#[derive(Debug)]
pub(super) struct Gate {
    me: String,
    fenced: AtomicBool,
    /// Until when (on [`coarse_now_ms`]'s clock) the node may act; `u64::MAX`: no lease.
    lease_until_ms: AtomicU64,
}

impl Gate {
    pub(super) fn refusal(&self) -> Option<AgentError> {
        if self.fenced.load(Ordering::SeqCst) {
            return Some(AgentError::Fenced {
                node: self.me.clone(),
            });
        }
        let until = self.lease_until_ms.load(Ordering::Relaxed);
        if until != u64::MAX && coarse_now_ms() > until {
            return Some(AgentError::PausedPastLease {
                node: self.me.clone(),
            });
        }
        None
    }

    fn publish(&self, s: Standing, now: Instant) {
        self.fenced.store(s.fenced, Ordering::SeqCst);
        let until = s.lease_until.map_or(u64::MAX, |t| {
            coarse_now_ms() + t.saturating_duration_since(now).as_millis() as u64
        });
        self.lease_until_ms.store(until, Ordering::Relaxed);
    }
}

/// Milliseconds on the monotonic clock, read coarsely: the kernel's last tick (a few ms
/// old), several times cheaper than a precise read. The gate reads it before every message an
/// agent handles; a lease lasts seconds.
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
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// The driver of one node's core (see the module doc).
pub(crate) struct Driver {
    pub(super) me: String,
    core: Mutex<ClusterCore>,
    tickets: Mutex<HashMap<Ticket, Reply>>,
    view: Mutex<Arc<View>>,
    /// Bumped when the view or the mode changes: waiters (`tether wait`) watch it.
    version: watch::Sender<u64>,
    pub(super) gate: Arc<Gate>,
    quarantined: DashMap<String, ()>,
    quarantined_n: AtomicUsize,
    /// The outbox's depth; `usize::MAX`: the node keeps none.
    outbox_depth: AtomicUsize,
    pub(super) io: Arc<PeerIo>,
    pub(super) routes: Arc<Routes>,
    links: Arc<Links>,
    pub(super) host: Arc<Host>,
    pub(super) sup: Arc<NodeSupervisor>,
    /// Drained: no new activations here.
    pub(super) draining: std::sync::atomic::AtomicBool,
    /// The node's checkpointer (durable agents' checkpoints and the replicas peers send).
    pub(super) durable: Arc<Checkpointer>,
    myself: Weak<Driver>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a node's driver is built from.
pub(crate) struct Parts {
    pub(crate) io: Arc<PeerIo>,
    pub(crate) routes: Arc<Routes>,
    pub(crate) links: Arc<Links>,
    pub(crate) host: Arc<Host>,
    pub(crate) sup: Arc<NodeSupervisor>,
    /// Where checkpoints are kept on this node.
    pub(crate) store: Box<dyn CheckpointStore>,
}

impl Driver {
    pub(crate) fn new(core: ClusterCore, parts: Parts) -> Arc<Self> {
        let me = core.me().to_owned();
        let view = Arc::new(core.members().view());
        let depth = core.outbox_depth().unwrap_or(usize::MAX);
        let (version, _) = watch::channel(0);
        let (name, io) = (me.clone(), parts.io.clone());
        let replicas = move |myself: &Weak<Driver>| super::replicas::NodeReplicas {
            me: name,
            control: myself.clone() as Weak<dyn ControlPlane>,
            io,
        };
        let driver = Arc::new_cyclic(|myself| Self {
            gate: Arc::new(Gate {
                me: me.clone(),
                fenced: AtomicBool::new(false),
                lease_until_ms: AtomicU64::new(u64::MAX),
            }),
            me,
            core: Mutex::new(core),
            tickets: Mutex::default(),
            view: Mutex::new(view),
            version,
            quarantined: DashMap::new(),
            quarantined_n: AtomicUsize::new(0),
            outbox_depth: AtomicUsize::new(depth),
            io: parts.io,
            routes: parts.routes,
            links: parts.links,
            host: parts.host,
            sup: parts.sup,
            draining: std::sync::atomic::AtomicBool::new(false),
            durable: Checkpointer::start(parts.store, Arc::new(replicas(myself))),
            myself: myself.clone(),
        });
        driver.host.set_checkpoints(driver.durable.clone());
        driver.host.set_forwarder(crate::agents::forward::forwarder(
            Arc::downgrade(&driver.io),
            driver.me.clone(),
        ));
        let gate = driver.gate.clone();
        driver.host.set_gate(Arc::new(move || gate.refusal()));
        let weak = Arc::downgrade(&driver);
        driver
            .host
            .set_exit_listener(Arc::new(move |id, epoch, reason| {
                if let Some(d) = weak.upgrade() {
                    d.routes.0.remove(id);
                    let id = id.clone();
                    d.with(|c, now| c.agent_exited(id, epoch, reason, now));
                }
            }));
        driver
    }

    pub(super) fn arc(&self) -> Option<Arc<Driver>> {
        self.myself.upgrade()
    }

    /// Runs `f` on the core under its lock, publishes what changed, and carries out the
    /// outputs; activations go to tasks.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut ClusterCore, Instant) -> R) -> R {
        let (r, activations) = self.with_inline(f);
        for order in activations {
            if let Some(d) = self.arc() {
                tokio::spawn(async move { d.activate(order).await });
            }
        }
        r
    }

    /// [`Driver::with`], handing the activations ordered back to the caller, which carries
    /// them out (and reports them) itself.
    fn with_inline<R>(
        &self,
        f: impl FnOnce(&mut ClusterCore, Instant) -> R,
    ) -> (R, Vec<ActivateOrder>) {
        let now = Instant::now();
        let mut later = Vec::new();
        let r = {
            let mut core = lock(&self.core);
            let before = core.members().version();
            let r = f(&mut core, now);
            while let Some(out) = core.poll_output() {
                // sends keep the core's order: written under its lock
                match out {
                    Output::Send { to, msg } => self.io.send_dir(&to, msg),
                    Output::Heartbeat { to, hb } => self.heartbeat(&to, &hb),
                    other => later.push(other),
                }
            }
            self.publish(&core, before, now);
            r
        };
        let mut activations = Vec::new();
        for out in later {
            match out {
                Output::Activate(order) => activations.push(order),
                other => self.carry_out(other),
            }
        }
        (r, activations)
    }

    /// Publishes what the data plane reads without the lock.
    fn publish(&self, core: &ClusterCore, before: u64, now: Instant) {
        self.gate.publish(core.standing(), now);
        self.outbox_depth
            .store(core.outbox_depth().unwrap_or(usize::MAX), Ordering::Release);
        if core.members().version() != before {
            let view = Arc::new(core.members().view());
            for m in core.members().peers() {
                let gone = m.state() == PeerState::Down;
                self.links.set_gone(&m.info.name, gone);
            }
            *lock(&self.view) = view;
            self.version.send_modify(|v| *v += 1);
        }
    }

    fn heartbeat(&self, to: &str, hb: &crate::membership::Heartbeat) {
        if let Some(link) = self.links.get(to) {
            // invariant: a struct of integers, flags and names always encodes
            let bytes = tether_actors::codec::encode(hb).expect("heartbeat encodes");
            // a full datagram buffer or a dead connection is loss, which the detector measures
            let _ = link.conn.send_datagram(bytes::Bytes::from(bytes));
        }
    }

    fn carry_out(&self, out: Output) {
        match out {
            Output::Done { ticket, result } => {
                if let Some(tx) = lock(&self.tickets).remove(&ticket) {
                    let _ = tx.send(result);
                }
            }
            Output::PeerLost(peer) => {
                self.io.peer_lost(&peer);
                self.routes.forget_peer(&peer);
            }
            Output::Quarantine { peer, on } => {
                let changed = if on {
                    self.quarantined.insert(peer, ()).is_none()
                } else {
                    self.quarantined.remove(&peer).is_some()
                };
                if changed {
                    self.quarantined_n
                        .store(self.quarantined.len(), Ordering::SeqCst);
                }
            }
            Output::Mode(_) => {
                // waiters on the mode (`tether wait --mode`) read it from the status
                self.version.send_modify(|v| *v += 1);
            }
            Output::Fence => {
                if let Some(d) = self.arc() {
                    tokio::spawn(async move { d.fence().await });
                }
            }
            Output::Deliver { qid, node, env } => {
                if let Some(d) = self.arc() {
                    tokio::spawn(async move { d.deliver(qid, node, env).await });
                }
            }
            Output::Activate(_) | Output::Send { .. } | Output::Heartbeat { .. } => {
                unreachable!("handled in `with`")
            }
        }
    }

    /// Carries out an activation on the host and reports it.
    async fn activate(&self, order: ActivateOrder) {
        let token = order.token;
        let result = self.run_activation(order).await;
        let more = self.with_inline(|c, now| c.activated(token, result, now)).1;
        for order in more {
            Box::pin(self.activate(order)).await;
        }
    }

    async fn run_activation(&self, order: ActivateOrder) -> Result<Activation, AgentError> {
        if let Some(e) = self.gate.refusal().or_else(|| self.draining_refusal()) {
            return Err(e);
        }
        let ActivateOrder {
            id,
            epoch,
            record,
            policy,
            group,
            trace,
            ..
        } = order;
        if record.durability.is_durable() && !record.placement.is_local_only() {
            // start from the newest checkpoint anywhere (a failover, or the id spawned again);
            // its replica may be on any remote node
            self.durable.gather(&id).await?;
        }
        let a = AddAgent {
            id,
            epoch,
            record,
            policy,
            trace,
            restore: None,
        };
        self.sup.activate(a, group.as_deref()).await
    }

    async fn fence(&self) {
        let stopped = match self.sup.fence().await {
            Ok(stopped) => stopped,
            Err(e) => {
                error!(error = %e, "fenced, but the supervisor did not stop the agents");
                Vec::new()
            }
        };
        let stopped = stopped
            .into_iter()
            .map(|f| (f.id, f.epoch, AgentSpec::of(&f.record, f.policy, f.group)))
            .collect();
        self.routes.clear();
        self.with(|c, now| c.fence_done(stopped, now));
    }

    async fn deliver(&self, qid: u64, node: String, env: Envelope) {
        let target = env.target.clone();
        let result = if node == self.me {
            deliver_here(&self.host, None, env, None).map_err(|(e, _)| e)
        } else {
            self.io.deliver(&node, env, DELIVER_TIMEOUT).await
        };
        if result.is_err() {
            // the route was stale (moved, newer epoch) or the host went away
            self.routes.forget(&target);
        }
        self.with(|c, now| c.delivered(qid, result, now));
    }

    /// Registers `ticket`'s reply channel.
    pub(super) fn ticket(
        &self,
        ticket: Ticket,
    ) -> oneshot::Receiver<Result<DirAnswer, AgentError>> {
        let (tx, rx) = oneshot::channel();
        lock(&self.tickets).insert(ticket, tx);
        rx
    }

    /// Waiters of membership changes subscribe here.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Reads the core (status).
    pub(crate) fn read<R>(&self, f: impl FnOnce(&ClusterCore) -> R) -> R {
        f(&lock(&self.core))
    }

    /// Get-or-spawn, carrying out this node's activation in the caller's task.
    pub(crate) async fn spawn_here(
        &self,
        claim: Claim,
        target: Target,
    ) -> Result<DirAnswer, AgentError> {
        let (rx, activations) = self.with_inline(|c, now| {
            let t = c.spawn(now, claim, target);
            self.ticket(t)
        });
        for order in activations {
            self.activate(order).await;
        }
        rx.await
            .unwrap_or_else(|_| Err(AgentError::Internal("the node is stopping".into())))
    }
}

impl ControlPlane for Driver {
    fn view(&self) -> Arc<View> {
        lock(&self.view).clone()
    }

    fn lookup(&self, id: &AgentId) -> oneshot::Receiver<Result<DirAnswer, AgentError>> {
        self.with(|c, now| {
            let t = c.lookup(now, id.clone());
            self.ticket(t)
        })
    }

    fn spawn(
        &self,
        claim: Claim,
        target: Target,
    ) -> tether_actors::call::BoxFuture<'_, Result<DirAnswer, AgentError>> {
        Box::pin(self.spawn_here(claim, target))
    }

    fn receive(&self, from: &str, msg: DirMsg) {
        self.with(|c, now| c.receive(from, msg, now));
    }

    fn checkpointer(&self) -> Arc<Checkpointer> {
        self.durable.clone()
    }

    fn install(
        &self,
        from: &str,
        id: AgentId,
        epoch: u64,
        spec: crate::directory::AgentSpec,
        cp: tether_actors::Checkpoint,
    ) -> tether_actors::call::BoxFuture<'_, Result<Activation, AgentError>> {
        let from = from.to_owned();
        Box::pin(async move { self.install_here(&from, id, epoch, spec, cp).await })
    }

    fn barrier(
        &self,
        peer: &str,
        id: AgentId,
    ) -> tether_actors::call::BoxFuture<'_, Result<(), AgentError>> {
        let _ = peer;
        Box::pin(async move { self.barrier_along(id).await })
    }

    fn discard(&self, id: &AgentId, epoch: u64) -> tether_actors::call::BoxFuture<'_, ()> {
        let id = id.clone();
        Box::pin(async move { self.discard_here(&id, epoch).await })
    }

    fn migrate_here(
        &self,
        id: AgentId,
        to: Option<String>,
    ) -> tether_actors::call::BoxFuture<'_, Result<crate::migration::MoveReport, AgentError>> {
        Box::pin(async move {
            let to = match to {
                Some(t) => t,
                None => self.choose_target(&id)?,
            };
            self.migrate(id, to).await
        })
    }

    fn outbox_depth(&self) -> Option<usize> {
        match self.outbox_depth.load(Ordering::Acquire) {
            usize::MAX => None,
            n => Some(n),
        }
    }

    fn outbox_holds(&self, id: &AgentId) -> bool {
        self.read(|c| c.outbox_holds(id))
    }

    fn queue(&self, env: Envelope) -> Result<usize, AgentError> {
        let queued_ms = tether_actors::host::now_unix_ms();
        let r = self.with(|c, now| c.queue(env, now, queued_ms));
        if let Err(e) = &r {
            warn!(error = %e, "tell not queued");
        }
        r
    }

    fn refusal(&self) -> Option<AgentError> {
        self.gate.refusal()
    }

    fn is_quarantined(&self, peer: &str) -> bool {
        self.quarantined_n.load(Ordering::Relaxed) != 0 && self.quarantined.contains_key(peer)
    }
}
