//! `tether partition` and `tether heal`: fault rules in every node's fault layer.
//!
//! A partition replaces the previous partition (rules tagged `partition`); link quality
//! (`--loss`, `--delay`) replaces the previous quality rules of that node (tag `quality`). So
//! the two combine, and running `partition` again moves the cut instead of adding to it.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;
use tether_cluster::net::fault::{Action, Direction, FaultRule, PeerMatch};
use tether_cluster::net::statedir::NodeRecord;
use tether_cluster::{ControlRequest, ControlResponse};

use super::common::{call_each, connect_all, Found, CONTROL_TIMEOUT};
use super::StateDirArg;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  tether partition r1,l1 r2          r1 and l1 on one side, r2 on the other
  tether partition r1 r2 --oneway    r2 stops hearing r1; r1 still hears r2
  tether partition --isolate r2      r2 alone
  tether partition --loss 10 r1      drop 10% of r1's datagrams to and from other nodes
  tether partition --delay 50 --jitter 10 l1
  tether partition --halves          first half of the nodes (by name) against the second
  tether partition --bridge          two sides that cannot talk; the middle node talks to both
  tether partition --ring            each node hears only its two ring neighbours
  tether partition --flap 2          cut halves / heal at random every ~2 s until Ctrl-C or heal
  tether heal                        remove every rule

Nodes are ordered remote first, then local, each by name, for the presets.")]
pub(crate) struct PartitionArgs {
    /// Groups of comma-separated node names (or, with --loss/--delay, the one node to degrade).
    groups: Vec<String>,
    /// Drop only traffic from the first group to the others.
    #[arg(long)]
    oneway: bool,
    /// Cut this node from every other node.
    #[arg(long, conflicts_with_all = ["oneway", "loss", "delay"])]
    isolate: Option<String>,
    /// Drop this percentage (0-100) of the node's datagrams to and from other nodes.
    #[arg(long, conflicts_with = "oneway")]
    loss: Option<f64>,
    /// Delay the node's outgoing datagrams to other nodes by this many milliseconds.
    #[arg(long, conflicts_with = "oneway")]
    delay: Option<u64>,
    /// Extra random delay of up to this many milliseconds (with --delay).
    #[arg(long, requires = "delay", default_value_t = 0)]
    jitter: u64,
    /// Preset: the first half of the nodes against the second half.
    #[arg(long, conflicts_with_all = ["oneway", "isolate", "loss", "delay", "bridge", "ring", "flap"])]
    halves: bool,
    /// Preset: two sides that cannot talk to each other, and the middle node (the bridge)
    /// that talks to both.
    #[arg(long, conflicts_with_all = ["oneway", "isolate", "loss", "delay", "ring", "flap"])]
    bridge: bool,
    /// Preset: the nodes in a ring, each hearing only its two neighbours, so each sees a
    /// different majority.
    #[arg(long, conflicts_with_all = ["oneway", "isolate", "loss", "delay", "flap"])]
    ring: bool,
    /// Preset: cut the cluster into random halves and heal, again and again, each state
    /// lasting a random 0.5x-1.5x of SECONDS, until Ctrl-C or `tether heal` (then it heals).
    #[arg(long, value_name = "SECONDS", conflicts_with_all = ["oneway", "isolate", "loss", "delay"])]
    flap: Option<f64>,
    #[command(flatten)]
    dir: StateDirArg,
}

/// The rules each node gets, under one tag.
type Plan = BTreeMap<String, Vec<FaultRule>>;

pub(crate) async fn partition(a: PartitionArgs) -> anyhow::Result<ExitCode> {
    let (_op, found) = connect_all(&a.dir.state_dir).await?;
    let nodes: Vec<&NodeRecord> = found.iter().map(|f| &f.record).collect();
    let preset = a.halves || a.bridge || a.ring || a.flap.is_some();
    if preset && !a.groups.is_empty() {
        bail!("presets (--halves, --bridge, --ring, --flap) take no groups");
    }
    if let Some(secs) = a.flap {
        return flap(&found, secs).await;
    }
    let (tag, plan) = if preset {
        let ordered = preset_order(&nodes);
        let (what, plan) = if a.halves {
            let (x, y) = halves(&ordered);
            (
                format!("halves: {} | {}", x.join(","), y.join(",")),
                group_plan(&nodes, &[x, y], false)?,
            )
        } else if a.bridge {
            let (x, bridge, y) = bridge(&ordered)?;
            (
                format!(
                    "bridge: {} | {} | {} ({bridge} talks to both sides)",
                    x.join(","),
                    bridge,
                    y.join(",")
                ),
                group_plan(&nodes, &[x, y], false)?,
            )
        } else {
            let plan = ring_plan(&nodes, &ordered)?;
            (
                format!(
                    "ring: {} (each node hears its two neighbours)",
                    ordered.join(" - ")
                ),
                plan,
            )
        };
        println!("{what}");
        ("partition", plan)
    } else if a.loss.is_some() || a.delay.is_some() {
        let [target] = a.groups.as_slice() else {
            bail!(
                "--loss/--delay take exactly one node name, e.g. `tether partition --loss 10 r1`"
            );
        };
        find(&nodes, target)?;
        ("quality", quality_plan(target, a.loss, a.delay, a.jitter)?)
    } else if let Some(n) = &a.isolate {
        if !a.groups.is_empty() {
            bail!("--isolate takes no groups");
        }
        find(&nodes, n)?;
        let rest: Vec<String> = nodes
            .iter()
            .filter(|r| &r.name != n)
            .map(|r| r.name.clone())
            .collect();
        (
            "partition",
            group_plan(&nodes, &[vec![n.clone()], rest], false)?,
        )
    } else {
        if a.groups.len() < 2 {
            bail!(
                "give at least two groups, e.g. `tether partition r1,l1 r2`, or use --isolate NODE"
            );
        }
        let groups: Vec<Vec<String>> = a
            .groups
            .iter()
            .map(|g| {
                g.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .collect();
        ("partition", group_plan(&nodes, &groups, a.oneway)?)
    };
    apply(&found, tag, &plan).await
}

/// Node names in preset order: remote nodes first, then local ones, each by name.
fn preset_order(nodes: &[&NodeRecord]) -> Vec<String> {
    let mut v: Vec<(bool, String)> = nodes
        .iter()
        .map(|r| (r.role != tether_cluster::Role::Remote, r.name.clone()))
        .collect();
    v.sort();
    v.into_iter().map(|(_, n)| n).collect()
}

/// The first half (the larger one when odd) against the rest.
fn halves(ordered: &[String]) -> (Vec<String>, Vec<String>) {
    let mid = ordered.len().div_ceil(2);
    (ordered[..mid].to_vec(), ordered[mid..].to_vec())
}

fn bridge(ordered: &[String]) -> anyhow::Result<(Vec<String>, String, Vec<String>)> {
    if ordered.len() < 3 {
        bail!("--bridge needs at least 3 nodes (two sides and the bridge)");
    }
    let mid = ordered.len() / 2;
    Ok((
        ordered[..mid].to_vec(),
        ordered[mid].clone(),
        ordered[mid + 1..].to_vec(),
    ))
}

/// Every pair that is not adjacent in the ring drops each other's traffic.
fn ring_plan(nodes: &[&NodeRecord], ordered: &[String]) -> anyhow::Result<Plan> {
    let n = ordered.len();
    if n < 4 {
        bail!("--ring needs at least 4 nodes (with 3, every node is adjacent to every other)");
    }
    let mut plan: Plan = nodes.iter().map(|r| (r.name.clone(), Vec::new())).collect();
    for (i, me) in ordered.iter().enumerate() {
        for (j, other) in ordered.iter().enumerate() {
            let d = i.abs_diff(j);
            if d == 0 || d == 1 || d == n - 1 {
                continue;
            }
            let peer = find(nodes, other)?;
            plan.entry(me.clone())
                .or_default()
                .push(drop_rule(peer, Direction::Both));
        }
    }
    Ok(plan)
}

/// Cut/heal cycles until Ctrl-C, or until someone else heals (the rules this loop set are
/// gone): then every partition rule is removed.
async fn flap(found: &[Found], secs: f64) -> anyhow::Result<ExitCode> {
    if !(secs.is_finite() && secs >= 0.2) {
        bail!("--flap takes a period of at least 0.2 seconds, got {secs}");
    }
    let nodes: Vec<&NodeRecord> = found.iter().map(|f| &f.record).collect();
    let mut ordered = preset_order(&nodes);
    let mut cut = false;
    let mut cycles = 0u64;
    // a rule that does nothing, tagged `flap`, marks the loop as running: `tether heal`
    // removes it with every other rule, which is how the loop learns it should stop
    let marker = |_: &Found| {
        Some(ControlRequest::SetFaults {
            tag: FLAP_TAG.into(),
            rules: vec![FaultRule {
                peer: PeerMatch::AnyNode,
                peer_name: None,
                direction: Direction::Both,
                action: Action::Loss { percent: 0.0 },
                tag: FLAP_TAG.into(),
            }],
        })
    };
    for (name, r) in call_each(found, marker, CONTROL_TIMEOUT).await {
        if let Err(e) = r {
            bail!("{name}: cannot start flapping: {e}");
        }
    }
    println!("flapping every ~{secs} s; Ctrl-C or `tether heal` stops it");
    loop {
        if !flap_marker_set(found).await {
            println!("healed elsewhere after {cycles} cut(s); stopping");
            return Ok(ExitCode::SUCCESS);
        }
        let plan = if cut {
            Plan::new()
        } else {
            use rand::seq::SliceRandom;
            ordered.shuffle(&mut rand::rng());
            let (x, y) = halves(&ordered);
            println!("cut: {} | {}", x.join(","), y.join(","));
            cycles += 1;
            group_plan(&nodes, &[x, y], false)?
        };
        if cut {
            println!("heal");
        }
        let requests = |f: &Found| {
            Some(ControlRequest::SetFaults {
                tag: "partition".into(),
                rules: plan.get(&f.record.name).cloned().unwrap_or_default(),
            })
        };
        for (name, r) in call_each(found, requests, CONTROL_TIMEOUT).await {
            if let Err(e) = r {
                eprintln!("{name}: not changed: {e}");
            }
        }
        cut = !cut;
        let pause = secs * (0.5 + rand::random::<f64>());
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs_f64(pause)) => {}
            _ = tokio::signal::ctrl_c() => {
                for tag in ["partition", FLAP_TAG] {
                    let clear = |_: &Found| Some(ControlRequest::SetFaults { tag: tag.into(), rules: Vec::new() });
                    call_each(found, clear, CONTROL_TIMEOUT).await;
                }
                println!("interrupted after {cycles} cut(s); healed");
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
}

const FLAP_TAG: &str = "flap";

/// Whether any node still has the flap marker (false once `tether heal` ran).
async fn flap_marker_set(found: &[Found]) -> bool {
    let statuses = super::common::statuses(found).await;
    statuses
        .iter()
        .flatten()
        .any(|s| s.faults.iter().any(|r| r.tag == FLAP_TAG))
}

fn find<'a>(nodes: &[&'a NodeRecord], name: &str) -> anyhow::Result<&'a NodeRecord> {
    nodes
        .iter()
        .copied()
        .find(|r| r.name == name)
        .ok_or_else(|| {
            let known: Vec<&str> = nodes.iter().map(|r| r.name.as_str()).collect();
            anyhow::anyhow!(
                "no node named {name:?}; the cluster has: {}",
                known.join(", ")
            )
        })
}

fn drop_rule(peer: &NodeRecord, direction: Direction) -> FaultRule {
    FaultRule {
        peer: PeerMatch::Addr(peer.addr),
        peer_name: Some(peer.name.clone()),
        direction,
        action: Action::Drop,
        tag: "partition".into(),
    }
}

/// Every node of a group drops traffic with every node of the other groups. With `oneway`,
/// only traffic from the first group to the others is dropped (the senders drop it going out
/// and the receivers coming in, so it holds even if one side restarts); the other groups are
/// still cut from each other both ways.
fn group_plan(nodes: &[&NodeRecord], groups: &[Vec<String>], oneway: bool) -> anyhow::Result<Plan> {
    let mut group_of: BTreeMap<&str, usize> = BTreeMap::new();
    for (gi, g) in groups.iter().enumerate() {
        if g.is_empty() {
            bail!("group {} is empty", gi + 1);
        }
        for n in g {
            find(nodes, n)?;
            if let Some(prev) = group_of.insert(n, gi) {
                bail!("node {n:?} is in group {} and group {}", prev + 1, gi + 1);
            }
        }
    }
    let mut plan: Plan = nodes.iter().map(|r| (r.name.clone(), Vec::new())).collect();
    for me in nodes {
        let Some(&mine) = group_of.get(me.name.as_str()) else {
            continue;
        };
        for other in nodes {
            let Some(&theirs) = group_of.get(other.name.as_str()) else {
                continue;
            };
            if mine == theirs {
                continue;
            }
            let dir = if oneway && mine == 0 {
                Direction::Out
            } else if oneway && theirs == 0 {
                Direction::In
            } else {
                Direction::Both
            };
            plan.entry(me.name.clone())
                .or_default()
                .push(drop_rule(other, dir));
        }
    }
    Ok(plan)
}

fn quality_plan(
    target: &str,
    loss: Option<f64>,
    delay: Option<u64>,
    jitter: u64,
) -> anyhow::Result<Plan> {
    let mut rules = Vec::new();
    if let Some(p) = loss {
        if !(0.0..=100.0).contains(&p) {
            bail!("--loss must be between 0 and 100, got {p}");
        }
        rules.push(FaultRule {
            peer: PeerMatch::AnyNode,
            peer_name: None,
            direction: Direction::Both,
            action: Action::Loss { percent: p },
            tag: "quality".into(),
        });
    }
    if let Some(ms) = delay {
        rules.push(FaultRule {
            peer: PeerMatch::AnyNode,
            peer_name: None,
            direction: Direction::Out,
            action: Action::Delay {
                ms,
                jitter_ms: jitter,
            },
            tag: "quality".into(),
        });
    }
    Ok(BTreeMap::from([(target.to_owned(), rules)]))
}

async fn apply(found: &[Found], tag: &str, plan: &Plan) -> anyhow::Result<ExitCode> {
    let answers = call_each(
        found,
        |f| {
            plan.get(&f.record.name)
                .map(|rules| ControlRequest::SetFaults {
                    tag: tag.to_owned(),
                    rules: rules.clone(),
                })
        },
        CONTROL_TIMEOUT,
    )
    .await;
    Ok(report(answers, "", "not changed"))
}

/// Prints each node's rules (after `prefix`); returns failure if any node did not answer.
fn report(
    answers: Vec<(String, Result<ControlResponse, String>)>,
    prefix: &str,
    failed_as: &str,
) -> ExitCode {
    let mut failed = false;
    for (name, r) in answers {
        match r {
            Ok(ControlResponse::Faults { rules }) if rules.is_empty() => {
                println!("{name}: no rules")
            }
            Ok(ControlResponse::Faults { rules }) => {
                let text: Vec<String> = rules.iter().map(ToString::to_string).collect();
                println!("{name}: {prefix}{}", text.join("; "));
            }
            Ok(other) => {
                failed = true;
                eprintln!("{name}: {failed_as}: unexpected answer {other:?}");
            }
            Err(e) => {
                failed = true;
                eprintln!("{name}: {failed_as}: {e}");
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[derive(Debug, Args)]
pub(crate) struct HealArgs {
    #[command(flatten)]
    dir: StateDirArg,
}

pub(crate) async fn heal(a: HealArgs) -> anyhow::Result<ExitCode> {
    let (_op, found) = connect_all(&a.dir.state_dir).await?;
    let answers = call_each(
        &found,
        |_| Some(ControlRequest::ClearFaults),
        CONTROL_TIMEOUT,
    )
    .await;
    Ok(report(answers, "removed ", "not healed"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_cluster::Role;

    fn rec(name: &str, port: u16) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            role: Role::Remote,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            pid: 1,
            incarnation: 1,
        }
    }

    fn g(v: &[&[&str]]) -> Vec<Vec<String>> {
        v.iter()
            .map(|g| g.iter().map(|s| s.to_string()).collect())
            .collect()
    }

    #[test]
    fn halves_cut_both_ways_and_spare_nodes_outside_groups() {
        let (a, b, c) = (rec("a", 1), rec("b", 2), rec("c", 3));
        let nodes = vec![&a, &b, &c];
        let plan = group_plan(&nodes, &g(&[&["a"], &["b"]]), false).unwrap();
        assert_eq!(plan["a"].len(), 1);
        assert_eq!(plan["a"][0].peer, PeerMatch::Addr(b.addr));
        assert_eq!(plan["a"][0].direction, Direction::Both);
        assert_eq!(plan["b"][0].peer, PeerMatch::Addr(a.addr));
        assert!(plan["c"].is_empty(), "c is in no group and keeps talking");
    }

    #[test]
    fn oneway_drops_only_from_the_first_group() {
        let (a, b) = (rec("a", 1), rec("b", 2));
        let nodes = vec![&a, &b];
        let plan = group_plan(&nodes, &g(&[&["a"], &["b"]]), true).unwrap();
        assert_eq!(plan["a"][0].direction, Direction::Out);
        assert_eq!(plan["b"][0].direction, Direction::In);
    }

    #[test]
    fn bad_groups_are_clear_errors() {
        let (a, b) = (rec("a", 1), rec("b", 2));
        let nodes = vec![&a, &b];
        let e = group_plan(&nodes, &g(&[&["a"], &["zz"]]), false).unwrap_err();
        assert!(e.to_string().contains("no node named \"zz\""), "{e}");
        let e = group_plan(&nodes, &g(&[&["a"], &["a", "b"]]), false).unwrap_err();
        assert!(e.to_string().contains("group 1 and group 2"), "{e}");
        assert!(quality_plan("a", Some(101.0), None, 0).is_err());
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn halves_and_bridge_split_in_order() {
        let five = names(&["r1", "r2", "r3", "r4", "r5"]);
        assert_eq!(
            halves(&five),
            (names(&["r1", "r2", "r3"]), names(&["r4", "r5"]))
        );
        let (a, b, c) = bridge(&five).unwrap();
        assert_eq!(
            (a, b.as_str(), c),
            (names(&["r1", "r2"]), "r3", names(&["r4", "r5"]))
        );
        assert!(bridge(&names(&["r1", "r2"])).is_err());
    }

    #[test]
    fn a_ring_cuts_exactly_the_non_neighbours() {
        let recs: Vec<NodeRecord> = (1..=5).map(|i| rec(&format!("r{i}"), 7000 + i)).collect();
        let nodes: Vec<&NodeRecord> = recs.iter().collect();
        let plan = ring_plan(&nodes, &preset_order(&nodes)).unwrap();
        let cut = |a: &str| -> Vec<String> {
            plan[a]
                .iter()
                .map(|r| r.peer_name.clone().unwrap())
                .collect()
        };
        assert_eq!(cut("r1"), names(&["r3", "r4"]));
        assert_eq!(cut("r3"), names(&["r1", "r5"]));
        assert_eq!(cut("r5"), names(&["r2", "r3"]));
        assert!(ring_plan(&nodes[..3], &preset_order(&nodes[..3])).is_err());
    }
}
