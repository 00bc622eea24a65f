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
//! on a CPU, the monitor sends it a signal; the handler records the return addresses of
//! the running stack and the running greenlet's id and name into a preallocated buffer,
//! and the monitor symbolizes them on its own thread and keeps the user's frames. A thread
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
//! This layer sits below the hub (it needs only the greenlet probe), so that the hub can
//! start it when the first hub is created.

mod capture;
mod report;
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

/// A callback that receives every report (blocking and closing lines) on the monitor thread.
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
}

fn monitor() -> &'static Monitor {
    static MONITOR: OnceLock<Monitor> = OnceLock::new();
    MONITOR.get_or_init(|| Monitor {
        config: Mutex::new(Config {
            max_blocking_time: max_blocking_time_from_env(),
            ..Config::default()
        }),
        generation: AtomicU64::new(0),
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

/// Replaces the monitor's settings (and starts the monitor thread if it is not running).
///
/// With both `max_blocking_time` and `time_slice` set to `None` the monitor is off:
/// threads that start using greenlets afterwards publish no probe at all (their switches
/// do not even store the counter). Threads already running keep their probes.
///
/// ```
/// use std::time::Duration;
/// use greenhub::monitor::{self, Config};
/// monitor::configure(Config { max_blocking_time: Some(Duration::from_millis(250)), ..Config::default() });
/// assert_eq!(monitor::config().max_blocking_time, Some(Duration::from_millis(250)));
/// ```
pub fn configure(config: Config) {
    probe::set_recording(config.max_blocking_time.is_some() || config.time_slice.is_some());
    *monitor().config.lock().unwrap_or_else(|e| e.into_inner()) = config;
    monitor().generation.fetch_add(1, Ordering::Relaxed);
    start();
}

/// The current settings.
pub fn config() -> Config {
    monitor()
        .config
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

/// Starts the monitor thread once per process (the hub calls this when it is created).
pub(crate) fn start() {
    static STARTED: AtomicBool = AtomicBool::new(false);
    if STARTED.swap(true, Ordering::AcqRel) {
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
}

/// How many captures an episode's report waits for before it goes out without a stack.
const CAPTURE_TRIES: u32 = 3;

fn watch() {
    let mut symbolizer_warm = false;
    let mut unwinder = unwind::Unwinder::new();
    let mut watches: Vec<Watch> = Vec::new();
    let mut generation = u64::MAX;
    let mut config = Config::default();
    loop {
        if monitor().generation.load(Ordering::Relaxed) != generation {
            generation = monitor().generation.load(Ordering::Relaxed);
            config = self::config();
        }
        let tick = tick_for(&config);
        std::thread::sleep(tick);
        let now = Instant::now();
        refresh(&mut watches, now);
        let mut warm_up = false;
        for w in &mut watches {
            let switches = w.probe.switches.load(Ordering::Relaxed);
            let watched = !w.probe.exited.load(Ordering::Relaxed)
                && w.probe.has_hub.load(Ordering::Relaxed)
                && !w.probe.idle.load(Ordering::Relaxed);
            if switches != w.switches || !watched {
                if let Some(episode) = w.reported.take() {
                    report::deliver(&config, &episode.closing(now));
                }
                w.switches = switches;
                w.since = now;
                w.preempt_asked = false;
                w.cpu_mark = None;
                w.tries = 0;
                continue;
            }
            let ran = now - w.since;
            let delayed = report::Delayed::read(&w.probe, now);
            if config
                .max_blocking_time
                .is_some_and(|limit| ran >= limit / 2)
                && delayed.total() > 0
            {
                warm_up = !symbolizer_warm;
                if w.cpu_mark.is_none() {
                    w.cpu_mark = report::cpu_ns(w.probe.tid).map(|c| (now, c));
                }
            }
            if !w.preempt_asked && config.time_slice.is_some_and(|slice| ran >= slice) {
                w.probe.preempt.store(true, Ordering::Relaxed);
                w.preempt_asked = true;
            }
            if let Some(limit) = config.max_blocking_time
                && w.reported.is_none()
                && ran >= limit
                && delayed.total() > 0
                && !starved_by_the_os(w, now)
            {
                w.tries += 1;
                if let Some(episode) = report::Episode::capture(
                    &w.probe,
                    w.since,
                    now,
                    delayed,
                    &mut unwinder,
                    w.tries >= CAPTURE_TRIES,
                ) {
                    report::deliver(&config, &episode.report);
                    w.reported = Some(episode);
                }
            }
        }
        if warm_up {
            // A report may be coming: load the debug info now (resolving our own stack
            // touches the binary's and std's units), so that it is not late by the time
            // that takes. After this tick's captures, so it never delays one; programs
            // that never block never pay for it.
            warm_symbolizer();
            symbolizer_warm = true;
        }
    }
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

fn warm_symbolizer() {
    backtrace::trace(|frame| {
        backtrace::resolve_frame(frame, |_| {});
        true
    });
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
