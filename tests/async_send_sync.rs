//! Compile-time checks that every public handle and error type can cross threads and tasks,
//! and that the futures a program awaits can be spawned on a multi-threaded runtime.
//!
//! Nothing here runs a node: the functions that build futures are only type-checked.

#![allow(dead_code)]

use std::future::IntoFuture;
use std::time::Duration;

use tether::actors::builtin::{Counter, Echo};
use tether::actors::{CodecError, LocalOnly};
use tether::cluster::{ControlClient, ControlError};
use tether::prelude::*;
use tether::{NodeError, NodeInfo, NodeMode, NodeStatus, SupervisionError, Timing};

fn send_sync<T: Send + Sync>() {}
fn clone<T: Clone>() {}
fn error<T: std::error::Error + Send + Sync + 'static>() {}
fn send<T: Send>(_: &T) {}

#[test]
fn handles_are_send_sync_and_clone() {
    send_sync::<Node>();
    clone::<Node>();
    send_sync::<NodeBuilder>();
    send_sync::<AgentRef<Counter>>();
    clone::<AgentRef<Counter>>();
    send_sync::<Ctx<Counter>>();
    send_sync::<Kinds>();
    clone::<Kinds>();
    send_sync::<AgentId>();
    send_sync::<Placement>();
    send_sync::<GroupSpec>();
    send_sync::<AgentPolicy>();
    send_sync::<Timing>();
    send_sync::<NodeStatus>();
    send_sync::<NodeInfo>();
    send_sync::<NodeMode>();
    send_sync::<ControlClient>();
    clone::<ControlClient>();
    send_sync::<tether::cluster::Node>();
    send_sync::<tether::cluster::net::fault::FaultLayer>();
    send_sync::<LocalOnly<String>>();
}

#[test]
fn errors_are_std_errors_that_cross_threads() {
    error::<AgentError>();
    error::<TellError<u64>>();
    send_sync::<Failure>();
    error::<NodeError>();
    error::<SupervisionError>();
    error::<ControlError>();
    error::<CodecError>();
}

/// The futures a program awaits are `Send`, so they can run in `tokio::spawn`.
async fn futures_are_send(node: Node, ctx: &Ctx<Echo>) {
    let spawn = node.spawn::<Counter>("c", None).into_future();
    send(&spawn);
    let counter = spawn.await.unwrap();
    let ask = counter.ask(
        tether::actors::builtin::CounterMsg::Get,
        Duration::from_secs(1),
    );
    send(&ask);
    send(&node.wait_peers_up(1, Duration::from_secs(1)));
    send(&node.tree());
    send(&node.shutdown());
    send(&ctx.ask::<Echo>(
        counter.id(),
        serde_json::Value::Null,
        Duration::from_secs(1),
    ));
    send(&ctx.spawn::<Echo>("e", serde_json::Value::Null));
    send(&Node::builder("n").start());
}
