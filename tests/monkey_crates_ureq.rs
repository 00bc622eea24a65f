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
fn ureq_agents_keep_their_connections_alive_across_requests_in_greenlets() {
    // ureq checks a pooled connection before reusing it: it switches the socket to
    // non-blocking mode, expects `WouldBlock` from a read, and switches it back — on a
    // socket that the hooks already made non-blocking in the kernel.
    const AGENTS: usize = 4;
    const REQUESTS: usize = 5;
    let server = SlowHttp::start(LATENCY).unwrap();
    let base = server.url("");
    let (results, ticks, elapsed) = run_bounded(
        "ureq agents with keep-alive",
        Duration::from_secs(60),
        move || {
            patch();
            let ticker = Ticker::start();
            let t = Instant::now();
            let jobs: Vec<_> = (0..AGENTS)
                .map(|a| {
                    let base = base.clone();
                    greenhub::spawn(move || -> Result<(), String> {
                        let agent = ureq::agent();
                        for r in 0..REQUESTS {
                            let path = format!("/delay/100/agent/{a}/{r}");
                            let body = agent
                                .get(format!("{base}{path}"))
                                .call()
                                .and_then(|resp| resp.into_body().read_to_string())
                                .map_err(|e| format!("GET {path}: {e}"))?;
                            if body != body_for(&path) {
                                return Err(format!("GET {path}: wrong body"));
                            }
                        }
                        Ok(())
                    })
                })
                .collect();
            let results: Vec<_> = jobs.into_iter().map(|j| j.join().unwrap()).collect();
            let elapsed = t.elapsed();
            (results, ticker.stop(), elapsed)
        },
    );
    for r in results {
        r.unwrap();
    }
    assert_eq!(server.served(), (AGENTS * REQUESTS) as u64);
    assert_eq!(
        server.connections(),
        AGENTS as u64,
        "each agent should have made one connection and reused it"
    );
    // Each agent's requests run one after another (5 x 100 ms); the agents overlap (all
    // 20 one after another would take 2 s).
    assert!(
        elapsed < Duration::from_millis(1500),
        "{AGENTS} agents x {REQUESTS} requests of 100 ms took {elapsed:?}"
    );
    assert_ticked("ticker during the keep-alive GETs", ticks, elapsed);
}

#[test]
fn ureq_own_timeout_fires_in_greenlets_without_blocking_the_hub() {
    // ureq's own deadline for the response: it sets SO_RCVTIMEO on its socket and
    // expects the read to give up with EAGAIN, as Linux's blocking read does. (Not its
    // global timeout: that one also bounds name resolution, which ureq then does on a
    // thread of its own and waits for on a std channel, a futex that blocks the hub.)
    const GREENLETS: usize = 50;
    const OWN_TIMEOUT: Duration = Duration::from_millis(500);
    let server = SlowHttp::start(LATENCY).unwrap();
    let url = server.url("/delay/10000/own-timeout");
    let (results, ticks, elapsed) =
        run_bounded("ureq's own timeout", Duration::from_secs(120), move || {
            patch();
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_recv_response(Some(OWN_TIMEOUT))
                .build()
                .into();
            let ticker = Ticker::start();
            let t = Instant::now();
            let jobs: Vec<_> = (0..GREENLETS)
                .map(|_| {
                    let (agent, url) = (agent.clone(), url.clone());
                    greenhub::spawn(move || {
                        let t = Instant::now();
                        let r = agent.get(&url).call().map(|_| ());
                        (t.elapsed(), r.map_err(|e| (is_timeout(&e), e.to_string())))
                    })
                })
                .collect();
            let results: Vec<_> = jobs.into_iter().map(|j| j.join().unwrap()).collect();
            let elapsed = t.elapsed();
            (results, ticker.stop(), elapsed)
        });
    for (took, r) in &results {
        match r {
            Ok(()) => panic!("a request outlived ureq's {OWN_TIMEOUT:?} timeout ({took:?})"),
            Err((timeout, e)) => assert!(timeout, "not a timeout: {e}"),
        }
        assert!(*took >= OWN_TIMEOUT, "timed out early, after {took:?}");
    }
    eprintln!("{GREENLETS} ureq requests with a {OWN_TIMEOUT:?} timeout ended in {elapsed:?}");
    // One after another: 50 x 0.5 s = 25 s.
    assert!(
        elapsed < OWN_TIMEOUT * 4,
        "{GREENLETS} timeouts of {OWN_TIMEOUT:?} took {elapsed:?}: they did not overlap"
    );
    assert_ticked("ticker during ureq's own timeouts", ticks, elapsed);
}

#[test]
fn ureq_gets_by_host_name_resolve_without_blocking_the_hub() {
    // `localhost` goes through getaddrinfo, which the hooks run on greenhub's thread pool.
    const GREENLETS: usize = 50;
    let server = SlowHttp::start(LATENCY).unwrap();
    let port = server.addr().port();
    let (bodies, ticks, elapsed) =
        run_bounded("ureq GETs by name", Duration::from_secs(60), move || {
            patch();
            let ticker = Ticker::start();
            let t = Instant::now();
            let jobs: Vec<_> = (0..GREENLETS)
                .map(|i| {
                    greenhub::spawn(move || {
                        get(&format!("http://localhost:{port}/named/{i}"))
                            .map_err(|e| e.to_string())
                    })
                })
                .collect();
            let bodies: Vec<_> = jobs.into_iter().map(|j| j.join().unwrap()).collect();
            let elapsed = t.elapsed();
            (bodies, ticker.stop(), elapsed)
        });
    for (i, body) in bodies.into_iter().enumerate() {
        assert!(
            body.unwrap_or_else(|e| panic!("GET /named/{i}: {e}"))
                == body_for(&format!("/named/{i}")),
            "GET /named/{i}: wrong body"
        );
    }
    assert!(
        elapsed < Duration::from_secs(2),
        "{GREENLETS} GETs of {LATENCY:?} by name took {elapsed:?}: they did not overlap"
    );
    assert_ticked("ticker during the GETs by name", ticks, elapsed);
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
