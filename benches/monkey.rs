//! The libc hooks of `greenhub::monkey`, measured against their peers in the same run:
//!
//! 1. **Pass-through cost.** A 1-byte `write` + `read` on a pipe from a plain thread,
//!    through the hooked `libc::write`/`libc::read`, against the same system calls made
//!    with `libc::syscall` (no hook, no glibc wrapper) — before `patch_all()` (the hooks
//!    dormant) and after (on, but not applying to a thread without a hub). Also shown:
//!    glibc's own `write`/`read` reached through `dlsym(RTLD_NEXT, ..)`.
//! 2. **Echo server.** The unmodified std thread-per-connection echo server (std
//!    `TcpListener`/`TcpStream`, only `thread::spawn` changed to `greenhub::spawn`) under
//!    the hooks, against the same server written on `greenhub::net` (`StreamServer`, one
//!    hub): 1,000 connections, 64-byte and 4 KiB messages, driven by `benches/echo.rs`'s
//!    closed-loop client in a separate process (this binary again, `--role-client`).
//! 3. **1,000 concurrent ureq GETs** of a local server that answers after 50 ms: a
//!    greenlet per request with the hooks, a thread per request, and one after another.
//!    Sequential is sampled on 20 requests and scaled to 1,000 (the full run would take
//!    about 50 s per round). Wall time and the process's CPU time.
//!
//! `cargo bench --features monkey --bench monkey` (add `-- --quick` for a short run,
//! `-- --only pipe|echo|ureq` for one part). Rounds interleave the peers, each going first
//! in turn, so that a noisy moment does not fall on one only. The pipe figures are the
//! best of 500 short rounds (the uncontended cost); the echo (5 rounds of 0.5 s warm-up +
//! 1.5 s) and ureq (3 rounds) figures are the medians of their rounds, since on a shared
//! machine the best round is an outlier. Prints tables and `BENCH <name> <value> <unit>`
//! lines.

#[path = "../examples/support/load.rs"]
mod load;
#[path = "../examples/support/peers.rs"]
mod peers;
#[path = "../examples/support/slow_http.rs"]
mod slow_http;

use std::ffi::c_void;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Pipe round trips per timed round: short rounds (about 2 ms), many of them, so that
/// the best round of each way escapes the preemptions of a shared machine.
const PIPE_ITERS: u64 = 2_000;
const ECHO_CONNS: usize = 1_000;
const ECHO_SIZES: [usize; 2] = [64, 4096];
const GETS: usize = 1_000;
const GET_LATENCY: Duration = Duration::from_millis(50);
/// Sequential GETs actually made per round (scaled to `GETS`).
const SEQUENTIAL_SAMPLE: usize = 20;

struct Settings {
    pipe_rounds: usize,
    echo_rounds: usize,
    echo_warmup: Duration,
    echo_measure: Duration,
    get_rounds: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == load::CLIENT_ROLE) {
        load::client_process_main(&args[i + 1..], "echo");
        return;
    }
    let s = if args.iter().any(|a| a == "--quick") {
        Settings {
            pipe_rounds: 50,
            echo_rounds: 1,
            echo_warmup: Duration::from_millis(200),
            echo_measure: Duration::from_millis(500),
            get_rounds: 1,
        }
    } else {
        Settings {
            pipe_rounds: 500,
            echo_rounds: 5,
            echo_warmup: Duration::from_millis(500),
            echo_measure: Duration::from_millis(1500),
            get_rounds: 3,
        }
    };
    // `--only pipe` (or `echo`, `ureq`) runs one part.
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let part = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let mut bench = Vec::new();

    // 1. Pass-through cost, dormant (before patch_all) and then patched.
    let pipes = part("pipe").then(|| {
        let dormant = on_plain_thread(move || pipe_round_trips(s.pipe_rounds));
        patch();
        let patched = on_plain_thread(move || pipe_round_trips(s.pipe_rounds));
        (dormant, patched)
    });
    patch();
    // 2. The echo servers.
    let echo = part("echo").then(|| echo_servers(&s));
    // 3. ureq GETs.
    let gets = part("ureq").then(|| ureq_gets(&s));

    if pipes.is_some() || echo.is_some() {
        println!();
        println!("| figure | through the hooks | peer | ratio (target) |");
        println!("|---|---:|---:|---:|");
    }
    if let Some((dormant, patched)) = &pipes {
        for (when, key, p) in [
            ("before `patch_all`", "dormant", dormant),
            ("after `patch_all`", "patched", patched),
        ] {
            println!(
                "| 1-byte pipe write + read, plain thread, {when} | {:.0} ns | {:.0} ns (`libc::syscall`; glibc's own {:.0} ns) | {:.3}x (<= 1.05x) |",
                p.hooked,
                p.syscall,
                p.glibc,
                p.hooked / p.syscall
            );
            bench.push(format!("monkey_pipe_{key}_hooked {:.1} ns", p.hooked));
            bench.push(format!("monkey_pipe_{key}_syscall {:.1} ns", p.syscall));
            bench.push(format!("monkey_pipe_{key}_glibc {:.1} ns", p.glibc));
            bench.push(format!(
                "monkey_pipe_{key}_ratio_hooked_syscall {:.3} x",
                p.hooked / p.syscall
            ));
        }
    }
    for e in echo.iter().flatten() {
        let ratio = e.hooked / e.net.max(1e-9);
        println!(
            "| echo, {} connections x {} B, req/s | {} (std server + hooks) | {} (`greenhub::net`) | {ratio:.2}x (>= 0.9x) |",
            load::thousands(ECHO_CONNS as u64),
            e.size,
            load::thousands(e.hooked as u64),
            load::thousands(e.net as u64),
        );
        let name = format!("monkey_echo_{}c_{}b", ECHO_CONNS, e.size);
        bench.push(format!("{name}_hooked_std_rps {:.0} req/s", e.hooked));
        bench.push(format!("{name}_greenhub_net_rps {:.0} req/s", e.net));
        bench.push(format!("{name}_ratio_hooked_net {ratio:.3} x"));
        if e.errors > 0 {
            bench.push(format!("{name}_errors {} count", e.errors));
        }
    }
    if let Some(gets) = &gets {
        println!();
        println!(
            "| {} ureq GETs, {} ms each | wall | process CPU | wall / greenlets' |",
            load::thousands(GETS as u64),
            GET_LATENCY.as_millis()
        );
        println!("|---|---:|---:|---:|");
        for (way, key, t) in [
            ("a greenlet each, hooks", "greenlets", gets.greenlets),
            ("a thread each", "threads", gets.threads),
            (
                "one after another (20 made, scaled)",
                "sequential_scaled",
                gets.sequential,
            ),
        ] {
            println!(
                "| {way} | {} | {} | {:.2}x |",
                load::fmt_dur(t.wall),
                load::fmt_dur(t.cpu),
                t.wall.as_secs_f64() / gets.greenlets.wall.as_secs_f64()
            );
            bench.push(format!(
                "monkey_ureq_{GETS}_{key} {:.1} ms",
                t.wall.as_secs_f64() * 1e3
            ));
            bench.push(format!(
                "monkey_ureq_{GETS}_{key}_cpu {:.0} ms",
                t.cpu.as_secs_f64() * 1e3
            ));
        }
        bench.push(format!(
            "monkey_ureq_{GETS}_ratio_threads_greenlets {:.2} x",
            gets.threads.wall.as_secs_f64() / gets.greenlets.wall.as_secs_f64()
        ));
        bench.push(format!(
            "monkey_ureq_{GETS}_ratio_sequential_greenlets {:.1} x",
            gets.sequential.wall.as_secs_f64() / gets.greenlets.wall.as_secs_f64()
        ));
    }
    println!();
    for line in bench {
        println!("BENCH {line}");
    }
}

/// Turns the hooks on.
///
/// # Panics
/// If they stay off (`GREENHUB_MONKEY=off`): there would be nothing to measure.
fn patch() {
    assert!(
        greenhub::monkey::patch_all(),
        "patch_all() did not turn the hooks on (GREENHUB_MONKEY=off?): nothing to measure"
    );
}

/// Runs `f` on a new thread that never gets a hub.
fn on_plain_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(f).join().expect("the bench thread")
}

// ---- 1. pipe round trips ----

/// ns per 1-byte write + read, best of the rounds, for each way of calling.
struct PipeCost {
    hooked: f64,
    syscall: f64,
    glibc: f64,
}

type IoFn = unsafe extern "C" fn(i32, *mut c_void, usize) -> isize;

/// glibc's `name`, the definition after this binary's (the hook's) in lookup order.
fn glibc_fn(name: &std::ffi::CStr) -> IoFn {
    // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name only looks a symbol up.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) };
    assert!(!p.is_null(), "dlsym({name:?}) found nothing");
    // SAFETY: glibc's read and write have this signature (write's buffer is const, which
    // the ABI does not distinguish).
    unsafe { std::mem::transmute::<*mut c_void, IoFn>(p) }
}

fn pipe_round_trips(rounds: usize) -> PipeCost {
    let mut fds = [0i32; 2];
    // SAFETY: pipe writes two descriptors into the array we pass.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    let (r, w) = (fds[0], fds[1]);
    let (glibc_read, glibc_write) = (glibc_fn(c"read"), glibc_fn(c"write"));
    let mut byte = 7u8;
    let buf = (&raw mut byte).cast::<c_void>();
    let time = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        for _ in 0..PIPE_ITERS {
            f();
        }
        t.elapsed().as_secs_f64() * 1e9 / PIPE_ITERS as f64
    };
    // SAFETY: (each closure) `buf` points at `byte`, one byte that lives for the whole
    // function; `r` and `w` are the pipe's ends, open until the end of the function; the
    // pipe holds at most one byte at a time, so no call blocks.
    let mut hooked = || unsafe {
        assert_eq!(libc::write(w, buf, 1), 1);
        assert_eq!(libc::read(r, buf, 1), 1);
    };
    let mut syscall = || unsafe {
        assert_eq!(libc::syscall(libc::SYS_write, w, buf, 1usize), 1);
        assert_eq!(libc::syscall(libc::SYS_read, r, buf, 1usize), 1);
    };
    let mut glibc = || unsafe {
        assert_eq!(glibc_write(w, buf, 1), 1);
        assert_eq!(glibc_read(r, buf, 1), 1);
    };
    time(&mut hooked); // warm-up
    let ways: [&mut dyn FnMut(); 3] = [&mut hooked, &mut syscall, &mut glibc];
    let mut best_ns = [f64::INFINITY; 3];
    for round in 1..=rounds {
        // Each way goes first in turn, so none always follows the same one.
        let mut ns = [0.0; 3];
        for k in 0..3 {
            let way = (round + k) % 3;
            ns[way] = time(&mut *ways[way]);
        }
        if round % 100 == 1 {
            eprintln!(
                "pipe round {round}: hooked {:.0} ns, syscall {:.0} ns, glibc {:.0} ns",
                ns[0], ns[1], ns[2]
            );
        }
        for (b, n) in best_ns.iter_mut().zip(ns) {
            *b = b.min(n);
        }
    }
    let best = PipeCost {
        hooked: best_ns[0],
        syscall: best_ns[1],
        glibc: best_ns[2],
    };
    // SAFETY: closing the two descriptors pipe() gave us, used by nothing else.
    unsafe {
        libc::close(r);
        libc::close(w);
    }
    best
}

// ---- 2. echo servers ----

/// One message size: requests/s of each server, the median of the rounds.
struct EchoCell {
    size: usize,
    hooked: f64,
    net: f64,
    errors: u64,
}

/// The median of `v` (the mean of the middle two for an even count); 0 for none.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `peers::std_threads` with `thread::spawn` changed to `greenhub::spawn`: std sockets,
/// a greenlet per connection, on its own hub thread.
fn start_hooked_std_echo() -> SocketAddr {
    let listener = peers::std_listener("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::Builder::new()
        .name("std-echo-hooked".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                greenhub::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = conn.read(&mut buf) {
                        if conn.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        })
        .expect("server thread");
    addr
}

fn echo_servers(s: &Settings) -> Vec<EchoCell> {
    let hooked = start_hooked_std_echo();
    let net_server = greenhub::net::StreamServer::threads(1)
        .bind("127.0.0.1:0", peers::greenhub_echo)
        .expect("greenhub server");
    let net = net_server.local_addr();
    let exe = std::env::current_exe().expect("own path");
    // Per size: (requests/s of the hooked server per round, of greenhub::net, errors).
    let mut runs: Vec<(Vec<f64>, Vec<f64>, u64)> = vec![Default::default(); ECHO_SIZES.len()];
    for round in 1..=s.echo_rounds {
        for (&size, run) in ECHO_SIZES.iter().zip(&mut runs) {
            // Each server goes first in every other round.
            let mut order = [("std+hooks", hooked), ("greenhub::net", net)];
            if round % 2 == 0 {
                order.reverse();
            }
            for (name, addr) in order {
                let (rps, errors) = run_echo_cell(&exe, addr, size, s);
                eprintln!(
                    "echo round {round}: {ECHO_CONNS} conns {size:>5} B {name:<14} {rps:>9.0} req/s{}",
                    if errors > 0 {
                        format!(" ({errors} errors)")
                    } else {
                        String::new()
                    }
                );
                if rps == 0.0 && errors == 0 {
                    eprintln!("echo round {round}: {name}: no round trip completed in the window");
                }
                run.2 += errors;
                if addr == hooked {
                    run.0.push(rps);
                } else {
                    run.1.push(rps);
                }
                // Let the server finish closing the last cell's connections.
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    drop(net_server);
    ECHO_SIZES
        .iter()
        .zip(runs)
        .map(|(&size, (hooked, net, errors))| EchoCell {
            size,
            hooked: median(hooked),
            net: median(net),
            errors,
        })
        .collect()
}

/// One cell in a client process (`load::run_client_process`, the closed-loop client of
/// `benches/echo.rs` on `greenhub::net`; that process never calls `patch_all`): returns
/// requests/s and the client's error count.
fn run_echo_cell(exe: &std::path::Path, addr: SocketAddr, size: usize, s: &Settings) -> (f64, u64) {
    let (warmup, measure) = (s.echo_warmup, s.echo_measure);
    match load::run_client_process(exe, addr, ECHO_CONNS, size, warmup, measure) {
        Ok(r) => (r.requests as f64 / r.secs, r.errors),
        Err(why) => {
            eprintln!("echo: {ECHO_CONNS} connections x {size} B to {addr}: {why}");
            (0.0, ECHO_CONNS as u64)
        }
    }
}

// ---- 3. ureq GETs ----

/// Wall and CPU time of one way of making the GETs. CPU is the whole process's (the local
/// server's share is the same in every way).
#[derive(Clone, Copy)]
struct Timing {
    wall: Duration,
    cpu: Duration,
}

impl Timing {
    /// The median wall time and the median CPU time of `runs`.
    fn median(runs: &[Timing]) -> Timing {
        let secs = |f: fn(&Timing) -> Duration| {
            Duration::from_secs_f64(median(runs.iter().map(|t| f(t).as_secs_f64()).collect()))
        };
        Timing {
            wall: secs(|t| t.wall),
            cpu: secs(|t| t.cpu),
        }
    }

    fn scaled(self, by: u32) -> Timing {
        Timing {
            wall: self.wall * by,
            cpu: self.cpu * by,
        }
    }
}

/// The CPU time of the whole process so far (`CLOCK_PROCESS_CPUTIME_ID`, exact to the
/// nanosecond, unlike the 10 ms ticks of `/proc`).
fn process_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass; the clock id is a constant.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(r, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Times `f` by the clock and by the process's CPU time.
fn timed(f: impl FnOnce()) -> Timing {
    let cpu = process_cpu;
    let (t, c) = (Instant::now(), cpu());
    f();
    Timing {
        wall: t.elapsed(),
        cpu: cpu().saturating_sub(c),
    }
}

struct GetTimes {
    greenlets: Timing,
    threads: Timing,
    /// Scaled from `SEQUENTIAL_SAMPLE` requests to `GETS`.
    sequential: Timing,
}

/// GETs `url` with ureq and checks the page.
fn get(url: &str, path: &str) {
    let body = ureq::get(url)
        .call()
        .and_then(|r| r.into_body().read_to_string())
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert!(body == slow_http::body_for(path), "GET {url}: wrong body");
}

fn ureq_gets(s: &Settings) -> GetTimes {
    let server = slow_http::SlowHttp::start(GET_LATENCY).expect("the local HTTP server");
    let base = server.url("");
    let paths: Vec<String> = (0..GETS).map(|i| format!("/get/{i}")).collect();
    let (mut all_greenlets, mut all_threads, mut all_sequential) = (vec![], vec![], vec![]);
    for round in 1..=s.get_rounds {
        // Greenlets on a fresh hub thread, with the hooks.
        let greenlets = timed(|| {
            let (b, p) = (base.clone(), paths.clone());
            on_plain_thread(move || {
                let jobs: Vec<_> = p
                    .into_iter()
                    .map(|path| {
                        let url = format!("{b}{path}");
                        greenhub::spawn(move || get(&url, &path))
                    })
                    .collect();
                for j in jobs {
                    j.join().expect("a GET greenlet");
                }
            });
        });
        std::thread::sleep(Duration::from_millis(200));

        // A thread per request (plain threads: the hooks pass through).
        let threads = timed(|| {
            let threads: Vec<_> = paths
                .iter()
                .map(|path| {
                    let (url, path) = (format!("{base}{path}"), path.clone());
                    std::thread::Builder::new()
                        .stack_size(256 * 1024)
                        .spawn(move || get(&url, &path))
                        .expect("spawn a request thread")
                })
                .collect();
            for th in threads {
                th.join().expect("a GET thread");
            }
        });
        std::thread::sleep(Duration::from_millis(200));

        // One after another on a plain thread, sampled.
        let sample = timed(|| {
            let (b, p) = (base.clone(), paths.clone());
            on_plain_thread(move || {
                for path in &p[..SEQUENTIAL_SAMPLE] {
                    get(&format!("{b}{path}"), path);
                }
            });
        });
        let sequential = sample.scaled((GETS / SEQUENTIAL_SAMPLE) as u32);
        eprintln!(
            "ureq round {round}: {GETS} GETs: greenlets {:?} (CPU {:?}), thread each {:?} \
             (CPU {:?}), sequential {:?} ({SEQUENTIAL_SAMPLE} took {:?})",
            greenlets.wall, greenlets.cpu, threads.wall, threads.cpu, sequential.wall, sample.wall
        );
        all_greenlets.push(greenlets);
        all_threads.push(threads);
        all_sequential.push(sequential);
    }
    GetTimes {
        greenlets: Timing::median(&all_greenlets),
        threads: Timing::median(&all_threads),
        sequential: Timing::median(&all_sequential),
    }
}
