//! The owner's part of a live migration: the commit, a compare-and-set on the entry.
//!
//! ```text
//! Move{from, to} ──▶ fenced, or placing the id now ─────────────▶ refused (retry later)
//!                ──▶ entry names `to` already ──────────────────▶ the activation on `to`
//!                ──▶ entry names `from` ──▶ entry := `to` (and the host's life); copied to
//!                                           the backup ─────────▶ the activation on `to`
//!                ──▶ otherwise (a failover or another move won) ─▶ NotMoved, saying where
//! ```
//!
//! The source retries a commit whose answer it did not get (to whichever node owns the id
//! then): answering "already `to`" makes the retry safe, and an entry that names neither
//! tells it the move lost, so it must not run the agent again either (see the source's side,
//! `tether_cluster::migration`).

use tether_actors::{Activation, AgentError, AgentId};
use tether_cluster::directory::Location;
use tether_cluster::role::Cx;
use tracing::info;

use super::{copy_to_backup, Owner};

impl Owner {
    /// Commits a move of `id` from `from` to `to` (see the module doc).
    pub(crate) fn commit_move(
        &mut self,
        cx: &mut Cx<'_>,
        fenced: bool,
        id: &AgentId,
        from: &Location,
        to: &Location,
    ) -> Result<Activation, AgentError> {
        if fenced {
            return Err(AgentError::Fenced {
                node: cx.me().to_owned(),
            });
        }
        if cx.owner_and_backup(id).0.as_deref() != Some(cx.me()) {
            // a backup's copy, or a view that changed: only the owner decides (nothing is
            // committed here, so the source may resume)
            return Err(AgentError::NotMoved {
                id: id.to_string(),
                reason: format!("{} does not own it now; try again", cx.me()),
            });
        }
        if self.runs.get(id).is_some_and(|r| !r.queue.is_empty()) {
            return Err(AgentError::Unavailable {
                id: id.to_string(),
                reason: format!("its owner {} is placing or looking it up now", cx.me()),
            });
        }
        let moved = Activation {
            id: id.clone(),
            node: to.node.clone(),
            epoch: to.epoch,
            created: true,
        };
        let Some(e) = self.entries.get(id).cloned() else {
            return Err(AgentError::NotMoved {
                id: id.to_string(),
                reason: format!("its owner {} has no entry of it", cx.me()),
            });
        };
        if *e.node == to.node && e.epoch == to.epoch {
            return Ok(Activation {
                created: false,
                ..moved
            });
        }
        if *e.node != from.node || e.epoch != from.epoch || !e.usable() {
            return Err(AgentError::NotMoved {
                id: id.to_string(),
                reason: format!(
                    "the directory has it on {} as epoch {}, not on {} as epoch {}",
                    e.node,
                    tether_actors::epoch::Shown(e.epoch),
                    from.node,
                    tether_actors::epoch::Shown(from.epoch)
                ),
            });
        }
        let mut next = e;
        next.node = self.entries.name(&to.node);
        next.life = cx.life_of(&to.node).unwrap_or_default();
        next.epoch = to.epoch;
        next.copied_to = None;
        self.entries.insert(id.clone(), next);
        copy_to_backup(&mut self.entries, cx, id);
        info!(agent = %id, from = %from.node, to = %to.node, "move committed");
        Ok(moved)
    }
}
