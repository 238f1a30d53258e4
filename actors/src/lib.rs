//! tether-actors: the agent model shared by every other crate.
//!
//! Map of the crate:
//! - [`codec`]: the one wire codec (MessagePack through rmp-serde). Every byte that arrives
//!   from a peer is decoded here, fallibly and within a size bound; nothing on this path panics.
//!
//! The agent trait, `AgentId`, `AgentRef` and envelopes join this crate with the agents issue;
//! the codec comes first because the cluster's own protocols already speak it.

pub mod codec;

pub use codec::{decode, encode, CodecError, MAX_FRAME_LEN};
