//! A running node: its endpoint, its view of the cluster, and the tasks that keep it true.
//!
//! ```text
//! Node
//!  ├─ accept loop ── per incoming connection: control session (operator) or peer hello
//!  ├─ ticker (every heartbeat_interval)
//!  │    ├─ sends a heartbeat datagram on every link
//!  │    ├─ ticks every peer's failure detector (up / unreachable)
//!  │    ├─ runs the split-brain resolver (remote nodes: fence this node, or down others
//!  │    │   and fail their agents over) or the offline check (local nodes)
//!  │    ├─ dials peers and seeds that need it (link::dial_due)
//!  │    └─ gossips the member list every gossip_interval
//!  ├─ per link: link-stream reader + writer, datagram reader, stream acceptor (ractor)
//!  └─ ractor_cluster NodeServer (its own supervision tree; its sessions run on QUIC streams)
//! ```
//!
//! The membership table is a `DashMap` keyed by node name. No guard is held across an
//! `.await`: every handler reads or changes an entry, drops the guard, then does I/O.
//! Changes bump a version number on a `watch` channel, which is how control-plane waits
//! (`tether wait`, `tether up`) learn of them without polling.

mod links;
mod ractor_bridge;

pub use ractor_bridge::cookie as ractor_cookie;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use quinn::{Connection, Endpoint};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use tether_actors::{Agent, AgentError, AgentId, AgentRef, Body, Host, Kinds};

use crate::agents::outbox::{self, Outbox, OutboxError};
use crate::agents::{AgentSystem, SpawnOptions, Target};
use crate::control::{NodeMode, NodeStatus, PeerStatus};
use crate::detector::{Detector, DetectorConfig, PeerState, Transition};
use crate::identity::{designated_dialer, validate_name, NameError, NodeInfo, Role};
use crate::link::{self, DialConfig};
use crate::net::certs::{CertDir, CertError};
use crate::net::fault::FaultLayer;
use crate::net::statedir::{NodeDir, NodeRecord};
use crate::net::transport::{self, ConnTasks, QuicTiming, TransportError};
use crate::net::wire::{self, close, PeerMsg};
use crate::sbr::{Action, Resolver, SbrConfig};

/// All of a node's timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How often heartbeats are sent and detectors ticked.
    pub heartbeat_interval: Duration,
    /// Failure detector thresholds.
    pub detector: DetectorConfig,
    /// Dialing and probing.
    pub dial: DialConfig,
    /// QUIC keep-alive and idle timeout.
    pub quic: QuicTiming,
    /// Deadline of a connection handshake plus hello exchange.
    pub connect_timeout: Duration,
    /// How often the member list is sent to every peer.
    pub gossip_interval: Duration,
    /// The split-brain resolver's window and margin.
    pub sbr: SbrConfig,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(150),
            detector: DetectorConfig::default(),
            dial: DialConfig::default(),
            quic: QuicTiming::default(),
            connect_timeout: Duration::from_millis(1500),
            gossip_interval: Duration::from_secs(2),
            sbr: SbrConfig::default(),
        }
    }
}

/// What a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's name; its certificate must carry it.
    pub name: String,
    /// Local or remote.
    pub role: Role,
    /// UDP address to bind.
    pub listen: SocketAddr,
    /// Address peers dial, when `listen` is a wildcard (`0.0.0.0`); defaults to `listen`.
    pub advertise: Option<SocketAddr>,
    /// Addresses of nodes to join through.
    pub seeds: Vec<SocketAddr>,
    /// Where the CA and this node's certificate are.
    pub certs: CertDir,
    /// This node's own state directory.
    pub node_dir: NodeDir,
    /// Timers.
    pub timing: Timing,
    /// Seed of the fault layer's loss and jitter generator.
    pub fault_seed: u64,
    /// Agent kinds this node can host.
    pub kinds: Kinds,
    /// Budget of the node's root supervisor (past it, every agent of the node stops).
    pub root_intensity: tether_supervision::Intensity,
    /// Most tells a local node keeps for agents it cannot reach (its outbox; remote nodes
    /// have none). [`DEFAULT_OUTBOX_MAX`] unless set.
    pub outbox_max: usize,
}

impl NodeConfig {
    /// A node named `name` with everything under `dir`: the CA (made if missing) and the
    /// node's certificate (made if missing) in `dir`, its state in `dir/nodes/<name>` (the
    /// layout `tether up` uses), listening on an OS-chosen loopback port, with no seeds, the
    /// built-in kinds and default timers and bounds. For embedding a node in a program or a
    /// test; change fields with struct update syntax.
    ///
    /// # Errors
    /// [`CertError`] when the certificates cannot be made or read.
    pub fn in_dir(name: &str, role: Role, dir: &std::path::Path) -> Result<Self, CertError> {
        let certs = CertDir::new(dir);
        certs.ensure_ca()?;
        certs.ensure_node(name)?;
        Ok(Self {
            name: name.into(),
            role,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            seeds: Vec::new(),
            certs,
            node_dir: NodeDir::new(dir.join("nodes").join(name)),
            timing: Timing::default(),
            fault_seed: 1,
            kinds: Kinds::builtin(),
            root_intensity: tether_supervision::Intensity::node_root(),
            outbox_max: DEFAULT_OUTBOX_MAX,
        })
    }
}

/// Default bound of a local node's outbox.
pub const DEFAULT_OUTBOX_MAX: usize = outbox::DEFAULT_MAX;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The name is not a valid node name.
    #[error(transparent)]
    Name(#[from] NameError),
    /// Certificates or state files are missing or unreadable.
    #[error(transparent)]
    Certs(#[from] CertError),
    /// The certificate was issued for another name.
    #[error("certificate {path} is for {found:?}, not for node {name:?}")]
    WrongCertificate {
        /// The node name asked for.
        name: String,
        /// The name in the certificate.
        found: String,
        /// The certificate file.
        path: String,
    },
    /// The endpoint could not be made.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The ractor_cluster node server did not start.
    #[error("ractor node server: {0}")]
    Ractor(String),
    /// The advertised address is a wildcard.
    #[error(
        "listen address {0} is a wildcard; give --advertise with the address peers should dial"
    )]
    NeedAdvertise(SocketAddr),
    /// The node's supervision did not start.
    #[error(transparent)]
    Supervision(#[from] tether_supervision::SupervisionError),
    /// A local node's outbox cannot be opened.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

/// A live link to a peer.
#[derive(Debug, Clone)]
struct Link {
    conn: Connection,
    /// The task that drives `conn`, where its agent streams' readers run.
    tasks: ConnTasks,
    tx: mpsc::Sender<PeerMsg>,
}

/// Everything this node knows about one peer.
#[derive(Debug)]
struct Peer {
    info: NodeInfo,
    detector: Detector,
    link: Option<Link>,
    i_am_designated: bool,
    pending_dial: bool,
    /// Bumped when a newer life of the peer is learned: dials started before are stale.
    dial_epoch: u64,
    last_dial_end: Option<Instant>,
    failures: u32,
    /// Since when the pair has had no link (None while linked).
    unlinked_since: Option<Instant>,
    /// The ractor_cluster session on the current link is authenticated.
    session: bool,
    /// The peer closed its connections with the shutdown code.
    left: bool,
    /// Fences the peer reports having completed, and whether it is fenced (its heartbeats).
    fences_seen: u64,
    fenced_seen: bool,
    /// Set when this node decided the peer down: its fence count and fenced flag then. The
    /// peer stays down (quarantined) until it reports a fence completed since, or that the
    /// fence it was in then never lifted: until it hosts nothing that was replaced.
    down_at_fences: Option<(u64, bool)>,
    /// The peer's last heartbeat said this node was decided down in its view.
    says_im_down: bool,
    /// The remote members the peer's last heartbeat reported unreachable.
    reports_unreachable: Vec<String>,
}

impl Peer {
    fn new(me: &NodeInfo, info: NodeInfo, cfg: DetectorConfig, now: Instant) -> Self {
        let designated =
            designated_dialer((&me.name, me.role), (&info.name, info.role)) == me.name.as_str();
        Self {
            detector: Detector::new(cfg, info.incarnation, now),
            info,
            link: None,
            i_am_designated: designated,
            pending_dial: false,
            dial_epoch: 0,
            last_dial_end: None,
            failures: 0,
            unlinked_since: Some(now),
            session: false,
            left: false,
            fences_seen: 0,
            fenced_seen: false,
            down_at_fences: None,
            says_im_down: false,
            reports_unreachable: Vec::new(),
        }
    }

    fn link_id(&self) -> Option<usize> {
        self.link.as_ref().map(|l| l.conn.stable_id())
    }
}

/// A seed address: dialed until a link exists to whatever node answers there.
#[derive(Debug)]
struct Seed {
    addr: SocketAddr,
    pending: bool,
    last_end: Option<Instant>,
    failures: u32,
}

/// The up members of the cluster as of one version of the membership table.
#[derive(Debug)]
pub(crate) struct UpView {
    /// The table's version it was built from (`None`: never built).
    version: Option<u64>,
    /// Up nodes, this one last: name, role, the kinds it registered.
    members: Vec<(String, Role, Vec<String>)>,
}

impl UpView {
    fn stale() -> Self {
        Self {
            version: None,
            members: Vec::new(),
        }
    }

    fn build(version: u64, me: &NodeInfo, peers: &DashMap<String, Peer>) -> Self {
        let mut members: Vec<(String, Role, Vec<String>)> = peers
            .iter()
            .filter(|p| p.detector.state() == PeerState::Up && !p.left)
            .map(|p| (p.info.name.clone(), p.info.role, p.info.kinds.clone()))
            .collect();
        members.push((me.name.clone(), me.role, me.kinds.clone()));
        Self {
            version: Some(version),
            members,
        }
    }

    /// Up remote nodes, this one included if remote: the directory owners.
    pub(crate) fn remotes(&self) -> impl Iterator<Item = &str> {
        self.members
            .iter()
            .filter(|(_, role, _)| *role == Role::Remote)
            .map(|(name, _, _)| name.as_str())
    }

    /// Up nodes (this one included): name, role, whether it registered `kind`.
    pub(crate) fn members<'a>(
        &'a self,
        kind: &'a str,
    ) -> impl Iterator<Item = (&'a str, Role, bool)> {
        self.members
            .iter()
            .map(move |(name, role, kinds)| (name.as_str(), *role, kinds.iter().any(|k| k == kind)))
    }

    /// Up peers (this node excluded) that registered `kind`.
    pub(crate) fn peers_with_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a str> {
        let peers = &self.members[..self.members.len().saturating_sub(1)];
        peers
            .iter()
            .filter(move |(_, _, kinds)| kinds.iter().any(|k| k == kind))
            .map(|(name, _, _)| name.as_str())
    }
}

pub(crate) struct Shared {
    me: NodeInfo,
    timing: Timing,
    endpoint: Endpoint,
    client_cfg: quinn::ClientConfig,
    faults: Arc<FaultLayer>,
    peers: DashMap<String, Peer>,
    seeds: Mutex<Vec<Seed>>,
    version: watch::Sender<u64>,
    /// The up members as of a version of the table, rebuilt on the first read after a change.
    view: Mutex<Arc<UpView>>,
    shutdown: watch::Sender<bool>,
    ractor: ractor::ActorRef<ractor_cluster::NodeServerMessage>,
    started: Instant,
    hb_seq: AtomicU64,
    node_dir: NodeDir,
    pub(crate) agents: Arc<AgentSystem>,
    sbr: Mutex<Resolver>,
    mode: Mutex<NodeMode>,
    /// Fences begun and completed (the count goes out in heartbeats).
    fences_begun: AtomicU64,
    fences_done: Arc<AtomicU64>,
    /// Set when this node finds it did not run for longer than its lease (a SIGSTOP, a VM
    /// pause): the fence count then. Held until that fence is done and every remote member
    /// is reachable again.
    self_fence: Mutex<Option<u64>>,
}

/// A running node. Cheap to clone; [`Node::shutdown`] stops it.
#[derive(Clone)]
pub struct Node {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("me", &self.shared.me).finish()
    }
}

impl Node {
    /// Starts a node: binds its endpoint, starts its tasks, and begins joining its seeds.
    /// Returns once the endpoint listens; joining goes on in the background.
    ///
    /// # Errors
    /// [`NodeError`] if the name, certificates, state files or socket are unusable.
    pub async fn start(cfg: NodeConfig) -> Result<Node, NodeError> {
        validate_name(&cfg.name)?;
        let ca = cfg.certs.load_ca()?;
        let id = cfg.certs.load_node(&cfg.name)?;
        let cert_name = id
            .chain
            .first()
            .and_then(crate::net::tls::cert_name)
            .unwrap_or_default();
        if cert_name != cfg.name {
            return Err(NodeError::WrongCertificate {
                name: cfg.name.clone(),
                found: cert_name,
                path: cfg
                    .certs
                    .node_dir(&cfg.name)
                    .join("cert.pem")
                    .display()
                    .to_string(),
            });
        }
        let secret = cfg.node_dir.secret()?;
        let incarnation = cfg.node_dir.next_incarnation()?;
        let faults = FaultLayer::new(cfg.fault_seed);
        let (endpoint, client_cfg) = transport::node_endpoint(
            cfg.listen,
            &ca,
            &id,
            &secret,
            faults.clone(),
            cfg.timing.quic,
        )?;
        let bound = endpoint.local_addr().map_err(|source| {
            NodeError::Transport(TransportError::Bind {
                addr: cfg.listen,
                source,
            })
        })?;
        let addr = match cfg.advertise {
            Some(a) => a,
            None if bound.ip().is_unspecified() => return Err(NodeError::NeedAdvertise(bound)),
            None => bound,
        };
        let host = Host::new(&cfg.name, cfg.kinds.erased());
        let me = NodeInfo {
            name: cfg.name.clone(),
            role: cfg.role,
            addr,
            incarnation,
            kinds: host.kinds(),
        };
        let sup =
            tether_supervision::NodeSupervisor::start(host.clone(), cfg.root_intensity).await?;
        let outbox = match cfg.role {
            Role::Local => Some(Outbox::open(
                &cfg.node_dir.path().join(outbox::FILE_NAME),
                cfg.outbox_max,
            )?),
            Role::Remote => None,
        };
        let agents = AgentSystem::new(&cfg.name, (cfg.role, incarnation), host, sup, outbox);
        let ractor = ractor_bridge::start_node_server(&me, &ca)
            .await
            .map_err(NodeError::Ractor)?;
        let (version, _) = watch::channel(0);
        let (shutdown, _) = watch::channel(false);
        let seeds = cfg
            .seeds
            .iter()
            .filter(|a| **a != addr)
            .map(|&addr| Seed {
                addr,
                pending: false,
                last_end: None,
                failures: 0,
            })
            .collect();
        let shared = Arc::new(Shared {
            me: me.clone(),
            timing: cfg.timing,
            endpoint,
            client_cfg,
            faults,
            // a cluster has few nodes, and the spawn path walks this map several times (up
            // members, owners, probes): each shard walked costs a lock and an allocation
            peers: DashMap::with_shard_amount(2),
            seeds: Mutex::new(seeds),
            version,
            view: Mutex::new(Arc::new(UpView::stale())),
            shutdown,
            ractor,
            started: Instant::now(),
            hb_seq: AtomicU64::new(0),
            node_dir: cfg.node_dir.clone(),
            agents,
            sbr: Mutex::new(Resolver::new(cfg.timing.sbr, Instant::now())),
            mode: Mutex::new(NodeMode::Up),
            fences_begun: AtomicU64::new(0),
            fences_done: Arc::new(AtomicU64::new(0)),
            self_fence: Mutex::new(None),
        });
        shared.agents.attach(Arc::downgrade(&shared));
        tokio::spawn(AgentSystem::reconciler(
            Arc::downgrade(&shared.agents),
            shared.shutdown.subscribe(),
        ));
        tokio::spawn(AgentSystem::drainer(
            Arc::downgrade(&shared.agents),
            shared.shutdown.subscribe(),
        ));
        ractor_bridge::subscribe(&shared);
        tokio::spawn(links::accept_loop(shared.clone()));
        tokio::spawn(ticker(shared.clone()));
        cfg.node_dir.write_addr(addr)?;
        cfg.node_dir.write_record(&NodeRecord {
            name: me.name.clone(),
            role: me.role,
            addr,
            pid: std::process::id(),
            incarnation,
        })?;
        info!(name = %me.name, role = %me.role, %addr, incarnation, fault_seed = cfg.fault_seed, "node started");
        Ok(Node { shared })
    }

    /// This node as the cluster sees it.
    pub fn info(&self) -> &NodeInfo {
        &self.shared.me
    }

    /// The fault layer of this node's endpoint.
    pub fn faults(&self) -> &Arc<FaultLayer> {
        &self.shared.faults
    }

    /// A snapshot of this node's view of the cluster.
    pub fn status(&self) -> NodeStatus {
        self.shared.status()
    }

    /// The agent runtime.
    pub fn agents(&self) -> &Arc<AgentSystem> {
        &self.shared.agents
    }

    /// A handle on agent `id` of kind `A`, wherever it runs.
    pub fn agent_ref<A: Agent>(&self, id: AgentId) -> AgentRef<A> {
        AgentRef::new(id, self.shared.agents.clone())
    }

    /// Get-or-spawn agent `key` of kind `A` on this node.
    ///
    /// # Errors
    /// [`AgentError`] (see [`AgentSystem::spawn`]).
    pub async fn spawn<A: Agent>(
        &self,
        key: &str,
        args: A::Args,
    ) -> Result<AgentRef<A>, AgentError> {
        self.spawn_with::<A>(key, args, SpawnOptions::default(), Target::Here)
            .await
    }

    /// Get-or-spawn agent `key` of kind `A` on node `node`.
    ///
    /// # Errors
    /// [`AgentError`]: refused by placement (a local-only agent on a remote node), the node is
    /// unknown or unreachable, or it does not host the kind.
    pub async fn spawn_on<A: Agent>(
        &self,
        node: &str,
        key: &str,
        args: A::Args,
    ) -> Result<AgentRef<A>, AgentError> {
        self.spawn_with::<A>(
            key,
            args,
            SpawnOptions::default(),
            Target::On(node.to_owned()),
        )
        .await
    }

    /// Get-or-spawn agent `key` of kind `A` where its placement labels choose.
    ///
    /// # Errors
    /// [`AgentError`] (see [`AgentSystem::spawn`]).
    pub async fn spawn_placed<A: Agent>(
        &self,
        key: &str,
        args: A::Args,
    ) -> Result<AgentRef<A>, AgentError> {
        self.spawn_with::<A>(key, args, SpawnOptions::default(), Target::Placed)
            .await
    }

    /// Waits until this node knows at least `count` peers and sees all of them `up`.
    ///
    /// # Errors
    /// A message with the current view if that does not happen within `timeout`.
    pub async fn wait_peers_up(
        &self,
        count: usize,
        timeout: std::time::Duration,
    ) -> Result<NodeStatus, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.shared.subscribe_changes();
        loop {
            changes.borrow_and_update();
            let st = self.status();
            if crate::control::wait_satisfied(&st, &[], &[PeerState::Up], Some(count), None) {
                return Ok(st);
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() { return Err("node stopped".into()) },
                _ = tokio::time::sleep_until(deadline) => {
                    let seen: Vec<String> = st.peers.iter().map(|p| format!("{}={}", p.name, p.state)).collect();
                    return Err(format!("after {timeout:?} {} sees: {}", st.name, seen.join(", ")));
                }
            }
        }
    }

    /// Get-or-spawn with explicit options (labels, restart policy, supervisor group).
    ///
    /// # Errors
    /// [`AgentError`] (see [`AgentSystem::spawn`]).
    pub async fn spawn_with<A: Agent>(
        &self,
        key: &str,
        args: A::Args,
        opts: SpawnOptions,
        target: Target,
    ) -> Result<AgentRef<A>, AgentError> {
        let id = AgentId::new(A::KIND, key).map_err(|e| AgentError::Refused(e.to_string()))?;
        let args = Body::encode(args, Some(tether_actors::Encoding::MsgPack))
            .map_err(AgentError::Internal)?;
        self.shared
            .agents
            .spawn(id.clone(), args, opts, target)
            .await?;
        Ok(self.agent_ref(id))
    }

    /// Creates a supervisor group on this node.
    ///
    /// # Errors
    /// A message if the name is taken.
    pub async fn add_group(
        &self,
        spec: tether_supervision::GroupSpec,
    ) -> Result<(), tether_supervision::SupervisionError> {
        self.shared.agents.supervisor().add_group(spec).await
    }

    /// This node's supervision tree.
    ///
    /// # Errors
    /// A message if the root supervisor does not answer.
    pub async fn tree(
        &self,
    ) -> Result<tether_supervision::tree::NodeTree, tether_supervision::SupervisionError> {
        self.shared.agents.supervisor().snapshot().await
    }

    /// Resolves when a shutdown was asked for (by [`Node::shutdown`] or the control plane).
    pub async fn shutdown_requested(&self) {
        let mut rx = self.shared.shutdown.subscribe();
        // the sender lives in `shared`, which outlives this borrow
        let _ = rx.wait_for(|stop| *stop).await;
    }

    /// Stops the node: tells peers it is leaving, closes the endpoint, stops ractor.
    pub async fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
        self.shared.agents.supervisor().stop();
        self.shared.agents.host().stop_all();
        self.shared
            .endpoint
            .close(close::SHUTDOWN.into(), b"node shutting down");
        let _ =
            tokio::time::timeout(Duration::from_secs(1), self.shared.endpoint.wait_idle()).await;
        self.shared.ractor.stop(Some("node shutting down".into()));
        self.shared.node_dir.remove_record();
        info!(name = %self.shared.me.name, "node stopped");
    }
}

impl Shared {
    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    fn refresh_fault_addrs(&self) {
        self.faults
            .set_node_addrs(self.peers.iter().map(|p| p.info.addr));
    }

    fn log_transition(&self, peer: &str, t: Transition) {
        if matches!(t.to, PeerState::Up | PeerState::Down) {
            // the directory follows membership: fail over, hand off, copy to new backups
            self.agents.request_reconcile();
        }
        if t.restarted {
            info!(peer, from = %t.from, to = %t.to, "peer restarted");
        } else if t.to == PeerState::Up {
            info!(peer, from = %t.from, "peer up");
        } else {
            warn!(peer, from = %t.from, to = %t.to, "peer {}", t.to);
        }
    }

    /// Learns of a member (from gossip or a handshake). Returns whether anything changed.
    fn merge(&self, info: NodeInfo) -> bool {
        if info.name == self.me.name {
            if info.incarnation > self.me.incarnation {
                warn!(name = %info.name, incarnation = info.incarnation,
                    "another process claims this node's name with a newer incarnation");
            }
            return false;
        }
        if validate_name(&info.name).is_err() {
            return false;
        }
        let now = Instant::now();
        let mut stale_link = None;
        // a new member or a new life of one: told to every peer at once, not at the next
        // periodic gossip, so a cluster forms (and learns of restarts) in round trips
        let mut news = false;
        let changed = match self.peers.entry(info.name.clone()) {
            dashmap::Entry::Vacant(v) => {
                info!(peer = %info.name, role = %info.role, addr = %info.addr, "learned of member");
                v.insert(Peer::new(&self.me, info, self.timing.detector, now));
                news = true;
                true
            }
            dashmap::Entry::Occupied(mut o) => {
                let p = o.get_mut();
                if info.incarnation > p.info.incarnation {
                    if let Some(t) = p.detector.observe_incarnation(info.incarnation, now) {
                        self.log_transition(&info.name, t);
                    }
                    stale_link = p.link.take().map(|l| l.conn);
                    p.unlinked_since.get_or_insert(now);
                    // a dial in flight targets the old life; let the ticker dial the new one now
                    p.dial_epoch += 1;
                    p.pending_dial = false;
                    p.failures = 0;
                    p.last_dial_end = None;
                    news = true;
                    p.session = false;
                    p.left = false;
                    p.info = info;
                    true
                } else if info.incarnation == p.info.incarnation && info.addr != p.info.addr {
                    p.info.addr = info.addr;
                    true
                } else {
                    false
                }
            }
        };
        if let Some(conn) = stale_link {
            conn.close(close::STALE.into(), b"newer incarnation known");
        }
        if changed {
            self.refresh_fault_addrs();
            self.bump();
        }
        if news {
            gossip(self);
        }
        changed
    }

    fn members(&self) -> Vec<NodeInfo> {
        let mut v: Vec<NodeInfo> = self
            .peers
            .iter()
            .filter(|p| !p.left)
            .map(|p| p.info.clone())
            .collect();
        v.push(self.me.clone());
        v
    }

    fn status(&self) -> NodeStatus {
        let now = Instant::now();
        let mut peers: Vec<PeerStatus> = self
            .peers
            .iter()
            .map(|p| PeerStatus {
                name: p.info.name.clone(),
                role: p.info.role,
                addr: p.info.addr,
                incarnation: p.info.incarnation,
                state: p.detector.state(),
                rtt_ms: p
                    .link
                    .as_ref()
                    .filter(|_| p.detector.state() == PeerState::Up)
                    .map(|l| l.conn.rtt().as_secs_f64() * 1000.0),
                since_ms: now
                    .saturating_duration_since(p.detector.since())
                    .as_millis() as u64,
                last_heard_ms: now
                    .saturating_duration_since(p.detector.last_heard())
                    .as_millis() as u64,
                changes: p.detector.changes(),
                linked: p.link.is_some(),
                session: p.session,
                left: p.left,
            })
            .collect();
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        let (dropped, delayed) = self.faults.counters();
        NodeStatus {
            name: self.me.name.clone(),
            role: self.me.role,
            addr: self.me.addr,
            pid: std::process::id(),
            incarnation: self.me.incarnation,
            uptime_ms: self.started.elapsed().as_millis() as u64,
            peers,
            faults: self.faults.rules().rules().to_vec(),
            fault_seed: self.faults.seed(),
            datagrams_dropped: dropped,
            datagrams_delayed: delayed,
            kinds: self.me.kinds.clone(),
            agents_hosted: self
                .agents
                .host()
                .list()
                .iter()
                .filter(|a| a.status == "running")
                .count() as u64,
            agent_counters: self.agents.counters(),
            mode: self.mode(),
            outbox: self.agents.outbox_counters(),
        }
    }

    pub(crate) fn mode(&self) -> NodeMode {
        *self
            .mode
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sets the mode; true if it changed.
    fn set_mode(&self, mode: NodeMode) -> bool {
        let mut m = self
            .mode
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let changed = *m != mode;
        *m = mode;
        changed
    }

    /// The up members now. Every spawn reads them several times (owner, candidates, probes,
    /// backup), so they are built once per change of the membership table, not walked on
    /// every read. Every change of the table bumps its version (see the module doc); the
    /// version is read before the table, so a view built while a change lands is rebuilt at
    /// the next read.
    pub(crate) fn up_view(&self) -> Arc<UpView> {
        let version = *self.version.borrow();
        let lock = || {
            self.view
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        {
            let v = lock();
            if v.version == Some(version) {
                return v.clone();
            }
        }
        let fresh = Arc::new(UpView::build(version, &self.me, &self.peers));
        *lock() = fresh.clone();
        fresh
    }

    /// Up remote nodes, this one included if remote: the directory owners.
    pub(crate) fn up_remotes(&self) -> Vec<String> {
        self.up_view().remotes().map(str::to_owned).collect()
    }

    /// A peer's role.
    pub(crate) fn peer_role(&self, name: &str) -> Option<Role> {
        if name == self.me.name {
            return Some(self.me.role);
        }
        self.peers.get(name).map(|p| p.info.role)
    }

    /// A peer's state.
    pub(crate) fn peer_state(&self, name: &str) -> Option<PeerState> {
        self.peers.get(name).map(|p| {
            if p.left {
                PeerState::Down
            } else {
                p.detector.state()
            }
        })
    }

    /// The kinds a node registered.
    pub(crate) fn kinds_of(&self, name: &str) -> Vec<String> {
        if name == self.me.name {
            return self.me.kinds.clone();
        }
        self.peers
            .get(name)
            .map(|p| p.info.kinds.clone())
            .unwrap_or_default()
    }

    /// The current link to `peer` (its connection, and the task that drives it), waiting for
    /// one while the peer is not decided down.
    pub(crate) async fn link_of(&self, peer: &str) -> Option<(Connection, ConnTasks)> {
        let mut changes = self.version.subscribe();
        loop {
            changes.borrow_and_update();
            {
                let p = self.peers.get(peer)?;
                if let Some(l) = &p.link {
                    return Some((l.conn.clone(), l.tasks.clone()));
                }
                if p.left || p.detector.state() == PeerState::Down {
                    return None;
                }
            }
            if self.is_stopping() {
                return None;
            }
            if changes.changed().await.is_err() {
                return None;
            }
        }
    }

    fn is_stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    pub(crate) fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    pub(crate) fn faults_layer(&self) -> &FaultLayer {
        &self.faults
    }

    pub(crate) fn request_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    pub(crate) fn snapshot(&self) -> NodeStatus {
        self.status()
    }
}

/// The periodic work: heartbeats, detector ticks, dials, gossip.
async fn ticker(shared: Arc<Shared>) {
    let mut every = tokio::time::interval(shared.timing.heartbeat_interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_gossip = Instant::now();
    let mut last_tick = Instant::now();
    let mut stop = shared.shutdown.subscribe();
    // past this much time without running, the others may have fenced this node's side and be
    // about to decide it down (they wait `down_margin` longer): assume they did
    let lease = shared.timing.detector.suspect_after + shared.timing.sbr.stable_after;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = Instant::now();
        let gap = now.saturating_duration_since(last_tick);
        last_tick = now;
        if gap > lease && shared.me.role == Role::Remote {
            warn!(
                paused_ms = gap.as_millis() as u64,
                lease_ms = lease.as_millis() as u64,
                "this node did not run for longer than its lease (paused or starved): the \
                 others may have decided it down, so it fences before doing anything else"
            );
            *shared
                .self_fence
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some(shared.fences_begun.load(Ordering::SeqCst));
        }
        send_heartbeats(&shared);
        let mut changed = false;
        let mut dials = Vec::new();
        let mut lost = Vec::new();
        for mut p in shared.peers.iter_mut() {
            if let Some(t) = p.detector.tick(now) {
                shared.log_transition(&p.info.name, t);
                changed = true;
                if matches!(t.to, PeerState::Unreachable | PeerState::Down) {
                    lost.push(p.info.name.clone());
                }
            }
            if p.left || p.pending_dial {
                continue;
            }
            let silent_since = if p.link.is_some() && p.detector.is_silent(now) {
                Some(p.detector.last_heard() + shared.timing.detector.suspect_after)
            } else {
                None
            };
            let trouble = p
                .unlinked_since
                .or(silent_since)
                .map(|t| now.saturating_duration_since(t));
            let since_dial = p.last_dial_end.map(|t| now.saturating_duration_since(t));
            if link::dial_due(
                &shared.timing.dial,
                p.i_am_designated,
                trouble,
                since_dial,
                p.failures,
            ) {
                p.pending_dial = true;
                dials.push((
                    p.info.addr,
                    p.info.name.clone(),
                    p.link.is_some(),
                    p.dial_epoch,
                ));
            }
        }
        if changed {
            shared.bump();
        }
        for name in lost {
            shared.agents.peer_lost(&name);
        }
        resolve_split(&shared, now);
        if shared.me.role == Role::Remote {
            // after the split check: a node resuming from a pause is fenced before it serves
            shared.agents.renew_lease(lease);
        }
        for (addr, name, replace, epoch) in dials {
            tokio::spawn(links::dial_peer(shared.clone(), addr, name, replace, epoch));
        }
        dial_seeds(&shared, now);
        if now.duration_since(last_gossip) >= shared.timing.gossip_interval {
            last_gossip = now;
            gossip(&shared);
        }
    }
}

/// The split-brain resolver's turn (remote nodes), or the offline check (local nodes).
fn resolve_split(shared: &Arc<Shared>, now: Instant) {
    if shared.me.role == Role::Local {
        // collected first: no membership guard is held while logging or waking waiters
        let remotes: Vec<PeerState> = shared
            .peers
            .iter()
            .filter(|p| p.info.role == Role::Remote && !p.left)
            .map(|p| p.detector.state())
            .collect();
        // also offline before it met any remote node (a restart while cut off)
        let offline = !remotes.contains(&PeerState::Up);
        let mode = if offline {
            NodeMode::Offline
        } else {
            NodeMode::Up
        };
        if shared.set_mode(mode) {
            match mode {
                NodeMode::Offline => {
                    warn!("offline: no remote node is reachable; local agents keep running")
                }
                _ => info!("online again: a remote node is reachable"),
            }
            shared.bump();
        }
        return;
    }
    let mut members = BTreeSet::from([shared.me.name.clone()]);
    let mut reachable = members.clone();
    for p in shared.peers.iter() {
        if p.info.role != Role::Remote || p.left || p.detector.state() == PeerState::Down {
            continue;
        }
        members.insert(p.info.name.clone());
        // a peer that cannot hear this node is not on its side, even if this node hears it
        // (a one-way cut): so a node nobody hears fences like any minority
        if p.detector.state() == PeerState::Up && !p.reports_unreachable.contains(&shared.me.name) {
            reachable.insert(p.info.name.clone());
        }
    }
    let action = shared
        .sbr
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .observe(now, &members, &reachable);
    let sbr_fenced = shared
        .sbr
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .fenced();
    match action {
        Action::None | Action::Unfence => {}
        Action::Fence => {
            let unreachable: Vec<&String> = members.difference(&reachable).collect();
            warn!(
                ?unreachable,
                "this node is on the losing side of a split (keep-majority over remote nodes)"
            );
        }
        Action::Down(names) => down_peers(shared, names, now),
    }
    let told: Vec<String> = shared
        .peers
        .iter()
        .filter(|p| p.says_im_down && p.detector.state() == PeerState::Up)
        .map(|p| p.info.name.clone())
        .collect();
    let self_fence = {
        let mut sf = shared
            .self_fence
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let done = shared.fences_done.load(Ordering::SeqCst);
        if sf.is_some_and(|at| done > at) && reachable == members {
            info!("the fence after a pause is done and every remote member is reachable");
            *sf = None;
        }
        sf.is_some()
    };
    let want = sbr_fenced || self_fence || !told.is_empty();
    let fenced = shared.mode() == NodeMode::Fenced;
    let in_progress =
        shared.fences_begun.load(Ordering::SeqCst) > shared.fences_done.load(Ordering::SeqCst);
    if want && !fenced {
        if !told.is_empty() {
            warn!(by = ?told, "this node was decided down by the majority: fencing before it rejoins");
        }
        warn!(
            "fenced: stopping the agents hosted here; no activation or claim until the fence lifts"
        );
        shared.set_mode(NodeMode::Fenced);
        shared.agents.set_fenced(true);
        shared.fences_begun.fetch_add(1, Ordering::SeqCst);
        shared.bump();
        let agents = shared.agents.clone();
        let done = shared.fences_done.clone();
        tokio::spawn(async move {
            agents.fence().await;
            done.fetch_add(1, Ordering::SeqCst);
        });
    } else if !want && fenced && !in_progress {
        info!("fence lifted: every remote member is reachable again and none holds this node down");
        shared.set_mode(NodeMode::Up);
        shared.agents.set_fenced(false);
        shared.bump();
    }
}

/// The resolver decided `names` down (this side holds the majority): they stay down, and
/// their requests are refused, until they report a fence; their agents fail over.
fn down_peers(shared: &Arc<Shared>, names: Vec<String>, now: Instant) {
    let mut downed = Vec::new();
    for name in names {
        // what the candidate itself last reported (stale if it went silent: then it hears
        // everyone, which only makes a veto likelier)
        let its_reports = shared
            .peers
            .get(&name)
            .map(|p| p.reports_unreachable.clone())
            .unwrap_or_default();
        let seen_by: Vec<String> = shared
            .peers
            .iter()
            .filter(|p| {
                p.info.role == Role::Remote
                    && p.info.name != name
                    && !p.left
                    && p.detector.state() == PeerState::Up
                    && !p.reports_unreachable.contains(&name)
                    && !its_reports.contains(&p.info.name)
            })
            .map(|p| p.info.name.clone())
            .collect();
        if !seen_by.is_empty() {
            // indirectly connected: cut from this node, not from the others on its side
            debug!(peer = %name, ?seen_by, "not decided down: members on this side still see it");
            continue;
        }
        if let Some(mut p) = shared.peers.get_mut(&name) {
            if let Some(t) = p.detector.decide_down(now) {
                p.down_at_fences = Some((p.fences_seen, p.fenced_seen));
                shared.log_transition(&name, t);
                downed.push(name.clone());
            }
        }
    }
    if downed.is_empty() {
        return;
    }
    warn!(
        ?downed,
        "split-brain resolver: decided down (this side holds the majority)"
    );
    shared.bump();
    for name in downed {
        shared.agents.set_quarantined(&name, true);
        shared.agents.peer_lost(&name);
    }
    shared.agents.request_reconcile();
}

fn send_heartbeats(shared: &Shared) {
    let seq = shared.hb_seq.fetch_add(1, Ordering::Relaxed);
    let encode = |down: bool, unreachable: &[String]| {
        let hb = wire::Heartbeat {
            incarnation: shared.me.incarnation,
            seq,
            fences: shared.fences_done.load(Ordering::SeqCst),
            fenced: shared.mode() == NodeMode::Fenced,
            down,
            unreachable: unreachable.to_vec(),
        };
        // invariant: a struct of integers and a flag always encodes
        bytes::Bytes::from(tether_actors::codec::encode(&hb).expect("heartbeat encodes"))
    };
    let unreachable: Vec<String> = shared
        .peers
        .iter()
        .filter(|p| {
            p.info.role == Role::Remote
                && !p.left
                && matches!(p.detector.state(), PeerState::Unreachable | PeerState::Down)
        })
        .map(|p| p.info.name.clone())
        .collect();
    let (up, down) = (encode(false, &unreachable), encode(true, &unreachable));
    for p in shared.peers.iter() {
        if let Some(l) = &p.link {
            let b = if p.down_at_fences.is_some() {
                &down
            } else {
                &up
            };
            // a full datagram buffer or a dead connection is loss, which the detector measures
            let _ = l.conn.send_datagram(b.clone());
        }
    }
}

fn gossip(shared: &Shared) {
    let members = shared.members();
    for p in shared.peers.iter() {
        if let Some(l) = &p.link {
            // a full queue means a stalled link; the next gossip will carry the same news
            let _ = l.tx.try_send(PeerMsg::Gossip {
                members: members.clone(),
            });
        }
    }
}

fn dial_seeds(shared: &Arc<Shared>, now: Instant) {
    // once the node at a seed address is a known member, the peer dial logic owns it
    let known: Vec<SocketAddr> = shared.peers.iter().map(|p| p.info.addr).collect();
    let mut seeds = shared.seeds.lock().expect("seeds lock");
    for s in seeds.iter_mut() {
        if s.pending || known.contains(&s.addr) {
            continue;
        }
        let since = s.last_end.map(|t| now.saturating_duration_since(t));
        if link::dial_due(
            &shared.timing.dial,
            true,
            Some(Duration::MAX),
            since,
            s.failures,
        ) {
            s.pending = true;
            tokio::spawn(links::dial_seed(shared.clone(), s.addr));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, role: Role, kinds: &[&str]) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            role,
            addr: "127.0.0.1:1".parse().unwrap(),
            incarnation: 1,
            kinds: kinds.iter().map(|k| (*k).to_owned()).collect(),
        }
    }

    fn sorted<'a>(it: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
        let mut v: Vec<&str> = it.collect();
        v.sort_unstable();
        v
    }

    /// The view holds the up members only (not joining, not left), this node included.
    #[test]
    fn the_up_view_holds_up_members_and_this_node() {
        let me = info("r0", Role::Remote, &["b"]);
        let now = Instant::now();
        let peers = DashMap::new();
        for (i, up, left) in [
            (info("r1", Role::Remote, &["a"]), true, false),
            (info("l1", Role::Local, &["a", "b"]), true, false),
            (info("r2", Role::Remote, &["a", "b"]), true, true),
            (info("r3", Role::Remote, &["b"]), false, false),
        ] {
            let mut p = Peer::new(&me, i, DetectorConfig::default(), now);
            if up {
                assert!(p.detector.heartbeat(1, now).is_some(), "joining -> up");
            }
            p.left = left;
            peers.insert(p.info.name.clone(), p);
        }
        let view = UpView::build(7, &me, &peers);
        assert_eq!(view.version, Some(7));
        assert_eq!(sorted(view.remotes()), ["r0", "r1"]);
        let with_a: Vec<(&str, bool)> = {
            let mut v: Vec<_> = view.members("a").map(|(n, _, has)| (n, has)).collect();
            v.sort_unstable();
            v
        };
        assert_eq!(with_a, [("l1", true), ("r0", false), ("r1", true)]);
        assert_eq!(
            sorted(view.peers_with_kind("b")),
            ["l1"],
            "this node is not a peer"
        );
        assert_eq!(sorted(view.peers_with_kind("a")), ["l1", "r1"]);
    }
}
