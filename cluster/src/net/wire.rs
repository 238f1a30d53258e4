//! tether's own frames on QUIC streams and datagrams.
//!
//! A clean shutdown is announced by closing every connection with [`close::SHUTDOWN`].
//!
//! A stream starts with one tag byte that says what runs on it ([`StreamTag`]); then come
//! frames: a 4-byte big-endian length and that many bytes of MessagePack. The length is checked
//! against the reader's limit before anything is allocated, and the payload is decoded
//! fallibly, so a peer that sends garbage gets its connection closed, and nothing else.
//!
//! Heartbeats travel as QUIC datagrams: unreliable on purpose, so loss is what the failure
//! detector sees, and never stuck behind stream data or retransmissions.

use quinn::{RecvStream, SendStream};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
pub use tether_actors::codec::Layout;
use tether_actors::codec::{self, CodecError};

use crate::identity::NodeInfo;
use crate::membership::link::Refusal;

/// Version of the link protocol; a hello with another version is refused.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest frame of the link and control protocols (1 MiB): they carry small messages.
pub const MAX_CONTROL_FRAME: usize = 1024 * 1024;

/// What a stream carries, announced by its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StreamTag {
    /// ractor_cluster's node session.
    Ractor = 1,
    /// The link protocol: hello and gossip.
    Link = 2,
    /// The agent protocol (see [`crate::agents`]).
    Agents = 3,
}

impl StreamTag {
    /// The tag for a byte, if it is one.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(StreamTag::Ractor),
            2 => Some(StreamTag::Link),
            3 => Some(StreamTag::Agents),
            _ => None,
        }
    }
}

/// Messages of the link protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerMsg {
    /// First frame from the dialer.
    Hello {
        /// [`PROTOCOL_VERSION`] of the dialer.
        protocol: u32,
        /// The dialer; its name must equal its certificate's.
        node: NodeInfo,
        /// The dialer cannot hear the acceptor on the current link and asks to replace it.
        replace: bool,
    },
    /// The acceptor's answer.
    HelloAck {
        /// The acceptor.
        node: NodeInfo,
        /// Whether this connection is now the pair's link.
        accepted: bool,
        /// Why not, when refused.
        refusal: Option<Refusal>,
    },
    /// Every member the sender knows (itself included).
    Gossip {
        /// The members.
        members: Vec<NodeInfo>,
    },
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The frame announces more bytes than the reader accepts.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The payload does not decode.
    #[error("bad frame: {0}")]
    Codec(#[from] CodecError),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The stream failed (connection lost, reset by the peer...).
    #[error("stream: {0}")]
    Stream(String),
    /// The stream's first byte is not a known tag.
    #[error("unknown stream tag {0:#04x}")]
    UnknownTag(u8),
    /// A wait ran out.
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
}

type Tap = Box<dyn Fn(&[u8]) + Send + Sync>;

static TAP: std::sync::OnceLock<Tap> = std::sync::OnceLock::new();

/// Sees every frame this process encodes for a peer (link, agent and control streams), as it
/// will be written: tests count with it what leaves a node. Set once per process; `false` if
/// one was set already.
#[doc(hidden)]
pub fn tap_frames(tap: impl Fn(&[u8]) + Send + Sync + 'static) -> bool {
    TAP.set(Box::new(tap)).is_ok()
}

/// Appends one frame (length prefix and encoding) of `value` to `buf`, with field names. On
/// error `buf` is left as it was.
///
/// # Errors
/// [`WireError::Codec`] if `value` cannot be encoded (or encodes larger than any peer accepts).
pub fn encode_frame<T: Serialize>(buf: &mut Vec<u8>, value: &T) -> Result<(), WireError> {
    encode_frame_as(buf, value, Layout::Named)
}

/// [`encode_frame`] with a chosen layout; the agent streams use [`Layout::Compact`].
///
/// # Errors
/// As [`encode_frame`].
pub fn encode_frame_as<T: Serialize>(
    buf: &mut Vec<u8>,
    value: &T,
    layout: Layout,
) -> Result<(), WireError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    match codec::encode_into(buf, value, layout) {
        Ok(len) => {
            // encode_into bounds len by MAX_FRAME_LEN (16 MiB), well inside u32
            buf[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
            if let Some(tap) = TAP.get() {
                tap(&buf[start..]);
            }
            Ok(())
        }
        Err(e) => {
            buf.truncate(start);
            Err(e.into())
        }
    }
}

/// Writes one frame.
///
/// # Errors
/// [`WireError::Codec`] if `value` cannot be encoded, [`WireError::Stream`] if the stream fails.
pub async fn write_frame<T: Serialize>(send: &mut SendStream, value: &T) -> Result<(), WireError> {
    let mut buf = Vec::new();
    encode_frame(&mut buf, value)?;
    write_frames(send, buf).await
}

/// Writes frames made by [`encode_frame`]; the buffer is handed to quinn without a copy.
///
/// # Errors
/// [`WireError::Stream`] if the stream fails.
pub async fn write_frames(send: &mut SendStream, frames: Vec<u8>) -> Result<(), WireError> {
    send.write_chunk(bytes::Bytes::from(frames))
        .await
        .map_err(|e| WireError::Stream(e.to_string()))
}

/// Reads one frame of at most `max` bytes, decoded from names only
/// ([`codec::decode_named`]: the control and link protocols). `Ok(None)` when the stream ended
/// cleanly between frames. For a stream of many frames, [`FrameReader`] reads ahead and is much
/// cheaper.
///
/// # Errors
/// [`WireError`] for an oversized, truncated or undecodable frame, or a failed stream.
///
/// # Cancel safety
/// Not cancel safe: a cancelled read may leave half a frame consumed. Callers own one reader
/// per stream and do not race it.
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut RecvStream,
    max: usize,
) -> Result<Option<T>, WireError> {
    match read_frame_bytes(recv, max).await? {
        Some(body) => Ok(Some(codec::decode_named(&body)?)),
        None => Ok(None),
    }
}

/// Reads one length-prefixed frame's bytes, as [`read_frame`] does before decoding them.
///
/// # Errors
/// As [`read_frame`], but for decoding.
pub async fn read_frame_bytes(
    recv: &mut RecvStream,
    max: usize,
) -> Result<Option<Vec<u8>>, WireError> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(WireError::Truncated),
        Err(quinn::ReadExactError::ReadError(e)) => return Err(WireError::Stream(e.to_string())),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(WireError::TooLarge { len, max });
    }
    let mut body = vec![0u8; len];
    match recv.read_exact(&mut body).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(WireError::Truncated),
        Err(quinn::ReadExactError::ReadError(e)) => return Err(WireError::Stream(e.to_string())),
    }
    Ok(Some(body))
}

/// Frames split out of a byte stream that arrives in arbitrary pieces (sans-IO).
#[derive(Debug)]
pub struct FrameBuf {
    buf: bytes::BytesMut,
    max: usize,
}

/// Most bytes a [`FrameBuf`] reserves ahead of a frame that has not arrived yet.
const RESERVE_AHEAD: usize = 256 * 1024;

impl FrameBuf {
    /// Refuses frames larger than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buf: bytes::BytesMut::new(),
            max,
        }
    }

    /// Appends bytes as they arrived.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held that do not make a whole frame yet.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next whole frame, decoded, if the buffer holds one. A frame that does not decode
    /// is consumed and reported.
    ///
    /// # Errors
    /// [`WireError::TooLarge`] (the stream cannot be trusted after it) or
    /// [`WireError::Codec`].
    pub fn take<T: DeserializeOwned>(&mut self) -> Result<Option<T>, WireError> {
        use bytes::Buf;
        let Some(head) = self.buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(head.try_into().expect("4 bytes")) as usize;
        if len > self.max {
            return Err(WireError::TooLarge { len, max: self.max });
        }
        let Some(body) = self.buf.get(4..4 + len) else {
            // room for what the next reads bring, not for what the header announces: a peer
            // that announces large frames and sends nothing must not make this node reserve
            // their size on every stream (found by fuzzing)
            self.buf
                .reserve((4 + len - self.buf.len()).min(RESERVE_AHEAD));
            return Ok(None);
        };
        let value = codec::decode(body);
        self.buf.advance(4 + len);
        Ok(Some(value?))
    }
}

/// Reads frames from a stream in chunks of up to 64 KiB and decodes them from its buffer: one
/// stream read per chunk instead of two per frame.
#[derive(Debug)]
pub struct FrameReader {
    recv: RecvStream,
    frames: FrameBuf,
}

impl FrameReader {
    /// Reads `recv`, refusing frames larger than `max` bytes.
    pub fn new(recv: RecvStream, max: usize) -> Self {
        Self {
            recv,
            frames: FrameBuf::new(max),
        }
    }

    /// The next frame; `Ok(None)` when the stream ended cleanly between frames.
    ///
    /// # Errors
    /// As [`read_frame`].
    ///
    /// # Cancel safety
    /// Cancel safe: a frame is consumed only when it is returned.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, WireError> {
        loop {
            if let Some(v) = self.frames.take()? {
                return Ok(Some(v));
            }
            match self.recv.read_chunk(64 * 1024, true).await {
                Ok(Some(chunk)) => self.frames.push(&chunk.bytes),
                Ok(None) if self.frames.pending() == 0 => return Ok(None),
                Ok(None) => return Err(WireError::Truncated),
                Err(e) => return Err(WireError::Stream(e.to_string())),
            }
        }
    }
}

/// Reads the tag byte that opens a stream.
///
/// # Errors
/// [`WireError::UnknownTag`] or a stream failure.
pub async fn read_tag(recv: &mut RecvStream) -> Result<StreamTag, WireError> {
    let mut b = [0u8; 1];
    recv.read_exact(&mut b).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(_) => WireError::Truncated,
        quinn::ReadExactError::ReadError(e) => WireError::Stream(e.to_string()),
    })?;
    StreamTag::from_byte(b[0]).ok_or(WireError::UnknownTag(b[0]))
}

/// Writes the tag byte that opens a stream.
///
/// # Errors
/// A stream failure.
pub async fn write_tag(send: &mut SendStream, tag: StreamTag) -> Result<(), WireError> {
    send.write_all(&[tag as u8])
        .await
        .map_err(|e| WireError::Stream(e.to_string()))
}

/// Application close codes on QUIC connections, so the other side can tell why it was closed.
pub mod close {
    /// Clean shutdown of the node.
    pub const SHUTDOWN: u32 = 0;
    /// Replaced by a newer connection of the same pair.
    pub const REPLACED: u32 = 1;
    /// The acceptor refused this connection as the pair's link.
    pub const REFUSED: u32 = 2;
    /// The peer broke the protocol (bad frame, unknown tag, name mismatch...).
    pub const PROTOCOL: u32 = 3;
    /// The peer's identity is not allowed here.
    pub const FORBIDDEN: u32 = 4;
    /// The peer belongs to an older incarnation.
    pub const STALE: u32 = 5;
    /// Clean shutdown of the node, as part of stopping the whole cluster: its agents are not
    /// to be placed again elsewhere.
    pub const CLUSTER_DOWN: u32 = 6;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(values: &[&str]) -> Vec<u8> {
        let mut buf = Vec::new();
        for v in values {
            encode_frame(&mut buf, v).unwrap();
        }
        buf
    }

    #[test]
    fn frames_come_out_whole_whatever_the_pieces() {
        let bytes = frames(&["one", "two", "three"]);
        for piece in 1..bytes.len() {
            let mut fb = FrameBuf::new(1024);
            let mut got: Vec<String> = Vec::new();
            for chunk in bytes.chunks(piece) {
                fb.push(chunk);
                while let Some(v) = fb.take::<String>().unwrap() {
                    got.push(v);
                }
            }
            assert_eq!(got, ["one", "two", "three"], "pieces of {piece}");
            assert_eq!(fb.pending(), 0);
        }
    }

    #[test]
    fn an_oversized_frame_is_refused_before_it_is_buffered() {
        let mut fb = FrameBuf::new(8);
        fb.push(&1_000_000u32.to_be_bytes());
        assert!(matches!(
            fb.take::<String>(),
            Err(WireError::TooLarge {
                len: 1_000_000,
                max: 8
            })
        ));
    }

    #[test]
    fn a_bad_frame_is_reported_and_the_next_one_still_decodes() {
        let mut bytes = vec![0, 0, 0, 1, 0xc1]; // 0xc1: a marker MessagePack never uses
        bytes.extend(frames(&["after"]));
        let mut fb = FrameBuf::new(64);
        fb.push(&bytes);
        assert!(matches!(fb.take::<String>(), Err(WireError::Codec(_))));
        assert_eq!(fb.take::<String>().unwrap().as_deref(), Some("after"));
    }

    #[test]
    fn an_announced_large_frame_reserves_only_a_bounded_read_ahead() {
        let mut frames = FrameBuf::new(16 << 20);
        frames.push(&(15u32 << 20).to_be_bytes());
        frames.push(b"a few bytes");
        assert!(frames.take::<u64>().unwrap().is_none());
        assert!(
            frames.buf.capacity() <= RESERVE_AHEAD + 64,
            "{}",
            frames.buf.capacity()
        );
    }

    #[test]
    fn encode_frame_leaves_the_buffer_alone_on_error() {
        struct Refuses;
        impl Serialize for Refuses {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("no"))
            }
        }
        let mut buf = frames(&["kept"]);
        let before = buf.clone();
        assert!(encode_frame(&mut buf, &Refuses).is_err());
        assert_eq!(buf, before);
    }
}
