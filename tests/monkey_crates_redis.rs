//! The `redis` crate's synchronous client, unmodified, in greenlets after
//! `greenhub::monkey::patch_all()`, against a real `redis-server` that the test starts on
//! a free loopback port (`.ci/run` installs it): 500 greenlets wait in `BLPOP` at once,
//! each on its own connection, while another greenlet pushes.
#![cfg(feature = "monkey")]

mod monkey_support;

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use monkey_support::{Ticker, assert_ticked, assert_ticked_within, patch, run_bounded};

const WAITERS: usize = 500;
/// The `BLPOP` timeout, in seconds: far past the test's own expectations, short enough
/// that a run whose pusher never ran still ends.
const BLPOP_SECS: u32 = 30;

/// A `redis-server` child without persistence on a free loopback port, killed on drop
/// (a failing test unwinds through the drop too).
struct RedisServer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl RedisServer {
    fn start() -> RedisServer {
        // A port that was free a moment ago; redis-server fails to start if it was taken
        // since, and the wait below says so.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let dir =
            std::env::temp_dir().join(format!("greenhub-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--protected-mode", "no", "--loglevel", "warning"])
            .args(["--maxclients", "2000"])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}): .ci/run installs it with apt-get")
            });
        let mut server = RedisServer { child, port, dir };
        server.wait_ready();
        server
    }

    /// Waits until the server answers `PING` (plain blocking std on this test thread).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("redis-server exited at start: {status}");
            }
            let pong = TcpStream::connect(("127.0.0.1", self.port)).and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.write_all(b"PING\r\n")?;
                let mut buf = [0u8; 7];
                s.read_exact(&mut buf)?;
                Ok(buf)
            });
            if matches!(pong, Ok(b) if &b == b"+PONG\r\n") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} does not answer PING: {pong:?}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `blocked_clients` from `INFO clients`.
fn blocked_clients(con: &mut redis::Connection) -> redis::RedisResult<usize> {
    let info: String = redis::cmd("INFO").arg("clients").query(con)?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("blocked_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

#[test]
fn redis_blpop_in_500_greenlets_all_receive_while_a_ticker_keeps_ticking() {
    let server = RedisServer::start();
    let url = server.url();
    let (popped, peak_blocked, ticks, elapsed) =
        run_bounded("500 BLPOP greenlets", Duration::from_secs(180), move || {
            patch();
            let client = redis::Client::open(url).unwrap();
            let ticker = Ticker::start();
            let t = Instant::now();
            let waiters: Vec<_> = (0..WAITERS)
                .map(|i| {
                    let client = client.clone();
                    greenhub::spawn(move || -> redis::RedisResult<Option<(String, String)>> {
                        let mut con = client.get_connection()?;
                        redis::cmd("BLPOP")
                            .arg(format!("key:{i}"))
                            .arg(BLPOP_SECS)
                            .query(&mut con)
                    })
                })
                .collect();
            let pusher = greenhub::spawn(move || -> redis::RedisResult<usize> {
                let mut con = client.get_connection()?;
                // Push once every waiter is blocked in the server (or after 60 s: then
                // the peak shows how many were).
                let mut peak = 0;
                let deadline = Instant::now() + Duration::from_secs(60);
                while peak < WAITERS && Instant::now() < deadline {
                    peak = peak.max(blocked_clients(&mut con)?);
                    greenhub::sleep(Duration::from_millis(10));
                }
                for i in 0..WAITERS {
                    redis::cmd("RPUSH")
                        .arg(format!("key:{i}"))
                        .arg(format!("value:{i}"))
                        .query::<usize>(&mut con)?;
                }
                Ok(peak)
            });
            let popped: Vec<_> = waiters
                .into_iter()
                .map(|w| w.join().unwrap().map_err(|e| e.to_string()))
                .collect();
            let peak = pusher.join().unwrap().map_err(|e| e.to_string());
            let elapsed = t.elapsed();
            (popped, peak, ticker.stop(), elapsed)
        });
    for (i, got) in popped.into_iter().enumerate() {
        let got = got.unwrap_or_else(|e| panic!("BLPOP key:{i}: {e}"));
        assert_eq!(
            got,
            Some((format!("key:{i}"), format!("value:{i}"))),
            "BLPOP key:{i}"
        );
    }
    let peak_blocked = peak_blocked.unwrap();
    eprintln!("{WAITERS} BLPOPs: {peak_blocked} blocked in redis at once; all done in {elapsed:?}");
    assert_eq!(
        peak_blocked, WAITERS,
        "not every greenlet was waiting in BLPOP at the same time"
    );
    // 500 connects become ready in one round of the hub: tens of milliseconds of honest
    // work (17-33 ms idle, 71 ms on a loaded machine), while one BLPOP that blocked the
    // hub would hold it for BLPOP_SECS.
    assert_ticked_within(
        "ticker during the BLPOPs",
        ticks,
        elapsed,
        Duration::from_millis(250),
    );
    drop(server);
}

#[test]
fn redis_read_timeout_in_greenlets_ends_their_blpop_without_blocking_the_hub() {
    // The client's own read timeout is SO_RCVTIMEO on its socket: the blocked read must
    // give up with EAGAIN after it, as Linux's does, while the other greenlets run.
    const GREENLETS: usize = 50;
    const READ_TIMEOUT: Duration = Duration::from_millis(500);
    let server = RedisServer::start();
    let url = server.url();
    let (results, ticks, elapsed) = run_bounded(
        "BLPOP under a read timeout",
        Duration::from_secs(120),
        move || {
            patch();
            let client = redis::Client::open(url).unwrap();
            let ticker = Ticker::start();
            let t = Instant::now();
            let jobs: Vec<_> = (0..GREENLETS)
                .map(|i| {
                    let client = client.clone();
                    greenhub::spawn(move || -> Result<(Duration, String), String> {
                        let mut con = client.get_connection().map_err(|e| e.to_string())?;
                        con.set_read_timeout(Some(READ_TIMEOUT))
                            .map_err(|e| e.to_string())?;
                        let t = Instant::now();
                        // Nobody pushes to this key; redis would wait 10 s.
                        let r: redis::RedisResult<Option<(String, String)>> = redis::cmd("BLPOP")
                            .arg(format!("never:{i}"))
                            .arg(10)
                            .query(&mut con);
                        match r {
                            Err(e) if e.is_timeout() => Ok((t.elapsed(), e.to_string())),
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
        let (took, e) = r.unwrap();
        assert!(
            took >= READ_TIMEOUT,
            "the read gave up after {took:?} ({e})"
        );
    }
    eprintln!("{GREENLETS} BLPOPs with a {READ_TIMEOUT:?} read timeout ended in {elapsed:?}");
    // One after another: 50 x 0.5 s = 25 s.
    assert!(
        elapsed < READ_TIMEOUT * 4,
        "{GREENLETS} read timeouts of {READ_TIMEOUT:?} took {elapsed:?}: they did not overlap"
    );
    assert_ticked("ticker during the read timeouts", ticks, elapsed);
    drop(server);
}

#[test]
fn killing_a_greenlet_blocked_in_redis_blpop_fails_the_call_and_lands_after_it() {
    let server = RedisServer::start();
    let url = server.url();
    let (blpop, after_blpop, unwound, kill_took, reconnect) =
        run_bounded("kill during BLPOP", Duration::from_secs(60), move || {
            patch();
            let client = redis::Client::open(url).unwrap();
            let blpop = Rc::new(RefCell::new(None::<String>));
            let after_blpop = Rc::new(RefCell::new(false));
            let unwound = Rc::new(RefCell::new(false));
            let victim = {
                let (client, blpop, after, unwound) = (
                    client.clone(),
                    blpop.clone(),
                    after_blpop.clone(),
                    unwound.clone(),
                );
                greenhub::spawn(move || {
                    struct OnUnwind(Rc<RefCell<bool>>);
                    impl Drop for OnUnwind {
                        fn drop(&mut self) {
                            *self.0.borrow_mut() = std::thread::panicking();
                        }
                    }
                    let _guard = OnUnwind(unwound);
                    let mut con = client.get_connection().unwrap();
                    let r: redis::RedisResult<Option<(String, String)>> =
                        redis::cmd("BLPOP").arg("killed").arg(30).query(&mut con);
                    *blpop.borrow_mut() = Some(format!("{r:?}"));
                    // The kill lands here, at the next greenhub switch point.
                    greenhub::sleep(Duration::from_secs(5));
                    *after.borrow_mut() = true;
                })
            };
            greenhub::sleep(Duration::from_millis(300)); // the victim waits in BLPOP
            let t = Instant::now();
            victim.kill_timeout(Duration::from_secs(10)).unwrap();
            let kill_took = t.elapsed();
            // The hub goes on: a new connection on this thread works.
            let reconnect = greenhub::spawn(move || -> redis::RedisResult<String> {
                let mut con = client.get_connection()?;
                redis::cmd("PING").query(&mut con)
            })
            .join()
            .unwrap()
            .map_err(|e| e.to_string());
            let blpop = blpop.borrow().clone();
            let after = *after_blpop.borrow();
            let unwound = *unwound.borrow();
            (blpop, after, unwound, kill_took, reconnect)
        });
    let blpop = blpop.expect("BLPOP returned into the killed greenlet");
    assert!(
        blpop.contains("Operation canceled") || blpop.contains("os error 125"),
        "the killed BLPOP should fail with ECANCELED: {blpop}"
    );
    assert!(
        !after_blpop,
        "the kill did not land at the next switch point"
    );
    assert!(unwound, "the killed greenlet did not unwind");
    assert!(
        kill_took < Duration::from_secs(2),
        "the kill took {kill_took:?}"
    );
    assert_eq!(reconnect.as_deref(), Ok("PONG"));
    drop(server);
}
