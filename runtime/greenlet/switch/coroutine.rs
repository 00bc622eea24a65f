//! A greenlet's coroutine: the body that runs its function and sends its death to its
//! parent, the lazy creation of spawned greenlets' coroutines, and recycling stacks.

use std::cell::UnsafeCell;
use std::rc::{Rc, Weak};

use corosensei::Coroutine;

use super::mailbox::{Msg, Payload};
use super::router::{arrive, event_of};
use super::thread::{hot, traced_origin, with_thread};
use super::{Co, GreenYielder};
use crate::error::Error;
use crate::greenlet::stack::Stack;
use crate::greenlet::{GreenletExit, Inner, LazyBody, State, Value};

/// A greenlet's coroutine, or none (the main greenlet, a spawned greenlet before its
/// first switch, a dead one).
///
/// An `UnsafeCell`, not a `RefCell`, so that the switch path sets and clears no borrow
/// flag. The greenlet's state says who may reach the coroutine:
///
/// - while the greenlet is `Running` or `Resuming`, only the `router::resume_with` frame
///   that resumed it, through [`CoSlot::running`]: it sets the greenlet `Running` first,
///   and the reference ends once the greenlet has switched back, with no user code run
///   in between;
/// - in any other state, anyone, through [`take`](CoSlot::take),
///   [`put`](CoSlot::put) and [`is_some`](CoSlot::is_some), which check the state and
///   run no user code while they hold the reference (they drop no coroutine).
pub(crate) struct CoSlot(UnsafeCell<Option<Co>>);

impl CoSlot {
    pub(crate) fn new(co: Option<Co>) -> CoSlot {
        CoSlot(UnsafeCell::new(co))
    }

    /// The coroutine, for the owner of the greenlet's record (no one else can reach it).
    pub(crate) fn get_mut(&mut self) -> &mut Option<Co> {
        self.0.get_mut()
    }

    /// Lends the coroutine of a greenlet in `state` (its current state) to `f`, which
    /// must run no user code.
    #[inline]
    fn with<R>(&self, state: State, f: impl FnOnce(&mut Option<Co>) -> R) -> R {
        assert!(
            !matches!(state, State::Running | State::Resuming),
            "the coroutine of a greenlet in the resume chain is its resumer's"
        );
        // SAFETY: the greenlet is neither running nor in the resume chain, so no
        // `running` reference to its coroutine exists (see the type's docs), and the
        // callers' closures run no user code, so no other reference is made meanwhile.
        f(unsafe { &mut *self.0.get() })
    }

    /// Takes out the coroutine of a greenlet in `state` (not running, not resuming).
    pub(crate) fn take(&self, state: State) -> Option<Co> {
        self.with(state, Option::take)
    }

    /// Gives a coroutine to a greenlet in `state` that has none (not running, not resuming).
    pub(crate) fn put(&self, state: State, co: Co) {
        self.with(state, |slot| {
            assert!(slot.is_none(), "a greenlet has one coroutine");
            *slot = Some(co);
        });
    }

    /// Does the greenlet, in `state` (not running, not resuming), have its coroutine?
    pub(crate) fn is_some(&self, state: State) -> bool {
        self.with(state, |slot| slot.is_some())
    }

    /// The coroutine of the greenlet that is being resumed.
    ///
    /// # Safety
    /// The greenlet has its coroutine and has just been set `Running` by the caller,
    /// which is about to resume it; the reference must end once it has switched back,
    /// with no user code run in between.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    pub(super) unsafe fn running(&self) -> &mut Co {
        // SAFETY: per the contract, this is the only reference (see the type's docs).
        let slot = unsafe { &mut *self.0.get() };
        slot.as_mut().expect("a live greenlet owns its coroutine")
    }
}

/// Gives the unstarted greenlet `ti`, built by `GreenletBuilder::build_lazy`, its coroutine: takes
/// a stack from the pool for it. If none can be mapped, `ti` dies without running and
/// `Err` carries what goes to its parent.
#[inline(never)]
pub(super) fn make_lazy(ti: &Inner) -> Result<(), Payload> {
    let body = take_lazy(ti).expect("an unstarted lazy greenlet keeps its body until it starts");
    match with_thread(|t| t.pool.borrow_mut().get(ti.stack_size)) {
        Ok(mut stack) => {
            stack.set_owner(ti.id, ti.name.as_deref().unwrap_or(""));
            ti.co.put(ti.state.get(), lazy_coroutine(stack, body));
            Ok(())
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

/// The coroutine of a greenlet built by `GreenletBuilder::build_lazy`: it runs `body` if `body`
/// still exists when it starts (it holds it weakly until then), else returns `()`.
fn lazy_coroutine(stack: Stack, body: Weak<dyn LazyBody>) -> Co {
    new_coroutine(stack, move |v| match body.upgrade() {
        Some(body) => body.run(v),
        None => Ok(Value::unit()),
    })
}

/// Takes the body of a lazy greenlet that has not got its coroutine yet.
pub(crate) fn take_lazy(ti: &Inner) -> Option<Weak<dyn LazyBody>> {
    ti.lazy.take()
}

/// The greenlet `ti`'s coroutine has just returned: it is dead; its stack goes back to
/// the pool. (Its result is in the mailbox.)
#[cold]
pub(super) fn finished(ti: &Inner) {
    ti.state.set(State::Dead);
    let co = ti.co.take(ti.state.get()).expect("just resumed");
    recycle(co);
}

/// Gives a finished (or never-started) coroutine's stack back to its pool.
#[inline]
pub(crate) fn recycle(mut co: Co) {
    co.force_unwind(); // no-op when finished; drops the closure when never started
    drop(co.into_stack()); // a `Stack` goes back to its pool when dropped
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
        // The first message is taken at once; a traced one runs the trace hook, where
        // this greenlet may be killed before its function starts.
        let outcome = match h.take_value(me) {
            Some(v) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || f(v))),
            None => start_traced(h.take(), f),
        };
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
            Payload::Value(v) if !h.tracing() => match resuming_parent(me) {
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

/// The start of a greenlet whose first message is not a plain value for it (it carries
/// a trace origin, or a handle to drop): the message lands (the trace hook runs), then
/// `f` runs with its value, all inside one catch, so that a kill or panic in the hook or
/// in drop glue ends the greenlet like one in `f`. (Out of line: the plain start's code
/// stays as lean as before.)
#[cold]
#[inline(never)]
fn start_traced<F>(msg: Msg, f: F) -> std::thread::Result<Result<Value, Error>>
where
    F: FnOnce(Value) -> Result<Value, Error>,
{
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || match arrive(msg) {
        Payload::Value(v) => f(v),
        _ => unreachable!("errors thrown into unstarted greenlets never start them"),
    }))
}

/// `me`'s parent if it is in the resume chain (`Resuming`): alive until a message sent
/// up the chain reaches it.
#[inline]
fn resuming_parent(me: &Inner) -> Option<*const Inner> {
    let parent = me.parent.borrow();
    let p = &parent.as_ref()?.inner;
    (p.state.get() == State::Resuming).then_some(Rc::as_ptr(p))
}
