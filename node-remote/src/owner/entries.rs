//! The directory entries a remote node keeps: the ids it owns, and copies of entries for the
//! ids it backs up. Per hosting node it also counts the entries (placement's load).

use std::collections::HashMap;
use std::sync::Arc;

use tether_actors::{AgentId, IdHash, SpawnRecord};
use tether_cluster::directory::{AgentSpec, EntryCopy};
use tether_supervision::StoredPolicy;

/// One directory entry.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// Interned (see [`Entries::name`]): every entry of a node shares its name.
    pub(crate) node: Arc<str>,
    /// The incarnation of `node` that runs the activation: a node that restarted since has
    /// lost it.
    pub(crate) life: u64,
    pub(crate) epoch: u64,
    /// Why the agent failed for good (its supervisor gave up). Such an entry is not failed
    /// over; a new spawn places it again. Boxed strings (16 bytes, not 24): every entry pays
    /// for the inline size, few use it.
    pub(crate) failed: Option<Box<str>>,
    /// A fence on its host stopped the activation: it is placed again.
    pub(crate) evicted: bool,
    /// How it was spawned, kept by the owner that placed it (and its backup) so it can be
    /// activated again elsewhere when its node is decided down. `None` for entries rebuilt by
    /// probing hosts.
    pub(crate) spec: Option<Arc<Spec>>,
    /// The backup (and its life) the owner last sent a copy of this entry to.
    pub(crate) copied_to: Option<(Box<str>, u64)>,
}

/// What a failover needs to activate an agent again.
#[derive(Debug)]
pub(crate) struct Spec {
    /// Shared with the host, when the agent runs on this node.
    pub(crate) record: Arc<SpawnRecord>,
    pub(crate) policy: StoredPolicy,
    pub(crate) group: Option<String>,
}

impl Spec {
    pub(crate) fn agent_spec(&self) -> AgentSpec {
        AgentSpec::of(&self.record, self.policy.get(), self.group.clone())
    }
}

impl Entry {
    /// An entry of an activation found on `node`'s life `life` (no spawn record).
    pub(crate) fn found(node: Arc<str>, life: u64, epoch: u64) -> Self {
        Self {
            node,
            life,
            epoch,
            failed: None,
            evicted: false,
            spec: None,
            copied_to: None,
        }
    }

    /// Whether the activation it names may serve: it neither failed for good nor was stopped
    /// by a fence.
    pub(crate) fn usable(&self) -> bool {
        self.failed.is_none() && !self.evicted
    }

    /// The entry as it travels, if it has a spawn record.
    pub(crate) fn copy(&self, id: &AgentId) -> Option<EntryCopy> {
        let spec = self.spec.as_ref()?;
        Some(EntryCopy {
            id: id.clone(),
            node: self.node.to_string(),
            life: self.life,
            epoch: self.epoch,
            spec: spec.agent_spec(),
            failed: self.failed.as_deref().map(str::to_owned),
            evicted: self.evicted,
        })
    }
}

/// The entries of one node.
#[derive(Debug, Default)]
pub(crate) struct Entries {
    dir: HashMap<AgentId, Entry, IdHash>,
    load: HashMap<Arc<str>, usize>,
    names: Vec<Arc<str>>,
}

impl Entries {
    pub(crate) fn get(&self, id: &AgentId) -> Option<&Entry> {
        self.dir.get(id)
    }

    pub(crate) fn get_mut(&mut self, id: &AgentId) -> Option<&mut Entry> {
        self.dir.get_mut(id)
    }

    /// The ids of every entry, sorted (so that a reconciliation sends the same messages in
    /// the same order for the same state: the simulator replays it).
    pub(crate) fn ids(&self) -> Vec<AgentId> {
        let mut ids: Vec<AgentId> = self.dir.keys().cloned().collect();
        ids.sort();
        ids
    }

    pub(crate) fn len(&self) -> usize {
        self.dir.len()
    }

    /// `node`'s name, shared: an entry holds a reference, not a copy (nodes are few, agents
    /// many).
    pub(crate) fn name(&mut self, node: &str) -> Arc<str> {
        if let Some(n) = self.names.iter().find(|n| &***n == node) {
            return n.clone();
        }
        let n: Arc<str> = node.into();
        self.names.push(n.clone());
        n
    }

    /// Agents this node placed on `node` (as far as it knows).
    pub(crate) fn load(&self, node: &str) -> usize {
        self.load.get(node).copied().unwrap_or(0)
    }

    pub(crate) fn insert(&mut self, id: AgentId, e: Entry) {
        let node = e.node.clone();
        if let Some(old) = self.dir.insert(id, e) {
            self.unload(&old.node);
        }
        *self.load.entry(node).or_insert(0) += 1;
    }

    pub(crate) fn remove(&mut self, id: &AgentId) -> Option<Entry> {
        let old = self.dir.remove(id)?;
        self.unload(&old.node);
        Some(old)
    }

    fn unload(&mut self, node: &str) {
        if let Some(n) = self.load.get_mut(node) {
            *n = n.saturating_sub(1);
        }
    }

    /// Merges an entry copy from another remote node; the newer epoch wins. Of the same
    /// activation, what either knows is kept: the spawn record, that it failed for good, that a
    /// fence stopped it (facts about one activation only ever become true).
    pub(crate) fn merge(&mut self, copy: EntryCopy) {
        let node = self.name(&copy.node);
        if let Some(old) = self.dir.get_mut(&copy.id) {
            if old.epoch > copy.epoch {
                return;
            }
            if old.epoch == copy.epoch && old.spec.is_some() {
                old.evicted |= copy.evicted;
                if old.failed.is_none() {
                    old.failed = copy.failed.map(Into::into);
                }
                return;
            }
        }
        let same = self.dir.get(&copy.id).filter(|old| old.epoch == copy.epoch);
        let failed = same
            .and_then(|old| old.failed.clone())
            .or(copy.failed.map(Into::into));
        let evicted = copy.evicted || same.is_some_and(|old| old.evicted);
        let spec = Spec {
            record: copy.spec.record(),
            policy: copy.spec.policy.into(),
            group: copy.spec.group,
        };
        let entry = Entry {
            node,
            life: copy.life,
            epoch: copy.epoch,
            failed,
            evicted,
            spec: Some(Arc::new(spec)),
            copied_to: None,
        };
        self.insert(copy.id, entry);
    }

    /// Records an activation a probe found, unless the entry knows it (or a newer one)
    /// already; a spawn record the entry held is kept (an activation found has none of its
    /// own, and a failover needs one).
    pub(crate) fn found(&mut self, id: &AgentId, node: &str, life: u64, epoch: u64) {
        let spec = match self.dir.get(id) {
            Some(old) if old.epoch >= epoch => return,
            Some(old) => old.spec.clone(),
            None => None,
        };
        let node = self.name(node);
        let entry = Entry {
            spec,
            ..Entry::found(node, life, epoch)
        };
        self.insert(id.clone(), entry);
    }

    /// An activation ended: forgotten (a clean stop) or marked failed.
    pub(crate) fn record_exit(&mut self, id: &AgentId, epoch: u64, reason: Option<String>) {
        let matches = self.dir.get(id).is_some_and(|e| e.epoch == epoch);
        if !matches {
            return;
        }
        match reason {
            Some(r) => {
                if let Some(e) = self.dir.get_mut(id) {
                    e.failed = Some(r.into());
                }
            }
            None => {
                self.remove(id);
            }
        }
    }
}
