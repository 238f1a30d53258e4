//! `tether-bench` as an instrument: the remote rows run end to end (two node processes and
//! both anchor pairs) and the JSON keeps its documented shape, goals and verdicts included.
//! Speed is not asserted here; figures come from the bench itself.

use std::process::Command;

use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_tether-bench");

#[test]
fn remote_rows_report_every_metric_with_its_anchors() {
    let out = Command::new(BENCH)
        .args(["--quick", "--only", "remote", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("bench --json prints JSON");
    assert!(v["machine"].as_str().is_some_and(|m| m.contains("cores")));
    let metrics = v["metrics"].as_array().unwrap();
    let names: Vec<&str> = metrics
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "remote_tell_throughput",
            "remote_ask_rtt_p50_us",
            "remote_ask_rtt_p99_us",
            "acked_ask_p50_us",
            "remote_spawn_p50_ms",
            "remote_spawn_p99_ms",
            "migration_pause_64k_p50_ms",
            "migration_pause_64k_p99_ms",
            "migration_pause_1m_p99_ms",
            "throughput_while_migrating"
        ]
    );
    for m in metrics {
        let t = m["tether"].as_f64().unwrap();
        assert!(t.is_finite() && t > 0.0, "{m}");
        assert!(
            m["min"].as_f64().unwrap() <= t && t <= m["max"].as_f64().unwrap(),
            "{m}"
        );
        assert_eq!(m["repetitions"], 3, "{m}");
        let anchors = m["anchors"].as_object().unwrap();
        // the pauses are measured against their goals alone
        if m["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("migration_pause"))
        {
            assert!(anchors.is_empty(), "{m}");
            continue;
        }
        assert!(!anchors.is_empty(), "{m}");
        for (name, a) in anchors {
            let a = a.as_f64().unwrap();
            assert!(a.is_finite() && a > 0.0, "{name} in {m}");
            let ratio = m["ratios"][name].as_f64().unwrap();
            assert!((ratio - t / a).abs() < 1e-9 * ratio.abs().max(1.0), "{m}");
        }
    }
    let tell = &metrics[0];
    assert!(tell["anchors"]["ractor_cluster_tcp"].is_number());
    assert!(tell["anchors"]["raw_quinn"].is_number());
    // goals are evaluated: each says what it compares, and the row's verdict is theirs
    let goals = tell["goal"].as_array().unwrap();
    assert_eq!(goals.len(), 1, "{tell}");
    for g in goals {
        let anchor = g["anchor"].as_str().unwrap();
        let factor = g["factor"].as_f64().unwrap();
        let ratio = tell["ratios"][anchor].as_f64().unwrap();
        assert_eq!(g["op"], ">=");
        assert_eq!(g["met"], ratio >= factor, "{g} with ratio {ratio}");
    }
    let all_met = goals.iter().all(|g| g["met"] == true);
    assert_eq!(tell["met"], all_met);
    // a row kept for information has neither goal nor verdict
    let p99 = &metrics[2];
    assert!(p99["goal"].is_null() && p99["met"].is_null(), "{p99}");
    // the misses are exactly the rows that are not met
    let misses: Vec<&str> = v["misses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    let not_met: Vec<&str> = metrics
        .iter()
        .filter(|m| m["met"] == false)
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(misses, not_met);
    // the spawn p99 is set against raw quinn's p99, the acked ask against an ask plus a fsync
    assert!(metrics[5]["anchors"]["raw_quinn_rtt_p99"].is_number());
    assert!(metrics[3]["anchors"]["ask_plus_fsync"].is_number());
}

#[test]
fn bad_only_value_is_refused_with_the_choices() {
    let out = Command::new(BENCH)
        .args(["--only", "nothing"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("local") && err.contains("remote") && err.contains("faults"),
        "{err}"
    );
}
