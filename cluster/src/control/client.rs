//! [`ControlClient`]: the operator's (the CLI's) connection to one node's control plane.

use std::net::SocketAddr;
use std::time::Duration;

use quinn::Connection;
use rustls_pki_types::CertificateDer;
use tokio::time::timeout;

use super::protocol::{ControlRequest, ControlResponse, Versioned, CONTROL_VERSION};
use crate::net::certs::Identity;
use crate::net::tls::ANY_NODE_SNI;
use crate::net::transport;
use crate::net::wire::{self, WireError, MAX_CONTROL_FRAME};

/// Why a control call failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The node could not be reached.
    #[error("cannot reach {addr}: {reason}")]
    Connect {
        /// The node's address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// No answer within the deadline.
    #[error("no answer from {addr} within {after:?}")]
    Timeout {
        /// The node's address.
        addr: SocketAddr,
        /// The deadline.
        after: Duration,
    },
    /// The answer did not decode.
    #[error("bad answer from {addr}: {source}")]
    Wire {
        /// The node's address.
        addr: SocketAddr,
        /// The decoding error.
        source: WireError,
    },
    /// The node answered with an error.
    #[error("{0}")]
    Remote(String),
}

/// A connection to one node's control plane. Clones share the connection.
#[derive(Debug, Clone)]
pub struct ControlClient {
    _endpoint: quinn::Endpoint,
    conn: Connection,
    addr: SocketAddr,
}

impl ControlClient {
    /// Connects to the node at `addr` (named `name`, if known) as the operator.
    ///
    /// # Errors
    /// [`ControlError::Connect`] or [`ControlError::Timeout`].
    pub async fn connect(
        addr: SocketAddr,
        name: Option<&str>,
        ca: &CertificateDer<'static>,
        admin: &Identity,
        deadline: Duration,
    ) -> Result<Self, ControlError> {
        let connect_err = |reason: String| ControlError::Connect { addr, reason };
        let endpoint =
            transport::control_endpoint(addr, ca, admin).map_err(|e| connect_err(e.to_string()))?;
        let connecting = endpoint
            .connect(addr, name.unwrap_or(ANY_NODE_SNI))
            .map_err(|e| connect_err(e.to_string()))?;
        let conn = timeout(deadline, connecting)
            .await
            .map_err(|_| ControlError::Timeout {
                addr,
                after: deadline,
            })?
            .map_err(|e| connect_err(e.to_string()))?;
        Ok(Self {
            _endpoint: endpoint,
            conn,
            addr,
        })
    }

    /// Sends one request and waits for the answer.
    ///
    /// # Errors
    /// [`ControlError`]; an answer of [`ControlResponse::Error`] becomes [`ControlError::Remote`].
    pub async fn call(
        &self,
        req: &ControlRequest,
        deadline: Duration,
    ) -> Result<ControlResponse, ControlError> {
        let addr = self.addr;
        let wire_err = |source| ControlError::Wire { addr, source };
        let fut = async {
            let (mut send, mut recv) =
                self.conn
                    .open_bi()
                    .await
                    .map_err(|e| ControlError::Connect {
                        addr,
                        reason: e.to_string(),
                    })?;
            let req = Versioned {
                v: CONTROL_VERSION,
                msg: req,
            };
            wire::write_frame(&mut send, &req).await.map_err(wire_err)?;
            let _ = send.finish();
            wire::read_frame::<ControlResponse>(&mut recv, MAX_CONTROL_FRAME)
                .await
                .map_err(wire_err)?
                .ok_or(ControlError::Wire {
                    addr,
                    source: WireError::Truncated,
                })
        };
        match timeout(deadline, fut).await {
            Err(_) => Err(ControlError::Timeout {
                addr,
                after: deadline,
            }),
            Ok(Ok(ControlResponse::Error { message })) => Err(ControlError::Remote(message)),
            Ok(r) => r,
        }
    }

    /// Closes the connection politely.
    pub fn close(&self) {
        self.conn.close(0u32.into(), b"bye");
    }
}
