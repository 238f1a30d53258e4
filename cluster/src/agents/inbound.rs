//! Serving an agent stream a peer opened: its messages to this node's agents, and its
//! directory messages (handed to the node's control plane).
//!
//! Before anything reaches an agent: a peer decided down that has not fenced since is refused
//! ([`AgentError::Quarantined`]), and a node that is fenced or was paused past its lease
//! refuses what would act ([`ControlPlane::refusal`]). A local-only agent is invisible to
//! other nodes: a message for it is answered as if it did not exist.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use quinn::{RecvStream, SendStream};
use tether_actors::call::ReplyTx;
use tether_actors::{AgentError, Delivery, Envelope, Host, TellRun};
use tracing::{debug, info};

use super::peer_queue::{FrameSink, PeerQueue};
use super::protocol::{Answer, Request, Response, MAX_AGENT_FRAME};
use super::{ControlRef, Counters};
use crate::durable::Checkpointer;
use crate::net::wire::{self, WireError};

/// The answers to the requests of one agent stream a peer opened.
#[derive(Clone)]
struct Answers(Arc<PeerQueue<Response, FrameSink>>);

impl Answers {
    /// Writes `resp` at once when the stream's writer is idle, else queues it; dropped once
    /// the stream is gone.
    fn send(&self, resp: Response) {
        self.0.push_or_write(resp, FrameSink::try_write);
    }
}

/// What serves the agent streams peers open to this node.
pub(crate) struct Inbound {
    host: Arc<Host>,
    durable: Arc<Checkpointer>,
    control: ControlRef,
    counters: Arc<Counters>,
}

impl Inbound {
    pub(crate) fn new(host: Arc<Host>, control: ControlRef, counters: Arc<Counters>) -> Arc<Self> {
        Arc::new(Self {
            host,
            durable: control.checkpointer(),
            control,
            counters,
        })
    }

    /// Serves an agent stream `peer` opened, until it ends.
    ///
    /// # Errors
    /// [`WireError`] for a frame that does not decode: the caller closes the connection.
    pub(crate) async fn serve(
        self: Arc<Self>,
        peer: String,
        send: SendStream,
        recv: RecvStream,
    ) -> Result<(), WireError> {
        // answers are written by the task that has them (an agent's reply is written by the
        // agent's task) when the writer is idle, else queued for it: see `peer_queue`
        let tx = Answers(Arc::new(PeerQueue::default()));
        let writer = {
            let queue = tx.0.clone();
            tokio::spawn(async move {
                let mut sink = Some(FrameSink::new(send));
                let mut batch = Vec::new();
                while queue.take_lending(&mut batch, &mut sink).await {
                    let Some(stream) = sink.as_mut() else { break };
                    if stream.write_rest().await.is_err()
                        || write_batch(&mut stream.send, &batch).await.is_err()
                    {
                        break;
                    }
                    batch.clear();
                }
                // a broken stream takes no more answers
                queue.close();
            })
        };
        let mut frames = wire::FrameReader::new(recv, MAX_AGENT_FRAME);
        let result = loop {
            let req = match frames.next::<Request>().await {
                Ok(Some(r)) => r,
                Ok(None) => break Ok(()),
                Err(WireError::Stream(_)) => break Ok(()),
                Err(e) => break Err(e),
            };
            self.counters.frames_in.fetch_add(1, Ordering::Relaxed);
            self.handle(&peer, req, &tx);
        };
        // the peer's reader is gone with the stream: what is queued is written if it can be,
        // later answers are dropped
        tx.0.close();
        let _ = writer.await;
        result
    }

    fn handle(&self, peer: &str, req: Request, tx: &Answers) {
        if let Request::Dir(msg) = req {
            return self.control.receive(peer, *msg);
        }
        if self.control.is_quarantined(peer) {
            debug!(%peer, "request from a quarantined node refused");
            let e = AgentError::Quarantined {
                node: peer.to_owned(),
            };
            return refuse(req, e, tx);
        }
        if let Some(e) = self.control.refusal() {
            return refuse(req, e, tx);
        }
        match req {
            Request::Tell { env } => {
                let (target, seq) = (env.target.clone(), env.seq);
                if let Err((error, _)) = self.deliver(peer, env, None) {
                    debug!(%peer, %target, %error, "tell refused");
                    tx.send(Response::TellFailed { target, seq, error });
                }
            }
            Request::Tells { run } => {
                let target = run.target.clone();
                for (seq, error) in self.deliver_run(peer, run) {
                    debug!(%peer, %target, seq, %error, "tell refused");
                    let target = target.clone();
                    tx.send(Response::TellFailed { target, seq, error });
                }
            }
            Request::Deliver { req, env } => self.deliver_for_outbox(peer, req, env, tx),
            Request::Ask { req, env, .. } => self.ask(peer, req, env, tx),
            Request::Replicate { req, cps } => {
                let (durable, tx) = (self.durable.clone(), tx.clone());
                tokio::spawn(async move {
                    let result = durable.store(cps).await.map(|()| Answer::Stored);
                    tx.send(Response::Done { req, result });
                });
            }
            Request::Newest { req, id } => {
                let result = self
                    .durable
                    .newest(&id)
                    .map(|cp| Answer::Checkpoint(cp.map(Box::new)));
                tx.send(Response::Done { req, result });
            }
            Request::Install {
                req,
                id,
                epoch,
                spec,
                cp,
            } => {
                let (control, tx, from) = (self.control.clone(), tx.clone(), peer.to_owned());
                tokio::spawn(async move {
                    let result = control
                        .install(&from, id, epoch, *spec, *cp)
                        .await
                        .map(Answer::Installed);
                    tx.send(Response::Done { req, result });
                });
            }
            Request::Discard { req, id, epoch } => {
                let (control, tx) = (self.control.clone(), tx.clone());
                tokio::spawn(async move {
                    control.discard(&id, epoch).await;
                    let result = Ok(Answer::Discarded);
                    tx.send(Response::Done { req, result });
                });
            }
            Request::Barrier { req, id, relayed } => self.barrier(peer, req, id, relayed, tx),
            Request::Drained { req, id, epoch } => {
                self.host.drained(&id, epoch);
                let result = Ok(Answer::Drained);
                tx.send(Response::Done { req, result });
            }
            Request::Migrate { req, id, to } => {
                let (control, tx) = (self.control.clone(), tx.clone());
                tokio::spawn(async move {
                    let result = control.migrate_here(id, to).await.map(Answer::Moved);
                    tx.send(Response::Done { req, result });
                });
            }
            Request::Dir(_) => unreachable!("handled above"),
        }
    }

    /// A tell from a local node's outbox, which removes it once answered: answered when it is
    /// in the agent's mailbox, or, for an `acked` agent, once the checkpoint that covers it is
    /// durable (the agent answers it as an ask whose reply is dropped).
    /// A barrier (see [`Request::Barrier`]): answered at once, or once passed on along the
    /// way to the agent (`relayed`).
    fn barrier(
        &self,
        peer: &str,
        req: u64,
        id: tether_actors::AgentId,
        relayed: bool,
        tx: &Answers,
    ) {
        if !relayed {
            let result = Ok(Answer::Passed);
            return tx.send(Response::Done { req, result });
        }
        let (control, tx, from) = (self.control.clone(), tx.clone(), peer.to_owned());
        tokio::spawn(async move {
            let result = control.barrier(&from, id).await.map(|()| Answer::Passed);
            tx.send(Response::Done { req, result });
        });
    }

    fn deliver_for_outbox(&self, peer: &str, req: u64, env: Envelope, tx: &Answers) {
        let acked = self.host.durability_of(&env.target) == Some(tether_actors::Durability::Acked);
        if !acked {
            let result = self
                .deliver(peer, env, None)
                .map(|()| Answer::Delivered)
                .map_err(|(e, _)| e);
            return tx.send(Response::Done { req, result });
        }
        let (answers, target) = (tx.clone(), env.target.clone());
        let reply = ReplyTx::callback(move |reply| {
            let result = match reply {
                // handled, and its checkpoint durable: the reply itself is not wanted
                Some(Ok(_)) => Ok(Answer::Delivered),
                Some(Err(e)) => Err(e),
                None => Err(AgentError::lost_with_failed_instance(&target)),
            };
            answers.send(Response::Done { req, result });
        });
        if let Err((e, reply)) = self.deliver(peer, env, Some(reply)) {
            match reply {
                Some(reply) => {
                    let _ = reply.send(Err(e));
                }
                None => tx.send(Response::Done {
                    req,
                    result: Err(e),
                }),
            }
        }
    }

    /// An ask: the asker's own deadline bounds its wait; this side does not wait at all, the
    /// agent's task hands the reply to the stream's writer.
    fn ask(&self, peer: &str, req: u64, env: Envelope, tx: &Answers) {
        let target = env.target.clone();
        let answers = tx.clone();
        let reply = ReplyTx::callback(move |reply| {
            let result = match reply {
                Some(Ok(body)) => body
                    .into_wire()
                    .map(|(encoding, body)| Answer::Reply { encoding, body })
                    .map_err(|reason| {
                        AgentError::Internal(format!("reply does not encode: {reason}"))
                    }),
                Some(Err(e)) => Err(e),
                None => Err(AgentError::lost_with_failed_instance(&target)),
            };
            answers.send(Response::Done { req, result });
        });
        if let Err((e, reply)) = self.deliver(peer, env, Some(reply)) {
            match reply {
                Some(reply) => {
                    let _ = reply.send(Err(e));
                }
                None => tx.send(Response::Done {
                    req,
                    result: Err(e),
                }),
            }
        }
    }

    fn deliver(
        &self,
        peer: &str,
        env: Envelope,
        reply: Option<ReplyTx>,
    ) -> Result<(), (AgentError, Option<ReplyTx>)> {
        deliver_here(&self.host, Some(peer), env, reply)
    }

    /// A run of tells from a peer, checked as [`Inbound::deliver`] checks one; returns the
    /// messages refused, with why.
    fn deliver_run(&self, peer: &str, run: TellRun) -> Vec<(u64, AgentError)> {
        let (target, sender) = (run.target.clone(), run.sender.clone());
        let failed = match refused(&self.host, &run.target) {
            Some(e) => run.msgs.iter().map(|m| (m.seq, e.clone())).collect(),
            None => self.host.deliver_run_from(Some(peer), run),
        };
        for (seq, e) in &failed {
            info!(%target, %sender, seq, error = %e, "delivery refused");
        }
        failed
    }
}

/// Why a message from a peer to `target` is refused before the host's own checks.
fn refused(host: &Host, target: &tether_actors::AgentId) -> Option<AgentError> {
    if let Err(e) = target.validate() {
        return Some(AgentError::BadId(e.to_string()));
    }
    if host.placement_of(target).is_some_and(|p| p.is_local_only()) {
        // never reached from another node: answer as if it did not exist
        return Some(AgentError::NotFound {
            id: target.to_string(),
        });
    }
    None
}

/// Delivers a message that came as an envelope (from a peer, or from this node's outbox);
/// on failure the error, and the reply sender (if the message was an ask) to answer with it.
pub(crate) fn deliver_here(
    host: &Host,
    peer: Option<&str>,
    env: Envelope,
    reply: Option<ReplyTx>,
) -> Result<(), (AgentError, Option<ReplyTx>)> {
    let (target, sender, trace) = (env.target.clone(), env.sender.clone(), env.trace);
    let r = match refused(host, &env.target) {
        Some(e) => Err((e, reply)),
        None => {
            let (d, body) = Delivery::from_envelope(env);
            host.try_deliver_from(peer, d, body, reply)
                .map_err(|(e, reply)| match e {
                    // this node was named as the host, and it is not: the route was stale
                    AgentError::NotFound { id } => {
                        let node = host.node().to_owned();
                        (AgentError::NotHere { id, node }, reply)
                    }
                    e => (e, reply),
                })
        }
    };
    if let Err((e, _)) = &r {
        info!(%target, %sender, trace_id = %trace.trace_id_hex(), error = %e, "delivery refused");
    }
    r
}

/// Answers a request with `error` (a tell with `TellFailed`).
fn refuse(req: Request, error: AgentError, tx: &Answers) {
    match req {
        Request::Tell { env } => tx.send(Response::TellFailed {
            target: env.target,
            seq: env.seq,
            error,
        }),
        Request::Tells { run } => {
            for m in run.msgs {
                tx.send(Response::TellFailed {
                    target: run.target.clone(),
                    seq: m.seq,
                    error: error.clone(),
                });
            }
        }
        Request::Ask { req, .. }
        | Request::Deliver { req, .. }
        | Request::Replicate { req, .. }
        | Request::Newest { req, .. }
        | Request::Install { req, .. }
        | Request::Discard { req, .. }
        | Request::Drained { req, .. }
        | Request::Barrier { req, .. }
        | Request::Migrate { req, .. } => tx.send(Response::Done {
            req,
            result: Err(error),
        }),
        Request::Dir(_) => {}
    }
}

async fn write_batch<T: serde::Serialize>(
    send: &mut SendStream,
    batch: &[T],
) -> Result<(), WireError> {
    let mut buf = Vec::with_capacity(batch.len() * 192);
    for item in batch {
        wire::encode_frame_as(&mut buf, item, wire::Layout::Compact)?;
    }
    wire::write_frames(send, buf).await
}
