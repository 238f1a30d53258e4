//! `tether status` and `tether wait`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde_json::json;
use tether_cluster::{ControlRequest, ControlResponse, NodeStatus, PeerState};

use super::common::{self, connect_all, human_ms, parse_duration, print_table, statuses, Found};
use super::StateDirArg;

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Print JSON for tools: {"nodes": [{"name", "role", "addr", "pid", "incarnation",
    /// "running", "peers": [{"name", "state", "rtt_ms", ...}], ...}]}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    state: StateDirArg,
}

pub(crate) async fn status(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let (_op, found) = connect_all(&a.state.state_dir).await?;
    let sts = statuses(&found).await;
    if a.json {
        let nodes: Vec<serde_json::Value> = found
            .iter()
            .zip(&sts)
            .map(|(f, s)| match s {
                Ok(s) => {
                    let mut v = serde_json::to_value(s).unwrap_or_default();
                    v["running"] = json!(true);
                    v
                }
                Err(e) => json!({
                    "name": f.record.name, "role": f.record.role, "addr": f.record.addr.to_string(),
                    "pid": f.record.pid, "incarnation": f.record.incarnation,
                    "running": false, "error": e, "peers": [],
                }),
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "nodes": nodes }))?
        );
        return Ok(ExitCode::SUCCESS);
    }

    print_nodes(&found, &sts);
    print_view(&found, &sts);
    let mut any_fault = false;
    for s in sts.iter().flatten() {
        if !s.faults.is_empty() {
            if !any_fault {
                println!("\nFAULTS (heal with `tether heal`)");
                any_fault = true;
            }
            for r in &s.faults {
                println!("{}: {r}", s.name);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The table of nodes: one row each, with its state, mode and outbox.
fn print_nodes(found: &[Found], sts: &[Result<NodeStatus, String>]) {
    let mut rows = vec![vec![
        "NODE".into(),
        "ROLE".into(),
        "ADDR".into(),
        "PID".into(),
        "INC".into(),
        "UPTIME".into(),
        "STATE".into(),
        "MODE".into(),
        "OUTBOX".into(),
    ]];
    for (f, s) in found.iter().zip(sts) {
        let r = &f.record;
        match s {
            Ok(s) => rows.push(vec![
                s.name.clone(),
                s.role.to_string(),
                s.addr.to_string(),
                s.pid.to_string(),
                s.incarnation.to_string(),
                human_ms(s.uptime_ms),
                "running".into(),
                s.mode.to_string(),
                s.outbox
                    .map_or_else(|| "-".into(), |o| format!("{}/{}", o.depth, o.max)),
            ]),
            Err(e) => rows.push(vec![
                r.name.clone(),
                r.role.to_string(),
                r.addr.to_string(),
                r.pid.to_string(),
                r.incarnation.to_string(),
                "-".into(),
                e.clone(),
                "-".into(),
                "-".into(),
            ]),
        }
    }
    print_table(&rows);
}

/// The view matrix: how each node (row) sees each other (column).
fn print_view(found: &[Found], sts: &[Result<NodeStatus, String>]) {
    let names: Vec<&str> = found.iter().map(|f| f.record.name.as_str()).collect();
    println!("\nVIEW (row sees column)");
    let mut m = vec![std::iter::once(String::new())
        .chain(names.iter().map(|n| n.to_string()))
        .collect::<Vec<_>>()];
    for (f, s) in found.iter().zip(sts) {
        let mut row = vec![f.record.name.clone()];
        for n in &names {
            let cell = match s {
                Err(_) => "?".to_owned(),
                Ok(_) if *n == f.record.name => "-".to_owned(),
                Ok(s) => match s.peer(n) {
                    None => "unknown".to_owned(),
                    Some(p) => match (p.state, p.rtt_ms) {
                        (PeerState::Up, Some(rtt)) => format!("up {rtt:.1}ms"),
                        (st, _) => format!("{st} {}", human_ms(p.since_ms)),
                    },
                },
            };
            row.push(cell);
        }
        m.push(row);
    }
    print_table(&m);
}

#[derive(Debug, Args)]
pub(crate) struct WaitArgs {
    /// Observer node(s); default: every running node.
    #[arg(long, value_delimiter = ',')]
    node: Vec<String>,
    /// Peer(s) to watch; default: every peer the observer knows.
    #[arg(long, value_delimiter = ',')]
    peer: Vec<String>,
    /// Accepted peer state(s): up, unreachable, down, joining. Default: up, unless --mode is
    /// given alone.
    #[arg(long, value_delimiter = ',')]
    state: Vec<PeerState>,
    /// Also require each observer to be in this mode: up, fenced (a remote node on the losing
    /// side of a split) or offline (a local node that reaches no remote node).
    #[arg(long)]
    mode: Option<tether_cluster::NodeMode>,
    /// Also require each observer to know at least this many peers.
    #[arg(long)]
    count: Option<usize>,
    /// Give up after this long (e.g. 500ms, 3s, 1m).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
    /// Print each observer's status as JSON when satisfied.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    dir: StateDirArg,
}

pub(crate) async fn wait(a: WaitArgs) -> anyhow::Result<ExitCode> {
    // only the observers are asked; a dead node elsewhere must not slow the wait down
    let (_op, found) = common::connect_some(&a.dir.state_dir, &a.node).await?;
    let chosen: Vec<common::Found> = found
        .into_iter()
        .filter(|f| !a.node.is_empty() || common::pid_alive(f.record.pid))
        .collect();
    let states = if a.state.is_empty() && (a.mode.is_none() || !a.peer.is_empty()) {
        vec![PeerState::Up]
    } else {
        a.state.clone()
    };
    let req = ControlRequest::WaitPeers {
        peers: a.peer.clone(),
        states: states.clone(),
        count: a.count,
        timeout_ms: a.timeout.as_millis() as u64,
        mode: a.mode,
    };
    let results: Vec<Result<tether_cluster::NodeStatus, String>> = common::call_each(
        &chosen,
        |_| Some(req.clone()),
        a.timeout + common::CONTROL_TIMEOUT,
    )
    .await
    .into_iter()
    .map(|(name, r)| match r {
        Ok(ControlResponse::Status(s)) => Ok(s),
        Ok(other) => Err(format!("{name}: unexpected answer {other:?}")),
        Err(e) => Err(format!("{name}: {e}")),
    })
    .collect();
    let mut ok = true;
    let mut out = Vec::new();
    for r in results {
        match r {
            Ok(s) => out.push(s),
            Err(e) => {
                ok = false;
                eprintln!("{e}");
            }
        }
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "nodes": out }))?
        );
    } else if ok {
        let states: Vec<String> = states.iter().map(ToString::to_string).collect();
        match (a.mode, states.is_empty()) {
            (Some(m), true) => println!("{} node(s) are {m}", out.len()),
            (Some(m), false) => println!(
                "{} node(s) are {m} and see their peers {}",
                out.len(),
                states.join(" or ")
            ),
            (None, _) => println!(
                "{} node(s) see their peers {}",
                out.len(),
                states.join(" or ")
            ),
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
