//! The wire codec: MessagePack (rmp-serde) with a hard size bound.
//!
//! Peers are not trusted to send well-formed data. [`decode`] never panics: a payload that is
//! too large, truncated or of the wrong shape comes back as a [`CodecError`] that names what
//! was wrong, so the receiver can answer the sender instead of dropping the message silently.
//!
//! Two layouts, one decoder: [`Layout::Named`] writes structs as maps (field names on the
//! wire, so adding an optional field later stays compatible with older peers) and is the
//! default; [`Layout::Compact`] writes them as arrays, for the agent streams where the field
//! names would be most of each frame (their layout is pinned by the ALPN version, `tether/1`).
//! [`decode`] reads either.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

mod names;

/// Largest frame, in bytes, that any tether protocol accepts from a peer (16 MiB).
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// Why a value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The payload is larger than the limit the receiver accepts.
    #[error("payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Size of the payload.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The bytes are not a valid encoding of the expected type.
    #[error("malformed payload: {0}")]
    Malformed(String),
    /// The value could not be serialized.
    #[error("cannot encode value: {0}")]
    Encode(String),
}

/// Encodes `value` as MessagePack with named fields.
///
/// # Errors
/// [`CodecError::Encode`] if serde refuses the value; [`CodecError::TooLarge`] if the result is
/// larger than [`MAX_FRAME_LEN`], which no peer would accept.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    encode_into(&mut out, value, Layout::Named)?;
    Ok(out)
}

/// Encodes `value` as MessagePack with named fields into a buffer of exactly its size:
/// written first to a per-thread scratch buffer, so a small message costs one allocation
/// instead of one per doubling of a growing vector.
///
/// # Errors
/// As [`encode`].
pub fn encode_bytes<T: Serialize + ?Sized>(value: &T) -> Result<bytes::Bytes, CodecError> {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    /// A scratch buffer that grew past this is given back rather than kept.
    const KEEP: usize = 64 * 1024;
    SCRATCH.with(|cell| {
        // a serializer that encodes a message while encoding another (a Serialize impl
        // that sends) finds the buffer taken, and uses its own
        let Ok(mut buf) = cell.try_borrow_mut() else {
            return encode(value).map(bytes::Bytes::from);
        };
        buf.clear();
        encode_into(&mut buf, value, Layout::Named)?;
        let out = bytes::Bytes::copy_from_slice(&buf);
        if buf.capacity() > KEEP {
            *buf = Vec::new();
        }
        Ok(out)
    })
}

/// Field names on the wire, or positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Structs as maps with field names: self-describing, for control messages.
    Named,
    /// Structs as arrays: smaller and cheaper, for the high-volume agent streams. [`decode`]
    /// reads both layouts.
    Compact,
}

/// Appends the encoding of `value` to `out` (no intermediate buffer); returns its length.
/// On error `out` is left as it was.
///
/// # Errors
/// As [`encode`].
pub fn encode_into<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    value: &T,
    layout: Layout,
) -> Result<usize, CodecError> {
    let start = out.len();
    let written = match layout {
        Layout::Named => rmp_serde::encode::write_named(out, value),
        Layout::Compact => rmp_serde::encode::write(out, value),
    };
    if let Err(e) = written {
        out.truncate(start);
        return Err(CodecError::Encode(e.to_string()));
    }
    let len = out.len() - start;
    if len > MAX_FRAME_LEN {
        out.truncate(start);
        return Err(CodecError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    Ok(len)
}

/// Decodes a MessagePack payload into `T`.
///
/// # Errors
/// [`CodecError::TooLarge`] above [`MAX_FRAME_LEN`]; [`CodecError::Malformed`] for anything that
/// is not a complete, valid encoding of `T` (including trailing bytes).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_as(bytes, |de| T::deserialize(de))
}

/// Decodes a MessagePack payload into `T`, accepting enum variants and struct fields by name
/// only: for the control and link protocols, where a variant given by its index would let two
/// versions whose enums differ in order misread each other (see [`names`]).
///
/// # Errors
/// As [`decode`]; an identifier given as a number is [`CodecError::Malformed`].
pub fn decode_named<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_as(bytes, |de| T::deserialize(names::Names(de)))
}

type Reader<'a> = rmp_serde::Deserializer<rmp_serde::decode::ReadRefReader<'a, [u8]>>;

fn decode_as<'a, T>(
    bytes: &'a [u8],
    read: impl FnOnce(&mut Reader<'a>) -> Result<T, rmp_serde::decode::Error>,
) -> Result<T, CodecError> {
    if bytes.len() > MAX_FRAME_LEN {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            max: MAX_FRAME_LEN,
        });
    }
    // borrowing reader: strings and byte strings are read in place, not copied through a
    // scratch buffer first
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    let value = read(&mut de).map_err(|e| CodecError::Malformed(e.to_string()))?;
    // exactly one value: anything after it (even garbage) is refused
    match serde::de::IgnoredAny::deserialize(&mut de) {
        Err(rmp_serde::decode::Error::InvalidMarkerRead(e))
            if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        _ => {
            return Err(CodecError::Malformed(
                "trailing bytes after the value".into(),
            ))
        }
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Hello {
        name: String,
        n: u64,
    }

    #[test]
    fn round_trips_named_struct() {
        let v = Hello {
            name: "r1".into(),
            n: 7,
        };
        let bytes = encode(&v).unwrap();
        assert_eq!(decode::<Hello>(&bytes).unwrap(), v);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for junk in [&b""[..], b"\xff\xff\xff", b"\x81\xa4name", &[0xc1; 64]] {
            assert!(matches!(
                decode::<Hello>(junk),
                Err(CodecError::Malformed(_))
            ));
        }
    }

    #[test]
    fn wrong_shape_is_malformed() {
        let bytes = encode(&("r1", 1u8, true)).unwrap();
        let err = decode::<Hello>(&bytes).unwrap_err();
        assert!(matches!(err, CodecError::Malformed(_)), "{err}");
    }

    #[test]
    fn both_layouts_decode_to_the_same_value_and_compact_is_smaller() {
        let v = Hello {
            name: "x".into(),
            n: 7,
        };
        let (mut named, mut compact) = (Vec::new(), Vec::new());
        encode_into(&mut named, &v, Layout::Named).unwrap();
        encode_into(&mut compact, &v, Layout::Compact).unwrap();
        assert!(compact.len() < named.len());
        assert_eq!(decode::<Hello>(&named).unwrap(), v);
        assert_eq!(decode::<Hello>(&compact).unwrap(), v);
    }

    #[test]
    fn encode_bytes_is_encode() {
        for n in [0u64, 7, u64::MAX] {
            let v = Hello {
                name: "x".repeat(n as usize % 100),
                n,
            };
            assert_eq!(&encode_bytes(&v).unwrap()[..], &encode(&v).unwrap()[..]);
        }
        let big = vec![1u8; 100_000];
        assert_eq!(&encode_bytes(&big).unwrap()[..], &encode(&big).unwrap()[..]);
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(&Hello {
            name: "a".into(),
            n: 1,
        })
        .unwrap();
        bytes.push(0);
        assert!(decode::<Hello>(&bytes).is_err());
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Op {
        Status,
        Set { n: u64 },
        Shutdown,
    }

    #[test]
    fn named_decoding_refuses_variants_and_fields_given_by_index() {
        for v in [Op::Status, Op::Set { n: 3 }, Op::Shutdown] {
            let bytes = encode(&v).unwrap();
            assert_eq!(decode_named::<Op>(&bytes).unwrap(), v);
        }
        // a bare index: the third variant to `decode`, refused by `decode_named`
        assert_eq!(decode::<Op>(&[0x02]).unwrap(), Op::Shutdown);
        let e = decode_named::<Op>(&[0x02]).unwrap_err().to_string();
        assert!(e.contains("given by name"), "{e}");
        // a variant with data, keyed by index: {1: {"n": 3}}
        let by_index = [0x81, 0x01, 0x81, 0xa1, b'n', 0x03];
        assert_eq!(decode::<Op>(&by_index).unwrap(), Op::Set { n: 3 });
        assert!(decode_named::<Op>(&by_index).is_err());
        // a field keyed by index: {"set": {0: 3}}
        let field_by_index = [0x81, 0xa3, b's', b'e', b't', 0x81, 0x00, 0x03];
        assert!(decode_named::<Op>(&field_by_index).is_err());
        // arrays stay arrays: a struct in the compact layout still decodes
        let mut compact = Vec::new();
        encode_into(
            &mut compact,
            &Hello {
                name: "x".into(),
                n: 1,
            },
            Layout::Compact,
        )
        .unwrap();
        assert!(decode_named::<Hello>(&compact).is_ok());
    }

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        let big = vec![0u8; MAX_FRAME_LEN + 1];
        assert!(matches!(
            decode::<Hello>(&big),
            Err(CodecError::TooLarge { .. })
        ));
    }
}
