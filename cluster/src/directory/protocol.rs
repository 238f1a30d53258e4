//! The directory's messages between nodes.
//!
//! Every message is one-way; each but an answer carries a request id (`req`) chosen by its
//! sender, and its answer comes back as [`DirMsg::Answer`] with that id. They travel on the
//! agent streams (in order per pair of nodes, lost if a connection breaks), so a sender keeps
//! a deadline for every answer it waits for. Notices (`Backup`, `Handoff`, `Evicted`,
//! `Exited`) are answered with [`DirAnswer::Ack`] once applied, and tried again until they are
//! (see [`crate::notices`]); applying one twice changes nothing.
//!
//! ```text
//! requester                     owner                         host
//!   Claim{req, id, spec} ──────▶  get-or-spawn: probe ─── Probe{req, id} ──────▶
//!                                              ◀──────── Answer{req, Location} ──
//!                                 place, new epoch ── Activate{req, id, epoch} ─▶
//!                                              ◀──────── Answer{req, Activation} ─
//!         ◀── Answer{req, Activation} ──
//!   Lookup{req, id} ───────────▶
//!         ◀── Answer{req, Location} ────
//!                               Backup{req, entry} ──▶ backup (a copy of the owner's entry)
//!   (any holder of an entry)    Handoff{req, entry} ──▶ the id's owner in the holder's view
//!   host: Exited{req, id, epoch, reason} ──▶ owner and backup: forget, or mark failed
//!   host: Evicted{req, id, epoch} ──▶ owner: a fence stopped it; place it again
//!   (each notice)                    ◀── Answer{req, Ack}
//! ```

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tether_actors::{
    Activation, AgentError, AgentId, Durability, Encoding, Placement, SpawnRecord, TraceContext,
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
    /// How durable its state is.
    #[serde(default)]
    pub durability: Durability,
}

impl AgentSpec {
    /// The spawn record a host keeps (arguments and labels).
    pub fn record(&self) -> Arc<SpawnRecord> {
        Arc::new(SpawnRecord {
            encoding: self.args_encoding,
            args: self.args.clone(),
            placement: self.placement.clone(),
            durability: self.durability,
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
            durability: record.durability,
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
    /// Why the activation failed for good, if it did.
    #[serde(default)]
    pub failed: Option<String>,
    /// A fence on its host stopped the activation.
    #[serde(default)]
    pub evicted: bool,
}

/// What a successful directory request yields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DirAnswer {
    /// A claim's or activation's result.
    Activation(Activation),
    /// A lookup's or probe's result (`None`: not there).
    Location(Option<Location>),
    /// A notice was applied.
    Ack,
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
        /// Request id.
        req: u64,
        /// The entry.
        entry: EntryCopy,
    },
    /// An entry for the id's owner (ownership moved, or the sender holds an entry whose host
    /// went down).
    Handoff {
        /// Request id.
        req: u64,
        /// The entry.
        entry: EntryCopy,
    },
    /// A fence on the sender stopped this activation (to the id's owner).
    Evicted {
        /// Request id.
        req: u64,
        /// The agent.
        id: AgentId,
        /// The activation the fence stopped.
        epoch: u64,
        /// How it was spawned, as its host knew it: the owner may hold no spawn record of it
        /// (the nodes that placed it can be across the split that fenced its host).
        #[serde(default)]
        spec: Option<AgentSpec>,
    },
    /// An agent ended on its host (to its owner and backup).
    Exited {
        /// Request id.
        req: u64,
        /// The agent.
        id: AgentId,
        /// The activation that ended.
        epoch: u64,
        /// The failure, if it failed.
        reason: Option<String>,
    },
    /// A live migration is ready to commit (to the id's owner): the entry moves from `from`
    /// to `to` if it still names `from` (a compare-and-set; answered with the activation on
    /// `to`, also when it already names `to`).
    Move {
        /// Request id.
        req: u64,
        /// The agent.
        id: AgentId,
        /// Where it ran.
        from: Location,
        /// Where it is installed, as which epoch.
        to: Location,
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
            | DirMsg::Exited { id, .. }
            | DirMsg::Move { id, .. } => Some(id),
            DirMsg::Backup { entry, .. } | DirMsg::Handoff { entry, .. } => Some(&entry.id),
            DirMsg::Answer { .. } => None,
        }
    }

    /// The request id of a message whose answer is due (all but an answer).
    pub fn request_id(&self) -> Option<u64> {
        match self {
            DirMsg::Claim { req, .. }
            | DirMsg::Lookup { req, .. }
            | DirMsg::Activate { req, .. }
            | DirMsg::Probe { req, .. }
            | DirMsg::Backup { req, .. }
            | DirMsg::Handoff { req, .. }
            | DirMsg::Evicted { req, .. }
            | DirMsg::Exited { req, .. }
            | DirMsg::Move { req, .. } => Some(*req),
            DirMsg::Answer { .. } => None,
        }
    }

    /// The message in a few words, for traces and logs.
    pub fn summary(&self) -> String {
        match self {
            DirMsg::Claim { req, id, .. } => format!("Claim#{req} {id}"),
            DirMsg::Lookup { req, id } => format!("Lookup#{req} {id}"),
            DirMsg::Activate { req, id, epoch, .. } => format!("Activate#{req} {id}@{epoch}"),
            DirMsg::Probe { req, id } => format!("Probe#{req} {id}"),
            DirMsg::Backup { req, entry } => {
                format!(
                    "Backup#{req} {}@{} on {}",
                    entry.id, entry.epoch, entry.node
                )
            }
            DirMsg::Handoff { req, entry } => {
                format!(
                    "Handoff#{req} {}@{} on {}",
                    entry.id, entry.epoch, entry.node
                )
            }
            DirMsg::Evicted { req, id, epoch, .. } => format!("Evicted#{req} {id}@{epoch}"),
            DirMsg::Exited {
                req,
                id,
                epoch,
                reason,
            } => format!("Exited#{req} {id}@{epoch} {reason:?}"),
            DirMsg::Move { req, id, from, to } => format!(
                "Move#{req} {id} {}@{} -> {}@{}",
                from.node, from.epoch, to.node, to.epoch
            ),
            DirMsg::Answer { req, result } => format!("Answer#{req} {result:?}"),
        }
    }
}
