//! Live migration on real `tether node` processes: state, epoch and messages follow the
//! agent; refused moves say why and leave the agent serving where it was.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::Cluster;

/// `(node, epoch)` of every running activation of `id`.
fn running(c: &Cluster, id: &str) -> Vec<(String, u64)> {
    c.agents()
        .iter()
        .filter(|a| a["id"] == id && a["status"] == "running")
        .map(|a| {
            let node = a["node"].as_str().unwrap_or("?").to_owned();
            (node, a["epoch"].as_u64().unwrap_or(0))
        })
        .collect()
}

fn get(c: &Cluster, id: &str, via: &str) -> i64 {
    c.ok(&["ask", id, "\"get\"", "--via", via])
        .trim()
        .parse()
        .expect("a number")
}

#[test]
fn a_counter_moves_with_its_state_and_keeps_serving() {
    let c = Cluster::up("mig-basic", 3, 0);
    c.ok(&["spawn", "counter", "m", "--on", "r1", "--via", "r1"]);
    for _ in 0..5 {
        c.ok(&["tell", "counter/m", "\"inc\"", "--via", "r3"]);
    }
    assert_eq!(get(&c, "counter/m", "r3"), 5);
    let before = running(&c, "counter/m");
    let out = c.ok(&["migrate", "counter/m", "--to", "r2", "--json"]);
    let r: Value = serde_json::from_str(out.trim()).expect("JSON report");
    assert_eq!(
        (r["agent"].as_str(), r["from"].as_str(), r["to"].as_str()),
        (Some("counter/m"), Some("r1"), Some("r2"))
    );
    assert!(r["pause_ms"].as_f64().is_some_and(|p| p >= 0.0), "{r}");
    assert!(r["state_bytes"].as_u64().is_some_and(|b| b > 0), "{r}");
    let after = running(&c, "counter/m");
    assert_eq!(after.len(), 1, "one instance: {after:?}");
    assert_eq!(after[0].0, "r2");
    assert!(
        after[0].1 > before[0].1,
        "a newer epoch: {before:?} -> {after:?}"
    );
    assert_eq!(r["epoch"].as_u64(), Some(after[0].1));
    // every node finds it, with its state: r3's route was r1 (forwarded), r1 routes to r2
    for via in ["r3", "r1", "r2"] {
        assert_eq!(get(&c, "counter/m", via), 5, "via {via}");
    }
    c.ok(&["tell", "counter/m", "\"inc\"", "--via", "r1"]);
    assert_eq!(get(&c, "counter/m", "r2"), 6);
    // and back, in the text form
    let line = c.ok(&["migrate", "counter/m", "--to", "r1"]);
    assert!(
        line.starts_with("counter/m moved r2 -> r1 epoch ")
            && line.contains(" pause ")
            && line.contains(" state "),
        "{line}"
    );
    assert_eq!(get(&c, "counter/m", "r3"), 6);
}

#[test]
fn moves_that_cannot_be_done_say_why_and_the_agent_stays() {
    let c = Cluster::up("mig-refused", 2, 1);
    c.ok(&["spawn", "counter", "s", "--on", "r1"]);
    c.ok(&["tell", "counter/s", "\"inc\"", "--via", "r2"]);
    let cases: [(&[&str], &str); 4] = [
        (&["migrate", "counter/s", "--to", "r9"], "r9"),
        (
            &["migrate", "counter/s", "--to", "r1"],
            "already runs on r1",
        ),
        (
            &["migrate", "counter/none", "--to", "r2"],
            "no agent counter/none",
        ),
        (&["migrate", "not-an-id", "--to", "r2"], "KIND/KEY"),
    ];
    for (args, says) in cases {
        let e = c.err(args);
        assert!(e.contains(says), "{args:?}: {e}");
    }
    // a local-only agent never leaves its device
    c.ok(&["spawn", "counter", "p", "--local-only", "--via", "l1"]);
    let e = c.err(&["migrate", "counter/p", "--to", "r1", "--via", "l1"]);
    assert!(e.contains("local-only"), "{e}");
    assert_eq!(running(&c, "counter/p").len(), 1);
    assert_eq!(get(&c, "counter/p", "l1"), 0);
    // two moves of one agent at once: one wins, the other says why, one instance serves
    let dir = c.dir.clone();
    let racer = std::thread::spawn(move || {
        support::run_tether(&["migrate", "counter/s", "--to", "r2", "--via", "r2"], &dir)
    });
    let mine = c.tether(&["migrate", "counter/s", "--to", "r2", "--via", "r1"]);
    let theirs = racer.join().unwrap();
    let ok = [&mine, &theirs]
        .iter()
        .filter(|o| o.status.success())
        .count();
    assert!(
        ok >= 1,
        "{}\n{}",
        support::text(&mine),
        support::text(&theirs)
    );
    let r = running(&c, "counter/s");
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].0, "r2");
    assert_eq!(get(&c, "counter/s", "r1"), 1, "state kept");
}

/// Tells from two nodes keep coming while the counter moves back and forth: every one is
/// counted once (none lost, none applied twice).
#[test]
fn migrations_under_concurrent_senders_lose_and_double_nothing() {
    let c = Cluster::up("mig-load", 3, 0);
    c.ok(&["spawn", "counter", "l", "--on", "r1"]);
    let per_sender: u64 = 3000;
    let senders: Vec<_> = ["r2", "r3"]
        .into_iter()
        .map(|via| {
            let dir = c.dir.clone();
            std::thread::spawn(move || {
                let n = per_sender / 100;
                for _ in 0..n {
                    let out = support::run_tether(
                        &[
                            "tell",
                            "counter/l",
                            "\"inc\"",
                            "--repeat",
                            "100",
                            "--via",
                            via,
                        ],
                        &dir,
                    );
                    assert!(out.status.success(), "{}", support::text(&out));
                }
            })
        })
        .collect();
    let t = Instant::now();
    let mut moves = 0;
    let mut to = "r2";
    while !senders.iter().all(|s| s.is_finished()) && t.elapsed() < Duration::from_secs(120) {
        let out = c.tether(&["migrate", "counter/l", "--to", to]);
        assert!(
            out.status.success(),
            "move {moves}: {}",
            support::text(&out)
        );
        moves += 1;
        to = match to {
            "r2" => "r3",
            "r3" => "r1",
            _ => "r2",
        };
    }
    for s in senders {
        s.join().unwrap();
    }
    assert!(moves >= 3, "moved {moves} times while the senders sent");
    let want = 2 * per_sender as i64;
    let t = Instant::now();
    let mut got = get(&c, "counter/l", "r1");
    while got < want && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        got = get(&c, "counter/l", "r1");
    }
    assert_eq!(got, want, "after {moves} moves");
    eprintln!("{moves} moves under load, {want} tells counted once each");
}

/// `tether drain` moves every agent off a node with its state, the node then takes no new
/// agents, and `tether down --node` stops it (draining first) without losing any.
#[test]
fn a_drained_node_keeps_no_agent_and_stops_without_loss() {
    let c = Cluster::up("mig-drain", 3, 0);
    let n = 40;
    for i in 0..n {
        let key = format!("d{i}");
        c.ok(&["spawn", "counter", &key, "--on", "r1", "--via", "r2"]);
        c.ok(&[
            "tell",
            &format!("counter/{key}"),
            "\"inc\"",
            "--repeat",
            "3",
            "--via",
            "r2",
        ]);
    }
    let out = c.ok(&["drain", "r1"]);
    assert!(out.contains(&format!("[{n}/{n}]")), "progress shown: {out}");
    assert!(
        out.contains(&format!("r1 drained: {n} moved, 0 stayed")),
        "{out}"
    );
    let agents = c.agents();
    assert!(
        agents.iter().all(|a| a["node"] != "r1"),
        "nothing left on r1"
    );
    let e = c.err(&["spawn", "counter", "late", "--on", "r1", "--via", "r2"]);
    assert!(e.contains("drained"), "{e}");
    c.ok(&["down", "--node", "r1"]);
    for i in 0..n {
        assert_eq!(get(&c, &format!("counter/d{i}"), "r3"), 3, "counter/d{i}");
    }
    assert_eq!(
        agents.iter().filter(|a| a["status"] == "running").count(),
        n,
        "one instance each"
    );
}
