//! gevent's classic name lookups: one job per host name, `joinall` with a 2-second
//! timeout, then every job's value.
//!
//! ```python
//! urls = ['www.google.com', 'www.example.com', 'www.python.org']
//! jobs = [gevent.spawn(socket.gethostbyname, url) for url in urls]
//! gevent.joinall(jobs, timeout=2)
//! print [job.value for job in jobs]
//! ```
//!
//! This machine has no internet, so the names are local ones (`localhost`, this machine's
//! host name, a literal address); each lookup runs `getaddrinfo` on the thread pool while
//! its greenlet waits, so the lookups overlap and the hub never blocks. Prints the Python's
//! list, e.g. `['127.0.0.1', '127.0.0.1', '127.0.0.1']`; a job that failed or had not
//! finished after 2 s shows `None`, as in gevent.

use std::time::Duration;

use greenhub::net::gethostbyname;
use greenhub::{joinall, killall, spawn};

fn main() {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let urls = ["localhost".to_string(), hostname, "127.0.0.1".to_string()];
    let jobs: Vec<_> = urls
        .into_iter()
        .map(|url| spawn(move || gethostbyname(&url)))
        .collect();
    joinall(&jobs, Some(Duration::from_secs(2)));

    // `job.value`: the address if the job finished with one, else None.
    let finished: Vec<bool> = jobs.iter().map(|j| j.is_finished()).collect();
    killall(&jobs); // the unfinished ones: gevent would leave them running
    let values: Vec<String> = jobs
        .into_iter()
        .zip(finished)
        .map(|(job, finished)| match finished.then(|| job.join()) {
            Some(Ok(Ok(ip))) => format!("'{ip}'"),
            _ => "None".to_string(),
        })
        .collect();
    println!("[{}]", values.join(", "));
}
