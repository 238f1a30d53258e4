//! The core's side of a live migration (see [`crate::migration`]): the move's epoch, and the
//! directory requests a move's source makes of an id's owner or of one node.

use std::time::Instant;

use tether_actors::{AgentError, AgentId};

use super::{ClusterCore, Ticket, Want, LOOKUP_TIMEOUT};
use crate::directory::{self, DirMsg, Location};
use crate::membership::detector::PeerState;
use crate::role::ReplyTo;

impl ClusterCore {
    /// The epoch of `current` moved to another node (see [`tether_actors::epoch::next_move`]),
    /// tagged by this node.
    pub fn move_epoch(&mut self, now: Instant, current: u64) -> u64 {
        self.raw_call(now, |_, cx| cx.move_epoch(current))
    }

    /// The directory owner of `id` in this node's view now.
    pub fn owner_of(&self, id: &AgentId) -> Option<String> {
        let view = self.members.up_view();
        directory::owner(id.as_str(), view.remotes()).map(str::to_owned)
    }

    /// Where `id` runs, asked of `node` itself (a move's source asks the owner it sent its
    /// commit to, not whichever node owns the id in its view now); ends like a lookup. A node
    /// decided down is not asked: the owner of this node's view is.
    pub fn lookup_at(&mut self, now: Instant, id: AgentId, node: &str) -> Ticket {
        let ticket = self
            .io
            .new_ticket(Want::Location, now + LOOKUP_TIMEOUT, &id);
        let gone = matches!(self.members.state_of(node), Some(PeerState::Down) | None)
            && node != self.me();
        let node = match gone {
            true => match self.owner_of(&id) {
                Some(o) => o,
                None => {
                    let e = AgentError::NoDirectory("no remote node is reachable".into());
                    self.io.complete(ticket, Err(e), &self.members);
                    return ticket;
                }
            },
            false => node.to_owned(),
        };
        if node == self.me() {
            let reply = ReplyTo::Local(ticket);
            self.call(now, |role, cx| role.lookup(cx, reply, id));
            return ticket;
        }
        let state = self.members.state_of(&node);
        self.io
            .request_for_ticket(ticket, &node, state, &self.members, |req| DirMsg::Lookup {
                req,
                id,
            });
        ticket
    }

    /// Whether `node` runs `id` now, as its host says (a probe); ends like a lookup: the
    /// location, or [`AgentError::NotFound`] when it does not run it there.
    pub fn probe_at(&mut self, now: Instant, id: AgentId, node: &str) -> Ticket {
        let ticket = self
            .io
            .new_ticket(Want::Location, now + LOOKUP_TIMEOUT, &id);
        if node == self.me() {
            let found = self.probed(&id);
            self.io.complete(ticket, found, &self.members);
            return ticket;
        }
        let state = self.members.state_of(node);
        self.io
            .request_for_ticket(ticket, node, state, &self.members, |req| DirMsg::Probe {
                req,
                id,
            });
        ticket
    }

    /// Commits a live migration of `id` at its owner (see [`DirMsg::Move`]); ends with its
    /// answer: the activation on `to`, or why not.
    pub fn commit_move(
        &mut self,
        now: Instant,
        id: AgentId,
        from: Location,
        to: Location,
    ) -> Ticket {
        let ticket = self
            .io
            .new_ticket(Want::Activation, now + LOOKUP_TIMEOUT, &id);
        let view = self.members.up_view();
        let Some(owner) = directory::owner(id.as_str(), view.remotes()).map(str::to_owned) else {
            let e = AgentError::NoDirectory("no remote node is reachable from this node".into());
            self.io.complete(ticket, Err(e), &self.members);
            return ticket;
        };
        if owner == self.me() {
            let reply = ReplyTo::Local(ticket);
            self.call(now, |role, cx| role.commit_move(cx, reply, id, from, to));
            return ticket;
        }
        let state = self.members.state_of(&owner);
        self.io
            .request_for_ticket(ticket, &owner, state, &self.members, |req| DirMsg::Move {
                req,
                id,
                from,
                to,
            });
        ticket
    }
}
