//! Spawning greenlets on the hub, joining and killing them (gevent's `spawn`, `join`,
//! `kill`, `joinall`, `killall`).

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::panic::{AssertUnwindSafe, Location, catch_unwind};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use super::{Hub, Task, Waiter, current_hub, with_hub};
use crate::error::{Error, PanicPayload, panic_payload_str};
use crate::greenlet::{self, GreenletExit, LazyBody, Value, getcurrent};

/// A spawned greenlet's function until it runs, then where its result lands and who
/// waits for it: the [`completion`](Task::completion) of its task. `S` is the function
/// ([`Func`]); the [`JoinHandle`] sees it as `dyn Start`.
struct Completion<T, S: ?Sized = dyn Start<T>> {
    /// The task itself, as the hub sees it (to kill it from a `JoinHandle`).
    me: Weak<Task>,
    result: RefCell<Option<Result<T, Error>>>,
    done: Cell<bool>,
    joiners: RefCell<Vec<Waiter>>,
    func: S,
}

/// The function of a spawned greenlet that has not started yet.
trait Start<T> {
    /// Drops the function unrun (the greenlet was killed before it started).
    fn discard(&self);
}

/// `f`, until it is taken to run (or dropped unrun).
struct Func<F>(Cell<Option<F>>);

impl<T, F: FnOnce() -> T> Start<T> for Func<F> {
    fn discard(&self) {
        drop(self.0.take());
    }
}

/// A spawned greenlet's task, as made, in one allocation: the hub sees it as `Task`
/// (`dyn Any`), its `JoinHandle` as `Task<Completion<T>>` (`dyn Start<T>`), and its
/// greenlet (which only gets its stack when it first runs) as `dyn LazyBody`.
type SpawnedTask<T, F> = Task<Completion<T, Func<F>>>;

impl<T: 'static, F: FnOnce() -> T + 'static> LazyBody for SpawnedTask<T, F> {
    fn run(self: Rc<Self>, _: Value) -> Result<Value, Error> {
        let f = self.completion.func.0.take();
        // Only a weak handle while `f` runs: a strong one on the greenlet's own stack would
        // keep the task, and so the greenlet, alive once nothing else refers to it.
        let me = Rc::downgrade(&self);
        drop(self);
        let result = match f.map(|f| catch_unwind(AssertUnwindSafe(f))) {
            Some(Ok(v)) => Ok(v),
            None => Err(Error::Killed), // taken by a kill before it started
            Some(Err(p)) if p.is::<GreenletExit>() => Err(Error::Killed),
            Some(Err(p)) if greenlet::is_forced_unwind() => std::panic::resume_unwind(p),
            Some(Err(p)) => {
                report_panic(p.as_ref());
                Err(Error::Panicked(p.into()))
            }
        };
        super::run_exit_hooks();
        if let Some(task) = me.upgrade() {
            with_hub(|hub| hub.untrack(task.as_ref()));
            task.completion.complete(result);
        }
        Ok(Value::unit())
    }

    fn cannot_start(self: Rc<Self>, error: std::io::Error) -> Result<Value, Error> {
        self.completion.func.discard();
        let msg = format!(
            "greenhub: cannot map a stack for greenlet #{}: {error}",
            self.greenlet.id()
        );
        eprintln!("{msg}");
        with_hub(|hub| hub.untrack(self.as_ref()));
        self.completion
            .complete(Err(Error::Panicked(PanicPayload::new(Box::new(msg)))));
        Ok(Value::unit())
    }
}

impl<T, S: ?Sized> Completion<T, S> {
    fn complete(&self, result: Result<T, Error>) {
        if self.done.replace(true) {
            return;
        }
        *self.result.borrow_mut() = Some(result);
        let mut joiners = self.joiners.borrow_mut();
        if !joiners.is_empty() {
            for w in joiners.drain(..) {
                w.wake(super::Wake::Ready);
            }
        }
    }
}

/// Configures a greenlet before spawning it on the hub: name and stack size.
///
/// ```
/// let h = greenhub::SpawnBuilder::new().name("worker").spawn(|| 1 + 1);
/// assert_eq!(h.name(), Some("worker"));
/// assert_eq!(h.join().unwrap(), 2);
/// ```
#[derive(Debug, Default)]
pub struct SpawnBuilder {
    /// The greenlet's settings; `create` adds the hub as the parent.
    greenlet: greenlet::GreenletBuilder,
}

impl SpawnBuilder {
    /// A builder with no name and the thread's default stack size.
    pub fn new() -> SpawnBuilder {
        SpawnBuilder::default()
    }

    /// Names the greenlet (shown in panic reports, the monitor and `dump()`).
    pub fn name(mut self, name: impl Into<String>) -> SpawnBuilder {
        self.greenlet = self.greenlet.name(name);
        self
    }

    /// The usable stack size in bytes.
    pub fn stack_size(mut self, bytes: usize) -> SpawnBuilder {
        self.greenlet = self.greenlet.stack_size(bytes);
        self
    }

    /// Spawns `f` on this thread's hub; see [`spawn`].
    #[track_caller]
    pub fn spawn<F, T>(self, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + 'static,
        T: 'static,
    {
        let location = Location::caller();
        with_hub(|hub| self.spawn_at(hub, location, f))
    }

    /// Spawns `f` to start after `delay`; see [`spawn_later`].
    #[track_caller]
    pub fn spawn_later<F, T>(self, delay: Duration, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + 'static,
        T: 'static,
    {
        let hub = current_hub();
        let (handle, task) = self.create(&hub, Location::caller(), f);
        let waiter = Waiter {
            task,
            seq: next_seq(&hub),
        };
        waiter.task.waiting.set(waiter.seq);
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
        self.spawn_at(hub, Location::caller(), f)
    }

    /// [`spawn_on`](SpawnBuilder::spawn_on), recording `location` as where it was spawned.
    fn spawn_at<F, T>(self, hub: &Hub, location: &'static Location<'static>, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + 'static,
        T: 'static,
    {
        let (handle, task) = self.create(hub, location, f);
        hub.schedule(task);
        handle
    }

    /// Makes the task (as its handle and as the hub sees it) and its greenlet.
    fn create<F, T>(
        self,
        hub: &Hub,
        location: &'static Location<'static>,
        f: F,
    ) -> (JoinHandle<T>, Rc<Task>)
    where
        F: FnOnce() -> T + 'static,
        T: 'static,
    {
        let builder = self.greenlet.parent(hub.greenlet());
        // One allocation holds the hub's task, `f` and the typed completion; the greenlet
        // reaches it through a weak handle (a strong one would keep itself alive).
        let task = Rc::new_cyclic(|me: &Weak<SpawnedTask<T, F>>| {
            let greenlet = builder.build_lazy(location, me.clone());
            Task::new(
                greenlet,
                Completion {
                    me: me.clone(),
                    result: RefCell::new(None),
                    done: Cell::new(false),
                    joiners: RefCell::new(Vec::new()),
                    func: Func(Cell::new(Some(f))),
                },
            )
        });
        let erased: Rc<Task> = task.clone();
        hub.track(&erased);
        (JoinHandle { task }, erased)
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
    SpawnBuilder::new().spawn(f)
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
    SpawnBuilder::new().spawn_later(delay, f)
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
        if !self.is_finished() {
            self.wait(None)?;
        }
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
        if self.is_finished() {
            return Ok(());
        }
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
            // Never runs: it dies here, and its death (`Err(Killed)`, a value for us, not
            // a kill of us) comes back to us, not to the hub. Its parent is the hub again
            // afterwards.
            let parent = g.parent();
            let _ = g.set_parent(&getcurrent());
            let _ = g.kill();
            if let Some(parent) = parent {
                let _ = g.set_parent(&parent);
            }
            self.task.completion.func.discard();
            with_hub(|hub| hub.untrack(self.task.as_ref()));
            self.task.completion.complete(Err(Error::Killed));
            return;
        }
        if let Some(task) = self.task.completion.me.upgrade() {
            with_hub(|hub| hub.request_kill(&task));
        }
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

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::collections::HashSet;
    use std::rc::Rc;

    use crate::hub::spawn;

    /// Sets its flag when dropped.
    struct Guard(Rc<Cell<bool>>);

    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.set(true);
        }
    }

    #[test]
    fn killing_an_unstarted_greenlet_drops_its_function_at_once() {
        let dropped = Rc::new(Cell::new(false));
        let guard = Guard(dropped.clone());
        let h = spawn(move || drop(guard));
        h.kill();
        assert!(dropped.get(), "dropped by the kill, not with the handle");
        assert!(matches!(h.join(), Err(crate::Error::Killed)));
    }

    /// Where a greenlet's stack is: the address of one of its locals, to 64 KiB.
    fn stack_at() -> usize {
        let local = 0_u8;
        std::hint::black_box(&local) as *const u8 as usize >> 16
    }

    #[test]
    fn a_batch_of_short_greenlets_runs_on_one_warm_stack() {
        let batch = || {
            let hs: Vec<_> = (0..50).map(|_| spawn(stack_at)).collect();
            let stacks: HashSet<usize> = hs.into_iter().map(|h| h.join().unwrap()).collect();
            stacks.len()
        };
        // A greenlet takes its stack when it first runs, so even the first batch does.
        assert_eq!(batch(), 1, "each took the stack the previous one gave back");
        assert_eq!(batch(), 1);
    }

    #[test]
    fn spawned_greenlets_start_and_finish_under_a_trace_hook() {
        // With a hook every switch takes the general path (`transfer`), which also
        // makes a spawned greenlet's coroutine at its first switch.
        let seen = Rc::new(Cell::new(0));
        let counter = seen.clone();
        let old = crate::greenlet::settrace(Some(Box::new(move |_, _, _| {
            counter.set(counter.get() + 1);
        })));
        let batch = || {
            let hs: Vec<_> = (0..3).map(|i| spawn(move || i * 2)).collect();
            hs.into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(batch(), [0, 2, 4]);
        assert_eq!(batch(), [0, 2, 4]); // the second batch waits for its stacks
        crate::greenlet::settrace(old);
        assert!(seen.get() >= 12, "each start and each finish was traced");
    }

    #[test]
    fn a_reused_greenlet_record_is_a_new_greenlet() {
        let first = spawn(crate::getcurrent);
        let g1 = first.join().unwrap();
        let id1 = g1.id();
        drop(g1); // dead, last handle: its record is kept for reuse
        let h = crate::hub::SpawnBuilder::new()
            .name("second")
            .spawn(crate::getcurrent);
        let g2 = h.join().unwrap();
        assert_ne!(g2.id(), id1);
        assert_eq!(g2.name(), Some("second"));
        assert!(g2.is_dead());
        assert_eq!(
            g2.parent().as_ref(),
            Some(crate::hub::current_hub().greenlet())
        );
    }
}
