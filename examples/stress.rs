//! The 20,000-connection stress run: greenhub echo servers and load clients on loopback,
//! 20,000 connections held open at once, every echoed byte verified.
//!
//! ```text
//! cargo run --release --example stress                       # 20,000 connections x 10 messages
//! cargo run --release --example stress -- --connections 20000 --messages 2
//! cargo run --release --example stress -- --connect 127.0.0.1:9000 --server-pid PID
//! cargo run --release --example stress -- --serve 127.0.0.1:9000
//! cargo run --release --example stress -- --help
//! ```
//!
//! How it runs:
//!
//! 1. **The file limit decides the split.** A process may hold `RLIMIT_NOFILE` files
//!    (greenhub raises the soft limit to the hard one); 100 are kept for listeners,
//!    pipes and epoll. 20,000 server sockets plus a listener do not fit in 20,000, so the
//!    servers run as several processes (this binary again, `--role server`), all
//!    listening on one port with `SO_REUSEPORT`: the kernel spreads the connections over
//!    them. The clients are split the same way (`--role client`). The run prints the
//!    numbers it used.
//! 2. **Connect.** Every client connection is a greenlet; all connect, then wait.
//! 3. **Barrier.** Nobody sends until every client has connected *and* the servers count
//!    all N connections open (`ServerThreads::stats().active`, summed over processes).
//! 4. **Exchange.** Every connection sends `--messages` messages of random sizes
//!    1..=`--size` bytes from its own seeded PRNG and checks each echo byte for byte,
//!    plus a checksum of the whole stream; each round trip is timed.
//! 5. **Hold, then close.** No connection closes before all have finished exchanging.
//!
//! Children talk to this orchestrator in lines on stdin/stdout (`READY`, `STATS`,
//! `CONNECTED`, `GO`, `DONE`, `CLOSE`, `FINAL`). Every wait has a deadline (`--timeout`);
//! a child that dies is reported with the connections and messages it took with it. The
//! summary table goes to stdout, the plot of open connections and messages/s to
//! `<target>/stress.svg`; the exit status is non-zero on any failed, lost or corrupted
//! message.

#[path = "support/load.rs"]
mod load;
#[path = "support/peers.rs"]
mod peers;

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitCode, ExitStatus, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use greenhub::Semaphore;
use greenhub::hub::{ResultSender, result_channel};
use greenhub::net::{StreamServer, TcpStream};
use greenhub::sync::Event;
use load::{Checksum, Histogram, Rng, describe, fmt_dur, thousands};

/// How often the orchestrator samples for the progress display and the plot.
const TICK: Duration = Duration::from_millis(100);
/// How often servers and clients report (twice a sample: no aliasing between the two).
const REPORT: Duration = Duration::from_millis(50);
/// Samples a plotted rate is averaged over.
const RATE_WINDOW: usize = 3;
/// How long the servers' count may stay short of N at the barrier before the run fails.
const BARRIER_STALL: Duration = Duration::from_secs(20);
/// How long handlers may finish when a server process stops.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// Prints one protocol line on stdout, ignoring a closed pipe (the orchestrator gone:
/// stdin's end-of-file then ends the child).
macro_rules! say {
    ($($t:tt)*) => {{
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, $($t)*);
        let _ = out.flush();
    }};
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Server,
    Client,
}

#[derive(Clone, Debug)]
struct Opts {
    connections: usize,
    messages: usize,
    size: usize,
    server_threads: Option<usize>,
    client_threads: usize,
    server_processes: Option<usize>,
    client_processes: Option<usize>,
    connect: Option<String>,
    serve: Option<String>,
    server_pid: Option<u32>,
    seed: u64,
    timeout: Duration,
    plot: Option<PathBuf>,
    // Internal: the child roles.
    role: Option<Role>,
    listen: String,
    first: usize,
    count: usize,
    fault: Option<String>,
}

impl Default for Opts {
    fn default() -> Opts {
        Opts {
            connections: 20_000,
            messages: 10,
            size: 1024,
            server_threads: None,
            client_threads: 1,
            server_processes: None,
            client_processes: None,
            connect: None,
            serve: None,
            server_pid: None,
            seed: 1,
            timeout: Duration::from_secs(120),
            plot: None,
            role: None,
            listen: "127.0.0.1:0".to_string(),
            first: 0,
            count: 0,
            fault: None,
        }
    }
}

const HELP: &str = "\
greenhub stress: hold N connections open at once on loopback, echo verified messages.

usage: stress [OPTIONS]

  --connections N       connections held open at once (20000)
  --messages M          messages per connection (10)
  --size BYTES          message sizes are random in 1..=BYTES (1024)
  --server-threads T    hubs per server process (cores / server processes, at least 1)
  --client-threads T    hubs per client process (1)
  --server-processes S  override the split the file limit asks for
  --client-processes C  override the split the file limit asks for
  --connect ADDR        drive an external echo server at ADDR (start no servers)
  --server-pid PID      with --connect: read that server's RSS, CPU and open fds
  --serve ADDR          only serve on ADDR, for an external client; ends when N
                        connections have come and gone
  --seed X              PRNG seed of the message sizes and contents (1)
  --timeout SECS        deadline of the whole run (120)
  --plot PATH           where to write the SVG plot (<target>/stress.svg)
";

fn parse_args() -> Result<Opts, lexopt::Error> {
    use lexopt::prelude::*;
    let mut o = Opts::default();
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next()? {
        match arg {
            Long("connections") => o.connections = p.value()?.parse()?,
            Long("messages") => o.messages = p.value()?.parse()?,
            Long("size") => o.size = p.value()?.parse()?,
            Long("server-threads") => o.server_threads = Some(p.value()?.parse()?),
            Long("client-threads") => o.client_threads = p.value()?.parse()?,
            Long("server-processes") => o.server_processes = Some(p.value()?.parse()?),
            Long("client-processes") => o.client_processes = Some(p.value()?.parse()?),
            Long("connect") => o.connect = Some(p.value()?.string()?),
            Long("serve") => o.serve = Some(p.value()?.string()?),
            Long("server-pid") => o.server_pid = Some(p.value()?.parse()?),
            Long("seed") => o.seed = p.value()?.parse()?,
            Long("timeout") => {
                let secs: f64 = p.value()?.parse()?;
                o.timeout = Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())?;
            }
            Long("plot") => o.plot = Some(p.value()?.into()),
            Long("role") => {
                o.role = Some(match p.value()?.string()?.as_str() {
                    "server" => Role::Server,
                    "client" => Role::Client,
                    r => return Err(format!("unknown role {r:?}").into()),
                });
            }
            Long("listen") => o.listen = p.value()?.string()?,
            Long("first") => o.first = p.value()?.parse()?,
            Long("count") => o.count = p.value()?.parse()?,
            Long("fault") => o.fault = Some(p.value()?.string()?),
            Long("help") | Short('h') => {
                print!("{HELP}");
                std::process::exit(0);
            }
            _ => return Err(arg.unexpected()),
        }
    }
    if o.connections == 0 || o.size == 0 || o.client_threads == 0 {
        return Err("--connections, --size and --client-threads must be at least 1".into());
    }
    if o.server_threads == Some(0) || o.server_processes == Some(0) {
        return Err("--server-threads and --server-processes must be at least 1".into());
    }
    if o.client_processes == Some(0) {
        return Err("--client-processes must be at least 1".into());
    }
    if o.connect.is_some() && o.serve.is_some() {
        return Err("--connect and --serve exclude each other".into());
    }
    Ok(o)
}

fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("stress: {e}\n\n{HELP}");
            return ExitCode::from(2);
        }
    };
    match o.role {
        Some(Role::Server) => server_role(&o),
        Some(Role::Client) => client_role(&o),
        None => orchestrate(o),
    }
}

/// Splits `key=value key=value ... error=free text` into the pairs and the free text.
fn parse_kv(line: &str) -> (HashMap<&str, &str>, Option<&str>) {
    let (head, error) = match line.split_once(" error=") {
        Some((h, e)) => (h, Some(e)),
        None => (line, None),
    };
    let kv = head
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect();
    (kv, error)
}

fn num<T: std::str::FromStr + Default>(kv: &HashMap<&str, &str>, key: &str) -> T {
    kv.get(key).and_then(|v| v.parse().ok()).unwrap_or_default()
}

fn resolve(addr: &str) -> Result<SocketAddr, String> {
    std::net::ToSocketAddrs::to_socket_addrs(addr)
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))
}

// ============================== server role ==============================

fn server_role(o: &Opts) -> ExitCode {
    let threads = o.server_threads.unwrap_or(1);
    let server = match StreamServer::threads(threads).bind(o.listen.as_str(), peers::greenhub_echo)
    {
        Ok(s) => Arc::new(s),
        Err(e) => {
            say!("ERROR cannot listen on {}: {}", o.listen, describe(&e));
            return ExitCode::from(1);
        }
    };
    let base = load::status_kib("self", "VmRSS").unwrap_or(0);
    say!(
        "READY addr={} pid={} rss_kib={base} threads={threads}",
        server.local_addr(),
        std::process::id()
    );
    let reporter = server.clone();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(REPORT);
            let s = reporter.stats();
            say!(
                "STATS active={} peak={} accepted={} backoffs={} bytes={}",
                s.active,
                s.peak,
                s.accepted,
                s.backoffs,
                peers::ECHOED.load(Ordering::Relaxed)
            );
        }
    });
    // Until STOP, or the orchestrator's end (end of file).
    for line in std::io::stdin().lock().lines() {
        match line.as_deref() {
            Ok("STOP") | Err(_) => break,
            Ok(_) => {}
        }
    }
    let killed = server.stop(STOP_GRACE);
    let s = server.stats();
    let per_thread: Vec<String> = server
        .thread_stats()
        .iter()
        .map(|t| t.accepted.to_string())
        .collect();
    say!(
        "FINAL peak={} accepted={} backoffs={} bytes={} killed={killed} rss_base_kib={base} \
         hwm_kib={} cpu_ms={} per_thread={}",
        s.peak,
        s.accepted,
        s.backoffs,
        peers::ECHOED.load(Ordering::Relaxed),
        load::status_kib("self", "VmHWM").unwrap_or(0),
        load::cpu_time("self").unwrap_or_default().as_millis(),
        per_thread.join("/"),
    );
    ExitCode::SUCCESS
}

// ============================== client role ==============================

/// One client process's counters, shared by its hub threads and its reporter.
#[derive(Default)]
struct ClientCounters {
    connected: AtomicU64,
    failed: AtomicU64,
    /// Connections whose connect attempt has ended (either way).
    settled: AtomicU64,
    open: AtomicU64,
    msgs: AtomicU64,
    bytes: AtomicU64,
    corrupted: AtomicU64,
    io_errors: AtomicU64,
    lost: AtomicU64,
    /// Connections whose exchange has ended (either way; failed connects count).
    finished: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientCounters {
    fn error(&self, text: String) {
        let mut e = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        e.get_or_insert(text);
    }

    fn error_suffix(&self) -> String {
        match &*self.first_error.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => format!(" error={e}"),
            None => String::new(),
        }
    }
}

/// What every connection of a client process needs to know.
struct ClientParams {
    addr: SocketAddr,
    count: u64,
    messages: usize,
    size: usize,
    seed: u64,
    /// Bounds each connect.
    io_timeout: Duration,
    /// Exit abruptly after this many messages (fault injection for the tests).
    abort_after: Option<u64>,
    started: Instant,
}

/// The main thread's GO and CLOSE signals to one hub thread. Each is a one-shot channel
/// a greenlet of that hub waits on; while one is outstanding the hub knows that another
/// thread may still wake it (a plain `Event` wait alone would look like "block forever").
type Signals = (ResultSender<()>, ResultSender<()>);

const GO: usize = 0;
const CLOSE: usize = 1;

fn client_role(o: &Opts) -> ExitCode {
    let addr = match o.connect.as_deref().map(resolve) {
        Some(Ok(a)) => a,
        Some(Err(e)) => {
            say!("ERROR {e}");
            return ExitCode::from(1);
        }
        None => {
            say!("ERROR a client needs --connect");
            return ExitCode::from(1);
        }
    };
    let params = Arc::new(ClientParams {
        addr,
        count: o.count as u64,
        messages: o.messages,
        size: o.size,
        seed: o.seed,
        io_timeout: o.timeout.min(Duration::from_secs(60)),
        abort_after: (o.fault.as_deref() == Some("client-abort") && o.first == 0)
            .then_some((o.count * o.messages / 4) as u64),
        started: Instant::now(),
    });
    let counters = Arc::new(ClientCounters::default());
    let threads = o.client_threads.clamp(1, o.count.max(1));
    let (signals_tx, signals_rx) = mpsc::channel::<Signals>();
    let (hist_tx, hist_rx) = mpsc::channel::<Histogram>();
    for t in 0..threads {
        let ids = o.first + t * o.count / threads..o.first + (t + 1) * o.count / threads;
        let (params, counters) = (params.clone(), counters.clone());
        let (signals_tx, hist_tx) = (signals_tx.clone(), hist_tx.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("client-hub-{t}"))
            .spawn(move || client_hub(ids, &params, &counters, &signals_tx, &hist_tx));
        if let Err(e) = spawned {
            say!("ERROR cannot start a client thread: {e}");
            return ExitCode::from(1);
        }
    }
    let (mut go, mut close): (Vec<_>, Vec<_>) = signals_rx.iter().take(threads).unzip();
    // Read (and keep) the file limit now that the hubs have raised it: once the sockets
    // have used it up, reading /proc fails too.
    let _ = load::nofile_limits();
    if o.count == 0 {
        say!("CONNECTED ok=0 failed=0 ms=0");
        say!("DONE msgs=0 bytes=0 corrupted=0 io_errors=0 lost=0 ms=0");
    }
    let reporter = counters.clone();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(REPORT);
            let c = &reporter;
            say!(
                "PROGRESS connected={} failed={} open={} msgs={} bytes={} finished={}",
                c.connected.load(Ordering::Relaxed),
                c.failed.load(Ordering::Relaxed),
                c.open.load(Ordering::Relaxed),
                c.msgs.load(Ordering::Relaxed),
                c.bytes.load(Ordering::Relaxed),
                c.finished.load(Ordering::Relaxed),
            );
        }
    });
    let mut closing = false;
    for line in std::io::stdin().lock().lines() {
        match line.as_deref() {
            Ok("GO") => go.drain(..).for_each(|s| s.send(())),
            Ok("CLOSE") => {
                close.drain(..).for_each(|s| s.send(()));
                closing = true;
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    if !closing {
        // The orchestrator is gone: so are we.
        return ExitCode::from(2);
    }
    let mut hist = Histogram::new();
    for _ in 0..threads {
        match hist_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(h) => hist.merge(&h),
            Err(_) => {
                say!("ERROR a client hub did not close its connections within 30 s");
                return ExitCode::from(1);
            }
        }
    }
    say!(
        "FINAL cpu_ms={} hist={}",
        load::cpu_time("self").unwrap_or_default().as_millis(),
        hist.encode()
    );
    ExitCode::SUCCESS
}

/// One client hub thread: a greenlet per connection in `ids`.
fn client_hub(
    ids: Range<usize>,
    p: &Arc<ClientParams>,
    c: &Arc<ClientCounters>,
    signals_tx: &mpsc::Sender<Signals>,
    hist_tx: &mpsc::Sender<Histogram>,
) {
    let events = [Event::new(), Event::new()];
    let (go_tx, go_rx) = result_channel::<()>();
    let (close_tx, close_rx) = result_channel::<()>();
    let _ = signals_tx.send((go_tx, close_tx));
    for (rx, event) in [
        (go_rx, events[GO].clone()),
        (close_rx, events[CLOSE].clone()),
    ] {
        greenhub::spawn(move || {
            let _ = rx.recv(); // sent, or the main thread gone (Closed): go on either way
            event.set();
        });
    }
    let permits = Rc::new(Semaphore::new(load::CONNECTS_IN_FLIGHT));
    let hist = Rc::new(RefCell::new(Histogram::new()));
    let tasks: Vec<_> = ids
        .map(|id| {
            let (p, c) = (p.clone(), c.clone());
            let (permits, hist, events) = (permits.clone(), hist.clone(), events.clone());
            greenhub::spawn(move || connection(id, &p, &c, &permits, &hist, &events))
        })
        .collect();
    for t in tasks {
        let _ = t.join();
    }
    let _ = hist_tx.send(hist.take());
}

/// One client connection: connect, wait for GO, exchange, wait for CLOSE, close.
fn connection(
    id: usize,
    p: &ClientParams,
    c: &ClientCounters,
    permits: &Semaphore,
    hist: &RefCell<Histogram>,
    events: &[Event; 2],
) {
    let conn = {
        let _permit = permits.acquire();
        load::connect_spread(id, p.addr, p.io_timeout)
    };
    let conn = match conn {
        Ok(s) => {
            c.connected.fetch_add(1, Ordering::Relaxed);
            c.open.fetch_add(1, Ordering::Relaxed);
            Some(s)
        }
        Err(e) => {
            c.failed.fetch_add(1, Ordering::Relaxed);
            c.lost.fetch_add(p.messages as u64, Ordering::Relaxed);
            c.error(format!("connection {id}: connect failed: {}", describe(&e)));
            None
        }
    };
    if c.settled.fetch_add(1, Ordering::AcqRel) + 1 == p.count {
        say!(
            "CONNECTED ok={} failed={} ms={}{}",
            c.connected.load(Ordering::Relaxed),
            c.failed.load(Ordering::Relaxed),
            p.started.elapsed().as_millis(),
            c.error_suffix()
        );
    }
    if let Some(conn) = &conn
        && events[GO].wait().is_ok()
    {
        exchange(id, conn, p, c, hist);
    }
    if c.finished.fetch_add(1, Ordering::AcqRel) + 1 == p.count {
        say!(
            "DONE msgs={} bytes={} corrupted={} io_errors={} lost={} ms={}{}",
            c.msgs.load(Ordering::Relaxed),
            c.bytes.load(Ordering::Relaxed),
            c.corrupted.load(Ordering::Relaxed),
            c.io_errors.load(Ordering::Relaxed),
            c.lost.load(Ordering::Relaxed),
            p.started.elapsed().as_millis(),
            c.error_suffix()
        );
    }
    if conn.is_some() {
        let _ = events[CLOSE].wait();
        drop(conn);
        c.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// "2 server processes x 1 hub".
fn layout(kind: &str, procs: usize, hubs: usize) -> String {
    format!(
        "{procs} {kind} process{} x {hubs} hub{}",
        if procs == 1 { "" } else { "es" },
        if hubs == 1 { "" } else { "s" }
    )
}

/// The per-connection seed: the run's seed mixed with the connection id.
fn conn_seed(seed: u64, id: usize) -> u64 {
    seed ^ (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn exchange(
    id: usize,
    conn: &TcpStream,
    p: &ClientParams,
    c: &ClientCounters,
    hist: &RefCell<Histogram>,
) {
    let mut rng = Rng::new(conn_seed(p.seed, id));
    let mut out = vec![0u8; p.size];
    let mut back = vec![0u8; p.size];
    let (mut sent, mut got) = (Checksum::default(), Checksum::default());
    let _ = conn.set_nodelay(true);
    // No per-call timeouts (a timer per wait costs the client CPU): the orchestrator's
    // deadline bounds the whole run.
    let mut conn = conn;
    for m in 0..p.messages {
        let len = rng.range(1, p.size as u64) as usize;
        rng.fill(&mut out[..len]);
        sent.update(&out[..len]);
        let t = Instant::now();
        let io = conn
            .write_all(&out[..len])
            .and_then(|()| conn.read_exact(&mut back[..len]));
        if let Err(e) = io {
            c.io_errors.fetch_add(1, Ordering::Relaxed);
            c.lost.fetch_add((p.messages - m) as u64, Ordering::Relaxed);
            c.error(format!("connection {id}, message {m}: {}", describe(&e)));
            return;
        }
        hist.borrow_mut().record(t.elapsed());
        got.update(&back[..len]);
        if back[..len] == out[..len] {
            c.bytes.fetch_add(len as u64, Ordering::Relaxed);
            let done = c.msgs.fetch_add(1, Ordering::Relaxed) + 1;
            if p.abort_after == Some(done) {
                std::process::exit(3); // fault injection: die mid-exchange
            }
        } else {
            c.corrupted.fetch_add(1, Ordering::Relaxed);
            c.error(format!(
                "connection {id}, message {m}: the echo differs from what was sent"
            ));
        }
    }
    if sent != got {
        c.corrupted.fetch_add(1, Ordering::Relaxed);
        c.error(format!("connection {id}: the stream checksums differ"));
    }
}

// ============================== orchestrator ==============================

/// How the file limit splits the run.
struct Plan {
    soft: u64,
    hard: u64,
    budget: u64,
    server_procs: usize,
    server_hubs: usize,
    client_procs: usize,
}

fn plan(o: &Opts) -> Plan {
    let (soft, hard) = load::nofile_limits().unwrap_or((1024, 1024));
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20);
    // greenhub raises the soft limit to the hard one when a process starts its first hub.
    let budget = hard.min(nr_open).saturating_sub(load::FD_RESERVE).max(1);
    let n = o.connections as u64;
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let hubs_guess = o.server_threads.unwrap_or(cores) as u64;
    let server_procs = o.server_processes.unwrap_or_else(|| {
        if n + hubs_guess <= budget {
            1
        } else {
            // The kernel's SO_REUSEPORT hash spreads connections binomially: leave 5
            // standard deviations of room on each process.
            (2..)
                .find(|&s| {
                    let per = n as f64 / s as f64;
                    per + 5.0 * per.sqrt() + hubs_guess as f64 <= budget as f64
                })
                .unwrap_or(2)
        }
    });
    let server_hubs = o
        .server_threads
        .unwrap_or_else(|| (cores / server_procs).max(1));
    let client_procs = o
        .client_processes
        .unwrap_or_else(|| n.div_ceil(budget) as usize)
        .max(1);
    Plan {
        soft,
        hard,
        budget,
        server_procs,
        server_hubs,
        client_procs,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Server,
    Client,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Start,
    Connect,
    Barrier,
    Exchange,
    Close,
    Serve,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Start => "start",
            Phase::Connect => "connect",
            Phase::Barrier => "barrier",
            Phase::Exchange => "exchange",
            Phase::Close => "close",
            Phase::Serve => "serve",
        }
    }
}

/// A child process and what it last reported.
struct Proc {
    kind: Kind,
    index: usize,
    child: Child,
    stdin: Option<ChildStdin>,
    ids: Range<usize>,
    addr: Option<String>,
    rss_base: u64,
    /// Last STATS (servers) or PROGRESS (clients), as key=value pairs.
    last: HashMap<String, u64>,
    connected: Option<HashMap<String, u64>>,
    done: Option<HashMap<String, u64>>,
    fin: Option<HashMap<String, String>>,
    error: Option<String>,
    eof: bool,
    status: Option<ExitStatus>,
}

impl Proc {
    fn name(&self) -> String {
        match self.kind {
            Kind::Server => format!("server {}", self.index),
            Kind::Client => format!("client {}", self.index),
        }
    }

    fn get(&self, key: &str) -> u64 {
        self.last.get(key).copied().unwrap_or(0)
    }

    fn send(&mut self, line: &str) {
        if let Some(stdin) = &mut self.stdin {
            let _ = writeln!(stdin, "{line}");
            let _ = stdin.flush();
        }
    }
}

enum Ev {
    Out(usize, String),
    Err(usize, String),
    Eof(usize),
}

/// A sample for the plot.
#[derive(Clone, Copy)]
struct Sample {
    t: f64,
    open: u64,
    msgs: u64,
    bytes: u64,
}

/// Progress on stderr: a bar on a terminal, a plain line a second otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    tty: bool,
    last_line: Instant,
    started: Instant,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            bar: None,
            tty: std::io::stderr().is_terminal(),
            last_line: Instant::now(),
            started: Instant::now(),
        }
    }

    fn phase(&mut self, name: &str, len: u64) {
        self.finish();
        if self.tty {
            let style = indicatif::ProgressStyle::with_template(
                "{prefix:>8} [{elapsed_precise}] [{bar:40.cyan/blue}] {human_pos}/{human_len} {msg}",
            )
            .expect("a valid template")
            .progress_chars("=> ");
            let bar = indicatif::ProgressBar::new(len).with_style(style);
            bar.set_prefix(name.to_string());
            self.bar = Some(bar);
        } else {
            eprintln!("[{:6.1}s] {name} ...", self.started.elapsed().as_secs_f64());
            self.last_line = Instant::now();
        }
    }

    fn update(&mut self, name: &str, pos: u64, len: u64, msg: &str) {
        if let Some(bar) = &self.bar {
            bar.set_position(pos);
            bar.set_message(msg.to_string());
        } else if self.last_line.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "[{:6.1}s] {name}: {}/{} {msg}",
                self.started.elapsed().as_secs_f64(),
                thousands(pos),
                thousands(len)
            );
            self.last_line = Instant::now();
        }
    }

    fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }
}

/// Why a run failed.
struct Failure(String);

struct Run {
    o: Opts,
    plan: Plan,
    exe: PathBuf,
    procs: Vec<Proc>,
    tx: mpsc::Sender<Ev>,
    rx: mpsc::Receiver<Ev>,
    deadline: Instant,
    started: Instant,
    next_sample: Instant,
    samples: Vec<Sample>,
    progress: Progress,
    phase: Phase,
    /// The most connections the servers held at once (sum over processes, sampled).
    peak_open: u64,
    /// The fewest they held while the exchange ran.
    min_open_exchange: Option<u64>,
    /// An external server (--server-pid): its fd count and RSS before the run.
    ext_base: Option<(usize, u64, Duration)>,
    ext_peak_rss: u64,
    /// At the barrier: the servers' count, and since when it has not changed.
    stall: Option<(u64, Instant)>,
}

fn orchestrate(o: Opts) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("stress: cannot find this program's path: {e}");
            return ExitCode::FAILURE;
        }
    };
    let plan = plan(&o);
    let (tx, rx) = mpsc::channel();
    let now = Instant::now();
    let mut run = Run {
        deadline: now + o.timeout,
        o,
        plan,
        exe,
        procs: Vec::new(),
        tx,
        rx,
        started: now,
        next_sample: now + TICK,
        samples: Vec::new(),
        progress: Progress::new(),
        phase: Phase::Start,
        peak_open: 0,
        min_open_exchange: None,
        ext_base: None,
        ext_peak_rss: 0,
        stall: None,
    };
    let result = if run.o.serve.is_some() {
        run.serve()
    } else {
        run.stress()
    };
    run.progress.finish();
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(Failure(why)) => {
            run.kill_all();
            run.progress.finish();
            eprintln!("\nstress: FAILED in phase {}: {why}", run.phase.name());
            // What is known, for scripts (benches/peers/stress_peers.sh).
            println!(
                "RESULT ok=0 connections={} held={} errors={} failed_phase={}",
                run.o.connections,
                run.peak_open,
                run.o.connections as u64 * run.o.messages as u64 - run.client_sum("msgs"),
                run.phase.name()
            );
            ExitCode::FAILURE
        }
    }
}

impl Run {
    fn explain_plan(&self, servers: bool) {
        let p = &self.plan;
        let n = self.o.connections as u64;
        println!(
            "file limit: RLIMIT_NOFILE soft {} / hard {} per process (greenhub raises soft to \
             hard); keeping {} for listeners, pipes and epoll leaves {} sockets per process.",
            p.soft,
            p.hard,
            load::FD_RESERVE,
            thousands(p.budget)
        );
        if servers {
            let why = if p.server_procs == 1 {
                format!("{} connections fit one process", thousands(n))
            } else {
                format!(
                    "{} server sockets + listeners do not fit one process",
                    thousands(n)
                )
            };
            let sharing = if p.server_procs == 1 {
                String::new()
            } else {
                format!(
                    ", sharing one port with SO_REUSEPORT (the kernel spreads connections by \
                     hash: ~{} each)",
                    thousands(n / p.server_procs as u64)
                )
            };
            println!(
                "servers: {why} -> {}{sharing}.",
                layout("server", p.server_procs, p.server_hubs)
            );
        }
        if self.o.serve.is_none() {
            println!(
                "clients: {} client sockets -> {}, ~{} connections each.",
                thousands(n),
                layout("client", p.client_procs, self.o.client_threads),
                thousands(n / p.client_procs as u64)
            );
        }
    }

    fn spawn(&mut self, kind: Kind, args: Vec<String>, ids: Range<usize>) -> Result<(), Failure> {
        let index = self.procs.iter().filter(|p| p.kind == kind).count();
        let mut child = Command::new(&self.exe)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Failure(format!("cannot start a {kind:?} process: {}", describe(&e))))?;
        let i = self.procs.len();
        let (out, err) = (child.stdout.take(), child.stderr.take());
        if let Some(out) = out {
            let tx = self.tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(Ev::Out(i, line)).is_err() {
                        return;
                    }
                }
                let _ = tx.send(Ev::Eof(i));
            });
        }
        if let Some(err) = err {
            let tx = self.tx.clone();
            std::thread::spawn(move || {
                let mut err = err;
                let mut buf = String::new();
                let _ = err.read_to_string(&mut buf);
                for line in buf.lines() {
                    let _ = tx.send(Ev::Err(i, line.to_string()));
                }
            });
        }
        self.procs.push(Proc {
            kind,
            index,
            stdin: child.stdin.take(),
            child,
            ids,
            addr: None,
            rss_base: 0,
            last: HashMap::new(),
            connected: None,
            done: None,
            fin: None,
            error: None,
            eof: false,
            status: None,
        });
        Ok(())
    }

    fn servers(&self) -> impl Iterator<Item = &Proc> {
        self.procs.iter().filter(|p| p.kind == Kind::Server)
    }

    fn clients(&self) -> impl Iterator<Item = &Proc> {
        self.procs.iter().filter(|p| p.kind == Kind::Client)
    }

    fn server_sum(&self, key: &str) -> u64 {
        self.servers().map(|p| p.get(key)).sum()
    }

    /// The sum of the clients' last progress figure `key`, or their final one (DONE).
    fn client_sum(&self, key: &str) -> u64 {
        self.clients()
            .map(|p| {
                let done = p.done.as_ref().and_then(|d| d.get(key).copied());
                p.get(key).max(done.unwrap_or(0))
            })
            .sum()
    }

    fn own_servers(&self) -> bool {
        self.o.connect.is_none()
    }

    /// Connections open now, as the servers count them (or the best proxy there is).
    fn open_now(&self) -> u64 {
        if self.own_servers() {
            self.server_sum("active")
        } else if let (Some(pid), Some((fds, _, _))) = (self.o.server_pid, self.ext_base) {
            load::count_fds(&pid.to_string()).map_or(0, |n| n.saturating_sub(fds) as u64)
        } else {
            self.client_sum("open")
        }
    }

    fn kill_all(&mut self) {
        for p in &mut self.procs {
            if p.status.is_none() {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
    }

    fn handle(&mut self, ev: Ev) -> Result<(), Failure> {
        match ev {
            Ev::Out(i, line) => {
                let p = &mut self.procs[i];
                let (word, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
                let (kv, error) = parse_kv(rest);
                let nums = || {
                    kv.iter()
                        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
                        .collect::<HashMap<String, u64>>()
                };
                match word {
                    "READY" => {
                        p.addr = kv.get("addr").map(|a| a.to_string());
                        p.rss_base = num(&kv, "rss_kib");
                    }
                    "STATS" | "PROGRESS" => p.last = nums(),
                    "CONNECTED" => {
                        p.connected = Some(nums());
                        p.error = error.map(str::to_string);
                    }
                    "DONE" => {
                        p.done = Some(nums());
                        if error.is_some() {
                            p.error = error.map(str::to_string);
                        }
                    }
                    "FINAL" => {
                        p.fin = Some(
                            kv.iter()
                                .map(|(k, v)| (k.to_string(), v.to_string()))
                                .collect(),
                        );
                    }
                    "ERROR" => {
                        let why = format!("{}: {rest}", p.name());
                        p.error = Some(rest.to_string());
                        return Err(Failure(why));
                    }
                    _ => self.progress.println(&format!("[{}] {line}", p.name())),
                }
            }
            Ev::Err(i, line) => {
                let name = self.procs[i].name();
                self.progress.println(&format!("[{name}] {line}"));
            }
            Ev::Eof(i) => {
                let p = &mut self.procs[i];
                p.eof = true;
                // Its stdout is closed: it has exited or is about to.
                let until = Instant::now() + Duration::from_secs(2);
                while p.status.is_none() && Instant::now() < until {
                    match p.child.try_wait() {
                        Ok(Some(s)) => p.status = Some(s),
                        Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                        Err(_) => break,
                    }
                }
                if p.fin.is_none() {
                    return Err(Failure(self.died(i)));
                }
            }
        }
        Ok(())
    }

    /// Words on a child that ended before its FINAL report.
    fn died(&self, i: usize) -> String {
        let p = &self.procs[i];
        let how = match p.status {
            Some(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                (Some(c), _) => format!("exited with status {c}"),
                (None, Some(sig)) => format!("was killed by signal {sig}"),
                _ => format!("ended ({s})"),
            },
            None => "closed its output".to_string(),
        };
        let mut why = format!(
            "{} (pid {}) {how} during the {} phase",
            p.name(),
            p.child.id(),
            self.phase.name()
        );
        match p.kind {
            Kind::Client => {
                let conns = p.ids.len() as u64;
                let expected = conns * self.o.messages as u64;
                let done = p.done.as_ref().map_or(p.get("msgs"), |d| d["msgs"]);
                why += &format!(
                    ": its connections {}..{} ({} connections) are lost; it had reported {} \
                     of their {} messages echoed, so {} messages are lost",
                    p.ids.start,
                    p.ids.end - 1,
                    thousands(conns),
                    thousands(done),
                    thousands(expected),
                    thousands(expected.saturating_sub(done))
                );
            }
            Kind::Server => {
                why += &format!(
                    ": the {} connections it held are lost",
                    thousands(p.get("active"))
                );
            }
        }
        if let Some(e) = &p.error {
            why += &format!(" (it said: {e})");
        }
        why
    }

    fn sample(&mut self) {
        let open = self.open_now();
        let msgs = self.client_sum("msgs");
        let bytes = if self.own_servers() {
            self.server_sum("bytes")
        } else {
            self.client_sum("bytes")
        };
        self.peak_open = self.peak_open.max(open);
        if self.phase == Phase::Exchange {
            self.min_open_exchange = Some(self.min_open_exchange.map_or(open, |m| m.min(open)));
        }
        if let Some(pid) = self.o.server_pid {
            let rss = load::status_kib(&pid.to_string(), "VmRSS").unwrap_or(0);
            self.ext_peak_rss = self.ext_peak_rss.max(rss);
        }
        self.samples.push(Sample {
            t: self.started.elapsed().as_secs_f64(),
            open,
            msgs,
            bytes,
        });
        self.show_progress(open, msgs);
    }

    fn show_progress(&mut self, open: u64, msgs: u64) {
        let n = self.o.connections as u64;
        let total = n * self.o.messages as u64;
        let rate = match self.samples.len() {
            0 | 1 => 0.0,
            k => {
                let (a, b) = (self.samples[k.saturating_sub(6)], self.samples[k - 1]);
                (b.msgs - a.msgs) as f64 / (b.t - a.t).max(1e-3)
            }
        };
        let phase = self.phase;
        match phase {
            Phase::Connect | Phase::Barrier => {
                let connected = self.client_sum("connected");
                let msg = format!("connected; servers hold {}", thousands(open));
                self.progress.update(phase.name(), connected, n, &msg);
            }
            Phase::Exchange => {
                let msg = format!("messages, {} msgs/s", thousands(rate as u64));
                self.progress.update(phase.name(), msgs, total, &msg);
            }
            Phase::Close => {
                let msg = format!("closed; {} still open", thousands(open));
                self.progress
                    .update(phase.name(), n.saturating_sub(open), n, &msg);
            }
            Phase::Serve => {
                let accepted = self.server_sum("accepted");
                let msg = format!(
                    "accepted; {} open (peak {}), {} bytes echoed",
                    thousands(open),
                    thousands(self.peak_open),
                    thousands(self.server_sum("bytes"))
                );
                self.progress.update(phase.name(), accepted, n, &msg);
            }
            Phase::Start => {}
        }
    }

    /// Handles events until `cond` holds; fails at the deadline with `waiting`'s words.
    fn pump(
        &mut self,
        cond: impl Fn(&Run) -> bool,
        waiting: impl Fn(&Run) -> String,
    ) -> Result<(), Failure> {
        loop {
            if cond(self) {
                return Ok(());
            }
            let now = Instant::now();
            if now >= self.deadline {
                return Err(Failure(format!(
                    "the run's deadline ({} s, --timeout) passed while waiting for {}",
                    self.o.timeout.as_secs_f64(),
                    waiting(self)
                )));
            }
            let wait = self
                .next_sample
                .min(self.deadline)
                .saturating_duration_since(now);
            match self.rx.recv_timeout(wait) {
                Ok(ev) => self.handle(ev)?,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(Failure("lost every child's output".to_string()));
                }
            }
            if Instant::now() >= self.next_sample {
                self.next_sample += TICK;
                self.sample();
                self.check_external_server()?;
                self.check_barrier_stall()?;
            }
        }
    }

    /// With `--server-pid`: fails once that process has gone.
    fn check_external_server(&self) -> Result<(), Failure> {
        match self.o.server_pid {
            Some(pid) if !std::path::Path::new(&format!("/proc/{pid}")).exists() => {
                Err(Failure(format!(
                    "the server process {pid} (--server-pid) has exited; it held {} \
                     connections at most",
                    thousands(self.peak_open)
                )))
            }
            _ => Ok(()),
        }
    }

    /// At the barrier: fails when the servers' count has not moved for `BARRIER_STALL`
    /// while connections are missing (they will not come).
    fn check_barrier_stall(&mut self) -> Result<(), Failure> {
        if self.phase != Phase::Barrier {
            self.stall = None;
            return Ok(());
        }
        let open = self.open_now();
        match self.stall {
            Some((count, since)) if count == open => {
                if since.elapsed() >= BARRIER_STALL {
                    let n = self.o.connections as u64;
                    return Err(Failure(format!(
                        "every client connected, but the servers count only {} of {} open \
                         and that has not changed for {} s. The missing connections \
                         completed the TCP handshake in the kernel but were never \
                         accepted: the listen backlog overflowed (the kernel then drops \
                         the handshake's last ACK) or the server stopped accepting{}",
                        thousands(open),
                        thousands(n),
                        BARRIER_STALL.as_secs(),
                        self.server_trouble()
                    )));
                }
            }
            _ => self.stall = Some((open, Instant::now())),
        }
        Ok(())
    }

    fn set_phase(&mut self, phase: Phase, len: u64) {
        self.phase = phase;
        if !matches!(phase, Phase::Barrier | Phase::Start) {
            self.progress.phase(phase.name(), len);
        }
    }

    /// Starts the server processes on `listen`; returns the address they share.
    fn start_servers(&mut self, listen: &str) -> Result<String, Failure> {
        let hubs = self.plan.server_hubs.to_string();
        let args = |listen: &str| {
            vec![
                "--role".into(),
                "server".into(),
                "--listen".into(),
                listen.into(),
                "--server-threads".into(),
                hubs.clone(),
            ]
        };
        self.spawn(Kind::Server, args(listen), 0..0)?;
        self.pump(
            |r| r.procs[0].addr.is_some(),
            |_| "the first server process to listen".to_string(),
        )?;
        let addr = self.procs[0].addr.clone().unwrap_or_default();
        for _ in 1..self.plan.server_procs {
            self.spawn(Kind::Server, args(&addr), 0..0)?;
        }
        self.pump(
            |r| r.servers().all(|p| p.addr.is_some()),
            |_| "the server processes to listen".to_string(),
        )?;
        Ok(addr)
    }

    fn stop_servers(&mut self) -> Result<(), Failure> {
        for p in self.procs.iter_mut().filter(|p| p.kind == Kind::Server) {
            p.send("STOP");
        }
        self.pump(
            |r| r.servers().all(|p| p.fin.is_some() && p.eof),
            |_| "the server processes to stop".to_string(),
        )
    }

    /// The default run: servers, clients, barrier, exchange, close, summary.
    fn stress(&mut self) -> Result<bool, Failure> {
        let n = self.o.connections;
        let m = self.o.messages as u64;
        self.explain_plan(self.own_servers());
        let target = match self.o.connect.clone() {
            Some(a) => {
                resolve(&a).map_err(Failure)?;
                if let Some(pid) = self.o.server_pid {
                    let pid = pid.to_string();
                    let fds = load::count_fds(&pid)
                        .ok_or_else(|| Failure(format!("no process {pid} (--server-pid)")))?;
                    let rss = load::status_kib(&pid, "VmRSS").unwrap_or(0);
                    let cpu = load::cpu_time(&pid).unwrap_or_default();
                    self.ext_base = Some((fds, rss, cpu));
                }
                a
            }
            None => {
                self.set_phase(Phase::Start, 0);
                self.start_servers("127.0.0.1:0")?
            }
        };
        println!(
            "run: {} connections x {} messages of 1..={} bytes to {target}; seed {}; deadline {} s",
            thousands(n as u64),
            m,
            self.o.size,
            self.o.seed,
            self.o.timeout.as_secs_f64()
        );

        // ---- connect ----
        self.set_phase(Phase::Connect, n as u64);
        let t_connect = Instant::now();
        let cp = self.plan.client_procs;
        for c in 0..cp {
            let ids = c * n / cp..(c + 1) * n / cp;
            let mut args: Vec<String> = vec![
                "--role".into(),
                "client".into(),
                "--connect".into(),
                target.clone(),
                "--first".into(),
                ids.start.to_string(),
                "--count".into(),
                ids.len().to_string(),
                "--messages".into(),
                m.to_string(),
                "--size".into(),
                self.o.size.to_string(),
                "--seed".into(),
                self.o.seed.to_string(),
                "--client-threads".into(),
                self.o.client_threads.to_string(),
                "--timeout".into(),
                self.o.timeout.as_secs_f64().to_string(),
            ];
            if let Some(f) = &self.o.fault {
                args.extend(["--fault".into(), f.clone()]);
            }
            self.spawn(Kind::Client, args, ids)?;
        }
        self.pump(
            |r| r.clients().all(|p| p.connected.is_some()),
            |r| {
                format!(
                    "the clients to connect: {} of {} connected{}",
                    thousands(r.client_sum("connected")),
                    thousands(n as u64),
                    r.server_trouble()
                )
            },
        )?;
        let failed: u64 = self
            .clients()
            .map(|p| p.connected.as_ref().map_or(0, |c| c["failed"]))
            .sum();
        if failed > 0 {
            let first = self
                .clients()
                .find_map(|p| p.error.clone())
                .unwrap_or_default();
            return Err(Failure(format!(
                "{} of {} connections could not connect. The first error: {first}",
                thousands(failed),
                thousands(n as u64)
            )));
        }
        // The barrier: every connection is also counted open by the servers.
        self.set_phase(Phase::Barrier, n as u64);
        let counted = self.own_servers() || self.o.server_pid.is_some();
        if counted {
            self.pump(
                |r| r.open_now() >= n as u64,
                |r| {
                    format!(
                        "the servers to count every connection open: they count {} of {}{}",
                        thousands(r.open_now()),
                        thousands(n as u64),
                        r.server_trouble()
                    )
                },
            )?;
        }
        let connect_time = t_connect.elapsed();
        self.sample();

        // ---- exchange ----
        self.set_phase(Phase::Exchange, n as u64 * m);
        self.min_open_exchange = None;
        self.sample();
        let t_go = Instant::now();
        let go_at = self.started.elapsed().as_secs_f64();
        for p in self.procs.iter_mut().filter(|p| p.kind == Kind::Client) {
            p.send("GO");
        }
        self.pump(
            |r| r.clients().all(|p| p.done.is_some()),
            |r| {
                format!(
                    "the exchange: {} of {} messages echoed",
                    thousands(r.client_sum("msgs")),
                    thousands(n as u64 * m)
                )
            },
        )?;
        let exchange_time = t_go.elapsed();
        self.sample(); // still all open: nobody closed yet
        let done_at = self.started.elapsed().as_secs_f64();
        let ext_end = self.o.server_pid.map(|pid| {
            let pid = pid.to_string();
            (
                load::status_kib(&pid, "VmHWM").unwrap_or(0),
                load::cpu_time(&pid).unwrap_or_default(),
            )
        });

        // ---- close ----
        self.set_phase(Phase::Close, n as u64);
        let t_close = Instant::now();
        for p in self.procs.iter_mut().filter(|p| p.kind == Kind::Client) {
            p.send("CLOSE");
        }
        self.pump(
            |r| r.clients().all(|p| p.fin.is_some() && p.eof),
            |_| "the clients to close their connections".to_string(),
        )?;
        if self.own_servers() {
            self.pump(
                |r| r.server_sum("active") == 0,
                |r| {
                    format!(
                        "the servers to see every connection closed: {} still open",
                        thousands(r.server_sum("active"))
                    )
                },
            )?;
            self.stop_servers()?;
        }
        let close_time = t_close.elapsed();
        self.progress.finish();

        // ---- summary ----
        let sum_done = |key: &str| -> u64 {
            self.clients()
                .map(|p| {
                    p.done
                        .as_ref()
                        .and_then(|d| d.get(key).copied())
                        .unwrap_or(0)
                })
                .sum()
        };
        let msgs = sum_done("msgs");
        let bytes = sum_done("bytes");
        let corrupted = sum_done("corrupted");
        let io_errors = sum_done("io_errors");
        let lost = sum_done("lost");
        let mut hist = Histogram::new();
        let mut client_cpu = Duration::ZERO;
        for p in self.clients() {
            let fin = p.fin.as_ref();
            if let Some(h) = fin
                .and_then(|f| f.get("hist"))
                .and_then(|h| Histogram::decode(h))
            {
                hist.merge(&h);
            }
            client_cpu +=
                Duration::from_millis(fin.and_then(|f| f.get("cpu_ms")?.parse().ok()).unwrap_or(0));
        }
        let fin_num = |p: &Proc, key: &str| -> u64 {
            p.fin
                .as_ref()
                .and_then(|f| f.get(key)?.parse().ok())
                .unwrap_or(0)
        };
        let held_min = self.min_open_exchange.unwrap_or(0);
        let errors = corrupted + io_errors + lost + (n as u64 * m).saturating_sub(msgs + lost);
        let mut ok = errors == 0 && msgs == n as u64 * m;
        let msgs_per_s = msgs as f64 / exchange_time.as_secs_f64().max(1e-9);

        let mut rows: Vec<(String, String)> = Vec::new();
        rows.push((
            "connections opened".into(),
            format!(
                "{} ({})",
                thousands(self.client_sum("connected").max(n as u64)),
                layout("client", cp, self.o.client_threads)
            ),
        ));
        let (server_rss, rss_per_conn, server_cpu, server_desc);
        if self.own_servers() {
            let peak_sum: u64 = self.servers().map(|p| fin_num(p, "peak")).sum();
            let accepted: u64 = self.servers().map(|p| fin_num(p, "accepted")).sum();
            let backoffs: u64 = self.servers().map(|p| fin_num(p, "backoffs")).sum();
            let per_proc: Vec<String> = self
                .servers()
                .map(|p| thousands(fin_num(p, "accepted")))
                .collect();
            let held_ok = held_min >= n as u64;
            ok &= held_ok && accepted == n as u64;
            rows.push((
                "peak concurrent connections (servers' count)".into(),
                format!(
                    "{} (sum of processes' peaks {}; accepted {} = {}; {} while the exchange ran{})",
                    thousands(self.peak_open),
                    thousands(peak_sum),
                    thousands(accepted),
                    per_proc.join(" + "),
                    if held_ok {
                        "all held open".to_string()
                    } else {
                        format!("as few as {} held", thousands(held_min))
                    },
                    if backoffs > 0 {
                        format!("; {backoffs} EMFILE back-offs")
                    } else {
                        String::new()
                    }
                ),
            ));
            let hwm: Vec<u64> = self.servers().map(|p| fin_num(p, "hwm_kib")).collect();
            let grown: u64 = self
                .servers()
                .map(|p| fin_num(p, "hwm_kib").saturating_sub(p.rss_base))
                .sum();
            server_rss = hwm.iter().sum::<u64>();
            rss_per_conn = grown as f64 / n as f64;
            server_cpu = Duration::from_millis(self.servers().map(|p| fin_num(p, "cpu_ms")).sum());
            let sizes: Vec<String> = hwm
                .iter()
                .map(|k| format!("{:.1} MiB", *k as f64 / 1024.0))
                .collect();
            server_desc = format!(
                "{} ({})",
                sizes.join(" + "),
                layout("server", self.plan.server_procs, self.plan.server_hubs)
            );
        } else if let (Some((_, base_rss, base_cpu)), Some((hwm, cpu))) = (self.ext_base, ext_end) {
            let held_ok = held_min >= n as u64;
            ok &= held_ok;
            rows.push((
                "peak concurrent connections (server's open fds)".into(),
                format!(
                    "{} ({} while the exchange ran)",
                    thousands(self.peak_open),
                    if held_ok {
                        "all held open".to_string()
                    } else {
                        format!("as few as {} held", thousands(held_min))
                    }
                ),
            ));
            server_rss = hwm.max(self.ext_peak_rss);
            rss_per_conn = server_rss.saturating_sub(base_rss) as f64 / n as f64;
            server_cpu = cpu.saturating_sub(base_cpu);
            server_desc = format!(
                "{:.1} MiB (pid {})",
                server_rss as f64 / 1024.0,
                self.o.server_pid.unwrap_or(0)
            );
        } else {
            server_rss = 0;
            rss_per_conn = f64::NAN;
            server_cpu = Duration::ZERO;
            server_desc = "n/a (external server; pass --server-pid)".into();
        }
        rows.push((
            "messages echoed".into(),
            format!(
                "{} of {} ({} per connection, 1..={} bytes)",
                thousands(msgs),
                thousands(n as u64 * m),
                m,
                self.o.size
            ),
        ));
        rows.push(("bytes echoed".into(), thousands(bytes)));
        rows.push((
            "errors".into(),
            format!("{errors} (corrupted {corrupted}, I/O errors {io_errors}, lost {lost})"),
        ));
        rows.push((
            "round trip p50 / p99 / max".into(),
            format!(
                "{} / {} / {}",
                fmt_dur(hist.quantile(0.5)),
                fmt_dur(hist.quantile(0.99)),
                fmt_dur(hist.quantile(1.0))
            ),
        ));
        rows.push((
            format!(
                "connect time ({} connections, to the barrier)",
                thousands(n as u64)
            ),
            format!("{:.2} s", connect_time.as_secs_f64()),
        ));
        rows.push((
            "exchange time".into(),
            format!(
                "{:.2} s ({} msgs/s)",
                exchange_time.as_secs_f64(),
                thousands(msgs_per_s as u64)
            ),
        ));
        rows.push((
            "close time".into(),
            format!("{:.2} s", close_time.as_secs_f64()),
        ));
        rows.push(("server RSS peak (VmHWM)".into(), server_desc));
        rows.push((
            "server RSS per connection (peak - before connecting)".into(),
            if rss_per_conn.is_nan() {
                "n/a".into()
            } else {
                format!("{rss_per_conn:.1} KiB")
            },
        ));
        rows.push((
            "CPU time (user + system) servers / clients".into(),
            format!(
                "{:.2} s / {:.2} s",
                server_cpu.as_secs_f64(),
                client_cpu.as_secs_f64()
            ),
        ));
        let wall = self.started.elapsed();
        rows.push(("wall time".into(), format!("{:.2} s", wall.as_secs_f64())));

        println!();
        println!("| stress | {} |", if ok { "passed" } else { "FAILED" });
        println!("|---|---|");
        for (k, v) in &rows {
            println!("| {k} | {v} |");
        }
        if let Some(e) = self.clients().find_map(|p| p.error.clone()) {
            println!("\nfirst error: {e}");
        }
        println!(
            "RESULT ok={} connections={} held={} errors={errors} msgs={msgs} bytes={bytes} \
             msgs_per_s={:.0} p50_us={:.0} p99_us={:.0} max_us={:.0} connect_s={:.3} \
             exchange_s={:.3} server_rss_kib={server_rss} rss_per_conn_kib={:.2} \
             server_cpu_s={:.3} client_cpu_s={:.3} wall_s={:.3}",
            u8::from(ok),
            n,
            held_min,
            msgs_per_s,
            hist.quantile(0.5).as_secs_f64() * 1e6,
            hist.quantile(0.99).as_secs_f64() * 1e6,
            hist.quantile(1.0).as_secs_f64() * 1e6,
            connect_time.as_secs_f64(),
            exchange_time.as_secs_f64(),
            rss_per_conn,
            server_cpu.as_secs_f64(),
            client_cpu.as_secs_f64(),
            wall.as_secs_f64(),
        );
        self.write_plot("messages/s", false, &[(go_at, "GO"), (done_at, "CLOSE")]);
        Ok(ok)
    }

    /// Words on server-side trouble for a timeout message (EMFILE back-offs, a short count).
    fn server_trouble(&self) -> String {
        let backoffs = self.server_sum("backoffs");
        if backoffs > 0 {
            format!(
                "; the servers ran out of file slots {backoffs} times (EMFILE): {}",
                load::limit_hint(&std::io::Error::from_raw_os_error(libc::EMFILE))
                    .unwrap_or_default()
            )
        } else {
            String::new()
        }
    }

    /// `--serve`: only the servers, until N connections have come and gone.
    fn serve(&mut self) -> Result<bool, Failure> {
        let n = self.o.connections as u64;
        self.explain_plan(true);
        let listen = self.o.serve.clone().unwrap_or_default();
        self.set_phase(Phase::Start, 0);
        let addr = self.start_servers(&listen)?;
        println!(
            "serving on {addr}; drive it with:\n  cargo run --release --example stress -- \
             --connect {addr} --connections {n}\n(ends when {} connections have come and gone, \
             or after {} s)",
            thousands(n),
            self.o.timeout.as_secs_f64()
        );
        self.set_phase(Phase::Serve, n);
        self.pump(
            |r| r.server_sum("accepted") >= n && r.server_sum("active") == 0,
            |r| {
                format!(
                    "{} connections to come and go: {} accepted, {} open",
                    thousands(n),
                    thousands(r.server_sum("accepted")),
                    thousands(r.server_sum("active"))
                )
            },
        )?;
        self.stop_servers()?;
        self.progress.finish();
        let fin_num = |p: &Proc, key: &str| -> u64 {
            p.fin
                .as_ref()
                .and_then(|f| f.get(key)?.parse().ok())
                .unwrap_or(0)
        };
        let accepted: u64 = self.servers().map(|p| fin_num(p, "accepted")).sum();
        let bytes: u64 = self.servers().map(|p| fin_num(p, "bytes")).sum();
        let grown: u64 = self
            .servers()
            .map(|p| fin_num(p, "hwm_kib").saturating_sub(p.rss_base))
            .sum();
        let hwm: u64 = self.servers().map(|p| fin_num(p, "hwm_kib")).sum();
        let cpu: u64 = self.servers().map(|p| fin_num(p, "cpu_ms")).sum();
        let peak = self.peak_open.max(1);
        println!();
        println!("| serve | |");
        println!("|---|---|");
        println!(
            "| peak concurrent connections (servers' count) | {} |",
            thousands(self.peak_open)
        );
        println!("| connections accepted | {} |", thousands(accepted));
        println!("| bytes echoed | {} |", thousands(bytes));
        println!(
            "| server RSS peak (VmHWM) | {:.1} MiB |",
            hwm as f64 / 1024.0
        );
        println!(
            "| server RSS per connection (at the peak) | {:.1} KiB |",
            grown as f64 / peak as f64
        );
        println!("| server CPU time | {:.2} s |", cpu as f64 / 1000.0);
        self.write_plot("echoed MB/s", true, &[]);
        Ok(true)
    }

    fn plot_path(&self) -> PathBuf {
        if let Some(p) = &self.o.plot {
            return p.clone();
        }
        // <target>/<profile>/examples/stress -> <target>/stress.svg
        let target = self
            .exe
            .parent()
            .filter(|d| d.file_name().is_some_and(|n| n == "examples"))
            .and_then(|d| d.parent()?.parent());
        match target {
            Some(t) => t.join("stress.svg"),
            None => PathBuf::from("stress.svg"),
        }
    }

    fn write_plot(&self, rate_label: &str, bytes_rate: bool, marks: &[(f64, &str)]) {
        let path = self.plot_path();
        match plot(
            &path,
            &self.samples,
            rate_label,
            bytes_rate,
            marks,
            self.o.connections,
        ) {
            Ok(()) => println!("plot: {}", path.display()),
            Err(e) => eprintln!("stress: could not write the plot {}: {e}", path.display()),
        }
    }
}

/// Open connections (left axis) and the message or byte rate (right axis) over time.
fn plot(
    path: &std::path::Path,
    samples: &[Sample],
    rate_label: &str,
    bytes_rate: bool,
    marks: &[(f64, &str)],
    connections: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    // Averaged over RATE_WINDOW samples, plotted at the middle of the window.
    let rates: Vec<(f64, f64)> = samples
        .windows(RATE_WINDOW + 1)
        .map(|w| {
            let (a, b) = (w[0], w[RATE_WINDOW]);
            let dt = (b.t - a.t).max(1e-3);
            let v = if bytes_rate {
                b.bytes.saturating_sub(a.bytes) as f64 / dt / 1e6
            } else {
                b.msgs.saturating_sub(a.msgs) as f64 / dt
            };
            ((a.t + b.t) / 2.0, v)
        })
        .collect();
    let t_max = samples.last().map_or(1.0, |s| s.t).max(0.5);
    let open_max = samples.iter().map(|s| s.open).max().unwrap_or(0).max(1) as f64;
    let rate_max = rates.iter().map(|r| r.1).fold(1.0, f64::max);
    let root = SVGBackend::new(path, (1000, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "greenhub stress: {} connections held open at once",
                thousands(connections as u64)
            ),
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(72)
        .right_y_label_area_size(80)
        .build_cartesian_2d(0.0..t_max, 0.0..open_max * 1.1)?
        .set_secondary_coord(0.0..t_max, 0.0..rate_max * 1.1);
    let count = |v: &f64| thousands(v.max(0.0).round() as u64);
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("open connections")
        .y_label_formatter(&count)
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc(rate_label)
        .y_label_formatter(&count)
        .draw()?;
    let blue = RGBColor(31, 119, 180);
    let red = RGBColor(214, 39, 40);
    chart
        .draw_series(LineSeries::new(
            samples.iter().map(|s| (s.t, s.open as f64)),
            blue.stroke_width(2),
        ))?
        .label("open connections (servers' count)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], blue.stroke_width(2)));
    chart
        .draw_secondary_series(LineSeries::new(rates, red.stroke_width(2)))?
        .label(rate_label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], red.stroke_width(2)));
    for &(t, label) in marks {
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(t, 0.0), (t, open_max * 1.1)],
            BLACK.mix(0.4),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            label.to_string(),
            (t, open_max * 1.05),
            ("sans-serif", 14),
        )))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
