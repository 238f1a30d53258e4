//! tether-actors: the agent model shared by every other crate.
//!
//! Where to start reading: [`agent`] is what a user writes; [`host`] is how a node runs it.
//!
//! Map of the crate, from the bottom up (each module uses only those above it):
//! - [`id`]: `AgentId` = `kind/key`, deterministic.
//! - [`placement`]: placement labels (sensitivity, compute, needs, prefer).
//! - [`codec`]: the wire codec (MessagePack), bounded and fallible.
//! - [`epoch`]: activation epochs: a generation that orders them, a tag that keeps them unique.
//! - [`envelope`]: envelopes (sender, sequence, epoch, W3C trace context, contract).
//! - [`error`]: [`AgentError`], the typed error every operation on an agent returns (it travels
//!   on the wire).
//! - [`body`]: message bodies, typed or encoded.
//! - [`call`]: one message into a mailbox, and where its reply goes.
//! - [`local_only`]: [`LocalOnly`], data that refuses to be encoded to leave its device.
//! - [`stats`]: an agent's counters.
//! - [`durable`]: durability modes, checkpoints, and where a host hands them.
//! - [`record`]: how an agent was spawned, and where and as which epoch it runs.
//! - [`port`]: a handle's direct way into a running instance of its node.
//! - [`router`]: the [`Router`] that sends by agent id (the node's runtime implements it).
//! - [`origin`]: which agent a send comes from.
//! - [`agent`]: the `Agent` trait and its context.
//! - [`mailbox`]: an agent's mailbox, taken by its actor in batches.
//! - [`kind`]: erased kinds: decode, handle, encode; each agent is a ractor actor.
//! - [`kinds`]: the kinds a node registers.
//! - [`host`]: the agents a node hosts; activation and the checks at delivery.
//! - [`agent_ref`]: `AgentRef<A>`, the location-transparent handle, over a [`Router`].
//! - [`builtin`]: the built-in kinds.

pub mod agent;
pub mod agent_ref;
pub mod body;
pub mod builtin;
pub mod call;
pub mod codec;
pub mod durable;
pub mod envelope;
pub mod epoch;
pub mod error;
#[doc(hidden)] // driven by the node crates of this workspace; not part of the API
pub mod host;
pub mod id;
pub mod kind;
pub mod kinds;
pub mod local_only;
#[doc(hidden)] // driven by the node crates of this workspace; not part of the API
pub mod mailbox;
pub mod origin;
pub mod placement;
#[doc(hidden)] // driven by the node crates of this workspace; not part of the API
pub mod port;
pub mod record;
pub mod router;
pub mod stats;
pub mod timers;

pub use agent::{Agent, Ctx, Failure};
pub use agent_ref::{AgentRef, TellError};
pub use body::Body;
pub use codec::{decode, encode, CodecError, MAX_FRAME_LEN};
pub use durable::{Checkpoint, Durability};
pub use envelope::{Contract, Encoding, Envelope, RunMsg, TellRun, TraceContext, MAX_RUN_BYTES};
pub use error::AgentError;
pub use host::AgentInfo;
#[doc(hidden)]
pub use host::{Delivery, Host};
pub use id::{AgentId, IdHash};
pub use kinds::Kinds;
pub use local_only::LocalOnly;
pub use placement::{Compute, Placement, Prefer, Sensitivity};
#[doc(hidden)]
pub use port::{LocalPort, PortCache};
pub use record::{Activation, SpawnRecord};
pub use router::{Router, SendAs};
