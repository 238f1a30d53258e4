//! The remote anchors, each a pair of child processes of this binary:
//!
//! - **ractor_cluster over its own TCP transport**: a receiver process runs a `NodeServer` and a
//!   sink actor in process group `tether-bench`; a sender process connects, finds the sink
//!   through the group, casts N 64-byte messages, then calls `count` until all N arrived; then
//!   it times M `echo` calls.
//! - **raw quinn**: the same mutual-TLS endpoint configuration as a tether node, without
//!   tether. One bidi stream carries N length-prefixed 64-byte frames (buffered writes, as any
//!   serious sender would) and a zero-length frame asking for the count; a second stream times
//!   M echoes of one frame.
//!
//! A receiver prints `ready <port or addr>` and serves until its stdin closes (the parent
//! holds it), so a crashed bench leaves no process behind. A sender prints one JSON line:
//! `{"tell": msg/s, "ask_p50_us": .., "ask_p99_us": ..}`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ractor::message::{BoxedDowncastErr, SerializedMessage};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader as TokioBufReader, BufWriter};

use super::report::percentile;
use tether_cluster::net::certs::CertDir;
use tether_cluster::net::fault::FaultLayer;
use tether_cluster::net::transport::{node_endpoint, QuicTiming};

/// Size of every payload the remote rows send.
pub(super) const PAYLOAD: usize = 64;
const GROUP: &str = "tether-bench";
const COOKIE: &str = "tether-bench";
/// How long a sender waits for its receiver to be reachable, and for any one reply.
const DEADLINE: Duration = Duration::from_secs(30);

/// What one sender run measured.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(super) struct SendResult {
    /// Messages per second, first send to the count that confirms all arrived.
    pub(super) tell: f64,
    /// Round trip of one 64-byte echo, median.
    pub(super) ask_p50_us: f64,
    /// Round trip of one 64-byte echo, 99th percentile.
    pub(super) ask_p99_us: f64,
}

// ---------------------------------------------------------------- ractor_cluster over TCP

/// The anchor's message. Serialized by hand (what `#[derive(RactorClusterMessage)]` would
/// generate), so no extra dependency is needed.
enum AnchorMsg {
    Data(Vec<u8>),
    Echo(Vec<u8>, RpcReplyPort<Vec<u8>>),
    Count(RpcReplyPort<Vec<u8>>),
}

impl ractor::Message for AnchorMsg {
    fn serializable() -> bool {
        true
    }

    fn serialize(self) -> Result<SerializedMessage, BoxedDowncastErr> {
        Ok(match self {
            Self::Data(args) => SerializedMessage::Cast {
                variant: "data".into(),
                args,
                metadata: None,
            },
            Self::Echo(args, reply) => SerializedMessage::Call {
                variant: "echo".into(),
                args,
                reply,
                metadata: None,
            },
            Self::Count(reply) => SerializedMessage::Call {
                variant: "count".into(),
                args: Vec::new(),
                reply,
                metadata: None,
            },
        })
    }

    fn deserialize(bytes: SerializedMessage) -> Result<Self, BoxedDowncastErr> {
        match bytes {
            SerializedMessage::Cast { variant, args, .. } if variant == "data" => {
                Ok(Self::Data(args))
            }
            SerializedMessage::Call {
                variant,
                args,
                reply,
                ..
            } => match variant.as_str() {
                "echo" => Ok(Self::Echo(args, reply)),
                "count" => Ok(Self::Count(reply)),
                _ => Err(BoxedDowncastErr),
            },
            _ => Err(BoxedDowncastErr),
        }
    }
}

struct AnchorSink;

impl Actor for AnchorSink {
    type Msg = AnchorMsg;
    type State = u64;
    type Arguments = ();

    async fn pre_start(&self, _me: ActorRef<AnchorMsg>, _: ()) -> Result<u64, ActorProcessingErr> {
        Ok(0)
    }

    async fn handle(
        &self,
        _me: ActorRef<AnchorMsg>,
        msg: AnchorMsg,
        n: &mut u64,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AnchorMsg::Data(_) => *n += 1,
            AnchorMsg::Echo(b, r) => {
                *n += 1;
                let _ = r.send(b);
            }
            AnchorMsg::Count(r) => {
                let _ = r.send(n.to_le_bytes().to_vec());
            }
        }
        Ok(())
    }
}

async fn ractor_node_server(
    name: &str,
    port: u16,
) -> anyhow::Result<ActorRef<ractor_cluster::NodeServerMessage>> {
    let server = ractor_cluster::NodeServer::new(
        port,
        COOKIE.into(),
        name.into(),
        "localhost".into(),
        None,
        None,
    )
    .with_listen_addr(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    let (actor, _) = Actor::spawn(None, server, ()).await?;
    Ok(actor)
}

/// Child: the ractor_cluster receiver.
pub(super) async fn ractor_recv() -> anyhow::Result<()> {
    // ractor_cluster takes a port, not a listener: borrow a free one from the OS
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let _server = ractor_node_server("recv", port).await?;
    let (sink, _) = Actor::spawn(None, AnchorSink, ()).await?;
    ractor::pg::join(GROUP.into(), vec![sink.get_cell()]);
    println!("ready {port}");
    wait_stdin_closed().await;
    Ok(())
}

async fn ractor_count(sink: &ActorRef<AnchorMsg>) -> anyhow::Result<u64> {
    match sink.call(AnchorMsg::Count, Some(DEADLINE)).await? {
        ractor::rpc::CallResult::Success(b) => Ok(u64::from_le_bytes(
            b.as_slice()
                .try_into()
                .context("count reply is not 8 bytes")?,
        )),
        other => bail!("count: {other:?}"),
    }
}

/// Child: the ractor_cluster sender.
pub(super) async fn ractor_send(port: u16, count: u64, asks: u64) -> anyhow::Result<SendResult> {
    let me = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let server = ractor_node_server("send", me).await?;
    ractor_cluster::client_connect(&server, ("127.0.0.1", port))
        .await
        .map_err(|e| anyhow::anyhow!("connect to the ractor_cluster receiver: {e}"))?;
    let deadline = Instant::now() + DEADLINE;
    let cell = loop {
        if let Some(c) = ractor::pg::get_members(&GROUP.to_owned())
            .into_iter()
            .next()
        {
            break c;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the receiver's sink never appeared"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let sink: ActorRef<AnchorMsg> = cell.into();
    let base = ractor_count(&sink).await?;
    let payload = vec![7u8; PAYLOAD];
    let t0 = Instant::now();
    for _ in 0..count {
        sink.cast(AnchorMsg::Data(payload.clone()))?;
    }
    loop {
        let n = ractor_count(&sink).await?;
        if n >= base + count {
            anyhow::ensure!(n == base + count, "counted {} of {count}", n - base);
            break;
        }
        anyhow::ensure!(
            t0.elapsed() < DEADLINE * 4,
            "only {} of {count} arrived",
            n - base
        );
    }
    let tell = count as f64 / t0.elapsed().as_secs_f64();
    let mut rtts = Vec::with_capacity(asks as usize);
    for _ in 0..asks {
        let t = Instant::now();
        match sink
            .call(|r| AnchorMsg::Echo(payload.clone(), r), Some(DEADLINE))
            .await?
        {
            ractor::rpc::CallResult::Success(b) => anyhow::ensure!(b.len() == PAYLOAD),
            other => bail!("echo: {other:?}"),
        }
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(SendResult {
        tell,
        ask_p50_us: percentile(&rtts, 0.5),
        ask_p99_us: percentile(&rtts, 0.99),
    })
}

// ---------------------------------------------------------------- raw quinn

const MODE_STREAM: u8 = b'T';
const MODE_ECHO: u8 = b'E';

fn quinn_endpoint(
    certs: &Path,
    name: &str,
) -> anyhow::Result<(quinn::Endpoint, quinn::ClientConfig)> {
    let dir = CertDir::new(certs);
    let ca = dir.load_ca()?;
    let id = dir.load_node(name)?;
    let secret: [u8; 32] = rand::random();
    Ok(node_endpoint(
        "127.0.0.1:0".parse()?,
        &ca,
        &id,
        &secret,
        FaultLayer::new(1),
        QuicTiming::default(),
    )?)
}

/// Makes the certificates both raw quinn processes use (`qa` receives, `qb` sends).
pub(super) fn quinn_certs(dir: &Path) -> anyhow::Result<()> {
    let c = CertDir::new(dir);
    c.ensure_ca()?;
    c.ensure_node("qa")?;
    c.ensure_node("qb")?;
    Ok(())
}

/// Child: the raw quinn receiver.
pub(super) async fn quinn_recv(certs: &Path) -> anyhow::Result<()> {
    let (ep, _) = quinn_endpoint(certs, "qa")?;
    println!("ready {}", ep.local_addr()?);
    let serve = async {
        while let Some(inc) = ep.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = inc.await else { return };
                while let Ok((send, recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        if let Err(e) = quinn_serve_stream(send, recv).await {
                            eprintln!("raw quinn receiver: {e:#}");
                        }
                    });
                }
            });
        }
    };
    tokio::select! {
        _ = serve => {}
        _ = wait_stdin_closed() => {}
    }
    Ok(())
}

async fn quinn_serve_stream(
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
) -> anyhow::Result<()> {
    let mut recv = TokioBufReader::with_capacity(64 * 1024, recv);
    let mode = recv.read_u8().await?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut count = 0u64;
    loop {
        let len = match recv.read_u32().await {
            Ok(l) => l as usize,
            Err(_) => return Ok(()), // the sender finished the stream
        };
        anyhow::ensure!(len <= buf.len(), "frame of {len} bytes");
        if len == 0 {
            send.write_all(&count.to_be_bytes()).await?;
            continue;
        }
        recv.read_exact(&mut buf[..len]).await?;
        count += 1;
        if mode == MODE_ECHO {
            let mut frame = Vec::with_capacity(4 + len);
            frame.extend_from_slice(&(len as u32).to_be_bytes());
            frame.extend_from_slice(&buf[..len]);
            send.write_all(&frame).await?;
        }
    }
}

/// Child: the raw quinn sender.
pub(super) async fn quinn_send(
    certs: &Path,
    addr: SocketAddr,
    count: u64,
    asks: u64,
) -> anyhow::Result<SendResult> {
    let (ep, client) = quinn_endpoint(certs, "qb")?;
    let conn = tokio::time::timeout(DEADLINE, ep.connect_with(client, addr, "qa")?)
        .await
        .context("raw quinn connect timed out")??;

    let (send, mut recv) = conn.open_bi().await?;
    let mut send = BufWriter::with_capacity(64 * 1024, send);
    let mut frame = Vec::with_capacity(4 + PAYLOAD);
    frame.extend_from_slice(&(PAYLOAD as u32).to_be_bytes());
    frame.extend_from_slice(&[7u8; PAYLOAD]);
    let t0 = Instant::now();
    send.write_u8(MODE_STREAM).await?;
    for _ in 0..count {
        send.write_all(&frame).await?;
    }
    send.write_u32(0).await?;
    send.flush().await?;
    let n = tokio::time::timeout(DEADLINE * 4, recv.read_u64())
        .await
        .context("raw quinn count timed out")??;
    anyhow::ensure!(n == count, "raw quinn counted {n} of {count}");
    let tell = count as f64 / t0.elapsed().as_secs_f64();

    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&[MODE_ECHO]).await?;
    let mut back = vec![0u8; frame.len()];
    let mut rtts = Vec::with_capacity(asks as usize);
    for _ in 0..asks {
        let t = Instant::now();
        send.write_all(&frame).await?;
        tokio::time::timeout(DEADLINE, recv.read_exact(&mut back))
            .await
            .context("raw quinn echo timed out")??;
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    anyhow::ensure!(back == frame, "the echo differs from what was sent");
    let _ = send.finish();
    conn.close(0u32.into(), b"done");
    ep.wait_idle().await;
    Ok(SendResult {
        tell,
        ask_p50_us: percentile(&rtts, 0.5),
        ask_p99_us: percentile(&rtts, 0.99),
    })
}

// ---------------------------------------------------------------- the parent's side

async fn wait_stdin_closed() {
    let _ = tokio::task::spawn_blocking(|| {
        use std::io::Read;
        let mut buf = [0u8; 64];
        while let Ok(n) = std::io::stdin().read(&mut buf) {
            if n == 0 {
                return;
            }
        }
    })
    .await;
}

/// A running receiver child; dropping it closes its stdin and reaps it.
pub(super) struct Receiver {
    child: Child,
    stdin: Option<ChildStdin>,
    /// What it printed after `ready`.
    pub(super) at: String,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10)); // polling a child's exit
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("cannot find the tether-bench executable")
}

/// Starts `tether-bench --child MODE ARGS..` and waits for its `ready` line.
pub(super) fn start_receiver(mode: &str, args: &[String]) -> anyhow::Result<Receiver> {
    let mut child = Command::new(exe()?)
        .args(["--child", mode])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("start the {mode} child"))?;
    let stdin = child.stdin.take();
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("child stdout")?).read_line(&mut line)?;
    let Some(at) = line.trim().strip_prefix("ready ") else {
        let _ = child.kill();
        bail!("the {mode} child did not start: {line:?}");
    };
    Ok(Receiver {
        at: at.to_owned(),
        child,
        stdin,
    })
}

/// Runs a sender child to completion and parses its result.
pub(super) fn run_sender(mode: &str, args: &[String]) -> anyhow::Result<SendResult> {
    let out = Command::new(exe()?)
        .args(["--child", mode])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run the {mode} child"))?;
    anyhow::ensure!(
        out.status.success(),
        "the {mode} child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).with_context(|| format!("{mode} printed {text:?}"))
}
