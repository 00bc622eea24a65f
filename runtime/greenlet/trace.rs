//! `settrace`: a per-thread hook called on every switch and throw.

use std::cell::{Cell, RefCell};

use super::switch::set_trace_on;
use super::{Greenlet, GreenletExit};

/// Why the trace hook is being called (Python greenlet's `"switch"` / `"throw"` events).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TraceEvent {
    /// A value was switched from `origin` to `target` (including a finished greenlet's
    /// result going to its parent, and, as in Python greenlet where `GreenletExit`
    /// becomes the result, the death of a killed greenlet).
    Switch,
    /// An error, kill or panic was raised in `target` by `origin`.
    Throw,
}

/// A trace hook: `hook(event, origin, target)`, called on the target's stack right after
/// the switch lands.
pub type TraceHook = Box<dyn FnMut(TraceEvent, &Greenlet, &Greenlet)>;

thread_local! {
    static HOOK: RefCell<Option<TraceHook>> = const { RefCell::new(None) };
    /// Bumped by every `settrace`, so `call` can tell whether the hook replaced itself.
    static GENERATION: Cell<u64> = const { Cell::new(0) };
}

/// Installs (or, with `None`, removes) this thread's trace hook and returns the previous one.
///
/// The hook runs on every switch and throw on this thread, after the switch, on the
/// target's stack. A hook that panics is removed (with a note on stderr); the panic does
/// not reach the switching code. Switching from inside the hook is not traced; a greenlet
/// killed while its hook call is switched away is unwound from there (the hook stays).
///
/// An error or kill thrown into an unstarted greenlet is traced as in Python: `Throw`
/// from the thrower to it, then its death from it to its parent (that first call runs
/// on the thrower's stack).
///
/// # Examples
///
/// ```
/// use std::cell::RefCell;
/// use std::rc::Rc;
/// use greenhub::{Greenlet, TraceEvent, settrace};
///
/// let log = Rc::new(RefCell::new(Vec::new()));
/// let sink = log.clone();
/// settrace(Some(Box::new(move |event, from: &Greenlet, to: &Greenlet| {
///     sink.borrow_mut().push((event, from.id(), to.id()));
/// })));
/// let g = Greenlet::new(|_| Ok(()));
/// g.switch(()).unwrap();
/// settrace(None);
/// assert_eq!(log.borrow().len(), 2); // main -> g, then g's result -> main
/// assert_eq!(log.borrow()[0].0, TraceEvent::Switch);
/// ```
pub fn settrace(hook: Option<TraceHook>) -> Option<TraceHook> {
    set_trace_on(hook.is_some());
    GENERATION.with(|g| g.set(g.get() + 1));
    HOOK.with(|h| h.replace(hook))
}

/// Calls the hook, if any. The hook is taken out while it runs so that switches made
/// inside it are not traced and cannot re-enter it.
#[cold]
pub(crate) fn call(event: TraceEvent, origin: &Greenlet, target: &Greenlet) {
    let Some(mut hook) = HOOK.with(|h| h.borrow_mut().take()) else {
        return;
    };
    set_trace_on(false);
    let generation = GENERATION.with(Cell::get);
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(event, origin, target)));
    match result {
        Ok(()) => {
            // Put it back unless `settrace` was called meanwhile (by the hook itself).
            if GENERATION.with(Cell::get) == generation {
                HOOK.with(|h| *h.borrow_mut() = Some(hook));
                set_trace_on(true);
            }
        }
        Err(payload) if payload.is::<GreenletExit>() => {
            // The hook switched away and its greenlet was killed meanwhile: the kill is
            // not the hook's failure. The hook stays, and the kill unwinds its greenlet.
            if GENERATION.with(Cell::get) == generation {
                HOOK.with(|h| *h.borrow_mut() = Some(hook));
                set_trace_on(true);
            }
            std::panic::resume_unwind(payload);
        }
        Err(_) => {
            eprintln!("greenhub: the trace hook panicked and has been removed");
            if GENERATION.with(Cell::get) != generation {
                HOOK.with(|h| set_trace_on(h.borrow().is_some()));
            }
        }
    }
}
