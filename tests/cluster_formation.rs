//! `tether up` forms a full mesh; status reports it; a second `up` refuses; `down` stops it.

mod support;

use support::{Cluster, TETHER};

#[test]
fn up_detach_forms_full_mesh_of_two_remote_and_one_local() {
    let c = Cluster::up("mesh", 2, 1);
    let st = c.status();
    let nodes = st["nodes"].as_array().unwrap();
    let names: Vec<&str> = nodes.iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["r1", "r2", "l1"]);
    for n in nodes {
        assert_eq!(n["running"], true);
        assert!(n["pid"].as_u64().unwrap() > 0);
        assert!(n["incarnation"].as_u64().unwrap() >= 1);
        let addr: std::net::SocketAddr = n["addr"].as_str().unwrap().parse().unwrap();
        assert!(addr.ip().is_loopback());
        let role = if n["name"].as_str().unwrap().starts_with('r') {
            "remote"
        } else {
            "local"
        };
        assert_eq!(n["role"], role);
        let peers = n["peers"].as_array().unwrap();
        assert_eq!(peers.len(), 2, "{} should see both others", n["name"]);
        for p in peers {
            assert_eq!(p["state"], "up", "{} sees {}", n["name"], p["name"]);
            assert!(p["rtt_ms"].as_f64().unwrap() >= 0.0);
            assert_eq!(
                p["session"], true,
                "ractor session over QUIC {} -> {}",
                n["name"], p["name"]
            );
        }
    }
}

#[test]
fn second_up_on_a_running_state_dir_says_so_and_starts_nothing() {
    let c = Cluster::up("twice", 1, 1);
    let before = c.status();
    let out = c.tether(&["up", "--detach"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already running"), "{err}");
    assert!(
        err.contains("tether down"),
        "the message says what to do: {err}"
    );
    let after = c.status();
    for (a, b) in before["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .zip(after["nodes"].as_array().unwrap())
    {
        assert_eq!(a["pid"], b["pid"], "the running nodes were left alone");
    }
}

#[test]
fn down_stops_every_node_and_status_says_there_is_none() {
    let c = Cluster::up("down", 1, 1);
    let pids: Vec<u32> = ["r1", "l1"].iter().map(|n| c.record(n).1).collect();
    let out = c.ok(&["down"]);
    assert!(
        out.contains("r1: stopped") && out.contains("l1: stopped"),
        "{out}"
    );
    for pid in pids {
        // SAFETY: probing a pid this test started
        assert_ne!(
            unsafe { libc::kill(pid as i32, 0) },
            0,
            "pid {pid} still alive after down"
        );
    }
    let st = c.tether(&["status"]);
    assert!(!st.status.success());
    assert!(String::from_utf8_lossy(&st.stderr).contains("no nodes"));
}

#[test]
fn commands_on_an_empty_state_dir_explain_what_to_do() {
    let dir = support::state_dir("empty");
    let out = support::run_tether(&["status"], &dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tether up"), "{err}");
    let out = std::process::Command::new(TETHER)
        .args(["partition", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("--isolate"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn foreground_up_stops_every_node_cleanly_on_ctrl_c() {
    use std::io::BufRead;
    let dir = support::state_dir("fg");
    let mut child = std::process::Command::new(TETHER)
        .args(["up", "--remote", "1", "--local", "1", "--state-dir"])
        .arg(&dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut pids = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.starts_with("r1 ") || line.starts_with("l1 ") {
            pids.push(
                line.split_whitespace()
                    .nth(3)
                    .unwrap()
                    .parse::<i32>()
                    .unwrap(),
            );
        }
        if line.contains("Ctrl-C stops the cluster") {
            break;
        }
    }
    assert_eq!(pids.len(), 2, "up printed both nodes");
    // SAFETY: interrupting the `tether up` process this test started, as Ctrl-C would
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "up exits cleanly: {status} {rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("stopped 2 node(s)")),
        "{rest:?}"
    );
    for pid in pids {
        // SAFETY: probing pids this test's cluster used
        assert_ne!(unsafe { libc::kill(pid, 0) }, 0, "node pid {pid} is gone");
    }
    assert!(
        !dir.join("nodes/r1/node.json").exists(),
        "a clean stop removes the node record"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
