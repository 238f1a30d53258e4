//! Durable agent state: checkpoints, where they are kept, and the protocols that use them
//! (failover with state, `acked` durability, live migration). This module holds the design and
//! the parts built so far; each protocol is a state machine of the cluster core, tried in the
//! simulator before a process runs it.
//!
//! # Checkpoints
//! A [`Checkpoint`] is what an activation needs to be started again elsewhere without losing
//! anything acknowledged: the agent's `State` (MessagePack), the activation's epoch, how many
//! messages it had handled when it was taken (`seq`: the activation's own count, so a later
//! checkpoint of the same activation is larger), each sender's high-water sequence number (so
//! deduplication and per-sender order survive the move), and its timers as absolute deadlines.
//! Checkpoints are ordered by [`Version`] `(epoch, seq)`: a newer activation always wins (its
//! epoch has a higher generation), and within one activation the later checkpoint wins.
//!
//! # Stores
//! A node keeps checkpoints in a [`CheckpointStore`]: [`store::RedbStore`] on disk (one redb file
//! in the node's state directory; every commit is durable when it returns, `fsync`), or
//! [`store::MemStore`] for the simulator. A store **never accepts a checkpoint older than the one
//! it holds** for the same agent: a delayed copy, a replica that lags, or a zombie activation
//! cannot roll an agent back. [`CheckpointStore::put`] takes a batch and commits it once (group
//! commit: one `fsync` for many agents' checkpoints, which is what `acked` durability needs to be
//! affordable).
//!
//! Why redb rather than SQLite: a checkpoint store is a map from agent id to one value with a
//! compare-and-set on its version, which a B-tree key-value store does with no schema, no SQL and
//! no C toolchain (rusqlite's `bundled` compiles SQLite's C sources, minutes on two cores); redb
//! commits are crash-safe (copy-on-write pages, a checksummed commit slot) and durable on
//! return, and it can check a file's integrity on open, so a damaged file is an error rather than
//! a panic.
//!
//! # Durability modes (per agent)
//! - `none`: no checkpoint; failover starts the agent from `init` (today's behaviour).
//! - `checkpoint`: the host checkpoints after N handled messages or T ms of unsaved changes,
//!   whichever comes first, and at every migration freeze; the checkpoint goes to the host's
//!   store and to the id's backup node (the directory's second rendezvous choice), as a notice
//!   (acknowledged, resent, superseded by a newer one). Failover loses at most that window.
//! - `acked`: a reply to an ask, and the delivery acknowledgement of a tell from an outbox, wait
//!   until the checkpoint covering that message is durable on the host and on the replica. The
//!   host batches: whatever was handled while the previous commit ran goes in the next one.
//!
//! Local-only agents checkpoint to their own device only (the replica rule skips them; the
//! wire codec would refuse a `LocalOnly` state anyway).
//!
//! # Failover with state
//! An activation of a durable agent (a failover, or its id spawned again) first gathers the
//! newest checkpoint of this node and of every up remote peer ([`Checkpointer::gather`]; all
//! must answer, else the activation fails and the failover is tried again), stores it here,
//! and starts from it with the new epoch; placement prefers remote nodes for agents that do
//! not prefer the device. A restart under a supervisor starts from the newest checkpoint on
//! its own node.
//!
//! # Live migration
//! The protocol (freeze, ship, commit) is in [`crate::migration`]; the host's side in
//! `tether_actors::host` (`moving`). A move ships the agent's final checkpoint (version
//! `(epoch, u64::MAX)`); the target stores it before it runs, for a durable agent.

pub mod checkpointer;
pub mod store;

pub use checkpointer::{Checkpointer, Replicas};
pub use store::{CheckpointStore, Put, StoreError};
pub use tether_actors::durable::{
    Checkpoint, CheckpointInfo, CheckpointSink, Durability, SenderMark, Timer, Version,
};
