//! A simulated node's host: which agents it runs, at which epoch, and the checks a real host
//! makes at its door (epoch fencing, duplicates by sequence number).

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tether_actors::{AgentError, AgentId};

use crate::core::HostView;

/// One agent hosted by a simulated node.
#[derive(Debug, Clone, Default)]
pub(crate) struct Hosted {
    pub(crate) epoch: u64,
    pub(crate) local_only: bool,
    /// Last sequence number applied, per sender.
    pub(crate) last_seq: BTreeMap<String, u64>,
}

/// The agents of one simulated node.
#[derive(Debug, Default)]
pub(crate) struct SimHost {
    agents: Mutex<BTreeMap<AgentId, Hosted>>,
}

impl HostView for SimHost {
    fn epoch_of(&self, id: &AgentId) -> Option<u64> {
        self.lock().get(id).map(|h| h.epoch)
    }

    fn is_local_only(&self, id: &AgentId) -> bool {
        self.lock().get(id).is_some_and(|h| h.local_only)
    }
}

impl SimHost {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<AgentId, Hosted>> {
        self.agents.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Get-or-activate, as a real host: an agent running here already is returned as is.
    /// Returns the epoch that runs, and whether it was created now.
    pub(crate) fn activate(&self, id: &AgentId, epoch: u64, local_only: bool) -> (u64, bool) {
        let mut agents = self.lock();
        if let Some(h) = agents.get(id) {
            return (h.epoch, false);
        }
        agents.insert(
            id.clone(),
            Hosted {
                epoch,
                local_only,
                last_seq: BTreeMap::new(),
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
            .ok_or_else(|| AgentError::NotFound { id: id.to_string() })?;
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

    /// Stops every agent (a fence, a crash); returns what ran.
    pub(crate) fn clear(&self) -> Vec<(AgentId, u64)> {
        std::mem::take(&mut *self.lock())
            .into_iter()
            .map(|(id, h)| (id, h.epoch))
            .collect()
    }

    /// What runs here.
    pub(crate) fn list(&self) -> Vec<(AgentId, u64)> {
        self.lock()
            .iter()
            .map(|(id, h)| (id.clone(), h.epoch))
            .collect()
    }
}
