//! A supervisor's report of its subtree (what `tether tree` draws).

use tether_actors::host::now_unix_ms;

use super::{Kind, State, SupMsg, SupervisorActor, SNAPSHOT_TIMEOUT};
use crate::strategy::{ChildId, ChildStatus};
use crate::tree::{AgentNode, Failure, SupervisorNode};

impl SupervisorActor {
    pub(super) async fn snapshot(&self, st: &State) -> SupervisorNode {
        let host = &self.shared.host;
        let mut agents = Vec::new();
        let mut supervisors = Vec::new();
        let mut ids: Vec<&ChildId> = st.children.keys().collect();
        ids.sort();
        for c in ids {
            let info = &st.children[c];
            let view = st.core.view(*c);
            match &info.kind {
                Kind::Agent { id, policy } => {
                    let hi = host.info(id);
                    let status = match (&view, hi.as_ref().map(|i| i.status.as_str())) {
                        (_, Some("running")) => ChildStatus::Running,
                        (_, Some("backing-off")) => ChildStatus::BackingOff,
                        (_, Some("restarting")) => ChildStatus::Restarting,
                        (Some(v), _) => v.status.clone(),
                        (None, _) => ChildStatus::Stopped,
                    };
                    let p = hi.as_ref().map(|i| i.placement.clone()).unwrap_or_default();
                    agents.push(AgentNode {
                        id: id.to_string(),
                        status,
                        restarts: view.as_ref().map(|v| v.restarts).unwrap_or(0),
                        last_failure: info.last_failure.as_deref().cloned(),
                        uptime_ms: hi.as_ref().map(|i| i.uptime_ms).unwrap_or(0),
                        mailbox: hi.as_ref().map(|i| i.mailbox).unwrap_or(0),
                        epoch: hi.as_ref().map(|i| i.epoch).unwrap_or(0),
                        placement: p,
                        policy: policy.get(),
                    });
                }
                Kind::Group { spec, actor } => {
                    let live = match actor {
                        Some(a)
                            if view
                                .as_ref()
                                .is_some_and(|v| v.status == ChildStatus::Running) =>
                        {
                            a.call(SupMsg::Snapshot, Some(SNAPSHOT_TIMEOUT))
                                .await
                                .ok()
                                .and_then(|r| r.success_or(()).ok())
                        }
                        _ => None,
                    };
                    let mut node = live.unwrap_or_else(|| SupervisorNode {
                        name: spec.name.clone(),
                        strategy: spec.strategy,
                        status: ChildStatus::Stopped,
                        restarts: 0,
                        intensity: spec.intensity,
                        last_failure: None,
                        supervisors: Vec::new(),
                        agents: Vec::new(),
                    });
                    if let Some(v) = &view {
                        if node.status == ChildStatus::Running || v.status != ChildStatus::Running {
                            node.status = v.status.clone();
                        }
                        node.restarts = v.restarts;
                    }
                    node.last_failure = info.last_failure.as_deref().cloned();
                    supervisors.push(node);
                }
            }
        }
        SupervisorNode {
            name: self.name.clone(),
            strategy: self.strategy,
            status: if st.failed.is_some() {
                ChildStatus::Failed
            } else {
                ChildStatus::Running
            },
            restarts: 0,
            intensity: self.intensity,
            last_failure: st.failed.as_ref().map(|r| Failure {
                at_unix_ms: now_unix_ms(),
                reason: r.clone(),
            }),
            supervisors,
            agents,
        }
    }
}
