//! The migration rows: an agent with a state of a given size moves back and forth between
//! `b1` (this process) and `b2` (the child node) while 8 senders keep telling it.
//!
//! - `migration_pause_*`: measured by the agent itself, in its state: the wall-clock time
//!   between the last message it handled on one node and the first on the other (the state
//!   carries the time and the node across; both nodes are on this machine, one clock).
//! - `throughput_while_migrating`: messages the agent handled per second while it moves once
//!   a second, against the same senders with no move (the anchor), in the same repetition.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tether::Node;
use tether_actors::AgentRef;

use super::ballast::{Ballast, BallastMsg};
use super::remote::Pair;

/// 8 tasks telling `agent` 16 messages a millisecond each (128 000 a second in all, well
/// under what one agent on another node takes) until `stop`.
/// Each is a sender of its own (per-sender order and deduplication are per sender: tasks
/// sharing one sender's name would race for its sequence numbers); each returns how many of
/// its tells were taken.
fn senders(
    node: &Node,
    agent: &AgentRef<Ballast>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..8)
        .map(|i| {
            let from = tether_actors::SendAs {
                sender: format!("{}/sender-{i}", node.info().name).into(),
                local_only: false,
            };
            let router: Arc<dyn tether_actors::Router> = node.inner().router().clone();
            let a = AgentRef::<Ballast>::sending_as(agent.id().clone(), router, from);
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut sent = 0;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..16 {
                        if a.tell(BallastMsg::Inc).is_ok() {
                            sent += 1;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                sent
            })
        })
        .collect()
}

/// Waits until every tell of the senders is counted, or the count stops growing; returns the
/// pauses and the count. A move must apply none twice; tells are at most once, so one a newer
/// tell of its sender overtook on its way through the old host is refused: how many were is
/// said on stderr, and the throughput row counts only what was handled.
async fn all_counted(agent: &AgentRef<Ballast>, sent: u64) -> anyhow::Result<(Vec<u64>, u64)> {
    let t0 = Instant::now();
    let mut last = (0, Instant::now());
    loop {
        let (count, pauses) = ask(agent).await?;
        anyhow::ensure!(count <= sent, "{count} counted of {sent} told: some twice");
        if count != last.0 {
            last = (count, Instant::now());
        }
        let stalled = last.1.elapsed() > Duration::from_secs(1);
        if count == sent || stalled || t0.elapsed() > Duration::from_secs(10) {
            if count < sent {
                eprintln!(
                    "moves: {} of {sent} tells overtaken and refused",
                    sent - count
                );
            }
            return Ok((pauses, count));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn ask(agent: &AgentRef<Ballast>) -> anyhow::Result<(u64, Vec<u64>)> {
    Ok(agent.ask(BallastMsg::Get, Duration::from_secs(30)).await?)
}

/// Pauses (milliseconds) of `moves` moves of an agent of `bytes` state between the two nodes
/// while 8 senders tell it.
pub(super) async fn pauses(
    pair: &Pair,
    bytes: usize,
    moves: usize,
    key: &str,
) -> anyhow::Result<Vec<f64>> {
    let node: &Node = &pair.node;
    let agent: AgentRef<Ballast> = node.spawn(key, bytes).on("b2").await?;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = senders(node, &agent, &stop);
    let id = agent.id().clone();
    for i in 0..moves {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let to = if i % 2 == 0 { "b1" } else { "b2" };
        node.migrate(&id, to).await?;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    for t in tasks {
        sent += t.await?;
    }
    let (pauses, _) = all_counted(&agent, sent).await?;
    anyhow::ensure!(
        pauses.len() >= moves,
        "{} pauses seen for {moves} moves",
        pauses.len()
    );
    Ok(pauses.iter().map(|&ns| ns as f64 / 1e6).collect())
}

/// Messages handled per second by an agent (64 KiB state) the 8 senders keep busy: (moving
/// once a second, not moving), `secs` each.
pub(super) async fn throughput(pair: &Pair, secs: u64, key: &str) -> anyhow::Result<(f64, f64)> {
    let node: &Node = &pair.node;
    let mut rates = [0.0; 2];
    for (moving, rate) in [true, false].into_iter().zip(rates.iter_mut()) {
        let agent: AgentRef<Ballast> = node
            .spawn(&format!("{key}-{moving}"), 64 << 10)
            .on("b2")
            .await?;
        let id = agent.id().clone();
        let stop = Arc::new(AtomicBool::new(false));
        let (before, _) = ask(&agent).await?;
        let t0 = Instant::now();
        let tasks = senders(node, &agent, &stop);
        for i in 0..secs {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if moving {
                let to = if i % 2 == 0 { "b1" } else { "b2" };
                node.migrate(&id, to).await?;
            }
        }
        stop.store(true, Ordering::Relaxed);
        let mut sent = 0;
        for t in tasks {
            sent += t.await?;
        }
        let elapsed = t0.elapsed().as_secs_f64();
        let (_, count) = all_counted(&agent, before + sent).await?;
        *rate = (count - before) as f64 / elapsed;
    }
    Ok((rates[0], rates[1]))
}
