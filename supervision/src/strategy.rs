//! The strategy core: one supervisor's decisions, without I/O.
//!
//! Fed with `now` and child events, it returns directives; the adapter carries them out and
//! reports back. It never reads a clock, never sleeps, never spawns.
//!
//! ```text
//!            child exits
//!  Running ───────────────▶ restart needed? ── no ──▶ Remove (temporary; transient ended normally)
//!     ▲                           │ yes
//!     │                           ▼
//!     │               child over its own intensity? ── yes ──▶ GiveUp(child) (stays failed)
//!     │                           │ no
//!     │                           ▼
//!     │            supervisor over its intensity? ── yes ──▶ Stop all (last first), Escalate
//!     │                           │ no
//!     │                           ▼
//!     │     strategy: one-for-one  → Start(child, now + backoff)
//!     │               one-for-all  → Stop(others, last first), Start(all, in order)
//!     │               rest-for-one → Stop(later, last first), Start(child and later, in order)
//!     └───── started ◀── Start directives fire
//! ```
//!
//! Intensity counts restart decisions of this supervisor (one per failure, whatever the
//! strategy restarts), as OTP does. Exits of children the supervisor itself stopped are
//! expected and ignored. Once escalated, the core decides nothing more: the parent decides
//! whether this supervisor starts again (as a new core).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::policy::{Backoff, Intensity, RestartType, Strategy};

/// A child's identity within its supervisor.
pub type ChildId = u64;

/// How a child ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exit {
    /// It ended cleanly (a permanent child is restarted, as in OTP).
    Normal,
    /// It asked to stop for good: it is removed, whatever its restart type.
    Stopped,
    /// It failed (an error, a panic, a handler past its deadline, an escalation).
    Failed(String),
}

/// A child as the supervisor sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChildStatus {
    /// Running.
    Running,
    /// Stopped by the supervisor, to be started again (one-for-all, rest-for-one).
    Restarting,
    /// Waiting for its backoff delay before starting again.
    BackingOff,
    /// Ended and not restarted.
    Stopped,
    /// Given up on, or failed in a supervisor that escalated.
    Failed,
}

/// What one child is and how it is treated.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildSpec {
    /// Its id.
    pub id: ChildId,
    /// Restart type.
    pub restart: RestartType,
    /// Its own restart budget (None: only the supervisor's applies).
    pub intensity: Option<Intensity>,
    /// Delay before each restart.
    pub backoff: Backoff,
}

#[derive(Debug, Clone)]
struct Child {
    id: ChildId,
    restart: RestartType,
    limits: Limits,
    status: ChildStatus,
    restarts: u32,
    stopping: bool,
    /// Made at the first exit: a child that never ended (most of them) holds no history.
    history: Option<Box<History>>,
}

/// A child's budget and backoff as kept: nothing when they are the defaults (an agent with
/// the default policy, a group), a box otherwise.
#[derive(Debug, Clone)]
struct Limits(Option<Box<(Option<Intensity>, Backoff)>>);

impl Limits {
    fn new(intensity: Option<Intensity>, backoff: Backoff) -> Self {
        if intensity == Some(Intensity::default()) && backoff == Backoff::default() {
            Self(None)
        } else {
            Self(Some(Box::new((intensity, backoff))))
        }
    }

    fn intensity(&self) -> Option<Intensity> {
        self.0.as_ref().map_or(Some(Intensity::default()), |l| l.0)
    }

    fn backoff(&self) -> Backoff {
        self.0.as_ref().map_or_else(Backoff::default, |l| l.1)
    }
}

/// What a child's exits left behind.
#[derive(Debug, Clone, Default)]
struct History {
    /// Its restarts inside the intensity window.
    window: VecDeque<Instant>,
    /// Restarts since the last quiet period (drives the backoff).
    consecutive: u32,
    last_restart: Option<Instant>,
    last_failure: Option<(Instant, String)>,
}

/// What the adapter must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Directive {
    /// Stop this running child (its exit will be expected).
    Stop(ChildId),
    /// Start (again) this child at `at`.
    Start {
        /// The child.
        child: ChildId,
        /// When.
        at: Instant,
    },
    /// Forget this child: it ended and is not restarted.
    Remove(ChildId),
    /// This child exceeded its own budget: it stays failed.
    GiveUp {
        /// The child.
        child: ChildId,
        /// Why.
        reason: String,
    },
    /// This supervisor exceeded its budget: its children are being stopped, and its parent
    /// must treat it as a failed child.
    Escalate {
        /// Why.
        reason: String,
    },
}

/// A snapshot of one child's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildView {
    /// Status.
    pub status: ChildStatus,
    /// Restarts so far.
    pub restarts: u32,
    /// Last failure: when and why.
    pub last_failure: Option<(Instant, String)>,
}

/// One supervisor's decision state.
#[derive(Debug, Clone)]
pub struct Core {
    strategy: Strategy,
    intensity: Intensity,
    children: Vec<Child>,
    /// The children's ids ascend in `children` (see `pos`).
    sorted: bool,
    window: VecDeque<Instant>,
    escalated: Option<String>,
}

impl Core {
    /// A supervisor with no children.
    pub fn new(strategy: Strategy, intensity: Intensity) -> Self {
        Self {
            strategy,
            intensity,
            children: Vec::new(),
            sorted: true,
            window: VecDeque::new(),
            escalated: None,
        }
    }

    /// The strategy.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Why this supervisor escalated, if it did.
    pub fn escalated(&self) -> Option<&str> {
        self.escalated.as_deref()
    }

    /// Adds a running child, after the others (start order). Its id must be new to this
    /// supervisor (the adapter numbers children from a counter); checking would cost a scan
    /// per spawn.
    pub fn add_child(&mut self, spec: ChildSpec) {
        if self.children.last().is_some_and(|c| c.id >= spec.id) {
            self.sorted = false;
        }
        self.children.push(Child {
            id: spec.id,
            restart: spec.restart,
            limits: Limits::new(spec.intensity, spec.backoff),
            status: ChildStatus::Running,
            restarts: 0,
            stopping: false,
            history: None,
        });
    }

    /// Where child `id` is: children are kept in start order, which is the order of their
    /// ids when the adapter numbers them from a counter, so a binary search finds them; a
    /// supervisor given ids out of order falls back to a scan.
    fn pos(&self, id: ChildId) -> Option<usize> {
        if self.sorted {
            self.children.binary_search_by_key(&id, |c| c.id).ok()
        } else {
            self.children.iter().position(|c| c.id == id)
        }
    }

    /// Forgets a child (stopped on request, for good).
    pub fn remove_child(&mut self, id: ChildId) {
        if let Some(pos) = self.pos(id) {
            self.children.remove(pos);
        }
    }

    /// The children, in start order.
    pub fn children(&self) -> Vec<ChildId> {
        self.children.iter().map(|c| c.id).collect()
    }

    /// A child's counters.
    pub fn view(&self, id: ChildId) -> Option<ChildView> {
        self.pos(id).map(|p| &self.children[p]).map(|c| ChildView {
            status: c.status.clone(),
            restarts: c.restarts,
            last_failure: c.history.as_ref().and_then(|h| h.last_failure.clone()),
        })
    }

    /// The child started (again) and runs.
    pub fn started(&mut self, id: ChildId) {
        if let Some(p) = self.pos(id) {
            let c = &mut self.children[p];
            c.status = ChildStatus::Running;
            c.stopping = false;
        }
    }

    /// A child ended. `rand01` spreads backoff delays (uniform in [0, 1)).
    pub fn on_exit(
        &mut self,
        now: Instant,
        id: ChildId,
        exit: Exit,
        rand01: f64,
    ) -> Vec<Directive> {
        if self.escalated.is_some() {
            return Vec::new();
        }
        let Some(pos) = self.pos(id) else {
            return Vec::new();
        };
        let child = &mut self.children[pos];
        if child.stopping {
            // the supervisor stopped it on purpose (a sibling's restart); it starts again
            // with the others
            child.stopping = false;
            return Vec::new();
        }
        let failed = matches!(exit, Exit::Failed(_));
        let history = child.history.get_or_insert_with(Box::default);
        if let Exit::Failed(reason) = &exit {
            history.last_failure = Some((now, reason.clone()));
        }
        let restart = match child.restart {
            _ if exit == Exit::Stopped => false,
            RestartType::Permanent => true,
            RestartType::Transient => failed,
            RestartType::Temporary => false,
        };
        if !restart {
            child.status = ChildStatus::Stopped;
            self.children.remove(pos);
            return vec![Directive::Remove(id)];
        }

        if let Some(give_up) = self.child_over_budget(pos, now) {
            return give_up;
        }
        if let Some(escalate) = self.over_budget(id, &exit, now) {
            return escalate;
        }
        let at = self.count_restart(pos, now, rand01);
        self.restart_group(pos, at)
    }

    /// The child's own budget: past it the child is given up.
    fn child_over_budget(&mut self, pos: usize, now: Instant) -> Option<Vec<Directive>> {
        let child = &mut self.children[pos];
        let limit = child.limits.intensity()?;
        let history = child.history.get_or_insert_with(Box::default);
        prune(&mut history.window, now, limit.within);
        if (history.window.len() as u32) < limit.max_restarts {
            return None;
        }
        child.status = ChildStatus::Failed;
        let reason = format!(
            "gave up after {} restarts in {:?}",
            limit.max_restarts, limit.within
        );
        Some(vec![Directive::GiveUp {
            child: child.id,
            reason,
        }])
    }

    /// The supervisor's budget: past it every child stops and the supervisor escalates.
    fn over_budget(&mut self, id: ChildId, exit: &Exit, now: Instant) -> Option<Vec<Directive>> {
        prune(&mut self.window, now, self.intensity.within);
        if (self.window.len() as u32) < self.intensity.max_restarts {
            return None;
        }
        let last = match exit {
            Exit::Failed(r) => r.clone(),
            Exit::Normal | Exit::Stopped => "stopped".into(),
        };
        let reason = format!(
            "more than {} restarts in {:?} (last failure: {last})",
            self.intensity.max_restarts, self.intensity.within
        );
        self.escalated = Some(reason.clone());
        let mut out = Vec::new();
        for c in self.children.iter_mut().rev() {
            if c.id == id {
                c.status = ChildStatus::Failed;
            } else if c.status == ChildStatus::Running {
                c.status = ChildStatus::Stopped;
                out.push(Directive::Stop(c.id));
            } else {
                c.status = ChildStatus::Stopped;
            }
        }
        out.push(Directive::Escalate { reason });
        Some(out)
    }

    /// A restart of the child at `pos` is decided: it is counted in both budgets; returns
    /// when it starts (after its backoff).
    fn count_restart(&mut self, pos: usize, now: Instant, rand01: f64) -> Instant {
        self.window.push_back(now);
        let child = &mut self.children[pos];
        let history = child.history.get_or_insert_with(Box::default);
        if child.limits.intensity().is_some() {
            history.window.push_back(now);
        }
        let quiet = history
            .last_restart
            .is_none_or(|t| now.saturating_duration_since(t) >= child.limits.backoff().reset_after);
        history.consecutive = if quiet { 1 } else { history.consecutive + 1 };
        history.last_restart = Some(now);
        child.restarts += 1;
        child.status = ChildStatus::BackingOff;
        now + child.limits.backoff().delay(history.consecutive, rand01)
    }

    /// The directives of a restart of the child at `pos`, by the strategy: the siblings that
    /// restart with it are stopped, last started first, then all start at `at`, in start
    /// order (temporary siblings are removed instead).
    fn restart_group(&mut self, pos: usize, at: Instant) -> Vec<Directive> {
        let mut out = Vec::new();
        let to_restart: Vec<usize> = match self.strategy {
            Strategy::OneForOne => vec![pos],
            Strategy::OneForAll => (0..self.children.len()).collect(),
            Strategy::RestForOne => (pos..self.children.len()).collect(),
        };
        for &i in to_restart.iter().rev() {
            if i == pos {
                continue;
            }
            let c = &mut self.children[i];
            if c.status == ChildStatus::Running {
                c.stopping = true;
                c.status = ChildStatus::Restarting;
                out.push(Directive::Stop(c.id));
            }
        }
        let mut removed = Vec::new();
        for &i in &to_restart {
            let c = &mut self.children[i];
            if i != pos && c.restart == RestartType::Temporary {
                removed.push(c.id);
                continue;
            }
            if i != pos {
                c.status = ChildStatus::Restarting;
                // a sibling restarted by the strategy counts as restarted too
                c.restarts += 1;
            }
            out.push(Directive::Start { child: c.id, at });
        }
        for r in removed {
            self.children.retain(|c| c.id != r);
            out.push(Directive::Remove(r));
        }
        out
    }
}

fn prune(window: &mut VecDeque<Instant>, now: Instant, within: Duration) {
    while let Some(front) = window.front() {
        if now.saturating_duration_since(*front) >= within {
            window.pop_front();
        } else {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Strategy;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn spec(id: ChildId, restart: RestartType) -> ChildSpec {
        ChildSpec {
            id,
            restart,
            intensity: None,
            backoff: Backoff::none(),
        }
    }

    fn core(strategy: Strategy, n: usize) -> Core {
        let mut c = Core::new(strategy, Intensity::default());
        for i in 0..n as u64 {
            c.add_child(spec(i, RestartType::Permanent));
        }
        c
    }

    fn fail(why: &str) -> Exit {
        Exit::Failed(why.into())
    }

    #[test]
    fn one_for_one_restarts_only_the_failed_child() {
        let t0 = Instant::now();
        let mut c = core(Strategy::OneForOne, 3);
        assert_eq!(
            c.on_exit(t0, 1, fail("x"), 0.5),
            vec![Directive::Start { child: 1, at: t0 }]
        );
        assert_eq!(c.view(1).unwrap().restarts, 1);
        assert_eq!(c.view(1).unwrap().last_failure.unwrap().1, "x");
    }

    #[test]
    fn children_are_found_by_id_whether_ids_come_in_order_or_not() {
        let t0 = Instant::now();
        for ids in [vec![1u64, 2, 5, 9], vec![9, 2, 5, 1]] {
            let budget = Intensity {
                max_restarts: 10,
                within: ms(1000),
            };
            let mut c = Core::new(Strategy::OneForOne, budget);
            for &i in &ids {
                c.add_child(spec(i, RestartType::Permanent));
            }
            assert_eq!(c.children(), ids, "start order is kept");
            for &i in &ids {
                assert_eq!(
                    c.on_exit(t0, i, fail("x"), 0.5),
                    vec![Directive::Start { child: i, at: t0 }],
                    "{ids:?}: child {i}"
                );
                assert_eq!(c.view(i).unwrap().restarts, 1);
            }
            assert!(c.view(3).is_none());
            c.remove_child(5);
            assert!(c.view(5).is_none());
            assert_eq!(c.children().len(), 3);
        }
    }

    #[test]
    fn one_for_all_stops_the_others_last_first_then_starts_all_in_order() {
        let t0 = Instant::now();
        let mut c = core(Strategy::OneForAll, 4);
        let d = c.on_exit(t0, 1, fail("x"), 0.5);
        assert_eq!(
            d,
            vec![
                Directive::Stop(3),
                Directive::Stop(2),
                Directive::Stop(0),
                Directive::Start { child: 0, at: t0 },
                Directive::Start { child: 1, at: t0 },
                Directive::Start { child: 2, at: t0 },
                Directive::Start { child: 3, at: t0 },
            ]
        );
        // the exits of the stopped siblings are expected, not failures
        for s in [3, 2, 0] {
            assert!(c.on_exit(t0, s, fail("stopped"), 0.5).is_empty());
        }
        assert_eq!(
            c.view(0).unwrap().restarts,
            1,
            "siblings count their restart"
        );
    }

    #[test]
    fn temporary_and_transient_children() {
        let t0 = Instant::now();
        let mut c = Core::new(Strategy::OneForOne, Intensity::default());
        c.add_child(spec(1, RestartType::Temporary));
        c.add_child(spec(2, RestartType::Transient));
        assert_eq!(c.on_exit(t0, 1, fail("x"), 0.5), vec![Directive::Remove(1)]);
        assert_eq!(
            c.on_exit(t0, 2, Exit::Normal, 0.5),
            vec![Directive::Remove(2)]
        );
        c.add_child(spec(3, RestartType::Transient));
        assert_eq!(
            c.on_exit(t0, 3, fail("x"), 0.5),
            vec![Directive::Start { child: 3, at: t0 }]
        );
    }

    #[test]
    fn past_the_intensity_the_supervisor_stops_everything_and_escalates() {
        let t0 = Instant::now();
        let mut c = core(Strategy::OneForOne, 2);
        for i in 0..3 {
            assert!(matches!(
                c.on_exit(t0 + ms(i * 10), 0, fail("boom"), 0.5)[0],
                Directive::Start { .. }
            ));
            c.started(0);
        }
        let d = c.on_exit(t0 + ms(40), 0, fail("boom"), 0.5);
        assert_eq!(d[0], Directive::Stop(1));
        assert!(matches!(&d[1], Directive::Escalate { reason } if reason.contains("boom")));
        assert!(c.escalated().is_some());
        assert!(
            c.on_exit(t0 + ms(50), 1, fail("late"), 0.5).is_empty(),
            "an escalated core decides nothing"
        );
    }

    #[test]
    fn a_child_over_its_own_budget_is_given_up_without_escalating() {
        let t0 = Instant::now();
        let mut c = Core::new(
            Strategy::OneForOne,
            Intensity {
                max_restarts: 100,
                within: ms(1000),
            },
        );
        c.add_child(ChildSpec {
            intensity: Some(Intensity {
                max_restarts: 2,
                within: ms(1000),
            }),
            ..spec(7, RestartType::Permanent)
        });
        c.on_exit(t0, 7, fail("a"), 0.5);
        c.on_exit(t0 + ms(1), 7, fail("b"), 0.5);
        let d = c.on_exit(t0 + ms(2), 7, fail("c"), 0.5);
        assert!(
            matches!(&d[..], [Directive::GiveUp { child: 7, .. }]),
            "{d:?}"
        );
        assert_eq!(c.view(7).unwrap().status, ChildStatus::Failed);
        assert!(c.escalated().is_none());
    }

    #[test]
    fn backoff_grows_with_consecutive_failures_and_resets_after_quiet() {
        let t0 = Instant::now();
        let mut c = Core::new(
            Strategy::OneForOne,
            Intensity {
                max_restarts: 100,
                within: ms(10),
            },
        );
        let b = Backoff {
            min: ms(100),
            max: ms(1000),
            reset_after: ms(5000),
            jitter: 0.0,
        };
        c.add_child(ChildSpec {
            backoff: b,
            ..spec(1, RestartType::Permanent)
        });
        let at = |d: &[Directive]| match d[0] {
            Directive::Start { at, .. } => at,
            ref other => panic!("{other:?}"),
        };
        let d1 = at(&c.on_exit(t0, 1, fail("x"), 0.5));
        let d2 = at(&c.on_exit(t0 + ms(200), 1, fail("x"), 0.5));
        assert_eq!(d1 - t0, ms(100));
        assert_eq!(d2 - (t0 + ms(200)), ms(200));
        let later = t0 + ms(10_000);
        let d3 = at(&c.on_exit(later, 1, fail("x"), 0.5));
        assert_eq!(d3 - later, ms(100), "quiet period resets the delay");
    }

    /// A leaf supervisor under a parent under a root, each with its own budget: a crash loop
    /// in the leaf escalates to the parent, which restarts the leaf (a new core) until its own
    /// budget is spent, and so on up to the root.
    #[test]
    fn escalation_reaches_the_root() {
        let t0 = Instant::now();
        let budget = Intensity {
            max_restarts: 2,
            within: ms(10_000),
        };
        let mut root = Core::new(Strategy::OneForOne, budget);
        root.add_child(spec(1, RestartType::Permanent)); // the parent supervisor
        let mut parent = Core::new(Strategy::OneForOne, budget);
        parent.add_child(spec(1, RestartType::Permanent)); // the leaf supervisor
        let mut now = t0;
        let mut root_escalated = false;
        for _ in 0..100 {
            let mut leaf = Core::new(Strategy::OneForOne, budget);
            leaf.add_child(spec(1, RestartType::Permanent)); // the crashing agent
                                                             // crash until the leaf escalates
            loop {
                now += ms(1);
                let d = leaf.on_exit(now, 1, fail("crash"), 0.5);
                if d.iter().any(|x| matches!(x, Directive::Escalate { .. })) {
                    break;
                }
                leaf.started(1);
            }
            now += ms(1);
            let d = parent.on_exit(now, 1, fail("leaf escalated"), 0.5);
            if d.iter().any(|x| matches!(x, Directive::Escalate { .. })) {
                now += ms(1);
                let r = root.on_exit(now, 1, fail("parent escalated"), 0.5);
                if r.iter().any(|x| matches!(x, Directive::Escalate { .. })) {
                    root_escalated = true;
                    break;
                }
                parent = Core::new(Strategy::OneForOne, budget);
                parent.add_child(spec(1, RestartType::Permanent));
                root.started(1);
            } else {
                parent.started(1);
            }
        }
        assert!(
            root_escalated,
            "a crash loop that never ends reaches the root"
        );
        assert!(root.escalated().unwrap().contains("parent escalated"));
    }

    proptest! {
        /// Whatever the failure times, restarts decided in any window of T never exceed N,
        /// and nothing restarts after the supervisor escalated.
        #[test]
        fn never_more_than_n_restarts_in_any_window(
            gaps in proptest::collection::vec(0u64..3000, 1..80),
            n in 1u32..6,
            t in 100u64..5000,
            strategy in prop_oneof![Just(Strategy::OneForOne), Just(Strategy::OneForAll), Just(Strategy::RestForOne)],
        ) {
            let t0 = Instant::now();
            let mut c = Core::new(strategy, Intensity { max_restarts: n, within: ms(t) });
            for i in 0..3 {
                c.add_child(spec(i, RestartType::Permanent));
            }
            let mut now = t0;
            let mut restarts: Vec<Instant> = Vec::new();
            let mut escalated_at = None;
            for (k, g) in gaps.iter().enumerate() {
                now += ms(*g);
                let child = (k % 3) as u64;
                let d = c.on_exit(now, child, fail("x"), 0.5);
                if d.iter().any(|x| matches!(x, Directive::Start { child: s, .. } if *s == child)) {
                    prop_assert!(escalated_at.is_none(), "no restart after escalation");
                    restarts.push(now);
                }
                if d.iter().any(|x| matches!(x, Directive::Escalate { .. })) {
                    escalated_at = Some(now);
                }
                for id in c.children() {
                    c.started(id);
                }
            }
            for (i, start) in restarts.iter().enumerate() {
                let in_window = restarts[i..].iter().filter(|x| x.duration_since(*start) < ms(t)).count();
                prop_assert!(in_window as u32 <= n, "{in_window} restarts within {t} ms (limit {n})");
            }
        }

        /// rest-for-one restarts exactly the failed child and the later siblings: it stops the
        /// later ones last-first, then starts the failed one and the later ones in order.
        #[test]
        fn rest_for_one_restarts_exactly_the_later_siblings_in_order(k in 1usize..8, which in 0usize..8) {
            let which = which % k;
            let t0 = Instant::now();
            let mut c = core(Strategy::RestForOne, k);
            let d = c.on_exit(t0, which as u64, fail("x"), 0.5);
            let stops: Vec<u64> = d.iter().filter_map(|x| match x { Directive::Stop(s) => Some(*s), _ => None }).collect();
            let starts: Vec<u64> = d.iter().filter_map(|x| match x { Directive::Start { child, .. } => Some(*child), _ => None }).collect();
            let later: Vec<u64> = ((which + 1)..k).map(|i| i as u64).collect();
            let mut later_rev = later.clone();
            later_rev.reverse();
            prop_assert_eq!(stops, later_rev);
            let mut expected = vec![which as u64];
            expected.extend(later);
            prop_assert_eq!(starts, expected);
            // every stop comes before every start
            let last_stop = d.iter().rposition(|x| matches!(x, Directive::Stop(_)));
            let first_start = d.iter().position(|x| matches!(x, Directive::Start { .. }));
            if let (Some(s), Some(f)) = (last_stop, first_start) {
                prop_assert!(s < f);
            }
        }
    }
}
