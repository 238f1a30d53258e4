//! `tether partition` and `tether heal`: fault rules in every node's fault layer.
//!
//! A partition replaces the previous partition (rules tagged `partition`); link quality
//! (`--loss`, `--delay`) replaces the previous quality rules of that node (tag `quality`). So
//! the two combine, and running `partition` again moves the cut instead of adding to it.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;
use tether_cluster::fault::{Action, Direction, FaultRule, PeerMatch};
use tether_cluster::statedir::NodeRecord;
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
  tether heal                        remove every rule")]
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
    #[command(flatten)]
    dir: StateDirArg,
}

/// The rules each node gets, under one tag.
type Plan = BTreeMap<String, Vec<FaultRule>>;

pub(crate) async fn partition(a: PartitionArgs) -> anyhow::Result<ExitCode> {
    let (_op, found) = connect_all(&a.dir.state_dir).await?;
    let nodes: Vec<&NodeRecord> = found.iter().map(|f| &f.record).collect();
    let (tag, plan) = if a.loss.is_some() || a.delay.is_some() {
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
}
