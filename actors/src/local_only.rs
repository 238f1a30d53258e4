//! Data that must not leave its device, marked by its type: [`LocalOnly`].
//!
//! A local-only agent's messages stay on its node because the router refuses to send them
//! elsewhere, and the refs and contexts it hands out carry its origin into any task it starts.
//! That guards what the agent sends. `LocalOnly<T>` guards the data itself, wherever it goes:
//! it refuses to be serialized, so a message, a reply or a state that holds one cannot be
//! encoded for the wire, an outbox or an operator's connection, whoever sends it. The sender
//! gets [`AgentError::LocalOnly`](crate::AgentError::LocalOnly); no byte of it is written.
//!
//! In this process it is an ordinary value: a typed message to an agent of the same node is
//! handed over as is, never encoded. Decoding is transparent (an operator on the device may
//! type one in).

use std::cell::Cell;
use std::fmt;
use std::ops::{Deref, DerefMut};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

thread_local! {
    /// Set when a `LocalOnly` refused to be serialized on this thread, so that the encoder
    /// that called serde can report it as what it is.
    static REFUSED: Cell<bool> = const { Cell::new(false) };
    /// Set while a local-only agent's checkpoint is encoded for its own device's store.
    static ON_DEVICE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `encode` with [`LocalOnly`] values encoding as their contents: for what is written to
/// this device's own store (a local-only agent's checkpoint) and nowhere else. The caller
/// guarantees the bytes stay on the device.
pub fn on_device<R>(encode: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            ON_DEVICE.with(|d| d.set(self.0));
        }
    }
    let _reset = Reset(ON_DEVICE.with(|d| d.replace(true)));
    encode()
}

/// A value that never leaves its device (see the module doc).
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LocalOnly<T>(pub T);

impl<T> LocalOnly<T> {
    /// The value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> From<T> for LocalOnly<T> {
    fn from(v: T) -> Self {
        Self(v)
    }
}

impl<T> Deref for LocalOnly<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for LocalOnly<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

/// Never prints the value: logs may be shipped off the device.
impl<T> fmt::Debug for LocalOnly<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LocalOnly(..)")
    }
}

impl<T: Serialize> Serialize for LocalOnly<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if ON_DEVICE.with(Cell::get) {
            return self.0.serialize(s);
        }
        REFUSED.with(|r| r.set(true));
        Err(serde::ser::Error::custom(format!(
            "{} is local-only data: it is never encoded to leave its device",
            std::any::type_name::<T>()
        )))
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for LocalOnly<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(Self)
    }
}

/// Runs `encode`; if it failed because a [`LocalOnly`] refused, the error is
/// [`AgentError::LocalOnly`](crate::AgentError::LocalOnly) with its message, else `other`
/// makes it.
///
/// # Errors
/// As above.
pub fn guard<R>(
    encode: impl FnOnce() -> Result<R, String>,
    other: impl FnOnce(String) -> crate::AgentError,
) -> Result<R, crate::AgentError> {
    REFUSED.with(|r| r.set(false));
    let result = encode();
    let refused = REFUSED.with(|r| r.replace(false));
    result.map_err(|reason| {
        if refused {
            crate::AgentError::LocalOnly { reason }
        } else {
            other(reason)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AgentError, Body};

    #[derive(Serialize, Deserialize)]
    struct Note {
        title: String,
        text: LocalOnly<String>,
    }

    #[test]
    fn a_marked_field_refuses_every_encoding_and_says_why() {
        let note = Note {
            title: "t".into(),
            text: LocalOnly("SECRET".into()),
        };
        let e = guard(
            || crate::codec::encode(&note).map_err(|e| e.to_string()),
            AgentError::Internal,
        )
        .unwrap_err();
        assert!(matches!(&e, AgentError::LocalOnly { reason } if reason.contains("local-only")));
        assert!(serde_json::to_vec(&note).is_err());
        let body = Body::typed(note);
        let e = guard(|| body.into_wire(), AgentError::Internal).unwrap_err();
        assert!(matches!(e, AgentError::LocalOnly { .. }), "{e}");
    }

    #[test]
    fn on_device_a_marked_field_encodes_and_only_there() {
        let note = Note {
            title: "t".into(),
            text: LocalOnly("SECRET".into()),
        };
        let bytes = on_device(|| crate::codec::encode(&note)).expect("encodes for the device");
        let back: Note = crate::codec::decode(&bytes).unwrap();
        assert_eq!(*back.text, "SECRET");
        assert!(
            crate::codec::encode(&note).is_err(),
            "refused again outside"
        );
    }

    #[test]
    fn other_failures_stay_what_they_are_and_decoding_is_transparent() {
        let e = guard::<()>(|| Err("boom".into()), AgentError::Internal).unwrap_err();
        assert!(matches!(e, AgentError::Internal(m) if m == "boom"));
        let n: Note = serde_json::from_str(r#"{"title":"t","text":"typed in"}"#).unwrap();
        assert_eq!(*n.text, "typed in");
        assert_eq!(format!("{:?}", n.text), "LocalOnly(..)");
    }
}
