//! Forwarding for agents that moved away (see [`crate::migration`]): what still comes to
//! the old host goes on to the new one, on this node's agent stream there, in order with what
//! was sent before.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tether_actors::call::{Call, ReplyTx};
use tether_actors::{AgentError, AgentId, Contract, Envelope};

use super::peer_io::PeerIo;

/// How long an ask forwarded for a moved agent may wait for its reply.
const FORWARDED_ASK: Duration = Duration::from_secs(30);

/// The host's [`tether_actors::host::Forwarder`]: a call for an agent that moved away goes
/// to its new host on this node's agent stream there, in order with what was sent before.
pub(crate) fn forwarder(io: std::sync::Weak<PeerIo>, me: String) -> tether_actors::host::Forwarder {
    let me: Arc<str> = me.into();
    Arc::new(
        move |id: &AgentId, contract: Contract, to: &str, epoch: u64, call: Call| {
            let Some(io) = io.upgrade() else { return };
            let Call {
                body,
                trace,
                sender,
                seq,
                reply,
            } = call;
            let (encoding, body) = match body.into_wire() {
                Ok(x) => x,
                Err(reason) => {
                    if let Some(r) = reply {
                        let _ = r.send(Err(AgentError::Internal(format!(
                            "a message for {id}, which moved, does not encode: {reason}"
                        ))));
                    }
                    return;
                }
            };
            let env = Envelope {
                target: id.clone(),
                epoch,
                sender: sender.unwrap_or_else(|| me.clone()),
                seq,
                trace,
                contract,
                encoding,
                body,
            };
            match reply {
                None => io.send_tell(to, env),
                Some(reply) => forward_ask(&io, to, env, reply),
            }
        },
    )
}

fn forward_ask(io: &Arc<PeerIo>, to: &str, env: Envelope, reply: ReplyTx) {
    let started = Instant::now();
    match reply.try_into_channel() {
        Ok(tx) => io.send_ask(to, env, tx, FORWARDED_ASK),
        Err(reply) => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            io.send_ask(to, env, tx, FORWARDED_ASK);
            tokio::spawn(async move {
                let answer = rx.await.unwrap_or_else(|_| {
                    Err(AgentError::Timeout {
                        ms: started.elapsed().as_millis() as u64,
                    })
                });
                let _ = reply.send(answer);
            });
        }
    }
}
