//! The per-thread probe the monitor reads: a switch counter, bumped with one relaxed store
//! on every switch (no locks, no read-modify-write on the switch path), whether the hub is
//! idle in `epoll_wait`, and a preemption request the monitor sets and
//! [`cooperate`](crate::cooperate) checks.
//!
//! The monitor sleeps while no hub needs watching (every hub idle in `epoll_wait`, or
//! keeping nobody waiting); the [`Doorbell`] wakes it, from the few places where that
//! changes: a hub leaving `epoll_wait`, a greenlet made ready, a job posted from another
//! thread, the hub publishing who waits when it switches into a greenlet or a new earliest
//! timer. Ringing costs a load and a branch while the monitor is awake, a `futex` wake once
//! when it sleeps.
//!
//! The hub also publishes here, when it switches from its loop into a greenlet (never on
//! the switch path itself), who would be kept waiting if that greenlet did not switch back:
//! how many greenlets are ready, the earliest timer, how many wait on I/O or on other
//! threads, and which greenlet it switched into. The monitor reports a blocked thread only
//! when someone is kept waiting. Which greenlet is running is otherwise read by the
//! monitor's signal handler on the thread itself, when there is something to report.

use std::cell::Cell;
use std::panic::Location;
use std::sync::atomic::{
    AtomicBool, AtomicPtr, AtomicU8, AtomicU64, AtomicUsize, Ordering, compiler_fence, fence,
};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// What one thread publishes for the monitor.
pub(crate) struct Probe {
    /// Switches made on this thread so far.
    pub(crate) switches: AtomicU64,
    /// Set by the monitor: the running greenlet has used up its time slice; cleared by
    /// `cooperate()` when it yields.
    pub(crate) preempt: AtomicBool,
    /// Set when the thread exits.
    pub(crate) exited: AtomicBool,
    /// Does this thread have a hub? (Only hub threads are watched.)
    pub(crate) has_hub: AtomicBool,
    /// Is the hub waiting for events (`epoll_wait`)? Then the thread is idle, not blocked.
    pub(crate) idle: AtomicBool,
    /// Kernel thread id, for `/proc/self/task/<tid>` and signals.
    pub(crate) tid: libc::pid_t,
    /// The thread's name (or `<unnamed>`).
    pub(crate) thread_name: String,
    /// Published by the hub: greenlets in its ready queues.
    pub(crate) ready: AtomicUsize,
    /// Published by the hub: greenlets parked on an fd.
    pub(crate) io_waiting: AtomicUsize,
    /// Published by the hub: greenlets waiting for a value from another thread.
    pub(crate) thread_waits: AtomicUsize,
    /// Jobs other threads have posted to the hub that it has not taken yet.
    pub(crate) posted: AtomicUsize,
    /// Published by the hub: its earliest timer, in [`clock_ns`] (`u64::MAX`: none).
    pub(crate) next_timer: AtomicU64,
    /// Published by the hub: the id of the greenlet it last switched into (0: none yet).
    pub(crate) running_id: AtomicU64,
    /// ... where that greenlet was spawned (null: not known).
    pub(crate) running_at: AtomicPtr<Location<'static>>,
    /// ... and the value `switches` had once that greenlet was running: while `switches`
    /// still has it, that greenlet is the one running.
    pub(crate) running_mark: AtomicU64,
    /// ... its name's first bytes (the greenlet `named_id`'s; `running_name_len` of them).
    running_name: [AtomicU8; NAME_LEN],
    running_name_len: AtomicUsize,
    /// The greenlet whose name `running_name` holds (0: none), so that a greenlet run
    /// again and again has its name copied once.
    named_id: AtomicU64,
}

/// How much of a greenlet's name the probe publishes.
const NAME_LEN: usize = 64;

static PROBES: Mutex<Vec<Weak<Probe>>> = Mutex::new(Vec::new());
/// Bumped whenever a probe is registered or its thread exits, so that the monitor reads
/// the list again only then.
static PROBES_CHANGED: AtomicU64 = AtomicU64::new(0);

/// Do threads whose greenlet state is created from now on publish a probe? Cleared when
/// the monitor is configured fully off (no reports, no time slices).
static RECORDING: AtomicBool = AtomicBool::new(true);

/// Turns probes on or off for threads that start using greenlets from now on.
pub(crate) fn set_recording(on: bool) {
    RECORDING.store(on, Ordering::Relaxed);
}

/// Owns this thread's probe; marks it exited when the thread's TLS is torn down, so the
/// monitor stops watching a counter that will never move again.
struct ProbeOwner(Arc<Probe>);

impl Drop for ProbeOwner {
    fn drop(&mut self) {
        self.0.exited.store(true, Ordering::Relaxed);
        PROBES_CHANGED.fetch_add(1, Ordering::Relaxed);
    }
}

thread_local! {
    static PROBE: ProbeOwner = ProbeOwner(register());
    /// A raw pointer to this thread's probe, for `cooperate()` (no lazy-init check).
    static PROBE_PTR: Cell<*const Probe> = const { Cell::new(std::ptr::null()) };
}

fn register() -> Arc<Probe> {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let probe = Arc::new(Probe {
        switches: AtomicU64::new(0),
        preempt: AtomicBool::new(false),
        exited: AtomicBool::new(false),
        has_hub: AtomicBool::new(false),
        idle: AtomicBool::new(false),
        tid,
        thread_name: std::thread::current()
            .name()
            .unwrap_or("<unnamed>")
            .to_string(),
        ready: AtomicUsize::new(0),
        io_waiting: AtomicUsize::new(0),
        thread_waits: AtomicUsize::new(0),
        posted: AtomicUsize::new(0),
        next_timer: AtomicU64::new(u64::MAX),
        running_id: AtomicU64::new(0),
        running_at: AtomicPtr::new(std::ptr::null_mut()),
        running_mark: AtomicU64::new(u64::MAX),
        running_name: [const { AtomicU8::new(0) }; NAME_LEN],
        running_name_len: AtomicUsize::new(0),
        named_id: AtomicU64::new(0),
    });
    let mut all = PROBES.lock().unwrap_or_else(|e| e.into_inner());
    all.retain(|w| w.strong_count() > 0);
    all.push(Arc::downgrade(&probe));
    PROBES_CHANGED.fetch_add(1, Ordering::Relaxed);
    probe
}

/// Changes whenever a probe was registered or its thread exited (see [`all`]).
pub(crate) fn generation() -> u64 {
    PROBES_CHANGED.load(Ordering::Relaxed)
}

/// This thread's probe, if it publishes one.
pub(crate) fn current() -> Option<Arc<Probe>> {
    let p = PROBE_PTR.with(Cell::get);
    (!p.is_null()).then(|| PROBE.with(|owner| owner.0.clone()))
}

/// Creates this thread's probe, if probes are on, and returns a pointer to it for the
/// switch path (null when off); called when the thread's greenlet state is created.
pub(crate) fn init_thread() -> *const Probe {
    if !RECORDING.load(Ordering::Relaxed) {
        return std::ptr::null();
    }
    PROBE.with(|owner| {
        let ptr = Arc::as_ptr(&owner.0);
        PROBE_PTR.with(|c| c.set(ptr));
        ptr
    })
}

/// Every live thread's probe.
pub(crate) fn all() -> Vec<Arc<Probe>> {
    let all = PROBES.lock().unwrap_or_else(|e| e.into_inner());
    all.iter()
        .filter_map(Weak::upgrade)
        .filter(|p| !p.exited.load(Ordering::Relaxed))
        .collect()
}

impl Probe {
    /// Records a switch (the switch path: one relaxed store; only this thread writes the
    /// counter, so load + store is enough).
    #[inline(always)]
    pub(crate) fn record_switch(&self) {
        let n = self.switches.load(Ordering::Relaxed);
        self.switches.store(n + 1, Ordering::Relaxed);
    }

    /// Publishes the greenlet about to run: the next switch on this thread goes into it
    /// (called by its own thread right before that switch). Its name is copied only when
    /// another greenlet's was published last.
    #[inline]
    pub(crate) fn publish_running(
        &self,
        id: u64,
        spawned_at: Option<&'static Location<'static>>,
        name: Option<&str>,
    ) {
        self.running_id.store(id, Ordering::Relaxed);
        let at = spawned_at.map_or(std::ptr::null_mut(), |l| l as *const _ as *mut _);
        self.running_at.store(at, Ordering::Relaxed);
        if self.named_id.load(Ordering::Relaxed) != id {
            self.publish_name(id, name);
        }
        let next = self.switches.load(Ordering::Relaxed) + 1;
        self.running_mark.store(next, Ordering::Relaxed);
    }

    #[inline]
    fn publish_name(&self, id: u64, name: Option<&str>) {
        let bytes = name.map_or(&[][..], |n| &n.as_bytes()[..n.len().min(NAME_LEN)]);
        for (slot, b) in self.running_name.iter().zip(bytes) {
            slot.store(*b, Ordering::Relaxed);
        }
        self.running_name_len.store(bytes.len(), Ordering::Relaxed);
        self.named_id.store(id, Ordering::Relaxed);
    }

    /// Publishes that the greenlet `id` is running now (no switch pending).
    pub(crate) fn publish_running_now(
        &self,
        id: u64,
        spawned_at: Option<&'static Location<'static>>,
        name: Option<&str>,
    ) {
        self.publish_running(id, spawned_at, name);
        let now = self.switches.load(Ordering::Relaxed);
        self.running_mark.store(now, Ordering::Relaxed);
    }

    /// The running greenlet as the hub published it, if it is still the one running:
    /// its id, where it was spawned and its name.
    pub(crate) fn published_running(&self) -> Option<PublishedRunning> {
        let id = self.running_id.load(Ordering::Relaxed);
        let at = self.running_at.load(Ordering::Relaxed);
        let mark = self.running_mark.load(Ordering::Relaxed);
        if id == 0 || mark != self.switches.load(Ordering::Relaxed) {
            return None;
        }
        let len = self.running_name_len.load(Ordering::Relaxed).min(NAME_LEN);
        let name: Vec<u8> = self.running_name[..len]
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        // The name is that greenlet's if it was published for it and not replaced while
        // it was read (the thread has not switched since: it is still blocked).
        let name = (self.named_id.load(Ordering::Relaxed) == id
            && mark == self.switches.load(Ordering::Relaxed)
            && !name.is_empty())
        .then(|| String::from_utf8_lossy(&name).into_owned());
        Some(PublishedRunning {
            id,
            // SAFETY: `running_at` only ever holds null or a pointer made from a
            // `&'static Location` in `publish_running`.
            spawned_at: (!at.is_null()).then(|| unsafe { &*at }),
            name,
        })
    }

    /// Publishes the hub's earliest timer (`None`: no timer). A sleeping monitor learns of
    /// it (it sleeps until the earliest timer of a hub that keeps nobody waiting).
    pub(crate) fn publish_next_timer(&self, at: Option<Instant>) {
        self.next_timer
            .store(at.map_or(u64::MAX, clock_ns), Ordering::Relaxed);
        if at.is_some() {
            DOORBELL.ring();
        }
    }

    /// The hub is about to wait in `epoll_wait`.
    #[inline]
    pub(crate) fn enter_idle(&self) {
        self.idle.store(true, Ordering::Relaxed);
    }

    /// The hub is back from `epoll_wait`: wakes the monitor if it sleeps.
    #[inline]
    pub(crate) fn leave_idle(&self) {
        self.idle.store(false, Ordering::Relaxed);
        DOORBELL.ring();
    }

    /// Publishes how many greenlets are ready; a first one wakes a sleeping monitor.
    #[inline]
    pub(crate) fn publish_ready(&self, ready: usize) {
        self.ready.store(ready, Ordering::Relaxed);
        if ready > 0 {
            DOORBELL.ring();
        }
    }

    /// Publishes who waits on the hub (ready, on I/O, on other threads) as it switches
    /// into a greenlet; wakes a sleeping monitor if anyone does.
    #[inline]
    pub(crate) fn publish_waiting(&self, ready: usize, io: usize, threads: usize) {
        self.ready.store(ready, Ordering::Relaxed);
        self.io_waiting.store(io, Ordering::Relaxed);
        self.thread_waits.store(threads, Ordering::Relaxed);
        if ready + io + threads > 0 {
            DOORBELL.ring();
        }
    }

    /// Another thread posted a job to the hub; wakes a sleeping monitor.
    pub(crate) fn note_posted(&self) {
        self.posted.fetch_add(1, Ordering::Relaxed);
        DOORBELL.ring();
    }

    /// The hub took a posted job.
    pub(crate) fn note_taken(&self) {
        self.posted.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How hubs wake the monitor thread while it sleeps (see the module docs).
///
/// The hub side of a ring is a store (what changed), a compiler fence and a relaxed load of
/// `asleep`: no fence instruction on the hub's paths. The monitor side pays for both: it
/// sets `asleep`, then runs a process-wide memory barrier (`membarrier(2)`), then looks at
/// the probes. Every hub thread then either made its store visible before the barrier (the
/// look sees it) or loads `asleep` after it (and rings).
pub(crate) struct Doorbell {
    /// The monitor sleeps (or is about to): a ring must wake it.
    asleep: AtomicBool,
    /// The monitor thread, once it runs.
    monitor: OnceLock<Thread>,
    /// Which process-wide barrier works here (see [`Barrier`]), once known.
    barrier: OnceLock<Barrier>,
}

/// The `membarrier(2)` command the monitor uses, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Barrier {
    /// `MEMBARRIER_CMD_PRIVATE_EXPEDITED` (registered): interrupts only the CPUs that run
    /// this process's threads right then.
    PrivateExpedited,
    /// `MEMBARRIER_CMD_GLOBAL`: waits for every CPU to pass a scheduling point (slow).
    Global,
    /// None works: the monitor never sleeps long.
    Unavailable,
}

const MEMBARRIER_CMD_QUERY: libc::c_int = 0;
const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;
const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

fn membarrier(cmd: libc::c_int) -> libc::c_long {
    // SAFETY: membarrier takes a command and flags (0) and touches no memory of ours.
    unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0, 0) }
}

impl Barrier {
    fn find() -> Barrier {
        let supported = membarrier(MEMBARRIER_CMD_QUERY);
        if supported < 0 {
            return Barrier::Unavailable;
        }
        let has = |cmd: libc::c_int| supported & libc::c_long::from(cmd) != 0;
        if has(MEMBARRIER_CMD_PRIVATE_EXPEDITED)
            && membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0
        {
            Barrier::PrivateExpedited
        } else if has(MEMBARRIER_CMD_GLOBAL) {
            Barrier::Global
        } else {
            Barrier::Unavailable
        }
    }

    /// Runs the barrier; `false` if it failed.
    fn run(self) -> bool {
        match self {
            Barrier::PrivateExpedited => membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0,
            Barrier::Global => membarrier(MEMBARRIER_CMD_GLOBAL) == 0,
            Barrier::Unavailable => false,
        }
    }
}

/// The process's doorbell.
pub(crate) static DOORBELL: Doorbell = Doorbell {
    asleep: AtomicBool::new(false),
    monitor: OnceLock::new(),
    barrier: OnceLock::new(),
};

impl Doorbell {
    /// Makes the calling thread (the monitor) the one a ring wakes.
    pub(crate) fn answer_here(&self) {
        let _ = self.monitor.set(std::thread::current());
        self.barrier.get_or_init(Barrier::find);
    }

    /// The monitor is going to sleep: rings from now on wake it. It must look at the
    /// hubs once more after this and before [`sleep`](Doorbell::sleep). `false` when no
    /// process-wide barrier is available: then a ring may be missed, and the monitor must
    /// not sleep long (it stays awake).
    pub(crate) fn going_to_sleep(&self) -> bool {
        self.asleep.store(true, Ordering::SeqCst);
        let barrier = *self.barrier.get_or_init(Barrier::find);
        if barrier.run() {
            fence(Ordering::SeqCst);
            true
        } else {
            self.asleep.store(false, Ordering::Relaxed);
            false
        }
    }

    /// The monitor sleeps until rung or until `timeout` passes (`None`: until rung).
    /// Returns whether it was rung.
    pub(crate) fn sleep(&self, timeout: Option<Duration>) -> bool {
        match timeout {
            Some(t) => std::thread::park_timeout(t),
            None => std::thread::park(),
        }
        // A ring clears the flag before it wakes us.
        !self.asleep.swap(false, Ordering::Relaxed)
    }

    /// The monitor changed its mind and stays awake.
    pub(crate) fn stay_awake(&self) {
        self.asleep.store(false, Ordering::Relaxed);
    }

    /// Wakes the monitor if it sleeps (a load and a branch when it does not). Called right
    /// after the store it announces.
    #[inline]
    pub(crate) fn ring(&self) {
        // Keeps the compiler from moving the store after this load; the CPU's own
        // reordering is the monitor's barrier's to undo (see the type's docs).
        compiler_fence(Ordering::SeqCst);
        if self.asleep.load(Ordering::Relaxed) {
            self.ring_slow();
        }
    }

    #[cold]
    fn ring_slow(&self) {
        if self.asleep.swap(false, Ordering::SeqCst)
            && let Some(monitor) = self.monitor.get()
        {
            monitor.unpark();
        }
    }
}

/// The greenlet a hub published as running (see [`Probe::published_running`]).
pub(crate) struct PublishedRunning {
    pub(crate) id: u64,
    pub(crate) spawned_at: Option<&'static Location<'static>>,
    pub(crate) name: Option<String>,
}

static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// `at` as nanoseconds since a process-wide origin, so that threads can compare instants
/// through atomics.
pub(crate) fn clock_ns(at: Instant) -> u64 {
    let origin = *ORIGIN.get_or_init(Instant::now);
    at.saturating_duration_since(origin).as_nanos() as u64
}

/// The instant of a [`clock_ns`] reading.
pub(crate) fn instant_of(ns: u64) -> Instant {
    let origin = *ORIGIN.get_or_init(Instant::now);
    origin + Duration::from_nanos(ns)
}

/// Has the monitor asked this thread to yield? (`cooperate()`'s load and branch.)
#[inline]
pub(crate) fn preempt_requested() -> bool {
    let p = PROBE_PTR.with(Cell::get);
    // SAFETY: PROBE_PTR points into this thread's `PROBE` Arc, which lives as long as the
    // thread's TLS; it is only set from `init_thread` on this thread.
    !p.is_null() && unsafe { &*p }.preempt.load(Ordering::Relaxed)
}

/// Clears this thread's preemption request.
pub(crate) fn clear_preempt() {
    let p = PROBE_PTR.with(Cell::get);
    if !p.is_null() {
        // SAFETY: as in `preempt_requested`.
        unsafe { &*p }.preempt.store(false, Ordering::Relaxed);
    }
}

/// The running greenlet's identity, copied without allocating: safe to call from a
/// signal handler on this thread.
pub(crate) struct Identity {
    pub(crate) id: u64,
    pub(crate) name: [u8; 64],
    pub(crate) name_len: usize,
    pub(crate) spawned_at: Option<&'static Location<'static>>,
}
