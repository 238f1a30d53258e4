//! `tether bench`: tether's figures beside anchors measured in the same run, by the same
//! binary, on the same machine.
//!
//! Each figure is the median of several repetitions (min and max shown); tether and its anchor
//! alternate inside each repetition, so drift on a shared machine hits both. Memory is measured
//! in fresh child processes (`tether bench --measure-memory`), one per figure.
//!
//! Rows measured now: local tell throughput and ask round trip through `AgentRef` vs a bare
//! ractor actor, local spawn rate vs bare ractor spawns, resident bytes per idle agent vs bare
//! ractor actors, and restart latency after a failure (no backoff). The remote rows (two node
//! processes, ractor_cluster-over-TCP and raw quinn anchors) and failure detection are not
//! measured by this command yet; `scripts/measure-cluster.sh` gives detection figures.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::json;
use tether_actors::builtin::{Counter, CounterMsg, Flaky, FlakyMsg};
use tether_actors::AgentRef;
use tether_cluster::certs::CertDir;
use tether_cluster::statedir::NodeDir;
use tether_cluster::{Kinds, Node, NodeConfig, Role, SpawnOptions, Target, Timing};
use tether_supervision::{AgentPolicy, Backoff, Intensity};

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Print JSON: {"machine", "metrics": [{"name", "unit", "tether", "min", "max", "anchors",
    /// "ratios", "goal"}]}.
    #[arg(long)]
    json: bool,
    /// Fewer messages and repetitions: finishes in well under two minutes.
    #[arg(long)]
    quick: bool,
    /// (internal) Measure resident bytes per idle agent in this process: `tether` or `ractor`.
    #[arg(long, hide = true)]
    measure_memory: Option<String>,
    /// (internal) How many agents for --measure-memory.
    #[arg(long, hide = true, default_value_t = 100_000)]
    count: usize,
}

/// One row of the report.
struct Metric {
    name: &'static str,
    unit: &'static str,
    tether: Vec<f64>,
    anchors: Vec<(&'static str, Vec<f64>)>,
    goal: &'static str,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    let i = ((s.len() as f64 - 1.0) * p).round() as usize;
    s[i.min(s.len() - 1)]
}

fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| format!("{:.0} GiB", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or_else(|| "? GiB".into());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    format!(
        "{cores} cores, {mem}, {cpu}, {} {}",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

// ---------------------------------------------------------------- the bare ractor anchor

enum BareMsg {
    Inc,
    Get(RpcReplyPort<i64>),
}

impl ractor::Message for BareMsg {}

struct BareCounter;

impl Actor for BareCounter {
    type Msg = BareMsg;
    type State = i64;
    type Arguments = ();

    async fn pre_start(&self, _me: ActorRef<BareMsg>, _: ()) -> Result<i64, ActorProcessingErr> {
        Ok(0)
    }

    async fn handle(
        &self,
        _me: ActorRef<BareMsg>,
        msg: BareMsg,
        n: &mut i64,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            BareMsg::Inc => *n += 1,
            BareMsg::Get(r) => {
                let _ = r.send(*n);
            }
        }
        Ok(())
    }
}

async fn bare_get(a: &ActorRef<BareMsg>) -> anyhow::Result<i64> {
    match a.call(BareMsg::Get, Some(Duration::from_secs(30))).await? {
        ractor::rpc::CallResult::Success(n) => Ok(n),
        _ => bail!("the bare actor did not answer"),
    }
}

// ---------------------------------------------------------------- a node to measure

/// A standalone remote node in a temporary directory (it is its own directory owner).
async fn bench_node(tag: &str) -> anyhow::Result<(Node, std::path::PathBuf)> {
    let dir = std::env::temp_dir().join(format!("tether-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let certs = CertDir::new(&dir);
    certs.ensure_ca()?;
    certs.ensure_node("bench")?;
    let node = Node::start(NodeConfig {
        name: "bench".into(),
        role: Role::Remote,
        listen: "127.0.0.1:0".parse()?,
        advertise: None,
        seeds: Vec::new(),
        certs,
        node_dir: NodeDir::new(dir.join("nodes").join("bench")),
        timing: Timing::default(),
        fault_seed: 1,
        kinds: Kinds::builtin(),
        root_intensity: Intensity {
            max_restarts: 1_000_000,
            within: Duration::from_secs(1),
        },
    })
    .await?;
    Ok((node, dir))
}

// ---------------------------------------------------------------- measurements

async fn tell_throughput(node: &Node, n: u64, key: &str) -> anyhow::Result<(f64, f64)> {
    let c: AgentRef<Counter> = node.spawn(key, None).await?;
    let t0 = Instant::now();
    for _ in 0..n {
        c.tell(CounterMsg::Inc)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let got = c.ask(CounterMsg::Get, Duration::from_secs(60)).await?;
    let tether = n as f64 / t0.elapsed().as_secs_f64();
    anyhow::ensure!(got == n as i64, "counted {got} of {n}");

    let (bare, _) = Actor::spawn(None, BareCounter, ()).await?;
    let t0 = Instant::now();
    for _ in 0..n {
        bare.cast(BareMsg::Inc)?;
    }
    let got = bare_get(&bare).await?;
    let anchor = n as f64 / t0.elapsed().as_secs_f64();
    anyhow::ensure!(got == n as i64, "bare counted {got} of {n}");
    bare.stop(None);
    Ok((tether, anchor))
}

async fn ask_rtt(node: &Node, n: u64, key: &str) -> anyhow::Result<(f64, f64)> {
    let c: AgentRef<Counter> = node.spawn(key, None).await?;
    let t0 = Instant::now();
    for _ in 0..n {
        c.ask(CounterMsg::Get, Duration::from_secs(5)).await?;
    }
    let tether = t0.elapsed().as_secs_f64() * 1e6 / n as f64;
    let (bare, _) = Actor::spawn(None, BareCounter, ()).await?;
    let t0 = Instant::now();
    for _ in 0..n {
        bare_get(&bare).await?;
    }
    let anchor = t0.elapsed().as_secs_f64() * 1e6 / n as f64;
    bare.stop(None);
    Ok((tether, anchor))
}

async fn spawn_rate(node: &Node, n: u64, round: usize) -> anyhow::Result<(f64, f64)> {
    let t0 = Instant::now();
    for i in 0..n {
        node.spawn::<Counter>(&format!("spawn-{round}-{i}"), None)
            .await?;
    }
    let tether = n as f64 / t0.elapsed().as_secs_f64();
    let mut bare = Vec::with_capacity(n as usize);
    let t0 = Instant::now();
    for _ in 0..n {
        bare.push(Actor::spawn(None, BareCounter, ()).await?.0);
    }
    let anchor = n as f64 / t0.elapsed().as_secs_f64();
    for b in bare {
        b.stop(None);
    }
    Ok((tether, anchor))
}

/// Milliseconds from a failure to the agent serving again: once the crash's failure is
/// answered, a ping is asked; it waits in the host while the supervisor restarts the agent, and
/// its reply comes from the new instance.
async fn restart_latencies(node: &Node, n: usize) -> anyhow::Result<Vec<f64>> {
    let policy = AgentPolicy {
        backoff: Backoff::none(),
        intensity: Intensity {
            max_restarts: u32::MAX,
            within: Duration::from_millis(1),
        },
        ..AgentPolicy::default()
    };
    let opts = SpawnOptions {
        policy,
        ..SpawnOptions::default()
    };
    let f: AgentRef<Flaky> = node
        .spawn_with::<Flaky>("restart", serde_json::Value::Null, opts, Target::Here)
        .await?;
    f.ask(FlakyMsg::Ping, Duration::from_secs(5)).await?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        // the crash's reply comes once the failure is known to the host
        let crashed = f.ask(FlakyMsg::Crash, Duration::from_secs(5)).await;
        anyhow::ensure!(crashed.is_err(), "a crash must fail the agent");
        let t0 = Instant::now();
        let pong = f.ask(FlakyMsg::Ping, Duration::from_secs(5)).await?;
        anyhow::ensure!(pong == "pong", "unexpected {pong}");
        out.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(out)
}

fn rss_bytes() -> u64 {
    // /proc/self/statm: size resident shared ... in pages
    let page = 4096u64;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|x| x.parse::<u64>().ok())
        })
        .map(|p| p * page)
        .unwrap_or(0)
}

/// Runs in a child process: resident bytes per idle agent.
async fn measure_memory(what: &str, n: usize) -> anyhow::Result<ExitCode> {
    let per = match what {
        "tether" => {
            let (node, dir) = bench_node("mem").await?;
            // warm the paths once, so their one-time allocations are not counted
            node.spawn::<Counter>("warm", None).await?;
            let before = rss_bytes();
            for i in 0..n {
                node.spawn::<Counter>(&format!("idle-{i}"), None).await?;
            }
            let after = rss_bytes();
            let _ = std::fs::remove_dir_all(dir);
            (after.saturating_sub(before)) as f64 / n as f64
        }
        "ractor" => {
            let (warm, _) = Actor::spawn(None, BareCounter, ()).await?;
            let before = rss_bytes();
            let mut keep = Vec::with_capacity(n);
            for _ in 0..n {
                keep.push(Actor::spawn(None, BareCounter, ()).await?.0);
            }
            let after = rss_bytes();
            warm.stop(None);
            (after.saturating_sub(before)) as f64 / n as f64
        }
        other => bail!("--measure-memory takes tether or ractor, not {other:?}"),
    };
    println!("{per}");
    Ok(ExitCode::SUCCESS)
}

fn memory_in_child(what: &str, n: usize) -> anyhow::Result<f64> {
    let exe = std::env::current_exe().context("cannot find the tether executable")?;
    let out = std::process::Command::new(exe)
        .args(["bench", "--measure-memory", what, "--count", &n.to_string()])
        .output()
        .context("memory measurement child")?;
    anyhow::ensure!(
        out.status.success(),
        "memory child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

pub(crate) async fn bench(a: BenchArgs) -> anyhow::Result<ExitCode> {
    if std::env::var_os("RUST_LOG").is_some() {
        super::node::init_logging();
    }
    if let Some(what) = &a.measure_memory {
        return measure_memory(what, a.count).await;
    }
    let (reps, tells, asks, spawns, restarts, idle) = if a.quick {
        (3, 200_000u64, 5_000u64, 2_000u64, 50usize, 20_000usize)
    } else {
        (5, 1_000_000, 20_000, 10_000, 200, 100_000)
    };
    if !a.json {
        eprintln!(
            "tether bench ({}): {}",
            if a.quick { "quick" } else { "full" },
            machine()
        );
    }
    let (node, dir) = bench_node("run").await?;
    let mut tell = Metric {
        name: "local_tell_throughput",
        unit: "msg/s",
        tether: Vec::new(),
        anchors: vec![("bare_ractor", Vec::new())],
        goal: ">= 0.9x bare ractor",
    };
    let mut ask = Metric {
        name: "local_ask_rtt_us",
        unit: "us",
        tether: Vec::new(),
        anchors: vec![("bare_ractor", Vec::new())],
        goal: "<= 1.2x bare ractor",
    };
    let mut spawn = Metric {
        name: "local_spawn_rate",
        unit: "spawn/s",
        tether: Vec::new(),
        anchors: vec![("bare_ractor", Vec::new())],
        goal: ">= 0.8x bare ractor",
    };
    let mut mem = Metric {
        name: "bytes_per_idle_agent",
        unit: "bytes",
        tether: Vec::new(),
        anchors: vec![("bare_ractor", Vec::new())],
        goal: "<= 1.1x bare ractor",
    };
    let mut restart_all = Vec::new();
    for r in 0..reps {
        if !a.json {
            eprintln!("repetition {}/{reps}", r + 1);
        }
        let (t, b) = tell_throughput(&node, tells, &format!("tell-{r}")).await?;
        tell.tether.push(t);
        tell.anchors[0].1.push(b);
        let (t, b) = ask_rtt(&node, asks, &format!("ask-{r}")).await?;
        ask.tether.push(t);
        ask.anchors[0].1.push(b);
        let (t, b) = spawn_rate(&node, spawns, r).await?;
        spawn.tether.push(t);
        spawn.anchors[0].1.push(b);
        restart_all.push(restart_latencies(&node, restarts).await?);
    }
    // memory: fewer repetitions (each is a fresh process spawning many agents)
    for _ in 0..reps.min(3) {
        mem.tether.push(memory_in_child("tether", idle)?);
        mem.anchors[0].1.push(memory_in_child("ractor", idle)?);
    }
    node.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);

    let p50s: Vec<f64> = restart_all.iter().map(|v| percentile(v, 0.5)).collect();
    let p99s: Vec<f64> = restart_all.iter().map(|v| percentile(v, 0.99)).collect();
    let restart_p50 = Metric {
        name: "restart_latency_p50_ms",
        unit: "ms",
        tether: p50s,
        anchors: Vec::new(),
        goal: "failure to serving again, no backoff",
    };
    let restart_p99 = Metric {
        name: "restart_latency_p99_ms",
        unit: "ms",
        tether: p99s,
        anchors: Vec::new(),
        goal: "failure to serving again, no backoff",
    };
    let metrics = [tell, ask, spawn, mem, restart_p50, restart_p99];
    report(&metrics, a.json)?;
    Ok(ExitCode::SUCCESS)
}

fn report(metrics: &[Metric], as_json: bool) -> anyhow::Result<()> {
    if as_json {
        let rows: Vec<serde_json::Value> = metrics
            .iter()
            .map(|m| {
                let t = median(&m.tether);
                let anchors: serde_json::Map<String, serde_json::Value> = m
                    .anchors
                    .iter()
                    .map(|(n, v)| ((*n).to_owned(), json!(median(v))))
                    .collect();
                let ratios: serde_json::Map<String, serde_json::Value> = m
                    .anchors
                    .iter()
                    .map(|(n, v)| ((*n).to_owned(), json!(t / median(v))))
                    .collect();
                json!({
                    "name": m.name, "unit": m.unit, "tether": t,
                    "min": m.tether.iter().copied().fold(f64::INFINITY, f64::min),
                    "max": m.tether.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    "anchors": anchors, "ratios": ratios, "goal": m.goal,
                    "repetitions": m.tether.len(),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "machine": machine(), "metrics": rows }))?
        );
        return Ok(());
    }
    let mut rows = vec![vec![
        "METRIC".to_owned(),
        "UNIT".into(),
        "TETHER (median [min..max])".into(),
        "ANCHOR".into(),
        "RATIO".into(),
        "GOAL".into(),
    ]];
    for m in metrics {
        let t = median(&m.tether);
        let lo = m.tether.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = m.tether.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (anchor, ratio) = match m.anchors.first() {
            Some((n, v)) => (
                format!("{n} {}", fmt(median(v))),
                format!("{:.2}x", t / median(v)),
            ),
            None => ("-".into(), "-".into()),
        };
        rows.push(vec![
            m.name.to_owned(),
            m.unit.to_owned(),
            format!("{} [{}..{}]", fmt(t), fmt(lo), fmt(hi)),
            anchor,
            ratio,
            m.goal.to_owned(),
        ]);
    }
    super::common::print_table(&rows);
    Ok(())
}

fn fmt(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}
