//! The remote rows: two tether node processes over QUIC with mutual TLS.
//!
//! This process runs node `b1` (the sender); a child `tether node` process runs `b2`, which
//! hosts a `sink` agent. Tells carry 64-byte payloads through `AgentRef`, and the row's time
//! ends when the sink's count confirms that every one arrived. Asks are 64-byte echoes.
//! Remote spawns are get-or-spawns of fresh `sink` agents on `b2`, timed one by one.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use tether::{Durability, Kinds, Node};
use tether_actors::builtin::{Counter, CounterMsg, Sink, SinkMsg, SinkReply};
use tether_actors::AgentRef;
use tether_cluster::net::certs::CertDir;

use super::anchors::PAYLOAD;
use super::local::node_in;
use super::report::percentile;

const DEADLINE: Duration = Duration::from_secs(30);

/// `b1` here and `b2` in a child process, both up.
pub(super) struct Pair {
    pub(super) node: Node,
    child: Child,
    dir: PathBuf,
}

impl Pair {
    pub(super) async fn start() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("tether-bench-remote-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let node = node_in(&dir, "b1", Vec::new()).await?;
        CertDir::new(&dir).ensure_node("b2")?;
        let child = spawn_peer(&dir, &node.info().addr.to_string())?;
        let pair = Self { node, child, dir };
        pair.node
            .wait_peers_up(1, DEADLINE)
            .await
            .map_err(|e| anyhow::anyhow!("b2 did not join: {e}"))?;
        Ok(pair)
    }

    pub(super) async fn stop(mut self) {
        self.node.shutdown().await;
        // SAFETY: kill(2) with a pid this process spawned and still owns (not yet reaped)
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `b2` in a child process (this binary, `--child node`): a node as `tether node`
/// runs one, logging with the default filter (or `RUST_LOG`) to `b2.log` in `dir`.
fn spawn_peer(dir: &Path, seed: &str) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("cannot find the tether-bench executable")?;
    let log_path = dir.join("b2.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let mut child = Command::new(exe)
        .args(["--child", "node", "--to", seed, "--certs"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .context("start node b2")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("b2 stdout")?).read_line(&mut line)?;
    if !line.starts_with("ready ") {
        let _ = child.kill();
        let _ = child.wait();
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        bail!("node b2 did not start: {line:?}; its log:\n{log}");
    }
    Ok(child)
}

/// The child side of [`spawn_peer`]: node `b2` with the demonstration kinds, joined through
/// `seed`, its state in `dir`, until SIGTERM.
pub(super) async fn peer_node(dir: &Path, seed: std::net::SocketAddr) -> anyhow::Result<()> {
    let node = Node::builder("b2")
        .state_dir(dir)
        .seed(seed)
        .fault_seed(1)
        .kinds(
            Kinds::builtin()
                .with_demo(dir)
                .register::<super::ballast::Ballast>(),
        )
        .start()
        .await?;
    println!("ready addr={}", node.info().addr);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    node.shutdown().await;
    Ok(())
}

async fn count(sink: &AgentRef<Sink>) -> anyhow::Result<u64> {
    match sink.ask(SinkMsg::Count, DEADLINE).await? {
        SinkReply::Count(n) => Ok(n),
        other => bail!("count answered {other:?}"),
    }
}

/// Messages per second: the first tell to the count confirming all `n` arrived.
pub(super) async fn tell_throughput(pair: &Pair, n: u64, key: &str) -> anyhow::Result<f64> {
    let sink: AgentRef<Sink> = pair
        .node
        .spawn(key, serde_json::Value::Null)
        .on("b2")
        .await?;
    anyhow::ensure!(count(&sink).await? == 0, "sink {key} is not fresh");
    let payload = Bytes::from(vec![7u8; PAYLOAD]);
    let t0 = Instant::now();
    for _ in 0..n {
        sink.tell(SinkMsg::Data(payload.clone()))
            .map_err(|e| anyhow::anyhow!("tell: {e}"))?;
    }
    loop {
        let got = count(&sink).await?;
        if got >= n {
            anyhow::ensure!(got == n, "counted {got} of {n}");
            break;
        }
        anyhow::ensure!(t0.elapsed() < DEADLINE * 4, "only {got} of {n} arrived");
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

/// Round trips of 64-byte echoes, in microseconds: (p50, p99).
pub(super) async fn ask_rtt(pair: &Pair, n: u64, key: &str) -> anyhow::Result<(f64, f64)> {
    let sink: AgentRef<Sink> = pair
        .node
        .spawn(key, serde_json::Value::Null)
        .on("b2")
        .await?;
    let payload = Bytes::from(vec![7u8; PAYLOAD]);
    let mut rtts = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let t = Instant::now();
        match sink.ask(SinkMsg::Echo(payload.clone()), DEADLINE).await? {
            SinkReply::Echo(b) => anyhow::ensure!(b.len() == PAYLOAD, "echo of {} bytes", b.len()),
            other => bail!("echo answered {other:?}"),
        }
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok((percentile(&rtts, 0.5), percentile(&rtts, 0.99)))
}

/// p50 of asks to a counter in `acked` mode on `b2` (its replica is `b1`, the only other
/// remote node) and of the same asks to a counter in `none` mode, alternating, in
/// microseconds.
pub(super) async fn acked_ask_p50(pair: &Pair, n: u64, round: usize) -> anyhow::Result<(f64, f64)> {
    let acked: AgentRef<Counter> = pair
        .node
        .spawn(&format!("acked-{round}"), None)
        .on("b2")
        .durability(Durability::Acked)
        .await?;
    let plain: AgentRef<Counter> = pair
        .node
        .spawn(&format!("plain-{round}"), None)
        .on("b2")
        .await?;
    let (mut a, mut p) = (
        Vec::with_capacity(n as usize),
        Vec::with_capacity(n as usize),
    );
    for i in 1..=n {
        for (c, lat) in [(&acked, &mut a), (&plain, &mut p)] {
            let t = Instant::now();
            let got = c.ask(CounterMsg::Inc, DEADLINE).await?;
            lat.push(t.elapsed().as_secs_f64() * 1e6);
            anyhow::ensure!(got == i as i64, "counted {got} of {i}");
        }
    }
    Ok((percentile(&a, 0.5), percentile(&p, 0.5)))
}

/// p50 of writing 64 bytes to a file in the nodes' state directory and `fsync`ing it, in
/// microseconds: what one durable commit costs on this disk at least.
pub(super) fn fsync_p50_us(pair: &Pair, n: u64) -> anyhow::Result<f64> {
    use std::io::Write;
    let path = pair.dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path)?;
    let mut lat = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let t = Instant::now();
        f.write_all(&[7u8; 64])?;
        f.sync_data()?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let _ = std::fs::remove_file(&path);
    Ok(percentile(&lat, 0.5))
}

/// Latency of get-or-spawning a fresh agent on the other node, in milliseconds: (p50, p99).
pub(super) async fn spawn_latency(pair: &Pair, n: u64, round: usize) -> anyhow::Result<(f64, f64)> {
    let mut lat = Vec::with_capacity(n as usize);
    for i in 0..n {
        let t = Instant::now();
        pair.node
            .spawn::<Sink>(&format!("spawn-{round}-{i}"), serde_json::Value::Null)
            .on("b2")
            .await?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok((percentile(&lat, 0.5), percentile(&lat, 0.99)))
}
