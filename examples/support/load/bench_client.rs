//! The closed-loop echo client of `benches/echo.rs`.

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use greenhub::Semaphore;
use greenhub::net::TcpStream;

use super::connect::{CONNECTS_IN_FLIGHT, connect_spread};
use super::histogram::Histogram;
use super::limits::describe;
use super::rng::Rng;

/// What [`bench_client`] measured.
#[derive(Debug, Default)]
pub struct BenchResult {
    /// Round trips completed in the measuring window.
    pub requests: u64,
    pub secs: f64,
    pub hist: Histogram,
    pub errors: u64,
    pub first_error: Option<String>,
}

/// Opens `conns` connections to `addr` (all before any sends), then each connection
/// echoes `size`-byte messages back to back (one outstanding per connection) for
/// `warmup + measure`; counts and times the round trips that complete in the measuring
/// window. Runs on this thread's hub, one greenlet per connection.
pub fn bench_client(
    addr: SocketAddr,
    conns: usize,
    size: usize,
    warmup: Duration,
    measure: Duration,
) -> io::Result<BenchResult> {
    let permits = Rc::new(Semaphore::new(CONNECTS_IN_FLIGHT));
    let connectors: Vec<_> = (0..conns)
        .map(|i| {
            let permits = permits.clone();
            greenhub::spawn(move || -> io::Result<TcpStream> {
                let _permit = permits
                    .acquire()
                    .map_err(|e| io::Error::other(e.to_string()))?;
                let s = connect_spread(i, addr, Duration::from_secs(20))?;
                s.set_nodelay(true)?;
                Ok(s)
            })
        })
        .collect();
    let mut streams = Vec::with_capacity(conns);
    for c in connectors {
        streams.push(c.join().map_err(|e| io::Error::other(e.to_string()))??);
    }
    let start = Instant::now() + warmup;
    let end = start + measure;
    let result = Rc::new(RefCell::new(BenchResult::default()));
    let requests = Rc::new(Cell::new(0u64));
    let workers: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            let (result, requests) = (result.clone(), requests.clone());
            greenhub::spawn(move || {
                let mut out = vec![0u8; size];
                Rng::new(i as u64).fill(&mut out);
                let mut back = vec![0u8; size];
                let mut hist = Histogram::new();
                let mut n = 0;
                let outcome = (|| -> io::Result<()> {
                    loop {
                        let t = Instant::now();
                        s.write_all(&out)?;
                        s.read_exact(&mut back)?;
                        let now = Instant::now();
                        if back != out {
                            return Err(io::Error::other("echo differs from what was sent"));
                        }
                        if now >= end {
                            return Ok(());
                        }
                        // Throughput counts the round trips that complete in the
                        // window (whenever they started): with thousands of
                        // connections a round trip can take longer than the window.
                        if now >= start {
                            hist.record(now - t);
                            n += 1;
                        }
                    }
                })();
                let mut r = result.borrow_mut();
                r.hist.merge(&hist);
                requests.set(requests.get() + n);
                if let Err(e) = outcome {
                    r.errors += 1;
                    r.first_error.get_or_insert_with(|| describe(&e));
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let mut r = Rc::try_unwrap(result)
        .map_err(|_| io::Error::other("a worker still holds the result"))?
        .into_inner();
    r.requests = requests.get();
    r.secs = measure.as_secs_f64();
    Ok(r)
}
