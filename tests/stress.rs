//! Scale: the multi-hub server (`StreamServer::threads`) and small runs of
//! `examples/stress/` — a split run that passes, a client that dies mid-run, a bad flag,
//! and a run forced into each limit it names (the file limit, the ephemeral port range in
//! a network namespace of its own, memory, the deadline), each small and quick. The
//! 20,000-connection run itself is an example that `.ci/run` runs bounded; the big runs
//! are for README.
//!
//! The example tests run target/<profile>/examples/stress: `cargo test` builds it; with
//! `cargo test --test stress` build it first (`cargo build --release --examples`).

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::run_example;
use greenhub::net::{ServerThreads, StreamServer, TcpStream};

/// Echoes until the peer closes.
fn echo(mut conn: TcpStream, _peer: SocketAddr) {
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = conn.read(&mut buf) {
        if conn.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

fn wait_until(limit: Duration, cond: impl Fn() -> bool) -> bool {
    let t = Instant::now();
    while !cond() {
        if t.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

#[test]
fn threaded_server_accepts_on_every_thread_and_echoes() {
    let server = StreamServer::threads(4).bind("127.0.0.1:0", echo).unwrap();
    assert_eq!(server.threads(), 4);
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);
    // Std clients on plain threads, all connections open at once.
    let mut conns: Vec<std::net::TcpStream> = (0..200)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    for (i, c) in conns.iter_mut().enumerate() {
        let msg = format!("message {i}");
        c.write_all(msg.as_bytes()).unwrap();
        let mut back = vec![0; msg.len()];
        c.read_exact(&mut back).unwrap();
        assert_eq!(back, msg.as_bytes());
    }
    let stats = server.stats();
    assert_eq!(stats.accepted, 200);
    assert_eq!(stats.active, 200);
    assert_eq!(stats.peak, 200, "the peak of the sum over threads");
    let per_thread = server.thread_stats();
    assert_eq!(per_thread.len(), 4);
    assert!(
        per_thread.iter().all(|t| t.accepted > 0),
        "SO_REUSEPORT spreads connections over every thread: {per_thread:?}"
    );
    assert_eq!(per_thread.iter().map(|t| t.accepted).sum::<u64>(), 200);
    drop(conns);
    assert!(wait_until(Duration::from_secs(5), || server.stats().active == 0));
    assert_eq!(server.stop(Duration::from_secs(1)), 0);
    assert!(!server.is_running());
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "the listeners are closed after stop"
    );
}

/// A 2-hub server whose handlers count themselves in and then sleep for an hour.
fn sleeping_server() -> (ServerThreads, Arc<AtomicUsize>) {
    let started = Arc::new(AtomicUsize::new(0));
    let s = started.clone();
    let server = StreamServer::threads(2)
        .bind("127.0.0.1:0", move |_conn, _peer| {
            s.fetch_add(1, Ordering::SeqCst);
            greenhub::sleep(Duration::from_secs(3600));
        })
        .unwrap();
    (server, started)
}

#[test]
fn threaded_server_stop_kills_handlers_that_do_not_finish() {
    let (server, started) = sleeping_server();
    let conns: Vec<_> = (0..10)
        .map(|_| std::net::TcpStream::connect(server.local_addr()).unwrap())
        .collect();
    assert!(wait_until(Duration::from_secs(5), || {
        started.load(Ordering::SeqCst) == 10
    }));
    let t = Instant::now();
    assert_eq!(server.stop(Duration::from_millis(50)), 10);
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(server.stats().active, 0);
    // The killed handlers closed their connections.
    for mut c in conns {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(c.read(&mut [0; 1]).unwrap_or(0), 0);
    }
}

#[test]
fn threaded_server_stop_from_a_greenlet_is_cooperative() {
    let (server, started) = sleeping_server();
    let _conn = std::net::TcpStream::connect(server.local_addr()).unwrap();
    assert!(wait_until(Duration::from_secs(5), || {
        started.load(Ordering::SeqCst) == 1
    }));
    let server = Arc::new(server);
    let s = server.clone();
    // stop waits 100 ms for the handler; meanwhile this thread's other greenlets run.
    let stopper = greenhub::spawn(move || s.stop(Duration::from_millis(100)));
    let ticker = greenhub::spawn(|| {
        for _ in 0..5 {
            greenhub::sleep(Duration::from_millis(1));
        }
    });
    ticker.join().unwrap();
    assert!(!stopper.is_finished(), "the ticker ran while stop waited");
    assert_eq!(stopper.join().unwrap(), 1);
}

#[test]
fn dropping_the_threaded_server_stops_it() {
    let server = StreamServer::threads(2).bind("127.0.0.1:0", echo).unwrap();
    let addr = server.local_addr();
    drop(server);
    assert!(wait_until(Duration::from_secs(5), || {
        std::net::TcpStream::connect(addr).is_err()
    }));
}

#[test]
fn threaded_server_bind_errors_and_per_core() {
    // A port held without SO_REUSEPORT cannot be joined.
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = StreamServer::threads(2)
        .bind(plain.local_addr().unwrap(), echo)
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    let cores = std::thread::available_parallelism().unwrap().get();
    let server = StreamServer::per_core().bind("127.0.0.1:0", echo).unwrap();
    assert_eq!(server.threads(), cores);
    // Another group (another process, in the stress run) may join the same port.
    let second = StreamServer::threads(1)
        .bind(server.local_addr(), echo)
        .unwrap();
    assert_eq!(second.local_addr(), server.local_addr());
    second.stop(Duration::ZERO);
    server.stop(Duration::ZERO);
}

// ---- examples/stress/ ----

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[test]
fn stress_example_split_run_passes() {
    // Small, but split like the real run: 2 server processes share a port, 2 clients.
    let out = run_example(
        "stress",
        &[
            "--connections",
            "400",
            "--messages",
            "3",
            "--server-processes",
            "2",
            "--client-processes",
            "2",
            "--timeout",
            "60",
            "--plot",
            &std::env::temp_dir()
                .join(format!("greenhub-stress-{}.svg", std::process::id()))
                .to_string_lossy(),
        ],
        Duration::from_secs(90),
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "stress failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("2 server processes"), "{stdout}");
    assert!(stdout.contains("| stress | passed |"), "{stdout}");
    let result = stdout
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .expect("a RESULT line");
    for field in [
        "ok=1",
        "connections=400",
        "held=400",
        "errors=0",
        "msgs=1200",
    ] {
        assert!(
            result.split_whitespace().any(|w| w == field),
            "{field} in {result}"
        );
    }
    let plot = stdout
        .lines()
        .find_map(|l| l.strip_prefix("plot: "))
        .expect("the plot's path");
    let svg = std::fs::read_to_string(plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("open connections"));
    let _ = std::fs::remove_file(plot);
}

#[test]
fn stress_example_reports_a_client_that_dies() {
    let out = run_example(
        "stress",
        &[
            "--connections",
            "200",
            "--messages",
            "40",
            "--client-processes",
            "2",
            "--fault",
            "client-abort",
            "--timeout",
            "60",
        ],
        Duration::from_secs(90),
    );
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("client 0 (pid")
            && stderr.contains("exited with status 3")
            && stderr.contains("connections 0..99")
            && stderr.contains("messages are lost"),
        "{stderr}"
    );
}

#[test]
fn stress_example_rejects_bad_flags() {
    let out = run_example(
        "stress",
        &["--connections", "zero"],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("usage: stress"));
}

/// Runs `script` under `sh` in a network namespace of its own (root only: `unshare -n`)
/// with loopback up and the ephemeral port range set to `ports`; `None` (and a note)
/// where no namespace can be made.
fn in_netns(ports: &str, script: &str) -> Option<std::process::Output> {
    let script = format!(
        "ip link set lo up && sysctl -qw net.ipv4.ip_local_port_range='{ports}' && {script}"
    );
    let out = match std::process::Command::new("unshare")
        .args(["-n", "sh", "-c", &script])
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            eprintln!("skipped: no unshare: {e}");
            return None;
        }
    };
    let stderr = text(&out.stderr);
    if stderr.contains("unshare failed") || stderr.contains("Operation not permitted") {
        eprintln!("skipped: cannot make a network namespace here: {stderr}");
        return None;
    }
    Some(out)
}

/// Runs `script` under `sh`.
fn sh(script: &str) -> std::process::Output {
    std::process::Command::new("sh")
        .args(["-c", script])
        .output()
        .unwrap()
}

/// The first `n` lines of `s`, joined.
fn first_lines(s: &str, n: usize) -> String {
    s.lines().take(n).collect::<Vec<_>>().join("\n")
}

#[test]
fn stress_example_refuses_a_run_the_port_range_cannot_hold() {
    // 50 ephemeral ports and 4 source addresses hold 200 connections, not 1,000: the run
    // must say so before it starts anything.
    let exe = common::example("stress");
    let Some(out) = in_netns(
        "40000 40049",
        &format!(
            "exec {} --connections 1000 --messages 1 --sources 4 --timeout 30",
            exe.display()
        ),
    ) else {
        return;
    };
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success());
    let first = first_lines(&stderr, 3);
    assert!(
        first.contains("cannot succeed")
            && first.contains("ephemeral port range")
            && first.contains("net.ipv4.ip_local_port_range is 40000-40049: 50 ports"),
        "{stderr}"
    );
    assert!(!stdout.contains("\nrun: "), "nothing started:\n{stdout}");
    assert!(stdout.contains("failed_phase=plan"), "{stdout}");
}

#[test]
fn stress_example_spreads_its_sources_to_fit_a_narrow_port_range() {
    // 1,000 connections with 50 ephemeral ports: the run spreads over enough loopback
    // source addresses (a quarter of the range each) and says so.
    let exe = common::example("stress");
    let Some(out) = in_netns(
        "40000 40049",
        &format!(
            "exec {} --connections 1000 --messages 1 --timeout 60",
            exe.display()
        ),
    ) else {
        return;
    };
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("1,000 connections from 127.0.0.1 to 127.0.0.84 (84): up to 12 each"),
        "{stdout}"
    );
}

#[test]
fn stress_example_runs_again_while_the_last_runs_sockets_sit_in_time_wait() {
    // 600 connections over 4 source addresses with 200 ports each: the first run leaves
    // 600 sockets in TIME_WAIT on those ports. Bound to a port of its own, the second
    // run's sockets would find only 50 free per address; the kernel picks each port per
    // (source, server) pair instead, and the second run gets the whole range again.
    let exe = common::example("stress");
    let run = format!(
        "{} --connections 600 --messages 1 --sources 4 --timeout 60",
        exe.display()
    );
    let Some(out) = in_netns("40000 40199", &format!("{run} && {run}")) else {
        return;
    };
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(stdout.matches("| stress | passed |").count(), 2, "{stdout}");
    assert!(
        stdout.contains("the 600 sockets in TIME_WAIT"),
        "the second run starts with the first one's 600 in TIME_WAIT:\n{stdout}"
    );
}

#[test]
fn stress_example_refuses_a_run_the_file_limit_cannot_hold() {
    // With `ulimit -n 300` one client process forced to hold 400 sockets cannot: the run
    // must say which limit before it starts anything.
    let exe = common::example("stress");
    let script = format!(
        "ulimit -n 300 && exec {} --connections 400 --messages 1 --client-processes 1 \
         --timeout 30",
        exe.display()
    );
    let out = sh(&script);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success());
    assert!(stdout.contains("soft 300 / hard 300"), "{stdout}");
    let first = first_lines(&stderr, 3);
    assert!(
        first.contains("cannot succeed")
            && first.contains("the file limit: 400 client sockets")
            && first.contains("RLIMIT_NOFILE (soft 300 / hard 300)")
            && first.contains("ulimit -n"),
        "{stderr}"
    );
    assert!(!stdout.contains("\nrun: "), "nothing started:\n{stdout}");
}

#[test]
fn stress_example_splits_itself_under_a_low_file_limit() {
    // The same 400 connections under `ulimit -n 300`, split by the run itself: it passes.
    let exe = common::example("stress");
    let script = format!(
        "ulimit -n 300 && exec {} --connections 400 --messages 1 --timeout 60",
        exe.display()
    );
    let out = sh(&script);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("-> 3 server processes"), "{stdout}");
    assert!(stdout.contains("-> 2 client processes"), "{stdout}");
}

#[test]
fn stress_example_refuses_more_connections_than_memory_holds() {
    // A hundred million connections fit neither memory nor the file table: the run says
    // so at once, naming memory, and starts nothing.
    let t = Instant::now();
    let out = run_example(
        "stress",
        &["--connections", "100000000", "--messages", "1"],
        Duration::from_secs(30),
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success());
    let first = first_lines(&stderr, 3);
    assert!(
        first.contains("cannot succeed") && first.contains("memory: 100,000,000 connections"),
        "{stderr}"
    );
    assert!(first.contains("MemAvailable"), "{stderr}");
    assert!(stdout.contains("failed_phase=plan"), "{stdout}");
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "refused before starting"
    );
}

#[test]
fn stress_example_says_the_deadline_will_pass_before_it_does() {
    // 200 connections x 100 million messages cannot finish in 4 s: halfway to the
    // deadline the run says that the deadline limits it, then fails at the deadline.
    let out = run_example(
        "stress",
        &[
            "--connections",
            "200",
            "--messages",
            "100000000",
            "--timeout",
            "4",
        ],
        Duration::from_secs(60),
    );
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    let warned = stderr
        .find("the deadline limits this run")
        .unwrap_or_else(|| panic!("no deadline warning:\n{stderr}"));
    let failed = stderr
        .find("FAILED in phase exchange: the run's deadline (4 s, --timeout) passed")
        .unwrap_or_else(|| panic!("no deadline failure:\n{stderr}"));
    assert!(warned < failed, "{stderr}");
    assert!(stderr.contains("--timeout 4 s"), "{stderr}");
}
