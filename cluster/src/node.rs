//! A running node: its endpoint, its cluster core and the tasks that feed it.
//!
//! ```text
//! Node
//!  ├─ driver ── the cluster core (membership, directory, the role's duties), sans-IO, under a
//!  │            lock; its outputs carried out (driver.rs)
//!  ├─ ticker (every heartbeat_interval) ── core.tick: detectors, the role's decisions,
//!  │            deadlines, heartbeats; dials the peers that need it; gossips (ticker.rs)
//!  ├─ accept loop ── per incoming connection: operator (control plane) or peer hello
//!  ├─ per link: link-stream reader + writer, datagram reader (heartbeats ─▶ core), stream
//!  │            acceptor (agent streams ─▶ Inbound, ractor sessions) (connect.rs)
//!  ├─ data plane: Router (sends), Inbound (a peer's streams), PeerIo (queues and writers)
//!  └─ ractor_cluster NodeServer (its own supervision tree; its sessions run on QUIC streams)
//! ```
//!
//! No lock is held across an `.await`: a handler takes the core's lock, feeds it, takes its
//! outputs, drops the lock, then does I/O.

mod config;
mod connect;
mod driver;
mod migrate;
mod ops;
mod ractor_bridge;
mod replicas;
mod status;
mod ticker;

pub use config::{NodeConfig, NodeError, Timing, DEFAULT_OUTBOX_MAX};
pub use ractor_bridge::cookie as ractor_cookie;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use quinn::Endpoint;
use tether_actors::{Agent, AgentError, AgentId, AgentRef, Body, Host};
use tether_supervision::NodeSupervisor;
use tokio::sync::watch;
use tracing::info;

use crate::agents::inbound::Inbound;
use crate::agents::peer_io::PeerIo;
use crate::agents::routes::Routes;
use crate::agents::{Counters, Router, SpawnOptions, Target};
use crate::control::NodeStatus;
use crate::core::ClusterCore;
use crate::durable::store::RedbStore;
use crate::identity::{designated_dialer, validate_name, NodeInfo};
use crate::membership::detector::PeerState;
use crate::net::fault::FaultLayer;
use crate::net::links::Links;
use crate::net::statedir::{NodeDir, NodeRecord};
use crate::net::transport::{self, TransportError};
use crate::net::wire::close;
use crate::role::RoleCore;
use driver::{Driver, Parts};

/// The checkpoint store's file in the node's state directory.
pub const CHECKPOINTS_FILE: &str = "checkpoints.redb";

/// How a node dials one peer.
#[derive(Debug)]
struct DialState {
    i_am_designated: bool,
    pending: bool,
    /// Bumped when a newer life of the peer is learned: dials started before are stale.
    epoch: u64,
    last_end: Option<Instant>,
    failures: u32,
    /// Since when the pair has had no link (None while linked).
    unlinked_since: Option<Instant>,
    /// The ractor_cluster session on the current link is authenticated.
    session: bool,
}

/// A seed address: dialed until a link exists to whatever node answers there.
#[derive(Debug)]
struct Seed {
    addr: SocketAddr,
    pending: bool,
    last_end: Option<Instant>,
    failures: u32,
}

impl Seed {
    /// A seed not dialled yet.
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            pending: false,
            last_end: None,
            failures: 0,
        }
    }
}

/// What a node's tasks share.
pub(crate) struct Shared {
    me: NodeInfo,
    timing: Timing,
    endpoint: Endpoint,
    client_cfg: quinn::ClientConfig,
    faults: Arc<FaultLayer>,
    links: Arc<Links>,
    dials: DashMap<String, DialState>,
    seeds: Mutex<Vec<Seed>>,
    shutdown: watch::Sender<bool>,
    /// The shutdown is part of stopping the whole cluster.
    cluster_down: std::sync::atomic::AtomicBool,
    ractor: ractor::ActorRef<ractor_cluster::NodeServerMessage>,
    started: Instant,
    node_dir: NodeDir,
    driver: Arc<Driver>,
    router: Arc<Router>,
    inbound: Arc<Inbound>,
    sup: Arc<NodeSupervisor>,
    host: Arc<Host>,
    counters: Arc<Counters>,
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
    /// Starts a node with `role`'s duties: binds its endpoint, starts its tasks, and begins
    /// joining its seeds. Returns once the endpoint listens; joining goes on in the
    /// background. (`tether-node-local` and `tether-node-remote` call this with their role.)
    ///
    /// # Errors
    /// [`NodeError`] if the name, certificates, state files or socket are unusable.
    pub async fn start_with(cfg: NodeConfig, role: Box<dyn RoleCore>) -> Result<Node, NodeError> {
        validate_name(&cfg.name)?;
        let (ca, id) = load_identity(&cfg)?;
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
        let addr = advertised(&cfg, &endpoint)?;
        let host = Host::new(&cfg.name, cfg.kinds.erased());
        let me = NodeInfo {
            name: cfg.name.clone(),
            role: cfg.role,
            addr,
            incarnation,
            kinds: host.kinds(),
            caps: cfg.caps.clone(),
        };
        let sup = Arc::new(NodeSupervisor::start(host.clone(), cfg.root_intensity).await?);
        let ractor = ractor_bridge::start_node_server(&me, &ca)
            .await
            .map_err(NodeError::Ractor)?;
        let (shutdown, _) = watch::channel(false);
        let links = Arc::new(Links::new(shutdown.subscribe()));
        let (routes, counters) = (Arc::new(Routes::default()), Arc::new(Counters::default()));
        let io = PeerIo::new(links.clone(), routes.clone(), counters.clone());
        let store = RedbStore::open(&cfg.node_dir.path().join(CHECKPOINTS_FILE))?;
        let core = ClusterCore::new(me.clone(), cfg.timing.detector, role, host.clone());
        let driver = Driver::new(
            core,
            Parts {
                io: io.clone(),
                routes: routes.clone(),
                links: links.clone(),
                host: host.clone(),
                sup: sup.clone(),
                store: Box::new(store),
            },
        );
        let router = Router::new(
            &me.name,
            incarnation,
            host.clone(),
            driver.clone(),
            (io, routes, counters.clone()),
        );
        let weak: std::sync::Weak<dyn tether_actors::Router> = Arc::downgrade(&router) as _;
        host.set_router(weak);
        let inbound = Inbound::new(host.clone(), driver.clone(), counters.clone());
        let seeds = cfg
            .seeds
            .iter()
            .filter(|a| **a != addr)
            .map(|&addr| Seed::new(addr))
            .collect();
        let shared = Arc::new(Shared {
            me: me.clone(),
            timing: cfg.timing,
            endpoint,
            client_cfg,
            faults,
            links,
            dials: DashMap::with_shard_amount(2),
            seeds: Mutex::new(seeds),
            shutdown,
            cluster_down: std::sync::atomic::AtomicBool::new(false),
            ractor,
            started: Instant::now(),
            node_dir: cfg.node_dir.clone(),
            driver,
            router,
            inbound,
            sup,
            host,
            counters,
        });
        ractor_bridge::subscribe(&shared);
        tokio::spawn(connect::accept_loop(shared.clone()));
        tokio::spawn(ticker::run(shared.clone()));
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

    /// The node's send path (for the CLI's tells and asks, and the bench).
    pub fn router(&self) -> &Arc<Router> {
        &self.shared.router
    }

    /// The agents this node hosts.
    pub fn host(&self) -> &Arc<Host> {
        &self.shared.host
    }

    /// The node's supervision.
    pub fn supervisor(&self) -> &NodeSupervisor {
        &self.shared.sup
    }

    /// A handle on agent `id` of kind `A`, wherever it runs.
    pub fn agent_ref<A: Agent>(&self, id: AgentId) -> AgentRef<A> {
        AgentRef::new(id, self.shared.router.clone())
    }

    /// Get-or-spawn agent `key` of kind `A` with explicit options (labels, restart policy,
    /// supervisor group) on `target`.
    ///
    /// # Errors
    /// [`AgentError`] (see [`Router::spawn`]).
    pub async fn spawn_with<A: Agent>(
        &self,
        key: &str,
        args: A::Args,
        opts: SpawnOptions,
        target: Target,
    ) -> Result<AgentRef<A>, AgentError> {
        let id = AgentId::new(A::KIND, key).map_err(|e| AgentError::BadId(e.to_string()))?;
        let args = Body::encode(args, Some(tether_actors::Encoding::MsgPack))
            .map_err(AgentError::Internal)?;
        self.shared
            .router
            .spawn(id.clone(), args, opts, target)
            .await?;
        Ok(self.agent_ref(id))
    }

    /// Get-or-spawn agent `key` of kind `A` on this node.
    ///
    /// # Errors
    /// As [`Node::spawn_with`].
    pub async fn spawn<A: Agent>(
        &self,
        key: &str,
        args: A::Args,
    ) -> Result<AgentRef<A>, AgentError> {
        self.spawn_with::<A>(key, args, SpawnOptions::default(), Target::Here)
            .await
    }

    /// Waits until this node knows at least `count` peers and sees all of them `up`.
    ///
    /// # Errors
    /// [`NodeError::Timeout`] with the current view if that does not happen within `timeout`.
    pub async fn wait_peers_up(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Result<NodeStatus, NodeError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.shared.driver.subscribe();
        loop {
            changes.borrow_and_update();
            let st = self.status();
            if crate::control::wait_satisfied(&st, &[], &[PeerState::Up], Some(count), None) {
                return Ok(st);
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() {
                    return Err(NodeError::Stopped);
                },
                _ = tokio::time::sleep_until(deadline) => {
                    let seen: Vec<String> = st.peers.iter().map(|p| format!("{}={}", p.name, p.state)).collect();
                    return Err(NodeError::Timeout(format!("after {timeout:?} {} sees: {}", st.name, seen.join(", "))));
                }
            }
        }
    }

    /// Creates a supervisor group on this node.
    ///
    /// # Errors
    /// [`tether_supervision::SupervisionError`] if the name is taken.
    pub async fn add_group(
        &self,
        spec: tether_supervision::GroupSpec,
    ) -> Result<(), tether_supervision::SupervisionError> {
        self.shared.sup.add_group(spec).await
    }

    /// This node's supervision tree.
    ///
    /// # Errors
    /// [`tether_supervision::SupervisionError`] if the root supervisor does not answer.
    pub async fn tree(
        &self,
    ) -> Result<tether_supervision::tree::NodeTree, tether_supervision::SupervisionError> {
        self.shared.sup.snapshot().await
    }

    /// Moves agent `id` to node `to`, with its state and its unhandled messages (see
    /// [`crate::migration`]), from whichever node runs it.
    ///
    /// # Errors
    /// [`AgentError::NotMoved`] saying why (local-only, in a supervisor group, a handler that
    /// did not reach a message boundary, the target refused, the directory refused),
    /// [`AgentError::NodeUnreachable`] for a target that is not up, [`AgentError::UnknownKind`]
    /// for one without the kind, [`AgentError::Placement`], [`AgentError::NotFound`]. The
    /// agent keeps serving where it was unless the move succeeded.
    pub async fn migrate(
        &self,
        id: &AgentId,
        to: &str,
    ) -> Result<crate::migration::MoveReport, AgentError> {
        Self::migrate_shared(&self.shared, id, Some(to)).await
    }

    /// Moves every agent off this node (local-only agents stay, and agents in supervisor
    /// groups: they are reported with why), after it stops taking new activations, so that
    /// it can be stopped without loss. Each goes to a node its placement allows.
    pub async fn drain(&self) -> crate::migration::DrainReport {
        self.shared.driver.set_draining(true);
        let mut report = crate::migration::DrainReport::default();
        for a in self.shared.host.list() {
            if a.status != "running" {
                report
                    .stayed
                    .push((a.id.to_string(), format!("it is {}", a.status)));
                continue;
            }
            match Self::migrate_shared(&self.shared, &a.id, None).await {
                Ok(m) => report.moved.push(m),
                Err(e) => report.stayed.push((a.id.to_string(), e.to_string())),
            }
        }
        report
    }

    pub(crate) async fn migrate_shared(
        shared: &Shared,
        id: &AgentId,
        to: Option<&str>,
    ) -> Result<crate::migration::MoveReport, AgentError> {
        let driver = &shared.driver;
        let here = shared.host.epoch_of(id).is_some()
            || shared.router.lookup(id).await?.node == shared.me.name;
        if here {
            let to = match to {
                Some(t) => t.to_owned(),
                None => driver.choose_target(id)?,
            };
            return driver.migrate(id.clone(), to).await;
        }
        let loc = shared.router.lookup(id).await?;
        let make = |req| crate::agents::protocol::Request::Migrate {
            req,
            id: id.clone(),
            to: to.map(str::to_owned),
        };
        match driver
            .io
            .request(&loc.node, make, crate::migration::MIGRATE_TIMEOUT)
            .await?
        {
            crate::agents::protocol::Answer::Moved(r) => Ok(r),
            other => Err(AgentError::Internal(format!(
                "unexpected answer to a migration: {other:?}"
            ))),
        }
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
        self.shared.sup.stop();
        self.shared.host.stop_all();
        let code = if self
            .shared
            .cluster_down
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            close::CLUSTER_DOWN
        } else {
            close::SHUTDOWN
        };
        self.shared
            .endpoint
            .close(code.into(), b"node shutting down");
        let _ =
            tokio::time::timeout(Duration::from_secs(1), self.shared.endpoint.wait_idle()).await;
        self.shared.ractor.stop(Some("node shutting down".into()));
        self.shared.node_dir.remove_record();
        info!(name = %self.shared.me.name, "node stopped");
    }
}

/// The address peers dial: the one given, or the one the endpoint is bound to.
fn advertised(cfg: &NodeConfig, endpoint: &Endpoint) -> Result<SocketAddr, NodeError> {
    let bound = endpoint.local_addr().map_err(|source| {
        NodeError::Transport(TransportError::Bind {
            addr: cfg.listen,
            source,
        })
    })?;
    match cfg.advertise {
        Some(a) => Ok(a),
        None if bound.ip().is_unspecified() => Err(NodeError::NeedAdvertise(bound)),
        None => Ok(bound),
    }
}

/// The cluster CA and this node's certificate, checked to be for its name.
fn load_identity(
    cfg: &NodeConfig,
) -> Result<
    (
        rustls_pki_types::CertificateDer<'static>,
        crate::net::certs::Identity,
    ),
    NodeError,
> {
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
    Ok((ca, id))
}

impl Shared {
    /// Learns of a member (from gossip or a handshake); a newer life of a peer makes its link
    /// and dials stale. Returns whether anything changed.
    fn learn(&self, info: NodeInfo) -> bool {
        use crate::membership::Learned;
        let name = info.name.clone();
        let learned = self.driver.with(|c, now| c.learn(info, now));
        let now = Instant::now();
        match learned {
            Learned::Unchanged => return false,
            Learned::New => {
                let role = self.driver.read(|c| c.members().role_of(&name));
                let me = (self.me.name.as_str(), self.me.role);
                let designated =
                    role.is_some_and(|r| designated_dialer(me, (&name, r)) == self.me.name);
                self.dials.entry(name.clone()).or_insert(DialState {
                    i_am_designated: designated,
                    pending: false,
                    epoch: 0,
                    last_end: None,
                    failures: 0,
                    unlinked_since: Some(now),
                    session: false,
                });
                info!(peer = %name, "learned of member");
            }
            Learned::Restarted(t) => {
                if let Some(t) = t {
                    info!(peer = %name, from = %t.from, to = %t.to, "peer restarted");
                }
                if let Some(old) = self.links.get(&name) {
                    self.links.remove_if(&name, old.conn.stable_id());
                    old.conn
                        .close(close::STALE.into(), b"newer incarnation known");
                }
                if let Some(mut d) = self.dials.get_mut(&name) {
                    // a dial in flight targets the old life; let the ticker dial the new one now
                    d.epoch += 1;
                    d.pending = false;
                    d.failures = 0;
                    d.last_end = None;
                    d.session = false;
                    d.unlinked_since.get_or_insert(now);
                }
            }
            Learned::Moved => {}
        }
        self.refresh_fault_addrs();
        if !matches!(learned, Learned::Moved) {
            // a new member or a new life of one: told to every peer at once, not at the next
            // periodic gossip, so a cluster forms (and learns of restarts) in round trips
            ticker::gossip(self);
        }
        true
    }

    fn refresh_fault_addrs(&self) {
        let addrs: Vec<SocketAddr> = self
            .driver
            .read(|c| c.members().peers().map(|m| m.info.addr).collect());
        self.faults.set_node_addrs(addrs);
    }
}
