//! Placement by capability on real nodes: a node offers capabilities (`--cap`; a local node
//! `fs` by default), and an agent's `needs` labels are matched at spawn and at migration, with
//! refusals that name the label.

mod support;

use support::Cluster;

#[test]
fn needs_are_matched_at_spawn_and_at_migration() {
    let c = Cluster::up("caps", 2, 1);
    let status = c.status();
    let caps = |n: &str| Cluster::node(&status, n)["caps"].clone();
    assert_eq!(caps("l1"), serde_json::json!(["fs"]), "a device has files");
    assert_eq!(caps("r1"), serde_json::json!([]));

    // only l1 offers fs: a spawn from anywhere lands there
    let out = c.ok(&["spawn", "counter", "f", "--needs", "fs", "--via", "r1"]);
    assert!(out.contains("node=l1"), "{out}");
    let e = c.err(&["spawn", "counter", "g", "--needs", "gpu", "--via", "r1"]);
    assert!(e.contains("capability gpu"), "{e}");
    let e = c.err(&[
        "spawn", "counter", "h", "--needs", "fs", "--on", "r2", "--via", "r2",
    ]);
    assert!(e.contains("capability fs") && e.contains("r2"), "{e}");

    // a move keeps to nodes that offer what the agent needs
    let e = c.err(&["migrate", "counter/f", "--to", "r1", "--via", "l1"]);
    assert!(e.contains("capability fs"), "{e}");
    c.ok(&["tell", "counter/f", "\"inc\"", "--via", "r1"]);
    let n = c.ok(&["ask", "counter/f", "\"get\"", "--via", "r2"]);
    assert_eq!(n.trim(), "1", "it still serves on l1");
}
