//! A client process (`--role client`): connections `--first`.. `--first + --count`, a
//! greenlet each, on `--client-threads` hubs. Each connects, waits for `GO`, exchanges
//! its messages (random sizes and contents from its own seed, every echo checked byte
//! for byte and by a checksum of the whole stream, each round trip timed), waits for
//! `CLOSE`, closes.

use std::cell::RefCell;
use std::io::{BufRead, Read, Write};
use std::net::SocketAddr;
use std::ops::Range;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use greenhub::Semaphore;
use greenhub::hub::{ResultSender, result_channel};
use greenhub::net::TcpStream;
use greenhub::sync::Event;
use greenhub::sync::SemaphoreGuard;

use crate::load::{self, Checksum, Histogram, Rng, describe};
use crate::options::{Opts, resolve};
use crate::protocol::{REPORT, say};

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
    /// Time spent in the `connect` system calls (where Linux picks the local port), ns.
    connect_ns: AtomicU64,
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
    /// Loopback source addresses the connections spread over.
    sources: u32,
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

/// Connects, exchanges and closes on the orchestrator's word; ends with the `FINAL` line.
pub fn run(o: &Opts) -> ExitCode {
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
        sources: o.sources.unwrap_or(load::LOOPBACK_SOURCES),
        io_timeout: o.timeout.min(Duration::from_secs(60)),
        abort_after: (o.fault.as_deref() == Some("client-abort") && o.first == 0)
            .then_some((o.count * o.messages / 4) as u64),
        started: Instant::now(),
    });
    let counters = Arc::new(ClientCounters::default());
    let rss_base = load::status_kib("self", "VmRSS").unwrap_or(0);
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
        say!("CONNECTED ok=0 failed=0 ms=0 connect_us=0");
        say!("DONE msgs=0 bytes=0 corrupted=0 io_errors=0 lost=0 ms=0");
    }
    let reporter = counters.clone();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(REPORT);
            let c = &reporter;
            say!(
                "PROGRESS connected={} failed={} open={} msgs={} bytes={} finished={} \
                 connect_us={}",
                c.connected.load(Ordering::Relaxed),
                c.failed.load(Ordering::Relaxed),
                c.open.load(Ordering::Relaxed),
                c.msgs.load(Ordering::Relaxed),
                c.bytes.load(Ordering::Relaxed),
                c.finished.load(Ordering::Relaxed),
                c.connect_ns.load(Ordering::Relaxed) / 1000,
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
        "FINAL cpu_ms={} rss_base_kib={rss_base} hwm_kib={} hist={}",
        load::cpu_time("self").unwrap_or_default().as_millis(),
        load::status_kib("self", "VmHWM").unwrap_or(0),
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
    // A connection's greenlet starts when a connect slot frees, so that the process
    // grows with the connections made (what the orchestrator's memory estimate sees),
    // not by all its greenlets at once.
    let permits = Semaphore::new(load::CONNECTS_IN_FLIGHT);
    let hist = Rc::new(RefCell::new(Histogram::new()));
    let tasks: Vec<_> = ids
        .map(|id| {
            let permit = permits.acquire().ok();
            let (p, c) = (p.clone(), c.clone());
            let (hist, events) = (hist.clone(), events.clone());
            greenhub::spawn(move || connection(id, &p, &c, permit, &hist, &events))
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
    permit: Option<SemaphoreGuard>,
    hist: &RefCell<Histogram>,
    events: &[Event; 2],
) {
    let conn = {
        let _permit = permit;
        let src = load::spread_source(id, p.sources, p.addr);
        load::connect_from(src, p.addr, p.io_timeout)
    };
    let conn = match conn {
        Ok((s, syscall)) => {
            let ns = u64::try_from(syscall.as_nanos()).unwrap_or(u64::MAX);
            c.connect_ns.fetch_add(ns, Ordering::Relaxed);
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
            "CONNECTED ok={} failed={} ms={} connect_us={}{}",
            c.connected.load(Ordering::Relaxed),
            c.failed.load(Ordering::Relaxed),
            p.started.elapsed().as_millis(),
            c.connect_ns.load(Ordering::Relaxed) / 1000,
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
