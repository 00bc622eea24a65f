//! Monitor costs: a switch-heavy workload with the monitor on and off in the same
//! run, the cost of `cooperate()` in a tight loop, and detection latency (time from the
//! threshold to the report) over 50 blocking episodes.
//!
//! `cargo bench --bench monitor` (`-- --quick` for a short run).

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use greenhub::monitor::{self, BlockReport, Config};
use greenhub::{Greenlet, cooperate, getcurrent, spawn};

const ROUNDS: usize = 7;

/// ns per round trip of a raw greenlet ping-pong, plus ns per spawn+join, on a new thread
/// (so its probe follows the monitor setting in force when it starts).
fn workload_on_new_thread(trips: u64, spawns: u64) -> (f64, f64) {
    std::thread::spawn(move || {
        let main = getcurrent();
        let g = Greenlet::new(move |_| -> Result<(), greenhub::Error> {
            loop {
                main.switch(())?;
            }
        });
        let t = Instant::now();
        for _ in 0..trips {
            black_box(g.switch(()).unwrap());
        }
        let pingpong = t.elapsed().as_secs_f64() * 1e9 / trips as f64;
        let t = Instant::now();
        let hs: Vec<_> = (0..spawns).map(|i| spawn(move || black_box(i))).collect();
        for h in hs {
            h.join().unwrap();
        }
        let spawn_join = t.elapsed().as_secs_f64() * 1e9 / spawns as f64;
        (pingpong, spawn_join)
    })
    .join()
    .unwrap()
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

fn overhead(trips: u64, spawns: u64) -> [(f64, f64); 2] {
    let mut best = [(f64::INFINITY, f64::INFINITY); 2];
    for _ in 0..ROUNDS {
        for (i, config) in [monitor_off(), monitor_on()].into_iter().enumerate() {
            monitor::configure(config);
            let (p, s) = workload_on_new_thread(trips, spawns);
            best[i] = (best[i].0.min(p), best[i].1.min(s));
        }
    }
    best
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

/// Latency from the moment a greenlet crosses the threshold to the report, in ms.
fn detection_latency(episodes: usize, threshold: Duration) -> (f64, f64) {
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
    lat.sort_by(f64::total_cmp);
    assert_eq!(lat.len(), episodes, "every episode was reported: {lat:?}");
    (lat[lat.len() / 2], lat[lat.len() - 1])
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { 1 } else { 10 };
    let [off, on] = overhead(200_000 * scale, 5_000 * scale);
    let pp = (on.0 / off.0 - 1.0) * 100.0;
    let sj = (on.1 / off.1 - 1.0) * 100.0;
    let (empty, with) = cooperate_cost(10_000_000 * scale);
    let per_call = (with - empty).max(0.0);
    let threshold = Duration::from_millis(50);
    let (p50, max) = detection_latency(if quick { 10 } else { 50 }, threshold);

    println!("| figure | monitor off | monitor on | overhead |");
    println!("|---|---:|---:|---:|");
    println!(
        "| greenlet ping-pong round trip | {:.2} ns | {:.2} ns | {pp:+.1}% |",
        off.0, on.0
    );
    println!(
        "| spawn + join | {:.0} ns | {:.0} ns | {sj:+.1}% |",
        off.1, on.1
    );
    println!(
        "cooperate(): {per_call:.2} ns per call ({empty:.2} ns loop body alone, {with:.2} ns with it)"
    );
    println!(
        "detection latency after a {} ms threshold: p50 {p50:.2} ms, max {max:.2} ms",
        threshold.as_millis()
    );
    println!("BENCH monitor_overhead_pingpong {pp:.1} %");
    println!("BENCH monitor_overhead_spawn_join {sj:.1} %");
    println!("BENCH monitor_cooperate_cost {per_call:.2} ns");
    println!("BENCH monitor_detection_latency_p50 {p50:.2} ms");
    println!("BENCH monitor_detection_latency_max {max:.2} ms");
}
