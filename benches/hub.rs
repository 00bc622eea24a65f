//! Hub costs (issue 4), each against tokio's `current_thread` runtime in the same run:
//! spawn + run + join of an empty task, a `sleep(0)` / `yield_now` ping-pong, and a million
//! sleepers (total time, RSS per sleeper, timer lateness).
//!
//! `cargo bench --bench hub` (add `-- --quick` for a short run). Prints a table and
//! `BENCH <name> <value> <unit>` lines.

use std::cell::RefCell;
use std::hint::black_box;
use std::rc::Rc;
use std::time::{Duration, Instant};

const ROUNDS: usize = 5;

fn best_ns(iters: u64, mut round: impl FnMut(u64) -> Duration) -> f64 {
    (0..ROUNDS)
        .map(|_| round(iters).as_secs_f64() * 1e9 / iters as f64)
        .fold(f64::INFINITY, f64::min)
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

fn greenhub_spawn_join(n: u64) -> f64 {
    best_ns(n, |n| {
        let t = Instant::now();
        let hs: Vec<_> = (0..n)
            .map(|i| greenhub::spawn(move || black_box(i)))
            .collect();
        for h in hs {
            black_box(h.join().unwrap());
        }
        t.elapsed()
    })
}

fn tokio_spawn_join(n: u64) -> f64 {
    let rt = tokio_rt();
    best_ns(n, |n| {
        rt.block_on(async {
            let t = Instant::now();
            let hs: Vec<_> = (0..n)
                .map(|i| tokio::spawn(async move { black_box(i) }))
                .collect();
            for h in hs {
                black_box(h.await.unwrap());
            }
            t.elapsed()
        })
    })
}

fn greenhub_yield_pingpong(n: u64) -> f64 {
    best_ns(n, |n| {
        let t = Instant::now();
        let hs: Vec<_> = (0..2)
            .map(|_| {
                greenhub::spawn(move || {
                    for _ in 0..n / 2 {
                        greenhub::sleep(Duration::ZERO);
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        t.elapsed()
    })
}

fn tokio_yield_pingpong(n: u64) -> f64 {
    let rt = tokio_rt();
    best_ns(n, |n| {
        rt.block_on(async {
            let t = Instant::now();
            let hs: Vec<_> = (0..2)
                .map(|_| {
                    tokio::spawn(async move {
                        for _ in 0..n / 2 {
                            tokio::task::yield_now().await;
                        }
                    })
                })
                .collect();
            for h in hs {
                h.await.unwrap();
            }
            t.elapsed()
        })
    })
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

struct SleepersResult {
    total_s: f64,
    rss_per_kib: f64,
    late_us: [f64; 3], // p50, p99, max
}

fn percentiles(mut late: Vec<Duration>) -> [f64; 3] {
    late.sort();
    let at = |q: f64| late[((late.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    [at(0.5), at(0.99), at(1.0)]
}

/// `n` greenlets each sleeping a random 0-1 s; lateness = wake time - (sleep start + d).
fn greenhub_sleepers(n: usize) -> SleepersResult {
    greenhub::greenlet::set_default_stack_size(16 * 1024);
    let before = rss_kib();
    let late = Rc::new(RefCell::new(Vec::with_capacity(n)));
    let mut seed = 0x2545_F491_4F6C_DD1D_u64;
    let t = Instant::now();
    let hs: Vec<_> = (0..n)
        .map(|_| {
            let d = Duration::from_micros(xorshift(&mut seed) % 1_000_000);
            let late = late.clone();
            greenhub::spawn(move || {
                let deadline = Instant::now() + d;
                greenhub::sleep(d);
                late.borrow_mut()
                    .push(Instant::now().saturating_duration_since(deadline));
            })
        })
        .collect();
    greenhub::sleep(Duration::from_millis(1)); // every sleeper has started and parked
    let peak = rss_kib();
    for h in hs {
        h.join().unwrap();
    }
    let total_s = t.elapsed().as_secs_f64();
    greenhub::greenlet::set_default_stack_size(greenhub::greenlet::DEFAULT_STACK_SIZE);
    let late = Rc::try_unwrap(late).ok().unwrap().into_inner();
    SleepersResult {
        total_s,
        rss_per_kib: peak.saturating_sub(before) as f64 / n as f64,
        late_us: percentiles(late),
    }
}

fn tokio_sleepers(n: usize) -> SleepersResult {
    let rt = tokio_rt();
    let before = rss_kib();
    rt.block_on(async {
        let mut seed = 0x2545_F491_4F6C_DD1D_u64;
        let t = tokio::time::Instant::now();
        let hs: Vec<_> = (0..n)
            .map(|_| {
                let d = Duration::from_micros(xorshift(&mut seed) % 1_000_000);
                tokio::spawn(async move {
                    let deadline = tokio::time::Instant::now() + d;
                    tokio::time::sleep(d).await;
                    tokio::time::Instant::now().saturating_duration_since(deadline)
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(1)).await;
        let peak = rss_kib();
        let mut late = Vec::with_capacity(n);
        for h in hs {
            late.push(h.await.unwrap());
        }
        SleepersResult {
            total_s: t.elapsed().as_secs_f64(),
            rss_per_kib: peak.saturating_sub(before) as f64 / n as f64,
            late_us: percentiles(late),
        }
    })
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { 1 } else { 10 };

    let g_spawn = greenhub_spawn_join(10_000 * scale);
    let t_spawn = tokio_spawn_join(10_000 * scale);
    let g_yield = greenhub_yield_pingpong(100_000 * scale);
    let t_yield = tokio_yield_pingpong(100_000 * scale);
    let sleepers = if quick { 100_000 } else { 1_000_000 };
    let g_sleep = greenhub_sleepers(sleepers);
    let t_sleep = tokio_sleepers(sleepers);

    println!("| figure | greenhub | tokio current_thread | ratio |");
    println!("|---|---:|---:|---:|");
    println!(
        "| spawn + run + join, per task | {g_spawn:.0} ns | {t_spawn:.0} ns | {:.2}x |",
        g_spawn / t_spawn
    );
    println!(
        "| sleep(0) / yield_now ping-pong, per yield | {g_yield:.0} ns | {t_yield:.0} ns | {:.2}x |",
        g_yield / t_yield
    );
    println!(
        "| {sleepers} sleepers 0-1 s: total | {:.2} s | {:.2} s | |",
        g_sleep.total_s, t_sleep.total_s
    );
    println!(
        "| {sleepers} sleepers: RSS per sleeper | {:.2} KiB | {:.2} KiB | |",
        g_sleep.rss_per_kib, t_sleep.rss_per_kib
    );
    println!(
        "| timer lateness p50 / p99 / max | {:.0} / {:.0} / {:.0} us | {:.0} / {:.0} / {:.0} us | |",
        g_sleep.late_us[0],
        g_sleep.late_us[1],
        g_sleep.late_us[2],
        t_sleep.late_us[0],
        t_sleep.late_us[1],
        t_sleep.late_us[2]
    );

    println!("BENCH hub_spawn_join_greenhub {g_spawn:.0} ns");
    println!("BENCH hub_spawn_join_tokio {t_spawn:.0} ns");
    println!("BENCH hub_spawn_join_ratio {:.2} x", g_spawn / t_spawn);
    println!("BENCH hub_yield_greenhub {g_yield:.0} ns");
    println!("BENCH hub_yield_tokio {t_yield:.0} ns");
    println!("BENCH hub_yield_ratio {:.2} x", g_yield / t_yield);
    println!("BENCH hub_sleepers_total_greenhub {:.2} s", g_sleep.total_s);
    println!("BENCH hub_sleepers_total_tokio {:.2} s", t_sleep.total_s);
    println!(
        "BENCH hub_sleepers_rss_per_greenlet {:.2} KiB",
        g_sleep.rss_per_kib
    );
    println!(
        "BENCH hub_sleepers_rss_per_tokio_task {:.2} KiB",
        t_sleep.rss_per_kib
    );
    println!("BENCH hub_timer_late_p50 {:.0} us", g_sleep.late_us[0]);
    println!("BENCH hub_timer_late_p99 {:.0} us", g_sleep.late_us[1]);
    println!("BENCH hub_timer_late_max {:.0} us", g_sleep.late_us[2]);
}
