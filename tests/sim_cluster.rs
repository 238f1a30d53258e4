//! The cluster core under seeded fault schedules, in the deterministic simulator
//! (`tether_cluster::sim`): the real cores with their real roles, on a virtual clock.
//!
//! Each test runs a range of seeds; a failure prints the seed, its faults and the violated
//! invariant. Replay one with its trace: `TETHER_SIM_SEED=<seed> cargo test --test
//! sim_cluster replay -- --nocapture`. The `stress_` variant runs many more seeds and is
//! ignored by default: `cargo test --release --test sim_cluster stress -- --ignored`.

use std::collections::HashMap;
use std::time::Instant;

use tether::cluster::role::RoleCore;
use tether::cluster::sim::schedule;
use tether::cluster::{NodeInfo, Role};
use tether::node_local::outbox::MemStore;
use tether::node_local::LocalRole;
use tether::node_remote::RemoteRole;

/// The real roles, each local node's outbox kept in memory across its crashes.
fn roles() -> impl FnMut(&NodeInfo, Instant) -> Box<dyn RoleCore> {
    let mut disks: HashMap<String, MemStore> = HashMap::new();
    move |node: &NodeInfo, now: Instant| -> Box<dyn RoleCore> {
        match node.role {
            Role::Remote => Box::new(RemoteRole::new(Default::default(), Default::default(), now)),
            Role::Local => {
                let store = disks.entry(node.name.clone()).or_default().clone();
                let path = std::path::Path::new("outbox.log");
                Box::new(LocalRole::new(path, Box::new(store), 10_000).expect("an empty outbox"))
            }
        }
    }
}

/// Runs `seeds`; fails with every violation found.
fn run(seeds: std::ops::Range<u64>) {
    let t0 = Instant::now();
    let n = seeds.end - seeds.start;
    let (mut acked, mut messages) = (0, 0);
    let mut failures = Vec::new();
    for seed in seeds {
        match schedule::run(seed, roles()) {
            Ok(o) => {
                acked += o.acked;
                messages += o.messages;
            }
            Err(e) => failures.push(e),
        }
    }
    eprintln!(
        "{n} seeded schedules in {:.1}s: {acked} client operations acknowledged, {messages} \
         messages carried, {} failed",
        t0.elapsed().as_secs_f64(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Seeds that once broke an invariant, and what they found (each fixed since; the schedule
/// generator is deterministic, so each still replays the schedule that found it).
const FOUND: &[(u64, &str)] = &[
    (22, "a restarted host's agents were never failed over"),
    (
        24,
        "a failover that hit a fenced node was given up for good",
    ),
    (30, "a restarted host's agents were never failed over"),
    (
        64,
        "an owner placed a second activation where the host was merely unreachable",
    ),
    (
        98,
        "the split-brain veto used a silent candidate's stale report",
    ),
    (
        717,
        "a node cut off kept a downed node out of its count and won a tie",
    ),
    (
        866,
        "an ask overtook tells waiting in the outbox, which were then lost",
    ),
    (
        1283,
        "a backup that restarted lost its copy; the owner believed it held one",
    ),
    (
        2155,
        "a restarted node stayed quarantined: its handshake raised the life compared",
    ),
    (
        3722,
        "a hand-over dropped that a fence had stopped the activation",
    ),
    (
        5291,
        "a claim of an old owner raced the new owner's: two activations",
    ),
    (
        5624,
        "a fenced owner refused a hand-over, then reused an epoch",
    ),
    (
        6831,
        "a pause while fenced asked for a fence that never came: fenced for good",
    ),
    (
        7702,
        "a lookup's probe replaced an entry and dropped its spawn record",
    ),
    (
        9290,
        "an owner placed again an agent whose host was joining, not gone: two activations",
    ),
    (
        12707,
        "an eviction reached a restarted owner before the entry did, and was lost",
    ),
    (
        17942,
        "a losing side restarted its clock when a paused member came back: two activations",
    ),
    // found when their fix was taken out on purpose (the simulator must catch it)
    (
        1000,
        "a cluster stopping by `tether down` placed agents again",
    ),
    (
        1013,
        "a failover placed an agent that prefers neither side on the device",
    ),
];

#[test]
fn seeds_that_found_bugs_keep_every_invariant() {
    let mut failures = Vec::new();
    for (seed, found) in FOUND {
        if let Err(e) = schedule::run(*seed, roles()) {
            failures.push(format!("(once found: {found})\n{e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

// 1 000 schedules in all, in four tests so that they run in parallel
#[test]
fn schedules_0000_0250_keep_every_invariant() {
    run(0..250);
}

#[test]
fn schedules_0250_0500_keep_every_invariant() {
    run(250..500);
}

#[test]
fn schedules_0500_0750_keep_every_invariant() {
    run(500..750);
}

#[test]
fn schedules_0750_1000_keep_every_invariant() {
    run(750..1000);
}

/// Runs `seeds` with live migrations among the faults (`schedule::random_with_moves`).
fn run_moving(seeds: std::ops::Range<u64>) {
    let t0 = Instant::now();
    let n = seeds.end - seeds.start;
    let mut failures = Vec::new();
    let mut acked = 0;
    for seed in seeds {
        let trace = std::env::var("TETHER_SIM_TRACE").is_ok();
        match schedule::run_with_moves(seed, roles(), trace) {
            Ok(o) => acked += o.acked,
            Err(e) => failures.push(e),
        }
    }
    eprintln!(
        "{n} schedules with moves in {:.1}s: {acked} operations acknowledged, {} failed",
        t0.elapsed().as_secs_f64(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Replays one seed of the schedules with moves, traced: `TETHER_SIM_MOVES_SEED=N`.
#[test]
fn replay_with_moves() {
    let Some(seed) = std::env::var("TETHER_SIM_MOVES_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    else {
        return;
    };
    let r = schedule::run_with_moves(seed, roles(), true);
    eprintln!("{r:?}");
    assert!(r.is_ok());
}

/// Seeds of the schedules with moves that once broke an invariant, and what they found.
const FOUND_WITH_MOVES: &[(u64, &str)] = &[
    (
        3947,
        "a lookup between a move's commit and its hand-over found the agent nowhere, and the \
         device's outbox dropped a tell to it as sent to no one",
    ),
    (
        4936,
        "a backup entry that missed a move's commit sent the move to the wrong activation",
    ),
    (
        5429,
        "a fence stopped an agent whose owner and backup were across the split: the winning \
         side had no spawn record and could not place it again",
    ),
];

#[test]
fn seeds_with_moves_that_found_bugs_keep_every_invariant() {
    let mut failures = Vec::new();
    for (seed, found) in FOUND_WITH_MOVES {
        if let Err(e) = schedule::run_with_moves(*seed, roles(), false) {
            failures.push(format!("(once found: {found})\n{e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn schedules_with_moves_keep_every_invariant() {
    run_moving(0..300);
}

#[test]
#[ignore = "slow: run with --release --ignored"]
fn stress_schedules_with_moves_keep_every_invariant() {
    let n: u64 = std::env::var("TETHER_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5_000);
    run_moving(1_000..1_000 + n);
}

#[test]
#[ignore = "slow: run with --release --ignored"]
fn stress_schedules_keep_every_invariant() {
    let n: u64 = std::env::var("TETHER_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    run(1_000..1_000 + n);
}

/// Replays one seed with its trace (see the module doc); does nothing without the variable.
#[test]
fn replay() {
    let Some(seed) = std::env::var("TETHER_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    else {
        return;
    };
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    let sub = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .without_time()
        .with_target(false)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(sub);
    let r = schedule::run_traced(seed, roles(), true);
    eprintln!("{r:?}");
    assert!(r.is_ok());
}
