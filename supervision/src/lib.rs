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
//! - [`adapter`]: supervisors as ractor actors: agents linked to them, directives carried out
//!   on the node's host (stop, restart after backoff, give up, escalate).

pub mod adapter;
pub mod policy;
pub mod strategy;
pub mod tree;

pub use adapter::{AddAgent, GroupSpec, NodeSupervisor};
pub use policy::{AgentPolicy, Backoff, Intensity, RestartType, StoredPolicy, Strategy};
pub use strategy::{ChildId, ChildSpec, ChildStatus, Core, Directive, Exit};
