//! The lazy, bounded `imap` of groups and pools: a feeder greenlet spawns one job per
//! item while fewer than `max_held` results are running or unread, and [`Imap`] /
//! [`ImapUnordered`] yield the results in input or completion order.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::rc::Rc;

use super::Core;
use crate::error::Error;
use crate::hub::JoinHandle;
use crate::sync::wait::WaitList;

impl Core {
    /// The feed behind an `imap` of `f` over `items`: results in input order if
    /// `ordered`, at most `max_held` running or unread.
    pub(super) fn feed<I, F, T>(
        self: &Rc<Core>,
        items: I,
        f: F,
        ordered: bool,
        max_held: usize,
    ) -> Feed<T>
    where
        I: IntoIterator,
        I::IntoIter: 'static,
        I::Item: 'static,
        F: Fn(I::Item) -> T + 'static,
        T: 'static,
    {
        let state = Rc::new(FeedState {
            ordered,
            entries: RefCell::new(HashMap::new()),
            finished: RefCell::new(VecDeque::new()),
            spawned: Cell::new(0),
            yielded: Cell::new(0),
            max_held: Cell::new(max_held.max(1)),
            feeding: Cell::new(true),
            consumer: WaitList::new(),
            feeder: WaitList::new(),
        });
        let core = self.clone();
        let st = state.clone();
        let input = items.into_iter();
        let feeder: Box<dyn FnOnce()> = Box::new(move || feed_loop(&core, &st, input, f));
        Feed {
            state,
            start: Some(feeder),
            feeder: None,
        }
    }
}

/// A job of an `imap` as the iterator sees it.
enum Entry<T> {
    Running(JoinHandle<T>),
    Finished(JoinHandle<T>),
    /// It could not be spawned (the feeder's wait for a slot failed).
    Failed(Error),
}

struct FeedState<T> {
    ordered: bool,
    /// Jobs spawned and not yet yielded, by input index.
    entries: RefCell<HashMap<usize, Entry<T>>>,
    /// Indices of finished jobs in the order they finished (unordered only).
    finished: RefCell<VecDeque<usize>>,
    spawned: Cell<usize>,
    yielded: Cell<usize>,
    max_held: Cell<usize>,
    feeding: Cell<bool>,
    /// The iterator, waiting for a result.
    consumer: WaitList,
    /// The feeder, waiting for the iterator to make room.
    feeder: WaitList,
}

impl<T> FeedState<T> {
    fn job_finished(&self, index: usize) {
        let mut entries = self.entries.borrow_mut();
        if let Some(e) = entries.remove(&index) {
            let e = match e {
                Entry::Running(h) => Entry::Finished(h),
                other => other,
            };
            entries.insert(index, e);
        }
        drop(entries);
        if !self.ordered {
            self.finished.borrow_mut().push_back(index);
        }
        self.consumer.notify_one();
    }
}

/// Marks job `index` finished when the job ends (or its closure is dropped unrun).
struct JobDone<T> {
    state: Rc<FeedState<T>>,
    index: usize,
}

impl<T> Drop for JobDone<T> {
    fn drop(&mut self) {
        self.state.job_finished(self.index);
    }
}

/// Marks the feeding over when the feeder ends, however it ends.
struct FeederDone<T>(Rc<FeedState<T>>);

impl<T> Drop for FeederDone<T> {
    fn drop(&mut self) {
        self.0.feeding.set(false);
        self.0.consumer.notify_one();
    }
}

fn feed_loop<I, F, T>(core: &Rc<Core>, state: &Rc<FeedState<T>>, input: I, f: F)
where
    I: Iterator,
    I::Item: 'static,
    F: Fn(I::Item) -> T + 'static,
    T: 'static,
{
    let _done = FeederDone(state.clone());
    let f = Rc::new(f);
    for (index, item) in input.enumerate() {
        while state.spawned.get() - state.yielded.get() >= state.max_held.get() {
            if state
                .feeder
                .wait(&"pool imap reader (feeder)", None, || {})
                .is_err()
            {
                return;
            }
        }
        let job = {
            let f = f.clone();
            let done = JobDone {
                state: state.clone(),
                index,
            };
            move || {
                let _done = done;
                f(item)
            }
        };
        let entry = match core.spawn(None, job) {
            Ok(h) => Entry::Running(h),
            Err(e) => {
                if !state.ordered {
                    state.finished.borrow_mut().push_back(index);
                }
                Entry::Failed(e)
            }
        };
        state.entries.borrow_mut().insert(index, entry);
        state.spawned.set(state.spawned.get() + 1);
        state.consumer.notify_one();
    }
}

/// The machinery behind [`Imap`] and [`ImapUnordered`].
pub(super) struct Feed<T> {
    state: Rc<FeedState<T>>,
    /// The feeder, until the first `next` starts it.
    start: Option<Box<dyn FnOnce()>>,
    feeder: Option<JoinHandle<()>>,
}

impl<T: 'static> Feed<T> {
    fn next(&mut self) -> Option<Result<T, Error>> {
        if let Some(start) = self.start.take() {
            self.feeder = Some(
                crate::hub::SpawnBuilder::new()
                    .name("imap feeder")
                    .spawn(start),
            );
        }
        let st = &*self.state;
        loop {
            let ready = if st.ordered {
                let i = st.yielded.get();
                matches!(
                    st.entries.borrow().get(&i),
                    Some(Entry::Finished(_) | Entry::Failed(_))
                )
                .then_some(i)
            } else {
                st.finished.borrow_mut().pop_front()
            };
            if let Some(i) = ready {
                let entry = st.entries.borrow_mut().remove(&i);
                st.yielded.set(st.yielded.get() + 1);
                st.feeder.notify_one();
                return match entry {
                    Some(Entry::Finished(h) | Entry::Running(h)) => Some(h.join()),
                    Some(Entry::Failed(e)) => Some(Err(e)),
                    None => Some(Err(Error::Killed)),
                };
            }
            if !st.feeding.get() && st.yielded.get() == st.spawned.get() {
                // Done; a feeder that failed (its input panicked) reports it once.
                return match self.feeder.take().map(JoinHandle::join) {
                    Some(Err(e)) => Some(Err(e)),
                    _ => None,
                };
            }
            if let Err(e) = st.consumer.wait(&"pool imap result", None, || {}) {
                return Some(Err(e));
            }
        }
    }

    fn max_held(&self, n: usize) {
        self.state.max_held.set(n.max(1));
        self.state.feeder.notify_one();
    }
}

impl<T> Drop for Feed<T> {
    fn drop(&mut self) {
        // Stop feeding; jobs already spawned run on, their results unread.
        if let Some(feeder) = self.feeder.take()
            && !feeder.is_finished()
        {
            feeder.kill();
        }
    }
}

/// The impls [`Imap`] and [`ImapUnordered`] share: both wrap a [`Feed`].
macro_rules! feed_iterators {
    ($($name:ident),*) => {$(
        impl<T: 'static> $name<T> {
            /// Holds at most `n` results (running or finished, not yet read) at a time (at
            /// least 1). The default is twice the pool's size, or
            /// [`GROUP_MAX_HELD`](super::GROUP_MAX_HELD) for a group.
            pub fn max_held(self, n: usize) -> Self {
                self.feed.max_held(n);
                self
            }
        }

        impl<T: 'static> Iterator for $name<T> {
            type Item = Result<T, Error>;

            fn next(&mut self) -> Option<Result<T, Error>> {
                self.feed.next()
            }
        }

        impl<T: 'static> fmt::Debug for $name<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("yielded", &self.feed.state.yielded.get())
                    .finish()
            }
        }
    )*};
}

/// The iterator of [`Group::imap`](super::Group::imap) / [`Pool::imap`](super::Pool::imap):
/// one result per item, in input order.
///
/// Lazy: nothing is spawned until the first `next`. Then a feeder greenlet spawns jobs
/// (waiting while the pool is full) as long as fewer than `max_held` results are running
/// or waiting to be read. A job that panicked (the panic is reported on stderr by the hub)
/// yields `Err(Error::Panicked)` at its place; the other jobs go on. Dropping the
/// iterator stops the feeding; jobs already running finish on their own.
pub struct Imap<T: 'static> {
    pub(super) feed: Feed<T>,
}

/// The iterator of [`Group::imap_unordered`](super::Group::imap_unordered) /
/// [`Pool::imap_unordered`](super::Pool::imap_unordered): one result per item, in the
/// order the jobs finish. Otherwise as [`Imap`].
pub struct ImapUnordered<T: 'static> {
    pub(super) feed: Feed<T>,
}

feed_iterators!(Imap, ImapUnordered);
