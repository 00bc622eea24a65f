//! The hub: one per OS thread, a greenlet that runs the event loop (gevent's `Hub`).
//!
//! Greenlets that block — sleep, wait for I/O, join, wait on a queue — park themselves
//! here: they register what should wake them, then switch to the hub greenlet. The hub
//! runs the ready greenlets, polls `mio` for I/O readiness, fires timers and takes work
//! posted from other threads, and switches back into each greenlet when its wait ends.
//! The hub is created on first use; its parent is the thread's main greenlet, so plain
//! `fn main` code can block on it with no set-up.
//!
//! ```
//! use std::time::Duration;
//! let h = greenhub::spawn(|| {
//!     greenhub::sleep(Duration::from_millis(10));
//!     "slept"
//! });
//! assert_eq!(h.join().unwrap(), "slept");
//! ```

mod io;
mod park;
pub(crate) mod raw;
mod remote;
mod round;
mod run_info;
mod spawn;
mod task;
mod timer;

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::greenlet::{Greenlet, getcurrent};

pub use io::Direction;
pub use remote::{HubHandle, ResultReceiver, ResultSender, result_channel};
pub use run_info::{dump, install_dump_signal};
pub use spawn::{JoinHandle, SpawnBuilder, joinall, killall, spawn, spawn_later};
pub(crate) use task::{Scope, Task, WaitOn, Waiter, Wake};
use timer::Timers;

/// How often the hub gives back the memory of stacks nobody reused, in ns.
const STACK_TRIM_INTERVAL_NS: u64 = 1_000_000_000;

/// The mio token of the cross-thread waker.
const WAKER_TOKEN: mio::Token = mio::Token(usize::MAX);

/// One thread's hub.
pub(crate) struct Hub {
    greenlet: Greenlet,
    main: Greenlet,
    /// Greenlets to run: spawned, or woken by I/O, a timer or another greenlet.
    ready: RefCell<VecDeque<Rc<Task>>>,
    /// Greenlets that yielded (`sleep(0)`, `cooperate()`): they run after the woken ones.
    yielded: RefCell<VecDeque<Rc<Task>>>,
    timers: RefCell<Timers<Waiter>>,
    poll: RefCell<mio::Poll>,
    events: RefCell<mio::Events>,
    io: io::IoTable,
    remote: Arc<remote::Remote>,
    /// This thread's monitor probe (none when the monitor is off).
    probe: Option<Arc<crate::greenlet::probe::Probe>>,
    external: remote::ExternalWaits,
    /// The task the hub has switched into and not yet got back from (moved here from the
    /// ready queue: no handle is made for it).
    running: RefCell<Option<Rc<Task>>>,
    /// The main greenlet's task, once it has blocked on the hub.
    main_task: RefCell<Option<Rc<Task>>>,
    /// Tasks for plain greenlets (not spawned on the hub, not the main greenlet).
    others: RefCell<HashMap<u64, Rc<Task>>>,
    /// Every task made on this hub, for `dump()` (pruned of dead ones as it grows).
    all_tasks: RefCell<slab::Slab<std::rc::Weak<Task>>>,
    next_seq: Cell<u64>,
    /// When to next give back the memory of stacks left unused (see `StackPool::trim`),
    /// in [`coarse_now`] time: checked after every poll, so it must be cheap to read.
    next_trim: Cell<u64>,
    /// The round in progress, and handing off between greenlets (see `round`).
    round: round::Round,
    /// Bumped whenever a greenlet the hub ran has died (its stack went back to the pool).
    deaths: Cell<u64>,
    /// `deaths` at the last trim.
    deaths_at_trim: Cell<u64>,
    /// Greenlets died in the interval before the last trim, so it may have left stacks
    /// that were reused then: one more trim, a whole interval later, gives those back.
    trim_again: Cell<bool>,
    /// The thread is exiting: the event loop returns (see [`Hub::tear_down`]).
    stopping: Cell<bool>,
}

thread_local! {
    static HUB: OnceCell<Rc<Hub>> = const { OnceCell::new() };
    /// Tears this thread's hub down when the thread exits. It is first used right after
    /// the hub is made, which is after the thread's greenlet state was made, and thread
    /// locals are destroyed in the reverse order of their first use: so it runs while
    /// greenlets can still switch on this thread (and checks that they can).
    static TEARDOWN: Teardown = const { Teardown(RefCell::new(None)) };
}

/// Runs `f` with this thread's hub, creating it on first use.
#[inline]
pub(crate) fn with_hub<R>(f: impl FnOnce(&Rc<Hub>) -> R) -> R {
    HUB.with(|cell| f(cell.get_or_init(Hub::start)))
}

/// Owns a second handle to this thread's hub, to tear it down at thread exit.
struct Teardown(RefCell<Option<Rc<Hub>>>);

impl Drop for Teardown {
    fn drop(&mut self) {
        if let Some(hub) = self.0.get_mut().take() {
            hub.tear_down();
        }
    }
}

/// This thread's hub.
#[inline]
pub(crate) fn current_hub() -> Rc<Hub> {
    with_hub(Rc::clone)
}

/// The thread's main greenlet: the root of the parent chain of any greenlet.
fn main_greenlet() -> Greenlet {
    let mut g = getcurrent();
    while let Some(p) = g.parent() {
        g = p;
    }
    g
}

impl Hub {
    /// Makes this thread's hub and arranges its teardown at thread exit.
    fn start() -> Rc<Hub> {
        let hub = Hub::new();
        // Fails only when the thread is already exiting: the hub is then never torn down
        // (it is leaked, as everything on a thread that cannot switch any more).
        let _ = TEARDOWN.try_with(|t| *t.0.borrow_mut() = Some(hub.clone()));
        hub
    }

    fn new() -> Rc<Hub> {
        raise_nofile_limit();
        let poll = mio::Poll::new().expect("greenhub: cannot create the mio poller (epoll)");
        let waker = mio::Waker::new(poll.registry(), WAKER_TOKEN)
            .expect("greenhub: cannot create the cross-thread waker (eventfd)");
        let main = main_greenlet();
        let greenlet =
            Greenlet::builder()
                .name("hub")
                .parent(&main)
                .build(|_| -> Result<(), Error> {
                    current_hub().run();
                    Ok(())
                });
        let probe = crate::greenlet::probe::current();
        let remote = Arc::new(remote::Remote::new(waker, probe.clone()));
        run_info::register_hub(&remote);
        if let Some(probe) = &probe {
            // Until the hub runs anything, the greenlet that made it is the one running.
            let me = getcurrent();
            probe.publish_running_now(me.id(), me.spawned_at(), me.name());
            probe
                .has_hub
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        crate::monitor::start();
        raw::note_hub_thread();
        Rc::new(Hub {
            greenlet,
            main,
            ready: RefCell::new(VecDeque::new()),
            yielded: RefCell::new(VecDeque::new()),
            timers: RefCell::new(Timers::new()),
            poll: RefCell::new(poll),
            events: RefCell::new(mio::Events::with_capacity(1024)),
            io: io::IoTable::default(),
            remote,
            probe,
            external: remote::ExternalWaits::default(),
            running: RefCell::new(None),
            main_task: RefCell::new(None),
            others: RefCell::new(HashMap::new()),
            all_tasks: RefCell::new(slab::Slab::new()),
            next_seq: Cell::new(1),
            round: round::Round::default(),
            next_trim: Cell::new(coarse_now() + STACK_TRIM_INTERVAL_NS),
            deaths: Cell::new(0),
            deaths_at_trim: Cell::new(0),
            trim_again: Cell::new(false),
            stopping: Cell::new(false),
        })
    }

    /// The thread is exiting (its `Teardown` is being destroyed). Stops the event loop, so
    /// that the hub greenlet returns: its stack goes back to the pool and the handle to the
    /// hub it holds is released; takes the hub out of `dump()`'s list and closes its inbox.
    /// Greenlets still alive cannot run any more and are leaked, not unwound: nothing of
    /// theirs runs at thread exit (their destructors could use thread locals already gone).
    /// The hub itself is freed with the last handle to it — at once, unless a leaked
    /// greenlet holds one on its stack.
    fn tear_down(&self) {
        raw::forget_hub_thread();
        run_info::unregister_hub(&self.remote);
        self.remote.close();
        if let Some(p) = &self.probe {
            p.has_hub.store(false, std::sync::atomic::Ordering::Relaxed);
        }
        let alive = crate::greenlet::thread_alive();
        if alive
            && self.greenlet.is_started()
            && !self.greenlet.is_dead()
            && getcurrent() == self.main
        {
            self.stopping.set(true);
            let _ = self.greenlet.switch(());
        }
        let live: Vec<Rc<Task>> = self
            .all_tasks
            .borrow()
            .iter()
            .filter_map(|(_, t)| t.upgrade())
            .filter(|t| !t.greenlet.is_dead() && !t.greenlet.is_main())
            .collect();
        for task in live {
            // A handle that is never dropped: the greenlet is never killed (on drop) and
            // its stack never unwound.
            std::mem::forget(task);
        }
        if self.greenlet.is_started() && !self.greenlet.is_dead() {
            // Could not be stopped: never kill it either. (One that never ran holds
            // nothing and is dropped with the hub.)
            std::mem::forget(self.greenlet.clone());
        }
        if !alive {
            return; // nothing more can be dropped safely here
        }
        // Let go of the hub's own handles to tasks while the greenlet state is still there.
        drop(self.ready.take());
        drop(self.yielded.take());
        drop(std::mem::replace(
            &mut *self.timers.borrow_mut(),
            Timers::new(),
        ));
        drop(self.running.take());
        drop(self.main_task.take());
        drop(self.others.take());
        self.external.clear();
    }

    /// The hub's own greenlet.
    pub(crate) fn greenlet(&self) -> &Greenlet {
        &self.greenlet
    }

    /// The task of the running greenlet.
    ///
    /// For the greenlet the hub switched into, or the main greenlet, this is one load and
    /// a compare (no handle to the running greenlet is made, nothing is looked up).
    #[inline(always)]
    pub(crate) fn current_task(&self) -> Rc<Task> {
        if let Some(t) = self.running.borrow().as_ref()
            && t.greenlet.is_running()
        {
            return t.clone();
        }
        self.current_task_slow()
    }

    /// [`current_task`](Hub::current_task) for the main greenlet and plain greenlets.
    #[inline(never)]
    fn current_task_slow(&self) -> Rc<Task> {
        if self.main.is_running() {
            let mut main_task = self.main_task.borrow_mut();
            let task = main_task.get_or_insert_with(|| {
                let task: Rc<Task> = Rc::new(Task::new(self.main.clone(), ()));
                self.track(&task);
                task
            });
            return task.clone();
        }
        let me = getcurrent();
        assert!(
            me != self.greenlet,
            "greenhub: the hub greenlet cannot block"
        );
        let mut others = self.others.borrow_mut();
        if others.len() > 64 {
            others.retain(|_, t| {
                let live = !t.greenlet.is_dead();
                if !live {
                    self.untrack(t.as_ref());
                }
                live
            });
        }
        others
            .entry(me.id())
            .or_insert_with(|| {
                let task: Rc<Task> = Rc::new(Task::new(me, ()));
                self.track(&task);
                task
            })
            .clone()
    }

    /// Remembers a task for `dump()` until [`untrack`](Hub::untrack).
    pub(crate) fn track(&self, task: &Rc<Task>) {
        let slot = self.all_tasks.borrow_mut().insert(Rc::downgrade(task));
        // More than 4 billion live tasks cannot be: slots are reused.
        task.tracked.set(u32::try_from(slot).unwrap_or(u32::MAX));
    }

    /// Forgets a task (it has finished).
    pub(crate) fn untrack<C: ?Sized>(&self, task: &Task<C>) {
        let slot = task.tracked.replace(u32::MAX);
        if slot != u32::MAX {
            self.all_tasks.borrow_mut().try_remove(slot as usize);
        }
    }

    /// The event loop; runs on the hub greenlet until the thread exits.
    fn run(&self) {
        while !self.stopping.get() {
            self.run_ready();
            if self.stopping.get() {
                break;
            }
            self.remote.drain(self);
            let timeout = if !self.ready.borrow().is_empty() || !self.yielded.borrow().is_empty() {
                if self.io.waiting() == 0 {
                    // No greenlet waits on an fd, so there is nothing to poll for
                    // (cross-thread work is drained above): skip the epoll_wait syscall.
                    self.fire_timers();
                    continue;
                }
                Some(Duration::ZERO)
            } else {
                let next_timer = self.timers.borrow_mut().next_deadline();
                if next_timer.is_none()
                    && self.io.waiting() == 0
                    && self.external.is_empty()
                    && self.remote.is_empty()
                    && !self.remote.has_handles()
                {
                    self.block_forever();
                    continue;
                }
                // The hub is about to wait: wake for the next timer, or for the next trim
                // while there are stacks a trim may give back.
                let wake_at = match (next_timer, self.trim_due()) {
                    (Some(t), Some(d)) => Some(t.min(d)),
                    (t, d) => t.or(d),
                };
                wake_at.map(|at| at.saturating_duration_since(Instant::now()))
            };
            self.poll_io(timeout);
            self.fire_timers();
            self.trim_stacks();
        }
    }

    /// Switches into `task` until it (or a greenlet it handed off to, see `round`)
    /// switches back.
    #[inline]
    fn run_task(&self, task: Rc<Task>) {
        if task.greenlet.is_dead() {
            return;
        }
        if let Some(p) = &self.probe {
            self.publish(p, &task);
        }
        let greenlet = task.greenlet.clone();
        let prev = self.running.replace(Some(task));
        debug_assert!(prev.is_none(), "the hub runs one task at a time");
        self.start_run();
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| greenlet.switch(())));
        let ended = coarse_now();
        let mut died = greenlet.is_dead();
        if let Some(last) = self.running.take() {
            died |= last.greenlet.is_dead();
            self.end_run(&last, ended);
        }
        if died {
            self.deaths.set(self.deaths.get() + 1);
        }
        if let Err(payload) = outcome {
            // A plain greenlet whose parent is the hub panicked (spawned ones report
            // their own panics): report it and carry on.
            let msg =
                crate::error::panic_payload_str(payload.as_ref()).unwrap_or("<non-string payload>");
            eprintln!(
                "greenhub: greenlet #{} failed in the hub: {msg}",
                greenlet.id()
            );
        }
    }

    /// Tells the monitor who waits on the hub while `task` runs (see `probe`): the hub is
    /// about to switch into it.
    #[inline]
    fn publish(&self, p: &crate::greenlet::probe::Probe, task: &Task) {
        p.publish_running(
            task.greenlet.id(),
            task.greenlet.spawned_at(),
            task.greenlet.name(),
        );
        let ready = self.ready.borrow().len() + self.yielded.borrow().len();
        p.publish_waiting(ready, self.io.waiting(), self.external.len());
        let mut timers = self.timers.borrow_mut();
        if timers.take_changed() {
            p.publish_next_timer(timers.next_deadline());
        }
    }

    fn poll_io(&self, timeout: Option<Duration>) {
        let mut events = self.events.borrow_mut();
        if let Some(p) = &self.probe {
            p.enter_idle();
        }
        let polled = self.poll.borrow_mut().poll(&mut events, timeout);
        if let Some(p) = &self.probe {
            p.leave_idle();
        }
        if let Err(e) = polled
            && e.kind() != std::io::ErrorKind::Interrupted
        {
            panic!("greenhub: epoll_wait failed: {e}");
        }
        for event in events.iter() {
            if event.token() == WAKER_TOKEN {
                continue; // the remote queue is drained every round
            }
            self.io.dispatch(event);
        }
    }

    /// Once a second, gives back the memory of stacks that nobody reused. (The coarse
    /// clock may lag the precise one the hub slept by for up to a tick: a trim is due a
    /// little early rather than costing an extra wake-up.)
    fn trim_stacks(&self) {
        const SLACK_NS: u64 = 20_000_000;
        let now = coarse_now();
        if now + SLACK_NS >= self.next_trim.get() {
            self.next_trim.set(now + STACK_TRIM_INTERVAL_NS);
            crate::greenlet::trim_stack_pool();
            let deaths = self.deaths.get();
            self.trim_again.set(deaths != self.deaths_at_trim.get());
            self.deaths_at_trim.set(deaths);
        }
    }

    /// When a hub about to wait should wake to trim the stack pool, if it should: while
    /// greenlets have died since the last trim, or died in the interval before it. A trim
    /// gives back the free stacks that were not reused since the previous trim; stacks
    /// come back to the pool only when greenlets die, so a trim after an interval in which
    /// none died leaves no free stack unreleased. After the last death, then, at most two
    /// trims give every free stack back, and an idle hub sleeps until something happens
    /// (no periodic wake-ups).
    fn trim_due(&self) -> Option<Instant> {
        let died = self.deaths.get() != self.deaths_at_trim.get();
        (died || self.trim_again.get()).then(|| {
            let wait = self.next_trim.get().saturating_sub(coarse_now());
            Instant::now() + Duration::from_nanos(wait)
        })
    }

    fn fire_timers(&self) {
        if self.timers.borrow_mut().next_deadline().is_none() {
            return; // no clock read when no timer is pending
        }
        let now = Instant::now();
        loop {
            let Some(waiter) = self.timers.borrow_mut().pop_expired(now) else {
                break;
            };
            waiter.wake(Wake::Timer);
        }
    }

    /// Nothing can wake anyone: tell the main greenlet, if it waits, that it never will.
    fn block_forever(&self) {
        let main_task = self.main_task.borrow().clone();
        match main_task {
            Some(t) if t.waiting.get() != 0 => {
                let seq = t.waiting.get();
                Waiter { task: t, seq }.wake(Wake::BlockForever);
            }
            _ => {
                // Nobody waits on the hub (it was switched to directly): go back to main.
                if let Some(p) = &self.probe {
                    p.publish_running(self.main.id(), None, self.main.name());
                    p.ready.store(0, std::sync::atomic::Ordering::Relaxed);
                    p.io_waiting.store(0, std::sync::atomic::Ordering::Relaxed);
                    p.thread_waits
                        .store(0, std::sync::atomic::Ordering::Relaxed);
                    p.publish_next_timer(None);
                }
                let _ = self.main.switch(());
            }
        }
    }
}

/// The monotonic clock in ns, read cheaply to the scheduler tick (`CLOCK_MONOTONIC_COARSE`:
/// a few ns, where `Instant::now` costs ~25): the hub reads it once per greenlet it runs,
/// to account run time per task and to end a long round. Summed over many runs its
/// differences estimate run time without bias (a run crosses a tick with a probability
/// proportional to its length); one short run may read 0.
fn coarse_now() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass, and this clock id exists on
    // every Linux since 2.6.32.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, once per process (as Go does):
/// a server with many connections should not stop at the customary soft limit of 1024.
fn raise_nofile_limit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
                lim.rlim_cur = lim.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
        }
    });
}

thread_local! {
    /// Hooks run at the end of every greenlet spawned on this thread's hub.
    static EXIT_HOOKS: RefCell<Vec<fn()>> = const { RefCell::new(Vec::new()) };
    /// Has a hook been registered? (No drop glue: checking it is one load.)
    static HAS_EXIT_HOOKS: Cell<bool> = const { Cell::new(false) };
}

/// Registers `hook` to run at the end of every greenlet spawned on this thread's hub: in
/// that greenlet, after its function has returned, panicked or been killed, before its
/// joiners wake. Layers above the hub use it to free per-greenlet state (`sync::Local`).
/// A hook must not panic.
pub(crate) fn on_spawned_exit(hook: fn()) {
    EXIT_HOOKS.with(|hooks| hooks.borrow_mut().push(hook));
    HAS_EXIT_HOOKS.with(|has| has.set(true));
}

/// Runs the hooks registered with [`on_spawned_exit`].
#[inline]
fn run_exit_hooks() {
    if HAS_EXIT_HOOKS.with(Cell::get) {
        run_exit_hooks_slow();
    }
}

fn run_exit_hooks_slow() {
    let mut i = 0;
    while let Some(hook) = EXIT_HOOKS.with(|hooks| hooks.borrow().get(i).copied()) {
        hook();
        i += 1;
    }
}

/// Parks the running greenlet until `deadline`; returns early with [`Error::Timeout`] when
/// an open `Timeout` scope expires first.
pub(crate) fn sleep_until(deadline: Instant) -> Result<(), Error> {
    let hub = current_hub();
    let waiter = hub.begin_wait_on(WaitOn::Timer);
    hub.park(&waiter, Some(deadline)).map(|_| ())
}

/// Lets every other ready greenlet run once, then returns (`sleep(0)`).
///
/// Inlined into its callers (with [`park`](Hub::park)), so that the switch back lands in
/// the frame that yielded: the return stack buffer holds the other greenlet's frames
/// after a switch, and each return between the switch and the caller's code would be
/// mispredicted (a yield ping-pong costs a third less so).
#[inline(always)]
pub(crate) fn yield_now() -> Result<(), Error> {
    let hub = current_hub();
    let waiter = hub.begin_wait_on(WaitOn::Turn);
    waiter.task.waiting.set(0);
    waiter.task.wake.set(Wake::Ready);
    hub.schedule_yielded(waiter.task.clone());
    hub.park(&waiter, None).map(|_| ())
}

/// A cooperative yield point for CPU-bound loops: costs a load and a branch, unless the
/// running greenlet has used up its time slice (10 ms by default) or the monitor asked
/// this thread to yield; then it lets the other ready greenlets run (`sleep(0)`) and
/// delivers a pending kill (by unwinding) or an expired [`Timeout`](crate::Timeout).
///
/// So a compute loop that calls it stays responsive, and can be killed and timed out
/// (gevent cannot: its issue #1949). Cooperative sockets and `sleep` are yield points too.
///
/// # Errors
/// [`Error::Timeout`] when an enclosing `Timeout` scope has expired.
///
/// ```
/// use std::time::Duration;
/// use greenhub::{Error, cooperate, with_timeout};
/// let r = with_timeout(Duration::from_millis(30), || -> Result<u64, Error> {
///     let mut n = 0_u64;
///     loop {
///         n = n.wrapping_add(1);
///         cooperate()?; // the timeout lands here
///     }
/// });
/// assert!(matches!(r, Err(Error::Timeout)));
/// ```
#[inline]
pub fn cooperate() -> Result<(), Error> {
    if crate::greenlet::probe::preempt_requested() {
        return cooperate_slow();
    }
    Ok(())
}

#[cold]
fn cooperate_slow() -> Result<(), Error> {
    crate::greenlet::probe::clear_preempt();
    yield_now()
}

/// A [`HubHandle`] for this thread's hub, to post work to it from other threads.
///
/// While any handle lives, the hub counts it as pending cross-thread work: a greenlet
/// waiting for something only a posted job can do is not told it would block forever.
///
/// ```
/// let handle = greenhub::hub::handle();
/// let (tx, rx) = greenhub::hub::result_channel();
/// std::thread::spawn(move || {
///     handle.spawn(move || tx.send(std::thread::current().name().map(String::from)));
/// });
/// // The job ran on this thread's hub, in a greenlet.
/// assert_eq!(rx.recv().unwrap(), std::thread::current().name().map(String::from));
/// ```
pub fn handle() -> HubHandle {
    with_hub(|hub| HubHandle::new(hub.remote.clone()))
}
