//! The classic CPU-bound Monte-Carlo pi with greenlets, and what the monitor says about it.
//!
//! ```python
//! def test(tries):
//!     return sum(hypot(random(), random()) < 1 for _ in range(tries))
//! def calcPi(nbFutures, tries):
//!     jobs = [gevent.spawn(test, t) for t in [tries] * nbFutures]
//!     gevent.joinall(jobs, timeout=2)
//!     return 4. * sum([job.value for job in jobs]) / float(nbFutures * tries)
//! ```
//!
//! Four CPU-bound greenlets and a heartbeat greenlet that wants to print every 100 ms.
//! By default the workers never yield: the heartbeat stalls, and the monitor reports each
//! hog while it runs, with its stack (`monte_carlo` in it). With `--cooperate` the loops
//! call `greenhub::cooperate()`, which yields once per 10 ms time slice: the heartbeat
//! keeps its rhythm and the monitor stays quiet.
//!
//! `cargo run --release --example pi_monte_carlo [-- --cooperate]`

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use greenhub::{cooperate, hub, joinall, sleep};

const WORKERS: u64 = 4;
const TRIES: u64 = 40_000_000;

/// Counts random points of the unit square inside the quarter circle.
#[inline(never)]
fn monte_carlo(tries: u64, seed: u64, cooperative: bool) -> u64 {
    let mut state = seed | 1;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut inside = 0;
    for i in 0..tries {
        let (x, y) = (next(), next());
        if x * x + y * y < 1.0 {
            inside += 1;
        }
        if cooperative && i % 1024 == 0 {
            cooperate().expect("no timeout is set");
        }
    }
    inside
}

fn main() {
    let cooperative = std::env::args().any(|a| a == "--cooperate");
    println!(
        "{WORKERS} greenlets x {TRIES} tries, {}",
        if cooperative {
            "calling cooperate()"
        } else {
            "never yielding"
        }
    );
    let t = Instant::now();
    let done = Rc::new(Cell::new(false));
    let beat_done = done.clone();
    let heartbeat = hub::SpawnBuilder::new().name("heartbeat").spawn(move || {
        let mut last = Instant::now();
        let mut worst = Duration::ZERO;
        while !beat_done.get() {
            sleep(Duration::from_millis(100));
            let gap = last.elapsed();
            worst = worst.max(gap);
            println!("heartbeat: {:>4} ms since the last one", gap.as_millis());
            last = Instant::now();
        }
        worst
    });
    let jobs: Vec<_> = (0..WORKERS)
        .map(|i| {
            hub::SpawnBuilder::new()
                .name(format!("worker-{i}"))
                .spawn(move || monte_carlo(TRIES, 0x9E37_79B9_7F4A_7C15 ^ (i + 1), cooperative))
        })
        .collect();
    joinall(&jobs, None);
    done.set(true);
    let inside: u64 = jobs.into_iter().map(|j| j.join().expect("worker")).sum();
    let pi = 4.0 * inside as f64 / (WORKERS * TRIES) as f64;
    let worst = heartbeat.join().expect("heartbeat");
    println!("pi ~= {pi:.6}");
    println!("time spent {:.2} s", t.elapsed().as_secs_f64());
    println!(
        "longest heartbeat gap {} ms (wanted 100 ms)",
        worst.as_millis()
    );
}
