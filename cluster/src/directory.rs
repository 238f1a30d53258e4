//! The directory: where each agent runs, kept by one remote node per id (its owner) and
//! copied to a second (its backup).
//!
//! - [`placement`]: the pure decisions: the owner and backup of an id (rendezvous hashing over
//!   the up remote nodes), which roles may host which labels, where a new agent goes.
//! - [`protocol`]: the directory's messages between nodes, one-way, answers matched by
//!   request id.
//!
//! The protocol's state machines are sans-IO: the requester and host sides in
//! [`crate::core`], the owner's duties (claims, epochs, backups, failover) in the remote role
//! (`tether-node-remote`).

pub mod placement;
pub mod protocol;

pub use placement::{
    choose, fits, owner, owner_and_backup, role_allows, Candidate, PlacementError,
};
pub use protocol::{AgentSpec, DirAnswer, DirMsg, EntryCopy, Location};
