//! A connection's task: quinn's driver of one connection and the readers of that connection's
//! agent streams, polled by one tokio task.
//!
//! # Why
//! A remote ask crosses a chain of wake-ups on each node. The endpoint's driver hands the
//! datagram to the connection's driver; the driver wakes the stream's reader; the reader wakes
//! the agent (on the asking node: the asker); the agent's reply (the asker's next ask) wakes
//! the driver again to send it. tokio's multi-thread scheduler runs a task woken by a running
//! task next, on the same worker (its LIFO slot), but only three times in a row. The fourth
//! wake-up goes to the run queue and wakes another worker to take it, and then two threads
//! race for the connection's lock. Raw quinn's echo fits in three (driver, echo task,
//! driver); a chain of four on each node pays that hand-off on every round trip (PERF.md,
//! "One task per connection", has the figures).
//!
//! Polling the driver and the readers in one task takes one link out of the chain on each
//! node: driver and reader, then the agent, then driver and reader again.
//!
//! # Protocol
//! The task holds sub-tasks: boxed futures in the order they came, the driver first. Each has
//! its own waker. It marks the sub-task woken, and wakes the task unless the task is being
//! polled, so a wake-up the poll will see anyway costs no second poll (tokio would put a task
//! woken while it runs at the back of the run queue, and wake another worker).
//!
//! ```text
//! sub-task's waker:  woken := true; if !running { wake the task }
//! spawn:             (unless the task ended) push to `new`; spawned := true; the same wake
//! the task's poll:   loop {
//!                      running := true
//!                      if spawned.swap(false) { adopt `new` (each starts woken) }
//!                      for each sub-task: aborted -> drop it;
//!                                         woken.swap(false) -> poll it (Ready -> drop it)
//!                      running := false
//!                      nothing woken or spawned -> Pending, or Ready if no sub-task is left
//!                      (then `ended` := true under the lock that guards `new`)
//!                      ROUNDS rounds done, or tokio's budget spent -> wake itself, Pending
//!                    }
//! ```
//! Every flag is sequentially consistent. A waker that reads `running == true` set its
//! `woken` before the poll cleared `running`, so the check after that sees it: no wake-up is
//! lost. A waker that reads `false` wakes the task, at worst once too often.
//!
//! - A sub-task that panics is dropped (tokio's panic hook has printed it); the others, the
//!   driver among them, go on, as other tasks do when a tokio task panics.
//! - A spawn after the task ended (the connection is gone and every reader with it) is a
//!   plain `tokio::spawn`: nothing handed over is lost.
//! - [`SubTask::abort`] marks the sub-task and wakes it; the next round drops it.
//!
//! # Which connection
//! quinn makes a connection's driver inside `Endpoint::connect_with` and `Incoming::accept`
//! and hands it to its runtime's `spawn`. [`NodeRuntime`] is the node endpoint's runtime.
//! [`capture`] runs such a call with a per-thread slot armed: the driver spawned inside it
//! starts a connection task, whose handle ([`ConnTasks`]) `capture` returns. Every other
//! spawn (the endpoint's own driver) is a plain `tokio::spawn`.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use quinn::{AsyncTimer, AsyncUdpSocket, Runtime, TokioRuntime};
use tokio::task::JoinHandle;

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Rounds one poll of the task may take before it yields to other tasks. A round polls every
/// woken sub-task once; a busy connection (a million tells) keeps waking the driver and the
/// reader in turn.
const ROUNDS: usize = 16;

/// quinn's tokio runtime, except that the driver of a connection made inside [`capture`]
/// runs in a connection task.
#[derive(Debug)]
pub struct NodeRuntime(TokioRuntime);

impl Default for NodeRuntime {
    fn default() -> Self {
        Self(TokioRuntime)
    }
}

impl Runtime for NodeRuntime {
    fn new_timer(&self, at: Instant) -> Pin<Box<dyn AsyncTimer>> {
        self.0.new_timer(at)
    }

    fn spawn(&self, future: BoxFuture) {
        let armed = CAPTURE.with(|c| matches!(*c.borrow(), Capture::Armed));
        if armed {
            let tasks = ConnTasks::start(future);
            CAPTURE.with(|c| *c.borrow_mut() = Capture::Got(tasks));
        } else {
            tokio::spawn(future);
        }
    }

    fn wrap_udp_socket(&self, sock: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        self.0.wrap_udp_socket(sock)
    }

    fn now(&self) -> Instant {
        self.0.now()
    }
}

enum Capture {
    Off,
    Armed,
    Got(ConnTasks),
}

thread_local! {
    static CAPTURE: RefCell<Capture> = const { RefCell::new(Capture::Off) };
}

/// Runs `make` (a connect or an accept on an endpoint whose runtime is [`NodeRuntime`]) and
/// returns its result with the handle of the task that drives the connection it made. When
/// it made none (it failed, or the endpoint has another runtime) the handle is
/// [`ConnTasks::detached`].
pub fn capture<R>(make: impl FnOnce() -> R) -> (R, ConnTasks) {
    /// Disarms the slot even if `make` panics.
    struct Disarm;
    impl Drop for Disarm {
        fn drop(&mut self) {
            CAPTURE.with(|c| *c.borrow_mut() = Capture::Off);
        }
    }
    CAPTURE.with(|c| *c.borrow_mut() = Capture::Armed);
    let disarm = Disarm;
    let made = make();
    let got = CAPTURE.with(|c| std::mem::replace(&mut *c.borrow_mut(), Capture::Off));
    drop(disarm);
    let tasks = match got {
        Capture::Got(t) => t,
        Capture::Off | Capture::Armed => ConnTasks::detached(),
    };
    (made, tasks)
}

/// Where a connection's readers run: in the connection's task, next to its driver.
#[derive(Clone, Default)]
pub struct ConnTasks(Option<Arc<Shared>>);

impl fmt::Debug for ConnTasks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(s) => f
                .debug_struct("ConnTasks")
                .field("ended", &lock(&s.state).ended)
                .finish(),
            None => f.write_str("ConnTasks(detached)"),
        }
    }
}

impl ConnTasks {
    /// A handle with no connection task: every spawn is a plain `tokio::spawn`.
    pub fn detached() -> Self {
        Self(None)
    }

    /// True when there is no connection task: every spawn is a task of its own.
    pub fn is_detached(&self) -> bool {
        self.0.is_none()
    }

    /// True when the connection's task ended (its driver and every sub-task are done); false
    /// for a detached handle.
    pub fn is_ended(&self) -> bool {
        self.0.as_ref().is_some_and(|s| lock(&s.state).ended)
    }

    /// Starts a connection task (a tokio task) with `driver` as its first sub-task.
    ///
    /// # Panics
    /// Outside a tokio runtime, as `tokio::spawn` does.
    pub fn start(driver: BoxFuture) -> Self {
        let shared = Arc::new(Shared {
            running: AtomicBool::new(false),
            spawned: AtomicBool::new(false),
            waker: Mutex::new(None),
            state: Mutex::new(State {
                new: Vec::new(),
                ended: false,
            }),
            #[cfg(test)]
            polls: Default::default(),
        });
        let first = Sub::new(driver, &shared);
        tokio::spawn(ConnTask {
            shared: shared.clone(),
            subs: vec![first],
        });
        Self(Some(shared))
    }

    /// Runs `future` in the connection's task; in a task of its own if there is none (a
    /// detached handle, or the connection's task ended).
    pub fn spawn<F>(&self, future: F) -> SubTask
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Some(shared) = &self.0 else {
            return SubTask(Handle::Tokio(tokio::spawn(future)));
        };
        let sub = Sub::new(Box::pin(future), shared);
        let flags = sub.flags.clone();
        let mut state = lock(&shared.state);
        if state.ended {
            drop(state);
            return SubTask(Handle::Tokio(tokio::spawn(sub.future)));
        }
        state.new.push(sub);
        shared.spawned.store(true, SeqCst);
        drop(state);
        shared.wake_task();
        SubTask(Handle::Sub(flags))
    }
}

/// A future run by [`ConnTasks::spawn`]. Dropping it does not stop the future.
#[derive(Debug)]
pub struct SubTask(Handle);

#[derive(Debug)]
enum Handle {
    Sub(Arc<Flags>),
    Tokio(JoinHandle<()>),
}

impl SubTask {
    /// Stops the future: it is dropped without being polled again (for a sub-task: at the
    /// connection task's next round).
    pub fn abort(&self) {
        match &self.0 {
            Handle::Sub(flags) => {
                flags.aborted.store(true, SeqCst);
                flags.wake_by_ref();
            }
            Handle::Tokio(h) => h.abort(),
        }
    }
}

/// What the task's handles, and the sub-tasks' wakers, share with the task.
struct Shared {
    /// The task is being polled: a waker need not wake it.
    running: AtomicBool,
    /// `state.new` has sub-tasks to adopt.
    spawned: AtomicBool,
    /// The task's own waker, from its last poll.
    waker: Mutex<Option<Waker>>,
    state: Mutex<State>,
    /// How often the task was polled.
    #[cfg(test)]
    polls: std::sync::atomic::AtomicUsize,
}

struct State {
    /// Spawned, not yet adopted by the task.
    new: Vec<Sub>,
    /// The task ended (or was dropped): spawns go elsewhere.
    ended: bool,
}

impl Shared {
    fn wake_task(&self) {
        if !self.running.load(SeqCst) {
            if let Some(w) = lock(&self.waker).as_ref() {
                w.wake_by_ref();
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // a sub-task's panic is caught outside any of these locks; a poisoned lock still holds
    // consistent data
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One sub-task's flags; also its waker.
struct Flags {
    woken: AtomicBool,
    aborted: AtomicBool,
    task: Arc<Shared>,
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Flags")
            .field("woken", &self.woken.load(SeqCst))
            .field("aborted", &self.aborted.load(SeqCst))
            .finish()
    }
}

impl Wake for Flags {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, SeqCst);
        self.task.wake_task();
    }
}

struct Sub {
    future: BoxFuture,
    flags: Arc<Flags>,
    waker: Waker,
}

impl Sub {
    fn new(future: BoxFuture, task: &Arc<Shared>) -> Self {
        let flags = Arc::new(Flags {
            // polled at the task's next round
            woken: AtomicBool::new(true),
            aborted: AtomicBool::new(false),
            task: task.clone(),
        });
        Self {
            future,
            waker: Waker::from(flags.clone()),
            flags,
        }
    }

    /// Polls the sub-task if it was woken. True when it is over (done, aborted or panicked).
    fn run(&mut self) -> bool {
        if self.flags.aborted.load(SeqCst) {
            return true;
        }
        if !self.flags.woken.swap(false, SeqCst) {
            return false;
        }
        let mut cx = Context::from_waker(&self.waker);
        match catch_unwind(AssertUnwindSafe(|| self.future.as_mut().poll(&mut cx))) {
            Ok(Poll::Ready(())) => true,
            Ok(Poll::Pending) => false,
            Err(_) => {
                tracing::error!(
                    "a task of a connection panicked; the connection's other tasks go on"
                );
                true
            }
        }
    }
}

/// The tokio task of one connection.
struct ConnTask {
    shared: Arc<Shared>,
    subs: Vec<Sub>,
}

impl Future for ConnTask {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        #[cfg(test)]
        this.shared.polls.fetch_add(1, SeqCst);
        {
            let mut w = lock(&this.shared.waker);
            if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *w = Some(cx.waker().clone());
            }
        }
        let mut round = 0;
        loop {
            round += 1;
            this.shared.running.store(true, SeqCst);
            if this.shared.spawned.swap(false, SeqCst) {
                this.subs.append(&mut lock(&this.shared.state).new);
            }
            this.subs.retain_mut(|s| !s.run());
            this.shared.running.store(false, SeqCst);

            let more = this.shared.spawned.load(SeqCst)
                || this.subs.iter().any(|s| s.flags.woken.load(SeqCst));
            if !more {
                if !this.subs.is_empty() {
                    return Poll::Pending;
                }
                let mut state = lock(&this.shared.state);
                if state.new.is_empty() {
                    state.ended = true;
                    return Poll::Ready(());
                }
                // spawned between the check and the lock: adopt it next round
                continue;
            }
            if round >= ROUNDS || !tokio::task::coop::has_budget_remaining() {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
    }
}

impl Drop for ConnTask {
    fn drop(&mut self) {
        // the runtime is shutting down (or the task ended): later spawns go elsewhere, and
        // sub-tasks not yet adopted are dropped here, outside the lock
        let new = {
            let mut state = lock(&self.shared.state);
            state.ended = true;
            std::mem::take(&mut state.new)
        };
        drop(new);
        // the waker points back at this task
        lock(&self.shared.waker).take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;
    use tokio::sync::{mpsc, oneshot};

    /// A connection task whose driver waits until `stop` is sent.
    fn task() -> (ConnTasks, oneshot::Sender<()>) {
        let (stop, stopped) = oneshot::channel::<()>();
        let tasks = ConnTasks::start(Box::pin(async move {
            let _ = stopped.await;
        }));
        (tasks, stop)
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    fn polls(t: &ConnTasks) -> usize {
        t.0.as_ref().expect("attached").polls.load(SeqCst)
    }

    fn ended(t: &ConnTasks) -> bool {
        assert!(!t.is_detached());
        t.is_ended()
    }

    #[tokio::test]
    async fn sub_tasks_run_in_the_connection_task_and_it_ends_with_the_last() {
        let (tasks, stop) = task();
        let (ids_tx, mut ids) = mpsc::unbounded_channel();
        for _ in 0..3 {
            let ids_tx = ids_tx.clone();
            tasks.spawn(async move {
                ids_tx.send(tokio::task::id()).unwrap();
            });
        }
        let first = ids.recv().await.unwrap();
        assert_ne!(
            Some(first),
            tokio::task::try_id(),
            "not the test's own task"
        );
        for _ in 0..2 {
            assert_eq!(ids.recv().await.unwrap(), first, "one task polls them all");
        }
        assert!(!ended(&tasks), "the driver still runs");
        stop.send(()).unwrap();
        settle().await;
        assert!(ended(&tasks), "no sub-task left: the task ended");

        // a later spawn is not lost: it runs in a task of its own
        let (tx, rx) = oneshot::channel();
        tasks.spawn(async move { tx.send(tokio::task::id()).unwrap() });
        let id = rx.await.unwrap();
        assert_ne!(id, first);
    }

    #[tokio::test]
    async fn a_wake_up_during_the_poll_is_handled_in_the_same_poll() {
        let (tasks, _stop) = task();
        let (tx, mut rx) = mpsc::unbounded_channel::<u32>();
        let got = Arc::new(AtomicUsize::new(0));
        {
            let got = got.clone();
            tasks.spawn(async move {
                while let Some(n) = rx.recv().await {
                    got.fetch_add(n as usize, SeqCst);
                }
            });
        }
        settle().await;
        let before = polls(&tasks);
        // the sender wakes the receiver while the task runs: one poll does both
        tasks.spawn(async move {
            tx.send(5).unwrap();
            tx.send(7).unwrap();
        });
        settle().await;
        assert_eq!(got.load(SeqCst), 12);
        assert_eq!(polls(&tasks) - before, 1, "the spawn woke the task once");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wake_up_from_another_thread_wakes_the_task() {
        let (tasks, _stop) = task();
        for _ in 0..200 {
            let (tx, rx) = oneshot::channel::<u32>();
            let (done_tx, done) = oneshot::channel();
            tasks.spawn(async move {
                done_tx.send(rx.await.unwrap() + 1).unwrap();
            });
            let t = std::thread::spawn(move || tx.send(41).unwrap());
            let got = tokio::time::timeout(Duration::from_secs(5), done)
                .await
                .expect("a wake-up was lost")
                .unwrap();
            assert_eq!(got, 42);
            t.join().unwrap();
        }
    }

    /// Sets its flag when dropped.
    struct DropFlag(Arc<AtomicBool>);
    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, SeqCst);
        }
    }

    #[tokio::test]
    async fn abort_drops_the_sub_task_and_the_others_go_on() {
        let (tasks, _stop) = task();
        let dropped = Arc::new(AtomicBool::new(false));
        let guard = DropFlag(dropped.clone());
        let polled = Arc::new(AtomicUsize::new(0));
        let sub = {
            let polled = polled.clone();
            tasks.spawn(async move {
                let _guard = guard;
                polled.fetch_add(1, SeqCst);
                std::future::pending::<()>().await;
            })
        };
        settle().await;
        assert_eq!(polled.load(SeqCst), 1);
        assert!(!dropped.load(SeqCst));
        sub.abort();
        settle().await;
        assert!(dropped.load(SeqCst), "aborted: dropped");
        assert_eq!(polled.load(SeqCst), 1, "and not polled again");

        let (tx, rx) = oneshot::channel();
        tasks.spawn(async move { tx.send(()).unwrap() });
        rx.await.unwrap();
        assert!(!ended(&tasks));
    }

    #[tokio::test]
    async fn a_panicking_sub_task_leaves_the_others_running() {
        let (tasks, stop) = task();
        let (tx, mut rx) = mpsc::unbounded_channel::<u32>();
        let (sum_tx, sum) = oneshot::channel();
        tasks.spawn(async move {
            let mut s = 0;
            while let Some(n) = rx.recv().await {
                s += n;
            }
            sum_tx.send(s).unwrap();
        });
        tasks.spawn(async { panic!("a sub-task's bug") });
        settle().await;
        tx.send(3).unwrap();
        drop(tx);
        assert_eq!(sum.await.unwrap(), 3);
        assert!(!ended(&tasks), "the driver survived the panic");
        stop.send(()).unwrap();
        settle().await;
        assert!(ended(&tasks));
    }

    #[tokio::test]
    async fn a_busy_sub_task_yields_to_other_tasks() {
        let (tasks, _stop) = task();
        // wakes itself at every poll, for ever
        let spins = Arc::new(AtomicUsize::new(0));
        {
            let spins = spins.clone();
            tasks.spawn(std::future::poll_fn(move |cx| {
                spins.fetch_add(1, SeqCst);
                cx.waker().wake_by_ref();
                Poll::<()>::Pending
            }));
        }
        // on this one-thread runtime, another task still gets its turn
        let other = tokio::spawn(async { 7 });
        let got = tokio::time::timeout(Duration::from_secs(5), other)
            .await
            .expect("the busy connection task starved the others")
            .unwrap();
        assert_eq!(got, 7);
        assert!(spins.load(SeqCst) > 1);
        let per_poll = spins.load(SeqCst) / polls(&tasks);
        assert!(per_poll <= ROUNDS, "{per_poll} rounds in one poll");
    }

    #[tokio::test]
    async fn capture_hands_back_the_task_of_the_driver_spawned_inside_it() {
        let rt = NodeRuntime::default();
        let (ran_tx, ran) = oneshot::channel();
        let ((), tasks) = capture(|| {
            rt.spawn(Box::pin(
                async move { ran_tx.send(tokio::task::id()).unwrap() },
            ))
        });
        assert!(
            !tasks.is_detached(),
            "the spawn inside made a connection task"
        );
        let driver_task = ran.await.unwrap();
        settle().await;
        assert!(ended(&tasks), "its driver ended, and so did the task");

        // outside `capture`, a spawn is a plain task, and `capture` of nothing is detached
        let (tx, rx) = oneshot::channel();
        rt.spawn(Box::pin(async move { tx.send(tokio::task::id()).unwrap() }));
        assert_ne!(rx.await.unwrap(), driver_task);
        let (n, tasks) = capture(|| 3);
        assert_eq!(n, 3);
        assert!(tasks.is_detached());
    }
}
