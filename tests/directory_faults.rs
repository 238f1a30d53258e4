//! The directory under real faults, one test per case an operator's fault run found (see each
//! test's doc), on real `tether node` processes. Each case is also a seeded schedule of the
//! simulator (tests/sim_cluster.rs), where it was first reproduced.

mod support;

use std::time::{Duration, Instant};

use support::Cluster;
use tether_actors::epoch::generation;

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

/// Asks `id` `msg` via `via` until it answers (at most `within`); the answer and how long it
/// took, or the last error.
fn ask_until(c: &Cluster, id: &str, msg: &str, via: &str, within: Duration) -> (String, Duration) {
    let t = Instant::now();
    loop {
        let out = c.tether(&["ask", id, msg, "--via", via, "--timeout", "2s"]);
        if out.status.success() {
            return (support::text(&out), t.elapsed());
        }
        assert!(
            t.elapsed() < within,
            "{id} answers via {via} within {within:?}: {}",
            support::text(&out)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Case 1: entries lost after a restart. A backup that restarts forgets the copies it held;
/// the owner must copy them again (it records the copy only when acknowledged, per life of the
/// backup). Then the owner and host of every agent is paused past the stability window: the
/// restarted backup must fail them all over.
#[test]
fn a_restarted_backup_is_copied_again_and_fails_the_agents_over() {
    let c = Cluster::up("dir-restart", 3, 0);
    let keys: Vec<String> = (0..6).map(|i| format!("k{i}")).collect();
    for k in &keys {
        c.ok(&["spawn", "counter", k, "--on", "r1", "--via", "r1"]);
    }
    c.kill("r2", libc::SIGKILL);
    c.wait(&["r1", "r3"], &["r2"], "down", Duration::from_secs(20))
        .expect("r2 decided down");
    let seeds = vec![c.record("r1").0];
    let mut r2 = c.restart("r2", "remote", &seeds);
    c.wait(&[], &[], "up", Duration::from_secs(20))
        .expect("r2 back up");
    // the copies go to the new life of r2 (and r3) before r1 stops: wait until r1 holds no
    // unacknowledged notice
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let st = c.status();
        let pending = Cluster::node(&st, "r1")["agent_counters"]["notices_pending"].as_u64();
        if pending == Some(0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "r1's notices were not acknowledged: {pending:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    c.kill("r1", libc::SIGSTOP);
    let mut slowest = Duration::ZERO;
    for k in &keys {
        let id = format!("counter/{k}");
        let (_, took) = ask_until(&c, &id, "\"get\"", "r3", Duration::from_secs(40));
        slowest = slowest.max(took);
    }
    c.kill("r1", libc::SIGCONT);
    for k in &keys {
        let r = running(&c, &format!("counter/{k}"));
        assert_eq!(r.len(), 1, "{k}: {r:?}");
        assert_ne!(r[0].0, "r1", "{k} failed over");
    }
    eprintln!("every agent of the paused node served again after {slowest:?}");
    c.ok(&["down"]);
    let _ = r2.wait();
}

/// Case 2 and 7: a clean `tether down` of the whole cluster places nothing again (agents
/// moved, one onto a remote node, while the cluster shut down), and epochs are never reused.
#[test]
fn tether_down_places_nothing_again() {
    let c = Cluster::up("dir-down", 3, 1);
    let journals = c.dir.join("journals");
    let args = serde_json::json!({ "dir": journals }).to_string();
    for (k, on) in [("a", "r1"), ("b", "r2"), ("c", "r3"), ("d", "l1")] {
        c.ok(&["spawn", "ledger", k, "--on", on, "--args", &args]);
    }
    let activations = || std::fs::read_dir(&journals).map(|d| d.count()).unwrap_or(0);
    let before = activations();
    assert_eq!(before, 4, "one journal per activation");
    let out = support::run_tether(&["down"], &c.dir);
    assert!(out.status.success(), "{}", support::text(&out));
    assert_eq!(
        activations(),
        before,
        "no activation while the cluster stopped"
    );
}

/// Case 3: tells queued on a device while an owner is fenced are delivered after heal, not
/// given up: "given up" is only for an agent that does not exist or failed for good.
#[test]
fn outbox_tells_survive_a_fenced_owner_and_are_all_delivered() {
    let c = Cluster::up("dir-outbox", 3, 1);
    let journals = c.dir.join("journals");
    let args = serde_json::json!({ "dir": journals }).to_string();
    let id = "ledger/q";
    c.ok(&["spawn", "ledger", "q", "--on", "r2", "--args", &args]);
    let owner = owner_of(id);
    c.ok(&["partition", "--isolate", "l1"]);
    assert!(c.wait_mode("l1", "offline", Duration::from_secs(10)));
    for v in 1..=20 {
        let msg = format!("{{\"append\": {v}}}");
        c.ok(&["tell", id, &msg, "--via", "l1"]);
    }
    // the owner is cut off too, and fences
    c.ok(&["partition", "--isolate", &owner]);
    assert!(c.wait_mode(&owner, "fenced", Duration::from_secs(15)));
    c.ok(&["heal"]);
    c.wait_outbox_empty("l1", Duration::from_secs(45));
    let st = c.status();
    let l1 = Cluster::node(&st, "l1");
    assert_eq!(l1["outbox"]["dropped"], 0, "no tell given up: {l1:#}");
    let applied = support::jepsen::applied_values(&c.dir, id);
    assert_eq!(applied, (1..=20).collect::<Vec<u64>>());
}

/// Case 4: a fenced node never answers "no agent" for an agent that exists elsewhere: it says
/// the agent is unavailable from there (retryable); "no agent" is for what does not exist.
#[test]
fn a_fenced_node_says_unavailable_not_no_agent() {
    let c = Cluster::up("dir-notfound", 3, 0);
    for k in ["x", "y", "z"] {
        c.ok(&["spawn", "counter", k, "--on", "r2"]);
    }
    c.ok(&["partition", "--isolate", "r1"]);
    assert!(c.wait_mode("r1", "fenced", Duration::from_secs(15)));
    for k in ["x", "y", "z"] {
        let e = c.err(&["ask", &format!("counter/{k}"), "\"get\"", "--via", "r1"]);
        assert!(!e.contains("no agent"), "{e}");
    }
    c.ok(&["heal"]);
    c.wait(&[], &[], "up", Duration::from_secs(20))
        .expect("healed");
    assert!(c.wait_mode("r1", "up", Duration::from_secs(15)));
    let e = c.err(&["ask", "counter/never-spawned", "\"get\"", "--via", "r2"]);
    assert!(e.contains("no agent counter/never-spawned"), "{e}");
    assert!(e.contains("spawn it to create it"), "{e}");
}

/// Case 5 and 6: after a failover the device's route is refreshed (no "node r1 is
/// unreachable" once the cluster converged), and agents that prefer neither side go back to
/// a remote node, not onto the device.
#[test]
fn after_a_failover_routes_refresh_and_no_agent_lands_on_the_device() {
    let c = Cluster::up("dir-route", 3, 1);
    let keys: Vec<String> = (0..4).map(|i| format!("r{i}")).collect();
    for k in &keys {
        c.ok(&["spawn", "counter", k, "--on", "r1"]);
        // the device learns (and caches) the route to r1
        c.ok(&["ask", &format!("counter/{k}"), "\"inc\"", "--via", "l1"]);
    }
    c.kill("r1", libc::SIGKILL);
    c.wait(&["r2", "r3"], &["r1"], "down", Duration::from_secs(20))
        .expect("r1 decided down");
    for k in &keys {
        let id = format!("counter/{k}");
        ask_until(&c, &id, "\"get\"", "l1", Duration::from_secs(20));
        // converged: every read through the device answers, none names the dead node
        for _ in 0..3 {
            let out = c.ok(&["ask", &id, "\"get\"", "--via", "l1"]);
            assert!(!out.contains("unreachable"), "{out}");
        }
        let r = running(&c, &id);
        assert_eq!(r.len(), 1, "{id}: {r:?}");
        assert!(
            r[0].0 == "r2" || r[0].0 == "r3",
            "{id} failed over onto {r:?}"
        );
        assert_eq!(generation(r[0].1), 2, "{id}: a new generation");
    }
}

/// The id's directory owner among the remote nodes r1..r3, all up.
fn owner_of(id: &str) -> String {
    let remotes = ["r1", "r2", "r3"];
    tether_cluster::directory::owner(id, remotes)
        .expect("an owner")
        .to_owned()
}
