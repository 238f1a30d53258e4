//! The split-brain resolver, failover and fencing against real node processes (fault layer).
//!
//! 3 remote nodes + 1 local node; r3 is isolated. Keep-majority: r3 (1 of 3 remote nodes)
//! fences itself and stops its agents; r1 and r2 (2 of 3) decide r3 down a margin later and
//! activate r3's agents again on their side with a higher epoch. After heal every agent has
//! exactly one running instance and r3 is back `up`.

mod support;

use std::time::Duration;

use support::Cluster;
use tether_actors::epoch::generation;
use tether_cluster::directory;

/// `n` counter keys, some of whose directory owner is `owner` (the owner's backup fails
/// those over when the owner itself goes down).
fn keys_some_owned_by(n: usize, owner: &str) -> Vec<String> {
    let keys: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
    let owned = keys
        .iter()
        .filter(|k| directory::owner(&format!("counter/{k}"), ["r1", "r2", "r3"]) == Some(owner))
        .count();
    assert!(
        owned > 0 && owned < n,
        "the keys mix owners: {owned} of {n}"
    );
    keys
}

fn running(c: &Cluster, id: &str) -> Vec<(String, u64)> {
    c.agents()
        .iter()
        .filter(|a| a["id"] == id && a["status"] == "running")
        .map(|a| {
            (
                a["node"].as_str().unwrap().to_owned(),
                generation(a["epoch"].as_u64().unwrap()),
            )
        })
        .collect()
}

#[test]
fn isolated_remote_node_fences_and_the_majority_fails_its_agents_over() {
    let c = Cluster::up("sbr-isolate", 3, 1);
    let keys = keys_some_owned_by(6, "r3");
    for k in &keys {
        c.ok(&["spawn", "counter", k, "--on", "r3", "--via", "l1"]);
    }
    for k in &keys {
        assert_eq!(running(&c, &format!("counter/{k}")), [("r3".into(), 1)]);
    }

    c.ok(&["partition", "--isolate", "r3"]);
    // r3 fences after the stability window (3 s) ...
    let out = c.tether(&[
        "wait",
        "--mode",
        "fenced",
        "--node",
        "r3",
        "--timeout",
        "10s",
    ]);
    assert!(
        out.status.success(),
        "r3 fences itself: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ... and the majority downs it a margin later
    c.wait(&["r1", "r2"], &["r3"], "down", Duration::from_secs(15))
        .expect("r1 and r2 decide r3 down");
    let st = c.status();
    assert_eq!(Cluster::node(&st, "r3")["mode"], "fenced");
    assert_eq!(
        Cluster::node(&st, "r3")["agents_hosted"],
        0,
        "a fenced node hosts nothing"
    );
    assert_eq!(Cluster::node(&st, "r1")["mode"], "up");
    assert_eq!(
        Cluster::node(&st, "l1")["mode"],
        "up",
        "l1 still reaches r1 and r2"
    );

    // every agent is serving again on the majority side, with a higher epoch
    for k in &keys {
        let id = format!("counter/{k}");
        let r = running(&c, &id);
        assert_eq!(r.len(), 1, "{id}: {r:?}");
        assert_ne!(r[0].0, "r3", "{id}");
        assert_eq!(r[0].1, 2, "{id}: epoch generation after failover");
        let n = c.ok(&["ask", &id, "\"inc\"", "--via", "l1"]);
        assert_eq!(n.trim(), "1", "{id} answers from its new instance");
    }
    let failovers: u64 = st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["agent_counters"]["failovers"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(failovers, keys.len() as u64);

    // the fenced node refuses new activations
    let err = c.err(&["spawn", "counter", "fresh", "--on", "r3", "--via", "r3"]);
    assert!(
        err.contains("fenced") || err.contains("unreachable"),
        "{err}"
    );

    // heal: r3 comes back, lifts its fence, and still exactly one instance of each agent
    c.ok(&["heal"]);
    c.wait(&[], &[], "up", Duration::from_secs(10))
        .expect("every pair up after heal");
    assert!(
        c.wait_mode("r3", "up", Duration::from_secs(5)),
        "r3 lifts its fence"
    );
    for k in &keys {
        let id = format!("counter/{k}");
        let r = running(&c, &id);
        assert_eq!(r.len(), 1, "{id} after heal: {r:?}");
        assert_eq!(r[0].1, 2, "{id}");
    }
}

#[test]
fn a_partition_shorter_than_the_window_changes_nothing() {
    let c = Cluster::up("sbr-short", 3, 0);
    let k = &keys_some_owned_by(6, "r3")[0];
    c.ok(&["spawn", "counter", k, "--on", "r3", "--via", "r1"]);
    c.ok(&["partition", "--isolate", "r3"]);
    c.wait(
        &["r1", "r2"],
        &["r3"],
        "unreachable",
        Duration::from_secs(5),
    )
    .expect("r3 unreachable");
    // heal well inside the 3 s stability window (1.2 s detection + < 1 s)
    c.ok(&["heal"]);
    c.wait(&[], &[], "up", Duration::from_secs(10))
        .expect("up again");
    let st = c.status();
    for n in ["r1", "r2", "r3"] {
        assert_eq!(Cluster::node(&st, n)["mode"], "up", "{n}");
    }
    assert_eq!(running(&c, &format!("counter/{k}")), [("r3".into(), 1)]);
}

#[test]
fn halves_of_five_remote_nodes_keep_the_three_and_fence_the_two() {
    let c = Cluster::up("sbr-halves", 5, 0);
    let out = c.ok(&["partition", "--halves"]);
    assert!(out.starts_with("halves: r1,r2,r3 | r4,r5"), "{out}");
    for n in ["r4", "r5"] {
        assert!(
            c.wait_mode(n, "fenced", Duration::from_secs(10)),
            "{n} fences"
        );
    }
    c.wait(
        &["r1", "r2", "r3"],
        &["r4", "r5"],
        "down",
        Duration::from_secs(15),
    )
    .expect("the majority downs r4 and r5");
    let st = c.status();
    for n in ["r1", "r2", "r3"] {
        assert_eq!(Cluster::node(&st, n)["mode"], "up", "{n}");
    }
    c.ok(&["heal"]);
    c.wait(&[], &[], "up", Duration::from_secs(10))
        .expect("converged after heal");
    for n in ["r4", "r5"] {
        assert!(
            c.wait_mode(n, "up", Duration::from_secs(5)),
            "{n} lifts its fence"
        );
    }
}
