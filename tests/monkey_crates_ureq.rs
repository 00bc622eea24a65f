//! ureq, an HTTP client written for blocking `std::net`, unmodified, in greenlets after
//! `greenhub::monkey::patch_all()`: its requests overlap, the hub keeps running other
//! greenlets meanwhile, and a `Timeout` scope cuts a request short at its deadline.
#![cfg(feature = "monkey")]

mod common;
mod monkey_support;

use std::io;
use std::time::{Duration, Instant};

use monkey_support::slow_http::{SlowHttp, body_for};
use monkey_support::{Ticker, assert_ticked, patch, run_bounded};

/// The slow server's pause before each answer.
const LATENCY: Duration = Duration::from_millis(200);
const CLIENTS: usize = 200;

/// GETs `url` with ureq, as any program would, and returns the body.
fn get(url: &str) -> Result<String, ureq::Error> {
    ureq::get(url).call()?.into_body().read_to_string()
}

#[test]
fn ureq_gets_in_200_greenlets_overlap_while_a_ticker_keeps_ticking() {
    let server = SlowHttp::start(LATENCY).unwrap();
    let base = server.url("");
    let (elapsed, ticks, bodies) = run_bounded("200 ureq greenlets", Duration::from_secs(120), {
        move || {
            patch();
            let ticker = Ticker::start();
            let t = Instant::now();
            let jobs: Vec<_> = (0..CLIENTS)
                .map(|i| {
                    let url = format!("{base}/page/{i}");
                    greenhub::spawn(move || get(&url).map_err(|e| e.to_string()))
                })
                .collect();
            let bodies: Vec<_> = jobs.into_iter().map(|j| j.join().unwrap()).collect();
            let elapsed = t.elapsed();
            (elapsed, ticker.stop(), bodies)
        }
    });
    for (i, body) in bodies.iter().enumerate() {
        let body = body
            .as_ref()
            .unwrap_or_else(|e| panic!("GET /page/{i}: {e}"));
        assert!(
            *body == body_for(&format!("/page/{i}")),
            "GET /page/{i}: wrong body"
        );
    }
    eprintln!("{CLIENTS} ureq GETs of {LATENCY:?} each took {elapsed:?}");
    // One after another they take CLIENTS x LATENCY = 40 s; overlapped, one LATENCY and
    // the work of 200 requests. The bound leaves room for a loaded machine.
    assert!(
        elapsed < Duration::from_secs(2),
        "{CLIENTS} GETs of {LATENCY:?} each took {elapsed:?}: they did not overlap"
    );
    assert!(elapsed >= LATENCY, "{elapsed:?}: the server did not pause?");
    assert_ticked("ticker during the ureq GETs", ticks, elapsed);
    assert_eq!(server.served(), CLIENTS as u64);
}

/// The ureq error of a request cut short by a deadline: ureq turns the `TimedOut` I/O
/// error of its socket into its own `Timeout`.
fn is_timeout(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Timeout(_) => true,
        ureq::Error::Io(e) => e.kind() == io::ErrorKind::TimedOut,
        _ => false,
    }
}

/// A GET of `url` inside a `Timeout` of `deadline`: how long it took, whether the scope
/// fired, and the body or (is it a timeout error, the error).
fn get_under_timeout(
    url: &str,
    deadline: Duration,
) -> (Duration, bool, Result<String, (bool, String)>) {
    let t = Instant::now();
    let scope = greenhub::Timeout::start(deadline);
    let r = get(url).map_err(|e| (is_timeout(&e), e.to_string()));
    (t.elapsed(), scope.fired(), r)
}

#[test]
fn timeout_around_a_ureq_call_ends_within_a_tenth_of_its_deadline() {
    const DEADLINE: Duration = Duration::from_millis(1000);
    let server = SlowHttp::start(LATENCY).unwrap();
    // The server would answer after 10 s.
    let url = server.url("/delay/10000/slow");
    let results = run_bounded("ureq under a Timeout", Duration::from_secs(60), move || {
        patch();
        let in_greenlet = {
            let url = url.clone();
            greenhub::spawn(move || get_under_timeout(&url, DEADLINE))
                .join()
                .unwrap()
        };
        // The thread's main greenlet runs the hub while it waits, as the twin API does.
        let in_main = get_under_timeout(&url, DEADLINE);
        [
            ("a spawned greenlet", in_greenlet),
            ("the main greenlet", in_main),
        ]
    });
    for (who, (elapsed, fired, r)) in results {
        eprintln!("ureq under a {DEADLINE:?} Timeout in {who}: {r:?} after {elapsed:?}");
        match r {
            Ok(_) => panic!("{who}: the request outlived its Timeout ({elapsed:?})"),
            Err((timeout, e)) => assert!(timeout, "{who}: not a timeout error: {e}"),
        }
        assert!(fired, "{who}: the Timeout scope did not fire");
        assert!(
            elapsed >= DEADLINE && elapsed <= DEADLINE + DEADLINE / 10,
            "{who}: a {DEADLINE:?} Timeout ended the call after {elapsed:?}"
        );
    }
}

#[test]
fn monkey_download_example_prints_both_timings() {
    let out = common::example_stdout("monkey_download", &[]);
    let seconds = |prefix: &str| -> f64 {
        let line = out
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{out}"));
        assert!(line.contains("Downloaded 160 of 160"), "{line}");
        line.split_whitespace()
            .rev()
            .nth(1)
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no time in `{line}`"))
    };
    let (sequential, greenlets) = (seconds("sequential"), seconds("greenlets"));
    // 160 pages of 10 ms each: 1.6 s or more one after another, about 10 ms overlapped.
    assert!(sequential >= 1.6, "{out}");
    assert!(greenlets * 4.0 < sequential, "{out}");
}
