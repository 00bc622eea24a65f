//! Blocking reports: what the monitor found, symbolized and formatted.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Config;
use super::capture::{self, Captured};
use super::unwind::Unwinder;
use crate::greenlet::probe::{self, Probe};

/// What the blocked thread was doing when it was looked at (from `/proc/self/task/<tid>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ThreadActivity {
    /// Running on a CPU (a compute-bound hog).
    OnCpu,
    /// Blocked in a system call (e.g. a blocking `std::thread::sleep` or `read`).
    Syscall {
        /// The syscall number.
        number: i64,
        /// Its name, when known.
        name: &'static str,
    },
    /// Could not be read.
    Unknown,
}

/// One frame of a captured stack.
#[derive(Clone, Debug)]
pub struct Frame {
    /// The function, demangled (`<unknown>` when there is no symbol).
    pub function: String,
    /// The source file, when debug info has it.
    pub file: Option<String>,
    /// The line, when debug info has it.
    pub line: Option<u32>,
}

/// Who a blocked thread keeps waiting, as its hub last published it. The monitor reports a
/// blocked thread only when someone waits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delayed {
    /// Greenlets ready to run (woken, spawned, or yielded), waiting for their turn.
    pub ready: usize,
    /// Timers that are due: 1 when the earliest is (the count of the others is not known).
    pub timers: usize,
    /// Greenlets waiting on a socket or other fd, whose readiness nobody polls meanwhile.
    pub io: usize,
    /// Greenlets waiting for a value from another thread, and jobs other threads posted.
    pub threads: usize,
}

impl Delayed {
    /// How many are kept waiting (a due timer counts once; see [`timers`](Delayed::timers)).
    pub fn total(&self) -> usize {
        self.ready + self.timers + self.io + self.threads
    }

    /// Reads what `probe`'s hub published, at `now`.
    pub(crate) fn read(probe: &Probe, now: Instant) -> Delayed {
        use std::sync::atomic::Ordering::Relaxed;
        let next_timer = probe.next_timer.load(Relaxed);
        Delayed {
            ready: probe.ready.load(Relaxed),
            timers: usize::from(next_timer <= probe::clock_ns(now)),
            io: probe.io_waiting.load(Relaxed),
            threads: probe.thread_waits.load(Relaxed) + probe.posted.load(Relaxed),
        }
    }
}

impl fmt::Display for Delayed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = [
            (self.ready, "ready"),
            (self.timers, "with a timer due"),
            (self.io, "waiting on I/O"),
            (self.threads, "waiting on other threads"),
        ];
        let mut first = true;
        for (n, what) in parts.into_iter().filter(|(n, _)| *n > 0) {
            f.write_str(if first { "" } else { ", " })?;
            write!(f, "{n} {what}")?;
            first = false;
        }
        Ok(())
    }
}

/// A report on a greenlet that has run too long without switching.
#[derive(Clone, Debug)]
pub struct BlockReport {
    /// The blocked hub thread's name.
    pub thread_name: String,
    /// The running greenlet's id (0 when not known: the thread was not signalled or did not
    /// answer, and its hub did not switch into the greenlet that runs).
    pub greenlet_id: u64,
    /// Its name, if it has one.
    pub greenlet_name: Option<String>,
    /// Where it was spawned.
    pub spawned_at: Option<String>,
    /// How long it has run without switching (measured, not the threshold). For a closing
    /// report, the total.
    pub blocked_for: Duration,
    /// On the CPU or in a system call.
    pub activity: ThreadActivity,
    /// Who it keeps waiting (what its hub published when it switched into it, or since).
    pub delayed: Delayed,
    /// The greenlet's own frames at the time of the report, innermost first: without the
    /// signal handler's, the runtime's below the user's outermost frame (greenhub's, std's
    /// `lang_start`/`catch_unwind`, `_start`, the thread start) or the resume chain below
    /// the greenlet's coroutine. Empty for a closing report, and when the thread was not
    /// signalled: it was in a system call (signalling it there would make the call fail
    /// with `EINTR`), or it did not answer.
    pub stack: Vec<Frame>,
    /// How many captured frames were left out of `stack` (runtime frames and the resume
    /// chain).
    pub frames_hidden: usize,
    /// The capture signal cut a system call short (it began right as the signal was sent):
    /// that call may have failed with `EINTR`. Rare; said so that it is never a mystery.
    pub interrupted_syscall: bool,
    /// `true` for the closing report sent when the greenlet finally switched.
    pub finished: bool,
}

impl fmt::Display for BlockReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self
            .greenlet_name
            .as_deref()
            .map(|n| format!(" \"{n}\""))
            .unwrap_or_default();
        if self.finished {
            return write!(
                f,
                "greenhub monitor: greenlet #{}{name} on thread '{}' switched after blocking for {} ms in total",
                self.greenlet_id,
                self.thread_name,
                self.blocked_for.as_millis()
            );
        }
        let at = self
            .spawned_at
            .as_deref()
            .map(|s| format!(", spawned at {s}"))
            .unwrap_or_default();
        let what = match &self.activity {
            ThreadActivity::OnCpu => "on the CPU".to_string(),
            ThreadActivity::Syscall { number, name } => format!("in system call {name} ({number})"),
            ThreadActivity::Unknown => "state unknown".to_string(),
        };
        let who = if self.greenlet_id == 0 {
            "a greenlet (which one is not known)".to_string()
        } else {
            format!("greenlet #{}{name}", self.greenlet_id)
        };
        let n = self.delayed.total();
        writeln!(
            f,
            "greenhub monitor: {who} on thread '{}'{at} has run {} ms without switching, \
             delaying {n} greenlet{} ({}); the thread is {what}",
            self.thread_name,
            self.blocked_for.as_millis(),
            if n == 1 { "" } else { "s" },
            self.delayed,
        )?;
        for (i, fr) in self.stack.iter().enumerate() {
            match (&fr.file, fr.line) {
                (Some(file), Some(line)) => {
                    writeln!(f, "  {i:>3}: {}\n           at {file}:{line}", fr.function)?
                }
                _ => writeln!(f, "  {i:>3}: {}", fr.function)?,
            }
        }
        if self.frames_hidden > 0 {
            writeln!(
                f,
                "       ... {} runtime frames below (greenhub, std, the resume chain) not shown",
                self.frames_hidden
            )?;
        }
        if self.stack.is_empty() && matches!(self.activity, ThreadActivity::Syscall { .. }) {
            writeln!(
                f,
                "       (no stack: a thread in a system call is not signalled, so that the call \
                 does not fail with EINTR)"
            )?;
        }
        if self.interrupted_syscall {
            writeln!(
                f,
                "       (the capture signal cut a system call short: it may have returned EINTR)"
            )?;
        }
        Ok(())
    }
}

/// A reported blocking episode, kept until it ends.
pub(crate) struct Episode {
    pub(crate) report: BlockReport,
    since: Instant,
}

impl Episode {
    /// Captures the blocked thread's stack and makes the report, without its frames (the
    /// reporting thread symbolizes the captured stack, returned beside it). `None` when
    /// the capture landed in the middle of a stack switch (the thread is switching: its
    /// block is ending), unless `last_try`: then the report goes out without a stack.
    pub(crate) fn capture(
        probe: &Arc<Probe>,
        since: Instant,
        now: Instant,
        delayed: Delayed,
        unwinder: &mut Unwinder,
        last_try: bool,
    ) -> Option<(Episode, Vec<usize>)> {
        let (activity, captured) = capture::capture(probe, Duration::from_millis(50), unwinder);
        if captured.as_ref().is_some_and(|c| c.in_switch) && !last_try {
            return None;
        }
        let mut report = BlockReport {
            thread_name: probe.thread_name.clone(),
            greenlet_id: 0,
            greenlet_name: None,
            spawned_at: None,
            blocked_for: now - since,
            activity,
            delayed,
            stack: Vec::new(),
            frames_hidden: 0,
            interrupted_syscall: false,
            finished: false,
        };
        let mut stack = Vec::new();
        match captured {
            Some(Captured {
                ips,
                in_switch: _,
                greenlet_id,
                name,
                spawned_at,
                interrupted_syscall,
            }) => {
                report.greenlet_id = greenlet_id;
                report.greenlet_name = name;
                report.spawned_at = spawned_at.map(|l| l.to_string());
                report.interrupted_syscall = interrupted_syscall;
                stack = ips;
            }
            // Not signalled (in a system call) or no answer: the greenlet the hub switched
            // into, if it is still the one running.
            None => {
                if let Some(running) = probe.published_running() {
                    report.greenlet_id = running.id;
                    report.greenlet_name = running.name;
                    report.spawned_at = running.spawned_at.map(|l| l.to_string());
                }
            }
        }
        Some((Episode { report, since }, stack))
    }

    pub(crate) fn closing(&self, now: Instant) -> BlockReport {
        BlockReport {
            blocked_for: now - self.since,
            stack: Vec::new(),
            frames_hidden: 0,
            finished: true,
            ..self.report.clone()
        }
    }
}

/// Hands a report to stderr and the callback; a panicking callback does not stop the monitor.
pub(crate) fn deliver(config: &Config, report: &BlockReport) {
    if config.stderr {
        eprintln!("{report}");
    }
    if let Some(cb) = &config.callback
        && std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cb(report))).is_err()
    {
        eprintln!("greenhub monitor: the report callback panicked; the monitor goes on");
    }
}

/// CPU time the thread has used, in ns (`/proc/self/task/<tid>/schedstat`).
pub(crate) fn cpu_ns(tid: libc::pid_t) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Reads `/proc/self/task/<tid>/syscall`: `running`, or the number of the blocking call.
pub(crate) fn activity(tid: libc::pid_t) -> ThreadActivity {
    let Ok(text) = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")) else {
        return ThreadActivity::Unknown;
    };
    let first = text.split_whitespace().next().unwrap_or("");
    if first == "running" {
        return ThreadActivity::OnCpu;
    }
    match first.parse::<i64>() {
        Ok(number) => ThreadActivity::Syscall {
            number,
            name: syscall_name(number),
        },
        Err(_) => ThreadActivity::Unknown,
    }
}

/// Names of the system calls a blocked greenlet is likely to sit in (x86_64 numbers).
fn syscall_name(number: i64) -> &'static str {
    #[cfg(target_arch = "x86_64")]
    let name = match number {
        0 => "read",
        1 => "write",
        7 => "poll",
        23 => "select",
        35 => "nanosleep",
        42 => "connect",
        43 => "accept",
        44 => "sendto",
        45 => "recvfrom",
        61 => "wait4",
        202 => "futex",
        230 => "clock_nanosleep",
        232 => "epoll_wait",
        270 => "pselect6",
        271 => "ppoll",
        281 => "epoll_pwait",
        288 => "accept4",
        _ => "?",
    };
    #[cfg(not(target_arch = "x86_64"))]
    let name = {
        let _ = number;
        "?"
    };
    name
}

/// The user's part of a symbolized stack (innermost first), and how many frames were left
/// out: the greenlet's frames end at corosensei's coroutine entry (below it is the resume
/// chain: the hub, the main greenlet), and below the user's outermost frame there is only
/// the runtime (greenhub's spawn glue, std's `catch_unwind` and `lang_start`, `_start`,
/// the thread start), as gevent leaves its own frames out of tracebacks. Frames of std or
/// greenhub the user's code called are kept. A stack that is all runtime is kept whole.
pub(crate) fn user_frames(mut frames: Vec<Frame>) -> (Vec<Frame>, usize) {
    let total = frames.len();
    if let Some(entry) = frames
        .iter()
        .position(|fr| fr.function.starts_with("corosensei::"))
    {
        frames.truncate(entry);
    }
    let Some(outermost_user) = frames.iter().rposition(|fr| !is_runtime(&fr.function)) else {
        // Nothing but the runtime: show it rather than nothing.
        let kept = frames.len();
        return (frames, total - kept);
    };
    frames.truncate(outermost_user + 1);
    let kept = frames.len();
    (frames, total - kept)
}

/// Is this function part of the runtime (std, greenhub, the C start-up), not the user's?
fn is_runtime(function: &str) -> bool {
    const PREFIXES: [&str; 14] = [
        "std::",
        "core::",
        "alloc::",
        "greenhub::",
        "corosensei::",
        "backtrace::",
        "test::",
        "__rust",
        "_start",
        "__libc_start",
        "start_thread",
        "clone",
        "__clone",
        "__GI_",
    ];
    let runtime_path = |name: &str| PREFIXES.iter().any(|p| name.starts_with(p));
    if function.starts_with("<unknown>") || function == "main" {
        return true;
    }
    match function.strip_prefix('<') {
        // `<T as Trait>::f` or `<T>::f`: the runtime's when `T` is, and the call shims of
        // closures and function pointers (`<F as FnOnce<A>>::call_once`), whose body is a
        // frame of its own.
        Some(imp) => imp.contains(" as core::ops::function::Fn") || runtime_path(imp),
        None => runtime_path(function),
    }
}

/// Symbolizes a captured stack: the interrupted instruction, then return addresses.
pub(crate) fn symbolize(ips: &[usize]) -> Vec<Frame> {
    let mut frames = Vec::new();
    for (i, &ip) in ips.iter().enumerate() {
        // A return address points after the call; look up the call itself. The
        // interrupted instruction is looked up as it is.
        let lookup = if i == 0 { ip } else { ip.saturating_sub(1) };
        let mut resolved = false;
        backtrace::resolve(lookup as *mut std::ffi::c_void, |sym| {
            resolved = true;
            frames.push(Frame {
                function: sym
                    .name()
                    .map_or_else(|| "<unknown>".to_string(), |n| format!("{n:#}")),
                file: sym.filename().map(|p| p.display().to_string()),
                line: sym.lineno(),
            });
        });
        if !resolved {
            frames.push(Frame {
                function: format!("<unknown> ({ip:#x})"),
                file: None,
                line: None,
            });
        }
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(names: &[&str]) -> Vec<Frame> {
        names
            .iter()
            .map(|n| Frame {
                function: n.to_string(),
                file: None,
                line: None,
            })
            .collect()
    }

    fn names(frames: &[Frame]) -> Vec<&str> {
        frames.iter().map(|f| f.function.as_str()).collect()
    }

    #[test]
    fn user_frames_drop_the_start_up_below_main() {
        let (kept, hidden) = user_frames(frames(&[
            "core::slice::sort::stable::drift::sort",
            "app::crunch",
            "app::main",
            "core::ops::function::FnOnce::call_once",
            "std::sys::backtrace::__rust_begin_short_backtrace",
            "std::rt::lang_start::{{closure}}",
            "std::panicking::catch_unwind",
            "std::rt::lang_start_internal",
            "main",
            "__libc_start_call_main",
            "__libc_start_main_impl",
            "_start",
        ]));
        assert_eq!(
            names(&kept),
            [
                "core::slice::sort::stable::drift::sort",
                "app::crunch",
                "app::main"
            ]
        );
        assert_eq!(hidden, 9);
    }

    #[test]
    fn user_frames_of_a_greenlet_end_at_its_spawn_glue() {
        let (kept, hidden) = user_frames(frames(&[
            "app::hog",
            "app::serve::{{closure}}",
            "<greenhub::hub::spawn::Task as greenhub::greenlet::LazyBody>::run",
            "std::panicking::catch_unwind",
            "greenhub::greenlet::switch::new_coroutine::{{closure}}",
            "corosensei::coroutine::on_stack",
            "greenhub::hub::Hub::run_task",
            "app::main",
            "_start",
        ]));
        assert_eq!(names(&kept), ["app::hog", "app::serve::{{closure}}"]);
        assert_eq!(hidden, 7);
    }

    #[test]
    fn user_frames_drop_libtest_shims_and_unknown_frames() {
        let (kept, _) = user_frames(frames(&[
            "<unknown> (0x7f0c7f536050)",
            "app::tests::hog",
            "app::tests::hog::{{closure}}",
            "core::ops::function::FnOnce::call_once",
            "<fn() -> core::result::Result<(), alloc::string::String> as core::ops::function::FnOnce<()>>::call_once",
            "test::__rust_begin_short_backtrace::<core::result::Result<(), alloc::string::String>>",
            "<std::sys::thread::unix::Thread>::new::thread_start",
            "start_thread",
            "clone3",
            "<unknown> (0x0)",
        ]));
        assert_eq!(
            names(&kept),
            [
                "<unknown> (0x7f0c7f536050)",
                "app::tests::hog",
                "app::tests::hog::{{closure}}"
            ]
        );
    }

    #[test]
    fn a_stack_of_nothing_but_runtime_is_kept() {
        let all = ["greenhub::hub::Hub::run", "std::rt::lang_start", "_start"];
        let (kept, hidden) = user_frames(frames(&all));
        assert_eq!(names(&kept), all);
        assert_eq!(hidden, 0);
    }

    #[test]
    fn delayed_counts_and_says_who() {
        let d = Delayed {
            ready: 2,
            timers: 1,
            io: 0,
            threads: 3,
        };
        assert_eq!(d.total(), 6);
        assert_eq!(
            d.to_string(),
            "2 ready, 1 with a timer due, 3 waiting on other threads"
        );
    }
}
