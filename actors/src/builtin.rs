//! Built-in kinds, so the CLI is useful without writing code. Their JSON protocol is part of
//! the interface:
//!
//! | kind      | message                  | reply                     |
//! |-----------|--------------------------|---------------------------|
//! | `echo`    | any JSON value           | the same value            |
//! | `counter` | `"inc"`, `{"add": N}`, `"get"` | the count after the message |
//! | `flaky`   | `"ping"`, `"crash"`      | `"pong"`; `"crash"` fails the agent |
//! | `sleeper` | `{"sleep_ms": N}`        | `"done"` after N ms       |
//! | `sink`    | `{"data": [bytes]}`, `{"echo": [bytes]}`, `"count"` | `{"count": N}` (messages so far); `echo` replies `{"echo": [bytes]}` |
//!
//! | `ledger`  | `{"append": N}`, `"len"` | entries applied by this activation |
//!
//! `counter` takes optional args `{"start": N}`; its state (the count) is what a migration
//! carries.
//!
//! `ledger` takes args `{"dir": PATH}` and journals what it does, for checking delivery and
//! single activation from outside (the fault scenarios' checker reads the journals): each
//! activation appends to its own file `PATH/<key>.<node>.<epoch>.log` the lines
//! `start <unix_ms>`, `op <N> <unix_ms>` for each append (written before the reply), and
//! `stop <unix_ms>` when it stops cleanly.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::agent::{Agent, Ctx, Failure};

/// Replies with the value it got.
#[derive(Debug, Default, Clone, Copy)]
pub struct Echo;

impl Agent for Echo {
    const KIND: &'static str = "echo";
    type Args = Value;
    type Msg = Value;
    type Reply = Value;
    type State = ();

    async fn init(&self, _ctx: &Ctx<Self>, _args: Value) -> Result<(), Failure> {
        Ok(())
    }

    async fn handle(
        &self,
        _ctx: &Ctx<Self>,
        _state: &mut (),
        msg: Value,
    ) -> Result<Value, Failure> {
        Ok(msg)
    }
}

/// A number.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counter;

/// `counter` messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CounterMsg {
    /// Add 1.
    Inc,
    /// Add N.
    Add(i64),
    /// Read.
    Get,
}

/// `counter` spawn arguments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CounterArgs {
    /// Initial count.
    pub start: i64,
}

impl Agent for Counter {
    const KIND: &'static str = "counter";
    type Args = Option<CounterArgs>;
    type Msg = CounterMsg;
    type Reply = i64;
    type State = i64;

    async fn init(&self, _ctx: &Ctx<Self>, args: Option<CounterArgs>) -> Result<i64, Failure> {
        Ok(args.unwrap_or_default().start)
    }

    async fn handle(&self, _ctx: &Ctx<Self>, n: &mut i64, msg: CounterMsg) -> Result<i64, Failure> {
        match msg {
            CounterMsg::Inc => *n = n.checked_add(1).ok_or("counter overflow")?,
            CounterMsg::Add(k) => *n = n.checked_add(k).ok_or("counter overflow")?,
            CounterMsg::Get => {}
        }
        Ok(*n)
    }
}

/// Fails on request, for supervision demos.
#[derive(Debug, Default, Clone, Copy)]
pub struct Flaky;

/// `flaky` messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlakyMsg {
    /// Reply `"pong"`.
    Ping,
    /// Fail.
    Crash,
}

impl Agent for Flaky {
    const KIND: &'static str = "flaky";
    type Args = Value;
    type Msg = FlakyMsg;
    type Reply = String;
    type State = ();

    async fn init(&self, _ctx: &Ctx<Self>, _args: Value) -> Result<(), Failure> {
        Ok(())
    }

    async fn handle(
        &self,
        _ctx: &Ctx<Self>,
        _state: &mut (),
        msg: FlakyMsg,
    ) -> Result<String, Failure> {
        match msg {
            FlakyMsg::Ping => Ok("pong".into()),
            FlakyMsg::Crash => Err("crash requested".into()),
        }
    }
}

/// Replies after a delay, for timeout demos.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sleeper;

/// `sleeper` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SleepMsg {
    /// How long to sleep.
    pub sleep_ms: u64,
}

impl Agent for Sleeper {
    const KIND: &'static str = "sleeper";
    type Args = Value;
    type Msg = SleepMsg;
    type Reply = String;
    type State = ();

    async fn init(&self, _ctx: &Ctx<Self>, _args: Value) -> Result<(), Failure> {
        Ok(())
    }

    async fn handle(
        &self,
        _ctx: &Ctx<Self>,
        _state: &mut (),
        msg: SleepMsg,
    ) -> Result<String, Failure> {
        tokio::time::sleep(Duration::from_millis(msg.sleep_ms)).await;
        Ok("done".into())
    }
}

/// Counts what it receives and echoes on request: the payload agent of `tether bench`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sink;

/// `sink` messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkMsg {
    /// Count it (the payload is dropped).
    Data(bytes::Bytes),
    /// Reply with the payload.
    Echo(bytes::Bytes),
    /// Read the count.
    Count,
}

/// `sink` replies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkReply {
    /// Messages received so far (`data` and `echo`).
    Count(u64),
    /// The payload of an `echo`.
    Echo(bytes::Bytes),
}

impl Agent for Sink {
    const KIND: &'static str = "sink";
    type Args = Value;
    type Msg = SinkMsg;
    type Reply = SinkReply;
    type State = u64;

    async fn init(&self, _ctx: &Ctx<Self>, _args: Value) -> Result<u64, Failure> {
        Ok(0)
    }

    async fn handle(
        &self,
        _ctx: &Ctx<Self>,
        n: &mut u64,
        msg: SinkMsg,
    ) -> Result<SinkReply, Failure> {
        match msg {
            SinkMsg::Data(_) => {
                *n += 1;
                Ok(SinkReply::Count(*n))
            }
            SinkMsg::Echo(b) => {
                *n += 1;
                Ok(SinkReply::Echo(b))
            }
            SinkMsg::Count => Ok(SinkReply::Count(*n)),
        }
    }
}

/// Journals every entry appended to it (see the module doc).
#[derive(Debug, Default, Clone, Copy)]
pub struct Ledger;

/// `ledger` spawn arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerArgs {
    /// Where the journals go (created if missing).
    pub dir: std::path::PathBuf,
}

/// `ledger` messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LedgerMsg {
    /// Journal entry N.
    Append(u64),
    /// How many entries this activation journaled.
    Len,
}

/// A `ledger` activation: its journal and how many entries it holds.
#[derive(Debug)]
pub struct LedgerState {
    journal: std::fs::File,
    len: u64,
}

impl Serialize for LedgerState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.len.serialize(s)
    }
}

impl<'de> Deserialize<'de> for LedgerState {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom(
            "a ledger's journal is a file on its node and does not move",
        ))
    }
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

fn journal_line(f: &mut std::fs::File, line: &str) -> std::io::Result<()> {
    use std::io::Write;
    f.write_all(format!("{line} {}\n", unix_ms()).as_bytes())
}

impl Agent for Ledger {
    const KIND: &'static str = "ledger";
    type Args = LedgerArgs;
    type Msg = LedgerMsg;
    type Reply = u64;
    type State = LedgerState;

    async fn init(&self, ctx: &Ctx<Self>, args: LedgerArgs) -> Result<LedgerState, Failure> {
        std::fs::create_dir_all(&args.dir)
            .map_err(|e| format!("ledger dir {}: {e}", args.dir.display()))?;
        let path = args.dir.join(format!(
            "{}.{}.{}.log",
            ctx.id().key(),
            ctx.node(),
            ctx.epoch()
        ));
        let mut journal = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("ledger journal {}: {e}", path.display()))?;
        journal_line(&mut journal, "start")?;
        Ok(LedgerState { journal, len: 0 })
    }

    async fn handle(
        &self,
        _ctx: &Ctx<Self>,
        st: &mut LedgerState,
        msg: LedgerMsg,
    ) -> Result<u64, Failure> {
        match msg {
            LedgerMsg::Append(n) => {
                journal_line(&mut st.journal, &format!("op {n}"))?;
                st.len += 1;
            }
            LedgerMsg::Len => {}
        }
        Ok(st.len)
    }

    async fn on_stop(&self, _ctx: &Ctx<Self>, st: &mut LedgerState) {
        let _ = journal_line(&mut st.journal, "stop");
    }
}

/// Every built-in kind, erased, for a node's registry.
pub fn all() -> Vec<std::sync::Arc<dyn crate::kind::ErasedKind>> {
    vec![
        crate::kind::erase(Echo),
        crate::kind::erase(Counter),
        crate::kind::erase(Flaky),
        crate::kind::erase(Sleeper),
        crate::kind::erase(Sink),
        crate::kind::erase(Ledger),
    ]
}
