//! The `ballast` kind of the migration rows: its state carries a given number of bytes, and
//! the agent measures its own pauses across moves (the state carries the time and the node of
//! its last message; both nodes are on this machine, one clock).

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tether::{Agent, Ctx, Failure};

/// An agent whose state carries `Args` bytes of ballast, and what it takes to measure its
/// own pauses across moves.
#[derive(Default)]
pub(crate) struct Ballast;

/// [`Ballast`]'s state.
#[derive(Serialize, Deserialize)]
pub(crate) struct BallastState {
    count: u64,
    ballast: Bytes,
    last_unix_ns: u64,
    last_node: String,
    pauses_ns: Vec<u64>,
}

/// [`Ballast`]'s messages.
#[derive(Serialize, Deserialize)]
pub(crate) enum BallastMsg {
    /// Count one.
    Inc,
    /// The count and the pauses so far (nanoseconds).
    Get,
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Agent for Ballast {
    const KIND: &'static str = "ballast";
    type Args = usize;
    type Msg = BallastMsg;
    type Reply = (u64, Vec<u64>);
    type State = BallastState;

    async fn init(&self, _: &Ctx<Self>, bytes: usize) -> Result<BallastState, Failure> {
        Ok(BallastState {
            count: 0,
            ballast: Bytes::from(vec![7u8; bytes]),
            last_unix_ns: 0,
            last_node: String::new(),
            pauses_ns: Vec::new(),
        })
    }

    async fn handle(
        &self,
        ctx: &Ctx<Self>,
        s: &mut BallastState,
        msg: BallastMsg,
    ) -> Result<(u64, Vec<u64>), Failure> {
        let now = unix_ns();
        if !s.last_node.is_empty() && s.last_node != ctx.node() {
            s.pauses_ns.push(now.saturating_sub(s.last_unix_ns));
        }
        if s.last_node != ctx.node() {
            s.last_node = ctx.node().to_owned();
        }
        s.last_unix_ns = now;
        match msg {
            BallastMsg::Inc => {
                s.count += 1;
                Ok((s.count, Vec::new()))
            }
            BallastMsg::Get => Ok((s.count, s.pauses_ns.clone())),
        }
    }
}
