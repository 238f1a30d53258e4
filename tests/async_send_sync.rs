//! Compile-time checks that the public handles can cross threads and tasks.

#![allow(dead_code)]

fn require_send_sync<T: Send + Sync>() {}
fn require_clone<T: Clone>() {}

#[test]
fn public_handles_are_send_sync_and_clone() {
    require_send_sync::<tether::cluster::Node>();
    require_clone::<tether::cluster::Node>();
    require_send_sync::<tether::cluster::ControlClient>();
    require_clone::<tether::cluster::ControlClient>();
    require_send_sync::<tether::cluster::net::fault::FaultLayer>();
    require_send_sync::<tether::cluster::NodeStatus>();
    require_send_sync::<tether::cluster::NodeError>();
    require_send_sync::<tether::cluster::ControlError>();
}
