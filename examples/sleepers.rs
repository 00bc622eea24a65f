//! 10,000 greenlets that each sleep a random time up to 1 s: the whole run takes about the
//! longest sleep, not the sum (which would be ~5,000 s), because they sleep concurrently.
//!
//! `cargo run --release --example sleepers -- [N]`

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use greenhub::{sleep, spawn};

/// A small xorshift generator: reproducible random sleeps without a dependency.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("N"))
        .unwrap_or(10_000);
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
    let done = Rc::new(Cell::new(0_usize));
    let t = Instant::now();
    let mut longest = Duration::ZERO;
    let mut total = Duration::ZERO;
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let d = Duration::from_micros(xorshift(&mut seed) % 1_000_000);
            longest = longest.max(d);
            total += d;
            let done = done.clone();
            spawn(move || {
                sleep(d);
                done.set(done.get() + 1);
            })
        })
        .collect();
    println!(
        "spawned {n} sleepers in {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    while done.get() < n {
        sleep(Duration::from_millis(200));
        println!(
            "  {:>6} / {n} awake after {:.1} s",
            done.get(),
            t.elapsed().as_secs_f64()
        );
    }
    for h in handles {
        h.join().expect("sleeper");
    }
    println!(
        "all {n} done in {:.2} s; longest sleep {:.2} s; the sum of all sleeps is {:.0} s",
        t.elapsed().as_secs_f64(),
        longest.as_secs_f64(),
        total.as_secs_f64()
    );
}
