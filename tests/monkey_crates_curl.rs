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
