//! The blocking monitor: reports while the hog runs, names it, shows the user's frames of
//! its stack, says who it keeps waiting; no report for a greenlet that yields, nor for a
//! thread that keeps nobody waiting; system calls it watches never fail with EINTR; its
//! signal runs on greenhub's alternate stack and leaves other SIGURG handlers their
//! signals; cooperate() lets kills and timeouts land in CPU loops.
//!
//! The monitor's settings are process-wide, so these tests take a lock and each restores
//! the defaults when done.

use std::cell::Cell;
use std::hint::black_box;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use greenhub::monitor::{self, BlockReport, Config, Delayed, ThreadActivity};
use greenhub::{Error, JoinHandle, cooperate, getcurrent, hub, sleep, spawn, with_timeout};

static SERIAL: Mutex<()> = Mutex::new(());

/// Takes the lock and installs a callback that collects reports.
fn collecting(threshold: Duration) -> (MutexGuard<'static, ()>, Arc<Mutex<Vec<BlockReport>>>) {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let reports: Arc<Mutex<Vec<BlockReport>>> = Arc::default();
    let sink = reports.clone();
    monitor::configure(Config {
        max_blocking_time: Some(threshold),
        stderr: true,
        callback: Some(Arc::new(move |r: &BlockReport| {
            sink.lock().unwrap().push(r.clone())
        })),
        ..Config::default()
    });
    (guard, reports)
}

fn restore() {
    monitor::configure(Config::default());
}

fn reports_for(reports: &Mutex<Vec<BlockReport>>, id: u64) -> Vec<BlockReport> {
    reports
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.greenlet_id == id)
        .cloned()
        .collect()
}

/// Waits (cooperatively, up to 30 s: the first report of a debug build waits for its debug
/// info to load) until the reports for greenlet `id` satisfy `done`; returns them.
fn wait_reports(
    reports: &Mutex<Vec<BlockReport>>,
    id: u64,
    done: impl Fn(&[BlockReport]) -> bool,
) -> Vec<BlockReport> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mine = reports_for(reports, id);
        if done(&mine) || Instant::now() > deadline {
            return mine;
        }
        sleep(Duration::from_millis(5));
    }
}

fn has_open(rs: &[BlockReport]) -> bool {
    rs.iter().any(|r| !r.finished)
}

fn has_closing(rs: &[BlockReport]) -> bool {
    rs.iter().any(|r| r.finished)
}

/// Spins (never switching) until `done()` or `cap` passes: a hog that is still running
/// when its report arrives, however loaded the machine is.
#[inline(never)]
fn spin_hog_until(cap: Duration, done: impl Fn() -> bool) -> u64 {
    let t = Instant::now();
    let mut x = 0_u64;
    while t.elapsed() < cap && !done() {
        for _ in 0..1000 {
            x = black_box(x.wrapping_mul(31).wrapping_add(7));
        }
    }
    x
}

/// Has a (non-closing) report for the running greenlet arrived?
fn reported_me(reports: &Mutex<Vec<BlockReport>>) -> bool {
    let me = greenhub::getcurrent().id();
    reports
        .lock()
        .unwrap()
        .iter()
        .any(|r| r.greenlet_id == me && !r.finished)
}

/// A greenlet that keeps a timer due while a hog runs (sleeping 1 ms at a time until
/// `stop`): the monitor reports only blocks that keep someone waiting.
fn ticker(stop: &Rc<Cell<bool>>) -> JoinHandle<()> {
    let stop = stop.clone();
    let h = spawn(move || {
        while !stop.get() {
            sleep(Duration::from_millis(1));
        }
    });
    sleep(Duration::ZERO); // it parks on its first timer
    h
}

fn stop_ticker(stop: &Rc<Cell<bool>>, ticker: JoinHandle<()>) {
    stop.set(true);
    ticker.join().unwrap();
}

#[inline(never)]
fn spin_hog_for(d: Duration) -> u64 {
    let t = Instant::now();
    let mut x = 0_u64;
    while t.elapsed() < d {
        x = black_box(x.wrapping_mul(31).wrapping_add(7));
    }
    x
}

#[test]
fn a_spinning_greenlet_gets_exactly_one_report_with_its_stack() {
    let (_g, reports) = collecting(Duration::from_millis(50));
    let stop = Rc::new(Cell::new(false));
    let waiting = ticker(&stop);
    let sink = reports.clone();
    let hog = hub::SpawnBuilder::new()
        .name("spinner")
        .spawn(move || spin_hog_until(Duration::from_secs(20), || reported_me(&sink)));
    let id = hog.id();
    hog.join().unwrap();
    // The monitor sees the switch and closes the episode.
    let mine = wait_reports(&reports, id, has_closing);
    stop_ticker(&stop, waiting);
    restore();
    let open: Vec<_> = mine.iter().filter(|r| !r.finished).collect();
    assert_eq!(open.len(), 1, "exactly one report per episode: {mine:#?}");
    let r = open[0];
    assert_eq!(r.greenlet_name.as_deref(), Some("spinner"));
    assert!(r.blocked_for >= Duration::from_millis(50), "{r}");
    assert!(
        r.spawned_at
            .as_deref()
            .is_some_and(|s| s.contains("monitor.rs")),
        "{r}"
    );
    assert_eq!(r.activity, ThreadActivity::OnCpu, "{r}");
    assert!(
        r.stack
            .iter()
            .any(|f| f.function.contains("spin_hog_until")),
        "{r}"
    );
    let closing: Vec<_> = mine.iter().filter(|r| r.finished).collect();
    assert_eq!(closing.len(), 1, "{mine:#?}");
    // The hog stopped only once its report was out: it was reported while running, and
    // the closing line measures the whole episode.
    assert!(closing[0].blocked_for >= r.blocked_for, "{}", closing[0]);
}

#[test]
fn a_greenlet_in_a_blocking_syscall_is_reported_as_such() {
    let (_g, reports) = collecting(Duration::from_millis(50));
    let stop = Rc::new(Cell::new(false));
    let waiting = ticker(&stop);
    let sink = reports.clone();
    let hog = greenhub::hub::SpawnBuilder::new()
        .name("sleeper")
        .spawn(move || {
            let t = Instant::now();
            while !reported_me(&sink) && t.elapsed() < Duration::from_secs(20) {
                // Blocks the hub in a syscall; long sleeps keep the thread off the CPU but
                // for microseconds each, which a capture could otherwise land in.
                std::thread::sleep(Duration::from_millis(100));
            }
        });
    let id = hog.id();
    hog.join().unwrap();
    let mine = wait_reports(&reports, id, has_open);
    stop_ticker(&stop, waiting);
    restore();
    let r = mine.iter().find(|r| !r.finished).expect("a report");
    // Not signalled (it is in a system call): named from what the hub published.
    assert_eq!(r.greenlet_name.as_deref(), Some("sleeper"), "{r}");
    match &r.activity {
        ThreadActivity::Syscall { name, .. } => {
            assert!(name.contains("nanosleep"), "{r}");
        }
        other => panic!("expected a system call, got {other:?}: {r}"),
    }
}

#[test]
fn a_greenlet_that_yields_often_is_not_reported() {
    let (_g, reports) = collecting(Duration::from_millis(50));
    let polite = spawn(|| {
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(300) {
            spin_hog_for(Duration::from_millis(2));
            sleep(Duration::ZERO);
        }
    });
    let id = polite.id();
    polite.join().unwrap();
    let mine = reports_for(&reports, id);
    restore();
    assert!(mine.is_empty(), "{mine:#?}");
}

#[test]
fn cooperate_lets_a_kill_land_inside_a_cpu_loop() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let hog = spawn(|| -> Result<(), Error> {
        loop {
            spin_hog_for(Duration::from_micros(100));
            cooperate()?;
        }
    });
    sleep(Duration::from_millis(20)); // the hog runs; we get back in at its first cooperate()
    let t = Instant::now();
    hog.kill();
    assert!(t.elapsed() < Duration::from_secs(1));
    assert!(matches!(hog.join(), Err(Error::Killed)));
}

#[test]
fn cooperate_lets_a_timeout_land_inside_a_cpu_loop() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = Instant::now();
    let r = with_timeout(Duration::from_millis(30), || -> Result<(), Error> {
        loop {
            spin_hog_for(Duration::from_micros(100));
            cooperate()?;
        }
    });
    assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn a_panicking_callback_does_not_kill_the_monitor() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
    let sink = seen.clone();
    monitor::configure(Config {
        max_blocking_time: Some(Duration::from_millis(40)),
        callback: Some(Arc::new(move |r: &BlockReport| {
            if !r.finished {
                sink.lock().unwrap().push(r.greenlet_id);
                panic!("callback bug");
            }
        })),
        ..Config::default()
    });
    let seen_ids = |want: &[u64]| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !want.iter().all(|id| seen.lock().unwrap().contains(id)) && Instant::now() < deadline
        {
            sleep(Duration::from_millis(5));
        }
    };
    let stop = Rc::new(Cell::new(false));
    let waiting = ticker(&stop);
    let seen_by_hog = seen.clone();
    let hog = move || {
        let me = greenhub::getcurrent().id();
        let seen = seen_by_hog.clone();
        spin_hog_until(Duration::from_secs(20), move || {
            seen.lock().unwrap().contains(&me)
        })
    };
    let first = spawn(hog.clone());
    let first_id = first.id();
    first.join().unwrap();
    seen_ids(&[first_id]); // the callback panicked on this one
    let second = spawn(hog);
    let second_id = second.id();
    second.join().unwrap();
    seen_ids(&[first_id, second_id]);
    let got = seen.lock().unwrap().clone();
    stop_ticker(&stop, waiting);
    restore();
    assert!(
        got.contains(&first_id) && got.contains(&second_id),
        "{got:?}"
    );
}

#[test]
fn the_environment_variable_turns_reports_off() {
    if std::env::var_os("GREENHUB_MONITOR_CHILD").is_some() {
        // Keep the settings the environment gave; only learn when a report is out, so the
        // process does not exit before it is printed.
        let reported = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = reported.clone();
        let mut config = monitor::config();
        let enabled = config.max_blocking_time.is_some();
        config.callback = Some(Arc::new(move |_: &BlockReport| {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        }));
        monitor::configure(config);
        // Spin until the report is out (or, with reports off, for 300 ms), while another
        // greenlet's timer is due.
        let stop = Rc::new(Cell::new(false));
        let waiting = ticker(&stop);
        let cap = Duration::from_millis(if enabled { 20_000 } else { 300 });
        let hog = spawn(move || {
            spin_hog_until(cap, || reported.load(std::sync::atomic::Ordering::SeqCst))
        });
        hog.join().unwrap();
        sleep(Duration::from_millis(100)); // let the closing line out too
        stop_ticker(&stop, waiting);
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let run = |setting: &str| {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "the_environment_variable_turns_reports_off",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("GREENHUB_MONITOR_CHILD", "1")
            .env("GREENHUB_MAX_BLOCKING_TIME", setting)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let off = run("off");
    assert!(!off.contains("greenhub monitor:"), "{off}");
    let on = run("50ms");
    assert!(
        on.contains("has run") && on.contains("spin_hog_until"),
        "{on}"
    );
}

/// Reports about greenlets on the calling thread.
fn reports_on_this_thread(reports: &Mutex<Vec<BlockReport>>) -> Vec<BlockReport> {
    let me = std::thread::current()
        .name()
        .unwrap_or("<unnamed>")
        .to_string();
    reports
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.thread_name == me)
        .cloned()
        .collect()
}

#[test]
fn a_thread_that_keeps_nobody_waiting_is_not_reported() {
    let (_g, reports) = collecting(Duration::from_millis(50));
    // The thread has used greenhub (it has a hub), and now runs on its main greenlet with
    // nobody waiting: a blocking sleep, then a CPU phase.
    spawn(|| sleep(Duration::from_millis(1))).join().unwrap();
    std::thread::sleep(Duration::from_millis(400));
    spin_hog_for(Duration::from_millis(400));
    sleep(Duration::from_millis(100)); // the monitor has had its look
    let mine = reports_on_this_thread(&reports);
    restore();
    assert!(mine.is_empty(), "{mine:#?}");
}

#[test]
fn a_hog_that_delays_a_due_timer_is_reported_as_delaying_one() {
    let (_g, reports) = collecting(Duration::from_millis(50));
    let sleeper = spawn(|| sleep(Duration::from_millis(1)));
    let sink = reports.clone();
    let hog = spawn(move || spin_hog_until(Duration::from_secs(20), || reported_me(&sink)));
    let id = hog.id();
    hog.join().unwrap();
    sleeper.join().unwrap();
    let mine = wait_reports(&reports, id, has_open);
    restore();
    let r = mine.iter().find(|r| !r.finished).expect("a report");
    // The main greenlet waits on the hog's end; it is not kept waiting by its blocking.
    assert_eq!(
        r.delayed,
        Delayed {
            timers: 1,
            ..Delayed::default()
        },
        "{r}"
    );
    assert!(
        r.to_string()
            .contains("delaying 1 greenlet (1 with a timer due)"),
        "{r}"
    );
}

/// Spins on the thread's main greenlet, which keeps the hub from running a greenlet whose
/// timer is due, until the report about this thread is in.
#[inline(never)]
fn main_greenlet_hog(done: &AtomicBool) -> u64 {
    spin_hog_until(Duration::from_secs(20), || done.load(Ordering::SeqCst))
}

/// The runtime frames a user never wants to see in a report.
fn start_up_frame(f: &greenhub::monitor::Frame) -> bool {
    [
        "lang_start",
        "catch_unwind",
        "_start",
        "start_thread",
        "test::",
        "greenhub::",
        "corosensei::",
    ]
    .iter()
    .any(|s| f.function.contains(s))
}

#[test]
fn a_report_shows_only_the_users_frames() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let reports: Arc<Mutex<Vec<BlockReport>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let me = std::thread::current().name().unwrap().to_string();
    let (sink, flag) = (reports.clone(), done.clone());
    monitor::configure(Config {
        max_blocking_time: Some(Duration::from_millis(50)),
        callback: Some(Arc::new(move |r: &BlockReport| {
            if !r.finished && r.thread_name == me {
                sink.lock().unwrap().push(r.clone());
                flag.store(true, Ordering::SeqCst);
            }
        })),
        ..Config::default()
    });
    // On the main greenlet: below the test's own frames are only libtest's and std's.
    let sleeper = spawn(|| sleep(Duration::from_millis(1)));
    sleep(Duration::ZERO);
    main_greenlet_hog(&done);
    sleeper.join().unwrap();
    // In a spawned greenlet: below its closure are only greenhub's and the resume chain.
    done.store(false, Ordering::SeqCst);
    let sleeper = spawn(|| sleep(Duration::from_millis(1)));
    let flag = done.clone();
    let hog =
        spawn(move || spin_hog_until(Duration::from_secs(20), || flag.load(Ordering::SeqCst)));
    hog.join().unwrap();
    sleeper.join().unwrap();
    restore();
    let got = reports.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "{got:#?}");
    for r in &got {
        assert!(!r.stack.is_empty(), "{r}");
        assert!(r.frames_hidden > 0, "{r}");
        assert!(
            r.stack
                .iter()
                .any(|f| f.function.contains("spin_hog_until")),
            "{r}"
        );
        assert!(!r.stack.iter().any(start_up_frame), "{r}");
        let outermost = &r.stack.last().unwrap().function;
        assert!(outermost.starts_with("monitor::"), "{r}");
    }
    assert!(
        got[0]
            .stack
            .iter()
            .any(|f| f.function.contains("a_report_shows_only_the_users_frames")),
        "{}",
        got[0]
    );
}

/// What a system call returned: its result and errno.
fn outcome(rc: libc::c_long) -> (libc::c_long, i32) {
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    (rc, if rc < 0 { errno } else { 0 })
}

#[test]
fn system_calls_a_reported_greenlet_blocks_in_never_fail_with_eintr() {
    let (_g, reports) = collecting(Duration::from_millis(50));
    let stop = Rc::new(Cell::new(false));
    let waiting = ticker(&stop);
    let mut fds = [0; 2];
    // SAFETY: pipe writes two fds into the array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (rfd, wfd) = (fds[0], fds[1]);
    // Writes one byte 400 ms after each request: a read that blocks that long.
    let (ask, asked) = std::sync::mpsc::channel::<()>();
    let writer = std::thread::spawn(move || {
        while asked.recv().is_ok() {
            std::thread::sleep(Duration::from_millis(400));
            // SAFETY: writes one byte from a local to the pipe we own.
            assert_eq!(unsafe { libc::write(wfd, b"x".as_ptr().cast(), 1) }, 1);
        }
    });
    let sink = reports.clone();
    let blocker = spawn(move || {
        let me = getcurrent().id();
        let reported = |names: &[&str]| {
            sink.lock().unwrap().iter().any(|r| {
                r.greenlet_id == me
                    && !r.finished
                    && matches!(r.activity, ThreadActivity::Syscall { name, .. } if names.contains(&name))
            })
        };
        type Call<'a> = (
            &'a [&'a str],
            Box<dyn Fn() -> (libc::c_long, i32)>,
            libc::c_long,
        );
        let calls: [Call; 3] = [
            (
                &["poll", "ppoll"],
                // SAFETY: poll with no fds only sleeps for the timeout.
                Box::new(|| outcome(unsafe { libc::poll(std::ptr::null_mut(), 0, 400) }.into())),
                0,
            ),
            (
                &["nanosleep", "clock_nanosleep"],
                Box::new(|| {
                    let ts = libc::timespec {
                        tv_sec: 0,
                        tv_nsec: 400_000_000,
                    };
                    // SAFETY: sleeps; `ts` is a valid timespec, no remainder wanted.
                    outcome(unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) }.into())
                }),
                0,
            ),
            (
                &["read"],
                Box::new(move || {
                    ask.send(()).unwrap();
                    let mut byte = 0_u8;
                    // SAFETY: reads one byte into a local from the pipe we own.
                    outcome(unsafe { libc::read(rfd, (&mut byte as *mut u8).cast(), 1) } as _)
                }),
                1,
            ),
        ];
        let mut seen = Vec::new();
        for (names, call, want) in &calls {
            // Until the monitor has reported the greenlet inside this call (a loaded
            // machine may take more than one 400 ms call): not one may fail.
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut tries = 0;
            loop {
                let (rc, errno) = call();
                tries += 1;
                assert_eq!(
                    (rc, errno),
                    (*want, 0),
                    "{names:?} failed (EINTR is {})",
                    libc::EINTR
                );
                if reported(names) || Instant::now() > deadline {
                    break;
                }
                sleep(Duration::ZERO); // a switch: the next call is a new episode
            }
            seen.push((names[0], reported(names), tries));
            sleep(Duration::ZERO);
        }
        seen
    });
    let seen = blocker.join().unwrap();
    writer.join().unwrap();
    stop_ticker(&stop, waiting);
    restore();
    // SAFETY: closing the pipe's fds, which nothing uses any more.
    unsafe {
        libc::close(rfd);
        libc::close(wfd);
    }
    assert!(seen.iter().all(|(_, reported, _)| *reported), "{seen:?}");
    let got = reports.lock().unwrap().clone();
    let r = got
        .iter()
        .find(|r| matches!(r.activity, ThreadActivity::Syscall { .. }))
        .unwrap();
    // Not signalled, so no stack; named from what the hub published.
    assert!(r.stack.is_empty() && r.greenlet_id != 0, "{r}");
}

/// The calling thread's alternate signal stack: start and size.
fn alt_stack() -> Option<(usize, usize)> {
    // SAFETY: all-zero is a valid stack_t; a null `ss` only queries into `old`.
    let mut old: libc::stack_t = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::sigaltstack(std::ptr::null(), &mut old) }, 0);
    (old.ss_flags & libc::SS_DISABLE == 0).then_some((old.ss_sp as usize, old.ss_size))
}

#[test]
fn a_hub_thread_gets_a_64_kib_alternate_signal_stack() {
    std::thread::spawn(|| {
        let std_one = alt_stack();
        spawn(|| ()).join().unwrap();
        let ours = alt_stack();
        assert!(
            ours.is_some_and(|(_, size)| size >= 64 * 1024),
            "{std_one:?} -> {ours:?}"
        );
    })
    .join()
    .unwrap();
}

#[test]
fn a_thread_that_runs_greenlets_without_a_hub_gets_a_64_kib_alternate_signal_stack() {
    std::thread::spawn(|| {
        let std_one = alt_stack();
        let main = getcurrent();
        let g = greenhub::Greenlet::new(move |_| main.switch(()).map(|_| ()));
        g.switch(()).unwrap();
        let ours = alt_stack();
        assert!(
            ours.is_some_and(|(_, size)| size >= 64 * 1024),
            "{std_one:?} -> {ours:?}"
        );
    })
    .join()
    .unwrap();
}

#[test]
fn the_alternate_signal_stacks_of_exited_threads_are_unmapped() {
    if std::env::var_os("GREENHUB_ALTSTACK_CHILD").is_some() {
        // Alone in this process: nothing else maps memory where a freed stack was.
        for _ in 0..20 {
            let (sp, size) = std::thread::spawn(|| {
                spawn(|| ()).join().unwrap();
                alt_stack().unwrap()
            })
            .join()
            .unwrap();
            assert_eq!(size, 64 * 1024);
            // SAFETY: msync only inspects the mapping state of the range.
            let rc = unsafe { libc::msync(sp as *mut libc::c_void, size, libc::MS_ASYNC) };
            let errno = std::io::Error::last_os_error().raw_os_error();
            assert_eq!(
                (rc, errno),
                (-1, Some(libc::ENOMEM)),
                "still mapped after its thread exited"
            );
        }
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "the_alternate_signal_stacks_of_exited_threads_are_unmapped",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("GREENHUB_ALTSTACK_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_larger_alternate_signal_stack_of_the_users_is_kept() {
    std::thread::spawn(|| {
        let mut mine = vec![0_u8; 256 * 1024];
        let ss = libc::stack_t {
            ss_sp: mine.as_mut_ptr().cast(),
            ss_flags: 0,
            ss_size: mine.len(),
        };
        // SAFETY: `mine` stays alive until the stack is uninstalled below.
        assert_eq!(unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) }, 0);
        spawn(|| ()).join().unwrap();
        assert_eq!(alt_stack(), Some((mine.as_ptr() as usize, mine.len())));
        let off = libc::stack_t {
            ss_sp: std::ptr::null_mut(),
            ss_flags: libc::SS_DISABLE,
            ss_size: 0,
        };
        // SAFETY: uninstalls it before `mine` is freed.
        assert_eq!(unsafe { libc::sigaltstack(&off, std::ptr::null_mut()) }, 0);
    })
    .join()
    .unwrap();
}

static USER_SIGURGS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn user_sigurg(_: libc::c_int) {
    USER_SIGURGS.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn a_sigurg_handler_installed_before_greenhub_still_gets_its_signals() {
    if std::env::var_os("GREENHUB_SIGURG_CHILD").is_some() {
        // SAFETY: installs a handler that only bumps an atomic.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = user_sigurg as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            assert_eq!(
                libc::sigaction(libc::SIGURG, &action, std::ptr::null_mut()),
                0
            );
        }
        spawn(|| ()).join().unwrap(); // the first hub starts the monitor and its handler
        // SAFETY: sends SIGURG to this thread; it is handled before pthread_kill returns.
        assert_eq!(
            unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGURG) },
            0
        );
        assert_eq!(
            USER_SIGURGS.load(Ordering::SeqCst),
            1,
            "chained to the user's"
        );
        // The monitor's own signals are not passed on.
        let (_g, reports) = collecting(Duration::from_millis(50));
        let stop = Rc::new(Cell::new(false));
        let waiting = ticker(&stop);
        let sink = reports.clone();
        let hog = spawn(move || spin_hog_until(Duration::from_secs(20), || reported_me(&sink)));
        let id = hog.id();
        hog.join().unwrap();
        stop_ticker(&stop, waiting);
        let mine = reports_for(&reports, id);
        let r = mine.iter().find(|r| !r.finished).expect("a report");
        assert!(!r.stack.is_empty(), "captured with our own signal: {r}");
        assert_eq!(USER_SIGURGS.load(Ordering::SeqCst), 1, "ours stay ours");
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_sigurg_handler_installed_before_greenhub_still_gets_its_signals",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("GREENHUB_SIGURG_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_timer_cancelled_before_a_hog_does_not_count_as_delayed() {
    let (_g, reports) = collecting(Duration::from_millis(50));
    let event = Rc::new(greenhub::Event::new());
    let setter = {
        let event = event.clone();
        spawn(move || {
            sleep(Duration::from_millis(5));
            event.set();
        })
    };
    // Waits with a 100 ms timeout, is woken long before it (its timer is cancelled), then
    // hogs past that deadline with nobody waiting.
    let hog = spawn(move || {
        with_timeout(Duration::from_millis(100), || event.wait())
            .unwrap()
            .unwrap();
        spin_hog_for(Duration::from_millis(400));
    });
    let id = hog.id();
    // Only the hog's end is awaited: the main greenlet is not kept waiting by it.
    hog.join().unwrap();
    setter.join().unwrap();
    sleep(Duration::from_millis(100)); // the monitor has had its look
    let mine = reports_for(&reports, id);
    restore();
    assert!(mine.is_empty(), "{mine:#?}");
}
