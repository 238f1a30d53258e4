//! The production path: `tether certs init`, then one `tether node` per node with seeds.

mod support;

use std::process::{Child, Command};

use support::{run_tether, text, TETHER};

struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start(dir: &std::path::Path, name: &str, role: &str, seeds: &[String]) -> (Child, String) {
    support::spawn_node(dir, name, role, Some("127.0.0.1:0"), seeds)
}

#[test]
fn certs_init_then_nodes_with_seeds_form_a_cluster() {
    let dir = support::state_dir("prod");
    let certs_init = |nodes: &str| {
        Command::new(TETHER)
            .args(["certs", "init", "--nodes", nodes, "--dir"])
            .arg(&dir)
            .output()
            .unwrap()
    };
    let out = certs_init("api-1,api-2,laptop");
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("created CA") && stdout.contains("laptop"),
        "{stdout}"
    );

    let (a, a_addr) = start(&dir, "api-1", "remote", &[]);
    let (b, _) = start(&dir, "api-2", "remote", std::slice::from_ref(&a_addr));
    let (c, _) = start(&dir, "laptop", "local", &[a_addr]);
    let _nodes = Nodes(vec![a, b, c]);

    let out = run_tether(
        &["wait", "--state", "up", "--count", "2", "--timeout", "10s"],
        &dir,
    );
    assert!(
        out.status.success(),
        "full mesh through one seed: {}",
        text(&out)
    );

    // a node without a certificate for its name cannot start, and says what to do
    let out = Command::new(TETHER)
        .args(["node", "--name", "stranger", "--state-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tether certs init"), "{err}");

    // a resolver margin too short to let the losing side fence first is refused
    let out = Command::new(TETHER)
        .args([
            "node",
            "--name",
            "stranger",
            "--sbr-down-margin",
            "100ms",
            "--state-dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--sbr-down-margin at least 500ms"), "{err}");

    // an invalid name is refused before anything happens
    let out = certs_init("Bad_Name");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Bad_Name"));

    drop(_nodes);
    std::fs::remove_dir_all(dir).unwrap();
}
