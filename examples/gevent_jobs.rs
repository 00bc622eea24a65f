//! gevent's classic jobs example: spawn several jobs, `joinall` with a 2-second timeout, then
//! print each job's value (`None` for the ones that had not finished).
//!
//! ```python
//! jobs = [gevent.spawn(socket.gethostbyname, url) for url in urls]
//! gevent.joinall(jobs, timeout=2)
//! print [job.value for job in jobs]
//! ```
//!
//! The lookups are modelled by sleeps of known length (this machine has no internet; see
//! `dns_jobs` for real cooperative name resolution): three finish within the timeout, one
//! does not and is killed.

use std::time::{Duration, Instant};

use greenhub::{joinall, killall, sleep, spawn};

fn main() {
    let sites = [
        ("www.google.com", 300),
        ("www.example.com", 800),
        ("www.python.org", 1200),
        ("www.slow-site.test", 5000),
    ];
    let t = Instant::now();
    let jobs: Vec<_> = sites
        .iter()
        .map(|&(site, ms)| {
            spawn(move || {
                sleep(Duration::from_millis(ms));
                format!("{site} answered after {ms} ms")
            })
        })
        .collect();
    let finished = joinall(&jobs, Some(Duration::from_secs(2)));
    println!(
        "joinall returned after {:.1} s: {finished} of {} finished",
        t.elapsed().as_secs_f64(),
        jobs.len()
    );
    let unfinished: Vec<_> = jobs
        .iter()
        .filter(|j| !j.is_finished())
        .map(|j| j.id())
        .collect();
    killall(&jobs); // gevent would leave them running; we stop them so the program can end
    let values: Vec<Option<String>> = jobs
        .into_iter()
        .map(|j| {
            if unfinished.contains(&j.id()) {
                None
            } else {
                j.join().ok()
            }
        })
        .collect();
    for (site, value) in sites.iter().map(|s| s.0).zip(&values) {
        println!("{site:22} {value:?}");
    }
}
