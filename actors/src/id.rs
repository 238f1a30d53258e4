//! Agent identity: `AgentId` = `kind/key`, the same on every node for the same inputs.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

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
///
/// Held as one shared `kind/key` string, so a clone (routes, mailboxes, contexts, logs) is a
/// reference count, not two allocations. Equality, hashing and order are those of the pair
/// `(kind, key)`; on the wire and in JSON it is `{kind, key}`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AgentId {
    /// `kind/key`.
    full: Arc<str>,
    /// Where the kind ends (the first `/` of a valid id).
    slash: u32,
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
        Ok(Self::unchecked(kind, key))
    }

    /// Builds the id without checks (a peer's id is checked later with [`AgentId::validate`]).
    fn unchecked(kind: &str, key: &str) -> Self {
        let mut full = String::with_capacity(kind.len() + 1 + key.len());
        full.push_str(kind);
        full.push('/');
        full.push_str(key);
        Self {
            full: full.into(),
            slash: u32::try_from(kind.len()).unwrap_or(u32::MAX),
        }
    }

    /// The kind.
    pub fn kind(&self) -> &str {
        &self.full[..self.slash as usize]
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.full[self.slash as usize + 1..]
    }

    /// `kind/key`, as displayed.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// Checks an id that came from a peer (deserialized without [`AgentId::new`]).
    ///
    /// # Errors
    /// [`IdError`] as for [`AgentId::new`].
    pub fn validate(&self) -> Result<(), IdError> {
        Self::new(self.kind(), self.key()).map(|_| ())
    }
}

impl PartialOrd for AgentId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for AgentId {
    /// By kind, then key (not by the joined text: `a-b/x` sorts after `a/x`).
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.kind(), self.key()).cmp(&(other.kind(), other.key()))
    }
}

impl fmt::Debug for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentId")
            .field("kind", &self.kind())
            .field("key", &self.key())
            .finish()
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
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

impl Serialize for AgentId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("AgentId", 2)?;
        st.serialize_field("kind", self.kind())?;
        st.serialize_field("key", self.key())?;
        st.end()
    }
}

impl<'de> Deserialize<'de> for AgentId {
    /// `{kind, key}` (or `[kind, key]`), unchecked: see [`AgentId::validate`].
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename = "AgentId")]
        struct Raw<'a> {
            #[serde(borrow)]
            kind: Cow<'a, str>,
            #[serde(borrow)]
            key: Cow<'a, str>,
        }
        let raw = Raw::deserialize(d)?;
        Ok(Self::unchecked(&raw.kind, &raw.key))
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
    fn wire_form_is_kind_and_key_and_order_is_by_kind_then_key() {
        let id = AgentId::new("counter", "a/b").unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, r#"{"kind":"counter","key":"a/b"}"#);
        assert_eq!(serde_json::from_str::<AgentId>(&json).unwrap(), id);
        let packed = rmp_serde::to_vec(&id).unwrap();
        assert_eq!(rmp_serde::from_slice::<AgentId>(&packed).unwrap(), id);
        let named = rmp_serde::to_vec_named(&id).unwrap();
        assert_eq!(rmp_serde::from_slice::<AgentId>(&named).unwrap(), id);
        // a peer's id is taken as sent and checked apart
        let bad: AgentId = serde_json::from_str(r#"{"kind":"Bad","key":"x"}"#).unwrap();
        assert!(matches!(bad.validate(), Err(IdError::BadKind(_))));
        let (a, b): (AgentId, AgentId) = ("a-b/x".parse().unwrap(), "a/x".parse().unwrap());
        assert!(b < a, "by kind first, as the pair (kind, key)");
        assert_eq!(a.clone(), a);
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
