//! Message and reply bodies: a typed Rust value (a send within the process skips
//! serialization) or bytes in MessagePack or JSON (from other nodes or the CLI).
//!
//! Decoding is fallible: a body that does not decode into the agent's message type is answered
//! with [`AgentError::BadPayload`](crate::AgentError::BadPayload) and the agent keeps running.

use std::any::Any;

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

use crate::envelope::Encoding;

/// A message or reply body.
pub enum Body {
    /// Encoded bytes.
    Encoded(Encoding, Bytes),
    /// A typed value: passed as is to an agent in this process, encoded when it must cross.
    Typed(Typed),
}

/// A typed value with the function that encodes it (MessagePack), chosen when it was made.
pub struct Typed {
    value: Box<dyn Any + Send>,
    encode: fn(&(dyn Any + Send)) -> Result<Bytes, String>,
}

fn encode_typed<T: Serialize + 'static>(v: &(dyn Any + Send)) -> Result<Bytes, String> {
    let v = v
        .downcast_ref::<T>()
        .ok_or_else(|| format!("expected a {}", std::any::type_name::<T>()))?;
    crate::codec::encode_bytes(v).map_err(|e| e.to_string())
}

/// Decodes `bytes`, encoded as `encoding`, into `T`.
pub(crate) fn decode_slice<T: DeserializeOwned>(
    encoding: Encoding,
    bytes: &[u8],
) -> Result<T, String> {
    match encoding {
        Encoding::MsgPack => crate::codec::decode(bytes).map_err(|e| e.to_string()),
        Encoding::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Encoded(e, b) => write!(f, "Encoded({e:?}, {} bytes)", b.len()),
            Body::Typed(_) => f.write_str("Typed(..)"),
        }
    }
}

impl Body {
    /// A JSON body.
    pub fn json(v: &serde_json::Value) -> Self {
        // invariant: a serde_json::Value always serializes
        Body::Encoded(
            Encoding::Json,
            Bytes::from(serde_json::to_vec(v).expect("JSON value encodes")),
        )
    }

    /// Decodes into `T`.
    ///
    /// # Errors
    /// The decoder's message.
    pub fn decode<T: DeserializeOwned + 'static>(self) -> Result<T, String> {
        match self {
            Body::Typed(t) => t
                .value
                .downcast::<T>()
                .map(|b| *b)
                .map_err(|_| format!("expected a {}", std::any::type_name::<T>())),
            Body::Encoded(e, b) => decode_slice(e, &b),
        }
    }

    /// Encodes `v` the way a request came in (`None`: typed).
    ///
    /// # Errors
    /// The encoder's message.
    pub fn encode<T: Serialize + Send + 'static>(
        v: T,
        like: Option<Encoding>,
    ) -> Result<Body, String> {
        Ok(match like {
            None => Body::typed(v),
            Some(Encoding::MsgPack) => Body::Encoded(
                Encoding::MsgPack,
                crate::codec::encode_bytes(&v).map_err(|e| e.to_string())?,
            ),
            Some(Encoding::Json) => Body::Encoded(
                Encoding::Json,
                Bytes::from(serde_json::to_vec(&v).map_err(|e| e.to_string())?),
            ),
        })
    }

    /// A typed body.
    pub fn typed<T: Serialize + Send + 'static>(v: T) -> Body {
        Body::Typed(Typed {
            value: Box::new(v),
            encode: encode_typed::<T>,
        })
    }

    /// The body as bytes for the wire: typed values become MessagePack.
    ///
    /// # Errors
    /// The encoder's message.
    pub fn into_wire(self) -> Result<(Encoding, Bytes), String> {
        match self {
            Body::Encoded(e, b) => Ok((e, b)),
            Body::Typed(t) => Ok((Encoding::MsgPack, (t.encode)(&*t.value)?)),
        }
    }

    /// The body as bytes for the wire, leaving it as it is (so that a sender can have it back
    /// when it does not encode).
    ///
    /// # Errors
    /// The encoder's message.
    pub fn wire_bytes(&self) -> Result<(Encoding, Bytes), String> {
        match self {
            Body::Encoded(e, b) => Ok((*e, b.clone())),
            Body::Typed(t) => Ok((Encoding::MsgPack, (t.encode)(&*t.value)?)),
        }
    }

    /// The encoding, if encoded.
    pub fn encoding(&self) -> Option<Encoding> {
        match self {
            Body::Encoded(e, _) => Some(*e),
            Body::Typed(_) => None,
        }
    }

    /// The body as JSON, if it can be read as such (for printing replies).
    pub fn to_json(self) -> Result<serde_json::Value, String> {
        match self {
            Body::Encoded(Encoding::Json, b) => {
                serde_json::from_slice(&b).map_err(|e| e.to_string())
            }
            Body::Encoded(Encoding::MsgPack, b) => {
                crate::codec::decode(&b).map_err(|e| e.to_string())
            }
            Body::Typed(t) => {
                let bytes = (t.encode)(&*t.value)?;
                crate::codec::decode(&bytes).map_err(|e| e.to_string())
            }
        }
    }
}
