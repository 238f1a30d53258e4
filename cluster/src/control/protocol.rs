//! The control protocol's messages: one request per bidi stream, one response back.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tether_actors::{Activation, AgentInfo, Placement};
use tether_supervision::tree::NodeTree;
use tether_supervision::{AgentPolicy, Intensity, Strategy};

use crate::identity::Role;
use crate::membership::detector::PeerState;
use crate::net::fault::FaultRule;
use crate::role::{NodeMode, OutboxCounters};

/// Longest wait a [`ControlRequest::WaitPeers`] may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(600);

/// The version of the control protocol this build speaks. A request carries the version its
/// sender speaks ([`Versioned`]); a node refuses one it does not speak, with an error that names
/// both, rather than guessing at a request whose meaning may have changed.
pub const CONTROL_VERSION: u16 = 1;

/// A control request as it travels: the sender's protocol version and the request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Versioned<T> {
    /// The sender's [`CONTROL_VERSION`].
    pub v: u16,
    /// The message.
    pub msg: T,
}

/// Decodes a control request frame: a map with the sender's version `v` and the request
/// `msg`, variants and fields by name only.
///
/// # Errors
/// A message for the operator: the frame is not a versioned request, speaks another version,
/// or does not decode.
pub fn decode_request(frame: &[u8]) -> Result<ControlRequest, String> {
    #[derive(Deserialize)]
    struct Version {
        v: u16,
    }
    let Version { v } = tether_actors::codec::decode_named(frame).map_err(|e| {
        format!("not a versioned control request ({e}); is the CLI a tether CLI of this release?")
    })?;
    if v != CONTROL_VERSION {
        return Err(format!(
            "control protocol version {v} is not spoken by this node (it speaks \
             {CONTROL_VERSION}); use a tether CLI of the same release as the node"
        ));
    }
    let req: Versioned<ControlRequest> =
        tether_actors::codec::decode_named(frame).map_err(|e| e.to_string())?;
    Ok(req.msg)
}

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
    /// Stop the node cleanly as part of stopping the whole cluster: no node places its
    /// agents again.
    StopCluster,
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
        /// How durable its state is.
        #[serde(default)]
        durability: tether_actors::Durability,
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
    /// Move an agent to another node (see `tether_cluster::migration`); asked of any node.
    Migrate {
        /// The agent id.
        id: String,
        /// The target node (None: one its placement allows, chosen by the agent's host).
        to: Option<String>,
    },
    /// Refuse new activations here (`on`), or take them again: a node being drained.
    Drain {
        /// Refuse from now on.
        on: bool,
    },
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
    /// An agent moved.
    Migrated(crate::migration::MoveReport),
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
    /// Capabilities it offers (matched against agents' `needs`).
    #[serde(default)]
    pub caps: Vec<String>,
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

/// Counters of a node's agent runtime, for status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentCounters {
    /// Agent-protocol frames received from peers.
    pub frames_in: u64,
    /// Tells that failed (refused by their receiver, or lost with a broken stream).
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
    /// Directory notices (backup copies, hand-overs, eviction and exit reports) this node
    /// sent that are not acknowledged yet; they are resent until they are.
    #[serde(default)]
    pub notices_pending: u64,
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

#[cfg(test)]
mod tests {
    use super::*;
    use tether_actors::codec::encode;

    #[test]
    fn a_request_decodes_only_in_its_named_versioned_form() {
        let req = ControlRequest::Shutdown;
        let frame = encode(&Versioned {
            v: CONTROL_VERSION,
            msg: req.clone(),
        })
        .unwrap();
        assert_eq!(decode_request(&frame).unwrap(), req);
        // the bare enum, by name or by index, is no request
        for bare in [encode(&req).unwrap(), vec![0x04]] {
            let e = decode_request(&bare).unwrap_err();
            assert!(e.contains("not a versioned control request"), "{e}");
        }
        // a version this node does not speak is refused by name
        let later = encode(&Versioned { v: 2, msg: req }).unwrap();
        let e = decode_request(&later).unwrap_err();
        assert!(e.contains("version 2 is not spoken"), "{e}");
        // the right version with the variant given by index is refused too
        let by_index = [0x82, 0xa1, b'v', 0x01, 0xa3, b'm', b's', b'g', 0x04];
        let e = decode_request(&by_index).unwrap_err();
        assert!(e.contains("given by name"), "{e}");
    }
}
