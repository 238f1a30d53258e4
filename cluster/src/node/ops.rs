//! The node's answers to the operator's control requests.

use std::sync::Arc;
use std::time::Duration;

use tether_actors::{router, Activation, AgentId, Body, Contract, PortCache, TraceContext};
use tether_supervision::GroupSpec;
use tracing::{info, warn};

use super::Shared;
use crate::agents::{ControlPlane, Sent, SpawnOptions, Target};
use crate::control::protocol::{wait_satisfied, ControlRequest, ControlResponse, MAX_WAIT};
use crate::control::server::Handler;
use crate::membership::detector::PeerState;
use crate::role::NodeMode;

/// A node as the control plane's request handler.
pub(crate) struct Ops(pub(crate) Arc<Shared>);

impl Handler for Ops {
    fn handle(
        &self,
        req: ControlRequest,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ControlResponse> + Send + '_>> {
        Box::pin(handle(&self.0, req))
    }
}

/// Stops the node (`cluster`: as part of stopping the whole cluster; nothing is placed again).
fn stop(shared: &Shared, cluster: bool) -> ControlResponse {
    if cluster {
        warn!("the operator stops the whole cluster");
        shared
            .cluster_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        shared.driver.with(|c, now| c.cluster_stopping(now));
    } else {
        warn!("shutdown requested by the operator");
    }
    shared.shutdown.send_replace(true);
    ControlResponse::Ok
}

async fn handle(shared: &Arc<Shared>, req: ControlRequest) -> ControlResponse {
    match req {
        ControlRequest::Status => ControlResponse::Status(shared.status()),
        ControlRequest::WaitPeers {
            peers,
            states,
            count,
            timeout_ms,
            mode,
        } => wait_peers(shared, &peers, &states, count, mode, timeout_ms).await,
        ControlRequest::SetFaults { tag, rules } => match shared.faults.replace_tag(&tag, rules) {
            Ok(set) => {
                info!(tag = %tag, rules = set.rules().len(), "fault rules changed");
                ControlResponse::Faults {
                    rules: set.rules().to_vec(),
                }
            }
            Err(e) => ControlResponse::Error {
                message: e.to_string(),
            },
        },
        ControlRequest::ClearFaults => {
            let old = shared.faults.clear();
            if !old.rules().is_empty() {
                info!(removed = old.rules().len(), "fault rules cleared");
            }
            ControlResponse::Faults {
                rules: old.rules().to_vec(),
            }
        }
        ControlRequest::Shutdown => stop(shared, false),
        ControlRequest::StopCluster => stop(shared, true),
        ControlRequest::Spawn {
            kind,
            key,
            args,
            on,
            placement,
            policy,
            group,
            durability,
        } => match spawn(
            shared,
            &kind,
            &key,
            &args,
            on,
            SpawnOptions {
                placement,
                policy,
                group,
                durability,
            },
        )
        .await
        {
            Ok(a) => ControlResponse::Spawned(a),
            Err(message) => ControlResponse::Error { message },
        },
        ControlRequest::Tell { id, json, repeat } => tell(shared, &id, &json, repeat).await,
        ControlRequest::Ask {
            id,
            json,
            timeout_ms,
        } => ask(shared, &id, &json, timeout_ms).await,
        ControlRequest::Agents => ControlResponse::Agents(shared.host.list()),
        ControlRequest::Migrate { id, to } => migrate(shared, &id, to.as_deref()).await,
        ControlRequest::Drain { on } => {
            shared.driver.set_draining(on);
            ControlResponse::Ok
        }
        ControlRequest::AddGroup {
            name,
            strategy,
            intensity,
        } => match shared
            .sup
            .add_group(GroupSpec {
                name,
                strategy,
                intensity,
            })
            .await
        {
            Ok(()) => ControlResponse::Ok,
            Err(e) => ControlResponse::Error {
                message: e.to_string(),
            },
        },
        ControlRequest::Tree => match shared.sup.snapshot().await {
            Ok(t) => ControlResponse::Tree(t),
            Err(e) => ControlResponse::Error {
                message: e.to_string(),
            },
        },
    }
}

fn parse_json(text: &str, what: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(text).map_err(|e| format!("{what} is not valid JSON ({e}): {text}"))
}

fn parse_id(text: &str) -> Result<AgentId, String> {
    text.parse::<AgentId>().map_err(|e| e.to_string())
}

/// The contract of a JSON message to `id`: the kind's, if this node knows it.
fn contract_for(shared: &Shared, id: &AgentId) -> Contract {
    match shared.host.kind(id.kind()) {
        Ok(k) => k.contract(),
        Err(_) => Contract {
            name: id.kind().to_owned().into(),
            version: 1,
        },
    }
}

async fn spawn(
    shared: &Arc<Shared>,
    kind: &str,
    key: &str,
    args: &str,
    on: Option<String>,
    opts: SpawnOptions,
) -> Result<Activation, String> {
    let id = AgentId::new(kind, key).map_err(|e| e.to_string())?;
    let args = Body::json(&parse_json(args, "--args")?);
    let target = match on {
        Some(n) => Target::On(n),
        None => Target::Placed,
    };
    let root = TraceContext::new_root();
    root.scope(shared.router.spawn(id, args, opts, target))
        .await
        .map_err(|e| e.to_string())
}

async fn tell(shared: &Arc<Shared>, id: &str, json: &str, repeat: u64) -> ControlResponse {
    let result: Result<ControlResponse, String> = async {
        let id = parse_id(id)?;
        let msg = parse_json(json, "the message")?;
        // find the agent first, so that a tell to nothing is an error the operator sees; a
        // local node that cannot reach the cluster queues instead (the outbox)
        match shared.router.lookup(&id).await {
            Ok(_) => {}
            Err(e) if e.is_retryable() && shared.driver.outbox_depth().is_some() => {}
            Err(e) => return Err(e.to_string()),
        }
        let contract = contract_for(shared, &id);
        let root = TraceContext::new_root();
        let body = serde_json::to_vec(&msg).map_err(|e| e.to_string())?;
        let body = bytes::Bytes::from(body);
        let (mut queued, mut depth) = (0u64, 0usize);
        root.sync_scope(|| {
            for i in 0..repeat {
                let sent = shared
                    .router
                    .tell_or_queue(
                        &id,
                        Body::Encoded(tether_actors::Encoding::Json, body.clone()),
                        contract.clone(),
                    )
                    .map_err(|(e, _)| {
                        if i == 0 {
                            e.to_string()
                        } else {
                            format!("{i} of {repeat} sent or queued; then: {e}")
                        }
                    })?;
                if let Sent::Queued { depth: d } = sent {
                    queued += 1;
                    depth = d;
                }
            }
            Ok::<(), String>(())
        })?;
        Ok(ControlResponse::Told {
            count: repeat,
            queued,
            outbox_depth: depth as u64,
            trace_id: root.trace_id_hex().to_string(),
        })
    }
    .await;
    result.unwrap_or_else(|message| ControlResponse::Error { message })
}

async fn ask(shared: &Arc<Shared>, id: &str, json: &str, timeout_ms: u64) -> ControlResponse {
    let result: Result<ControlResponse, String> = async {
        let id = parse_id(id)?;
        let msg = parse_json(json, "the message")?;
        let contract = contract_for(shared, &id);
        let root = TraceContext::new_root();
        let deadline = Duration::from_millis(timeout_ms.max(1));
        // the envelope takes its trace when the ask is made: make it inside the scope
        let reply = root
            .scope(async {
                router::ask(
                    shared.router.as_ref(),
                    &id,
                    &PortCache::default(),
                    (Body::json(&msg), contract),
                    deadline,
                    None,
                )
                .await
            })
            .await;
        match reply {
            Ok(body) => Ok(ControlResponse::Replied {
                json: body
                    .to_json()
                    .map_err(|e| format!("reply is not JSON: {e}"))?
                    .to_string(),
                trace_id: root.trace_id_hex().to_string(),
            }),
            Err(e) => Err(format!("{e} (trace {})", root.trace_id_hex())),
        }
    }
    .await;
    result.unwrap_or_else(|message| ControlResponse::Error { message })
}

async fn wait_peers(
    shared: &Arc<Shared>,
    peers: &[String],
    states: &[PeerState],
    count: Option<usize>,
    mode: Option<NodeMode>,
    timeout_ms: u64,
) -> ControlResponse {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms).min(MAX_WAIT);
    let mut changes = shared.driver.subscribe();
    loop {
        // mark the current version seen before checking, so no change slips between the two
        changes.borrow_and_update();
        let status = shared.status();
        if wait_satisfied(&status, peers, states, count, mode) {
            return ControlResponse::Status(status);
        }
        // every state change (the detector's ticks included) bumps the version
        tokio::select! {
            r = changes.changed() => {
                if r.is_err() {
                    return ControlResponse::Error { message: format!("{} is shutting down", status.name) };
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                let now: Vec<String> = status.peers.iter().map(|p| format!("{}={}", p.name, p.state)).collect();
                return ControlResponse::Error {
                    message: format!("timed out after {timeout_ms} ms; {} sees: {}", status.name,
                        if now.is_empty() { "no peers".to_owned() } else { now.join(", ") }),
                };
            }
        }
    }
}

async fn migrate(shared: &Shared, id: &str, to: Option<&str>) -> ControlResponse {
    let id = match id.parse::<AgentId>() {
        Ok(id) => id,
        Err(e) => {
            return ControlResponse::Error {
                message: format!("bad agent id {id:?}: {e}"),
            }
        }
    };
    match super::Node::migrate_shared(shared, &id, to).await {
        Ok(report) => ControlResponse::Migrated(report),
        Err(e) => ControlResponse::Error {
            message: e.to_string(),
        },
    }
}
