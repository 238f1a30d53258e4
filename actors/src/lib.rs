//! tether-actors: the agent model shared by every other crate.
//!
//! Where to start reading: [`agent`] is what a user writes; [`host`] is how a node runs it.
//!
//! Map of the crate:
//! - [`id`]: `AgentId` = `kind/key`, deterministic.
//! - [`placement`]: placement labels (sensitivity, compute, needs, prefer).
//! - [`agent`]: the `Agent` trait, its context, and [`AgentError`], the typed error every
//!   operation on an agent returns (it travels on the wire).
//! - [`envelope`]: envelopes (sender, sequence, epoch, W3C trace context, contract).
//! - [`kind`]: erased kinds: decode, handle, encode; each agent is a ractor actor.
//! - [`mailbox`]: an agent's mailbox, taken by its actor in batches.
//! - [`host`]: the agents a node hosts; activation and the checks at delivery.
//! - [`agent_ref`]: `AgentRef<A>`, the location-transparent handle, over a [`Router`].
//! - [`builtin`]: `echo`, `counter`, `flaky`, `sleeper`.
//! - [`codec`]: the wire codec (MessagePack), bounded and fallible.

pub mod agent;
pub mod agent_ref;
pub mod builtin;
pub mod codec;
pub mod envelope;
pub mod host;
pub mod id;
pub mod kind;
pub mod mailbox;
pub mod placement;

pub use agent::{Agent, AgentError, Ctx, Failure};
pub use agent_ref::{AgentRef, PortCache, Router, TellError};
pub use codec::{decode, encode, CodecError, MAX_FRAME_LEN};
pub use envelope::{Contract, Encoding, Envelope, RunMsg, TellRun, TraceContext, MAX_RUN_BYTES};
pub use host::{Activation, AgentInfo, Delivery, Host, LocalPort, SpawnRecord};
pub use id::{AgentId, IdHash};
pub use kind::Body;
pub use placement::{Compute, Placement, Prefer, Sensitivity};
