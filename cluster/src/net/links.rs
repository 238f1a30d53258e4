//! The live links of a node: its current QUIC connection to each peer.
//!
//! The link tasks (accept, dial, hello) install and remove links; the data plane takes the
//! current link of a peer to open its agent stream on, waiting for one while the peer is not
//! gone (decided down, or left); the node's driver says which peers are gone. Every change
//! bumps a version on a `watch` channel, which is how waiters learn of it without polling.

use dashmap::DashMap;
use quinn::Connection;
use tokio::sync::{mpsc, watch};

use crate::net::transport::ConnTasks;
use crate::net::wire::PeerMsg;

/// A live link to a peer.
#[derive(Debug, Clone)]
pub struct Link {
    /// The connection.
    pub conn: Connection,
    /// The task that drives `conn`, where its agent streams' readers run.
    pub tasks: ConnTasks,
    /// The link stream's outgoing messages (gossip).
    pub tx: mpsc::Sender<PeerMsg>,
}

/// The links of one node (see the module doc).
#[derive(Debug)]
pub struct Links {
    map: DashMap<String, Link>,
    gone: DashMap<String, ()>,
    version: watch::Sender<u64>,
    stopping: watch::Receiver<bool>,
}

impl Links {
    /// An empty registry; `stopping` turns true when the node shuts down.
    pub fn new(stopping: watch::Receiver<bool>) -> Self {
        let (version, _) = watch::channel(0);
        Self {
            // a cluster has few nodes: each shard walked costs a lock
            map: DashMap::with_shard_amount(2),
            gone: DashMap::with_shard_amount(2),
            version,
            stopping,
        }
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// Makes `link` the link to `peer`; returns the one it replaced.
    pub fn install(&self, peer: &str, link: Link) -> Option<Link> {
        let old = self.map.insert(peer.to_owned(), link);
        self.bump();
        old
    }

    /// Removes the link to `peer` if it is still the connection `id`; whether it was.
    pub fn remove_if(&self, peer: &str, id: usize) -> bool {
        let removed = self
            .map
            .remove_if(peer, |_, l| l.conn.stable_id() == id)
            .is_some();
        if removed {
            self.bump();
        }
        removed
    }

    /// The link to `peer`, if there is one.
    pub fn get(&self, peer: &str) -> Option<Link> {
        self.map.get(peer).map(|l| l.clone())
    }

    /// The connection id of the link to `peer`.
    pub fn id_of(&self, peer: &str) -> Option<usize> {
        self.map.get(peer).map(|l| l.conn.stable_id())
    }

    /// Every link, with its peer's name.
    pub fn all(&self) -> Vec<(String, Link)> {
        self.map
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect()
    }

    /// Says whether `peer` is gone (decided down, or left): nobody waits for its link then.
    pub fn set_gone(&self, peer: &str, gone: bool) {
        let changed = if gone {
            self.gone.insert(peer.to_owned(), ()).is_none()
        } else {
            self.gone.remove(peer).is_some()
        };
        if changed {
            self.bump();
        }
    }

    /// The current link to `peer`, waiting for one while the peer is not gone and the node
    /// not stopping.
    pub async fn wait(&self, peer: &str) -> Option<Link> {
        let mut changes = self.version.subscribe();
        let mut stopping = self.stopping.clone();
        loop {
            changes.borrow_and_update();
            if let Some(l) = self.get(peer) {
                return Some(l);
            }
            if self.gone.contains_key(peer) || *stopping.borrow() {
                return None;
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() { return None },
                _ = stopping.wait_for(|s| *s) => return None,
            }
        }
    }
}
