//! Envelopes: what travels with every message.
//!
//! An envelope names its target and the target's epoch as the sender knows it (a host refuses
//! an older epoch: fencing), the sender and its per-target sequence number (FIFO and dedupe),
//! a W3C trace context (one trace id across nodes), and the payload's contract and encoding.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::id::AgentId;

/// How a payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// MessagePack (typed Rust senders).
    MsgPack,
    /// JSON (the CLI and other tools).
    Json,
}

/// A contract: the name and version of a message schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contract {
    /// Name (the kind's name for agent messages); borrowed from the kind when sent from
    /// here, so a send does not copy it.
    pub name: std::borrow::Cow<'static, str>,
    /// Version.
    pub version: u32,
}

impl fmt::Display for Contract {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

/// A trace id shown as 32 hex digits (see [`TraceContext::trace_id_hex`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceIdHex(pub u128);

impl fmt::Display for TraceIdHex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// A W3C trace context (`traceparent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TraceContext {
    /// 128-bit trace id, shared by every step of a flow.
    pub trace_id: u128,
    /// 64-bit id of the sending span.
    pub span_id: u64,
    /// The sampled flag.
    pub sampled: bool,
}

impl TraceContext {
    /// A new trace (a flow that starts here).
    pub fn new_root() -> Self {
        Self {
            trace_id: nonzero(u128::from(fast_random()) << 64 | u128::from(fast_random())),
            span_id: nonzero(fast_random()),
            sampled: true,
        }
    }

    /// A child span in the same trace.
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id,
            span_id: nonzero(fast_random()),
            sampled: self.sampled,
        }
    }

    /// The trace that the current task runs in (set while an agent handles a message or runs
    /// `init`, or inside [`TraceContext::scope`]), if any.
    pub fn current() -> Option<Self> {
        CURRENT_TRACE.try_with(Cell::get).ok()
    }

    /// The trace that the current task runs in, if any (set while an agent handles a message),
    /// continued as a child; else a new root.
    pub fn current_or_new() -> Self {
        CURRENT_TRACE
            .try_with(|t| t.get().child())
            .unwrap_or_else(|_| Self::new_root())
    }

    /// Runs `f` in this trace: what it sends continues the trace.
    pub fn scope<F: Future>(self, f: F) -> impl Future<Output = F::Output> {
        CURRENT_TRACE.scope(Cell::new(self), f)
    }

    /// [`TraceContext::scope`] for synchronous code.
    pub fn sync_scope<R>(self, f: impl FnOnce() -> R) -> R {
        CURRENT_TRACE.sync_scope(Cell::new(self), f)
    }

    /// Makes this the current trace of the enclosing scope (an agent moving to its next
    /// message). Returns false outside any scope.
    pub(crate) fn make_current(self) -> bool {
        CURRENT_TRACE.try_with(|t| t.set(self)).is_ok()
    }

    /// The trace id as 32 hex digits, as it appears in logs (formatted only when displayed:
    /// a log line that is filtered out costs no allocation).
    pub fn trace_id_hex(&self) -> TraceIdHex {
        TraceIdHex(self.trace_id)
    }

    /// `traceparent` header text.
    pub fn to_traceparent(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }

    /// Parses a `traceparent` header.
    pub fn from_traceparent(s: &str) -> Option<Self> {
        let mut parts = s.split('-');
        let (v, t, p, f) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if v != "00" || t.len() != 32 || p.len() != 16 || f.len() != 2 || parts.next().is_some() {
            return None;
        }
        let trace_id = u128::from_str_radix(t, 16).ok().filter(|x| *x != 0)?;
        let span_id = u64::from_str_radix(p, 16).ok().filter(|x| *x != 0)?;
        let flags = u8::from_str_radix(f, 16).ok()?;
        Some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }
}

/// A random 64-bit number for trace and span ids: SplitMix64 on a per-thread state seeded
/// from the OS's randomness once per thread. Ids need to be unique, not unpredictable, and a
/// send makes one or two, so they should cost next to nothing; `rand::random` goes through a
/// CSPRNG.
fn fast_random() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(rand::random());
    }
    STATE.with(|s| {
        let x = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(x);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

fn nonzero<T: Default + PartialEq + From<u8>>(x: T) -> T {
    if x == T::default() {
        T::from(1)
    } else {
        x
    }
}

tokio::task_local! {
    /// The trace of the message the current task is handling. A cell, so that an agent sets
    /// the scope once per batch and only updates it per message.
    static CURRENT_TRACE: Cell<TraceContext>;
}

/// A message on its way to an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The target agent.
    pub target: AgentId,
    /// The target's epoch as the sender knows it (0: any).
    pub epoch: u64,
    /// The sender: a node name, or `node/agent-id` when an agent sends.
    pub sender: Arc<str>,
    /// Per sender and target, from 1, without gaps.
    pub seq: u64,
    /// Trace context.
    pub trace: TraceContext,
    /// The payload's contract.
    pub contract: Contract,
    /// The payload's encoding.
    pub encoding: Encoding,
    /// The payload.
    pub body: Bytes,
}

/// Consecutive tells from one sender to one agent, sent as one frame: what their envelopes
/// share (target, epoch, sender, contract, encoding) travels once, then each message's own
/// parts. Receiving a run is receiving its envelopes one by one, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TellRun {
    /// The target agent.
    pub target: AgentId,
    /// The target's epoch as the sender knows it (0: any).
    pub epoch: u64,
    /// The sender.
    pub sender: Arc<str>,
    /// The payloads' contract.
    pub contract: Contract,
    /// The payloads' encoding.
    pub encoding: Encoding,
    /// The messages, in the order sent.
    pub msgs: Vec<RunMsg>,
    /// Payload bytes in `msgs`, kept by [`TellRun::push`] (not on the wire).
    #[serde(skip)]
    pub bytes: usize,
}

impl PartialEq for TellRun {
    /// The same messages with the same head (`bytes` is bookkeeping).
    fn eq(&self, other: &Self) -> bool {
        self.target == other.target
            && self.epoch == other.epoch
            && self.sender == other.sender
            && self.contract == other.contract
            && self.encoding == other.encoding
            && self.msgs == other.msgs
    }
}

/// One message of a [`TellRun`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMsg {
    /// The sender's sequence number.
    pub seq: u64,
    /// Trace context.
    pub trace: TraceContext,
    /// The payload.
    pub body: Bytes,
}

/// Most bytes of payload in one [`TellRun`]; a message that would pass it starts a new run.
pub const MAX_RUN_BYTES: usize = 64 * 1024;

impl TellRun {
    /// A run of one message.
    pub fn of(env: Envelope) -> Self {
        Self {
            target: env.target,
            epoch: env.epoch,
            sender: env.sender,
            contract: env.contract,
            encoding: env.encoding,
            bytes: env.body.len(),
            msgs: vec![RunMsg {
                seq: env.seq,
                trace: env.trace,
                body: env.body,
            }],
        }
    }

    /// Whether `env` belongs to this run: the same target, epoch, sender, contract and
    /// encoding, and the run stays within [`MAX_RUN_BYTES`].
    pub fn admits(&self, env: &Envelope) -> bool {
        self.target == env.target
            && self.epoch == env.epoch
            && self.sender == env.sender
            && self.contract == env.contract
            && self.encoding == env.encoding
            && self.bytes + env.body.len() <= MAX_RUN_BYTES
    }

    /// Appends `env`, which the run [`admits`](Self::admits).
    pub fn push(&mut self, env: Envelope) {
        debug_assert!(self.admits(&env), "a run holds envelopes of one head");
        self.bytes += env.body.len();
        self.msgs.push(RunMsg {
            seq: env.seq,
            trace: env.trace,
            body: env.body,
        });
    }

    /// The run's envelopes, one per message.
    pub fn into_envelopes(self) -> impl Iterator<Item = Envelope> {
        let TellRun {
            target,
            epoch,
            sender,
            contract,
            encoding,
            msgs,
            bytes: _,
        } = self;
        msgs.into_iter().map(move |m| Envelope {
            target: target.clone(),
            epoch,
            sender: sender.clone(),
            seq: m.seq,
            trace: m.trace,
            contract: contract.clone(),
            encoding,
            body: m.body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_and_span_ids_do_not_repeat_within_or_across_threads() {
        let ids: Vec<(u128, u64)> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    (0..10_000)
                        .map(|_| {
                            let t = TraceContext::new_root();
                            (t.trace_id, t.child().span_id)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .flat_map(|h| h.join().unwrap())
            .collect();
        let traces: std::collections::HashSet<u128> = ids.iter().map(|i| i.0).collect();
        let spans: std::collections::HashSet<u64> = ids.iter().map(|i| i.1).collect();
        assert_eq!(traces.len(), ids.len());
        assert_eq!(spans.len(), ids.len());
        // both halves of a trace id are random, not one
        assert!(ids.iter().any(|i| i.0 >> 64 != 0) && ids.iter().any(|i| i.0 as u64 != 0));
    }

    #[test]
    fn traceparent_round_trips() {
        let t = TraceContext::new_root();
        let s = t.to_traceparent();
        assert_eq!(s.len(), 55);
        assert_eq!(TraceContext::from_traceparent(&s), Some(t));
        let c = t.child();
        assert_eq!(c.trace_id, t.trace_id);
        assert_ne!(c.span_id, t.span_id);
    }

    #[test]
    fn bad_traceparents_are_none() {
        for s in [
            "",
            "01-0000-00-00",
            "00-00000000000000000000000000000000-0000000000000001-01",
        ] {
            assert_eq!(TraceContext::from_traceparent(s), None, "{s}");
        }
    }

    #[tokio::test]
    async fn current_trace_is_inherited_inside_a_scope() {
        let root = TraceContext::new_root();
        let inner = root.scope(async { TraceContext::current_or_new() }).await;
        assert_eq!(inner.trace_id, root.trace_id);
        let outside = TraceContext::current_or_new();
        assert_ne!(outside.trace_id, root.trace_id);
    }
}
