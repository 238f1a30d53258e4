//! `tether migrate`: move an agent to another node, with its state.

use std::process::ExitCode;

use anyhow::bail;
use clap::Args;
use tether_cluster::migration::{MoveReport, MIGRATE_TIMEOUT};
use tether_cluster::{ControlRequest, ControlResponse};

use super::agents::{call, via, ViaArg};
use super::common::CONTROL_TIMEOUT;
use super::StateDirArg;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  tether migrate counter/a --to r2
  tether migrate counter/a --to r3 --json

The agent stops at a message boundary where it runs, its state and the messages it had not
handled go to the target, the directory switches to the target, and the agent goes on there
with a new epoch; messages sent meanwhile wait and follow in order. Nothing runs twice: if any
step fails, the agent goes on where it was and the command says why (exit status 1).
Local-only agents never move, and agents in a supervisor group move only with their group
(not yet supported).")]
pub(crate) struct MigrateArgs {
    /// The agent, KIND/KEY.
    id: String,
    /// The node to move it to.
    #[arg(long)]
    to: String,
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
