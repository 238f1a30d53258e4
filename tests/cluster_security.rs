//! Who gets a session: only certificates of the cluster CA whose name matches what they
//! announce, and bad frames close only the connection that sent them.
//!
//! These tests play the attacker in-process with quinn and rustls against real node
//! processes started by `tether up`.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, ConnectionError, Endpoint};
use ractor_cluster::{BoxRead, BoxWrite, ClusterBidiStream};
use support::Cluster;
use tether::cluster::net::certs::{CertDir, Identity};
use tether::cluster::net::tls;
use tether::cluster::net::wire::{self, close, PeerMsg, StreamTag, PROTOCOL_VERSION};
use tether::cluster::{NodeInfo, Role};

fn endpoint(cfg: quinn::ClientConfig) -> Endpoint {
    let mut ep = Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(cfg);
    ep
}

fn peer_client(ca_dir: &CertDir, id: &Identity, alpn: &[u8]) -> Endpoint {
    let ca = ca_dir.load_ca().unwrap();
    let cfg = quinn::ClientConfig::new(Arc::new(tls::client_config(&ca, id, alpn).unwrap()));
    endpoint(cfg)
}

/// The connection gets no session: the handshake fails, or the node closes it soon after.
async fn assert_refused(conn: Result<Connection, ConnectionError>) -> Option<ConnectionError> {
    match conn {
        Err(_) => None,
        Ok(c) => {
            // try to use it; the node must close it
            if let Ok((mut send, _recv)) = c.open_bi().await {
                let _ = send.write_all(&[StreamTag::Link as u8]).await;
            }
            let reason = tokio::time::timeout(Duration::from_secs(5), c.closed())
                .await
                .expect("the node closes a connection it refuses");
            Some(reason)
        }
    }
}

fn closed_with(reason: &ConnectionError, code: u32) -> bool {
    matches!(reason, ConnectionError::ApplicationClosed(c) if c.error_code == code.into())
}

fn node_addr(c: &Cluster, name: &str) -> SocketAddr {
    c.record(name).0.parse().unwrap()
}

fn hello(name: &str, addr: SocketAddr) -> PeerMsg {
    PeerMsg::Hello {
        protocol: PROTOCOL_VERSION,
        node: NodeInfo {
            name: name.into(),
            role: Role::Remote,
            addr,
            incarnation: 1,
            kinds: Vec::new(),
            caps: Vec::new(),
        },
        replace: false,
    }
}

/// Connects as `mallory` (a valid certificate of the cluster CA), sends an honest hello and
/// returns the connection with its link stream, after the node's answer.
async fn linked_as_mallory(
    certs: &CertDir,
    target: SocketAddr,
) -> (
    Endpoint,
    Connection,
    quinn::SendStream,
    quinn::RecvStream,
    PeerMsg,
) {
    certs.ensure_node("mallory").unwrap();
    let ep = peer_client(certs, &certs.load_node("mallory").unwrap(), tls::ALPN_PEER);
    let conn = ep.connect(target, "r1").unwrap().await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    wire::write_tag(&mut send, StreamTag::Link).await.unwrap();
    wire::write_frame(&mut send, &hello("mallory", ep.local_addr().unwrap()))
        .await
        .unwrap();
    let ack: PeerMsg = wire::read_frame(&mut recv, 1 << 20).await.unwrap().unwrap();
    (ep, conn, send, recv, ack)
}

/// After each attack the real nodes still see each other up, with no state change.
fn assert_cluster_unharmed(c: &Cluster, changes_before: u64) {
    c.wait(&["r1"], &["r2"], "up", Duration::from_secs(1))
        .expect("r1 still sees r2");
    c.wait(&["r2"], &["r1"], "up", Duration::from_secs(1))
        .expect("r2 still sees r1");
    let real = real_changes(c);
    assert_eq!(real, changes_before, "no real peer changed state");
}

fn real_changes(c: &Cluster) -> u64 {
    let st = c.status();
    st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|n| n["peers"].as_array().unwrap().iter())
        .filter(|p| p["name"] == "r1" || p["name"] == "r2")
        .map(|p| p["changes"].as_u64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_certificate_or_from_another_ca_gets_no_session() {
    let c = Cluster::up("nocert", 2, 0);
    let changes = real_changes(&c);
    let certs = CertDir::new(&c.dir);
    let target = node_addr(&c, "r1");

    // no client certificate at all
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certs.load_ca().unwrap()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![tls::ALPN_PEER.to_vec()];
    let ep = endpoint(quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(cfg).unwrap(),
    )));
    let conn = ep.connect(target, "r1").unwrap().await;
    assert_refused(conn).await;

    // a certificate from another CA, even with a cluster node's name
    let other = CertDir::new(support::state_dir("otherca"));
    other.ensure_ca().unwrap();
    other.ensure_node("r2").unwrap();
    let ep = peer_client(&certs, &other.load_node("r2").unwrap(), tls::ALPN_PEER);
    let conn = ep.connect(target, "r1").unwrap().await;
    assert_refused(conn).await;

    // a node certificate on the operator's control plane
    let ep = peer_client(&certs, &certs.load_node("r2").unwrap(), tls::ALPN_CONTROL);
    let reason = assert_refused(ep.connect(target, "r1").unwrap().await).await;
    if let Some(r) = reason {
        assert!(closed_with(&r, close::FORBIDDEN), "{r}");
    }
    assert_cluster_unharmed(&c, changes);
    std::fs::remove_dir_all(other.root()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_announcing_another_name_than_the_certificate_is_closed() {
    let c = Cluster::up("hello", 2, 0);
    let changes = real_changes(&c);
    let certs = CertDir::new(&c.dir);
    certs.ensure_node("mallory").unwrap();
    let ep = peer_client(&certs, &certs.load_node("mallory").unwrap(), tls::ALPN_PEER);
    let conn = ep
        .connect(node_addr(&c, "r1"), "r1")
        .unwrap()
        .await
        .unwrap();
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    wire::write_tag(&mut send, StreamTag::Link).await.unwrap();
    wire::write_frame(&mut send, &hello("r2", ep.local_addr().unwrap()))
        .await
        .unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .unwrap();
    assert!(closed_with(&reason, close::PROTOCOL), "{reason}");
    let st = c.status();
    let r1 = Cluster::node(&st, "r1");
    assert!(
        r1["peers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["name"] != "mallory"),
        "a refused hello does not make its sender a member"
    );
    assert_cluster_unharmed(&c, changes);
}

struct QuicStream(quinn::SendStream, quinn::RecvStream);

impl ClusterBidiStream for QuicStream {
    fn split(self: Box<Self>) -> (BoxRead, BoxWrite) {
        (Box::new(self.1), Box::new(self.0))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ractor_handshake_announcing_another_name_gets_no_session() {
    let c = Cluster::up("ractorname", 2, 0);
    let changes = real_changes(&c);
    let certs = CertDir::new(&c.dir);
    // an honest link hello as mallory...
    let (_ep, conn, _send, _recv, ack) = linked_as_mallory(&certs, node_addr(&c, "r1")).await;
    assert!(
        matches!(ack, PeerMsg::HelloAck { accepted: true, .. }),
        "{ack:?}"
    );

    // ...then a ractor session that claims to be node "alice"
    let server = ractor_cluster::NodeServer::new(
        0,
        tether::cluster::node::ractor_cookie(&certs.load_ca().unwrap()),
        "alice".into(),
        "tether".into(),
        None,
        Some(ractor_cluster::node::NodeConnectionMode::Isolated),
    )
    .with_listen_addr("127.0.0.1".parse().unwrap());
    let (server, _) = ractor::Actor::spawn(None, server, ()).await.unwrap();
    let (mut rs, rr) = conn.open_bi().await.unwrap();
    wire::write_tag(&mut rs, StreamTag::Ractor).await.unwrap();
    ractor_cluster::client_connect_external(&server, Box::new(QuicStream(rs, rr)))
        .await
        .unwrap();

    let reason = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("the node closes the connection");
    assert!(closed_with(&reason, close::PROTOCOL), "{reason}");
    let st = c.status();
    assert_eq!(
        Cluster::view(&st, "r1", "mallory")["session"],
        false,
        "no session for mallory"
    );
    server.stop(None);
    assert_cluster_unharmed(&c, changes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_or_oversized_frames_close_only_that_connection() {
    let c = Cluster::up("garbage", 2, 0);
    let changes = real_changes(&c);
    let certs = CertDir::new(&c.dir);
    certs.ensure_node("mallory").unwrap();
    let id = certs.load_node("mallory").unwrap();
    let target = node_addr(&c, "r1");

    // each attack: (what is sent after the tag byte, whether a good hello goes first)
    let garbage_frame = [0u8, 0, 0, 5, 0xc1, 0xc1, 0xc1, 0xc1, 0xc1];
    let oversized = [0x7f, 0xff, 0xff, 0xff, 0x00];
    let attacks: Vec<(&str, Vec<u8>, bool)> = vec![
        ("garbage hello", garbage_frame.to_vec(), false),
        ("oversized hello", oversized.to_vec(), false),
        (
            "garbage on an established link",
            garbage_frame.to_vec(),
            true,
        ),
        ("oversized on an established link", oversized.to_vec(), true),
    ];
    for (what, bytes, after_hello) in attacks {
        let ep = peer_client(&certs, &id, tls::ALPN_PEER);
        let conn = ep.connect(target, "r1").unwrap().await.unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        wire::write_tag(&mut send, StreamTag::Link).await.unwrap();
        if after_hello {
            wire::write_frame(&mut send, &hello("mallory", ep.local_addr().unwrap()))
                .await
                .unwrap();
            let ack: PeerMsg = wire::read_frame(&mut recv, 1 << 20).await.unwrap().unwrap();
            assert!(matches!(ack, PeerMsg::HelloAck { .. }), "{what}: {ack:?}");
        }
        send.write_all(&bytes).await.unwrap();
        let reason = tokio::time::timeout(Duration::from_secs(5), conn.closed())
            .await
            .unwrap_or_else(|_| panic!("{what}: the node must close the connection"));
        assert!(closed_with(&reason, close::PROTOCOL), "{what}: {reason}");
    }

    // an unknown stream tag and a garbage heartbeat datagram on an accepted link
    for what in ["unknown stream tag", "garbage datagram"] {
        let (_ep, conn, _send, _recv, _ack) = linked_as_mallory(&certs, target).await;
        if what == "unknown stream tag" {
            let (mut s2, _r2) = conn.open_bi().await.unwrap();
            s2.write_all(&[0x7f]).await.unwrap();
        } else {
            conn.send_datagram(bytes::Bytes::from_static(&[0xc1, 0xc1, 0xc1]))
                .unwrap();
        }
        let reason = tokio::time::timeout(Duration::from_secs(5), conn.closed())
            .await
            .unwrap_or_else(|_| panic!("{what}: the node must close the connection"));
        assert!(closed_with(&reason, close::PROTOCOL), "{what}: {reason}");
    }
    assert_cluster_unharmed(&c, changes);
}

/// An operator connection that sends a request in a form other than the named, versioned one
/// gets a clear error and changes nothing: a bare enum index (`0x04` was once `Shutdown`), a
/// bare request without a version, and a version this node does not speak.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_requests_decode_only_from_their_named_versioned_form() {
    use tether::cluster::control::protocol::{ControlRequest, ControlResponse, Versioned};
    let c = Cluster::up("ctl-forms", 1, 0);
    let certs = CertDir::new(&c.dir);
    let ep = peer_client(&certs, &certs.load_admin().unwrap(), tls::ALPN_CONTROL);
    let conn = ep
        .connect(node_addr(&c, "r1"), "r1")
        .unwrap()
        .await
        .unwrap();
    use tether::actors::codec::encode;
    let frames: Vec<(&str, Vec<u8>, &str)> = vec![
        ("bare index", vec![0x04], "not a versioned control request"),
        (
            "bare request",
            encode(&ControlRequest::Shutdown).unwrap(),
            "not a versioned control request",
        ),
        (
            "later version",
            encode(&Versioned {
                v: 99,
                msg: ControlRequest::Shutdown,
            })
            .unwrap(),
            "version 99 is not spoken by this node",
        ),
    ];
    for (what, body, expect) in frames {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        send.write_all(&frame).await.unwrap();
        let _ = send.finish();
        let resp: ControlResponse =
            tokio::time::timeout(Duration::from_secs(5), wire::read_frame(&mut recv, 1 << 20))
                .await
                .unwrap_or_else(|_| panic!("{what}: no answer"))
                .unwrap()
                .unwrap();
        match resp {
            ControlResponse::Error { message } => {
                assert!(message.contains(expect), "{what}: {message}")
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    // nothing was shut down
    let st = c.status();
    assert_eq!(Cluster::node(&st, "r1")["name"], "r1");
}
