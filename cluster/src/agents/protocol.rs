//! Frames of the agent protocol, on a QUIC stream tagged [`StreamTag::Agents`].
//!
//! Each node opens one such stream to each peer it talks to, lazily; requests go out on it in
//! order (so one sender's messages to one agent arrive in the order sent) and the answers
//! come back on the same stream, matched by request id. The directory's messages travel on
//! the same stream ([`Request::Dir`]), one-way: their answers are directory messages too.
//!
//! ```text
//! requester                                   peer
//!   Tell{env}                 ──▶  deliver; on failure ◀── TellFailed{target, seq, error}
//!   Tells{run}                ──▶  the same, per message of the run
//!   Deliver{req, env}         ──▶  deliver ◀── Done{req, Delivered}   (a local node's outbox)
//!   Ask{req, env, deadline}   ──▶  deliver, await reply ◀── Done{req, Reply}
//!   Dir(msg)                  ──▶  the node's cluster core (see `crate::directory`)
//!   Replicate{req, cps}       ──▶  store them ◀── Done{req, Stored}    (see `crate::durable`)
//!   Newest{req, id}           ──▶  ◀── Done{req, Checkpoint(newest held)}
//!   Install / Discard / Migrate ─▶  a live migration's steps (see `crate::migration`)
//! ```
//!
//! [`StreamTag::Agents`]: crate::net::wire::StreamTag::Agents

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tether_actors::{Activation, AgentError, AgentId, Checkpoint, Encoding, Envelope, TellRun};

use crate::directory::AgentSpec;
use crate::migration::MoveReport;

use crate::directory::DirMsg;

/// Largest agent frame accepted from a peer (the codec's bound).
pub const MAX_AGENT_FRAME: usize = tether_actors::MAX_FRAME_LEN;

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
    /// Consecutive tells from one sender to one agent in one frame (see [`TellRun`]); the
    /// peer handles it as the tells one by one, failures answered per message.
    Tells {
        /// The messages and what they share.
        run: TellRun,
    },
    /// A directory message (boxed: it is rare, and most of a request's size).
    Dir(Box<DirMsg>),
    /// Keep these checkpoints as their replica: answered `Stored` once durable here.
    Replicate {
        /// Request id.
        req: u64,
        /// The checkpoints.
        cps: Vec<Checkpoint>,
    },
    /// The newest checkpoint of `id` held here: answered `Checkpoint`.
    Newest {
        /// Request id.
        req: u64,
        /// The agent.
        id: AgentId,
    },
    /// Install `id` as `epoch` from `cp`, not running until something is sent to it (the
    /// target of a move): answered `Installed`.
    Install {
        /// Request id.
        req: u64,
        /// The agent.
        id: AgentId,
        /// Its epoch here.
        epoch: u64,
        /// How it was spawned and is supervised.
        spec: Box<AgentSpec>,
        /// Its state and marks.
        cp: Box<Checkpoint>,
    },
    /// Drop the instance of `id` installed as `epoch` (a move aborted): answered `Discarded`.
    Discard {
        /// Request id.
        req: u64,
        /// The agent.
        id: AgentId,
        /// The installed epoch.
        epoch: u64,
    },
    /// The source of a move has handed everything over (after the commit): `id`, installed
    /// here as `epoch`, runs for everyone. Answered `Drained`.
    Drained {
        /// Request id.
        req: u64,
        /// The agent.
        id: AgentId,
        /// The installed epoch.
        epoch: u64,
    },
    /// From a move's target to its source, after the install: answered at once, so that
    /// when the answer comes back, everything the target forwarded to the source before has
    /// reached the source's host (one stream, in order). Answered `Passed`.
    Barrier {
        /// Request id.
        req: u64,
        /// The agent moving.
        id: AgentId,
        /// From a move's target once the agent runs there, to where its own senders' route
        /// pointed: answered only once everything sent the agent that way before has reached
        /// it (each node that forwards the agent's messages passes the barrier on to where it
        /// forwards them, and answers once that is answered). Until then the target's own
        /// senders keep their route, so their messages still on that way are not overtaken.
        #[serde(default)]
        relayed: bool,
    },
    /// Move `id`, which runs here, to `to` (None: where its placement allows): answered
    /// `Moved`.
    Migrate {
        /// Request id.
        req: u64,
        /// The agent.
        id: AgentId,
        /// The target node.
        to: Option<String>,
    },
}

/// What a successful data request yields.
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
    /// A `Replicate`'s checkpoints are durable here.
    Stored,
    /// A `Newest`'s answer.
    Checkpoint(Option<Box<Checkpoint>>),
    /// An `Install`'s answer.
    Installed(Activation),
    /// A `Discard` was done.
    Discarded,
    /// A `Drained` was done.
    Drained,
    /// A `Barrier` was passed.
    Passed,
    /// A `Migrate`'s answer.
    Moved(MoveReport),
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
    use tether_actors::{Contract, TraceContext, MAX_RUN_BYTES};

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
