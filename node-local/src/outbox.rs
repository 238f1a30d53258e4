//! The outbox of a local node: tells to agents it cannot reach wait here, on disk, until they
//! can be delivered (by the drain passes of [`crate::drain`]).
//!
//! A local node (the user's device) may be cut from every remote node; its agents keep
//! running and keep sending. A tell whose target cannot be reached is *queued* instead of
//! failing: appended to `outbox.log` in the node's state directory, so it survives a crash or
//! restart of the node, and delivered in order once the target can be reached again (see the
//! drainer in [`crate::drain`]). The outbox is bounded: when it holds `max` messages a tell is refused
//! with [`OutboxError::Full`] and the sender sees the error; nothing is dropped silently.
//!
//! **Order.** Per target, messages leave in the order they were queued, and while a target has
//! queued messages every new tell to it is queued behind them (the runtime checks
//! [`Outbox::holds`] before sending directly).
//!
//! **File format.** A sequence of records, each `len: u32 LE | check: u64 LE | payload`, where
//! `payload` is a MessagePack [`Record`] and `check` its FNV-1a hash. `Put` adds a message,
//! `Ack` removes one (delivered, or given up with an error that was logged). Each record is
//! written with one `write` on a file opened for append, so a crash of the process loses at
//! most the record being written; the log is not fsynced per message, so a power loss may lose
//! the messages of the last few moments (the page cache), like any store without group commit.
//! When `Ack`s outnumber live messages the log is rewritten (to a temporary file, fsynced, then
//! renamed over the old one).
//!
//! **Opening.** A torn last record (the crash case) is cut off with a warning. Any other damage
//! (a bad checksum or an undecodable record before the end) is an error naming the file and the
//! offset: the node refuses to start rather than lose or reorder what the file holds.

mod store;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tether_actors::{AgentId, Envelope};
use tether_cluster::role::Queued;
use tracing::warn;

pub use store::{FileStore, MemStore, Store};

/// The outbox file in a node's state directory.
pub const FILE_NAME: &str = "outbox.log";
/// Default bound: most messages a local node keeps for unreachable agents.
pub const DEFAULT_MAX: usize = 10_000;
/// Largest record accepted when reading the file back.
const MAX_RECORD: usize = 64 << 20;
/// Bytes before each payload: length and checksum.
const HEADER: usize = 4 + 8;

/// One record of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Record {
    /// A message was queued.
    Put {
        /// Its number in this outbox (increasing).
        id: u64,
        /// When it was queued (unix ms).
        queued_ms: u64,
        /// The message, addressed as it will be sent.
        env: Envelope,
    },
    /// A message left the outbox.
    Ack {
        /// Its number.
        id: u64,
    },
}

/// What can go wrong with the outbox.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The outbox holds its maximum; the message was not queued.
    #[error(
        "the outbox is full: {max} messages already wait for agents this node cannot reach \
         (raise --outbox-max, or wait until the cluster is reachable); this message was not queued"
    )]
    Full {
        /// The bound.
        max: usize,
    },
    /// The file is damaged before its end.
    #[error(
        "outbox file {path} is damaged at byte {offset}: {reason}; the node will not start \
         over it (move the file aside to start with an empty outbox, and keep it to inspect)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where the bad record starts.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing the file failed.
    #[error("outbox file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The durable queue. Not thread-safe by itself: the node keeps it in its core, behind the
/// core's lock.
#[derive(Debug)]
pub struct Outbox<S = FileStore> {
    path: PathBuf,
    store: S,
    live: BTreeMap<u64, Queued>,
    per_target: HashMap<AgentId, usize>,
    next_id: u64,
    /// Records in the file that no longer describe a live message (acks and the puts they
    /// cancel): compaction reclaims them.
    dead_records: usize,
    max: usize,
}

impl Outbox<FileStore> {
    /// Opens (or creates) the outbox at `path`, holding at most `max` messages. Messages left
    /// from before a restart are live again, in their order. A torn last record is cut off.
    ///
    /// # Errors
    /// [`OutboxError::Corrupt`] if the file is damaged before its end; [`OutboxError::Io`].
    pub fn open(path: &Path, max: usize) -> Result<Self, OutboxError> {
        Self::with_store(path, FileStore::new(path), max)
    }
}

impl<S: Store> Outbox<S> {
    /// Opens the outbox kept in `store` (named `path` in errors), holding at most `max`
    /// messages.
    ///
    /// # Errors
    /// As [`Outbox::open`].
    pub fn with_store(path: &Path, mut store: S, max: usize) -> Result<Self, OutboxError> {
        let io = |source| OutboxError::Io {
            path: path.to_owned(),
            source,
        };
        let bytes = store.read_all().map_err(io)?;
        let (records, good) = parse(path, &bytes)?;
        if good < bytes.len() {
            warn!(path = %path.display(), cut = bytes.len() - good,
                "outbox: a torn last record (the node stopped while writing it) was cut off");
            store.truncate(good as u64).map_err(io)?;
        }
        let mut ob = Outbox {
            path: path.to_owned(),
            store,
            live: BTreeMap::new(),
            per_target: HashMap::new(),
            next_id: 1,
            dead_records: 0,
            max,
        };
        for r in records {
            match r {
                Record::Put { id, queued_ms, env } => {
                    ob.next_id = ob.next_id.max(id + 1);
                    ob.insert(Queued { id, queued_ms, env });
                }
                Record::Ack { id } => {
                    ob.remove(id);
                    ob.dead_records += 2;
                }
            }
        }
        Ok(ob)
    }

    /// Queues `env`; returns the depth after it.
    ///
    /// # Errors
    /// [`OutboxError::Full`] at the bound; [`OutboxError::Io`] if the record cannot be
    /// written (the message is then not queued).
    pub fn push(&mut self, env: Envelope, queued_ms: u64) -> Result<usize, OutboxError> {
        if self.live.len() >= self.max {
            return Err(OutboxError::Full { max: self.max });
        }
        let id = self.next_id;
        let rec = Record::Put { id, queued_ms, env };
        self.append(&rec)?;
        self.next_id += 1;
        let Record::Put { env, .. } = rec else {
            unreachable!("built above")
        };
        self.insert(Queued { id, queued_ms, env });
        Ok(self.live.len())
    }

    /// Removes message `id` (delivered, or given up); unknown ids are ignored.
    ///
    /// # Errors
    /// [`OutboxError::Io`] if the ack cannot be written: the message is gone from memory but
    /// would come back after a restart (the receiver's sequence check refuses it then).
    pub fn ack(&mut self, id: u64) -> Result<(), OutboxError> {
        if self.remove(id).is_none() {
            return Ok(());
        }
        self.append(&Record::Ack { id })?;
        self.dead_records += 2;
        if self.dead_records > 1024 && self.dead_records > self.live.len() {
            self.compact()?;
        }
        Ok(())
    }

    /// Messages waiting.
    pub fn depth(&self) -> usize {
        self.live.len()
    }

    /// The bound.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Whether messages for `target` wait (a new tell to it must queue behind them).
    pub fn holds(&self, target: &AgentId) -> bool {
        self.per_target.contains_key(target)
    }

    /// The waiting messages, oldest first (a snapshot: the drainer works from it without
    /// holding the lock).
    pub fn pending(&self) -> Vec<Queued> {
        self.live.values().cloned().collect()
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn insert(&mut self, q: Queued) {
        *self.per_target.entry(q.env.target.clone()).or_insert(0) += 1;
        self.live.insert(q.id, q);
    }

    fn remove(&mut self, id: u64) -> Option<Queued> {
        let q = self.live.remove(&id)?;
        if let Some(n) = self.per_target.get_mut(&q.env.target) {
            *n -= 1;
            if *n == 0 {
                self.per_target.remove(&q.env.target);
            }
        }
        Some(q)
    }

    fn append(&mut self, rec: &Record) -> Result<(), OutboxError> {
        let buf = frame(rec);
        self.store.append(&buf).map_err(|source| OutboxError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Rewrites the log with the live messages only.
    fn compact(&mut self) -> Result<(), OutboxError> {
        let io = |source| OutboxError::Io {
            path: self.path.clone(),
            source,
        };
        let mut buf = Vec::new();
        for q in self.live.values() {
            buf.extend(frame(&Record::Put {
                id: q.id,
                queued_ms: q.queued_ms,
                env: q.env.clone(),
            }));
        }
        self.store.replace(&buf).map_err(io)?;
        self.dead_records = 0;
        Ok(())
    }
}

/// One record as written: header and payload.
fn frame(rec: &Record) -> Vec<u8> {
    // invariant: a Record always encodes (no maps with non-string keys, no unsized data)
    let payload = rmp_serde::to_vec(rec).expect("an outbox record encodes");
    frame_payload(&payload)
}

/// A record's payload with its header (length and checksum), as the log holds it: lets the
/// fuzz targets reach the record decoder behind the checksum.
#[doc(hidden)]
pub fn frame_payload(payload: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER + payload.len());
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&fnv1a(payload).to_le_bytes());
    buf.extend_from_slice(payload);
    buf
}

/// Reads an outbox log's bytes as [`Outbox::open`] does, and says how many records it holds
/// and how many of its bytes are whole records: for checking a log by hand and for the fuzz
/// targets.
///
/// # Errors
/// [`OutboxError::Corrupt`] for damage before the last record.
pub fn check_log(bytes: &[u8]) -> Result<(usize, usize), OutboxError> {
    let (records, good) = parse(Path::new("outbox.log"), bytes)?;
    Ok((records.len(), good))
}

/// The records of `bytes`, and how many bytes of it are whole records. A damaged last record
/// ends the good part; damage before it is an error.
fn parse(path: &Path, bytes: &[u8]) -> Result<(Vec<Record>, usize), OutboxError> {
    let corrupt = |offset, reason: String| OutboxError::Corrupt {
        path: path.to_owned(),
        offset,
        reason,
    };
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < HEADER {
            break; // torn header
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        if len > MAX_RECORD {
            return Err(corrupt(
                at,
                format!("a record of {len} bytes is implausible"),
            ));
        }
        if rest.len() < HEADER + len {
            break; // torn payload
        }
        let check = u64::from_le_bytes(rest[4..12].try_into().expect("8 bytes"));
        let payload = &rest[HEADER..HEADER + len];
        let last = at + HEADER + len == bytes.len();
        if fnv1a(payload) != check {
            if last {
                break; // torn write of the last record
            }
            return Err(corrupt(at, "checksum mismatch".into()));
        }
        let rec: Record = rmp_serde::from_slice(payload)
            .map_err(|e| corrupt(at, format!("record does not decode: {e}")))?;
        out.push(rec);
        at += HEADER + len;
    }
    Ok((out, at))
}

/// FNV-1a, 64 bits: enough to tell a torn or damaged record from a whole one.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::fs::OpenOptions;
    use tether_actors::{Contract, Encoding, TraceContext};

    fn env(target: &str, seq: u64) -> Envelope {
        Envelope {
            target: target.parse().expect("id"),
            epoch: 0,
            sender: "l1".into(),
            seq,
            trace: TraceContext::new_root(),
            contract: Contract {
                name: "ledger".into(),
                version: 1,
            },
            encoding: Encoding::Json,
            body: Bytes::from(format!("{{\"append\":{seq}}}")),
        }
    }

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tether-outbox-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        d.join(FILE_NAME)
    }

    fn seqs(ob: &Outbox) -> Vec<(String, u64)> {
        ob.pending()
            .into_iter()
            .map(|q| (q.env.target.to_string(), q.env.seq))
            .collect()
    }

    #[test]
    fn survives_reopen_in_order_without_acked_messages() {
        let p = dir("reopen");
        let mut ob = Outbox::open(&p, 100).expect("open");
        for i in 1..=5 {
            assert_eq!(ob.push(env("ledger/a", i), 0).expect("push"), i as usize);
        }
        ob.push(env("ledger/b", 1), 0).expect("push");
        let first = ob.pending()[0].id;
        ob.ack(first).expect("ack");
        assert!(ob.holds(&"ledger/b".parse().expect("id")));
        drop(ob);
        let ob = Outbox::open(&p, 100).expect("reopen");
        assert_eq!(
            seqs(&ob),
            vec![
                ("ledger/a".into(), 2),
                ("ledger/a".into(), 3),
                ("ledger/a".into(), 4),
                ("ledger/a".into(), 5),
                ("ledger/b".into(), 1)
            ]
        );
        // new ids continue after the old ones
        let mut ob = ob;
        ob.push(env("ledger/a", 6), 0).expect("push");
        let ids: Vec<u64> = ob.pending().iter().map(|q| q.id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    }

    #[test]
    fn full_refuses_and_keeps_what_it_holds() {
        let p = dir("full");
        let mut ob = Outbox::open(&p, 3).expect("open");
        for i in 1..=3 {
            ob.push(env("ledger/a", i), 0).expect("push");
        }
        let e = ob.push(env("ledger/a", 4), 0).expect_err("full");
        assert!(matches!(e, OutboxError::Full { max: 3 }), "{e}");
        assert!(e.to_string().contains("not queued"), "{e}");
        assert_eq!(ob.depth(), 3);
        let id = ob.pending()[0].id;
        ob.ack(id).expect("ack");
        ob.push(env("ledger/a", 4), 0).expect("room again");
        assert_eq!(seqs(&ob).last(), Some(&("ledger/a".into(), 4)));
    }

    #[test]
    fn a_torn_last_record_is_cut_and_the_rest_kept() {
        let p = dir("torn");
        let mut ob = Outbox::open(&p, 100).expect("open");
        ob.push(env("ledger/a", 1), 0).expect("push");
        ob.push(env("ledger/a", 2), 0).expect("push");
        drop(ob);
        let len = std::fs::metadata(&p).expect("meta").len();
        let f = OpenOptions::new().write(true).open(&p).expect("open");
        f.set_len(len - 3).expect("tear");
        let mut ob = Outbox::open(&p, 100).expect("reopen");
        assert_eq!(seqs(&ob), vec![("ledger/a".into(), 1)]);
        // the file was cut to whole records: appending after it reads back
        ob.push(env("ledger/a", 3), 0).expect("push");
        drop(ob);
        let ob = Outbox::open(&p, 100).expect("reopen");
        assert_eq!(
            seqs(&ob),
            vec![("ledger/a".into(), 1), ("ledger/a".into(), 3)]
        );
    }

    #[test]
    fn damage_before_the_end_is_an_error_not_a_loss() {
        let p = dir("corrupt");
        let mut ob = Outbox::open(&p, 100).expect("open");
        ob.push(env("ledger/a", 1), 0).expect("push");
        ob.push(env("ledger/a", 2), 0).expect("push");
        drop(ob);
        let mut bytes = std::fs::read(&p).expect("read");
        bytes[HEADER + 2] ^= 0xff; // inside the first payload
        std::fs::write(&p, &bytes).expect("write");
        let e = Outbox::open(&p, 100).expect_err("corrupt");
        assert!(matches!(e, OutboxError::Corrupt { offset: 0, .. }), "{e}");
        // the file is left as it was, for the operator
        assert_eq!(std::fs::read(&p).expect("read"), bytes);
    }

    #[test]
    fn compaction_keeps_live_messages_and_shrinks_the_file() {
        let p = dir("compact");
        let mut ob = Outbox::open(&p, 10_000).expect("open");
        for i in 1..=2000 {
            ob.push(env("ledger/a", i), 0).expect("push");
        }
        let before = std::fs::metadata(&p).expect("meta").len();
        for q in ob.pending().into_iter().take(1990) {
            ob.ack(q.id).expect("ack");
        }
        let after = std::fs::metadata(&p).expect("meta").len();
        assert!(after < before / 4, "{after} vs {before}");
        drop(ob);
        let ob = Outbox::open(&p, 10_000).expect("reopen");
        let left: Vec<u64> = seqs(&ob).into_iter().map(|(_, s)| s).collect();
        assert_eq!(left, (1991..=2000).collect::<Vec<_>>());
    }

    #[test]
    fn parse_rejects_an_implausible_length() {
        let mut bytes = vec![0xff, 0xff, 0xff, 0x7f];
        bytes.extend_from_slice(&[0; 20]);
        let e = parse(Path::new("x"), &bytes).expect_err("implausible");
        assert!(e.to_string().contains("implausible"), "{e}");
    }
}
