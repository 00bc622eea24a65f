//! Queue costs (issue 6) against tokio `current_thread` + `tokio::sync::mpsc`, same run:
//!
//! - ping-pong: two greenlets (tasks) bounce a message over two unbounded queues;
//! - fan-out: one producer feeds 100 consumers through one queue of capacity 100 (tokio:
//!   the usual `Arc<tokio::sync::Mutex<mpsc::Receiver>>` shared by the consumers).
//!
//! Run: `cargo bench --bench sync`. Figures are ns per message, best of `ROUNDS` rounds;
//! prints a table and `BENCH <name> <value> <unit>` lines.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use greenhub::sync::Queue;
use greenhub::{joinall, spawn};

const ROUNDS: usize = 7;
const PINGPONG: u64 = 200_000;
const FANOUT: u64 = 1_000_000;
const CONSUMERS: usize = 100;
const CAPACITY: usize = 100;

/// Best ns per message over `ROUNDS` rounds of `round`, which moves `messages` messages.
fn best_ns(messages: u64, mut round: impl FnMut() -> Duration) -> f64 {
    (0..ROUNDS)
        .map(|_| round().as_secs_f64() * 1e9 / messages as f64)
        .fold(f64::INFINITY, f64::min)
}

fn greenhub_pingpong() -> Duration {
    let (ping, pong) = (Queue::new(), Queue::new());
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

fn tokio_pingpong(rt: &tokio::runtime::Runtime) -> Duration {
    rt.block_on(async {
        let (ping_tx, mut ping_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let (pong_tx, mut pong_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
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

fn main() {
    let rt = tokio_rt();
    // Interleave the peers round by round, so that machine noise hits both alike.
    let mut gh_pp = f64::INFINITY;
    let mut tk_pp = f64::INFINITY;
    let mut gh_fo = f64::INFINITY;
    let mut tk_fo = f64::INFINITY;
    for _ in 0..ROUNDS {
        gh_pp = gh_pp.min(best_ns(2 * PINGPONG, greenhub_pingpong));
        tk_pp = tk_pp.min(best_ns(2 * PINGPONG, || tokio_pingpong(&rt)));
    }
    for _ in 0..2 {
        gh_fo = gh_fo.min(best_ns(FANOUT, greenhub_fanout));
        tk_fo = tk_fo.min(best_ns(FANOUT, || tokio_fanout(&rt)));
    }
    println!("| figure (ns per message) | greenhub | tokio mpsc | ratio |");
    println!("|---|---:|---:|---:|");
    println!(
        "| ping-pong, 2 greenlets / tasks | {gh_pp:.1} | {tk_pp:.1} | {:.2}x |",
        gh_pp / tk_pp
    );
    println!(
        "| 1 producer -> {CONSUMERS} consumers, capacity {CAPACITY} | {gh_fo:.1} | {tk_fo:.1} | {:.2}x |",
        gh_fo / tk_fo
    );
    println!("BENCH sync_pingpong_greenhub {gh_pp:.1} ns");
    println!("BENCH sync_pingpong_tokio {tk_pp:.1} ns");
    println!("BENCH sync_pingpong_ratio {:.2} x", gh_pp / tk_pp);
    println!("BENCH sync_fanout100_greenhub {gh_fo:.1} ns");
    println!("BENCH sync_fanout100_tokio {tk_fo:.1} ns");
    println!("BENCH sync_fanout100_ratio {:.2} x", gh_fo / tk_fo);
}
