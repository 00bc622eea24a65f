//! A million live greenlets in one process, and a million sleepers against tokio.
//!
//! `cargo run --release --example million -- [N]` creates N greenlets (default
//! 1,000,000), switches into each once so that each is suspended on its own stack, then
//! switches into each again so it finishes. Prints the time per greenlet for each phase
//! and the resident memory per suspended greenlet (target: <= 8 KiB).
//!
//! `cargo run --release --example million -- --sleepers [N] [ROUNDS]` spawns N tasks
//! (default 1,000,000) that each sleep a random 0-1 s, on greenhub (16 KiB stacks) and on
//! tokio's `current_thread` runtime, each run in a fresh process of its own (this program
//! again), the two peers alternating for ROUNDS rounds (default 3). Prints the medians of
//! the total time, the time to spawn them all and until all have started, the RSS per
//! sleeper once all are asleep, the page faults per sleeper, and how late the timers woke
//! them, with `BENCH` lines.
//!
//! Stacks are reserved, not committed: each suspended greenlet costs the stack pages it
//! has touched (one here) plus its bookkeeping, whatever its stack size.

use std::cell::{Cell, RefCell};
use std::process::Command;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use greenhub::{Greenlet, getcurrent};

#[path = "support/stats.rs"]
mod stats;
use stats::median;

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
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: usize| -> usize {
        args.get(i)
            .map_or(default, |a| a.parse().expect("a number"))
    };
    match args.first().map(String::as_str) {
        Some("--sleepers-child") => {
            let peer = args.get(1).expect("a peer").clone();
            sleepers_child(&peer, number(2, 1_000_000));
        }
        Some("--sleepers") => sleepers(number(1, 1_000_000), number(2, 3)),
        _ => suspended(number(0, 1_000_000)),
    }
}

/// N greenlets suspended at once, with plain switches (no hub).
fn suspended(n: usize) {
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

    let per = |d: Duration| d.as_secs_f64() * 1e9 / n as f64;
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

// ---------------------------------------------------------------------------
// a million sleepers, greenhub against tokio
// ---------------------------------------------------------------------------

/// A small xorshift generator: the same random sleeps for both peers.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// What one sleepers run measured.
#[derive(Clone, Copy, Default)]
struct Sleepers {
    /// From the first spawn to the last join, in s.
    total_s: f64,
    /// Spawning them all (before any runs), in s.
    spawn_s: f64,
    /// From the first spawn until the last sleeper has started (gone to sleep), in s.
    started_s: f64,
    /// RSS added per sleeper once all are asleep, in KiB.
    rss_per_kib: f64,
    /// Minor page faults per sleeper over the whole run.
    faults: f64,
    /// Timer lateness (wake time - deadline) p50 / p99 / max, in ms.
    late_ms: [f64; 3],
}

/// Minor page faults of this process so far (`/proc/self/stat`, field 10).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(7)?.parse().ok())
        .unwrap_or(0)
}

fn percentiles_ms(mut late: Vec<Duration>) -> [f64; 3] {
    late.sort();
    let at = |q: f64| late[((late.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    [at(0.5), at(0.99), at(1.0)]
}

/// The child process of `--sleepers-child PEER N`: one run, printed as a `SLEEPERS` line.
fn sleepers_child(peer: &str, n: usize) {
    let r = match peer {
        "greenhub" => greenhub_sleepers(n),
        "tokio" => tokio_sleepers(n),
        other => panic!("unknown peer {other}"),
    };
    println!(
        "SLEEPERS total={} spawn={} started={} rss={} faults={} p50={} p99={} max={}",
        r.total_s,
        r.spawn_s,
        r.started_s,
        r.rss_per_kib,
        r.faults,
        r.late_ms[0],
        r.late_ms[1],
        r.late_ms[2]
    );
}

fn greenhub_sleepers(n: usize) -> Sleepers {
    // The monitor stays on (its default), but spawning a million greenlets keeps the main
    // greenlet busy for longer than its threshold: no report on stderr for that.
    greenhub::monitor::configure(greenhub::monitor::Config {
        stderr: false,
        ..greenhub::monitor::Config::default()
    });
    greenhub::greenlet::set_default_stack_size(16 * 1024);
    greenhub::spawn(|| ()).join().expect("warm-up"); // the hub exists before the clock starts
    let late = Rc::new(RefCell::new(Vec::with_capacity(n)));
    let started = Rc::new(Cell::new((0, None)));
    let mut seed = 0x2545_F491_4F6C_DD1D_u64;
    let (before, faults) = (rss_kib(), minor_faults());
    let t = Instant::now();
    let hs: Vec<_> = (0..n)
        .map(|_| {
            let d = Duration::from_micros(xorshift(&mut seed) % 1_000_000);
            let (late, started) = (late.clone(), started.clone());
            greenhub::spawn(move || {
                let (count, at) = started.get();
                let last = (count + 1 == n).then(Instant::now);
                started.set((count + 1, at.or(last)));
                let deadline = Instant::now() + d;
                greenhub::sleep(d);
                late.borrow_mut()
                    .push(Instant::now().saturating_duration_since(deadline));
            })
        })
        .collect();
    let spawn_s = t.elapsed().as_secs_f64();
    greenhub::sleep(Duration::from_millis(1)); // every sleeper has started and parked
    let peak = rss_kib();
    for h in hs {
        h.join().expect("a sleeper");
    }
    let total_s = t.elapsed().as_secs_f64();
    let faults = minor_faults() - faults;
    let late = late.take();
    let started_s = started
        .get()
        .1
        .map_or(f64::NAN, |at| (at - t).as_secs_f64());
    Sleepers {
        total_s,
        spawn_s,
        started_s,
        rss_per_kib: peak.saturating_sub(before) as f64 / n as f64,
        faults: faults as f64 / n as f64,
        late_ms: percentiles_ms(late),
    }
}

fn tokio_sleepers(n: usize) -> Sleepers {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        tokio::spawn(async {}).await.expect("warm-up");
        let mut seed = 0x2545_F491_4F6C_DD1D_u64;
        let started = Arc::new((AtomicUsize::new(0), OnceLock::new()));
        let (before, faults) = (rss_kib(), minor_faults());
        let t = Instant::now();
        let hs: Vec<_> = (0..n)
            .map(|_| {
                let d = Duration::from_micros(xorshift(&mut seed) % 1_000_000);
                let started = started.clone();
                tokio::spawn(async move {
                    if started.0.fetch_add(1, Ordering::Relaxed) + 1 == n {
                        let _ = started.1.set(Instant::now());
                    }
                    let deadline = tokio::time::Instant::now() + d;
                    tokio::time::sleep(d).await;
                    tokio::time::Instant::now().saturating_duration_since(deadline)
                })
            })
            .collect();
        let spawn_s = t.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_millis(1)).await;
        let peak = rss_kib();
        let mut late = Vec::with_capacity(n);
        for h in hs {
            late.push(h.await.expect("a sleeper"));
        }
        let total_s = t.elapsed().as_secs_f64();
        let started_s = started
            .1
            .get()
            .map_or(f64::NAN, |at| (*at - t).as_secs_f64());
        Sleepers {
            total_s,
            spawn_s,
            started_s,
            rss_per_kib: peak.saturating_sub(before) as f64 / n as f64,
            faults: (minor_faults() - faults) as f64 / n as f64,
            late_ms: percentiles_ms(late),
        }
    })
}

/// Runs `--sleepers-child PEER N` in a process of its own.
fn sleepers_run(peer: &str, n: usize) -> Option<Sleepers> {
    let exe = std::env::current_exe().ok()?;
    let out = Command::new(exe)
        .args(["--sleepers-child", peer, &n.to_string()])
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "million: the {peer} run failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with("SLEEPERS "))?;
    let field = |k: &str| -> Option<f64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))?
            .parse()
            .ok()
    };
    Some(Sleepers {
        total_s: field("total")?,
        spawn_s: field("spawn")?,
        started_s: field("started")?,
        rss_per_kib: field("rss")?,
        faults: field("faults")?,
        late_ms: [field("p50")?, field("p99")?, field("max")?],
    })
}

/// A figure of [`Sleepers`]: its name, how to read it, its unit.
type Figure = (&'static str, fn(&Sleepers) -> f64, &'static str);

/// `--sleepers N ROUNDS`: both peers, alternating which goes first, medians printed.
fn sleepers(n: usize, rounds: usize) {
    const PEERS: [&str; 2] = ["greenhub", "tokio"];
    let mut runs: [Vec<Sleepers>; 2] = [vec![], vec![]];
    for round in 0..rounds {
        for k in 0..PEERS.len() {
            let p = (k + round) % PEERS.len();
            if let Some(r) = sleepers_run(PEERS[p], n) {
                eprintln!(
                    "million: round {} {}: {:.2} s total, {:.2} KiB per sleeper",
                    round + 1,
                    PEERS[p],
                    r.total_s,
                    r.rss_per_kib
                );
                runs[p].push(r);
            }
        }
    }
    let med = |p: usize, f: fn(&Sleepers) -> f64| median(runs[p].iter().map(f).collect());
    let figures: [Figure; 8] = [
        ("total", |r| r.total_s, "s"),
        ("spawn", |r| r.spawn_s, "s"),
        ("all_started", |r| r.started_s, "s"),
        ("rss_per_sleeper", |r| r.rss_per_kib, "KiB"),
        ("faults_per_sleeper", |r| r.faults, "faults"),
        ("late_p50", |r| r.late_ms[0], "ms"),
        ("late_p99", |r| r.late_ms[1], "ms"),
        ("late_max", |r| r.late_ms[2], "ms"),
    ];
    println!("{n} sleepers of 0-1 s, medians of {rounds} rounds, each run in a fresh process");
    println!();
    println!("| figure | greenhub (16 KiB stacks) | tokio current_thread | greenhub / tokio |");
    println!("|---|---:|---:|---:|");
    for (name, f, unit) in &figures {
        let (g, t) = (med(0, *f), med(1, *f));
        println!("| {name} | {g:.3} {unit} | {t:.3} {unit} | {:.2}x |", g / t);
    }
    println!();
    for (name, f, unit) in &figures {
        for (p, peer) in PEERS.iter().enumerate() {
            println!(
                "BENCH million_sleepers_{name}_{peer} {:.3} {unit}",
                med(p, *f)
            );
        }
    }
    let ratio = med(0, |r| r.total_s) / med(1, |r| r.total_s);
    println!("BENCH million_sleepers_total_ratio_tokio {ratio:.2} x");
}
