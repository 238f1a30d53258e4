//! What the commands share: finding the nodes of a state directory, reaching their control
//! planes, parsing durations.

use std::path::Path;
use std::time::Duration;

use anyhow::bail;
use tether_cluster::net::certs::{CertDir, Identity};
use tether_cluster::net::statedir::{NodeDir, NodeRecord};
use tether_cluster::{ControlClient, ControlRequest, ControlResponse, NodeStatus};
use tokio::task::JoinSet;

/// Deadline to reach a node's control plane.
pub(crate) const CONTROL_TIMEOUT: Duration = Duration::from_secs(3);

/// A node found in the state directory, with its control connection if it answered.
pub(crate) struct Found {
    pub(crate) record: NodeRecord,
    pub(crate) client: Result<ControlClient, String>,
}

/// Operator credentials from the state directory.
pub(crate) struct Operator {
    ca: rustls_pki_types::CertificateDer<'static>,
    admin: Identity,
}

impl Operator {
    pub(crate) fn load(state_dir: &Path) -> anyhow::Result<Self> {
        let certs = CertDir::new(state_dir);
        if !certs.has_ca() {
            bail!(
                "no cluster in {}: it has no CA. Start one with `tether up`, or point --state-dir at the cluster's directory",
                state_dir.display()
            );
        }
        Ok(Self {
            ca: certs.load_ca()?,
            admin: certs.load_admin()?,
        })
    }

    pub(crate) async fn connect(&self, rec: &NodeRecord) -> Result<ControlClient, String> {
        if !pid_alive(rec.pid) {
            return Err(format!("not running (pid {} is gone)", rec.pid));
        }
        ControlClient::connect(
            rec.addr,
            Some(&rec.name),
            &self.ca,
            &self.admin,
            CONTROL_TIMEOUT,
        )
        .await
        .map_err(|e| e.to_string())
    }
}

/// Every node that has a `node.json` in the state directory, sorted: remote nodes first, then
/// by name.
pub(crate) fn records(state_dir: &Path) -> Vec<NodeRecord> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(state_dir.join("nodes")) else {
        return out;
    };
    for e in entries.flatten() {
        if let Some(r) = NodeDir::new(e.path()).read_record() {
            out.push(r);
        }
    }
    out.sort_by(|a, b| (b.role, &a.name).cmp(&(a.role, &b.name)));
    out
}

/// Connects to every node of the state directory at once.
pub(crate) async fn connect_all(state_dir: &Path) -> anyhow::Result<(Operator, Vec<Found>)> {
    connect_some(state_dir, &[]).await
}

/// Connects to the named nodes (all when `names` is empty) at once.
///
/// # Errors
/// No cluster in `state_dir`, or a name that is not one of its nodes.
pub(crate) async fn connect_some(
    state_dir: &Path,
    names: &[String],
) -> anyhow::Result<(Operator, Vec<Found>)> {
    let op = Operator::load(state_dir)?;
    let all = records(state_dir);
    if all.is_empty() {
        bail!(
            "no nodes in {}: start a cluster with `tether up` (or `tether node`)",
            state_dir.display()
        );
    }
    for n in names {
        if !all.iter().any(|r| &r.name == n) {
            let known: Vec<&str> = all.iter().map(|r| r.name.as_str()).collect();
            bail!("no node named {n:?}; the cluster has: {}", known.join(", "));
        }
    }
    let recs: Vec<NodeRecord> = all
        .into_iter()
        .filter(|r| names.is_empty() || names.contains(&r.name))
        .collect();
    let op = std::sync::Arc::new(op);
    let mut set = JoinSet::new();
    for (i, rec) in recs.into_iter().enumerate() {
        let op = op.clone();
        set.spawn(async move {
            let client = op.connect(&rec).await;
            (
                i,
                Found {
                    record: rec,
                    client,
                },
            )
        });
    }
    let found = in_order(set.join_all().await);
    let op =
        std::sync::Arc::try_unwrap(op).map_err(|_| anyhow::anyhow!("operator still shared"))?;
    Ok((op, found))
}

/// Sends each node its request (none where `request` gives `None`), all at once, and returns
/// `(node name, answer)` in the order of `found`. An answer of `ControlResponse::Error`, an
/// unreachable node or a timeout is an `Err` with a message for the operator.
pub(crate) async fn call_each(
    found: &[Found],
    request: impl Fn(&Found) -> Option<ControlRequest>,
    deadline: Duration,
) -> Vec<(String, Result<ControlResponse, String>)> {
    let mut set = JoinSet::new();
    for (i, f) in found.iter().enumerate() {
        let Some(req) = request(f) else { continue };
        let client = f.client.clone();
        let name = f.record.name.clone();
        set.spawn(async move {
            let r = match client {
                Err(e) => Err(e),
                Ok(c) => c.call(&req, deadline).await.map_err(|e| e.to_string()),
            };
            (i, (name, r))
        });
    }
    in_order(set.join_all().await)
}

/// Asks every reachable node for its status, at once.
pub(crate) async fn statuses(found: &[Found]) -> Vec<Result<NodeStatus, String>> {
    call_each(found, |_| Some(ControlRequest::Status), CONTROL_TIMEOUT)
        .await
        .into_iter()
        .map(|(_, r)| match r? {
            ControlResponse::Status(s) => Ok(s),
            other => Err(format!("unexpected answer {other:?}")),
        })
        .collect()
}

/// Sorts `(index, value)` pairs back into index order.
pub(crate) fn in_order<T>(mut v: Vec<(usize, T)>) -> Vec<T> {
    v.sort_by_key(|(i, _)| *i);
    v.into_iter().map(|(_, t)| t).collect()
}

/// Whether process `pid` exists.
pub(crate) fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks for existence and permission; it sends nothing
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Parses `500ms`, `3s`, `2m`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| s.split_at(i))
        .ok_or_else(|| format!("{s:?} needs a unit: for example 500ms, 3s or 2m"))?;
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("unknown unit {unit:?} in {s:?}: use ms, s or m")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

/// Formats a duration for tables.
pub(crate) fn human_ms(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        1000..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60),
    }
}

pub(crate) use tether::table::print as print_table;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("3").unwrap_err().contains("unit"));
        assert!(parse_duration("3h").is_err());
    }

    #[test]
    fn human_durations() {
        assert_eq!(human_ms(5), "5ms");
        assert_eq!(human_ms(1500), "1.5s");
        assert_eq!(human_ms(61_000), "1m01s");
    }
}
