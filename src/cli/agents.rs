//! `tether spawn`, `tell`, `ask` and `agents`: agents from the command line, in JSON.
//!
//! The CLI is not a node: it asks one node (`--via`, default: the first running one) to act
//! as the sender, so the same routing, ordering and errors apply as for agents.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail};
use clap::Args;
use serde_json::json;
use tether_actors::{AgentInfo, Compute, Placement, Prefer, Sensitivity};
use tether_cluster::{ControlRequest, ControlResponse};
use tether_supervision::{AgentPolicy, Backoff, Intensity, RestartType};

use super::common::{self, call_each, connect_some, print_table, Found, CONTROL_TIMEOUT};
use super::StateDirArg;

/// Which node acts for the CLI.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ViaArg {
    /// The node that sends on the CLI's behalf (default: the first running node).
    #[arg(long)]
    pub(crate) via: Option<String>,
}

pub(crate) async fn via(dir: &StateDirArg, via: &ViaArg) -> anyhow::Result<Found> {
    let names: Vec<String> = via.via.iter().cloned().collect();
    let (_op, found) = connect_some(&dir.state_dir, &names).await?;
    let mut errors = Vec::new();
    for f in found {
        match &f.client {
            Ok(_) => return Ok(f),
            Err(e) => errors.push(format!("{}: {e}", f.record.name)),
        }
    }
    bail!("no node to send through: {}", errors.join("; "))
}

pub(crate) async fn call(
    f: &Found,
    req: ControlRequest,
    deadline: Duration,
) -> anyhow::Result<ControlResponse> {
    let c = f
        .client
        .as_ref()
        .map_err(|e| anyhow!("{}: {e}", f.record.name))?;
    Ok(c.call(&req, deadline).await?)
}

fn check_json(text: &str, what: &str) -> anyhow::Result<()> {
    serde_json::from_str::<serde_json::Value>(text)
        .map(|_| ())
        .map_err(|e| anyhow!("{what} is not valid JSON ({e}): {text}\nhint: quote JSON strings for the shell, e.g. '\"inc\"'"))
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  tether spawn counter a --on r1
  tether spawn echo notes --local-only --via l1
  tether spawn counter b --args '{\"start\": 10}'
  tether spawn flaky f --restart transient --max-restarts 5/10s --backoff 100ms..2s
  tether spawn sleeper s --handler-timeout 500
  tether spawn flaky g1 --on r1 --group workers
  tether spawn counter c --durability acked

Durability (--durability): none (default: nothing is saved; a failover starts the agent
from its init), checkpoint (saved every 100 messages or 1 s of unsaved changes, on its node
and one other; a failover loses at most that window), acked (a reply leaves only once the
state it came from is saved on its node and one other; nothing acknowledged is lost with a
node). Local-only agents are saved on their own device only.")]
pub(crate) struct SpawnArgs {
    /// A registered kind: echo, counter, flaky, sleeper, sink, ledger, audit, or one of your own.
    kind: String,
    /// The agent's key; its id is KIND/KEY.
    key: String,
    /// Run it on this node (default: where the placement labels choose).
    #[arg(long)]
    on: Option<String>,
    /// Spawn arguments, JSON.
    #[arg(long, default_value = "null")]
    args: String,
    /// Local-only: state and messages never leave the local node that spawns it.
    #[arg(long)]
    local_only: bool,
    /// Heavy compute: remote nodes only.
    #[arg(long)]
    heavy: bool,
    /// Preferred side: local, remote or any.
    #[arg(long)]
    prefer: Option<String>,
    /// Capabilities the host must offer (`tether node --cap`; a local node offers fs): the
    /// agent is placed, failed over and moved only to nodes that offer them all.
    #[arg(long, value_delimiter = ',')]
    needs: Vec<String>,
    /// Restart type: permanent (default), transient or temporary.
    #[arg(long, default_value = "permanent")]
    restart: RestartType,
    /// The agent's restart budget, N/T: past it the agent is given up (default 3/5s).
    #[arg(long, default_value = "3/5s")]
    max_restarts: Intensity,
    /// Restart delay, MIN..MAX (exponential with jitter), or none (default 50ms..5s).
    #[arg(long, default_value = "50ms..5s")]
    backoff: Backoff,
    /// A handler running longer than this (milliseconds, or with a unit) fails the agent.
    #[arg(long, value_parser = parse_timeout)]
    handler_timeout: Option<Duration>,
    /// Run under this supervisor group (see `tether group create`); needs --on.
    #[arg(long)]
    group: Option<String>,
    /// How durable its state is: none, checkpoint or acked (see below).
    #[arg(long, default_value = "none")]
    durability: tether_actors::Durability,
    #[command(flatten)]
    via: ViaArg,
    #[command(flatten)]
    dir: StateDirArg,
}

pub(crate) async fn spawn(a: SpawnArgs) -> anyhow::Result<ExitCode> {
    check_json(&a.args, "--args")?;
    let placement = if a.local_only || a.heavy || a.prefer.is_some() || !a.needs.is_empty() {
        let prefer = match a.prefer.as_deref() {
            None | Some("any") => Prefer::Any,
            Some("local") => Prefer::Local,
            Some("remote") => Prefer::Remote,
            Some(other) => bail!("--prefer takes local, remote or any, not {other:?}"),
        };
        Some(Placement {
            sensitivity: if a.local_only {
                Sensitivity::LocalOnly
            } else {
                Sensitivity::Internal
            },
            compute: if a.heavy {
                Compute::Heavy
            } else {
                Compute::Light
            },
            needs: a.needs,
            prefer: if a.local_only { Prefer::Local } else { prefer },
        })
    } else {
        None
    };
    let policy = AgentPolicy {
        restart: a.restart,
        intensity: a.max_restarts,
        backoff: a.backoff,
        handler_timeout: a.handler_timeout,
        ..AgentPolicy::default()
    };
    let f = via(&a.dir, &a.via).await?;
    let req = ControlRequest::Spawn {
        kind: a.kind,
        key: a.key,
        args: a.args,
        on: a.on,
        placement,
        policy,
        group: a.group,
        durability: a.durability,
    };
    match call(
        &f,
        req,
        tether_cluster::core::SPAWN_TIMEOUT + CONTROL_TIMEOUT,
    )
    .await?
    {
        ControlResponse::Spawned(act) => {
            let how = if act.created {
                "spawned"
            } else {
                "already running"
            };
            println!(
                "{}  node={}  epoch={}  ({how})",
                act.id,
                act.node,
                tether_actors::epoch::Shown(act.epoch)
            );
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unexpected answer {other:?}"),
    }
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  tether tell counter/a '\"inc\"'
  tether tell counter/a '{\"add\": 5}' --repeat 100 --via l1")]
pub(crate) struct TellArgs {
    /// Target agent, KIND/KEY.
    id: String,
    /// The message, JSON.
    json: String,
    /// Send it this many times, in order.
    #[arg(long, default_value_t = 1)]
    repeat: u64,
    #[command(flatten)]
    via: ViaArg,
    #[command(flatten)]
    dir: StateDirArg,
}

pub(crate) async fn tell(a: TellArgs) -> anyhow::Result<ExitCode> {
    check_json(&a.json, "the message")?;
    let f = via(&a.dir, &a.via).await?;
    let req = ControlRequest::Tell {
        id: a.id.clone(),
        json: a.json,
        repeat: a.repeat,
    };
    match call(&f, req, CONTROL_TIMEOUT + Duration::from_secs(60)).await? {
        ControlResponse::Told {
            count,
            queued,
            outbox_depth,
            trace_id,
        } => {
            if queued == 0 {
                println!("sent {count} message(s) to {} via {}", a.id, f.record.name);
            } else {
                println!(
                    "queued {queued} of {count} message(s) to {} in the outbox of {} (it cannot \
                     reach the agent now; {outbox_depth} wait, delivered in order when it can)",
                    a.id, f.record.name
                );
            }
            eprintln!("trace {trace_id}");
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unexpected answer {other:?}"),
    }
}

/// Parses a timeout: milliseconds (`500`) or a duration with a unit (`500ms`, `3s`).
pub(crate) fn parse_timeout(s: &str) -> Result<Duration, String> {
    match s.parse::<u64>() {
        Ok(ms) => Ok(Duration::from_millis(ms)),
        Err(_) => common::parse_duration(s),
    }
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  tether ask counter/a '\"get\"'
  tether ask sleeper/s '{\"sleep_ms\": 2000}' --timeout 500")]
pub(crate) struct AskArgs {
    /// Target agent, KIND/KEY.
    id: String,
    /// The message, JSON.
    json: String,
    /// Deadline: milliseconds, or with a unit (500ms, 3s).
    #[arg(long, default_value = "5000", value_parser = parse_timeout)]
    timeout: Duration,
    #[command(flatten)]
    via: ViaArg,
    #[command(flatten)]
    dir: StateDirArg,
}

pub(crate) async fn ask(a: AskArgs) -> anyhow::Result<ExitCode> {
    check_json(&a.json, "the message")?;
    let f = via(&a.dir, &a.via).await?;
    let req = ControlRequest::Ask {
        id: a.id,
        json: a.json,
        timeout_ms: a.timeout.as_millis() as u64,
    };
    match call(&f, req, a.timeout + CONTROL_TIMEOUT).await? {
        ControlResponse::Replied { json, trace_id } => {
            println!("{json}");
            eprintln!("trace {trace_id}");
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unexpected answer {other:?}"),
    }
}

#[derive(Debug, Args)]
pub(crate) struct AgentsArgs {
    /// Print JSON: {"agents": [{"id", "node", "epoch", "kind", "placement", "status", ...}]}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    dir: StateDirArg,
}

/// `none`, or the mode with its newest checkpoint: `acked seq=5 1.2s ago replica=r2`.
fn durability(i: &AgentInfo) -> String {
    match &i.checkpoint {
        None => i.durability.to_string(),
        Some(c) => format!(
            "{} seq={} {:.1}s ago replica={}",
            i.durability,
            c.seq,
            c.age_ms as f64 / 1e3,
            c.replica.as_deref().unwrap_or("-")
        ),
    }
}

pub(crate) async fn agents(a: AgentsArgs) -> anyhow::Result<ExitCode> {
    let (_op, found) = common::connect_all(&a.dir.state_dir).await?;
    let running: Vec<Found> = found.into_iter().filter(|f| f.client.is_ok()).collect();
    let mut all: Vec<AgentInfo> = Vec::new();
    let mut failed = false;
    for (name, r) in call_each(&running, |_| Some(ControlRequest::Agents), CONTROL_TIMEOUT).await {
        match r {
            Ok(ControlResponse::Agents(list)) => all.extend(list),
            Ok(other) => {
                failed = true;
                eprintln!("{name}: unexpected answer {other:?}");
            }
            Err(e) => {
                failed = true;
                eprintln!("{name}: {e}");
            }
        }
    }
    all.sort_by(|x, y| x.id.cmp(&y.id));
    if a.json {
        let list: Vec<serde_json::Value> = all
            .iter()
            .map(|i| {
                let mut v = serde_json::to_value(i).unwrap_or_default();
                v["id"] = json!(i.id.to_string());
                v["kind"] = json!(i.id.kind());
                v
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "agents": list }))?
        );
    } else if all.is_empty() {
        println!("no agents; start one with `tether spawn counter a`");
    } else {
        let mut rows = vec![vec![
            "AGENT".to_owned(),
            "NODE".into(),
            "EPOCH".into(),
            "STATUS".into(),
            "RECEIVED".into(),
            "MAILBOX".into(),
            "DURABILITY".into(),
            "PLACEMENT".into(),
        ]];
        for i in &all {
            let p = &i.placement;
            let labels = format!(
                "{} {} prefer={}",
                serde_json::to_value(p.sensitivity)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                serde_json::to_value(p.compute)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                serde_json::to_value(p.prefer)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
            );
            let status = match &i.reason {
                Some(r) => format!("{} ({r})", i.status),
                None => i.status.clone(),
            };
            rows.push(vec![
                i.id.to_string(),
                i.node.clone(),
                tether_actors::epoch::Shown(i.epoch).to_string(),
                status,
                i.received.to_string(),
                i.mailbox.to_string(),
                durability(i),
                labels,
            ]);
        }
        print_table(&rows);
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
