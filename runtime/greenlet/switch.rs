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

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::ptr;
use std::rc::Rc;

use corosensei::{Coroutine, CoroutineResult, Yielder};

use super::stack::{self, Stack, StackPool};
use super::trace::{self, TraceEvent};
use super::value::Value;
use super::{Greenlet, GreenletExit, Inner, State};
use crate::error::Error;

/// A greenlet's coroutine: it receives messages and yields or returns messages.
pub(crate) type Co = Coroutine<Msg, Msg, Msg, Stack>;

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
    /// The sender, carried only while a trace hook is installed (it is what the hook sees).
    pub(crate) origin: Option<Greenlet>,
    pub(crate) target: Greenlet,
    pub(crate) event: TraceEvent,
    pub(crate) payload: Payload,
}

/// The per-thread state behind the main greenlet.
pub(crate) struct ThreadState {
    pub(crate) main: Greenlet,
    pub(crate) pool: RefCell<StackPool>,
    pub(crate) default_stack_size: Cell<usize>,
}

impl Drop for ThreadState {
    fn drop(&mut self) {
        // From here on nothing can switch on this thread; greenlets still alive are leaked.
        CURRENT.with(|c| c.set(ptr::null()));
    }
}

thread_local! {
    /// The running greenlet. Invariant: non-null once the thread state exists, and the
    /// greenlet it points at is kept alive by a strong handle (the frame that resumed it,
    /// or `ThreadState::main`).
    static CURRENT: Cell<*const Inner> = const { Cell::new(ptr::null()) };
    static THREAD: ThreadState = ThreadState::new();
}

impl ThreadState {
    fn new() -> Self {
        stack::install_overflow_handler();
        let main = Greenlet::new_main();
        CURRENT.with(|c| c.set(Rc::as_ptr(&main.inner)));
        ThreadState {
            main,
            pool: RefCell::new(StackPool::new()),
            default_stack_size: Cell::new(stack::DEFAULT_STACK_SIZE),
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
pub(crate) fn current_ptr() -> *const Inner {
    let p = CURRENT.with(Cell::get);
    if p.is_null() {
        with_thread(|t| Rc::as_ptr(&t.main.inner))
    } else {
        p
    }
}

/// A new handle to the running greenlet.
#[inline]
pub(crate) fn current() -> Greenlet {
    let p = current_ptr();
    // SAFETY: `p` came from `Rc::as_ptr` of a live `Rc<Inner>` (the CURRENT invariant
    // above: the running greenlet is held by a strong handle), so bumping the strong
    // count and rebuilding an `Rc` from it is exactly `Rc::clone`.
    unsafe {
        Rc::increment_strong_count(p);
        Greenlet {
            inner: Rc::from_raw(p),
        }
    }
}

/// The sender to record in a message: the running greenlet, if a trace hook wants it.
#[inline]
pub(crate) fn traced_origin() -> Option<Greenlet> {
    if trace::is_on() {
        Some(current())
    } else {
        None
    }
}

/// Turns a payload received at a switch point into what `switch` returns.
pub(crate) fn deliver(payload: Payload, me: &Inner) -> Result<Value, Error> {
    match payload {
        Payload::Value(v) => Ok(v),
        Payload::Throw(e) => Err(*e),
        // The main greenlet cannot be unwound: it owns the thread.
        Payload::Kill if me.is_main => Err(Error::Killed),
        Payload::Kill => std::panic::resume_unwind(Box::new(GreenletExit)),
        Payload::Panic(p) => std::panic::resume_unwind(p),
    }
}

/// Sends `msg` from the running greenlet and returns what is eventually switched back to it.
pub(crate) fn transfer(mut msg: Msg) -> Payload {
    // SAFETY: the running greenlet stays alive while its own code runs (CURRENT invariant).
    let me: &Inner = unsafe { &*current_ptr() };
    if me.forced_unwind.get() {
        // Being unwound by force: it may not switch away any more.
        std::panic::resume_unwind(Box::new(GreenletExit));
    }
    loop {
        let target: &Inner = &msg.target.inner;
        if ptr::eq(target, me) {
            return arrive(msg);
        }
        match target.state.get() {
            State::Resuming => {
                // The target is above us in the resume chain: hand the message to our resumer.
                let yielder = me.yielder.get();
                assert!(
                    !yielder.is_null(),
                    "the main greenlet is never below another greenlet"
                );
                me.state.set(State::Suspended);
                // SAFETY: `yielder` was set by our coroutine body from the `&Yielder` it
                // received; it lives on our own stack, which we are running on.
                msg = unsafe { (*yielder).suspend(msg) };
                // Whoever resumed us has set CURRENT and our state back.
            }
            State::Unstarted if !matches!(msg.payload, Payload::Value(_)) => {
                // An error thrown into an unstarted greenlet: it never runs, it dies, and the
                // error goes on to its parent.
                let co = target.co.borrow_mut().take();
                target.state.set(State::Dead);
                if let Some(co) = co {
                    recycle(co);
                }
                msg.target = target.live_parent();
            }
            State::Unstarted | State::Suspended => msg = resume(me, msg),
            // It died while the message was in flight: its nearest live ancestor gets it.
            State::Dead => msg.target = target.live_parent(),
            State::Running => unreachable!("only the current greenlet is running"),
        }
    }
}

/// Resumes `msg.target` from the running greenlet `me` and returns the message it sends back.
fn resume(me: &Inner, msg: Msg) -> Msg {
    let target = msg.target.clone(); // keeps the target alive while it runs
    let ti: &Inner = &target.inner;
    let mut slot = ti.co.borrow_mut();
    let co = slot.as_mut().expect("a live greenlet owns its coroutine");
    me.state.set(State::Resuming);
    ti.state.set(State::Running);
    CURRENT.with(|c| c.set(ti));
    let result = co.resume(msg);
    CURRENT.with(|c| c.set(me));
    me.state.set(State::Running);
    match result {
        CoroutineResult::Yield(m) => m,
        CoroutineResult::Return(m) => {
            ti.state.set(State::Dead);
            let co = slot.take().expect("just resumed");
            drop(slot);
            recycle(co);
            m
        }
    }
}

/// Runs on arrival at the target: the trace hook, then the payload.
#[inline]
fn arrive(msg: Msg) -> Payload {
    if let Some(origin) = &msg.origin {
        trace::call(msg.event, origin, &msg.target);
    }
    msg.payload
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
    Coroutine::with_stack(
        stack,
        move |yielder: &Yielder<Msg, Msg>, first: Msg| -> Msg {
            let me_ptr: *const Inner = Rc::as_ptr(&first.target.inner);
            // SAFETY: our resumer holds a strong handle to us for as long as we run.
            let me: &Inner = unsafe { &*me_ptr };
            me.yielder.set(yielder);
            let payload = match arrive(first) {
                Payload::Value(v) => v,
                _ => unreachable!("errors thrown into unstarted greenlets never start them"),
            };
            let outcome =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || f(payload)));
            let payload = match outcome {
                Ok(Ok(v)) => Payload::Value(v),
                Ok(Err(e)) => Payload::Throw(Box::new(e)),
                Err(p) if p.is::<GreenletExit>() => Payload::Throw(Box::new(Error::Killed)),
                // corosensei's own forced unwind must reach its root untouched.
                Err(p) if me.forced_unwind.get() => std::panic::resume_unwind(p),
                Err(p) => Payload::Panic(p),
            };
            me.state.set(State::Dead);
            let origin = traced_origin();
            let target = me.live_parent();
            Msg {
                origin,
                target,
                event: match payload {
                    Payload::Value(_) => TraceEvent::Switch,
                    _ => TraceEvent::Throw,
                },
                payload,
            }
        },
    )
}

/// Kills `g` because its last handle is being dropped: Python's `GreenletExit` on GC.
/// Its parent becomes the running greenlet so that its death returns here.
#[cold]
pub(crate) fn kill_on_drop(g: &Greenlet) {
    let inner: &Inner = &g.inner;
    if try_with_thread(|_| ()).is_none() || CURRENT.with(Cell::get).is_null() {
        // The thread is going away: nothing can run any more. Leak the greenlet's stack.
        if let Some(co) = inner.co.borrow_mut().take() {
            std::mem::forget(co);
        }
        return;
    }
    let me = current();
    *inner.parent.borrow_mut() = Some(me.clone());
    let reply = transfer(Msg {
        origin: traced_origin(),
        target: g.clone(),
        event: TraceEvent::Throw,
        payload: Payload::Kill,
    });
    if let Payload::Panic(p) = &reply {
        let msg = crate::error::panic_payload_str(p.as_ref()).unwrap_or("<non-string payload>");
        eprintln!(
            "greenhub: greenlet #{} panicked while being unwound on drop: {msg}",
            inner.id
        );
    }
    if inner.state.get() != State::Dead {
        // It caught the kill and switched back to us alive: unwind it by force.
        force_unwind(&me, g);
    }
}

/// Unwinds a suspended greenlet with corosensei's forced unwind (the last resort).
fn force_unwind(me: &Greenlet, g: &Greenlet) {
    let (mi, gi): (&Inner, &Inner) = (&me.inner, &g.inner);
    let Some(co) = gi.co.borrow_mut().take() else {
        return;
    };
    eprintln!(
        "greenhub: greenlet #{} survived a kill; forcing its stack to unwind",
        gi.id
    );
    gi.forced_unwind.set(true);
    mi.state.set(State::Resuming);
    gi.state.set(State::Running);
    CURRENT.with(|c| c.set(gi));
    // Dropping a suspended coroutine unwinds its stack; its slot is not reused.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(co)));
    CURRENT.with(|c| c.set(mi));
    mi.state.set(State::Running);
    gi.state.set(State::Dead);
    if result.is_err() {
        eprintln!("greenhub: greenlet #{} panicked while being unwound", gi.id);
    }
}
