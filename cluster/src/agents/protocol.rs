//! Frames of the agent protocol, on a QUIC stream tagged [`StreamTag::Agents`].
//!
//! Each node opens one such stream to each peer it talks to, lazily; requests go out on it in
//! order (so one sender's messages to one agent arrive in the order sent) and the answers
//! come back on the same stream, matched by request id.
//!
//! ```text
//! requester                                   peer
//!   Tell{env}                 ──▶  deliver; on failure ◀── TellFailed{target, seq, error}
//!   Tells{run}                ──▶  the same, per message of the run
//!   Ask{req, env, deadline}   ──▶  deliver, await reply ◀── Response{req, Reply}
//!   Claim{req, id, ...}       ──▶  (directory owner) get-or-spawn ◀── Response{req, Activation}
//!   Lookup{req, id}           ──▶  (directory owner) ◀── Response{req, Location}
//!   Activate{req, id, epoch}  ──▶  (host) start it ◀── Response{req, Activation}
//!   Probe{req, id}            ──▶  (host) do you run it? ◀── Response{req, Location}
//!   Exited{id, epoch, reason} ──▶  (directory owner and backup) forget or mark failed
//!   Backup{entry}             ──▶  (the id's backup) keep a copy of the owner's entry
//!   Handoff{entry}            ──▶  (the id's owner in the sender's view) take this entry;
//!                                  fail the agent over if its node is down
//!   Evicted{id, epoch}        ──▶  (directory owner) a fence stopped this activation: place
//!                                  it again unless a newer one exists
//! ```
//!
//! [`StreamTag::Agents`]: crate::net::wire::StreamTag::Agents

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tether_actors::{
    Activation, AgentError, AgentId, Encoding, Envelope, Placement, TellRun, TraceContext,
};
use tether_supervision::AgentPolicy;

/// Largest agent frame accepted from a peer (the codec's bound).
pub const MAX_AGENT_FRAME: usize = tether_actors::MAX_FRAME_LEN;

/// Where an agent runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    /// Hosting node.
    pub node: String,
    /// Activation epoch.
    pub epoch: u64,
}

/// A request or notice, requester to peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Fire and forget.
    Tell {
        /// The message.
        env: Envelope,
    },
    /// A tell that is answered once the message is in the agent's mailbox (the outbox of a
    /// local node delivers with it, and removes a message only when it is answered).
    Deliver {
        /// Request id.
        req: u64,
        /// The message.
        env: Envelope,
    },
    /// Request and reply.
    Ask {
        /// Request id.
        req: u64,
        /// The message.
        env: Envelope,
        /// Milliseconds the asker will wait.
        deadline_ms: u64,
    },
    /// Get-or-spawn, to the id's directory owner.
    Claim {
        /// Request id.
        req: u64,
        /// The agent.
        id: AgentId,
        /// Spawn arguments.
        args_encoding: Encoding,
        /// Spawn arguments.
        args: Bytes,
        /// Labels (computed by the requester, or given by the user).
        placement: Placement,
        /// The node to run on, if the requester named one.
        target: Option<String>,
        /// Trace of the spawn.
        trace: TraceContext,
        /// How it is supervised (boxed: it is most of the request's size, and every request
        /// is moved through the peer's queue).
        #[serde(default)]
        policy: Box<AgentPolicy>,
        /// The supervisor group on the target node, if any.
        #[serde(default)]
        group: Option<String>,
    },
    /// Where does the agent run? To the id's directory owner.
    Lookup {
        /// Request id.
        req: u64,
        /// The agent.
        id: AgentId,
    },
    /// Start the agent here with this epoch (from its directory owner).
    Activate {
        /// Request id.
        req: u64,
        /// The agent.
        id: AgentId,
        /// Its epoch.
        epoch: u64,
        /// Spawn arguments.
        args_encoding: Encoding,
        /// Spawn arguments.
        args: Bytes,
        /// Labels.
        placement: Placement,
        /// Trace of the spawn.
        trace: TraceContext,
        /// How it is supervised (boxed: it is most of the request's size, and every request
        /// is moved through the peer's queue).
        #[serde(default)]
        policy: Box<AgentPolicy>,
        /// The supervisor group, if any.
        #[serde(default)]
        group: Option<String>,
    },
    /// Do you run this agent? (An owner rebuilding its entry asks the hosts.)
    Probe {
        /// Request id.
        req: u64,
        /// The agent.
        id: AgentId,
    },
    /// A copy of a directory entry for the id's backup (fire and forget).
    Backup {
        /// The entry.
        entry: EntryCopy,
    },
    /// A directory entry for the id's owner (ownership moved, or the sender holds an entry
    /// for an agent whose node went down). Fire and forget.
    Handoff {
        /// The entry.
        entry: EntryCopy,
    },
    /// A fence stopped this activation on the sender (to the id's directory owner).
    Evicted {
        /// The agent.
        id: AgentId,
        /// The activation the fence stopped.
        epoch: u64,
    },
    /// Consecutive tells from one sender to one agent in one frame (see [`TellRun`]); the
    /// peer handles it as the tells one by one, failures answered per message.
    Tells {
        /// The messages and what they share.
        run: TellRun,
    },
    /// An agent ended on its host (to its directory owner).
    Exited {
        /// The agent.
        id: AgentId,
        /// The activation that ended.
        epoch: u64,
        /// The failure, if it failed.
        reason: Option<String>,
    },
}

/// A directory entry as it travels between remote nodes: where the agent runs, and how it was
/// spawned (so that whoever holds it can activate the agent again elsewhere).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntryCopy {
    /// The agent.
    pub id: AgentId,
    /// Its host.
    pub node: String,
    /// Its activation epoch.
    pub epoch: u64,
    /// Spawn arguments.
    pub args_encoding: Encoding,
    /// Spawn arguments.
    pub args: Bytes,
    /// Labels.
    pub placement: Placement,
    /// How it is supervised.
    pub policy: AgentPolicy,
    /// The supervisor group, if any.
    pub group: Option<String>,
}

/// What a successful request yields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// An ask's reply.
    Reply {
        /// Its encoding (the ask's).
        encoding: Encoding,
        /// Its bytes.
        body: Bytes,
    },
    /// A `Deliver` reached the agent's mailbox.
    Delivered,
    /// A claim's or activation's result.
    Activation(Activation),
    /// A lookup's or probe's result.
    Location(Option<Location>),
}

impl Answer {
    /// The activation a claim or activation answered with.
    ///
    /// # Errors
    /// [`AgentError::Internal`] if the peer answered something else.
    pub fn into_activation(self) -> Result<Activation, AgentError> {
        match self {
            Answer::Activation(a) => Ok(a),
            other => Err(AgentError::Internal(format!(
                "expected an activation, got {other:?}"
            ))),
        }
    }

    /// The location a lookup or probe answered with.
    ///
    /// # Errors
    /// [`AgentError::Internal`] if the peer answered something else.
    pub fn into_location(self) -> Result<Option<Location>, AgentError> {
        match self {
            Answer::Location(l) => Ok(l),
            other => Err(AgentError::Internal(format!(
                "expected a location, got {other:?}"
            ))),
        }
    }
}

/// An answer, peer to requester.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// The answer to request `req`.
    Done {
        /// Request id.
        req: u64,
        /// The result.
        result: Result<Answer, AgentError>,
    },
    /// A tell could not be delivered.
    TellFailed {
        /// The target.
        target: AgentId,
        /// The tell's sequence number.
        seq: u64,
        /// Why.
        error: AgentError,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tether_actors::codec::{self, Layout};
    use tether_actors::{Contract, MAX_RUN_BYTES};

    fn env(target: &str, sender: &str, seq: u64, len: usize) -> Envelope {
        Envelope {
            target: target.parse().unwrap(),
            epoch: 1,
            sender: Arc::from(sender),
            seq,
            trace: TraceContext::new_root(),
            contract: Contract {
                name: "sink".into(),
                version: 1,
            },
            encoding: Encoding::MsgPack,
            body: Bytes::from(vec![seq as u8; len]),
        }
    }

    /// Envelopes pushed in order, runs made as a peer's queue makes them.
    fn runs(envs: Vec<Envelope>) -> Vec<TellRun> {
        let mut out: Vec<TellRun> = Vec::new();
        for e in envs {
            match out.last_mut() {
                Some(run) if run.admits(&e) => run.push(e),
                _ => out.push(TellRun::of(e)),
            }
        }
        out
    }

    #[test]
    fn a_run_holds_consecutive_tells_of_one_head_and_decodes_to_the_same_envelopes() {
        let mut envs = vec![
            env("sink/a", "n1", 1, 64),
            env("sink/a", "n1", 2, 64),
            env("sink/a", "n1", 3, 64),
            env("sink/b", "n1", 1, 64),
            env("sink/a", "n1/agent", 1, 64),
            env("sink/a", "n1", 4, 64),
            env("sink/a", "n1", 5, 64),
            env("sink/a", "n1", 6, 64),
            env("sink/a", "n1", 7, 64),
        ];
        envs[6].epoch = 2;
        envs[8].encoding = Encoding::Json;
        let made = runs(envs.clone());
        // [a1 a2 a3] [b1] [a'1] [a4] [a5 (epoch 2)] [a6] [a7 (json)]
        assert_eq!(
            made.iter().map(|r| r.msgs.len()).collect::<Vec<_>>(),
            [3, 1, 1, 1, 1, 1, 1]
        );
        for layout in [Layout::Compact, Layout::Named] {
            let mut back = Vec::new();
            for run in &made {
                let mut buf = Vec::new();
                let req = Request::Tells { run: run.clone() };
                codec::encode_into(&mut buf, &req, layout).unwrap();
                match codec::decode::<Request>(&buf).unwrap() {
                    Request::Tells { run } => back.extend(run.into_envelopes()),
                    other => panic!("decoded {other:?}"),
                }
            }
            assert_eq!(back, envs, "{layout:?}: order and content kept");
        }
    }

    #[test]
    fn a_run_is_bounded_in_payload_bytes() {
        let per = MAX_RUN_BYTES / 4;
        let made = runs((1..=10).map(|s| env("sink/a", "n1", s, per)).collect());
        assert_eq!(
            made.iter().map(|r| r.msgs.len()).collect::<Vec<_>>(),
            [4, 4, 2]
        );
        // a message larger than the bound goes alone
        let made = runs(vec![
            env("sink/a", "n1", 1, 8),
            env("sink/a", "n1", 2, MAX_RUN_BYTES + 1),
            env("sink/a", "n1", 3, 8),
        ]);
        assert_eq!(made.len(), 3);
    }

    #[test]
    fn a_malformed_run_is_refused() {
        let run = runs(vec![env("sink/a", "n1", 1, 64), env("sink/a", "n1", 2, 64)]).remove(0);
        let mut buf = Vec::new();
        codec::encode_into(&mut buf, &Request::Tells { run }, Layout::Compact).unwrap();
        for cut in [1, buf.len() / 2, buf.len() - 1] {
            assert!(
                codec::decode::<Request>(&buf[..cut]).is_err(),
                "cut at {cut}"
            );
        }
    }
}
