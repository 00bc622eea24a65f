//! Hub costs against tokio's `current_thread` runtime and may with one worker
//! (`may::config().set_workers(1)`), in the same run:
//!
//! - spawn + run + join of a task that returns its `u64` argument: 10,000 at a time on a
//!   warm runtime, 100,000 at a time, and the first burst of 10,000 in a fresh process
//!   whose runtime has been idle for 2 s (a process of its own per run, this binary
//!   again with `--first-burst KIND`; with the minor page faults it takes, per task);
//! - a yield ping-pong: two tasks that yield to each other (`greenhub::sleep(ZERO)`,
//!   `tokio::task::yield_now`, `may::coroutine::yield_now`), per yield;
//! - a million sleepers of 0-1 s (greenhub and tokio): total time, RSS per sleeper, timer
//!   lateness;
//! - an idle process: the wake-ups per second (context switches of all its threads) and
//!   the CPU of a process that has started a runtime and then waits 2 s, each in a
//!   process of its own (this binary again, `--idle KIND`): greenhub with the monitor on
//!   (its default) and off (`max_blocking_time` and `time_slice` both `None`), tokio, may.
//!
//! greenhub and tokio run on the bench's main thread (greenhub's main greenlet, tokio's
//! `block_on`); may runs on its worker thread, inside a coroutine that the main thread
//! joins, so that its spawns and yields are the local, same-thread ones. may's worker is
//! left unpinned like the others (may pins its workers to cores by default), and its
//! coroutine pool is sized like greenhub's warm stack pool (16,384, not 1,000). may is
//! measured at 100,000 only if it can hold them: it maps every coroutine stack with
//! `mmap` plus an `mprotect` guard page, two mappings each, and `vm.max_map_count`
//! (65,530 by default) caps that near 32,000 live coroutines; the bench says so.
//!
//! `cargo bench --bench hub` (add `-- --quick` for a short run). Rounds interleave the
//! peers, in an order that rotates every round; each figure is the median over the
//! rounds. Prints a table and `BENCH <name> <value> <unit>` lines.

use std::cell::RefCell;
use std::hint::black_box;
use std::process::Command;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use greenhub::monitor::{self, Config};

#[path = "../examples/support/stats.rs"]
mod stats;
use stats::{median, ns_per};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Peer {
    Greenhub,
    Tokio,
    May,
}

const PEERS: [Peer; 3] = [Peer::Greenhub, Peer::Tokio, Peer::May];

impl Peer {
    fn key(self) -> &'static str {
        match self {
            Peer::Greenhub => "greenhub",
            Peer::Tokio => "tokio",
            Peer::May => "may",
        }
    }
}

/// The peers in the order of round `round`: each one goes first in turn.
fn rotated(round: usize) -> impl Iterator<Item = Peer> {
    (0..PEERS.len()).map(move |i| PEERS[(round + i) % PEERS.len()])
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime")
}

/// One may worker, unpinned, with a pool of 16,384 ready coroutines (greenhub keeps up to
/// 16,384 free stacks warm; may's default pool of 1,000 makes every spawn past it map a
/// fresh stack and every exit unmap one, ~19 us per task at 10,000). Before anything else
/// of may's: its scheduler starts on first use with the settings it finds.
fn may_one_worker() {
    may::config().set_pool_capacity(16_384);
    may::config().set_workers(1);
    may::config().set_worker_pin(false);
}

/// Runs `f` in a may coroutine (on may's worker) and waits for it on this thread.
///
/// may's `go!` wraps its `unsafe fn spawn`: a may coroutine may move between worker
/// threads, so it must not hold a thread-local across a switch. The coroutines of this
/// bench touch no thread-locals, and with one worker they never move.
fn in_may<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    may::go!(f).join().expect("the may coroutine panicked")
}

// ---------------------------------------------------------------------------
// spawn + run + join
// ---------------------------------------------------------------------------

fn greenhub_spawn_join(n: u64) -> Duration {
    let t = Instant::now();
    let hs: Vec<_> = (0..n)
        .map(|i| greenhub::spawn(move || black_box(i)))
        .collect();
    for h in hs {
        black_box(h.join().unwrap());
    }
    t.elapsed()
}

async fn tokio_spawn_join(n: u64) -> Duration {
    let t = Instant::now();
    let hs: Vec<_> = (0..n)
        .map(|i| tokio::spawn(async move { black_box(i) }))
        .collect();
    for h in hs {
        black_box(h.await.unwrap());
    }
    t.elapsed()
}

/// Runs on a may coroutine.
fn may_spawn_join(n: u64) -> Duration {
    let t = Instant::now();
    let hs: Vec<_> = (0..n).map(|i| may::go!(move || black_box(i))).collect();
    for h in hs {
        black_box(h.join().unwrap());
    }
    t.elapsed()
}

fn spawn_join(peer: Peer, n: u64, rt: &tokio::runtime::Runtime) -> Duration {
    match peer {
        Peer::Greenhub => greenhub_spawn_join(n),
        Peer::Tokio => rt.block_on(tokio_spawn_join(n)),
        Peer::May => in_may(move || may_spawn_join(n)),
    }
}

/// Minor page faults of this process so far (`/proc/self/stat`, field 10).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3, the state.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(7)?.parse().ok())
        .unwrap_or(0)
}

/// The child process of `--first-burst KIND`: starts the runtime (runs one task on it),
/// leaves it idle for 2 s (a timer, the runtime's own way), then spawns, runs and joins
/// 10,000 tasks: the first burst a fresh server meets. Prints its ns and minor page
/// faults per task.
fn first_burst_child(kind: &str) {
    const N: u64 = 10_000;
    let idle = Duration::from_secs(2);
    let burst = |run: &mut dyn FnMut() -> Duration| {
        let before = minor_faults();
        let d = run();
        let faults = minor_faults().saturating_sub(before);
        println!(
            "BURST ns={} faults={}",
            ns_per(d, N),
            faults as f64 / N as f64
        );
    };
    match kind {
        "greenhub" => {
            greenhub::spawn(|| black_box(1)).join().unwrap();
            greenhub::sleep(idle);
            burst(&mut || greenhub_spawn_join(N));
        }
        "tokio" => tokio_rt().block_on(async {
            tokio::spawn(async { black_box(1) }).await.unwrap();
            tokio::time::sleep(idle).await;
            let before = minor_faults();
            let d = tokio_spawn_join(N).await;
            let faults = minor_faults().saturating_sub(before);
            println!(
                "BURST ns={} faults={}",
                ns_per(d, N),
                faults as f64 / N as f64
            );
        }),
        "may" => {
            may_one_worker();
            in_may(move || {
                may::go!(|| black_box(1)).join().unwrap();
                may::coroutine::sleep(idle);
                burst(&mut || may_spawn_join(N));
            });
        }
        _ => println!("ERROR unknown kind {kind}"),
    }
}

/// Runs `--first-burst KIND` in a child process: (ns per task, minor faults per task).
fn first_burst(peer: Peer) -> Option<(f64, f64)> {
    let out = run_child(&["--first-burst", peer.key()], Duration::from_secs(60));
    let (text, _) = match out {
        Ok(out) => out,
        Err(why) => {
            eprintln!(
                "hub bench: the first-burst {} process failed: {why}",
                peer.key()
            );
            return None;
        }
    };
    let line = text.lines().find(|l| l.starts_with("BURST "))?;
    let field = |k: &str| -> Option<f64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))?
            .parse()
            .ok()
    };
    Some((field("ns")?, field("faults")?))
}

// ---------------------------------------------------------------------------
// yield ping-pong
// ---------------------------------------------------------------------------

fn greenhub_yield_pingpong(n: u64) -> Duration {
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
}

async fn tokio_yield_pingpong(n: u64) -> Duration {
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
}

/// Runs on a may coroutine.
fn may_yield_pingpong(n: u64) -> Duration {
    let t = Instant::now();
    let hs: Vec<_> = (0..2)
        .map(|_| {
            may::go!(move || {
                for _ in 0..n / 2 {
                    may::coroutine::yield_now();
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    t.elapsed()
}

fn yield_pingpong(peer: Peer, n: u64, rt: &tokio::runtime::Runtime) -> Duration {
    match peer {
        Peer::Greenhub => greenhub_yield_pingpong(n),
        Peer::Tokio => rt.block_on(tokio_yield_pingpong(n)),
        Peer::May => in_may(move || may_yield_pingpong(n)),
    }
}

// ---------------------------------------------------------------------------
// a million sleepers
// ---------------------------------------------------------------------------

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

fn tokio_sleepers(rt: &tokio::runtime::Runtime, n: usize) -> SleepersResult {
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

// ---------------------------------------------------------------------------
// an idle process
// ---------------------------------------------------------------------------

/// What an idle process was measured as: wake-ups per second and % of one core.
#[derive(Clone, Copy)]
struct Idle {
    wakeups_per_s: f64,
    cpu_percent: f64,
}

/// The idle-process kinds, each measured in a process of its own.
const IDLE_KINDS: [(&str, &str); 4] = [
    ("greenhub_monitor_on", "greenhub, monitor on (default)"),
    ("greenhub_monitor_off", "greenhub, monitor off"),
    ("tokio", "tokio current_thread"),
    ("may", "may, 1 worker"),
];

/// Context switches (voluntary + involuntary) and CPU time (ns) of all this process's
/// threads so far, from `/proc/self/task/*/status` and `.../schedstat`.
fn process_switches_and_cpu() -> (u64, u64) {
    let mut switches = 0;
    let mut cpu_ns = 0;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return (0, 0);
    };
    for task in tasks.flatten() {
        let path = task.path();
        if let Ok(status) = std::fs::read_to_string(path.join("status")) {
            for line in status.lines() {
                let value = line
                    .strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"));
                if let Some(v) = value.and_then(|v| v.trim().parse::<u64>().ok()) {
                    switches += v;
                }
            }
        }
        if let Ok(schedstat) = std::fs::read_to_string(path.join("schedstat")) {
            cpu_ns += schedstat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    (switches, cpu_ns)
}

/// The child process of `--idle KIND`: starts the runtime (runs one task on it), lets it
/// settle, then waits `window` the runtime's own way and prints what the process did
/// meanwhile. The wait's own end (one switch of the waiting thread) is not counted.
fn idle_child(kind: &str) {
    let settle = Duration::from_millis(300);
    let window = Duration::from_secs(2);
    let start = || (process_switches_and_cpu(), Instant::now());
    let report = |((s0, c0), t): ((u64, u64), Instant)| {
        let secs = t.elapsed().as_secs_f64();
        let (s1, c1) = process_switches_and_cpu();
        println!(
            "IDLE switches={} cpu_ns={} secs={secs}",
            (s1 - s0).saturating_sub(1),
            c1 - c0
        );
    };
    match kind {
        "greenhub_monitor_on" | "greenhub_monitor_off" => {
            if kind == "greenhub_monitor_off" {
                monitor::configure(Config {
                    max_blocking_time: None,
                    time_slice: None,
                    ..Config::default()
                });
            }
            greenhub::spawn(|| black_box(1)).join().unwrap();
            greenhub::sleep(settle);
            let at = start();
            greenhub::sleep(window);
            report(at);
        }
        "tokio" => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(async {
                tokio::spawn(async { black_box(1) }).await.unwrap();
                tokio::time::sleep(settle).await;
                let at = start();
                tokio::time::sleep(window).await;
                report(at);
            });
        }
        "may" => {
            may_one_worker();
            in_may(|| black_box(1));
            std::thread::sleep(settle);
            // may's scheduler has threads of its own; the main thread just waits.
            let at = start();
            std::thread::sleep(window);
            report(at);
        }
        _ => println!("ERROR unknown idle kind {kind}"),
    }
}

/// Runs `--idle KIND` in a child process.
fn idle_process(kind: &str) -> Option<Idle> {
    let (text, _) = match run_child(&["--idle", kind], Duration::from_secs(30)) {
        Ok(out) => out,
        Err(why) => {
            eprintln!("hub bench: the idle {kind} process failed: {why}");
            return None;
        }
    };
    let line = text.lines().find(|l| l.starts_with("IDLE "))?;
    let field = |k: &str| -> Option<f64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))?
            .parse()
            .ok()
    };
    let secs = field("secs")?;
    Some(Idle {
        wakeups_per_s: field("switches")? / secs,
        cpu_percent: field("cpu_ns")? / (secs * 1e9) * 100.0,
    })
}

// ---------------------------------------------------------------------------

/// Runs this binary again with `args`; its stdout and stderr, or why it gave none. A child
/// still running after `timeout` is killed (may, out of stacks, panics on its worker
/// thread and leaves the joining thread waiting forever).
fn run_child(args: &[&str], timeout: Duration) -> Result<(String, String), String> {
    use std::io::Read;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let (mut out, mut err) = (String::new(), String::new());
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let why = err
        .lines()
        .find(|l| !l.trim().is_empty() && !l.starts_with("note:") && !l.starts_with("thread "))
        .unwrap_or("")
        .trim()
        .to_string();
    match status {
        Some(s) if s.success() => Ok((out, err)),
        Some(s) => Err(format!("{s}: {why}")),
        None => Err(format!("no answer after {timeout:?}, killed: {why}")),
    }
}

/// may at `n` live coroutines, in a child process (`--may-spawn-join N`), which it may
/// not survive: `Err` says why.
fn may_spawn_join_child(n: u64) -> Result<f64, String> {
    let (out, _) = run_child(
        &["--may-spawn-join", &n.to_string()],
        Duration::from_secs(60),
    )?;
    out.lines()
        .find_map(|l| l.strip_prefix("NS "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| "the child printed no figure".to_string())
}

fn fmt_opt(v: f64, unit: &str) -> String {
    if v.is_nan() {
        "—".to_string()
    } else if v >= 100.0 {
        format!("{v:.0} {unit}")
    } else {
        format!("{v:.1} {unit}")
    }
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_nan() || b.is_nan() || b == 0.0 {
        "—".to_string()
    } else {
        format!("{:.2}x", a / b)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg_after = |flag: &str| {
        let i = args.iter().position(|a| a == flag)?;
        Some(args.get(i + 1).map_or("", String::as_str))
    };
    if let Some(kind) = arg_after("--idle") {
        idle_child(kind);
        return;
    }
    if let Some(kind) = arg_after("--first-burst") {
        first_burst_child(kind);
        return;
    }
    may_one_worker();
    if let Some(n) = arg_after("--may-spawn-join") {
        let n: u64 = n.parse().unwrap_or(0);
        in_may(move || may_spawn_join(n)); // warm
        let runs: Vec<f64> = (0..3)
            .map(|_| ns_per(in_may(move || may_spawn_join(n)), n))
            .collect();
        println!("NS {}", median(runs));
        return;
    }
    // tokio and may run on the main thread, whose hub the monitor then sees as a greenlet
    // running without switching: count those reports instead of printing them.
    let reports = Arc::new(AtomicU64::new(0));
    let sink = reports.clone();
    monitor::configure(Config {
        stderr: false,
        callback: Some(Arc::new(move |r: &monitor::BlockReport| {
            if !r.finished {
                sink.fetch_add(1, Ordering::Relaxed);
            }
        })),
        ..Config::default()
    });
    let quick = args.iter().any(|a| a == "--quick");
    let rounds = if quick { 3 } else { 7 };
    let idle_rounds = if quick { 1 } else { 3 };
    let burst_rounds = if quick { 1 } else { 3 };
    let rt = tokio_rt();

    let warm_n = 10_000;
    let big_n = 100_000;
    let yield_n = if quick { 200_000 } else { 1_000_000 };

    // Each peer warm: its pools, stacks and allocator have seen the sizes once.
    for peer in PEERS {
        spawn_join(peer, warm_n, &rt);
        yield_pingpong(peer, 20_000, &rt);
    }
    let mut warm = [vec![], vec![], vec![]];
    let mut big = [vec![], vec![], vec![]];
    let mut yields = [vec![], vec![], vec![]];
    for round in 0..rounds {
        for peer in rotated(round) {
            let i = peer as usize;
            warm[i].push(ns_per(spawn_join(peer, warm_n, &rt), warm_n));
            if peer != Peer::May {
                big[i].push(ns_per(spawn_join(peer, big_n, &rt), big_n));
            }
            yields[i].push(ns_per(yield_pingpong(peer, yield_n, &rt), yield_n));
        }
        eprintln!("hub bench: round {} of {rounds}", round + 1);
    }
    // may at 100k in a process of its own, since it may run out of mappings there.
    let may_big = may_spawn_join_child(big_n);
    if let Ok(ns) = may_big {
        big[Peer::May as usize].push(ns);
    }

    let mut burst = [vec![], vec![], vec![]];
    let mut burst_faults = [vec![], vec![], vec![]];
    for round in 0..burst_rounds {
        for peer in rotated(round) {
            if let Some((ns, faults)) = first_burst(peer) {
                burst[peer as usize].push(ns);
                burst_faults[peer as usize].push(faults);
            }
        }
        eprintln!(
            "hub bench: first-burst round {} of {burst_rounds}",
            round + 1
        );
    }

    let mut idles: Vec<Vec<Idle>> = vec![vec![]; IDLE_KINDS.len()];
    for round in 0..idle_rounds {
        for k in 0..IDLE_KINDS.len() {
            let k = (k + round) % IDLE_KINDS.len();
            if let Some(r) = idle_process(IDLE_KINDS[k].0) {
                idles[k].push(r);
            }
        }
        eprintln!("hub bench: idle process round {}", round + 1);
    }

    let sleepers = if quick { 100_000 } else { 1_000_000 };
    let g_sleep = greenhub_sleepers(sleepers);
    let t_sleep = tokio_sleepers(&rt, sleepers);

    let med = |v: &[Vec<f64>; 3]| v.clone().map(median);
    let warm = med(&warm);
    let big = med(&big);
    let burst = med(&burst);
    let burst_faults = med(&burst_faults);
    let yields = med(&yields);
    let idles: Vec<Idle> = idles
        .iter()
        .map(|v| Idle {
            wakeups_per_s: median(v.iter().map(|r| r.wakeups_per_s).collect()),
            cpu_percent: median(v.iter().map(|r| r.cpu_percent).collect()),
        })
        .collect();
    let (g, t, m) = (
        Peer::Greenhub as usize,
        Peer::Tokio as usize,
        Peer::May as usize,
    );

    println!();
    println!(
        "Medians of {rounds} interleaved rounds ({burst_rounds} for the first burst, {idle_rounds} for the idle process); {} cores, {sleepers} sleepers.",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!(
        "| figure | greenhub | tokio current_thread | may, 1 worker | greenhub / tokio | greenhub / may |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let row = |name: &str, v: [f64; 3], unit: &str| {
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            fmt_opt(v[g], unit),
            fmt_opt(v[t], unit),
            fmt_opt(v[m], unit),
            if unit.is_empty() {
                "".into()
            } else {
                ratio(v[g], v[t])
            },
            if unit.is_empty() {
                "".into()
            } else {
                ratio(v[g], v[m])
            },
        );
    };
    row(
        "spawn + run + join, 10k at a time, warm, per task",
        warm,
        "ns",
    );
    row("spawn + run + join, 100k at a time, per task", big, "ns");
    row(
        "spawn + run + join, the first 10k after 2 s idle (fresh process), per task",
        burst,
        "ns",
    );
    row(
        "minor page faults in that first burst, per task",
        burst_faults,
        "",
    );
    row("yield ping-pong, per yield", yields, "ns");
    println!(
        "| {sleepers} sleepers 0-1 s: total | {:.2} s | {:.2} s | — | {:.2}x | |",
        g_sleep.total_s,
        t_sleep.total_s,
        g_sleep.total_s / t_sleep.total_s
    );
    println!(
        "| {sleepers} sleepers: RSS per sleeper | {:.2} KiB | {:.2} KiB | — | | |",
        g_sleep.rss_per_kib, t_sleep.rss_per_kib
    );
    println!(
        "| timer lateness p50 / p99 / max | {:.0} / {:.0} / {:.0} us | {:.0} / {:.0} / {:.0} us | — | | |",
        g_sleep.late_us[0],
        g_sleep.late_us[1],
        g_sleep.late_us[2],
        t_sleep.late_us[0],
        t_sleep.late_us[1],
        t_sleep.late_us[2]
    );
    if let Err(why) = &may_big {
        println!();
        println!("may at {big_n} live coroutines failed: {why}");
    }
    println!(
        "(the monitor, on in this process, saw the main thread busy in tokio or may {} times)",
        reports.load(Ordering::Relaxed)
    );
    println!();
    println!("| idle process (2 s) | wake-ups per second | CPU, % of a core |");
    println!("|---|---:|---:|");
    for (k, (_, title)) in IDLE_KINDS.iter().enumerate() {
        println!(
            "| {title} | {:.1} | {:.3} |",
            idles[k].wakeups_per_s, idles[k].cpu_percent
        );
    }
    println!();

    let bench = |name: &str, v: [f64; 3], unit: &str| {
        for peer in PEERS {
            let x = v[peer as usize];
            if !x.is_nan() {
                println!("BENCH {name}_{} {x:.1} {unit}", peer.key());
            }
        }
        for (peer, key) in [(t, "tokio"), (m, "may")] {
            if unit != "faults" && !v[g].is_nan() && !v[peer].is_nan() {
                println!("BENCH {name}_ratio_{key} {:.2} x", v[g] / v[peer]);
            }
        }
    };
    bench("hub_spawn_join_10k_warm", warm, "ns");
    bench("hub_spawn_join_100k", big, "ns");
    bench("hub_spawn_join_first_burst", burst, "ns");
    bench("hub_first_burst_faults_per_task", burst_faults, "faults");
    bench("hub_yield", yields, "ns");
    println!("BENCH hub_sleepers_total_greenhub {:.2} s", g_sleep.total_s);
    println!("BENCH hub_sleepers_total_tokio {:.2} s", t_sleep.total_s);
    println!(
        "BENCH hub_sleepers_total_ratio_tokio {:.2} x",
        g_sleep.total_s / t_sleep.total_s
    );
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
    for (k, (key, _)) in IDLE_KINDS.iter().enumerate() {
        println!(
            "BENCH hub_idle_wakeups_{key} {:.1} /s",
            idles[k].wakeups_per_s
        );
        println!("BENCH hub_idle_cpu_{key} {:.3} %", idles[k].cpu_percent);
    }
}
