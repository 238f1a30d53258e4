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
//! - [`error`]: [`SupervisionError`], why a request to the supervision failed.
//! - [`supervisor`]: a supervisor as a ractor actor: agents linked to it, the core's
//!   directives carried out on the node's host (stop, restart after backoff, give up,
//!   escalate). Its tree is drawn in its module doc.
//! - [`node_supervisor`]: [`NodeSupervisor`], a node's root supervisor and groups, as the node
//!   runtime uses them.

pub mod error;
pub mod node_supervisor;
pub mod policy;
pub mod strategy;
pub mod supervisor;
pub mod tree;

pub use error::SupervisionError;
pub use node_supervisor::NodeSupervisor;
pub use policy::{AgentPolicy, Backoff, Intensity, RestartType, StoredPolicy, Strategy};
pub use strategy::{ChildId, ChildSpec, ChildStatus, Core, Directive, Exit};
pub use supervisor::{AddAgent, Fenced, GroupSpec};
