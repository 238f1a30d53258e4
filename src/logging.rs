//! Logs as a tether node writes them: `RUST_LOG` filters (default: `info`, with ractor,
//! ractor_cluster and quinn at `warn`), lines go to stderr. The `tether` binary installs this;
//! a program that embeds nodes can call [`init`] for the same lines.
//!
//! A line written while an agent handles a message (or runs `init`) carries the agent and the
//! message's trace, as if in a span: `agent{id=counter/a trace_id=4bf9..}: target: message`.
//! They are read from the handler's task-locals when the line is written
//! ([`tether_actors::origin::log_context`]), not from a span made for every message: such a span
//! costs more than the message itself when the subscriber formats spans (see "Logs and spans"
//! in `actors/src/kind.rs`). With `tether_actors=debug` the real `agent` span is there too, and
//! the line does not repeat it; a line that names its own `trace_id` is not prefixed either.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;

/// The filter when `RUST_LOG` is not set.
pub const DEFAULT_FILTER: &str = "info,ractor=warn,ractor_cluster=warn,quinn=warn";

/// Installs the global subscriber, writing to stderr (see the module doc).
///
/// # Panics
/// If a global subscriber is installed already.
pub fn init() {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    install(std::io::stderr, ansi);
}

/// Installs the global subscriber, writing to `file` (the bench, whose own output is on
/// stderr, runs its nodes with the logging a node runs with).
///
/// # Panics
/// If a global subscriber is installed already.
pub fn init_to(file: std::fs::File) {
    install(std::sync::Mutex::new(file), false);
}

fn install<W>(writer: W, ansi: bool)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi)
        .event_format(WithAgent::default())
        .init();
}

/// The default line format, with the running agent and trace after the level.
pub(crate) struct WithAgent {
    /// Everything after the level: spans, target, message, fields.
    rest: format::Format<format::Full, ()>,
}

impl Default for WithAgent {
    fn default() -> Self {
        Self {
            rest: format::format().without_time().with_level(false),
        }
    }
}

/// The span that `tether_actors` makes per message at `debug`.
fn is_agent_span(meta: &tracing::Metadata<'_>) -> bool {
    meta.name() == "agent" && meta.target().starts_with("tether_actors")
}

impl<S, N> FormatEvent<S, N> for WithAgent
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let ansi = w.has_ansi_escapes();
        // as the default format: the time dimmed, the level colored and padded to five
        if ansi {
            w.write_str("\x1b[2m")?;
        }
        if SystemTime.format_time(&mut w).is_err() {
            w.write_str("<unknown time>")?;
        }
        if ansi {
            w.write_str("\x1b[0m")?;
        }
        let level = *event.metadata().level();
        let (text, color) = match level {
            Level::TRACE => ("TRACE", "35"),
            Level::DEBUG => ("DEBUG", "34"),
            Level::INFO => (" INFO", "32"),
            Level::WARN => (" WARN", "33"),
            Level::ERROR => ("ERROR", "31"),
        };
        if ansi {
            write!(w, " \x1b[{color}m{text}\x1b[0m ")?;
        } else {
            write!(w, " {text} ")?;
        }
        let names_trace = event.metadata().fields().field("trace_id").is_some();
        let in_span = ctx
            .event_scope()
            .is_some_and(|mut scope| scope.any(|s| is_agent_span(s.metadata())));
        if !names_trace && !in_span {
            if let Some((id, trace)) = tether_actors::origin::log_context() {
                let (bold, plain) = if ansi {
                    ("\x1b[1m", "\x1b[0m")
                } else {
                    ("", "")
                };
                write!(
                    w,
                    "{bold}agent{{{plain}id={id} trace_id={}{bold}}}{plain}: ",
                    trace.trace_id_hex()
                )?;
            }
        }
        self.rest.format_event(ctx, w, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use crate::{Kinds, Node};
    use tether_actors::agent::{Agent, Ctx, Failure};
    use tether_actors::AgentRef;

    /// An agent whose handler logs at `info`.
    #[derive(Default)]
    struct Chatty;

    impl Agent for Chatty {
        const KIND: &'static str = "chatty";
        type Args = ();
        type State = ();
        type Msg = String;
        type Reply = String;

        async fn init(&self, _: &Ctx<Self>, _: ()) -> Result<(), Failure> {
            Ok(())
        }

        async fn handle(&self, _: &Ctx<Self>, _: &mut (), msg: String) -> Result<String, Failure> {
            tracing::info!(%msg, "handling in chatty");
            Ok(msg)
        }
    }

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn capture(filter: &str) -> (Lines, tracing::subscriber::DefaultGuard) {
        let lines = Lines::default();
        let out = lines.clone();
        let sub = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(move || out.clone())
            .with_ansi(false)
            .event_format(WithAgent::default())
            .finish();
        (lines, tracing::subscriber::set_default(sub))
    }

    /// Asks a `chatty` agent once, on a node in this (single-threaded) runtime, and returns
    /// the handler's log line and the ask's trace id.
    async fn handler_line(filter: &str, tag: &str) -> (String, String) {
        let (lines, _guard) = capture(filter);
        let dir = std::env::temp_dir().join(format!("tether-log-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let node = Node::builder("n")
            .state_dir(&dir)
            .kinds(Kinds::builtin().register::<Chatty>())
            .start()
            .await
            .unwrap();
        let c: AgentRef<Chatty> = node.spawn("a", ()).await.unwrap();
        let root = tether_actors::envelope::TraceContext::new_root();
        let reply = root
            .scope(c.ask("hello".into(), Duration::from_secs(5)))
            .await
            .unwrap();
        assert_eq!(reply, "hello");
        node.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let line = text
            .lines()
            .find(|l| l.contains("handling in chatty"))
            .unwrap_or_else(|| panic!("the handler's line is logged:\n{text}"))
            .to_owned();
        (line, root.trace_id_hex().to_string())
    }

    #[tokio::test]
    async fn a_handlers_line_names_its_agent_and_trace_without_a_span() {
        let (line, trace) = handler_line("info", "info").await;
        assert!(
            line.contains(&format!("INFO agent{{id=chatty/a trace_id={trace}}}: ")),
            "{line}"
        );
        assert!(line.ends_with("handling in chatty msg=hello"), "{line}");
    }

    #[tokio::test]
    async fn with_the_debug_span_the_agent_is_named_once() {
        let (line, trace) = handler_line("info,tether_actors=debug", "debug").await;
        assert_eq!(line.matches("agent{").count(), 1, "{line}");
        assert!(line.contains(&format!("trace_id={trace}")), "{line}");
    }

    #[test]
    fn a_line_outside_any_agent_has_no_agent() {
        let (lines, _guard) = capture("info");
        tracing::info!("not in an agent");
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains(" INFO tether::logging::tests: not in an agent"),
            "{text}"
        );
        assert!(!text.contains("agent{"), "{text}");
    }
}
