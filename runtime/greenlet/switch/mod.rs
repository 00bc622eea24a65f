//! The switching machinery: per-thread state, messages, and the router that turns
//! symmetric greenlet switches into corosensei's asymmetric resume/suspend.
//!
//! Every greenlet's stack is, when it is not running, paused in exactly one place:
//!
//! * in `Yielder::suspend` ([`State::Suspended`](super::State::Suspended)): it can be
//!   resumed from anywhere;
//! * in `Coroutine::resume` ([`State::Resuming`](super::State::Resuming)): it is an
//!   ancestor of the running greenlet in the *resume chain* (the main greenlet is
//!   always its root).
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
//!
//! # Where things are
//!
//! - [`mailbox`]: the message in flight ([`Msg`], [`Payload`]) and its packing into the
//!   per-thread [`Hot`] mailbox;
//! - [`thread`]: the per-thread state (the running greenlet, the main greenlet, the stack
//!   pool, the registry of greenlet records);
//! - [`router`]: `switch`/`throw`/`kill` — the fast paths, [`transfer`] (which walks a
//!   message to its target) and the one resume sequence they all use;
//! - [`coroutine`]: a greenlet's coroutine: its body, lazy creation, recycling its stack;
//! - [`kill`]: killing a greenlet whose last handle is dropped.

mod coroutine;
mod kill;
mod mailbox;
mod router;
mod thread;

use corosensei::{Coroutine, Yielder};

use super::stack::Stack;

pub(crate) use coroutine::{CoSlot, new_coroutine, recycle, take_lazy};
pub(crate) use kill::kill_on_drop;
pub(crate) use mailbox::Payload;
pub(crate) use router::{send, send_value};
pub(crate) use thread::{
    current, default_stack_size, is_forced_unwind, live_greenlets, register,
    set_default_stack_size, set_trace_on, signal_safe_identity, try_with_thread, unregister,
    with_thread,
};
#[cfg(doc)]
use {
    mailbox::{Hot, Msg},
    router::transfer,
    thread::ThreadState,
};

/// A greenlet's coroutine. Everything it receives and sends goes through the [`Hot`]
/// mailbox, so corosensei only ever moves `()` (see the module docs).
pub(crate) type Co = Coroutine<(), (), (), Stack>;

/// The yielder a greenlet's coroutine body receives.
pub(crate) type GreenYielder = Yielder<(), ()>;
