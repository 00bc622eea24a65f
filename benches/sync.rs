//! Queue costs against tokio `current_thread` + `tokio::sync::mpsc` and may (one worker)
//! + `may::sync::mpsc`, in the same run:
//!
//! - ping-pong: two greenlets (tasks, coroutines) bounce a `u64` over two queues, either
//!   unbounded (`Queue::new`, `mpsc::unbounded_channel`, may's `mpsc::channel`) or
//!   bounded to `CAPACITY` (`Queue::bounded`, `mpsc::channel`; may 0.3 has no bounded
//!   channel, so that row has no may figure);
//! - fan-out: one producer feeds 100 consumers through one queue of capacity 100 (tokio:
//!   the usual `Arc<tokio::sync::Mutex<mpsc::Receiver>>` shared by the consumers; may has
//!   no bounded channel, so greenhub and tokio only).
//!
//! greenhub and tokio run on the bench's main thread; may runs on its worker (unpinned),
//! inside a coroutine that the main thread joins, so its messages stay on one thread.
//!
//! Run: `cargo bench --bench sync` (`-- --quick` for a short run). Figures are ns per
//! message, medians over rounds that interleave the peers in a rotating order; prints a
//! table and `BENCH <name> <value> <unit>` lines.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use greenhub::monitor::{self, Config};
use greenhub::sync::Queue;
use greenhub::{joinall, spawn};

#[path = "../examples/support/stats.rs"]
mod stats;
use stats::{median, ns_per};

const PINGPONG: u64 = 200_000;
const FANOUT: u64 = 1_000_000;
const CONSUMERS: usize = 100;
const CAPACITY: usize = 100;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Peer {
    Greenhub,
    Tokio,
    May,
}

const PEERS: [Peer; 3] = [Peer::Greenhub, Peer::Tokio, Peer::May];

/// The peers in the order of round `round`: each one goes first in turn.
fn rotated(round: usize) -> impl Iterator<Item = Peer> {
    (0..PEERS.len()).map(move |i| PEERS[(round + i) % PEERS.len()])
}

/// A ping-pong over two queues (`bounded`: of capacity `CAPACITY`), `PINGPONG` round trips.
fn greenhub_pingpong(bounded: bool) -> Duration {
    let queue = || {
        if bounded {
            Queue::bounded(CAPACITY)
        } else {
            Queue::new()
        }
    };
    let (ping, pong) = (queue(), queue());
    let (ping2, pong2) = (ping.clone(), pong.clone());
    let echo = spawn(move || {
        while let Ok(v) = ping2.get() {
            pong2.put(v).unwrap();
        }
    });
    let t = Instant::now();
    let player = spawn(move || {
        for i in 0..PINGPONG {
            ping.put(i).unwrap();
            black_box(pong.get().unwrap());
        }
        ping.close();
    });
    player.join().unwrap();
    let elapsed = t.elapsed();
    echo.join().unwrap();
    elapsed
}

fn greenhub_fanout() -> Duration {
    let q = Queue::bounded(CAPACITY);
    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|_| {
            let q = q.clone();
            spawn(move || q.iter().map(black_box).count() as u64)
        })
        .collect();
    let t = Instant::now();
    let producer = spawn(move || {
        for i in 0..FANOUT {
            q.put(i).unwrap();
        }
        q.close();
    });
    producer.join().unwrap();
    joinall(&consumers, None);
    let elapsed = t.elapsed();
    let total: u64 = consumers.into_iter().map(|c| c.join().unwrap()).sum();
    assert_eq!(total, FANOUT);
    elapsed
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

fn tokio_pingpong(rt: &tokio::runtime::Runtime, bounded: bool) -> Duration {
    use tokio::sync::mpsc;
    rt.block_on(async {
        if bounded {
            let (ping_tx, mut ping_rx) = mpsc::channel::<u64>(CAPACITY);
            let (pong_tx, mut pong_rx) = mpsc::channel::<u64>(CAPACITY);
            let echo = tokio::spawn(async move {
                while let Some(v) = ping_rx.recv().await {
                    pong_tx.send(v).await.unwrap();
                }
            });
            let t = Instant::now();
            let player = tokio::spawn(async move {
                for i in 0..PINGPONG {
                    ping_tx.send(i).await.unwrap();
                    black_box(pong_rx.recv().await.unwrap());
                }
            });
            player.await.unwrap();
            let elapsed = t.elapsed();
            echo.await.unwrap();
            return elapsed;
        }
        let (ping_tx, mut ping_rx) = mpsc::unbounded_channel::<u64>();
        let (pong_tx, mut pong_rx) = mpsc::unbounded_channel::<u64>();
        let echo = tokio::spawn(async move {
            while let Some(v) = ping_rx.recv().await {
                pong_tx.send(v).unwrap();
            }
        });
        let t = Instant::now();
        let player = tokio::spawn(async move {
            for i in 0..PINGPONG {
                ping_tx.send(i).unwrap();
                black_box(pong_rx.recv().await.unwrap());
            }
        });
        player.await.unwrap();
        let elapsed = t.elapsed();
        echo.await.unwrap();
        elapsed
    })
}

/// Runs `f` in a may coroutine (on may's worker) and waits for it on this thread.
///
/// may's `go!` wraps its `unsafe fn spawn`: a may coroutine may move between worker
/// threads, so it must not hold a thread-local across a switch. The coroutines of this
/// bench touch no thread-locals, and with one worker they never move.
fn in_may<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    may::go!(f).join().expect("the may coroutine panicked")
}

/// The unbounded ping-pong on may's channels (may has no bounded one).
fn may_pingpong() -> Duration {
    in_may(|| {
        let (ping_tx, ping_rx) = may::sync::mpsc::channel::<u64>();
        let (pong_tx, pong_rx) = may::sync::mpsc::channel::<u64>();
        let echo = may::go!(move || {
            while let Ok(v) = ping_rx.recv() {
                pong_tx.send(v).unwrap();
            }
        });
        let t = Instant::now();
        let player = may::go!(move || {
            for i in 0..PINGPONG {
                ping_tx.send(i).unwrap();
                black_box(pong_rx.recv().unwrap());
            }
        });
        player.join().unwrap();
        let elapsed = t.elapsed();
        echo.join().unwrap();
        elapsed
    })
}

fn pingpong(peer: Peer, rt: &tokio::runtime::Runtime, bounded: bool) -> Option<Duration> {
    match peer {
        Peer::Greenhub => Some(greenhub_pingpong(bounded)),
        Peer::Tokio => Some(tokio_pingpong(rt, bounded)),
        Peer::May if bounded => None,
        Peer::May => Some(may_pingpong()),
    }
}

fn tokio_fanout(rt: &tokio::runtime::Runtime) -> Duration {
    rt.block_on(async {
        let (tx, rx) = tokio::sync::mpsc::channel::<u64>(CAPACITY);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let consumers: Vec<_> = (0..CONSUMERS)
            .map(|_| {
                let rx = rx.clone();
                tokio::spawn(async move {
                    let mut n = 0_u64;
                    loop {
                        let v = rx.lock().await.recv().await;
                        match v {
                            Some(v) => {
                                black_box(v);
                                n += 1;
                            }
                            None => return n,
                        }
                    }
                })
            })
            .collect();
        let t = Instant::now();
        let producer = tokio::spawn(async move {
            for i in 0..FANOUT {
                tx.send(i).await.unwrap();
            }
        });
        producer.await.unwrap();
        let mut total = 0;
        for c in consumers {
            total += c.await.unwrap();
        }
        let elapsed = t.elapsed();
        assert_eq!(total, FANOUT);
        elapsed
    })
}

fn fmt_ns(v: f64) -> String {
    if v.is_nan() {
        "—".to_string()
    } else {
        format!("{v:.1}")
    }
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_nan() || b.is_nan() {
        "—".to_string()
    } else {
        format!("{:.2}x", a / b)
    }
}

fn main() {
    may::config().set_workers(1);
    may::config().set_worker_pin(false);
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
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, fanout_rounds) = if quick { (3, 1) } else { (9, 3) };
    let rt = tokio_rt();
    // [unbounded, bounded][peer]
    let mut pp: [[Vec<f64>; 3]; 2] = Default::default();
    for peer in PEERS {
        pingpong(peer, &rt, false); // warm
    }
    for round in 0..rounds {
        for (b, bounded) in [false, true].into_iter().enumerate() {
            for peer in rotated(round) {
                if let Some(d) = pingpong(peer, &rt, bounded) {
                    pp[b][peer as usize].push(ns_per(d, 2 * PINGPONG));
                }
            }
        }
    }
    let mut gh_fo = vec![];
    let mut tk_fo = vec![];
    for round in 0..fanout_rounds {
        if round % 2 == 0 {
            gh_fo.push(ns_per(greenhub_fanout(), FANOUT));
            tk_fo.push(ns_per(tokio_fanout(&rt), FANOUT));
        } else {
            tk_fo.push(ns_per(tokio_fanout(&rt), FANOUT));
            gh_fo.push(ns_per(greenhub_fanout(), FANOUT));
        }
    }
    let pp = pp.map(|row| row.map(median));
    let (gh_fo, tk_fo) = (median(gh_fo), median(tk_fo));
    let (g, t, m) = (
        Peer::Greenhub as usize,
        Peer::Tokio as usize,
        Peer::May as usize,
    );

    println!(
        "Medians of {rounds} interleaved rounds ({fanout_rounds} for the fan-out), ns per message."
    );
    println!();
    println!(
        "| figure (ns per message) | greenhub Queue | tokio mpsc | may mpsc | greenhub / tokio | greenhub / may |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (b, name) in [
        "ping-pong, unbounded".to_string(),
        format!("ping-pong, bounded ({CAPACITY})"),
    ]
    .iter()
    .enumerate()
    {
        let v = pp[b];
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            fmt_ns(v[g]),
            fmt_ns(v[t]),
            fmt_ns(v[m]),
            ratio(v[g], v[t]),
            ratio(v[g], v[m])
        );
    }
    println!(
        "| 1 producer -> {CONSUMERS} consumers, capacity {CAPACITY} | {gh_fo:.1} | {tk_fo:.1} | — | {:.2}x | |",
        gh_fo / tk_fo
    );
    println!(
        "(the monitor, on in this process, saw the main thread busy in tokio or may {} times)",
        reports.load(Ordering::Relaxed)
    );
    println!();
    for (b, key) in ["unbounded", "bounded"].iter().enumerate() {
        let v = pp[b];
        for (peer, name) in [(g, "greenhub"), (t, "tokio"), (m, "may")] {
            if !v[peer].is_nan() {
                println!("BENCH sync_pingpong_{key}_{name} {:.1} ns", v[peer]);
            }
        }
        println!("BENCH sync_pingpong_{key}_ratio_tokio {:.2} x", v[g] / v[t]);
        if !v[m].is_nan() {
            println!("BENCH sync_pingpong_{key}_ratio_may {:.2} x", v[g] / v[m]);
        }
    }
    println!("BENCH sync_fanout100_greenhub {gh_fo:.1} ns");
    println!("BENCH sync_fanout100_tokio {tk_fo:.1} ns");
    println!("BENCH sync_fanout100_ratio_tokio {:.2} x", gh_fo / tk_fo);
}
