//! What a node needs to start: [`NodeConfig`] and its timers ([`Timing`]), and why it may not
//! ([`NodeError`]).

use std::net::SocketAddr;
use std::time::Duration;

use tether_actors::Kinds;

use crate::identity::{NameError, Role};
use crate::membership::detector::DetectorConfig;
use crate::membership::link::DialConfig;
use crate::net::certs::{CertDir, CertError};
use crate::net::statedir::NodeDir;
use crate::net::transport::{QuicTiming, TransportError};
use crate::role::SbrConfig;

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
            heartbeat_interval: Duration::from_millis(100),
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
    /// Capabilities it offers, matched against agents' `needs` labels
    /// ([`crate::identity::default_caps`] unless set).
    pub caps: Vec<String>,
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
            caps: crate::identity::default_caps(role),
            root_intensity: tether_supervision::Intensity::node_root(),
            outbox_max: DEFAULT_OUTBOX_MAX,
        })
    }
}

/// Default bound of a local node's outbox.
pub const DEFAULT_OUTBOX_MAX: usize = 10_000;

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
    /// The checkpoint store cannot be opened.
    #[error("checkpoint store: {0}")]
    Checkpoints(#[from] crate::durable::StoreError),
    /// The node's supervision did not start.
    #[error(transparent)]
    Supervision(#[from] tether_supervision::SupervisionError),
    /// The configuration is incomplete or inconsistent; the text says what to give.
    #[error("{0}")]
    Config(String),
    /// The node stopped while something waited for it.
    #[error("the node stopped")]
    Stopped,
    /// A wait on the node ran out; the text says what it saw.
    #[error("{0}")]
    Timeout(String),
    /// The node's role could not start (a local node's outbox cannot be read, say).
    #[error("{0}")]
    Role(String),
}
