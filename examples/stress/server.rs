//! A server process (`--role server`): greenhub's `StreamServer` with the echo handler
//! on `--server-threads` hubs, on the port the first server process chose (the others
//! join it with `SO_REUSEPORT`). It reports its counts every `REPORT` until `STOP`.

use std::io::BufRead;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use greenhub::net::StreamServer;

use crate::load::{self, describe};
use crate::options::Opts;
use crate::peers;
use crate::protocol::{REPORT, say};

/// How long handlers may finish when a server process stops.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// Serves until `STOP` or the end of stdin; ends with the `FINAL` line.
pub fn run(o: &Opts) -> ExitCode {
    let threads = o.server_threads.unwrap_or(1);
    let server = match StreamServer::threads(threads).bind(o.listen.as_str(), peers::greenhub_echo)
    {
        Ok(s) => Arc::new(s),
        Err(e) => {
            say!("ERROR cannot listen on {}: {}", o.listen, describe(&e));
            return ExitCode::from(1);
        }
    };
    let base = load::status_kib("self", "VmRSS").unwrap_or(0);
    say!(
        "READY addr={} pid={} rss_kib={base} threads={threads}",
        server.local_addr(),
        std::process::id()
    );
    let reporter = server.clone();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(REPORT);
            let s = reporter.stats();
            say!(
                "STATS active={} peak={} accepted={} backoffs={} bytes={}",
                s.active,
                s.peak,
                s.accepted,
                s.backoffs,
                peers::ECHOED.load(Ordering::Relaxed)
            );
        }
    });
    // Until STOP, or the orchestrator's end (end of file).
    for line in std::io::stdin().lock().lines() {
        match line.as_deref() {
            Ok("STOP") | Err(_) => break,
            Ok(_) => {}
        }
    }
    let killed = server.stop(STOP_GRACE);
    let s = server.stats();
    let per_thread: Vec<String> = server
        .thread_stats()
        .iter()
        .map(|t| t.accepted.to_string())
        .collect();
    say!(
        "FINAL peak={} accepted={} backoffs={} bytes={} killed={killed} rss_base_kib={base} \
         hwm_kib={} cpu_ms={} per_thread={}",
        s.peak,
        s.accepted,
        s.backoffs,
        peers::ECHOED.load(Ordering::Relaxed),
        load::status_kib("self", "VmHWM").unwrap_or(0),
        load::cpu_time("self").unwrap_or_default().as_millis(),
        per_thread.join("/"),
    );
    ExitCode::SUCCESS
}
