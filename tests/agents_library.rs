//! The library path: an application that is itself a node joins a `tether up` cluster,
//! registers its own kinds, and talks to agents by id with typed messages.

mod support;

use std::time::Duration;

use support::Cluster;
use tether::actors::builtin::{Counter, CounterMsg};
use tether::actors::{Agent, AgentError, AgentId, AgentRef, Ctx, Failure, Placement};
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

/// A local-only agent that tries to pass what it gets to another agent.
#[derive(Default)]
struct Diary;

impl Agent for Diary {
    const KIND: &'static str = "diary";
    type Args = ();
    type Msg = String;
    /// What happened to the forwarded copy.
    type Reply = String;
    type State = ();

    fn placement(&self, _args: &()) -> Placement {
        Placement::local_only()
    }

    async fn init(&self, _ctx: &Ctx<Self>, _args: ()) -> Result<(), Failure> {
        Ok(())
    }

    async fn handle(
        &self,
        _ctx: &Ctx<Self>,
        _s: &mut (),
        target: String,
    ) -> Result<String, Failure> {
        let id: AgentId = target.parse()?;
        let r: AgentRef<tether::actors::builtin::Echo> =
            AGENTS.with(|n| n.get().expect("node set").agent_ref(id));
        match r.tell(serde_json::json!("secret entry")) {
            Ok(()) => Ok("sent".into()),
            Err(e) => Ok(format!("refused: {}", e.error)),
        }
    }
}

thread_local! {
    static AGENTS: std::cell::OnceCell<Node> = const { std::cell::OnceCell::new() };
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

#[tokio::test(flavor = "current_thread")]
async fn a_local_only_agent_cannot_send_off_its_node() {
    let c = Cluster::up("diary", 1, 1);
    let node = join(&c, "phone", Kinds::builtin().register::<Diary>(), 2).await;
    AGENTS.with(|n| {
        let _ = n.set(node.clone());
    });
    node.spawn::<tether::actors::builtin::Echo>("remote", serde_json::Value::Null)
        .on("r1")
        .await
        .unwrap();
    node.spawn::<tether::actors::builtin::Echo>("nearby", serde_json::Value::Null)
        .await
        .unwrap();
    let diary = node.spawn::<Diary>("d", ()).await.unwrap();
    let frames_before = support_frames(&c);
    let r = diary
        .ask("echo/remote".into(), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        r.starts_with("refused: ") && r.contains("local-only"),
        "{r}"
    );
    assert_eq!(
        diary
            .ask("echo/nearby".into(), Duration::from_secs(5))
            .await
            .unwrap(),
        "sent"
    );
    assert_eq!(
        support_frames(&c),
        frames_before,
        "nothing from the diary reached r1"
    );
    // and it cannot be placed on a remote node at all
    let e = node.spawn::<Diary>("far", ()).on("r1").await.unwrap_err();
    assert!(matches!(e, AgentError::LocalOnly { .. }), "{e}");
    node.shutdown().await;
}

fn support_frames(c: &Cluster) -> u64 {
    let st = c.status();
    Cluster::node(&st, "r1")["agent_counters"]["frames_in"]
        .as_u64()
        .unwrap()
}
