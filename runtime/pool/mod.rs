//! Groups and pools of greenlets (gevent's `gevent.pool`): [`Group`] tracks the greenlets
//! spawned through it (join them all, kill them all, map a function over items);
//! [`Pool`] is a group with a size limit, whose `spawn` waits while it is full.
//!
//! ```
//! use std::time::Duration;
//! use greenhub::{Pool, sleep};
//! let pool = Pool::new(3);
//! // At most 3 jobs at a time; results in input order, as they become ready.
//! for r in pool.imap(1..=6, |n| { sleep(Duration::from_millis(1)); n * n }) {
//!     println!("{}", r.unwrap());
//! }
//! ```

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::greenlet::GreenletExit;
use crate::hub::{JoinHandle, Task, current_hub};
use crate::sync::wait::{WaitList, deadline_in};

mod imap;

pub use imap::{Imap, ImapUnordered};

/// How many results an `imap` over a [`Group`] holds at most (running or waiting to be
/// read), unless set with `max_held`.
pub const GROUP_MAX_HELD: usize = 1024;

struct Member {
    /// Its hub task, once it has started.
    task: Option<Rc<Task>>,
    /// Killed before it started: it must not run.
    cancelled: bool,
}

/// The state shared by a group's handles and its members.
struct Core {
    limit: Option<usize>,
    /// Slots taken: running members, and members about to be spawned.
    used: Cell<usize>,
    members: RefCell<HashMap<u64, Member>>,
    next_key: Cell<u64>,
    /// Spawners waiting for a slot (a full pool), in order.
    spawners: WaitList,
    /// `wait_available` callers.
    available: WaitList,
    /// `join` callers.
    idle: WaitList,
}

impl Core {
    fn new(limit: Option<usize>) -> Rc<Core> {
        Rc::new(Core {
            limit,
            used: Cell::new(0),
            members: RefCell::new(HashMap::new()),
            next_key: Cell::new(0),
            spawners: WaitList::new(),
            available: WaitList::new(),
            idle: WaitList::new(),
        })
    }

    fn free_count(&self) -> usize {
        self.limit
            .map_or(usize::MAX, |l| l.saturating_sub(self.used.get()))
    }

    /// Takes a slot, waiting while the pool is full.
    fn acquire_slot(&self, deadline: Option<Instant>) -> Result<(), Error> {
        if self.free_count() > 0 {
            self.used.set(self.used.get() + 1);
            return Ok(());
        }
        // A woken spawner was handed the slot of a member that ended.
        match self
            .spawners
            .wait(&"pool slot", deadline, || self.release_slot())?
        {
            true => Ok(()),
            false => Err(Error::Timeout),
        }
    }

    /// Frees a slot: it goes to the first waiting spawner, if any.
    fn release_slot(&self) {
        if self.spawners.notify_one() {
            return;
        }
        let used = self.used.get() - 1;
        self.used.set(used);
        self.available.notify_all();
        if used == 0 {
            self.idle.notify_all();
        }
    }

    /// Spawns `f` as a member; a slot is already taken for it.
    #[track_caller]
    fn spawn_member<F, T>(self: &Rc<Core>, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + 'static,
        T: 'static,
    {
        let key = self.next_key.get();
        self.next_key.set(key + 1);
        self.members.borrow_mut().insert(
            key,
            Member {
                task: None,
                cancelled: false,
            },
        );
        // Owned by the closure: it frees the slot when the job ends, or when the closure
        // is dropped unrun (a job killed before it started).
        let membership = Membership {
            core: self.clone(),
            key,
        };
        crate::spawn(move || {
            let membership = membership;
            if !membership.start() {
                std::panic::resume_unwind(Box::new(GreenletExit));
            }
            f()
        })
    }

    #[track_caller]
    fn spawn<F, T>(self: &Rc<Core>, deadline: Option<Instant>, f: F) -> Result<JoinHandle<T>, Error>
    where
        F: FnOnce() -> T + 'static,
        T: 'static,
    {
        self.acquire_slot(deadline)?;
        Ok(self.spawn_member(f))
    }

    fn join(&self, deadline: Option<Instant>) -> Result<(), Error> {
        while self.used.get() > 0 {
            if !self.idle.wait(&"group to finish (join)", deadline, || {})? {
                return Err(Error::Timeout);
            }
        }
        Ok(())
    }

    fn kill(&self, deadline: Option<Instant>) -> Result<(), Error> {
        let started: Vec<Rc<Task>> = self
            .members
            .borrow_mut()
            .values_mut()
            .filter_map(|m| {
                if m.task.is_none() {
                    m.cancelled = true;
                }
                m.task.clone()
            })
            .collect();
        let hub = current_hub();
        for task in &started {
            hub.request_kill(task);
        }
        self.join(deadline)
    }

    fn wait_available(&self, deadline: Option<Instant>) -> Result<usize, Error> {
        loop {
            let free = self.free_count();
            if free > 0 {
                return Ok(free);
            }
            if !self.available.wait(&"pool slot", deadline, || {})? {
                return Err(Error::Timeout);
            }
        }
    }

    fn map<I, F, T>(self: &Rc<Core>, items: I, f: F) -> Vec<Result<T, Error>>
    where
        I: IntoIterator,
        I::Item: 'static,
        F: Fn(I::Item) -> T + 'static,
        T: 'static,
    {
        let f = Rc::new(f);
        let jobs: Vec<Result<JoinHandle<T>, Error>> = items
            .into_iter()
            .map(|item| {
                let f = f.clone();
                self.spawn(None, move || f(item))
            })
            .collect();
        jobs.into_iter()
            .map(|job| job.and_then(JoinHandle::join))
            .collect()
    }
}

/// A member's hold on its group, owned by its closure.
struct Membership {
    core: Rc<Core>,
    key: u64,
}

impl Membership {
    /// Notes the member's task as it starts; `false` if it was killed before it started.
    fn start(&self) -> bool {
        let mut members = self.core.members.borrow_mut();
        let Some(m) = members.get_mut(&self.key) else {
            return false;
        };
        if m.cancelled {
            return false;
        }
        m.task = Some(current_hub().current_task());
        true
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.core.members.borrow_mut().remove(&self.key);
        self.core.release_slot();
    }
}

/// A set of greenlets spawned through it (gevent's `Group`): join them all, kill them all,
/// map a function over items. A greenlet leaves the group when it ends.
///
/// Cloning makes another handle to the same group; it is `!Send`.
///
/// ```
/// use std::time::Duration;
/// use greenhub::{Group, sleep};
/// let group = Group::new();
/// for i in 0..3 {
///     group.spawn(move || sleep(Duration::from_millis(i)));
/// }
/// assert_eq!(group.len(), 3);
/// group.join(None).unwrap();
/// assert!(group.is_empty());
/// ```
#[derive(Clone)]
pub struct Group {
    core: Rc<Core>,
}

impl Default for Group {
    fn default() -> Self {
        Group::new()
    }
}

impl fmt::Debug for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group").field("len", &self.len()).finish()
    }
}

/// The methods [`Group`] and [`Pool`] share, written once: each delegates to the [`Core`]
/// behind `self.core`; `imap` holds `self.default_max_held()` results by default. The
/// caller gives each method's docs, in this order.
macro_rules! member_methods {
    (
        $(#[$len:meta])* fn len;
        $(#[$is_empty:meta])* fn is_empty;
        $(#[$join:meta])* fn join;
        $(#[$kill:meta])* fn kill;
        $(#[$kill_timeout:meta])* fn kill_timeout;
        $(#[$map:meta])* fn map;
        $(#[$imap:meta])* fn imap;
        $(#[$imap_unordered:meta])* fn imap_unordered;
    ) => {
        $(#[$len])*
        pub fn len(&self) -> usize {
            self.core.members.borrow().len()
        }

        $(#[$is_empty])*
        pub fn is_empty(&self) -> bool {
            self.len() == 0
        }

        $(#[$join])*
        pub fn join(&self, timeout: Option<Duration>) -> Result<(), Error> {
            self.core.join(timeout.map(deadline_in))
        }

        $(#[$kill])*
        pub fn kill(&self) {
            let _ = self.core.kill(None);
        }

        $(#[$kill_timeout])*
        pub fn kill_timeout(&self, timeout: Duration) -> Result<(), Error> {
            self.core.kill(Some(deadline_in(timeout)))
        }

        $(#[$map])*
        pub fn map<I, F, T>(&self, items: I, f: F) -> Vec<Result<T, Error>>
        where
            I: IntoIterator,
            I::Item: 'static,
            F: Fn(I::Item) -> T + 'static,
            T: 'static,
        {
            self.core.map(items, f)
        }

        $(#[$imap])*
        pub fn imap<I, F, T>(&self, items: I, f: F) -> Imap<T>
        where
            I: IntoIterator,
            I::IntoIter: 'static,
            I::Item: 'static,
            F: Fn(I::Item) -> T + 'static,
            T: 'static,
        {
            Imap {
                feed: self.core.feed(items, f, true, self.default_max_held()),
            }
        }

        $(#[$imap_unordered])*
        pub fn imap_unordered<I, F, T>(&self, items: I, f: F) -> ImapUnordered<T>
        where
            I: IntoIterator,
            I::IntoIter: 'static,
            I::Item: 'static,
            F: Fn(I::Item) -> T + 'static,
            T: 'static,
        {
            ImapUnordered {
                feed: self.core.feed(items, f, false, self.default_max_held()),
            }
        }
    };
}

impl Group {
    /// An empty group.
    pub fn new() -> Group {
        Group {
            core: Core::new(None),
        }
    }

    /// Spawns `f` on the hub as a member of the group (see [`spawn`](crate::spawn)).
    #[track_caller]
    pub fn spawn<F, T>(&self, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + 'static,
        T: 'static,
    {
        self.core.used.set(self.core.used.get() + 1);
        self.core.spawn_member(f)
    }

    fn default_max_held(&self) -> usize {
        GROUP_MAX_HELD
    }

    member_methods! {
        /// How many members are alive.
        fn len;

        /// Has it no live members?
        fn is_empty;

        /// Waits until every member has ended (including ones spawned meanwhile), or
        /// `timeout` passes (gevent's `join`).
        ///
        /// # Errors
        /// [`Error::Timeout`] if members are still alive after `timeout` (or an enclosing
        /// [`Timeout`](crate::Timeout) scope expires), [`Error::BlockForever`] if they can
        /// never end.
        fn join;

        /// Kills every member and waits until they are all dead (gevent's `kill`). Members
        /// that have not started never run.
        fn kill;

        /// Like [`kill`](Group::kill), waiting at most `timeout` for them to die.
        ///
        /// # Errors
        /// [`Error::Timeout`] if some are still alive then.
        fn kill_timeout;

        /// Runs `f` on every item, each in its own member greenlet, and returns the results
        /// in input order once all have finished (gevent's `map`).
        ///
        /// ```
        /// let squares = greenhub::Group::new().map(1..=4, |n: u64| n * n);
        /// let squares: Vec<u64> = squares.into_iter().map(Result::unwrap).collect();
        /// assert_eq!(squares, [1, 4, 9, 16]);
        /// ```
        fn map;

        /// Runs `f` on every item, each in its own member greenlet, and yields the results in
        /// input order as they become ready (gevent's `imap`); see [`Imap`].
        fn imap;

        /// Like [`imap`](Group::imap), yielding results in the order the jobs finish (gevent's
        /// `imap_unordered`).
        fn imap_unordered;
    }
}

/// A [`Group`] with a size limit (gevent's `Pool`): at most `size` members run at a time;
/// [`spawn`](Pool::spawn) waits cooperatively (in FIFO order) while the pool is full.
///
/// Cloning makes another handle to the same pool; it is `!Send`.
///
/// ```
/// use std::time::Duration;
/// use greenhub::{Pool, sleep};
/// let pool = Pool::new(2);
/// for i in 0..5 {
///     // The third spawn waits until one of the first two jobs has ended.
///     pool.spawn(move || sleep(Duration::from_millis(i))).unwrap();
///     assert!(pool.len() <= 2);
/// }
/// pool.join(None).unwrap();
/// assert_eq!(pool.free_count(), 2);
/// ```
#[derive(Clone)]
pub struct Pool {
    core: Rc<Core>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("size", &self.size())
            .field("len", &self.len())
            .finish()
    }
}

impl Pool {
    /// A pool of at most `size` running members.
    ///
    /// # Panics
    /// If `size` is 0.
    pub fn new(size: usize) -> Pool {
        assert!(size > 0, "greenhub: a pool's size must be at least 1");
        Pool {
            core: Core::new(Some(size)),
        }
    }

    /// The most members that run at a time.
    pub fn size(&self) -> usize {
        self.core.limit.unwrap_or(usize::MAX)
    }

    /// Spawns `f` as a member, waiting cooperatively while the pool is full.
    ///
    /// # Errors
    /// [`Error::Timeout`] if an enclosing [`Timeout`](crate::Timeout) scope expires while
    /// it waits, [`Error::BlockForever`] if no member can ever end; `f` is then not run.
    #[track_caller]
    pub fn spawn<F, T>(&self, f: F) -> Result<JoinHandle<T>, Error>
    where
        F: FnOnce() -> T + 'static,
        T: 'static,
    {
        self.core.spawn(None, f)
    }

    /// Like [`spawn`](Pool::spawn), waiting at most `timeout` for room.
    ///
    /// # Errors
    /// [`Error::Timeout`] if the pool is still full after `timeout`; as
    /// [`spawn`](Pool::spawn) otherwise.
    #[track_caller]
    pub fn spawn_timeout<F, T>(&self, timeout: Duration, f: F) -> Result<JoinHandle<T>, Error>
    where
        F: FnOnce() -> T + 'static,
        T: 'static,
    {
        self.core.spawn(Some(deadline_in(timeout)), f)
    }

    /// How many more members could start now without waiting.
    pub fn free_count(&self) -> usize {
        self.core.free_count()
    }

    /// Waits until a member could start without waiting, or `timeout` passes; returns
    /// [`free_count`](Pool::free_count) (gevent's `wait_available`).
    ///
    /// # Errors
    /// [`Error::Timeout`] if the pool is still full after `timeout`;
    /// [`Error::BlockForever`] if no member can ever end.
    pub fn wait_available(&self, timeout: Option<Duration>) -> Result<usize, Error> {
        self.core.wait_available(timeout.map(deadline_in))
    }

    fn default_max_held(&self) -> usize {
        self.size().saturating_mul(2)
    }

    member_methods! {
        /// How many members are alive.
        fn len;

        /// Has it no live members?
        fn is_empty;

        /// Waits until every member has ended, or `timeout` passes; see [`Group::join`].
        ///
        /// # Errors
        /// As [`Group::join`].
        fn join;

        /// Kills every member and waits until they are all dead; see [`Group::kill`].
        fn kill;

        /// Like [`kill`](Pool::kill), waiting at most `timeout` for them to die.
        ///
        /// # Errors
        /// [`Error::Timeout`] if some are still alive then.
        fn kill_timeout;

        /// Runs `f` on every item in the pool (at most `size` at a time) and returns the
        /// results in input order; see [`Group::map`]. An item whose job could not be spawned
        /// (an expired [`Timeout`](crate::Timeout) scope) gets that error.
        ///
        /// ```
        /// let pool = greenhub::Pool::new(2);
        /// let lens: Vec<_> = pool.map(["a", "bb", "ccc"], |s: &str| s.len());
        /// assert_eq!(lens.into_iter().map(Result::unwrap).collect::<Vec<_>>(), [1, 2, 3]);
        /// ```
        fn map;

        /// Runs `f` on every item in the pool and yields the results in input order, lazily,
        /// holding at most twice the pool's size of results at a time (eventlet's
        /// `GreenPool.imap`); see [`Imap`].
        ///
        /// ```
        /// use greenhub::{Error, Pool};
        /// let pool = Pool::new(4);
        /// let mut results = pool.imap(0..5, |n: u32| {
        ///     if n == 2 {
        ///         panic!("bad item"); // reported on stderr; the other jobs go on
        ///     }
        ///     n * 10
        /// });
        /// assert_eq!(results.next().unwrap().unwrap(), 0);
        /// assert_eq!(results.next().unwrap().unwrap(), 10);
        /// assert!(matches!(results.next().unwrap(), Err(Error::Panicked(_))));
        /// assert_eq!(results.map(Result::unwrap).collect::<Vec<_>>(), [30, 40]);
        /// ```
        fn imap;

        /// Like [`imap`](Pool::imap), yielding results in the order the jobs finish.
        fn imap_unordered;
    }
}
