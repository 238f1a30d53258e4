//! tether-supervision: OTP-style supervision for agents.
//!
//! This crate is reserved in the workspace layout and is empty on purpose: the supervision
//! issue brings a sans-IO strategy core (one-for-one, one-for-all, rest-for-one; permanent,
//! transient, temporary; restart intensity and backoff), the ractor adapter, and the tree
//! snapshots behind `tether tree`. Nothing here is used yet.
