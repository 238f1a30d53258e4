//! [`Kinds`]: the agent kinds a node registers, which is what other nodes may spawn on it.

use std::sync::Arc;

use crate::agent::Agent;
use crate::kind::{erase, ErasedKind};

/// The agent kinds a node registers: what other nodes may spawn on it.
#[derive(Clone, Default)]
pub struct Kinds(Vec<Arc<dyn ErasedKind>>);

impl std::fmt::Debug for Kinds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|k| k.name()))
            .finish()
    }
}

impl Kinds {
    /// No kinds.
    pub fn new() -> Self {
        Self::default()
    }

    /// The basic built-in kinds, `echo` and `counter` (see [`crate::builtin`]).
    pub fn builtin() -> Self {
        Self(crate::builtin::basic())
    }

    /// Adds the demonstration kinds (`flaky`, `sleeper`, `sink`, `ledger`, `audit`; see
    /// [`crate::builtin`]); ledgers journal under `state_dir`.
    pub fn with_demo(mut self, state_dir: &std::path::Path) -> Self {
        for kind in crate::builtin::demo(state_dir) {
            self.0.retain(|k| k.name() != kind.name());
            self.0.push(kind);
        }
        self
    }

    /// Adds kind `A`, built with `Default`.
    pub fn register<A: Agent + Default>(self) -> Self {
        self.register_agent(A::default())
    }

    /// Adds kind `A` with this behaviour value (configuration, clients).
    pub fn register_agent<A: Agent>(mut self, behaviour: A) -> Self {
        self.0.retain(|k| k.name() != A::KIND);
        self.0.push(erase(behaviour));
        self
    }

    /// The kind names.
    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|k| k.name().to_owned()).collect()
    }

    /// The erased kinds, for a host.
    pub fn erased(&self) -> impl Iterator<Item = Arc<dyn ErasedKind>> + '_ {
        self.0.iter().cloned()
    }
}
