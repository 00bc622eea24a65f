//! Blocking work on OS threads, waited for cooperatively (gevent's `threadpool`).
//!
//! Some work cannot be made cooperative: `getaddrinfo`, file I/O, a long computation.
//! [`spawn_blocking`] runs it on a pool thread while the calling greenlet waits and the
//! other greenlets keep running (the hub is the only place a thread blocks).

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use crate::error::Error;
use crate::hub::result_channel;

type Job = Box<dyn FnOnce() + Send>;

struct Shared {
    state: Mutex<State>,
    work: Condvar,
    max_threads: usize,
    name: String,
}

struct State {
    queue: VecDeque<Job>,
    threads: usize,
    idle: usize,
}

/// A bounded pool of named OS threads, started on demand.
///
/// ```
/// let pool = greenhub::ThreadPool::new(2);
/// let n = pool.run(|| (1..=10).sum::<u32>()).unwrap();
/// assert_eq!(n, 55);
/// ```
#[derive(Clone)]
pub struct ThreadPool {
    shared: Arc<Shared>,
}

/// The default pool's size: `GREENHUB_THREADPOOL_SIZE`, or 10 (gevent's default).
fn default_size() -> usize {
    std::env::var("GREENHUB_THREADPOOL_SIZE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(10)
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("ThreadPool")
            .field("name", &self.shared.name)
            .field("max_threads", &self.shared.max_threads)
            .field("threads", &state.threads)
            .field("idle", &state.idle)
            .field("queued", &state.queue.len())
            .finish()
    }
}

impl ThreadPool {
    /// A pool of at most `max_threads` threads named `greenhub-pool-<n>`.
    ///
    /// # Panics
    /// If `max_threads` is 0.
    pub fn new(max_threads: usize) -> ThreadPool {
        ThreadPool::with_name(max_threads, "greenhub-pool")
    }

    fn with_name(max_threads: usize, name: &str) -> ThreadPool {
        assert!(max_threads > 0, "a thread pool needs at least one thread");
        ThreadPool {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    threads: 0,
                    idle: 0,
                }),
                work: Condvar::new(),
                max_threads,
                name: name.to_string(),
            }),
        }
    }

    /// The process-wide pool used by [`spawn_blocking`] (size: `GREENHUB_THREADPOOL_SIZE`,
    /// default 10).
    pub fn global() -> &'static ThreadPool {
        static POOL: OnceLock<ThreadPool> = OnceLock::new();
        POOL.get_or_init(|| ThreadPool::new(default_size()))
    }

    /// The most threads it will run.
    pub fn max_threads(&self) -> usize {
        self.shared.max_threads
    }

    /// Runs `f` on a pool thread; the calling greenlet waits cooperatively for the result.
    ///
    /// # Errors
    /// [`Error::Panicked`] with the payload if `f` panicked; [`Error::Timeout`] if a
    /// `Timeout` scope expires first (`f` still runs to completion on its thread).
    pub fn run<F, T>(&self, f: F) -> Result<T, Error>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = result_channel();
        self.submit(Box::new(move || {
            tx.send(catch_unwind(AssertUnwindSafe(f)));
        }));
        rx.recv()?.map_err(|p| Error::Panicked(p.into()))
    }

    fn submit(&self, job: Job) {
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        state.queue.push_back(job);
        if state.idle == 0 && state.threads < self.shared.max_threads {
            state.threads += 1;
            let n = state.threads;
            let shared = self.shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{}-{n}", self.shared.name))
                .spawn(move || worker(&shared));
            if spawned.is_err() {
                state.threads -= 1; // the queued job waits for an existing thread
            }
        } else {
            self.shared.work.notify_one();
        }
    }
}

fn worker(shared: &Shared) {
    let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if let Some(job) = state.queue.pop_front() {
            drop(state);
            job();
            state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            continue;
        }
        state.idle += 1;
        state = shared.work.wait(state).unwrap_or_else(|e| e.into_inner());
        state.idle -= 1;
    }
}

/// Runs `f` on the global [`ThreadPool`]; the calling greenlet waits cooperatively and
/// gets `f`'s result, or its panic as [`Error::Panicked`].
///
/// ```
/// use std::time::Duration;
/// let ticker = greenhub::spawn(|| { greenhub::sleep(Duration::from_millis(5)); "ticked" });
/// // Blocks a pool thread for 50 ms; the ticker runs meanwhile on this thread's hub.
/// let v = greenhub::spawn_blocking(|| { std::thread::sleep(Duration::from_millis(50)); 7 }).unwrap();
/// assert_eq!(v, 7);
/// assert!(ticker.is_finished());
/// ```
///
/// # Errors
/// As [`ThreadPool::run`].
pub fn spawn_blocking<F, T>(f: F) -> Result<T, Error>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    ThreadPool::global().run(f)
}
