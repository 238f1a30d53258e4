//! Mutual TLS for QUIC: both sides present a certificate signed by the cluster CA.
//!
//! A node learns who is on the other end from the peer's certificate, never from what the
//! peer says: [`peer_name`] reads the DNS name of the verified certificate. Dialing by address
//! (a seed) does not know the name in advance, so the client verifier checks the chain against
//! the CA for whatever name the certificate holds, and the caller compares it with the name it
//! expected, if it had one.
//!
//! Two ALPN protocols share the endpoint: [`ALPN_PEER`] between nodes and [`ALPN_CONTROL`] for
//! the operator. The node checks that a control connection presents the operator's identity and
//! a peer connection a node's; the CA check alone is not enough.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::net::certs::Identity;

/// ALPN of node-to-node connections.
pub const ALPN_PEER: &[u8] = b"tether/1";
/// ALPN of operator control connections.
pub const ALPN_CONTROL: &[u8] = b"tether-ctl/1";
/// The SNI used when dialing an address whose node name is not known yet.
pub const ANY_NODE_SNI: &str = "any-node.tether.invalid";

/// Why a TLS configuration could not be built or a peer could not be identified.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused the configuration (bad key, unsupported algorithm...).
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The client verifier could not be built from the CA.
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// quinn refused the rustls configuration.
    #[error("QUIC TLS configuration: {0}")]
    Quic(String),
    /// The peer presented no certificate or one without a DNS name.
    #[error("peer certificate has no usable DNS name")]
    NoPeerName,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone())?;
    Ok(Arc::new(roots))
}

/// The server side of a node's endpoint: requires a client certificate from the CA.
///
/// # Errors
/// [`TlsError`] if the identity or CA is unusable.
pub fn server_config(
    ca: &CertificateDer<'static>,
    id: &Identity,
) -> Result<quinn::crypto::rustls::QuicServerConfig, TlsError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider.clone()).build()?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain.clone(), id.key.clone_key())?;
    cfg.alpn_protocols = vec![ALPN_PEER.to_vec(), ALPN_CONTROL.to_vec()];
    quinn::crypto::rustls::QuicServerConfig::try_from(cfg)
        .map_err(|e| TlsError::Quic(e.to_string()))
}

/// The client side: presents `id` and verifies the server against the CA.
///
/// # Errors
/// [`TlsError`] if the identity or CA is unusable.
pub fn client_config(
    ca: &CertificateDer<'static>,
    id: &Identity,
    alpn: &[u8],
) -> Result<quinn::crypto::rustls::QuicClientConfig, TlsError> {
    let provider = provider();
    let inner =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots(ca)?, provider.clone())
            .build()
            .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NodeNameVerifier { inner }))
        .with_client_auth_cert(id.chain.clone(), id.key.clone_key())?;
    cfg.alpn_protocols = vec![alpn.to_vec()];
    quinn::crypto::rustls::QuicClientConfig::try_from(cfg)
        .map_err(|e| TlsError::Quic(e.to_string()))
}

/// The DNS name in a certificate (its first SAN DNS name).
pub fn cert_name(cert: &CertificateDer<'_>) -> Option<String> {
    let ee = webpki::EndEntityCert::try_from(cert).ok()?;
    let name = ee.valid_dns_names().next().map(str::to_owned);
    name
}

/// The verified name of the peer of an established connection.
///
/// # Errors
/// [`TlsError::NoPeerName`] if the peer presented no certificate with a DNS name.
pub fn peer_name(conn: &quinn::Connection) -> Result<String, TlsError> {
    let any = conn.peer_identity().ok_or(TlsError::NoPeerName)?;
    let certs = any
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| TlsError::NoPeerName)?;
    certs
        .first()
        .and_then(cert_name)
        .ok_or(TlsError::NoPeerName)
}

/// The ALPN protocol the connection agreed on.
pub fn alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

/// Verifies a server certificate against the CA, for the name the certificate holds when the
/// client dialed an address ([`ANY_NODE_SNI`]), or for the name the client asked for.
#[derive(Debug)]
struct NodeNameVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl ServerCertVerifier for NodeNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let wanted = match server_name {
            ServerName::DnsName(d) if d.as_ref() == ANY_NODE_SNI => {
                let name = cert_name(end_entity).ok_or(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName,
                ))?;
                ServerName::try_from(name).map_err(|_| {
                    rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
                })?
            }
            other => other.to_owned(),
        };
        self.inner
            .verify_server_cert(end_entity, intermediates, &wanted, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
