//! Pure decisions of the directory: who owns an id, and where a new agent goes.
//!
//! **Owner.** Each agent id's directory entry lives on one remote node, chosen by rendezvous
//! hashing (highest random weight) over the remote nodes that are up: every node computes the
//! same owner from the same view, and when a node joins or leaves only the ids it wins or
//! loses move. The owner serializes get-or-spawn of its ids, assigns epochs, and answers
//! lookups. Hosts are the source of truth: an owner that has no entry (it just took over)
//! asks the hosts.
//!
//! **Placement.** Among the up nodes that registered the kind: a `local-only` agent only on a
//! local node (and only the requesting one: see the runtime), `heavy` compute only on remote
//! nodes, a `needs` label only on nodes offering that capability; `prefer` narrows to its side
//! when that side has a candidate; then the least loaded (fewest agents), ties broken by name.

use serde::{Deserialize, Serialize};
use tether_actors::{Compute, Placement, Prefer};

use crate::identity::Role;

/// FNV-1a, 64 bits: stable across builds and platforms (the std hasher is not).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // final avalanche so similar names spread (splitmix64 finalizer)
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The owner of `id` among `remotes` (names of up remote nodes), if any.
pub fn owner<'a>(id: &str, remotes: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    remotes
        .into_iter()
        .max_by_key(|n| (fnv1a(&[n.as_bytes(), id.as_bytes()]), *n))
}

/// The owner of `id` and its backup (the second rendezvous choice) among `remotes`.
///
/// The backup keeps a copy of every entry the owner places. Rendezvous order does not depend
/// on the other nodes, so when the owner goes down the backup is the new owner, and it
/// already holds the entries (with how each agent was spawned) it needs to fail them over.
pub fn owner_and_backup<'a>(
    id: &str,
    remotes: impl IntoIterator<Item = &'a str>,
) -> (Option<&'a str>, Option<&'a str>) {
    let mut best: Option<(u64, &'a str)> = None;
    let mut second: Option<(u64, &'a str)> = None;
    for n in remotes {
        let k = (fnv1a(&[n.as_bytes(), id.as_bytes()]), n);
        if best.is_none_or(|b| k > b) {
            second = best;
            best = Some(k);
        } else if second.is_none_or(|s| k > s) {
            second = Some(k);
        }
    }
    (best.map(|b| b.1), second.map(|s| s.1))
}

/// A node that could host an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// It registered the kind.
    pub has_kind: bool,
    /// Agents it hosts (as far as the chooser knows).
    pub load: usize,
    /// Capabilities it offers.
    #[serde(default)]
    pub caps: Vec<String>,
}

/// Why no node fits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// No up node registered the kind.
    #[error("no reachable node can host kind {0:?}")]
    NoKind(String),
    /// Nodes have the kind, but the labels rule them all out.
    #[error("no reachable node fits the placement of {kind:?} ({why})")]
    NoFit {
        /// The kind.
        kind: String,
        /// Which rule excluded the rest.
        why: String,
    },
}

/// Whether `role` may host an agent with `p` at all.
pub fn role_allows(p: &Placement, role: Role) -> Result<(), String> {
    if p.is_local_only() && role == Role::Remote {
        return Err("local-only agents run only on local nodes".into());
    }
    if p.compute == Compute::Heavy && role == Role::Local {
        return Err("heavy agents run only on remote nodes".into());
    }
    Ok(())
}

/// The first of `p`'s `needs` that `caps` lacks, if any.
pub fn missing_need<'a>(p: &'a Placement, caps: &[String]) -> Option<&'a str> {
    p.needs
        .iter()
        .find(|n| !caps.iter().any(|c| c == *n))
        .map(String::as_str)
}

/// Whether a node of `role` offering `caps` may host an agent with `p`: its role, then its
/// capabilities (the refusal names the label that did not match).
pub fn fits(p: &Placement, role: Role, caps: &[String]) -> Result<(), String> {
    role_allows(p, role)?;
    match missing_need(p, caps) {
        Some(need) => Err(format!(
            "it needs capability {need} (needs={}), which the node does not offer",
            p.needs.join(",")
        )),
        None => Ok(()),
    }
}

/// Picks the node for a new agent of `kind` with labels `p`.
///
/// # Errors
/// [`PlacementError`] saying why nothing fits.
pub fn choose<'a>(
    kind: &str,
    p: &Placement,
    candidates: &'a [Candidate],
) -> Result<&'a Candidate, PlacementError> {
    let with_kind: Vec<&Candidate> = candidates.iter().filter(|c| c.has_kind).collect();
    if with_kind.is_empty() {
        return Err(PlacementError::NoKind(kind.to_owned()));
    }
    let allowed: Vec<&Candidate> = with_kind
        .iter()
        .copied()
        .filter(|c| fits(p, c.role, &c.caps).is_ok())
        .collect();
    if allowed.is_empty() {
        // the role rule, if it rules them all out; else the capability no eligible node has
        let by_role: Vec<&Candidate> = with_kind
            .iter()
            .copied()
            .filter(|c| role_allows(p, c.role).is_ok())
            .collect();
        let why = match by_role.first() {
            None => role_allows(p, with_kind[0].role).err().unwrap_or_default(),
            Some(_) => {
                let offered = |n: &String| by_role.iter().any(|c| c.caps.contains(n));
                match p.needs.iter().find(|n| !offered(n)) {
                    Some(need) => format!(
                        "it needs capability {need} (needs={}), which no node that may host it \
                         offers",
                        p.needs.join(",")
                    ),
                    None => format!(
                        "it needs capabilities {}, which no single node that may host it offers",
                        p.needs.join(",")
                    ),
                }
            }
        };
        return Err(PlacementError::NoFit {
            kind: kind.to_owned(),
            why,
        });
    }
    let preferred_role = match p.prefer {
        Prefer::Local => Some(Role::Local),
        Prefer::Remote => Some(Role::Remote),
        Prefer::Any => None,
    };
    let pool: Vec<&Candidate> = match preferred_role {
        Some(r) if allowed.iter().any(|c| c.role == r) => {
            allowed.into_iter().filter(|c| c.role == r).collect()
        }
        _ => allowed,
    };
    // invariant: `pool` is non-empty, it is `allowed` or a non-empty part of it
    Ok(pool
        .into_iter()
        .min_by(|a, b| (a.load, &a.name).cmp(&(b.load, &b.name)))
        .expect("non-empty pool"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tether_actors::Sensitivity;

    fn c(name: &str, role: Role, load: usize) -> Candidate {
        Candidate {
            name: name.into(),
            role,
            has_kind: true,
            load,
            caps: Vec::new(),
        }
    }

    #[test]
    fn a_need_is_met_only_by_a_node_offering_it_and_a_refusal_names_it() {
        let mut fs_node = c("l1", Role::Local, 9);
        fs_node.caps = vec!["fs".into()];
        let nodes = [c("r1", Role::Remote, 0), fs_node, c("r2", Role::Remote, 1)];
        let p = Placement {
            needs: vec!["fs".into()],
            ..Placement::default()
        };
        assert_eq!(
            choose("k", &p, &nodes).unwrap().name,
            "l1",
            "despite its load"
        );
        let gpu = Placement {
            needs: vec!["fs".into(), "gpu".into()],
            ..Placement::default()
        };
        let e = choose("k", &gpu, &nodes).unwrap_err().to_string();
        assert!(
            e.contains("capability gpu") && e.contains("needs=fs,gpu"),
            "{e}"
        );
        // the role rule speaks first when it is what rules every node out
        let heavy_fs = Placement {
            compute: Compute::Heavy,
            ..p.clone()
        };
        let e = choose("k", &heavy_fs, &nodes[1..2])
            .unwrap_err()
            .to_string();
        assert!(e.contains("heavy agents run only on remote nodes"), "{e}");
        let e = fits(&p, Role::Remote, &[]).unwrap_err();
        assert!(e.contains("capability fs"), "{e}");
        assert!(fits(&p, Role::Local, &["gpu".into(), "fs".into()]).is_ok());
    }

    #[test]
    fn owner_is_the_same_whatever_the_order_of_the_view() {
        let a = owner("counter/x", ["r1", "r2", "r3"]).unwrap();
        let b = owner("counter/x", ["r3", "r1", "r2"]).unwrap();
        assert_eq!(a, b);
        assert_eq!(owner("counter/x", []), None);
    }

    #[test]
    fn owners_spread_over_nodes() {
        let nodes = ["r1", "r2", "r3", "r4"];
        let mut counts = std::collections::HashMap::new();
        for i in 0..4000 {
            *counts
                .entry(owner(&format!("counter/{i}"), nodes).unwrap())
                .or_insert(0) += 1;
        }
        for n in nodes {
            let k = counts[n];
            assert!((700..1300).contains(&k), "{n} owns {k} of 4000");
        }
    }

    proptest! {
        /// Removing a node moves only the ids that node owned.
        #[test]
        fn removing_a_node_moves_only_its_ids(ids in proptest::collection::vec("[a-z]{1,8}/[a-z0-9]{1,8}", 1..50)) {
            let all = ["r1", "r2", "r3", "r4"];
            let without = ["r1", "r2", "r4"];
            for id in &ids {
                let before = owner(id, all).unwrap();
                let after = owner(id, without).unwrap();
                if before != "r3" {
                    prop_assert_eq!(before, after);
                }
            }
        }
    }

    proptest! {
        /// The backup is the owner once the owner is gone, whatever the view.
        #[test]
        fn backup_is_the_next_owner(id in "[a-z]{1,8}/[a-z0-9]{1,8}", n in 1usize..8) {
            let names: Vec<String> = (1..=n).map(|i| format!("r{i}")).collect();
            let (o, b) = owner_and_backup(&id, names.iter().map(String::as_str));
            prop_assert_eq!(o, owner(&id, names.iter().map(String::as_str)));
            prop_assert_eq!(b.is_some(), n > 1);
            if let (Some(o), Some(b)) = (o, b) {
                prop_assert_ne!(o, b);
                let rest = names.iter().map(String::as_str).filter(|x| *x != o);
                prop_assert_eq!(owner(&id, rest), Some(b));
            }
        }
    }

    #[test]
    fn least_loaded_eligible_node_wins() {
        let cs = vec![
            c("r1", Role::Remote, 5),
            c("r2", Role::Remote, 2),
            c("l1", Role::Local, 0),
        ];
        let p = Placement::default();
        assert_eq!(choose("counter", &p, &cs).unwrap().name, "l1");
        let heavy = Placement {
            compute: Compute::Heavy,
            ..Placement::default()
        };
        assert_eq!(choose("counter", &heavy, &cs).unwrap().name, "r2");
        let remote = Placement {
            prefer: Prefer::Remote,
            ..Placement::default()
        };
        assert_eq!(choose("counter", &remote, &cs).unwrap().name, "r2");
    }

    #[test]
    fn local_only_never_lands_on_a_remote_node() {
        let cs = vec![c("r1", Role::Remote, 0)];
        let p = Placement {
            sensitivity: Sensitivity::LocalOnly,
            ..Placement::default()
        };
        assert!(matches!(
            choose("echo", &p, &cs),
            Err(PlacementError::NoFit { .. })
        ));
    }

    #[test]
    fn nodes_without_the_kind_are_not_candidates() {
        let mut cs = vec![c("r1", Role::Remote, 0)];
        cs[0].has_kind = false;
        assert_eq!(
            choose("mine", &Placement::default(), &cs),
            Err(PlacementError::NoKind("mine".into()))
        );
    }
}
