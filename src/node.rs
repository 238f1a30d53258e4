//! [`Node`]: a tether node embedded in a program, built with [`Node::builder`].
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use tether::prelude::*;
//! use tether::actors::builtin::{Counter, CounterMsg};
//!
//! let node = Node::builder("app")
//!     .role(Role::Local)
//!     .state_dir(".tether")                  // CA, certificates, node state
//!     .seed("127.0.0.1:7000".parse()?)        // a node of the cluster to join through
//!     .kinds(Kinds::builtin())
//!     .start()
//!     .await?;
//! let counter = node.spawn::<Counter>("c", None).on("r1").await?;
//! counter.tell(CounterMsg::Inc)?;
//! let n = counter.ask(CounterMsg::Get, Duration::from_secs(2)).await?;
//! # let _ = n;
//! # Ok(()) }
//! ```

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use tether_actors::{Agent, AgentError, AgentId, AgentRef, Durability, Kinds, Placement};
use tether_cluster::migration::{DrainReport, MoveReport};
use tether_cluster::net::certs::CertDir;
use tether_cluster::net::statedir::NodeDir;
use tether_cluster::{
    NodeConfig, NodeError, NodeInfo, NodeStatus, Role, SpawnOptions, Target, Timing,
};
use tether_supervision::tree::NodeTree;
use tether_supervision::{AgentPolicy, GroupSpec, Intensity, SupervisionError};

/// A running tether node. Cheap to clone; [`Node::shutdown`] stops it.
#[derive(Clone, Debug)]
pub struct Node(tether_cluster::Node);

impl Node {
    /// Moves agent `id` to node `to`, with its state and its unhandled messages, from
    /// whichever node runs it (see `tether_cluster::migration`).
    ///
    /// # Errors
    /// [`AgentError::NotMoved`] with why (local-only, in a supervisor group, a handler that did
    /// not reach a message boundary, the target or the directory refused), an unreachable
    /// target, a kind it lacks, a placement that forbids it, an unknown agent. The agent keeps
    /// serving where it was unless the move succeeded.
    pub async fn migrate(&self, id: &AgentId, to: &str) -> Result<MoveReport, AgentError> {
        self.0.migrate(id, to).await
    }

    /// Moves every agent off this node (local-only ones stay), after it stops taking new
    /// activations, so that it can be stopped without loss.
    pub async fn drain(&self) -> DrainReport {
        self.0.drain().await
    }

    /// A node named `name` (its certificate's DNS name: `[a-z0-9-]`), to configure and start.
    pub fn builder(name: &str) -> NodeBuilder {
        NodeBuilder {
            name: name.to_owned(),
            role: Role::Remote,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            seeds: Vec::new(),
            state_dir: None,
            certs: None,
            node_dir: None,
            kinds: Kinds::new(),
            caps: None,
            timing: Timing::default(),
            outbox_max: tether_cluster::node::DEFAULT_OUTBOX_MAX,
            root_intensity: Intensity::node_root(),
            fault_seed: 1,
        }
    }

    /// This node as the cluster sees it (name, role, address, incarnation, kinds).
    pub fn info(&self) -> &NodeInfo {
        self.0.info()
    }

    /// How this node sees the cluster now.
    pub fn status(&self) -> NodeStatus {
        self.0.status()
    }

    /// A handle on agent `id` of kind `A`, wherever it runs (it is found at the first send).
    pub fn agent_ref<A: Agent>(&self, id: AgentId) -> AgentRef<A> {
        self.0.agent_ref(id)
    }

    /// Get-or-spawn agent `key` of kind `A`: on this node unless the returned [`Spawn`] says
    /// otherwise (`.on(node)`, `.placed()`), then `.await` it.
    pub fn spawn<A: Agent>(&self, key: &str, args: A::Args) -> Spawn<'_, A> {
        Spawn {
            node: self,
            key: key.to_owned(),
            args,
            opts: SpawnOptions::default(),
            target: Target::Here,
        }
    }

    /// Waits until this node knows at least `count` peers and sees all of them up.
    ///
    /// # Errors
    /// [`NodeError::Timeout`] (with what the node sees) past `timeout`.
    pub async fn wait_peers_up(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Result<NodeStatus, NodeError> {
        self.0.wait_peers_up(count, timeout).await
    }

    /// Creates a supervisor group on this node (spawn into it with `.group(name)`).
    ///
    /// # Errors
    /// [`SupervisionError::GroupExists`], or the root supervisor does not answer.
    pub async fn add_group(&self, spec: GroupSpec) -> Result<(), SupervisionError> {
        self.0.add_group(spec).await
    }

    /// This node's supervision tree.
    ///
    /// # Errors
    /// [`SupervisionError::Unavailable`] if the root supervisor does not answer.
    pub async fn tree(&self) -> Result<NodeTree, SupervisionError> {
        self.0.tree().await
    }

    /// Resolves when a shutdown was asked for (by [`Node::shutdown`] or `tether down`).
    pub async fn shutdown_requested(&self) {
        self.0.shutdown_requested().await
    }

    /// Stops the node: tells its peers it leaves, stops its agents, closes its endpoint.
    pub async fn shutdown(&self) {
        self.0.shutdown().await
    }

    /// The cluster-level node, for tools that measure or drive its internals (the CLI, the
    /// bench).
    #[doc(hidden)]
    pub fn inner(&self) -> &tether_cluster::Node {
        &self.0
    }
}

/// How to start a [`Node`] (see [`Node::builder`]).
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `.start().await`"]
pub struct NodeBuilder {
    name: String,
    role: Role,
    listen: SocketAddr,
    advertise: Option<SocketAddr>,
    seeds: Vec<SocketAddr>,
    state_dir: Option<PathBuf>,
    certs: Option<PathBuf>,
    node_dir: Option<PathBuf>,
    kinds: Kinds,
    caps: Option<Vec<String>>,
    timing: Timing,
    outbox_max: usize,
    root_intensity: Intensity,
    fault_seed: u64,
}

impl NodeBuilder {
    /// `Role::Remote` (the default: a backend node) or `Role::Local` (a user's device).
    pub fn role(mut self, role: Role) -> Self {
        self.role = role;
        self
    }

    /// The UDP address to listen on (default: 127.0.0.1 on a port the OS picks).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// The address peers dial, when `listen` is a wildcard such as `0.0.0.0:7000`.
    pub fn advertise(mut self, addr: SocketAddr) -> Self {
        self.advertise = Some(addr);
        self
    }

    /// A node of the cluster to join through (repeat for several).
    pub fn seed(mut self, addr: SocketAddr) -> Self {
        self.seeds.push(addr);
        self
    }

    /// Nodes of the cluster to join through.
    pub fn seeds(mut self, addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.seeds.extend(addrs);
        self
    }

    /// Where the node keeps everything, as `tether up` lays it out: the cluster CA and
    /// certificates in `dir` (a dev CA and this node's certificate are made if missing), the
    /// node's own state in `dir/nodes/NAME`.
    pub fn state_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.state_dir = Some(dir.as_ref().to_owned());
        self
    }

    /// For a real deployment: the directory with `ca.pem` and `nodes/NAME/{cert,key}.pem`
    /// (made with `tether certs init`; nothing is made here).
    pub fn certs(mut self, dir: impl AsRef<Path>) -> Self {
        self.certs = Some(dir.as_ref().to_owned());
        self
    }

    /// For a real deployment: the node's own state directory (incarnation, secret, outbox).
    pub fn node_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.node_dir = Some(dir.as_ref().to_owned());
        self
    }

    /// The agent kinds this node hosts (what it and other nodes may spawn on it).
    pub fn kinds(mut self, kinds: Kinds) -> Self {
        self.kinds = kinds;
        self
    }

    /// The node's timers (heartbeats, failure detection, split brain).
    pub fn timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    /// The capabilities this node offers, matched against agents' `needs` labels (default:
    /// `fs` on a local node, none on a remote one). Each is 1 to 32 of `a-z`, `0-9`, `_`,
    /// `.`, `-`; starting the node says which is not.
    pub fn caps<S: Into<String>>(mut self, caps: impl IntoIterator<Item = S>) -> Self {
        self.caps = Some(caps.into_iter().map(Into::into).collect());
        self
    }

    /// A local node's outbox bound: most tells kept for agents it cannot reach.
    pub fn outbox_max(mut self, max: usize) -> Self {
        self.outbox_max = max;
        self
    }

    /// The budget of the node's root supervisor (past it every agent of the node stops).
    pub fn root_intensity(mut self, intensity: Intensity) -> Self {
        self.root_intensity = intensity;
        self
    }

    /// The seed of the fault layer's loss and jitter (for replaying a faulty run).
    pub fn fault_seed(mut self, seed: u64) -> Self {
        self.fault_seed = seed;
        self
    }

    /// The configuration this builder makes.
    ///
    /// # Errors
    /// [`NodeError::Config`] without a state directory (or certificates and a node directory);
    /// certificate errors.
    pub fn config(self) -> Result<NodeConfig, NodeError> {
        let (certs, node_dir) =
            match (&self.state_dir, self.certs, self.node_dir) {
                (_, Some(c), Some(n)) => (CertDir::new(c), NodeDir::new(n)),
                (Some(dir), certs, node_dir) => {
                    let certs = match certs {
                        Some(c) => CertDir::new(c),
                        None => {
                            let c = CertDir::new(dir);
                            c.ensure_ca()?;
                            c.ensure_node(&self.name)?;
                            c
                        }
                    };
                    let node_dir = node_dir.unwrap_or_else(|| dir.join("nodes").join(&self.name));
                    (certs, NodeDir::new(node_dir))
                }
                (None, _, _) => return Err(NodeError::Config(
                    "give the node a state directory (`.state_dir(dir)`), or certificates and a \
                     node directory (`.certs(dir).node_dir(dir)`)"
                        .into(),
                )),
            };
        for c in self.caps.iter().flatten() {
            tether_cluster::identity::validate_cap(c).map_err(NodeError::Config)?;
        }
        Ok(NodeConfig {
            name: self.name,
            role: self.role,
            listen: self.listen,
            advertise: self.advertise,
            seeds: self.seeds,
            certs,
            node_dir,
            timing: self.timing,
            fault_seed: self.fault_seed,
            kinds: self.kinds,
            caps: self
                .caps
                .unwrap_or_else(|| tether_cluster::identity::default_caps(self.role)),
            root_intensity: self.root_intensity,
            outbox_max: self.outbox_max,
        })
    }

    /// Starts the node; returns once its endpoint listens (joining goes on in the background;
    /// [`Node::wait_peers_up`] waits for it).
    ///
    /// # Errors
    /// [`NodeError`]: a bad name, missing or wrong certificates, a busy address, an unreadable
    /// state directory.
    pub async fn start(self) -> Result<Node, NodeError> {
        start(self.config()?).await
    }
}

/// Starts a node from its configuration, with its role's duties.
///
/// # Errors
/// As [`NodeBuilder::start`].
pub async fn start(cfg: NodeConfig) -> Result<Node, NodeError> {
    let node = match cfg.role {
        Role::Local => tether_node_local::start(cfg).await?,
        Role::Remote => tether_node_remote::start(cfg).await?,
    };
    Ok(Node(node))
}

/// A spawn to configure, then `.await` (see [`Node::spawn`]).
#[must_use = "a spawn does nothing until it is awaited"]
pub struct Spawn<'a, A: Agent> {
    node: &'a Node,
    key: String,
    args: A::Args,
    opts: SpawnOptions,
    target: Target,
}

impl<A: Agent> Spawn<'_, A> {
    /// On the named node.
    pub fn on(mut self, node: &str) -> Self {
        self.target = Target::On(node.to_owned());
        self
    }

    /// Where the placement labels choose.
    pub fn placed(mut self) -> Self {
        self.target = Target::Placed;
        self
    }

    /// With these labels instead of the kind's.
    pub fn labels(mut self, placement: Placement) -> Self {
        self.opts.placement = Some(placement);
        self
    }

    /// With this restart policy and these timeouts.
    pub fn policy(mut self, policy: AgentPolicy) -> Self {
        self.opts.policy = policy;
        self
    }

    /// Under this supervisor group of the target node.
    pub fn group(mut self, group: &str) -> Self {
        self.opts.group = Some(group.to_owned());
        self
    }

    /// With this durability (default [`Durability::None`]; see [`Durability`] for the modes).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.opts.durability = durability;
        self
    }
}

impl<'a, A: Agent> IntoFuture for Spawn<'a, A> {
    type Output = Result<AgentRef<A>, AgentError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            self.node
                .0
                .spawn_with::<A>(&self.key, self.args, self.opts, self.target)
                .await
        })
    }
}
