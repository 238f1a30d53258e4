//! Placement labels: where an agent may run and where it prefers to.

use serde::{Deserialize, Serialize};

/// How sensitive an agent's state and messages are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sensitivity {
    /// May run anywhere.
    Public,
    /// May run anywhere in the cluster (the default).
    #[default]
    Internal,
    /// State and messages never leave the local node that hosts it: it can only be placed on a
    /// local node, and only agents of that node can talk to it. Enforced at send time.
    LocalOnly,
}

/// How heavy an agent's work is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compute {
    /// Fine on a device.
    #[default]
    Light,
    /// Belongs on the backend.
    Heavy,
}

/// Which side an agent prefers when it may run on both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Prefer {
    /// A local node.
    Local,
    /// A remote node.
    Remote,
    /// Either (the default).
    #[default]
    Any,
}

/// An agent's placement labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Placement {
    /// Sensitivity of state and messages.
    #[serde(default)]
    pub sensitivity: Sensitivity,
    /// Weight of the work.
    #[serde(default)]
    pub compute: Compute,
    /// Capabilities the host must have (e.g. `fs`).
    #[serde(default)]
    pub needs: Vec<String>,
    /// Preferred side.
    #[serde(default)]
    pub prefer: Prefer,
}

impl Placement {
    /// Labels of a local-only agent.
    pub fn local_only() -> Self {
        Self {
            sensitivity: Sensitivity::LocalOnly,
            prefer: Prefer::Local,
            ..Self::default()
        }
    }

    /// Whether the agent is local-only.
    pub fn is_local_only(&self) -> bool {
        self.sensitivity == Sensitivity::LocalOnly
    }
}

impl std::fmt::Display for Placement {
    /// `internal light prefer=any`, with `needs=fs,gpu` when it needs anything.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sensitivity = match self.sensitivity {
            Sensitivity::Public => "public",
            Sensitivity::Internal => "internal",
            Sensitivity::LocalOnly => "local-only",
        };
        let compute = match self.compute {
            Compute::Light => "light",
            Compute::Heavy => "heavy",
        };
        let prefer = match self.prefer {
            Prefer::Local => "local",
            Prefer::Remote => "remote",
            Prefer::Any => "any",
        };
        write!(f, "{sensitivity} {compute} prefer={prefer}")?;
        if !self.needs.is_empty() {
            write!(f, " needs={}", self.needs.join(","))?;
        }
        Ok(())
    }
}
