//! The per-thread probe the monitor reads: a switch counter, bumped with one relaxed store
//! on every switch (no locks, no read-modify-write on the switch path), whether the hub is
//! idle in `epoll_wait`, and a preemption request the monitor sets and
//! [`cooperate`](crate::cooperate) checks. Which greenlet is running is read by the
//! monitor's signal handler on the thread itself, when there is something to report.

use std::cell::Cell;
use std::panic::Location;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// What one thread publishes for the monitor.
pub struct Probe {
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
}

static PROBES: Mutex<Vec<Weak<Probe>>> = Mutex::new(Vec::new());

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
    });
    let mut all = PROBES.lock().unwrap_or_else(|e| e.into_inner());
    all.retain(|w| w.strong_count() > 0);
    all.push(Arc::downgrade(&probe));
    probe
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
