//! A node's status: how it sees every peer, its counters, its mode (what `tether status`
//! shows).

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::Shared;
use crate::control::{AgentCounters, NodeStatus, PeerStatus};
use crate::membership::detector::PeerState;

impl Shared {
    /// A snapshot of this node's view of the cluster.
    pub(crate) fn status(&self) -> NodeStatus {
        let now = Instant::now();
        let (mut peers, role_counters, outbox, mode, notices) = self.driver.read(|c| {
            let peers: Vec<PeerStatus> = c
                .members()
                .peers()
                .map(|m| {
                    let link = self.links.get(&m.info.name);
                    let state = m.detector.state();
                    PeerStatus {
                        name: m.info.name.clone(),
                        role: m.info.role,
                        addr: m.info.addr,
                        incarnation: m.info.incarnation,
                        state,
                        rtt_ms: link
                            .as_ref()
                            .filter(|_| state == PeerState::Up)
                            .map(|l| l.conn.rtt().as_secs_f64() * 1000.0),
                        since_ms: now
                            .saturating_duration_since(m.detector.since())
                            .as_millis() as u64,
                        last_heard_ms: now
                            .saturating_duration_since(m.detector.last_heard())
                            .as_millis() as u64,
                        changes: m.detector.changes(),
                        linked: link.is_some(),
                        session: self.dials.get(&m.info.name).is_some_and(|d| d.session),
                        left: m.left,
                    }
                })
                .collect();
            (
                peers,
                c.role_counters(),
                c.outbox_counters(),
                c.mode(),
                c.notices_pending(),
            )
        });
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        let (dropped, delayed) = self.faults.counters();
        NodeStatus {
            name: self.me.name.clone(),
            role: self.me.role,
            addr: self.me.addr,
            pid: std::process::id(),
            incarnation: self.me.incarnation,
            uptime_ms: self.started.elapsed().as_millis() as u64,
            peers,
            faults: self.faults.rules().rules().to_vec(),
            fault_seed: self.faults.seed(),
            datagrams_dropped: dropped,
            datagrams_delayed: delayed,
            kinds: self.me.kinds.clone(),
            caps: self.me.caps.clone(),
            agents_hosted: self
                .host
                .list()
                .iter()
                .filter(|a| a.status == "running")
                .count() as u64,
            agent_counters: AgentCounters {
                frames_in: self.counters.frames_in.load(Ordering::Relaxed),
                tell_failures: self.counters.tell_failures.load(Ordering::Relaxed),
                pending_asks: self.router.pending_asks() as u64,
                failovers: role_counters.failovers,
                unavailable: role_counters.unavailable,
                notices_pending: notices as u64,
            },
            mode,
            outbox,
        }
    }
}
