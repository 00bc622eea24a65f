//! Group and Pool: membership, join, kill, the size limit (asserted from inside the
//! jobs), map / imap / imap_unordered, panics in jobs.

mod common;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use greenhub::pool::GROUP_MAX_HELD;
use greenhub::{Error, Group, Pool, Timeout, sleep, spawn};

const MS: Duration = Duration::from_millis(1);

/// Counts jobs running at once and remembers the peak.
#[derive(Clone, Default)]
struct Gauge {
    now: Rc<Cell<usize>>,
    peak: Rc<Cell<usize>>,
}

impl Gauge {
    fn enter(&self) -> GaugeGuard {
        self.now.set(self.now.get() + 1);
        self.peak.set(self.peak.get().max(self.now.get()));
        GaugeGuard(self.clone())
    }
}

struct GaugeGuard(Gauge);
impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.now.set(self.0.now.get() - 1);
    }
}

#[test]
fn group_tracks_members_and_joins_them() {
    let group = Group::new();
    assert!(group.is_empty());
    let hs: Vec<_> = (0..5_u32)
        .map(|i| {
            group.spawn(move || {
                sleep(i * MS);
                i
            })
        })
        .collect();
    assert_eq!(group.len(), 5);
    group.join(None).unwrap();
    assert!(group.is_empty());
    let got: Vec<u32> = hs.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(got, [0, 1, 2, 3, 4]);
}

#[test]
fn group_join_times_out() {
    let group = Group::new();
    group.spawn(|| sleep(Duration::from_secs(60)));
    let t = Instant::now();
    assert!(matches!(group.join(Some(10 * MS)), Err(Error::Timeout)));
    assert!(t.elapsed() >= 9 * MS);
    {
        let _scope = Timeout::start(5 * MS);
        assert!(matches!(group.join(None), Err(Error::Timeout)));
    }
    group.kill();
    assert!(group.is_empty());
}

#[test]
fn group_kill_kills_running_and_unstarted_members() {
    let group = Group::new();
    let started = Rc::new(Cell::new(0));
    let s = started.clone();
    let running = group.spawn(move || {
        s.set(s.get() + 1);
        sleep(Duration::from_secs(60));
    });
    sleep(MS);
    let s = started.clone();
    let unstarted = group.spawn(move || s.set(s.get() + 1));
    group.kill();
    assert!(group.is_empty());
    assert_eq!(started.get(), 1, "the unstarted member never ran");
    assert!(matches!(running.join(), Err(Error::Killed)));
    assert!(matches!(unstarted.join(), Err(Error::Killed)));
    group.kill_timeout(MS).unwrap(); // empty: nothing to do
}

#[test]
fn member_killed_by_its_handle_leaves_the_group() {
    let pool = Pool::new(1);
    let h = pool.spawn(|| sleep(Duration::from_secs(60))).unwrap();
    assert_eq!(pool.free_count(), 0);
    h.kill();
    assert_eq!(pool.free_count(), 1);
    // Killed before it started: the slot comes back too.
    let h = pool.spawn(|| ()).unwrap();
    h.kill();
    assert_eq!(pool.free_count(), 1);
    assert!(pool.is_empty());
}

#[test]
fn pool_never_runs_more_than_size_jobs() {
    let pool = Pool::new(3);
    let gauge = Gauge::default();
    for i in 0..20_u32 {
        let g = gauge.clone();
        let size = pool.size();
        pool.spawn(move || {
            let _in = g.enter();
            assert!(g.now.get() <= size, "more than {size} jobs at once");
            sleep((i % 4) * MS);
        })
        .unwrap();
        assert!(pool.len() <= 3);
    }
    pool.join(None).unwrap();
    assert_eq!(gauge.peak.get(), 3);
    assert_eq!(pool.free_count(), 3);
}

#[test]
fn pool_spawn_waits_while_full_in_fifo_order() {
    let pool = Pool::new(1);
    let first_started = Instant::now();
    pool.spawn(|| sleep(20 * MS)).unwrap();
    let t = Instant::now();
    assert!(matches!(
        pool.spawn_timeout(5 * MS, || ()),
        Err(Error::Timeout)
    ));
    assert!(t.elapsed() >= 4 * MS);
    let order = Rc::new(RefCell::new(Vec::new()));
    let spawners: Vec<_> = (0..3)
        .map(|i| {
            let (pool, order) = (pool.clone(), order.clone());
            spawn(move || {
                let o = order.clone();
                pool.spawn(move || o.borrow_mut().push(i))
                    .unwrap()
                    .join()
                    .unwrap();
            })
        })
        .collect();
    sleep(MS);
    spawners[1].kill(); // a killed spawner leaves no ghost in the line
    pool.spawn(|| ()).unwrap(); // waits for the first job (and the queued spawners)
    // Measured from the first job's start: on a loaded machine the steps before can
    // take most of its 20 ms.
    assert!(first_started.elapsed() >= 20 * MS);
    pool.join(None).unwrap();
    assert_eq!(*order.borrow(), [0, 2]);
}

#[test]
fn pool_spawn_is_cut_short_by_a_timeout_scope() {
    let pool = Pool::new(1);
    pool.spawn(|| sleep(Duration::from_secs(60))).unwrap();
    let _scope = Timeout::start(5 * MS);
    assert!(matches!(pool.spawn(|| ()), Err(Error::Timeout)));
    drop(_scope);
    pool.kill();
}

#[test]
fn wait_available_returns_the_free_count_once_a_slot_frees_or_times_out() {
    let pool = Pool::new(2);
    assert_eq!(pool.wait_available(None).unwrap(), 2);
    let short_started = Instant::now();
    pool.spawn(|| sleep(10 * MS)).unwrap();
    pool.spawn(|| sleep(Duration::from_secs(60))).unwrap();
    assert_eq!(pool.free_count(), 0);
    assert!(matches!(pool.wait_available(Some(MS)), Err(Error::Timeout)));
    assert_eq!(pool.wait_available(None).unwrap(), 1);
    // From the short job's start: the timed-out wait before can take most of its 10 ms
    // on a loaded machine.
    assert!(short_started.elapsed() >= 10 * MS);
    pool.kill();
}

#[test]
fn map_returns_results_in_input_order() {
    let pool = Pool::new(4);
    let gauge = Gauge::default();
    let g = gauge.clone();
    let results = pool.map(0..10_u32, move |n| {
        let _in = g.enter();
        sleep((10 - n) * MS); // later items finish first
        n * 2
    });
    let results: Vec<u32> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(results, (0..10).map(|n| n * 2).collect::<Vec<_>>());
    assert!(gauge.peak.get() <= 4);
    let squares = Group::new().map(vec![3, 1, 2], |n: i32| n * n);
    assert_eq!(
        squares.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
        [9, 1, 4]
    );
}

#[test]
fn imap_is_ordered_lazy_and_bounded() {
    let pool = Pool::new(4);
    let spawned = Rc::new(Cell::new(0_usize));
    let unread = Rc::new(Cell::new(0_usize));
    let peak_unread = Rc::new(Cell::new(0_usize));
    let gauge = Gauge::default();
    let (s, u, p, g) = (
        spawned.clone(),
        unread.clone(),
        peak_unread.clone(),
        gauge.clone(),
    );
    let results = pool
        .imap(0..30_u32, move |n| {
            let _in = g.enter();
            assert!(g.now.get() <= 4);
            s.set(s.get() + 1);
            u.set(u.get() + 1); // held until the iterator reads it
            p.set(p.get().max(u.get()));
            sleep(((n * 7) % 5) * MS);
            n
        })
        .max_held(6);
    sleep(5 * MS);
    assert_eq!(spawned.get(), 0, "nothing runs before the first next()");
    let mut got = Vec::new();
    for r in results {
        unread.set(unread.get() - 1);
        got.push(r.unwrap());
        sleep(MS / 2); // a slow reader
    }
    assert_eq!(got, (0..30).collect::<Vec<_>>());
    assert!(peak_unread.get() <= 6, "held {} results", peak_unread.get());
    assert!(gauge.peak.get() <= 4);
    assert_eq!(pool.free_count(), 4);
}

#[test]
fn imap_default_bound_is_twice_the_pool_size() {
    let pool = Pool::new(2);
    let started = Rc::new(Cell::new(0));
    let s = started.clone();
    let mut it = pool.imap(0..100, move |n: u32| {
        s.set(s.get() + 1);
        n
    });
    assert_eq!(it.next().unwrap().unwrap(), 0);
    sleep(5 * MS); // the reader dawdles: the feeder stops at the bound
    assert!(started.get() <= 5, "{} started", started.get());
    assert_eq!(it.map(Result::unwrap).sum::<u32>(), (1..100).sum::<u32>());

    let group = greenhub::Group::new();
    let started = Rc::new(Cell::new(0));
    let s = started.clone();
    let mut it = group.imap(0..5000, move |n: u32| {
        s.set(s.get() + 1);
        n
    });
    assert_eq!(it.next().unwrap().unwrap(), 0);
    sleep(5 * MS);
    assert!(
        started.get() <= GROUP_MAX_HELD + 1,
        "{} started",
        started.get()
    );
}

#[test]
fn imap_panic_is_surfaced_at_its_item_and_others_go_on() {
    let pool = Pool::new(3);
    let results: Vec<_> = pool
        .imap(0..6, |n: u32| {
            sleep(MS);
            if n == 3 {
                panic!("item {n} failed");
            }
            n
        })
        .collect();
    assert_eq!(results.len(), 6);
    for (n, r) in results.into_iter().enumerate() {
        match r {
            Ok(v) => assert_eq!(v as usize, n),
            Err(e) => {
                assert_eq!(n, 3);
                assert_eq!(e.panic_message(), Some("item 3 failed"));
            }
        }
    }
    let mapped = pool.map(0..3, |n: u32| {
        if n == 1 {
            panic!("map item failed");
        }
        n
    });
    assert!(mapped[0].is_ok() && mapped[2].is_ok());
    assert!(matches!(mapped[1], Err(Error::Panicked(_))));
}

#[test]
fn imap_unordered_yields_in_completion_order() {
    let pool = Pool::new(5);
    let got: Vec<u32> = pool
        .imap_unordered([40_u32, 10, 30, 0, 20], |ms| {
            sleep(ms * MS);
            ms
        })
        .map(Result::unwrap)
        .collect();
    assert_eq!(got, [0, 10, 20, 30, 40]);
    let group = Group::new();
    let mut all: Vec<u32> = group
        .imap_unordered(0..50, |n: u32| n)
        .max_held(3)
        .map(Result::unwrap)
        .collect();
    all.sort();
    assert_eq!(all, (0..50).collect::<Vec<_>>());
}

#[test]
fn dropping_imap_stops_feeding() {
    let pool = Pool::new(2);
    let started = Rc::new(Cell::new(0));
    let s = started.clone();
    let mut it = pool
        .imap(0..1000, move |n: u32| {
            s.set(s.get() + 1);
            sleep(MS);
            n
        })
        .max_held(4);
    assert_eq!(it.next().unwrap().unwrap(), 0);
    drop(it);
    pool.join(None).unwrap();
    assert!(started.get() <= 6, "{} started", started.get());
}

#[test]
fn imap_input_panic_is_reported_at_the_end() {
    let group = Group::new();
    let input = (0..3_u32).inspect(|&n| {
        if n == 2 {
            panic!("bad input");
        }
    });
    let results: Vec<_> = group.imap(input, |n| n).collect();
    assert_eq!(results.len(), 3);
    assert_eq!(*results[0].as_ref().unwrap(), 0);
    assert_eq!(*results[1].as_ref().unwrap(), 1);
    assert_eq!(
        results[2].as_ref().unwrap_err().panic_message(),
        Some("bad input")
    );
}

#[test]
#[should_panic(expected = "size must be at least 1")]
fn pool_of_zero_is_refused() {
    let _ = Pool::new(0);
}

// ---------------------------------------------------------------- the ported Python examples

#[test]
fn pool_imap_example_prints_bodies_in_url_order() {
    let out = common::example_stdout("pool_imap", &[]);
    assert_eq!(
        out,
        "('got body', 17629)\n('got body', 1270)\n('got body', 46949)\n"
    );
}

#[test]
fn dns_jobs_example_prints_the_addresses() {
    let out = common::example_stdout("dns_jobs", &[]);
    let out = out.trim();
    assert!(
        out.starts_with("['127.0.0.1', ") && out.ends_with(", '127.0.0.1']"),
        "{out}"
    );
}
