//! A hub's life on its thread: what it leaves behind when the thread exits (descriptors,
//! address space, its entry in `dump()`), and the memory it gives back while it is idle.
//!
//! These tests measure process-wide figures (open fds, VmSize, VmRSS), so they take a lock
//! and run one at a time; this file holds no other tests. The monitor's reports are off
//! here: on a loaded machine a hub may be reported, and the debug info the monitor then
//! maps and keeps would count in these figures. (Its probes and time slices stay on.)

use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use greenhub::hub::{self, result_channel};
use greenhub::{monitor, sleep, spawn};

static SERIAL: Mutex<()> = Mutex::new(());

/// Takes the lock; turns the monitor's reports off.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    monitor::configure(monitor::Config {
        max_blocking_time: None,
        ..monitor::Config::default()
    });
    guard
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// A field of /proc/self/status in KiB (`VmSize`, `VmRSS`).
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    line[field.len() + 1..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap()
}

/// How much the address space may grow over a run of short-lived threads without a
/// leak: glibc's malloc may map a new 64 MiB arena for a thread that meets contention
/// (a test on another thread, the monitor), at most twice here. A leaked hub costs
/// ~4 MiB per thread, 4 GiB over a thousand threads.
const VM_SLACK_KIB: u64 = 2 * 64 * 1024 + 16 * 1024;

/// A thread that makes a hub, runs a greenlet that blocks (so the hub greenlet runs and
/// parks), joins it and exits. With `greenlets_first`, it uses a plain greenlet before the
/// hub: its thread-locals are then made, and destroyed, in the other order.
fn short_lived_hub_thread(name: String, greenlets_first: bool) {
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            if greenlets_first {
                let g = greenhub::Greenlet::new(|v| Ok(v.downcast::<u8>().unwrap() + 1));
                assert_eq!(g.switch(1_u8).unwrap().downcast::<u8>().unwrap(), 2);
            }
            let h = spawn(|| {
                sleep(Duration::ZERO);
                7
            });
            assert_eq!(h.join().unwrap(), 7);
        })
        .unwrap()
        .join()
        .unwrap();
}

/// Runs `thread(i)` 50 times to warm up what a process keeps once (the monitor thread,
/// malloc's per-thread arenas, glibc's cache of thread stacks), then `n` times, and
/// asserts that the open fds and the address space are as they were after the warm-up.
fn assert_threads_leave_no_trace(what: &str, n: usize, thread: impl Fn(usize)) {
    for i in 0..50 {
        thread(i);
    }
    let (fds, vm) = (open_fds(), status_kib("VmSize"));
    for i in 0..n {
        thread(i);
    }
    let (fds_after, vm_after) = (open_fds(), status_kib("VmSize"));
    eprintln!("{n} {what}: fds {fds} -> {fds_after}, VmSize {vm} -> {vm_after} KiB");
    assert!(
        fds_after <= fds + 2,
        "open fds went from {fds} to {fds_after}"
    );
    assert!(
        vm_after <= vm + VM_SLACK_KIB,
        "VmSize went from {vm} KiB to {vm_after} KiB"
    );
}

#[test]
fn a_thousand_short_lived_hub_threads_leave_fds_and_address_space_as_they_were() {
    let _g = serial();
    assert_threads_leave_no_trace("hub threads", 1000, |i| {
        short_lived_hub_thread(format!("short-{i}"), i % 2 == 0);
    });
}

#[test]
fn hub_threads_that_never_block_leave_fds_and_address_space_as_they_were() {
    let _g = serial();
    // The hub is made (its greenlet, its poller, its waker) but never runs.
    assert_threads_leave_no_trace("idle hub threads", 500, |i| {
        std::thread::Builder::new()
            .name(format!("idle-hub-{i}"))
            .spawn(|| drop(hub::handle()))
            .unwrap()
            .join()
            .unwrap();
    });
}

#[test]
fn dump_skips_hub_threads_that_have_exited_and_answers_at_once() {
    let _g = serial();
    for i in 0..3 {
        short_lived_hub_thread(format!("exited-hub-{i}"), false);
    }
    let t = Instant::now();
    let text = hub::dump();
    let took = t.elapsed();
    assert!(!text.contains("exited-hub-"), "{text}");
    assert!(
        took < Duration::from_millis(900),
        "dump() took {took:?}:\n{text}"
    );
}

/// Touches `KIB` KiB of the running greenlet's stack.
#[inline(never)]
fn touch_stack<const KIB: usize>() -> u8 {
    let mut buf = [0_u8; KIB];
    for i in (0..KIB).step_by(1024) {
        buf[i] = i as u8;
    }
    black_box(&mut buf);
    buf[KIB / 2]
}

#[test]
fn an_idle_hub_gives_back_the_stack_memory_of_finished_greenlets_then_sleeps() {
    let _g = serial();
    const GREENLETS: usize = 300;
    let (burst_done_tx, burst_done) = std::sync::mpsc::channel();
    let (go_tx, go) = std::sync::mpsc::channel();
    let before = status_kib("VmRSS");
    let hub_thread = std::thread::spawn(move || {
        // The hub thread's last wait is for a value from another thread: no timer of its
        // own, so only a trim wake-up can make it give memory back.
        let (tx, rx) = result_channel::<()>();
        // SAFETY: gettid has no preconditions.
        go_tx.send((tx, unsafe { libc::gettid() })).unwrap();
        let hs: Vec<_> = (0..GREENLETS)
            .map(|_| {
                spawn(|| {
                    let x = touch_stack::<{ 160 * 1024 }>();
                    sleep(Duration::from_millis(20)); // all alive at once: one stack each
                    x
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        burst_done_tx.send(()).unwrap();
        rx.recv().unwrap();
    });
    let (release, hub_tid) = go.recv().unwrap();
    burst_done.recv().unwrap();
    let peak = status_kib("VmRSS");
    let grown = peak.saturating_sub(before);
    assert!(
        grown > 20 * 1024,
        "the burst should have touched ~48 MiB of stacks: RSS {before} -> {peak} KiB"
    );
    let t = Instant::now();
    let mut now = peak;
    while t.elapsed() < Duration::from_secs(6) {
        std::thread::sleep(Duration::from_millis(50));
        now = status_kib("VmRSS");
        if now < before + grown / 4 {
            break;
        }
    }
    let took = t.elapsed();
    // Trimmed, the idle hub stops waking up: it sleeps until something happens.
    std::thread::sleep(Duration::from_millis(1500));
    let wakeups = || {
        let path = format!("/proc/self/task/{hub_tid}/status");
        let status = std::fs::read_to_string(path).unwrap();
        status
            .lines()
            .filter(|l| l.contains("ctxt_switches"))
            .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap())
            .sum::<u64>()
    };
    let w0 = wakeups();
    std::thread::sleep(Duration::from_millis(2500));
    let idle_wakeups = wakeups() - w0;
    release.send(());
    hub_thread.join().unwrap();
    eprintln!(
        "RSS {before} -> {peak} -> {now} KiB, {took:?} after the hub went idle; \
         then {idle_wakeups} wake-ups in 2.5 s"
    );
    assert!(
        now < before + grown / 4,
        "RSS still {now} KiB ({before} before the burst, {peak} at its end) after {took:?} idle"
    );
    assert!(
        idle_wakeups <= 1,
        "{idle_wakeups} wake-ups in 2.5 s of idleness"
    );
}

static LIVE_DROPS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

struct CountDrop;
impl Drop for CountDrop {
    fn drop(&mut self) {
        LIVE_DROPS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn a_thread_that_exits_with_live_greenlets_leaks_them_without_running_them() {
    let _g = serial();
    LIVE_DROPS.store(0, std::sync::atomic::Ordering::SeqCst);
    std::thread::spawn(|| {
        // Parked on a timer, with a destructor on its stack.
        let sleeper = spawn(|| {
            let _guard = CountDrop;
            sleep(Duration::from_secs(3600));
        });
        sleep(Duration::from_millis(5)); // the sleeper parks; the hub greenlet runs
        // Spawned, never started: its closure owns a value with a destructor.
        let guard = CountDrop;
        let unstarted = spawn(move || drop(guard));
        // Detach both (dropping a JoinHandle neither kills nor joins).
        drop(sleeper);
        drop(unstarted);
    })
    .join()
    .unwrap();
    // The thread is gone, and its greenlets with it: nothing of theirs ran at its exit.
    assert_eq!(LIVE_DROPS.load(std::sync::atomic::Ordering::SeqCst), 0);
    // The process is fine: a new hub thread works.
    short_lived_hub_thread("after-leak".into(), false);
}
