//! QUIC endpoints: one per node (behind the fault layer), one per CLI invocation.
//!
//! Settings every node shares: keep-alive every second and a ten-second idle timeout, so a
//! short partition is ridden out by the connection itself; liveness is the failure detector's
//! call, not the idle timeout's. The stateless-reset key and the connection-id key come from
//! the node's secret (see [`statedir`](crate::statedir)), so a restarted node resets its old
//! connections at the first packet a peer sends.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use quinn::{Endpoint, EndpointConfig, IdleTimeout, TransportConfig, VarInt};
use rustls_pki_types::CertificateDer;

use crate::certs::Identity;
use crate::fault::{FaultLayer, FaultSocket};
use crate::statedir::derive_key;
use crate::tls::{self, TlsError};

/// Why an endpoint could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The UDP socket could not be bound.
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// No async runtime to drive the endpoint.
    #[error("no tokio runtime is running")]
    NoRuntime,
    /// TLS configuration failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// quinn refused a setting.
    #[error("QUIC endpoint: {0}")]
    Quic(String),
}

/// QUIC timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuicTiming {
    /// Keep-alive interval.
    pub keep_alive: Duration,
    /// Idle timeout.
    pub idle_timeout: Duration,
}

impl Default for QuicTiming {
    fn default() -> Self {
        Self {
            keep_alive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
        }
    }
}

fn transport_config(t: QuicTiming) -> Result<Arc<TransportConfig>, TransportError> {
    let mut cfg = TransportConfig::default();
    cfg.keep_alive_interval(Some(t.keep_alive));
    cfg.max_idle_timeout(Some(
        IdleTimeout::try_from(t.idle_timeout).map_err(|e| TransportError::Quic(e.to_string()))?,
    ));
    cfg.max_concurrent_bidi_streams(VarInt::from_u32(256));
    // cluster links are LAN or WAN, not satellite: a 100 ms first guess (RFC default 333 ms)
    // makes a handshake to a node that just came back retransmit sooner
    cfg.initial_rtt(Duration::from_millis(100));
    Ok(Arc::new(cfg))
}

/// A node's endpoint: server and client at once, on one UDP socket behind `faults`.
///
/// # Errors
/// [`TransportError`] if the socket cannot be bound or TLS cannot be configured.
pub fn node_endpoint(
    listen: SocketAddr,
    ca: &CertificateDer<'static>,
    id: &Identity,
    secret: &[u8; 32],
    faults: Arc<FaultLayer>,
    timing: QuicTiming,
) -> Result<(Endpoint, quinn::ClientConfig), TransportError> {
    let sock = UdpSocket::bind(listen).map_err(|source| TransportError::Bind {
        addr: listen,
        source,
    })?;
    let runtime = quinn::default_runtime().ok_or(TransportError::NoRuntime)?;
    let inner = runtime
        .wrap_udp_socket(sock)
        .map_err(|source| TransportError::Bind {
            addr: listen,
            source,
        })?;
    let socket = FaultSocket::new(inner, faults);

    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &derive_key(secret, "reset"));
    let mut ep_cfg = EndpointConfig::new(Arc::new(reset_key));
    let cid_seed = derive_key(secret, "cid");
    let cid_key = u64::from_le_bytes(cid_seed[..8].try_into().expect("8 of 32 bytes"));
    ep_cfg.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });

    let transport = transport_config(timing)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(tls::server_config(ca, id)?));
    server.transport_config(transport.clone());
    let endpoint = Endpoint::new_with_abstract_socket(ep_cfg, Some(server), socket, runtime)
        .map_err(|e| TransportError::Quic(e.to_string()))?;

    let mut client =
        quinn::ClientConfig::new(Arc::new(tls::client_config(ca, id, tls::ALPN_PEER)?));
    client.transport_config(transport);
    Ok((endpoint, client))
}

/// A client-only endpoint for the operator's CLI, presenting the admin identity.
///
/// # Errors
/// [`TransportError`] if the socket cannot be bound or TLS cannot be configured.
pub fn control_endpoint(
    target: SocketAddr,
    ca: &CertificateDer<'static>,
    admin: &Identity,
) -> Result<Endpoint, TransportError> {
    let bind: SocketAddr = if target.is_ipv6() {
        "[::]:0".parse().expect("literal address")
    } else {
        "0.0.0.0:0".parse().expect("literal address")
    };
    let mut ep =
        Endpoint::client(bind).map_err(|source| TransportError::Bind { addr: bind, source })?;
    let mut client =
        quinn::ClientConfig::new(Arc::new(tls::client_config(ca, admin, tls::ALPN_CONTROL)?));
    client.transport_config(transport_config(QuicTiming::default())?);
    ep.set_default_client_config(client);
    Ok(ep)
}
