//! Connections between nodes: accepting, dialing, and the tasks of an established link.
//!
//! See [`crate::membership::link`] for the protocol and the acceptor's rule; this file is its
//! I/O.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use quinn::{Connection, RecvStream, SendStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tracing::{debug, info, warn};

use super::Shared;
use crate::core::LinkEnd;
use crate::identity::{validate_name, NodeInfo, ADMIN_NAME};
use crate::membership::link::{self, Decision, LinkView};
use crate::net::links::Link;
use crate::net::tls::{self, ALPN_CONTROL, ALPN_PEER, ANY_NODE_SNI};
use crate::net::transport::{self, ConnTasks};
use crate::net::wire::{
    self, close, PeerMsg, StreamTag, WireError, MAX_CONTROL_FRAME, PROTOCOL_VERSION,
};

/// Messages waiting for a link's stream. Only gossip travels there, and gossip is periodic and
/// idempotent: when a stalled link's queue is full, a new gossip is dropped, not queued.
const LINK_QUEUE: usize = 16;

/// Why a dial did not produce a link.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DialError {
    #[error("connect: {0}")]
    Connect(String),
    #[error("timed out")]
    Timeout,
    #[error("peer certificate names {found:?}, expected {expected:?}")]
    WrongPeer { expected: String, found: String },
    #[error("dialed this node itself")]
    SelfDial,
    #[error("refused: {0}")]
    Refused(String),
    #[error("already linked")]
    AlreadyLinked,
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

pub(super) async fn accept_loop(shared: Arc<Shared>) {
    let mut stop = shared.shutdown.subscribe();
    loop {
        let incoming = tokio::select! {
            i = shared.endpoint.accept() => i,
            _ = stop.wait_for(|s| *s) => return,
        };
        let Some(incoming) = incoming else { return };
        tokio::spawn(handle_incoming(shared.clone(), incoming));
    }
}

async fn handle_incoming(shared: Arc<Shared>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let (connecting, tasks) = transport::capture(|| incoming.accept());
    let connecting = match connecting {
        Ok(c) => c,
        Err(e) => {
            info!(%remote, error = %e, "incoming connection refused by the endpoint");
            return;
        }
    };
    let conn = match timeout(shared.timing.connect_timeout, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            // no certificate, a certificate from another CA, a bad ALPN: the handshake fails
            info!(%remote, error = %e, "incoming handshake failed");
            return;
        }
        Err(_) => {
            info!(%remote, "incoming handshake timed out");
            return;
        }
    };
    let name = match tls::peer_name(&conn) {
        Ok(n) => n,
        Err(e) => {
            conn.close(close::FORBIDDEN.into(), b"no usable certificate name");
            info!(%remote, error = %e, "refused connection");
            return;
        }
    };
    match tls::alpn(&conn).as_deref() {
        Some(ALPN_CONTROL) if name == ADMIN_NAME => {
            let handler = Arc::new(super::ops::Ops(shared.clone()));
            crate::control::server::serve(handler, conn).await;
        }
        Some(ALPN_CONTROL) => {
            warn!(%remote, peer = %name, "control connection without the operator certificate");
            conn.close(
                close::FORBIDDEN.into(),
                b"the control plane needs the operator certificate",
            );
        }
        Some(ALPN_PEER) if validate_name(&name).is_ok() && name != shared.me.name => {
            if let Err(e) = accept_peer(&shared, conn.clone(), tasks, &name).await {
                warn!(%remote, peer = %name, error = %e, "peer handshake failed");
                conn.close(close::PROTOCOL.into(), e.to_string().as_bytes());
            }
        }
        _ => {
            warn!(%remote, peer = %name, "refused connection: not a node certificate");
            conn.close(close::FORBIDDEN.into(), b"not a node identity");
        }
    }
}

/// The first stream of an incoming connection, and its first frame (the hello).
async fn read_hello(
    conn: &Connection,
    deadline: std::time::Duration,
) -> Result<(SendStream, RecvStream, Option<PeerMsg>), DialError> {
    let (send, mut recv) = timeout(deadline, conn.accept_bi())
        .await
        .map_err(|_| DialError::Timeout)?
        .map_err(|e| DialError::Connect(e.to_string()))?;
    let hello = timeout(deadline, async {
        match wire::read_tag(&mut recv).await? {
            StreamTag::Link => {}
            other => {
                return Err(WireError::Stream(format!(
                    "first stream must be the link stream, got {other:?}"
                )))
            }
        }
        wire::read_frame::<PeerMsg>(&mut recv, MAX_CONTROL_FRAME).await
    })
    .await
    .map_err(|_| DialError::Timeout)??;
    Ok((send, recv, hello))
}

async fn accept_peer(
    shared: &Arc<Shared>,
    conn: Connection,
    tasks: ConnTasks,
    name: &str,
) -> Result<(), DialError> {
    let (mut send, recv, hello) = read_hello(&conn, shared.timing.connect_timeout).await?;
    let Some(PeerMsg::Hello {
        protocol,
        node: mut info,
        replace,
    }) = hello
    else {
        return Err(DialError::Refused("expected a hello".into()));
    };
    if protocol != PROTOCOL_VERSION {
        return Err(DialError::Refused(format!(
            "link protocol {protocol} is not supported (this node speaks {PROTOCOL_VERSION})"
        )));
    }
    if info.name != name {
        return Err(DialError::WrongPeer {
            expected: name.to_owned(),
            found: info.name,
        });
    }
    if info.addr.ip().is_unspecified() {
        info.addr = SocketAddr::new(conn.remote_address().ip(), info.addr.port());
    }

    // decide against what was known before this hello (a restart must look like one), then
    // learn of the peer (a newer incarnation replaces the old life here)
    let known_before = shared
        .driver
        .read(|c| c.members().get(name).map(|m| m.info.incarnation));
    shared.learn(info.clone());
    let now = Instant::now();
    let decision = {
        let silent = shared
            .driver
            .read(|c| c.members().get(name).map(|m| m.detector.is_silent(now)));
        let Some((silent, d)) = silent.zip(shared.dials.get(name)) else {
            return Err(DialError::Refused("peer could not be registered".into()));
        };
        let view = LinkView {
            has_current: shared.links.id_of(name).is_some(),
            current_silent: silent,
            pending_dial: d.pending,
            known_incarnation: known_before,
            i_am_designated: d.i_am_designated,
        };
        link::decide(view, info.incarnation, replace)
    };
    let accepted = matches!(decision, Decision::Accept { .. });
    let ack = PeerMsg::HelloAck {
        node: shared.me.clone(),
        accepted,
        refusal: match decision {
            Decision::Refuse(r) => Some(r),
            Decision::Accept { .. } => None,
        },
    };
    wire::write_frame(&mut send, &ack).await?;
    match decision {
        Decision::Accept { restarted } => {
            if restarted {
                info!(peer = %name, incarnation = info.incarnation, "peer connected with a new incarnation");
            }
            install_link(shared, &info, (conn, tasks), send, recv, false);
            Ok(())
        }
        Decision::Refuse(r) => {
            debug!(peer = %name, reason = %r, "refused connection as link");
            // the dialer closes a refused connection; make sure it goes even if it does not
            let c = conn.clone();
            let wait = shared.timing.connect_timeout;
            tokio::spawn(async move {
                if timeout(wait, c.closed()).await.is_err() {
                    c.close(close::REFUSED.into(), b"refused");
                }
            });
            Ok(())
        }
    }
}

/// Dials a known peer (the ticker marked it `pending_dial`).
pub(super) async fn dial_peer(
    shared: Arc<Shared>,
    addr: SocketAddr,
    name: String,
    replace: bool,
    epoch: u64,
) {
    let res = dial(&shared, addr, Some((&name, epoch)), replace).await;
    let now = Instant::now();
    if let Some(mut d) = shared.dials.get_mut(&name) {
        if d.epoch != epoch {
            // a newer life of the peer was learned meanwhile; this attempt no longer counts
            return;
        }
        d.pending = false;
        d.last_end = Some(now);
        match &res {
            Ok(()) => d.failures = 0,
            Err(_) => d.failures = d.failures.saturating_add(1),
        }
    }
    match res {
        Ok(()) => {}
        Err(DialError::Refused(r)) => debug!(peer = %name, %addr, reason = %r, "dial refused"),
        Err(e) => debug!(peer = %name, %addr, error = %e, "dial failed"),
    }
}

/// Dials a seed address, whose node name is not known in advance.
pub(super) async fn dial_seed(shared: Arc<Shared>, addr: SocketAddr) {
    let res = dial(&shared, addr, None, false).await;
    let mut seeds = shared
        .seeds
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(s) = seeds.iter_mut().find(|s| s.addr == addr) {
        s.pending = false;
        s.last_end = Some(Instant::now());
        match &res {
            Ok(()) | Err(DialError::AlreadyLinked) => s.failures = 0,
            Err(e) => {
                s.failures = s.failures.saturating_add(1);
                if s.failures == 1 || s.failures % 20 == 0 {
                    info!(seed = %addr, error = %e, attempts = s.failures, "cannot join seed yet");
                }
            }
        }
    }
}

/// A QUIC connection to `addr`, checked to be the node expected there (and not this one).
async fn connect(
    shared: &Shared,
    addr: SocketAddr,
    expected: Option<&str>,
) -> Result<(Connection, ConnTasks, String), DialError> {
    let (connecting, tasks) = transport::capture(|| {
        shared.endpoint.connect_with(
            shared.client_cfg.clone(),
            addr,
            expected.unwrap_or(ANY_NODE_SNI),
        )
    });
    let connecting = connecting.map_err(|e| DialError::Connect(e.to_string()))?;
    let conn = timeout(shared.timing.connect_timeout, connecting)
        .await
        .map_err(|_| DialError::Timeout)?
        .map_err(|e| DialError::Connect(e.to_string()))?;
    let name = tls::peer_name(&conn)?;
    if let Some(e) = expected {
        if e != name {
            conn.close(close::FORBIDDEN.into(), b"unexpected node");
            return Err(DialError::WrongPeer {
                expected: e.to_owned(),
                found: name,
            });
        }
    }
    if name == shared.me.name {
        conn.close(close::REFUSED.into(), b"self");
        return Err(DialError::SelfDial);
    }
    Ok((conn, tasks, name))
}

async fn dial(
    shared: &Arc<Shared>,
    addr: SocketAddr,
    expected: Option<(&str, u64)>,
    replace: bool,
) -> Result<(), DialError> {
    let (expected, epoch) = match expected {
        Some((n, e)) => (Some(n), Some(e)),
        None => (None, None),
    };
    let deadline = shared.timing.connect_timeout;
    let (conn, tasks, name) = connect(shared, addr, expected).await?;
    // while this dial was in flight, the pair may have got a working link (the peer dialed
    // in, or a newer life of the peer was learned): then a hello would only make it flap
    let now = Instant::now();
    let silent = shared.driver.read(|c| {
        c.members()
            .get(&name)
            .is_none_or(|m| m.detector.is_silent(now))
    });
    let other_link = shared
        .links
        .id_of(&name)
        .is_some_and(|id| id != conn.stable_id());
    let stale_epoch = epoch.is_some_and(|e| shared.dials.get(&name).is_some_and(|d| d.epoch != e));
    let superseded = (other_link && !silent) || stale_epoch;
    if superseded {
        conn.close(close::REFUSED.into(), b"already linked");
        return Err(DialError::AlreadyLinked);
    }
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| DialError::Connect(e.to_string()))?;
    let ack = timeout(deadline, async {
        wire::write_tag(&mut send, StreamTag::Link).await?;
        wire::write_frame(
            &mut send,
            &PeerMsg::Hello {
                protocol: PROTOCOL_VERSION,
                node: shared.me.clone(),
                replace,
            },
        )
        .await?;
        wire::read_frame::<PeerMsg>(&mut recv, MAX_CONTROL_FRAME).await
    })
    .await
    .map_err(|_| DialError::Timeout)??;
    let Some(PeerMsg::HelloAck {
        node: mut info,
        accepted,
        refusal,
    }) = ack
    else {
        conn.close(close::PROTOCOL.into(), b"expected a hello ack");
        return Err(DialError::Refused("no hello ack".into()));
    };
    if info.name != name {
        conn.close(close::PROTOCOL.into(), b"ack names another node");
        return Err(DialError::WrongPeer {
            expected: name,
            found: info.name,
        });
    }
    if info.addr.ip().is_unspecified() {
        info.addr = SocketAddr::new(addr.ip(), info.addr.port());
    }
    shared.learn(info.clone());
    if !accepted {
        conn.close(close::REFUSED.into(), b"refused");
        return Err(DialError::Refused(
            refusal
                .map(|r| r.to_string())
                .unwrap_or_else(|| "no reason".into()),
        ));
    }
    install_link(shared, &info, (conn.clone(), tasks), send, recv, true);
    super::ractor_bridge::open_session(shared, &conn, &name).await;
    Ok(())
}

/// Makes `conn` the link to `info.name`, closing any previous one, and starts its tasks.
fn install_link(
    shared: &Arc<Shared>,
    info: &NodeInfo,
    (conn, tasks): (Connection, ConnTasks),
    send: SendStream,
    recv: RecvStream,
    dialed: bool,
) {
    let (tx, rx) = mpsc::channel(LINK_QUEUE);
    let known = shared
        .driver
        .read(|c| c.members().get(&info.name).map(|m| m.info.incarnation));
    match known {
        None => {
            conn.close(close::STALE.into(), b"unknown peer");
            return;
        }
        Some(k) if info.incarnation < k => {
            conn.close(close::STALE.into(), b"stale incarnation");
            return;
        }
        Some(_) => {}
    }
    let old = shared.links.install(
        &info.name,
        Link {
            conn: conn.clone(),
            tasks: tasks.clone(),
            tx: tx.clone(),
        },
    );
    if let Some(mut d) = shared.dials.get_mut(&info.name) {
        d.unlinked_since = None;
        d.session = false;
    }
    shared.driver.with(|c, _| c.linked(&info.name));
    if let Some(old) = old {
        if old.conn.stable_id() != conn.stable_id() {
            old.conn
                .close(close::REPLACED.into(), b"replaced by a newer connection");
        }
    }
    info!(peer = %info.name, dialed, remote = %conn.remote_address(), "link established");
    // introduce ourselves and everyone we know at once
    let members = shared.driver.read(|c| c.members().infos());
    let _ = tx.try_send(PeerMsg::Gossip { members });
    tokio::spawn(run_link(
        shared.clone(),
        info.name.clone(),
        (conn, tasks),
        send,
        recv,
        rx,
    ));
}

async fn run_link(
    shared: Arc<Shared>,
    peer: String,
    (conn, tasks): (Connection, ConnTasks),
    send: SendStream,
    recv: RecvStream,
    rx: mpsc::Receiver<PeerMsg>,
) {
    let id = conn.stable_id();
    let result = tokio::select! {
        r = read_link(&shared, &peer, recv) => r,
        r = write_link(&conn, send, rx) => r,
        r = read_datagrams(&shared, &peer, &conn) => r,
        r = accept_streams(&shared, &peer, &conn, &tasks) => r,
    };
    if let Err(e) = &result {
        warn!(%peer, error = %e, "closing link after a protocol error");
        conn.close(close::PROTOCOL.into(), e.to_string().as_bytes());
    }
    let reason = conn.closed().await;
    let end = match &reason {
        quinn::ConnectionError::ApplicationClosed(c) if c.error_code == close::SHUTDOWN.into() => {
            LinkEnd::Left
        }
        quinn::ConnectionError::ApplicationClosed(c)
            if c.error_code == close::CLUSTER_DOWN.into() =>
        {
            LinkEnd::ClusterDown
        }
        _ => LinkEnd::Broken,
    };
    let now = Instant::now();
    if shared.links.remove_if(&peer, id) {
        if let Some(mut d) = shared.dials.get_mut(&peer) {
            d.unlinked_since = Some(now);
            d.session = false;
        }
        shared.driver.with(|c, now| c.link_closed(&peer, end, now));
        if end != LinkEnd::Broken {
            info!(%peer, "peer left the cluster");
        } else {
            info!(%peer, %reason, "link closed");
        }
    }
}

async fn read_link(
    shared: &Arc<Shared>,
    peer: &str,
    mut recv: RecvStream,
) -> Result<(), WireError> {
    loop {
        match wire::read_frame::<PeerMsg>(&mut recv, MAX_CONTROL_FRAME).await {
            Ok(Some(PeerMsg::Gossip { members })) => {
                for m in members {
                    shared.learn(m);
                }
            }
            Ok(Some(other)) => {
                return Err(WireError::Stream(format!(
                    "unexpected message on an established link: {other:?}"
                )))
            }
            Ok(None) => return Ok(()),
            // the connection went away: not a protocol error
            Err(WireError::Stream(e)) => {
                debug!(%peer, error = %e, "link stream ended");
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
}

async fn write_link(
    conn: &Connection,
    mut send: SendStream,
    mut rx: mpsc::Receiver<PeerMsg>,
) -> Result<(), WireError> {
    loop {
        let msg = tokio::select! {
            m = rx.recv() => m,
            _ = conn.closed() => None,
        };
        let Some(msg) = msg else { return Ok(()) };
        if wire::write_frame(&mut send, &msg).await.is_err() {
            return Ok(());
        }
    }
}

async fn read_datagrams(
    shared: &Arc<Shared>,
    peer: &str,
    conn: &Connection,
) -> Result<(), WireError> {
    let id = conn.stable_id();
    loop {
        let Ok(bytes) = conn.read_datagram().await else {
            return Ok(());
        };
        let hb: crate::membership::Heartbeat = tether_actors::codec::decode_named(&bytes)?;
        // a heartbeat counts only on the pair's current link (not one being replaced)
        if shared.links.id_of(peer) == Some(id) {
            shared.driver.with(|c, now| c.heartbeat(peer, &hb, now));
        }
    }
}

async fn accept_streams(
    shared: &Arc<Shared>,
    peer: &str,
    conn: &Connection,
    tasks: &ConnTasks,
) -> Result<(), WireError> {
    loop {
        let Ok((send, mut recv)) = conn.accept_bi().await else {
            return Ok(());
        };
        let tag = timeout(shared.timing.connect_timeout, wire::read_tag(&mut recv))
            .await
            .map_err(|_| WireError::Timeout(shared.timing.connect_timeout))??;
        match tag {
            StreamTag::Ractor => {
                super::ractor_bridge::accept_session(shared, conn, peer, send, recv)
            }
            StreamTag::Agents => {
                let inbound = shared.inbound.clone();
                let peer = peer.to_owned();
                let conn = conn.clone();
                // in the connection's task: see `net::transport::conn_task`
                tasks.spawn(async move {
                    if let Err(e) = inbound.serve(peer.clone(), send, recv).await {
                        warn!(%peer, error = %e, "closing link after a bad agent frame");
                        conn.close(close::PROTOCOL.into(), e.to_string().as_bytes());
                    }
                });
            }
            StreamTag::Link => {
                return Err(WireError::Stream(
                    "a second link stream on one connection".into(),
                ))
            }
        }
    }
}
