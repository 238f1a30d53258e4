//! The directory's messages between nodes.
//!
//! Every message is one-way; a request carries a request id (`req`) chosen by its sender, and
//! its answer comes back as [`DirMsg::Answer`] with that id. They travel on the agent streams
//! (in order per pair of nodes, lost if a connection breaks), so a sender keeps a deadline
//! for every answer it waits for.
//!
//! ```text
//! requester                     owner                         host
//!   Claim{req, id, spec} ──────▶  get-or-spawn: probe ─── Probe{req, id} ──────▶
//!                                              ◀──────── Answer{req, Location} ──
//!                                 place, epoch + 1 ── Activate{req, id, epoch} ─▶
//!                                              ◀──────── Answer{req, Activation} ─
//!         ◀── Answer{req, Activation} ──
//!   Lookup{req, id} ───────────▶
//!         ◀── Answer{req, Location} ────
//!                               Backup{entry} ──▶ backup (a copy of the owner's entry)
//!   (any holder of an entry)    Handoff{entry} ──▶ the id's owner in the holder's view
//!   host: Exited{id, epoch, reason} ──▶ owner and backup: forget, or mark failed
//!   host: Evicted{id, epoch} ──▶ owner: a fence stopped it; place it again
//! ```

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tether_actors::{
    Activation, AgentError, AgentId, Encoding, Placement, SpawnRecord, TraceContext,
};
use tether_supervision::AgentPolicy;

/// Where an agent runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    /// Hosting node.
    pub node: String,
    /// Activation epoch.
    pub epoch: u64,
}

/// How an agent is spawned, as it travels: what an owner needs to activate it anywhere.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentSpec {
    /// How `args` are encoded.
    pub args_encoding: Encoding,
    /// Spawn arguments.
    pub args: Bytes,
    /// Labels (computed by the requester from the kind, or given by the user).
    pub placement: Placement,
    /// How it is supervised.
    #[serde(default)]
    pub policy: AgentPolicy,
    /// The supervisor group on the host, if any.
    #[serde(default)]
    pub group: Option<String>,
}

impl AgentSpec {
    /// The spawn record a host keeps (arguments and labels).
    pub fn record(&self) -> Arc<SpawnRecord> {
        Arc::new(SpawnRecord {
            encoding: self.args_encoding,
            args: self.args.clone(),
            placement: self.placement.clone(),
        })
    }

    /// The spec of an agent spawned with `record`, supervised by `policy` in `group`.
    pub fn of(record: &SpawnRecord, policy: AgentPolicy, group: Option<String>) -> Self {
        Self {
            args_encoding: record.encoding,
            args: record.args.clone(),
            placement: record.placement.clone(),
            policy,
            group,
        }
    }
}

/// A directory entry as it travels between remote nodes: where the agent runs, and how it was
/// spawned (so that whoever holds it can activate the agent again elsewhere).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntryCopy {
    /// The agent.
    pub id: AgentId,
    /// Its host.
    pub node: String,
    /// The host's incarnation that runs it.
    #[serde(default)]
    pub life: u64,
    /// Its activation epoch.
    pub epoch: u64,
    /// How it was spawned.
    pub spec: AgentSpec,
}

/// What a successful directory request yields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DirAnswer {
    /// A claim's or activation's result.
    Activation(Activation),
    /// A lookup's or probe's result (`None`: not there).
    Location(Option<Location>),
}

/// One directory message (see the module doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DirMsg {
    /// Get-or-spawn, to the id's owner.
    Claim {
        /// Request id.
        req: u64,
        /// The agent.
        id: AgentId,
        /// How to spawn it (boxed: it is most of the message).
        spec: Box<AgentSpec>,
        /// The node to run on, if the requester named one.
        target: Option<String>,
        /// Trace of the spawn.
        trace: TraceContext,
    },
    /// Where does the agent run? To the id's owner.
    Lookup {
        /// Request id.
        req: u64,
        /// The agent.
        id: AgentId,
    },
    /// Start the agent on the receiving node with this epoch (from its owner).
    Activate {
        /// Request id.
        req: u64,
        /// The agent.
        id: AgentId,
        /// Its epoch.
        epoch: u64,
        /// How to spawn it.
        spec: Box<AgentSpec>,
        /// Trace of the spawn.
        trace: TraceContext,
    },
    /// Do you run this agent? (An owner rebuilding an entry asks the hosts.)
    Probe {
        /// Request id.
        req: u64,
        /// The agent.
        id: AgentId,
    },
    /// A copy of an owner's entry, for the id's backup.
    Backup {
        /// The entry.
        entry: EntryCopy,
    },
    /// An entry for the id's owner (ownership moved, or the sender holds an entry whose host
    /// went down).
    Handoff {
        /// The entry.
        entry: EntryCopy,
    },
    /// A fence on the sender stopped this activation (to the id's owner).
    Evicted {
        /// The agent.
        id: AgentId,
        /// The activation the fence stopped.
        epoch: u64,
    },
    /// An agent ended on its host (to its owner and backup).
    Exited {
        /// The agent.
        id: AgentId,
        /// The activation that ended.
        epoch: u64,
        /// The failure, if it failed.
        reason: Option<String>,
    },
    /// The answer to request `req`.
    Answer {
        /// Request id.
        req: u64,
        /// The result.
        result: Result<DirAnswer, AgentError>,
    },
}

impl DirMsg {
    /// The agent a message is about (none for an answer).
    pub fn agent(&self) -> Option<&AgentId> {
        match self {
            DirMsg::Claim { id, .. }
            | DirMsg::Lookup { id, .. }
            | DirMsg::Activate { id, .. }
            | DirMsg::Probe { id, .. }
            | DirMsg::Evicted { id, .. }
            | DirMsg::Exited { id, .. } => Some(id),
            DirMsg::Backup { entry } | DirMsg::Handoff { entry } => Some(&entry.id),
            DirMsg::Answer { .. } => None,
        }
    }

    /// The request id of a request (its answer is due), if it is one.
    pub fn request_id(&self) -> Option<u64> {
        match self {
            DirMsg::Claim { req, .. }
            | DirMsg::Lookup { req, .. }
            | DirMsg::Activate { req, .. }
            | DirMsg::Probe { req, .. } => Some(*req),
            _ => None,
        }
    }
}
