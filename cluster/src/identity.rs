//! Node identity: names, roles, incarnations.
//!
//! A node's name is its identity in the cluster: it is the DNS name in its certificate, the name
//! it announces in every handshake, and the key of the membership table. Names are DNS labels
//! (`[a-z0-9-]`, 1 to 63 characters, no leading or trailing `-`), so they can never contain a
//! dot; the operator identity [`ADMIN_NAME`] contains one, so no node can pose as the operator.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The DNS name in the operator's (CLI's) certificate. Only this identity may use the control
/// plane; it can never be a node name because node names contain no dots.
pub const ADMIN_NAME: &str = "admin.tether";

/// Why a node name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("a node name cannot be empty")]
    Empty,
    /// The name is longer than 63 characters.
    #[error("node name {0:?} is longer than 63 characters")]
    TooLong(String),
    /// The name has a character outside `[a-z0-9-]` or starts/ends with `-`.
    #[error("node name {0:?} must use only a-z, 0-9 and '-', and not start or end with '-'")]
    BadCharacter(String),
}

/// Checks that `name` can be a node name (a lowercase DNS label).
///
/// # Errors
/// A [`NameError`] saying which rule the name breaks.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > 63 {
        return Err(NameError::TooLong(name.to_owned()));
    }
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok_chars || name.starts_with('-') || name.ends_with('-') {
        return Err(NameError::BadCharacter(name.to_owned()));
    }
    Ok(())
}

/// What a node is for. The role decides placement later on and who dials whom now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The user's device: local files, sensitive data; may go offline.
    Local,
    /// The backend: heavy compute and the coordinator.
    Remote,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Local => "local",
            Role::Remote => "remote",
        })
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "local" => Ok(Role::Local),
            "remote" => Ok(Role::Remote),
            other => Err(format!("unknown role {other:?}: expected local or remote")),
        }
    }
}

/// What every node knows about every member: enough to dial it and to tell a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's name (its certificate's DNS name).
    pub name: String,
    /// Local or remote.
    pub role: Role,
    /// The UDP address of the node's QUIC endpoint.
    pub addr: SocketAddr,
    /// Bumped at every start of the node; a higher number is a newer life of the same node.
    pub incarnation: u64,
    /// Agent kinds the node can host.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Capabilities it offers (`fs`, `gpu`, ...), matched against agents' `needs` labels.
    #[serde(default)]
    pub caps: Vec<String>,
}

/// The capabilities a node of `role` offers unless told otherwise: a local node (a device)
/// has files (`fs`); a remote node offers nothing it was not given.
pub fn default_caps(role: Role) -> Vec<String> {
    match role {
        Role::Local => vec!["fs".to_owned()],
        Role::Remote => Vec::new(),
    }
}

/// Checks a capability name: 1 to 32 bytes of `[a-z0-9_.-]`.
///
/// # Errors
/// Why it is not one.
pub fn validate_cap(cap: &str) -> Result<(), String> {
    let ok = !cap.is_empty()
        && cap.len() <= 32
        && cap
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "capability {cap:?}: use 1 to 32 of a-z, 0-9, '_', '.', '-'"
        ))
    }
}

/// Of two nodes, the one that opens their connection.
///
/// A local node always dials a remote one: devices sit behind NAT and firewalls, the backend does
/// not. Between nodes of one role the lower name dials. Both sides compute the same answer,
/// which is what keeps the pair to one connection.
pub fn designated_dialer<'a>(a: (&'a str, Role), b: (&'a str, Role)) -> &'a str {
    match (a.1, b.1) {
        (Role::Local, Role::Remote) => a.0,
        (Role::Remote, Role::Local) => b.0,
        _ => {
            if a.0 <= b.0 {
                a.0
            } else {
                b.0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        for good in ["r1", "a", "node-7", "0abc"] {
            assert_eq!(validate_name(good), Ok(()), "{good}");
        }
        assert_eq!(validate_name(""), Err(NameError::Empty));
        for bad in ["R1", "a.b", "-a", "a-", "a_b", "é", ADMIN_NAME] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            validate_name(&"a".repeat(64)),
            Err(NameError::TooLong(_))
        ));
    }

    #[test]
    fn local_node_dials_remote_node_whatever_the_names() {
        assert_eq!(
            designated_dialer(("z", Role::Local), ("a", Role::Remote)),
            "z"
        );
        assert_eq!(
            designated_dialer(("a", Role::Remote), ("z", Role::Local)),
            "z"
        );
    }

    #[test]
    fn same_role_lower_name_dials_and_both_sides_agree() {
        let a = ("r1", Role::Remote);
        let b = ("r2", Role::Remote);
        assert_eq!(designated_dialer(a, b), "r1");
        assert_eq!(designated_dialer(b, a), "r1");
    }
}
