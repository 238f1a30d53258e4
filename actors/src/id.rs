//! Agent identity: `AgentId` = `kind/key`, the same on every node for the same inputs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why an agent id or kind name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The text has no `/` between kind and key.
    #[error("agent id {0:?} must be KIND/KEY, e.g. counter/a")]
    NoSlash(String),
    /// The kind name is not `[a-z0-9_.-]`, 1 to 64 characters.
    #[error("kind {0:?} must be 1-64 characters of a-z, 0-9, '_', '.', '-'")]
    BadKind(String),
    /// The key is empty, longer than 256 bytes, or has a control character.
    #[error("key {0:?} must be 1-256 bytes without control characters")]
    BadKey(String),
}

/// Checks a kind name.
///
/// # Errors
/// [`IdError::BadKind`].
pub fn validate_kind(kind: &str) -> Result<(), IdError> {
    let ok = !kind.is_empty()
        && kind.len() <= 64
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(IdError::BadKind(kind.to_owned()))
    }
}

/// An agent's identity: a registered kind and a key chosen by the user.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AgentId {
    kind: String,
    key: String,
}

impl AgentId {
    /// The id of agent `key` of kind `kind`.
    ///
    /// # Errors
    /// [`IdError`] for a bad kind or key.
    pub fn new(kind: &str, key: &str) -> Result<Self, IdError> {
        validate_kind(kind)?;
        if key.is_empty() || key.len() > 256 || key.chars().any(char::is_control) {
            return Err(IdError::BadKey(key.to_owned()));
        }
        Ok(Self {
            kind: kind.to_owned(),
            key: key.to_owned(),
        })
    }

    /// The kind.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Checks an id that came from a peer (deserialized without [`AgentId::new`]).
    ///
    /// # Errors
    /// [`IdError`] as for [`AgentId::new`].
    pub fn validate(&self) -> Result<(), IdError> {
        Self::new(&self.kind, &self.key).map(|_| ())
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.key)
    }
}

impl FromStr for AgentId {
    type Err = IdError;
    /// Parses `kind/key`; the key may itself contain `/`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, key) = s
            .split_once('/')
            .ok_or_else(|| IdError::NoSlash(s.to_owned()))?;
        Self::new(kind, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_kind_slash_key() {
        let id: AgentId = "counter/a/b".parse().unwrap();
        assert_eq!((id.kind(), id.key()), ("counter", "a/b"));
        assert_eq!(id.to_string(), "counter/a/b");
        assert_eq!(id, AgentId::new("counter", "a/b").unwrap());
    }

    #[test]
    fn bad_ids_say_why() {
        assert!(matches!(
            "counter".parse::<AgentId>(),
            Err(IdError::NoSlash(_))
        ));
        assert!(matches!(
            "Counter/a".parse::<AgentId>(),
            Err(IdError::BadKind(_))
        ));
        assert!(matches!(
            "counter/".parse::<AgentId>(),
            Err(IdError::BadKey(_))
        ));
        assert!(matches!(
            "counter/a\nb".parse::<AgentId>(),
            Err(IdError::BadKey(_))
        ));
    }
}
