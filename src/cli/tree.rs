//! `tether tree` and `tether group`: the supervision trees of the cluster.
//!
//! The tree is cluster -> nodes -> supervisors -> agents, drawn like `pstree`. A node that does
//! not answer is shown as such with the last subtree it reported (kept in the state directory,
//! `nodes/NAME/tree.json`), marked stale.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use serde_json::json;
use tether_cluster::{ControlRequest, ControlResponse};
use tether_supervision::tree::{AgentNode, NodeTree, SupervisorNode};
use tether_supervision::{ChildStatus, Intensity, Strategy};

use super::common::{call_each, connect_all, human_ms, Found, CONTROL_TIMEOUT};
use super::StateDirArg;

#[derive(Debug, Args)]
pub(crate) struct TreeArgs {
    /// Only this node.
    #[arg(long)]
    node: Option<String>,
    /// Print JSON: {"nodes": [{"node", "reachable", "stale", "root": {...}}]}.
    #[arg(long)]
    json: bool,
    /// Redraw in place as it changes (Ctrl-C to stop).
    #[arg(long)]
    watch: bool,
    /// Redraw period with --watch.
    #[arg(long, default_value = "1s", value_parser = super::common::parse_duration)]
    every: Duration,
    #[command(flatten)]
    dir: StateDirArg,
}

/// One node's tree as shown: live, or the last one known.
struct Shown {
    node: String,
    reachable: bool,
    error: Option<String>,
    tree: Option<NodeTree>,
}

async fn collect(a: &TreeArgs) -> anyhow::Result<Vec<Shown>> {
    let (_op, found) = connect_all(&a.dir.state_dir).await?;
    let found: Vec<Found> = found
        .into_iter()
        .filter(|f| a.node.as_ref().is_none_or(|n| &f.record.name == n))
        .collect();
    if let Some(n) = &a.node {
        if found.is_empty() {
            bail!("no node named {n:?} in {}", a.dir.state_dir.display());
        }
    }
    let mut out = Vec::new();
    for (name, r) in call_each(&found, |_| Some(ControlRequest::Tree), CONTROL_TIMEOUT).await {
        let cache = a.dir.state_dir.join("nodes").join(&name).join("tree.json");
        match r {
            Ok(ControlResponse::Tree(t)) => {
                if let Ok(bytes) = serde_json::to_vec(&t) {
                    let _ = std::fs::write(&cache, bytes);
                }
                out.push(Shown {
                    node: name,
                    reachable: true,
                    error: None,
                    tree: Some(t),
                });
            }
            other => {
                let error = match other {
                    Err(e) => e,
                    Ok(x) => format!("unexpected answer {x:?}"),
                };
                let last = std::fs::read(&cache)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                out.push(Shown {
                    node: name,
                    reachable: false,
                    error: Some(error),
                    tree: last,
                });
            }
        }
    }
    Ok(out)
}

pub(crate) async fn tree(a: TreeArgs) -> anyhow::Result<ExitCode> {
    if a.watch && a.json {
        bail!("--watch draws for people; use --json without --watch for tools");
    }
    if !a.watch {
        let shown = collect(&a).await?;
        print_once(&a, &shown)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut last = String::new();
    loop {
        let shown = collect(&a).await?;
        let text = render(&shown, std::io::stdout().is_terminal());
        if text != last {
            // clear and redraw in place
            print!("\x1b[H\x1b[2J{text}");
            std::io::stdout().flush()?;
            last = text;
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            _ = tokio::time::sleep(a.every) => {}
        }
    }
}

fn print_once(a: &TreeArgs, shown: &[Shown]) -> anyhow::Result<()> {
    if a.json {
        let nodes: Vec<serde_json::Value> = shown
            .iter()
            .map(|s| {
                json!({
                    "node": s.node,
                    "reachable": s.reachable,
                    "stale": !s.reachable && s.tree.is_some(),
                    "error": s.error,
                    "root": s.tree.as_ref().map(|t| &t.root),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "nodes": nodes }))?
        );
    } else {
        print!("{}", render(shown, std::io::stdout().is_terminal()));
    }
    Ok(())
}

fn paint(text: &str, status: &ChildStatus, colour: bool) -> String {
    if !colour {
        return text.to_owned();
    }
    let code = match status {
        ChildStatus::Running => "32",
        ChildStatus::Restarting | ChildStatus::BackingOff => "33",
        ChildStatus::Stopped => "90",
        ChildStatus::Failed => "31",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

fn status_word(s: &ChildStatus) -> &'static str {
    match s {
        ChildStatus::Running => "running",
        ChildStatus::Restarting => "restarting",
        ChildStatus::BackingOff => "backing-off",
        ChildStatus::Stopped => "stopped",
        ChildStatus::Failed => "failed",
    }
}

/// Draws the cluster tree.
fn render(shown: &[Shown], colour: bool) -> String {
    let mut out = String::from("cluster\n");
    for (i, s) in shown.iter().enumerate() {
        let last = i + 1 == shown.len();
        let (branch, pad) = if last {
            ("└─ ", "   ")
        } else {
            ("├─ ", "│  ")
        };
        let head = match (&s.tree, s.reachable) {
            (_, true) => s.node.clone(),
            (Some(_), false) => format!(
                "{} (unreachable: {}; last known tree, stale)",
                s.node,
                s.error.as_deref().unwrap_or("")
            ),
            (None, false) => format!(
                "{} (unreachable: {})",
                s.node,
                s.error.as_deref().unwrap_or("")
            ),
        };
        let st = if s.reachable {
            ChildStatus::Running
        } else {
            ChildStatus::Failed
        };
        out.push_str(&format!("{branch}{}\n", paint(&head, &st, colour)));
        if let Some(t) = &s.tree {
            draw_sup(&mut out, &t.root, pad, true, colour, !s.reachable);
        }
    }
    out
}

fn draw_sup(
    out: &mut String,
    sup: &SupervisorNode,
    prefix: &str,
    last: bool,
    colour: bool,
    stale: bool,
) {
    let mut line = format!(
        "{} [{} {}] {}",
        sup.name,
        sup.strategy,
        sup.intensity,
        status_word(&sup.status)
    );
    if sup.restarts > 0 {
        line.push_str(&format!(" restarts={}", sup.restarts));
    }
    if let Some(f) = &sup.last_failure {
        line.push_str(&format!(" last: {}", f.reason));
    }
    if stale {
        line.push_str(" (stale)");
    }
    let branch = if last { "└─ " } else { "├─ " };
    out.push_str(&format!(
        "{prefix}{branch}{}\n",
        paint(&line, &sup.status, colour)
    ));
    let inner = format!("{prefix}{}", if last { "   " } else { "│  " });
    let n = sup.supervisors.len() + sup.agents.len();
    for (k, child) in sup.supervisors.iter().enumerate() {
        draw_sup(out, child, &inner, k + 1 == n, colour, stale);
    }
    for (k, a) in sup.agents.iter().enumerate() {
        let branch = if sup.supervisors.len() + k + 1 == n {
            "└─ "
        } else {
            "├─ "
        };
        out.push_str(&format!(
            "{inner}{branch}{}\n",
            paint(&agent_line(a, stale), &a.status, colour)
        ));
    }
}

fn agent_line(a: &AgentNode, stale: bool) -> String {
    let mut s = format!(
        "{} {} restarts={} epoch={} mailbox={}",
        a.id,
        status_word(&a.status),
        a.restarts,
        tether_actors::epoch::Shown(a.epoch),
        a.mailbox
    );
    if a.status == ChildStatus::Running {
        s.push_str(&format!(" up={}", human_ms(a.uptime_ms)));
    }
    s.push_str(&format!(" [{}] ({})", a.placement, a.policy));
    if let Some(f) = &a.last_failure {
        s.push_str(&format!(" last: {}", f.reason));
    }
    if stale {
        s.push_str(" (stale)");
    }
    s
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum GroupCommand {
    /// Create a supervisor group on a node; spawn agents into it with `--group NAME --on NODE`.
    Create {
        /// The group's name.
        name: String,
        /// one-for-one, one-for-all or rest-for-one.
        #[arg(long, default_value = "one-for-one")]
        strategy: Strategy,
        /// Its budget N/T; past it the group escalates to the node's root.
        #[arg(long, default_value = "3/5s")]
        intensity: Intensity,
        /// The node it lives on.
        #[arg(long)]
        on: String,
        #[command(flatten)]
        dir: StateDirArg,
    },
}

pub(crate) async fn group(cmd: GroupCommand) -> anyhow::Result<ExitCode> {
    let GroupCommand::Create {
        name,
        strategy,
        intensity,
        on,
        dir,
    } = cmd;
    let (_op, found) =
        super::common::connect_some(&dir.state_dir, std::slice::from_ref(&on)).await?;
    let req = ControlRequest::AddGroup {
        name: name.clone(),
        strategy,
        intensity,
    };
    for (node, r) in call_each(&found, |_| Some(req.clone()), CONTROL_TIMEOUT).await {
        match r {
            Ok(ControlResponse::Ok) => println!(
                "group {name} [{strategy} {}/{:?}] created on {node}",
                intensity.max_restarts, intensity.within
            ),
            Ok(other) => bail!("unexpected answer {other:?}"),
            Err(e) => bail!("{node}: {e}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}
