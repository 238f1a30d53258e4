//! The node's checkpointer: what its host's durable agents hand their checkpoints to, what
//! keeps the replicas other nodes send here, and where an activation finds the newest
//! checkpoint of its agent.
//!
//! ```text
//! agent actors ── submit(cp, release) ──▶ queue ──▶ one commit at a time, each with every
//!                                                    checkpoint queued meanwhile (one fsync)
//!                                        at the same time, grouped by replica node:
//!                                          Replicate{cps} (deadline) ──▶ stored there: Stored
//!                                          (a failure is tried once more, with the replica of
//!                                          the view then)
//!                        released once stored here and there (local-only, or no other remote
//!                        node up: once stored here); acked replies go out then
//! peer ── Replicate{cps} ─▶ store.put ─▶ Stored        peer ── Newest{id} ─▶ the newest held
//! activation of a durable agent ─▶ gather(id): the newest of this node's and every up remote
//!                                  peer's (all must answer), stored here, then started from it
//! ```
//!
//! The replica of an agent is the rendezvous choice ([`crate::directory::owner`]) among the up
//! remote nodes other than its host: a node every host of the agent computes alike, which
//! changes only for the ids of a node that joins or leaves. Stores never go back (see
//! [`super::store`]), so a late or repeated replica, or one from a zombie activation that a
//! newer epoch superseded, changes nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use tether_actors::call::BoxFuture;
use tether_actors::durable::{CheckpointInfo, CheckpointSink, Release};
use tether_actors::{AgentError, AgentId, Checkpoint, Durability, IdHash};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::store::{CheckpointStore, Put};

/// How long a replica may take to be stored on its node.
pub const REPLICA_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the nodes asked for an agent's newest checkpoint may take to answer.
pub const GATHER_TIMEOUT: Duration = Duration::from_secs(2);

/// The other nodes, as the checkpointer needs them.
pub trait Replicas: Send + Sync {
    /// Up remote nodes other than this one, now.
    fn remotes(&self) -> Vec<String>;
    /// Stores `cps` on `node`: Ok once they are durable there.
    fn replicate(
        &self,
        node: &str,
        cps: Vec<Checkpoint>,
    ) -> BoxFuture<'static, Result<(), AgentError>>;
    /// `node`'s newest checkpoint of `id`.
    fn newest(
        &self,
        node: &str,
        id: &AgentId,
    ) -> BoxFuture<'static, Result<Option<Checkpoint>, AgentError>>;
}

/// The replica node of `id` among `remotes` (this node excluded).
pub fn replica_of(id: &AgentId, remotes: &[String]) -> Option<String> {
    crate::directory::owner(id.as_str(), remotes.iter().map(String::as_str)).map(str::to_owned)
}

struct Known {
    cp: Arc<Checkpoint>,
    stored: bool,
    replica: Option<String>,
}

struct Job {
    cp: Arc<Checkpoint>,
    mode: Durability,
    local_only: bool,
    release: Release,
}

type Store = Arc<Mutex<Box<dyn CheckpointStore>>>;

/// The node's checkpointer (see the module doc).
pub struct Checkpointer {
    store: Store,
    known: DashMap<AgentId, Known, IdHash>,
    jobs: mpsc::UnboundedSender<Job>,
    replicas: Arc<dyn Replicas>,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer")
            .field("known", &self.known.len())
            .finish()
    }
}

fn store_error(e: impl std::fmt::Display) -> AgentError {
    AgentError::Internal(format!("checkpoint store: {e}"))
}

impl Checkpointer {
    /// A checkpointer over `store`, replicating to `replicas`; its commit task runs on the
    /// current runtime until the checkpointer is dropped.
    pub fn start(store: Box<dyn CheckpointStore>, replicas: Arc<dyn Replicas>) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let me = Arc::new(Self {
            store: Arc::new(Mutex::new(store)),
            known: DashMap::default(),
            jobs: tx,
            replicas,
        });
        tokio::spawn(commit_loop(Arc::downgrade(&me), rx));
        me
    }

    /// Remembers `cp` as the newest of its agent if it is newer than what is known.
    fn note(&self, cp: &Arc<Checkpoint>, stored: bool, replica: Option<&str>) {
        let mut k = self.known.entry(cp.id.clone()).or_insert_with(|| Known {
            cp: cp.clone(),
            stored,
            replica: None,
        });
        if cp.version > k.cp.version {
            *k = Known {
                cp: cp.clone(),
                stored,
                replica: replica.map(str::to_owned),
            };
        } else if cp.version == k.cp.version {
            k.stored |= stored;
            if replica.is_some() {
                k.replica = replica.map(str::to_owned);
            }
        }
    }

    /// Stores `cps` here (replicas from a peer, or a newest checkpoint gathered for an
    /// activation): durable when it returns.
    ///
    /// # Errors
    /// [`AgentError::Internal`] when the store fails; nothing of `cps` is stored then.
    pub async fn store(&self, cps: Vec<Checkpoint>) -> Result<(), AgentError> {
        let store = self.store.clone();
        let batch = cps.clone();
        let puts = tokio::task::spawn_blocking(move || lock(&store).put(batch))
            .await
            .map_err(store_error)?
            .map_err(store_error)?;
        for (cp, put) in cps.into_iter().zip(puts) {
            if put == Put::Stored {
                self.note(&Arc::new(cp), true, None);
            }
        }
        Ok(())
    }

    /// The newest checkpoint of `id` held here.
    ///
    /// # Errors
    /// [`AgentError::Internal`] when the store fails.
    pub fn newest(&self, id: &AgentId) -> Result<Option<Checkpoint>, AgentError> {
        if let Some(k) = self.known.get(id) {
            return Ok(Some((*k.cp).clone()));
        }
        lock(&self.store).get(id).map_err(store_error)
    }

    /// Makes the newest checkpoint of `id` anywhere known here, before it is activated here:
    /// asks every up remote peer, all of which must answer (one that does not may hold the
    /// newest), and stores the newest found.
    ///
    /// # Errors
    /// The first peer's error (unreachable, timeout), or the store's.
    pub async fn gather(&self, id: &AgentId) -> Result<(), AgentError> {
        let asks: Vec<_> = self
            .replicas
            .remotes()
            .into_iter()
            .map(|node| {
                let ask = self.replicas.newest(&node, id);
                // asked all at once: the wait is the slowest answer, not their sum
                tokio::spawn(async move {
                    match tokio::time::timeout(GATHER_TIMEOUT, ask).await {
                        Ok(r) => r,
                        Err(_) => Err(AgentError::Timeout {
                            ms: GATHER_TIMEOUT.as_millis() as u64,
                        }),
                    }
                })
            })
            .collect();
        let mut newest = self.newest(id)?;
        for ask in asks {
            let answer = ask
                .await
                .map_err(|e| AgentError::Internal(format!("checkpoint query: {e}")))?;
            if let Some(cp) = answer? {
                if newest.as_ref().is_none_or(|n| cp.version > n.version) {
                    newest = Some(cp);
                }
            }
        }
        match newest {
            Some(cp) if self.known.get(id).is_none_or(|k| k.cp.version < cp.version) => {
                debug!(agent = %id, version = %cp.version, "newest checkpoint gathered");
                self.store(vec![cp]).await
            }
            _ => Ok(()),
        }
    }
}

impl CheckpointSink for Checkpointer {
    fn submit(&self, cp: Checkpoint, mode: Durability, local_only: bool, release: Release) {
        let cp = Arc::new(cp);
        self.note(&cp, false, None);
        let job = Job {
            cp,
            mode,
            local_only,
            release,
        };
        if let Err(mpsc::error::SendError(job)) = self.jobs.send(job) {
            (job.release)(Err(AgentError::Internal(
                "the node's checkpointer has stopped".into(),
            )));
        }
    }

    fn latest(&self, id: &AgentId) -> Option<Arc<Checkpoint>> {
        if let Some(k) = self.known.get(id) {
            return Some(k.cp.clone());
        }
        match lock(&self.store).get(id) {
            Ok(cp) => cp.map(|cp| {
                let cp = Arc::new(cp);
                self.note(&cp, true, None);
                cp
            }),
            Err(e) => {
                warn!(agent = %id, error = %e, "checkpoint store unreadable");
                None
            }
        }
    }

    fn info(&self, id: &AgentId) -> Option<CheckpointInfo> {
        let k = self.known.get(id)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Some(CheckpointInfo {
            epoch: k.cp.version.epoch,
            seq: k.cp.version.seq,
            age_ms: now.saturating_sub(k.cp.taken_unix_ms),
            size: k.cp.size(),
            stored: k.stored,
            replica: k.replica.clone(),
        })
    }
}

fn lock(store: &Store) -> std::sync::MutexGuard<'_, Box<dyn CheckpointStore>> {
    store
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Commits what was submitted, one commit at a time, each with everything queued meanwhile;
/// the replicas are sent at the same time (a replica ahead of its host's disk is harmless: a
/// store never goes back), and each checkpoint is released once both are done.
async fn commit_loop(me: std::sync::Weak<Checkpointer>, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut jobs = Vec::new();
    while rx.recv_many(&mut jobs, usize::MAX).await > 0 {
        let Some(me) = me.upgrade() else { return };
        let batch: Vec<Checkpoint> = jobs.iter().map(|j| (*j.cp).clone()).collect();
        let remotes = me.replicas.remotes();
        let mut here = Vec::new();
        let mut by_node: HashMap<String, Vec<Job>> = HashMap::new();
        for j in jobs.drain(..) {
            let replica = if j.local_only || j.mode == Durability::None {
                None // stays on this node
            } else {
                replica_of(&j.cp.id, &remotes)
            };
            match replica {
                Some(node) => by_node.entry(node).or_default().push(j),
                // no other node can keep a copy now: as durable as it can be once stored here
                None => here.push(j),
            }
        }
        let sent: Vec<_> = by_node
            .into_iter()
            .map(|(node, group)| {
                let me = me.clone();
                let cps = group.iter().map(|j| (*j.cp).clone()).collect();
                (
                    group,
                    tokio::spawn(async move { replicate(&me, node, cps).await }),
                )
            })
            .collect();
        let stored = me.store(batch).await;
        if let Err(e) = &stored {
            warn!(error = %e, "checkpoints not stored");
        }
        for j in here {
            (j.release)(stored.clone());
        }
        let me = me.clone();
        // the next commit does not wait for the replicas
        tokio::spawn(async move {
            for (group, replica) in sent {
                let replica = replica.await.unwrap_or_else(|e| {
                    Err(AgentError::Internal(format!("replication stopped: {e}")))
                });
                if let Ok(node) = &replica {
                    for j in &group {
                        me.note(&j.cp, stored.is_ok(), Some(node));
                    }
                }
                let outcome = stored.clone().and(replica.map(|_| ()));
                for j in group {
                    (j.release)(outcome.clone());
                }
            }
        });
    }
}

/// Sends `cps` to `node`, tried once more with the replica of the view then if that fails
/// (membership may have changed); the node that stored them.
async fn replicate(
    me: &Checkpointer,
    node: String,
    cps: Vec<Checkpoint>,
) -> Result<String, AgentError> {
    let e = match send_replica(me, &node, cps.clone()).await {
        Ok(()) => return Ok(node),
        Err(e) => e,
    };
    let Some(first) = cps.first() else {
        return Ok(node);
    };
    match replica_of(&first.id, &me.replicas.remotes()) {
        Some(other) => {
            debug!(%node, error = %e, %other, "replica not stored; trying the replica of the view now");
            send_replica(me, &other, cps).await.map(|()| other)
        }
        None => {
            warn!(%node, error = %e, "replica not stored, and no other remote node is up");
            Err(e)
        }
    }
}

async fn send_replica(
    me: &Checkpointer,
    node: &str,
    cps: Vec<Checkpoint>,
) -> Result<(), AgentError> {
    match tokio::time::timeout(REPLICA_TIMEOUT, me.replicas.replicate(node, cps)).await {
        Ok(r) => r,
        Err(_) => Err(AgentError::Timeout {
            ms: REPLICA_TIMEOUT.as_millis() as u64,
        }),
    }
}
