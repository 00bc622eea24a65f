//! The switching machinery: per-thread state, messages, and the router that turns
//! symmetric greenlet switches into corosensei's asymmetric resume/suspend.
//!
//! Every greenlet's stack is, when it is not running, paused in exactly one place:
//!
//! * in `Yielder::suspend` ([`State::Suspended`]): it can be resumed from anywhere;
//! * in `Coroutine::resume` ([`State::Resuming`]): it is an ancestor of the running
//!   greenlet in the *resume chain* (the main greenlet is always its root).
//!
//! A switch to a suspended greenlet is one `resume` from where we are; a switch to a
//! greenlet in the chain is one `suspend` per level it sits above us. So the common
//! cases (A resumes B, B switches back to A) cost exactly one machine switch each.
//!
//! # What crosses a machine switch
//!
//! Nothing but `()`: corosensei passes values wider than a word by pointer into the
//! sender's stack, which costs store-forwarding stalls on every switch. The message in
//! flight ([`Msg`]) is instead written, one scalar field at a time, into this thread's
//! [`Hot`] mailbox right before `resume`/`suspend` and read back right after it returns
//! (or at the start of a coroutine). No user code runs between the two (no drop glue,
//! no hook), so one mailbox per thread is enough.
//!
//! # Who keeps a greenlet alive
//!
//! The running greenlet, and every greenlet in the resume chain, is kept alive by the
//! frame that resumed it: either the `&Greenlet` borrowed by the [`send`] that resumed
//! it (a message whose `keep` is `None` is *borrowed*: it is only ever resumed by the
//! `send` that made it, see [`transfer`]), or a handle owned by that frame (`keep`);
//! the main greenlet by [`ThreadState`]. Routing code that might run user code (drop
//! glue that kills a greenlet, a never-started closure being dropped) first makes the
//! message own its target ([`Msg::own`]).

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::mem::ManuallyDrop;
use std::ptr;
use std::rc::{Rc, Weak};

use corosensei::{Coroutine, CoroutineResult, Yielder};

use super::stack::{self, Stack, StackPool};
use super::trace::{self, TraceEvent};
use super::value::Value;
use super::{Greenlet, GreenletExit, Inner, LazyBody, State};
use crate::error::Error;

/// A greenlet's coroutine. Everything it receives and sends goes through the [`Hot`]
/// mailbox, so corosensei only ever moves `()` (see the module docs).
pub(crate) type Co = Coroutine<(), (), (), Stack>;

/// The yielder a greenlet's coroutine body receives.
pub(crate) type GreenYielder = Yielder<(), ()>;

/// What travels with a switch.
pub(crate) enum Payload {
    /// `switch(value)`: the target's pending switch returns `Ok(value)`.
    Value(Value),
    /// `throw(error)`, or a greenlet that died with an error: the target's switch returns `Err`.
    Throw(Box<Error>),
    /// A kill: the target unwinds from its switch point (`GreenletExit`).
    Kill,
    /// A greenlet died panicking: the panic resumes in the target at its switch point.
    Panic(Box<dyn Any + Send>),
}

/// One switch in flight: who sent it, where it is going, and what it carries.
pub(crate) struct Msg {
    /// The greenlet it goes to, from `Rc::as_ptr` (so a handle can be made from it).
    /// Alive: held by `keep`, or (when `keep` is `None`) by the `&Greenlet` of the
    /// [`send`] call that made the message, or by the resume chain (module docs).
    target: *const Inner,
    /// A handle to `target` owned by the message, when nothing else is known to keep
    /// it alive (a rerouted message, a dying greenlet's result). When `Some`, `target`
    /// is its `Rc::as_ptr`.
    keep: Option<Greenlet>,
    /// The sender, carried only while a trace hook is installed (it is what the hook sees).
    origin: Option<Greenlet>,
    event: TraceEvent,
    payload: Payload,
}

impl Msg {
    /// Makes the message own a handle to its target (so that user code run while it is
    /// being routed cannot free the target under it).
    #[cold]
    fn own(&mut self) {
        if self.keep.is_none() {
            // SAFETY: the target is alive now (the `target` field's invariant).
            self.keep = Some(unsafe { clone_handle(self.target) });
        }
    }

    /// Sends the message to `to` instead (a handle the message now owns). The old
    /// target's handle, if the message owned one, is dropped after the new one is in
    /// place, so drop glue it runs sees a message that owns its target.
    #[cold]
    fn retarget(&mut self, to: Greenlet) {
        self.target = Rc::as_ptr(&to.inner);
        drop(self.keep.replace(to));
    }
}

/// A new strong handle to the greenlet behind `p`.
///
/// # Safety
/// `p` must come from `Rc::as_ptr` of an `Rc<Inner>` that is alive.
#[inline]
unsafe fn clone_handle(p: *const Inner) -> Greenlet {
    // SAFETY: per the contract `p` is a live `Rc<Inner>`'s pointer: bumping the strong
    // count and rebuilding an `Rc` from it is exactly `Rc::clone`.
    unsafe {
        Rc::increment_strong_count(p);
        Greenlet::from_rc(Rc::from_raw(p))
    }
}

// The mailbox's `flags` byte.
/// The mailbox holds one strong count of `to` (a `Msg` with `keep`).
const OWNS_TO: u8 = 1;
/// `origin` is set and holds one strong count.
const HAS_ORIGIN: u8 = 2;
/// The trace event is `Throw` (else `Switch`).
const EVENT_THROW: u8 = 4;
/// A `KIND_VALUE` payload other than `()` (whose box is in `data`).
const BOXED: u8 = 8;
/// The payload kind (`data` holds it as described on `Hot::data`).
const KIND_VALUE: u8 = 0;
const KIND_THROW: u8 = 1 << 4;
const KIND_KILL: u8 = 2 << 4;
const KIND_PANIC: u8 = 3 << 4;
const KIND_MASK: u8 = 3 << 4;
/// Flags that need more than "hand the value to the target": a fast landing is a
/// message to us whose `flags & SLOW == 0` (a plain value, no handles to release, no
/// trace hook to call).
const SLOW: u8 = OWNS_TO | HAS_ORIGIN | KIND_MASK;

/// The per-thread state on the switch path: the running greenlet, the trace flag and
/// the one-message mailbox. Const-initialised and without drop glue, so that reaching
/// it is a plain thread-pointer offset (no lazy-init or destructor-state check).
///
/// The mailbox is a [`Msg`] taken apart into scalars, each written and read with the
/// same width (so loads forward from stores). It is full only between a post and the
/// take on the other side of the switch; nothing in between runs user code.
pub(crate) struct Hot {
    /// The running greenlet, from `Rc::as_ptr` (so a handle can be made from it).
    /// Invariant: non-null once the thread state exists, and the greenlet it points at
    /// is kept alive (module docs).
    current: Cell<*const Inner>,
    /// Is a trace hook installed (and not running)? Set by `trace`.
    trace_on: Cell<bool>,
    /// This thread's monitor probe (null until the thread state exists).
    probe: Cell<*const super::probe::Probe>,
    /// Mailbox: the target.
    to: Cell<*const Inner>,
    /// Mailbox: `OWNS_TO | HAS_ORIGIN | EVENT_THROW | BOXED | KIND_*`.
    flags: Cell<u8>,
    /// Mailbox: the sender (one strong count) if `HAS_ORIGIN`.
    origin: Cell<*const Inner>,
    /// Mailbox: `Box::into_raw` of the value (`KIND_VALUE | BOXED`), of the `Box<Error>`
    /// (`KIND_THROW`) or of a `Box<Box<dyn Any + Send>>` (`KIND_PANIC`), as `dyn Any`;
    /// unused (not even read) for `()` and `KIND_KILL`, so that a switch with `()`
    /// moves no pointer through it.
    data: Cell<*mut dyn Any>,
}

impl Hot {
    const fn new() -> Hot {
        Hot {
            current: Cell::new(ptr::null()),
            trace_on: Cell::new(false),
            probe: Cell::new(ptr::null()),
            to: Cell::new(ptr::null()),
            flags: Cell::new(0),
            origin: Cell::new(ptr::null()),
            data: Cell::new(ptr::null_mut::<()>() as *mut dyn Any),
        }
    }

    /// Makes `p` the running greenlet and tells the monitor's probe (a switch).
    #[inline(always)]
    fn set_current(&self, p: *const Inner) {
        self.current.set(p);
        let probe = self.probe.get();
        if !probe.is_null() {
            // SAFETY: `probe` points into this thread's probe `Arc`, kept by `probe::PROBE`
            // for the life of the thread.
            unsafe { (*probe).record_switch() };
        }
    }

    /// Posts a plain value to `to`: no owned handles, no trace origin (the fast path).
    #[inline(always)]
    fn post_value(&self, to: *const Inner, value: Value) {
        self.to.set(to);
        match value.into_raw() {
            None => self.flags.set(KIND_VALUE),
            Some(data) => {
                self.flags.set(KIND_VALUE | BOXED);
                self.data.set(data);
            }
        }
    }

    /// The value of a `KIND_VALUE` message with these `flags`.
    ///
    /// # Safety
    /// Only once per posted `KIND_VALUE` message, on its way out of the mailbox.
    #[inline(always)]
    unsafe fn value(&self, flags: u8) -> Value {
        let raw = (flags & BOXED != 0).then(|| self.data.get());
        // SAFETY: a boxed value's `data` is `Value::into_raw` of the value posted, and
        // per the contract this is the one take that follows that post.
        unsafe { Value::from_raw(raw) }
    }

    /// If the message that just landed is a plain value for `me`, takes it.
    #[inline(always)]
    fn take_value(&self, me: *const Inner) -> Option<Value> {
        let flags = self.flags.get();
        if ptr::eq(self.to.get(), me) && flags & SLOW == 0 {
            // SAFETY: a `KIND_VALUE` message that just landed: this is its one take.
            Some(unsafe { self.value(flags) })
        } else {
            None
        }
    }

    /// Puts `msg` in the mailbox, right before a machine switch.
    #[inline]
    fn post(&self, msg: Msg) {
        let Msg {
            target,
            keep,
            origin,
            event,
            payload,
        } = msg;
        let mut flags = match event {
            TraceEvent::Switch => 0,
            TraceEvent::Throw => EVENT_THROW,
        };
        // The mailbox takes over the strong counts of `keep` and `origin`.
        if keep.is_some() {
            flags |= OWNS_TO;
        }
        std::mem::forget(keep);
        if let Some(o) = origin {
            flags |= HAS_ORIGIN;
            self.origin.set(Rc::as_ptr(&ManuallyDrop::new(o).inner));
        }
        let (kind, data): (u8, Option<*mut dyn Any>) = match payload {
            Payload::Value(v) => match v.into_raw() {
                None => (KIND_VALUE, None),
                Some(data) => (KIND_VALUE | BOXED, Some(data)),
            },
            Payload::Throw(e) => (KIND_THROW, Some(Box::into_raw(e as Box<dyn Any>))),
            Payload::Kill => (KIND_KILL, None),
            Payload::Panic(p) => (KIND_PANIC, Some(Box::into_raw(Box::new(p) as Box<dyn Any>))),
        };
        self.to.set(target);
        self.flags.set(flags | kind);
        if let Some(data) = data {
            self.data.set(data);
        }
    }

    /// Takes the message posted by the other side of the switch that just landed here.
    #[inline]
    fn take(&self) -> Msg {
        let target = self.to.get();
        let flags = self.flags.get();
        let keep = (flags & OWNS_TO != 0).then(|| {
            // SAFETY: `post` forgot a handle to `target` and recorded it in `OWNS_TO`;
            // this rebuilds that handle (once: every take follows exactly one post).
            Greenlet::from_rc(unsafe { Rc::from_raw(target) })
        });
        let origin = (flags & HAS_ORIGIN != 0).then(|| {
            // SAFETY: as for `keep`: the handle `post` forgot in `origin`.
            Greenlet::from_rc(unsafe { Rc::from_raw(self.origin.get()) })
        });
        let data = self.data.get();
        // SAFETY: `data` is what `post` (or `post_value`) made for this kind with
        // `Box::into_raw`, not taken since (one take per post); each arm rebuilds the
        // box it came from.
        let payload = match flags & KIND_MASK {
            KIND_VALUE => Payload::Value(unsafe { self.value(flags) }),
            KIND_THROW => Payload::Throw(unsafe { Box::from_raw(data as *mut Error) }),
            KIND_KILL => Payload::Kill,
            _ => Payload::Panic(*unsafe { Box::from_raw(data as *mut Box<dyn Any + Send>) }),
        };
        Msg {
            target,
            keep,
            origin,
            event: if flags & EVENT_THROW != 0 {
                TraceEvent::Throw
            } else {
                TraceEvent::Switch
            },
            payload,
        }
    }
}

thread_local! {
    static HOT: Hot = const { Hot::new() };
    static THREAD: ThreadState = ThreadState::new();
}

/// This thread's [`Hot`] state.
#[inline(always)]
fn hot() -> &'static Hot {
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
    pub(crate) spares: RefCell<super::Spares>,
    /// Greenlets made by `Builder::build_lazy` that have not got their stack yet. While
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
        hot().probe.set(super::probe::init_thread());
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
pub(crate) fn with_thread<R>(f: impl FnOnce(&ThreadState) -> R) -> R {
    THREAD.with(f)
}

/// Like [`with_thread`], but `None` once the thread state has been destroyed.
pub(crate) fn try_with_thread<R>(f: impl FnOnce(&ThreadState) -> R) -> Option<R> {
    THREAD.try_with(f).ok()
}

/// The running greenlet's `Inner`, creating the thread state on first use.
#[inline]
fn current_in(h: &Hot) -> *const Inner {
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
fn traced_origin(h: &Hot) -> Option<Greenlet> {
    if h.trace_on.get() {
        Some(current())
    } else {
        None
    }
}

/// `target.switch(value)` from the running greenlet: returns what is eventually
/// switched back, as `switch` returns it.
///
/// The common cases (no trace hook; the target suspended, unstarted, or our resumer)
/// are inlined into the caller and move only scalars; everything else goes through
/// [`send`].
#[inline(always)]
pub(crate) fn send_value(target: &Greenlet, value: Value) -> Result<Value, Error> {
    let h = hot();
    let me = h.current.get();
    let tp = Rc::as_ptr(&target.inner);
    if !me.is_null() && !ptr::eq(me, tp) && !h.trace_on.get() {
        // SAFETY: the running greenlet is alive while its own code runs (`Hot::current`).
        let me_ref: &Inner = unsafe { &*me };
        if me_ref.forced_by.get().is_null() {
            match target.inner.state.get() {
                // `target` is borrowed for the whole call: it stays alive while it runs.
                State::Suspended => return fast_resume(h, me, tp, value),
                State::Unstarted => return fast_start(h, me, tp, value),
                State::Resuming if !me_ref.yielder.get().is_null() => {
                    return fast_suspend(h, me, tp, value);
                }
                _ => {}
            }
        }
    }
    send(target, TraceEvent::Switch, Payload::Value(value))
}

/// `target.switch`/`throw`/`kill` from the running greenlet: sends `payload` and returns
/// what is eventually switched back, as `switch` returns it. The general path.
#[inline(never)]
pub(crate) fn send(target: &Greenlet, event: TraceEvent, payload: Payload) -> Result<Value, Error> {
    let h = hot();
    let me = current_in(h);
    let tp = Rc::as_ptr(&target.inner);
    if ptr::eq(me, tp) {
        // SAFETY: the running greenlet is alive while its own code runs (`Hot::current`).
        return deliver(payload, unsafe { &*me });
    }
    if target.inner.state.get() == State::Dead {
        return Err(Error::DeadGreenlet {
            id: target.inner.id,
        });
    }
    // A borrowed message: `target` outlives this call, and a borrowed message is only
    // ever resumed from here (see `transfer`).
    let msg = Msg {
        target: tp,
        keep: None,
        origin: traced_origin(h),
        event,
        payload,
    };
    // SAFETY: as above.
    if !unsafe { &*me }.forced_by.get().is_null() {
        return refuse_switch(h, me, msg);
    }
    let reply = transfer(h, me, msg);
    // SAFETY: as above; we are running again.
    deliver(reply, unsafe { &*me })
}

/// `send_value` from the running greenlet `me` to the suspended or unstarted greenlet
/// `tp`: one `resume`. Both pointers come from `Rc::as_ptr`; the caller keeps `tp`
/// alive until we return.
#[inline(always)]
fn fast_resume(h: &Hot, me: *const Inner, tp: *const Inner, value: Value) -> Result<Value, Error> {
    // SAFETY: `me` is running, so alive; `tp` is kept alive by our caller.
    let (me_ref, ti): (&Inner, &Inner) = unsafe { (&*me, &*tp) };
    let mut slot = ti.co.borrow_mut();
    let co = slot.as_mut().expect("a live greenlet owns its coroutine");
    me_ref.state.set(State::Resuming);
    ti.state.set(State::Running);
    h.set_current(tp);
    h.post_value(tp, value);
    let result = co.resume(());
    h.set_current(me);
    me_ref.state.set(State::Running);
    if let CoroutineResult::Return(()) = result {
        drop(slot);
        finished(ti);
    } else {
        drop(slot);
    }
    land(h, me)
}

/// [`fast_resume`] of the unstarted greenlet `tp`: its first switch. A greenlet made by
/// `Builder::build_lazy` gets its coroutine here. Same contract as `fast_resume`. (Kept
/// out of line, so that the switch to a suspended greenlet stays as lean as it can be.)
#[inline(never)]
fn fast_start(h: &Hot, me: *const Inner, tp: *const Inner, value: Value) -> Result<Value, Error> {
    // SAFETY: `tp` is kept alive by our caller (see `fast_resume`).
    let ti: &Inner = unsafe { &*tp };
    if ti.co.borrow().is_some() {
        return fast_resume(h, me, tp, value);
    }
    match make_lazy(ti) {
        Ok(co) => {
            *ti.co.borrow_mut() = Some(co);
            fast_resume(h, me, tp, value)
        }
        Err(death) => {
            drop(value); // never delivered: it died without running
            let parent = ti.live_parent();
            let msg = Msg {
                target: Rc::as_ptr(&parent.inner),
                keep: Some(parent),
                origin: traced_origin(h),
                event: event_of(&death),
                payload: death,
            };
            let reply = transfer(h, me, msg);
            // SAFETY: `me` is the running greenlet, so alive.
            deliver(reply, unsafe { &*me })
        }
    }
}

/// Makes the coroutine of the unstarted greenlet `ti`, built by `Builder::build_lazy`:
/// takes a stack from the pool for it. If none can be mapped, `ti` dies without running
/// and `Err` carries what goes to its parent.
#[inline(never)]
fn make_lazy(ti: &Inner) -> Result<Co, Payload> {
    let body = take_lazy(ti).expect("a live greenlet owns its coroutine");
    match with_thread(|t| t.pool.borrow_mut().get(ti.stack_size)) {
        Ok(mut stack) => {
            stack.set_owner(ti.id, ti.name.as_deref().unwrap_or(""));
            Ok(lazy_coroutine(stack, body))
        }
        Err(e) => {
            ti.state.set(State::Dead);
            let result = match body.upgrade() {
                Some(body) => body.cannot_start(e),
                None => Ok(Value::unit()),
            };
            Err(match result {
                Ok(v) => Payload::Value(v),
                Err(e) => Payload::Throw(Box::new(e)),
            })
        }
    }
}

/// The coroutine of a greenlet built by `Builder::build_lazy`: it runs `body` if `body`
/// still exists when it starts (it holds it weakly until then), else returns `()`.
pub(crate) fn lazy_coroutine(stack: Stack, body: Weak<dyn LazyBody>) -> Co {
    new_coroutine(stack, move |v| match body.upgrade() {
        Some(body) => body.run(v),
        None => Ok(Value::unit()),
    })
}

/// Takes the body of a lazy greenlet that has not got its coroutine yet (see
/// [`ThreadState::lazy_waiting`]).
pub(crate) fn take_lazy(ti: &Inner) -> Option<Weak<dyn LazyBody>> {
    let body = ti.lazy.take();
    if body.is_some() {
        lazy_gone();
    }
    body
}

/// One greenlet fewer waits for its stack (see [`ThreadState::lazy_waiting`]).
pub(crate) fn lazy_gone() {
    try_with_thread(|t| t.lazy_waiting.set(t.lazy_waiting.get() - 1));
}

/// The trace event of a greenlet's death carrying `payload`. As in Python greenlet, where
/// `GreenletExit` becomes the greenlet's result, a killed greenlet's death is a switch.
fn event_of(payload: &Payload) -> TraceEvent {
    match payload {
        Payload::Value(_) => TraceEvent::Switch,
        Payload::Throw(e) if matches!(**e, Error::Killed) => TraceEvent::Switch,
        _ => TraceEvent::Throw,
    }
}

/// `send_value` from the running greenlet `me` to `tp`, above it in the resume chain:
/// one `suspend`. The caller has checked that `me` has a yielder.
#[inline(always)]
fn fast_suspend(h: &Hot, me: *const Inner, tp: *const Inner, value: Value) -> Result<Value, Error> {
    // SAFETY: `me` is running, so alive.
    let me_ref: &Inner = unsafe { &*me };
    let yielder = me_ref.yielder.get();
    me_ref.state.set(State::Suspended);
    h.post_value(tp, value);
    // SAFETY: `yielder` (non-null) was set by our coroutine body from the `&Yielder` it
    // received; it lives on our own stack, which we are running on.
    unsafe { (*yielder).suspend(()) };
    // Whoever resumed us has set `current` and our state back.
    land(h, me)
}

/// What `send_value` returns once a message has landed on `me` after a machine switch: a
/// plain value for us directly, anything else through the router.
#[inline(always)]
fn land(h: &Hot, me: *const Inner) -> Result<Value, Error> {
    match h.take_value(me) {
        Some(v) => Ok(v),
        None => land_slow(h, me),
    }
}

#[cold]
#[inline(never)]
fn land_slow(h: &Hot, me: *const Inner) -> Result<Value, Error> {
    let msg = h.take();
    let reply = transfer(h, me, msg);
    // SAFETY: `me` is the running greenlet, so alive.
    deliver(reply, unsafe { &*me })
}

/// The greenlet `ti`'s coroutine has just returned: it is dead; its stack goes back to
/// the pool. (Its result is in the mailbox.)
#[cold]
fn finished(ti: &Inner) {
    ti.state.set(State::Dead);
    let co = ti.co.borrow_mut().take().expect("just resumed");
    recycle(co);
}

/// Turns a payload received at a switch point into what `switch` returns.
#[inline]
pub(crate) fn deliver(payload: Payload, me: &Inner) -> Result<Value, Error> {
    match payload {
        Payload::Value(v) => Ok(v),
        other => deliver_cold(other, me),
    }
}

#[cold]
fn deliver_cold(payload: Payload, me: &Inner) -> Result<Value, Error> {
    match payload {
        Payload::Value(v) => Ok(v),
        Payload::Throw(e) => Err(*e),
        // The main greenlet cannot be unwound: it owns the thread.
        Payload::Kill if me.is_main => Err(Error::Killed),
        Payload::Kill if std::thread::panicking() => {
            // We may be in a destructor that runs during an unwind (the greenlet switched
            // away from it), where unwinding again aborts the process: the kill is an
            // error instead. If the greenlet then dies of that unwind, it died killed.
            me.killed_unwinding.set(true);
            Err(Error::Killed)
        }
        Payload::Kill => std::panic::resume_unwind(Box::new(GreenletExit)),
        Payload::Panic(p) => std::panic::resume_unwind(p),
    }
}

/// Sends `msg` from the running greenlet `me` (from `Rc::as_ptr`) and returns what is
/// eventually switched back to it.
///
/// A borrowed message (`keep == None`) is only resumed from this call, in the frame of
/// the `send` whose `&Greenlet` keeps its target alive: other greenlets only see it on
/// its way up the resume chain (its target is `Resuming`, and only `suspend`s follow
/// until it lands), and every step that could run user code owns it first.
fn transfer(h: &Hot, me: *const Inner, mut msg: Msg) -> Payload {
    loop {
        if ptr::eq(msg.target, me) {
            return arrive(msg);
        }
        // SAFETY: the target is alive (the `Msg::target` invariant).
        let target: &Inner = unsafe { &*msg.target };
        match target.state.get() {
            State::Resuming => msg = suspend(h, me, msg),
            State::Suspended => msg = resume(h, me, msg),
            State::Unstarted if matches!(msg.payload, Payload::Value(_)) => {
                let lazy = target.co.borrow().is_none();
                if lazy {
                    match make_lazy(target) {
                        Ok(co) => *target.co.borrow_mut() = Some(co),
                        Err(death) => {
                            // It died without running: its result goes to its parent.
                            msg.retarget(target.live_parent());
                            msg.event = event_of(&death);
                            msg.payload = death; // drops the value it never received
                            continue;
                        }
                    }
                }
                msg = resume(h, me, msg);
            }
            State::Unstarted => throw_unstarted(&mut msg),
            // It died while the message was in flight: its nearest live ancestor gets it.
            State::Dead => {
                let parent = target.live_parent();
                msg.retarget(parent);
            }
            State::Running => unreachable!("only the current greenlet is running"),
        }
    }
}

/// Most switches a greenlet being killed by force may attempt from destructors that run
/// while it unwinds (each fails with `Err(Killed)`) before it is given up as unkillable.
const FORCED_SWITCH_LIMIT: u32 = 1000;

/// A switch attempted by the greenlet `me` while it is being killed by force (see
/// [`force_kill`]): it does not leave `me`. From a destructor running during an unwind
/// it fails with `Err(Killed)` (unwinding from there would abort the process). Anywhere
/// else `me` has caught the unwind meant to end it: the kill has failed, and `me` goes
/// back to its killer for good, which leaks its stack.
#[cold]
#[inline(never)]
fn refuse_switch(h: &Hot, me: *const Inner, msg: Msg) -> Result<Value, Error> {
    // SAFETY: `me` is the running greenlet, so alive.
    let me_ref: &Inner = unsafe { &*me };
    let attempts = me_ref.forced_switches.get().saturating_add(1);
    me_ref.forced_switches.set(attempts);
    drop(msg); // its value is never delivered
    if std::thread::panicking() && attempts <= FORCED_SWITCH_LIMIT {
        return Err(Error::Killed);
    }
    let killer = me_ref.forced_by.get();
    let back = Msg {
        target: killer,
        // SAFETY: the killer is alive: it resumed us and waits for our death (`force_kill`).
        keep: Some(unsafe { clone_handle(killer) }),
        origin: traced_origin(h),
        event: TraceEvent::Switch,
        payload: Payload::Value(Value::unit()),
    };
    // The killer leaks our stack: this does not return, unless the thread is torn down.
    let reply = transfer(h, me, back);
    deliver(reply, me_ref)
}

/// An error or a kill thrown into an unstarted greenlet: it never runs, it dies, and its
/// death goes on to its parent (a kill as `Err(Killed)`: never as a kill of the parent).
#[cold]
fn throw_unstarted(msg: &mut Msg) {
    // SAFETY: the target is alive (the `Msg::target` invariant).
    let target: &Inner = unsafe { &*msg.target };
    let co = target.co.borrow_mut().take();
    drop(take_lazy(target)); // a lazy greenlet's body is not run, nor dropped, here
    target.state.set(State::Dead);
    if matches!(msg.payload, Payload::Kill) {
        msg.payload = Payload::Throw(Box::new(Error::Killed));
    }
    msg.own(); // now owned: the trace hook and dropping the closure may run user code
    let dead = msg.keep.clone().expect("an owned message keeps its target");
    msg.retarget(target.live_parent());
    msg.event = event_of(&msg.payload);
    if let Some(origin) = msg.origin.take() {
        // Traced as Python greenlet traces it: the throw reaches the greenlet, then its
        // death leaves it for its parent. (The first hook call runs here, on the
        // thrower's stack: the greenlet never had one.)
        trace::call(TraceEvent::Throw, &origin, &dead);
        msg.origin = Some(dead);
    }
    if let Some(co) = co {
        recycle(co);
    }
}

/// Hands `msg` from the running greenlet `me` to its resumer (the target is above us in
/// the resume chain) and returns the next message that reaches us.
fn suspend(h: &Hot, me: *const Inner, msg: Msg) -> Msg {
    // SAFETY: `me` is the running greenlet, so alive.
    let me_ref: &Inner = unsafe { &*me };
    let yielder = me_ref.yielder.get();
    assert!(
        !yielder.is_null(),
        "the main greenlet is never below another greenlet"
    );
    me_ref.state.set(State::Suspended);
    h.post(msg);
    // SAFETY: `yielder` was set by our coroutine body from the `&Yielder` it received;
    // it lives on our own stack, which we are running on.
    unsafe { (*yielder).suspend(()) };
    // Whoever resumed us has set `current` and our state back.
    h.take()
}

/// Resumes `msg.target` from the running greenlet `me` (from `Rc::as_ptr`) and returns
/// the message it sends back.
fn resume(h: &Hot, me: *const Inner, mut msg: Msg) -> Msg {
    // Keeps the target alive while it runs, if the message owned it; otherwise the
    // `send` frame that called us does (see `transfer`).
    let keep = msg.keep.take();
    let tp = msg.target;
    // SAFETY: `me` is running, so alive; the target is alive (the `Msg::target`
    // invariant) and stays so until we are back (`keep`, or the borrow in our `send`).
    let (me_ref, ti): (&Inner, &Inner) = unsafe { (&*me, &*tp) };
    let mut slot = ti.co.borrow_mut();
    let co = slot.as_mut().expect("a live greenlet owns its coroutine");
    me_ref.state.set(State::Resuming);
    ti.state.set(State::Running);
    h.set_current(tp);
    h.post(msg);
    let result = co.resume(());
    h.set_current(me);
    me_ref.state.set(State::Running);
    let mut msg = h.take();
    drop(slot);
    if let CoroutineResult::Return(()) = result {
        finished(ti);
    }
    if let Some(keep) = keep {
        // Dropping it may kill it (its last handle), which runs user code.
        msg.own();
        drop(keep);
    }
    msg
}

/// Runs on arrival at the target: the trace hook, then the payload.
#[inline]
fn arrive(msg: Msg) -> Payload {
    let Msg {
        keep,
        origin,
        event,
        payload,
        ..
    } = msg;
    if let Some(origin) = origin {
        trace::call(event, &origin, &current());
    }
    drop(keep);
    payload
}

/// Gives a finished (or never-started) coroutine's stack back to the thread's pool.
pub(crate) fn recycle(mut co: Co) {
    co.force_unwind(); // no-op when finished; drops the closure when never started
    let stack = co.into_stack();
    if let Some(Err(stack)) = try_with_thread(|t| match t.pool.try_borrow_mut() {
        Ok(mut pool) => {
            pool.put(stack);
            Ok(())
        }
        Err(_) => Err(stack),
    }) {
        // The pool is busy (cannot happen today) or gone: leak the slot rather than free it
        // under someone's feet.
        std::mem::forget(stack);
    }
}

/// Builds the coroutine that runs `f` for the greenlet behind `Inner`.
pub(crate) fn new_coroutine<F>(stack: Stack, f: F) -> Co
where
    F: FnOnce(Value) -> Result<Value, Error> + 'static,
{
    Coroutine::with_stack(stack, move |yielder: &GreenYielder, ()| {
        let h = hot();
        // SAFETY: our resumer set `current` to us and keeps us alive while we run.
        let me: &Inner = unsafe { &*h.current.get() };
        me.yielder.set(yielder);
        // The first message is taken at once; a traced one is delivered inside the catch
        // below, so that a kill reaching the trace hook kills this greenlet.
        let first = h.take_value(me).ok_or_else(|| h.take());
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let value = match first {
                Ok(v) => v,
                Err(msg) => match arrive(msg) {
                    Payload::Value(v) => v,
                    _ => unreachable!("errors thrown into unstarted greenlets never start them"),
                },
            };
            f(value)
        }));
        let payload = match outcome {
            Ok(Ok(v)) => Payload::Value(v),
            Ok(Err(e)) => Payload::Throw(Box::new(e)),
            Err(p) if p.is::<GreenletExit>() || me.killed_unwinding.get() => {
                Payload::Throw(Box::new(Error::Killed))
            }
            Err(p) => Payload::Panic(p),
        };
        me.state.set(State::Dead);
        let payload = match payload {
            // The common death: a plain value for a parent in the resume chain (the hub
            // that ran a spawned greenlet), with no trace hook. The chain keeps the parent
            // alive and the message only travels up it, so it needs no handle: the
            // resumer lands it as a plain switch (`take_value`).
            Payload::Value(v) if !h.trace_on.get() => match resuming_parent(me) {
                Some(parent) => {
                    h.post_value(parent, v);
                    return;
                }
                None => Payload::Value(v),
            },
            other => other,
        };
        let parent = me.live_parent();
        // Posted last: nothing with drop glue is left to run before the switch back.
        h.post(Msg {
            target: Rc::as_ptr(&parent.inner),
            keep: Some(parent),
            origin: traced_origin(h),
            event: event_of(&payload),
            payload,
        });
    })
}

/// `me`'s parent if it is in the resume chain (`Resuming`): alive until a message sent
/// up the chain reaches it.
#[inline]
fn resuming_parent(me: &Inner) -> Option<*const Inner> {
    let parent = me.parent.borrow();
    let p = &parent.as_ref()?.inner;
    (p.state.get() == State::Resuming).then_some(Rc::as_ptr(p))
}

/// Kills `g` because its last handle is being dropped: Python's `GreenletExit` on GC.
///
/// Its parent is the running greenlet while it dies, so that its death returns here, and
/// its own parent afterwards (as in Python). A greenlet that catches the kill and comes
/// back alive is killed again by force ([`force_kill`]), unless it got a new handle
/// meanwhile (it stored `getcurrent()` somewhere): then it lives on, as in Python.
#[cold]
pub(crate) fn kill_on_drop(g: &Greenlet) {
    let inner: &Inner = &g.inner;
    if try_with_thread(|_| ()).is_none() || hot().current.get().is_null() {
        // The thread is going away: nothing can run any more. Leak the greenlet's stack.
        leak_stack(inner);
        return;
    }
    let me = current();
    let h = hot();
    let parent = inner.parent.replace(Some(me.clone()));
    // A borrowed message: `g` outlives this call.
    let msg = Msg {
        target: Rc::as_ptr(&g.inner),
        keep: None,
        origin: traced_origin(h),
        event: TraceEvent::Throw,
        payload: Payload::Kill,
    };
    let reply = transfer(h, Rc::as_ptr(&me.inner), msg);
    report_panic(inner, &reply, "while being unwound on drop");
    drop(reply);
    if inner.state.get() != State::Dead && Rc::strong_count(&g.inner) == 1 {
        force_kill(&me, g);
    }
    if let Some(parent) = parent {
        // Refused only if a cycle was made while it died: then it keeps the parent it has.
        let _ = g.set_parent(&parent);
    }
}

/// Kills `g` (suspended, and alive after one kill) once more, with its switches failing
/// meanwhile (see [`refuse_switch`]), so that the unwind runs to its end. If it catches
/// that unwind as well, it cannot be ended: its stack is leaked, with a report, rather
/// than left to spin.
#[cold]
fn force_kill(me: &Greenlet, g: &Greenlet) {
    let gi: &Inner = &g.inner;
    eprintln!(
        "greenhub: greenlet #{} survived a kill; killing it again, with its switches failing",
        gi.id
    );
    gi.forced_by.set(Rc::as_ptr(&me.inner));
    gi.forced_switches.set(0);
    let h = hot();
    // A borrowed message: `g` outlives this call.
    let msg = Msg {
        target: Rc::as_ptr(&g.inner),
        keep: None,
        origin: traced_origin(h),
        event: TraceEvent::Throw,
        payload: Payload::Kill,
    };
    let reply = transfer(h, Rc::as_ptr(&me.inner), msg);
    report_panic(gi, &reply, "while being unwound by force");
    drop(reply);
    gi.forced_by.set(ptr::null());
    if gi.state.get() != State::Dead {
        eprintln!(
            "greenhub: greenlet #{} caught the unwind meant to end it and cannot be ended; \
             its stack is leaked",
            gi.id
        );
        leak_stack(gi);
    }
}

/// Says on stderr that the greenlet `gi` panicked `when`, if `reply` is its panic.
fn report_panic(gi: &Inner, reply: &Payload, when: &str) {
    if let Payload::Panic(p) = reply {
        let msg = crate::error::panic_payload_str(p.as_ref()).unwrap_or("<non-string payload>");
        eprintln!("greenhub: greenlet #{} panicked {when}: {msg}", gi.id);
    }
}

/// Gives up on the suspended greenlet `gi`: it is dead from now on, and its stack (with
/// everything on it) is never unwound nor reused.
fn leak_stack(gi: &Inner) {
    if let Some(co) = gi.co.borrow_mut().take() {
        std::mem::forget(co);
    }
    gi.state.set(State::Dead);
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
pub(crate) fn signal_safe_identity() -> super::probe::Identity {
    let mut identity = super::probe::Identity {
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
