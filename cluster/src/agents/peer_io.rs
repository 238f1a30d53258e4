//! The agent streams to peers: one ordered queue and one writer per peer, and the requests
//! waiting for their answers.
//!
//! ```text
//! send(peer, req) ──▶ PeerQueue (in order) ──▶ writer task: waits for the peer's link, opens an
//!                                               agent stream, writes batches; the answers'
//!                                               reader runs in the connection's task
//! answer ──▶ the waiting asker (straight from the stream's reader, no task between)
//! ```
//!
//! A request caught in a link that breaks is lost: an asker learns it when the peer becomes
//! unreachable ([`PeerIo::peer_lost`]) or at its deadline; a tell is counted and logged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use quinn::SendStream;
use tether_actors::{AgentError, AgentId, Body, Envelope, TellRun};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::peer_queue::{FrameSink, PeerQueue};
use super::protocol::{Answer, Request, Response, MAX_AGENT_FRAME};
use super::routes::Routes;
use super::Counters;
use crate::directory::DirMsg;
use crate::net::links::Links;
use crate::net::wire::{self, StreamTag, WireError};

/// The requests for one peer, and the agent stream they are written to.
type Requests = PeerQueue<Request, FrameSink>;

/// Requests a peer writer's buffer keeps room for between bursts.
const WRITE_BATCH: usize = 4096;
/// Bytes of frames a peer writer gathers before it writes them to its stream.
const WRITE_BYTES: usize = 256 * 1024;
/// Every this many requests to other nodes, entries of askers that gave up are swept.
const SWEEP_EVERY: u64 = 1024;

/// Who waits for a request's answer.
pub(crate) enum Waiter {
    /// A delivery from the outbox: the answer as it is.
    Request(oneshot::Sender<Result<Answer, AgentError>>),
    /// An asker: the reply goes to it straight from the stream's reader. Its own deadline
    /// covers the wait; an entry whose asker gave up is swept.
    Ask {
        tx: oneshot::Sender<Result<Body, AgentError>>,
        target: AgentId,
    },
}

impl Waiter {
    fn is_closed(&self) -> bool {
        match self {
            Waiter::Request(tx) => tx.is_closed(),
            Waiter::Ask { tx, .. } => tx.is_closed(),
        }
    }
}

struct Pending {
    peer: String,
    waiter: Waiter,
}

/// The agent streams of one node (see the module doc).
pub(crate) struct PeerIo {
    links: Arc<Links>,
    routes: Arc<Routes>,
    counters: Arc<Counters>,
    outs: DashMap<String, Arc<Requests>>,
    pending: DashMap<u64, Pending>,
    next_req: AtomicU64,
}

impl PeerIo {
    pub(crate) fn new(
        links: Arc<Links>,
        routes: Arc<Routes>,
        counters: Arc<Counters>,
    ) -> Arc<Self> {
        Arc::new(Self {
            links,
            routes,
            counters,
            outs: DashMap::new(),
            pending: DashMap::new(),
            next_req: AtomicU64::new(1),
        })
    }

    /// Requests waiting for an answer.
    pub(crate) fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Sends `req` to `peer`: written at once, in this task, when the peer's writer is idle
    /// (see [`super::peer_queue`]), else queued behind what waits.
    pub(crate) fn send(self: &Arc<Self>, peer: &str, req: Request) {
        self.with_queue(peer, |q| q.push_or_write(req, FrameSink::try_write));
    }

    /// Sends a directory message to `peer`.
    pub(crate) fn send_dir(self: &Arc<Self>, peer: &str, msg: DirMsg) {
        self.send(peer, Request::Dir(Box::new(msg)));
    }

    /// Queues a tell for `peer`: it joins the run of tells at the back of the queue when it
    /// shares that run's head (see [`TellRun`]), else starts a run. The peer receives one
    /// frame per run.
    pub(crate) fn send_tell(self: &Arc<Self>, peer: &str, env: Envelope) {
        self.with_queue(peer, |q| {
            q.push_with(|items| match items.last_mut() {
                Some(Request::Tells { run }) if run.admits(&env) => run.push(env),
                _ => items.push(Request::Tells {
                    run: TellRun::of(env),
                }),
            });
        });
    }

    /// Sends an ask: the reply goes to `tx`.
    pub(crate) fn send_ask(
        self: &Arc<Self>,
        peer: &str,
        env: Envelope,
        tx: oneshot::Sender<Result<Body, AgentError>>,
        deadline: Duration,
    ) {
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        if req.is_multiple_of(SWEEP_EVERY) {
            self.pending.retain(|_, p| !p.waiter.is_closed());
        }
        let waiter = Waiter::Ask {
            tx,
            target: env.target.clone(),
        };
        self.pending.insert(
            req,
            Pending {
                peer: peer.to_owned(),
                waiter,
            },
        );
        let deadline_ms = deadline.as_millis() as u64;
        self.send(
            peer,
            Request::Ask {
                req,
                env,
                deadline_ms,
            },
        );
    }

    /// Sends `env` as a delivery (answered once it is in the agent's mailbox) and waits for
    /// the answer, at most `deadline`.
    pub(crate) async fn deliver(
        self: &Arc<Self>,
        peer: &str,
        env: Envelope,
        deadline: Duration,
    ) -> Result<(), AgentError> {
        match self
            .request(peer, |req| Request::Deliver { req, env }, deadline)
            .await?
        {
            Answer::Delivered => Ok(()),
            other => Err(AgentError::Internal(format!(
                "unexpected answer to a delivery: {other:?}"
            ))),
        }
    }

    /// Sends the request `make` builds with a new request id to `peer` and waits for its
    /// answer, at most `deadline`.
    pub(crate) async fn request(
        self: &Arc<Self>,
        peer: &str,
        make: impl FnOnce(u64) -> Request,
        deadline: Duration,
    ) -> Result<Answer, AgentError> {
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.insert(
            req,
            Pending {
                peer: peer.to_owned(),
                waiter: Waiter::Request(tx),
            },
        );
        self.send(peer, make(req));
        match tokio::time::timeout(deadline, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(AgentError::Internal("request abandoned".into())),
            Err(_) => {
                self.pending.remove(&req);
                Err(AgentError::Timeout {
                    ms: deadline.as_millis() as u64,
                })
            }
        }
    }

    /// Runs `f` on `peer`'s queue, starting the peer's writer if needed.
    fn with_queue(self: &Arc<Self>, peer: &str, f: impl FnOnce(&Requests)) {
        if let Some(q) = self.outs.get(peer) {
            return f(&q);
        }
        let q = self
            .outs
            .entry(peer.to_owned())
            .or_insert_with(|| {
                let q = Arc::new(PeerQueue::default());
                tokio::spawn(peer_writer(self.clone(), peer.to_owned(), q.clone()));
                q
            })
            .clone();
        f(&q);
    }

    /// Fails every request waiting on `peer` (its node became unreachable or left).
    pub(crate) fn peer_lost(&self, peer: &str) {
        let lost: Vec<u64> = self
            .pending
            .iter()
            .filter(|p| p.peer == peer)
            .map(|p| *p.key())
            .collect();
        for req in lost {
            if let Some((_, p)) = self.pending.remove(&req) {
                let e = AgentError::NodeUnreachable {
                    node: peer.to_owned(),
                };
                self.finish(p, Err(e));
            }
        }
    }

    /// Hands a request's answer to whoever waits for it.
    fn finish(&self, p: Pending, result: Result<Answer, AgentError>) {
        match p.waiter {
            Waiter::Request(tx) => {
                let _ = tx.send(result);
            }
            Waiter::Ask { tx, target } => {
                let r = match result {
                    Ok(Answer::Reply { encoding, body }) => Ok(Body::Encoded(encoding, body)),
                    Ok(other) => Err(AgentError::Internal(format!(
                        "unexpected answer to an ask: {other:?}"
                    ))),
                    Err(e) => Err(e),
                };
                if matches!(
                    r,
                    Err(AgentError::NotFound { .. }
                        | AgentError::NotHere { .. }
                        | AgentError::StaleEpoch { .. }
                        | AgentError::Timeout { .. }
                        | AgentError::NodeUnreachable { .. })
                ) {
                    self.routes.forget(&target);
                }
                let _ = tx.send(r);
            }
        }
    }

    /// An answer from a peer's stream.
    fn answer(&self, resp: Response) {
        match resp {
            Response::Done { req, result } => {
                if let Some((_, p)) = self.pending.remove(&req) {
                    self.finish(p, result);
                }
            }
            Response::TellFailed { target, seq, error } => {
                self.counters.tell_failures.fetch_add(1, Ordering::Relaxed);
                if matches!(
                    error,
                    AgentError::NotFound { .. }
                        | AgentError::NotHere { .. }
                        | AgentError::StaleEpoch { .. }
                        | AgentError::Failed { .. }
                ) {
                    self.routes.forget(&target);
                }
                warn!(%target, seq, %error, "tell failed on the receiving node");
            }
        }
    }

    /// Fails a request that will not reach its peer with `e`: an asker learns it, a tell is
    /// counted and logged, a directory message is dropped (its sender's deadline covers it).
    fn fail_request(&self, r: Request, e: AgentError) {
        let tell_failed = |env: &Envelope| {
            self.counters.tell_failures.fetch_add(1, Ordering::Relaxed);
            warn!(target = %env.target, seq = env.seq, trace_id = %env.trace.trace_id_hex(), error = %e, "tell failed");
        };
        match r {
            Request::Tell { env } => tell_failed(&env),
            Request::Tells { run } => run.into_envelopes().for_each(|env| tell_failed(&env)),
            Request::Ask { req, .. }
            | Request::Deliver { req, .. }
            | Request::Replicate { req, .. }
            | Request::Newest { req, .. }
            | Request::Install { req, .. }
            | Request::Discard { req, .. }
            | Request::Drained { req, .. }
            | Request::Barrier { req, .. }
            | Request::Migrate { req, .. } => {
                if let Some((_, p)) = self.pending.remove(&req) {
                    self.finish(p, Err(e));
                }
            }
            Request::Dir(_) => {}
        }
    }
}

/// The writer of one peer's queue: opens an agent stream on the current link, writes requests
/// in order (batched), and reads the answers from the same stream. When the link breaks it
/// waits for the next one; requests caught in the break are lost (see the module doc).
async fn peer_writer(io: Arc<PeerIo>, peer: String, queue: Arc<Requests>) {
    // one buffer for every batch: no growth while a steady stream is taken
    let mut batch: Vec<Request> = Vec::with_capacity(WRITE_BATCH);
    loop {
        let Some(link) = io.links.wait(&peer).await else {
            // no link and none coming: fail what waits, keep serving later sends
            let gone = || AgentError::NodeUnreachable { node: peer.clone() };
            for r in batch.drain(..) {
                io.fail_request(r, gone());
            }
            queue.take(&mut batch).await;
            continue;
        };
        let (mut send, recv) = match link.conn.open_bi().await {
            Ok(s) => s,
            Err(e) => {
                debug!(%peer, error = %e, "cannot open an agent stream");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if wire::write_tag(&mut send, StreamTag::Agents).await.is_err() {
            continue;
        }
        // the answers' reader runs in the connection's task: see `net::transport::conn_task`
        let reader = {
            let io = io.clone();
            let peer = peer.clone();
            link.tasks.spawn(async move {
                let mut frames = wire::FrameReader::new(recv, MAX_AGENT_FRAME);
                loop {
                    match frames.next::<Response>().await {
                        Ok(Some(r)) => io.answer(r),
                        Ok(None) | Err(WireError::Stream(_)) => return,
                        Err(e) => {
                            warn!(%peer, error = %e, "bad answer on the agent stream");
                            return;
                        }
                    }
                }
            })
        };
        write_while_linked(&io, &peer, &queue, &mut batch, send).await;
        reader.abort();
    }
}

/// Writes what the queue holds to `send` until the stream breaks. What waited for the stream
/// (taken while there was no link) goes first; then the stream is lent to senders whenever
/// this task waits.
async fn write_while_linked(
    io: &PeerIo,
    peer: &str,
    queue: &Requests,
    batch: &mut Vec<Request>,
    send: SendStream,
) {
    let mut taken = !batch.is_empty();
    let mut sink = Some(FrameSink::new(send));
    loop {
        if !taken {
            queue.take_lending(batch, &mut sink).await;
        }
        taken = false;
        let Some(stream) = sink.as_mut() else {
            // not reached: `take_lending` always hands the sink back with what it took
            return;
        };
        let rest_lost = stream.write_rest().await.is_err();
        let (written, unencodable) = if rest_lost {
            (0, Vec::new())
        } else {
            write_requests(&mut stream.send, batch).await
        };
        let broken = rest_lost || written < batch.len();
        if broken {
            let lost = batch.len() - written;
            info!(%peer, lost, "agent stream broke; requests in it are lost");
        }
        let mut unencodable = unencodable.into_iter().peekable();
        for (i, r) in batch.drain(..).enumerate() {
            if unencodable.peek().is_some_and(|(at, _)| *at == i) {
                let (_, e) = unencodable.next().expect("peeked");
                io.fail_request(r, AgentError::Internal(e.to_string()));
            } else if i >= written {
                let e = AgentError::NodeUnreachable {
                    node: peer.to_owned(),
                };
                io.fail_request(r, e);
            }
        }
        if broken {
            return;
        }
        if batch.capacity() > 4 * WRITE_BATCH {
            // a burst grew it: give the memory back
            *batch = Vec::with_capacity(WRITE_BATCH);
        }
    }
}

/// Writes `batch` in order, in writes of about [`WRITE_BYTES`]. Returns how many requests
/// were written (all of them unless the stream broke: the rest, and those of the write that
/// failed, were not) and those that could not be encoded (index and error; skipped).
async fn write_requests(
    send: &mut SendStream,
    batch: &[Request],
) -> (usize, Vec<(usize, WireError)>) {
    let mut unencodable = Vec::new();
    let mut buf = Vec::new();
    // requests before this index are written
    let mut flushed = 0;
    for (i, r) in batch.iter().enumerate() {
        if let Err(e) = wire::encode_frame_as(&mut buf, r, wire::Layout::Compact) {
            unencodable.push((i, e));
        }
        let due = buf.len() >= WRITE_BYTES || (i + 1 == batch.len() && !buf.is_empty());
        if due
            && wire::write_frames(send, std::mem::take(&mut buf))
                .await
                .is_err()
        {
            return (flushed, unencodable);
        }
        if buf.is_empty() {
            flushed = i + 1;
        }
    }
    (flushed, unencodable)
}
