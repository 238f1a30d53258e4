//! How nodes reach each other: certificates and mutual TLS, the QUIC endpoint, the fault layer
//! under it, the framing of tether's own streams, and what a node keeps on disk.
//!
//! - [`certs`]: the cluster CA and node/operator certificates (rcgen), on disk.
//! - [`tls`]: rustls configurations for mutual TLS; the peer's name comes from its certificate.
//! - [`transport`]: quinn endpoints (keep-alive, idle timeout, keys from the node secret);
//!   [`transport::conn_task`]: a connection's driver and its agent streams' readers in one task.
//! - [`fault`]: the fault layer: ordered drop/loss/delay rules on every datagram.
//! - [`wire`]: framing of tether's own streams and heartbeat datagrams.
//! - [`links`]: the live links to peers, and waiting for one.
//! - [`statedir`]: what a node keeps on disk: secret, incarnation, `node.json`.

pub mod certs;
pub mod fault;
pub mod links;
pub mod statedir;
pub mod tls;
pub mod transport;
pub mod wire;
