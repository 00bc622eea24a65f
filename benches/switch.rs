//! Switch costs: greenlet round trip against a raw corosensei resume+suspend pair that
//! passes `()` as `switch(())` does (and one that passes a `u64`, the older peer), and
//! create + first switch + finish with a pooled and with a fresh stack.
//!
//! Run: `cargo bench --bench switch`. Prints `BENCH <name> <value> <unit>` lines.
//! Each figure is the best of several rounds (the machines are shared and noisy); the
//! ratios compare figures taken in the same run, the round trip and its peers in
//! interleaved rounds.

use std::hint::black_box;
use std::time::{Duration, Instant};

use corosensei::{Coroutine, CoroutineResult};
use greenhub::{Greenlet, getcurrent};

const ROUNDS: usize = 7;

/// Best time per iteration over `ROUNDS` rounds of `iters` iterations, in ns.
fn best_ns(iters: u64, mut round: impl FnMut(u64) -> Duration) -> f64 {
    (0..ROUNDS)
        .map(|_| round(iters).as_secs_f64() * 1e9 / iters as f64)
        .fold(f64::INFINITY, f64::min)
}

/// The peer of `switch(())`: a coroutine that suspends with `()` whenever it is resumed.
fn unit_pair() -> Coroutine<(), (), ()> {
    Coroutine::new(|y, ()| {
        loop {
            y.suspend(());
        }
    })
}

/// `n` resumes of `co`, each answered by a suspend, passing `()` both ways.
#[inline(never)] // one frame per figure, for profilers
fn raw_corosensei_unit_pair(co: &mut Coroutine<(), (), ()>, n: u64) -> Duration {
    let t = Instant::now();
    for _ in 0..n {
        black_box(co.resume(()));
    }
    t.elapsed()
}

/// A coroutine that suspends with the `u64` it is resumed with (the older peer:
/// corosensei moves the values through registers, so it costs a little more).
fn u64_pair() -> Coroutine<u64, u64, ()> {
    Coroutine::new(|y, mut v| {
        loop {
            v = y.suspend(black_box(v));
            if v == u64::MAX {
                return;
            }
        }
    })
}

/// `n` resumes of `co` with a `u64`, each answered by a suspend with one.
#[inline(never)] // one frame per figure, for profilers
fn raw_corosensei_u64_pair(co: &mut Coroutine<u64, u64, ()>, n: u64) -> Duration {
    let t = Instant::now();
    for i in 0..n {
        match co.resume(black_box(i)) {
            CoroutineResult::Yield(v) => {
                black_box(v);
            }
            CoroutineResult::Return(()) => unreachable!(),
        }
    }
    t.elapsed()
}

/// A greenlet that switches back to the greenlet that made it whenever it runs.
fn echo_greenlet() -> Greenlet {
    let main = getcurrent();
    Greenlet::new(move |_| -> Result<(), greenhub::Error> {
        loop {
            main.switch(())?;
        }
    })
}

/// `n` round trips main -> `g` -> main, `switch(())` both ways.
#[inline(never)] // one frame per figure, for profilers
fn greenlet_round_trip(g: &Greenlet, n: u64) -> Duration {
    let t = Instant::now();
    for _ in 0..n {
        black_box(g.switch(()).unwrap());
    }
    t.elapsed()
}

/// The round trip and its peers, measured in interleaved rounds (the order rotating), so
/// that a disturbance of the shared machine hits them alike: ns per round, for each of
/// the `()` pair, the `u64` pair and the greenlet round trip.
fn round_trips(iters: u64) -> [Vec<f64>; 3] {
    let (mut unit, mut wide, g) = (unit_pair(), u64_pair(), echo_greenlet());
    let mut ns: [Vec<f64>; 3] = [vec![], vec![], vec![]];
    for round in 0..ROUNDS {
        for k in 0..3 {
            let which = (k + round) % 3;
            let d = match which {
                0 => raw_corosensei_unit_pair(&mut unit, iters),
                1 => raw_corosensei_u64_pair(&mut wide, iters),
                _ => greenlet_round_trip(&g, iters),
            };
            ns[which].push(d.as_secs_f64() * 1e9 / iters as f64);
        }
    }
    let _ = wide.resume(u64::MAX);
    drop(unit); // unwinds the suspended coroutine
    ns
}

fn best(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[inline(never)] // one frame per figure, for profilers
fn greenlet_create_run_finish_pooled(iters: u64) -> f64 {
    best_ns(iters, |n| {
        let t = Instant::now();
        for _ in 0..n {
            let g = Greenlet::new(|_| Ok(()));
            black_box(g.switch(()).unwrap());
        }
        t.elapsed()
    })
}

/// Every greenlet gets a never-touched stack: `n` are created (and hold their stacks) before
/// any runs. A stack size used nowhere else keeps the pool from handing back warm stacks.
#[inline(never)] // one frame per figure, for profilers
fn greenlet_create_run_finish_fresh(iters: u64) -> f64 {
    let mut size = 72 * 1024;
    best_ns(iters, |n| {
        size += 4096; // a new size class each round: fresh slots every time
        let t = Instant::now();
        let gs: Vec<Greenlet> = (0..n)
            .map(|_| Greenlet::builder().stack_size(size).build(|_| Ok(())))
            .collect();
        for g in &gs {
            black_box(g.switch(()).unwrap());
        }
        drop(gs);
        t.elapsed()
    })
}

/// The peer for a fresh stack: corosensei's own default stack (one mmap + mprotect + munmap
/// per coroutine).
#[inline(never)] // one frame per figure, for profilers
fn corosensei_create_run_finish_default_stack(iters: u64) -> f64 {
    best_ns(iters, |n| {
        let t = Instant::now();
        for _ in 0..n {
            let mut co: Coroutine<(), (), ()> = Coroutine::new(|_, ()| {});
            black_box(co.resume(()));
        }
        t.elapsed()
    })
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { 1 } else { 10 };

    let [raw_ns, raw_u64_ns, rt_ns] = round_trips(200_000 * scale);
    let (raw, raw_u64, rt) = (best(&raw_ns), best(&raw_u64_ns), best(&rt_ns));
    // The ratio within each round, then its median: the steadiest of the figures.
    let ratio_median = median(rt_ns.iter().zip(&raw_ns).map(|(g, r)| g / r).collect());
    let pooled = greenlet_create_run_finish_pooled(50_000 * scale);
    let fresh = greenlet_create_run_finish_fresh(2_000 * scale);
    let coro_fresh = corosensei_create_run_finish_default_stack(2_000 * scale);

    println!("| figure | ns | note |");
    println!("|---|---:|---|");
    println!("| raw corosensei resume+suspend, `()` | {raw:.2} | peer |");
    println!("| raw corosensei resume+suspend, `u64` | {raw_u64:.2} | older peer |");
    println!(
        "| greenlet round trip A->B->A, `switch(())` | {rt:.2} | {:.2}x the `()` pair (median of the rounds' ratios {ratio_median:.2}x), {:.2}x the `u64` pair |",
        rt / raw,
        rt / raw_u64
    );
    println!("| create + switch + finish, pooled stack | {pooled:.1} | target <= 150 ns |");
    println!("| create + switch + finish, fresh stack | {fresh:.1} | |");
    println!("| corosensei Coroutine::new + resume (own mmap stack) | {coro_fresh:.1} | peer |");

    println!("BENCH switch_raw_corosensei_pair {raw:.2} ns");
    println!("BENCH switch_raw_corosensei_pair_u64 {raw_u64:.2} ns");
    println!("BENCH switch_greenlet_round_trip {rt:.2} ns");
    println!("BENCH switch_round_trip_ratio {:.2} x", rt / raw);
    println!("BENCH switch_round_trip_ratio_median {ratio_median:.2} x");
    println!("BENCH switch_round_trip_ratio_u64 {:.2} x", rt / raw_u64);
    println!("BENCH greenlet_create_run_finish_pooled {pooled:.1} ns");
    println!("BENCH greenlet_create_run_finish_fresh {fresh:.1} ns");
    println!("BENCH corosensei_create_run_finish_mmap {coro_fresh:.1} ns");
}
