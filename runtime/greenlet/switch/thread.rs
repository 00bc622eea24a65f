//! The per-thread state: this thread's [`Hot`] (the running greenlet and the mailbox,
//! reached with one thread-pointer offset; the type is in `mailbox`) and its
//! [`ThreadState`] (the main greenlet, the stack pool, the spare greenlet records and the
//! registry of every record).

use std::cell::{Cell, RefCell};
use std::ptr;
use std::rc::Rc;

use super::mailbox::{Hot, clone_handle};
use crate::greenlet::stack::{self, StackPool};
use crate::greenlet::{Greenlet, Inner, Spares, State, probe};

thread_local! {
    static HOT: Hot = const { Hot::new() };
    static THREAD: ThreadState = ThreadState::new();
}

/// This thread's [`Hot`] state.
#[inline(always)]
pub(super) fn hot() -> &'static Hot {
    // SAFETY: `HOT` is const-initialised and has no destructor, so its storage is valid,
    // and never invalidated, for as long as this thread runs. `Hot` is `!Sync`, so the
    // reference cannot reach another thread, and every use of it is on this thread.
    HOT.with(|h| unsafe { &*(h as *const Hot) })
}

/// Turns trace-hook delivery on or off for this thread (see `trace`).
#[inline]
pub(crate) fn set_trace_on(on: bool) {
    hot().trace_on.set(on);
}

/// The per-thread state behind the main greenlet.
pub(crate) struct ThreadState {
    pub(crate) main: Greenlet,
    pub(crate) pool: RefCell<StackPool>,
    pub(crate) default_stack_size: Cell<usize>,
    /// Dead greenlets' `Inner`s kept for reuse.
    pub(crate) spares: RefCell<Spares>,
    /// Greenlets made by `GreenletBuilder::build_lazy` that have not got their stack yet. While
    /// the pool holds more free stacks than that, new ones wait for theirs too.
    pub(crate) lazy_waiting: Cell<usize>,
    /// Every greenlet record allocated on this thread and not freed yet (pointers from
    /// `Rc::as_ptr`), live, dead or spare: what `dump()` lists greenlets from.
    records: RefCell<slab::Slab<*const Inner>>,
}

impl Drop for ThreadState {
    fn drop(&mut self) {
        // From here on nothing can switch on this thread; greenlets still alive are leaked.
        hot().current.set(ptr::null());
    }
}

impl ThreadState {
    fn new() -> Self {
        stack::install_overflow_handler();
        let main = Greenlet::new_main();
        hot().set_current(Rc::as_ptr(&main.inner));
        hot().probe.set(probe::init_thread());
        ThreadState {
            main,
            pool: RefCell::new(StackPool::new()),
            default_stack_size: Cell::new(stack::DEFAULT_STACK_SIZE),
            spares: RefCell::default(),
            lazy_waiting: Cell::new(0),
            records: RefCell::default(),
        }
    }
}

/// Runs `f` with this thread's state, creating it (and the main greenlet) on first use.
///
/// # Panics
/// If called while the thread is being torn down.
#[inline]
pub(crate) fn with_thread<R>(f: impl FnOnce(&ThreadState) -> R) -> R {
    THREAD.with(f)
}

/// Like [`with_thread`], but `None` once the thread state has been destroyed.
#[inline]
pub(crate) fn try_with_thread<R>(f: impl FnOnce(&ThreadState) -> R) -> Option<R> {
    THREAD.try_with(f).ok()
}

/// The running greenlet's `Inner`, creating the thread state on first use.
#[inline]
pub(super) fn current_in(h: &Hot) -> *const Inner {
    let p = h.current.get();
    if p.is_null() { current_slow() } else { p }
}

#[cold]
#[inline(never)]
fn current_slow() -> *const Inner {
    with_thread(|t| Rc::as_ptr(&t.main.inner))
}

/// A new handle to the running greenlet.
#[inline]
pub(crate) fn current() -> Greenlet {
    let p = current_in(hot());
    // SAFETY: the running greenlet is alive (the `Hot::current` invariant).
    unsafe { clone_handle(p) }
}

/// Is the running greenlet being killed by force (it caught a kill once already, see
/// `kill_on_drop`)?
pub(crate) fn is_forced_unwind() -> bool {
    let p = hot().current.get();
    // SAFETY: the running greenlet is alive (the `Hot::current` invariant).
    !p.is_null() && !unsafe { &*p }.forced_by.get().is_null()
}

/// The sender to record in a message: the running greenlet, if a trace hook wants it.
#[inline]
pub(super) fn traced_origin(h: &Hot) -> Option<Greenlet> {
    if h.trace_on.get() {
        Some(current())
    } else {
        None
    }
}

/// Records the new greenlet record `rc` in this thread's registry ([`live_greenlets`]).
/// Records reused from the spares stay registered, so spawning costs nothing here.
pub(crate) fn register(rc: &Rc<Inner>) {
    try_with_thread(|t| {
        let index = t.records.borrow_mut().insert(Rc::as_ptr(rc));
        rc.registered.set(index);
    });
}

/// Takes the record `inner`, being freed, out of this thread's registry.
pub(crate) fn unregister(inner: &Inner) {
    let index = inner.registered.get();
    if index != usize::MAX {
        // Gone with the thread state at thread exit: nothing to do then.
        try_with_thread(|t| t.records.borrow_mut().try_remove(index));
    }
}

/// A handle to every greenlet of this thread that is alive (not dead), the main
/// greenlet aside: those a reference cycle keeps alive among them.
pub(crate) fn live_greenlets() -> Vec<Greenlet> {
    if hot().current.get().is_null() {
        return Vec::new(); // no greenlet state on this thread (none is made for asking)
    }
    with_thread(|t| {
        t.records
            .borrow()
            .iter()
            .filter_map(|(_, &p)| {
                // SAFETY: a record is in the registry from its allocation until it is
                // freed (`Inner::drop` takes it out), so `p` points at a live `Inner`.
                let inner: &Inner = unsafe { &*p };
                // SAFETY: as above; cloning a handle runs no user code, so no record
                // is freed while the registry is borrowed.
                (inner.state.get() != State::Dead).then(|| unsafe { clone_handle(p) })
            })
            .collect()
    })
}

/// The running greenlet's identity, for the monitor's signal handler: reads only the
/// const-initialised `Hot` (no lazy init, no allocation, no locks).
pub(crate) fn signal_safe_identity() -> probe::Identity {
    let mut identity = probe::Identity {
        id: 0,
        name: [0; 64],
        name_len: 0,
        spawned_at: None,
    };
    let p = hot().current.get();
    if p.is_null() {
        return identity;
    }
    // SAFETY: the handler runs on this thread, between two instructions of the running
    // greenlet's code, so `current` points at a live `Inner` (the `current` invariant:
    // it is only changed, and greenlets only freed, by this thread). Its `name` is
    // immutable after creation.
    let inner: &Inner = unsafe { &*p };
    identity.id = inner.id;
    if let Some(name) = inner.name.as_deref() {
        let n = name.len().min(identity.name.len());
        identity.name[..n].copy_from_slice(&name.as_bytes()[..n]);
        identity.name_len = n;
    }
    identity.spawned_at = inner.spawned_at;
    identity
}
