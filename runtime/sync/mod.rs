//! Synchronization between greenlets (gevent's `event`, `queue`, `lock` and `local`).
//!
//! Every wait here is cooperative (it parks the greenlet and runs the hub), accepts a
//! timeout (a `_timeout` form, and any enclosing [`Timeout`](crate::Timeout) scope), and
//! wakes waiters in the order they came. A greenlet killed while it waits leaves no trace:
//! the next `set`, `put` or `release` goes to a live greenlet. Every type is a cheap
//! handle (clone it to share) that belongs to its thread's hub: none is `Send`.
//!
//! | gevent | here |
//! |---|---|
//! | `Event`, `AsyncResult` | [`Event`], [`AsyncResult`] |
//! | `Queue`, `JoinableQueue`, `LifoQueue`, `PriorityQueue`, `Channel` | [`Queue`], [`JoinableQueue`], [`LifoQueue`], [`PriorityQueue`], [`Channel`] |
//! | `Semaphore`, `BoundedSemaphore`, `Lock`, `RLock` | [`Semaphore`], [`BoundedSemaphore`], [`Lock`], [`RLock`] |
//! | `local` | [`Local`] |
//!
//! ```
//! use greenhub::{spawn, sync::{Event, Queue}};
//! let q = Queue::new();
//! let done = Event::new();
//! let (c, d) = (q.clone(), done.clone());
//! spawn(move || {
//!     let total: i32 = c.iter().sum(); // until closed and drained
//!     println!("total {total}");
//!     d.set();
//! });
//! for i in 1..=4 {
//!     q.put(i).unwrap();
//! }
//! q.close();
//! done.wait().unwrap();
//! ```

mod channel;
mod event;
mod local;
mod lock;
mod queue;
pub(crate) mod wait;

pub use channel::Channel;
pub use event::{AsyncResult, Event};
pub use local::Local;
pub use lock::{
    BoundedSemaphore, Lock, LockError, LockGuard, RLock, RLockGuard, Semaphore, SemaphoreGuard,
};
pub use queue::{GetError, JoinableQueue, LifoQueue, PriorityQueue, PutError, Queue};
