//! What a program that embeds tether usually needs: `use tether::prelude::*;`.

pub use crate::{
    Agent, AgentError, AgentId, AgentPolicy, AgentRef, Ctx, Failure, GroupSpec, Kinds, Node,
    NodeBuilder, Placement, Role, Strategy, TellError,
};
