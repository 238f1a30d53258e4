//! The operator's control plane: the CLI talks to each node over QUIC with the operator's
//! certificate (ALPN `tether-ctl/1`). One request per bidi stream, one response back.
//!
//! Fault rules never apply to these connections (see [`crate::net::fault`]), so a partitioned node
//! can always be inspected and healed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::Connection;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use tokio::time::timeout;
use tracing::{info, warn};

use tether_actors::{
    agent_ref, Activation, AgentError, AgentId, AgentInfo, Body, Contract, Placement, TraceContext,
};

use tether_supervision::tree::NodeTree;
use tether_supervision::{AgentPolicy, GroupSpec, Intensity, Strategy};

use crate::agents::{AgentCounters, OutboxCounters, Sent, SpawnOptions, Target};
use crate::detector::PeerState;
use crate::identity::Role;
use crate::net::certs::Identity;
use crate::net::fault::FaultRule;
use crate::net::tls::ANY_NODE_SNI;
use crate::net::transport;
use crate::net::wire::{self, WireError, MAX_CONTROL_FRAME};
use crate::node::Shared;

/// Longest wait a [`ControlRequest::WaitPeers`] may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(600);

/// A request from the operator.
// requests are few and short-lived: a large variant costs nothing worth boxing for
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlRequest {
    /// This node's view of the cluster.
    Status,
    /// Answer once every peer in `peers` (every known peer if empty) is in one of `states`, and
    /// at least `count` peers are known; or fail after `timeout_ms`.
    WaitPeers {
        /// Peers to watch; empty means all known peers.
        peers: Vec<String>,
        /// Accepted states.
        states: Vec<PeerState>,
        /// Minimum number of known peers.
        count: Option<usize>,
        /// Deadline in milliseconds.
        timeout_ms: u64,
        /// Also require this node to be in this mode (`up`, `fenced`, `offline`).
        #[serde(default)]
        mode: Option<NodeMode>,
    },
    /// Replace this node's fault rules tagged `tag` with `rules`.
    SetFaults {
        /// The tag (`partition`, `quality`).
        tag: String,
        /// The new rules.
        rules: Vec<FaultRule>,
    },
    /// Remove every fault rule of this node.
    ClearFaults,
    /// Stop the node cleanly.
    Shutdown,
    /// Get-or-spawn an agent (this node is the requester).
    Spawn {
        /// Kind.
        kind: String,
        /// Key.
        key: String,
        /// Spawn arguments, JSON text.
        args: String,
        /// Node to run on (None: where the placement labels choose).
        on: Option<String>,
        /// Labels overriding the kind's.
        placement: Option<Placement>,
        /// Restart policy and timeouts.
        #[serde(default)]
        policy: AgentPolicy,
        /// Supervisor group on the target node.
        #[serde(default)]
        group: Option<String>,
    },
    /// Create a supervisor group on this node.
    AddGroup {
        /// Its name.
        name: String,
        /// Its strategy.
        strategy: Strategy,
        /// Its budget.
        intensity: Intensity,
    },
    /// This node's supervision tree.
    Tree,
    /// Tell an agent a JSON message, `repeat` times, in order (this node is the sender).
    Tell {
        /// Target agent id (`kind/key`).
        id: String,
        /// The message, JSON text.
        json: String,
        /// How many times.
        repeat: u64,
    },
    /// Ask an agent a JSON message (this node is the sender).
    Ask {
        /// Target agent id.
        id: String,
        /// The message, JSON text.
        json: String,
        /// Deadline in milliseconds.
        timeout_ms: u64,
    },
    /// The agents this node hosts.
    Agents,
}

/// A node's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlResponse {
    /// The node's view.
    Status(NodeStatus),
    /// The rules now in force (or, for `ClearFaults`, the rules removed).
    Faults {
        /// The rules.
        rules: Vec<FaultRule>,
    },
    /// Done.
    Ok,
    /// An agent was spawned or found running.
    Spawned(Activation),
    /// Tells were sent (or kept in the outbox of a local node that cannot reach the agent).
    Told {
        /// How many.
        count: u64,
        /// How many of them wait in the outbox.
        #[serde(default)]
        queued: u64,
        /// Messages in the outbox after them.
        #[serde(default)]
        outbox_depth: u64,
        /// The trace they share.
        trace_id: String,
    },
    /// An ask's reply.
    Replied {
        /// The reply, JSON text.
        json: String,
        /// The trace of the ask.
        trace_id: String,
    },
    /// Hosted agents.
    Agents(Vec<AgentInfo>),
    /// A supervision tree.
    Tree(NodeTree),
    /// The request failed; the message says why.
    Error {
        /// What went wrong.
        message: String,
    },
}

/// One node's view of the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// QUIC endpoint address.
    pub addr: SocketAddr,
    /// OS process id.
    pub pid: u32,
    /// Incarnation of this run.
    pub incarnation: u64,
    /// Milliseconds since the node started.
    pub uptime_ms: u64,
    /// How this node sees each other member.
    pub peers: Vec<PeerStatus>,
    /// Fault rules in force on this node.
    pub faults: Vec<FaultRule>,
    /// Seed of the fault layer's random generator.
    pub fault_seed: u64,
    /// Datagrams the fault layer dropped so far.
    pub datagrams_dropped: u64,
    /// Datagrams the fault layer delayed so far.
    pub datagrams_delayed: u64,
    /// Agent kinds this node can host.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Agents hosted here.
    #[serde(default)]
    pub agents_hosted: u64,
    /// Agent runtime counters.
    pub agent_counters: AgentCounters,
    /// `up`, `fenced` (a remote node on the losing side of a split: its agents are stopped)
    /// or `offline` (a local node that reaches no remote node: its agents keep running).
    #[serde(default)]
    pub mode: NodeMode,
    /// A local node's outbox: tells waiting for agents it cannot reach (remote nodes: none).
    #[serde(default)]
    pub outbox: Option<OutboxCounters>,
}

/// A node's own standing in the cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeMode {
    /// Part of the cluster.
    #[default]
    Up,
    /// A remote node that found itself on the losing side of a split: it stopped its agents
    /// and refuses new ones until it sees every member again.
    Fenced,
    /// A local node that reaches no remote node.
    Offline,
}

impl std::str::FromStr for NodeMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "up" => Ok(NodeMode::Up),
            "fenced" => Ok(NodeMode::Fenced),
            "offline" => Ok(NodeMode::Offline),
            other => Err(format!(
                "unknown mode {other:?}: expected up, fenced or offline"
            )),
        }
    }
}

impl std::fmt::Display for NodeMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeMode::Up => "up",
            NodeMode::Fenced => "fenced",
            NodeMode::Offline => "offline",
        })
    }
}

/// How one node sees one peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Peer name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Its QUIC endpoint address.
    pub addr: SocketAddr,
    /// Its incarnation, as known here.
    pub incarnation: u64,
    /// up, unreachable, down or joining.
    pub state: PeerState,
    /// Smoothed round-trip time of the link, while up.
    pub rtt_ms: Option<f64>,
    /// Milliseconds in the current state.
    pub since_ms: u64,
    /// Milliseconds since the last heartbeat.
    pub last_heard_ms: u64,
    /// Number of state changes seen for this peer.
    pub changes: u64,
    /// A QUIC link is established.
    pub linked: bool,
    /// The ractor_cluster session on the link is authenticated.
    pub session: bool,
    /// The peer shut down cleanly.
    pub left: bool,
}

impl NodeStatus {
    /// The view of peer `name`, if known.
    pub fn peer(&self, name: &str) -> Option<&PeerStatus> {
        self.peers.iter().find(|p| p.name == name)
    }
}

/// Serves one operator connection until it closes.
pub(crate) async fn serve(shared: Arc<Shared>, conn: Connection) {
    loop {
        let Ok((mut send, mut recv)) = conn.accept_bi().await else {
            return;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let req = timeout(
                Duration::from_secs(10),
                wire::read_frame::<ControlRequest>(&mut recv, MAX_CONTROL_FRAME),
            )
            .await;
            let resp = match req {
                Ok(Ok(Some(req))) => handle(&shared, req).await,
                Ok(Ok(None)) => return,
                Ok(Err(e)) => ControlResponse::Error {
                    message: format!("bad request: {e}"),
                },
                Err(_) => ControlResponse::Error {
                    message: "no request within 10 s".into(),
                },
            };
            if wire::write_frame(&mut send, &resp).await.is_ok() {
                let _ = send.finish();
                // let the response reach the CLI before the stream is dropped
                let _ = timeout(Duration::from_secs(5), send.stopped()).await;
            }
        });
    }
}

async fn handle(shared: &Arc<Shared>, req: ControlRequest) -> ControlResponse {
    match req {
        ControlRequest::Status => ControlResponse::Status(shared.snapshot()),
        ControlRequest::WaitPeers {
            peers,
            states,
            count,
            timeout_ms,
            mode,
        } => wait_peers(shared, &peers, &states, count, mode, timeout_ms).await,
        ControlRequest::SetFaults { tag, rules } => {
            match shared.faults_layer().replace_tag(&tag, rules) {
                Ok(set) => {
                    info!(tag = %tag, rules = set.rules().len(), "fault rules changed");
                    ControlResponse::Faults {
                        rules: set.rules().to_vec(),
                    }
                }
                Err(e) => ControlResponse::Error {
                    message: e.to_string(),
                },
            }
        }
        ControlRequest::ClearFaults => {
            let old = shared.faults_layer().clear();
            if !old.rules().is_empty() {
                info!(removed = old.rules().len(), "fault rules cleared");
            }
            ControlResponse::Faults {
                rules: old.rules().to_vec(),
            }
        }
        ControlRequest::Shutdown => {
            warn!("shutdown requested by the operator");
            shared.request_shutdown();
            ControlResponse::Ok
        }
        ControlRequest::Spawn {
            kind,
            key,
            args,
            on,
            placement,
            policy,
            group,
        } => match spawn(
            shared,
            &kind,
            &key,
            &args,
            on,
            SpawnOptions {
                placement,
                policy,
                group,
            },
        )
        .await
        {
            Ok(a) => ControlResponse::Spawned(a),
            Err(message) => ControlResponse::Error { message },
        },
        ControlRequest::Tell { id, json, repeat } => tell(shared, &id, &json, repeat).await,
        ControlRequest::Ask {
            id,
            json,
            timeout_ms,
        } => ask(shared, &id, &json, timeout_ms).await,
        ControlRequest::Agents => ControlResponse::Agents(shared.agents.list()),
        ControlRequest::AddGroup {
            name,
            strategy,
            intensity,
        } => match shared
            .agents
            .supervisor()
            .add_group(GroupSpec {
                name,
                strategy,
                intensity,
            })
            .await
        {
            Ok(()) => ControlResponse::Ok,
            Err(e) => ControlResponse::Error {
                message: e.to_string(),
            },
        },
        ControlRequest::Tree => match shared.agents.supervisor().snapshot().await {
            Ok(t) => ControlResponse::Tree(t),
            Err(e) => ControlResponse::Error {
                message: e.to_string(),
            },
        },
    }
}

fn parse_json(text: &str, what: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(text).map_err(|e| format!("{what} is not valid JSON ({e}): {text}"))
}

fn parse_id(text: &str) -> Result<AgentId, String> {
    text.parse::<AgentId>().map_err(|e| e.to_string())
}

/// The contract of a JSON message to `id`: the kind's, if this node knows it.
fn contract_for(shared: &Shared, id: &AgentId) -> Contract {
    match shared.agents.host().kind(id.kind()) {
        Ok(k) => k.contract(),
        Err(_) => Contract {
            name: id.kind().to_owned().into(),
            version: 1,
        },
    }
}

async fn spawn(
    shared: &Arc<Shared>,
    kind: &str,
    key: &str,
    args: &str,
    on: Option<String>,
    opts: SpawnOptions,
) -> Result<Activation, String> {
    let id = AgentId::new(kind, key).map_err(|e| e.to_string())?;
    let args = Body::json(&parse_json(args, "--args")?);
    let target = match on {
        Some(n) => Target::On(n),
        None => Target::Placed,
    };
    let root = TraceContext::new_root();
    root.scope(shared.agents.spawn(id, args, opts, target))
        .await
        .map_err(|e| e.to_string())
}

async fn tell(shared: &Arc<Shared>, id: &str, json: &str, repeat: u64) -> ControlResponse {
    let result: Result<ControlResponse, String> = async {
        let id = parse_id(id)?;
        let msg = parse_json(json, "the message")?;
        // find the agent first, so that a tell to nothing is an error the operator sees; a
        // local node that cannot reach the cluster queues instead (the outbox)
        match shared.agents.lookup(&id).await {
            Ok(_) => {}
            Err(
                AgentError::NodeUnreachable { .. }
                | AgentError::NoDirectory(_)
                | AgentError::Timeout { .. },
            ) if shared.agents.outbox_counters().is_some() => {}
            Err(e) => return Err(e.to_string()),
        }
        let contract = contract_for(shared, &id);
        let root = TraceContext::new_root();
        let body = serde_json::to_vec(&msg).map_err(|e| e.to_string())?;
        let body = bytes::Bytes::from(body);
        let (mut queued, mut depth) = (0u64, 0usize);
        root.sync_scope(|| {
            for i in 0..repeat {
                let sent = shared
                    .agents
                    .tell_or_queue(
                        &id,
                        Body::Encoded(tether_actors::Encoding::Json, body.clone()),
                        contract.clone(),
                    )
                    .map_err(|(e, _)| {
                        if i == 0 {
                            e.to_string()
                        } else {
                            format!("{i} of {repeat} sent or queued; then: {e}")
                        }
                    })?;
                if let Sent::Queued { depth: d } = sent {
                    queued += 1;
                    depth = d;
                }
            }
            Ok::<(), String>(())
        })?;
        Ok(ControlResponse::Told {
            count: repeat,
            queued,
            outbox_depth: depth as u64,
            trace_id: root.trace_id_hex().to_string(),
        })
    }
    .await;
    result.unwrap_or_else(|message| ControlResponse::Error { message })
}

async fn ask(shared: &Arc<Shared>, id: &str, json: &str, timeout_ms: u64) -> ControlResponse {
    let result: Result<ControlResponse, String> = async {
        let id = parse_id(id)?;
        let msg = parse_json(json, "the message")?;
        let contract = contract_for(shared, &id);
        let root = TraceContext::new_root();
        let deadline = Duration::from_millis(timeout_ms.max(1));
        // the envelope takes its trace when the ask is made: make it inside the scope
        let reply = root
            .scope(async {
                agent_ref::ask(
                    shared.agents.as_ref(),
                    &id,
                    &agent_ref::PortCache::default(),
                    Body::json(&msg),
                    contract,
                    deadline,
                )
                .await
            })
            .await;
        match reply {
            Ok(body) => Ok(ControlResponse::Replied {
                json: body
                    .to_json()
                    .map_err(|e| format!("reply is not JSON: {e}"))?
                    .to_string(),
                trace_id: root.trace_id_hex().to_string(),
            }),
            Err(e) => Err(format!("{e} (trace {})", root.trace_id_hex())),
        }
    }
    .await;
    result.unwrap_or_else(|message| ControlResponse::Error { message })
}

/// Whether `status` satisfies a wait.
pub fn wait_satisfied(
    status: &NodeStatus,
    peers: &[String],
    states: &[PeerState],
    count: Option<usize>,
    mode: Option<NodeMode>,
) -> bool {
    if mode.is_some_and(|m| status.mode != m) {
        return false;
    }
    if states.is_empty() {
        // no condition on peers (a wait on the mode alone)
        return count.is_none_or(|c| status.peers.iter().filter(|p| !p.left).count() >= c);
    }
    let known = status.peers.iter().filter(|p| !p.left).count();
    if count.is_some_and(|c| known < c) {
        return false;
    }
    if peers.is_empty() {
        status
            .peers
            .iter()
            .filter(|p| !p.left)
            .all(|p| states.contains(&p.state))
    } else {
        peers
            .iter()
            .all(|n| status.peer(n).is_some_and(|p| states.contains(&p.state)))
    }
}

async fn wait_peers(
    shared: &Arc<Shared>,
    peers: &[String],
    states: &[PeerState],
    count: Option<usize>,
    mode: Option<NodeMode>,
    timeout_ms: u64,
) -> ControlResponse {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms).min(MAX_WAIT);
    let mut changes = shared.subscribe_changes();
    loop {
        // mark the current version seen before checking, so no change slips between the two
        changes.borrow_and_update();
        let status = shared.snapshot();
        if wait_satisfied(&status, peers, states, count, mode) {
            return ControlResponse::Status(status);
        }
        // every state change (the detector's ticks included) bumps the version
        tokio::select! {
            r = changes.changed() => {
                if r.is_err() {
                    return ControlResponse::Error { message: format!("{} is shutting down", status.name) };
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                let now: Vec<String> = status.peers.iter().map(|p| format!("{}={}", p.name, p.state)).collect();
                return ControlResponse::Error {
                    message: format!("timed out after {timeout_ms} ms; {} sees: {}", status.name,
                        if now.is_empty() { "no peers".to_owned() } else { now.join(", ") }),
                };
            }
        }
    }
}

/// Why a control call failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The node could not be reached.
    #[error("cannot reach {addr}: {reason}")]
    Connect {
        /// The node's address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// No answer within the deadline.
    #[error("no answer from {addr} within {after:?}")]
    Timeout {
        /// The node's address.
        addr: SocketAddr,
        /// The deadline.
        after: Duration,
    },
    /// The answer did not decode.
    #[error("bad answer from {addr}: {source}")]
    Wire {
        /// The node's address.
        addr: SocketAddr,
        /// The decoding error.
        source: WireError,
    },
    /// The node answered with an error.
    #[error("{0}")]
    Remote(String),
}

/// A connection to one node's control plane. Clones share the connection.
#[derive(Debug, Clone)]
pub struct ControlClient {
    _endpoint: quinn::Endpoint,
    conn: Connection,
    addr: SocketAddr,
}

impl ControlClient {
    /// Connects to the node at `addr` (named `name`, if known) as the operator.
    ///
    /// # Errors
    /// [`ControlError::Connect`] or [`ControlError::Timeout`].
    pub async fn connect(
        addr: SocketAddr,
        name: Option<&str>,
        ca: &CertificateDer<'static>,
        admin: &Identity,
        deadline: Duration,
    ) -> Result<Self, ControlError> {
        let connect_err = |reason: String| ControlError::Connect { addr, reason };
        let endpoint =
            transport::control_endpoint(addr, ca, admin).map_err(|e| connect_err(e.to_string()))?;
        let connecting = endpoint
            .connect(addr, name.unwrap_or(ANY_NODE_SNI))
            .map_err(|e| connect_err(e.to_string()))?;
        let conn = timeout(deadline, connecting)
            .await
            .map_err(|_| ControlError::Timeout {
                addr,
                after: deadline,
            })?
            .map_err(|e| connect_err(e.to_string()))?;
        Ok(Self {
            _endpoint: endpoint,
            conn,
            addr,
        })
    }

    /// Sends one request and waits for the answer.
    ///
    /// # Errors
    /// [`ControlError`]; an answer of [`ControlResponse::Error`] becomes [`ControlError::Remote`].
    pub async fn call(
        &self,
        req: &ControlRequest,
        deadline: Duration,
    ) -> Result<ControlResponse, ControlError> {
        let addr = self.addr;
        let wire_err = |source| ControlError::Wire { addr, source };
        let fut = async {
            let (mut send, mut recv) =
                self.conn
                    .open_bi()
                    .await
                    .map_err(|e| ControlError::Connect {
                        addr,
                        reason: e.to_string(),
                    })?;
            wire::write_frame(&mut send, req).await.map_err(wire_err)?;
            let _ = send.finish();
            wire::read_frame::<ControlResponse>(&mut recv, MAX_CONTROL_FRAME)
                .await
                .map_err(wire_err)?
                .ok_or(ControlError::Wire {
                    addr,
                    source: WireError::Truncated,
                })
        };
        match timeout(deadline, fut).await {
            Err(_) => Err(ControlError::Timeout {
                addr,
                after: deadline,
            }),
            Ok(Ok(ControlResponse::Error { message })) => Err(ControlError::Remote(message)),
            Ok(r) => r,
        }
    }

    /// Closes the connection politely.
    pub fn close(&self) {
        self.conn.close(0u32.into(), b"bye");
    }
}
