//! sleep, Timeout and with_timeout.

use std::time::{Duration, Instant};

use greenhub::{Error, Timeout, sleep, spawn, with_timeout};

const MS: Duration = Duration::from_millis(1);

#[test]
fn sleep_sleeps_at_least_the_duration() {
    let t = Instant::now();
    sleep(20 * MS);
    assert!(t.elapsed() >= 20 * MS);
}

#[test]
fn with_timeout_cuts_a_long_wait_short() {
    let t = Instant::now();
    let r = with_timeout(20 * MS, || sleep(Duration::from_secs(10)));
    assert!(matches!(r, Err(Error::Timeout)));
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn with_timeout_passes_through_fast_results() {
    assert_eq!(
        with_timeout(Duration::from_secs(5), || {
            sleep(MS);
            9
        })
        .unwrap(),
        9
    );
}

#[test]
fn inner_timeout_fires_first_and_outer_scope_goes_on() {
    let t = Instant::now();
    let outer = with_timeout(Duration::from_secs(5), || {
        let inner = with_timeout(20 * MS, || sleep(Duration::from_secs(10)));
        assert!(matches!(inner, Err(Error::Timeout)));
        sleep(10 * MS); // the outer scope is still open: this sleep completes
        "outer finished"
    });
    assert_eq!(outer.unwrap(), "outer finished");
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn outer_timeout_fires_inside_a_longer_inner_one() {
    let t = Instant::now();
    let outer = Timeout::start(20 * MS);
    let inner = Timeout::start(Duration::from_secs(10));
    let h = spawn(|| sleep(Duration::from_secs(10)));
    assert!(matches!(
        h.join_timeout(Duration::from_secs(10)),
        Err(Error::Timeout)
    ));
    assert!(outer.fired());
    assert!(!inner.fired(), "the inner deadline has not passed");
    assert!(t.elapsed() < Duration::from_secs(2));
    // Every later blocking call in the expired scope fails at once.
    let t2 = Instant::now();
    assert!(matches!(
        h.join_timeout(Duration::from_secs(10)),
        Err(Error::Timeout)
    ));
    assert!(t2.elapsed() < Duration::from_millis(100));
    drop(inner);
    drop(outer);
    h.kill();
}

#[test]
fn timeout_applies_inside_spawned_greenlets_too() {
    let h = spawn(|| with_timeout(10 * MS, || sleep(Duration::from_secs(10))));
    assert!(matches!(h.join().unwrap(), Err(Error::Timeout)));
}
