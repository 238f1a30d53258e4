//! `tether-bench`: tether's figures beside anchors measured in the same run, by the same
//! binary, on the same machine. `cargo run --release -p tether-bench -- --help`.
//!
//! The anchors (bare ractor, ractor_cluster over TCP, raw quinn) are linked into this binary
//! only, not into the `tether` product.
//!
//! Each figure is the median of several repetitions (min and max shown); tether and its
//! anchors alternate inside each repetition, so drift on a shared machine hits all of them.
//!
//! | rows | tether | anchors | file |
//! | --- | --- | --- | --- |
//! | local tell, ask, spawn, memory, restart | one in-process node | bare ractor actors | `bench/local.rs` |
//! | remote tell, ask p50/p99, spawn p50/p99 | this process + a `tether node` child | ractor_cluster over TCP, raw quinn (child pairs) | `bench/remote.rs`, `bench/anchors.rs` |
//! | detection (`--faults`) | `tether up` cluster, driven by the CLI | – | `bench/faults.rs` |
//!
//! Every row with a goal states it as a [`report::Goal`] the bench evaluates (tether's median
//! against an anchor's median, times a factor); the table and `--json` say whether it is met,
//! and the run ends with the rows that miss.
//!
//! Child processes are this binary with a hidden `--child MODE` (anchor receivers and senders,
//! memory measurements, the peer node), so every figure comes from a fresh, comparable
//! process.

mod anchors;
mod ballast;
mod faults;
mod local;
mod moves;
mod remote;
mod report;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use report::{Goal, Metric};

/// Measure tether against anchors (bare ractor, ractor_cluster over TCP, raw quinn) in one
/// run; prints each figure, its ratio to its anchors, and whether its goal is met.
#[derive(Debug, Parser)]
#[command(name = "tether-bench", version)]
#[command(after_help = "Examples:
  cargo run --release -p tether-bench -- --quick        # about a minute and a half
  cargo run --release -p tether-bench -- --json > bench.json
  cargo build --release && cargo run --release -p tether-bench -- --faults
                                  # adds failure detection on a real 3-node cluster (needs the
                                  # tether binary beside this one, or TETHER_BIN)
  cargo run --release -p tether-bench -- --only remote  # just the remote rows
  TOKIO_WORKER_THREADS=1 cargo run --release -p tether-bench -- --only remote
                                  # one runtime worker in every process

Ratios are tether / anchor, both measured in this run; GOAL says which way is good, MET whether
the median reaches it. The exit status is 0 when the run completes, misses or not.")]
struct BenchArgs {
    /// Print JSON: {"machine", "metrics": [{"name", "unit", "tether", "min", "max", "anchors",
    /// "ratios", "goal": [{"op", "factor", "anchor", "text", "met"}] | null, "met": bool | null,
    /// "note", "repetitions"}], "misses": [names]}.
    #[arg(long)]
    json: bool,
    /// Fewer messages and repetitions: finishes in under two minutes.
    #[arg(long)]
    quick: bool,
    /// Also measure failure detection (isolate, kill -9, heal) on a real 3-node cluster.
    #[arg(long)]
    faults: bool,
    /// Only these groups of rows (comma-separated): local, remote, faults.
    #[arg(long, value_delimiter = ',', value_parser = ["local", "remote", "faults"])]
    only: Vec<String>,
    /// (internal) Run as a child: ractor-recv, ractor-send, quinn-recv, quinn-send,
    /// memory-tether, memory-ractor (each with an optional -awake suffix), node.
    #[arg(long, hide = true)]
    child: Option<String>,
    /// (internal) How many messages, agents or actors a child handles.
    #[arg(long, hide = true, default_value_t = 100_000)]
    count: u64,
    /// (internal) How many echoes a sender child times.
    #[arg(long, hide = true, default_value_t = 1_000)]
    asks: u64,
    /// (internal) Where a sender child finds its receiver.
    #[arg(long, hide = true)]
    to: Option<String>,
    /// (internal) Certificates of the raw quinn children; the peer node's state directory.
    #[arg(long, hide = true)]
    certs: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let args = BenchArgs::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// How much each row does.
struct Sizes {
    reps: usize,
    tells: u64,
    asks: u64,
    spawns: u64,
    restarts: usize,
    idle: u64,
    remote_tells: u64,
    remote_asks: u64,
    remote_spawns: u64,
    moves: usize,
    migrating_secs: u64,
}

impl Sizes {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                reps: 3,
                tells: 200_000,
                asks: 5_000,
                spawns: 2_000,
                restarts: 50,
                idle: 20_000,
                remote_tells: 200_000,
                remote_asks: 2_000,
                remote_spawns: 200,
                moves: 20,
                migrating_secs: 3,
            }
        } else {
            Self {
                reps: 5,
                tells: 1_000_000,
                asks: 20_000,
                spawns: 10_000,
                restarts: 200,
                idle: 100_000,
                remote_tells: 1_000_000,
                remote_asks: 10_000,
                remote_spawns: 1_000,
                moves: 100,
                migrating_secs: 5,
            }
        }
    }
}

async fn bench(a: BenchArgs) -> anyhow::Result<ExitCode> {
    if let Some(mode) = &a.child {
        if mode == "node" {
            // the peer node logs as a node does, to stderr (the parent sends it to a file)
            tether::logging::init();
        } else if std::env::var_os("RUST_LOG").is_some() {
            tether::logging::init();
        }
        child(mode, &a).await?;
        return Ok(ExitCode::SUCCESS);
    }
    // the nodes measured log as a node does (the default filter unless RUST_LOG says
    // otherwise), to a file: stderr is the bench's own
    let log = std::env::temp_dir().join(format!("tether-bench-{}.log", std::process::id()));
    tether::logging::init_to(
        std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?,
    );
    let s = Sizes::new(a.quick);
    let say = |msg: String| {
        if !a.json {
            eprintln!("{msg}");
        }
    };
    say(format!(
        "tether-bench ({}): {}; logs in {}",
        if a.quick { "quick" } else { "full" },
        report::machine(),
        log.display()
    ));
    let wants = |group: &str| a.only.is_empty() || a.only.iter().any(|g| g == group);
    let mut metrics = Vec::new();
    if wants("local") {
        metrics.extend(local_rows(&s, &say).await?);
    }
    if wants("remote") {
        metrics.extend(remote_rows(&s, &say).await?);
    }
    if (a.faults && a.only.is_empty()) || a.only.iter().any(|g| g == "faults") {
        metrics.extend(fault_rows(&s, &say)?);
    }
    report::report(&metrics, a.json)?;
    // kept only when the run failed
    let _ = std::fs::remove_file(&log);
    Ok(ExitCode::SUCCESS)
}

async fn child(mode: &str, a: &BenchArgs) -> anyhow::Result<()> {
    let to = || {
        a.to.clone()
            .ok_or_else(|| anyhow::anyhow!("--child {mode} needs --to"))
    };
    let certs = || {
        a.certs
            .clone()
            .ok_or_else(|| anyhow::anyhow!("--child {mode} needs --certs"))
    };
    let result = match mode {
        "ractor-recv" => return anchors::ractor_recv().await,
        "quinn-recv" => return anchors::quinn_recv(&certs()?).await,
        "ractor-send" => anchors::ractor_send(to()?.parse()?, a.count, a.asks).await?,
        "quinn-send" => anchors::quinn_send(&certs()?, to()?.parse()?, a.count, a.asks).await?,
        "node" => return remote::peer_node(&certs()?, to()?.parse()?).await,
        "ask-loop-tether" | "ask-loop-ractor" => {
            in_task(local::ask_loop(
                mode["ask-loop-".len()..].to_owned(),
                a.count,
            ))
            .await?;
            match exit_at_once()? {}
        }
        "memory-tether" | "memory-ractor" | "memory-tether-awake" | "memory-ractor-awake" => {
            let per = local::measure_memory(&mode["memory-".len()..], a.count as usize).await?;
            println!("{per}");
            // leave without tearing the agents down: the parent only reads the figure, and an
            // instruction count of this child (callgrind) is then the spawns alone
            match exit_at_once()? {}
        }
        other => anyhow::bail!("unknown bench child {other:?}"),
    };
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

/// Ends a child process without tearing its runtime and agents down (what they would cost is
/// not what the child measures).
fn exit_at_once() -> anyhow::Result<std::convert::Infallible> {
    use std::io::Write;
    std::io::stdout().flush()?;
    std::process::exit(0)
}

/// Runs a timed local row in a task of the runtime, where agents and services run, rather than
/// on the main thread. From the main thread, every ask (and every slice of tells) wakes a
/// parked worker and is woken back, for tether and the anchor alike, and the figure then
/// depends mostly on how soon the machine wakes a sleeping CPU, not on either side (PERF.md).
async fn in_task<T: Send + 'static>(
    row: impl std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::spawn(row).await?
}

async fn local_rows(s: &Sizes, say: &impl Fn(String)) -> anyhow::Result<Vec<Metric>> {
    let (node, dir) = local::bench_node("run").await?;
    let mut tell = Metric::new(
        "local_tell_throughput",
        "msg/s",
        &["bare_ractor"],
        &[Goal::at_least(0.9, "bare_ractor")],
        "tells from one sender until the last is handled",
    );
    let mut tell_cp = Metric::new(
        "local_tell_throughput_checkpoint",
        "msg/s",
        &["durability_none"],
        &[Goal::at_least(0.9, "durability_none")],
        "tells to an agent in checkpoint mode, against the same in none mode",
    );
    let mut ask = Metric::new(
        "local_ask_rtt_us",
        "us",
        &["bare_ractor"],
        &[Goal::at_most(1.2, "bare_ractor")],
        "one ask at a time, round trip",
    );
    let mut spawn = Metric::new(
        "local_spawn_rate",
        "spawn/s",
        &["bare_ractor"],
        &[],
        "a spawn alone (dormant: the actor starts at the first message)",
    );
    let mut spawn_ask = Metric::new(
        "local_spawn_first_ask_rate",
        "spawn/s",
        &["bare_ractor"],
        &[Goal::at_least(0.8, "bare_ractor")],
        "a spawn and its first message, against ractor's spawn and first call",
    );
    let mut p50 = Metric::new(
        "restart_latency_p50_ms",
        "ms",
        &[],
        &[],
        "failure to serving again, no backoff",
    );
    let mut p99 = Metric::new(
        "restart_latency_p99_ms",
        "ms",
        &[],
        &[],
        "failure to serving again, no backoff",
    );
    for r in 0..s.reps {
        say(format!("local: repetition {}/{}", r + 1, s.reps));
        let (n, k) = (node.clone(), s.tells);
        let (t, b) =
            in_task(async move { local::tell_throughput(&n, k, &format!("tell-{r}")).await })
                .await?;
        tell.push(t, &[b]);
        let (n, k) = (node.clone(), s.tells);
        let (t, b) = in_task(async move {
            local::tell_throughput_checkpointed(&n, k, &format!("tell-cp-{r}")).await
        })
        .await?;
        tell_cp.push(t, &[b]);
        let (n, k) = (node.clone(), s.asks);
        let (t, b) =
            in_task(async move { local::ask_rtt(&n, k, &format!("ask-{r}")).await }).await?;
        ask.push(t, &[b]);
        let (n, k) = (node.clone(), s.spawns);
        let (t, b) = in_task(async move { local::spawn_rate(&n, k, r, false).await }).await?;
        spawn.push(t, &[b]);
        let (n, k) = (node.clone(), s.spawns);
        let (t, b) = in_task(async move { local::spawn_rate(&n, k, r, true).await }).await?;
        spawn_ask.push(t, &[b]);
        let (n, k) = (node.clone(), s.restarts);
        let lat = in_task(async move { local::restart_latencies(&n, k).await }).await?;
        p50.push(report::percentile(&lat, 0.5), &[]);
        p99.push(report::percentile(&lat, 0.99), &[]);
    }
    node.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
    let [mem, mem_awake] = memory_rows(s, say)?;
    Ok(vec![
        tell, tell_cp, ask, spawn, spawn_ask, mem, mem_awake, p50, p99,
    ])
}

/// Memory per agent: fewer repetitions (each is a fresh process spawning many agents).
fn memory_rows(s: &Sizes, say: &impl Fn(String)) -> anyhow::Result<[Metric; 2]> {
    let mut mem = Metric::new(
        "bytes_per_idle_agent",
        "bytes",
        &["bare_ractor"],
        &[],
        "spawned, never messaged (dormant)",
    );
    let mut mem_awake = Metric::new(
        "bytes_per_awake_agent",
        "bytes",
        &["bare_ractor"],
        &[Goal::at_most(1.1, "bare_ractor")],
        "an agent that has handled a message, idle",
    );
    for r in 0..s.reps.min(3) {
        say(format!("memory: repetition {}/{}", r + 1, s.reps.min(3)));
        let t = local::memory_in_child("tether", s.idle)?;
        let b = local::memory_in_child("ractor", s.idle)?;
        mem.push(t, &[b]);
        let t = local::memory_in_child("tether-awake", s.idle)?;
        let b = local::memory_in_child("ractor-awake", s.idle)?;
        mem_awake.push(t, &[b]);
    }
    Ok([mem, mem_awake])
}

async fn remote_rows(s: &Sizes, say: &impl Fn(String)) -> anyhow::Result<Vec<Metric>> {
    const ANCHORS: &[&str] = &["ractor_cluster_tcp", "raw_quinn"];
    let mut tell = Metric::new(
        "remote_tell_throughput",
        "msg/s",
        ANCHORS,
        // ractor_cluster sends each message on its own over plaintext TCP, tether batches runs
        // of tells: that ratio is information, the goal is against raw quinn
        &[Goal::at_least(0.2, "raw_quinn")],
        "tells to an agent on another node, until the last is handled",
    );
    let mut ask50 = Metric::new(
        "remote_ask_rtt_p50_us",
        "us",
        ANCHORS,
        &[Goal::at_most(1.15, "raw_quinn")],
        "asks to an agent on another node, one at a time",
    );
    let mut ask99 = Metric::new(
        "remote_ask_rtt_p99_us",
        "us",
        ANCHORS,
        &[],
        "p99 of the same asks",
    );
    let mut acked50 = Metric::new(
        "acked_ask_p50_us",
        "us",
        &["ask_plus_fsync"],
        &[Goal::at_most(1.0, "ask_plus_fsync")],
        "asks to an acked agent on another node (replica: this node), against a plain ask's \
         p50 plus one fsync's, both in this repetition",
    );
    let mut spawn50 = Metric::new(
        "remote_spawn_p50_ms",
        "ms",
        &["raw_quinn_rtt"],
        &[],
        "a get-or-spawn of a fresh agent on another node",
    );
    let mut spawn99 = Metric::new(
        "remote_spawn_p99_ms",
        "ms",
        &["raw_quinn_rtt_p99"],
        &[],
        "p99 of the same spawns, against raw quinn's p99 echo",
    );

    let certs = std::env::temp_dir().join(format!("tether-bench-quinn-{}", std::process::id()));
    anchors::quinn_certs(&certs)?;
    let certs_arg = certs.to_string_lossy().into_owned();
    let ractor_recv = anchors::start_receiver("ractor-recv", &[])?;
    let quinn_recv = anchors::start_receiver("quinn-recv", &["--certs".into(), certs_arg.clone()])?;
    let pair = remote::Pair::start().await?;
    let sender_args = |to: &str| {
        vec![
            "--to".to_owned(),
            to.to_owned(),
            "--count".into(),
            s.remote_tells.to_string(),
            "--asks".into(),
            s.remote_asks.to_string(),
        ]
    };
    let mut moving = migration_rows();
    let result: anyhow::Result<()> = async {
        for r in 0..s.reps {
            say(format!("remote: repetition {}/{}", r + 1, s.reps));
            migration_once(&pair, s, r, &mut moving).await?;
            let t = remote::tell_throughput(&pair, s.remote_tells, &format!("tell-{r}")).await?;
            let (a50, a99) = remote::ask_rtt(&pair, s.remote_asks, &format!("ask-{r}")).await?;
            let (acked, plain) = remote::acked_ask_p50(&pair, s.remote_asks, r).await?;
            let fsync = remote::fsync_p50_us(&pair, s.remote_asks.min(200))?;
            acked50.push(acked, &[plain + fsync]);
            let (s50, s99) = remote::spawn_latency(&pair, s.remote_spawns, r).await?;
            let rc = anchors::run_sender("ractor-send", &sender_args(&ractor_recv.at))?;
            let mut qargs = sender_args(&quinn_recv.at);
            qargs.extend(["--certs".to_owned(), certs_arg.clone()]);
            let q = anchors::run_sender("quinn-send", &qargs)?;
            tell.push(t, &[rc.tell, q.tell]);
            ask50.push(a50, &[rc.ask_p50_us, q.ask_p50_us]);
            ask99.push(a99, &[rc.ask_p99_us, q.ask_p99_us]);
            spawn50.push(s50, &[q.ask_p50_us / 1e3]);
            spawn99.push(s99, &[q.ask_p99_us / 1e3]);
        }
        Ok(())
    }
    .await;
    pair.stop().await;
    drop(ractor_recv);
    drop(quinn_recv);
    let _ = std::fs::remove_dir_all(&certs);
    result?;
    let mut rows = vec![tell, ask50, ask99, acked50, spawn50, spawn99];
    rows.extend(moving);
    Ok(rows)
}

/// One repetition of the migration rows.
async fn migration_once(
    pair: &remote::Pair,
    s: &Sizes,
    r: usize,
    rows: &mut [Metric; 4],
) -> anyhow::Result<()> {
    let p64 = moves::pauses(pair, 64 << 10, s.moves, &format!("m64-{r}")).await?;
    let p1m = moves::pauses(pair, 1 << 20, s.moves, &format!("m1m-{r}")).await?;
    rows[0].push(report::percentile(&p64, 0.5), &[]);
    rows[1].push(report::percentile(&p64, 0.99), &[]);
    rows[2].push(report::percentile(&p1m, 0.99), &[]);
    let (with, without) = moves::throughput(pair, s.migrating_secs, &format!("mt-{r}")).await?;
    rows[3].push(with, &[without]);
    Ok(())
}

/// The migration rows (see `bench/moves.rs`).
fn migration_rows() -> [Metric; 4] {
    [
        Metric::new(
            "migration_pause_64k_p50_ms",
            "ms",
            &[],
            &[Goal::within(0.5)],
            "last message handled at the source to first at the target, 64 KiB of state, 8 \
             senders telling",
        ),
        Metric::new(
            "migration_pause_64k_p99_ms",
            "ms",
            &[],
            &[Goal::within(2.0)],
            "p99 of the same pauses",
        ),
        Metric::new(
            "migration_pause_1m_p99_ms",
            "ms",
            &[],
            &[Goal::within(10.0)],
            "p99 of the pauses with 1 MiB of state",
        ),
        Metric::new(
            "throughput_while_migrating",
            "msg/s",
            &["no_migrations"],
            &[Goal::at_least(0.95, "no_migrations")],
            "8 senders' tells handled while the agent moves once a second, against no moves",
        ),
    ]
}

fn fault_rows(s: &Sizes, say: &impl Fn(String)) -> anyhow::Result<Vec<Metric>> {
    let mut iso = Metric::new(
        "detect_isolate_s",
        "s",
        &[],
        &[Goal::within(2.0)],
        "from partition --isolate to unreachable on both sides",
    );
    let mut kill = Metric::new(
        "detect_kill_s",
        "s",
        &[],
        &[Goal::within(2.0)],
        "from kill -9 to unreachable",
    );
    let mut heal = Metric::new("heal_s", "s", &[], &[], "from heal to every pair up");
    let mut failover = Metric::new(
        "failover_with_state_s",
        "s",
        &[],
        &[Goal::within(3.0)],
        "from kill -9 to an acked counter of the killed node answering with its state elsewhere",
    );
    for r in 0..s.reps {
        say(format!("faults: repetition {}/{}", r + 1, s.reps));
        let (i, h, k, f) = faults::detection_once(r)?;
        iso.push(i, &[]);
        heal.push(h, &[]);
        kill.push(k, &[]);
        failover.push(f, &[]);
    }
    Ok(vec![iso, kill, heal, failover])
}
