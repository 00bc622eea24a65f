//! Monitor costs: a switch-heavy workload with the monitor on and off in the same run, the
//! cost of `cooperate()` in a tight loop, and detection latency (time from the threshold
//! to the report) over 50 blocking episodes, plus the first report of a process (which
//! loads the debug info) in a process of its own.
//!
//! The overhead is the median, over many short rounds, of each round's on/off ratio: two
//! threads, one started with the monitor off and one with it on (each with a hub the
//! monitor watches), take turns on one CPU, back to back, their order alternating, so that
//! the machine's load, which moves between rounds, cancels out.
//!
//! `cargo bench --bench monitor` (`-- --quick` for a short run).

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use greenhub::monitor::{self, BlockReport, Config};
use greenhub::{Greenlet, cooperate, getcurrent, spawn};

const ROUNDS: usize = 7;
/// Rounds of the on/off overhead comparison.
const OVERHEAD_ROUNDS: usize = 301;

/// A thread that runs the workloads when asked, with the monitor setting in force when it
/// started (its probe follows it), pinned to `cpu` (so that the two threads compared take
/// turns on one CPU) and with a hub the monitor watches.
struct Worker {
    jobs: std::sync::mpsc::Sender<Work>,
    results: std::sync::mpsc::Receiver<f64>,
}

#[derive(Clone, Copy)]
enum Work {
    /// ns per round trip of a raw greenlet ping-pong, over this many.
    PingPong(u64),
    /// ns per spawn + join, over this many batches of 1,000 (stacks are reused, as in a
    /// running server, rather than faulted in).
    SpawnJoin(u64),
}

impl Worker {
    fn start(config: Config, cpu: Option<usize>) -> Worker {
        monitor::configure(config);
        let (jobs, work) = std::sync::mpsc::channel::<Work>();
        let (done, results) = std::sync::mpsc::channel();
        let (ready, started) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            if let Some(cpu) = cpu {
                pin_to(cpu);
            }
            spawn(|| ()).join().unwrap(); // the hub the monitor watches
            let main = getcurrent();
            let g = Greenlet::new(move |_| -> Result<(), greenhub::Error> {
                loop {
                    main.switch(())?;
                }
            });
            let batch = |n: u64| {
                let hs: Vec<_> = (0..n).map(|i| spawn(move || black_box(i))).collect();
                for h in hs {
                    h.join().unwrap();
                }
            };
            for _ in 0..1000 {
                black_box(g.switch(()).unwrap()); // its stack is faulted in
            }
            batch(1000); // the stacks of one batch are faulted in
            ready.send(()).unwrap();
            for w in work {
                let t = Instant::now();
                let n = match w {
                    Work::PingPong(trips) => {
                        for _ in 0..trips {
                            black_box(g.switch(()).unwrap());
                        }
                        trips
                    }
                    Work::SpawnJoin(batches) => {
                        for _ in 0..batches {
                            batch(1000);
                        }
                        batches * 1000
                    }
                };
                let _ = done.send(t.elapsed().as_secs_f64() * 1e9 / n as f64);
            }
        });
        started.recv().unwrap();
        Worker { jobs, results }
    }

    fn run(&self, w: Work) -> f64 {
        self.jobs.send(w).unwrap();
        self.results.recv().unwrap()
    }
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and sched_setaffinity only
    // read and write the set we pass (pid 0: the calling thread).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The CPU the calling thread runs on.
fn current_cpu() -> Option<usize> {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    (cpu >= 0).then_some(cpu as usize)
}

fn monitor_on() -> Config {
    Config {
        stderr: false,
        ..Config::default()
    }
}

fn monitor_off() -> Config {
    Config {
        max_blocking_time: None,
        time_slice: None,
        stderr: false,
        callback: None,
    }
}

/// The overhead of the monitor: per round, the on/off ratio of each workload, run by a
/// worker started with the monitor off and one started with it on, back to back on one
/// CPU (alternating which goes first). The ratios, and each side's median.
struct Overhead {
    pingpong: Vec<f64>,
    spawn_join: Vec<f64>,
    off: (f64, f64),
    on: (f64, f64),
}

fn overhead(trips: u64, batches: u64, rounds: usize) -> Overhead {
    let cpu = current_cpu();
    let off_worker = Worker::start(monitor_off(), cpu);
    let on_worker = Worker::start(monitor_on(), cpu);
    let mut ratios = [Vec::new(), Vec::new()];
    let mut sides = [[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]];
    for round in 0..rounds {
        for (k, work) in [Work::PingPong(trips), Work::SpawnJoin(batches)]
            .into_iter()
            .enumerate()
        {
            let (off, on) = if round % 2 == 0 {
                let off = off_worker.run(work);
                (off, on_worker.run(work))
            } else {
                let on = on_worker.run(work);
                (off_worker.run(work), on)
            };
            ratios[k].push(on / off);
            sides[0][k].push(off);
            sides[1][k].push(on);
        }
    }
    let [pingpong, spawn_join] = ratios;
    let [off, on] = sides.map(|[p, s]| (median(p), median(s)));
    Overhead {
        pingpong,
        spawn_join,
        off,
        on,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn cooperate_cost(iters: u64) -> (f64, f64) {
    monitor::configure(monitor_on());
    let run = |with: bool| {
        (0..ROUNDS)
            .map(|_| {
                let t = Instant::now();
                let mut x = 0_u64;
                for i in 0..iters {
                    x = black_box(x.wrapping_add(i));
                    if with {
                        cooperate().unwrap();
                    }
                }
                black_box(x);
                t.elapsed().as_secs_f64() * 1e9 / iters as f64
            })
            .fold(f64::INFINITY, f64::min)
    };
    (run(false), run(true))
}

#[inline(never)]
fn spin(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        black_box(0);
    }
}

/// Latency from the moment a greenlet crosses the threshold to the report, in ms: p50 and
/// max over `episodes`, once the debug info is loaded (the first report of the process,
/// which loads it, is not counted here: see `first_report`).
fn detection_latency(episodes: usize, threshold: Duration) -> (f64, f64) {
    let mut lat = latencies(episodes + 1, threshold);
    lat.remove(0);
    let lat = sorted(lat);
    (lat[lat.len() / 2], lat[lat.len() - 1])
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// The latencies of `episodes` reports, in ms, in the order they came.
fn latencies(episodes: usize, threshold: Duration) -> Vec<f64> {
    let reported: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let sink = reported.clone();
    monitor::configure(Config {
        max_blocking_time: Some(threshold),
        stderr: false,
        callback: Some(Arc::new(move |r: &BlockReport| {
            if !r.finished {
                sink.lock().unwrap().push((r.greenlet_id, Instant::now()));
            }
        })),
        ..Config::default()
    });
    // The monitor reports only blocks that keep someone waiting: a greenlet whose 1 ms
    // timer comes due while each hog runs.
    let stop = std::rc::Rc::new(std::cell::Cell::new(false));
    let ticking = stop.clone();
    let ticker = spawn(move || {
        while !ticking.get() {
            greenhub::sleep(Duration::from_millis(1));
        }
    });
    greenhub::sleep(Duration::ZERO);
    let mut lat = Vec::new();
    for _ in 0..episodes {
        // Spins until its report is in (at most 2 s): a busy machine that starves the hog
        // delays its report, and a hog that stopped first would never get one.
        let seen = reported.clone();
        let h = spawn(move || {
            let start = Instant::now();
            let me = getcurrent().id();
            while start.elapsed() < Duration::from_secs(2)
                && !seen.lock().unwrap().iter().any(|(g, _)| *g == me)
            {
                spin(Duration::from_millis(1));
            }
            start
        });
        let id = h.id();
        let start = h.join().unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            let found = reported
                .lock()
                .unwrap()
                .iter()
                .find(|(g, _)| *g == id)
                .map(|&(_, at)| at);
            if let Some(at) = found {
                lat.push(
                    at.saturating_duration_since(start + threshold)
                        .as_secs_f64()
                        * 1e3,
                );
                break;
            }
            greenhub::sleep(Duration::from_millis(1));
        }
    }
    stop.set(true);
    ticker.join().unwrap();
    monitor::configure(Config::default());
    assert_eq!(lat.len(), episodes, "every episode was reported: {lat:?}");
    lat
}

/// In a process of its own (`--first-report`): the time from the threshold to the first
/// report, which waits for the debug info to load; prints `FIRST <ms>`.
fn first_report_child() {
    let threshold = Duration::from_millis(50);
    let lat = latencies(1, threshold);
    println!("FIRST {:.2}", lat[0]);
}

/// Runs this binary again with `--first-report`; the latency it printed, in ms.
fn first_report() -> Option<f64> {
    let out = std::process::Command::new(std::env::current_exe().ok()?)
        .arg("--first-report")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("FIRST "))?
        .trim()
        .parse()
        .ok()
}

/// The context switches (voluntary and not) of process `pid`'s threads: `(all, the
/// monitor's)`.
fn context_switches(pid: u32) -> (u64, u64) {
    let mut all = 0;
    let mut monitor = 0;
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"));
    for task in tasks.into_iter().flatten().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let n: u64 = status
            .lines()
            .filter_map(|l| {
                l.strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
            })
            .filter_map(|v| v.trim().parse::<u64>().ok())
            .sum();
        all += n;
        if comm.trim_end() == "greenhub-monito" {
            monitor += n;
        }
    }
    (all, monitor)
}

/// In a process of its own (`--idle`): a hub parked in `epoll_wait` with nothing to do
/// (the main greenlet sleeping for 8 s), the settings from the environment.
fn idle_child() {
    spawn(|| black_box(1)).join().unwrap();
    greenhub::sleep(Duration::from_secs(8));
}

/// Runs this binary again with `--idle` and `GREENHUB_MAX_BLOCKING_TIME` set to `env`
/// (unset: `None`) and counts its threads' context switches from outside over 2 s, after
/// 3 s to settle (the hub trims its stacks twice after the first greenlet's death): the
/// wake-ups/s, `(all threads, the monitor)`.
fn idle_wake_ups(env: Option<&str>) -> Option<(f64, f64)> {
    let mut cmd = std::process::Command::new(std::env::current_exe().ok()?);
    cmd.arg("--idle");
    match env {
        Some(v) => cmd.env("GREENHUB_MAX_BLOCKING_TIME", v),
        None => cmd.env_remove("GREENHUB_MAX_BLOCKING_TIME"),
    };
    let mut child = cmd.spawn().ok()?;
    std::thread::sleep(Duration::from_secs(3));
    let window = Duration::from_secs(2);
    let (all, monitor) = context_switches(child.id());
    std::thread::sleep(window);
    let (all2, monitor2) = context_switches(child.id());
    let _ = child.kill();
    let _ = child.wait();
    let secs = window.as_secs_f64();
    Some((
        all2.checked_sub(all)? as f64 / secs,
        monitor2.saturating_sub(monitor) as f64 / secs,
    ))
}

fn main() {
    if std::env::args().any(|a| a == "--first-report") {
        first_report_child();
        return;
    }
    if std::env::args().any(|a| a == "--idle") {
        idle_child();
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { 1 } else { 10 };
    let rounds = if quick { 31 } else { OVERHEAD_ROUNDS };
    let o = overhead(200_000, 2, rounds);
    let pct = |r: f64| (r - 1.0) * 100.0;
    let pp = pct(median(o.pingpong.clone()));
    let sj = pct(median(o.spawn_join.clone()));
    let range = |v: &[f64]| {
        let v = sorted(v.to_vec());
        (pct(v[0]), pct(v[v.len() - 1]))
    };
    let (pp_lo, pp_hi) = range(&o.pingpong);
    let (sj_lo, sj_hi) = range(&o.spawn_join);
    let (empty, with) = cooperate_cost(10_000_000 * scale);
    let per_call = (with - empty).max(0.0);
    let threshold = Duration::from_millis(50);
    let (p50, max) = detection_latency(if quick { 10 } else { 50 }, threshold);
    let firsts: Vec<f64> = (0..if quick { 1 } else { 3 })
        .filter_map(|_| first_report())
        .collect();
    let first = (!firsts.is_empty()).then(|| median(firsts.clone()));
    let mut idle_on = Vec::new();
    let mut idle_off = Vec::new();
    for _ in 0..if quick { 1 } else { 3 } {
        idle_on.extend(idle_wake_ups(None));
        idle_off.extend(idle_wake_ups(Some("off")));
    }

    println!(
        "Overhead: median of {rounds} rounds' on/off ratios (range across rounds in brackets)."
    );
    println!("| figure | monitor off | monitor on | overhead |");
    println!("|---|---:|---:|---:|");
    println!(
        "| greenlet ping-pong round trip | {:.2} ns | {:.2} ns | {pp:+.1}% ({pp_lo:+.1}% .. {pp_hi:+.1}%) |",
        o.off.0, o.on.0
    );
    println!(
        "| spawn + join | {:.0} ns | {:.0} ns | {sj:+.1}% ({sj_lo:+.1}% .. {sj_hi:+.1}%) |",
        o.off.1, o.on.1
    );
    println!(
        "cooperate(): {per_call:.2} ns per call ({empty:.2} ns loop body alone, {with:.2} ns with it)"
    );
    println!(
        "detection latency after a {} ms threshold (debug info loaded): p50 {p50:.2} ms, max {max:.2} ms",
        threshold.as_millis()
    );
    match first {
        Some(f) => println!(
            "the first report of a process (debug info loaded for it): {f:.1} ms after the threshold (median of {}: {firsts:.1?})",
            firsts.len()
        ),
        None => println!("the first report of a process: not measured (the child failed)"),
    }
    let worst = |v: &[(f64, f64)]| {
        v.iter()
            .copied()
            .fold((0.0_f64, 0.0_f64), |a, b| (a.0.max(b.0), a.1.max(b.1)))
    };
    let (idle_on_all, idle_on_monitor) = worst(&idle_on);
    let (idle_off_all, idle_off_monitor) = worst(&idle_off);
    println!(
        "idle process (a hub in epoll_wait), wake-ups/s of all threads (of the monitor), worst of {}: monitor on {idle_on_all:.1} ({idle_on_monitor:.1}); GREENHUB_MAX_BLOCKING_TIME=off {idle_off_all:.1} ({idle_off_monitor:.1}); runs {idle_on:.1?} / {idle_off:.1?}",
        idle_on.len()
    );
    println!("BENCH monitor_idle_wake_ups_on {idle_on_all:.1} /s");
    println!("BENCH monitor_idle_wake_ups_off {idle_off_all:.1} /s");
    println!("BENCH monitor_overhead_pingpong {pp:.1} %");
    println!("BENCH monitor_overhead_spawn_join {sj:.1} %");
    println!("BENCH monitor_cooperate_cost {per_call:.2} ns");
    println!("BENCH monitor_detection_latency_p50 {p50:.2} ms");
    println!("BENCH monitor_detection_latency_max {max:.2} ms");
    if let Some(f) = first {
        println!("BENCH monitor_first_report_latency {f:.1} ms");
    }
}
