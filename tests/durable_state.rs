//! Durable agents on real `tether node` processes: state that survives `kill -9` of its node,
//! checkpoints shown by `tether agents`, and the durability flag's errors.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::Cluster;

fn agent(c: &Cluster, id: &str) -> Option<Value> {
    c.agents()
        .into_iter()
        .find(|a| a["id"] == id && a["status"] == "running")
}

/// Asks until an answer comes (at most `within`), as a client during a failover does.
fn ask_until(c: &Cluster, id: &str, msg: &str, via: &str, within: Duration) -> String {
    let t = Instant::now();
    loop {
        let out = c.tether(&["ask", id, msg, "--via", via, "--timeout", "2s"]);
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).trim().to_owned();
        }
        assert!(
            t.elapsed() < within,
            "{id} answers via {via} within {within:?}: {}",
            support::text(&out)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The scenario: five acknowledged increments, the node killed; the counter is served
/// again elsewhere at 5, and the sixth increment answers 6. With `checkpoint`, the same holds
/// once the window has passed (the default window is a second).
#[test]
fn acked_and_checkpointed_counters_keep_their_state_across_kill_9() {
    let c = Cluster::up("durable-kill", 3, 0);
    c.ok(&[
        "spawn",
        "counter",
        "a",
        "--on",
        "r1",
        "--durability",
        "acked",
        "--via",
        "r2",
    ]);
    c.ok(&[
        "spawn",
        "counter",
        "c",
        "--on",
        "r1",
        "--durability",
        "checkpoint",
        "--via",
        "r2",
    ]);
    for n in 1..=5 {
        for id in ["counter/a", "counter/c"] {
            let got = c.ok(&["ask", id, "\"inc\"", "--via", "r2"]);
            assert_eq!(got.trim(), n.to_string(), "{id}");
        }
    }
    // the acked counter's checkpoint covers all five, and is on another node too
    let a = agent(&c, "counter/a").expect("runs");
    assert_eq!(a["durability"], "acked");
    assert_eq!(a["checkpoint"]["seq"], 5, "{a}");
    assert!(a["checkpoint"]["replica"].is_string(), "{a}");
    // the checkpointed one is saved within its window
    let t = Instant::now();
    while agent(&c, "counter/c").and_then(|a| a["checkpoint"]["seq"].as_u64()) != Some(5) {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "checkpointed within its window"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    c.kill("r1", libc::SIGKILL);
    let killed = Instant::now();
    for id in ["counter/a", "counter/c"] {
        let got = ask_until(&c, id, "\"get\"", "r2", Duration::from_secs(30));
        assert_eq!(got, "5", "{id} kept its state");
        assert_eq!(
            c.ok(&["ask", id, "\"inc\"", "--via", "r3"]).trim(),
            "6",
            "{id}"
        );
    }
    eprintln!(
        "served again with state {:?} after kill -9",
        killed.elapsed()
    );
    let a = agent(&c, "counter/a").expect("runs again");
    assert_ne!(a["node"], "r1");
}

#[test]
fn a_wrong_durability_is_refused_with_the_choices() {
    let c = Cluster::up("durable-flag", 1, 0);
    let e = c.err(&["spawn", "counter", "x", "--durability", "always"]);
    assert!(e.contains("none, checkpoint or acked"), "{e}");
    assert!(agent(&c, "counter/x").is_none());
}
