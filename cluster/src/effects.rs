//! What a [`ClusterCore`](crate::core::ClusterCore) asks its node to do ([`Output`]), what it
//! reads of its host ([`HostView`]), and its bookkeeping of the requests and activations in
//! flight ([`Effects`]), shared by the core and the role it lends them to.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use tether_actors::{AgentError, AgentId, Host, SpawnRecord, TraceContext};
use tether_supervision::AgentPolicy;

use crate::directory::{DirAnswer, DirMsg};
use crate::membership::detector::PeerState;
use crate::membership::{Heartbeat, Members};
use crate::notices::Notices;

/// How long a spawn may take end to end (claim, placement, activation).
pub const SPAWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a lookup may take.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// A request of this node (spawn or lookup), ended by one [`Output::Done`].
pub type Ticket = u64;

/// The agents a node hosts, as the core reads them.
pub trait HostView: Send + Sync {
    /// The epoch of `id` if it runs (or restarts) here.
    fn epoch_of(&self, id: &AgentId) -> Option<u64>;
    /// Whether `id` runs here and is local-only.
    fn is_local_only(&self, id: &AgentId) -> bool;

    /// Whether activation `epoch` of `id` is here: running, restarting, or installed for a
    /// move and waiting for its source's hand-over (see `tether_cluster::migration`).
    fn holds(&self, id: &AgentId, epoch: u64) -> bool {
        self.epoch_of(id) == Some(epoch) || self.installing(id) == Some(epoch)
    }

    /// The epoch of `id` if it is installed here for a move, not serving yet: the move may
    /// have committed already, while its source no longer runs it either.
    fn installing(&self, id: &AgentId) -> Option<u64> {
        let _ = id;
        None
    }
}

impl HostView for Host {
    fn epoch_of(&self, id: &AgentId) -> Option<u64> {
        Host::epoch_of(self, id)
    }

    fn is_local_only(&self, id: &AgentId) -> bool {
        self.placement_of(id).is_some_and(|p| p.is_local_only())
    }

    fn installing(&self, id: &AgentId) -> Option<u64> {
        self.installed_epoch(id)
    }
}

/// An activation the node carries out on its host.
#[derive(Debug, Clone)]
pub struct ActivateOrder {
    /// Report the result with this token ([`ClusterCore::activated`]).
    pub token: u64,
    /// The agent.
    pub id: AgentId,
    /// Its epoch.
    pub epoch: u64,
    /// Its arguments and labels (shared with the directory entry that placed it).
    pub record: Arc<SpawnRecord>,
    /// Its supervision.
    pub policy: AgentPolicy,
    /// The supervisor group, if any.
    pub group: Option<String>,
    /// Trace of the spawn.
    pub trace: TraceContext,
}

/// What the core asks the node to do.
#[derive(Debug)]
pub enum Output {
    /// Send a directory message to a peer.
    Send {
        /// The peer.
        to: String,
        /// The message.
        msg: DirMsg,
    },
    /// Send this heartbeat to a peer, on its link if it has one.
    Heartbeat {
        /// The peer.
        to: String,
        /// The heartbeat.
        hb: Heartbeat,
    },
    /// Activate an agent on this node's host.
    Activate(ActivateOrder),
    /// Stop every agent hosted here for good; report with [`ClusterCore::fence_done`].
    Fence,
    /// A request of this node ended.
    Done {
        /// The request.
        ticket: Ticket,
        /// Its answer.
        result: Result<DirAnswer, AgentError>,
    },
    /// A peer became unreachable, was decided down, or left: fail what waits on it.
    PeerLost(String),
    /// Refuse agent requests from `peer` (`on`), or accept them again.
    Quarantine {
        /// The peer.
        peer: String,
        /// Refuse from now on.
        on: bool,
    },
    /// The node's mode changed.
    Mode(NodeMode),
    /// Deliver a tell from the outbox to its host and report the result with
    /// [`ClusterCore::delivered`] (answered once it is in the agent's mailbox).
    Deliver {
        /// Its number in the outbox.
        qid: u64,
        /// The host.
        node: String,
        /// The message, addressed to the activation found.
        env: tether_actors::Envelope,
    },
}

/// How a spawn should be placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// On this node.
    Here,
    /// On the named node.
    On(String),
    /// Where the placement labels choose.
    Placed,
}

/// What a request of this node waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    Activation,
    Location,
}

impl Want {
    /// How long a request of this kind may take.
    pub(crate) fn allowed(self) -> Duration {
        match self {
            Want::Activation => SPAWN_TIMEOUT,
            Want::Location => LOOKUP_TIMEOUT,
        }
    }
}

#[derive(Debug)]
pub(crate) struct TicketWait {
    pub(crate) want: Want,
    pub(crate) deadline: Instant,
    /// The agent the request is about.
    pub(crate) id: AgentId,
}

/// Who waits for the answer to a request this node sent.
#[derive(Debug)]
pub(crate) enum Waiter {
    Ticket(Ticket),
    Role,
}

#[derive(Debug)]
pub(crate) struct Sent {
    pub(crate) peer: String,
    pub(crate) waiter: Waiter,
    pub(crate) deadline: Instant,
    /// How long the sender was given (for the timeout's message).
    pub(crate) allowed: Duration,
}

/// Whose activation an order is.
#[derive(Debug)]
pub(crate) enum ActivationFor {
    Peer { node: String, req: u64 },
    Ticket(Ticket),
    Role,
}

/// The core's bookkeeping of requests, activations and outputs (what a
/// [`Cx`](crate::role::Cx) lends a role).
#[derive(Debug, Default)]
pub struct Effects {
    /// Peers lost during a role call: their waiters fail once the call returns.
    pub(crate) lost: Vec<String>,
    /// Membership changed during a role call: the role hears of it once the call returns.
    pub(crate) changed: bool,
    pub(crate) out: VecDeque<Output>,
    pub(crate) next_id: u64,
    pub(crate) tickets: HashMap<Ticket, TicketWait>,
    pub(crate) sent: HashMap<u64, Sent>,
    pub(crate) activations: HashMap<u64, ActivationFor>,
    pub(crate) notices: Notices,
    /// Epochs this node allocated in this incarnation.
    pub(crate) epochs: u64,
}

impl Effects {
    pub(crate) fn next(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub(crate) fn peer_lost(&mut self, peer: &str) {
        self.lost.push(peer.to_owned());
    }

    pub(crate) fn membership_changed(&mut self) {
        self.changed = true;
    }

    pub(crate) fn emit(&mut self, out: Output) {
        self.out.push_back(out);
    }

    pub(crate) fn send(&mut self, to: &str, msg: DirMsg) {
        self.emit(Output::Send {
            to: to.to_owned(),
            msg,
        });
    }

    pub(crate) fn new_ticket(&mut self, want: Want, deadline: Instant, id: &AgentId) -> Ticket {
        let t = self.next();
        let id = id.clone();
        self.tickets.insert(t, TicketWait { want, deadline, id });
        t
    }

    /// Ends request `ticket` with `result` (checked against what it wants; a location that
    /// names an unreachable host is no route).
    pub(crate) fn complete(
        &mut self,
        ticket: Ticket,
        result: Result<DirAnswer, AgentError>,
        members: &Members,
    ) {
        let Some(wait) = self.tickets.remove(&ticket) else {
            return; // ended already (a timeout)
        };
        let result = match (wait.want, result) {
            (Want::Location, Ok(DirAnswer::Location(Some(loc)))) => {
                let here = loc.node == members.me().name;
                if !here && members.state_of(&loc.node) != Some(PeerState::Up) {
                    // the owner names a host this node cannot reach (not decided down yet,
                    // or down and not failed over yet): no route; the next message asks again
                    Err(AgentError::NodeUnreachable { node: loc.node })
                } else {
                    Ok(DirAnswer::Location(Some(loc)))
                }
            }
            (Want::Location, Ok(DirAnswer::Location(None))) => Err(AgentError::NotFound {
                id: wait.id.to_string(),
            }),
            (Want::Activation, Ok(a @ DirAnswer::Activation(_))) => Ok(a),
            (_, Ok(other)) => Err(AgentError::Internal(format!(
                "unexpected answer: {other:?}"
            ))),
            (_, Err(e)) => Err(e),
        };
        self.emit(Output::Done { ticket, result });
    }

    /// Sends a request for a ticket to `to`, failing the ticket at once if `to` is lost.
    pub(crate) fn request_for_ticket(
        &mut self,
        ticket: Ticket,
        to: &str,
        state: Option<PeerState>,
        members: &Members,
        make: impl FnOnce(u64) -> DirMsg,
    ) {
        if unreachable(state) {
            let e = AgentError::NodeUnreachable {
                node: to.to_owned(),
            };
            self.complete(ticket, Err(e), members);
            return;
        }
        let Some(wait) = self.tickets.get(&ticket) else {
            return;
        };
        let (deadline, allowed) = (wait.deadline, wait.want.allowed());
        let req = self.next();
        self.sent.insert(
            req,
            Sent {
                peer: to.to_owned(),
                waiter: Waiter::Ticket(ticket),
                deadline,
                allowed,
            },
        );
        self.send(to, make(req));
    }

    pub(crate) fn request_for_role(
        &mut self,
        to: &str,
        state: Option<PeerState>,
        (deadline, allowed): (Instant, Duration),
        make: impl FnOnce(u64) -> DirMsg,
    ) -> Result<u64, AgentError> {
        if unreachable(state) {
            return Err(AgentError::NodeUnreachable {
                node: to.to_owned(),
            });
        }
        let req = self.next();
        self.sent.insert(
            req,
            Sent {
                peer: to.to_owned(),
                waiter: Waiter::Role,
                deadline,
                allowed,
            },
        );
        self.send(to, make(req));
        Ok(req)
    }

    pub(crate) fn activate_for_role(&mut self, mut order: ActivateOrder) -> u64 {
        order.token = self.next();
        self.activations.insert(order.token, ActivationFor::Role);
        let token = order.token;
        self.emit(Output::Activate(order));
        token
    }

    pub(crate) fn activate_for_ticket(&mut self, ticket: Ticket, mut order: ActivateOrder) {
        order.token = self.next();
        self.activations
            .insert(order.token, ActivationFor::Ticket(ticket));
        self.emit(Output::Activate(order));
    }
}

/// A peer that is known to be gone (or not known at all) gets no request: it fails fast. A
/// joining peer may already have a link (it may be the very node asking).
pub(crate) fn unreachable(state: Option<PeerState>) -> bool {
    matches!(state, None | Some(PeerState::Unreachable | PeerState::Down))
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
