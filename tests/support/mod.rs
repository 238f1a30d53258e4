//! Shared helpers of the integration tests: a real cluster of `tether` processes in a private
//! state directory, driven through the CLI exactly as an operator would.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const TETHER: &str = env!("CARGO_BIN_EXE_tether");

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh, empty state directory unique to this test.
pub fn state_dir(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("tether-it-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A cluster started with `tether up --detach`; stopped and removed on drop.
pub struct Cluster {
    pub dir: PathBuf,
    /// What every `tether` command of this cluster runs under (e.g. `ip netns exec NS`).
    pub prefix: Vec<String>,
}

impl Cluster {
    pub fn up(tag: &str, remote: usize, local: usize) -> Cluster {
        Self::up_env(tag, remote, local, &[])
    }

    /// `up` with extra environment for the node processes (e.g. RUST_LOG).
    pub fn up_env(tag: &str, remote: usize, local: usize, env: &[(&str, &str)]) -> Cluster {
        let dir = state_dir(tag);
        let c = Cluster {
            dir,
            prefix: Vec::new(),
        };
        let out = Command::new(TETHER)
            .args([
                "up",
                "--detach",
                "--remote",
                &remote.to_string(),
                "--local",
                &local.to_string(),
                "--state-dir",
            ])
            .arg(&c.dir)
            .envs(env.iter().copied())
            .output()
            .expect("run tether up");
        assert!(out.status.success(), "tether up failed:\n{}", text(&out));
        c
    }

    /// Runs `tether ARGS` and asserts failure; returns stderr.
    pub fn err(&self, args: &[&str]) -> String {
        let out = self.tether(args);
        assert!(
            !out.status.success(),
            "tether {args:?} should fail:\n{}",
            text(&out)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `tether agents --json`, as a list.
    pub fn agents(&self) -> Vec<Value> {
        let v: Value =
            serde_json::from_str(&self.ok(&["agents", "--json"])).expect("agents --json is JSON");
        v["agents"].as_array().unwrap().clone()
    }

    /// Runs `tether ARGS --state-dir DIR`.
    pub fn tether(&self, args: &[&str]) -> Output {
        tether_command(&self.prefix)
            .args(args)
            .arg("--state-dir")
            .arg(&self.dir)
            .output()
            .expect("run tether")
    }

    /// Runs `tether ARGS` and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.tether(args);
        assert!(
            out.status.success(),
            "tether {args:?} failed:\n{}",
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `tether status --json`.
    pub fn status(&self) -> Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).expect("status --json is JSON")
    }

    /// `tether wait`: Ok(elapsed) when satisfied within `timeout`, Err(output) otherwise.
    pub fn wait(
        &self,
        nodes: &[&str],
        peers: &[&str],
        state: &str,
        timeout: Duration,
    ) -> Result<Duration, String> {
        let t = format!("{}ms", timeout.as_millis());
        let mut args = vec!["wait", "--state", state, "--timeout", &t];
        let n = nodes.join(",");
        let p = peers.join(",");
        if !nodes.is_empty() {
            args.extend(["--node", &n]);
        }
        if !peers.is_empty() {
            args.extend(["--peer", &p]);
        }
        let start = Instant::now();
        let out = self.tether(&args);
        if out.status.success() {
            Ok(start.elapsed())
        } else {
            Err(text(&out))
        }
    }

    /// `tether wait --mode MODE --node NODE`: whether the node reached the mode in time.
    pub fn wait_mode(&self, node: &str, mode: &str, timeout: Duration) -> bool {
        let t = format!("{}ms", timeout.as_millis());
        let out = self.tether(&["wait", "--mode", mode, "--node", node, "--timeout", &t]);
        out.status.success()
    }

    /// A local node's outbox depth and its mode, from `status --json`.
    pub fn outbox(&self, node: &str) -> (u64, String) {
        let st = self.status();
        let n = Self::node(&st, node);
        (
            n["outbox"]["depth"].as_u64().unwrap_or(u64::MAX),
            n["mode"].as_str().unwrap_or("?").to_owned(),
        )
    }

    /// Polls `status` (no node event reports the outbox) until `node`'s outbox is empty;
    /// panics with the last depth past `timeout`.
    pub fn wait_outbox_empty(&self, node: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let (depth, mode) = self.outbox(node);
            if depth == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{node}'s outbox drains within {timeout:?}: {depth} left ({mode})"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// (addr, pid, incarnation) of a node from its node.json.
    pub fn record(&self, name: &str) -> (String, u32, u64) {
        let p = self.dir.join("nodes").join(name).join("node.json");
        let v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        (
            v["addr"].as_str().unwrap().to_owned(),
            v["pid"].as_u64().unwrap() as u32,
            v["incarnation"].as_u64().unwrap(),
        )
    }

    pub fn kill(&self, name: &str, signal: i32) {
        let (_, pid, _) = self.record(name);
        // SAFETY: signalling a node process this test started
        assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0, "kill {name}");
    }

    /// Starts `tether node` for `name` again (same state dir, so same address and secret);
    /// returns once it printed its ready line.
    pub fn restart(&self, name: &str, role: &str, seeds: &[String]) -> std::process::Child {
        spawn_node_under(&self.prefix, &self.dir, name, role, None, seeds).0
    }

    /// Node `name` in a status snapshot.
    pub fn node<'a>(status: &'a Value, name: &str) -> &'a Value {
        status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// How `observer` sees `peer` in a status snapshot.
    pub fn view<'a>(status: &'a Value, observer: &str, peer: &str) -> &'a Value {
        let node = status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == observer)
            .unwrap_or_else(|| panic!("no node {observer}"));
        node["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == peer)
            .unwrap_or_else(|| panic!("{observer} does not know {peer}"))
    }

    /// Total state changes seen by every node for every peer.
    pub fn total_changes(status: &Value) -> u64 {
        status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|n| n["peers"].as_array().unwrap().iter())
            .map(|p| p["changes"].as_u64().unwrap())
            .sum()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // an in-process node of this test records the test's own pid: forget it first, so
        // that `down` does not signal the test itself
        if let Ok(entries) = std::fs::read_dir(self.dir.join("nodes")) {
            for e in entries.flatten() {
                let rec = e.path().join("node.json");
                let own = std::fs::read(&rec)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                    .and_then(|v| v["pid"].as_u64())
                    == Some(u64::from(std::process::id()));
                if own {
                    let _ = std::fs::remove_file(rec);
                }
            }
        }
        let _ = self.tether(&["down", "--grace", "2s"]);
        if let Ok(entries) = std::fs::read_dir(self.dir.join("nodes")) {
            for e in entries.flatten() {
                if let Ok(b) = std::fs::read(e.path().join("node.json")) {
                    if let Ok(v) = serde_json::from_slice::<Value>(&b) {
                        // an in-process node of the test records the test's own pid
                        if let Some(pid) = v["pid"]
                            .as_u64()
                            .filter(|p| *p != u64::from(std::process::id()))
                        {
                            // SAFETY: killing a leftover node process of this test
                            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                        }
                    }
                }
            }
        }
        if std::env::var_os("TETHER_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Starts `tether node` in `dir` (stderr appended to the node's log); returns the child and
/// the address from its ready line, once it printed it.
pub fn spawn_node(
    dir: &Path,
    name: &str,
    role: &str,
    listen: Option<&str>,
    seeds: &[String],
) -> (std::process::Child, String) {
    spawn_node_under(&[], dir, name, role, listen, seeds)
}

/// [`spawn_node`] under a command prefix (e.g. `ip netns exec NS`).
pub fn spawn_node_under(
    prefix: &[String],
    dir: &Path,
    name: &str,
    role: &str,
    listen: Option<&str>,
    seeds: &[String],
) -> (std::process::Child, String) {
    spawn_node_with(prefix, dir, name, role, listen, seeds, true)
}

/// [`spawn_node_under`], with the demonstration kinds or without.
pub fn spawn_node_with(
    prefix: &[String],
    dir: &Path,
    name: &str,
    role: &str,
    listen: Option<&str>,
    seeds: &[String],
    demo_kinds: bool,
) -> (std::process::Child, String) {
    let node_dir = dir.join("nodes").join(name);
    std::fs::create_dir_all(&node_dir).unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(node_dir.join("node.log"))
        .unwrap();
    let mut cmd = tether_command(prefix);
    cmd.arg("node");
    if demo_kinds {
        cmd.arg("--demo-kinds");
    }
    cmd.args(["--name", name, "--role", role, "--state-dir"])
        .arg(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(log);
    if let Some(l) = listen {
        cmd.args(["--listen", l]);
    }
    if !seeds.is_empty() {
        cmd.args(["--seed", &seeds.join(",")]);
    }
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("addr="))
        .unwrap_or_else(|| {
            let _ = child.kill();
            let log = std::fs::read_to_string(node_dir.join("node.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "{name} did not start (first line {line:?}); the end of its log:\n{}",
                tail.join("\n")
            )
        })
        .to_owned();
    (child, addr)
}

/// `tether`, run under `prefix` if it is not empty.
pub fn tether_command(prefix: &[String]) -> Command {
    match prefix.split_first() {
        None => Command::new(TETHER),
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(TETHER);
            c
        }
    }
}

pub fn run_tether(args: &[&str], dir: &Path) -> Output {
    Command::new(TETHER)
        .args(args)
        .arg("--state-dir")
        .arg(dir)
        .output()
        .expect("run tether")
}

pub fn text(out: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
pub mod jepsen;
pub mod netns;
