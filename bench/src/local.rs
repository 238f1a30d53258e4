//! The local rows: tether's `AgentRef` against a bare ractor actor in the same process, spawn
//! rates, resident bytes per idle agent (each figure from a fresh child process), and restart
//! latency after a failure.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tether::{Durability, Kinds, Node};
use tether_actors::builtin::{Counter, CounterMsg, Flaky, FlakyMsg};
use tether_actors::AgentRef;
use tether_supervision::{AgentPolicy, Backoff, Intensity};

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
pub(super) async fn bench_node(tag: &str) -> anyhow::Result<(Node, std::path::PathBuf)> {
    let dir = std::env::temp_dir().join(format!("tether-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let node = node_in(&dir, "bench", Vec::new()).await?;
    Ok((node, dir))
}

/// A remote node named `name` with its state and certificates under `dir`, joining `seeds`.
pub(super) async fn node_in(
    dir: &std::path::Path,
    name: &str,
    seeds: Vec<std::net::SocketAddr>,
) -> anyhow::Result<Node> {
    Ok(Node::builder(name)
        .state_dir(dir)
        .seeds(seeds)
        .kinds(
            Kinds::builtin()
                .with_demo(dir)
                .register::<super::ballast::Ballast>(),
        )
        .root_intensity(Intensity {
            max_restarts: 1_000_000,
            within: Duration::from_secs(1),
        })
        .start()
        .await?)
}

// ---------------------------------------------------------------- measurements

/// How many slices a timed row is cut into: tether and the anchor take turns slice by slice,
/// so that a drift of the machine (or a slow first pass after the previous row) hits both.
const SLICES: u64 = 4;

/// A slice of `total` (the last one takes the remainder).
fn slice(total: u64, i: u64) -> u64 {
    let base = total / SLICES;
    if i + 1 == SLICES {
        total - base * (SLICES - 1)
    } else {
        base
    }
}

pub(super) async fn tell_throughput(node: &Node, n: u64, key: &str) -> anyhow::Result<(f64, f64)> {
    let c: AgentRef<Counter> = node.spawn(key, None).await?;
    let (bare, _) = Actor::spawn(None, BareCounter, ()).await?;
    let (mut sent, mut bare_sent) = (0i64, 0i64);
    let (mut tether, mut anchor) = (Duration::ZERO, Duration::ZERO);
    for i in 0..SLICES {
        let k = slice(n, i);
        let t0 = Instant::now();
        for _ in 0..k {
            c.tell(CounterMsg::Inc)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        // counted on arrival: the slice ends when the agent has handled all of it
        let got = c.ask(CounterMsg::Get, Duration::from_secs(60)).await?;
        tether += t0.elapsed();
        sent += k as i64;
        anyhow::ensure!(got == sent, "counted {got} of {sent}");

        let t0 = Instant::now();
        for _ in 0..k {
            bare.cast(BareMsg::Inc)?;
        }
        let got = bare_get(&bare).await?;
        anchor += t0.elapsed();
        bare_sent += k as i64;
        anyhow::ensure!(got == bare_sent, "bare counted {got} of {bare_sent}");
    }
    bare.stop(None);
    Ok((
        n as f64 / tether.as_secs_f64(),
        n as f64 / anchor.as_secs_f64(),
    ))
}

/// Tells to a counter in `checkpoint` mode and to one in `none` mode, slice by slice in turn;
/// both figures in messages per second (each until the last is handled).
pub(super) async fn tell_throughput_checkpointed(
    node: &Node,
    n: u64,
    key: &str,
) -> anyhow::Result<(f64, f64)> {
    let saved: AgentRef<Counter> = node
        .spawn(&format!("{key}-checkpoint"), None)
        .durability(Durability::Checkpoint)
        .await?;
    let plain: AgentRef<Counter> = node.spawn(&format!("{key}-none"), None).await?;
    let mut times = [Duration::ZERO; 2];
    let mut sent = 0i64;
    for i in 0..SLICES {
        let k = slice(n, i);
        sent += k as i64;
        for (c, time) in [&saved, &plain].into_iter().zip(times.iter_mut()) {
            let t0 = Instant::now();
            for _ in 0..k {
                c.tell(CounterMsg::Inc)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            let got = c.ask(CounterMsg::Get, Duration::from_secs(60)).await?;
            *time += t0.elapsed();
            anyhow::ensure!(got == sent, "counted {got} of {sent}");
        }
    }
    Ok((
        n as f64 / times[0].as_secs_f64(),
        n as f64 / times[1].as_secs_f64(),
    ))
}

pub(super) async fn ask_rtt(node: &Node, n: u64, key: &str) -> anyhow::Result<(f64, f64)> {
    let c: AgentRef<Counter> = node.spawn(key, None).await?;
    let (bare, _) = Actor::spawn(None, BareCounter, ()).await?;
    // an untimed warm-up of both: the first round trips after a burst of tells are slow for
    // either, and would be charged to whichever went first
    for _ in 0..(n / 10).max(1) {
        c.ask(CounterMsg::Get, Duration::from_secs(5)).await?;
        bare_get(&bare).await?;
    }
    let (mut tether, mut anchor) = (Duration::ZERO, Duration::ZERO);
    for i in 0..SLICES {
        let k = slice(n, i);
        let t0 = Instant::now();
        for _ in 0..k {
            c.ask(CounterMsg::Get, Duration::from_secs(5)).await?;
        }
        tether += t0.elapsed();
        let t0 = Instant::now();
        for _ in 0..k {
            bare_get(&bare).await?;
        }
        anchor += t0.elapsed();
    }
    bare.stop(None);
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    Ok((per(tether), per(anchor)))
}

/// Spawns per second, tether's and bare ractor's. With `first_ask`, each spawn is followed by
/// one ask, answered by the new agent (or actor): a tether agent's actor starts at its first
/// message, so this is the whole cost of an agent that gets to work.
pub(super) async fn spawn_rate(
    node: &Node,
    n: u64,
    round: usize,
    first_ask: bool,
) -> anyhow::Result<(f64, f64)> {
    let mut bare = Vec::with_capacity(n as usize);
    let (mut tether, mut anchor) = (Duration::ZERO, Duration::ZERO);
    let mut made = 0;
    let tag = if first_ask { "spawn-ask" } else { "spawn" };
    for i in 0..SLICES {
        let k = slice(n, i);
        let t0 = Instant::now();
        for j in made..made + k {
            let c: AgentRef<Counter> = node.spawn(&format!("{tag}-{round}-{j}"), None).await?;
            if first_ask {
                c.ask(CounterMsg::Get, Duration::from_secs(5)).await?;
            }
        }
        tether += t0.elapsed();
        made += k;
        let t0 = Instant::now();
        for _ in 0..k {
            let (a, _) = Actor::spawn(None, BareCounter, ()).await?;
            if first_ask {
                bare_get(&a).await?;
            }
            bare.push(a);
        }
        anchor += t0.elapsed();
    }
    for b in bare {
        b.stop(None);
    }
    Ok((
        n as f64 / tether.as_secs_f64(),
        n as f64 / anchor.as_secs_f64(),
    ))
}

/// Runs in a child process, for profiling (`--child ask-loop-tether`, `ask-loop-ractor`): `n`
/// asks, one at a time, and nothing else (run it in a task, as the timed rows are). The
/// difference between the instruction counts (callgrind) of two sizes is the cost of one ask.
pub(super) async fn ask_loop(what: String, n: u64) -> anyhow::Result<()> {
    match what.as_str() {
        "tether" => {
            let (node, dir) = bench_node("ask-loop").await?;
            let c: AgentRef<Counter> = node.spawn("ask-loop", None).await?;
            for _ in 0..n {
                c.ask(CounterMsg::Get, Duration::from_secs(5)).await?;
            }
            let _ = std::fs::remove_dir_all(dir);
        }
        "ractor" => {
            let (bare, _) = Actor::spawn(None, BareCounter, ()).await?;
            for _ in 0..n {
                bare_get(&bare).await?;
            }
        }
        other => bail!("the ask loop runs tether or ractor, not {other:?}"),
    }
    Ok(())
}

/// Milliseconds from a failure to the agent serving again: once the crash's failure is
/// answered, a ping is asked; it waits in the host while the supervisor restarts the agent, and
/// its reply comes from the new instance.
pub(super) async fn restart_latencies(node: &Node, n: usize) -> anyhow::Result<Vec<f64>> {
    let policy = AgentPolicy {
        backoff: Backoff::none(),
        intensity: Intensity {
            max_restarts: u32::MAX,
            within: Duration::from_millis(1),
        },
        ..AgentPolicy::default()
    };
    let f: AgentRef<Flaky> = node
        .spawn::<Flaky>("restart", serde_json::Value::Null)
        .policy(policy)
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

/// Runs in a child process: resident bytes per idle agent, for `tether` or `ractor`; with an
/// `-awake` suffix, each agent (or actor) handles one ask before the next is spawned, so that a
/// tether agent's actor has started (see `tether_actors::mailbox`).
pub(super) async fn measure_memory(what: &str, n: usize) -> anyhow::Result<f64> {
    let (what, awake) = match what.strip_suffix("-awake") {
        Some(w) => (w, true),
        None => (what, false),
    };
    let per = match what {
        "tether" => {
            let (node, dir) = bench_node("mem").await?;
            // warm the paths once, so their one-time allocations are not counted
            let warm: AgentRef<Counter> = node.spawn("warm", None).await?;
            warm.ask(CounterMsg::Get, Duration::from_secs(5)).await?;
            let before = rss_bytes();
            for i in 0..n {
                let c: AgentRef<Counter> = node.spawn(&format!("idle-{i}"), None).await?;
                if awake {
                    c.ask(CounterMsg::Get, Duration::from_secs(5)).await?;
                }
            }
            // the root supervisor takes new children in at its next message: count them
            node.inner().supervisor().settle().await?;
            let after = rss_bytes();
            let _ = std::fs::remove_dir_all(dir);
            (after.saturating_sub(before)) as f64 / n as f64
        }
        "ractor" => {
            let (warm, _) = Actor::spawn(None, BareCounter, ()).await?;
            bare_get(&warm).await?;
            let before = rss_bytes();
            let mut keep = Vec::with_capacity(n);
            for _ in 0..n {
                let (a, _) = Actor::spawn(None, BareCounter, ()).await?;
                if awake {
                    bare_get(&a).await?;
                }
                keep.push(a);
            }
            let after = rss_bytes();
            warm.stop(None);
            (after.saturating_sub(before)) as f64 / n as f64
        }
        other => bail!("memory is measured for tether or ractor, not {other:?}"),
    };
    Ok(per)
}

pub(super) fn memory_in_child(what: &str, n: u64) -> anyhow::Result<f64> {
    let exe = std::env::current_exe().context("cannot find the tether-bench executable")?;
    let out = std::process::Command::new(exe)
        .args([
            "--child",
            &format!("memory-{what}"),
            "--count",
            &n.to_string(),
        ])
        .output()
        .context("memory measurement child")?;
    anyhow::ensure!(
        out.status.success(),
        "memory child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}
