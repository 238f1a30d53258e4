//! QUIC endpoints: one per node (behind the fault layer), one per CLI invocation.
//!
//! Settings every node shares: keep-alive every second and a ten-second idle timeout, so a
//! short partition is ridden out by the connection itself; liveness is the failure detector's
//! call, not the idle timeout's. The stateless-reset key and the connection-id key come from
//! the node's secret (see [`statedir`](crate::net::statedir)), so a restarted node resets its old
//! connections at the first packet a peer sends.
//!
//! A node endpoint runs on [`NodeRuntime`]: each connection's driver and the readers of its
//! agent streams share one task ([`conn_task`]).

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use quinn::{Endpoint, EndpointConfig, IdleTimeout, TransportConfig, VarInt};
use rustls_pki_types::CertificateDer;

pub mod conn_task;

pub use conn_task::{capture, ConnTasks, NodeRuntime, SubTask};

use crate::net::certs::Identity;
use crate::net::fault::{FaultLayer, FaultSocket};
use crate::net::statedir::derive_key;
use crate::net::tls::{self, TlsError};

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
    tokio::runtime::Handle::try_current().map_err(|_| TransportError::NoRuntime)?;
    let runtime: Arc<dyn quinn::Runtime> = Arc::new(NodeRuntime::default());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::certs::CertDir;
    use std::time::Duration;
    use tokio::time::timeout;

    fn endpoint(dir: &CertDir, name: &str) -> (Endpoint, quinn::ClientConfig) {
        node_endpoint(
            "127.0.0.1:0".parse().unwrap(),
            &dir.load_ca().unwrap(),
            &dir.load_node(name).unwrap(),
            &[7; 32],
            FaultLayer::new(1),
            QuicTiming::default(),
        )
        .unwrap()
    }

    /// The node endpoint's connections get a connection task on both sides, a stream's
    /// reader runs in it, and the task ends with the connection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_and_its_stream_reader_share_a_task_that_ends_with_it() {
        let root = std::env::temp_dir().join(format!("tether-transport-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = CertDir::new(&root);
        dir.ensure_ca().unwrap();
        dir.ensure_node("a").unwrap();
        dir.ensure_node("b").unwrap();
        let (a, a_client) = endpoint(&dir, "a");
        let (b, _) = endpoint(&dir, "b");
        let b_addr = b.local_addr().unwrap();

        let server = tokio::spawn(async move {
            let incoming = b.accept().await.expect("an incoming connection");
            let (connecting, tasks) = capture(|| incoming.accept());
            let conn = connecting.unwrap().await.unwrap();
            let (mut send, mut recv) = conn.accept_bi().await.unwrap();
            // an echo reader, in the connection's task
            tasks.spawn(async move {
                let mut buf = [0u8; 5];
                recv.read_exact(&mut buf).await.unwrap();
                send.write_all(&buf).await.unwrap();
                send.finish().unwrap();
            });
            conn.closed().await;
            (tasks, b)
        });

        let (connecting, tasks) = capture(|| a.connect_with(a_client, b_addr, "b"));
        assert!(!tasks.is_detached(), "connect made a connection task");
        let conn = connecting.unwrap().await.unwrap();
        let (mut send, recv) = conn.open_bi().await.unwrap();
        send.write_all(b"hello").await.unwrap();
        let (echo_tx, echo) = tokio::sync::oneshot::channel();
        tasks.spawn(async move {
            let mut recv = recv;
            let _ = echo_tx.send(recv.read_to_end(64).await);
        });
        let deadline = Duration::from_secs(10);
        let echo = timeout(deadline, echo).await.expect("the echo came back");
        assert_eq!(echo.unwrap().unwrap(), b"hello");
        assert!(!tasks.is_ended(), "the driver still runs");

        conn.close(0u32.into(), b"done");
        let (b_tasks, _b) = timeout(deadline, server).await.unwrap().unwrap();
        assert!(!b_tasks.is_detached(), "accept made a connection task");
        drop(conn);
        timeout(deadline, async {
            while !(tasks.is_ended() && b_tasks.is_ended()) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("both connection tasks end once their connection is drained");
        let _ = std::fs::remove_dir_all(&root);
    }
}
