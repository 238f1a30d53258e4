//! A simulated node's host: which agents it runs, at which epoch, and the checks a real host
//! makes at its door (epoch fencing, duplicates by sequence number).

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tether_actors::{AgentError, AgentId};

use crate::core::HostView;
use crate::directory::AgentSpec;

/// Where a hosted agent is in a move (see `tether_cluster::migration`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Stage {
    /// It serves.
    #[default]
    Running,
    /// Frozen at the source: it serves nothing, and runs again if the move is aborted.
    Frozen,
    /// Installed at the target: it serves nothing until the source says it handed over.
    Installed,
}

/// One agent hosted by a simulated node.
#[derive(Debug, Clone, Default)]
pub(crate) struct Hosted {
    pub(crate) epoch: u64,
    pub(crate) local_only: bool,
    pub(crate) stage: Stage,
    /// Last sequence number applied, per sender.
    pub(crate) last_seq: BTreeMap<String, u64>,
    /// How it was spawned, as a real host keeps it.
    pub(crate) spec: Option<AgentSpec>,
}

/// The agents of one simulated node.
#[derive(Debug, Default)]
pub(crate) struct SimHost {
    agents: Mutex<BTreeMap<AgentId, Hosted>>,
}

impl HostView for SimHost {
    fn epoch_of(&self, id: &AgentId) -> Option<u64> {
        // a frozen agent runs here until its move commits; an installed one does not yet
        self.lock()
            .get(id)
            .filter(|h| h.stage != Stage::Installed)
            .map(|h| h.epoch)
    }

    fn is_local_only(&self, id: &AgentId) -> bool {
        self.lock().get(id).is_some_and(|h| h.local_only)
    }

    fn installing(&self, id: &AgentId) -> Option<u64> {
        self.lock()
            .get(id)
            .filter(|h| h.stage == Stage::Installed)
            .map(|h| h.epoch)
    }
}

impl SimHost {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<AgentId, Hosted>> {
        self.agents.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Get-or-activate, as a real host: an agent running here already is returned as is.
    /// Returns the epoch that runs, and whether it was created now.
    pub(crate) fn activate(
        &self,
        id: &AgentId,
        epoch: u64,
        local_only: bool,
        spec: AgentSpec,
    ) -> (u64, bool) {
        let mut agents = self.lock();
        if let Some(h) = agents.get(id).filter(|h| h.stage != Stage::Installed) {
            return (h.epoch, false);
        }
        agents.insert(
            id.clone(),
            Hosted {
                epoch,
                local_only,
                spec: Some(spec),
                ..Hosted::default()
            },
        );
        (epoch, true)
    }

    /// A message from `sender` numbered `seq` for `id`, addressed to `epoch` (0: any): the
    /// host's door checks. Returns the epoch of the activation that took it.
    ///
    /// # Errors
    /// Not hosted here, an older epoch (fencing), a number seen before (a duplicate).
    pub(crate) fn admit(
        &self,
        id: &AgentId,
        epoch: u64,
        sender: &str,
        seq: u64,
    ) -> Result<u64, AgentError> {
        let mut agents = self.lock();
        let h = agents
            .get_mut(id)
            .filter(|h| h.stage != Stage::Installed)
            .ok_or_else(|| AgentError::NotFound { id: id.to_string() })?;
        if h.stage == Stage::Frozen {
            // (a real host holds it for the move's outcome; refusing is the stricter model)
            return Err(AgentError::Unavailable {
                id: id.to_string(),
                reason: "moving".into(),
            });
        }
        if epoch != 0 && epoch < h.epoch {
            return Err(AgentError::StaleEpoch {
                id: id.to_string(),
                sent: epoch,
                current: h.epoch,
            });
        }
        let last = h.last_seq.entry(sender.to_owned()).or_insert(0);
        if seq <= *last {
            return Err(AgentError::Duplicate {
                id: id.to_string(),
                sender: sender.to_owned(),
                seq,
            });
        }
        *last = seq;
        Ok(h.epoch)
    }

    /// Stops every agent (a fence, a crash); returns what ran, with how it was spawned.
    pub(crate) fn clear(&self) -> Vec<(AgentId, u64, Option<AgentSpec>)> {
        std::mem::take(&mut *self.lock())
            .into_iter()
            .map(|(id, h)| (id, h.epoch, h.spec))
            .collect()
    }

    /// What serves here (not frozen, not merely installed).
    pub(crate) fn list(&self) -> Vec<(AgentId, u64)> {
        self.lock()
            .iter()
            .filter(|(_, h)| h.stage == Stage::Running)
            .map(|(id, h)| (id.clone(), h.epoch))
            .collect()
    }

    /// Freezes `id` for a move: its epoch, sequence marks and spawn record, if it was running
    /// here.
    pub(crate) fn freeze(
        &self,
        id: &AgentId,
    ) -> Option<(u64, BTreeMap<String, u64>, Option<AgentSpec>)> {
        let mut agents = self.lock();
        let h = agents
            .get_mut(id)
            .filter(|h| h.stage == Stage::Running && !h.local_only)?;
        h.stage = Stage::Frozen;
        Some((h.epoch, h.last_seq.clone(), h.spec.clone()))
    }

    /// Whether `id` is at `stage` as `epoch` here.
    pub(crate) fn is(&self, id: &AgentId, epoch: u64, stage: Stage) -> bool {
        self.lock()
            .get(id)
            .is_some_and(|h| h.epoch == epoch && h.stage == stage)
    }

    /// Moves `id` from `from` to `to` at `epoch`, if it is there; whether it was.
    pub(crate) fn shift(&self, id: &AgentId, epoch: u64, from: Stage, to: Stage) -> bool {
        let mut agents = self.lock();
        match agents
            .get_mut(id)
            .filter(|h| h.epoch == epoch && h.stage == from)
        {
            Some(h) => {
                h.stage = to;
                true
            }
            None => false,
        }
    }

    /// Drops `id` at `epoch` if it is at `stage` (a committed source, an aborted target).
    pub(crate) fn drop_at(&self, id: &AgentId, epoch: u64, stage: Stage) {
        let mut agents = self.lock();
        if agents
            .get(id)
            .is_some_and(|h| h.epoch == epoch && h.stage == stage)
        {
            agents.remove(id);
        }
    }

    /// Installs `id` as `epoch` with the source's marks; false if it serves here already.
    pub(crate) fn install(
        &self,
        id: &AgentId,
        epoch: u64,
        marks: BTreeMap<String, u64>,
        spec: Option<AgentSpec>,
    ) -> bool {
        let mut agents = self.lock();
        if agents.get(id).is_some_and(|h| h.stage != Stage::Installed) {
            return false;
        }
        agents.insert(
            id.clone(),
            Hosted {
                epoch,
                local_only: false,
                stage: Stage::Installed,
                last_seq: marks,
                spec,
            },
        );
        true
    }
}
