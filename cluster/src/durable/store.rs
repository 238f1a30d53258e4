//! Where a node keeps checkpoints: [`RedbStore`] on disk, [`MemStore`] in memory (the
//! simulator, tests). Both keep the same contract ([`CheckpointStore`]): one checkpoint per
//! agent, never replaced by an older one, a batch committed at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tether_actors::{codec, AgentId};

use super::{Checkpoint, Version};

/// What became of one checkpoint of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// Stored: it is the agent's newest.
    Stored,
    /// Refused: the store holds this newer (or equal) version.
    Stale {
        /// The version held.
        held: Version,
    },
}

/// Why a store could not do what was asked. Nothing is half-done: a failed batch stored none
/// of its checkpoints.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The disk or the database refused (I/O, a full disk, a damaged file).
    #[error("checkpoint store {path}: {reason}")]
    Disk {
        /// The store's file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A stored checkpoint does not decode (written by another version, or damaged).
    #[error("checkpoint store {path}: the checkpoint of {id} does not decode: {reason}")]
    Corrupt {
        /// The store's file.
        path: PathBuf,
        /// The agent.
        id: String,
        /// The decoder's message.
        reason: String,
    },
}

/// One checkpoint per agent, never replaced by an older one.
pub trait CheckpointStore: Send {
    /// Stores `batch` in one commit (durable when it returns, for a disk store), each
    /// checkpoint only if it is newer than the one held for its agent; says per checkpoint, in
    /// order, what became of it. Two checkpoints of one agent in a batch are taken in order.
    ///
    /// # Errors
    /// [`StoreError`]; then nothing of the batch is stored.
    fn put(&mut self, batch: Vec<Checkpoint>) -> Result<Vec<Put>, StoreError>;

    /// The newest checkpoint of `id`.
    ///
    /// # Errors
    /// [`StoreError`].
    fn get(&self, id: &AgentId) -> Result<Option<Checkpoint>, StoreError>;

    /// Forgets `id`'s checkpoint if the one held is not newer than `upto` (an agent stopped for
    /// good); returns whether one was removed.
    ///
    /// # Errors
    /// [`StoreError`].
    fn remove(&mut self, id: &AgentId, upto: Version) -> Result<bool, StoreError>;

    /// Every agent held, with its version, in id order.
    ///
    /// # Errors
    /// [`StoreError`].
    fn versions(&self) -> Result<Vec<(AgentId, Version)>, StoreError>;
}

/// Decides a batch against what is held: the new values to write, and the answers.
fn decide(
    batch: Vec<Checkpoint>,
    mut held: impl FnMut(&AgentId) -> Result<Option<Version>, StoreError>,
) -> Result<(BTreeMap<AgentId, Checkpoint>, Vec<Put>), StoreError> {
    let mut writes: BTreeMap<AgentId, Checkpoint> = BTreeMap::new();
    let mut answers = Vec::with_capacity(batch.len());
    for cp in batch {
        let current = match writes.get(&cp.id) {
            Some(w) => Some(w.version),
            None => held(&cp.id)?,
        };
        match current {
            Some(v) if v >= cp.version => answers.push(Put::Stale { held: v }),
            _ => {
                answers.push(Put::Stored);
                writes.insert(cp.id.clone(), cp);
            }
        }
    }
    Ok((writes, answers))
}

/// Checkpoints in memory: the simulator's store (it survives a simulated restart when the
/// simulator keeps it, as a disk would).
#[derive(Debug, Default, Clone)]
pub struct MemStore(BTreeMap<AgentId, Checkpoint>);

impl CheckpointStore for MemStore {
    fn put(&mut self, batch: Vec<Checkpoint>) -> Result<Vec<Put>, StoreError> {
        let (writes, answers) = decide(batch, |id| Ok(self.0.get(id).map(|c| c.version)))?;
        self.0.extend(writes);
        Ok(answers)
    }

    fn get(&self, id: &AgentId) -> Result<Option<Checkpoint>, StoreError> {
        Ok(self.0.get(id).cloned())
    }

    fn remove(&mut self, id: &AgentId, upto: Version) -> Result<bool, StoreError> {
        if self.0.get(id).is_some_and(|c| c.version <= upto) {
            self.0.remove(id);
            return Ok(true);
        }
        Ok(false)
    }

    fn versions(&self) -> Result<Vec<(AgentId, Version)>, StoreError> {
        Ok(self
            .0
            .iter()
            .map(|(id, c)| (id.clone(), c.version))
            .collect())
    }
}

/// The table: agent id (its text) to the encoded [`Stored`] checkpoint.
const TABLE: redb::TableDefinition<'static, &str, &[u8]> =
    redb::TableDefinition::new("checkpoints");

/// The record format, versioned so that a later format can read this one.
#[derive(Deserialize)]
struct Stored {
    /// Format version ([`FORMAT`]).
    v: u16,
    /// The checkpoint.
    cp: Checkpoint,
}

const FORMAT: u16 = 1;

/// Decodes one stored record as the store reads it back: for the fuzz targets, which feed it
/// what a damaged file could hold.
///
/// # Errors
/// The decoder's message, or a format this build does not read.
#[doc(hidden)]
pub fn decode_record(bytes: &[u8]) -> Result<Checkpoint, String> {
    let stored: Stored = codec::decode_named(bytes).map_err(|e| e.to_string())?;
    if stored.v != FORMAT {
        return Err(format!("format {} (this build reads {FORMAT})", stored.v));
    }
    Ok(stored.cp)
}

/// Encodes one record as the store writes it (the fuzz targets' seeds).
///
/// # Errors
/// The encoder's message.
#[doc(hidden)]
pub fn encode_record(cp: &Checkpoint) -> Result<Vec<u8>, String> {
    #[derive(Serialize)]
    struct StoredRef<'a> {
        v: u16,
        cp: &'a Checkpoint,
    }
    codec::encode(&StoredRef { v: FORMAT, cp }).map_err(|e| e.to_string())
}

/// Checkpoints in a redb file: every commit is durable (fsync) when it returns, and a file
/// that fails redb's integrity check on open is an error, not a panic.
pub struct RedbStore {
    db: redb::Database,
    path: PathBuf,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish()
    }
}

impl RedbStore {
    /// Opens (or creates) the store at `path`.
    ///
    /// # Errors
    /// [`StoreError::Disk`]: the file cannot be opened or created, or it is not a sound redb
    /// database.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let disk = |e: redb::DatabaseError| StoreError::Disk {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        let db = redb::Database::builder()
            .set_check_integrity_on_open(true)
            .create(path)
            .map_err(disk)?;
        let store = Self {
            db,
            path: path.to_owned(),
        };
        // the table exists from the start, so that reads never meet "no such table"
        let tx = store.db.begin_write().map_err(|e| store.disk(e))?;
        tx.open_table(TABLE).map_err(|e| store.disk(e))?;
        tx.commit().map_err(|e| store.disk(e))?;
        Ok(store)
    }

    fn disk(&self, e: impl Into<redb::Error>) -> StoreError {
        StoreError::Disk {
            path: self.path.clone(),
            reason: e.into().to_string(),
        }
    }

    fn decode(&self, id: &str, bytes: &[u8]) -> Result<Checkpoint, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            path: self.path.clone(),
            id: id.to_owned(),
            reason,
        };
        let cp = decode_record(bytes).map_err(corrupt)?;
        if cp.id.to_string() != id {
            return Err(corrupt(format!("it names {}", cp.id)));
        }
        Ok(cp)
    }
}

impl CheckpointStore for RedbStore {
    fn put(&mut self, batch: Vec<Checkpoint>) -> Result<Vec<Put>, StoreError> {
        use redb::ReadableTable;
        let tx = self.db.begin_write().map_err(|e| self.disk(e))?;
        let answers = {
            let mut table = tx.open_table(TABLE).map_err(|e| self.disk(e))?;
            let (writes, answers) = decide(batch, |id| {
                let key = id.to_string();
                match table.get(key.as_str()).map_err(|e| self.disk(e))? {
                    Some(v) => Ok(Some(self.decode(&key, v.value())?.version)),
                    None => Ok(None),
                }
            })?;
            for (id, cp) in writes {
                let bytes = encode_record(&cp).map_err(|e| StoreError::Disk {
                    path: self.path.clone(),
                    reason: format!("encoding the checkpoint of {id}: {e}"),
                })?;
                table
                    .insert(id.to_string().as_str(), bytes.as_slice())
                    .map_err(|e| self.disk(e))?;
            }
            answers
        };
        // dropping `tx` on an error above aborts it: nothing of the batch is stored
        tx.commit().map_err(|e| self.disk(e))?;
        Ok(answers)
    }

    fn get(&self, id: &AgentId) -> Result<Option<Checkpoint>, StoreError> {
        use redb::{ReadableDatabase, ReadableTable};
        let tx = self.db.begin_read().map_err(|e| self.disk(e))?;
        let table = tx.open_table(TABLE).map_err(|e| self.disk(e))?;
        let key = id.to_string();
        let found = match table.get(key.as_str()).map_err(|e| self.disk(e))? {
            Some(v) => Some(self.decode(&key, v.value())?),
            None => None,
        };
        Ok(found)
    }

    fn remove(&mut self, id: &AgentId, upto: Version) -> Result<bool, StoreError> {
        let Some(held) = self.get(id)? else {
            return Ok(false);
        };
        if held.version > upto {
            return Ok(false);
        }
        let tx = self.db.begin_write().map_err(|e| self.disk(e))?;
        {
            let mut table = tx.open_table(TABLE).map_err(|e| self.disk(e))?;
            table
                .remove(id.to_string().as_str())
                .map_err(|e| self.disk(e))?;
        }
        tx.commit().map_err(|e| self.disk(e))?;
        Ok(true)
    }

    fn versions(&self) -> Result<Vec<(AgentId, Version)>, StoreError> {
        use redb::{ReadableDatabase, ReadableTable};
        let tx = self.db.begin_read().map_err(|e| self.disk(e))?;
        let table = tx.open_table(TABLE).map_err(|e| self.disk(e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| self.disk(e))? {
            let (k, v) = row.map_err(|e| self.disk(e))?;
            let cp = self.decode(k.value(), v.value())?;
            out.push((cp.id, cp.version));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    use crate::durable::{SenderMark, Timer};

    fn cp(key: &str, epoch: u64, seq: u64) -> Checkpoint {
        Checkpoint {
            id: format!("counter/{key}").parse().unwrap(),
            version: Version { epoch, seq },
            state: bytes::Bytes::from(format!("{key}@{epoch}.{seq}")),
            marks: vec![SenderMark {
                sender: Arc::from("r1"),
                seq,
            }],
            timers: vec![Timer {
                name: "tick".into(),
                deadline_unix_ms: 1_000 + seq,
            }],
            taken_unix_ms: 7,
            since_epoch: 0,
        }
    }

    fn id(key: &str) -> AgentId {
        format!("counter/{key}").parse().unwrap()
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tether-cp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("checkpoints.redb")
    }

    /// What every store must do.
    fn contract(s: &mut dyn CheckpointStore) {
        assert_eq!(s.put(vec![cp("a", 2, 5)]).unwrap(), vec![Put::Stored]);
        let held = Version { epoch: 2, seq: 5 };
        // older in the same activation, the same, and an older activation: refused
        let refused = s
            .put(vec![cp("a", 2, 4), cp("a", 2, 5), cp("a", 1, 99)])
            .unwrap();
        assert_eq!(refused, vec![Put::Stale { held }; 3]);
        assert_eq!(s.get(&id("a")).unwrap(), Some(cp("a", 2, 5)));
        // one batch, two agents, one of them twice in order: the later is kept
        let answers = s
            .put(vec![
                cp("b", 1, 1),
                cp("a", 3, 0),
                cp("b", 1, 2),
                cp("b", 1, 1),
            ])
            .unwrap();
        assert_eq!(
            answers,
            vec![
                Put::Stored,
                Put::Stored,
                Put::Stored,
                Put::Stale {
                    held: Version { epoch: 1, seq: 2 }
                }
            ]
        );
        assert_eq!(
            s.versions().unwrap(),
            vec![
                (id("a"), Version { epoch: 3, seq: 0 }),
                (id("b"), Version { epoch: 1, seq: 2 })
            ]
        );
        // removal only up to a version: a newer checkpoint stays
        assert!(!s.remove(&id("a"), Version { epoch: 2, seq: 9 }).unwrap());
        assert!(s.remove(&id("a"), Version { epoch: 3, seq: 0 }).unwrap());
        assert_eq!(s.get(&id("a")).unwrap(), None);
        assert!(!s.remove(&id("zz"), Version { epoch: 9, seq: 9 }).unwrap());
    }

    #[test]
    fn the_memory_store_keeps_the_contract() {
        contract(&mut MemStore::default());
    }

    #[test]
    fn the_disk_store_keeps_the_contract_and_its_checkpoints_across_a_reopen() {
        let path = temp("reopen");
        {
            let mut s = RedbStore::open(&path).unwrap();
            contract(&mut s);
        }
        let s = RedbStore::open(&path).unwrap();
        assert_eq!(s.get(&id("b")).unwrap(), Some(cp("b", 1, 2)));
        assert_eq!(s.versions().unwrap().len(), 1);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_damaged_file_is_an_error_not_a_panic() {
        let path = temp("damaged");
        {
            let mut s = RedbStore::open(&path).unwrap();
            s.put(vec![cp("a", 1, 1)]).unwrap();
        }
        let mut bytes = std::fs::read(&path).unwrap();
        for b in bytes.iter_mut().skip(512).step_by(97) {
            *b ^= 0x5a;
        }
        std::fs::write(&path, &bytes).unwrap();
        // either refused on open, or every read that meets the damage is an error
        if let Ok(s) = RedbStore::open(&path) {
            let _ = s.get(&id("a"));
            let _ = s.versions();
        }
        std::fs::write(&path, b"not a database at all").unwrap();
        let e = RedbStore::open(&path).unwrap_err();
        assert!(e.to_string().contains("checkpoint store"), "{e}");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_batch_that_meets_a_bad_record_stores_nothing() {
        let path = temp("atomic");
        let mut s = RedbStore::open(&path).unwrap();
        {
            let tx = s.db.begin_write().unwrap();
            tx.open_table(TABLE)
                .unwrap()
                .insert("counter/bad", b"\x01\x02".as_slice())
                .unwrap();
            tx.commit().unwrap();
        }
        let e = s.put(vec![cp("good", 1, 1), cp("bad", 1, 1)]).unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
        assert_eq!(
            s.get(&id("good")).unwrap(),
            None,
            "nothing of the batch stored"
        );
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    /// A store holds, per agent, the newest version ever offered, whatever the order.
    fn model_check(s: &mut dyn CheckpointStore, ops: &[(u8, u64, u64)]) {
        let mut model: BTreeMap<AgentId, Version> = BTreeMap::new();
        for batch in ops.chunks(3) {
            let cps: Vec<Checkpoint> = batch
                .iter()
                .map(|&(k, e, q)| cp(&format!("k{k}"), e, q))
                .collect();
            let answers = s.put(cps.clone()).unwrap();
            for (c, a) in cps.iter().zip(answers) {
                let newer = model.get(&c.id).is_none_or(|v| c.version > *v);
                assert_eq!(a == Put::Stored, newer, "{c:?} {a:?}");
                if newer {
                    model.insert(c.id.clone(), c.version);
                }
            }
        }
        let held: BTreeMap<AgentId, Version> = s.versions().unwrap().into_iter().collect();
        assert_eq!(held, model);
    }

    proptest! {
        #[test]
        fn the_memory_store_never_goes_back(ops in proptest::collection::vec((0u8..4, 0u64..4, 0u64..6), 0..60)) {
            model_check(&mut MemStore::default(), &ops);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
        #[test]
        fn the_disk_store_never_goes_back(ops in proptest::collection::vec((0u8..4, 0u64..4, 0u64..6), 0..24)) {
            let path = temp("model");
            model_check(&mut RedbStore::open(&path).unwrap(), &ops);
            let _ = std::fs::remove_dir_all(path.parent().unwrap());
        }
    }
}
