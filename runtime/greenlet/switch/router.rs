//! The router: `switch`, `throw` and `kill` from the running greenlet. The common cases
//! are inlined fast paths that move only scalars; everything else goes through
//! [`transfer`], which walks a message up or down the resume chain to its target.

use std::ptr;
use std::rc::Rc;

use corosensei::CoroutineResult;

use super::coroutine::{finished, make_lazy, recycle, take_lazy};
use super::mailbox::{Hot, Msg, Payload, clone_handle};
use super::thread::{current, current_in, hot, traced_origin};
use crate::error::Error;
use crate::greenlet::{Greenlet, GreenletExit, Inner, State, TraceEvent, Value, trace};

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
    resume_with(h, me, tp, |h| h.post_value(tp, value));
    land(h, me)
}

/// The one resume sequence, used by every path that resumes a greenlet: runs the
/// suspended greenlet `tp` (or the unstarted one, its coroutine made) from the running
/// greenlet `me` until something switches back to `me`, with the message `post` writes
/// into the mailbox right before the machine switch. It returns with the reply in the
/// mailbox, for the caller to take; if `tp` finished meanwhile, it is dead and its stack
/// is back in the pool. Both pointers come from `Rc::as_ptr`; the caller keeps `tp`
/// alive until this returns.
#[inline(always)]
fn resume_with(h: &Hot, me: *const Inner, tp: *const Inner, post: impl FnOnce(&Hot)) {
    // SAFETY: `me` is running, so alive; `tp` is kept alive by our caller.
    let (me_ref, ti): (&Inner, &Inner) = unsafe { (&*me, &*tp) };
    let mut slot = ti.co.borrow_mut();
    let co = slot.as_mut().expect("a live greenlet owns its coroutine");
    me_ref.state.set(State::Resuming);
    ti.state.set(State::Running);
    h.set_current(tp);
    post(h);
    let result = co.resume(());
    // Whatever ran meanwhile has suspended back to us: the resume chain ends here again.
    h.set_current(me);
    me_ref.state.set(State::Running);
    drop(slot);
    if let CoroutineResult::Return(()) = result {
        finished(ti); // runs no user code: the reply stays in the mailbox
    }
}

/// The one suspend sequence: the running greenlet `me` (not the main one: it has a
/// yielder) hands control to its resumer, with the message `post` writes into the
/// mailbox right before the machine switch. It returns when something resumes `me`,
/// with that message in the mailbox for the caller to take.
#[inline(always)]
fn suspend_with(me: &Inner, h: &Hot, post: impl FnOnce(&Hot)) {
    let yielder = me.yielder.get();
    debug_assert!(!yielder.is_null());
    me.state.set(State::Suspended);
    post(h);
    // SAFETY: `yielder` (non-null: not the main greenlet) was set by our coroutine body
    // from the `&Yielder` it received; it lives on our own stack, which we run on.
    unsafe { (*yielder).suspend(()) };
    // Whoever resumed us has set `current` and our state back.
}

/// [`fast_resume`] of the unstarted greenlet `tp`: its first switch. A greenlet made by
/// `GreenletBuilder::build_lazy` gets its coroutine here. Same contract as `fast_resume`. (Kept
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

/// The trace event of a greenlet's death carrying `payload`. As in Python greenlet, where
/// `GreenletExit` becomes the greenlet's result, a killed greenlet's death is a switch.
pub(super) fn event_of(payload: &Payload) -> TraceEvent {
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
    suspend_with(unsafe { &*me }, h, |h| h.post_value(tp, value));
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
pub(super) fn transfer(h: &Hot, me: *const Inner, mut msg: Msg) -> Payload {
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
/// `kill::force_kill`): it does not leave `me`. From a destructor running during an unwind
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
    assert!(
        !me_ref.yielder.get().is_null(),
        "the main greenlet is never below another greenlet"
    );
    suspend_with(me_ref, h, |h| h.post(msg));
    h.take()
}

/// Resumes `msg.target` from the running greenlet `me` (from `Rc::as_ptr`) and returns
/// the message it sends back.
fn resume(h: &Hot, me: *const Inner, mut msg: Msg) -> Msg {
    // Keeps the target alive while it runs, if the message owned it; otherwise the
    // `send` frame that called us does (see `transfer`).
    let keep = msg.keep.take();
    let tp = msg.target;
    // The target is alive (the `Msg::target` invariant) and stays so until we are back
    // (`keep`, or the borrow in our `send`).
    resume_with(h, me, tp, |h| h.post(msg));
    let mut msg = h.take();
    if let Some(keep) = keep {
        // Dropping it may kill it (its last handle), which runs user code.
        msg.own();
        drop(keep);
    }
    msg
}

/// Runs on arrival at the target: the trace hook, then the payload.
#[inline]
pub(super) fn arrive(msg: Msg) -> Payload {
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

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::rc::Rc;

    use super::*;
    use crate::greenlet::getcurrent;

    /// What a greenlet's pending switch gave it, in words.
    fn landed(r: std::thread::Result<Result<Value, Error>>) -> String {
        match r {
            Ok(Ok(v)) if v.is_unit() => "value ()".to_string(),
            Ok(Ok(v)) => format!("value {}", v.downcast::<i32>().unwrap()),
            Ok(Err(e)) => format!("error {e}"),
            Err(p) if p.is::<GreenletExit>() => "unwound by a kill".to_string(),
            Err(p) => format!("panic {}", p.downcast_ref::<&str>().unwrap()),
        }
    }

    /// A greenlet that reports, to `seen`, how each switch back to it landed.
    fn receiver(seen: Rc<RefCell<Vec<String>>>) -> Greenlet {
        let main = getcurrent();
        Greenlet::new(move |_| -> Result<(), Error> {
            loop {
                let r = catch_unwind(AssertUnwindSafe(|| main.switch(())));
                seen.borrow_mut().push(landed(r));
            }
        })
    }

    #[test]
    fn each_payload_kind_lands_at_the_switch_point() {
        let seen = Rc::new(RefCell::new(Vec::new()));
        let g = receiver(seen.clone());
        g.switch(()).unwrap();
        for payload in [
            Payload::Value(Value::unit()),
            Payload::Value(Value::new(5)),
            Payload::Throw(Box::new(Error::custom("thrown"))),
            Payload::Kill,
            Payload::Panic(Box::new("a child's panic")),
        ] {
            let event = event_of(&payload);
            send(&g, event, payload).unwrap();
        }
        assert_eq!(
            *seen.borrow(),
            [
                "value ()",
                "value 5",
                "error thrown",
                "unwound by a kill",
                "panic a child's panic",
            ]
        );
        // And through the fast path.
        send_value(&g, Value::new(6)).unwrap();
        assert_eq!(seen.borrow().last().unwrap(), "value 6");
    }

    #[test]
    fn a_payload_for_the_running_greenlet_is_delivered_at_once() {
        let me = getcurrent();
        let v = send(&me, TraceEvent::Switch, Payload::Value(Value::new(3))).unwrap();
        assert_eq!(v.downcast::<i32>().unwrap(), 3);
        let e = send(
            &me,
            TraceEvent::Throw,
            Payload::Throw(Box::new(Error::Timeout)),
        );
        assert!(matches!(e, Err(Error::Timeout)));
        let e = send(&me, TraceEvent::Throw, Payload::Kill);
        assert!(
            matches!(e, Err(Error::Killed)),
            "the main greenlet is never unwound"
        );
    }

    /// The states of `gs`, in order.
    fn states(gs: &[&Greenlet]) -> Vec<State> {
        gs.iter().map(|g| g.inner.state.get()).collect()
    }

    #[test]
    fn the_resume_chain_unwinds_to_the_level_switched_to() {
        use State::{Resuming, Running, Suspended};
        let main = getcurrent();
        let slots: Rc<RefCell<Vec<Greenlet>>> = Rc::default();
        type Log = Rc<RefCell<Vec<(&'static str, Vec<State>)>>>;
        let log: Log = Rc::default();
        // a resumes b, which resumes c: main -> a -> b -> c is the resume chain.
        let (s, l, m) = (slots.clone(), log.clone(), main.clone());
        let c = Greenlet::new(move |_| {
            let (a, b, main) = (s.borrow()[0].clone(), s.borrow()[1].clone(), m);
            l.borrow_mut().push(("c runs", states(&[&main, &a, &b])));
            // Two levels up: b and c are suspended on the way, a runs.
            a.switch("from c")?;
            l.borrow_mut().push(("c again", states(&[&main, &a, &b])));
            // To the root: c and a suspend, main runs; b stays where it was.
            main.switch("c to main")?;
            Ok("c done")
        });
        let s = slots.clone();
        let b = Greenlet::new(move |_| -> Result<(), Error> {
            let c = s.borrow()[2].clone();
            c.switch(())?;
            unreachable!("nobody switches back to b");
        });
        let (s, l2, m) = (slots.clone(), log.clone(), main.clone());
        let a = Greenlet::new(move |_| {
            let (b, c, main) = (s.borrow()[1].clone(), s.borrow()[2].clone(), m);
            let got = b.switch(())?; // lands here when c switches two levels up
            l2.borrow_mut().push(("a lands", states(&[&main, &b, &c])));
            assert_eq!(got.downcast::<&str>().unwrap(), "from c");
            // c is suspended, not in the chain: one resume from here.
            let got = c.switch(())?;
            assert_eq!(got.downcast::<&str>().unwrap(), "main to a");
            Ok("a done")
        });
        slots.borrow_mut().extend([a.clone(), b.clone(), c.clone()]);
        let got = a.switch(()).unwrap();
        assert_eq!(got.downcast::<&str>().unwrap(), "c to main");
        assert_eq!(
            states(&[&main, &a, &b, &c]),
            [Running, Suspended, Suspended, Suspended]
        );
        // a is suspended in its switch into c: resuming it lands there.
        let got = a.switch("main to a").unwrap();
        assert_eq!(got.downcast::<&str>().unwrap(), "a done");
        assert_eq!(
            *log.borrow(),
            [
                ("c runs", vec![Resuming, Resuming, Resuming]),
                ("a lands", vec![Resuming, Suspended, Suspended]),
                ("c again", vec![Resuming, Resuming, Suspended]),
            ]
        );
        assert!(a.is_dead() && !b.is_dead() && !c.is_dead());
        // b's and c's stacks hold each other: end them by hand.
        slots.borrow_mut().clear();
        assert!(matches!(c.kill(), Err(Error::Killed)));
        assert!(matches!(b.kill(), Err(Error::Killed)));
    }
}
