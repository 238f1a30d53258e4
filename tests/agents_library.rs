//! The library path: an application that is itself a node joins a `tether up` cluster,
//! registers its own kinds, and talks to agents by id with typed messages.

mod support;

use std::time::Duration;

use support::Cluster;
use tether::actors::builtin::{Counter, CounterMsg};
use tether::actors::{Agent, AgentError, AgentRef, Ctx, Failure};
use tether::{Kinds, Node, Role};

/// Replies with its greeting and the caller's name.
#[derive(Default)]
struct Greeter;

impl Agent for Greeter {
    const KIND: &'static str = "greeter";
    type Args = String;
    type Msg = String;
    type Reply = String;
    type State = String;

    async fn init(&self, _ctx: &Ctx<Self>, greeting: String) -> Result<String, Failure> {
        Ok(greeting)
    }

    async fn handle(
        &self,
        _ctx: &Ctx<Self>,
        g: &mut String,
        name: String,
    ) -> Result<String, Failure> {
        Ok(format!("{g}, {name}"))
    }
}

async fn join(c: &Cluster, name: &str, kinds: Kinds, peers: usize) -> Node {
    let seed = c.record("r1").0.parse().unwrap();
    let node = Node::builder(name)
        .role(Role::Local)
        .state_dir(&c.dir)
        .seed(seed)
        .kinds(kinds)
        .start()
        .await
        .unwrap();
    node.wait_peers_up(peers, Duration::from_secs(10))
        .await
        .unwrap();
    node
}

#[tokio::test(flavor = "current_thread")]
async fn an_application_node_spawns_remotely_and_hosts_its_own_kind() {
    let c = Cluster::up("library", 2, 1);
    let node = join(&c, "app", Kinds::builtin().register::<Greeter>(), 3).await;

    // typed messages to a built-in kind on a remote node, in order
    let counter = node.spawn::<Counter>("typed", None).on("r2").await.unwrap();
    for _ in 0..1000 {
        counter.tell(CounterMsg::Inc).unwrap();
    }
    assert_eq!(
        counter
            .ask(CounterMsg::Get, Duration::from_secs(5))
            .await
            .unwrap(),
        1000
    );

    // a ref made from the id alone reaches the same agent
    let by_id: AgentRef<Counter> = node.agent_ref("counter/typed".parse().unwrap());
    assert_eq!(
        by_id
            .ask(CounterMsg::Add(1), Duration::from_secs(5))
            .await
            .unwrap(),
        1001
    );

    // our own kind runs here, and other nodes reach it by id (JSON from the CLI, via r1)
    node.spawn::<Greeter>("g", "Hello".into()).await.unwrap();
    let out = tokio::task::spawn_blocking({
        let dir = c.dir.clone();
        move || support::run_tether(&["ask", "greeter/g", "\"cli\"", "--via", "r1"], &dir)
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", support::text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "\"Hello, cli\""
    );

    // a node without the kind cannot host it, and says what it has
    let e = node
        .spawn::<Greeter>("elsewhere", "Hi".into())
        .on("r1")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, AgentError::UnknownKind { node, .. } if node == "r1"),
        "{e}"
    );
    node.shutdown().await;
}
