//! The hub: spawn, join, kill, panics, block-forever, cross-thread work, thread pool.

mod common;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::DropFlag;
use greenhub::hub::{self, result_channel};
use greenhub::{
    Error, ThreadPool, getcurrent, joinall, killall, sleep, spawn, spawn_blocking, spawn_later,
};

const MS: Duration = Duration::from_millis(1);

#[test]
fn spawned_greenlets_run_concurrently_and_join_returns_results() {
    let t = Instant::now();
    let hs: Vec<_> = (0..20)
        .map(|i| {
            spawn(move || {
                sleep(50 * MS);
                i * 2
            })
        })
        .collect();
    let got: Vec<i32> = hs.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(got, (0..20).map(|i| i * 2).collect::<Vec<_>>());
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "slept concurrently, not 20 x 50 ms"
    );
}

#[test]
fn spawned_greenlet_has_the_hub_as_parent_and_a_name() {
    let h = hub::SpawnBuilder::new().name("named").spawn(|| {
        let me = getcurrent();
        (
            me.name().map(String::from),
            me.parent().unwrap().name().map(String::from),
        )
    });
    assert_eq!(h.name(), Some("named"));
    assert!(h.spawned_at().unwrap().file().ends_with("hub.rs"));
    let (name, parent) = h.join().unwrap();
    assert_eq!(name.as_deref(), Some("named"));
    assert_eq!(parent.as_deref(), Some("hub"));
}

#[test]
fn panic_is_caught_reported_and_returned_and_others_go_on() {
    let other = spawn(|| {
        sleep(10 * MS);
        "still fine"
    });
    let bad = spawn(|| -> u32 { panic!("job exploded") });
    match bad.join() {
        Err(e @ Error::Panicked(_)) => assert_eq!(e.panic_message(), Some("job exploded")),
        other => panic!("expected Panicked, got {other:?}"),
    }
    assert_eq!(other.join().unwrap(), "still fine");
}

#[test]
fn kill_unstarted_greenlet_never_runs_it() {
    let ran = Rc::new(Cell::new(false));
    let r = ran.clone();
    let h = spawn(move || r.set(true));
    h.kill();
    assert!(h.is_finished());
    assert!(matches!(h.join(), Err(Error::Killed)));
    sleep(Duration::ZERO);
    assert!(!ran.get());
}

#[test]
fn kill_sleeping_greenlet_unwinds_it_and_runs_destructors() {
    let dropped = Rc::new(Cell::new(false));
    let after = Rc::new(Cell::new(false));
    let (d, a) = (dropped.clone(), after.clone());
    let h = spawn(move || {
        let _guard = DropFlag(d);
        sleep(Duration::from_secs(30));
        a.set(true);
    });
    sleep(5 * MS); // let it start and park
    let t = Instant::now();
    h.kill();
    assert!(t.elapsed() < Duration::from_secs(1));
    assert!(dropped.get(), "the guard's destructor ran");
    assert!(!after.get());
    h.kill(); // idempotent
    assert!(matches!(h.join(), Err(Error::Killed)));
}

#[test]
fn kill_finished_greenlet_does_nothing() {
    let h = spawn(|| 5);
    sleep(Duration::ZERO);
    assert!(h.is_finished());
    h.kill();
    assert_eq!(h.join().unwrap(), 5);
}

#[test]
fn kill_from_another_greenlet_and_kill_timeout() {
    let victim = Rc::new(spawn(|| sleep(Duration::from_secs(30))));
    let v = victim.clone();
    let killer = spawn(move || v.kill_timeout(Duration::from_secs(5)));
    killer.join().unwrap().unwrap();
    assert!(victim.is_finished());
}

#[test]
fn kill_of_a_greenlet_woken_but_not_yet_run_is_still_delivered() {
    let ran_after = Rc::new(Cell::new(false));
    let r = ran_after.clone();
    let h = spawn(move || {
        sleep(MS);
        r.set(true);
    });
    sleep(Duration::ZERO); // it starts, parks on its timer
    std::thread::sleep(3 * MS); // its timer is due but the hub has not run
    h.kill();
    assert!(matches!(h.join(), Err(Error::Killed)));
    assert!(!ran_after.get());
}

#[test]
fn joinall_with_timeout_reports_who_finished() {
    let jobs: Vec<_> = [10, 20, 2000]
        .into_iter()
        .map(|ms| spawn(move || sleep(ms * MS)))
        .collect();
    let t = Instant::now();
    assert_eq!(joinall(&jobs, Some(Duration::from_millis(200))), 2);
    assert!(t.elapsed() < Duration::from_millis(1000));
    assert!(jobs[0].is_finished() && jobs[1].is_finished() && !jobs[2].is_finished());
    killall(&jobs);
    assert!(jobs.iter().all(|j| j.is_finished()));
}

#[test]
fn join_timeout_times_out_then_join_still_works() {
    let h = spawn(|| {
        sleep(50 * MS);
        "done"
    });
    assert!(matches!(h.join_timeout(5 * MS), Err(Error::Timeout)));
    assert_eq!(h.join().unwrap(), "done");
}

#[test]
fn spawn_later_starts_after_the_delay() {
    let t = Instant::now();
    let h = spawn_later(30 * MS, Instant::now);
    let started = h.join().unwrap();
    assert!(started.duration_since(t) >= 30 * MS);
}

#[test]
fn blocking_forever_is_an_error_not_a_hang() {
    // A greenlet that parks with nothing to wake it: it switches to the hub by hand.
    let stuck = spawn(|| {
        let hub = getcurrent().parent().unwrap();
        let _ = hub.switch(());
    });
    let t = Instant::now();
    assert!(matches!(stuck.join(), Err(Error::BlockForever)));
    assert!(t.elapsed() < Duration::from_secs(1));
}

#[test]
fn sleep_zero_lets_every_ready_greenlet_run_once_in_order() {
    let log = Rc::new(RefCell::new(Vec::new()));
    let hs: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .map(|name| {
            let log = log.clone();
            spawn(move || {
                log.borrow_mut().push(format!("{name}1"));
                sleep(Duration::ZERO);
                log.borrow_mut().push(format!("{name}2"));
            })
        })
        .collect();
    joinall(&hs, None);
    assert_eq!(*log.borrow(), ["a1", "b1", "c1", "a2", "b2", "c2"]);
}

#[test]
fn main_greenlet_sleep_zero_runs_ready_greenlets() {
    let ran = Rc::new(Cell::new(false));
    let r = ran.clone();
    let _h = spawn(move || r.set(true));
    assert!(!ran.get());
    sleep(Duration::ZERO);
    assert!(ran.get());
}

#[test]
fn busy_yielder_does_not_starve_timers() {
    let done = Rc::new(Cell::new(false));
    let d = done.clone();
    let sleeper = spawn(move || {
        sleep(10 * MS);
        d.set(true);
    });
    let t = Instant::now();
    let yielder = spawn(move || {
        while !done.get() && t.elapsed() < Duration::from_secs(5) {
            sleep(Duration::ZERO);
        }
        t.elapsed()
    });
    sleeper.join().unwrap();
    assert!(yielder.join().unwrap() < Duration::from_secs(1));
}

#[test]
fn hub_on_second_thread_runs_independently() {
    let main_hub_sleeper = spawn(|| sleep(Duration::from_secs(30)));
    let other = std::thread::spawn(|| {
        let hs: Vec<_> = (0..10).map(|i| spawn(move || i)).collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum::<i32>()
    })
    .join()
    .unwrap();
    assert_eq!(other, 45);
    main_hub_sleeper.kill();
}

#[test]
fn hub_handle_from_8_threads_delivers_every_job_exactly_once() {
    const THREADS: usize = 8;
    const JOBS: usize = 500;
    let seen: Arc<Vec<AtomicU8>> =
        Arc::new((0..THREADS * JOBS).map(|_| AtomicU8::new(0)).collect());
    let total = Arc::new(AtomicUsize::new(0));
    let handle = hub::handle();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (handle, seen, total) = (handle.clone(), seen.clone(), total.clone());
            std::thread::spawn(move || {
                for j in 0..JOBS {
                    let (seen, total) = (seen.clone(), total.clone());
                    let on = std::thread::current().id();
                    handle.spawn(move || {
                        assert_ne!(std::thread::current().id(), on, "runs on the hub's thread");
                        seen[t * JOBS + j].fetch_add(1, Ordering::Relaxed);
                        total.fetch_add(1, Ordering::Relaxed);
                    });
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while total.load(Ordering::Relaxed) < THREADS * JOBS && Instant::now() < deadline {
        sleep(MS);
    }
    for t in threads {
        t.join().unwrap();
    }
    sleep(10 * MS);
    assert!(
        seen.iter().all(|c| c.load(Ordering::Relaxed) == 1),
        "every job exactly once"
    );
}

#[test]
fn greenlet_waits_for_a_result_from_another_thread() {
    let (tx, rx) = result_channel();
    let ticks = Rc::new(Cell::new(0));
    let t2 = ticks.clone();
    let ticker = spawn(move || {
        for _ in 0..5 {
            sleep(2 * MS);
            t2.set(t2.get() + 1);
        }
    });
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(40));
        tx.send("computed elsewhere");
    });
    assert_eq!(rx.recv().unwrap(), "computed elsewhere");
    assert_eq!(ticks.get(), 5, "the ticker ran while we waited");
    ticker.join().unwrap();
}

#[test]
fn dropped_result_sender_gives_closed() {
    let (tx, rx) = result_channel::<u8>();
    std::thread::spawn(move || drop(tx));
    assert!(matches!(rx.recv(), Err(Error::Closed)));
}

#[test]
fn spawn_blocking_runs_off_thread_and_returns_result_or_panic() {
    let here = std::thread::current().id();
    let there = spawn_blocking(|| std::thread::current().id()).unwrap();
    assert_ne!(here, there);
    let e = spawn_blocking(|| -> u8 { panic!("blocking job failed") }).unwrap_err();
    assert_eq!(e.panic_message(), Some("blocking job failed"));
}

#[test]
fn thread_pool_is_bounded_and_threads_are_named() {
    let pool = ThreadPool::new(2);
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let hs: Vec<_> = (0..6)
        .map(|_| {
            let (pool, running, peak) = (pool.clone(), running.clone(), peak.clone());
            spawn(move || {
                pool.run(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    running.fetch_sub(1, Ordering::SeqCst);
                    std::thread::current().name().unwrap().to_string()
                })
                .unwrap()
            })
        })
        .collect();
    let names: Vec<String> = hs.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(peak.load(Ordering::SeqCst), 2);
    assert!(
        names.iter().all(|n| n.starts_with("greenhub-pool-")),
        "{names:?}"
    );
}

thread_local! {
    static GO: greenhub::Event = greenhub::Event::new();
}

#[test]
fn a_live_hub_handle_counts_as_pending_cross_thread_work() {
    // Only a job posted from another thread can set GO: without counting the handle, the
    // main greenlet's wait would end at once with BlockForever.
    let handle = hub::handle();
    let t = Instant::now();
    let poster = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        handle.spawn(|| GO.with(greenhub::Event::set));
    });
    GO.with(|go| go.wait()).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(50));
    poster.join().unwrap();
}
