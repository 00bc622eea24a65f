//! "Download many sites" with ureq, a blocking HTTP client that knows nothing
//! of greenhub, unmodified: once sequentially, then in one greenlet per site after
//! `greenhub::monkey::patch_all()`, which makes ureq's blocking socket calls park the
//! greenlet instead of the thread (gevent's `monkey.patch_all()` with `requests`).
//!
//! ```text
//! cargo run --release --features monkey --example monkey_download             # 160 local pages
//! cargo run --release --features monkey --example monkey_download -- -v URL... # your http:// URLs
//! GREENHUB_MONKEY=off cargo run --release --features monkey --example monkey_download
//! ```
//!
//! These machines have no internet, so by default it starts a local HTTP server on its own
//! OS thread with 160 pages, each answered after a 10 ms pause that models the network
//! (`examples/support/slow_http.rs`). With `GREENHUB_MONKEY=off` the hooks stay off and
//! the greenlets run the downloads one after another: each blocks the whole thread.

#[path = "support/slow_http.rs"]
mod slow_http;

use std::time::{Duration, Instant};

/// How many pages the local server has (the Python's `sites * 80`).
const PAGES: usize = 160;
/// The local server's pause before each answer.
const LATENCY: Duration = Duration::from_millis(10);

/// The Python's `download_site`: GET the page, report its length. Plain blocking ureq.
fn download_site(agent: &ureq::Agent, url: &str, verbose: bool) -> Result<usize, ureq::Error> {
    let body = agent.get(url).call()?.into_body().read_to_vec()?;
    if verbose {
        println!("Read {} from {url}", body.len());
    }
    Ok(body.len())
}

/// Reports a failed download; true for a success.
fn succeeded(url: &str, result: Result<usize, ureq::Error>) -> bool {
    match result {
        Ok(_) => true,
        Err(e) => {
            eprintln!("{url}: {e}");
            false
        }
    }
}

/// The Python's synchronous `download_all_sites`: one site after another.
fn download_all_sites(sites: &[String], verbose: bool) -> usize {
    let agent = ureq::agent();
    sites
        .iter()
        .filter(|url| succeeded(url, download_site(&agent, url, verbose)))
        .count()
}

/// gevent's version: a greenlet per site, then join them all.
fn download_all_sites_in_greenlets(sites: &[String], verbose: bool) -> usize {
    let agent = ureq::agent();
    let jobs: Vec<_> = sites
        .iter()
        .map(|url| {
            let (agent, url) = (agent.clone(), url.clone());
            greenhub::spawn(move || succeeded(&url, download_site(&agent, &url, verbose)))
        })
        .collect();
    jobs.into_iter()
        .map(|j| j.join().unwrap_or(false))
        .filter(|&ok| ok)
        .count()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut verbose = false;
    let mut sites = Vec::new();
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "-v" | "--verbose" => verbose = true,
            "-h" | "--help" => {
                println!("usage: monkey_download [-v] [http://URL...]");
                return Ok(());
            }
            _ => sites.push(a),
        }
    }
    // Kept alive until the end: dropping it stops the server.
    let mut _server = None;
    if sites.is_empty() {
        let server = slow_http::SlowHttp::start(LATENCY)?;
        println!(
            "local server with {PAGES} pages on http://{} ({LATENCY:?} per request)",
            server.addr()
        );
        sites = (0..PAGES)
            .map(|i| server.url(&format!("/page/{i}")))
            .collect();
        _server = Some(server);
    }
    let n = sites.len();

    let t = Instant::now();
    let ok = download_all_sites(&sites, verbose);
    println!(
        "sequential: Downloaded {ok} of {n} in {:.3} seconds",
        t.elapsed().as_secs_f64()
    );

    if !greenhub::monkey::patch_all() {
        println!("(the hooks are off: GREENHUB_MONKEY=off; each greenlet blocks the thread)");
    }
    let t = Instant::now();
    let ok = download_all_sites_in_greenlets(&sites, verbose);
    println!(
        "greenlets:  Downloaded {ok} of {n} in {:.3} seconds",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
