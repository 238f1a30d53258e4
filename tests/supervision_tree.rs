//! Supervision across the cluster, seen through `tether tree`: restarts, escalation,
//! strategies, handler deadlines, and the cluster-wide tree.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::Cluster;
use tether_actors::epoch::generation;

fn tree(c: &Cluster) -> Value {
    serde_json::from_str(&c.ok(&["tree", "--json"])).expect("tree --json is JSON")
}

/// Every (agent, node, agent json) in a tree.
fn agents_in(t: &Value) -> Vec<(String, String, Value)> {
    fn walk(sup: &Value, node: &str, out: &mut Vec<(String, String, Value)>) {
        for a in sup["agents"].as_array().into_iter().flatten() {
            out.push((
                a["id"].as_str().unwrap().to_owned(),
                node.to_owned(),
                a.clone(),
            ));
        }
        for s in sup["supervisors"].as_array().into_iter().flatten() {
            walk(s, node, out);
        }
    }
    let mut out = Vec::new();
    for n in t["nodes"].as_array().unwrap() {
        if !n["root"].is_null() {
            walk(&n["root"], n["node"].as_str().unwrap(), &mut out);
        }
    }
    out
}

fn agent(t: &Value, id: &str) -> Value {
    agents_in(t)
        .into_iter()
        .find(|(a, _, _)| a == id)
        .unwrap_or_else(|| panic!("{id} not in tree {t:#}"))
        .2
}

fn group<'a>(t: &'a Value, node: &str, name: &str) -> &'a Value {
    let n = t["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == node)
        .unwrap();
    n["root"]["supervisors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no group {name}"))
}

#[test]
fn a_flaky_agent_that_fails_twice_recovers_with_restart_count_two() {
    let c = Cluster::up("flaky2", 1, 1);
    c.ok(&["spawn", "flaky", "x", "--on", "r1", "--via", "l1"]);
    for _ in 0..2 {
        let e = c.err(&["ask", "flaky/x", "\"crash\"", "--via", "l1"]);
        assert!(e.contains("crash requested"), "{e}");
    }
    // the same id, through the same route, answers once it is back
    assert_eq!(
        c.ok(&["ask", "flaky/x", "\"ping\"", "--via", "l1"]).trim(),
        "\"pong\""
    );
    let a = agent(&tree(&c), "flaky/x");
    assert_eq!(a["status"], "running");
    assert_eq!(a["restarts"], 2);
    let epoch = a["epoch"].as_u64().unwrap();
    assert_eq!(generation(epoch), 1, "an in-place restart keeps the epoch");
    assert!(a["last_failure"]["reason"]
        .as_str()
        .unwrap()
        .contains("crash requested"));
    let text = c.ok(&["tree"]);
    assert!(text.contains("flaky/x running restarts=2"), "{text}");
}

#[test]
fn a_crash_loop_past_the_intensity_escalates_to_the_parent() {
    let c = Cluster::up("escalate", 1, 0);
    c.ok(&[
        "group",
        "create",
        "workers",
        "--strategy",
        "one-for-one",
        "--intensity",
        "2/10s",
        "--on",
        "r1",
    ]);
    for k in ["a", "b"] {
        c.ok(&[
            "spawn",
            "flaky",
            k,
            "--on",
            "r1",
            "--group",
            "workers",
            "--backoff",
            "none",
        ]);
    }
    for _ in 0..3 {
        c.err(&["ask", "flaky/b", "\"crash\""]);
    }
    // the group gave up and escalated; the root (one-for-one) restarted it with its agents
    for k in ["a", "b"] {
        assert_eq!(
            c.ok(&["ask", &format!("flaky/{k}"), "\"ping\""]).trim(),
            "\"pong\""
        );
    }
    let t = tree(&c);
    let g = group(&t, "r1", "workers");
    assert_eq!(g["restarts"], 1, "{g:#}");
    let why = g["last_failure"]["reason"].as_str().unwrap();
    assert!(
        why.contains("escalated") && why.contains("more than 2 restarts"),
        "{why}"
    );
    assert_eq!(g["status"], "running");

    // an agent past its own budget is given up, and says why
    c.ok(&[
        "spawn",
        "flaky",
        "solo",
        "--on",
        "r1",
        "--max-restarts",
        "2/10s",
        "--backoff",
        "none",
    ]);
    for _ in 0..3 {
        c.err(&["ask", "flaky/solo", "\"crash\""]);
    }
    let e = c.err(&["ask", "flaky/solo", "\"ping\""]);
    assert!(e.contains("gave up after 2 restarts"), "{e}");
    let solo = agent(&tree(&c), "flaky/solo");
    assert_eq!(solo["status"], "failed");
}

#[test]
fn one_for_all_and_rest_for_one_restart_the_right_siblings_in_order() {
    let c = Cluster::up("strategies", 1, 0);
    for (g, strategy) in [("all", "one-for-all"), ("rest", "rest-for-one")] {
        c.ok(&[
            "group",
            "create",
            g,
            "--strategy",
            strategy,
            "--intensity",
            "5/10s",
            "--on",
            "r1",
        ]);
        for k in ["a", "b", "c"] {
            c.ok(&[
                "spawn",
                "flaky",
                &format!("{g}-{k}"),
                "--on",
                "r1",
                "--group",
                g,
                "--backoff",
                "none",
            ]);
        }
    }
    c.err(&["ask", "flaky/all-b", "\"crash\""]);
    c.err(&["ask", "flaky/rest-b", "\"crash\""]);
    for g in ["all", "rest"] {
        for k in ["a", "b", "c"] {
            assert_eq!(
                c.ok(&["ask", &format!("flaky/{g}-{k}"), "\"ping\""]).trim(),
                "\"pong\""
            );
        }
    }
    let t = tree(&c);
    let restarts = |id: &str| agent(&t, id)["restarts"].as_u64().unwrap();
    assert_eq!(
        [
            restarts("flaky/all-a"),
            restarts("flaky/all-b"),
            restarts("flaky/all-c")
        ],
        [1, 1, 1]
    );
    assert_eq!(
        [
            restarts("flaky/rest-a"),
            restarts("flaky/rest-b"),
            restarts("flaky/rest-c")
        ],
        [0, 1, 1]
    );
    // the order, from the host's log: siblings start again in their start order
    let log = std::fs::read_to_string(c.dir.join("nodes/r1/node.log")).unwrap();
    let order: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("agent restarted"))
        .filter_map(|l| l.split("agent=").nth(1))
        .map(|s| s.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        order,
        [
            "flaky/all-a",
            "flaky/all-b",
            "flaky/all-c",
            "flaky/rest-b",
            "flaky/rest-c"
        ]
    );
}

#[test]
fn a_handler_past_its_deadline_restarts_the_agent_and_the_asker_gets_a_timeout() {
    let c = Cluster::up("deadline", 1, 1);
    c.ok(&[
        "spawn",
        "sleeper",
        "s",
        "--on",
        "r1",
        "--handler-timeout",
        "300",
        "--via",
        "l1",
    ]);
    let start = Instant::now();
    let e = c.err(&[
        "ask",
        "sleeper/s",
        "{\"sleep_ms\": 5000}",
        "--timeout",
        "4000",
        "--via",
        "l1",
    ]);
    let took = start.elapsed();
    assert!(e.contains("no answer within 300 ms"), "{e}");
    assert!(
        took < Duration::from_secs(2),
        "a timeout error, not a hang ({took:?})"
    );
    assert_eq!(
        c.ok(&["ask", "sleeper/s", "{\"sleep_ms\": 10}", "--via", "l1"])
            .trim(),
        "\"done\""
    );
    let a = agent(&tree(&c), "sleeper/s");
    assert_eq!(a["restarts"], 1);
    assert!(a["last_failure"]["reason"]
        .as_str()
        .unwrap()
        .contains("overran its 300 ms deadline"));
}

#[test]
fn the_tree_of_a_three_node_cluster_lists_every_agent_once_with_its_node() {
    let c = Cluster::up("tree3", 2, 1);
    for (k, on) in [("c1", "r1"), ("c2", "r2"), ("c3", "l1"), ("c4", "r1")] {
        c.ok(&["spawn", "counter", k, "--on", on, "--via", "l1"]);
    }
    for k in ["p1", "p2", "p3"] {
        c.ok(&["spawn", "echo", k, "--via", "r2"]);
    }
    let t = tree(&c);
    let listed = agents_in(&t);
    let mut ids: Vec<&str> = listed.iter().map(|(id, _, _)| id.as_str()).collect();
    ids.sort();
    let before = ids.len();
    ids.dedup();
    assert_eq!(before, ids.len(), "no agent listed twice: {listed:?}");
    assert_eq!(ids.len(), 7);
    for (id, node) in [
        ("counter/c1", "r1"),
        ("counter/c2", "r2"),
        ("counter/c3", "l1"),
        ("counter/c4", "r1"),
    ] {
        assert!(
            listed.iter().any(|(i, n, _)| i == id && n == node),
            "{id} on {node}"
        );
    }
    // the tree agrees with `tether agents`
    for a in c.agents() {
        let id = a["id"].as_str().unwrap();
        assert!(
            listed
                .iter()
                .any(|(i, n, _)| i == id && a["node"] == n.as_str()),
            "{id}"
        );
    }
    // an unreachable node keeps its last known subtree, marked stale
    c.kill("r2", libc::SIGKILL);
    let t = tree(&c);
    let r2 = t["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == "r2")
        .unwrap();
    assert_eq!(r2["reachable"], false);
    assert_eq!(r2["stale"], true);
    assert!(agents_in(&t)
        .iter()
        .any(|(i, n, _)| i == "counter/c2" && n == "r2"));
    assert!(
        c.ok(&["tree"]).contains("r2 (unreachable"),
        "the drawing says so"
    );
}
