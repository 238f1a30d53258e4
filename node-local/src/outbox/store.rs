//! Where an outbox's log lives: a file in the node's state directory, or memory (the
//! simulator's "disk", which outlives a simulated crash).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

/// An append-only log of bytes.
pub trait Store: Send + std::fmt::Debug {
    /// Everything in the log.
    ///
    /// # Errors
    /// The store cannot be read.
    fn read_all(&mut self) -> io::Result<Vec<u8>>;
    /// Cuts the log to its first `len` bytes.
    ///
    /// # Errors
    /// The store cannot be written.
    fn truncate(&mut self, len: u64) -> io::Result<()>;
    /// Appends `bytes` with one write (a crash loses at most this record).
    ///
    /// # Errors
    /// The store cannot be written.
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Replaces the whole log with `bytes`, atomically: after a crash the log is either the
    /// old one or the new one.
    ///
    /// # Errors
    /// The store cannot be written.
    fn replace(&mut self, bytes: &[u8]) -> io::Result<()>;
}

impl Store for Box<dyn Store> {
    fn read_all(&mut self) -> io::Result<Vec<u8>> {
        (**self).read_all()
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        (**self).truncate(len)
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        (**self).append(bytes)
    }

    fn replace(&mut self, bytes: &[u8]) -> io::Result<()> {
        (**self).replace(bytes)
    }
}

/// A log in a file, appended to with one `write` per record; replaced through a temporary
/// file that is fsynced, then renamed over the old one.
#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
    file: Option<File>,
}

impl FileStore {
    /// The log at `path` (created at the first write).
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            file: None,
        }
    }

    fn file(&mut self) -> io::Result<&mut File> {
        if self.file.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.file = Some(f);
        }
        Ok(self.file.as_mut().expect("opened above"))
    }
}

impl Store for FileStore {
    fn read_all(&mut self) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        match File::open(&self.path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(bytes)
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        OpenOptions::new()
            .write(true)
            .open(&self.path)?
            .set_len(len)
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file()?.write_all(bytes)
    }

    fn replace(&mut self, bytes: &[u8]) -> io::Result<()> {
        let tmp = self.path.with_extension("log.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        self.file = None;
        Ok(())
    }
}

/// A log in memory, shared by its clones: what a simulated node keeps across a simulated
/// crash.
#[derive(Debug, Clone, Default)]
pub struct MemStore(Arc<Mutex<Vec<u8>>>);

impl MemStore {
    fn bytes(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Store for MemStore {
    fn read_all(&mut self) -> io::Result<Vec<u8>> {
        Ok(self.bytes().clone())
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.bytes().truncate(len as usize);
        Ok(())
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.bytes().extend_from_slice(bytes);
        Ok(())
    }

    fn replace(&mut self, bytes: &[u8]) -> io::Result<()> {
        *self.bytes() = bytes.to_vec();
        Ok(())
    }
}
