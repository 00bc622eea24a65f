//! Spawning greenlets on the hub, joining and killing them (gevent's `spawn`, `join`,
//! `kill`, `joinall`, `killall`).

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::panic::{AssertUnwindSafe, Location, catch_unwind};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use super::{Hub, Task, Waiter, current_hub, with_hub};
use crate::error::{Error, panic_payload_str};
use crate::greenlet::{self, GreenletExit, getcurrent};

/// Where a spawned greenlet's result lands, and who waits for it.
struct Completion<T> {
    result: RefCell<Option<Result<T, Error>>>,
    done: Cell<bool>,
    joiners: RefCell<Vec<Waiter>>,
}

impl<T> Completion<T> {
    fn complete(&self, result: Result<T, Error>) {
        if self.done.replace(true) {
            return;
        }
        *self.result.borrow_mut() = Some(result);
        for w in self.joiners.borrow_mut().drain(..) {
            w.wake(super::Wake::Ready);
        }
    }
}

/// Configures a greenlet before spawning it on the hub: name and stack size.
///
/// ```
/// let h = greenhub::hub::Builder::new().name("worker").spawn(|| 1 + 1);
/// assert_eq!(h.name(), Some("worker"));
/// assert_eq!(h.join().unwrap(), 2);
/// ```
#[derive(Default)]
pub struct Builder {
    name: Option<String>,
    stack_size: Option<usize>,
}

impl Builder {
    /// A builder with no name and the thread's default stack size.
    pub fn new() -> Builder {
        Builder::default()
    }

    /// Names the greenlet (shown in panic reports, the monitor and `dump()`).
    pub fn name(mut self, name: impl Into<String>) -> Builder {
        self.name = Some(name.into());
        self
    }

    /// The usable stack size in bytes.
    pub fn stack_size(mut self, bytes: usize) -> Builder {
        self.stack_size = Some(bytes);
        self
    }

    /// Spawns `f` on this thread's hub; see [`spawn`].
    #[track_caller]
    pub fn spawn<F, T>(self, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + 'static,
        T: 'static,
    {
        let hub = current_hub();
        self.spawn_on(&hub, f)
    }

    /// Spawns `f` to start after `delay`; see [`spawn_later`].
    #[track_caller]
    pub fn spawn_later<F, T>(self, delay: Duration, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + 'static,
        T: 'static,
    {
        let hub = current_hub();
        let handle = self.create(&hub, f);
        let waiter = Waiter {
            task: handle.task.clone(),
            seq: next_seq(&hub),
        };
        handle.task.waiting.set(waiter.seq);
        hub.timers
            .borrow_mut()
            .insert(Instant::now() + delay, waiter);
        handle
    }

    #[track_caller]
    pub(crate) fn spawn_on<F, T>(self, hub: &Hub, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + 'static,
        T: 'static,
    {
        let handle = self.create(hub, f);
        hub.schedule(handle.task.clone());
        handle
    }

    #[track_caller]
    fn create<F, T>(self, hub: &Hub, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + 'static,
        T: 'static,
    {
        let mut builder = greenlet::Builder::new().parent(hub.greenlet());
        if let Some(name) = self.name {
            builder = builder.name(name);
        }
        if let Some(size) = self.stack_size {
            builder = builder.stack_size(size);
        }
        let location = Location::caller();
        // One allocation holds the hub's task and the typed completion; the greenlet
        // reaches it through a weak handle (a strong one would keep itself alive).
        let task = Rc::new_cyclic(|me: &Weak<Task<Completion<T>>>| {
            let me = me.clone();
            let greenlet = builder.build_at(location, move |_| -> Result<(), Error> {
                let result = match catch_unwind(AssertUnwindSafe(f)) {
                    Ok(v) => Ok(v),
                    Err(p) if p.is::<GreenletExit>() => Err(Error::Killed),
                    Err(p) => {
                        report_panic(p.as_ref());
                        Err(Error::Panicked(p))
                    }
                };
                super::run_exit_hooks();
                if let Some(task) = me.upgrade() {
                    with_hub(|hub| hub.untrack(task.as_ref()));
                    task.completion.complete(result);
                }
                Ok(())
            });
            Task::new(
                greenlet,
                Completion {
                    result: RefCell::new(None),
                    done: Cell::new(false),
                    joiners: RefCell::new(Vec::new()),
                },
            )
        });
        let erased: Rc<Task> = task.clone();
        hub.track(&erased);
        JoinHandle { task }
    }
}

fn next_seq(hub: &Hub) -> u64 {
    let seq = hub.next_seq.get();
    hub.next_seq.set(seq + 1);
    seq
}

/// gevent prints a failed greenlet's traceback; this is ours (the panic hook has already
/// printed the message and location of the panic itself).
fn report_panic(payload: &(dyn Any + Send)) {
    let me = getcurrent();
    let name = me.name().map(|n| format!(" \"{n}\"")).unwrap_or_default();
    let at = me
        .spawned_at()
        .map(|l| format!(" spawned at {l}"))
        .unwrap_or_default();
    let msg = panic_payload_str(payload).unwrap_or("<non-string payload>");
    eprintln!(
        "greenhub: greenlet #{}{name}{at} failed: panicked: {msg}",
        me.id()
    );
}

/// Spawns `f` in a new greenlet on this thread's hub and returns a handle to join or
/// kill it. The greenlet starts the next time the hub runs (when the caller blocks).
///
/// A panic in `f` is caught: it is reported on stderr (greenlet id, name, where it was
/// spawned, the message), and [`JoinHandle::join`] returns it as [`Error::Panicked`]; the
/// hub and every other greenlet go on.
///
/// ```
/// let jobs: Vec<_> = (0..3).map(|i| greenhub::spawn(move || i * 10)).collect();
/// let results: Vec<i32> = jobs.into_iter().map(|h| h.join().unwrap()).collect();
/// assert_eq!(results, [0, 10, 20]);
/// ```
#[track_caller]
pub fn spawn<F, T>(f: F) -> JoinHandle<T>
where
    F: FnOnce() -> T + 'static,
    T: 'static,
{
    Builder::new().spawn(f)
}

/// Spawns `f` to start after `delay` (gevent's `spawn_later`).
///
/// ```
/// use std::time::{Duration, Instant};
/// let t = Instant::now();
/// let h = greenhub::spawn_later(Duration::from_millis(20), || "late");
/// assert_eq!(h.join().unwrap(), "late");
/// assert!(t.elapsed() >= Duration::from_millis(20));
/// ```
#[track_caller]
pub fn spawn_later<F, T>(delay: Duration, f: F) -> JoinHandle<T>
where
    F: FnOnce() -> T + 'static,
    T: 'static,
{
    Builder::new().spawn_later(delay, f)
}

/// A handle to a spawned greenlet: join it, kill it, ask whether it has finished.
///
/// Dropping the handle detaches the greenlet; it keeps running.
pub struct JoinHandle<T> {
    task: Rc<Task<Completion<T>>>,
}

impl<T: 'static> JoinHandle<T> {
    /// Waits cooperatively until the greenlet finishes and returns its result.
    ///
    /// # Errors
    /// [`Error::Killed`] if it was killed, [`Error::Panicked`] (with the payload) if it
    /// panicked, [`Error::Timeout`] if a `Timeout` scope around the join expires,
    /// [`Error::BlockForever`] if nothing can ever finish it.
    pub fn join(self) -> Result<T, Error> {
        self.wait(None)?;
        self.task
            .completion
            .result
            .borrow_mut()
            .take()
            .expect("a finished greenlet has a result")
    }

    /// Waits at most `timeout` for the greenlet to finish; the result stays for [`join`](JoinHandle::join).
    ///
    /// # Errors
    /// [`Error::Timeout`] if it has not finished in time; as `join` otherwise.
    pub fn join_timeout(&self, timeout: Duration) -> Result<(), Error> {
        self.wait(Some(Instant::now() + timeout))
    }

    fn wait(&self, deadline: Option<Instant>) -> Result<(), Error> {
        wait_all(std::slice::from_ref(self), deadline).map(|_| ())
    }

    /// Has it finished (returned, panicked or been killed)?
    pub fn is_finished(&self) -> bool {
        self.task.completion.done.get()
    }

    /// The greenlet's id.
    pub fn id(&self) -> u64 {
        self.task.greenlet.id()
    }

    /// The greenlet's name, if it was given one.
    pub fn name(&self) -> Option<&str> {
        self.task.greenlet.name()
    }

    /// Where the greenlet was spawned.
    pub fn spawned_at(&self) -> Option<&'static Location<'static>> {
        self.task.greenlet.spawned_at()
    }

    /// Kills the greenlet and waits until it is dead. The kill is delivered at its
    /// blocking point (or before it starts, in which case it never runs); it unwinds, so
    /// every destructor on its stack runs. Killing a finished greenlet does nothing; kill
    /// never fails in the killer. Killing the running greenlet unwinds it at once.
    pub fn kill(&self) {
        let _ = self.kill_timeout_inner(None);
    }

    /// Like [`kill`](JoinHandle::kill), waiting at most `timeout` for it to die.
    ///
    /// # Errors
    /// [`Error::Timeout`] if it is still alive then (it will die at its next blocking point).
    pub fn kill_timeout(&self, timeout: Duration) -> Result<(), Error> {
        self.kill_timeout_inner(Some(Instant::now() + timeout))
    }

    fn kill_timeout_inner(&self, deadline: Option<Instant>) -> Result<(), Error> {
        self.request_kill();
        self.wait(deadline)
    }

    /// Asks for the kill without waiting.
    fn request_kill(&self) {
        if self.is_finished() {
            return;
        }
        let g = &self.task.greenlet;
        if *g == getcurrent() {
            std::panic::resume_unwind(Box::new(GreenletExit));
        }
        if !g.is_started() {
            // Never runs: it dies here, and its death comes back to us, not to the hub.
            let _ = g.set_parent(&getcurrent());
            let _ = g.kill();
            self.task.completion.complete(Err(Error::Killed));
            return;
        }
        let task: Rc<Task> = self.task.clone();
        with_hub(|hub| hub.request_kill(&task));
    }
}

impl<T: 'static> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle")
            .field("id", &self.id())
            .field("name", &self.name())
            .field("finished", &self.is_finished())
            .finish()
    }
}

/// Waits until every handle has finished or `deadline` passes; returns how many finished.
fn wait_all<T: 'static>(
    handles: &[JoinHandle<T>],
    deadline: Option<Instant>,
) -> Result<usize, Error> {
    let hub = current_hub();
    loop {
        let finished = handles.iter().filter(|h| h.is_finished()).count();
        if finished == handles.len() {
            return Ok(finished);
        }
        let waiter = hub.begin_wait_on(super::WaitOn::Join);
        for h in handles.iter().filter(|h| !h.is_finished()) {
            let mut joiners = h.task.completion.joiners.borrow_mut();
            joiners.retain(Waiter::is_waiting);
            joiners.push(waiter.clone());
        }
        match hub.park(&waiter, deadline)? {
            super::Wake::Timer => {
                let finished = handles.iter().filter(|h| h.is_finished()).count();
                return if finished == handles.len() {
                    Ok(finished)
                } else {
                    Err(Error::Timeout)
                };
            }
            _ => continue,
        }
    }
}

/// Waits until all `handles` finish, or `timeout` passes (gevent's `joinall`). Returns
/// how many have finished; the results stay in the handles for `join`.
///
/// ```
/// use std::time::Duration;
/// use greenhub::{joinall, sleep, spawn};
/// let fast = spawn(|| sleep(Duration::from_millis(1)));
/// let slow = spawn(|| sleep(Duration::from_secs(5)));
/// let jobs = [fast, slow];
/// assert_eq!(joinall(&jobs, Some(Duration::from_millis(50))), 1);
/// assert!(jobs[0].is_finished() && !jobs[1].is_finished());
/// ```
pub fn joinall<T: 'static>(handles: &[JoinHandle<T>], timeout: Option<Duration>) -> usize {
    let deadline = timeout.map(|t| Instant::now() + t);
    match wait_all(handles, deadline) {
        Ok(n) => n,
        Err(_) => handles.iter().filter(|h| h.is_finished()).count(),
    }
}

/// Kills every greenlet in `handles` and waits until they are all dead (gevent's `killall`).
pub fn killall<T: 'static>(handles: &[JoinHandle<T>]) {
    for h in handles {
        h.request_kill();
    }
    let _ = wait_all(handles, None);
}
