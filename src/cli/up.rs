//! `tether up` and `tether down`: a local cluster of node processes on loopback.
//!
//! `up` is a small supervisor: it starts the first remote node, seeds every other node with
//! its address (they find each other by gossip), waits until every node sees every other `up`
//! (an event-driven wait on each node, not a poll), and then either returns (`--detach`) or
//! stays until Ctrl-C and stops them all cleanly. Node logs go to `DIR/nodes/NAME/node.log`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use tether_cluster::net::certs::CertDir;
use tether_cluster::{ControlRequest, ControlResponse, NodeStatus, PeerState, Role};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::common::{self, connect_all, human_ms, pid_alive, print_table, CONTROL_TIMEOUT};
use super::StateDirArg;

#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// Number of remote (backend) nodes, named r1, r2, ...
    #[arg(long, default_value_t = 2)]
    remote: usize,
    /// Number of local (device) nodes, named l1, l2, ...
    #[arg(long, default_value_t = 1)]
    local: usize,
    /// Return once the cluster is up and leave the nodes running (stop them with `tether down`).
    #[arg(long)]
    detach: bool,
    /// How long to wait for the cluster to form.
    #[arg(long, default_value = "60s", value_parser = common::parse_duration)]
    timeout: Duration,
    /// Start the nodes without the demonstration kinds (flaky, sleeper, sink, ledger, audit); see
    /// `tether node --demo-kinds`.
    #[arg(long)]
    no_demo_kinds: bool,
    #[command(flatten)]
    dir: StateDirArg,
}

struct Started {
    name: String,
    child: Child,
    addr: SocketAddr,
}

pub(crate) async fn up(a: UpArgs) -> anyhow::Result<ExitCode> {
    let dir = a.dir.state_dir.clone();
    if a.remote + a.local == 0 {
        bail!("a cluster needs at least one node: give --remote or --local a positive number");
    }
    let running: Vec<_> = common::records(&dir)
        .into_iter()
        .filter(|r| pid_alive(r.pid))
        .collect();
    if !running.is_empty() {
        let names: Vec<String> = running
            .iter()
            .map(|r| format!("{} (pid {})", r.name, r.pid))
            .collect();
        eprintln!(
            "a cluster is already running in {}: {}\nsee it with `tether status`, stop it with `tether down`",
            dir.display(),
            names.join(", ")
        );
        return Ok(ExitCode::FAILURE);
    }

    // handle Ctrl-C and SIGTERM from here on: a signal during start-up must stop the nodes
    // already started, not kill `up` and orphan them
    let mut signals = Signals::install()?;
    let t0 = Instant::now();
    let names: Vec<(String, Role)> = (1..=a.remote)
        .map(|i| (format!("r{i}"), Role::Remote))
        .chain((1..=a.local).map(|i| (format!("l{i}"), Role::Local)))
        .collect();
    let certs = CertDir::new(&dir);
    if certs
        .ensure_ca()
        .with_context(|| format!("creating a dev CA in {}", dir.display()))?
    {
        println!("created a dev CA in {}", dir.display());
    }
    certs.ensure_admin()?;
    for (n, _) in &names {
        certs.ensure_node(n)?;
    }

    // the first node is the seed of all the others
    let exe = std::env::current_exe().context("cannot find the tether executable")?;
    let demo = !a.no_demo_kinds;
    let first = spawn_node(&exe, &dir, &names[0].0, names[0].1, &[], demo).await?;
    let seed = [first.addr];
    let mut starting = tokio::task::JoinSet::new();
    for (i, (n, role)) in names.iter().enumerate().skip(1) {
        let (exe, dir, n, role) = (exe.clone(), dir.clone(), n.clone(), *role);
        starting.spawn(async move { (i, spawn_node(&exe, &dir, &n, role, &seed, demo).await) });
    }
    let mut nodes = vec![first];
    let mut failure = None;
    for r in common::in_order(starting.join_all().await) {
        match r {
            Ok(s) => nodes.push(s),
            Err(e) => failure = Some(e),
        }
    }
    if let Some(e) = failure {
        stop_children(&dir, &mut nodes).await;
        return Err(e);
    }

    let n = nodes.len();
    let started: Vec<String> = nodes.iter().map(|s| s.name.clone()).collect();
    let formed = wait_formed(&dir, &started, a.timeout).await;
    let statuses = match formed {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "the cluster did not form: {e:#}\nnode logs are in {}/nodes/*/node.log",
                dir.display()
            );
            stop_children(&dir, &mut nodes).await;
            return Ok(ExitCode::FAILURE);
        }
    };
    println!(
        "cluster of {n} nodes up in {} (state in {})",
        human_ms(t0.elapsed().as_millis() as u64),
        dir.display()
    );
    print_nodes(&statuses);

    if a.detach {
        if signals.pending().await {
            println!("\ninterrupted during start-up: stopping the cluster");
            stop_children(&dir, &mut nodes).await;
            return Ok(ExitCode::from(130));
        }
        println!("\nnodes keep running; `tether status` to look, `tether down` to stop");
        return Ok(ExitCode::SUCCESS);
    }
    println!("\nCtrl-C stops the cluster");
    supervise(&dir, &mut nodes, signals).await
}

async fn spawn_node(
    exe: &Path,
    dir: &Path,
    name: &str,
    role: Role,
    seeds: &[SocketAddr],
    demo_kinds: bool,
) -> anyhow::Result<Started> {
    let node_dir = dir.join("nodes").join(name);
    std::fs::create_dir_all(&node_dir)
        .with_context(|| format!("creating {}", node_dir.display()))?;
    let log_path = node_dir.join("node.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut cmd = Command::new(exe);
    cmd.arg("node")
        .args(["--name", name, "--role", &role.to_string()])
        .args(["--listen", "127.0.0.1:0"])
        .arg("--state-dir")
        .arg(dir);
    if demo_kinds {
        cmd.arg("--demo-kinds");
    }
    if !seeds.is_empty() {
        let s: Vec<String> = seeds.iter().map(ToString::to_string).collect();
        cmd.args(["--seed", &s.join(",")]);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        // own process group: a Ctrl-C at the terminal reaches `up`, which stops nodes cleanly
        .process_group(0)
        .kill_on_drop(false);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting node {name}"))?;
    let stdout = child.stdout.take().context("node stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(15), lines.next_line()).await;
    let line = match ready {
        Ok(Ok(Some(l))) => l,
        _ => {
            let _ = child.start_kill();
            bail!("node {name} did not start; see {}", log_path.display());
        }
    };
    let addr = line
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("addr="))
        .and_then(|a| a.parse().ok())
        .with_context(|| format!("node {name} printed an unexpected line: {line:?}"))?;
    Ok(Started {
        name: name.to_owned(),
        child,
        addr,
    })
}

/// Waits until every node knows `n - 1` peers, all `up`.
async fn wait_formed(
    dir: &Path,
    names: &[String],
    timeout: Duration,
) -> anyhow::Result<Vec<NodeStatus>> {
    // only the nodes this `up` started: a stale record of another node must not block it
    let (_op, found) = common::connect_some(dir, names).await?;
    let n = names.len();
    let req = ControlRequest::WaitPeers {
        peers: Vec::new(),
        states: vec![PeerState::Up],
        count: Some(n - 1),
        timeout_ms: timeout.as_millis() as u64,
        mode: None,
    };
    common::call_each(&found, |_| Some(req.clone()), timeout + CONTROL_TIMEOUT)
        .await
        .into_iter()
        .map(|(name, r)| match r {
            Ok(ControlResponse::Status(s)) => Ok(s),
            Ok(other) => Err(anyhow::anyhow!("{name}: unexpected answer {other:?}")),
            Err(e) => Err(anyhow::anyhow!("{name}: {e}")),
        })
        .collect()
}

fn print_nodes(statuses: &[NodeStatus]) {
    let mut rows = vec![vec![
        "NODE".into(),
        "ROLE".into(),
        "ADDR".into(),
        "PID".into(),
        "INC".into(),
        "PEERS UP".into(),
    ]];
    for s in statuses {
        let up = s.peers.iter().filter(|p| p.state == PeerState::Up).count();
        rows.push(vec![
            s.name.clone(),
            s.role.to_string(),
            s.addr.to_string(),
            s.pid.to_string(),
            s.incarnation.to_string(),
            format!("{up}/{}", s.peers.len()),
        ]);
    }
    print_table(&rows);
}

/// SIGINT and SIGTERM, registered before any node starts.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("cannot handle Ctrl-C")?,
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        })
    }

    /// Whether a signal arrived already (does not wait).
    async fn pending(&mut self) -> bool {
        tokio::select! {
            biased;
            _ = self.next() => true,
            _ = std::future::ready(()) => false,
        }
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

/// Foreground mode: report nodes that exit, stop everything on Ctrl-C or SIGTERM.
async fn supervise(
    dir: &Path,
    nodes: &mut Vec<Started>,
    mut signals: Signals,
) -> anyhow::Result<ExitCode> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut pids = Vec::new();
    for mut s in nodes.drain(..) {
        pids.push((s.name.clone(), s.child.id()));
        let tx = tx.clone();
        tokio::spawn(async move {
            let status = s.child.wait().await;
            let _ = tx.send((s.name, status));
        });
    }
    drop(tx);
    let mut alive = pids.len();
    loop {
        tokio::select! {
            _ = signals.next() => break,
            exited = rx.recv() => {
                let Some((name, status)) = exited else { break };
                alive -= 1;
                let how = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                eprintln!(
                    "node {name} exited ({how}); {alive} still running. Restart it with `tether node --name {name} --role {} --state-dir {}`",
                    if name.starts_with('l') { "local" } else { "remote" },
                    dir.display()
                );
            }
        }
    }
    println!("\nstopping the cluster...");
    let _ = shutdown_all(dir).await;
    let deadline = tokio::time::sleep(Duration::from_secs(5));
    tokio::pin!(deadline);
    while alive > 0 {
        tokio::select! {
            exited = rx.recv() => match exited {
                Some(_) => alive -= 1,
                None => break,
            },
            _ = &mut deadline => {
                for (name, pid) in &pids {
                    if let Some(pid) = pid.filter(|p| pid_alive(*p)) {
                        // SAFETY: SIGKILL to a child this process started; no memory is involved
                        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                        eprintln!("{name}: killed (did not stop within 5 s)");
                    }
                }
                break;
            }
        }
    }
    println!("stopped {} node(s)", pids.len());
    Ok(ExitCode::SUCCESS)
}

async fn stop_children(dir: &Path, nodes: &mut [Started]) {
    let _ = shutdown_all(dir).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    for s in nodes.iter_mut() {
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, s.child.wait()).await.is_err() {
            let _ = s.child.start_kill();
            let _ = s.child.wait().await;
        }
    }
    println!("stopped {} node(s)", nodes.len());
}

/// Asks every running node of the state directory to shut down. Returns the nodes asked.
/// Asks `node` to stop (leaving the cluster cleanly); its name and pid.
async fn shutdown_one(dir: &Path, node: &str) -> anyhow::Result<Vec<(String, u32)>> {
    let (_op, found) = connect_all(dir).await?;
    let Some(f) = found.into_iter().find(|f| f.record.name == node) else {
        bail!("no node {node:?} in {}", dir.display());
    };
    if !pid_alive(f.record.pid) {
        return Ok(Vec::new());
    }
    let single = [f];
    common::call_each(&single, |_| Some(ControlRequest::Shutdown), CONTROL_TIMEOUT).await;
    let [f] = single;
    Ok(vec![(f.record.name, f.record.pid)])
}

async fn shutdown_all(dir: &Path) -> anyhow::Result<Vec<(String, u32)>> {
    if !common::records(dir).iter().any(|r| pid_alive(r.pid)) {
        return Ok(Vec::new());
    }
    let (_op, found) = connect_all(dir).await?;
    let running: Vec<_> = found
        .into_iter()
        .filter(|f| pid_alive(f.record.pid))
        .collect();
    // a node that does not answer is killed by the caller after its grace period
    common::call_each(
        &running,
        |_| Some(ControlRequest::StopCluster),
        CONTROL_TIMEOUT,
    )
    .await;
    Ok(running
        .iter()
        .map(|f| (f.record.name.clone(), f.record.pid))
        .collect())
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  tether down                 # the whole cluster
  tether down --node r2       # one node: its agents move elsewhere first (see `tether drain`)
  tether down --node r2 --no-drain")]
pub(crate) struct DownArgs {
    /// How long nodes get to stop cleanly before they are killed.
    #[arg(long, default_value = "5s", value_parser = common::parse_duration)]
    grace: Duration,
    /// Stop only this node, after moving its agents to other nodes.
    #[arg(long)]
    node: Option<String>,
    /// With --node: stop it without moving its agents first (they fail over, and lose what
    /// their durability does not keep).
    #[arg(long, requires = "node")]
    no_drain: bool,
    #[command(flatten)]
    dir: StateDirArg,
}

pub(crate) async fn down(a: DownArgs) -> anyhow::Result<ExitCode> {
    if let Some(node) = &a.node {
        if !a.no_drain && !super::migrate::drain_node(&a.dir, node, false).await? {
            bail!("{node} was not stopped: some agents could not be moved (above); stop it anyway with --no-drain");
        }
    }
    let dir: PathBuf = a.dir.state_dir;
    let asked = match &a.node {
        Some(node) => shutdown_one(&dir, node).await?,
        None => shutdown_all(&dir).await?,
    };
    if asked.is_empty() {
        println!("no running nodes in {}", dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = Instant::now() + a.grace;
    for (name, pid) in &asked {
        while pid_alive(*pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if pid_alive(*pid) {
            // SAFETY: sending SIGKILL to a pid we started and recorded; no memory is involved
            unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
            println!("{name}: killed (did not stop within {:?})", a.grace);
        } else {
            println!("{name}: stopped");
        }
        // a killed node leaves its record; remove it so `up` starts afresh
        let _ = std::fs::remove_file(dir.join("nodes").join(name).join("node.json"));
    }
    Ok(ExitCode::SUCCESS)
}
