//! Real kernel faults: each node in its own Linux network namespace on a bridge, partitions
//! made with nftables in the receivers' namespaces.
//!
//! ```text
//!   netns tt<id>n0 (r1, 10.77.0.1) ─ veth ─┐
//!   netns tt<id>n1 (r2, 10.77.0.2) ─ veth ─┤ br0 in netns tt<id>hub (10.77.0.254: the
//!   ...                                     │ operator's CLI and the test clients run here)
//!   netns tt<id>n3 (l1, 10.77.0.4) ─ veth ─┘
//! ```
//!
//! Faults follow Jepsen: a cut drops packets on the *receiver's* input hook
//! (`table inet tether`), so senders see silence, not errors. Heal deletes the table and
//! flushes the neighbour caches. IPv6 is disabled in the namespaces. Every address lives in
//! namespaces this test created; the root namespace is never touched (the veths are created
//! directly inside their namespaces), and dropping [`Net`] deletes the namespaces.
//!
//! These tests need root, iproute2 and nftables. Elsewhere they skip and print why;
//! `TETHER_REQUIRE_NETNS=1` (set by `.ci/run`) turns a skip into a failure.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::{spawn_node_under, state_dir, text, Cluster};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The port every node listens on (each has its own address).
const PORT: u16 = 7000;

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {cmd}: {e}"))
}

fn must(cmd: &str, args: &[&str]) {
    let out = run(cmd, args);
    assert!(out.status.success(), "{cmd} {args:?}:\n{}", text(&out));
}

/// Why these tests cannot run here, if they cannot (probed once per test process: the tests
/// of one binary run in parallel).
pub fn unavailable() -> Option<String> {
    static PROBED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    PROBED.get_or_init(probe).clone()
}

fn probe() -> Option<String> {
    // SAFETY: geteuid has no preconditions
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (network namespaces and nftables need it)".into());
    }
    for (tool, arg, pkg) in [("ip", "-V", "iproute2"), ("nft", "--version", "nftables")] {
        if Command::new(tool).arg(arg).output().is_err() {
            return Some(format!("`{tool}` is not installed (apt-get install {pkg})"));
        }
    }
    let probe = format!(
        "ttprobe{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let out = run("ip", &["netns", "add", &probe]);
    if !out.status.success() {
        return Some(format!("cannot create a network namespace: {}", text(&out)));
    }
    let nft = run(
        "ip",
        &[
            "netns", "exec", &probe, "nft", "add", "table", "inet", "probe",
        ],
    );
    let _ = run("ip", &["netns", "del", &probe]);
    if !nft.status.success() {
        return Some(format!(
            "nftables does not work in a namespace: {}",
            text(&nft)
        ));
    }
    None
}

/// True if the test must skip (the reason is printed); panics instead when
/// `TETHER_REQUIRE_NETNS` is set.
pub fn skip(test: &str) -> bool {
    let Some(why) = unavailable() else {
        return false;
    };
    if std::env::var_os("TETHER_REQUIRE_NETNS").is_some() {
        panic!("{test}: kernel-fault tests are required here (TETHER_REQUIRE_NETNS) but {why}");
    }
    println!("skipped {test}: {why}");
    true
}

/// Namespaces, a bridge and one address per node.
pub struct Net {
    id: String,
    hub: String,
    /// (node name, namespace, address) in order.
    pub nodes: Vec<(String, String, String)>,
}

impl Net {
    /// Creates the hub with its bridge and one namespace per node, all up.
    pub fn create(names: &[&str]) -> Net {
        let id = format!(
            "{}{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let hub = format!("tt{id}hub");
        let mut net = Net {
            id: id.clone(),
            hub: hub.clone(),
            nodes: Vec::new(),
        };
        must("ip", &["netns", "add", &hub]);
        let in_hub = |args: &[&str]| {
            let mut a = vec!["-n", hub.as_str()];
            a.extend_from_slice(args);
            must("ip", &a);
        };
        no_ipv6(&hub);
        in_hub(&["link", "set", "lo", "up"]);
        in_hub(&["link", "add", "br0", "type", "bridge"]);
        in_hub(&["addr", "add", "10.77.0.254/24", "dev", "br0"]);
        in_hub(&["link", "set", "br0", "up"]);
        for (i, name) in names.iter().enumerate() {
            let ns = format!("tt{id}n{i}");
            must("ip", &["netns", "add", &ns]);
            net.nodes
                .push(((*name).to_owned(), ns.clone(), format!("10.77.0.{}", i + 1)));
            no_ipv6(&ns);
            let (a, b) = (format!("tt{id}v{i}a"), format!("tt{id}v{i}b"));
            // both ends are created inside their namespaces: nothing in the root one
            must(
                "ip",
                &[
                    "-n", &ns, "link", "add", &a, "type", "veth", "peer", "name", &b, "netns", &hub,
                ],
            );
            let addr = format!("10.77.0.{}/24", i + 1);
            for args in [
                vec!["-n", &ns, "link", "set", "lo", "up"],
                vec!["-n", &ns, "addr", "add", &addr, "dev", &a],
                vec!["-n", &ns, "link", "set", &a, "up"],
            ] {
                must("ip", &args);
            }
            in_hub(&["link", "set", &b, "master", "br0"]);
            in_hub(&["link", "set", &b, "up"]);
        }
        net
    }

    fn node(&self, name: &str) -> &(String, String, String) {
        self.nodes
            .iter()
            .find(|n| n.0 == name)
            .unwrap_or_else(|| panic!("no node {name} in the net"))
    }

    /// The command prefix that runs something in the hub (the operator's place).
    pub fn hub_prefix(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.hub]
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    }

    /// `node` drops every packet from `from` on its input hook (a receiver-side cut: the
    /// senders see silence). Replaces the node's earlier rules.
    pub fn drop_from(&self, node: &str, from: &[&str]) {
        let (_, ns, _) = self.node(node);
        let addrs: Vec<&str> = from.iter().map(|n| self.node(n).2.as_str()).collect();
        let _ = run(
            "ip",
            &[
                "netns", "exec", ns, "nft", "delete", "table", "inet", "tether",
            ],
        );
        let script = format!(
            "table inet tether {{\n  chain input {{\n    type filter hook input priority 0; \
             policy accept;\n    ip saddr {{ {} }} drop\n  }}\n}}\n",
            addrs.join(", ")
        );
        let f = std::env::temp_dir().join(format!("tt{}-{node}.nft", self.id));
        std::fs::write(&f, script).expect("write nft script");
        must(
            "ip",
            &["netns", "exec", ns, "nft", "-f", &f.display().to_string()],
        );
        let _ = std::fs::remove_file(f);
    }

    /// Cuts `node` from every other node, both ways.
    pub fn isolate(&self, node: &str) {
        let others: Vec<&str> = self
            .nodes
            .iter()
            .map(|n| n.0.as_str())
            .filter(|n| *n != node)
            .collect();
        self.drop_from(node, &others);
        for o in &others {
            self.drop_from(o, &[node]);
        }
    }

    /// Removes every rule and flushes the neighbour caches.
    pub fn heal(&self) {
        for (_, ns, _) in &self.nodes {
            let _ = run(
                "ip",
                &[
                    "netns", "exec", ns, "nft", "delete", "table", "inet", "tether",
                ],
            );
            let _ = run("ip", &["-n", ns, "neigh", "flush", "all"]);
        }
        let _ = run("ip", &["-n", &self.hub, "neigh", "flush", "all"]);
    }

    /// Starts a cluster with one node per namespace (`r*` remote, `l*` local), the CLI in the
    /// hub; returns once every pair is up.
    pub fn cluster(tag: &str, names: &[&str]) -> NetCluster {
        let net = Net::create(names);
        let dir = state_dir(tag);
        let out = run(
            super::TETHER,
            &[
                "certs",
                "init",
                "--dir",
                &dir.display().to_string(),
                "--nodes",
                &names.join(","),
            ],
        );
        assert!(out.status.success(), "certs init:\n{}", text(&out));
        let c = Cluster {
            dir,
            prefix: net.hub_prefix(),
        };
        let seeds: Vec<String> = net
            .nodes
            .iter()
            .filter(|n| n.0.starts_with('r'))
            .map(|n| format!("{}:{PORT}", n.2))
            .collect();
        let mut children = Vec::new();
        for (name, ns, addr) in &net.nodes {
            let role = if name.starts_with('l') {
                "local"
            } else {
                "remote"
            };
            let prefix: Vec<String> = ["ip", "netns", "exec", ns]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
            let listen = format!("{addr}:{PORT}");
            children.push(spawn_node_under(&prefix, &c.dir, name, role, Some(&listen), &seeds).0);
        }
        let nc = NetCluster { c, net, children };
        nc.c.wait(&[], &[], "up", Duration::from_secs(30))
            .expect("the cluster forms across the namespaces");
        nc
    }
}

fn no_ipv6(ns: &str) {
    // /proc/sys/net inside `ip netns exec` is the namespace's own
    must(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; \
             echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6",
        ],
    );
}

impl Drop for Net {
    fn drop(&mut self) {
        for (_, ns, _) in &self.nodes {
            let _ = run("ip", &["netns", "del", ns]);
        }
        let _ = run("ip", &["netns", "del", &self.hub]);
    }
}

/// A cluster in namespaces: the cluster is stopped before the namespaces go.
pub struct NetCluster {
    pub c: Cluster,
    pub net: Net,
    children: Vec<std::process::Child>,
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        let _ = self.c.tether(&["down", "--grace", "2s"]);
        for ch in &mut self.children {
            let _ = ch.kill();
            let _ = ch.wait();
        }
    }
}
