//! Helpers shared by the tests that run third-party crates under the libc hooks: the slow
//! local HTTP server, a ticker greenlet that measures how late the hub runs it, and a
//! runner that fails a scenario that does not finish instead of hanging the test.
#![allow(dead_code)] // each test file uses only some of these

#[path = "../../examples/support/slow_http.rs"]
pub mod slow_http;

use std::any::Any;
use std::cell::Cell;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use greenhub::JoinHandle;

/// The ticker's period.
pub const TICK: Duration = Duration::from_millis(10);
/// How late a tick may be, beyond what the OS kept the thread waiting for a CPU: a hub
/// blocked in one slow call (200 ms here) misses by far more.
pub const MAX_TICK_LATE: Duration = Duration::from_millis(50);

/// What a [`Ticker`] saw.
#[derive(Clone, Copy, Debug)]
pub struct Ticks {
    /// Ticks completed.
    pub count: u32,
    /// The latest a tick woke past its period, less the time the thread spent runnable
    /// but waiting for a CPU meanwhile (a busy machine, not the hub's doing).
    pub worst_late: Duration,
    /// The latest a tick woke past its period, by the clock alone.
    pub worst_late_wall: Duration,
}

/// How long this thread has waited on a run queue so far: the second field of
/// `/proc/thread-self/schedstat` (zero where it cannot be read).
fn run_queue_wait() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

/// A greenlet that sleeps [`TICK`] in a loop and records how late each wake-up is.
pub struct Ticker {
    stop: Rc<Cell<bool>>,
    count: Rc<Cell<u32>>,
    handle: JoinHandle<Ticks>,
}

impl Ticker {
    /// Spawns the ticker on this thread's hub.
    pub fn start() -> Ticker {
        let stop = Rc::new(Cell::new(false));
        let count = Rc::new(Cell::new(0));
        let (flag, counted) = (stop.clone(), count.clone());
        let handle = greenhub::spawn(move || {
            let mut ticks = Ticks {
                count: 0,
                worst_late: Duration::ZERO,
                worst_late_wall: Duration::ZERO,
            };
            while !flag.get() {
                let (t, waited) = (Instant::now(), run_queue_wait());
                greenhub::sleep(TICK);
                let late = t.elapsed().saturating_sub(TICK);
                let starved = run_queue_wait().saturating_sub(waited);
                ticks.worst_late_wall = ticks.worst_late_wall.max(late);
                ticks.worst_late = ticks.worst_late.max(late.saturating_sub(starved));
                ticks.count += 1;
                counted.set(ticks.count);
            }
            ticks
        });
        Ticker {
            stop,
            count,
            handle,
        }
    }

    /// Ticks completed so far.
    pub fn count(&self) -> u32 {
        self.count.get()
    }

    /// The count of ticks completed, shared: it goes on counting while the ticker runs.
    pub fn counter(&self) -> Rc<Cell<u32>> {
        self.count.clone()
    }

    /// Stops the ticker and returns what it saw.
    ///
    /// # Panics
    /// If the ticker greenlet failed.
    pub fn stop(self) -> Ticks {
        self.stop.set(true);
        self.handle.join().expect("the ticker greenlet")
    }
}

/// Asserts that `ticks` over `elapsed` show a hub that kept running the ticker.
///
/// # Panics
/// If a tick was more than [`MAX_TICK_LATE`] late (beyond the OS's delays), or the ticker
/// hardly ran.
pub fn assert_ticked(what: &str, ticks: Ticks, elapsed: Duration) {
    assert_ticked_within(what, ticks, elapsed, MAX_TICK_LATE);
}

/// [`assert_ticked`] with a bound of its own on how late a tick may be: for a scenario
/// whose greenlets all become ready at once (hundreds of connects in one round of the
/// hub), where the bound must sit between the longest honest round and the call that
/// would block the hub if a hook missed it.
///
/// # Panics
/// If a tick was more than `max_late` late (beyond the OS's delays), or the ticker hardly
/// ran.
pub fn assert_ticked_within(what: &str, ticks: Ticks, elapsed: Duration, max_late: Duration) {
    eprintln!(
        "{what}: {} ticks in {elapsed:?}, the latest {:?} late ({:?} by the clock, \
         with the waits for a CPU)",
        ticks.count, ticks.worst_late, ticks.worst_late_wall
    );
    assert!(
        ticks.worst_late <= max_late,
        "{what}: the ticker woke {:?} late beyond the OS's delays ({:?} by the clock; at \
         most {max_late:?} allowed): the hub was blocked",
        ticks.worst_late,
        ticks.worst_late_wall
    );
    // A running hub ticks at least once per TICK + max_late, plus what the OS took.
    let least = (elapsed.as_secs_f64() / (TICK + max_late).as_secs_f64() / 4.0) as u32;
    assert!(
        ticks.count >= least,
        "{what}: {} ticks in {elapsed:?}",
        ticks.count
    );
}

/// Runs `f` on a new thread (with its own hub) and returns its result; fails the test if
/// `f` has not returned within `limit` (a hub blocked in a call that the hooks missed
/// would otherwise hang the test). A panic in `f` is raised here.
///
/// # Panics
/// On the time limit, or with `f`'s panic.
pub fn run_bounded<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (done, finished) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(what.to_string())
        .spawn(move || {
            // Signals on return and on unwinding alike.
            struct Signal(mpsc::Sender<()>);
            impl Drop for Signal {
                fn drop(&mut self) {
                    let _ = self.0.send(());
                }
            }
            let _signal = Signal(done);
            f()
        })
        .expect("start the scenario's thread");
    if finished.recv_timeout(limit).is_err() {
        panic!("{what} did not finish within {limit:?}: a call blocked the hub?");
    }
    match thread.join() {
        Ok(v) => v,
        Err(panic) => resume(panic),
    }
}

fn resume(panic: Box<dyn Any + Send>) -> ! {
    std::panic::resume_unwind(panic)
}

/// Turns the hooks on for this process.
///
/// # Panics
/// If they cannot be turned on (`GREENHUB_MONKEY=off` in the environment, say): these
/// tests are about the hooks.
pub fn patch() {
    assert!(
        greenhub::monkey::patch_all(),
        "greenhub::monkey::patch_all() did not turn the hooks on (GREENHUB_MONKEY=off?)"
    );
}
