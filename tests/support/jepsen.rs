//! A Jepsen-style recorder and checker for the fault scenarios.
//!
//! **What is recorded.**
//! - Operations, by the clients: every `ask ledger/K {"append": N}` with its start and end
//!   time and its outcome: `ok` (acknowledged), `fail` (refused before it could apply:
//!   no such agent, refused, stale epoch, no directory) or `unknown` (timeout, node
//!   unreachable mid-flight, anything else: it may or may not have applied).
//! - Activations and applications, by the agents: each `ledger` activation journals its start,
//!   every entry it applies (before replying) and its clean stop to its own file
//!   `<key>.<node>.<epoch>.log` (see `tether_actors::builtin`).
//! - Process faults, by the test: a `kill -9` ends a node's activations at that moment, and a
//!   SIGSTOP..SIGCONT interval is time in which its activations cannot act.
//!
//! **What is checked** (any of the first three fails the scenario):
//! - acknowledged but lost: an `ok` operation that no activation applied;
//! - applied twice: an entry applied more than once (by one activation or two);
//! - concurrent activations: at the moment a handler of an activation began to apply an entry,
//!   how many activations of that agent were *acting*: alive and running (started, not
//!   stopped, not killed, not paused) and still to begin applying an entry at or after that
//!   moment. More than one means two instances acted at once: the new one began while the old
//!   one, running, was still to begin something (or the other way round). An old activation
//!   that only lingers after its last entry (a resumed zombie refusing everything until its
//!   fence stops it) is alive but not acting; the alive overlap below reports it. The moment
//!   is when the handler began because that is what a node guarantees: its gate lets no
//!   handler begin while it is fenced or past its lease, but a process frozen in the middle of
//!   a handler (SIGSTOP, a VM pause) finishes that handler when it resumes, after the agent may
//!   have been failed over. Such entries are reported as `late_effects`; an effect on an
//!   outside system needs the epoch as a fencing token there.
//! - also reported: attempted / ok / fail / unknown, `fail` operations that did apply (a wrong
//!   error), the most activations of one agent whose lifetimes overlapped at all (alive, even
//!   if idle: a paused node's activations resume until their fence stops them), and the
//!   scenario's timings.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Cluster;

/// Milliseconds since the Unix epoch (the journals' clock).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How an operation ended, as its client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Fail,
    Unknown,
}

/// One client operation.
#[derive(Debug, Clone)]
pub struct Op {
    pub agent: String,
    pub value: u64,
    pub start_ms: u64,
    pub end_ms: u64,
    pub outcome: Outcome,
    pub error: String,
}

/// One activation, from its journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activation {
    pub agent: String,
    pub node: String,
    pub epoch: u64,
    pub start_ms: u64,
    pub stop_ms: Option<u64>,
}

/// One applied entry, from a journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub agent: String,
    pub value: u64,
    pub node: String,
    pub epoch: u64,
    /// When the handler that applied it began (it had passed its node's gate then).
    pub began_ms: u64,
    /// When the entry was written.
    pub at_ms: u64,
}

/// Time a node could not act: paused (`to_ms` = SIGCONT) or killed (`to_ms` = None).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outage {
    pub node: String,
    pub from_ms: u64,
    pub to_ms: Option<u64>,
}

/// What the journals say.
#[derive(Debug, Default, Clone)]
pub struct Journals {
    pub activations: Vec<Activation>,
    pub applied: Vec<Applied>,
}

/// Reads every `<key>.<node>.<epoch>.log` journal in `dir`; `kind` is the agents' kind.
pub fn read_journals(dir: &Path, kind: &str) -> Journals {
    let mut j = Journals::default();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return j;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".log") else {
            continue;
        };
        let parts: Vec<&str> = stem.rsplitn(3, '.').collect();
        let [epoch, node, key] = parts[..] else {
            continue;
        };
        let Ok(epoch) = epoch.parse() else { continue };
        let agent = format!("{kind}/{key}");
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        parse_journal(&text, &agent, node, epoch, &mut j);
    }
    j
}

/// Parses one journal's lines into `j`.
pub fn parse_journal(text: &str, agent: &str, node: &str, epoch: u64, j: &mut Journals) {
    let mut act = Activation {
        agent: agent.to_owned(),
        node: node.to_owned(),
        epoch,
        start_ms: u64::MAX,
        stop_ms: None,
    };
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w[..] {
            ["start", t] => act.start_ms = act.start_ms.min(t.parse().unwrap_or(u64::MAX)),
            ["stop", t] => act.stop_ms = t.parse().ok(),
            // `op N began written`; older journals have only the write time
            ["op", v, t] | ["op", v, _, t] => {
                let began = if w.len() == 4 { w[2] } else { t };
                if let (Ok(value), Ok(at_ms), Ok(began_ms)) = (v.parse(), t.parse(), began.parse())
                {
                    j.applied.push(Applied {
                        agent: agent.to_owned(),
                        value,
                        node: node.to_owned(),
                        epoch,
                        began_ms,
                        at_ms,
                    });
                }
            }
            // a line cut by a kill -9 mid-write: nothing was acknowledged for it
            _ => {}
        }
    }
    if act.start_ms != u64::MAX {
        j.activations.push(act);
    }
}

/// The checker's findings.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub attempted: usize,
    pub ok: usize,
    pub fail: usize,
    pub unknown: usize,
    /// Acknowledged, applied by no activation.
    pub lost: Vec<(String, u64)>,
    /// Applied more than once: (agent, entry, times).
    pub duplicates: Vec<(String, u64, usize)>,
    /// Reported `fail`, yet applied.
    pub failed_but_applied: Vec<(String, u64)>,
    /// Most activations of one agent alive and running when one of them applied an entry.
    pub max_acting: usize,
    /// Most activations of one agent whose lifetimes overlapped (idle ones included).
    pub max_alive: usize,
    /// Entries written after their node resumed from a pause by a handler that began before
    /// it: a frozen process finishes the handler it was in (see the module doc).
    pub late_effects: usize,
    /// Activations seen.
    pub activations: usize,
    /// Named durations, in seconds (detect, failover, converge, ...).
    pub timings: BTreeMap<String, f64>,
}

impl Report {
    /// Ok, or what went wrong.
    pub fn verdict(&self) -> Result<(), String> {
        let mut bad = Vec::new();
        if !self.lost.is_empty() {
            bad.push(format!(
                "{} acknowledged but lost: {:?}",
                self.lost.len(),
                self.lost
            ));
        }
        if !self.duplicates.is_empty() {
            bad.push(format!("applied twice: {:?}", self.duplicates));
        }
        if self.max_acting > 1 {
            bad.push(format!(
                "{} activations of one agent acted at once",
                self.max_acting
            ));
        }
        if !self.failed_but_applied.is_empty() {
            bad.push(format!(
                "reported failed yet applied: {:?}",
                self.failed_but_applied
            ));
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(bad.join("; "))
        }
    }

    /// One line per scenario, for the closing note and the README.
    pub fn line(&self, scenario: &str) -> String {
        let t: Vec<String> = self
            .timings
            .iter()
            .map(|(k, v)| format!("{k}={v:.2}s"))
            .collect();
        format!(
            "scenario {scenario}: ops attempted={} ok={} fail={} unknown={} lost={} duplicates={} \
             max_active={} (alive overlap {}) late_effects={} activations={} {}",
            self.attempted,
            self.ok,
            self.fail,
            self.unknown,
            self.lost.len(),
            self.duplicates.len(),
            self.max_acting,
            self.max_alive,
            self.late_effects,
            self.activations,
            t.join(" ")
        )
    }
}

/// The intervals in which an activation was alive and able to run.
fn running_spans(a: &Activation, outages: &[Outage], end_ms: u64) -> Vec<(u64, u64)> {
    let mut spans = vec![(a.start_ms, a.stop_ms.unwrap_or(end_ms))];
    for o in outages.iter().filter(|o| o.node == a.node) {
        let (from, to) = (o.from_ms, o.to_ms.unwrap_or(u64::MAX));
        spans = spans
            .into_iter()
            .flat_map(|(s, e)| {
                let mut v = Vec::new();
                if from > s {
                    v.push((s, e.min(from)));
                }
                if to < e {
                    v.push((s.max(to), e));
                }
                v
            })
            .filter(|(s, e)| s < e)
            .collect();
    }
    spans
}

/// Checks a history against the journals. `end_ms` closes activations still running.
pub fn check(ops: &[Op], j: &Journals, outages: &[Outage], end_ms: u64) -> Report {
    let mut r = Report {
        attempted: ops.len(),
        activations: j.activations.len(),
        ..Report::default()
    };
    let mut applied: BTreeMap<(&str, u64), usize> = BTreeMap::new();
    for a in &j.applied {
        *applied.entry((a.agent.as_str(), a.value)).or_default() += 1;
    }
    for op in ops {
        let times = applied
            .get(&(op.agent.as_str(), op.value))
            .copied()
            .unwrap_or(0);
        match op.outcome {
            Outcome::Ok => {
                r.ok += 1;
                if times == 0 {
                    r.lost.push((op.agent.clone(), op.value));
                }
            }
            Outcome::Fail => {
                r.fail += 1;
                if times > 0 {
                    r.failed_but_applied.push((op.agent.clone(), op.value));
                }
            }
            Outcome::Unknown => r.unknown += 1,
        }
    }
    r.duplicates = applied
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|((a, v), n)| ((*a).to_owned(), *v, *n))
        .collect();
    // an activation acts when a handler of it begins (the node's gate lets a handler begin
    // only while the node may act); each activation's last action: after it, an activation
    // that is still alive only exists (a resumed zombie waiting for its fence)
    let mut last: BTreeMap<(&str, &str, u64), u64> = BTreeMap::new();
    for a in &j.applied {
        let l = last
            .entry((a.agent.as_str(), a.node.as_str(), a.epoch))
            .or_insert(0);
        *l = (*l).max(a.began_ms);
    }
    r.late_effects = j
        .applied
        .iter()
        .filter(|a| {
            outages.iter().any(|o| {
                o.node == a.node
                    && a.began_ms <= o.from_ms
                    && o.to_ms.is_some_and(|to| a.at_ms >= to)
            })
        })
        .count();
    let mut spans: BTreeMap<&str, Vec<(u64, u64)>> = BTreeMap::new();
    let mut acting_spans: BTreeMap<&str, Vec<(u64, u64)>> = BTreeMap::new();
    for a in &j.activations {
        let running = running_spans(a, outages, end_ms);
        if let Some(l) = last.get(&(a.agent.as_str(), a.node.as_str(), a.epoch)) {
            acting_spans.entry(a.agent.as_str()).or_default().extend(
                running
                    .iter()
                    .filter(|(s, _)| s <= l)
                    .map(|(s, e)| (*s, (*e).min(*l))),
            );
        }
        spans.entry(a.agent.as_str()).or_default().extend(running);
    }
    for a in &j.applied {
        let acting = acting_spans.get(a.agent.as_str()).map_or(0, |v| {
            v.iter()
                .filter(|(s, e)| *s <= a.began_ms && a.began_ms <= *e)
                .count()
        });
        r.max_acting = r.max_acting.max(acting);
    }
    for v in spans.values() {
        // sweep: +1 at a start, -1 after an end
        let mut points: Vec<(u64, i32)> = v.iter().flat_map(|(s, e)| [(*s, 1), (*e, -1)]).collect();
        points.sort_by_key(|(t, d)| (*t, *d));
        let (mut now, mut most) = (0i32, 0i32);
        for (_, d) in points {
            now += d;
            most = most.max(now);
        }
        r.max_alive = r.max_alive.max(most as usize);
    }
    r
}

/// Classifies a failed `tether ask` by its error text.
pub fn classify(stderr: &str) -> Outcome {
    let definitely_not_applied = [
        "no agent ",
        "(it moved or the route was stale); not delivered",
        "refused:",
        "directory unavailable",
        "message for epoch",
        "cannot host kind",
        "cannot read this payload",
    ];
    if definitely_not_applied.iter().any(|m| stderr.contains(m)) {
        Outcome::Fail
    } else {
        Outcome::Unknown
    }
}

/// A running workload: one client thread per agent appending unique entries through `via`.
pub struct Workload {
    pub journal_dir: PathBuf,
    pub agents: Vec<String>,
    stop: Arc<AtomicBool>,
    ops: Arc<Mutex<Vec<Op>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    pub outages: Vec<Outage>,
    pub timings: BTreeMap<String, f64>,
}

impl Workload {
    /// Spawns one `ledger` per `(key, node)` and starts appending to each.
    pub fn start(c: &Cluster, ledgers: &[(&str, &str)], via: &str) -> Workload {
        let journal_dir = c.dir.join("journals");
        let args = serde_json::json!({ "dir": journal_dir }).to_string();
        for (key, node) in ledgers {
            c.ok(&[
                "spawn", "ledger", key, "--on", node, "--args", &args, "--via", via,
            ]);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(Mutex::new(Vec::new()));
        let next = Arc::new(AtomicU64::new(1));
        let agents: Vec<String> = ledgers.iter().map(|(k, _)| format!("ledger/{k}")).collect();
        let threads = agents
            .iter()
            .map(|agent| {
                let (agent, stop, ops, next) =
                    (agent.clone(), stop.clone(), ops.clone(), next.clone());
                let (dir, via, prefix) = (c.dir.clone(), via.to_owned(), c.prefix.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let value = next.fetch_add(1, Ordering::Relaxed);
                        let msg = format!("{{\"append\": {value}}}");
                        let start_ms = now_ms();
                        let out = super::tether_command(&prefix)
                            .args(["ask", &agent, &msg, "--via", &via, "--timeout", "3s"])
                            .arg("--state-dir")
                            .arg(&dir)
                            .output()
                            .expect("run tether ask");
                        let end_ms = now_ms();
                        let err = String::from_utf8_lossy(&out.stderr).into_owned();
                        let outcome = if out.status.success() {
                            Outcome::Ok
                        } else {
                            classify(&err)
                        };
                        if outcome != Outcome::Ok {
                            // a refused op returns at once: pace the retries
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        ops.lock().unwrap().push(Op {
                            agent: agent.clone(),
                            value,
                            start_ms,
                            end_ms,
                            outcome,
                            error: err.trim().to_owned(),
                        });
                    }
                })
            })
            .collect();
        Workload {
            journal_dir,
            agents,
            stop,
            ops,
            threads,
            outages: Vec::new(),
            timings: BTreeMap::new(),
        }
    }

    /// Waits until every ledger acknowledges an operation begun after `since_ms`, and records
    /// how long that took as `failover`.
    pub fn record_failover(&mut self, since_ms: u64) {
        let failover = self
            .until_all_serve(since_ms, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("every ledger serves again:\n{}", self.last_errors()));
        self.timings.insert("failover".into(), failover);
    }

    /// Lets the workload run for `d` (the scenario's observation window).
    pub fn run_for(&self, d: Duration) {
        std::thread::sleep(d);
    }

    /// Operations acknowledged so far.
    pub fn acknowledged(&self) -> usize {
        self.ops
            .lock()
            .unwrap()
            .iter()
            .filter(|o| o.outcome == Outcome::Ok)
            .count()
    }

    /// Runs until every agent acknowledged an operation that started after `since_ms`, or
    /// `timeout`; returns the time from `since_ms` to the last such first acknowledgement.
    pub fn until_all_serve(&self, since_ms: u64, timeout: Duration) -> Option<f64> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let firsts: Vec<Option<u64>> = {
                let ops = self.ops.lock().unwrap();
                self.agents
                    .iter()
                    .map(|a| {
                        ops.iter()
                            .filter(|o| {
                                &o.agent == a && o.start_ms >= since_ms && o.outcome == Outcome::Ok
                            })
                            .map(|o| o.end_ms)
                            .min()
                    })
                    .collect()
            };
            if firsts.iter().all(Option::is_some) {
                let last = firsts.into_iter().flatten().max().unwrap_or(since_ms);
                return Some(last.saturating_sub(since_ms) as f64 / 1000.0);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last error each agent's client saw (for failure messages).
    pub fn last_errors(&self) -> String {
        let ops = self.ops.lock().unwrap();
        self.agents
            .iter()
            .map(|a| {
                let e = ops
                    .iter()
                    .rev()
                    .find(|o| &o.agent == a)
                    .map_or("no op yet".to_owned(), |o| {
                        format!("{:?} {}", o.outcome, o.error)
                    });
                format!("{a}: {e}")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops the clients and checks the history.
    pub fn finish(mut self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().expect("client thread");
        }
        let end_ms = now_ms();
        let ops = std::mem::take(&mut *self.ops.lock().unwrap());
        let j = read_journals(&self.journal_dir, "ledger");
        let mut r = check(&ops, &j, &self.outages, end_ms);
        r.timings = self.timings;
        r
    }
}

/// Ledger keys, the first owned by `owner` in a 3-remote cluster (so that losing `owner`
/// also loses the directory entry, which its backup must fail over), the second not.
pub fn keys(owner: &str) -> (String, String) {
    let owned = |k: &String| {
        tether_cluster::directory::owner(&format!("ledger/{k}"), ["r1", "r2", "r3"]) == Some(owner)
    };
    let all: Vec<String> = (0..).map(|i| format!("k{i}")).take(50).collect();
    let a = all
        .iter()
        .find(|k| owned(k))
        .expect("a key owned there")
        .clone();
    let b = all
        .iter()
        .find(|k| !owned(k))
        .expect("a key owned elsewhere")
        .clone();
    (a, b)
}

/// Asserts the verdict and prints the scenario line.
pub fn conclude(name: &str, r: &Report) {
    println!("{}", r.line(name));
    if let Err(e) = r.verdict() {
        panic!("scenario {name}: {e}");
    }
    assert!(r.ok > 0, "scenario {name}: nothing was acknowledged");
}

/// The values one ledger's journals (under `state_dir/journals`) hold, in the order they were
/// applied.
pub fn applied_values(state_dir: &Path, agent: &str) -> Vec<u64> {
    let mut applied: Vec<Applied> = read_journals(&state_dir.join("journals"), "ledger")
        .applied
        .into_iter()
        .filter(|a| a.agent == agent)
        .collect();
    applied.sort_by_key(|a| (a.epoch, a.at_ms));
    applied.into_iter().map(|a| a.value).collect()
}
