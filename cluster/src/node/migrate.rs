//! A node's side of a live migration (the protocol is in [`crate::migration`]): as the source
//! it checks, freezes, installs on the target, commits at the owner and hands over; as the
//! target it installs and discards; and it forwards what comes for agents that moved away.

use std::sync::Arc;
use std::time::Duration;

use tether_actors::host::FrozenAgent;
use tether_actors::{Activation, AgentError, AgentId, Checkpoint};
use tether_supervision::AddAgent;
use tracing::{info, warn};

use super::driver::Driver;
use crate::agents::protocol::{Answer, Request};
use crate::agents::ControlPlane;
use crate::directory::{self, AgentSpec, DirAnswer, Location};
use crate::migration::{CommitOutcome, MoveReport, COMMIT_TRIES, FREEZE_WITHIN, INSTALL_TIMEOUT};

/// How long a move's target waits for its source to say it handed everything over before it
/// asks the directory whether it runs the agent.
const DRAIN_WAIT: Duration = Duration::from_secs(10);

fn not_moved(id: &AgentId, reason: impl Into<String>) -> AgentError {
    AgentError::NotMoved {
        id: id.to_string(),
        reason: reason.into(),
    }
}

impl Driver {
    /// Moves `id`, which runs here, to `to` (see [`crate::migration`]).
    pub(crate) async fn migrate(&self, id: AgentId, to: String) -> Result<MoveReport, AgentError> {
        let Some(epoch) = self.host.epoch_of(&id) else {
            return Err(AgentError::NotHere {
                id: id.to_string(),
                node: self.me.clone(),
            });
        };
        let policy = self.check_move(&id, &to).await?;
        let frozen = self.host.freeze(&id, FREEZE_WITHIN).await?;
        let new_epoch = self.with(|c, now| c.move_epoch(now, epoch));
        let state_bytes = frozen.checkpoint.state.len();
        let spec = AgentSpec::of(&frozen.record, policy, None);
        let install = self
            .io
            .request(
                &to,
                |req| Request::Install {
                    req,
                    id: id.clone(),
                    epoch: new_epoch,
                    spec: Box::new(spec),
                    cp: Box::new(frozen.checkpoint.clone()),
                },
                INSTALL_TIMEOUT,
            )
            .await;
        if let Err(e) = install.and_then(|a| match a {
            Answer::Installed(_) => Ok(()),
            other => Err(AgentError::Internal(format!("unexpected answer {other:?}"))),
        }) {
            return self
                .abort(
                    frozen,
                    &to,
                    new_epoch,
                    format!("{to} did not install it: {e}"),
                )
                .await;
        }
        let from = Location {
            node: self.me.clone(),
            epoch,
        };
        let there = Location {
            node: to.clone(),
            epoch: new_epoch,
        };
        let owner = self.read(|c| c.owner_of(&id)).unwrap_or_default();
        match self.commit(&id, from.clone(), there.clone(), &owner).await {
            CommitOutcome::Committed => self.finish(frozen, &to, new_epoch, state_bytes).await,
            CommitOutcome::Refused(e) => self.abort(frozen, &to, new_epoch, e.to_string()).await,
            CommitOutcome::Elsewhere(e) => {
                self.lost_to_elsewhere(frozen, &to, new_epoch).await;
                Err(e)
            }
            CommitOutcome::Unknown(e) => {
                // the commit may have happened: the agent stays frozen (it serves nowhere,
                // what comes for it waits) until the owner it went to can say
                if let Some(me) = self.arc() {
                    tokio::spawn(async move {
                        me.settle_move(frozen, to, from, there, owner, state_bytes)
                            .await
                    });
                }
                Err(not_moved(
                    &id,
                    format!(
                        "the commit was not answered ({e}); it stays frozen until its \
                         directory owner says whether it moved"
                    ),
                ))
            }
        }
    }

    /// After the commit: forgotten by this node's supervision, what it had not handled and
    /// what waited go to the target in order, and the target runs it for everyone.
    async fn finish(
        &self,
        frozen: FrozenAgent,
        to: &str,
        new_epoch: u64,
        state_bytes: usize,
    ) -> Result<MoveReport, AgentError> {
        let id = frozen.checkpoint.id.clone();
        if let Err(e) = self.sup.forget(&id).await {
            warn!(agent = %id, error = %e, "a moved agent stays in this node's supervision tree");
        }
        let FrozenAgent {
            calls, frozen_at, ..
        } = frozen;
        // what it had not handled and what waited go first, on this node's stream to the
        // target; then this node's own senders go there too, behind them on the same stream;
        // then the target runs it for everyone
        self.host.moved(&id, to, new_epoch, calls);
        let there = Location {
            node: to.to_owned(),
            epoch: new_epoch,
        };
        self.routes.set(&self.me, &id, &there);
        let drained = |req| Request::Drained {
            req,
            id: id.clone(),
            epoch: new_epoch,
        };
        if let Err(e) = self.io.request(to, drained, INSTALL_TIMEOUT).await {
            warn!(agent = %id, %to, error = %e, "the target did not hear that the move was handed over; it asks the directory");
        }
        let pause_ms = frozen_at.elapsed().as_secs_f64() * 1e3;
        info!(agent = %id, %to, epoch = new_epoch, pause_ms, state_bytes, "agent moved");
        Ok(MoveReport {
            agent: id.to_string(),
            from: self.me.clone(),
            to: to.to_owned(),
            epoch: new_epoch,
            pause_ms,
            state_bytes,
        })
    }

    /// A move whose commit was not answered: asks the owner it went to, until it can say.
    async fn settle_move(
        &self,
        frozen: FrozenAgent,
        to: String,
        from: Location,
        there: Location,
        owner: String,
        state_bytes: usize,
    ) {
        let id = frozen.checkpoint.id.clone();
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            match self.outcome(&id, &from, &there, &owner).await {
                CommitOutcome::Committed => {
                    let _ = self.finish(frozen, &to, there.epoch, state_bytes).await;
                    return;
                }
                CommitOutcome::Refused(e) => {
                    let _ = self.abort(frozen, &to, there.epoch, e.to_string()).await;
                    return;
                }
                CommitOutcome::Elsewhere(_) => {
                    return self.lost_to_elsewhere(frozen, &to, there.epoch).await;
                }
                CommitOutcome::Unknown(_) => {}
            }
        }
    }

    /// The directory placed the agent elsewhere meanwhile: neither the frozen instance here
    /// nor the one installed on the target may run.
    async fn lost_to_elsewhere(&self, frozen: FrozenAgent, to: &str, epoch: u64) {
        let id = frozen.checkpoint.id.clone();
        warn!(agent = %id, "placed elsewhere while it moved: the frozen instance is dropped");
        let _ = self
            .io
            .request(
                to,
                |req| Request::Discard {
                    req,
                    id: id.clone(),
                    epoch,
                },
                INSTALL_TIMEOUT,
            )
            .await;
        let _ = self.sup.forget(&id).await;
        self.host.drop_frozen(&id, frozen.calls);
    }

    /// Refuses new activations here (a node being drained), or takes them again.
    pub(crate) fn set_draining(&self, on: bool) {
        self.draining
            .store(on, std::sync::atomic::Ordering::Release);
        info!(on, "draining");
    }

    /// Where an agent leaving this node goes when no node is named: among the up nodes that
    /// have its kind and that its placement allows (remote ones first, unless it prefers
    /// local), the rendezvous choice for its id, so that a drain spreads agents evenly.
    pub(crate) fn choose_target(&self, id: &AgentId) -> Result<String, AgentError> {
        let placement = self.host.placement_of(id).unwrap_or_default();
        let view = self.view();
        let caps = |n: &str| self.read(|c| c.members().caps_of(n).to_vec());
        let candidates: Vec<(&str, crate::Role)> = view
            .up
            .members(id.kind())
            .filter(|(n, role, has)| {
                *has && *n != self.me && directory::fits(&placement, *role, &caps(n)).is_ok()
            })
            .map(|(n, role, _)| (n, role))
            .collect();
        let prefer = match placement.prefer {
            tether_actors::Prefer::Local => crate::Role::Local,
            _ => crate::Role::Remote,
        };
        let preferred = candidates.iter().any(|(_, r)| *r == prefer);
        let pool = candidates
            .iter()
            .filter(|(_, r)| !preferred || *r == prefer)
            .map(|(n, _)| *n);
        directory::owner(id.as_str(), pool)
            .map(str::to_owned)
            .ok_or_else(|| not_moved(id, "no other up node has its kind and fits its placement"))
    }

    /// The checks before a move; the agent's restart policy (it goes with it).
    async fn check_move(
        &self,
        id: &AgentId,
        to: &str,
    ) -> Result<tether_supervision::AgentPolicy, AgentError> {
        if to == self.me {
            return Err(not_moved(id, format!("it already runs on {to}")));
        }
        if self
            .host
            .placement_of(id)
            .is_some_and(|p| p.is_local_only())
        {
            return Err(not_moved(
                id,
                "it is local-only: its state never leaves its device",
            ));
        }
        let view = self.view();
        let Some((_, role, has_kind)) = view.up.members(id.kind()).find(|(n, ..)| *n == to) else {
            return Err(AgentError::NodeUnreachable {
                node: to.to_owned(),
            });
        };
        if !has_kind {
            return Err(AgentError::UnknownKind {
                kind: id.kind().to_owned(),
                node: to.to_owned(),
                registered: self.read(|c| c.members().kinds_of(to).join(", ")),
            });
        }
        let placement = self.host.placement_of(id).unwrap_or_default();
        let caps = self.read(|c| c.members().caps_of(to).to_vec());
        directory::fits(&placement, role, &caps).map_err(|why| AgentError::Placement {
            reason: format!("{id} cannot run on {to}: {why}"),
        })?;
        match self.sup.root_policy(id).await {
            Ok(Some(p)) => Ok(p),
            Ok(None) => Err(not_moved(
                id,
                "it runs under a supervisor group, which lives on one node",
            )),
            Err(e) => Err(not_moved(id, e.to_string())),
        }
    }

    /// Asks the owner to commit, again while the answer says nothing; then asks the owner
    /// the commit went to where the agent runs (see [`Driver::outcome`]).
    async fn commit(
        &self,
        id: &AgentId,
        from: Location,
        to: Location,
        owner: &str,
    ) -> CommitOutcome {
        for attempt in 0..COMMIT_TRIES {
            let rx = self.with(|c, now| {
                let t = c.commit_move(now, id.clone(), from.clone(), to.clone());
                self.ticket(t)
            });
            let result = rx
                .await
                .unwrap_or_else(|_| Err(AgentError::Internal("the node is stopping".into())));
            match CommitOutcome::of(result.map(|_: DirAnswer| ())) {
                CommitOutcome::Unknown(e) => {
                    warn!(agent = %id, attempt, error = %e, "commit of a move not answered");
                    tokio::time::sleep(Duration::from_millis(200 << attempt.min(4))).await;
                }
                decided => return decided,
            }
        }
        self.outcome(id, &from, &to, owner).await
    }

    /// Where the agent of an unanswered commit runs, as the owner the commit went to says
    /// (the owner now, once that one is decided down): a commit sent before on the same
    /// stream was answered before this lookup, so its entry tells.
    async fn outcome(
        &self,
        id: &AgentId,
        from: &Location,
        to: &Location,
        owner: &str,
    ) -> CommitOutcome {
        let rx = self.with(|c, now| {
            let t = c.lookup_at(now, id.clone(), owner);
            self.ticket(t)
        });
        match rx.await {
            Ok(Ok(DirAnswer::Location(Some(loc)))) if loc == *to => CommitOutcome::Committed,
            Ok(Ok(DirAnswer::Location(Some(loc)))) if loc == *from => {
                CommitOutcome::Refused(not_moved(id, "its owner did not commit it"))
            }
            Ok(Ok(DirAnswer::Location(Some(loc)))) => self.verify_elsewhere(id, from, loc).await,
            Ok(Err(e)) => CommitOutcome::Unknown(e),
            _ => CommitOutcome::Unknown(not_moved(id, "the commit was never answered")),
        }
    }

    /// The owner's entry names another activation: if its host runs it, a failover won (no
    /// instance of the move runs); if not, the entry is stale (a copy that missed a commit):
    /// it is set back to the source, which runs the agent again.
    async fn verify_elsewhere(
        &self,
        id: &AgentId,
        from: &Location,
        named: Location,
    ) -> CommitOutcome {
        let rx = self.with(|c, now| {
            let t = c.probe_at(now, id.clone(), &named.node);
            self.ticket(t)
        });
        match rx.await {
            Ok(Ok(DirAnswer::Location(Some(_)))) => CommitOutcome::Elsewhere(not_moved(
                id,
                format!("its owner placed it on {} meanwhile", named.node),
            )),
            Ok(Err(AgentError::NotFound { .. })) => {
                // its answer changes nothing here: the agent runs here again either way
                self.with(|c, now| {
                    c.commit_move(now, id.clone(), named.clone(), from.clone());
                });
                CommitOutcome::Refused(not_moved(
                    id,
                    format!(
                        "its owner's entry named {}, which does not run it; it runs here again",
                        named.node
                    ),
                ))
            }
            Ok(Err(e)) => CommitOutcome::Unknown(e),
            _ => {
                CommitOutcome::Unknown(not_moved(id, "the node the directory named did not answer"))
            }
        }
    }

    /// A move that failed before its commit: the target's instance is dropped, and the agent
    /// runs here again from its frozen state.
    async fn abort(
        &self,
        frozen: FrozenAgent,
        to: &str,
        epoch: u64,
        why: String,
    ) -> Result<MoveReport, AgentError> {
        let id = frozen.checkpoint.id.clone();
        let discard = self
            .io
            .request(
                to,
                |req| Request::Discard {
                    req,
                    id: id.clone(),
                    epoch,
                },
                INSTALL_TIMEOUT,
            )
            .await;
        if let Err(e) = discard {
            // it was never committed, so nothing routes to it; it stays dormant there
            warn!(agent = %id, node = %to, error = %e, "an aborted move's instance was not discarded");
        }
        self.host.unfreeze(frozen).await?;
        Err(not_moved(&id, why))
    }

    /// The target's side: starts `id` from `cp`, dormant, under the root supervisor; a
    /// durable agent's checkpoint is stored first.
    pub(crate) async fn install_here(
        &self,
        from: &str,
        id: AgentId,
        epoch: u64,
        spec: AgentSpec,
        cp: Checkpoint,
    ) -> Result<Activation, AgentError> {
        if let Some(e) = self.gate.refusal().or_else(|| self.draining_refusal()) {
            return Err(e);
        }
        if spec.placement.is_local_only() {
            return Err(not_moved(&id, "it is local-only"));
        }
        if spec.durability.is_durable() {
            self.durable.store(vec![cp.clone()]).await?;
        }
        self.host.expect_install(&id, epoch, from);
        let a = AddAgent {
            id: id.clone(),
            epoch,
            record: spec.record(),
            policy: spec.policy,
            trace: tether_actors::TraceContext::new_root(),
            restore: Some(Arc::new(cp)),
        };
        let mut act = self.sup.activate(a, None).await;
        if act.is_ok() {
            // what this node forwarded to the source before the install (a tombstone of an
            // earlier move) must reach the source first: it goes there before the commit
            let barrier = |req| Request::Barrier {
                req,
                id: id.clone(),
                relayed: false,
            };
            if let Err(e) = self.io.request(from, barrier, INSTALL_TIMEOUT).await {
                act = Err(e);
            }
        }
        if act.is_err() {
            self.host.discard(&id, epoch);
        } else if let Some(me) = self.arc() {
            // a source lost after the commit never says it handed everything over
            tokio::spawn(async move { me.settle_install(id, epoch).await });
        }
        act
    }

    /// A move's target whose source did not say it handed everything over within
    /// DRAIN_WAIT: the directory decides whether it runs here.
    async fn settle_install(&self, id: AgentId, epoch: u64) {
        tokio::time::sleep(DRAIN_WAIT).await;
        if !self.host.is_installed(&id, epoch) {
            return;
        }
        let here = Location {
            node: self.me.clone(),
            epoch,
        };
        match self.lookup(&id).await {
            Ok(Ok(DirAnswer::Location(Some(loc)))) if loc == here => {
                warn!(agent = %id, "its move's source went silent after the commit; it runs here");
                self.host.drained(&id, epoch);
            }
            Ok(Ok(_)) => self.host.discard(&id, epoch),
            // the directory cannot say: ask again later
            _ => Box::pin(self.settle_install(id, epoch)).await,
        }
    }

    /// Why an activation is refused here while the node is drained.
    pub(crate) fn draining_refusal(&self) -> Option<AgentError> {
        self.draining
            .load(std::sync::atomic::Ordering::Acquire)
            .then(|| AgentError::Unavailable {
                id: String::new(),
                reason: format!("node {} is being drained and takes no new agents", self.me),
            })
    }

    /// The target's side of an abort.
    /// Passes a barrier to `peer` (see `Request::Barrier`); `relayed`: and back from it.
    pub(crate) async fn pass_barrier(
        &self,
        peer: &str,
        id: AgentId,
        relayed: bool,
    ) -> Result<(), AgentError> {
        let barrier = |req| Request::Barrier { req, id, relayed };
        match self.io.request(peer, barrier, INSTALL_TIMEOUT).await? {
            Answer::Passed => Ok(()),
            other => Err(AgentError::Internal(format!(
                "unexpected answer to a barrier: {other:?}"
            ))),
        }
    }

    /// A barrier that came along the way to `id` (see `Request::Barrier`): passed on to where
    /// this node forwards `id`'s messages, if it does, so that it comes after them.
    pub(crate) async fn barrier_along(&self, id: AgentId) -> Result<(), AgentError> {
        match self.host.moved_to(&id) {
            Some((to, _)) if to != self.me => self.pass_barrier(&to, id, true).await,
            _ => Ok(()),
        }
    }

    pub(crate) async fn discard_here(&self, id: &AgentId, epoch: u64) {
        if self.host.epoch_of(id) == Some(epoch) {
            let _ = self.sup.forget(id).await;
            self.host.discard(id, epoch);
        }
    }
}
