//! The agents a node hosts: activation, delivery, and the checks at the door.
//!
//! Delivery checks, in order, before a message reaches an agent's mailbox:
//! 1. the agent is hosted here (else [`AgentError::NotFound`], or [`AgentError::Failed`] with
//!    the reason if it failed here);
//! 2. the envelope's epoch is not older than the activation's (fencing: an old owner's
//!    messages and commands are refused with [`AgentError::StaleEpoch`]);
//! 3. the contract is the kind's;
//! 4. the sender's sequence number is new: a number already seen is a duplicate and refused;
//!    a number past `last + 1` is delivered and counted as a gap (something before it was lost).
//!
//! Activation is get-or-activate: a second activation of an id that runs here returns the
//! running one, also when both race (a per-id lock serializes them).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Instant;

use dashmap::DashMap;
use ractor::ActorRef;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tracing::info;

use crate::agent::AgentError;
use crate::envelope::{Contract, TraceContext};
use crate::id::AgentId;
use crate::kind::{AgentStats, Body, Call, ErasedKind, ExitHook, ReplyTx, SpawnSpec};
use crate::placement::Placement;

/// A running agent.
#[derive(Clone)]
struct Hosted {
    actor: ActorRef<Call>,
    epoch: u64,
    kind: Arc<dyn ErasedKind>,
    placement: Placement,
    started: Instant,
    stats: Arc<AgentStats>,
}

/// What the node reports about a hosted agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// The agent.
    pub id: AgentId,
    /// The hosting node.
    pub node: String,
    /// Activation epoch.
    pub epoch: u64,
    /// Placement labels.
    pub placement: Placement,
    /// `running` or `failed`.
    pub status: String,
    /// Failure reason, if failed.
    pub reason: Option<String>,
    /// Milliseconds since activation.
    pub uptime_ms: u64,
    /// Messages delivered.
    pub received: u64,
    /// Sequence gaps seen (should be 0).
    pub gaps: u64,
    /// Duplicates refused.
    pub duplicates: u64,
    /// Messages waiting in the mailbox.
    pub mailbox: u64,
}

/// The result of an activation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activation {
    /// The agent.
    pub id: AgentId,
    /// Where it runs.
    pub node: String,
    /// Its epoch.
    pub epoch: u64,
    /// `false` when it was running already (get-or-spawn).
    pub created: bool,
}

/// Message metadata checked at the door.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The target.
    pub target: AgentId,
    /// Epoch the sender knows (0: any).
    pub epoch: u64,
    /// Sender.
    pub sender: String,
    /// Sender's sequence number (0: unsequenced).
    pub seq: u64,
    /// Trace.
    pub trace: TraceContext,
    /// The payload's contract (None: typed local send, checked by the type system).
    pub contract: Option<Contract>,
}

/// The kinds a node can host and the agents it hosts.
pub struct Host {
    node: String,
    kinds: BTreeMap<String, Arc<dyn ErasedKind>>,
    agents: DashMap<AgentId, Hosted>,
    failed: DashMap<AgentId, (u64, String)>,
    seqs: DashMap<(String, AgentId), u64>,
    activating: DashMap<AgentId, Arc<Mutex<()>>>,
    exit_listener: std::sync::OnceLock<ExitHook>,
    me: Weak<Host>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("node", &self.node)
            .field("kinds", &self.kinds.keys().collect::<Vec<_>>())
            .field("agents", &self.agents.len())
            .finish()
    }
}

impl Host {
    /// A host for node `node` with these kinds.
    pub fn new(node: &str, kinds: impl IntoIterator<Item = Arc<dyn ErasedKind>>) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            node: node.to_owned(),
            kinds: kinds
                .into_iter()
                .map(|k| (k.name().to_owned(), k))
                .collect(),
            agents: DashMap::new(),
            failed: DashMap::new(),
            seqs: DashMap::new(),
            activating: DashMap::new(),
            exit_listener: std::sync::OnceLock::new(),
            me: me.clone(),
        })
    }

    /// Registers the one function told of every agent that ends here (after the host forgot
    /// it). Returns false if one was registered already.
    pub fn set_exit_listener(&self, f: ExitHook) -> bool {
        self.exit_listener.set(f).is_ok()
    }

    /// The kind names this node can host.
    pub fn kinds(&self) -> Vec<String> {
        self.kinds.keys().cloned().collect()
    }

    /// A registered kind.
    ///
    /// # Errors
    /// [`AgentError::UnknownKind`].
    pub fn kind(&self, name: &str) -> Result<Arc<dyn ErasedKind>, AgentError> {
        self.kinds
            .get(name)
            .cloned()
            .ok_or_else(|| AgentError::UnknownKind {
                kind: name.to_owned(),
                node: self.node.clone(),
                registered: self.kinds().join(", "),
            })
    }

    /// The epoch of `id` if it runs here.
    pub fn epoch_of(&self, id: &AgentId) -> Option<u64> {
        self.agents.get(id).map(|h| h.epoch)
    }

    /// Starts `id` here with `epoch`, or returns the running activation.
    ///
    /// # Errors
    /// [`AgentError::UnknownKind`], [`AgentError::BadPayload`] for args that do not decode,
    /// [`AgentError::Failed`] when `init` fails.
    pub async fn activate(
        &self,
        id: AgentId,
        epoch: u64,
        args: Body,
        placement: Option<Placement>,
        trace: TraceContext,
    ) -> Result<Activation, AgentError> {
        let kind = self.kind(id.kind())?;
        let lock = self.activating.entry(id.clone()).or_default().clone();
        let _guard = lock.lock().await;
        if let Some(h) = self.agents.get(&id) {
            return Ok(Activation {
                id: id.clone(),
                node: self.node.clone(),
                epoch: h.epoch,
                created: false,
            });
        }
        let (kind_placement, args) = kind.placement(args)?;
        let placement = placement.unwrap_or(kind_placement);
        let local_only = placement.is_local_only();
        let me = self.me.clone();
        let on_exit = Arc::new(move |id: &AgentId, epoch: u64, reason: Option<String>| {
            if let Some(host) = me.upgrade() {
                host.exited(id, epoch, reason);
            }
        });
        let stats = Arc::<AgentStats>::default();
        let actor = kind
            .spawn(SpawnSpec {
                id: id.clone(),
                epoch,
                node: self.node.clone(),
                args,
                trace,
                on_exit,
                stats: stats.clone(),
                local_only,
            })
            .await?;
        self.failed.remove(&id);
        self.agents.insert(
            id.clone(),
            Hosted {
                actor,
                epoch,
                kind,
                placement,
                started: Instant::now(),
                stats,
            },
        );
        drop(_guard);
        self.activating.remove(&id);
        info!(agent = %id, epoch, trace_id = %trace.trace_id_hex(), "agent activated");
        Ok(Activation {
            id,
            node: self.node.clone(),
            epoch,
            created: true,
        })
    }

    fn exited(&self, id: &AgentId, epoch: u64, reason: Option<String>) {
        let removed = self.agents.remove_if(id, |_, h| h.epoch == epoch).is_some();
        if removed {
            match &reason {
                Some(r) => {
                    self.failed.insert(id.clone(), (epoch, r.clone()));
                }
                None => info!(agent = %id, epoch, "agent stopped"),
            }
            if let Some(l) = self.exit_listener.get() {
                l(id, epoch, reason);
            }
        }
    }

    /// Hands a message to a hosted agent after the checks at the door (see the module doc).
    ///
    /// # Errors
    /// [`AgentError`] saying which check refused it; the reply sender, if any, is dropped.
    pub fn deliver(
        &self,
        d: Delivery,
        body: Body,
        reply: Option<ReplyTx>,
    ) -> Result<(), AgentError> {
        let Some(h) = self.agents.get(&d.target).map(|h| h.clone()) else {
            return Err(match self.failed.get(&d.target) {
                Some(f) => AgentError::Failed {
                    id: d.target.to_string(),
                    reason: f.1.clone(),
                },
                None => AgentError::NotFound {
                    id: d.target.to_string(),
                },
            });
        };
        if d.epoch != 0 && d.epoch < h.epoch {
            return Err(AgentError::StaleEpoch {
                id: d.target.to_string(),
                sent: d.epoch,
                current: h.epoch,
            });
        }
        if let Some(c) = &d.contract {
            let mine = h.kind.contract();
            if *c != mine {
                return Err(AgentError::Contract {
                    id: d.target.to_string(),
                    expected: mine.to_string(),
                    got: c.to_string(),
                });
            }
        }
        if d.seq != 0 {
            let mut last = self
                .seqs
                .entry((d.sender.clone(), d.target.clone()))
                .or_insert(0);
            if d.seq <= *last {
                h.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                return Err(AgentError::Refused(format!(
                    "duplicate: {} already delivered message {} from {}",
                    d.target, d.seq, d.sender
                )));
            }
            if d.seq != *last + 1 {
                h.stats.gaps.fetch_add(1, Ordering::Relaxed);
            }
            *last = d.seq;
        }
        h.stats.received.fetch_add(1, Ordering::Relaxed);
        h.stats.queued.fetch_add(1, Ordering::Relaxed);
        let call = Call {
            body,
            trace: d.trace,
            sender: Some(d.sender),
            seq: d.seq,
            reply,
        };
        h.actor.send_message(call).map_err(|_| {
            h.stats.queued.fetch_sub(1, Ordering::Relaxed);
            self.exited(&d.target, h.epoch, Some("stopped".into()));
            AgentError::Failed {
                id: d.target.to_string(),
                reason: "stopped".into(),
            }
        })
    }

    /// Every hosted (and failed) agent.
    pub fn list(&self) -> Vec<AgentInfo> {
        let mut out: Vec<AgentInfo> = self
            .agents
            .iter()
            .map(|e| {
                let h = e.value();
                AgentInfo {
                    id: e.key().clone(),
                    node: self.node.clone(),
                    epoch: h.epoch,
                    placement: h.placement.clone(),
                    status: "running".into(),
                    reason: None,
                    uptime_ms: h.started.elapsed().as_millis() as u64,
                    received: h.stats.received.load(Ordering::Relaxed),
                    gaps: h.stats.gaps.load(Ordering::Relaxed),
                    duplicates: h.stats.duplicates.load(Ordering::Relaxed),
                    mailbox: h.stats.queued.load(Ordering::Relaxed),
                }
            })
            .collect();
        out.extend(self.failed.iter().map(|e| AgentInfo {
            id: e.key().clone(),
            node: self.node.clone(),
            epoch: e.value().0,
            placement: Placement::default(),
            status: "failed".into(),
            reason: Some(e.value().1.clone()),
            uptime_ms: 0,
            received: 0,
            gaps: 0,
            duplicates: 0,
            mailbox: 0,
        }));
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Placement labels of a hosted agent.
    pub fn placement_of(&self, id: &AgentId) -> Option<Placement> {
        self.agents.get(id).map(|h| h.placement.clone())
    }

    /// Stops every agent (node shutdown).
    pub fn stop_all(&self) {
        for e in self.agents.iter() {
            e.actor.stop(Some("node shutting down".into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtin::{self, CounterMsg};
    use crate::envelope::Encoding;
    use bytes::Bytes;
    use tokio::sync::oneshot;

    fn host() -> Arc<Host> {
        Host::new("n1", builtin::all())
    }

    fn id(s: &str) -> AgentId {
        s.parse().unwrap()
    }

    fn d(target: &str, seq: u64) -> Delivery {
        Delivery {
            target: id(target),
            epoch: 0,
            sender: "tester".into(),
            seq,
            trace: TraceContext::new_root(),
            contract: None,
        }
    }

    async fn ask(h: &Host, dl: Delivery, body: Body) -> Result<Body, AgentError> {
        let (tx, rx) = oneshot::channel();
        h.deliver(dl, body, Some(tx))?;
        rx.await
            .map_err(|_| AgentError::Internal("no reply".into()))?
    }

    fn json(v: serde_json::Value) -> Body {
        Body::json(&v)
    }

    #[tokio::test]
    async fn counter_speaks_json_msgpack_and_typed() {
        let h = host();
        let a = h
            .activate(
                id("counter/a"),
                1,
                json(serde_json::Value::Null),
                None,
                TraceContext::new_root(),
            )
            .await
            .unwrap();
        assert!(a.created);
        h.deliver(d("counter/a", 1), json(serde_json::json!("inc")), None)
            .unwrap();
        let mp = Body::Encoded(
            Encoding::MsgPack,
            Bytes::from(crate::codec::encode(&CounterMsg::Add(5)).unwrap()),
        );
        h.deliver(d("counter/a", 2), mp, None).unwrap();
        let r = ask(&h, d("counter/a", 3), Body::typed(CounterMsg::Get))
            .await
            .unwrap();
        assert_eq!(r.decode::<i64>().unwrap(), 6);
        let r = ask(&h, d("counter/a", 4), json(serde_json::json!("get")))
            .await
            .unwrap();
        assert_eq!(r.to_json().unwrap(), serde_json::json!(6));
    }

    #[tokio::test]
    async fn bad_payload_is_an_error_and_the_agent_keeps_running() {
        let h = host();
        h.activate(
            id("counter/b"),
            1,
            json(serde_json::Value::Null),
            None,
            TraceContext::new_root(),
        )
        .await
        .unwrap();
        let e = ask(&h, d("counter/b", 1), json(serde_json::json!({"mul": 2})))
            .await
            .unwrap_err();
        assert!(matches!(e, AgentError::BadPayload { .. }), "{e}");
        let garbage = Body::Encoded(Encoding::MsgPack, Bytes::from_static(&[0xc1, 0xc1]));
        let e = ask(&h, d("counter/b", 2), garbage).await.unwrap_err();
        assert!(matches!(e, AgentError::BadPayload { .. }), "{e}");
        let r = ask(&h, d("counter/b", 3), json(serde_json::json!("inc")))
            .await
            .unwrap();
        assert_eq!(r.to_json().unwrap(), serde_json::json!(1));
    }

    #[tokio::test]
    async fn unknown_agent_and_unknown_kind_are_typed_errors() {
        let h = host();
        let e = h
            .deliver(d("counter/none", 1), json(serde_json::json!("inc")), None)
            .unwrap_err();
        assert!(matches!(e, AgentError::NotFound { .. }));
        let e = h
            .activate(
                id("nosuch/x"),
                1,
                json(serde_json::Value::Null),
                None,
                TraceContext::new_root(),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, AgentError::UnknownKind { .. }), "{e}");
        assert!(
            e.to_string().contains("counter"),
            "lists what is registered: {e}"
        );
    }

    #[tokio::test]
    async fn a_failing_handler_fails_the_agent_with_its_reason() {
        let h = host();
        h.activate(
            id("flaky/x"),
            1,
            json(serde_json::Value::Null),
            None,
            TraceContext::new_root(),
        )
        .await
        .unwrap();
        let e = ask(&h, d("flaky/x", 1), json(serde_json::json!("crash")))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, AgentError::Failed { reason, .. } if reason.contains("crash requested")),
            "{e}"
        );
        let e = h
            .deliver(d("flaky/x", 2), json(serde_json::json!("ping")), None)
            .unwrap_err();
        assert!(
            matches!(&e, AgentError::Failed { .. }),
            "later messages say it failed: {e}"
        );
        let listed = h.list();
        assert_eq!(listed[0].status, "failed");
    }

    #[tokio::test]
    async fn older_epochs_are_fenced_and_duplicates_refused() {
        let h = host();
        h.activate(
            id("echo/e"),
            3,
            json(serde_json::Value::Null),
            None,
            TraceContext::new_root(),
        )
        .await
        .unwrap();
        let mut old = d("echo/e", 1);
        old.epoch = 2;
        assert!(matches!(
            h.deliver(old, json(serde_json::json!(1)), None),
            Err(AgentError::StaleEpoch { current: 3, .. })
        ));
        h.deliver(d("echo/e", 1), json(serde_json::json!(1)), None)
            .unwrap();
        assert!(matches!(
            h.deliver(d("echo/e", 1), json(serde_json::json!(1)), None),
            Err(AgentError::Refused(_))
        ));
        h.deliver(d("echo/e", 5), json(serde_json::json!(1)), None)
            .unwrap();
        let info = &h.list()[0];
        assert_eq!((info.received, info.duplicates, info.gaps), (2, 1, 1));
    }

    #[tokio::test]
    async fn concurrent_activation_of_one_id_yields_one_agent() {
        let h = host();
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let h = h.clone();
            tasks.push(tokio::spawn(async move {
                h.activate(
                    id("counter/one"),
                    1,
                    json(serde_json::Value::Null),
                    None,
                    TraceContext::new_root(),
                )
                .await
                .unwrap()
            }));
        }
        let mut created = 0;
        for t in tasks {
            if t.await.unwrap().created {
                created += 1;
            }
        }
        assert_eq!(created, 1);
        assert_eq!(h.list().len(), 1);
    }
}
