//! ractor_cluster's node session, carried on a QUIC stream of the pair's link.
//!
//! ```text
//! NodeServer (ractor_cluster; TCP listener bound to 127.0.0.1:0, never used)
//!  └─ NodeSession per link, over a QuicStream (tag 0x01, opened by the link's dialer)
//! ```
//!
//! ractor's handshake announces a node name (`NAME@tether`). The certificate already told us
//! who the peer is; if the announced name differs, the session and its QUIC connection are
//! closed. ractor's own "disconnected" events (including those of its duplicate-connection
//! election) never change membership: only the failure detector does.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use quinn::{Connection, RecvStream, SendStream};
use ractor::{Actor, ActorRef};
use ractor_cluster::node::{NodeConnectionMode, NodeServerSessionInformation};
use ractor_cluster::{
    BoxRead, BoxWrite, ClusterBidiStream, NodeEventSubscription, NodeServer, NodeServerMessage,
};
use rustls_pki_types::CertificateDer;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::Shared;
use crate::identity::NodeInfo;
use crate::net::wire::{self, close, StreamTag};

/// The host part of every ractor node name; the node part is the tether node name.
const RACTOR_HOST: &str = "tether";

/// A QUIC bidi stream as ractor_cluster's transport.
struct QuicStream {
    send: SendStream,
    recv: RecvStream,
    label: String,
}

impl ClusterBidiStream for QuicStream {
    fn split(self: Box<Self>) -> (BoxRead, BoxWrite) {
        (Box::new(self.recv), Box::new(self.send))
    }

    fn peer_label(&self) -> Option<String> {
        Some(self.label.clone())
    }
}

fn label(peer: &str, conn: &Connection) -> String {
    format!("{peer}#{}", conn.stable_id())
}

fn parse_label(label: &str) -> Option<(&str, usize)> {
    let (name, id) = label.split_once('#')?;
    Some((name, id.parse().ok()?))
}

/// The cookie ractor's handshake checks: derived from the cluster CA, so every node of one
/// cluster has it and no other cluster does.
pub fn cookie(ca: &CertificateDer<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, ca.as_ref());
    digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(super) async fn start_node_server(
    me: &NodeInfo,
    ca: &CertificateDer<'static>,
) -> Result<ActorRef<NodeServerMessage>, String> {
    let server = NodeServer::new(
        0,
        cookie(ca),
        me.name.clone(),
        RACTOR_HOST.to_owned(),
        None,
        Some(NodeConnectionMode::Isolated),
    )
    .with_listen_addr(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let (actor, _) = Actor::spawn(None, server, ())
        .await
        .map_err(|e| e.to_string())?;
    Ok(actor)
}

enum Event {
    Authenticated(NodeServerSessionInformation),
    Disconnected(NodeServerSessionInformation),
}

struct Subscription(mpsc::UnboundedSender<Event>);

impl NodeEventSubscription for Subscription {
    fn node_session_opened(&self, _ses: NodeServerSessionInformation) {}

    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        let _ = self.0.send(Event::Disconnected(ses));
    }

    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        let _ = self.0.send(Event::Authenticated(ses));
    }
}

pub(super) fn subscribe(shared: &Arc<Shared>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _ = shared.ractor.cast(NodeServerMessage::SubscribeToEvents {
        id: "tether-membership".into(),
        subscription: Box::new(Subscription(tx)),
    });
    let weak = Arc::downgrade(shared);
    tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            let Some(shared) = weak.upgrade() else { return };
            match ev {
                Event::Authenticated(ses) => on_authenticated(&shared, ses),
                Event::Disconnected(ses) => on_disconnected(&shared, ses),
            }
        }
    });
}

fn on_authenticated(shared: &Shared, ses: NodeServerSessionInformation) {
    let Some((peer, id)) = parse_label(&ses.peer_addr) else {
        return;
    };
    let announced = ses
        .peer_name
        .as_ref()
        .map(|n| n.name.clone())
        .unwrap_or_default();
    let announced_node = announced.split('@').next().unwrap_or_default();
    if !shared.dials.contains_key(peer) {
        ses.actor.stop(Some("unknown peer".into()));
        return;
    }
    let conn = shared
        .links
        .get(peer)
        .filter(|l| l.conn.stable_id() == id)
        .map(|l| l.conn);
    if announced_node != peer {
        warn!(%peer, %announced, "ractor handshake announced another node name than the certificate; closing");
        ses.actor
            .stop(Some("announced name differs from certificate".into()));
        if let Some(c) = conn {
            c.close(
                close::PROTOCOL.into(),
                b"announced name differs from certificate",
            );
        }
        return;
    }
    if conn.is_some() {
        if let Some(mut d) = shared.dials.get_mut(peer) {
            d.session = true;
        }
        debug!(%peer, "ractor session authenticated");
    }
}

fn on_disconnected(shared: &Shared, ses: NodeServerSessionInformation) {
    let Some((peer, id)) = parse_label(&ses.peer_addr) else {
        return;
    };
    if shared.links.id_of(peer) != Some(id) {
        return;
    }
    if let Some(mut d) = shared.dials.get_mut(peer) {
        if d.session {
            d.session = false;
            debug!(%peer, "ractor session ended");
        }
    }
}

/// Opens the ractor session on a link this node dialed.
pub(super) async fn open_session(shared: &Arc<Shared>, conn: &Connection, peer: &str) {
    let (mut send, recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => {
            debug!(%peer, error = %e, "cannot open the ractor stream");
            return;
        }
    };
    if wire::write_tag(&mut send, StreamTag::Ractor).await.is_err() {
        return;
    }
    let stream = QuicStream {
        send,
        recv,
        label: label(peer, conn),
    };
    if let Err(e) = ractor_cluster::client_connect_external(&shared.ractor, Box::new(stream)).await
    {
        warn!(%peer, error = %e, "ractor session could not start");
    }
}

/// Hands an incoming ractor stream to the node server.
pub(super) fn accept_session(
    shared: &Shared,
    conn: &Connection,
    peer: &str,
    send: SendStream,
    recv: RecvStream,
) {
    let stream = QuicStream {
        send,
        recv,
        label: label(peer, conn),
    };
    if let Err(e) = shared
        .ractor
        .cast(NodeServerMessage::ConnectionOpenedExternal {
            stream: Box::new(stream),
            is_server: true,
        })
    {
        warn!(%peer, error = %e, "ractor node server is gone");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip() {
        assert_eq!(parse_label("r1#42"), Some(("r1", 42)));
        assert_eq!(parse_label("external"), None);
        assert_eq!(parse_label("r1#x"), None);
    }
}
