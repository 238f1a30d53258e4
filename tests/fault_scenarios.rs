//! Fault scenarios, checked Jepsen style (see `support/jepsen.rs`): clients append unique
//! entries to `ledger` agents through the local node while a fault is injected, and the
//! checker reads the agents' journals afterwards. A scenario fails if an acknowledged entry
//! was lost, an entry was applied twice, or two activations of one agent acted at once.
//!
//! Faults come from the fault layer inside each node (`tether partition`) and from signals to
//! the node processes (kill -9, SIGSTOP/SIGCONT). Each test prints one `scenario ...` line
//! with its counts and timings:
//!
//! ```text
//! cargo test --test fault_scenarios -- --nocapture 2>&1 | grep '^scenario'
//! ```
//!
//! `TETHER_FLAP_SECS` shortens the flapping scenario (default 60 s, as the issue asks).

mod support;

use std::time::{Duration, Instant};

use support::jepsen::{self, conclude, keys, now_ms, Outage, Outcome, Workload};
use support::Cluster;
use tether_actors::epoch::generation;

/// Heals, waits until every pair is up (and `fenced` nodes lifted their fence), records
/// `converge`, lets the workload run 2 s more, and checks the history.
fn heal_and_finish(
    c: &Cluster,
    mut w: Workload,
    within: Duration,
    fenced: &[&str],
) -> jepsen::Report {
    let heal = Instant::now();
    c.ok(&["heal"]);
    c.wait(&[], &[], "up", within).expect("converged");
    for n in fenced {
        assert!(
            c.wait_mode(n, "up", Duration::from_secs(10)),
            "{n} lifts its fence"
        );
    }
    w.timings.insert("converge".into(), secs(heal.elapsed()));
    w.run_for(Duration::from_secs(2));
    w.finish()
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[test]
fn kill_9_of_a_remote_node_fails_its_agents_over() {
    let c = Cluster::up("scn-kill", 3, 1);
    let (a, b) = keys("r3");
    let mut w = Workload::start(&c, &[(&a, "r3"), (&b, "r3"), ("other", "r2")], "l1");
    w.run_for(Duration::from_secs(2));

    let t = Instant::now();
    let fault_ms = now_ms();
    c.kill("r3", libc::SIGKILL);
    w.outages.push(Outage {
        node: "r3".into(),
        from_ms: fault_ms,
        to_ms: None,
    });
    c.wait(
        &["r1", "r2"],
        &["r3"],
        "unreachable",
        Duration::from_secs(10),
    )
    .expect("r3 unreachable");
    w.timings.insert("detect".into(), secs(t.elapsed()));
    c.wait(&["r1", "r2"], &["r3"], "down", Duration::from_secs(20))
        .expect("r3 decided down");
    w.timings.insert("down".into(), secs(t.elapsed()));
    w.record_failover(fault_ms);
    w.run_for(Duration::from_secs(2));
    let r = w.finish();
    for k in [&a, &b] {
        let e = epochs_of(&c, k);
        assert!(
            e.iter().any(|(n, ep)| n != "r3" && *ep == 2),
            "ledger/{k} failed over with epoch 2: {e:?}"
        );
    }
    conclude("kill-9", &r);
}

fn epochs_of(c: &Cluster, key: &str) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = jepsen::read_journals(&c.dir.join("journals"), "ledger")
        .activations
        .into_iter()
        .filter(|a| a.agent == format!("ledger/{key}"))
        .map(|a| (a.node, generation(a.epoch)))
        .collect();
    v.sort();
    v
}

#[test]
fn a_paused_owner_resumes_as_a_fenced_zombie_that_cannot_act() {
    let c = Cluster::up("scn-stop", 3, 1);
    let (a, b) = keys("r3");
    let mut w = Workload::start(&c, &[(&a, "r3"), (&b, "r3"), ("other", "r2")], "l1");
    w.run_for(Duration::from_secs(2));

    let t = Instant::now();
    let stop_ms = now_ms();
    c.kill("r3", libc::SIGSTOP);
    c.wait(
        &["r1", "r2"],
        &["r3"],
        "unreachable",
        Duration::from_secs(10),
    )
    .expect("r3 unreachable");
    w.timings.insert("detect".into(), secs(t.elapsed()));
    // past the stability window and margin: the majority decides r3 down and fails over
    c.wait(&["r1", "r2"], &["r3"], "down", Duration::from_secs(20))
        .expect("r3 decided down while paused");
    w.record_failover(stop_ms);

    let cont = Instant::now();
    c.kill("r3", libc::SIGCONT);
    w.outages.push(Outage {
        node: "r3".into(),
        from_ms: stop_ms,
        to_ms: Some(now_ms()),
    });
    c.wait(&[], &[], "up", Duration::from_secs(20))
        .expect("r3 fences, is taken back, and every pair is up");
    assert!(
        c.wait_mode("r3", "up", Duration::from_secs(10)),
        "r3 lifts its fence once taken back"
    );
    w.timings.insert("converge".into(), secs(cont.elapsed()));
    w.run_for(Duration::from_secs(2));
    let r = w.finish();
    for k in [&a, &b] {
        let e = epochs_of(&c, k);
        assert!(
            e.iter().any(|(n, ep)| n != "r3" && *ep == 2),
            "ledger/{k} failed over with epoch 2: {e:?}"
        );
    }
    // the zombie's activations were stopped by its fence (a clean stop, journaled)
    let j = jepsen::read_journals(&c.dir.join("journals"), "ledger");
    for act in j
        .activations
        .iter()
        .filter(|x| x.node == "r3" && generation(x.epoch) == 1)
    {
        assert!(act.stop_ms.is_some(), "{act:?} stopped by the fence");
    }
    let hosted = Cluster::node(&c.status(), "r3")["agents_hosted"].clone();
    assert_eq!(hosted, 0, "nothing of the old life runs on r3");
    conclude("sigstop-zombie", &r);
}

#[test]
fn an_isolated_remote_node_fences_and_its_agents_move() {
    let c = Cluster::up("scn-iso", 3, 1);
    let (a, b) = keys("r3");
    let mut w = Workload::start(&c, &[(&a, "r3"), (&b, "r3"), ("other", "r1")], "l1");
    w.run_for(Duration::from_secs(2));
    let t = Instant::now();
    c.ok(&["partition", "--isolate", "r3"]);
    let fault_ms = now_ms(); // the rules are in place
    c.wait(
        &["r1", "r2"],
        &["r3"],
        "unreachable",
        Duration::from_secs(10),
    )
    .expect("r3 unreachable");
    w.timings.insert("detect".into(), secs(t.elapsed()));
    w.record_failover(fault_ms);
    let r = heal_and_finish(&c, w, Duration::from_secs(20), &["r3"]);
    conclude("isolate", &r);
}

#[test]
fn halves_of_five_remote_nodes_fence_the_two_and_move_their_agents() {
    // r1,r2,r3 | r4,r5,l1: the three keep the majority and move the agents of r4 and r5;
    // the clients go through r1 (l1 is on the minority side with the two fenced nodes)
    let c = Cluster::up("scn-halves", 5, 1);
    let mut w = Workload::start(&c, &[("h4", "r4"), ("h5", "r5"), ("h1", "r1")], "r1");
    w.run_for(Duration::from_secs(2));
    let out = c.ok(&["partition", "--halves"]);
    assert!(out.starts_with("halves: r1,r2,r3 | r4,r5,l1"), "{out}");
    let t = Instant::now();
    let fault_ms = now_ms();
    c.wait(
        &["r1", "r2", "r3"],
        &["r4", "r5"],
        "unreachable",
        Duration::from_secs(10),
    )
    .expect("the two unreachable");
    w.timings.insert("detect".into(), secs(t.elapsed()));
    for n in ["r4", "r5"] {
        assert!(
            c.wait_mode(n, "fenced", Duration::from_secs(15)),
            "{n} fences"
        );
    }
    c.wait(
        &["r1", "r2", "r3"],
        &["r4", "r5"],
        "down",
        Duration::from_secs(20),
    )
    .expect("the two decided down");
    w.timings.insert("down".into(), secs(t.elapsed()));
    w.record_failover(fault_ms);
    let r = heal_and_finish(&c, w, Duration::from_secs(30), &["r4", "r5"]);
    conclude("halves-5", &r);
}

#[test]
fn a_one_way_partition_downs_the_node_nobody_hears() {
    let c = Cluster::up("scn-oneway", 3, 1);
    let (a, b) = keys("r3");
    let mut w = Workload::start(&c, &[(&a, "r3"), (&b, "r3"), ("other", "r1")], "l1");
    w.run_for(Duration::from_secs(2));
    let t = Instant::now();
    // nobody hears r3; r3 still hears everybody, and hears them report it unreachable
    c.ok(&["partition", "r3", "r1,r2,l1", "--oneway"]);
    let fault_ms = now_ms(); // the rules are in place
    assert!(
        c.wait_mode("r3", "fenced", Duration::from_secs(10)),
        "r3 fences: nobody on its side hears it"
    );
    c.wait(&["r1", "r2"], &["r3"], "down", Duration::from_secs(20))
        .expect("the majority downs r3");
    w.timings.insert("down".into(), secs(t.elapsed()));
    w.record_failover(fault_ms);
    let r = heal_and_finish(&c, w, Duration::from_secs(20), &[]);
    conclude("one-way", &r);
}

#[test]
fn a_one_way_partition_the_other_way_fences_the_deaf_node() {
    let c = Cluster::up("scn-deaf", 3, 1);
    let (a, b) = keys("r3");
    let mut w = Workload::start(&c, &[(&a, "r3"), (&b, "r3"), ("other", "r1")], "l1");
    w.run_for(Duration::from_secs(2));
    let t = Instant::now();
    // r3 hears nobody; everybody still hears r3
    c.ok(&["partition", "r1,r2,l1", "r3", "--oneway"]);
    let fault_ms = now_ms(); // the rules are in place
    assert!(
        c.wait_mode("r3", "fenced", Duration::from_secs(10)),
        "r3 fences: it hears a minority"
    );
    c.wait(&["r1", "r2"], &["r3"], "down", Duration::from_secs(20))
        .expect("the majority downs r3 (it reports them unreachable)");
    w.timings.insert("down".into(), secs(t.elapsed()));
    w.record_failover(fault_ms);
    let r = heal_and_finish(&c, w, Duration::from_secs(20), &[]);
    conclude("one-way-deaf", &r);
}

#[test]
fn a_bridge_downs_nobody_the_middle_still_hears() {
    // r1,r2 | r3 | r4,r5: both sides see a majority (3 of 5) through the bridge r3
    let c = Cluster::up("scn-bridge", 5, 0);
    let w = Workload::start(&c, &[("a", "r1"), ("b", "r5"), ("c", "r3")], "r3");
    w.run_for(Duration::from_secs(2));
    let out = c.ok(&["partition", "--bridge"]);
    assert!(out.starts_with("bridge: r1,r2 | r3 | r4,r5"), "{out}");
    // past the stability window and margin (5 s after detection): nobody may be downed,
    // since the bridge hears everybody
    w.run_for(Duration::from_secs(9));
    let st = c.status();
    for n in st["nodes"].as_array().unwrap() {
        for p in n["peers"].as_array().unwrap() {
            assert_ne!(p["state"], "down", "{} sees {} down", n["name"], p["name"]);
        }
    }
    let r = heal_and_finish(&c, w, Duration::from_secs(20), &[]);
    assert_eq!(r.activations, 3, "nothing moved");
    conclude("bridge", &r);
}

#[test]
fn a_partition_shorter_than_the_window_loses_nothing() {
    let c = Cluster::up("scn-short", 3, 1);
    let (a, b) = keys("r3");
    let w = Workload::start(&c, &[(&a, "r3"), (&b, "r3")], "l1");
    w.run_for(Duration::from_secs(2));
    c.ok(&["partition", "--isolate", "r3"]);
    c.wait(
        &["r1", "r2"],
        &["r3"],
        "unreachable",
        Duration::from_secs(10),
    )
    .expect("r3 unreachable");
    let r = heal_and_finish(&c, w, Duration::from_secs(10), &[]);
    assert_eq!(r.activations, 2, "nothing moved: one activation per ledger");
    conclude("short-partition", &r);
}

#[test]
fn ten_percent_loss_downs_nobody() {
    let c = Cluster::up("scn-loss", 3, 1);
    let (a, b) = keys("r3");
    let w = Workload::start(&c, &[(&a, "r3"), (&b, "r2")], "l1");
    let before = Cluster::total_changes(&c.status());
    for n in ["r1", "r2", "r3", "l1"] {
        c.ok(&["partition", "--loss", "10", n]);
    }
    // long enough for the resolver to act (3 s window + 2 s margin) were anything suspected
    w.run_for(Duration::from_secs(12));
    assert_eq!(
        Cluster::total_changes(&c.status()),
        before,
        "no peer changed state under 10% loss"
    );
    c.ok(&["heal"]);
    let r = w.finish();
    assert_eq!(r.activations, 2, "nothing moved");
    conclude("loss-10pct", &r);
}

#[test]
fn flapping_partitions_keep_every_invariant() {
    let secs_flap: u64 = std::env::var("TETHER_FLAP_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let c = Cluster::up("scn-flap", 3, 1);
    let (a, b) = keys("r3");
    let mut w = Workload::start(&c, &[(&a, "r3"), (&b, "r1"), ("other", "r2")], "l1");
    w.run_for(Duration::from_secs(2));
    let mut flap = std::process::Command::new(support::TETHER)
        .args(["partition", "--flap", "2", "--state-dir"])
        .arg(&c.dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start tether partition --flap");
    w.run_for(Duration::from_secs(secs_flap));
    let heal = Instant::now();
    c.ok(&["heal"]);
    let status = flap.wait().expect("flap ends on heal");
    assert!(status.success(), "partition --flap stops cleanly on heal");
    c.wait(&[], &[], "up", Duration::from_secs(30))
        .expect("converged after flapping");
    for n in ["r1", "r2", "r3"] {
        assert!(
            c.wait_mode(n, "up", Duration::from_secs(15)),
            "{n} up after flapping"
        );
    }
    w.timings.insert("converge".into(), secs(heal.elapsed()));
    w.run_for(Duration::from_secs(2));
    let r = w.finish();
    conclude("flapping", &r);
}

// ------------------------------------------------------------------ the checker itself

#[test]
fn a_local_node_cut_from_the_cluster_queues_and_delivers_in_order_after_heal() {
    let c = Cluster::up("scn-local-cut", 3, 1);
    let journal_dir = c.dir.join("journals");
    let args = serde_json::json!({ "dir": journal_dir }).to_string();
    c.ok(&[
        "spawn", "ledger", "q", "--on", "r2", "--args", &args, "--via", "r1",
    ]);
    let tell = |v: u64| {
        c.tether(&[
            "tell",
            "ledger/q",
            &format!("{{\"append\": {v}}}"),
            "--via",
            "l1",
        ])
    };
    let out = tell(0);
    assert!(
        out.status.success() && support::text(&out).contains("sent 1"),
        "{}",
        support::text(&out)
    );

    // cut l1 from every remote node: it goes offline, it is never downed
    c.ok(&["partition", "--isolate", "l1"]);
    let cut = Instant::now();
    assert!(
        c.wait_mode("l1", "offline", Duration::from_secs(10)),
        "l1 offline"
    );
    let detect = secs(cut.elapsed());
    for v in 1..=100 {
        let out = tell(v);
        let t = support::text(&out);
        assert!(
            out.status.success() && t.contains("queued 1 of 1"),
            "tell {v}: {t}"
        );
    }
    assert_eq!(c.outbox("l1"), (100, "offline".into()));

    // the local node crashes and comes back, still cut off: its outbox is still there
    c.kill("l1", libc::SIGKILL);
    let seeds: Vec<String> = ["r1", "r2", "r3"].iter().map(|n| c.record(n).0).collect();
    let mut child = c.restart("l1", "local", &seeds);
    assert!(
        c.wait_mode("l1", "offline", Duration::from_secs(10)),
        "l1 offline after restart"
    );
    assert_eq!(
        c.outbox("l1").0,
        100,
        "the outbox survived kill -9 and restart"
    );

    // more work while still cut off, queued behind what survived the restart
    for v in 101..=150 {
        let out = tell(v);
        assert!(out.status.success(), "tell {v}: {}", support::text(&out));
    }
    assert_eq!(c.outbox("l1").0, 150);
    c.ok(&["heal"]);
    let heal = Instant::now();
    c.wait_outbox_empty("l1", Duration::from_secs(60));
    let drained = secs(heal.elapsed());
    let got = jepsen::applied_values(&c.dir, "ledger/q");
    let want: Vec<u64> = (0..=150).collect();
    assert_eq!(got, want, "every queued tell delivered once, in order");
    println!(
        "scenario local-cut: queued=150 (100 before a kill -9 and restart of l1) delivered={} \
         in_order=yes lost=0 duplicates=0 offline={detect:.2}s drained={drained:.2}s",
        got.len() - 1
    );
    c.ok(&["down"]);
    let _ = child.wait();
}

#[test]
fn a_full_outbox_refuses_the_tell_and_keeps_what_it_holds() {
    let c = Cluster::up_env("scn-outbox-full", 1, 1, &[("TETHER_OUTBOX_MAX", "5")]);
    let args = serde_json::json!({ "dir": c.dir.join("journals") }).to_string();
    c.ok(&[
        "spawn", "ledger", "f", "--on", "r1", "--args", &args, "--via", "r1",
    ]);
    c.ok(&["partition", "--isolate", "l1"]);
    assert!(
        c.wait_mode("l1", "offline", Duration::from_secs(10)),
        "l1 offline"
    );
    for v in 1..=5 {
        c.ok(&[
            "tell",
            "ledger/f",
            &format!("{{\"append\": {v}}}"),
            "--via",
            "l1",
        ]);
    }
    let err = c.err(&["tell", "ledger/f", "{\"append\": 6}", "--via", "l1"]);
    assert!(
        err.contains("outbox is full") && err.contains("not queued"),
        "{err}"
    );
    let err = c.err(&[
        "tell",
        "ledger/f",
        "{\"append\": 7}",
        "--via",
        "l1",
        "--repeat",
        "2",
    ]);
    assert!(err.contains("outbox is full"), "{err}");
    // asks are never queued, and never overtake queued tells: they fail at once with the reason
    let err = c.err(&[
        "ask",
        "ledger/f",
        "\"len\"",
        "--via",
        "l1",
        "--timeout",
        "2s",
    ]);
    assert!(
        err.contains("unavailable now") && err.contains("wait in this node's outbox"),
        "{err}"
    );
    assert_eq!(c.outbox("l1"), (5, "offline".into()));
    c.ok(&["heal"]);
    c.wait_outbox_empty("l1", Duration::from_secs(30));
    assert_eq!(
        jepsen::applied_values(&c.dir, "ledger/f"),
        vec![1, 2, 3, 4, 5]
    );
}

fn op(agent: &str, value: u64, outcome: Outcome) -> jepsen::Op {
    jepsen::Op {
        agent: agent.into(),
        value,
        start_ms: 0,
        end_ms: 1,
        outcome,
        error: String::new(),
    }
}

#[test]
fn checker_finds_lost_duplicate_and_concurrent_activity() {
    let mut j = jepsen::Journals::default();
    jepsen::parse_journal(
        "start 100\nop 1 110\nop 2 120\nop 2 170\nstop 200\n",
        "ledger/a",
        "r1",
        1,
        &mut j,
    );
    // a second activation that applies (160) between two applications of the first (120,
    // 170): both act at once
    jepsen::parse_journal("start 150\nop 4 160\n", "ledger/a", "r2", 2, &mut j);
    let ops = [
        op("ledger/a", 1, Outcome::Ok),
        op("ledger/a", 3, Outcome::Ok),
        op("ledger/a", 4, Outcome::Fail),
        op("ledger/a", 5, Outcome::Unknown),
    ];
    let r = jepsen::check(&ops, &j, &[], 1_000);
    assert_eq!((r.attempted, r.ok, r.fail, r.unknown), (4, 2, 1, 1));
    assert_eq!(r.lost, [("ledger/a".to_owned(), 3)]);
    assert_eq!(r.duplicates, [("ledger/a".to_owned(), 2, 2)]);
    assert_eq!(r.failed_but_applied, [("ledger/a".to_owned(), 4)]);
    assert_eq!(r.max_acting, 2);
    assert_eq!(r.max_alive, 2);
    assert!(r.verdict().is_err());
}

#[test]
fn checker_does_not_count_a_paused_or_killed_activation_as_acting() {
    let mut j = jepsen::Journals::default();
    // r3's activation never stops in its journal (paused, then killed)
    jepsen::parse_journal("start 100\nop 1 110\n", "ledger/a", "r3", 1, &mut j);
    jepsen::parse_journal(
        "start 500\nop 2 510\nop 3 600\n",
        "ledger/a",
        "r1",
        2,
        &mut j,
    );
    let ops = [
        op("ledger/a", 1, Outcome::Ok),
        op("ledger/a", 2, Outcome::Ok),
        op("ledger/a", 3, Outcome::Ok),
    ];
    let paused = [Outage {
        node: "r3".into(),
        from_ms: 200,
        to_ms: Some(550),
    }];
    let r = jepsen::check(&ops, &j, &paused, 1_000);
    // resumed at 550 and never stopped: alive with r1's while r1 applied op 3 at 600, but it
    // applied nothing after it resumed: it lingers, it does not act
    assert_eq!(
        (r.max_acting, r.max_alive),
        (1, 2),
        "a resumed idle zombie lingers"
    );
    // the same zombie applying one entry after it resumed acts beside r1's activation
    let mut acted = j.clone();
    jepsen::parse_journal("op 4 580\n", "ledger/a", "r3", 1, &mut acted);
    let r = jepsen::check(&ops, &acted, &paused, 1_000);
    assert_eq!(
        r.max_acting, 2,
        "a zombie that acts after it resumed counts"
    );
    // a handler that began before the pause (190) and wrote its entry after the resume (580):
    // the node was frozen inside it; it acted before the pause, and is a late effect
    let mut frozen = j.clone();
    jepsen::parse_journal(
        "op 4 190 580
",
        "ledger/a",
        "r3",
        1,
        &mut frozen,
    );
    let r = jepsen::check(&ops, &frozen, &paused, 1_000);
    assert_eq!((r.max_acting, r.late_effects), (1, 1));
    // one that began after the resume acts beside r1's activation, in the new format too
    let mut began_late = j.clone();
    jepsen::parse_journal(
        "op 4 575 580
",
        "ledger/a",
        "r3",
        1,
        &mut began_late,
    );
    let r = jepsen::check(&ops, &began_late, &paused, 1_000);
    assert_eq!((r.max_acting, r.late_effects), (2, 0));
    let killed = [Outage {
        node: "r3".into(),
        from_ms: 200,
        to_ms: None,
    }];
    let r = jepsen::check(&ops, &j, &killed, 1_000);
    assert_eq!(r.max_acting, 1);
    assert_eq!(r.max_alive, 1);
    assert!(r.verdict().is_ok(), "{:?}", r.verdict());
}

#[test]
fn checker_classifies_errors_conservatively() {
    assert_eq!(jepsen::classify("error: no agent ledger/a"), Outcome::Fail);
    assert_eq!(
        jepsen::classify("error: refused: node r3 is fenced"),
        Outcome::Fail
    );
    assert_eq!(
        jepsen::classify("error: no answer within 3000 ms"),
        Outcome::Unknown
    );
    assert_eq!(
        jepsen::classify("error: node r3 is unreachable"),
        Outcome::Unknown
    );
}
