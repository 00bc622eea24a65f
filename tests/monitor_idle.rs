//! What the monitor costs a process whose greenlets do not block: its thread sleeps while
//! every hub is idle or keeps nobody waiting (and is woken when that changes: a block after
//! a long sleep is still reported), no monitor thread runs at all when it is configured
//! off, and the debug info a report needs is loaded only for a report and given back once
//! reports stop.
//!
//! Each test runs in a process of its own (this binary again, with `GREENHUB_IDLE_CHILD`
//! naming the test): the monitor is process-wide, and the other tests' hubs would wake it.

use std::cell::Cell;
use std::hint::black_box;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use greenhub::monitor::{self, BlockReport, Config};
use greenhub::{sleep, spawn};

const CHILD: &str = "GREENHUB_IDLE_CHILD";

/// Runs `test` in a child process; `true` in the child itself (the caller then runs the
/// test's body).
fn in_child(test: &str) -> bool {
    if std::env::var(CHILD).is_ok_and(|t| t == test) {
        return true;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, test)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{stdout}\n{stderr}"
    );
    eprintln!("{stderr}");
    false
}

/// The context switches (voluntary and not) of this process's thread named `name`, if it
/// has one: how often it woke up.
fn wake_ups_of(name: &str) -> Option<u64> {
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let status = std::fs::read_to_string(task.path().join("status")).ok()?;
        return Some(
            status
                .lines()
                .filter_map(|l| {
                    l.strip_prefix("voluntary_ctxt_switches:")
                        .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                })
                .filter_map(|v| v.trim().parse::<u64>().ok())
                .sum(),
        );
    }
    None
}

/// The monitor thread's name as the kernel keeps it (15 bytes).
const MONITOR: &str = "greenhub-monito";

fn monitor_wake_ups() -> u64 {
    wake_ups_of(MONITOR).expect("a monitor thread")
}

/// This process's anonymous resident memory, in KiB.
fn rss_anon_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[inline(never)]
fn spin_until(cap: Duration, done: impl Fn() -> bool) -> u64 {
    let t = Instant::now();
    let mut x = 0_u64;
    while t.elapsed() < cap && !done() {
        for _ in 0..1000 {
            x = black_box(x.wrapping_mul(31).wrapping_add(7));
        }
    }
    x
}

/// A greenlet that keeps a timer due (sleeping 1 ms at a time until `stop`), so that a hog
/// keeps someone waiting.
fn ticker(stop: &Rc<Cell<bool>>) -> greenhub::JoinHandle<()> {
    let stop = stop.clone();
    let h = spawn(move || {
        while !stop.get() {
            sleep(Duration::from_millis(1));
        }
    });
    sleep(Duration::ZERO);
    h
}

/// Installs a callback that collects the (opening) reports.
fn collecting(threshold: Duration) -> Arc<Mutex<Vec<BlockReport>>> {
    let reports: Arc<Mutex<Vec<BlockReport>>> = Arc::default();
    let sink = reports.clone();
    monitor::configure(Config {
        max_blocking_time: Some(threshold),
        stderr: false,
        callback: Some(Arc::new(move |r: &BlockReport| {
            if !r.finished {
                sink.lock().unwrap().push(r.clone());
            }
        })),
        ..Config::default()
    });
    reports
}

#[test]
fn an_idle_process_wakes_the_monitor_rarely() {
    if !in_child("an_idle_process_wakes_the_monitor_rarely") {
        return;
    }
    spawn(|| black_box(1)).join().unwrap();
    sleep(Duration::from_millis(300));
    let before = monitor_wake_ups();
    sleep(Duration::from_secs(2)); // the hub idles in epoll_wait
    let woke = monitor_wake_ups() - before;
    eprintln!("the monitor woke {woke} times in 2 s of idling");
    // It wakes only when the hub does (its stack trims, at most two, and this sleep's end),
    // a few context switches each; it used to tick every 2 ms (~1,000 in 2 s).
    assert!(woke <= 20, "the monitor woke {woke} times in 2 s of idling");
}

#[test]
fn a_hub_thread_blocked_with_nobody_waiting_wakes_the_monitor_rarely() {
    if !in_child("a_hub_thread_blocked_with_nobody_waiting_wakes_the_monitor_rarely") {
        return;
    }
    spawn(|| black_box(1)).join().unwrap();
    sleep(Duration::from_millis(300));
    let before = monitor_wake_ups();
    // The main greenlet blocks its thread, with nobody waiting on its hub.
    std::thread::sleep(Duration::from_secs(2));
    let woke = monitor_wake_ups() - before;
    eprintln!("the monitor woke {woke} times in 2 s with the thread blocked");
    // Once at the end of its time slice, then once a second at most (it used to tick
    // every 2 ms).
    assert!(woke <= 20, "the monitor woke {woke} times in 2 s");
}

#[test]
fn with_the_monitor_off_no_monitor_thread_runs() {
    if !in_child("with_the_monitor_off_no_monitor_thread_runs") {
        return;
    }
    monitor::configure(Config {
        max_blocking_time: None,
        time_slice: None,
        ..Config::default()
    });
    spawn(|| black_box(1)).join().unwrap();
    sleep(Duration::from_millis(200));
    assert_eq!(wake_ups_of(MONITOR), None, "a monitor thread runs");
}

#[test]
fn a_block_after_the_monitor_slept_is_still_reported() {
    if !in_child("a_block_after_the_monitor_slept_is_still_reported") {
        return;
    }
    let reports = collecting(Duration::from_millis(50));
    spawn(|| black_box(1)).join().unwrap();
    sleep(Duration::from_millis(300));
    let before = monitor_wake_ups();
    sleep(Duration::from_millis(500));
    let slept = monitor_wake_ups() - before;
    let stop = Rc::new(Cell::new(false));
    let waiting = ticker(&stop);
    let sink = reports.clone();
    let hog = spawn(move || {
        let me = greenhub::getcurrent().id();
        spin_until(Duration::from_secs(20), || {
            sink.lock().unwrap().iter().any(|r| r.greenlet_id == me)
        });
    });
    let id = hog.id();
    hog.join().unwrap();
    stop.set(true);
    waiting.join().unwrap();
    assert!(
        slept <= 20,
        "the monitor did not sleep: {slept} wake-ups in 500 ms"
    );
    let got = reports.lock().unwrap().clone();
    assert!(got.iter().any(|r| r.greenlet_id == id), "{got:#?}");
}

#[test]
fn a_block_shorter_than_the_threshold_loads_no_debug_info() {
    if !in_child("a_block_shorter_than_the_threshold_loads_no_debug_info") {
        return;
    }
    let reports = collecting(Duration::from_millis(400));
    spawn(|| black_box(1)).join().unwrap();
    let before = rss_anon_kib();
    let stop = Rc::new(Cell::new(false));
    let waiting = ticker(&stop);
    // Three-quarters of the threshold, keeping the ticker waiting.
    spawn(|| spin_until(Duration::from_millis(300), || false))
        .join()
        .unwrap();
    stop.set(true);
    waiting.join().unwrap();
    sleep(Duration::from_millis(300));
    let grown = rss_anon_kib().saturating_sub(before);
    assert!(reports.lock().unwrap().is_empty());
    assert!(
        grown < 16 * 1024,
        "the process grew by {grown} KiB without a report"
    );
}

#[test]
fn the_debug_info_loaded_for_a_report_is_given_back_once_reports_stop() {
    if !in_child("the_debug_info_loaded_for_a_report_is_given_back_once_reports_stop") {
        return;
    }
    let reports = collecting(Duration::from_millis(50));
    spawn(|| black_box(1)).join().unwrap();
    let before = rss_anon_kib();
    let stop = Rc::new(Cell::new(false));
    let waiting = ticker(&stop);
    let done = Arc::new(AtomicBool::new(false));
    let sink = reports.clone();
    let flag = done.clone();
    spawn(move || {
        spin_until(Duration::from_secs(20), || !sink.lock().unwrap().is_empty());
        flag.store(true, Ordering::SeqCst);
    })
    .join()
    .unwrap();
    stop.set(true);
    waiting.join().unwrap();
    assert!(done.load(Ordering::SeqCst));
    let got = reports.lock().unwrap().clone();
    assert!(got.iter().any(|r| !r.stack.is_empty()), "{got:#?}");
    let loaded = rss_anon_kib().saturating_sub(before);
    // Kept while reports may follow, given back 10 s after the last one.
    sleep(Duration::from_secs(13));
    let kept = rss_anon_kib().saturating_sub(before);
    assert!(
        kept < loaded / 2 && kept < 8 * 1024,
        "grown by {loaded} KiB for the report, still {kept} KiB 13 s later"
    );
}
