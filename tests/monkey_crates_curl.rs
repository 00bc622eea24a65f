//! A C library in greenlets: libcurl (the `curl` crate's bundled static build, so its C
//! code is linked into this binary and its `poll`, `recv` and `send` calls reach the
//! hooks), unmodified, after `greenhub::monkey::patch_all()`.
#![cfg(feature = "monkey")]

mod monkey_support;

use std::time::{Duration, Instant};

use monkey_support::slow_http::{SlowHttp, body_for};
use monkey_support::{Ticker, assert_ticked, patch, run_bounded};

/// The slow server's pause before each answer.
const LATENCY: Duration = Duration::from_millis(200);
const CLIENTS: usize = 100;

/// GETs `url` with libcurl's easy interface; returns the status and the body.
fn fetch(url: &str) -> Result<(u32, Vec<u8>), curl::Error> {
    let mut easy = curl::easy::Easy::new();
    easy.url(url)?;
    let mut body = Vec::new();
    {
        let mut transfer = easy.transfer();
        transfer.write_function(|data| {
            body.extend_from_slice(data);
            Ok(data.len())
        })?;
        transfer.perform()?;
    }
    Ok((easy.response_code()?, body))
}

#[test]
fn libcurl_fetches_in_100_greenlets_take_about_one_request() {
    let server = SlowHttp::start(LATENCY).unwrap();
    let base = server.url("");
    let (one, all, ticks, results) = run_bounded(
        "100 libcurl greenlets",
        Duration::from_secs(120),
        move || {
            patch();
            let ticker = Ticker::start();
            let t = Instant::now();
            let first = {
                let url = format!("{base}/alone");
                greenhub::spawn(move || fetch(&url).map_err(|e| e.to_string()))
                    .join()
                    .unwrap()
            };
            assert_eq!(
                first.as_ref().map(|(code, body)| (*code, body.as_slice())),
                Ok((200, body_for("/alone").as_bytes())),
                "the lone request"
            );
            let one = t.elapsed();
            let t = Instant::now();
            let jobs: Vec<_> = (0..CLIENTS)
                .map(|i| {
                    let url = format!("{base}/curl/{i}");
                    greenhub::spawn(move || fetch(&url).map_err(|e| e.to_string()))
                })
                .collect();
            let results: Vec<_> = jobs.into_iter().map(|j| j.join().unwrap()).collect();
            let all = t.elapsed();
            (one, all, ticker.stop(), results)
        },
    );
    for (i, r) in results.into_iter().enumerate() {
        let (code, body) = r.unwrap_or_else(|e| panic!("curl /curl/{i}: {e}"));
        assert_eq!(code, 200, "/curl/{i}");
        assert!(
            body == body_for(&format!("/curl/{i}")).as_bytes(),
            "/curl/{i}: wrong body"
        );
    }
    eprintln!("libcurl: one request {one:?}; {CLIENTS} in greenlets {all:?}");
    // One after another they would take CLIENTS times as long as one.
    assert!(
        all < one * 10,
        "{CLIENTS} libcurl requests took {all:?}, one takes {one:?}: they did not overlap"
    );
    assert_ticked("ticker during the libcurl requests", ticks, one + all);
    assert_eq!(server.served(), CLIENTS as u64 + 1);
}

#[test]
fn libcurl_own_timeout_fires_in_greenlets_without_blocking_the_hub() {
    // libcurl waits in poll with its own deadline as the timeout.
    const GREENLETS: usize = 50;
    const OWN_TIMEOUT: Duration = Duration::from_millis(500);
    let server = SlowHttp::start(LATENCY).unwrap();
    let url = server.url("/delay/10000/curl-timeout");
    let (results, ticks, elapsed) = run_bounded(
        "libcurl's own timeout",
        Duration::from_secs(120),
        move || {
            patch();
            let ticker = Ticker::start();
            let t = Instant::now();
            let jobs: Vec<_> = (0..GREENLETS)
                .map(|_| {
                    let url = url.clone();
                    greenhub::spawn(move || -> Result<Duration, String> {
                        let mut easy = curl::easy::Easy::new();
                        easy.url(&url).map_err(|e| e.to_string())?;
                        easy.timeout(OWN_TIMEOUT).map_err(|e| e.to_string())?;
                        easy.write_function(|d| Ok(d.len()))
                            .map_err(|e| e.to_string())?;
                        let t = Instant::now();
                        match easy.perform() {
                            Err(e) if e.is_operation_timedout() => Ok(t.elapsed()),
                            other => {
                                Err(format!("not a timeout after {:?}: {other:?}", t.elapsed()))
                            }
                        }
                    })
                })
                .collect();
            let results: Vec<_> = jobs.into_iter().map(|j| j.join().unwrap()).collect();
            let elapsed = t.elapsed();
            (results, ticker.stop(), elapsed)
        },
    );
    for r in results {
        let took = r.unwrap();
        assert!(took >= OWN_TIMEOUT, "libcurl gave up after {took:?}");
    }
    eprintln!("{GREENLETS} libcurl timeouts of {OWN_TIMEOUT:?} ended in {elapsed:?}");
    // One after another: 50 x 0.5 s = 25 s.
    assert!(
        elapsed < OWN_TIMEOUT * 4,
        "{GREENLETS} libcurl timeouts of {OWN_TIMEOUT:?} took {elapsed:?}: they did not overlap"
    );
    assert_ticked("ticker during libcurl's timeouts", ticks, elapsed);
}

#[test]
fn timeout_scope_around_a_libcurl_call_ends_it_at_the_deadline() {
    const DEADLINE: Duration = Duration::from_millis(1000);
    let server = SlowHttp::start(LATENCY).unwrap();
    let url = server.url("/delay/10000/curl-scope");
    let (took, fired, r) = run_bounded(
        "libcurl under a Timeout",
        Duration::from_secs(60),
        move || {
            patch();
            greenhub::spawn(move || {
                let t = Instant::now();
                let scope = greenhub::Timeout::start(DEADLINE);
                let r = fetch(&url)
                    .map(|(code, _)| code)
                    .map_err(|e| format!("{e:?}"));
                (t.elapsed(), scope.fired(), r)
            })
            .join()
            .unwrap()
        },
    );
    eprintln!("libcurl under a {DEADLINE:?} Timeout: {r:?} after {took:?}");
    // poll fails with ETIMEDOUT at the deadline; libcurl reports a failed wait as
    // CURLE_BAD_FUNCTION_ARGUMENT (43), its code for an unrecoverable multi-handle error.
    assert!(r.is_err(), "libcurl's request outlived the Timeout: {r:?}");
    assert!(fired, "the Timeout scope did not fire");
    assert!(
        took >= DEADLINE && took <= DEADLINE + DEADLINE / 10,
        "a {DEADLINE:?} Timeout ended the libcurl call after {took:?}"
    );
}
