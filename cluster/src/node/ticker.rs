//! The periodic work of a node: the core's tick (detectors, the role's decisions, deadlines,
//! heartbeats), dials of the peers and seeds that need one, and gossip.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{connect, Shared};
use crate::membership::link;
use crate::net::wire::PeerMsg;

/// Runs until the node stops.
pub(super) async fn run(shared: Arc<Shared>) {
    let mut every = tokio::time::interval(shared.timing.heartbeat_interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_gossip = Instant::now();
    let mut stop = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        shared.driver.with(|c, now| c.tick(now));
        let now = Instant::now();
        dial_peers(&shared, now);
        dial_seeds(&shared, now);
        if now.duration_since(last_gossip) >= shared.timing.gossip_interval {
            last_gossip = now;
            gossip(&shared);
        }
    }
}

/// Dials the peers whose link is missing or silent, as the link rule says (see
/// [`link::dial_due`]).
fn dial_peers(shared: &Arc<Shared>, now: Instant) {
    let suspect_after = shared.timing.detector.suspect_after;
    // what the core knows of each peer: address, whether it left, whether it is silent
    let peers: Vec<(String, SocketAddr, bool, bool, Instant)> = shared.driver.read(|c| {
        c.members()
            .peers()
            .map(|m| {
                let silent = m.detector.is_silent(now);
                (
                    m.info.name.clone(),
                    m.info.addr,
                    m.left,
                    silent,
                    m.detector.last_heard(),
                )
            })
            .collect()
    });
    for (name, addr, left, silent, last_heard) in peers {
        let linked = shared.links.id_of(&name).is_some();
        let Some(mut d) = shared.dials.get_mut(&name) else {
            continue;
        };
        if left || d.pending {
            continue;
        }
        let silent_since = (linked && silent).then(|| last_heard + suspect_after);
        let trouble = d
            .unlinked_since
            .or(silent_since)
            .map(|t| now.saturating_duration_since(t));
        let since_dial = d.last_end.map(|t| now.saturating_duration_since(t));
        if link::dial_due(
            &shared.timing.dial,
            d.i_am_designated,
            trouble,
            since_dial,
            d.failures,
        ) {
            d.pending = true;
            let epoch = d.epoch;
            drop(d);
            tokio::spawn(connect::dial_peer(
                shared.clone(),
                addr,
                name,
                linked,
                epoch,
            ));
        }
    }
}

fn dial_seeds(shared: &Arc<Shared>, now: Instant) {
    // once the node at a seed address is a known member, the peer dial logic owns it
    let known: Vec<SocketAddr> = shared
        .driver
        .read(|c| c.members().peers().map(|m| m.info.addr).collect());
    let mut seeds = shared
        .seeds
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for s in seeds.iter_mut() {
        if s.pending || known.contains(&s.addr) {
            continue;
        }
        let since = s.last_end.map(|t| now.saturating_duration_since(t));
        if link::dial_due(
            &shared.timing.dial,
            true,
            Some(Duration::MAX),
            since,
            s.failures,
        ) {
            s.pending = true;
            tokio::spawn(connect::dial_seed(shared.clone(), s.addr));
        }
    }
}

/// Tells every linked peer every member this node knows.
pub(super) fn gossip(shared: &Shared) {
    let members = shared.driver.read(|c| c.members().infos());
    for (_, l) in shared.links.all() {
        // a full queue means a stalled link; the next gossip will carry the same news
        let _ = l.tx.try_send(PeerMsg::Gossip {
            members: members.clone(),
        });
    }
}
