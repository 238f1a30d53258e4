//! tether-supervision: OTP-grade supervision for agents.
//!
//! Where to start reading: [`strategy`], the decisions of one supervisor as a pure state
//! machine.
//!
//! Map of the crate:
//! - [`policy`]: strategies, restart types, intensity (N restarts in T), backoff, and the
//!   per-agent policy chosen at spawn; parsing of their CLI forms.
//! - [`strategy`]: the sans-IO core: fed with `now` and child exits, it returns directives
//!   (stop, start at, remove, give up, escalate). Property-tested.
//! - [`tree`]: the serde snapshot of a node's supervision tree (what `tether tree` draws).
//!
//! The adapter that carries the directives out on ractor actors lives with the node runtime
//! (`tether-cluster`, `supervise` module), where the agents' host is.

pub mod policy;
pub mod strategy;
pub mod tree;

pub use policy::{AgentPolicy, Backoff, Intensity, RestartType, Strategy};
pub use strategy::{ChildId, ChildSpec, ChildStatus, Core, Directive, Exit};
