//! Killing a greenlet whose last handle is dropped (Python's `GreenletExit` on garbage
//! collection), by force if it survives, and giving it up if even that fails.

use std::ptr;
use std::rc::Rc;

use super::mailbox::{FORCING, Hot, Msg, Payload};
use super::router::transfer;
use super::thread::{current, hot, traced_origin, try_with_thread};
use crate::greenlet::{Greenlet, Inner, State, TraceEvent};

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
/// meanwhile (see `router::refuse_switch`), so that the unwind runs to its end. If it
/// catches that unwind as well, it cannot be ended: its stack is leaked, with a report,
/// rather than left to spin.
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
    // Every switch takes the general path until the kill is over: it refuses the
    // killed greenlet's switches.
    let _forcing = Forcing::start(h);
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

/// A kill by force in progress: counted in `Hot::slow` while it lives.
struct Forcing<'h>(&'h Hot);

impl<'h> Forcing<'h> {
    fn start(h: &'h Hot) -> Self {
        h.slow.set(h.slow.get() + FORCING);
        Forcing(h)
    }
}

impl Drop for Forcing<'_> {
    fn drop(&mut self) {
        self.0.slow.set(self.0.slow.get() - FORCING);
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
    if let Some(co) = gi.co.take(gi.state.get()) {
        std::mem::forget(co);
    }
    gi.state.set(State::Dead);
}
