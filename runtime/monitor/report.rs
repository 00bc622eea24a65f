//! Blocking reports: what the monitor found, symbolized and formatted.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Config;
use super::capture::{self, Captured};
use crate::greenlet::probe::Probe;

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

/// A report on a greenlet that has run too long without switching.
#[derive(Clone, Debug)]
pub struct BlockReport {
    /// The blocked hub thread's name.
    pub thread_name: String,
    /// The running greenlet's id (0 if the thread did not answer the monitor's signal).
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
    /// The greenlet's stack at the time of the report, innermost first (empty for a
    /// closing report, or if the thread did not answer the signal).
    pub stack: Vec<Frame>,
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
        writeln!(
            f,
            "greenhub monitor: greenlet #{}{name} on thread '{}'{at} has run {} ms without switching; the thread is {what}",
            self.greenlet_id,
            self.thread_name,
            self.blocked_for.as_millis()
        )?;
        // The greenlet's own frames end where corosensei's coroutine entry begins; below
        // it is the resume chain (the hub, the main greenlet), rarely of interest.
        let own = self
            .stack
            .iter()
            .position(|fr| fr.function.starts_with("corosensei::"))
            .unwrap_or(self.stack.len());
        for (i, fr) in self.stack[..own].iter().enumerate() {
            match (&fr.file, fr.line) {
                (Some(file), Some(line)) => {
                    writeln!(f, "  {i:>3}: {}\n           at {file}:{line}", fr.function)?
                }
                _ => writeln!(f, "  {i:>3}: {}", fr.function)?,
            }
        }
        if own < self.stack.len() {
            writeln!(
                f,
                "       ... {} more frames: the coroutine entry and the resume chain below it",
                self.stack.len() - own
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
    pub(crate) fn capture(probe: &Arc<Probe>, since: Instant, now: Instant) -> Episode {
        let activity = activity(probe.tid);
        let captured = capture::capture(probe, Duration::from_millis(50));
        let (greenlet_id, greenlet_name, spawned_at, stack) = match captured {
            Some(Captured {
                ips,
                greenlet_id,
                name,
                spawned_at,
            }) => (
                greenlet_id,
                name,
                spawned_at.map(|l| l.to_string()),
                symbolize(&ips),
            ),
            // The thread did not answer in time: we know it is blocked, not by whom.
            None => (0, None, None, Vec::new()),
        };
        Episode {
            report: BlockReport {
                thread_name: probe.thread_name.clone(),
                greenlet_id,
                greenlet_name,
                spawned_at,
                blocked_for: now - since,
                activity,
                stack,
                finished: false,
            },
            since,
        }
    }

    pub(crate) fn closing(&self, now: Instant) -> BlockReport {
        BlockReport {
            blocked_for: now - self.since,
            stack: Vec::new(),
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

/// Symbolizes captured return addresses, dropping the signal-handling frames above the
/// interrupted code.
fn symbolize(ips: &[usize]) -> Vec<Frame> {
    let mut frames = Vec::new();
    for (i, &ip) in ips.iter().enumerate() {
        // A return address points after the call; look up the call itself.
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
    // Everything up to the kernel's signal trampoline is the handler itself.
    if let Some(pos) = frames
        .iter()
        .position(|f| f.function.contains("__restore_rt"))
    {
        frames.drain(..=pos);
    } else {
        let skip = frames
            .iter()
            .take_while(|f| {
                f.function.starts_with("backtrace::") || f.function.contains("monitor::capture")
            })
            .count();
        frames.drain(..skip);
    }
    frames
}
