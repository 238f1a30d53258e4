//! Certificates: the cluster CA, node certificates and the operator's certificate.
//!
//! Layout of a certificate directory (it is also a node state directory):
//!
//! ```text
//! DIR/ca.pem  DIR/ca.key                  the cluster CA (ca.key is mode 0600)
//! DIR/admin/cert.pem  DIR/admin/key.pem   the operator (CLI) identity, DNS name `admin.tether`
//! DIR/nodes/NAME/cert.pem  key.pem        one per node; DNS name = node name
//! ```
//!
//! The CA's subject is fixed, so the CA can be rebuilt from its key alone to sign more node
//! certificates later (`tether certs init` run again adds nodes to an existing CA).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::identity::{validate_name, NameError, ADMIN_NAME};

/// Why certificates could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{path}: not a valid PEM {what}: {reason}")]
    BadPem {
        /// The file.
        path: PathBuf,
        /// "certificate" or "private key".
        what: &'static str,
        /// What the parser said.
        reason: String,
    },
    /// rcgen refused to build a certificate.
    #[error("cannot generate certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The node name is not a valid name.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The files needed are not there.
    #[error("no {what} at {path}; run `tether certs init --dir {dir} --nodes NAME` first")]
    Missing {
        /// What is missing.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// The certificate directory.
        dir: String,
    },
}

/// A certificate chain and its private key, as rustls wants them.
#[derive(Debug)]
pub struct Identity {
    /// The end-entity certificate first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Its private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// Paths inside a certificate directory.
#[derive(Debug, Clone)]
pub struct CertDir {
    root: PathBuf,
}

impl CertDir {
    /// A certificate directory rooted at `root` (not created until something is written).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `ca.pem`.
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca.pem")
    }

    fn ca_key(&self) -> PathBuf {
        self.root.join("ca.key")
    }

    /// The directory of node `name`.
    pub fn node_dir(&self, name: &str) -> PathBuf {
        self.root.join("nodes").join(name)
    }

    fn admin_dir(&self) -> PathBuf {
        self.root.join("admin")
    }

    /// Whether the CA exists.
    pub fn has_ca(&self) -> bool {
        self.ca_cert().exists() && self.ca_key().exists()
    }

    /// Creates the CA if there is none. Returns whether it was created.
    ///
    /// # Errors
    /// [`CertError`] if files cannot be written or the CA key cannot be read.
    pub fn ensure_ca(&self) -> Result<bool, CertError> {
        if self.has_ca() {
            return Ok(false);
        }
        let key = KeyPair::generate()?;
        let cert = ca_params().self_signed(&key)?;
        write_file(&self.ca_key(), key.serialize_pem().as_bytes(), true)?;
        write_file(&self.ca_cert(), cert.pem().as_bytes(), false)?;
        Ok(true)
    }

    /// Issues a certificate for node `name` if it has none. Returns whether one was issued.
    ///
    /// # Errors
    /// [`CertError`] for a bad name, a missing CA, or an I/O failure.
    pub fn ensure_node(&self, name: &str) -> Result<bool, CertError> {
        validate_name(name)?;
        self.ensure_leaf(&self.node_dir(name), name, true)
    }

    /// Issues the operator's certificate if there is none. Returns whether one was issued.
    ///
    /// # Errors
    /// [`CertError`] for a missing CA or an I/O failure.
    pub fn ensure_admin(&self) -> Result<bool, CertError> {
        self.ensure_leaf(&self.admin_dir(), ADMIN_NAME, false)
    }

    fn ensure_leaf(&self, dir: &Path, dns_name: &str, server: bool) -> Result<bool, CertError> {
        let cert_path = dir.join("cert.pem");
        if cert_path.exists() && dir.join("key.pem").exists() {
            return Ok(false);
        }
        let ca_key_pem = read_string(&self.ca_key(), self)?;
        let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| CertError::BadPem {
            path: self.ca_key(),
            what: "private key",
            reason: e.to_string(),
        })?;
        let ca = ca_params().self_signed(&ca_key)?;

        let mut params = CertificateParams::new(vec![dns_name.to_owned()])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, dns_name);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = if server {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        fs::create_dir_all(dir).map_err(|source| CertError::Io {
            path: dir.to_owned(),
            source,
        })?;
        write_file(&dir.join("key.pem"), key.serialize_pem().as_bytes(), true)?;
        write_file(&cert_path, cert.pem().as_bytes(), false)?;
        Ok(true)
    }

    /// Loads the CA certificate.
    ///
    /// # Errors
    /// [`CertError::Missing`] or [`CertError::BadPem`].
    pub fn load_ca(&self) -> Result<CertificateDer<'static>, CertError> {
        load_cert(&self.ca_cert(), self)
    }

    /// Loads node `name`'s identity.
    ///
    /// # Errors
    /// [`CertError::Missing`] or [`CertError::BadPem`].
    pub fn load_node(&self, name: &str) -> Result<Identity, CertError> {
        load_identity(&self.node_dir(name), self)
    }

    /// Loads the operator's identity.
    ///
    /// # Errors
    /// [`CertError::Missing`] or [`CertError::BadPem`].
    pub fn load_admin(&self) -> Result<Identity, CertError> {
        load_identity(&self.admin_dir(), self)
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "tether");
    dn.push(DnType::CommonName, "tether cluster CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn read_string(path: &Path, dir: &CertDir) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            CertError::Missing {
                what: "file",
                path: path.to_owned(),
                dir: dir.root.display().to_string(),
            }
        } else {
            CertError::Io {
                path: path.to_owned(),
                source,
            }
        }
    })
}

fn load_cert(path: &Path, dir: &CertDir) -> Result<CertificateDer<'static>, CertError> {
    let pem = read_string(path, dir)?;
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| CertError::BadPem {
        path: path.to_owned(),
        what: "certificate",
        reason: e.to_string(),
    })
}

fn load_identity(leaf_dir: &Path, dir: &CertDir) -> Result<Identity, CertError> {
    let cert = load_cert(&leaf_dir.join("cert.pem"), dir)?;
    let key_path = leaf_dir.join("key.pem");
    let pem = read_string(&key_path, dir)?;
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| CertError::BadPem {
        path: key_path,
        what: "private key",
        reason: e.to_string(),
    })?;
    Ok(Identity {
        chain: vec![cert],
        key,
    })
}

/// Writes `bytes` to `path` atomically (temp file + rename), mode 0600 when `secret`.
pub(crate) fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tether-certs-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn init_is_idempotent_and_adds_nodes_to_the_same_ca() {
        let root = tmpdir("idem");
        let dir = CertDir::new(&root);
        assert!(dir.ensure_ca().unwrap());
        assert!(!dir.ensure_ca().unwrap());
        let ca_before = fs::read(dir.ca_cert()).unwrap();
        assert!(dir.ensure_node("a").unwrap());
        assert!(!dir.ensure_node("a").unwrap());
        assert!(dir.ensure_node("b").unwrap());
        assert!(dir.ensure_admin().unwrap());
        assert_eq!(fs::read(dir.ca_cert()).unwrap(), ca_before);
        dir.load_node("a").unwrap();
        dir.load_admin().unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(root.join("ca.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "CA key must not be readable by others");
        }
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn bad_names_and_missing_ca_are_clear_errors() {
        let root = tmpdir("bad");
        let dir = CertDir::new(&root);
        assert!(matches!(
            dir.ensure_node("Bad.Name"),
            Err(CertError::Name(_))
        ));
        let err = dir.ensure_node("ok").unwrap_err();
        assert!(err.to_string().contains("tether certs init"), "{err}");
        let err = dir.load_node("ghost").unwrap_err();
        assert!(matches!(err, CertError::Missing { .. }), "{err}");
    }
}
