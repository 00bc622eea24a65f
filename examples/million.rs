//! One million live greenlets in one process.
//!
//! Creates N greenlets (default 1,000,000; `cargo run --release --example million -- N`),
//! switches into each once so that each is suspended on its own stack, then switches into
//! each again so it finishes. Prints the time per greenlet for each phase and the resident
//! memory per suspended greenlet (target: <= 8 KiB).
//!
//! Stacks are reserved, not committed: each suspended greenlet costs the stack pages it has
//! touched (one here) plus its bookkeeping, whatever its stack size.

use std::time::Instant;

use greenhub::{Greenlet, getcurrent};

/// Resident set size of this process in KiB, from /proc/self/status.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("N must be a number"))
        .unwrap_or(1_000_000);
    let main = getcurrent();
    let before = rss_kib();

    let t = Instant::now();
    let mut greenlets = Vec::with_capacity(n);
    for i in 0..n {
        let m = main.clone();
        greenlets.push(Greenlet::new(move |_| {
            let back = m.switch(i)?; // suspended here, on its own stack
            Ok(back.downcast::<usize>().expect("a usize") + i)
        }));
    }
    let created = t.elapsed();

    let t = Instant::now();
    for (i, g) in greenlets.iter().enumerate() {
        let v = g.switch(()).expect("first switch");
        assert_eq!(v.downcast::<usize>().expect("a usize"), i);
    }
    let started = t.elapsed();
    let suspended_rss = rss_kib();

    let t = Instant::now();
    for (i, g) in greenlets.iter().enumerate() {
        let v = g.switch(1_usize).expect("second switch");
        assert_eq!(v.downcast::<usize>().expect("a usize"), i + 1);
        assert!(g.is_dead());
    }
    let finished = t.elapsed();
    drop(greenlets);

    let per = |d: std::time::Duration| d.as_secs_f64() * 1e9 / n as f64;
    let rss_per = (suspended_rss.saturating_sub(before)) as f64 / n as f64;
    println!("greenlets:              {n}");
    println!("create:                 {:.0} ns each", per(created));
    println!("first switch (suspend): {:.0} ns each", per(started));
    println!("switch to finish:       {:.0} ns each", per(finished));
    println!(
        "RSS with all suspended: {:.1} MiB total, {rss_per:.2} KiB per greenlet (target <= 8 KiB)",
        suspended_rss as f64 / 1024.0
    );
    println!(
        "stack guard mode:       {:?}",
        greenhub::greenlet::guard_mode()
    );
    println!("BENCH million_rss_per_greenlet {rss_per:.2} KiB");
    println!(
        "BENCH million_create_start_finish {:.0} ns",
        per(created + started + finished)
    );
}
