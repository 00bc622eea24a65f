//! The echo benchmark's client as a process of its own: the bench binary runs itself
//! again with [`CLIENT_ROLE`] (so the client has its own core and descriptors), the child
//! runs [`bench_client`] and prints one `RESULT` line, which the parent reads back.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::bench_client::{BenchResult, bench_client};
use super::histogram::Histogram;
use super::limits::describe;

/// The flag that makes a bench binary the client process:
/// `CLIENT_ROLE ADDR CONNS SIZE WARMUP_MS MEASURE_MS`.
pub const CLIENT_ROLE: &str = "--role-client";

/// Runs `exe` as the client process against `addr` (see [`bench_client`] for the other
/// arguments) and returns what it measured, or why it measured nothing: it could not be
/// started, printed no result, or printed an `ERROR` line. The child's first error, if
/// any, is on its stderr (inherited), not in the result.
pub fn run_client_process(
    exe: &Path,
    addr: SocketAddr,
    conns: usize,
    size: usize,
    warmup: Duration,
    measure: Duration,
) -> Result<BenchResult, String> {
    let mut child = Command::new(exe)
        .args([
            CLIENT_ROLE.to_string(),
            addr.to_string(),
            conns.to_string(),
            size.to_string(),
            warmup.as_millis().to_string(),
            measure.as_millis().to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start the client: {e}"))?;
    let out = child.stdout.take().expect("piped stdout");
    let line = BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("RESULT ") || l.starts_with("ERROR "));
    let _ = child.wait();
    let line = line.ok_or("the client printed no result")?;
    if let Some(e) = line.strip_prefix("ERROR ") {
        return Err(e.to_string());
    }
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
            .unwrap_or("")
    };
    Ok(BenchResult {
        requests: field("requests").parse().unwrap_or(0),
        secs: field("secs").parse().unwrap_or(1.0),
        hist: Histogram::decode(field("hist")).unwrap_or_default(),
        errors: field("errors").parse().unwrap_or(0),
        first_error: None,
    })
}

/// The client process's `main`, given the arguments after [`CLIENT_ROLE`]: runs
/// [`bench_client`] on this thread's hub and prints `RESULT requests=.. secs=..
/// errors=.. hist=..` (or `ERROR why`) for [`run_client_process`]. `who` names the
/// bench in the message about the client's first error.
pub fn client_process_main(args: &[String], who: &str) {
    let parse = |i: usize| -> u64 { args.get(i).and_then(|v| v.parse().ok()).unwrap_or(0) };
    let Some(addr) = args.first().and_then(|a| a.parse::<SocketAddr>().ok()) else {
        println!("ERROR bad client arguments {args:?}");
        return;
    };
    let r = bench_client(
        addr,
        parse(1) as usize,
        parse(2) as usize,
        Duration::from_millis(parse(3)),
        Duration::from_millis(parse(4)),
    );
    match r {
        Ok(r) => {
            if let Some(e) = &r.first_error {
                eprintln!("{who} client: {} errors; the first: {e}", r.errors);
            }
            println!(
                "RESULT requests={} secs={} errors={} hist={}",
                r.requests,
                r.secs,
                r.errors,
                r.hist.encode()
            );
        }
        Err(e) => println!("ERROR {}", describe(&e)),
    }
}
