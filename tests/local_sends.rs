//! Typed sends to agents of the same node, in process: a handle keeps a port into the
//! running instance (`tether::actors::LocalPort`), follows its agent through restarts, and
//! keeps each sender's order.

use std::path::PathBuf;
use std::time::Duration;

use tether::actors::builtin::{Counter, CounterMsg, Flaky, FlakyMsg};
use tether::actors::AgentRef;
use tether::supervision::{AgentPolicy, Backoff, Intensity};
use tether::{Kinds, Node};

const DEADLINE: Duration = Duration::from_secs(5);

/// A standalone remote node (its own directory owner) in a directory of its own.
async fn node(tag: &str) -> (Node, PathBuf) {
    let dir = std::env::temp_dir().join(format!("tether-local-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let node = Node::builder("n")
        .state_dir(&dir)
        .kinds(Kinds::builtin().with_demo(&dir))
        .root_intensity(Intensity {
            max_restarts: 1_000,
            within: Duration::from_secs(1),
        })
        .start()
        .await
        .unwrap();
    (node, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_follows_its_agent_through_restarts() {
    let (node, dir) = node("restarts").await;
    let policy = AgentPolicy {
        backoff: Backoff::none(),
        intensity: Intensity {
            max_restarts: 1_000,
            within: Duration::from_secs(1),
        },
        ..AgentPolicy::default()
    };
    let f: AgentRef<Flaky> = node
        .spawn::<Flaky>("f", serde_json::Value::Null)
        .policy(policy)
        .await
        .unwrap();
    for round in 0..50 {
        // the handle's port is into the running instance after this
        assert_eq!(f.ask(FlakyMsg::Ping, DEADLINE).await.unwrap(), "pong");
        // the crash's reply comes once the host has let the instance go: the port is stale,
        // and the ping after it must reach the restarted instance, not the dead mailbox
        assert!(f.ask(FlakyMsg::Crash, DEADLINE).await.is_err());
        let pong = f.ask(FlakyMsg::Ping, DEADLINE).await;
        assert_eq!(pong.as_deref(), Ok("pong"), "round {round}");
    }
    node.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tells_through_handles_all_arrive_and_an_ask_after_them_sees_them() {
    let (node, dir) = node("order").await;
    let c: AgentRef<Counter> = node.spawn("c", None).await.unwrap();
    // wake the agent first, so that the tells find it listening in its handler
    assert_eq!(c.ask(CounterMsg::Get, DEADLINE).await.unwrap(), 0);
    let mut senders = Vec::new();
    for _ in 0..4 {
        let c = c.clone();
        senders.push(tokio::spawn(async move {
            for i in 0..10_000u32 {
                c.tell(CounterMsg::Inc).unwrap();
                if i % 1_000 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            // one sender's ask comes after its tells: it counts at least all of them
            c.ask(CounterMsg::Get, DEADLINE).await.unwrap()
        }));
    }
    for s in senders {
        assert!(s.await.unwrap() >= 10_000);
    }
    assert_eq!(c.ask(CounterMsg::Get, DEADLINE).await.unwrap(), 40_000);
    node.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// The demonstration kinds exist only where asked for, and a ledger writes only under its
/// node's state directory whatever path it is given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_kinds_only_when_asked_and_ledgers_stay_in_the_state_dir() {
    use tether::actors::builtin::{Ledger, LedgerArgs};
    use tether::AgentError;
    let dir = std::env::temp_dir().join(format!("tether-local-plain-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let plain = Node::builder("p").state_dir(&dir).start().await.unwrap();
    let e = plain
        .spawn::<Flaky>("f", serde_json::Value::Null)
        .await
        .unwrap_err();
    assert!(matches!(e, AgentError::UnknownKind { .. }), "{e}");
    plain.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);

    let (node, dir) = node("ledger").await;
    let outside = std::env::temp_dir().join(format!("tether-ledger-out-{}", std::process::id()));
    for bad in [outside.clone(), dir.join("..").join("escape")] {
        let e = node
            .spawn::<Ledger>("l", LedgerArgs { dir: bad.clone() })
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains("ledger dir"),
            "{}: {e}",
            bad.display()
        );
    }
    assert!(
        !outside.exists(),
        "nothing written outside the state directory"
    );
    let l = node
        .spawn::<Ledger>("l", LedgerArgs { dir: "j".into() })
        .await
        .unwrap();
    assert_eq!(
        l.ask(tether::actors::builtin::LedgerMsg::Append(1), DEADLINE)
            .await
            .unwrap(),
        1
    );
    assert_eq!(std::fs::read_dir(dir.join("j")).unwrap().count(), 1);
    node.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
