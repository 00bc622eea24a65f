//! Queues between greenlets (gevent's `gevent.queue`): [`Queue`] (FIFO), [`LifoQueue`],
//! [`PriorityQueue`], each unbounded or bounded, each joinable (`task_done` / `join`),
//! each closable.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::marker::PhantomData;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::wait::{WaitList, deadline_in};
use crate::error::Error;

/// Why a `put` did not enqueue its item; the item comes back inside.
pub enum PutError<T> {
    /// `put_nowait` on a full queue (or a [`Channel`](super::Channel) with no taker).
    Full(T),
    /// The queue is closed: it takes no more items.
    Closed(T),
    /// The wait for room ran out: the call's own timeout, or an enclosing
    /// [`Timeout`](crate::Timeout) scope.
    Timeout(T),
    /// The wait failed otherwise: [`Error::BlockForever`] (nothing can ever make room),
    /// or an error thrown into the greenlet.
    Other(Error, T),
}

impl<T> PutError<T> {
    /// The item that was not enqueued.
    pub fn into_inner(self) -> T {
        match self {
            PutError::Full(t) | PutError::Closed(t) | PutError::Timeout(t) => t,
            PutError::Other(_, t) => t,
        }
    }

    pub(crate) fn from_wait(error: Error, item: T) -> PutError<T> {
        match error {
            Error::Timeout => PutError::Timeout(item),
            e => PutError::Other(e, item),
        }
    }
}

impl<T> fmt::Debug for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PutError::Full(_) => f.write_str("Full(..)"),
            PutError::Closed(_) => f.write_str("Closed(..)"),
            PutError::Timeout(_) => f.write_str("Timeout(..)"),
            PutError::Other(e, _) => write!(f, "Other({e:?}, ..)"),
        }
    }
}

impl<T> fmt::Display for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PutError::Full(_) => f.write_str("the queue is full"),
            PutError::Closed(_) => f.write_str("the queue is closed"),
            PutError::Timeout(_) => f.write_str("timed out waiting for room in the queue"),
            PutError::Other(e, _) => fmt::Display::fmt(e, f),
        }
    }
}

impl<T> std::error::Error for PutError<T> {}

impl<T> From<PutError<T>> for Error {
    /// `Full` and `Timeout` become [`Error::Timeout`] (a `put_nowait` is a put with no
    /// time to wait), `Closed` becomes [`Error::Closed`]; the item is dropped.
    fn from(e: PutError<T>) -> Error {
        match e {
            PutError::Full(_) | PutError::Timeout(_) => Error::Timeout,
            PutError::Closed(_) => Error::Closed,
            PutError::Other(e, _) => e,
        }
    }
}

/// Why a `get` returned no item.
#[derive(Debug)]
pub enum GetError {
    /// `get_nowait` on an empty queue.
    Empty,
    /// The queue is closed and has no items left.
    Closed,
    /// The wait for an item ran out: the call's own timeout, or an enclosing
    /// [`Timeout`](crate::Timeout) scope.
    Timeout,
    /// The wait failed otherwise: [`Error::BlockForever`] (nothing can ever put an item),
    /// or an error thrown into the greenlet.
    Other(Error),
}

impl GetError {
    pub(crate) fn from_wait(error: Error) -> GetError {
        match error {
            Error::Timeout => GetError::Timeout,
            e => GetError::Other(e),
        }
    }
}

impl PartialEq for GetError {
    /// Variants compare equal; `Other` errors compare by message.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (GetError::Other(a), GetError::Other(b)) => a.to_string() == b.to_string(),
            (a, b) => std::mem::discriminant(a) == std::mem::discriminant(b),
        }
    }
}

impl fmt::Display for GetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GetError::Empty => f.write_str("the queue is empty"),
            GetError::Closed => f.write_str("the queue is closed and empty"),
            GetError::Timeout => f.write_str("timed out waiting for an item"),
            GetError::Other(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl std::error::Error for GetError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GetError::Other(e) => Some(e),
            _ => None,
        }
    }
}

impl From<GetError> for Error {
    /// `Empty` and `Timeout` become [`Error::Timeout`] (a `get_nowait` is a get with no
    /// time to wait), `Closed` becomes [`Error::Closed`].
    fn from(e: GetError) -> Error {
        match e {
            GetError::Empty | GetError::Timeout => Error::Timeout,
            GetError::Closed => Error::Closed,
            GetError::Other(e) => e,
        }
    }
}

/// Where a queue keeps its items: the order they come out in.
pub(crate) trait Store<T>: Default {
    fn push(&mut self, item: T);
    fn pop(&mut self) -> Option<T>;
    fn len(&self) -> usize;
}

impl<T> Store<T> for VecDeque<T> {
    #[inline]
    fn push(&mut self, item: T) {
        self.push_back(item);
    }
    #[inline]
    fn pop(&mut self) -> Option<T> {
        self.pop_front()
    }
    #[inline]
    fn len(&self) -> usize {
        VecDeque::len(self)
    }
}

impl<T> Store<T> for Vec<T> {
    #[inline]
    fn push(&mut self, item: T) {
        Vec::push(self, item);
    }
    #[inline]
    fn pop(&mut self) -> Option<T> {
        Vec::pop(self)
    }
    #[inline]
    fn len(&self) -> usize {
        Vec::len(self)
    }
}

impl<T: Ord> Store<T> for BinaryHeap<Reverse<T>> {
    #[inline]
    fn push(&mut self, item: T) {
        BinaryHeap::push(self, Reverse(item));
    }
    #[inline]
    fn pop(&mut self) -> Option<T> {
        BinaryHeap::pop(self).map(|Reverse(t)| t)
    }
    #[inline]
    fn len(&self) -> usize {
        BinaryHeap::len(self)
    }
}

/// The state and rules shared by the three queue kinds.
pub(crate) struct Core<T, S> {
    items: RefCell<S>,
    capacity: Option<usize>,
    closed: Cell<bool>,
    /// Items promised to getters that a put has woken (not yet taken).
    item_grants: Cell<usize>,
    /// Free places promised to putters that a get has woken (not yet filled).
    room_grants: Cell<usize>,
    getters: WaitList,
    putters: WaitList,
    unfinished: Cell<usize>,
    joiners: WaitList,
    _item: PhantomData<T>,
}

impl<T, S: Store<T>> Core<T, S> {
    fn new(capacity: Option<usize>) -> Core<T, S> {
        assert!(
            capacity != Some(0),
            "greenhub: a queue's capacity must be at least 1 (use sync::Channel for a rendezvous)"
        );
        Core {
            items: RefCell::new(S::default()),
            capacity,
            closed: Cell::new(false),
            item_grants: Cell::new(0),
            room_grants: Cell::new(0),
            getters: WaitList::new(),
            putters: WaitList::new(),
            unfinished: Cell::new(0),
            joiners: WaitList::new(),
            _item: PhantomData,
        }
    }

    fn len(&self) -> usize {
        self.items.borrow().len()
    }

    fn has_room(&self) -> bool {
        self.capacity
            .is_none_or(|c| self.len() + self.room_grants.get() < c)
    }

    /// Adds `item` (room is known to be there) and hands it to the first waiting getter.
    #[inline(always)]
    fn push(&self, item: T) {
        self.items.borrow_mut().push(item);
        self.unfinished.set(self.unfinished.get() + 1);
        if self.getters.notify_one() {
            self.item_grants.set(self.item_grants.get() + 1);
        }
    }

    /// Takes the next item; a place is then free: promise it to the first waiting putter.
    #[inline(always)]
    fn pop(&self) -> T {
        let item = self.items.borrow_mut().pop().expect("an item was counted");
        if self.capacity.is_some() && self.putters.notify_one() {
            self.room_grants.set(self.room_grants.get() + 1);
        }
        item
    }

    /// A getter that was promised an item cannot take it: the next getter gets it.
    fn give_back_item(&self) {
        if self.item_grants.get() > 0 {
            self.item_grants.set(self.item_grants.get() - 1);
            if self.getters.notify_one() {
                self.item_grants.set(self.item_grants.get() + 1);
            }
        }
    }

    /// A putter that was promised a place cannot fill it: the next putter gets it.
    fn give_back_room(&self) {
        if self.room_grants.get() > 0 {
            self.room_grants.set(self.room_grants.get() - 1);
            if self.putters.notify_one() {
                self.room_grants.set(self.room_grants.get() + 1);
            }
        }
    }

    #[inline(always)]
    fn put(&self, item: T, deadline: Option<Instant>, wait: bool) -> Result<(), PutError<T>> {
        loop {
            if self.closed.get() {
                return Err(PutError::Closed(item));
            }
            if self.has_room() {
                self.push(item);
                return Ok(());
            }
            if !wait {
                return Err(PutError::Full(item));
            }
            match self
                .putters
                .wait(&"queue (put)", deadline, || self.give_back_room())
            {
                Ok(true) if self.room_grants.get() > 0 => {
                    self.room_grants.set(self.room_grants.get() - 1);
                    if self.closed.get() {
                        return Err(PutError::Closed(item));
                    }
                    self.push(item);
                    return Ok(());
                }
                Ok(true) => continue, // woken by close()
                Ok(false) => return Err(PutError::Timeout(item)),
                Err(e) => return Err(PutError::from_wait(e, item)),
            }
        }
    }

    #[inline(always)]
    fn get(&self, deadline: Option<Instant>, wait: bool) -> Result<T, GetError> {
        loop {
            if self.len() > self.item_grants.get() {
                return Ok(self.pop());
            }
            if self.closed.get() {
                return Err(GetError::Closed);
            }
            if !wait {
                return Err(GetError::Empty);
            }
            match self
                .getters
                .wait(&"queue (get)", deadline, || self.give_back_item())
            {
                Ok(true) if self.item_grants.get() > 0 => {
                    self.item_grants.set(self.item_grants.get() - 1);
                    return Ok(self.pop());
                }
                Ok(true) => continue, // woken by close()
                Ok(false) => return Err(GetError::Timeout),
                Err(e) => return Err(GetError::from_wait(e)),
            }
        }
    }

    fn close(&self) {
        if self.closed.replace(true) {
            return;
        }
        self.getters.notify_all();
        self.putters.notify_all();
    }

    fn task_done(&self) {
        let n = self.unfinished.get();
        assert!(
            n > 0,
            "greenhub: task_done() called more times than items were put in the queue"
        );
        self.unfinished.set(n - 1);
        if n == 1 {
            self.joiners.notify_all();
        }
    }

    fn join(&self, deadline: Option<Instant>) -> Result<(), Error> {
        while self.unfinished.get() > 0 {
            if !self.joiners.wait(&"queue (join)", deadline, || {})? {
                return Err(Error::Timeout);
            }
        }
        Ok(())
    }
}

macro_rules! queue_type {
    (
        $(#[$meta:meta])*
        $name:ident, $store:ty, [$($bound:tt)*]
    ) => {
        $(#[$meta])*
        pub struct $name<T> {
            core: Rc<Core<T, $store>>,
        }

        impl<T> Clone for $name<T> {
            /// Another handle to the same queue.
            fn clone(&self) -> Self {
                $name { core: self.core.clone() }
            }
        }

        impl<T $($bound)*> Default for $name<T> {
            fn default() -> Self {
                $name::new()
            }
        }

        impl<T> fmt::Debug for $name<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("len", &self.core.items.borrow().len_dyn())
                    .field("capacity", &self.core.capacity)
                    .field("closed", &self.core.closed.get())
                    .finish()
            }
        }

        impl<T $($bound)*> $name<T> {
            /// An unbounded queue: `put` never waits.
            pub fn new() -> Self {
                $name { core: Rc::new(Core::new(None)) }
            }

            /// A queue that holds at most `capacity` items: `put` waits while it is full
            /// (gevent's `maxsize`).
            ///
            /// # Panics
            /// If `capacity` is 0 (a rendezvous is a [`Channel`](super::Channel)).
            pub fn bounded(capacity: usize) -> Self {
                $name { core: Rc::new(Core::new(Some(capacity))) }
            }

            /// Adds `item`, waiting cooperatively while the queue is full. Waiting putters
            /// get room in the order they came.
            ///
            /// # Errors
            /// [`PutError::Closed`] if the queue is closed (also when it is closed while
            /// this put waits); [`PutError::Timeout`] if an enclosing
            /// [`Timeout`](crate::Timeout) scope expires; [`PutError::Other`] with
            /// [`Error::BlockForever`] if nothing can ever make room. The item comes back
            /// in the error.
            pub fn put(&self, item: T) -> Result<(), PutError<T>> {
                self.core.put(item, None, true)
            }

            /// Like [`put`](Self::put), waiting at most `timeout` for room.
            ///
            /// # Errors
            /// [`PutError::Timeout`] if the queue is still full after `timeout`; as
            /// [`put`](Self::put) otherwise.
            pub fn put_timeout(&self, item: T, timeout: Duration) -> Result<(), PutError<T>> {
                self.core.put(item, Some(deadline_in(timeout)), true)
            }

            /// Adds `item` if there is room now, without waiting.
            ///
            /// # Errors
            /// [`PutError::Full`] if the queue is full, [`PutError::Closed`] if it is
            /// closed.
            pub fn put_nowait(&self, item: T) -> Result<(), PutError<T>> {
                self.core.put(item, None, false)
            }

            /// Takes the next item, waiting cooperatively while the queue is empty.
            /// Waiting getters are served in the order they came.
            ///
            /// # Errors
            /// [`GetError::Closed`] once the queue is closed and empty (items put before
            /// `close` are still delivered first); [`GetError::Timeout`] if an enclosing
            /// [`Timeout`](crate::Timeout) scope expires; [`GetError::Other`] with
            /// [`Error::BlockForever`] if nothing can ever put an item.
            pub fn get(&self) -> Result<T, GetError> {
                self.core.get(None, true)
            }

            /// Like [`get`](Self::get), waiting at most `timeout`.
            ///
            /// # Errors
            /// [`GetError::Timeout`] if no item came within `timeout`; as
            /// [`get`](Self::get) otherwise.
            pub fn get_timeout(&self, timeout: Duration) -> Result<T, GetError> {
                self.core.get(Some(deadline_in(timeout)), true)
            }

            /// Takes the next item if there is one now, without waiting.
            ///
            /// # Errors
            /// [`GetError::Empty`] if there is none, [`GetError::Closed`] if there is none
            /// and the queue is closed.
            pub fn get_nowait(&self) -> Result<T, GetError> {
                self.core.get(None, false)
            }

            /// An iterator that [`get`](Self::get)s items until the queue is closed and
            /// drained (or a `get` fails), so consumers need no sentinel values.
            pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
                std::iter::from_fn(move || self.get().ok())
            }

            /// Closes the queue: later `put`s fail with `Closed` (and return their item),
            /// putters waiting for room are woken with `Closed`; getters drain the items
            /// left, then get `Closed`. Closing twice does nothing.
            pub fn close(&self) {
                self.core.close();
            }

            /// Has [`close`](Self::close) been called?
            pub fn is_closed(&self) -> bool {
                self.core.closed.get()
            }

            /// How many items are in the queue.
            pub fn len(&self) -> usize {
                self.core.len()
            }

            /// Is the queue empty?
            pub fn is_empty(&self) -> bool {
                self.core.len() == 0
            }

            /// Is the queue bounded and holding `capacity` items?
            pub fn is_full(&self) -> bool {
                self.core.capacity.is_some_and(|c| self.core.len() >= c)
            }

            /// The most items it holds (`None`: unbounded).
            pub fn capacity(&self) -> Option<usize> {
                self.core.capacity
            }

            /// Marks one item taken with `get` as processed (`JoinableQueue.task_done`).
            ///
            /// # Panics
            /// If it is called more times than items were put.
            pub fn task_done(&self) {
                self.core.task_done();
            }

            /// How many items were put and not yet marked done with
            /// [`task_done`](Self::task_done).
            pub fn unfinished_tasks(&self) -> usize {
                self.core.unfinished.get()
            }

            /// Waits cooperatively until every item put has been marked done with
            /// [`task_done`](Self::task_done) (`JoinableQueue.join`).
            ///
            /// # Errors
            /// [`Error::Timeout`] if an enclosing [`Timeout`](crate::Timeout) scope
            /// expires, [`Error::BlockForever`] if nothing can ever finish the work.
            pub fn join(&self) -> Result<(), Error> {
                self.core.join(None)
            }

            /// Like [`join`](Self::join), waiting at most `timeout`.
            ///
            /// # Errors
            /// [`Error::Timeout`] if items are still unfinished after `timeout`.
            pub fn join_timeout(&self, timeout: Duration) -> Result<(), Error> {
                self.core.join(Some(deadline_in(timeout)))
            }
        }
    };
}

/// Lets `Debug` read a store's length without the item bound of `Store`.
trait LenDyn {
    fn len_dyn(&self) -> usize;
}
impl<T> LenDyn for VecDeque<T> {
    fn len_dyn(&self) -> usize {
        self.len()
    }
}
impl<T> LenDyn for Vec<T> {
    fn len_dyn(&self) -> usize {
        self.len()
    }
}
impl<T> LenDyn for BinaryHeap<Reverse<T>> {
    fn len_dyn(&self) -> usize {
        self.len()
    }
}

queue_type! {
    /// A first-in, first-out queue between greenlets (gevent's `Queue` and
    /// `JoinableQueue`): unbounded ([`new`](Queue::new)) or bounded
    /// ([`bounded`](Queue::bounded)), with `put` / `get` that wait cooperatively, in FIFO
    /// order, with a timeout, `_nowait` forms, `task_done` / `join`, and
    /// [`close`](Queue::close) so that consumers can stop without sentinels.
    ///
    /// Cloning makes another handle to the same queue. A queue belongs to its thread's
    /// hub: it is `!Send`.
    ///
    /// ```
    /// use greenhub::{spawn, sync::Queue};
    /// let q = Queue::bounded(2);
    /// let producer = {
    ///     let q = q.clone();
    ///     spawn(move || {
    ///         for i in 0..5 {
    ///             q.put(i).unwrap(); // waits while 2 items are queued
    ///         }
    ///         q.close();
    ///     })
    /// };
    /// let got: Vec<i32> = q.iter().collect(); // ends when closed and drained
    /// assert_eq!(got, [0, 1, 2, 3, 4]);
    /// producer.join().unwrap();
    /// ```
    ///
    /// Joinable, as in asyncio's producer/consumer:
    ///
    /// ```
    /// use greenhub::{spawn, sync::JoinableQueue};
    /// let q = JoinableQueue::new();
    /// let c = q.clone();
    /// spawn(move || {
    ///     while let Ok(item) = c.get() {
    ///         println!("consumed {item}");
    ///         c.task_done();
    ///     }
    /// });
    /// for i in 0..3 {
    ///     q.put(i).unwrap();
    /// }
    /// q.join().unwrap(); // every item was taken and marked done
    /// assert_eq!(q.unfinished_tasks(), 0);
    /// ```
    ///
    /// It cannot be sent to another thread:
    ///
    /// ```compile_fail,E0277
    /// fn assert_send<T: Send>(_: T) {}
    /// assert_send(greenhub::sync::Queue::<u32>::new());
    /// ```
    Queue, VecDeque<T>, []
}

queue_type! {
    /// A last-in, first-out queue (gevent's `LifoQueue`): the most recently put item
    /// comes out first. Otherwise as [`Queue`].
    ///
    /// ```
    /// let q = greenhub::sync::LifoQueue::new();
    /// for i in 1..=3 {
    ///     q.put(i).unwrap();
    /// }
    /// assert_eq!(q.get().unwrap(), 3);
    /// assert_eq!(q.get().unwrap(), 2);
    /// ```
    LifoQueue, Vec<T>, []
}

queue_type! {
    /// A priority queue (gevent's `PriorityQueue`): the *lowest* item comes out first (wrap
    /// items in [`std::cmp::Reverse`] for highest-first). Otherwise as [`Queue`].
    ///
    /// ```
    /// let q = greenhub::sync::PriorityQueue::new();
    /// for job in [(3, "low"), (1, "urgent"), (2, "normal")] {
    ///     q.put(job).unwrap();
    /// }
    /// assert_eq!(q.get().unwrap(), (1, "urgent"));
    /// assert_eq!(q.get().unwrap(), (2, "normal"));
    /// ```
    PriorityQueue, BinaryHeap<Reverse<T>>, [: Ord]
}

/// A [`Queue`] used with `task_done` / `join` (gevent's `JoinableQueue`); every queue
/// kind here is joinable.
pub type JoinableQueue<T> = Queue<T>;
