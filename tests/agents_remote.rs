//! Agents across nodes, through the CLI: remote spawn, ordered tells, asks, errors,
//! get-or-spawn races, local-only, and one trace id across nodes.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{Cluster, TETHER};

#[test]
fn counter_on_a_remote_node_counts_10000_tells_from_the_local_node_in_order() {
    let c = Cluster::up("fifo", 2, 1);
    let out = c.ok(&["spawn", "counter", "c", "--on", "r1", "--via", "l1"]);
    assert!(out.contains("counter/c  node=r1  epoch=1."), "{out}");
    c.ok(&[
        "tell",
        "counter/c",
        "\"inc\"",
        "--repeat",
        "10000",
        "--via",
        "l1",
    ]);
    let got = c.ok(&["ask", "counter/c", "\"get\"", "--via", "l1"]);
    assert_eq!(got.trim(), "10000");
    // per-sender FIFO is checked by the host with the sequence numbers: no gap, no duplicate
    let agents = c.agents();
    assert_eq!(agents.len(), 1);
    let a = &agents[0];
    assert_eq!(a["node"], "r1");
    assert_eq!(a["received"], 10001, "10000 tells and the ask");
    assert_eq!(a["gaps"], 0, "sequence numbers arrived in order");
    assert_eq!(a["duplicates"], 0);
}

#[test]
fn ask_to_an_agent_whose_node_is_killed_fails_within_its_deadline() {
    let c = Cluster::up("killask", 2, 1);
    c.ok(&["spawn", "sleeper", "s", "--on", "r2", "--via", "l1"]);
    let start = Instant::now();
    let ask = Command::new(TETHER)
        .args([
            "ask",
            "sleeper/s",
            "{\"sleep_ms\": 60000}",
            "--timeout",
            "5000",
            "--via",
            "l1",
            "--state-dir",
        ])
        .arg(&c.dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // the ask is on its way once the sleeper has it
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let a = c.agents();
        if a.iter()
            .any(|x| x["id"] == "sleeper/s" && x["received"] == 1)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the ask never reached the sleeper"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    c.kill("r2", libc::SIGKILL);
    let out = ask.wait_with_output().unwrap();
    let took = start.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the ask must fail");
    assert!(
        err.contains("node r2 is unreachable") || err.contains("no answer within 5000 ms"),
        "clear error: {err}"
    );
    assert!(
        took < Duration::from_secs(6),
        "failed within its deadline (took {took:?})"
    );
    eprintln!("ask failed after {took:?}: {err}");
}

#[test]
fn bad_requests_get_clear_errors_and_the_node_serves_the_next_one() {
    let c = Cluster::up("badask", 1, 1);
    c.ok(&["spawn", "counter", "c", "--on", "r1", "--via", "l1"]);
    let e = c.err(&["ask", "counter/nope", "\"get\"", "--via", "l1"]);
    assert!(e.contains("no agent counter/nope"), "{e}");
    let e = c.err(&["ask", "counter/c", "not json", "--via", "l1"]);
    assert!(e.contains("not valid JSON"), "{e}");
    let e = c.err(&["ask", "counter/c", "{\"mul\": 2}", "--via", "l1"]);
    assert!(
        e.contains("cannot read this payload") && e.contains("mul"),
        "{e}"
    );
    let e = c.err(&["tell", "counter/nope", "\"inc\"", "--via", "l1"]);
    assert!(e.contains("no agent counter/nope"), "{e}");
    let e = c.err(&["spawn", "nosuchkind", "x", "--on", "r1", "--via", "l1"]);
    assert!(e.contains("cannot host kind \"nosuchkind\""), "{e}");
    let e = c.err(&["ask", "notanid", "1", "--via", "l1"]);
    assert!(e.contains("KIND/KEY"), "{e}");
    // the node is unharmed
    c.ok(&["tell", "counter/c", "{\"add\": 41}", "--via", "l1"]);
    assert_eq!(
        c.ok(&["ask", "counter/c", "\"inc\"", "--via", "l1"]).trim(),
        "42"
    );
}

#[test]
fn get_or_spawn_of_one_id_from_two_nodes_at_once_yields_one_agent() {
    let c = Cluster::up("race", 2, 1);
    for round in 0..5 {
        let key = format!("race{round}");
        let spawn = |via: &str| {
            Command::new(TETHER)
                .args(["spawn", "counter", &key, "--via", via, "--state-dir"])
                .arg(&c.dir)
                .output()
                .unwrap()
        };
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| spawn("l1"));
            let b = s.spawn(|| spawn("r2"));
            (a.join().unwrap(), b.join().unwrap())
        });
        let (a, b) = (
            String::from_utf8_lossy(&a.stdout),
            String::from_utf8_lossy(&b.stdout),
        );
        let where_a = a.split("  (").next().unwrap().to_owned();
        let where_b = b.split("  (").next().unwrap().to_owned();
        assert_eq!(
            where_a, where_b,
            "both spawns name the same activation:\n{a}\n{b}"
        );
        assert!(
            (a.contains("(spawned)") as u8 + b.contains("(spawned)") as u8) == 1,
            "exactly one spawn created it:\n{a}\n{b}"
        );
    }
    let agents = c.agents();
    for round in 0..5 {
        let n = agents
            .iter()
            .filter(|x| x["id"] == format!("counter/race{round}"))
            .count();
        assert_eq!(n, 1, "counter/race{round} runs once");
    }
}

#[test]
fn local_only_spawn_on_a_remote_node_is_refused_and_nothing_reaches_it() {
    let c = Cluster::up("localonly", 1, 1);
    let frames = |c: &Cluster| {
        Cluster::node(&c.status(), "r1")["agent_counters"]["frames_in"]
            .as_u64()
            .unwrap()
    };
    let before = frames(&c);
    let e = c.err(&[
        "spawn",
        "echo",
        "diary",
        "--on",
        "r1",
        "--local-only",
        "--args",
        "\"SECRET-PAYLOAD\"",
        "--via",
        "l1",
    ]);
    assert!(
        e.contains("local-only") && e.contains("cannot be placed on r1"),
        "{e}"
    );
    // a remote node may not even request it
    let e = c.err(&["spawn", "echo", "diary", "--local-only", "--via", "r1"]);
    assert!(e.contains("r1 is a remote node"), "{e}");
    assert_eq!(frames(&c), before, "no agent frame reached r1");
    // on its own local node it runs, and stays invisible to the remote node
    let out = c.ok(&[
        "spawn",
        "echo",
        "diary",
        "--local-only",
        "--args",
        "\"SECRET-PAYLOAD\"",
        "--via",
        "l1",
    ]);
    assert!(out.contains("node=l1"), "{out}");
    assert_eq!(
        c.ok(&["ask", "echo/diary", "\"hi\"", "--via", "l1"]).trim(),
        "\"hi\""
    );
    let e = c.err(&["ask", "echo/diary", "\"hi\"", "--via", "r1"]);
    assert!(e.contains("no agent echo/diary"), "{e}");
}

#[test]
fn one_trace_id_is_in_both_nodes_logs_for_a_remote_ask() {
    let c = Cluster::up_env(
        "trace",
        1,
        1,
        &[("RUST_LOG", "info,tether_actors=debug,tether_cluster=debug")],
    );
    c.ok(&["spawn", "echo", "t", "--on", "r1", "--via", "l1"]);
    let out = c.tether(&["ask", "echo/t", "{\"x\": 1}", "--via", "l1"]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let trace = err
        .lines()
        .find_map(|l| l.strip_prefix("trace "))
        .unwrap_or_else(|| panic!("ask prints its trace id: {err}"))
        .trim()
        .to_owned();
    assert_eq!(trace.len(), 32);
    for node in ["l1", "r1"] {
        let log = std::fs::read_to_string(c.dir.join("nodes").join(node).join("node.log")).unwrap();
        assert!(log.contains(&trace), "{node}'s log has trace {trace}");
    }
}
