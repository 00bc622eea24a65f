//! A greenlet's coroutine: the body that runs its function and sends its death to its
//! parent, the lazy creation of spawned greenlets' coroutines, and recycling stacks.

use std::rc::{Rc, Weak};

use corosensei::Coroutine;

use super::mailbox::{Msg, Payload};
use super::router::{arrive, event_of};
use super::thread::{hot, traced_origin, try_with_thread, with_thread};
use super::{Co, GreenYielder};
use crate::error::Error;
use crate::greenlet::stack::Stack;
use crate::greenlet::{GreenletExit, Inner, LazyBody, State, Value};

/// Makes the coroutine of the unstarted greenlet `ti`, built by `GreenletBuilder::build_lazy`:
/// takes a stack from the pool for it. If none can be mapped, `ti` dies without running
/// and `Err` carries what goes to its parent.
#[inline(never)]
pub(super) fn make_lazy(ti: &Inner) -> Result<Co, Payload> {
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

/// The coroutine of a greenlet built by `GreenletBuilder::build_lazy`: it runs `body` if `body`
/// still exists when it starts (it holds it weakly until then), else returns `()`.
pub(crate) fn lazy_coroutine(stack: Stack, body: Weak<dyn LazyBody>) -> Co {
    new_coroutine(stack, move |v| match body.upgrade() {
        Some(body) => body.run(v),
        None => Ok(Value::unit()),
    })
}

/// Takes the body of a lazy greenlet that has not got its coroutine yet (see
/// [`ThreadState::lazy_waiting`](super::thread::ThreadState::lazy_waiting)).
pub(crate) fn take_lazy(ti: &Inner) -> Option<Weak<dyn LazyBody>> {
    let body = ti.lazy.take();
    if body.is_some() {
        lazy_gone();
    }
    body
}

/// One greenlet fewer waits for its stack (see
/// [`ThreadState::lazy_waiting`](super::thread::ThreadState::lazy_waiting)).
pub(crate) fn lazy_gone() {
    try_with_thread(|t| t.lazy_waiting.set(t.lazy_waiting.get() - 1));
}

/// The greenlet `ti`'s coroutine has just returned: it is dead; its stack goes back to
/// the pool. (Its result is in the mailbox.)
#[cold]
pub(super) fn finished(ti: &Inner) {
    ti.state.set(State::Dead);
    let co = ti.co.borrow_mut().take().expect("just resumed");
    recycle(co);
}

/// Gives a finished (or never-started) coroutine's stack back to the thread's pool.
#[inline]
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
        // The pool is borrowed (cannot happen today): leak the slot rather than free it
        // under someone's feet. (When the thread's state is gone the closure is never
        // called and drops `stack`, whose own `Drop` gives the slot back to its pool.)
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
