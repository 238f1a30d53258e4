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

/// The rules of [`AgentId::new`], without making the id.
fn validate_parts(kind: &str, key: &str) -> Result<(), IdError> {
    validate_kind(kind)?;
    if key.is_empty() || key.len() > 256 || key.chars().any(char::is_control) {
        return Err(IdError::BadKey(key.to_owned()));
    }
    Ok(())
}

/// An agent's identity: a registered kind and a key chosen by the user.
///
/// Held as one shared `kind/key` string, so a clone (routes, mailboxes, contexts, logs) is a
/// reference count, not two allocations. Equality and order are those of the pair
/// `(kind, key)`; on the wire and in JSON it is `{kind, key}`.
///
/// The id carries its hash, made once when the id is made (keyed SipHash with a per-process
/// random key, so peers cannot choose colliding ids). Maps keyed by id use [`IdHash`], which
/// takes that hash as it is: a message that passes through three maps hashes its target's
/// text once, not three times.
#[derive(Clone)]
pub struct AgentId {
    /// `kind/key`.
    full: Arc<str>,
    /// Where the kind ends (the first `/` of a valid id).
    slash: u32,
    /// The keyed hash of `full` (it fits in the padding: the id stays 24 bytes).
    hash: u32,
}

impl PartialEq for AgentId {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.slash == other.slash && self.full == other.full
    }
}

impl Eq for AgentId {}

impl std::hash::Hash for AgentId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u32(self.hash);
    }
}

/// The keyed hash of an id's text (per-process random key).
fn hash_text(full: &str) -> u32 {
    use std::hash::BuildHasher;
    static KEY: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    let h = KEY
        .get_or_init(std::collections::hash_map::RandomState::new)
        .hash_one(full);
    (h ^ (h >> 32)) as u32
}

/// Hasher of maps keyed by [`AgentId`]: spreads the hash the id carries (one multiply)
/// instead of hashing again. Other keys still hash correctly, only without the shortcut.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        // FNV-1a, for keys that are not ids (not used on hot paths)
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u32(&mut self, n: u32) {
        // Fibonacci hashing: the high bits (shard and control bytes) and the low bits
        // (bucket) all depend on every bit of the id's hash
        self.0 = (self.0.rotate_left(32) ^ u64::from(n)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Builds [`IdHasher`]s: the `S` of maps keyed by [`AgentId`].
pub type IdHash = std::hash::BuildHasherDefault<IdHasher>;

impl AgentId {
    /// The id of agent `key` of kind `kind`.
    ///
    /// # Errors
    /// [`IdError`] for a bad kind or key.
    pub fn new(kind: &str, key: &str) -> Result<Self, IdError> {
        validate_parts(kind, key)?;
        Ok(Self::unchecked(kind, key))
    }

    /// Builds the id without checks (a peer's id is checked later with [`AgentId::validate`]).
    fn unchecked(kind: &str, key: &str) -> Self {
        let mut full = String::with_capacity(kind.len() + 1 + key.len());
        full.push_str(kind);
        full.push('/');
        full.push_str(key);
        Self {
            hash: hash_text(&full),
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
        validate_parts(self.kind(), self.key())
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
    fn equal_ids_hash_alike_and_maps_find_them() {
        use std::collections::HashMap;
        let a: AgentId = "counter/a".parse().unwrap();
        let same = AgentId::new("counter", "a").unwrap();
        let wire: AgentId = rmp_serde::from_slice(&rmp_serde::to_vec(&a).unwrap()).unwrap();
        assert_eq!(a.hash, same.hash);
        assert_eq!(a.hash, wire.hash);
        let mut m: HashMap<AgentId, u32, IdHash> = HashMap::default();
        m.insert(a, 1);
        assert_eq!(m.get(&same), Some(&1));
        assert_eq!(m.get(&wire), Some(&1));
        for i in 0..1000 {
            m.insert(AgentId::new("counter", &i.to_string()).unwrap(), i);
        }
        assert_eq!(m.len(), 1001);
        assert_eq!(m.get(&"counter/999".parse().unwrap()), Some(&999));
        assert_eq!(m.get(&"counter/x".parse().unwrap()), None);
        // same text split differently is another id
        let other = AgentId::unchecked("counter/a", "b");
        assert_ne!(other, AgentId::unchecked("counter", "a/b"));
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
