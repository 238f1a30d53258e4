//! Fault scenarios with real kernel faults, the second way of injecting faults (the first is
//! the fault layer inside each node, in `fault_scenarios.rs`): every node runs in its own
//! Linux network namespace on a bridge, and partitions are nftables rules that drop packets on
//! the receiver's input hook (see `support/netns.rs`). The checks are the same Jepsen-style
//! checks (`support/jepsen.rs`).
//!
//! They need root, iproute2 and nftables; elsewhere each test prints why it skipped.
//! `.ci/run` installs both and sets `TETHER_REQUIRE_NETNS=1`, so there a skip is a failure.
//!
//! ```text
//! cargo test --test kernel_faults -- --nocapture 2>&1 | grep -E '^(scenario|skipped)'
//! ```

mod support;

use std::time::{Duration, Instant};

use support::jepsen::{self, conclude, keys, now_ms, Workload};
use support::netns::{self, Net};

const NODES: [&str; 4] = ["r1", "r2", "r3", "l1"];

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[test]
fn kernel_isolate_of_a_remote_node_fences_it_and_fails_its_agents_over() {
    if netns::skip("kernel_isolate") {
        return;
    }
    let nc = Net::cluster("kern-isolate", &NODES);
    let (c, net) = (&nc.c, &nc.net);
    let (a, b) = keys("r3");
    let mut w = Workload::start(c, &[(&a, "r3"), (&b, "r3"), ("other", "r2")], "l1");
    w.run_for(Duration::from_secs(2));

    net.isolate("r3");
    // the rules are in place from here (each nft command takes a few ms)
    let t = Instant::now();
    let fault_ms = now_ms();
    c.wait(
        &["r1", "r2"],
        &["r3"],
        "unreachable",
        Duration::from_secs(10),
    )
    .expect("r3 unreachable");
    w.timings.insert("detect".into(), secs(t.elapsed()));
    assert!(
        c.wait_mode("r3", "fenced", Duration::from_secs(15)),
        "r3 fences"
    );
    c.wait(&["r1", "r2"], &["r3"], "down", Duration::from_secs(20))
        .expect("r3 decided down");
    w.timings.insert("down".into(), secs(t.elapsed()));
    w.record_failover(fault_ms);
    w.run_for(Duration::from_secs(1));

    let heal = Instant::now();
    net.heal();
    c.wait(&[], &[], "up", Duration::from_secs(30))
        .expect("converged after heal");
    assert!(
        c.wait_mode("r3", "up", Duration::from_secs(10)),
        "r3 lifts its fence"
    );
    w.timings.insert("converge".into(), secs(heal.elapsed()));
    w.run_for(Duration::from_secs(2));
    conclude("kernel-isolate", &w.finish());
}

#[test]
fn kernel_one_way_cut_fences_the_deaf_node() {
    if netns::skip("kernel_one_way") {
        return;
    }
    let nc = Net::cluster("kern-oneway", &NODES);
    let (c, net) = (&nc.c, &nc.net);
    let (a, _) = keys("r3");
    let mut w = Workload::start(c, &[(&a, "r3"), ("other", "r2")], "l1");
    w.run_for(Duration::from_secs(2));

    // r3 hears nobody; everyone still hears r3
    net.drop_from("r3", &["r1", "r2", "l1"]);
    let t = Instant::now();
    let fault_ms = now_ms();
    assert!(
        c.wait_mode("r3", "fenced", Duration::from_secs(15)),
        "the deaf node fences"
    );
    w.timings.insert("fenced".into(), secs(t.elapsed()));
    w.record_failover(fault_ms);

    let heal = Instant::now();
    net.heal();
    c.wait(&[], &[], "up", Duration::from_secs(30))
        .expect("converged after heal");
    assert!(
        c.wait_mode("r3", "up", Duration::from_secs(15)),
        "r3 lifts its fence"
    );
    w.timings.insert("converge".into(), secs(heal.elapsed()));
    w.run_for(Duration::from_secs(2));
    conclude("kernel-one-way-deaf", &w.finish());
}

#[test]
fn kernel_cut_of_the_local_node_queues_and_delivers_in_order_after_heal() {
    if netns::skip("kernel_local_cut") {
        return;
    }
    let nc = Net::cluster("kern-local", &NODES);
    let (c, net) = (&nc.c, &nc.net);
    let args = serde_json::json!({ "dir": c.dir.join("journals") }).to_string();
    c.ok(&[
        "spawn", "ledger", "q", "--on", "r2", "--args", &args, "--via", "r1",
    ]);
    let tell = |v: u64| {
        c.ok(&[
            "tell",
            "ledger/q",
            &format!("{{\"append\": {v}}}"),
            "--via",
            "l1",
        ])
    };
    tell(0);

    net.isolate("l1");
    let cut = Instant::now();
    assert!(
        c.wait_mode("l1", "offline", Duration::from_secs(10)),
        "l1 offline"
    );
    let offline = secs(cut.elapsed());
    for v in 1..=100 {
        let out = tell(v);
        assert!(out.contains("queued"), "tell {v}: {out}");
    }
    let heal = Instant::now();
    net.heal();
    c.wait_outbox_empty("l1", Duration::from_secs(60));
    let drained = secs(heal.elapsed());
    let got = jepsen::applied_values(&c.dir, "ledger/q");
    assert_eq!(
        got,
        (0..=100).collect::<Vec<u64>>(),
        "every queued tell delivered once, in order"
    );
    println!(
        "scenario kernel-local-cut: queued=100 delivered=100 in_order=yes lost=0 duplicates=0 \
         offline={offline:.2}s drained={drained:.2}s"
    );
}
