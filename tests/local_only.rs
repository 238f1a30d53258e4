//! Local-only data stays on its device, whoever sends it and from whichever task.
//!
//! A local-only agent (a diary on a phone) tries to pass a secret to an agent on a remote
//! node in every way a handler can: through its context, from a task it spawns with a ref its
//! context made (the ref carries the agent's origin into the task), and from a spawned task with
//! a ref made by the node itself, which knows nothing of the diary but sends a type marked
//! `LocalOnly` (the codec refuses to encode it). A tap on every frame this process encodes
//! counts the secret's bytes: none may leave.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use support::Cluster;
use tether::actors::builtin::Echo;
use tether::actors::{Agent, AgentError, AgentId, Ctx, Failure, LocalOnly, Placement};
use tether::{Kinds, Node, Role};

const SECRET: &str = "SECRET-DIARY-ENTRY";

/// How the diary tries to pass the secret on.
#[derive(Debug, Serialize, Deserialize)]
enum Pass {
    /// `ctx.tell` from the handler.
    Tell(String),
    /// A task spawned by the handler, with a ref the context made.
    TaskWithCtxRef(String),
    /// A task spawned by the handler, with a ref the node made (no origin), sending a marked
    /// type.
    TaskWithNodeRef(String),
}

/// What the secret looks like to a sender that does not know it is one.
#[derive(Debug, Serialize, Deserialize)]
struct Note {
    text: LocalOnly<String>,
}

/// A kind that addresses `echo` agents with notes (the node's ref is typed with it).
struct NoteEcho;

impl Agent for NoteEcho {
    const KIND: &'static str = "echo";
    type Args = serde_json::Value;
    type Msg = Note;
    type Reply = serde_json::Value;
    type State = ();

    async fn init(&self, _ctx: &Ctx<Self>, _args: Self::Args) -> Result<(), Failure> {
        Ok(())
    }

    async fn handle(&self, _: &Ctx<Self>, _: &mut (), _: Note) -> Result<Self::Reply, Failure> {
        Ok(serde_json::Value::Null)
    }
}

/// A local-only agent; the node it runs on is handed to it when the node has started.
struct Diary {
    node: Arc<OnceLock<Node>>,
}

impl Agent for Diary {
    const KIND: &'static str = "diary";
    type Args = ();
    type Msg = Pass;
    /// What became of the attempt: `sent`, or the error.
    type Reply = String;
    type State = ();

    fn placement(&self, _args: &()) -> Placement {
        Placement::local_only()
    }

    async fn init(&self, _ctx: &Ctx<Self>, _args: ()) -> Result<(), Failure> {
        Ok(())
    }

    async fn handle(&self, ctx: &Ctx<Self>, _: &mut (), pass: Pass) -> Result<String, Failure> {
        let secret = serde_json::json!(SECRET);
        let outcome = match pass {
            Pass::Tell(to) => ctx.tell::<Echo>(&to.parse()?, secret).map_err(|e| e.error),
            Pass::TaskWithCtxRef(to) => {
                let r = ctx.agent_ref::<Echo>(to.parse()?)?;
                tokio::spawn(async move { r.tell(secret).map_err(|e| e.error) }).await?
            }
            Pass::TaskWithNodeRef(to) => {
                let node = self.node.get().expect("the node is set").clone();
                let id: AgentId = to.parse()?;
                tokio::spawn(async move {
                    let note = Note {
                        text: LocalOnly(SECRET.into()),
                    };
                    node.agent_ref::<NoteEcho>(id)
                        .tell(note)
                        .map_err(|e| e.error)
                })
                .await?
            }
        };
        Ok(match outcome {
            Ok(()) => "sent".into(),
            Err(e) => format!("refused: {e}"),
        })
    }
}

fn count(hay: &[u8], needle: &[u8]) -> u64 {
    hay.windows(needle.len()).filter(|w| *w == needle).count() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_only_data_never_leaves_the_device() {
    let leaked = Arc::new(AtomicU64::new(0));
    let frames = Arc::new(AtomicU64::new(0));
    let tapped = {
        let (leaked, frames) = (leaked.clone(), frames.clone());
        tether::cluster::net::wire::tap_frames(move |f| {
            frames.fetch_add(1, Ordering::Relaxed);
            leaked.fetch_add(count(f, SECRET.as_bytes()), Ordering::Relaxed);
        })
    };
    assert!(tapped, "the only tap of this process");

    let c = Cluster::up("local-only", 1, 0);
    let cell = Arc::new(OnceLock::new());
    let kinds = Kinds::builtin().register_agent(Diary { node: cell.clone() });
    let node = Node::builder("phone")
        .role(Role::Local)
        .state_dir(&c.dir)
        .seed(c.record("r1").0.parse().unwrap())
        .kinds(kinds)
        .start()
        .await
        .unwrap();
    node.wait_peers_up(1, Duration::from_secs(10))
        .await
        .unwrap();
    let _ = cell.set(node.clone());
    node.spawn::<Echo>("far", serde_json::Value::Null)
        .on("r1")
        .await
        .unwrap();
    node.spawn::<Echo>("near", serde_json::Value::Null)
        .await
        .unwrap();
    let diary = node.spawn::<Diary>("d", ()).await.unwrap();
    let t = Duration::from_secs(5);
    let frames_before = frames.load(Ordering::Relaxed);

    for pass in [
        Pass::Tell("echo/far".into()),
        Pass::TaskWithCtxRef("echo/far".into()),
        Pass::TaskWithNodeRef("echo/far".into()),
    ] {
        let what = format!("{pass:?}");
        let r = diary.ask(pass, t).await.unwrap();
        assert!(
            r.starts_with("refused: ") && r.contains("local-only"),
            "{what}: {r}"
        );
    }
    // on its own node, the diary talks freely
    let near = diary.ask(Pass::TaskWithCtxRef("echo/near".into()), t).await;
    assert_eq!(near.unwrap(), "sent");
    // the tap does see what crosses: a plain ask to the far echo is encoded in frames
    let far = node.agent_ref::<Echo>("echo/far".parse().unwrap());
    let pong = far.ask(serde_json::json!("not a secret"), t).await.unwrap();
    assert_eq!(pong, serde_json::json!("not a secret"));
    assert!(
        frames.load(Ordering::Relaxed) > frames_before,
        "frames were tapped"
    );
    assert_eq!(
        leaked.load(Ordering::Relaxed),
        0,
        "secret bytes on the wire"
    );

    // and the diary cannot be placed on a remote node at all
    let e = node.spawn::<Diary>("far", ()).on("r1").await.unwrap_err();
    assert!(matches!(e, AgentError::LocalOnly { .. }), "{e}");
    node.shutdown().await;
}
