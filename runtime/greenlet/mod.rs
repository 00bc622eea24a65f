//! Greenlets: stackful coroutines that switch explicitly, with Python greenlet's rules.
//!
//! A [`Greenlet`] runs a function on its own stack. [`Greenlet::switch`] suspends the
//! running greenlet and runs another; the first switch into a greenlet calls its function
//! with the switched value, later switches make its pending `switch` return the value.
//! When the function returns, its result is switched into the greenlet's parent.
//! The thread's own stack is the *main* greenlet; it has no parent and never dies.
//!
//! ```
//! use greenhub::{Greenlet, getcurrent};
//!
//! let blue = Greenlet::new(|red| {
//!     let red: Greenlet = red.downcast().unwrap();
//!     println!("blue");
//!     red.switch(())?;
//!     println!("blue done"); // never printed: nobody switches back to blue
//!     Ok(())
//! });
//! let red = Greenlet::new(move |_| {
//!     println!("red");
//!     blue.switch(getcurrent())?;
//!     println!("red done");
//!     Ok(())
//! });
//! red.switch(()).unwrap();
//! assert!(red.is_dead());
//! ```
//!
//! Handles are `!Send` and `!Sync`: a greenlet lives and dies on the thread that made it.
//!
//! ```compile_fail
//! let g = greenhub::Greenlet::new(|_| Ok(()));
//! std::thread::spawn(move || g.switch(())); // Greenlet is not Send
//! ```
//!
//! ```compile_fail
//! fn needs_sync<T: Sync>(_: &T) {}
//! needs_sync(&greenhub::getcurrent()); // Greenlet is not Sync
//! ```

mod builder;
pub(crate) mod probe;
mod spares;
mod stack;
mod switch;
mod trace;
mod value;

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::panic::Location;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::Error;
use switch::{CoSlot, GreenYielder, Payload};

pub use builder::GreenletBuilder;
pub(crate) use spares::Spares;
pub use stack::{DEFAULT_STACK_SIZE, GuardMode, MIN_STACK_SIZE, guard_mode};
pub(crate) use switch::{is_forced_unwind, live_greenlets, signal_safe_identity};
pub use trace::{TraceEvent, TraceHook, settrace};
pub use value::Value;

/// The panic payload that unwinds a killed greenlet (Python's `GreenletExit`).
///
/// If code inside a greenlet catches panics with `catch_unwind`, it should let this one
/// go on (`resume_unwind`) so that the kill completes.
#[derive(Debug)]
pub struct GreenletExit;

/// Where a greenlet is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
// (Numbered so that the switch path's two common targets, suspended and resuming, are
// the cheapest to test for.)
pub(crate) enum State {
    /// Paused in its own switch, waiting for a switch back (not in the resume chain).
    Suspended = 0,
    /// Paused while a greenlet it resumed runs (in the resume chain).
    Resuming = 1,
    /// Created, never switched into.
    Unstarted = 2,
    /// The running greenlet.
    Running = 3,
    /// Finished: returned, failed, panicked or was killed.
    Dead = 4,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) struct Inner {
    id: u64,
    is_main: bool,
    name: Option<Box<str>>,
    spawned_at: Option<&'static Location<'static>>,
    stack_size: usize,
    parent: RefCell<Option<Greenlet>>,
    state: Cell<State>,
    co: CoSlot,
    /// The function of a greenlet made by [`GreenletBuilder::build_lazy`] that has no coroutine
    /// yet (`co` is `None`): its first switch takes a stack and makes it.
    lazy: Cell<Option<Weak<dyn LazyBody>>>,
    yielder: Cell<*const GreenYielder>,
    /// While it is being killed by force (see `switch::kill_on_drop`): the greenlet
    /// waiting for its death, from `Rc::as_ptr`; null otherwise. Its switches fail then.
    forced_by: Cell<*const Inner>,
    /// Switches it attempted while being killed by force (bounded, then it is leaked).
    forced_switches: Cell<u32>,
    /// A kill reached it while the thread was unwinding, so it got `Err(Killed)` instead
    /// of an unwind: if it then dies panicking, the kill is its death.
    killed_unwinding: Cell<bool>,
    /// Its index in this thread's registry of greenlet records (`usize::MAX`: none).
    registered: Cell<usize>,
}

/// The function of a greenlet whose stack and coroutine are only made at its first switch
/// ([`GreenletBuilder::build_lazy`]). The hub spawns greenlets this way: a greenlet spawned and
/// not yet run holds no stack, so spawning many and then joining them reuses one warm
/// stack instead of touching a new one per greenlet.
pub(crate) trait LazyBody {
    /// Runs the greenlet's function with the value of the first switch into it; its
    /// result goes to the parent as a greenlet's result does.
    fn run(self: Rc<Self>, value: Value) -> Result<Value, Error>;

    /// The greenlet cannot start: no stack could be mapped for it (`error`). It is dead
    /// and never runs; what this returns goes to its parent as its result.
    fn cannot_start(self: Rc<Self>, error: std::io::Error) -> Result<Value, Error>;
}

impl Inner {
    /// The nearest ancestor that is not dead (the main greenlet never is).
    fn live_parent(&self) -> Greenlet {
        let mut p = self
            .parent
            .borrow()
            .clone()
            .expect("only the main greenlet has no parent");
        while p.inner.state.get() == State::Dead {
            let next = p
                .inner
                .parent
                .borrow()
                .clone()
                .expect("the main greenlet never dies");
            p = next;
        }
        p
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        switch::unregister(self);
        let Some(co) = self.co.get_mut().take() else {
            return;
        };
        if co.started() && !co.done() {
            // Only reachable when the thread is being torn down (see `kill_on_drop`):
            // nothing may run any more, so the stack is leaked, not unwound.
            std::mem::forget(co);
        } else {
            switch::recycle(co); // never started: drops the closure, keeps the stack
        }
    }
}

/// A handle to a greenlet. Cloning it makes another handle to the same greenlet.
///
/// # Dropping
///
/// Dropping the last handle of a started, unfinished greenlet kills it: its stack unwinds
/// (every destructor on it runs) and returns to the pool, as Python raises `GreenletExit`
/// in a greenlet that is garbage-collected. The running greenlet and the parents of live
/// greenlets are always referenced, so they are never killed this way. While it dies,
/// its parent is the greenlet that dropped it (so its death returns there); its own
/// parent is restored afterwards, as in Python.
///
/// A greenlet that catches the kill (`catch_unwind`) and switches back alive lives on if
/// it made a new handle to itself meanwhile (Python's resurrection). Otherwise it is
/// killed again, and its switches fail with `Err(Error::Killed)` until it is dead; if it
/// catches that unwind too, it cannot be ended: it is reported on stderr and its stack
/// is leaked (never unwound nor reused) rather than left to spin.
///
/// # Reference cycles
///
/// Rust does not collect cycles. A greenlet that its own stack keeps alive, directly or
/// through other greenlets, never gets its last handle dropped: it is never killed, its
/// stack is never unwound and its memory never freed. The usual ways to make one:
///
/// - keeping `getcurrent()` (or another handle to the greenlet itself) in a local
///   variable across a switch, or in a temporary: `getcurrent().parent().unwrap()
///   .switch(v)` keeps the temporary `getcurrent()` alive until the switch returns (bind
///   the parent first: `let parent = getcurrent().parent().unwrap(); parent.switch(v)`);
/// - a suspended parent whose stack holds a handle to its child (the child holds its
///   parent as its parent);
/// - two suspended greenlets whose stacks hold each other's handles, or a greenlet whose
///   function captured a shared slot (`Rc<RefCell<..>>`) that holds its own handle.
///
/// Drop such handles before switching away, pass them in switch values instead, or end
/// the greenlet with [`kill`](Greenlet::kill). `greenhub::dump()` lists every live
/// greenlet the hub has no task for under "greenlets not known to the hub": that is
/// where a greenlet kept alive by a cycle shows up.
///
/// # Panics are per thread
///
/// Rust keeps its panic state per thread, not per greenlet (Python keeps exception state
/// per greenlet): while any greenlet of the thread is unwinding (one switched away from a
/// destructor that runs during its unwinding), `std::thread::panicking()` is true in
/// every greenlet that runs. A std `Mutex` guard dropped meanwhile poisons its mutex, and
/// a kill arrives as `Err(Error::Killed)` rather than as an unwind (see
/// [`kill`](Greenlet::kill)).
pub struct Greenlet {
    pub(crate) inner: Rc<Inner>,
}

impl Greenlet {
    /// A greenlet that will run `f` with the value of the first switch into it. Its parent
    /// is the running greenlet.
    ///
    /// `f`'s `Ok` value is switched into the parent when it returns; its `Err` is raised
    /// there (the parent's `switch` returns it).
    ///
    /// # Panics
    /// If no stack can be mapped (out of memory).
    ///
    /// # Examples
    ///
    /// ```
    /// let g = greenhub::Greenlet::new(|v| Ok(v.downcast::<i32>().unwrap() * 2));
    /// assert_eq!(g.switch(21).unwrap().downcast::<i32>().unwrap(), 42);
    /// ```
    #[track_caller]
    pub fn new<F, T>(f: F) -> Greenlet
    where
        F: FnOnce(Value) -> Result<T, Error> + 'static,
        T: Any,
    {
        GreenletBuilder::new().build(f)
    }

    /// Like [`Greenlet::new`] with `parent` as the parent.
    ///
    /// ```
    /// use greenhub::{Greenlet, getcurrent};
    /// let p = Greenlet::new(|v| Ok(v)); // started by its child's result
    /// let c = Greenlet::with_parent(&p, |_| Ok("from child"));
    /// let out = c.switch(()).unwrap(); // c dies, p starts with "from child" and returns it
    /// assert_eq!(out.downcast::<&str>().unwrap(), "from child");
    /// assert!(p.is_dead() && c.is_dead());
    /// # let _ = getcurrent();
    /// ```
    #[track_caller]
    pub fn with_parent<F, T>(parent: &Greenlet, f: F) -> Greenlet
    where
        F: FnOnce(Value) -> Result<T, Error> + 'static,
        T: Any,
    {
        GreenletBuilder::new().parent(parent).build(f)
    }

    /// A builder to set the name, stack size or parent.
    ///
    /// ```
    /// let g = greenhub::Greenlet::builder().name("worker").stack_size(64 * 1024).build(|_| Ok(()));
    /// assert_eq!(g.name(), Some("worker"));
    /// ```
    pub fn builder() -> GreenletBuilder {
        GreenletBuilder::new()
    }

    /// The handle owning `inner`.
    #[inline]
    pub(crate) fn from_rc(inner: Rc<Inner>) -> Greenlet {
        Greenlet { inner }
    }

    fn new_main() -> Greenlet {
        Greenlet::from_rc(Rc::new(Inner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            is_main: true,
            name: Some("main".into()),
            spawned_at: None,
            stack_size: 0,
            parent: RefCell::new(None),
            state: Cell::new(State::Running),
            co: CoSlot::new(None),
            lazy: Cell::new(None),
            yielder: Cell::new(std::ptr::null()),
            forced_by: Cell::new(std::ptr::null()),
            forced_switches: Cell::new(0),
            killed_unwinding: Cell::new(false),
            registered: Cell::new(usize::MAX),
        }))
    }

    /// Suspends the running greenlet and runs this one, passing `value`.
    ///
    /// The first switch calls the greenlet's function with `value`; later switches make its
    /// pending `switch` return `Ok(value)`. This call returns when some greenlet switches
    /// back to the caller (or a greenlet whose parent is the caller finishes), with what it
    /// passed. Switching to the running greenlet returns `value` at once.
    ///
    /// # Errors
    /// - [`Error::DeadGreenlet`] if the greenlet has finished (nothing else happens);
    /// - any error thrown into the caller while it was suspended (see [`Greenlet::throw`]),
    ///   including the `Err` a child of the caller finished with.
    ///
    /// # Panics
    /// A panic in a child greenlet is resumed here, in its parent, at the switch point;
    /// `catch_unwind` around the switch catches it.
    ///
    /// ```
    /// use greenhub::{Greenlet, getcurrent};
    /// let main = getcurrent();
    /// let g = Greenlet::new(move |v| {
    ///     let n = v.downcast::<u32>().unwrap();
    ///     let back = main.switch(n + 1)?; // to main, and wait
    ///     Ok(back.downcast::<u32>().unwrap() + 1)
    /// });
    /// assert_eq!(g.switch(1_u32).unwrap().downcast::<u32>().unwrap(), 2);
    /// assert_eq!(g.switch(10_u32).unwrap().downcast::<u32>().unwrap(), 11);
    /// assert!(g.is_dead());
    /// ```
    #[inline]
    pub fn switch<T: Any>(&self, value: T) -> Result<Value, Error> {
        switch::send_value(self, Value::new(value))
    }

    /// Raises `error` in this greenlet at its switch point: its pending `switch` returns
    /// `Err(error)`. Like `switch`, the caller is suspended until something switches back.
    ///
    /// Thrown into an unstarted greenlet, the error kills it before it runs and goes to its
    /// parent. Thrown at the running greenlet, it is returned at once.
    ///
    /// # Errors
    /// [`Error::DeadGreenlet`] if the greenlet has finished (nothing else happens); otherwise
    /// what is switched back, as for [`switch`](Greenlet::switch).
    ///
    /// ```
    /// use greenhub::{Error, Greenlet, getcurrent};
    /// let main = getcurrent();
    /// let g = Greenlet::new(move |_| {
    ///     match main.switch(()) {
    ///         Err(e) => Ok(format!("caught: {e}")),
    ///         Ok(_) => Ok("no error".to_string()),
    ///     }
    /// });
    /// g.switch(()).unwrap();
    /// let out = g.throw(Error::custom("boom")).unwrap();
    /// assert_eq!(out.downcast::<String>().unwrap(), "caught: boom");
    /// ```
    pub fn throw(&self, error: Error) -> Result<Value, Error> {
        self.send(TraceEvent::Throw, Payload::Throw(Box::new(error)))
    }

    /// Kills this greenlet: it unwinds from its switch point (every destructor on its stack
    /// runs) and its death (`Err(Error::Killed)`) goes to its parent, like Python's
    /// `g.throw()` with `GreenletExit`. An unstarted greenlet dies without running (its
    /// parent gets `Err(Error::Killed)`, it is not killed itself). The main greenlet
    /// cannot be killed: it gets `Err(Error::Killed)` at its switch point instead.
    ///
    /// While the thread is unwinding from a panic (see [`Greenlet`] on panics), the kill
    /// arrives as `Err(Error::Killed)` from its switch rather than as an unwind: the
    /// greenlet may be switched away from a destructor that runs during its own unwinding,
    /// where a second unwind would abort the process. If it then dies of that unwinding,
    /// its death is the kill.
    ///
    /// # Errors
    /// As [`throw`](Greenlet::throw).
    pub fn kill(&self) -> Result<Value, Error> {
        self.send(TraceEvent::Throw, Payload::Kill)
    }

    fn send(&self, event: TraceEvent, payload: Payload) -> Result<Value, Error> {
        switch::send(self, event, payload)
    }

    /// This greenlet's parent: where its result goes when it finishes. `None` for the
    /// main greenlet.
    pub fn parent(&self) -> Option<Greenlet> {
        self.inner.parent.borrow().clone()
    }

    /// Makes `parent` this greenlet's parent.
    ///
    /// # Errors
    /// [`Error::CyclicParent`] if this greenlet is `parent` or one of its ancestors;
    /// [`Error::MainGreenletParent`] for the main greenlet.
    ///
    /// ```
    /// use greenhub::{Error, Greenlet};
    /// let a = Greenlet::new(|_| Ok(()));
    /// let b = Greenlet::with_parent(&a, |_| Ok(()));
    /// assert!(matches!(a.set_parent(&b), Err(Error::CyclicParent { .. })));
    /// ```
    pub fn set_parent(&self, parent: &Greenlet) -> Result<(), Error> {
        if self.inner.is_main {
            return Err(Error::MainGreenletParent);
        }
        let mut ancestor = Some(parent.clone());
        while let Some(a) = ancestor {
            if a == *self {
                return Err(Error::CyclicParent {
                    id: self.id(),
                    parent: parent.id(),
                });
            }
            ancestor = a.parent();
        }
        let old = self.inner.parent.replace(Some(parent.clone()));
        // Dropped once the field is released: if it was the old parent's last handle, its
        // death runs user code, which may look at this greenlet's parent.
        drop(old);
        Ok(())
    }

    /// A number unique to this greenlet in the process (the main greenlet has one too).
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The name given by the [`GreenletBuilder`]; the main greenlet is called `"main"`.
    pub fn name(&self) -> Option<&str> {
        self.inner.name.as_deref()
    }

    /// Where the greenlet was created (`None` for the main greenlet).
    pub fn spawned_at(&self) -> Option<&'static Location<'static>> {
        self.inner.spawned_at
    }

    /// The usable size of the greenlet's stack in bytes (0 for the main greenlet).
    pub fn stack_size(&self) -> usize {
        self.inner.stack_size
    }

    /// Has it been switched into? (The main greenlet always has.)
    pub fn is_started(&self) -> bool {
        self.inner.state.get() != State::Unstarted
    }

    /// Has it finished (returned, failed, panicked, been killed or been thrown into before
    /// starting)? The main greenlet never is.
    pub fn is_dead(&self) -> bool {
        self.inner.state.get() == State::Dead
    }

    /// Started and not dead (Python's `bool(g)`).
    pub fn is_active(&self) -> bool {
        !matches!(self.inner.state.get(), State::Unstarted | State::Dead)
    }

    /// Is this the thread's main greenlet?
    pub fn is_main(&self) -> bool {
        self.inner.is_main
    }

    /// Is this the running greenlet? (`getcurrent() == *self` without making a handle:
    /// one load; exactly one greenlet of a thread is running at a time.)
    #[inline]
    pub(crate) fn is_running(&self) -> bool {
        self.inner.state.get() == State::Running
    }

    /// Is it paused in a switch into another greenlet (in the resume chain, so that a
    /// switch to it is a `suspend`)?
    #[inline]
    pub(crate) fn is_resuming(&self) -> bool {
        self.inner.state.get() == State::Resuming
    }

    /// Is it paused in its own switch, or not started (so that a switch to it is a
    /// `resume`, which puts it below the running greenlet in the resume chain)?
    #[inline]
    pub(crate) fn is_resumable(&self) -> bool {
        matches!(self.inner.state.get(), State::Suspended | State::Unstarted)
    }

    /// Where it is in its life, in words (for `dump()`).
    pub(crate) fn state_name(&self) -> &'static str {
        match self.inner.state.get() {
            State::Unstarted => "not started",
            State::Running => "running",
            State::Suspended => "suspended",
            State::Resuming => "waiting in a switch into another greenlet",
            State::Dead => "dead",
        }
    }
}

impl Clone for Greenlet {
    #[inline]
    fn clone(&self) -> Self {
        Greenlet {
            inner: self.inner.clone(),
        }
    }
}

impl Drop for Greenlet {
    #[inline]
    fn drop(&mut self) {
        if Rc::strong_count(&self.inner) == 1 {
            if self.inner.state.get() == State::Suspended {
                switch::kill_on_drop(self);
            }
            if self.inner.state.get() == State::Dead {
                Spares::put(&mut self.inner);
            }
        }
    }
}

impl PartialEq for Greenlet {
    fn eq(&self, other: &Self) -> bool {
        Rc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for Greenlet {}

impl Hash for Greenlet {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.id.hash(state);
    }
}

impl fmt::Debug for Greenlet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Greenlet")
            .field("id", &self.inner.id)
            .field("name", &self.inner.name)
            .field("state", &self.inner.state.get())
            .finish()
    }
}

/// The running greenlet (the main greenlet when called outside any greenlet).
///
/// ```
/// let main = greenhub::getcurrent();
/// assert!(main.is_main() && main.parent().is_none());
/// let g = greenhub::Greenlet::new(|_| Ok(greenhub::getcurrent().id()));
/// let id = g.switch(()).unwrap().downcast::<u64>().unwrap();
/// assert_eq!(id, g.id());
/// ```
pub fn getcurrent() -> Greenlet {
    switch::current()
}

/// Sets the stack size used by greenlets created on this thread without an explicit one.
/// Rounded up to whole pages and at least [`MIN_STACK_SIZE`]. The default is
/// [`DEFAULT_STACK_SIZE`] (256 KiB: room for ordinary Rust code in debug builds; stacks
/// are reserved, not committed, so only the pages a greenlet touches cost memory).
pub fn set_default_stack_size(bytes: usize) {
    switch::set_default_stack_size(bytes.max(MIN_STACK_SIZE));
}

/// Can greenlets still switch on this thread? `false` once its greenlet state is being
/// destroyed at thread exit (layers above tear down before that, and check with this).
pub(crate) fn thread_alive() -> bool {
    switch::try_with_thread(|_| ()).is_some()
}

/// Gives back the memory of this thread's free stacks that have not been reused since the
/// previous call (the hub calls it every second).
pub(crate) fn trim_stack_pool() {
    switch::with_thread(|t| {
        t.pool.borrow_mut().trim();
        t.spares.borrow_mut().trim();
    });
}
