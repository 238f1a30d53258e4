//! Agent timers: named, one-shot, kept as absolute deadlines with the agent's state.
//!
//! ```text
//! handler / init / on_timer ── ctx.set_timer(name, delay) ──▶ table: name ─▶ deadline (unix ms)
//!                                ctx.cancel_timer(name)          (setting a name again replaces it)
//! actor, between messages ── earliest deadline passed ──▶ removed from the table, then
//!                                                          Agent::on_timer(name)
//! checkpoint / move freeze ── the table, as deadlines ──▶ restored with the state: a timer
//!                                                          fires where the agent runs next, at
//!                                                          the same wall-clock time (at once if
//!                                                          that has passed)
//! ```
//!
//! A timer is part of the agent's state, as Orleans' reminders are and unlike its timers: it
//! survives a move always, and a restart or failover as far as the agent's durability keeps
//! state (a `none` agent starts again from `init`, without its timers). A timer that fired is
//! gone from the table before `on_timer` runs; if the activation fails before a checkpoint
//! covers that, the next one fires it again (at least once, as a message is handled).
//!
//! The table lives in the agent's context ([`crate::Ctx`]), boxed: an agent that never sets a
//! timer pays a lock and a null pointer.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::durable::Timer;

/// The longest timer name: names travel in every checkpoint of the agent.
pub const MAX_NAME: usize = 256;

/// A boxed table: 8 bytes in every agent's context rather than a map's 24, since most agents
/// never set a timer.
#[allow(clippy::box_collection)]
type Table = Option<Box<BTreeMap<String, u64>>>;

/// The timers of one activation (see the module doc).
#[derive(Debug, Default)]
pub(crate) struct Timers(Mutex<Table>);

impl Timers {
    /// A table holding `timers` (from a checkpoint).
    pub(crate) fn from_list(timers: &[Timer]) -> Self {
        let t = Self::default();
        for timer in timers {
            t.set(timer.name.clone(), timer.deadline_unix_ms);
        }
        t
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets (or replaces) timer `name`.
    pub(crate) fn set(&self, name: String, deadline_unix_ms: u64) {
        self.lock()
            .get_or_insert_with(Box::default)
            .insert(name, deadline_unix_ms);
    }

    /// Cancels timer `name`; whether it was set.
    pub(crate) fn cancel(&self, name: &str) -> bool {
        let mut t = self.lock();
        let was = t.as_mut().is_some_and(|m| m.remove(name).is_some());
        if t.as_ref().is_some_and(|m| m.is_empty()) {
            *t = None;
        }
        was
    }

    /// Every timer set, by name.
    pub(crate) fn list(&self) -> Vec<Timer> {
        self.lock().as_ref().map_or_else(Vec::new, |m| {
            m.iter()
                .map(|(name, &at)| Timer {
                    name: name.clone(),
                    deadline_unix_ms: at,
                })
                .collect()
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.lock().is_none()
    }

    /// The earliest deadline, if any timer is set.
    pub(crate) fn next(&self) -> Option<u64> {
        self.lock().as_ref().and_then(|m| m.values().min().copied())
    }

    /// Removes and returns the earliest timer due at `now_unix_ms` (by name among equal
    /// deadlines), if one is.
    pub(crate) fn pop_due(&self, now_unix_ms: u64) -> Option<String> {
        let mut t = self.lock();
        let m = t.as_mut()?;
        let name = m
            .iter()
            .filter(|(_, &at)| at <= now_unix_ms)
            .min_by_key(|(n, &at)| (at, *n))
            .map(|(n, _)| n.clone())?;
        m.remove(&name);
        if m.is_empty() {
            *t = None;
        }
        Some(name)
    }
}

/// Milliseconds since the Unix epoch, now (0 if the clock is before it).
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The tokio instant of wall-clock deadline `at_unix_ms` (now, if it has passed).
pub(crate) fn instant_of(at_unix_ms: u64) -> tokio::time::Instant {
    let wait = at_unix_ms.saturating_sub(now_unix_ms());
    tokio::time::Instant::now() + Duration::from_millis(wait)
}

/// Checks a timer name: not empty, at most [`MAX_NAME`] bytes.
///
/// # Panics
/// On a bad name: it is a programming error in the agent, as a bad `Duration` is.
pub(crate) fn check_name(name: &str) {
    assert!(
        !name.is_empty() && name.len() <= MAX_NAME,
        "a timer name must have 1 to {MAX_NAME} bytes, not {}",
        name.len()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_timers_leave_the_table_earliest_first_and_a_name_set_again_replaces_it() {
        let t = Timers::default();
        assert!(t.is_empty() && t.next().is_none());
        t.set("b".into(), 20);
        t.set("a".into(), 20);
        t.set("late".into(), 99);
        t.set("first".into(), 10);
        t.set("first".into(), 5);
        assert_eq!(t.next(), Some(5));
        let due: Vec<String> = std::iter::from_fn(|| t.pop_due(20)).collect();
        assert_eq!(due, vec!["first", "a", "b"]);
        assert_eq!(t.list().len(), 1);
        assert!(t.pop_due(98).is_none());
        assert!(t.cancel("late"));
        assert!(!t.cancel("late"));
        assert!(t.is_empty());
    }

    #[test]
    fn a_table_restored_from_its_list_is_the_same() {
        let t = Timers::default();
        t.set("x".into(), 7);
        t.set("y".into(), 3);
        let back = Timers::from_list(&t.list());
        assert_eq!(back.list(), t.list());
        assert_eq!(back.next(), Some(3));
    }
}
