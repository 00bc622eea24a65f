//! The message a switch carries ([`Msg`], [`Payload`]) and the per-thread [`Hot`]
//! mailbox it crosses the machine switch in, taken apart into scalars.

use std::any::Any;
use std::cell::Cell;
use std::mem::ManuallyDrop;
use std::ptr;
use std::rc::Rc;

use crate::error::Error;
use crate::greenlet::probe::Probe;
use crate::greenlet::{Greenlet, Inner, TraceEvent, Value};

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
    /// [`send`](super::router::send) call that made the message, or by the resume chain
    /// (module docs).
    pub(super) target: *const Inner,
    /// A handle to `target` owned by the message, when nothing else is known to keep
    /// it alive (a rerouted message, a dying greenlet's result). When `Some`, `target`
    /// is its `Rc::as_ptr`.
    pub(super) keep: Option<Greenlet>,
    /// The sender, carried only while a trace hook is installed (it is what the hook sees).
    pub(super) origin: Option<Greenlet>,
    pub(super) event: TraceEvent,
    pub(super) payload: Payload,
}

impl Msg {
    /// Makes the message own a handle to its target (so that user code run while it is
    /// being routed cannot free the target under it).
    #[cold]
    pub(super) fn own(&mut self) {
        if self.keep.is_none() {
            // SAFETY: the target is alive now (the `target` field's invariant).
            self.keep = Some(unsafe { clone_handle(self.target) });
        }
    }

    /// Sends the message to `to` instead (a handle the message now owns). The old
    /// target's handle, if the message owned one, is dropped after the new one is in
    /// place, so drop glue it runs sees a message that owns its target.
    #[cold]
    pub(super) fn retarget(&mut self, to: Greenlet) {
        self.target = Rc::as_ptr(&to.inner);
        drop(self.keep.replace(to));
    }
}

/// A new strong handle to the greenlet behind `p`.
///
/// # Safety
/// `p` must come from `Rc::as_ptr` of an `Rc<Inner>` that is alive.
#[inline]
pub(super) unsafe fn clone_handle(p: *const Inner) -> Greenlet {
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
    pub(super) current: Cell<*const Inner>,
    /// Is a trace hook installed (and not running)? Set by `trace`.
    pub(super) trace_on: Cell<bool>,
    /// This thread's monitor probe (null until the thread state exists).
    pub(super) probe: Cell<*const Probe>,
    /// Mailbox: the target.
    pub(super) to: Cell<*const Inner>,
    /// Mailbox: `OWNS_TO | HAS_ORIGIN | EVENT_THROW | BOXED | KIND_*`.
    pub(super) flags: Cell<u8>,
    /// Mailbox: the sender (one strong count) if `HAS_ORIGIN`.
    pub(super) origin: Cell<*const Inner>,
    /// Mailbox: `Box::into_raw` of the value (`KIND_VALUE | BOXED`), of the `Box<Error>`
    /// (`KIND_THROW`) or of a `Box<Box<dyn Any + Send>>` (`KIND_PANIC`), as `dyn Any`;
    /// neither written nor read for `()` and `KIND_KILL` (it keeps a stale pointer
    /// then), so that a switch with `()` moves no pointer through it.
    pub(super) data: Cell<*mut dyn Any>,
}

impl Hot {
    pub(super) const fn new() -> Hot {
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
    pub(super) fn set_current(&self, p: *const Inner) {
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
    pub(super) fn post_value(&self, to: *const Inner, value: Value) {
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
    pub(super) unsafe fn value(&self, flags: u8) -> Value {
        let raw = (flags & BOXED != 0).then(|| self.data.get());
        // SAFETY: a boxed value's `data` is `Value::into_raw` of the value posted, and
        // per the contract this is the one take that follows that post.
        unsafe { Value::from_raw(raw) }
    }

    /// If the message that just landed is a plain value for `me`, takes it.
    #[inline(always)]
    pub(super) fn take_value(&self, me: *const Inner) -> Option<Value> {
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
    pub(super) fn post(&self, msg: Msg) {
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
    pub(super) fn take(&self) -> Msg {
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
        // SAFETY: for the kinds that carry a box, `data` is what `post` (or `post_value`)
        // made for this kind with `Box::into_raw`, not taken since (one take per post);
        // each arm rebuilds the box it came from, and only those arms read `data`.
        let payload = match flags & KIND_MASK {
            // SAFETY: as above, for a value.
            KIND_VALUE => Payload::Value(unsafe { self.value(flags) }),
            // SAFETY: as above, for the `Box<Error>` of a throw.
            KIND_THROW => Payload::Throw(unsafe { Box::from_raw(self.data.get() as *mut Error) }),
            KIND_KILL => Payload::Kill,
            _ => {
                let data = self.data.get() as *mut Box<dyn Any + Send>;
                // SAFETY: as above, for the `Box<Box<dyn Any + Send>>` of a panic.
                Payload::Panic(*unsafe { Box::from_raw(data) })
            }
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

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use super::*;
    use crate::greenlet::getcurrent;

    /// Posts `msg` into a fresh mailbox and takes it back out.
    fn round_trip(msg: Msg) -> Msg {
        let hot = Hot::new();
        hot.post(msg);
        hot.take()
    }

    fn describe(p: &Payload) -> String {
        match p {
            Payload::Value(v) if v.is_unit() => "()".to_string(),
            Payload::Value(v) => format!("{:?}", v.downcast_ref::<String>()),
            Payload::Throw(e) => format!("throw {e}"),
            Payload::Kill => "kill".to_string(),
            Payload::Panic(p) => format!("panic {:?}", p.downcast_ref::<&str>()),
        }
    }

    #[test]
    fn every_kind_of_message_survives_packing() {
        let to = Greenlet::new(|_| Ok(()));
        let from = getcurrent();
        let (to_count, from_count) = (Rc::strong_count(&to.inner), Rc::strong_count(&from.inner));
        let payloads = || {
            [
                Payload::Value(Value::unit()),
                Payload::Value(Value::new("text".to_string())),
                Payload::Throw(Box::new(Error::custom("boom"))),
                Payload::Kill,
                Payload::Panic(Box::new("panicked")),
            ]
        };
        for owned in [false, true] {
            for traced in [false, true] {
                for event in [TraceEvent::Switch, TraceEvent::Throw] {
                    for payload in payloads() {
                        let before = describe(&payload);
                        let msg = round_trip(Msg {
                            target: Rc::as_ptr(&to.inner),
                            keep: owned.then(|| to.clone()),
                            origin: traced.then(|| from.clone()),
                            event,
                            payload,
                        });
                        assert!(ptr::eq(msg.target, Rc::as_ptr(&to.inner)));
                        assert_eq!(msg.keep.as_ref(), owned.then_some(&to));
                        assert_eq!(msg.origin.as_ref(), traced.then_some(&from));
                        assert_eq!(msg.event, event);
                        assert_eq!(describe(&msg.payload), before);
                    }
                }
            }
        }
        // Every handle the mailbox took over came back out (and was dropped since).
        assert_eq!(Rc::strong_count(&to.inner), to_count);
        assert_eq!(Rc::strong_count(&from.inner), from_count);
    }

    #[test]
    fn only_a_plain_value_for_the_receiver_lands_on_the_fast_path() {
        let me = getcurrent();
        let other = Greenlet::new(|_| Ok(()));
        let hot = Hot::new();
        let me_ptr = Rc::as_ptr(&me.inner);
        hot.post_value(me_ptr, Value::new(7_u8));
        assert_eq!(hot.take_value(me_ptr).unwrap().downcast::<u8>().unwrap(), 7);
        hot.post_value(me_ptr, Value::unit());
        assert!(hot.take_value(me_ptr).unwrap().is_unit());
        // For another greenlet: left for the router.
        hot.post_value(Rc::as_ptr(&other.inner), Value::new(8_u8));
        assert!(hot.take_value(me_ptr).is_none());
        assert_eq!(describe_value(hot.take()), Some(8));
        // A value that owns its target's handle, a traced one, a kill: the slow path.
        let slow = [
            (Some(me.clone()), None, Payload::Value(Value::new(9_u8))),
            (None, Some(me.clone()), Payload::Value(Value::new(9_u8))),
            (None, None, Payload::Kill),
        ];
        for (keep, origin, payload) in slow {
            hot.post(Msg {
                target: me_ptr,
                keep,
                origin,
                event: TraceEvent::Switch,
                payload,
            });
            assert!(hot.take_value(me_ptr).is_none());
            drop(hot.take());
        }
    }

    fn describe_value(msg: Msg) -> Option<u8> {
        match msg.payload {
            Payload::Value(v) => v.downcast::<u8>().ok(),
            _ => None,
        }
    }
}
