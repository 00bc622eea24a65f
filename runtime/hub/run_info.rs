//! `dump()`: every greenlet on every hub, as a tree (gevent's `format_run_info`, Go's
//! goroutine dump), and `install_dump_signal()` to print it on SIGQUIT.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::remote::Remote;
use super::{Direction, Hub, HubHandle, Task, WaitOn, current_hub};
use crate::greenlet::{Greenlet, getcurrent};

/// Every live hub's thread name and inbox, so any thread can ask each hub for its part.
/// A hub leaves the list when its thread exits.
static HUBS: Mutex<Vec<(String, Weak<Remote>)>> = Mutex::new(Vec::new());

pub(crate) fn register_hub(remote: &Arc<Remote>) {
    let name = std::thread::current()
        .name()
        .unwrap_or("<unnamed>")
        .to_string();
    HUBS.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((name, Arc::downgrade(remote)));
}

/// Takes a hub whose thread is exiting off the list.
pub(crate) fn unregister_hub(remote: &Arc<Remote>) {
    HUBS.lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|(_, r)| r.strong_count() > 0 && !std::ptr::eq(r.as_ptr(), Arc::as_ptr(remote)));
}

/// How long `dump()` waits for the other hubs to answer (all of them together).
const ANSWER_WITHIN: Duration = Duration::from_secs(1);

/// A readable tree of every greenlet on every hub: id, name, state, what it waits on
/// (fd and direction, timer, join, queue, thread), where it was spawned, and how often and
/// how long it has run. Greenlets are shown under their parents (main → hub → spawned).
///
/// Other hubs answer from their own threads, all asked at once; a hub that does not answer
/// within a second (because a greenlet is hogging it) is listed as such. Hubs whose
/// threads have exited are not listed.
///
/// ```
/// let h = greenhub::spawn(|| greenhub::sleep(std::time::Duration::from_secs(10)));
/// greenhub::sleep(std::time::Duration::ZERO);
/// let text = greenhub::hub::dump();
/// assert!(text.contains(&format!("#{}: waiting on a timer", h.id())), "{text}");
/// h.kill();
/// ```
pub fn dump() -> String {
    let here = std::thread::current()
        .name()
        .unwrap_or("<unnamed>")
        .to_string();
    let mine = super::HUB.with(|cell| cell.get().map(|hub| (hub.remote.clone(), format_hub(hub))));
    let hubs: Vec<(String, Arc<Remote>)> = HUBS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(|(name, r)| Some((name.clone(), r.upgrade()?)))
        .filter(|(_, r)| !r.is_closed())
        .filter(|(_, r)| !mine.as_ref().is_some_and(|(m, _)| Arc::ptr_eq(m, r)))
        .collect();
    // Ask every hub first, then collect the answers: a slow hub costs one wait, not one each.
    let asked: Vec<_> = hubs
        .into_iter()
        .map(|(name, remote)| {
            let (tx, rx) = std::sync::mpsc::channel();
            HubHandle::uncounted(remote).spawn(move || {
                let _ = tx.send(format_hub(&current_hub()));
            });
            (name, rx)
        })
        .collect();
    let deadline = Instant::now() + ANSWER_WITHIN;
    let mut out = String::new();
    if let Some((_, text)) = &mine {
        out.push_str(text);
    }
    for (name, rx) in asked {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(text) => out.push_str(&text),
            // The job was dropped unrun: the hub's thread exited meanwhile.
            Err(RecvTimeoutError::Disconnected) => {}
            Err(RecvTimeoutError::Timeout) => {
                let _ = writeln!(
                    out,
                    "hub on thread '{name}': no answer within 1 s (a greenlet is hogging it, or \
                     its thread is blocked outside greenhub)"
                );
            }
        }
    }
    if out.is_empty() {
        let _ = writeln!(out, "no hub has been started (asked from thread '{here}')");
    }
    if mine.is_none() {
        format_unknown_greenlets(None, &HashMap::new(), &mut out);
    }
    out
}

fn format_hub(hub: &Rc<Hub>) -> String {
    let tasks: Vec<Rc<Task>> = hub
        .all_tasks
        .borrow()
        .iter()
        .map(|(_, t)| t)
        .filter_map(std::rc::Weak::upgrade)
        .collect();
    let ready: Vec<u64> = hub
        .ready
        .borrow()
        .iter()
        .chain(hub.yielded.borrow().iter())
        .map(|t| t.greenlet.id())
        .collect();
    let current = getcurrent();
    let mut by_parent: HashMap<u64, Vec<Greenlet>> = HashMap::new();
    let mut task_of: HashMap<u64, &Rc<Task>> = HashMap::new();
    for t in &tasks {
        if t.greenlet.is_dead() {
            continue;
        }
        task_of.insert(t.greenlet.id(), t);
        if let Some(p) = t.greenlet.parent() {
            by_parent
                .entry(p.id())
                .or_default()
                .push(t.greenlet.clone());
        }
    }
    if let Some(p) = hub.greenlet.parent() {
        by_parent
            .entry(p.id())
            .or_default()
            .push(hub.greenlet.clone());
    }
    for children in by_parent.values_mut() {
        children.sort_by_key(Greenlet::id);
        children.dedup_by_key(|g| g.id());
    }
    let thread = std::thread::current()
        .name()
        .unwrap_or("<unnamed>")
        .to_string();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "hub on thread '{thread}': {} greenlets, {} ready, {} timers, {} waiting on I/O",
        task_of.len() + 1,
        ready.len(),
        hub.timers.borrow().len(),
        hub.io.waiting()
    );
    let line = |g: &Greenlet, depth: usize, out: &mut String| {
        let name = g.name().map(|n| format!(" \"{n}\"")).unwrap_or_default();
        let state = if *g == current {
            "running".to_string()
        } else if *g == hub.greenlet {
            "the hub's event loop".to_string()
        } else if !g.is_started() && ready.contains(&g.id()) {
            "ready to start".to_string()
        } else if ready.contains(&g.id()) {
            "ready".to_string()
        } else {
            match task_of.get(&g.id()) {
                Some(t) if t.waiting.get() != 0 => {
                    format!("waiting on {}", describe(t.waiting_on.get()))
                }
                _ if !g.is_started() => "not started".to_string(),
                _ => "suspended by a plain switch".to_string(),
            }
        };
        let at = g
            .spawned_at()
            .map(|l| format!(", spawned at {l}"))
            .unwrap_or_default();
        let acct = task_of
            .get(&g.id())
            .map(|t| {
                format!(
                    " [ran {} times, {:.3} ms]",
                    t.runs.get(),
                    t.run_time.get() as f64 / 1e6
                )
            })
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:indent$}#{}{name}: {state}{at}{acct}",
            "",
            g.id(),
            indent = 2 + 2 * depth
        );
    };
    // Depth-first from the main greenlet.
    let mut stack = vec![(hub.main.clone(), 0)];
    while let Some((g, depth)) = stack.pop() {
        line(&g, depth, &mut out);
        if let Some(children) = by_parent.get(&g.id()) {
            for c in children.iter().rev() {
                stack.push((c.clone(), depth + 1));
            }
        }
    }
    format_unknown_greenlets(Some(hub), &task_of, &mut out);
    out
}

/// Lists the live greenlets of this thread that its hub (if it has one) has no task for
/// (made with `Greenlet::new` and never blocked on the hub): where a greenlet kept alive
/// by a reference cycle shows up.
fn format_unknown_greenlets(hub: Option<&Hub>, known: &HashMap<u64, &Rc<Task>>, out: &mut String) {
    let unknown: Vec<Greenlet> = crate::greenlet::live_greenlets()
        .into_iter()
        .filter(|g| hub.is_none_or(|hub| *g != hub.greenlet) && !known.contains_key(&g.id()))
        .collect();
    if unknown.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "  greenlets not known to the hub: {} (one your code holds no handle to is kept alive by a reference cycle)",
        unknown.len()
    );
    for g in &unknown {
        let name = g.name().map(|n| format!(" \"{n}\"")).unwrap_or_default();
        let at = g
            .spawned_at()
            .map(|l| format!(", created at {l}"))
            .unwrap_or_default();
        let parent = g
            .parent()
            .map(|p| format!(", parent #{}", p.id()))
            .unwrap_or_default();
        let _ = writeln!(out, "    #{}{name}: {}{parent}{at}", g.id(), g.state_name());
    }
}

fn describe(what: WaitOn) -> String {
    match what {
        WaitOn::Nothing => "nothing".into(),
        WaitOn::Timer => "a timer".into(),
        WaitOn::Io { fd, direction } => {
            let dir = match direction {
                Direction::Read => "readable",
                Direction::Write => "writable",
            };
            if fd >= 0 {
                format!("fd {fd} to be {dir}")
            } else {
                format!("a socket to be {dir}")
            }
        }
        WaitOn::Join => "another greenlet to finish".into(),
        WaitOn::Sync(kind) => format!("a {kind}"),
        WaitOn::Thread => "a result from another thread".into(),
        WaitOn::Turn => "its turn (yielded)".into(),
    }
}

/// Prints [`dump()`] to stderr whenever the process gets SIGQUIT (Ctrl-\), like a Go
/// program's goroutine dump. Opt-in; call once. A watcher thread does the printing, so
/// the signal handler itself only writes one byte to a pipe.
///
/// # Errors
/// If the pipe, the signal handler or the watcher thread cannot be set up.
pub fn install_dump_signal() -> std::io::Result<()> {
    static WRITE_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);
    static ONCE: std::sync::Once = std::sync::Once::new();

    extern "C" fn on_sigquit(_: libc::c_int) {
        let fd = WRITE_FD.load(std::sync::atomic::Ordering::Relaxed);
        if fd >= 0 {
            // SAFETY: write(2) is async-signal-safe; the byte lives on this stack.
            unsafe {
                libc::write(fd, b"q".as_ptr().cast(), 1);
            }
        }
    }

    let mut result = Ok(());
    ONCE.call_once(|| {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two fds into the array we pass.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            result = Err(std::io::Error::last_os_error());
            return;
        }
        let read_fd = fds[0];
        WRITE_FD.store(fds[1], std::sync::atomic::Ordering::Relaxed);
        let watcher = std::thread::Builder::new()
            .name("greenhub-dump".into())
            .spawn(move || {
                let mut byte = 0u8;
                // SAFETY: reads one byte into a local from the pipe we own.
                while unsafe { libc::read(read_fd, (&mut byte as *mut u8).cast(), 1) } == 1 {
                    eprintln!("{}", dump());
                }
            });
        if let Err(e) = watcher {
            result = Err(e);
            return;
        }
        // SAFETY: installs a handler that only calls write(2).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigquit as *const () as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(libc::SIGQUIT, &action, std::ptr::null_mut()) != 0 {
                result = Err(std::io::Error::last_os_error());
            }
        }
    });
    result
}
