//! # greenhub
//!
//! Python's greenlet and gevent for Rust: stackful coroutines ("greenlets") that switch
//! explicitly, and a hub per thread that runs a `mio` event loop so that blocking calls
//! park the greenlet instead of the thread.
//!
//! ```
//! use std::time::Duration;
//! use greenhub::{Greenlet, getcurrent, joinall, sleep, spawn};
//!
//! // greenlet: explicit switching.
//! let g = Greenlet::new(|v| {
//!     println!("got {}", v.downcast::<&str>().unwrap());
//!     Ok(())
//! });
//! g.switch("hello").unwrap();
//! assert!(g.is_dead() && getcurrent().is_main());
//!
//! // gevent: spawn, cooperative sleep, joinall with a timeout.
//! let jobs: Vec<_> = (0..3).map(|i| spawn(move || { sleep(Duration::from_millis(5)); i })).collect();
//! assert_eq!(joinall(&jobs, Some(Duration::from_secs(2))), 3);
//! ```
//!
//! Layers, lowest first (a layer never imports a higher one): [`greenlet`] <- [`monitor`]
//! (the blocking watchdog: below the hub, which starts it) <- [`hub`] <- [`time`],
//! [`threadpool`], [`net`] (cooperative `std::net` twins and `StreamServer`), [`sync`]
//! (events, queues, locks, greenlet-local data), `monkey` (libc interposition, behind the
//! `monkey` feature: unmodified blocking code becomes cooperative) <- [`pool`] (`Group`,
//! `Pool`).

#![deny(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod error;
pub mod greenlet;
pub mod hub;
pub mod monitor;
#[cfg(feature = "monkey")]
pub mod monkey;
pub mod net;
pub mod pool;
pub mod sync;
pub mod threadpool;
pub mod time;

pub use error::{Error, PanicPayload};
pub use greenlet::{
    Greenlet, GreenletBuilder, GreenletExit, TraceEvent, TraceHook, Value, getcurrent, settrace,
};
pub use hub::{
    HubHandle, JoinHandle, SpawnBuilder, cooperate, dump, joinall, killall, spawn, spawn_later,
};
pub use pool::{Group, Pool};
pub use sync::{
    AsyncResult, BoundedSemaphore, Channel, Event, JoinableQueue, LifoQueue, Local, Lock,
    PriorityQueue, Queue, RLock, Semaphore,
};
pub use threadpool::{ThreadPool, spawn_blocking};
pub use time::{Timeout, sleep, with_timeout};
