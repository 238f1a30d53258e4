//! Kinds: a registered agent type, erased so a node can create agents by kind name.
//!
//! A message body is either a typed Rust value (local sends skip serialization) or bytes in
//! MessagePack or JSON (from other nodes or the CLI). The erased layer decodes the body into
//! the agent's message type, fallibly: a body that does not decode is answered with
//! [`AgentError::BadPayload`] and the agent keeps running. The reply goes back in the form the
//! request came in.
//!
//! ```text
//! Host ── spawn(kind) ──▶ ErasedKind: A::init, in the spawner's task ──▶ Prepared<A> (dormant,
//!                          held by the agent's mailbox)
//!        first message ──▶ AgentActor<A> (a ractor actor per agent that got mail)
//!                          handle:    decode ─▶ A::handle ─▶ encode reply
//!                          post_stop: A::on_stop (a dormant agent's stop runs it without one)
//! ```
//!
//! # Logs and spans
//!
//! A handler's log lines must say which agent and which trace they belong to, but a span per
//! message is not free: with a formatting subscriber at `info`, creating, entering and closing
//! one took more instructions than the rest of a local ask (callgrind, `RUST_LOG=info`: 13 800
//! per ask with it, 7 900 without). So the per-message span (`agent`, with `id` and `trace_id`) is at `debug`, for
//! subscribers that want spans (an OpenTelemetry exporter, a debugging session), and the
//! agent and trace of the running handler are kept in task-locals that a formatter reads only
//! when a line is written ([`log_context`]; the `tether` binary's formatter prints them
//! as `agent{id=.. trace_id=..}` at every level).
//!
//! # Memory
//!
//! An agent that never got mail costs its state and mailbox, no task (see [`crate::mailbox`]).
//! An idle agent whose actor started costs what its ractor task holds, and a task is as large
//! as the largest future it may await in place. The agent's own futures (`init`, a batch of handlers, with
//! their tracing and task-local wrappers, and the loop an awake agent runs in its handler, see
//! [`crate::mailbox`]) are boxed for the time they run, so that an idle agent's task holds a
//! pointer instead of them: one allocation per batch or start, against about 1.5 KB less per
//! idle agent (`tether bench`, `bytes_per_idle_agent`).

use std::any::Any;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::oneshot;
use tracing::{debug, warn, Instrument};

use crate::agent::{Agent, AgentError, Ctx};
use crate::envelope::{Contract, Encoding, TraceContext};
use crate::id::AgentId;
use crate::mailbox::{AgentActorRef, Dormant, Mailbox, Took, Wake, BATCH};
use crate::placement::Placement;

/// A message or reply body.
pub enum Body {
    /// Encoded bytes.
    Encoded(Encoding, Bytes),
    /// A typed value: passed as is to an agent in this process, encoded when it must cross.
    Typed(Typed),
}

/// A typed value with the function that encodes it (MessagePack), chosen when it was made.
pub struct Typed {
    value: Box<dyn Any + Send>,
    encode: fn(Box<dyn Any + Send>) -> Result<Bytes, String>,
}

fn encode_boxed<T: Serialize + 'static>(v: Box<dyn Any + Send>) -> Result<Bytes, String> {
    let v = v
        .downcast::<T>()
        .map_err(|_| format!("expected a {}", std::any::type_name::<T>()))?;
    crate::codec::encode_bytes(&*v).map_err(|e| e.to_string())
}

/// Decodes `bytes`, encoded as `encoding`, into `T`.
fn decode_slice<T: DeserializeOwned>(encoding: Encoding, bytes: &[u8]) -> Result<T, String> {
    match encoding {
        Encoding::MsgPack => crate::codec::decode(bytes).map_err(|e| e.to_string()),
        Encoding::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Encoded(e, b) => write!(f, "Encoded({e:?}, {} bytes)", b.len()),
            Body::Typed(_) => f.write_str("Typed(..)"),
        }
    }
}

impl Body {
    /// A JSON body.
    pub fn json(v: &serde_json::Value) -> Self {
        // invariant: a serde_json::Value always serializes
        Body::Encoded(
            Encoding::Json,
            Bytes::from(serde_json::to_vec(v).expect("JSON value encodes")),
        )
    }

    /// Decodes into `T`.
    ///
    /// # Errors
    /// The decoder's message.
    pub fn decode<T: DeserializeOwned + 'static>(self) -> Result<T, String> {
        match self {
            Body::Typed(t) => t
                .value
                .downcast::<T>()
                .map(|b| *b)
                .map_err(|_| format!("expected a {}", std::any::type_name::<T>())),
            Body::Encoded(e, b) => decode_slice(e, &b),
        }
    }

    /// Encodes `v` the way a request came in (`None`: typed).
    ///
    /// # Errors
    /// The encoder's message.
    pub fn encode<T: Serialize + Send + 'static>(
        v: T,
        like: Option<Encoding>,
    ) -> Result<Body, String> {
        Ok(match like {
            None => Body::typed(v),
            Some(Encoding::MsgPack) => Body::Encoded(
                Encoding::MsgPack,
                crate::codec::encode_bytes(&v).map_err(|e| e.to_string())?,
            ),
            Some(Encoding::Json) => Body::Encoded(
                Encoding::Json,
                Bytes::from(serde_json::to_vec(&v).map_err(|e| e.to_string())?),
            ),
        })
    }

    /// A typed body.
    pub fn typed<T: Serialize + Send + 'static>(v: T) -> Body {
        Body::Typed(Typed {
            value: Box::new(v),
            encode: encode_boxed::<T>,
        })
    }

    /// The body as bytes for the wire: typed values become MessagePack.
    ///
    /// # Errors
    /// The encoder's message.
    pub fn into_wire(self) -> Result<(Encoding, Bytes), String> {
        match self {
            Body::Encoded(e, b) => Ok((e, b)),
            Body::Typed(t) => Ok((Encoding::MsgPack, (t.encode)(t.value)?)),
        }
    }

    /// The encoding, if encoded.
    pub fn encoding(&self) -> Option<Encoding> {
        match self {
            Body::Encoded(e, _) => Some(*e),
            Body::Typed(_) => None,
        }
    }

    /// The body as JSON, if it can be read as such (for printing replies).
    pub fn to_json(self) -> Result<serde_json::Value, String> {
        match self {
            Body::Encoded(Encoding::Json, b) => {
                serde_json::from_slice(&b).map_err(|e| e.to_string())
            }
            Body::Encoded(Encoding::MsgPack, b) => {
                crate::codec::decode(&b).map_err(|e| e.to_string())
            }
            Body::Typed(t) => {
                let bytes = (t.encode)(t.value)?;
                crate::codec::decode(&bytes).map_err(|e| e.to_string())
            }
        }
    }
}

/// The agent whose handler (or init) the current task runs: who is sending, and whether what
/// it sends must stay on this node.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The agent.
    pub id: AgentId,
    /// Its node.
    pub node: Arc<str>,
    /// How its messages name their sender, `node/kind/key`: made at the first send of a
    /// batch, kept for the batch (an idle agent holds no copy of it).
    sender: std::sync::OnceLock<Arc<str>>,
    /// It is local-only: its messages may not leave this node.
    pub local_only: bool,
}

impl Origin {
    /// How the agent's messages name their sender: `node/kind/key`.
    pub fn sender(&self) -> Arc<str> {
        self.sender
            .get_or_init(|| format!("{}/{}", self.node, self.id).into())
            .clone()
    }
}

tokio::task_local! {
    /// Set while an agent handles a message or runs `init`.
    pub static CURRENT_AGENT: Origin;
}

/// The agent whose handler (or `init`) the current task runs, and the trace of the message it
/// handles; `None` outside any agent: what a log line written now belongs to.
///
/// A log formatter reads it as it writes a line (the `tether` binary's does), so that a
/// handler's lines carry the agent's id and the trace id, and a message whose handler logs
/// nothing pays nothing for it. See "Logs and spans" in the module doc.
pub fn log_context() -> Option<(AgentId, TraceContext)> {
    let id = CURRENT_AGENT.try_with(|o| o.id.clone()).ok()?;
    Some((id, TraceContext::current()?))
}

/// Where an ask's reply goes: an asker in this process (a oneshot channel), or a callback
/// that hands it on at once (the node runtime writes a remote asker's reply to its stream,
/// with no task in between).
///
/// Dropped without a reply (the instance failed with the message still in its mailbox), a
/// callback is called with `None`; a channel's receiver sees it closed. Either way the
/// asker learns that the message was lost.
pub struct ReplyTx(Option<ReplyTo>);

/// A reply callback: `Some(reply)`, or `None` when the reply will never come.
pub type ReplyCallback = Box<dyn FnOnce(Option<Result<Body, AgentError>>) + Send>;

enum ReplyTo {
    Channel(oneshot::Sender<Result<Body, AgentError>>),
    Callback(ReplyCallback),
}

impl ReplyTx {
    /// Replies through `f`, called exactly once.
    pub fn callback(f: impl FnOnce(Option<Result<Body, AgentError>>) + Send + 'static) -> Self {
        Self(Some(ReplyTo::Callback(Box::new(f))))
    }

    /// The asker's channel, if the reply goes to one (for sending the request another way).
    pub fn into_channel(mut self) -> Option<oneshot::Sender<Result<Body, AgentError>>> {
        match self.0.take() {
            Some(ReplyTo::Channel(tx)) => Some(tx),
            other => {
                self.0 = other;
                None
            }
        }
    }

    /// Sends the reply.
    ///
    /// # Errors
    /// The reply, when the asker (in this process) stopped waiting.
    pub fn send(mut self, reply: Result<Body, AgentError>) -> Result<(), Result<Body, AgentError>> {
        match self.0.take() {
            Some(ReplyTo::Channel(tx)) => tx.send(reply),
            Some(ReplyTo::Callback(f)) => {
                f(Some(reply));
                Ok(())
            }
            None => Err(reply),
        }
    }
}

impl From<oneshot::Sender<Result<Body, AgentError>>> for ReplyTx {
    fn from(tx: oneshot::Sender<Result<Body, AgentError>>) -> Self {
        Self(Some(ReplyTo::Channel(tx)))
    }
}

impl Drop for ReplyTx {
    fn drop(&mut self) {
        if let Some(ReplyTo::Callback(f)) = self.0.take() {
            f(None);
        }
    }
}

impl std::fmt::Debug for ReplyTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Some(ReplyTo::Channel(_)) => "ReplyTx(channel)",
            Some(ReplyTo::Callback(_)) => "ReplyTx(callback)",
            None => "ReplyTx(sent)",
        })
    }
}

/// One message for an agent actor.
pub struct Call {
    /// The message.
    pub body: Body,
    /// Its trace.
    pub trace: TraceContext,
    /// Who sent it.
    pub sender: Option<Arc<str>>,
    /// The sender's sequence number.
    pub seq: u64,
    /// Where the reply goes (`ask`), or none (`tell`).
    pub reply: Option<ReplyTx>,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("body", &self.body)
            .field("trace_id", &self.trace.trace_id_hex())
            .field("sender", &self.sender)
            .field("seq", &self.seq)
            .field("ask", &self.reply.is_some())
            .finish()
    }
}

/// Called once when an agent's actor ends: `None` for a clean stop, else the failure.
pub type ExitHook = Arc<dyn Fn(&AgentId, u64, Option<String>) + Send + Sync>;

/// Called when a supervised agent's actor starts (at its first message): the agent and the
/// actor, so that its supervisor can tell whose supervision events the actor's are.
pub type StartHook = Arc<dyn Fn(&AgentId, ractor::ActorId) + Send + Sync>;

/// The last sequence number seen from each sender.
pub type SeqTable = std::collections::HashMap<Arc<str>, u64>;

/// Counters of one hosted agent.
#[derive(Debug, Default)]
pub struct AgentStats {
    /// Messages handed to the agent.
    pub received: AtomicU64,
    /// Messages whose sequence number skipped ahead (a gap: something before was lost).
    pub gaps: AtomicU64,
    /// Messages refused as already delivered (sequence number not new).
    pub duplicates: AtomicU64,
    /// Messages that left the mailbox: handled, lost with a failed instance, or refused by
    /// a mailbox that closed. `received - done` wait (see [`AgentStats::waiting`]). The agent
    /// adds what it handled once per batch, so a sender and the agent do not write the same
    /// counter for every message.
    pub done: AtomicU64,
    /// Messages that were in the mailbox of an instance that failed, lost with it (as in
    /// Erlang, a failed instance's mailbox is not carried over; each loss is logged).
    pub lost: AtomicU64,
    /// Last sequence number seen per sender (kept across restarts: the stats outlive an
    /// instance). Per agent, so a lookup by `&str` needs no allocation.
    /// Made at the first message from another node or the outbox (an agent only sent to
    /// in process holds no table).
    pub last_seq: std::sync::Mutex<Option<Box<SeqTable>>>,
}

impl AgentStats {
    /// Messages waiting for the agent (in its mailbox, or held while it restarts). Read
    /// without a lock: a snapshot, exact when no message is in flight.
    pub fn waiting(&self) -> u64 {
        let done = self.done.load(Ordering::Acquire);
        self.received.load(Ordering::Acquire).saturating_sub(done)
    }

    /// `n` messages left without being handled, or were handled (see `done`).
    pub fn settle(&self, n: u64) {
        if n > 0 {
            self.done.fetch_add(n, Ordering::AcqRel);
        }
    }
}

/// What a node needs to start one agent.
pub struct SpawnSpec {
    /// The agent.
    pub id: AgentId,
    /// Its activation epoch.
    pub epoch: u64,
    /// The hosting node's name.
    pub node: Arc<str>,
    /// Spawn arguments (read from the record, not copied: it outlives the instance).
    pub record: Arc<crate::host::SpawnRecord>,
    /// Trace of the spawn.
    pub trace: TraceContext,
    /// Called when the agent ends.
    pub on_exit: ExitHook,
    /// The agent's counters (the actor keeps `queued` true).
    pub stats: Arc<AgentStats>,
    /// The agent is local-only.
    pub local_only: bool,
    /// The supervisor actor to link to (its `handle_supervisor_evt` sees the agent fail).
    pub supervisor: Option<ractor::ActorCell>,
    /// Told when the actor starts (supervised agents).
    pub on_start: Option<StartHook>,
    /// A handler running longer than this fails the agent.
    pub handler_timeout: Option<std::time::Duration>,
    /// `init` must finish within this.
    pub start_timeout: std::time::Duration,
    /// Asked before each message is handled; a reason closes the door (see [`Gate`]).
    pub gate: Option<Gate>,
}

/// Asked before each message reaches the handler: `Some(reason)` means the node must not act
/// now (it was paused past its lease, or it is fenced), and the message is refused with the
/// reason instead of handled. This catches what was already in a mailbox when the node was
/// paused (SIGSTOP, a VM freeze), which resumes before the node's ticker can fence it.
pub type Gate = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// A boxed future, for the erased interface.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A kind as the node sees it: by name, without its types.
pub trait ErasedKind: Send + Sync {
    /// The kind name.
    fn name(&self) -> &'static str;
    /// The message contract.
    fn contract(&self) -> Contract;
    /// Placement labels for these spawn arguments (decoding them).
    fn placement(&self, args: Body) -> Result<(Placement, Body), AgentError>;
    /// Prepares an agent: runs its `init` (in the caller's task, under the start timeout);
    /// its actor starts at its first message (see [`crate::mailbox`]).
    fn spawn(&self, spec: SpawnSpec) -> BoxFuture<'_, Result<AgentActorRef, AgentError>>;
}

/// Erases agent kind `A`.
pub fn erase<A: Agent>(behaviour: A) -> Arc<dyn ErasedKind> {
    Arc::new(KindImpl {
        behaviour: Arc::new(behaviour),
    })
}

struct KindImpl<A> {
    behaviour: Arc<A>,
}

impl<A: Agent> ErasedKind for KindImpl<A> {
    fn name(&self) -> &'static str {
        A::KIND
    }

    fn contract(&self) -> Contract {
        Contract {
            name: A::KIND.into(),
            version: A::CONTRACT_VERSION,
        }
    }

    fn placement(&self, args: Body) -> Result<(Placement, Body), AgentError> {
        let bad = |reason| AgentError::BadPayload {
            id: format!("{} args", A::KIND),
            reason,
        };
        if let Body::Encoded(e, b) = &args {
            // read, not consumed: the arguments travel on as they came
            let typed: A::Args = decode_slice(*e, b).map_err(bad)?;
            return Ok((self.behaviour.placement(&typed), args));
        }
        let like = args.encoding();
        let typed: A::Args = args.decode().map_err(bad)?;
        let p = self.behaviour.placement(&typed);
        Ok((p, Body::encode(typed, like).map_err(bad)?))
    }

    fn spawn(&self, spec: SpawnSpec) -> BoxFuture<'_, Result<AgentActorRef, AgentError>> {
        let behaviour = self.behaviour.clone();
        Box::pin(async move {
            let id = spec.id.clone();
            let failed = |reason| AgentError::Failed {
                id: id.to_string(),
                reason,
            };
            let args: A::Args =
                decode_slice(spec.record.encoding, &spec.record.args).map_err(|reason| {
                    AgentError::BadPayload {
                        id: format!("{id} args"),
                        reason,
                    }
                })?;
            let ctx = Ctx {
                id: spec.id,
                epoch: spec.epoch,
                node: spec.node,
                trace: spec.trace,
                sender: None,
                seq: 0,
            };
            let actor = AgentActor::<A> {
                behaviour,
                local_only: spec.local_only,
                handler_timeout: spec.handler_timeout,
                gate: spec.gate,
            };
            // `init` runs here, in the spawner's task: its errors are the spawn's, and the
            // actor starts at the first message (see `crate::mailbox`)
            let span =
                tracing::debug_span!("agent", id = %ctx.id, trace_id = %ctx.trace.trace_id_hex());
            let init = CURRENT_AGENT
                .scope(
                    actor.origin(&ctx),
                    ctx.trace.scope(actor.behaviour.init(&ctx, args)),
                )
                .instrument(span);
            let state = tokio::time::timeout(spec.start_timeout, catch_unwind(init))
                .await
                .map_err(|_| {
                    failed(format!(
                        "init did not finish within {:?}",
                        spec.start_timeout
                    ))
                })?
                .map_err(|panic| failed(format!("init panicked: {panic}")))?
                .map_err(|e| failed(format!("init failed: {e}")))?;
            Ok(AgentActorRef::dormant(Box::new(Prepared {
                actor,
                state,
                ctx,
                on_exit: spec.on_exit,
                stats: spec.stats,
                supervisor: spec.supervisor,
                on_start: spec.on_start,
            })))
        })
    }
}

/// Runs `f`, turning a panic into its message (as ractor does for an actor's handlers).
async fn catch_unwind<F: Future>(f: F) -> Result<F::Output, String> {
    let mut f = std::pin::pin!(f);
    std::future::poll_fn(|cx| {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f.as_mut().poll(cx))) {
            Ok(p) => p.map(Ok),
            Err(panic) => std::task::Poll::Ready(Err(panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into()))),
        }
    })
    .await
}

/// An agent whose `init` has run, held by its mailbox until the first message starts its
/// actor (see [`crate::mailbox`]).
struct Prepared<A: Agent> {
    actor: AgentActor<A>,
    state: A::State,
    ctx: Ctx,
    on_exit: ExitHook,
    stats: Arc<AgentStats>,
    supervisor: Option<ractor::ActorCell>,
    on_start: Option<StartHook>,
}

impl<A: Agent> Dormant for Prepared<A> {
    fn start(self: Box<Self>, mailbox: Arc<Mailbox>) -> Result<ActorRef<Wake>, String> {
        // ractor spawns a task: outside a runtime (a runtime shutting down) there is none
        tokio::runtime::Handle::try_current().map_err(|e| e.to_string())?;
        let Prepared {
            actor,
            state,
            ctx,
            on_exit,
            stats,
            supervisor,
            on_start,
        } = *self;
        let id = on_start.as_ref().map(|_| ctx.id.clone());
        let args = (state, ctx, on_exit, stats, mailbox);
        // ractor's spawn runs `pre_start` (which only takes the state in), links the actor
        // and spawns its task: with nothing to wait for, its first poll finishes it, here,
        // with no task of its own in between
        let spawn = async {
            match supervisor {
                Some(sup) => ractor::ActorRuntime::spawn_linked(None, actor, args, sup).await,
                None => ractor::ActorRuntime::spawn(None, actor, args).await,
            }
        };
        let polled = std::pin::pin!(spawn)
            .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
        let aref = match polled {
            std::task::Poll::Ready(Ok((aref, _))) => aref,
            std::task::Poll::Ready(Err(e)) => return Err(e.to_string()),
            std::task::Poll::Pending => return Err("ractor did not start the actor at once".into()),
        };
        if let (Some(hook), Some(id)) = (on_start, id) {
            hook(&id, aref.get_id());
        }
        Ok(aref)
    }

    fn stop(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let Prepared {
                actor,
                mut state,
                ctx,
                on_exit,
                ..
            } = *self;
            actor.behaviour.on_stop(&ctx, &mut state).await;
            on_exit(&ctx.id, ctx.epoch, None);
        })
    }
}

struct AgentActor<A> {
    behaviour: Arc<A>,
    local_only: bool,
    handler_timeout: Option<std::time::Duration>,
    gate: Option<Gate>,
}

impl<A> AgentActor<A> {
    fn origin(&self, ctx: &Ctx) -> Origin {
        Origin {
            id: ctx.id.clone(),
            node: ctx.node.clone(),
            sender: std::sync::OnceLock::new(),
            local_only: self.local_only,
        }
    }
}

struct ActorState<A: Agent> {
    state: A::State,
    ctx: Ctx,
    on_exit: ExitHook,
    exited: AtomicBool,
    stats: Arc<AgentStats>,
    mailbox: Arc<Mailbox>,
    /// Calls taken from the mailbox, not yet handled.
    batch: VecDeque<Call>,
    /// The actor runs (linked, in its own task): from then on, its end closes the mailbox.
    /// Before, the state is dropped only by a start that failed, under the mailbox's lock,
    /// and the mailbox closes itself (see `Mailbox::start`).
    live: bool,
}

impl<A: Agent> Drop for ActorState<A> {
    /// However the actor ends (stop, failure, kill), what waits in its mailbox goes with it.
    fn drop(&mut self) {
        if self.live {
            self.mailbox.close();
        }
    }
}

impl<A: Agent> ActorState<A> {
    fn exit(&self, reason: Option<String>) {
        if !self.exited.swap(true, Ordering::AcqRel) {
            (self.on_exit)(&self.ctx.id, self.ctx.epoch, reason);
        }
    }
}

impl<A: Agent> Actor for AgentActor<A> {
    type Msg = Wake;
    type State = ActorState<A>;
    type Arguments = (A::State, Ctx, ExitHook, Arc<AgentStats>, Arc<Mailbox>);

    /// Takes in the agent's state: `init` ran at spawn (see [`crate::mailbox`]).
    async fn pre_start(
        &self,
        _me: ActorRef<Wake>,
        (state, ctx, on_exit, stats, mailbox): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(ActorState {
            state,
            ctx,
            on_exit,
            exited: AtomicBool::new(false),
            stats,
            mailbox,
            batch: VecDeque::new(),
            live: false,
        })
    }

    /// In the actor's task, linked: its end now closes the mailbox.
    async fn post_start(
        &self,
        _me: ActorRef<Wake>,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        st.live = true;
        Ok(())
    }

    /// Mail is waiting: the actor stays here, handling what waits in batches of at most
    /// [`BATCH`] and listening when nothing does, until its mailbox is released for a stop
    /// (see [`mailbox`]).
    ///
    /// [`mailbox`]: crate::mailbox
    async fn handle(
        &self,
        me: ActorRef<Wake>,
        _: Wake,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // boxed: the actor's task then holds a pointer while the agent is awake, and an
        // agent that never got mail pays nothing for it (see "Memory" in the module doc)
        Box::pin(self.serve(me, st)).await
    }

    async fn post_stop(
        &self,
        _me: ActorRef<Wake>,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let ctx = st.ctx.clone();
        self.behaviour.on_stop(&ctx, &mut st.state).await;
        st.exit(None);
        Ok(())
    }
}

impl<A: Agent> AgentActor<A> {
    /// The agent is awake: it handles what waits in batches of at most [`BATCH`] and
    /// listens when nothing does, until its mailbox is released for a stop (see [`mailbox`]).
    ///
    /// [`mailbox`]: crate::mailbox
    async fn serve(
        &self,
        me: ActorRef<Wake>,
        st: &mut ActorState<A>,
    ) -> Result<(), ActorProcessingErr> {
        loop {
            if st.batch.is_empty() {
                let mailbox = &st.mailbox;
                let batch = &mut st.batch;
                if std::future::poll_fn(|cx| mailbox.poll_take(batch, cx)).await == Took::Released {
                    return Ok(()); // a stop is coming: let ractor deliver it
                }
            }
            self.run_batch(st).await?;
            if st.mailbox.released() {
                // let the stop in between batches; what still waits gets a Wake, so that
                // nothing is stranded if the stop does not come after all
                if st.batch.is_empty() && !st.mailbox.take(&mut st.batch) {
                    return Ok(());
                }
                let _ = me.send_message(Wake);
                return Ok(());
            }
            // as a ractor message per batch did: a busy agent lets its worker's other tasks run
            tokio::task::consume_budget().await;
        }
    }

    /// Handles at most [`BATCH`] of the calls taken from the mailbox.
    ///
    /// The agent is the current one for the whole batch (its sends carry it as sender). The
    /// batch runs boxed: an idle actor's task then holds only a pointer, not the largest
    /// handler future of its kind (see "Memory" in the module doc). The trace scope is set
    /// once too; each message makes its own trace the current one.
    async fn run_batch(&self, st: &mut ActorState<A>) -> Result<(), ActorProcessingErr> {
        let origin = self.origin(&st.ctx);
        let trace = st.ctx.trace;
        Box::pin(CURRENT_AGENT.scope(
            origin,
            trace.scope(async {
                let mut handled = 0;
                for _ in 0..BATCH {
                    let Some(call) = st.batch.pop_front() else {
                        break;
                    };
                    self.handle_call(call, st, &mut handled).await?;
                }
                st.stats.settle(handled);
                Ok::<_, ActorProcessingErr>(())
            }),
        ))
        .await
    }

    /// Handles one message: the gate, decoding, the handler (under the message's trace), the
    /// reply. An error fails the agent. Runs inside the batch's `CURRENT_AGENT` and trace
    /// scopes; the message's trace is made the current one.
    async fn handle_call(
        &self,
        call: Call,
        st: &mut ActorState<A>,
        handled: &mut u64,
    ) -> Result<(), ActorProcessingErr> {
        // counted in the stats once per batch, or at once if this call fails the agent
        *handled += 1;
        if let Some(reason) = self.gate.as_ref().and_then(|g| g()) {
            warn!(id = %st.ctx.id, trace_id = %call.trace.trace_id_hex(), %reason, "message refused before its handler");
            if let Some(r) = call.reply {
                let _ = r.send(Err(AgentError::Refused(reason)));
            }
            return Ok(());
        }
        let like = call.body.encoding();
        let msg: A::Msg = match call.body.decode() {
            Ok(m) => m,
            Err(reason) => {
                warn!(id = %st.ctx.id, trace_id = %call.trace.trace_id_hex(), %reason, "message does not decode; the agent keeps running");
                if let Some(r) = call.reply {
                    let _ = r.send(Err(AgentError::BadPayload {
                        id: st.ctx.id.to_string(),
                        reason,
                    }));
                }
                return Ok(());
            }
        };
        st.ctx.trace = call.trace;
        st.ctx.sender = call.sender;
        st.ctx.seq = call.seq;
        // at debug: see "Logs and spans" in the module doc
        let span =
            tracing::debug_span!("agent", id = %st.ctx.id, trace_id = %call.trace.trace_id_hex());
        let deadline = self.handler_timeout;
        // borrow the context and the state apart: no per-message copy of the context
        let ActorState { state, ctx, .. } = &mut *st;
        let ctx: &Ctx = ctx;
        call.trace.make_current();
        let result = async {
            debug!(seq = call.seq, sender = ?ctx.sender, "handling message");
            let handling = self.behaviour.handle(ctx, state, msg);
            match deadline {
                None => handling.await.map_err(|e| (e.to_string(), None)),
                Some(d) => match tokio::time::timeout(d, handling).await {
                    Ok(r) => r.map_err(|e| (e.to_string(), None)),
                    // an overrunning handler is a failure of the agent; the asker
                    // gets a timeout
                    Err(_) => Err((
                        format!("handler overran its {} ms deadline", d.as_millis()),
                        Some(AgentError::Timeout {
                            ms: d.as_millis() as u64,
                        }),
                    )),
                },
            }
        }
        .instrument(span)
        .await;
        match result {
            Ok(reply) => {
                if let Some(r) = call.reply {
                    let out = Body::encode(reply, like).map_err(|reason| {
                        AgentError::Internal(format!("reply does not encode: {reason}"))
                    });
                    let _ = r.send(out);
                }
                Ok(())
            }
            Err((reason, to_asker)) => {
                warn!(id = %st.ctx.id, trace_id = %call.trace.trace_id_hex(), %reason, "agent failed");
                // leave the host first: whoever learns of the failure from the reply and sends
                // again reaches the restarted instance, not this dying one. What the stats
                // still count as waiting then is lost with the instance.
                st.stats.settle(std::mem::take(handled));
                st.exit(Some(reason.clone()));
                if let Some(r) = call.reply {
                    let _ = r.send(Err(to_asker.unwrap_or_else(|| AgentError::Failed {
                        id: st.ctx.id.to_string(),
                        reason: reason.clone(),
                    })));
                }
                Err(reason.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    type Seen = Arc<Mutex<Vec<Option<Result<u64, String>>>>>;

    fn recording() -> (ReplyTx, Seen) {
        let seen: Seen = Arc::default();
        let s = seen.clone();
        let tx = ReplyTx::callback(move |r| {
            let r = r.map(|r| {
                r.map(|b| b.decode::<u64>().unwrap())
                    .map_err(|e| e.to_string())
            });
            s.lock().unwrap().push(r);
        });
        (tx, seen)
    }

    #[test]
    fn a_callback_gets_the_reply_once() {
        let (tx, seen) = recording();
        tx.send(Ok(Body::typed(7u64))).unwrap();
        assert_eq!(*seen.lock().unwrap(), [Some(Ok(7))]);
    }

    #[test]
    fn a_callback_dropped_without_a_reply_learns_it_will_not_come() {
        let (tx, seen) = recording();
        drop(tx);
        assert_eq!(*seen.lock().unwrap(), [None]);
    }

    #[test]
    fn a_channel_reply_reaches_its_receiver_and_a_drop_closes_it() {
        let (tx, mut rx) = oneshot::channel();
        ReplyTx::from(tx).send(Ok(Body::typed(3u64))).unwrap();
        assert_eq!(rx.try_recv().unwrap().unwrap().decode::<u64>().unwrap(), 3);
        let (tx, mut rx) = oneshot::channel::<Result<Body, AgentError>>();
        drop(ReplyTx::from(tx));
        assert!(matches!(
            rx.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
    }
}
