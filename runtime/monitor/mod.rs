//! Blocking detection: a watchdog thread that notices a greenlet running too long without
//! switching — while it still runs — and reports which greenlet it is, for how long, what
//! the thread is doing (on the CPU or in which system call), and its live stack.
//!
//! One monitor thread per process watches every thread's probe: a switch counter bumped
//! with a relaxed store on every switch, an idle flag the hub sets around `epoll_wait`,
//! and who waits on the hub (published by the hub when it switches into a greenlet). When
//! the counter of a thread with a hub has not moved for `max_blocking_time` (default
//! 100 ms), the hub is not idle, and someone is kept waiting — a greenlet ready to run, a
//! timer that is due, a greenlet waiting on I/O or on another thread — the monitor reports
//! it. (A program that runs on its main greenlet with nobody waiting, a long computation
//! or a `std::thread::sleep`, is not blocking anyone and is not reported.) If the thread is
//! on a CPU, the monitor sends it a signal; the handler records the interrupted registers
//! and the running greenlet's id and name into a preallocated slot and holds the thread
//! while the monitor walks its stack (see `capture`); the reporting thread
//! (`greenhub-report`) symbolizes the return addresses and keeps the user's frames. A thread
//! in a system call is not signalled (that would make the call fail with `EINTR`): its
//! report names the greenlet the hub switched into and the call, without a stack. One
//! report per blocking episode, and a closing line with the measured total when the
//! greenlet finally yields.
//!
//! Configure in code with [`configure`] or with `GREENHUB_MAX_BLOCKING_TIME` (`250ms`,
//! `1s`, `off`), read when the first hub starts. Reports go to stderr and to the callback.
//!
//! The monitor also drives time slices: when a greenlet has run `time_slice` (default
//! 10 ms) without switching, it asks the thread to yield at the next
//! [`cooperate()`](crate::cooperate).
//!
//! The monitor thread sleeps while no hub needs a look (every hub idle in `epoll_wait`, or
//! running with nobody waiting until its time slice ends or its next timer is due); the
//! hubs wake it through the probe's doorbell when that changes. An idle process wakes it
//! once a minute (its longest nap); with both reports and time slices off no monitor thread starts.
//!
//! This layer sits below the hub (it needs only the greenlet probe), so that the hub can
//! start it when the first hub is created.

mod capture;
mod report;
mod reporter;
mod unwind;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::greenlet::probe::{self, Probe};

pub use report::{BlockReport, Delayed, Frame, ThreadActivity};

/// The default `max_blocking_time`.
pub const DEFAULT_MAX_BLOCKING_TIME: Duration = Duration::from_millis(100);
/// The default time slice after which `cooperate()` yields.
pub const DEFAULT_TIME_SLICE: Duration = Duration::from_millis(10);

/// A callback that receives every report (blocking and closing lines), on the monitor's
/// reporting thread (`greenhub-report`), in order.
pub type Callback = Arc<dyn Fn(&BlockReport) + Send + Sync>;

/// The monitor's settings; see [`configure`].
#[derive(Clone)]
pub struct Config {
    /// Report a greenlet that runs this long without switching; `None` turns reports off.
    pub max_blocking_time: Option<Duration>,
    /// After this long without switching, `cooperate()` yields; `None` turns time slices
    /// off (`cooperate()` then never yields).
    pub time_slice: Option<Duration>,
    /// Print reports on stderr (default true).
    pub stderr: bool,
    /// Also hand each report to this callback. A callback that panics is reported and kept
    /// (the monitor survives it).
    pub callback: Option<Callback>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_blocking_time: Some(DEFAULT_MAX_BLOCKING_TIME),
            time_slice: Some(DEFAULT_TIME_SLICE),
            stderr: true,
            callback: None,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("max_blocking_time", &self.max_blocking_time)
            .field("time_slice", &self.time_slice)
            .field("stderr", &self.stderr)
            .field(
                "callback",
                &self.callback.as_ref().map(|_| "Fn(&BlockReport)"),
            )
            .finish()
    }
}

struct Monitor {
    config: Mutex<Config>,
    /// Bumped by `configure` so the watchdog re-reads the settings.
    generation: AtomicU64,
    /// Are reports or time slices on? (No monitor thread runs while both are off.)
    on: AtomicBool,
}

impl Config {
    /// Does this configuration need the monitor thread (reports or time slices)?
    fn is_on(&self) -> bool {
        self.max_blocking_time.is_some() || self.time_slice.is_some()
    }
}

fn monitor() -> &'static Monitor {
    static MONITOR: OnceLock<Monitor> = OnceLock::new();
    MONITOR.get_or_init(|| {
        let config = Config {
            max_blocking_time: max_blocking_time_from_env(),
            ..Config::default()
        };
        Monitor {
            on: AtomicBool::new(config.is_on()),
            config: Mutex::new(config),
            generation: AtomicU64::new(0),
        }
    })
}

/// Parses `GREENHUB_MAX_BLOCKING_TIME`: `off`/`0`, or a number with `ms`, `s` or `us`.
fn max_blocking_time_from_env() -> Option<Duration> {
    match std::env::var("GREENHUB_MAX_BLOCKING_TIME") {
        Ok(v) => parse_duration(&v).unwrap_or_else(|| {
            eprintln!("greenhub: GREENHUB_MAX_BLOCKING_TIME={v:?} not understood; using 100ms");
            Some(DEFAULT_MAX_BLOCKING_TIME)
        }),
        Err(_) => Some(DEFAULT_MAX_BLOCKING_TIME),
    }
}

/// `Some(None)` for off, `Some(Some(d))` for a duration, `None` if unparsable.
fn parse_duration(v: &str) -> Option<Option<Duration>> {
    let v = v.trim().to_ascii_lowercase();
    if v == "off" || v == "0" || v == "none" {
        return Some(None);
    }
    let (num, unit) = v.split_at(
        v.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(v.len()),
    );
    let n: f64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "ms" | "" => n / 1e3,
        "s" => n,
        "us" => n / 1e6,
        _ => return None,
    };
    Some((secs > 0.0).then(|| Duration::from_secs_f64(secs)))
}

/// Replaces the monitor's settings (and starts the monitor thread if they need it and it is
/// not running).
///
/// With both `max_blocking_time` and `time_slice` set to `None` the monitor is off: no
/// monitor thread is started (one already running sleeps until the monitor is turned on
/// again), and threads that start using greenlets afterwards publish no probe at all
/// (their switches do not even store the counter). Threads already running keep their
/// probes.
///
/// ```
/// use std::time::Duration;
/// use greenhub::monitor::{self, Config};
/// monitor::configure(Config { max_blocking_time: Some(Duration::from_millis(250)), ..Config::default() });
/// assert_eq!(monitor::config().max_blocking_time, Some(Duration::from_millis(250)));
/// ```
pub fn configure(config: Config) {
    let on = config.is_on();
    probe::set_recording(on);
    *monitor().config.lock().unwrap_or_else(|e| e.into_inner()) = config;
    monitor().generation.fetch_add(1, Ordering::SeqCst);
    monitor().on.store(on, Ordering::SeqCst);
    start();
    probe::DOORBELL.ring(); // a sleeping monitor reads the new settings
}

/// The current settings.
pub fn config() -> Config {
    monitor()
        .config
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

/// Starts the monitor thread once per process, if the settings need it (the hub calls
/// this when it is created); a sleeping monitor wakes to watch the new hub.
pub(crate) fn start() {
    static STARTED: AtomicBool = AtomicBool::new(false);
    if !monitor().on.load(Ordering::SeqCst) {
        return;
    }
    if STARTED.swap(true, Ordering::AcqRel) {
        probe::DOORBELL.ring();
        return;
    }
    capture::install_handler();
    let spawned = std::thread::Builder::new()
        .name("greenhub-monitor".into())
        .spawn(watch);
    if let Err(e) = spawned {
        eprintln!("greenhub: cannot start the monitor thread: {e}");
    }
}

/// What the watchdog remembers about one thread.
struct Watch {
    probe: Arc<Probe>,
    switches: u64,
    since: Instant,
    reported: Option<report::Episode>,
    preempt_asked: bool,
    /// CPU time of the thread when the episode was half the threshold old.
    cpu_mark: Option<(Instant, u64)>,
    /// Captures tried in this episode (one that lands in a stack switch is tried again).
    tries: u32,
    /// Since when (the first look that saw it) someone has been kept waiting, in this
    /// episode.
    waiting_since: Option<Instant>,
}

/// How many captures an episode's report waits for before it goes out without a stack.
const CAPTURE_TRIES: u32 = 3;

/// The longest the monitor sleeps while a hub runs with nobody waiting on it (a wake-up
/// it should have had comes this late at worst).
const BUSY_SLEEP_CAP: Duration = Duration::from_secs(1);

/// The longest the monitor sleeps while every hub is idle (their wake-ups are never
/// missed: a safety net only).
const IDLE_SLEEP_CAP: Duration = Duration::from_secs(60);

/// The watchdog's state: the threads it watches and what it needs to look at them.
struct Watcher {
    watches: Vec<Watch>,
    /// `probe::generation()` when `watches` was last brought up to date.
    probes_seen: u64,
    config: Config,
    generation: u64,
    unwinder: unwind::Unwinder,
}

/// The monitor thread. It looks at every hub thread's probe as often as a hub needs it —
/// every tick while a hub runs a greenlet that keeps someone waiting, at the end of a time
/// slice or at the next due timer while it keeps nobody waiting — and sleeps while no hub
/// needs a look (all idle in `epoll_wait`, or keeping nobody waiting and out of time
/// slice), until a hub rings the doorbell (see `probe`).
///
/// Rings that come more often than half the tick rate (over a window of `QUIET`) mean the
/// hubs are coming and going often: then the monitor ticks instead, without the doorbell,
/// until they have needed no look for `QUIET`, so that busy hubs do not pay a wake-up (and
/// it a barrier) per request. The few rings one hub wake-up makes (leaving `epoll_wait`,
/// a new timer, a greenlet switched into) stay far below that.
fn watch() {
    probe::DOORBELL.answer_here();
    let mut watcher = Watcher {
        watches: Vec::new(),
        probes_seen: u64::MAX,
        config: Config::default(),
        generation: u64::MAX,
        unwinder: unwind::Unwinder::new(),
    };
    // Since when no hub has needed a look within a tick (`None`: one does).
    let mut quiet_since: Option<Instant> = None;
    // The rings that woke it since the window began, and whether it ticks instead.
    let mut rings = (Instant::now(), 0_u32);
    let mut ticking = false;
    loop {
        watcher.reload_config();
        let tick = tick_for(&watcher.config);
        let now = Instant::now();
        let next = watcher.look(now);
        if let Some(nap) = next.filter(|&d| d <= tick) {
            quiet_since = None;
            std::thread::sleep(nap);
            continue;
        }
        let quiet = *quiet_since.get_or_insert(now);
        if ticking && now - quiet < QUIET {
            std::thread::sleep(tick); // hubs were busy a moment ago: look again soon
            continue;
        }
        ticking = false;
        // Going to sleep. A hub that leaves epoll_wait from here on rings; one that left
        // since the look above is seen by this one.
        if !probe::DOORBELL.going_to_sleep() {
            std::thread::sleep(NO_BARRIER_NAP);
            continue;
        }
        watcher.reload_config();
        let now = Instant::now();
        let next = watcher.look(now);
        if let Some(nap) = next.filter(|&d| d <= tick_for(&watcher.config)) {
            probe::DOORBELL.stay_awake();
            quiet_since = None;
            std::thread::sleep(nap);
            continue;
        }
        let cap = if !monitor().on.load(Ordering::SeqCst) {
            None
        } else if watcher.any_busy() {
            Some(BUSY_SLEEP_CAP)
        } else {
            Some(IDLE_SLEEP_CAP)
        };
        let timeout = match (next, cap) {
            (Some(d), Some(c)) => Some(d.min(c)),
            (d, c) => d.or(c),
        };
        if probe::DOORBELL.sleep(timeout) {
            let now = Instant::now();
            if now - rings.0 >= QUIET {
                rings = (now, 0);
            }
            rings.1 += 1;
            let tick = tick_for(&watcher.config);
            ticking = u128::from(rings.1) * 2 * tick.as_nanos() >= QUIET.as_nanos();
        }
        quiet_since = None;
    }
}

/// The window over which rings are counted, and how long the hubs must have needed no look
/// before a ticking monitor sleeps again.
const QUIET: Duration = Duration::from_millis(100);

/// Where `membarrier(2)` is not available, the monitor never sleeps longer than this.
const NO_BARRIER_NAP: Duration = Duration::from_millis(50);

impl Watcher {
    fn reload_config(&mut self) {
        let generation = monitor().generation.load(Ordering::SeqCst);
        if generation != self.generation {
            self.generation = generation;
            self.config = config();
        }
    }

    /// Is any watched thread's hub running (not idle in `epoll_wait`)?
    fn any_busy(&self) -> bool {
        self.watches.iter().any(|w| busy(&w.probe))
    }

    /// Looks at every watched thread once; returns how long until one needs the next
    /// look (`None`: none does until a hub rings).
    fn look(&mut self, now: Instant) -> Option<Duration> {
        if self.probes_seen != probe::generation() {
            self.probes_seen = probe::generation();
            refresh(&mut self.watches, now);
        }
        let on = self.config.is_on() && monitor().on.load(Ordering::SeqCst);
        let mut next: Option<Instant> = None;
        for i in 0..self.watches.len() {
            let at = if on {
                self.look_at(i, now)
            } else {
                self.forget(i, now);
                None
            };
            next = match (next, at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        next.map(|at| at.saturating_duration_since(now))
    }

    /// Ends the watched thread's episode (reporting its end if it was reported).
    fn forget(&mut self, i: usize, now: Instant) {
        let w = &mut self.watches[i];
        if let Some(episode) = w.reported.take() {
            reporter::closing(&self.config, episode.closing(now));
        }
        w.switches = w.probe.switches.load(Ordering::Relaxed);
        w.since = now;
        w.preempt_asked = false;
        w.cpu_mark = None;
        w.tries = 0;
        w.waiting_since = None;
    }

    /// Looks at one watched thread: asks it to yield at the end of its time slice,
    /// reports it when it has blocked too long, and says when it needs the next look.
    fn look_at(&mut self, i: usize, now: Instant) -> Option<Instant> {
        let tick = tick_for(&self.config);
        let switches = self.watches[i].probe.switches.load(Ordering::Relaxed);
        let busy = busy(&self.watches[i].probe);
        if switches != self.watches[i].switches || !busy {
            self.forget(i, now);
            if !busy {
                return None; // idle in epoll_wait: it rings when it is back
            }
        }
        let config = &self.config;
        let w = &mut self.watches[i];
        let ran = now - w.since;
        let delayed = report::Delayed::read(&w.probe, now);
        let someone_waits = delayed.total() > 0;
        let waiting_since = if someone_waits {
            *w.waiting_since.get_or_insert(now)
        } else {
            w.waiting_since = None;
            now
        };
        if !w.preempt_asked && config.time_slice.is_some_and(|slice| ran >= slice) {
            w.probe.preempt.store(true, Ordering::Relaxed);
            w.preempt_asked = true;
        }
        if let Some(limit) = config.max_blocking_time
            && someone_waits
        {
            if ran >= limit / 2 && w.cpu_mark.is_none() {
                w.cpu_mark = report::cpu_ns(w.probe.tid).map(|c| (now, c));
            }
            // Someone must have waited for a tick at least: a greenlet that wakes another
            // right before it switches (as one does when it finishes) delays nobody.
            if w.reported.is_none()
                && ran >= limit
                && now - waiting_since >= tick
                && !starved_by_the_os(w, now)
            {
                w.tries += 1;
                if let Some((episode, stack)) = report::Episode::capture(
                    &w.probe,
                    w.since,
                    now,
                    delayed,
                    &mut self.unwinder,
                    w.tries >= CAPTURE_TRIES,
                ) {
                    reporter::report(config, episode.report.clone(), stack);
                    w.reported = Some(episode);
                }
            }
        }
        if someone_waits || w.reported.is_some() {
            return Some(now + tick);
        }
        // Nobody waits on this hub: what could change that on its own is a timer coming
        // due (the rest rings); a time slice still ends on time.
        let slice_end = config.time_slice.and_then(|slice| {
            if !w.preempt_asked {
                Some(w.since + slice)
            } else if !w.probe.preempt.load(Ordering::Relaxed) {
                Some(now + tick) // taken by cooperate(): a new slice starts at its yield
            } else {
                None // not taken yet: nothing to do until the greenlet switches
            }
        });
        let timer = w.probe.next_timer.load(Ordering::Relaxed);
        let timer_due = (timer != u64::MAX).then(|| probe::instant_of(timer));
        match (slice_end, timer_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Is the probe's thread running its hub (not idle in `epoll_wait`, not exited)?
fn busy(p: &Probe) -> bool {
    !p.exited.load(Ordering::Relaxed)
        && p.has_hub.load(Ordering::Relaxed)
        && !p.idle.load(Ordering::SeqCst)
}
/// Is the thread runnable but hardly getting the CPU (a busy machine), rather than held by
/// its greenlet? Then it is not reported (yet): the greenlet is not the one at fault.
/// A thread in a system call is never starved: blocking there is what is reported.
fn starved_by_the_os(w: &Watch, now: Instant) -> bool {
    let Some((since, cpu_then)) = w.cpu_mark else {
        return false;
    };
    let wall = (now - since).as_nanos() as u64;
    if wall == 0 || report::activity(w.probe.tid) != ThreadActivity::OnCpu {
        return false;
    }
    let cpu = report::cpu_ns(w.probe.tid).map_or(wall, |c| c.saturating_sub(cpu_then));
    cpu * 4 < wall // under a quarter of the time on a CPU
}

/// How often the watchdog looks: a tenth of the threshold (for detection within 10%) and
/// a fifth of a time slice (so a slice overruns by at most 20%), between 1 and 50 ms.
fn tick_for(config: &Config) -> Duration {
    let by_limit = config
        .max_blocking_time
        .map_or(Duration::from_millis(50), |d| d / 10);
    let by_slice = config
        .time_slice
        .map_or(Duration::from_millis(50), |d| d / 5);
    by_limit
        .min(by_slice)
        .clamp(Duration::from_millis(1), Duration::from_millis(50))
}

/// Adds watches for new threads and drops those of exited ones.
fn refresh(watches: &mut Vec<Watch>, now: Instant) {
    let probes = probe::all();
    watches.retain(|w| probes.iter().any(|p| Arc::ptr_eq(p, &w.probe)));
    for p in probes {
        if !watches.iter().any(|w| Arc::ptr_eq(&w.probe, &p)) {
            watches.push(Watch {
                switches: p.switches.load(Ordering::Relaxed),
                probe: p,
                since: now,
                reported: None,
                preempt_asked: false,
                cpu_mark: None,
                tries: 0,
                waiting_since: None,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations_and_off() {
        assert_eq!(
            parse_duration("250ms"),
            Some(Some(Duration::from_millis(250)))
        );
        assert_eq!(parse_duration("1s"), Some(Some(Duration::from_secs(1))));
        assert_eq!(
            parse_duration("1.5s"),
            Some(Some(Duration::from_millis(1500)))
        );
        assert_eq!(
            parse_duration("300"),
            Some(Some(Duration::from_millis(300)))
        );
        assert_eq!(parse_duration("off"), Some(None));
        assert_eq!(parse_duration("0"), Some(None));
        assert_eq!(parse_duration("soon"), None);
    }
}
