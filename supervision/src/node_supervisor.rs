//! [`NodeSupervisor`]: a node's supervision, its root supervisor and its groups, as the node
//! runtime uses it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tether_actors::{Activation, AgentError, AgentId, Host};

use crate::error::SupervisionError;
use crate::policy::{Intensity, Strategy};
use crate::supervisor::{
    activate_linked, lock, AddAgent, Fenced, GroupSpec, Shared, SupMsg, SupervisorActor,
    SNAPSHOT_TIMEOUT,
};
use crate::tree::NodeTree;

/// A node's supervision: its root supervisor and groups.
pub struct NodeSupervisor {
    root: ActorRef<SupMsg>,
    shared: Arc<Shared>,
    node: String,
}

impl std::fmt::Debug for NodeSupervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSupervisor")
            .field("node", &self.node)
            .finish()
    }
}

impl NodeSupervisor {
    /// Starts the root supervisor of a node (one-for-one, `intensity` for the whole node).
    ///
    /// # Errors
    /// [`SupervisionError::Start`], or [`SupervisionError::AlreadySupervised`].
    pub async fn start(host: Arc<Host>, intensity: Intensity) -> Result<Self, SupervisionError> {
        let node = host.node().to_owned();
        let shared = Arc::new(Shared {
            host: host.clone(),
            intake: Mutex::default(),
            started: Mutex::default(),
            members: Mutex::new(HashMap::new()),
            groups: Mutex::new(HashMap::new()),
        });
        let weak: Weak<Shared> = Arc::downgrade(&shared);
        let listening = host.set_start_listener(Arc::new(move |agent: &AgentId, actor| {
            if let Some(shared) = weak.upgrade() {
                lock(&shared.started).insert(actor, agent.clone());
            }
        }));
        if !listening {
            return Err(SupervisionError::AlreadySupervised(node));
        }
        let root = SupervisorActor {
            shared: shared.clone(),
            name: "root".into(),
            strategy: Strategy::OneForOne,
            intensity,
        };
        let (root, _) = Actor::spawn(None, root, ())
            .await
            .map_err(|e| SupervisionError::Start(e.to_string()))?;
        Ok(Self { root, shared, node })
    }

    /// Activates an agent under the root, or under group `group`.
    ///
    /// # Errors
    /// [`AgentError`] from the host, or [`AgentError::Refused`] for an unknown group.
    pub async fn activate(
        &self,
        a: AddAgent,
        group: Option<&str>,
    ) -> Result<Activation, AgentError> {
        let target = match group {
            None => return self.activate_under_root(a).await,
            Some(g) => self
                .shared
                .groups
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(g)
                .cloned()
                .ok_or_else(|| AgentError::Supervision {
                    reason: format!("no supervisor group {g:?} on node {}", self.node),
                })?,
        };
        let timeout = a.policy.start_timeout + Duration::from_secs(5);
        match target
            .call(|port| SupMsg::Add(Box::new(a), port), Some(timeout))
            .await
        {
            Ok(ractor::rpc::CallResult::Success(r)) => r,
            Ok(_) => Err(AgentError::Timeout {
                ms: timeout.as_millis() as u64,
            }),
            Err(e) => Err(AgentError::Internal(format!("supervisor unavailable: {e}"))),
        }
    }

    /// Activates an agent under the root in this task, and hands it to the root (see
    /// "Spawning under the root").
    async fn activate_under_root(&self, a: AddAgent) -> Result<Activation, AgentError> {
        lock(&self.shared.intake).open(&self.node)?;
        let adopt = || {
            lock(&self.shared.intake)
                .adopted
                .push((a.id.clone(), a.policy.into()));
        };
        activate_linked(&self.shared.host, &a, &self.root, adopt).await
    }

    /// Creates a group supervisor under the root.
    ///
    /// # Errors
    /// [`SupervisionError::GroupExists`], or the root does not answer.
    pub async fn add_group(&self, spec: GroupSpec) -> Result<(), SupervisionError> {
        self.call_root(|port| SupMsg::AddGroup(spec, port), SNAPSHOT_TIMEOUT)
            .await?
    }

    /// The node's tree.
    ///
    /// # Errors
    /// [`SupervisionError::Unavailable`] if the root supervisor does not answer.
    pub async fn snapshot(&self) -> Result<NodeTree, SupervisionError> {
        let root = self
            .call_root(SupMsg::Snapshot, SNAPSHOT_TIMEOUT * 2)
            .await?;
        Ok(NodeTree {
            node: self.node.clone(),
            root,
        })
    }

    /// Stops every agent of this node for good, without restarts (the node is fenced: it is
    /// on the losing side of a split, and the winning side will activate them anew). Returns
    /// what was stopped, with the spawn records.
    ///
    /// # Errors
    /// [`SupervisionError::Unavailable`] if the root supervisor does not answer.
    pub async fn fence(&self) -> Result<Vec<Fenced>, SupervisionError> {
        self.call_root(SupMsg::Fence, SNAPSHOT_TIMEOUT * 8).await
    }

    /// Waits until the root has taken in every agent activated under it so far. The root
    /// takes children in at its next message or supervision event anyway; this makes it
    /// happen now (for measuring what a child costs it, for tests).
    ///
    /// # Errors
    /// [`SupervisionError::Unavailable`] if the root supervisor does not answer.
    pub async fn settle(&self) -> Result<(), SupervisionError> {
        self.call_root(SupMsg::Settle, SNAPSHOT_TIMEOUT).await
    }

    /// Forgets agent `id`, a child of the root, without stopping anything: it moved to
    /// another node. Returns whether the root had it (an agent in a group is not the root's).
    ///
    /// # Errors
    /// [`SupervisionError::Unavailable`] if the root supervisor does not answer.
    pub async fn forget(&self, id: &AgentId) -> Result<bool, SupervisionError> {
        let id = id.clone();
        self.call_root(|port| SupMsg::Forget(id, port), SNAPSHOT_TIMEOUT)
            .await
    }

    /// The policy of agent `id` if it is a child of the root (not of a group).
    ///
    /// # Errors
    /// [`SupervisionError::Unavailable`] if the root supervisor does not answer.
    pub async fn root_policy(
        &self,
        id: &AgentId,
    ) -> Result<Option<crate::AgentPolicy>, SupervisionError> {
        let id = id.clone();
        self.call_root(|port| SupMsg::PolicyOf(id, port), SNAPSHOT_TIMEOUT)
            .await
    }

    /// Calls the root supervisor, within `timeout`.
    async fn call_root<T: Send + 'static>(
        &self,
        msg: impl FnOnce(ractor::RpcReplyPort<T>) -> SupMsg,
        timeout: Duration,
    ) -> Result<T, SupervisionError> {
        let unavailable = |reason: String| SupervisionError::Unavailable {
            what: "root".into(),
            reason,
        };
        match self.root.call(msg, Some(timeout)).await {
            Ok(ractor::rpc::CallResult::Success(r)) => Ok(r),
            Ok(_) => Err(unavailable(format!("no answer within {timeout:?}"))),
            Err(e) => Err(unavailable(e.to_string())),
        }
    }

    /// Stops the root supervisor (node shutdown).
    pub fn stop(&self) {
        self.root.stop(Some("node shutting down".into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tether_actors::builtin::{self, FlakyMsg};
    use tether_actors::{Body, Delivery, Encoding, Placement, SpawnRecord, TraceContext};
    use tokio::sync::oneshot;

    use crate::policy::AgentPolicy;
    use crate::strategy::ChildStatus;
    use crate::tree::AgentNode;

    fn id(s: &str) -> AgentId {
        s.parse().unwrap()
    }

    async fn until(what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ok() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn add(key: &str) -> AddAgent {
        let (encoding, args) = Body::encode((), Some(Encoding::Json))
            .unwrap()
            .into_wire()
            .unwrap();
        AddAgent {
            id: id(&format!("flaky/{key}")),
            epoch: 1,
            record: Arc::new(SpawnRecord {
                encoding,
                args,
                placement: Placement::default(),
                durability: Default::default(),
            }),
            restore: None,
            // no backoff: a restart follows its failure at once, before the events that
            // the restart's stops caused are handled
            policy: AgentPolicy {
                backoff: crate::policy::Backoff::none(),
                ..AgentPolicy::default()
            },
            trace: TraceContext::new_root(),
        }
    }

    /// Asks `target` (a flaky agent) `msg`; the reply's error text on failure.
    async fn ask(host: &Host, target: &AgentId, msg: FlakyMsg) -> Result<String, String> {
        let (tx, rx) = oneshot::channel();
        let d = Delivery {
            target: target.clone(),
            epoch: 0,
            sender: "tester".into(),
            seq: 0,
            trace: TraceContext::new_root(),
            contract: None,
            in_process: true,
        };
        host.deliver(d, Body::typed(msg), Some(tx.into()))
            .map_err(|e| e.to_string())?;
        match rx.await {
            Ok(Ok(b)) => b.decode::<String>(),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no reply".into()),
        }
    }

    async fn child(sup: &NodeSupervisor, path: &[&str], agent: &str) -> AgentNode {
        let tree = sup.snapshot().await.unwrap();
        let mut node = &tree.root;
        for g in path {
            node = node.supervisors.iter().find(|s| s.name == *g).unwrap();
        }
        node.agents.iter().find(|a| a.id == agent).unwrap().clone()
    }

    async fn supervised() -> (Arc<Host>, NodeSupervisor) {
        let host = Host::new(
            "n1",
            [builtin::basic(), builtin::demo(&std::env::temp_dir())].concat(),
        );
        let sup = NodeSupervisor::start(host.clone(), Intensity::default())
            .await
            .unwrap();
        (host, sup)
    }

    /// A one-for-all group `g` with two flaky agents, `a` and `b`, never sent anything.
    async fn one_for_all_pair(sup: &NodeSupervisor) -> (AgentId, AgentId) {
        sup.add_group(GroupSpec {
            name: "g".into(),
            strategy: Strategy::OneForAll,
            intensity: Intensity::default(),
        })
        .await
        .unwrap();
        let (a, b) = (add("a"), add("b"));
        let ids = (a.id.clone(), b.id.clone());
        sup.activate(a, Some("g")).await.unwrap();
        sup.activate(b, Some("g")).await.unwrap();
        ids
    }

    /// The exits for good that the host reports: agent and reason.
    fn exits(host: &Host) -> tokio::sync::mpsc::UnboundedReceiver<(String, Option<String>)> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        host.set_exit_listener(Arc::new(move |id: &AgentId, _, reason| {
            let _ = tx.send((id.to_string(), reason));
        }));
        rx
    }

    /// An agent's actor starts at its first message, after the root took the agent in; its
    /// failure reaches the root through the actor the host reported, and the root restarts
    /// it. The restarted instance is dormant again, and the map of started actors is empty.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_agent_started_at_its_first_message_is_restarted_when_it_fails() {
        let (host, sup) = supervised().await;
        let a = add("lazy");
        let flaky = a.id.clone();
        assert!(sup.activate(a, None).await.unwrap().created);
        assert_eq!(
            host.actor_id(&flaky),
            None,
            "no actor before the first message"
        );
        let crashed = ask(&host, &flaky, FlakyMsg::Crash).await;
        assert!(crashed.is_err_and(|e| e.contains("crash")));
        until("the restart", || {
            host.info(&flaky).is_some_and(|i| i.status == "running")
                && lock(&sup.shared.started).is_empty()
        })
        .await;
        let node = child(&sup, &[], "flaky/lazy").await;
        assert_eq!(node.restarts, 1, "{node:?}");
        assert_eq!(node.status, ChildStatus::Running, "{node:?}");
        assert_eq!(host.actor_id(&flaky), None, "restarted dormant");
        assert_eq!(ask(&host, &flaky, FlakyMsg::Ping).await.unwrap(), "pong");
        assert_eq!(lock(&sup.shared.started).len(), 1);
        sup.stop();
    }

    /// One-for-all: a sibling whose actor had started is stopped for the restart, and its
    /// actor's end is reported after the restart. That event is stale (the host said which
    /// actor the restart replaced) and must not restart the sibling a second time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stale_exit_of_a_replaced_instance_is_dropped() {
        let (host, sup) = supervised().await;
        let (fa, fb) = one_for_all_pair(&sup).await;
        // both actors start
        assert_eq!(ask(&host, &fa, FlakyMsg::Ping).await.unwrap(), "pong");
        assert_eq!(ask(&host, &fb, FlakyMsg::Ping).await.unwrap(), "pong");
        let old_b = host.actor_id(&fb).unwrap();
        assert!(ask(&host, &fa, FlakyMsg::Crash).await.is_err());
        until("both restarted, their old actors forgotten", || {
            [&fa, &fb]
                .iter()
                .all(|id| host.info(id).is_some_and(|i| i.status == "running"))
                && lock(&sup.shared.started).is_empty()
        })
        .await;
        // no wait is needed for a stale event: the group stopped b's old actor itself, and
        // ractor queued that actor's end for the group before the stop returned; a group
        // handles queued supervision events before its next message, so the snapshot below
        // comes after the stale event was handled (or dropped)
        let (na, nb) = (
            child(&sup, &["g"], "flaky/a").await,
            child(&sup, &["g"], "flaky/b").await,
        );
        assert_eq!(na.restarts, 1, "{na:?}");
        assert_eq!(nb.restarts, 1, "{nb:?}");
        assert_eq!(nb.status, ChildStatus::Running, "{nb:?}");
        assert_eq!(
            host.actor_id(&fb),
            None,
            "b was restarted once, dormant, and not again by {old_b:?}'s end"
        );
        assert_eq!(ask(&host, &fb, FlakyMsg::Ping).await.unwrap(), "pong");
        sup.stop();
    }

    /// One-for-all with a sibling that never got mail: it has no actor to stop, so the stop
    /// runs its `on_stop` and the restart starts it dormant again, with the others.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dormant_sibling_is_stopped_and_restarted_with_the_others() {
        let (host, sup) = supervised().await;
        let mut exits = exits(&host);
        let (fa, fb) = one_for_all_pair(&sup).await;
        assert!(ask(&host, &fa, FlakyMsg::Crash).await.is_err());
        until("both restarted", || {
            [&fa, &fb]
                .iter()
                .all(|id| host.info(id).is_some_and(|i| i.status == "running"))
        })
        .await;
        let nb = child(&sup, &["g"], "flaky/b").await;
        assert_eq!(nb.restarts, 1, "{nb:?}");
        assert_eq!(host.actor_id(&fb), None);
        assert_eq!(ask(&host, &fb, FlakyMsg::Ping).await.unwrap(), "pong");
        // no exit for good was reported: a failure that is restarted is not one, nor is a
        // stop for a sibling's restart. The exits would have been reported before the
        // restarts that `until` waited for (the host reports an exit for good when the
        // supervisor gives the agent up or forgets it, in the same turn)
        sup.settle().await.unwrap();
        assert!(exits.try_recv().is_err());
        sup.stop();
    }

    /// A fenced node stops its agents for good, whether their actors ever started or not;
    /// each is reported as a clean stop and none is restarted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fencing_stops_dormant_and_started_agents_alike() {
        let (host, sup) = supervised().await;
        let mut exits = exits(&host);
        let (a, b) = (add("started"), add("dormant"));
        let fa = a.id.clone();
        sup.activate(a, None).await.unwrap();
        sup.activate(b, None).await.unwrap();
        assert_eq!(ask(&host, &fa, FlakyMsg::Ping).await.unwrap(), "pong");
        let mut fenced: Vec<String> = sup
            .fence()
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.id.to_string())
            .collect();
        fenced.sort();
        // each with the spawn record the other side of the split may lack
        assert_eq!(fenced.len(), 2);
        assert!(fenced[0].ends_with("dormant") && fenced[1].ends_with("started"));
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let e = tokio::time::timeout(Duration::from_secs(5), exits.recv())
                .await
                .expect("both stops are reported")
                .unwrap();
            seen.push(e);
        }
        seen.sort();
        assert_eq!(
            seen,
            [
                ("flaky/dormant".into(), None),
                ("flaky/started".into(), None)
            ]
        );
        // the fence's stops queued the agents' ends at the root before `fence` returned; the
        // root handles queued supervision events before its next message, so once `settle`
        // is answered they were handled: nothing restarted
        sup.settle().await.unwrap();
        assert!(host.list().is_empty(), "{:?}", host.list());
        assert!(lock(&sup.shared.started).is_empty());
        sup.stop();
    }
}
