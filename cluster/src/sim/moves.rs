//! Live migration in the simulator: the protocol of `crate::migration` as the nodes run it,
//! on the simulated network, against the real cores (the owner's compare-and-set is
//! `RoleCore::commit_move`), with the faults of the schedule falling at any step.
//!
//! ```text
//! source: freeze (the host model refuses while frozen) ─ Install ─▶ target: installed, held
//!         ◀──────────────────────────────────────────── Installed
//!         core.commit_move ─▶ owner ─▶ Done
//!           Ok  ─▶ drop the frozen agent ─ Drained ─▶ target serves
//!           Err ─▶ Discard ─▶ target drops it; the source serves again
//! no Installed within INSTALL_TIMEOUT ─▶ aborted as above
//! target: no Drained within DRAIN_WAIT ─▶ asks the directory: named ─▶ serves; not ─▶ drops
//! ```
//!
//! The invariants of [`super`] apply throughout: at most one instance serves (a frozen or
//! installed one does not), no epoch is used twice, every wait ends by its deadline, and once
//! healed every agent runs exactly once.

use std::time::Duration;

use tether_actors::{AgentError, AgentId};

use super::host::Stage;
use super::{DataMsg, Kind, Purpose, Roles, Sim, Wire};
use crate::directory::{DirAnswer, Location};
use crate::identity::Role;
use crate::migration::INSTALL_TIMEOUT;

/// How long a target waits for its source's hand-over before it asks the directory.
const DRAIN_WAIT: Duration = Duration::from_secs(10);

/// A move this node is the source of.
#[derive(Debug, Clone)]
pub(crate) struct Move {
    id: AgentId,
    to: usize,
    from_epoch: u64,
    epoch: u64,
    /// The commit was asked: only its answer ends the move now.
    committing: bool,
    /// The owner the commit went to: the one asked if its answer is lost.
    owner: String,
}

impl<R: Roles> Sim<R> {
    /// Moves counter `key` from where it serves to remote node number `to` (counted among
    /// the other remote nodes); nothing if it serves nowhere reachable now.
    pub fn migrate(&mut self, key: &str, to: usize) {
        let id = AgentId::new("counter", key).expect("a valid id");
        let Some(i) = (0..self.nodes.len()).find(|&i| {
            let n = &self.nodes[i];
            n.core.is_some()
                && n.paused_until.is_none()
                && n.host.list().iter().any(|(h, _)| *h == id)
        }) else {
            return;
        };
        let others: Vec<usize> = (0..self.nodes.len())
            .filter(|&j| j != i && self.nodes[j].info.role == Role::Remote)
            .collect();
        if others.is_empty() {
            return;
        }
        let j = others[to % others.len()];
        let Some((from_epoch, marks, spec)) = self.nodes[i].host.freeze(&id) else {
            return;
        };
        let now = self.at(self.now);
        let Some(epoch) = self.nodes[i]
            .core
            .as_mut()
            .map(|c| c.move_epoch(now, from_epoch))
        else {
            return;
        };
        let deadline =
            self.now + INSTALL_TIMEOUT + crate::core::LOOKUP_TIMEOUT + self.cfg.heartbeat * 2;
        let what = format!("move {id} to {}", self.nodes[j].info.name);
        self.say(Some(i), &what);
        let op = self.new_move_op(i, deadline, what);
        self.nodes[i].moves.insert(
            op,
            Move {
                id: id.clone(),
                to: j,
                from_epoch,
                epoch,
                committing: false,
                owner: String::new(),
            },
        );
        let life = self.nodes[i].life;
        self.push(
            self.now + INSTALL_TIMEOUT,
            Kind::MoveTimeout { node: i, life, op },
        );
        let msg = DataMsg::Install {
            op,
            id,
            epoch,
            marks,
            spec: spec.map(Box::new),
        };
        self.send(i, j, Wire::Data(msg));
    }

    fn new_move_op(&mut self, node: usize, deadline: Duration, what: String) -> u64 {
        self.next_op += 1;
        let op = self.next_op;
        self.waiting.insert(
            op,
            super::Waiting {
                node,
                deadline,
                what,
            },
        );
        op
    }

    /// A move's message for node `at` from node `from`.
    pub(super) fn move_data(&mut self, at: usize, from: usize, msg: DataMsg) {
        match msg {
            DataMsg::Install {
                op,
                id,
                epoch,
                marks,
                spec,
            } => {
                let ok = self.can_serve(at, from)
                    && self.nodes[at]
                        .host
                        .install(&id, epoch, marks, spec.map(|s| *s));
                if ok {
                    self.say(Some(at), format!("installed {id} at epoch {epoch}"));
                    let life = self.nodes[at].life;
                    self.push(
                        self.now + DRAIN_WAIT,
                        Kind::InstallCheck {
                            node: at,
                            life,
                            id,
                            epoch,
                        },
                    );
                }
                self.send(at, from, Wire::Data(DataMsg::Installed { op, ok }));
            }
            DataMsg::Installed { op, ok } => self.installed(at, op, ok),
            DataMsg::Drained { id, epoch } => {
                if self.nodes[at]
                    .host
                    .shift(&id, epoch, Stage::Installed, Stage::Running)
                {
                    self.say(Some(at), format!("{id} serves here at epoch {epoch}"));
                }
            }
            DataMsg::Discard { id, epoch } => {
                self.nodes[at].host.drop_at(&id, epoch, Stage::Installed);
            }
            _ => unreachable!("not a move's message"),
        }
    }

    /// Whether node `at` takes a request from `from` now (alive, not fenced or past its lease,
    /// not quarantining `from`).
    fn can_serve(&self, at: usize, from: usize) -> bool {
        let node = &self.nodes[at];
        let Some(core) = node.core.as_ref() else {
            return false;
        };
        let peer = &self.nodes[from].info.name;
        !node.quarantined.contains(peer)
            && core
                .standing()
                .refusal(&node.info.name, self.at(self.now))
                .is_none()
    }

    fn installed(&mut self, i: usize, op: u64, ok: bool) {
        let Some(m) = self.nodes[i].moves.get(&op).cloned() else {
            return;
        };
        if m.committing {
            return;
        }
        if !ok || !self.nodes[i].host.is(&m.id, m.from_epoch, Stage::Frozen) {
            return self.abort(i, op);
        }
        let (me, to) = (
            self.nodes[i].info.name.clone(),
            self.nodes[m.to].info.name.clone(),
        );
        let from = Location {
            node: me,
            epoch: m.from_epoch,
        };
        let there = Location {
            node: to,
            epoch: m.epoch,
        };
        let now = self.at(self.now);
        let Some((ticket, owner)) = self.nodes[i].core.as_mut().map(|c| {
            let owner = c.owner_of(&m.id).unwrap_or_default();
            (c.commit_move(now, m.id.clone(), from, there), owner)
        }) else {
            return;
        };
        if let Some(m) = self.nodes[i].moves.get_mut(&op) {
            m.committing = true;
            m.owner = owner;
        }
        self.nodes[i].tickets.insert(ticket, Purpose::Commit { op });
        self.pump(i);
    }

    /// The owner's answer to a commit.
    pub(super) fn committed(&mut self, i: usize, op: u64, result: Result<DirAnswer, AgentError>) {
        let Some(m) = self.nodes[i].moves.get(&op).cloned() else {
            return;
        };
        match result {
            Ok(DirAnswer::Activation(_) | DirAnswer::Ack) => {
                self.nodes[i].moves.remove(&op);
                self.nodes[i]
                    .host
                    .drop_at(&m.id, m.from_epoch, Stage::Frozen);
                self.say(Some(i), format!("moved {} at epoch {}", m.id, m.epoch));
                let msg = DataMsg::Drained {
                    id: m.id,
                    epoch: m.epoch,
                };
                self.send(i, m.to, Wire::Data(msg));
                self.op_ended(op, true);
            }
            Err(AgentError::NotMoved { .. } | AgentError::Fenced { .. }) => self.abort(i, op),
            // no answer: the commit may have happened; the directory says, once it can (the
            // client is told the outcome is unknown; the move goes on being settled)
            _ => {
                self.op_ended(op, false);
                self.ask_outcome(i, op);
            }
        }
    }

    /// [`Sim::ask_outcome`], from the event that asks again (of the same life of the node,
    /// for a move still unsettled).
    pub(super) fn ask_outcome_again(&mut self, i: usize, life: u64, op: u64) {
        if self.nodes[i].life == life && self.nodes[i].moves.contains_key(&op) {
            self.ask_outcome(i, op);
        }
    }

    /// Looks up where the agent of an unanswered commit runs (see [`Sim::outcome`]).
    fn ask_outcome(&mut self, i: usize, op: u64) {
        let Some(m) = self.nodes[i].moves.get(&op).cloned() else {
            return;
        };
        let now = self.at(self.now);
        let Some(ticket) = self.nodes[i]
            .core
            .as_mut()
            .map(|c| c.lookup_at(now, m.id.clone(), &m.owner))
        else {
            return;
        };
        self.nodes[i]
            .tickets
            .insert(ticket, Purpose::Outcome { op });
        self.pump(i);
    }

    /// Where the agent of an unanswered commit runs, as the owner the commit went to says (or
    /// the owner now, once that one is decided down): the target (committed), the source
    /// (not: the commit, sent before this lookup on the same stream, was answered before it),
    /// elsewhere (a failover won: neither instance may run), or unknown yet (asked again
    /// later; frozen meanwhile).
    pub(super) fn outcome(&mut self, i: usize, op: u64, result: Result<DirAnswer, AgentError>) {
        let Some(m) = self.nodes[i].moves.get(&op).cloned() else {
            return;
        };
        let me = self.nodes[i].info.name.clone();
        let to = self.nodes[m.to].info.name.clone();
        match result {
            Ok(DirAnswer::Location(Some(loc))) if loc.node == to && loc.epoch == m.epoch => {
                self.committed(i, op, Ok(DirAnswer::Ack));
            }
            Ok(DirAnswer::Location(Some(loc))) if loc.node == me && loc.epoch == m.from_epoch => {
                self.abort(i, op);
            }
            Ok(DirAnswer::Location(Some(loc))) => {
                // the entry names another activation: is it there (a failover won), or is the
                // entry stale (a copy that missed a commit)? its host says
                let now = self.at(self.now);
                let Some(ticket) = self.nodes[i]
                    .core
                    .as_mut()
                    .map(|c| c.probe_at(now, m.id.clone(), &loc.node))
                else {
                    return;
                };
                self.nodes[i]
                    .tickets
                    .insert(ticket, Purpose::Verify { op, stale: loc });
                self.pump(i);
            }
            Ok(_) => {
                // placed again elsewhere: neither the frozen nor the installed one serves
                self.nodes[i].moves.remove(&op);
                self.nodes[i]
                    .host
                    .drop_at(&m.id, m.from_epoch, Stage::Frozen);
                let msg = DataMsg::Discard {
                    id: m.id,
                    epoch: m.epoch,
                };
                self.send(i, m.to, Wire::Data(msg));
                self.op_ended(op, false);
            }
            Err(_) => {
                let life = self.nodes[i].life;
                self.push(
                    self.now + Duration::from_millis(500),
                    Kind::Outcome { node: i, life, op },
                );
            }
        }
    }

    fn abort(&mut self, i: usize, op: u64) {
        let Some(m) = self.nodes[i].moves.remove(&op) else {
            return;
        };
        let msg = DataMsg::Discard {
            id: m.id.clone(),
            epoch: m.epoch,
        };
        self.send(i, m.to, Wire::Data(msg));
        self.nodes[i]
            .host
            .shift(&m.id, m.from_epoch, Stage::Frozen, Stage::Running);
        self.say(Some(i), format!("move of {} aborted", m.id));
        self.op_ended(op, false);
    }

    pub(super) fn move_timed_out(&mut self, i: usize, op: u64) {
        if self.nodes[i].moves.get(&op).is_some_and(|m| !m.committing) {
            self.abort(i, op);
        }
    }

    /// A target whose source said nothing: the directory decides.
    /// The host named by the owner's entry answered: it runs the agent (a failover won:
    /// neither instance of the move runs), or it does not (the entry is stale: the move is
    /// aborted, and the entry is set back to the source, which runs it again).
    pub(super) fn verified(
        &mut self,
        i: usize,
        op: u64,
        stale: Location,
        result: Result<DirAnswer, AgentError>,
    ) {
        let Some(m) = self.nodes[i].moves.get(&op).cloned() else {
            return;
        };
        match result {
            Ok(DirAnswer::Location(Some(_))) => {
                self.nodes[i].moves.remove(&op);
                self.nodes[i]
                    .host
                    .drop_at(&m.id, m.from_epoch, Stage::Frozen);
                let msg = DataMsg::Discard {
                    id: m.id,
                    epoch: m.epoch,
                };
                self.send(i, m.to, Wire::Data(msg));
                self.op_ended(op, false);
            }
            Err(AgentError::NotFound { .. }) => {
                self.abort(i, op);
                let here = Location {
                    node: self.nodes[i].info.name.clone(),
                    epoch: m.from_epoch,
                };
                let now = self.at(self.now);
                if let Some(ticket) = self.nodes[i]
                    .core
                    .as_mut()
                    .map(|c| c.commit_move(now, m.id.clone(), stale, here))
                {
                    // its answer changes nothing here: the agent runs here either way
                    let _ = ticket;
                }
                self.pump(i);
            }
            _ => {
                let life = self.nodes[i].life;
                self.push(
                    self.now + Duration::from_millis(500),
                    Kind::Outcome { node: i, life, op },
                );
            }
        }
    }

    pub(super) fn check_install(&mut self, j: usize, id: AgentId, epoch: u64) {
        if !self.nodes[j].host.is(&id, epoch, Stage::Installed) {
            return;
        }
        let now = self.at(self.now);
        let Some(ticket) = self.nodes[j]
            .core
            .as_mut()
            .map(|c| c.lookup(now, id.clone()))
        else {
            return;
        };
        self.nodes[j]
            .tickets
            .insert(ticket, Purpose::InstallCheck { id, epoch });
        self.pump(j);
    }

    pub(super) fn install_checked(
        &mut self,
        j: usize,
        id: AgentId,
        epoch: u64,
        result: Result<DirAnswer, AgentError>,
    ) {
        let me = self.nodes[j].info.name.clone();
        match result {
            Ok(DirAnswer::Location(Some(loc))) if loc.node == me && loc.epoch == epoch => {
                self.nodes[j]
                    .host
                    .shift(&id, epoch, Stage::Installed, Stage::Running);
            }
            Ok(_) | Err(AgentError::NotFound { .. }) => {
                self.nodes[j].host.drop_at(&id, epoch, Stage::Installed);
            }
            Err(_) => {
                let life = self.nodes[j].life;
                self.push(
                    self.now + Duration::from_secs(1),
                    Kind::InstallCheck {
                        node: j,
                        life,
                        id,
                        epoch,
                    },
                );
            }
        }
    }
}
