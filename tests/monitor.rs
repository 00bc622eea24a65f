//! The blocking monitor: reports while the hog runs, names it, shows its stack; no report
//! for a greenlet that yields; cooperate() lets kills and timeouts land in CPU loops.
//!
//! The monitor's settings are process-wide, so these tests take a lock and each restores
//! the defaults when done.

use std::hint::black_box;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use greenhub::monitor::{self, BlockReport, Config, ThreadActivity};
use greenhub::{Error, cooperate, hub, sleep, spawn, with_timeout};

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
    let sink = reports.clone();
    let hog = hub::Builder::new()
        .name("spinner")
        .spawn(move || spin_hog_until(Duration::from_secs(20), || reported_me(&sink)));
    let id = hog.id();
    hog.join().unwrap();
    // The monitor sees the switch and closes the episode.
    let mine = wait_reports(&reports, id, has_closing);
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
    let sink = reports.clone();
    let hog = spawn(move || {
        let t = Instant::now();
        while !reported_me(&sink) && t.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(20)); // blocks the hub in a syscall
        }
    });
    let id = hog.id();
    hog.join().unwrap();
    let mine = wait_reports(&reports, id, has_open);
    restore();
    let r = mine.iter().find(|r| !r.finished).expect("a report");
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
        // Spin until the report is out (or, with reports off, for 300 ms).
        let cap = Duration::from_millis(if enabled { 20_000 } else { 300 });
        let hog = spawn(move || {
            spin_hog_until(cap, || reported.load(std::sync::atomic::Ordering::SeqCst))
        });
        hog.join().unwrap();
        sleep(Duration::from_millis(100)); // let the closing line out too
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
