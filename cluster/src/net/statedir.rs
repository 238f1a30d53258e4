//! A node's state directory: what survives a restart of the node.
//!
//! ```text
//! nodes/NAME/secret        32 random bytes (mode 0600): QUIC reset and connection-id keys
//! nodes/NAME/incarnation   the last incarnation number, bumped at every start
//! nodes/NAME/node.json     written once the node listens: name, role, addr, pid, incarnation;
//!                          removed on clean shutdown. The CLI finds nodes through it.
//! nodes/NAME/node.log      the node's log when started by `tether up`
//! ```
//!
//! The secret is what lets peers learn of a crash-and-restart at once: the restarted node
//! derives the same stateless-reset key, so it answers packets for its old connections with a
//! valid stateless reset and the peers drop them immediately instead of waiting for the idle
//! timeout.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::identity::Role;
use crate::net::certs::{write_file, CertError};

/// What `node.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// QUIC endpoint address.
    pub addr: SocketAddr,
    /// OS process id.
    pub pid: u32,
    /// Incarnation of this run.
    pub incarnation: u64,
}

/// A node's own directory.
#[derive(Debug, Clone)]
pub struct NodeDir {
    dir: PathBuf,
}

impl NodeDir {
    /// The directory (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The path of the directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The node's secret, made on first use.
    ///
    /// # Errors
    /// [`CertError::Io`] if it cannot be read or written; a secret of the wrong size is
    /// reported as [`CertError::BadPem`] naming the file.
    pub fn secret(&self) -> Result<[u8; 32], CertError> {
        let path = self.dir.join("secret");
        match fs::read(&path) {
            Ok(bytes) => bytes.try_into().map_err(|_| CertError::BadPem {
                path: path.clone(),
                what: "node secret",
                reason: "expected exactly 32 bytes; delete the file to make a new one".into(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut s = [0u8; 32];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut s).map_err(
                    |_| CertError::Io {
                        path: path.clone(),
                        source: std::io::Error::other("no system randomness"),
                    },
                )?;
                write_file(&path, &s, true)?;
                Ok(s)
            }
            Err(source) => Err(CertError::Io { path, source }),
        }
    }

    /// Bumps and returns the incarnation number (1 on the first start).
    ///
    /// # Errors
    /// [`CertError::Io`] if the file cannot be written.
    pub fn next_incarnation(&self) -> Result<u64, CertError> {
        let path = self.dir.join("incarnation");
        let last = fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let next = last + 1;
        write_file(&path, format!("{next}\n").as_bytes(), false)?;
        Ok(next)
    }

    /// Writes `node.json`.
    ///
    /// # Errors
    /// [`CertError::Io`] if it cannot be written.
    pub fn write_record(&self, rec: &NodeRecord) -> Result<(), CertError> {
        let mut json = serde_json::to_vec(rec).map_err(|e| CertError::Io {
            path: self.dir.join("node.json"),
            source: std::io::Error::other(e),
        })?;
        json.push(b'\n');
        write_file(&self.dir.join("node.json"), &json, false)
    }

    /// Reads `node.json`, if present and valid.
    pub fn read_record(&self) -> Option<NodeRecord> {
        let s = fs::read(self.dir.join("node.json")).ok()?;
        serde_json::from_slice(&s).ok()
    }

    /// Removes `node.json` (clean shutdown).
    pub fn remove_record(&self) {
        let _ = fs::remove_file(self.dir.join("node.json"));
    }

    /// The last address this node listened on, to reuse it on restart.
    pub fn last_addr(&self) -> Option<SocketAddr> {
        let s = fs::read_to_string(self.dir.join("addr")).ok()?;
        s.trim().parse().ok()
    }

    /// Records the address this node listens on.
    ///
    /// # Errors
    /// [`CertError::Io`] if it cannot be written.
    pub fn write_addr(&self, addr: SocketAddr) -> Result<(), CertError> {
        write_file(
            &self.dir.join("addr"),
            format!("{addr}\n").as_bytes(),
            false,
        )
    }
}

/// Derives a 32-byte key for `label` from the node secret (HMAC-SHA256).
pub fn derive_key(secret: &[u8; 32], label: &str) -> [u8; 32] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&key, label.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_incarnation_grows() {
        let d = std::env::temp_dir().join(format!("tether-statedir-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        let nd = NodeDir::new(&d);
        assert_eq!(nd.next_incarnation().unwrap(), 1);
        assert_eq!(nd.next_incarnation().unwrap(), 2);
        let s1 = nd.secret().unwrap();
        assert_eq!(
            nd.secret().unwrap(),
            s1,
            "the secret is stable across restarts"
        );
        let rec = NodeRecord {
            name: "r1".into(),
            role: Role::Remote,
            addr: "127.0.0.1:4000".parse().unwrap(),
            pid: 42,
            incarnation: 2,
        };
        nd.write_record(&rec).unwrap();
        assert_eq!(nd.read_record(), Some(rec));
        nd.remove_record();
        assert_eq!(nd.read_record(), None);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn derived_keys_differ_by_label_and_are_stable() {
        let s = [7u8; 32];
        assert_eq!(derive_key(&s, "reset"), derive_key(&s, "reset"));
        assert_ne!(derive_key(&s, "reset"), derive_key(&s, "cid"));
    }
}
