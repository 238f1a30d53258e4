//! `tether migrate` and `tether drain`: move agents to other nodes, with their state.

use std::process::ExitCode;

use anyhow::bail;
use clap::Args;
use tether_cluster::migration::{DrainReport, MoveReport, MIGRATE_TIMEOUT};
use tether_cluster::{ControlRequest, ControlResponse};

use super::agents::{call, via, ViaArg};
use super::common::CONTROL_TIMEOUT;
use super::StateDirArg;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  tether migrate counter/a --to r2
  tether migrate counter/a --to r3 --json
  tether migrate counter/a              # to a node its placement allows

The agent stops at a message boundary where it runs, its state and the messages it had not
handled go to the target, the directory switches to the target, and the agent goes on there
with a new epoch; messages sent meanwhile wait and follow in order. Nothing runs twice: if a
step fails, the agent goes on where it was and the command says why (exit status 1); if the
directory's answer to the switch is lost, the agent waits, frozen, until its directory owner
can say where it runs, and goes on there.
Local-only agents never move, and agents in a supervisor group move only with their group
(not yet supported).")]
pub(crate) struct MigrateArgs {
    /// The agent, KIND/KEY.
    id: String,
    /// The node to move it to (default: one its placement allows).
    #[arg(long)]
    to: Option<String>,
    /// Print {"agent", "from", "to", "epoch", "pause_ms", "state_bytes"}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    via: ViaArg,
    #[command(flatten)]
    dir: StateDirArg,
}

pub(crate) async fn migrate(a: MigrateArgs) -> anyhow::Result<ExitCode> {
    if let Err(e) = a.id.parse::<tether_actors::AgentId>() {
        bail!(
            "bad agent id {:?}: {e} (expected KIND/KEY, e.g. counter/a)",
            a.id
        );
    }
    let f = via(&a.dir, &a.via).await?;
    let req = ControlRequest::Migrate {
        id: a.id.clone(),
        to: a.to.clone(),
    };
    match call(&f, req, MIGRATE_TIMEOUT + CONTROL_TIMEOUT).await? {
        ControlResponse::Migrated(r) => {
            print_report(&r, a.json)?;
            Ok(ExitCode::SUCCESS)
        }
        ControlResponse::Error { message } => {
            eprintln!("error: {message}");
            Ok(ExitCode::FAILURE)
        }
        other => bail!("unexpected answer {other:?}"),
    }
}

fn print_report(r: &MoveReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
    } else {
        println!(
            "{} moved {} -> {} epoch {} pause {:.2} ms state {} bytes",
            r.agent,
            r.from,
            r.to,
            tether_actors::epoch::Shown(r.epoch),
            r.pause_ms,
            r.state_bytes
        );
    }
    Ok(())
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  tether drain r1
  tether drain r1 --json

The node stops taking new agents, then every agent it runs moves to a node its placement
allows, one by one, with its state (see `tether migrate`). Local-only agents stay on their
device and are listed. Exit status 0 when nothing but local-only agents stayed. The node keeps
running: stop it with `tether down --node NAME` (which drains first).")]
pub(crate) struct DrainArgs {
    /// The node to drain.
    node: String,
    /// Print {"moved": [reports], "stayed": [[agent, why]]} at the end.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    dir: StateDirArg,
}

pub(crate) async fn drain(a: DrainArgs) -> anyhow::Result<ExitCode> {
    let ok = drain_node(&a.dir, &a.node, a.json).await?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Drains `node`, printing progress (unless `json`); true when only local-only agents stayed.
pub(crate) async fn drain_node(dir: &StateDirArg, node: &str, json: bool) -> anyhow::Result<bool> {
    let via_node = ViaArg {
        via: Some(node.to_owned()),
    };
    let f = via(dir, &via_node).await?;
    match call(&f, ControlRequest::Drain { on: true }, CONTROL_TIMEOUT).await? {
        ControlResponse::Ok => {}
        ControlResponse::Error { message } => bail!("{node}: {message}"),
        other => bail!("unexpected answer {other:?}"),
    }
    let agents = match call(&f, ControlRequest::Agents, CONTROL_TIMEOUT).await? {
        ControlResponse::Agents(list) => list,
        other => bail!("unexpected answer {other:?}"),
    };
    let mut report = DrainReport::default();
    let n = agents.len();
    let mut only_local_stayed = true;
    for (i, agent) in agents.iter().enumerate() {
        let id = agent.id.to_string();
        let why = if agent.placement.is_local_only() {
            Some("local-only: it stays on its device".to_owned())
        } else {
            let req = ControlRequest::Migrate {
                id: id.clone(),
                to: None,
            };
            match call(&f, req, MIGRATE_TIMEOUT + CONTROL_TIMEOUT).await? {
                ControlResponse::Migrated(r) => {
                    if !json {
                        println!(
                            "[{}/{n}] {id} -> {} (pause {:.2} ms)",
                            i + 1,
                            r.to,
                            r.pause_ms
                        );
                    }
                    report.moved.push(r);
                    None
                }
                ControlResponse::Error { message } => {
                    only_local_stayed = false;
                    Some(message)
                }
                other => bail!("unexpected answer {other:?}"),
            }
        };
        if let Some(why) = why {
            if !json {
                println!("[{}/{n}] {id} stays: {why}", i + 1);
            }
            report.stayed.push((id, why));
        }
    }
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{node} drained: {} moved, {} stayed; it takes no new agents",
            report.moved.len(),
            report.stayed.len()
        );
    }
    Ok(only_local_stayed)
}
