//! Directory notices, delivered at least once: backup copies, hand-overs, eviction and exit
//! reports.
//!
//! A notice tells a directory owner (or the id's backup) a fact it must not miss: a copy of
//! an entry, an entry whose owner changed, an activation a fence stopped, an agent that ended.
//! Agent streams lose what is in flight when a connection breaks, and a node that restarts
//! forgets what it was told, so a notice is not sent once and forgotten:
//!
//! ```text
//! notify(to, msg) ── pending[(id, kind, to)] = msg   (a newer notice of the same key replaces it)
//!    try: resolve `to` in the current view ── none up ──────────────▶ try again later
//!                                         ── this node ────────────▶ delivered here, done
//!                                         ── a peer ── msg{req} ──▶ receiver applies it
//!                                                                    (idempotent), answers Ack
//!         ◀── Answer{req, Ack} ── done
//!         ◀── Answer{req, Err} / no answer by the deadline / peer lost ── try again later
//! ```
//!
//! The target is resolved again at every try, so a notice follows the id's owner (or backup)
//! as membership changes. Pauses between tries double from [`FIRST_PAUSE`] up to
//! [`MAX_PAUSE`]; a notice is never given up: what it reports stays true until a newer notice
//! of the same key replaces it. Receivers apply notices idempotently (a merge keeps the newest
//! epoch; an exit or eviction names the epoch it is about), so a notice applied twice, after a
//! lost acknowledgement, changes nothing.
//!
//! A backup copy is sent only by the id's owner: if this node stops owning the id, its pending
//! copy is dropped (the hand-over of the entry to the new owner replaces it). A notice for the
//! backup is dropped while there is an owner but no backup (a single remote node): the owner
//! copies its entries to the backup when one appears.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use tether_actors::{AgentError, AgentId};

use crate::directory::{self, DirMsg};
use crate::membership::detector::PeerState;
use crate::membership::Members;

/// The first pause before a notice is tried again.
pub const FIRST_PAUSE: Duration = Duration::from_millis(250);
/// The longest pause between two tries.
pub const MAX_PAUSE: Duration = Duration::from_secs(5);
/// How long a receiver has to acknowledge a notice.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(3);

/// Whom a notice is for, resolved in the current view at every try.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NoticeTo {
    /// The id's owner.
    Owner,
    /// The id's backup.
    Backup,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    Backup,
    Handoff,
    Evicted,
    Exited,
}

type Key = (AgentId, Kind, NoticeTo);

#[derive(Debug)]
struct Pending {
    msg: DirMsg,
    /// Tries so far.
    tries: u32,
    /// When to try (again): the deadline of the try in flight, or the end of a pause.
    due: Instant,
    /// The try in flight: its request id and the peer it went to.
    inflight: Option<(u64, String)>,
}

/// What a try of a notice comes to.
#[derive(Debug)]
pub(crate) enum Try {
    /// Send `msg` (carrying request id `req`) to `to`.
    Send { to: String, msg: DirMsg },
    /// Deliver `msg` on this node.
    Here(DirMsg),
}

/// The notices of one node not acknowledged yet.
#[derive(Debug, Default)]
pub(crate) struct Notices {
    pending: HashMap<Key, Pending>,
    /// When each pending notice is due, in order (ties in key order, so that tries run in the
    /// same order for the same state: the simulator replays them).
    timers: BTreeSet<(Instant, Key)>,
    by_req: HashMap<u64, Key>,
}

impl Notices {
    /// Notices not acknowledged yet.
    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }

    /// Records a notice (replacing a pending one of the same key), due now.
    pub(crate) fn add(&mut self, to: NoticeTo, msg: DirMsg, now: Instant) {
        let Some(key) = key(to, &msg) else {
            debug_assert!(false, "not a notice: {msg:?}");
            return;
        };
        self.remove(&key);
        let p = Pending {
            msg,
            tries: 0,
            due: now,
            inflight: None,
        };
        self.timers.insert((now, key.clone()));
        self.pending.insert(key, p);
    }

    fn remove(&mut self, key: &Key) -> Option<Pending> {
        let old = self.pending.remove(key)?;
        self.timers.remove(&(old.due, key.clone()));
        if let Some((req, _)) = &old.inflight {
            self.by_req.remove(req);
        }
        Some(old)
    }

    fn schedule(&mut self, key: Key, mut p: Pending, due: Instant) {
        p.due = due;
        self.timers.insert((due, key.clone()));
        self.pending.insert(key, p);
    }

    /// Whether `req` is the request id of a notice's try.
    pub(crate) fn owns(&self, req: u64) -> bool {
        self.by_req.contains_key(&req)
    }

    /// The receiver answered try `req`: done if it acknowledged, else tried again after a
    /// pause.
    pub(crate) fn answered(&mut self, req: u64, result: Result<(), AgentError>, now: Instant) {
        let Some(key) = self.by_req.get(&req).cloned() else {
            return;
        };
        let Some(mut p) = self.remove(&key) else {
            return;
        };
        if let Err(error) = result {
            tracing::debug!(agent = %key.0, kind = ?key.1, %error, "notice not applied; trying again later");
            p.inflight = None;
            let due = now + pause(p.tries);
            self.schedule(key, p, due);
        }
    }

    /// `peer` was lost: the tries in flight to it are tried again (elsewhere, if the target
    /// moved) after a pause.
    pub(crate) fn peer_lost(&mut self, peer: &str, now: Instant) {
        let mut lost: Vec<u64> = self
            .pending
            .values()
            .filter_map(|p| p.inflight.as_ref().filter(|(_, to)| to == peer))
            .map(|(req, _)| *req)
            .collect();
        lost.sort_unstable();
        for req in lost {
            let e = AgentError::NodeUnreachable {
                node: peer.to_owned(),
            };
            self.answered(req, Err(e), now);
        }
    }

    /// The tries due at `now`, numbered from `next_id` (the node's request ids).
    pub(crate) fn due(&mut self, members: &Members, now: Instant, next_id: &mut u64) -> Vec<Try> {
        let me = members.me().name.clone();
        let mut tries = Vec::new();
        while self.timers.first().is_some_and(|(at, _)| *at <= now) {
            let Some((_, key)) = self.timers.pop_first() else {
                break;
            };
            let Some(mut p) = self.pending.remove(&key) else {
                continue;
            };
            if let Some((req, _)) = p.inflight.take() {
                self.by_req.remove(&req);
            }
            let (owner, backup) = {
                let view = members.up_view();
                let (o, b) = directory::owner_and_backup(key.0.as_str(), view.remotes());
                (o.map(str::to_owned), b.map(str::to_owned))
            };
            if key.1 == Kind::Backup && owner.as_deref() != Some(me.as_str()) {
                continue; // only an owner sends copies; the hand-over replaces it
            }
            let has_owner = owner.is_some();
            let target = match key.2 {
                NoticeTo::Owner => owner,
                NoticeTo::Backup => backup,
            };
            let reachable = |to: &str| members.state_of(to) == Some(PeerState::Up);
            match target {
                // fewer than two remote nodes are up: no backup to tell now; the owner copies
                // its entries to the backup when one appears
                None if key.2 == NoticeTo::Backup && has_owner => {}
                Some(to) if to == me => tries.push(Try::Here(p.msg)),
                Some(to) if reachable(&to) => {
                    *next_id += 1;
                    let req = *next_id;
                    set_req(&mut p.msg, req);
                    p.tries += 1;
                    p.inflight = Some((req, to.clone()));
                    self.by_req.insert(req, key.clone());
                    tries.push(Try::Send {
                        to,
                        msg: p.msg.clone(),
                    });
                    self.schedule(key, p, now + ACK_TIMEOUT);
                }
                _ => {
                    let due = now + pause(p.tries);
                    p.tries += 1;
                    self.schedule(key, p, due);
                }
            }
        }
        tries
    }
}

/// The pause after `tries` tries: doubling from [`FIRST_PAUSE`], at most [`MAX_PAUSE`].
fn pause(tries: u32) -> Duration {
    FIRST_PAUSE.saturating_mul(1 << tries.min(8)).min(MAX_PAUSE)
}

fn key(to: NoticeTo, msg: &DirMsg) -> Option<Key> {
    let (id, kind) = match msg {
        DirMsg::Backup { entry, .. } => (&entry.id, Kind::Backup),
        DirMsg::Handoff { entry, .. } => (&entry.id, Kind::Handoff),
        DirMsg::Evicted { id, .. } => (id, Kind::Evicted),
        DirMsg::Exited { id, .. } => (id, Kind::Exited),
        _ => return None,
    };
    Some((id.clone(), kind, to))
}

fn set_req(msg: &mut DirMsg, new: u64) {
    match msg {
        DirMsg::Backup { req, .. }
        | DirMsg::Handoff { req, .. }
        | DirMsg::Evicted { req, .. }
        | DirMsg::Exited { req, .. } => *req = new,
        _ => {}
    }
}
