//! Built-in kinds, so the CLI is useful without writing code. Their JSON protocol is part of
//! the interface.
//!
//! Every node registers the basic kinds ([`Kinds::builtin`](crate::Kinds::builtin)):
//!
//! | kind      | message                  | reply                     |
//! |-----------|--------------------------|---------------------------|
//! | `echo`    | any JSON value           | the same value            |
//! | `counter` | `"inc"`, `{"add": N}`, `"get"` | the count after the message |
//!
//! The demonstration kinds exist to try failures and load by hand and in tests; a node registers
//! them only when asked ([`Kinds::with_demo`](crate::Kinds::with_demo), `tether node
//! --demo-kinds`, on by default under `tether up`), since any operator could spawn them:
//!
//! | kind      | message                  | reply                     |
//! |-----------|--------------------------|---------------------------|
//! | `flaky`   | `"ping"`, `"crash"`      | `"pong"`; `"crash"` fails the agent |
//! | `sleeper` | `{"sleep_ms": N}`        | `"done"` after N ms       |
//! | `sink`    | `{"data": [bytes]}`, `{"echo": [bytes]}`, `"count"` | `{"count": N}` (messages so far); `echo` replies `{"echo": [bytes]}` |
//! | `ledger`  | `{"append": N}`, `"len"` | entries applied by this activation |
//! | `audit`   | `{"note": any}`, `"report"` | `"report"`: per sender, `{count, last, gaps, repeats}` |
//!
//! `audit` records every message's sender and sequence number, in its state: across moves
//! and failovers it shows whether anything was lost, applied twice or reordered (see
//! [`audit`]).
//!
//! `counter` takes optional args `{"start": N}`; its state (the count) is what a migration
//! carries.
//!
//! `ledger` takes args `{"dir": PATH}` (default `journals`) and journals what it does, for
//! checking delivery and single activation from outside (the fault scenarios' checker reads the
//! journals): each activation appends to its own file `PATH/<key>.<node>.<epoch>.log` the lines
//! `start <unix_ms>`, `op <N> <began_ms> <unix_ms>` for each append (when its handler began,
//! and when the line was written, before the reply), and
//! `stop <unix_ms>` when it stops cleanly. `PATH` is taken under the node's state directory; an
//! absolute path must lie inside it and no path may climb out with `..`, so whoever may spawn a
//! ledger cannot make a node write elsewhere.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::agent::{Agent, Ctx, Failure};

pub mod audit;
pub use audit::{Audit, AuditLine, AuditMsg};

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

/// Counts what it receives and echoes on request: the payload agent of the bench (`tether-bench`).
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

/// Journals every entry appended to it (see the module doc), under one directory.
#[derive(Debug, Clone)]
pub struct Ledger {
    root: std::path::PathBuf,
}

impl Ledger {
    /// A ledger kind whose journals stay under `root` (a node's state directory).
    pub fn under(root: &std::path::Path) -> Self {
        Self {
            root: std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf()),
        }
    }

    /// Where journals asked for at `dir` go: under the root, never outside it.
    fn confine(&self, dir: &std::path::Path) -> Result<std::path::PathBuf, String> {
        use std::path::Component;
        if dir.components().any(|c| c == Component::ParentDir) {
            return Err(format!("ledger dir {}: '..' is not allowed", dir.display()));
        }
        let full = self.root.join(dir);
        if !full.starts_with(&self.root) {
            return Err(format!(
                "ledger dir {}: outside the node's state directory {}",
                dir.display(),
                self.root.display()
            ));
        }
        Ok(full)
    }
}

/// `ledger` spawn arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerArgs {
    /// Where the journals go (created if missing), under the node's state directory.
    #[serde(default = "LedgerArgs::default_dir")]
    pub dir: std::path::PathBuf,
}

impl LedgerArgs {
    fn default_dir() -> std::path::PathBuf {
        "journals".into()
    }
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
        let dir = self.confine(&args.dir)?;
        std::fs::create_dir_all(&dir).map_err(|e| format!("ledger dir {}: {e}", dir.display()))?;
        let path = dir.join(format!(
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
                // when the handler began (it passed the node's gate then) and, appended by
                // `journal_line`, when the entry was written: a node frozen between the two
                // writes it after it resumes
                let began = unix_ms();
                journal_line(&mut st.journal, &format!("op {n} {began}"))?;
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

/// The basic kinds every node registers: `echo` and `counter`.
pub fn basic() -> Vec<std::sync::Arc<dyn crate::kind::ErasedKind>> {
    vec![crate::kind::erase(Echo), crate::kind::erase(Counter)]
}

/// The demonstration kinds (see the module doc); ledgers journal under `state_dir`.
pub fn demo(state_dir: &std::path::Path) -> Vec<std::sync::Arc<dyn crate::kind::ErasedKind>> {
    vec![
        crate::kind::erase(Flaky),
        crate::kind::erase(Sleeper),
        crate::kind::erase(Sink),
        crate::kind::erase(Ledger::under(state_dir)),
        crate::kind::erase(Audit),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ledger_journals_only_under_its_root() {
        let l = Ledger::under(std::path::Path::new("/srv/tether"));
        let ok = |d: &str| l.confine(std::path::Path::new(d));
        assert_eq!(
            ok("journals").unwrap(),
            std::path::Path::new("/srv/tether/journals")
        );
        assert_eq!(
            ok("/srv/tether/j").unwrap(),
            std::path::Path::new("/srv/tether/j")
        );
        for bad in [
            "/etc",
            "/srv/tether-other/j",
            "../x",
            "journals/../../x",
            "/srv/tether/../x",
        ] {
            assert!(ok(bad).is_err(), "{bad}");
        }
    }
}
