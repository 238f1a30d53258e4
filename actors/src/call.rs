//! One message on its way into an agent's mailbox ([`Call`]), and where its reply goes
//! ([`ReplyTx`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::body::Body;
use crate::envelope::TraceContext;
use crate::error::AgentError;

/// A boxed future, for the erased interfaces.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

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

    /// The asker's channel if the reply goes to one, else the reply sender itself, unused.
    ///
    /// # Errors
    /// The reply sender, when it is a callback.
    pub fn try_into_channel(
        mut self,
    ) -> Result<oneshot::Sender<Result<Body, AgentError>>, ReplyTx> {
        match self.0.take() {
            Some(ReplyTo::Channel(tx)) => Ok(tx),
            other => {
                self.0 = other;
                Err(self)
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
