//! Connections between nodes: accepting, dialing, and the tasks of an established link.
//!
//! See [`crate::link`] for the protocol and the acceptor's rule; this file is its I/O.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use quinn::{Connection, RecvStream, SendStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tracing::{debug, info, warn};

use super::{Link, Shared};
use crate::identity::{validate_name, NodeInfo, ADMIN_NAME};
use crate::link::{self, Decision, LinkView};
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
            crate::control::serve(shared, conn).await;
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

async fn accept_peer(
    shared: &Arc<Shared>,
    conn: Connection,
    tasks: ConnTasks,
    name: &str,
) -> Result<(), DialError> {
    let deadline = shared.timing.connect_timeout;
    let (mut send, mut recv) = timeout(deadline, conn.accept_bi())
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
    let known_before = shared.peers.get(name).map(|p| p.info.incarnation);
    shared.merge(info.clone());
    let now = Instant::now();
    let decision = {
        let Some(p) = shared.peers.get(name) else {
            return Err(DialError::Refused("peer could not be registered".into()));
        };
        let view = LinkView {
            has_current: p.link.is_some(),
            current_silent: p.detector.is_silent(now),
            pending_dial: p.pending_dial,
            known_incarnation: known_before,
            i_am_designated: p.i_am_designated,
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
    if let Some(mut p) = shared.peers.get_mut(&name) {
        if p.dial_epoch != epoch {
            // a newer life of the peer was learned meanwhile; this attempt no longer counts
            return;
        }
        p.pending_dial = false;
        p.last_dial_end = Some(now);
        match &res {
            Ok(()) => p.failures = 0,
            Err(_) => p.failures = p.failures.saturating_add(1),
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
    let mut seeds = shared.seeds.lock().expect("seeds lock");
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
    let (connecting, tasks) = transport::capture(|| {
        shared.endpoint.connect_with(
            shared.client_cfg.clone(),
            addr,
            expected.unwrap_or(ANY_NODE_SNI),
        )
    });
    let connecting = connecting.map_err(|e| DialError::Connect(e.to_string()))?;
    let conn = timeout(deadline, connecting)
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
    // while this dial was in flight, the pair may have got a working link (the peer dialed
    // in, or a newer life of the peer was learned): then a hello would only make it flap
    let superseded = shared.peers.get(&name).is_some_and(|p| {
        let healthy_link = p
            .link
            .as_ref()
            .is_some_and(|l| l.conn.stable_id() != conn.stable_id())
            && !p.detector.is_silent(Instant::now());
        let stale_epoch = epoch.is_some_and(|e| e != p.dial_epoch);
        healthy_link || stale_epoch
    });
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
    shared.merge(info.clone());
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
    let old = {
        let Some(mut p) = shared.peers.get_mut(&info.name) else {
            conn.close(close::STALE.into(), b"unknown peer");
            return;
        };
        if info.incarnation < p.info.incarnation {
            drop(p);
            conn.close(close::STALE.into(), b"stale incarnation");
            return;
        }
        let old = p.link.replace(Link {
            conn: conn.clone(),
            tasks: tasks.clone(),
            tx: tx.clone(),
        });
        p.unlinked_since = None;
        p.session = false;
        p.left = false;
        old
    };
    if let Some(old) = old {
        if old.conn.stable_id() != conn.stable_id() {
            old.conn
                .close(close::REPLACED.into(), b"replaced by a newer connection");
        }
    }
    info!(peer = %info.name, dialed, remote = %conn.remote_address(), "link established");
    // introduce ourselves and everyone we know at once
    let _ = tx.try_send(PeerMsg::Gossip {
        members: shared.members(),
    });
    shared.bump();
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
    let left = matches!(&reason, quinn::ConnectionError::ApplicationClosed(c)
        if c.error_code == close::SHUTDOWN.into());
    let now = Instant::now();
    let mut changed = false;
    if let Some(mut p) = shared.peers.get_mut(&peer) {
        if p.link_id() == Some(id) {
            p.link = None;
            p.unlinked_since = Some(now);
            p.session = false;
            changed = true;
            if left {
                p.left = true;
                if let Some(t) = p.detector.left(now) {
                    shared.log_transition(&peer, t);
                }
            }
        }
    }
    if changed {
        if left {
            info!(%peer, "peer left the cluster");
            shared.agents.peer_lost(&peer);
        } else {
            info!(%peer, %reason, "link closed");
        }
        shared.bump();
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
                    shared.merge(m);
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
        let hb: wire::Heartbeat = tether_actors::codec::decode(&bytes)?;
        let now = Instant::now();
        let mut changed = false;
        let mut released = false;
        if let Some(mut p) = shared.peers.get_mut(peer) {
            if p.link_id() == Some(id) {
                p.says_im_down = hb.down;
                p.reports_unreachable = hb.unreachable;
                if hb.incarnation == p.detector.incarnation() {
                    p.fences_seen = p.fences_seen.max(hb.fences);
                    p.fenced_seen = hb.fenced;
                }
                // a peer decided down is heard again only once it has fenced since (or was
                // fenced then and still is, or restarted): until then it may still run the
                // activations that were failed over
                let held = p.down_at_fences.is_some_and(|(at, was_fenced)| {
                    let same_life = hb.incarnation <= p.detector.incarnation();
                    let fenced_since =
                        hb.fences > at || (was_fenced && hb.fenced && hb.fences == at);
                    same_life && !fenced_since
                });
                if !held {
                    if p.down_at_fences.take().is_some() {
                        released = true;
                    }
                    if let Some(t) = p.detector.heartbeat(hb.incarnation, now) {
                        shared.log_transition(peer, t);
                        changed = true;
                    }
                }
            }
        }
        if released {
            tracing::info!(
                peer,
                "a node decided down has fenced (or restarted): taken back"
            );
            shared.agents.set_quarantined(peer, false);
        }
        if changed {
            shared.bump();
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
                let sys = shared.agents.clone();
                let peer = peer.to_owned();
                let conn = conn.clone();
                // in the connection's task: see `transport::conn_task`
                tasks.spawn(async move {
                    if let Err(e) = sys.serve(peer.clone(), send, recv).await {
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
