//! Events, queues, channels, semaphores, locks and greenlet-local storage: every rule,
//! including timeouts on each wait, FIFO wake order, close semantics and killed waiters.

mod common;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::DropFlag;
use greenhub::sync::{
    AsyncResult, BoundedSemaphore, Channel, Event, GetError, JoinableQueue, LifoQueue, Local, Lock,
    LockError, PriorityQueue, PutError, Queue, RLock, Semaphore,
};
use greenhub::{Error, Greenlet, JoinHandle, Timeout, joinall, sleep, spawn, with_timeout};

const MS: Duration = Duration::from_millis(1);

/// Lets every ready greenlet run until they are all parked again.
fn settle() {
    for _ in 0..3 {
        sleep(Duration::ZERO);
    }
}

type Log = Rc<RefCell<Vec<u32>>>;

fn log() -> Log {
    Rc::new(RefCell::new(Vec::new()))
}

// ---------------------------------------------------------------- Event

#[test]
fn event_set_clear_and_wait() {
    let e = Event::new();
    assert!(!e.is_set());
    e.set();
    assert!(e.is_set());
    e.wait().unwrap(); // set: no wait
    e.clear();
    assert!(!e.is_set());
    let e2 = e.clone();
    let h = spawn(move || {
        sleep(5 * MS);
        e2.set();
    });
    let t = Instant::now();
    e.wait().unwrap();
    assert!(t.elapsed() >= 4 * MS);
    h.join().unwrap();
}

#[test]
fn event_wakes_every_waiter_in_fifo_order() {
    let e = Event::new();
    let order = log();
    let hs: Vec<_> = (0..5)
        .map(|i| {
            let (e, order) = (e.clone(), order.clone());
            spawn(move || {
                e.wait().unwrap();
                order.borrow_mut().push(i);
            })
        })
        .collect();
    settle();
    assert!(order.borrow().is_empty());
    e.set();
    e.clear(); // the woken waiters still return Ok
    joinall(&hs, None);
    assert_eq!(*order.borrow(), [0, 1, 2, 3, 4]);
    for h in hs {
        h.join().unwrap();
    }
}

#[test]
fn event_wait_timeouts() {
    let e = Event::new();
    let t = Instant::now();
    assert!(matches!(e.wait_timeout(10 * MS), Err(Error::Timeout)));
    assert!(t.elapsed() >= 9 * MS);
    let e2 = e.clone();
    let r = with_timeout(10 * MS, move || e2.wait());
    assert!(matches!(r, Err(Error::Timeout)));
    // Nothing else can set it: the main greenlet is told instead of hanging.
    assert!(matches!(e.wait(), Err(Error::BlockForever)));
}

// ---------------------------------------------------------------- AsyncResult

#[test]
fn async_result_value_reaches_every_getter() {
    let r: AsyncResult<String> = AsyncResult::new();
    assert!(!r.ready() && !r.successful());
    assert!(matches!(r.get_nowait(), Err(Error::Timeout)));
    let getters: Vec<_> = (0..3)
        .map(|_| {
            let r = r.clone();
            spawn(move || r.get().unwrap())
        })
        .collect();
    settle();
    r.set("hello".to_string());
    for g in getters {
        assert_eq!(g.join().unwrap(), "hello");
    }
    assert!(r.ready() && r.successful());
    assert_eq!(r.value().as_deref(), Some("hello"));
    assert_eq!(r.get_nowait().unwrap(), "hello");
}

#[test]
fn async_result_error_is_given_to_getters() {
    let r: AsyncResult<u32> = AsyncResult::new();
    let r2 = r.clone();
    let getter = spawn(move || r2.get());
    settle();
    r.set_error(Error::custom("boom"));
    assert_eq!(getter.join().unwrap().unwrap_err().to_string(), "boom");
    assert!(r.ready() && !r.successful());
    assert_eq!(r.value(), None);

    // A panic payload: every getter sees the message; `take` gives the original.
    let job = spawn(|| -> u32 { panic!("job exploded") });
    let e = job.join().unwrap_err();
    r.set_error(e);
    assert_eq!(r.get().unwrap_err().panic_message(), Some("job exploded"));
    assert_eq!(r.get().unwrap_err().panic_message(), Some("job exploded"));
    let original = r.take().unwrap().unwrap_err();
    assert_eq!(original.panic_message(), Some("job exploded"));
    assert!(!r.ready());
}

#[test]
fn async_result_wait_timeouts() {
    let r: AsyncResult<u8> = AsyncResult::new();
    assert!(matches!(r.get_timeout(5 * MS), Err(Error::Timeout)));
    assert!(matches!(r.wait_timeout(5 * MS), Err(Error::Timeout)));
    let r2 = r.clone();
    assert!(matches!(
        with_timeout(5 * MS, move || r2.wait()),
        Err(Error::Timeout)
    ));
    assert!(matches!(r.get(), Err(Error::BlockForever)));
    let r2 = r.clone();
    spawn(move || r2.set(7));
    assert_eq!(r.get_timeout(Duration::from_secs(5)).unwrap(), 7);
}

// ---------------------------------------------------------------- Queue

#[test]
fn queue_is_fifo_and_unbounded_put_never_waits() {
    let q = Queue::new();
    for i in 0..1000 {
        q.put(i).unwrap();
    }
    assert_eq!(q.len(), 1000);
    assert_eq!(q.capacity(), None);
    assert!(!q.is_full());
    for i in 0..1000 {
        assert_eq!(q.get().unwrap(), i);
    }
    assert!(q.is_empty());
    assert_eq!(q.get_nowait(), Err(GetError::Empty));
}

#[test]
fn lifo_queue_gives_newest_first_and_priority_queue_smallest_first() {
    let q = LifoQueue::new();
    for i in [1, 2, 3] {
        q.put(i).unwrap();
    }
    assert_eq!(q.iter().take(3).collect::<Vec<_>>(), [3, 2, 1]);
    let p = PriorityQueue::bounded(10);
    for i in [5, 1, 4, 2, 3] {
        p.put(i).unwrap();
    }
    p.close();
    assert_eq!(p.iter().collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    assert_eq!(p.get(), Err(GetError::Closed));
}

#[test]
fn bounded_put_waits_while_full_and_nowait_forms_fail() {
    let q = Queue::bounded(2);
    q.put(1).unwrap();
    q.put_nowait(2).unwrap();
    assert!(q.is_full());
    match q.put_nowait(3) {
        Err(PutError::Full(3)) => {}
        other => panic!("expected Full(3), got {other:?}"),
    }
    let t = Instant::now();
    assert!(matches!(
        q.put_timeout(3, 10 * MS),
        Err(PutError::Timeout(3))
    ));
    assert!(t.elapsed() >= 9 * MS);
    let q2 = q.clone();
    let putter = spawn(move || {
        q2.put(3).unwrap(); // waits for room
        q2.len()
    });
    settle();
    assert!(!putter.is_finished());
    assert_eq!(q.get().unwrap(), 1);
    assert_eq!(putter.join().unwrap(), 2);
    assert_eq!(q.iter().take(2).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(q.get_nowait(), Err(GetError::Empty));
}

#[test]
#[should_panic(expected = "capacity must be at least 1")]
fn bounded_zero_is_refused() {
    let _ = Queue::<u8>::bounded(0);
}

#[test]
fn getters_are_served_in_fifo_order() {
    let q = Queue::new();
    let got = Rc::new(RefCell::new(Vec::new()));
    let hs: Vec<_> = (0..4)
        .map(|i| {
            let (q, got) = (q.clone(), got.clone());
            spawn(move || {
                let item = q.get().unwrap();
                got.borrow_mut().push((i, item));
            })
        })
        .collect();
    settle();
    for item in [10, 11, 12, 13] {
        q.put(item).unwrap();
    }
    // A get_nowait from here cannot jump the queue: every item is promised.
    assert_eq!(q.get_nowait(), Err(GetError::Empty));
    joinall(&hs, None);
    assert_eq!(*got.borrow(), [(0, 10), (1, 11), (2, 12), (3, 13)]);
}

#[test]
fn putters_get_room_in_fifo_order() {
    let q = Queue::bounded(1);
    q.put(0).unwrap();
    let hs: Vec<_> = (1..=3)
        .map(|i| {
            let q = q.clone();
            spawn(move || q.put(i).unwrap())
        })
        .collect();
    settle();
    let got: Vec<u32> = (0..4).map(|_| q.get().unwrap()).collect();
    assert_eq!(got, [0, 1, 2, 3]);
    joinall(&hs, None);
}

#[test]
fn queue_get_timeouts() {
    let q: Queue<u8> = Queue::new();
    let t = Instant::now();
    assert_eq!(q.get_timeout(10 * MS), Err(GetError::Timeout));
    assert!(t.elapsed() >= 9 * MS);
    {
        let _scope = Timeout::start(5 * MS);
        assert_eq!(q.get(), Err(GetError::Timeout));
    }
    match q.get() {
        Err(GetError::Other(Error::BlockForever)) => {}
        other => panic!("expected BlockForever, got {other:?}"),
    }
    // Conversions for `?` in code that returns greenhub::Error.
    assert!(matches!(Error::from(GetError::Closed), Error::Closed));
    assert!(matches!(Error::from(PutError::Full(1)), Error::Timeout));
}

#[test]
fn killed_getter_leaves_no_ghost() {
    let q = Queue::new();
    let (qa, qb) = (q.clone(), q.clone());
    let a = spawn(move || qa.get().unwrap());
    let b = spawn(move || qb.get().unwrap());
    settle(); // both wait, a first
    a.kill();
    q.put("item").unwrap();
    assert_eq!(b.join().unwrap(), "item");
    assert!(matches!(a.join(), Err(Error::Killed)));
}

#[test]
fn timed_out_getter_leaves_no_ghost() {
    let q = Queue::new();
    let qa = q.clone();
    let a = spawn(move || qa.get_timeout(5 * MS));
    assert_eq!(a.join().unwrap(), Err(GetError::Timeout));
    let qb = q.clone();
    let b = spawn(move || qb.get().unwrap());
    settle();
    q.put(1).unwrap();
    assert_eq!(b.join().unwrap(), 1);
}

#[test]
fn getter_killed_after_being_handed_an_item_passes_it_on() {
    let q = Queue::new();
    let (qa, qb) = (q.clone(), q.clone());
    let a = spawn(move || qa.get().unwrap());
    let b = spawn(move || qb.get().unwrap());
    settle();
    q.put(42).unwrap(); // promised to `a`, which has not run yet
    a.kill(); // it dies before taking it
    assert_eq!(b.join().unwrap(), 42);
    assert!(q.is_empty());
}

#[test]
fn killed_putter_leaves_no_ghost() {
    let q = Queue::bounded(1);
    q.put(0).unwrap();
    let (qa, qb) = (q.clone(), q.clone());
    let a = spawn(move || qa.put(1).unwrap());
    let b = spawn(move || qb.put(2).unwrap());
    settle();
    a.kill();
    assert_eq!(q.get().unwrap(), 0);
    b.join().unwrap();
    assert_eq!(q.get().unwrap(), 2);
    assert!(q.is_empty());
}

#[test]
fn close_drains_then_reports_closed_to_blocked_and_later_getters() {
    let q = Queue::new();
    let getters: Vec<_> = (0..3)
        .map(|_| {
            let q = q.clone();
            spawn(move || q.get())
        })
        .collect();
    settle();
    q.put(1).unwrap();
    q.close();
    assert!(q.is_closed());
    assert!(matches!(q.put(2), Err(PutError::Closed(2))));
    let results: Vec<_> = getters.into_iter().map(|g| g.join().unwrap()).collect();
    assert_eq!(
        results,
        [Ok(1), Err(GetError::Closed), Err(GetError::Closed)]
    );

    // Items put before close are drained first, by blocked and later getters alike.
    let q = Queue::new();
    for i in 0..3 {
        q.put(i).unwrap();
    }
    q.close();
    q.close(); // twice: nothing more
    assert_eq!(q.get_nowait(), Ok(0));
    assert_eq!(q.iter().collect::<Vec<_>>(), [1, 2]);
    assert_eq!(q.get_nowait(), Err(GetError::Closed));
    assert_eq!(q.get_timeout(MS), Err(GetError::Closed));
}

#[test]
fn close_wakes_blocked_putters_with_their_items() {
    let q = Queue::bounded(1);
    q.put("kept").unwrap();
    let q2 = q.clone();
    let putter = spawn(move || q2.put("refused"));
    settle();
    q.close();
    match putter.join().unwrap() {
        Err(PutError::Closed(item)) => assert_eq!(item, "refused"),
        other => panic!("expected Closed, got {other:?}"),
    }
    assert_eq!(q.get(), Ok("kept"));
    assert_eq!(q.get(), Err(GetError::Closed));
}

#[test]
fn consumers_stop_without_sentinels() {
    let q = Queue::bounded(4);
    let consumers: Vec<_> = (0..3)
        .map(|_| {
            let q = q.clone();
            spawn(move || q.iter().count())
        })
        .collect();
    for i in 0..100 {
        q.put(i).unwrap();
    }
    q.close();
    let total: usize = consumers.into_iter().map(|c| c.join().unwrap()).sum();
    assert_eq!(total, 100);
}

#[test]
fn joinable_queue_join_waits_for_task_done() {
    let q = JoinableQueue::new();
    let done = log();
    let (c, d) = (q.clone(), done.clone());
    spawn(move || {
        while let Ok(item) = c.get() {
            sleep(MS);
            d.borrow_mut().push(item);
            c.task_done();
        }
    });
    for i in 0..5 {
        q.put(i).unwrap();
    }
    assert_eq!(q.unfinished_tasks(), 5);
    assert!(matches!(q.join_timeout(MS), Err(Error::Timeout)));
    q.join().unwrap();
    assert_eq!(*done.borrow(), [0, 1, 2, 3, 4]);
    assert_eq!(q.unfinished_tasks(), 0);
    q.join().unwrap(); // nothing unfinished: at once
    q.close();
}

#[test]
#[should_panic(expected = "task_done() called more times")]
fn task_done_too_often_panics() {
    let q = Queue::new();
    q.put(1).unwrap();
    q.get().unwrap();
    q.task_done();
    q.task_done();
}

// ---------------------------------------------------------------- Channel

#[test]
fn channel_put_waits_for_a_taker_and_get_for_a_putter() {
    let ch = Channel::new();
    let taken = Rc::new(Cell::new(false));
    let (tx, t) = (ch.clone(), taken.clone());
    let putter = spawn(move || {
        tx.put(1).unwrap();
        t.get() // the getter has it by the time put returns
    });
    sleep(5 * MS);
    assert!(!putter.is_finished(), "no taker yet");
    assert_eq!(ch.waiting_putters(), 1);
    assert_eq!(ch.get().unwrap(), 1);
    taken.set(true);
    assert!(putter.join().unwrap());

    let rx = ch.clone();
    let getter = spawn(move || rx.get().unwrap());
    settle();
    assert_eq!(ch.waiting_getters(), 1);
    ch.put_nowait(2).unwrap(); // a getter waits: no wait
    assert_eq!(getter.join().unwrap(), 2);
}

#[test]
fn channel_nowait_forms_and_timeouts() {
    let ch: Channel<u8> = Channel::new();
    assert!(matches!(ch.put_nowait(1), Err(PutError::Full(1))));
    assert_eq!(ch.get_nowait(), Err(GetError::Empty));
    assert!(matches!(
        ch.put_timeout(2, 5 * MS),
        Err(PutError::Timeout(2))
    ));
    assert_eq!(ch.get_timeout(5 * MS), Err(GetError::Timeout));
    assert_eq!(ch.waiting_putters(), 0, "the timed-out putter withdrew");
    let tx = ch.clone();
    spawn(move || tx.put(3).unwrap());
    settle();
    assert_eq!(ch.get_nowait(), Ok(3));
    assert_eq!(ch.get(), Err(GetError::Other(Error::BlockForever)));
}

#[test]
fn channel_is_fifo_on_both_sides_and_skips_killed_waiters() {
    let ch = Channel::new();
    let putters: Vec<_> = (0..3)
        .map(|i| {
            let ch = ch.clone();
            spawn(move || ch.put(i).unwrap())
        })
        .collect();
    settle();
    putters[0].kill();
    assert_eq!(ch.get().unwrap(), 1);
    assert_eq!(ch.get().unwrap(), 2);

    let getters: Vec<_> = (0..3)
        .map(|_| {
            let ch = ch.clone();
            spawn(move || ch.get().unwrap())
        })
        .collect();
    settle();
    getters[0].kill();
    ch.put(10).unwrap();
    ch.put(11).unwrap();
    let getters: Vec<_> = getters.into_iter().skip(1).collect();
    assert_eq!(
        getters
            .into_iter()
            .map(|g| g.join().unwrap())
            .collect::<Vec<_>>(),
        [10, 11]
    );
}

#[test]
fn closing_a_channel_ends_its_getters_and_gives_waiting_putters_their_items_back() {
    let ch = Channel::new();
    let (tx, rx) = (ch.clone(), ch.clone());
    let putter = spawn(move || tx.put("offered"));
    settle();
    let getter = spawn(move || rx.iter().collect::<Vec<_>>());
    sleep(MS);
    let g2 = {
        let ch = ch.clone();
        spawn(move || ch.get())
    };
    settle();
    ch.close();
    assert_eq!(putter.join().unwrap().ok(), Some(()));
    assert_eq!(getter.join().unwrap(), ["offered"]);
    assert_eq!(g2.join().unwrap(), Err(GetError::Closed));
    assert!(matches!(ch.put("late"), Err(PutError::Closed("late"))));

    // A putter still waiting at close gets its item back.
    let ch = Channel::new();
    let tx = ch.clone();
    let putter = spawn(move || tx.put(5));
    settle();
    ch.close();
    assert!(matches!(putter.join().unwrap(), Err(PutError::Closed(5))));
    assert_eq!(ch.get(), Err(GetError::Closed));
}

// ---------------------------------------------------------------- Semaphores and locks

#[test]
fn semaphore_limits_holders_and_serves_waiters_in_order() {
    let sem = Semaphore::new(2);
    let now = Rc::new(Cell::new(0));
    let peak = Rc::new(Cell::new(0));
    let order = log();
    let hs: Vec<_> = (0..6)
        .map(|i| {
            let (sem, now, peak, order) = (sem.clone(), now.clone(), peak.clone(), order.clone());
            spawn(move || {
                let _permit = sem.acquire().unwrap();
                order.borrow_mut().push(i);
                now.set(now.get() + 1);
                peak.set(peak.get().max(now.get()));
                sleep(2 * MS);
                now.set(now.get() - 1);
            })
        })
        .collect();
    joinall(&hs, None);
    assert_eq!(peak.get(), 2);
    assert_eq!(*order.borrow(), [0, 1, 2, 3, 4, 5]);
    assert_eq!(sem.available_permits(), 2);
}

#[test]
fn semaphore_try_timeout_and_manual_release() {
    let sem = Semaphore::new(1);
    let g = sem.try_acquire().unwrap();
    assert!(sem.locked());
    assert!(sem.try_acquire().is_none());
    assert!(matches!(sem.acquire_timeout(5 * MS), Err(Error::Timeout)));
    {
        let _scope = Timeout::start(5 * MS);
        assert!(matches!(sem.acquire(), Err(Error::Timeout)));
    }
    assert!(matches!(sem.acquire(), Err(Error::BlockForever)));
    drop(g);
    sem.acquire().unwrap().forget();
    assert_eq!(sem.available_permits(), 0);
    sem.release();
    sem.release(); // a plain semaphore may grow
    assert_eq!(sem.available_permits(), 2);
}

#[test]
fn killed_semaphore_waiter_leaves_no_ghost() {
    let sem = Semaphore::new(1);
    let held = sem.acquire().unwrap();
    let (sa, sb) = (sem.clone(), sem.clone());
    let a = spawn(move || drop(sa.acquire().unwrap()));
    let b = spawn(move || sb.acquire().map(|_| "got it"));
    settle();
    a.kill();
    drop(held);
    assert_eq!(b.join().unwrap().unwrap(), "got it");
    assert_eq!(sem.available_permits(), 1);

    // Killed after the permit was handed to it, before it ran: the permit goes on.
    let held = sem.acquire().unwrap();
    let (sa, sb) = (sem.clone(), sem.clone());
    let a = spawn(move || drop(sa.acquire().unwrap()));
    let b = spawn(move || sb.acquire().map(|_| "got it"));
    settle();
    drop(held); // hands the permit to `a`
    a.kill();
    assert_eq!(b.join().unwrap().unwrap(), "got it");
    assert_eq!(sem.available_permits(), 1);
}

#[test]
fn bounded_semaphore_refuses_over_release() {
    let sem = BoundedSemaphore::new(2);
    assert_eq!(sem.release(), Err(LockError::OverRelease));
    sem.acquire().unwrap().forget();
    sem.try_acquire().unwrap().forget();
    assert!(sem.locked());
    assert_eq!(sem.release(), Ok(()));
    assert_eq!(sem.release(), Ok(()));
    assert_eq!(sem.release(), Err(LockError::OverRelease));
    assert_eq!(sem.available_permits(), 2);
    let _g = sem.acquire_timeout(MS).unwrap();
    assert_eq!(sem.available_permits(), 1);

    // A permit handed to a waiter that has not run yet is not there to release again.
    let sem = BoundedSemaphore::new(1);
    let held = sem.acquire().unwrap();
    let s = sem.clone();
    let waiter = spawn(move || s.acquire().map(drop));
    settle();
    drop(held); // handed to `waiter`
    assert_eq!(sem.release(), Err(LockError::OverRelease));
    waiter.join().unwrap().unwrap();
    assert_eq!(sem.available_permits(), 1);
    let lock = Lock::new();
    let held = lock.acquire().unwrap();
    let l = lock.clone();
    let waiter = spawn(move || l.acquire().map(drop));
    settle();
    drop(held);
    assert_eq!(lock.release(), Err(LockError::NotLocked));
    waiter.join().unwrap().unwrap();
    assert!(!lock.locked());
}

#[test]
fn lock_excludes_and_is_released_by_a_killed_holder() {
    let lock = Lock::new();
    assert_eq!(lock.release(), Err(LockError::NotLocked));
    let inside = Rc::new(Cell::new(0));
    let hs: Vec<_> = (0..4)
        .map(|_| {
            let (lock, inside) = (lock.clone(), inside.clone());
            spawn(move || {
                let _g = lock.acquire().unwrap();
                inside.set(inside.get() + 1);
                assert_eq!(inside.get(), 1, "one holder at a time");
                sleep(MS);
                inside.set(inside.get() - 1);
            })
        })
        .collect();
    joinall(&hs, None);

    let l2 = lock.clone();
    let holder = spawn(move || {
        let _g = l2.acquire().unwrap();
        sleep(Duration::from_secs(60));
    });
    settle();
    assert!(lock.locked());
    assert!(matches!(lock.acquire_timeout(MS), Err(Error::Timeout)));
    holder.kill(); // its guard unwinds
    assert!(!lock.locked());
    lock.acquire().unwrap().forget();
    assert_eq!(lock.release(), Ok(()));
}

#[test]
fn rlock_is_reentrant_for_its_owner_only() {
    let lock = RLock::new();
    assert_eq!(lock.release(), Err(LockError::NotLocked));
    let a = lock.acquire().unwrap();
    let b = lock.acquire().unwrap();
    assert!(lock.is_owned());
    assert_eq!(lock.owner(), Some(greenhub::getcurrent().id()));
    let other = lock.clone();
    let waiter = spawn(move || {
        assert_eq!(other.release(), Err(LockError::NotOwner));
        assert!(other.try_acquire().is_none());
        assert!(matches!(other.acquire_timeout(MS), Err(Error::Timeout)));
        let _g = other.acquire().unwrap(); // waits for both levels
        other.is_owned()
    });
    sleep(5 * MS);
    drop(b);
    settle();
    assert!(!waiter.is_finished(), "one level still held");
    drop(a);
    assert!(waiter.join().unwrap());
    assert!(!lock.locked());

    // Manual levels.
    lock.acquire().unwrap().forget();
    lock.try_acquire().unwrap().forget();
    assert_eq!(lock.release(), Ok(()));
    assert!(lock.locked());
    assert_eq!(lock.release(), Ok(()));
    assert!(!lock.locked());
}

#[test]
fn rlock_waiters_are_fifo_and_killed_ones_leave_no_ghost() {
    let lock = RLock::new();
    let held = lock.acquire().unwrap();
    let order = log();
    let hs: Vec<_> = (0..4)
        .map(|i| {
            let (lock, order) = (lock.clone(), order.clone());
            spawn(move || {
                let _g = lock.acquire().unwrap();
                order.borrow_mut().push(i);
            })
        })
        .collect();
    settle();
    hs[1].kill();
    drop(held);
    joinall(&hs, None);
    assert_eq!(*order.borrow(), [0, 2, 3]);
    assert!(!lock.locked());
}

// ---------------------------------------------------------------- Local

#[test]
fn local_values_are_per_greenlet() {
    let local = Local::new(|| 1_u32);
    local.set(10);
    let l = local.clone();
    let h = spawn(move || {
        let first = l.get(); // fresh: init()
        l.with_mut(|v| *v += 5);
        sleep(MS);
        (first, l.get(), l.is_set())
    });
    assert_eq!(h.join().unwrap(), (1, 6, true));
    assert_eq!(local.get(), 10);
    assert_eq!(local.replace(11), 10);
    assert_eq!(local.take(), Some(11));
    assert!(!local.is_set());
    assert_eq!(local.take(), None);
    assert_eq!(local.get(), 1);
}

#[test]
fn local_value_is_dropped_when_its_greenlet_ends() {
    let local: Local<Option<DropFlag>> = Local::default();
    let dropped = Rc::new(Cell::new(false));
    let (l, d) = (local.clone(), dropped.clone());
    let h = spawn(move || {
        l.set(Some(DropFlag(d.clone())));
        assert!(!d.get());
    });
    h.join().unwrap();
    assert!(dropped.get(), "dropped before join returned");

    // Killed or panicked: dropped too.
    for kill in [true, false] {
        let dropped = Rc::new(Cell::new(false));
        let (l, d) = (local.clone(), dropped.clone());
        let h: JoinHandle<()> = spawn(move || {
            l.set(Some(DropFlag(d)));
            if !kill {
                panic!("job failed");
            }
            sleep(Duration::from_secs(60));
        });
        settle();
        if kill {
            h.kill();
        }
        assert!(h.join().is_err());
        assert!(dropped.get());
    }
}

#[test]
fn local_values_of_plain_greenlets_are_swept_and_dropping_the_local_drops_all() {
    let local: Local<Option<DropFlag>> = Local::default();
    let flags: Vec<Rc<Cell<bool>>> = (0..200).map(|_| Rc::new(Cell::new(false))).collect();
    for f in &flags {
        let (l, f) = (local.clone(), f.clone());
        let g = Greenlet::new(move |_| {
            l.set(Some(DropFlag(f)));
            Ok(())
        });
        g.switch(()).unwrap();
    }
    let swept = flags.iter().filter(|f| f.get()).count();
    assert!(
        swept >= 100,
        "only {swept} of 200 values of ended greenlets dropped"
    );

    let mine = Rc::new(Cell::new(false));
    local.set(Some(DropFlag(mine.clone())));
    let l = local.clone();
    let theirs = Rc::new(Cell::new(false));
    let t = theirs.clone();
    let parked = spawn(move || {
        l.set(Some(DropFlag(t)));
        drop(l);
        sleep(Duration::from_secs(60));
    });
    settle();
    assert!(!theirs.get());
    drop(local);
    assert!(
        mine.get() && theirs.get(),
        "every value goes with the last handle"
    );
    parked.kill();
}

// ---------------------------------------------------------------- the ported Python example

#[test]
fn producer_consumer_example_puts_gets_and_consumes_on_the_pythons_schedule() {
    let out = common::run_example("producer_consumer", &[], Duration::from_secs(30));
    assert!(out.status.success());
    let out = String::from_utf8(out.stdout).unwrap();
    let mut expected = vec!["put 0".to_string(), "get 0".to_string()];
    for i in 1..5 {
        expected.push(format!("put {i}"));
        expected.push(format!("consumed {}", i - 1));
        expected.push(format!("get {i}"));
    }
    expected.push("consumed 4".into());
    expected.push("done".into());
    let lines: Vec<(&str, f64)> = out
        .lines()
        .map(|l| {
            let (what, at) = l.split_once(" at ").expect("`<event> at <seconds>`");
            (what, at.parse().unwrap())
        })
        .collect();
    assert_eq!(lines.iter().map(|l| l.0).collect::<Vec<_>>(), expected);
    for (what, at) in lines {
        let want = match what.split_whitespace().collect::<Vec<_>>()[..] {
            ["put" | "get", i] => i.parse::<f64>().unwrap() + 1.0,
            ["consumed", i] => i.parse::<f64>().unwrap() + 2.0,
            _ => 6.0,
        };
        assert!((at - want).abs() < 0.3, "{what} at {at}, expected ~{want}");
    }
}
