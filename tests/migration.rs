//! Live migration on real `tether node` processes: state, epoch and messages follow the
//! agent; refused moves say why and leave the agent serving where it was.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::Cluster;

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

fn get(c: &Cluster, id: &str, via: &str) -> i64 {
    c.ok(&["ask", id, "\"get\"", "--via", via])
        .trim()
        .parse()
        .expect("a number")
}

#[test]
fn a_counter_moves_with_its_state_and_keeps_serving() {
    let c = Cluster::up("mig-basic", 3, 0);
    c.ok(&["spawn", "counter", "m", "--on", "r1", "--via", "r1"]);
    for _ in 0..5 {
        c.ok(&["tell", "counter/m", "\"inc\"", "--via", "r3"]);
    }
    assert_eq!(get(&c, "counter/m", "r3"), 5);
    let before = running(&c, "counter/m");
    let out = c.ok(&["migrate", "counter/m", "--to", "r2", "--json"]);
    let r: Value = serde_json::from_str(out.trim()).expect("JSON report");
    assert_eq!(
        (r["agent"].as_str(), r["from"].as_str(), r["to"].as_str()),
        (Some("counter/m"), Some("r1"), Some("r2"))
    );
    assert!(r["pause_ms"].as_f64().is_some_and(|p| p >= 0.0), "{r}");
    assert!(r["state_bytes"].as_u64().is_some_and(|b| b > 0), "{r}");
    let after = running(&c, "counter/m");
    assert_eq!(after.len(), 1, "one instance: {after:?}");
    assert_eq!(after[0].0, "r2");
    assert!(
        after[0].1 > before[0].1,
        "a newer epoch: {before:?} -> {after:?}"
    );
    assert_eq!(r["epoch"].as_u64(), Some(after[0].1));
    // every node finds it, with its state: r3's route was r1 (forwarded), r1 routes to r2
    for via in ["r3", "r1", "r2"] {
        assert_eq!(get(&c, "counter/m", via), 5, "via {via}");
    }
    c.ok(&["tell", "counter/m", "\"inc\"", "--via", "r1"]);
    assert_eq!(get(&c, "counter/m", "r2"), 6);
    // and back, in the text form
    let line = c.ok(&["migrate", "counter/m", "--to", "r1"]);
    assert!(
        line.starts_with("counter/m moved r2 -> r1 epoch ")
            && line.contains(" pause ")
            && line.contains(" state "),
        "{line}"
    );
    assert_eq!(get(&c, "counter/m", "r3"), 6);
}

#[test]
fn moves_that_cannot_be_done_say_why_and_the_agent_stays() {
    let c = Cluster::up("mig-refused", 2, 1);
    c.ok(&["spawn", "counter", "s", "--on", "r1"]);
    c.ok(&["tell", "counter/s", "\"inc\"", "--via", "r2"]);
    let cases: [(&[&str], &str); 4] = [
        (&["migrate", "counter/s", "--to", "r9"], "r9"),
        (
            &["migrate", "counter/s", "--to", "r1"],
            "already runs on r1",
        ),
        (
            &["migrate", "counter/none", "--to", "r2"],
            "no agent counter/none",
        ),
        (&["migrate", "not-an-id", "--to", "r2"], "KIND/KEY"),
    ];
    for (args, says) in cases {
        let e = c.err(args);
        assert!(e.contains(says), "{args:?}: {e}");
    }
    // a local-only agent never leaves its device
    c.ok(&["spawn", "counter", "p", "--local-only", "--via", "l1"]);
    let e = c.err(&["migrate", "counter/p", "--to", "r1", "--via", "l1"]);
    assert!(e.contains("local-only"), "{e}");
    assert_eq!(running(&c, "counter/p").len(), 1);
    assert_eq!(get(&c, "counter/p", "l1"), 0);
    // two moves of one agent at once: one wins, the other says why, one instance serves
    let dir = c.dir.clone();
    let racer = std::thread::spawn(move || {
        support::run_tether(&["migrate", "counter/s", "--to", "r2", "--via", "r2"], &dir)
    });
    let mine = c.tether(&["migrate", "counter/s", "--to", "r2", "--via", "r1"]);
    let theirs = racer.join().unwrap();
    let ok = [&mine, &theirs]
        .iter()
        .filter(|o| o.status.success())
        .count();
    assert!(
        ok >= 1,
        "{}\n{}",
        support::text(&mine),
        support::text(&theirs)
    );
    let r = running(&c, "counter/s");
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].0, "r2");
    assert_eq!(get(&c, "counter/s", "r1"), 1, "state kept");
}

/// Two nodes keep telling an `audit` agent (it records each sender's sequence numbers) while
/// it moves around three nodes. Returns how many moves were made, and per sender node the
/// tells acknowledged.
/// Every move must succeed unless `faulty`, when a refused move must say why and leave one
/// instance serving.
fn audit_under_moves(
    c: &Cluster,
    id: &str,
    moves_wanted: usize,
    faulty: bool,
) -> (usize, Vec<(&'static str, u64)>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = ["r2", "r3"]
        .into_iter()
        .map(|via| {
            let (dir, stop, id) = (c.dir.clone(), stop.clone(), id.to_owned());
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let args = ["tell", &id, "{\"note\": 1}", "--repeat", "20", "--via", via];
                    let out = support::run_tether(&args, &dir);
                    if out.status.success() {
                        ok += 20;
                    } else {
                        assert!(faulty, "{}", support::text(&out));
                        failed += 1;
                    }
                }
                (via, ok, failed)
            })
        })
        .collect();
    let t = Instant::now();
    let (mut moves, mut refused) = (0, 0);
    let mut to = ["r2", "r3", "r1"].into_iter().cycle();
    while moves < moves_wanted && t.elapsed() < Duration::from_secs(1800) {
        let out = c.tether(&["migrate", id, "--to", to.next().unwrap()]);
        if out.status.success() {
            moves += 1;
        } else {
            let e = support::text(&out);
            assert!(faulty, "move {moves}: {e}");
            assert!(e.contains("error"), "a refused move says why: {e}");
            refused += 1;
            if refused > moves_wanted * 4 {
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut told = Vec::new();
    for s in senders {
        let (via, ok, failed) = s.join().unwrap();
        eprintln!("{via}: {ok} tells acknowledged, {failed} batches failed");
        told.push((via, ok));
    }
    eprintln!(
        "{moves} moves ({refused} refused) in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let r = running(c, id);
    assert_eq!(r.len(), 1, "one instance: {r:?}");
    (moves, told)
}

/// The audit agent's record, per sender: `(count, gaps, repeats)`.
fn report(c: &Cluster, id: &str, via: &str) -> std::collections::BTreeMap<String, (u64, u64, u64)> {
    let out = c.ok(&["ask", id, "\"report\"", "--via", via]);
    let r: Value = serde_json::from_str(out.trim()).expect("a JSON report");
    r.as_object()
        .expect("per sender")
        .iter()
        .map(|(k, v)| {
            let n = |f: &str| v[f].as_u64().unwrap_or(u64::MAX);
            (k.clone(), (n("count"), n("gaps"), n("repeats")))
        })
        .collect()
}

/// An agent that records every sender's sequence numbers moves back and forth among three
/// nodes while two nodes keep telling it: nothing applied twice, each sender's order kept,
/// and nothing lost but the rare tell overtaken on its way through an old host (tells are at
/// most once). `TETHER_MIGRATIONS=10000` runs the figure (CI runs 150).
#[test]
fn migrations_under_concurrent_senders_keep_order_and_lose_and_double_nothing() {
    let wanted: usize = std::env::var("TETHER_MIGRATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    let c = Cluster::up("mig-load", 3, 0);
    c.ok(&["spawn", "audit", "l", "--on", "r1"]);
    let (moves, told) = audit_under_moves(&c, "audit/l", wanted, false);
    assert_eq!(moves, wanted);
    let rec = report(&c, "audit/l", "r1");
    for (via, ok) in told {
        let (count, gaps, repeats) = rec[via];
        assert!(ok > 0, "{via} sent nothing");
        assert_eq!(
            repeats, 0,
            "{via}: nothing twice, nothing out of order: {rec:?}"
        );
        // at most once: a tell still relayed by an old host when its sender's newer one got
        // there first is refused, and counted as a gap; nothing else may go missing
        assert_eq!(count + gaps, ok, "{via}: {rec:?}");
        // a measure more than a rule (0 to 0.5% here, more under load): a bound that catches a
        // way that loses tells wholesale
        assert!(gaps * 50 <= ok, "{via}: {gaps} of {ok} overtaken: {rec:?}");
        eprintln!("{via}: {count} of {ok} tells arrived ({gaps} overtaken and refused)");
    }
}

/// Moves while every datagram of the node the agent starts on has a 10% chance of being
/// dropped: each move succeeds or says why, one instance serves, and no tell is applied twice
/// or out of order. Tells are at most once: one still on its way through the old host when
/// its sender's newer ones, sent direct, got there first is refused (counted as a gap).
#[test]
fn migrations_under_ten_percent_loss_lose_and_double_nothing() {
    let c = Cluster::up("mig-loss", 3, 0);
    c.ok(&["spawn", "audit", "x", "--on", "r1"]);
    c.ok(&["partition", "--loss", "10", "r1"]);
    let (moves, told) = audit_under_moves(&c, "audit/x", 30, true);
    c.ok(&["heal"]);
    assert!(moves >= 10, "only {moves} of 30 moves went through");
    let rec = report(&c, "audit/x", "r1");
    for (via, ok) in told {
        let (count, gaps, repeats) = rec[via];
        assert!(ok > 0, "{via} sent nothing");
        assert!(
            count + gaps <= ok,
            "{via}: {ok} sent, {count} arrived: {rec:?}"
        );
        assert_eq!(
            repeats, 0,
            "{via}: nothing twice, nothing out of order: {rec:?}"
        );
        eprintln!("{via}: {count} of {ok} tells arrived ({gaps} overtaken and refused)",);
    }
    eprintln!("{rec:?}");
}

/// `tether drain` moves every agent off a node with its state, the node then takes no new
/// agents, and `tether down --node` stops it (draining first) without losing any.
#[test]
fn a_drained_node_keeps_no_agent_and_stops_without_loss() {
    let c = Cluster::up("mig-drain", 3, 0);
    let n = 40;
    for i in 0..n {
        let key = format!("d{i}");
        c.ok(&["spawn", "counter", &key, "--on", "r1", "--via", "r2"]);
        c.ok(&[
            "tell",
            &format!("counter/{key}"),
            "\"inc\"",
            "--repeat",
            "3",
            "--via",
            "r2",
        ]);
    }
    let out = c.ok(&["drain", "r1"]);
    assert!(out.contains(&format!("[{n}/{n}]")), "progress shown: {out}");
    assert!(
        out.contains(&format!("r1 drained: {n} moved, 0 stayed")),
        "{out}"
    );
    let agents = c.agents();
    assert!(
        agents.iter().all(|a| a["node"] != "r1"),
        "nothing left on r1"
    );
    let e = c.err(&["spawn", "counter", "late", "--on", "r1", "--via", "r2"]);
    assert!(e.contains("drained"), "{e}");
    c.ok(&["down", "--node", "r1"]);
    for i in 0..n {
        assert_eq!(get(&c, &format!("counter/d{i}"), "r3"), 3, "counter/d{i}");
    }
    assert_eq!(
        agents.iter().filter(|a| a["status"] == "running").count(),
        n,
        "one instance each"
    );
}

/// `tether drain` of a node hosting 1 000 agents while a client keeps telling some of them:
/// every agent leaves with its state, none is lost or doubled, and the node takes no more.
#[test]
fn draining_a_node_with_a_thousand_agents_under_load_loses_none() {
    let c = Cluster::up("mig-drain-1k", 3, 0);
    let n = 1000;
    let t = Instant::now();
    let spawners: Vec<_> = (0..4)
        .map(|w| {
            let dir = c.dir.clone();
            std::thread::spawn(move || {
                for i in (w..n).step_by(4) {
                    let key = format!("k{i}");
                    let args = ["spawn", "counter", &key, "--on", "r1", "--via", "r1"];
                    let out = support::run_tether(&args, &dir);
                    assert!(out.status.success(), "{}", support::text(&out));
                }
            })
        })
        .collect();
    for s in spawners {
        s.join().unwrap();
    }
    eprintln!("{n} agents spawned in {:.1}s", t.elapsed().as_secs_f64());
    // load: the first 20 agents keep getting tells from r2 while r1 drains
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (dir, stop) = (c.dir.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut sent = vec![0i64; 20];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (i, s) in sent.iter_mut().enumerate() {
                    let id = format!("counter/k{i}");
                    let args = ["tell", &id, "\"inc\"", "--repeat", "5", "--via", "r2"];
                    let out = support::run_tether(&args, &dir);
                    assert!(out.status.success(), "{}", support::text(&out));
                    *s += 5;
                }
            }
            sent
        })
    };
    let t = Instant::now();
    let out = c.ok(&["drain", "r1"]);
    let took = t.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = load.join().unwrap();
    assert!(
        out.contains(&format!("r1 drained: {n} moved, 0 stayed")),
        "{}",
        out.lines().last().unwrap_or_default()
    );
    eprintln!("drained {n} agents in {:.1}s", took.as_secs_f64());
    let agents = c.agents();
    assert!(
        agents.iter().all(|a| a["node"] != "r1"),
        "nothing left on r1"
    );
    assert_eq!(
        agents.iter().filter(|a| a["status"] == "running").count(),
        n,
        "one instance each"
    );
    for (i, want) in sent.iter().enumerate() {
        assert_eq!(
            get(&c, &format!("counter/k{i}"), "r3"),
            *want,
            "counter/k{i}"
        );
    }
}

/// A move to a node that has not registered the agent's kind is refused with the kinds it
/// has, and the agent keeps serving where it was.
#[test]
fn a_move_to_a_node_without_the_kind_is_refused() {
    let c = Cluster::up("mig-kind", 3, 0);
    c.ok(&["spawn", "audit", "k", "--on", "r1"]);
    c.ok(&["tell", "audit/k", "{\"note\": 1}", "--via", "r2"]);
    // r3 comes back without the demonstration kinds
    let (addr1, ..) = c.record("r1");
    let (_, _, life) = c.record("r3");
    c.ok(&["down", "--node", "r3", "--no-drain"]);
    let mut r3 = support::spawn_node_with(&[], &c.dir, "r3", "remote", None, &[addr1], false).0;
    assert!(c.record("r3").2 > life, "a new incarnation of r3");
    c.wait(&["r1"], &["r3"], "up", Duration::from_secs(20))
        .expect("r3 back up in r1's view");
    let before = running(&c, "audit/k");
    let e = c.err(&["migrate", "audit/k", "--to", "r3"]);
    assert!(e.contains("audit") && e.contains("counter"), "{e}");
    assert_eq!(running(&c, "audit/k"), before, "it stays where it was");
    assert_eq!(before.len(), 1);
    assert_eq!(before[0].0, "r1");
    let rec = report(&c, "audit/k", "r2");
    assert_eq!(rec["r2"].0, 2, "the tell and the report: {rec:?}");
    let _ = r3.kill();
    let _ = r3.wait();
}
