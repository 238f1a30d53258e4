//! Run with: `cargo run -- up --detach` then `cargo run --example join_cluster`
//!
//! An application that is itself a tether node: it starts an in-process local node, joins the
//! cluster that `tether up` runs in `./.tether` (or `$TETHER_STATE_DIR`), registers its own
//! agent kind, spawns agents on a remote node and talks to them by id, typed.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tether::actors::builtin::{Counter, CounterMsg};
use tether::actors::{Agent, AgentId, AgentRef, Ctx, Failure};
use tether::cluster::net::certs::CertDir;
use tether::cluster::net::statedir::NodeDir;
use tether::{Kinds, Node, Role};

/// An agent kind of this application: greets by name and counts greetings.
#[derive(Default)]
struct Greeter;

impl Agent for Greeter {
    const KIND: &'static str = "greeter";
    type Args = String;
    type Msg = String;
    type Reply = String;
    type State = (String, u64);

    async fn init(&self, _ctx: &Ctx<Self>, greeting: String) -> Result<(String, u64), Failure> {
        Ok((greeting, 0))
    }

    async fn handle(
        &self,
        ctx: &Ctx<Self>,
        state: &mut (String, u64),
        name: String,
    ) -> Result<String, Failure> {
        state.1 += 1;
        Ok(format!(
            "{}, {name}! (greeting #{} from {} on {})",
            state.0,
            state.1,
            ctx.id(),
            ctx.node()
        ))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(std::env::var("TETHER_STATE_DIR").unwrap_or_else(|_| ".tether".into()));
    let certs = CertDir::new(&dir);
    certs.ensure_node("example").with_context(|| {
        format!(
            "no cluster CA in {}: run `cargo run -- up --detach` first",
            dir.display()
        )
    })?;
    // join through every node `tether up` recorded
    let seeds: Vec<_> = std::fs::read_dir(dir.join("nodes"))?
        .flatten()
        .filter_map(|e| NodeDir::new(e.path()).read_record())
        .filter(|r| r.name != "example")
        .map(|r| r.addr)
        .collect();
    anyhow::ensure!(
        !seeds.is_empty(),
        "no running nodes in {}: run `cargo run -- up --detach` first",
        dir.display()
    );

    let node = Node::builder("example")
        .role(Role::Local)
        .state_dir(&dir)
        .seeds(seeds.clone())
        .kinds(Kinds::builtin().register::<Greeter>())
        .start()
        .await?;
    node.wait_peers_up(seeds.len(), Duration::from_secs(10))
        .await?;
    println!(
        "joined the cluster as {} ({})",
        node.info().name,
        node.info().addr
    );

    // a built-in kind on a remote node, talked to with typed messages
    let counter = node.spawn::<Counter>("from-example", None).on("r1").await?;
    for _ in 0..100 {
        counter.tell(CounterMsg::Inc)?;
    }
    let n = counter.ask(CounterMsg::Get, Duration::from_secs(2)).await?;
    println!("{} on r1 counts {n}", counter.id());

    // our own kind, here; any node can reach it by id
    let greeter = node.spawn::<Greeter>("hello", "Hello".into()).await?;
    println!(
        "{}",
        greeter.ask("world".into(), Duration::from_secs(2)).await?
    );

    // talking by id: a ref built from the id alone finds the agent wherever it runs
    let id: AgentId = "counter/from-example".parse()?;
    let by_id: AgentRef<Counter> = node.agent_ref(id);
    println!(
        "by id: {}",
        by_id
            .ask(CounterMsg::Add(10), Duration::from_secs(2))
            .await?
    );

    println!("try it from the CLI while this runs: tether ask greeter/hello '\"you\"' --via r1 (Ctrl-C to stop)");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = tokio::time::sleep(Duration::from_secs(
            std::env::var("EXAMPLE_LINGER_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(30),
        )) => {}
    }
    node.shutdown().await;
    Ok(())
}
