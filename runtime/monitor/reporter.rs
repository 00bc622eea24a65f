//! The monitor's reporting thread (`greenhub-report`): symbolizes captured stacks and
//! delivers reports, in order, so that neither loading debug info nor a slow callback
//! holds up the watchdog (or any hub thread).
//!
//! Debug info is loaded when the first report needs it, not before: loading it costs
//! tens of MiB (the binary's line tables and function ranges, parsed), which a process
//! whose greenlets never block for the whole threshold should not pay. The first report
//! of a process comes that much later (the stack itself is captured on time); the
//! others find the debug info loaded. It is given back once no report has come for
//! [`RELEASE_AFTER`].

use std::sync::OnceLock;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use super::Config;
use super::report::{self, BlockReport};

/// How long the reporting thread keeps debug info loaded after the last report.
pub(crate) const RELEASE_AFTER: Duration = Duration::from_secs(10);

enum Job {
    /// A blocking report, and the stack captured for it (return addresses).
    Open(Config, BlockReport, Vec<usize>),
    /// The closing line of a reported episode.
    Closing(Config, BlockReport),
}

/// Hands a blocking report and its captured stack to the reporting thread.
pub(crate) fn report(config: &Config, report: BlockReport, stack: Vec<usize>) {
    send(Job::Open(config.clone(), report, stack));
}

/// Hands the closing line of a reported episode to the reporting thread.
pub(crate) fn closing(config: &Config, report: BlockReport) {
    send(Job::Closing(config.clone(), report));
}

fn send(job: Job) {
    static QUEUE: OnceLock<Option<Sender<Job>>> = OnceLock::new();
    let queue = QUEUE.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("greenhub-report".into())
            .spawn(move || run(rx));
        match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                eprintln!("greenhub: cannot start the monitor's reporting thread: {e}");
                None
            }
        }
    });
    // Without the thread, the report is delivered here.
    match queue {
        Some(tx) => {
            if let Err(mpsc::SendError(job)) = tx.send(job) {
                handle(job);
            }
        }
        None => {
            handle(job);
        }
    }
}

fn run(jobs: Receiver<Job>) {
    let mut loaded = false;
    loop {
        let job = if loaded {
            match jobs.recv_timeout(RELEASE_AFTER) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    release_debug_info();
                    loaded = false;
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
        } else {
            match jobs.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        loaded |= handle(job);
    }
}

/// Symbolizes and delivers; says whether debug info was loaded for it.
fn handle(job: Job) -> bool {
    match job {
        Job::Open(config, mut report, stack) => {
            let symbolized = !stack.is_empty();
            if symbolized {
                (report.stack, report.frames_hidden) =
                    report::user_frames(report::symbolize(&stack));
            }
            report::deliver(&config, &report);
            symbolized
        }
        Job::Closing(config, report) => {
            report::deliver(&config, &report);
            false
        }
    }
}

/// Gives back the memory of the debug info loaded for reports: backtrace's caches, then
/// the heap pages they freed.
fn release_debug_info() {
    backtrace::clear_symbol_cache();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap memory to the kernel; any thread may
    // call it at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
