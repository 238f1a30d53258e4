//! Agent timers: set by a handler or by `init`, fired between messages by `on_timer`, kept as
//! wall-clock deadlines that move with the agent's state.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tether_actors::durable::{CheckpointInfo, CheckpointSink, Release};
use tether_actors::host::RunOptions;
use tether_actors::{
    Agent, AgentId, Body, Checkpoint, Ctx, Delivery, Durability, Encoding, Failure, Host,
    Placement, SpawnRecord, TraceContext,
};
use tokio::sync::oneshot;

/// What fired, where: `node:name`.
type Log = Arc<Mutex<Vec<String>>>;

struct Reminder {
    log: Log,
}

#[derive(Debug, Serialize, Deserialize)]
enum Msg {
    Set(String, u64),
    Cancel(String),
    Timers,
}

impl Agent for Reminder {
    const KIND: &'static str = "reminder";
    /// A timer `init` sets: (name, ms).
    type Args = Option<(String, u64)>;
    type Msg = Msg;
    type Reply = Vec<String>;
    /// How many times "tick" fired.
    type State = u32;

    async fn init(&self, ctx: &Ctx<Self>, args: Self::Args) -> Result<u32, Failure> {
        if let Some((name, ms)) = args {
            ctx.set_timer(name, Duration::from_millis(ms));
        }
        Ok(0)
    }

    async fn handle(&self, ctx: &Ctx<Self>, _: &mut u32, msg: Msg) -> Result<Vec<String>, Failure> {
        match msg {
            Msg::Set(name, ms) => ctx.set_timer(name, Duration::from_millis(ms)),
            Msg::Cancel(name) => {
                ctx.cancel_timer(&name);
            }
            Msg::Timers => {}
        }
        Ok(ctx.timers().into_iter().map(|t| t.name).collect())
    }

    async fn on_timer(&self, ctx: &Ctx<Self>, ticks: &mut u32, name: &str) -> Result<(), Failure> {
        self.log
            .lock()
            .unwrap()
            .push(format!("{}:{name}", ctx.node()));
        if name == "tick" {
            *ticks += 1;
            if *ticks < 3 {
                ctx.set_timer("tick", Duration::from_millis(30));
            }
        }
        if name == "fail" {
            return Err("a timer that fails".into());
        }
        Ok(())
    }
}

fn id(s: &str) -> AgentId {
    s.parse().unwrap()
}

fn host(node: &str, log: &Log) -> Arc<Host> {
    Host::new(
        node,
        [tether_actors::kind::erase(Reminder { log: log.clone() })],
    )
}

async fn start(h: &Host, who: &str, epoch: u64, args: &str) {
    start_as(h, who, epoch, args, Durability::None).await;
}

async fn start_as(h: &Host, who: &str, epoch: u64, args: &str, durability: Durability) {
    h.activate(
        id(who),
        epoch,
        Arc::new(SpawnRecord {
            encoding: Encoding::Json,
            args: Bytes::from(args.to_owned()),
            placement: Placement::default(),
            durability,
        }),
        TraceContext::new_root(),
        RunOptions::default(),
        || {},
    )
    .await
    .expect("activates");
}

async fn ask(h: &Host, who: &str, seq: u64, msg: Msg) -> Vec<String> {
    let (tx, rx) = oneshot::channel();
    let d = Delivery {
        target: id(who),
        epoch: 0,
        sender: "test".into(),
        seq,
        trace: TraceContext::new_root(),
        contract: None,
        in_process: false,
    };
    h.deliver(d, Body::typed(msg), Some(tx.into())).unwrap();
    rx.await.unwrap().unwrap().decode().unwrap()
}

/// Waits until `log` holds `n` entries (at most 5 s).
async fn until(log: &Log, n: usize) -> Vec<String> {
    let t0 = Instant::now();
    while log.lock().unwrap().len() < n && t0.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    log.lock().unwrap().clone()
}

#[tokio::test]
async fn a_timer_set_in_init_fires_without_any_message() {
    let log = Log::default();
    let h = host("n1", &log);
    let t0 = Instant::now();
    start(&h, "reminder/a", 1, r#"["boot", 80]"#).await;
    assert_eq!(until(&log, 1).await, vec!["n1:boot"]);
    assert!(
        t0.elapsed() >= Duration::from_millis(80),
        "not before its deadline"
    );
}

#[tokio::test]
async fn a_timer_set_again_in_on_timer_repeats_and_a_cancelled_one_never_fires() {
    let log = Log::default();
    let h = host("n1", &log);
    start(&h, "reminder/b", 1, "null").await;
    let set = ask(&h, "reminder/b", 1, Msg::Set("tick".into(), 30)).await;
    assert_eq!(set, vec!["tick"]);
    ask(&h, "reminder/b", 2, Msg::Set("never".into(), 60)).await;
    let left = ask(&h, "reminder/b", 3, Msg::Cancel("never".into())).await;
    assert_eq!(left, vec!["tick"]);
    // a timer due after the cancelled one: once it fired, the cancelled one would have
    ask(&h, "reminder/b", 4, Msg::Set("after".into(), 90)).await;
    let mut fired = until(&log, 4).await;
    fired.sort();
    assert_eq!(fired, ["n1:after", "n1:tick", "n1:tick", "n1:tick"]);
    assert!(ask(&h, "reminder/b", 5, Msg::Timers).await.is_empty());
}

#[tokio::test]
async fn a_failing_timer_fails_the_agent() {
    let log = Log::default();
    let h = host("n1", &log);
    start(&h, "reminder/f", 1, r#"["fail", 10]"#).await;
    until(&log, 1).await;
    let t0 = Instant::now();
    while h.failure_of(&id("reminder/f")).is_none() && t0.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let failure = h.failure_of(&id("reminder/f")).expect("the agent failed");
    assert!(failure.contains("a timer that fails"), "{failure}");
}

#[tokio::test]
async fn a_timer_moves_with_the_agent_and_fires_once_at_the_target() {
    let log = Log::default();
    let (a, b) = (host("n1", &log), host("n2", &log));
    start(&a, "reminder/m", 1, "null").await;
    ask(&a, "reminder/m", 1, Msg::Set("due".into(), 300)).await;
    let frozen = a
        .freeze(&id("reminder/m"), Duration::from_secs(1))
        .await
        .expect("freezes");
    let timers = &frozen.checkpoint.timers;
    assert_eq!(timers.len(), 1);
    assert_eq!(timers[0].name, "due");

    // the target installs it, held until the source hands over: it must not fire meanwhile
    b.expect_install(&id("reminder/m"), 2, "n1");
    b.activate_from(
        id("reminder/m"),
        2,
        frozen.record.clone(),
        TraceContext::new_root(),
        RunOptions::default(),
        Some(Arc::new(frozen.checkpoint.clone())),
        || {},
    )
    .await
    .expect("installs");
    let due = timers[0].deadline_unix_ms + 50;
    while tether_actors::timers::now_unix_ms() < due {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        log.lock().unwrap().is_empty(),
        "an installed agent waits past its deadline"
    );
    a.moved(&id("reminder/m"), "n2", 2, frozen.calls);
    b.drained(&id("reminder/m"), 2);
    // its deadline has passed: it fires at once, at the target only
    assert_eq!(until(&log, 1).await, vec!["n2:due"]);
    // and once: a later timer fires after it, alone
    ask(&b, "reminder/m", 2, Msg::Set("after".into(), 20)).await;
    assert_eq!(until(&log, 2).await, vec!["n2:due", "n2:after"]);
}

/// Keeps the newest checkpoint of each agent, durable at once.
#[derive(Default)]
struct Store(Mutex<Vec<Checkpoint>>);

impl CheckpointSink for Store {
    fn submit(&self, cp: Checkpoint, _: Durability, _: bool, release: Release) {
        self.0.lock().unwrap().push(cp);
        release(Ok(()));
    }

    fn latest(&self, id: &AgentId) -> Option<Arc<Checkpoint>> {
        let all = self.0.lock().unwrap();
        let newest = all.iter().filter(|c| &c.id == id).max_by_key(|c| c.version);
        newest.cloned().map(Arc::new)
    }

    fn info(&self, _: &AgentId) -> Option<CheckpointInfo> {
        None
    }
}

#[tokio::test]
async fn a_durable_agents_timer_is_in_its_checkpoint_and_fires_after_a_failover() {
    let log = Log::default();
    let store = Arc::new(Store::default());
    let (a, b) = (host("n1", &log), host("n2", &log));
    assert!(a.set_checkpoints(store.clone()) && b.set_checkpoints(store.clone()));
    start_as(&a, "reminder/d", 1, "null", Durability::Acked).await;
    // acked: the reply leaves once a checkpoint covering the timer is durable
    ask(&a, "reminder/d", 1, Msg::Set("later".into(), 250)).await;
    let cp = store.latest(&id("reminder/d")).expect("checkpointed");
    assert_eq!(cp.timers.len(), 1);
    assert_eq!(cp.timers[0].name, "later");
    // the host is lost before the deadline; a newer activation starts from the checkpoint
    a.stop(&id("reminder/d"), false).await;
    start_as(&b, "reminder/d", 2, "null", Durability::Acked).await;
    assert_eq!(until(&log, 1).await, vec!["n2:later"]);
}
