//! kill -9 of a node: detected within 3 s; a restart under the same name is a new incarnation
//! that peers notice within 1 s.

mod support;

use std::time::{Duration, Instant};

use support::Cluster;

#[test]
fn kill_9_is_unreachable_within_3s_and_restart_is_noticed_within_1s() {
    let c = Cluster::up("kill", 2, 1);
    let (r1_addr, _, _) = c.record("r1");
    let (_, _, inc) = c.record("r2");
    c.kill("r2", libc::SIGKILL);
    c.wait(
        &["r1", "l1"],
        &["r2"],
        "unreachable",
        Duration::from_secs(3),
    )
    .expect("peers see a killed node unreachable within 3 s");

    let start = Instant::now();
    let mut child = c.restart("r2", "remote", &[r1_addr]);
    let (_, _, new_inc) = c.record("r2");
    assert!(
        new_inc > inc,
        "a restart is a new incarnation ({inc} -> {new_inc})"
    );
    c.wait(&["r1", "l1"], &["r2"], "up", Duration::from_secs(1))
        .expect("peers see the restarted node up within 1 s");
    let st = c.status();
    for obs in ["r1", "l1"] {
        assert_eq!(
            Cluster::view(&st, obs, "r2")["incarnation"].as_u64(),
            Some(new_inc),
            "{obs} knows the new incarnation"
        );
    }
    eprintln!(
        "restart noticed {:?} after the restarted node was ready",
        start.elapsed()
    );
    c.ok(&["down"]);
    let _ = child.wait();
}

#[test]
fn restart_faster_than_detection_is_noticed_within_1s() {
    let c = Cluster::up("quick", 2, 1);
    let (r1_addr, _, inc) = c.record("r1");
    let (r2_addr, _, _) = c.record("r2");
    c.kill("r1", libc::SIGKILL);
    // no wait for detection: the new life must be noticed through the old connections
    // (stateless reset keyed by the node secret) or the join, not the idle timeout
    let mut child = c.restart("r1", "remote", &[r2_addr]);
    let (addr, _, new_inc) = c.record("r1");
    assert_eq!(addr, r1_addr, "the node reuses its address");
    assert!(new_inc > inc);
    c.wait(&["r2", "l1"], &["r1"], "up", Duration::from_secs(1))
        .expect("noticed within 1 s");
    let st = c.status();
    for obs in ["r2", "l1"] {
        assert_eq!(
            Cluster::view(&st, obs, "r1")["incarnation"].as_u64(),
            Some(new_inc)
        );
    }
    c.ok(&["down"]);
    let _ = child.wait();
}
