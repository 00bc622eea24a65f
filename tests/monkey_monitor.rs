//! Under the hooks, a greenlet blocked in a call they cannot make cooperative (a futex:
//! std's `Mutex`) still blocks its thread, and the monitor still reports it when it keeps
//! another greenlet waiting.
#![cfg(feature = "monkey")]

use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use greenhub::monitor::{self, BlockReport, Config, ThreadActivity};

#[test]
fn a_greenlet_blocked_in_a_std_mutex_is_reported_by_the_monitor() {
    assert!(greenhub::monkey::patch_all());
    let reports: Arc<Mutex<Vec<BlockReport>>> = Arc::default();
    let sink = reports.clone();
    monitor::configure(Config {
        max_blocking_time: Some(Duration::from_millis(100)),
        stderr: true,
        callback: Some(Arc::new(move |r: &BlockReport| {
            sink.lock().unwrap().push(r.clone())
        })),
        ..Config::default()
    });
    let lock = Arc::new(Mutex::new(()));
    let (held_tx, held_rx) = mpsc::channel();
    let (id_tx, id_rx) = mpsc::channel::<u64>();
    let (holder_lock, seen) = (lock.clone(), reports.clone());
    // Holds the lock until the waiting greenlet has been reported (at most 20 s).
    let holder = std::thread::spawn(move || {
        let guard = holder_lock.lock().unwrap();
        held_tx.send(()).unwrap();
        let id = id_rx.recv().unwrap();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20)
            && !seen
                .lock()
                .unwrap()
                .iter()
                .any(|r| r.greenlet_id == id && !r.finished)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(guard);
    });
    held_rx.recv().unwrap();
    // A block is reported when it delays someone: this greenlet's timer falls due while
    // the waiter holds the thread.
    let ticker = greenhub::spawn(|| {
        loop {
            greenhub::sleep(Duration::from_millis(20));
        }
    });
    let waiter = greenhub::hub::SpawnBuilder::new()
        .name("mutex-waiter")
        .spawn(move || drop(lock.lock().unwrap()));
    let id = waiter.id();
    id_tx.send(id).unwrap();
    waiter.join().unwrap();
    holder.join().unwrap();
    ticker.kill();
    monitor::configure(Config::default());
    let reports = reports.lock().unwrap();
    let r = reports
        .iter()
        .find(|r| r.greenlet_id == id && !r.finished)
        .expect("the blocked greenlet was reported");
    assert_eq!(r.greenlet_name.as_deref(), Some("mutex-waiter"));
    match &r.activity {
        ThreadActivity::Syscall { name, .. } => assert!(name.contains("futex"), "{r}"),
        other => panic!("expected the futex system call, got {other:?}: {r}"),
    }
}
