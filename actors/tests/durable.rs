//! Durable agents on one host, with a checkpointer in memory: when checkpoints are taken,
//! `acked` replies waiting for theirs, and an activation starting from the newest one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tether_actors::builtin::{self, CounterMsg};
use tether_actors::durable::{CheckpointInfo, CheckpointSink, Release, EVERY, EVERY_MSGS};
use tether_actors::host::RunOptions;
use tether_actors::{
    AgentError, AgentId, Body, Checkpoint, Delivery, Durability, Encoding, Host, Placement,
    SpawnRecord, TraceContext,
};
use tokio::sync::oneshot;

/// Keeps every checkpoint; releases at once, or holds the releases until told.
#[derive(Default)]
struct Sink {
    taken: Mutex<Vec<(Checkpoint, Durability, bool)>>,
    hold: Mutex<Option<Vec<Release>>>,
}

impl Sink {
    fn holding() -> Arc<Self> {
        let s = Self::default();
        *s.hold.lock().unwrap() = Some(Vec::new());
        Arc::new(s)
    }

    fn release_all(&self, r: Result<(), AgentError>) {
        let held = self.hold.lock().unwrap().replace(Vec::new()).unwrap();
        for release in held {
            release(r.clone());
        }
    }

    fn seqs(&self) -> Vec<u64> {
        let taken = self.taken.lock().unwrap();
        taken.iter().map(|(cp, ..)| cp.version.seq).collect()
    }
}

impl CheckpointSink for Sink {
    fn submit(&self, cp: Checkpoint, mode: Durability, local_only: bool, release: Release) {
        self.taken.lock().unwrap().push((cp, mode, local_only));
        match self.hold.lock().unwrap().as_mut() {
            Some(held) => held.push(release),
            None => release(Ok(())),
        }
    }

    fn latest(&self, id: &AgentId) -> Option<Arc<Checkpoint>> {
        let taken = self.taken.lock().unwrap();
        taken
            .iter()
            .filter(|(cp, ..)| &cp.id == id)
            .map(|(cp, ..)| cp)
            .max_by_key(|cp| cp.version)
            .cloned()
            .map(Arc::new)
    }

    fn info(&self, id: &AgentId) -> Option<CheckpointInfo> {
        self.latest(id).map(|cp| CheckpointInfo {
            epoch: cp.version.epoch,
            seq: cp.version.seq,
            age_ms: 0,
            size: cp.size(),
            stored: true,
            replica: None,
        })
    }
}

fn host(sink: Arc<Sink>) -> Arc<Host> {
    let h = Host::new("n1", builtin::basic());
    assert!(h.set_checkpoints(sink));
    h
}

fn id(s: &str) -> AgentId {
    s.parse().unwrap()
}

async fn start(h: &Host, who: &str, epoch: u64, durability: Durability) {
    h.activate(
        id(who),
        epoch,
        Arc::new(SpawnRecord {
            encoding: Encoding::Json,
            args: Bytes::from_static(b"null"),
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

fn d(target: &str, sender: &str, seq: u64) -> Delivery {
    Delivery {
        target: id(target),
        epoch: 0,
        sender: sender.into(),
        seq,
        trace: TraceContext::new_root(),
        contract: None,
        in_process: false,
    }
}

fn ask(h: &Host, dl: Delivery, msg: CounterMsg) -> oneshot::Receiver<Result<Body, AgentError>> {
    let (tx, rx) = oneshot::channel();
    h.deliver(dl, Body::typed(msg), Some(tx.into()))
        .expect("delivered");
    rx
}

async fn value(rx: oneshot::Receiver<Result<Body, AgentError>>) -> i64 {
    rx.await.unwrap().unwrap().decode().unwrap()
}

#[tokio::test(start_paused = true)]
async fn checkpoint_mode_saves_every_n_messages_and_after_an_idle_while() {
    let sink = Arc::new(Sink::default());
    let h = host(sink.clone());
    start(&h, "counter/c", 1, Durability::Checkpoint).await;
    let n = EVERY_MSGS + 10;
    for seq in 1..=n {
        h.deliver(
            d("counter/c", "peer", seq),
            Body::typed(CounterMsg::Inc),
            None,
        )
        .unwrap();
    }
    assert_eq!(
        value(ask(&h, d("counter/c", "peer", n + 1), CounterMsg::Get)).await,
        n as i64
    );
    let seqs = sink.seqs();
    assert_eq!(
        seqs.len(),
        1,
        "one checkpoint once {EVERY_MSGS} were handled: {seqs:?}"
    );
    assert!(seqs[0] >= EVERY_MSGS, "{seqs:?}");
    // the rest is saved once the oldest unsaved change is EVERY old
    tokio::time::sleep(EVERY + Duration::from_millis(10)).await;
    tokio::task::yield_now().await;
    let seqs = sink.seqs();
    assert_eq!(*seqs.last().unwrap(), n + 1, "{seqs:?}");
    let cp = sink.latest(&id("counter/c")).unwrap();
    assert_eq!(tether_actors::decode::<i64>(&cp.state).unwrap(), n as i64);
    assert_eq!(cp.marks.len(), 1);
    assert_eq!((&*cp.marks[0].sender, cp.marks[0].seq), ("peer", n + 1));
    let info = h.info(&id("counter/c")).unwrap();
    assert_eq!(info.durability, Durability::Checkpoint);
    assert_eq!(info.checkpoint.unwrap().seq, n + 1);
}

#[tokio::test]
async fn an_acked_reply_waits_for_its_checkpoint() {
    let sink = Sink::holding();
    let h = host(sink.clone());
    start(&h, "counter/a", 1, Durability::Acked).await;
    let mut rx = ask(&h, d("counter/a", "peer", 1), CounterMsg::Inc);
    // handled and checkpointed, but not released
    for _ in 0..50 {
        if !sink.seqs().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(sink.seqs(), [1]);
    assert!(
        rx.try_recv().is_err(),
        "no reply before the checkpoint is durable"
    );
    sink.release_all(Ok(()));
    assert_eq!(value(rx).await, 1);
    // a checkpoint that cannot be made durable fails the reply with why
    let rx = ask(&h, d("counter/a", "peer", 2), CounterMsg::Inc);
    for _ in 0..50 {
        if sink.seqs().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let why = AgentError::NodeUnreachable { node: "r2".into() };
    sink.release_all(Err(why.clone()));
    assert_eq!(rx.await.unwrap().unwrap_err(), why);
}

#[tokio::test]
async fn a_new_activation_starts_from_the_newest_checkpoint_and_refuses_what_it_covers() {
    let sink = Arc::new(Sink::default());
    let h = host(sink.clone());
    start(&h, "counter/m", 1, Durability::Acked).await;
    for seq in 1..=3 {
        assert_eq!(
            value(ask(&h, d("counter/m", "peer", seq), CounterMsg::Inc)).await,
            seq as i64
        );
    }
    h.stop(&id("counter/m"), false).await;
    // as a failover does: a newer epoch, on a host that knows the checkpoint
    let h2 = host(sink.clone());
    start(&h2, "counter/m", 2, Durability::Acked).await;
    // the resend of a message the checkpoint covers is a duplicate...
    let (tx, _rx) = oneshot::channel();
    let e = h2
        .deliver(
            d("counter/m", "peer", 3),
            Body::typed(CounterMsg::Inc),
            Some(tx.into()),
        )
        .unwrap_err();
    assert!(matches!(e, AgentError::Duplicate { seq: 3, .. }), "{e}");
    // ...and the next one is taken, on top of the saved state
    assert_eq!(
        value(ask(&h2, d("counter/m", "peer", 4), CounterMsg::Inc)).await,
        4
    );
    let cp = sink.latest(&id("counter/m")).unwrap();
    assert_eq!(
        (cp.version.epoch, cp.version.seq),
        (2, 1),
        "a new activation counts anew"
    );
}

#[tokio::test]
async fn an_agent_without_durability_is_never_checkpointed() {
    let sink = Arc::new(Sink::default());
    let h = host(sink.clone());
    start(&h, "counter/n", 1, Durability::None).await;
    for seq in 1..=EVERY_MSGS + 1 {
        h.deliver(
            d("counter/n", "peer", seq),
            Body::typed(CounterMsg::Inc),
            None,
        )
        .unwrap();
    }
    let got = value(ask(
        &h,
        d("counter/n", "peer", EVERY_MSGS + 2),
        CounterMsg::Get,
    ))
    .await;
    assert_eq!(got, EVERY_MSGS as i64 + 1);
    assert!(sink.seqs().is_empty());
    let info = h.info(&id("counter/n")).unwrap();
    assert_eq!((info.durability, info.checkpoint), (Durability::None, None));
}
