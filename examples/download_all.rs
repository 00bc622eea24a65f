//! "Download many sites", three ways: sequentially, with OS threads, and with
//! greenlets — the same `download_site` function each time (it uses greenhub sockets, which
//! block an OS thread in the first two runs and park a greenlet in the third).
//!
//! ```text
//! cargo run --release --example download_all                 # 160 pages from a local server
//! cargo run --release --example download_all -- URL...        # your own http:// URLs
//! cargo run --release --example download_all -- -v --threads 30 URL...
//! ```
//!
//! These machines have no internet, so by default it starts a local HTTP server on its own
//! OS thread (a greenhub `StreamServer` on that thread's hub) with 160 pages, each served
//! after a 10 ms pause to model network latency, and fetches them all. The client is a
//! minimal HTTP/1.1 `GET` (plain `http://` only, one connection per request).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use greenhub::net::{StreamServer, TcpStream};

/// How many pages the local server has (the Python's `sites * 80`).
const PAGES: usize = 160;
/// The local server's pause before each answer.
const LATENCY: Duration = Duration::from_millis(10);
/// Default worker threads (the Python tutorial's sweet spot was 20-30).
const THREADS: usize = 20;

#[derive(Clone)]
struct Url {
    text: String,
    host: String,
    port: u16,
    path: String,
}

fn parse_url(text: &str) -> Result<Url, String> {
    let rest = text.strip_prefix("http://").ok_or_else(|| {
        format!("{text}: only http:// URLs are supported by this example's minimal client")
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let bad_port = || format!("{text}: bad port");
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{text}: bad host"))?;
        match after.strip_prefix(':') {
            Some(p) => (host, p.parse().map_err(|_| bad_port())?),
            None => (host, 80),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| bad_port())?),
            None => (authority, 80),
        }
    };
    Ok(Url {
        text: text.to_string(),
        host: host.to_string(),
        port,
        path: path.to_string(),
    })
}

/// Fetches `url` and returns the length of its body.
fn download_site(url: &Url) -> io::Result<usize> {
    let mut conn = TcpStream::connect((url.host.as_str(), url.port))?; // DNS on the pool
    write!(
        conn,
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: greenhub-download_all\r\n\
         Connection: close\r\n\r\n",
        url.path, url.host
    )?;
    let mut response = Vec::new();
    conn.read_to_end(&mut response)?;
    body_len(&response)
}

/// The body length of a whole `Connection: close` response.
fn body_len(response: &[u8]) -> io::Result<usize> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&response[..end]).map_err(|_| bad("headers not UTF-8"))?;
    let status = head.split(' ').nth(1).unwrap_or_default();
    if !status.starts_with('2') {
        return Err(bad(&format!("HTTP status {status}")));
    }
    let body = &response[end + 4..];
    let chunked = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(n, v)| {
            n.eq_ignore_ascii_case("transfer-encoding") && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    if !chunked {
        return Ok(body.len());
    }
    // Chunked: sum the chunk sizes.
    let (mut total, mut rest) = (0, body);
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| bad("truncated chunk"))?;
        let size_text = std::str::from_utf8(&rest[..line_end]).map_err(|_| bad("bad chunk"))?;
        let size_hex = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| bad("bad chunk size"))?;
        if size == 0 {
            return Ok(total);
        }
        total += size;
        rest = rest
            .get(line_end + 2 + size + 2..)
            .ok_or_else(|| bad("truncated chunk"))?;
    }
}

fn report(url: &Url, result: io::Result<usize>, verbose: bool) -> bool {
    match result {
        Ok(n) => {
            if verbose {
                println!("Read {n} from {}", url.text);
            }
            true
        }
        Err(e) => {
            eprintln!("{}: {e}", url.text);
            false
        }
    }
}

fn sequential(urls: &[Url], verbose: bool) -> usize {
    urls.iter()
        .filter(|u| report(u, download_site(u), verbose))
        .count()
}

fn with_threads(urls: &[Url], threads: usize, verbose: bool) -> usize {
    let next = AtomicUsize::new(0);
    let ok = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads.min(urls.len()) {
            s.spawn(|| {
                while let Some(u) = urls.get(next.fetch_add(1, Ordering::Relaxed)) {
                    if report(u, download_site(u), verbose) {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    ok.into_inner()
}

fn with_greenlets(urls: &[Url], verbose: bool) -> usize {
    let jobs: Vec<_> = urls
        .iter()
        .map(|u| {
            let u = u.clone();
            greenhub::spawn(move || report(&u, download_site(&u), verbose))
        })
        .collect();
    jobs.into_iter()
        .filter_map(|j| j.join().ok())
        .filter(|&ok| ok)
        .count()
}

/// Serves one request after `LATENCY`, then closes.
fn serve_page(mut conn: TcpStream) -> io::Result<()> {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
    }
    let path = String::from_utf8_lossy(&request)
        .split(' ')
        .nth(1)
        .unwrap_or("/")
        .to_string();
    greenhub::sleep(LATENCY); // the "network"
    let body = format!(
        "<html><body><h1>{path}</h1>{}</body></html>\n",
        "x".repeat(10_000)
    );
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Starts the local server on its own thread; returns its address.
fn start_local_server() -> io::Result<SocketAddr> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("local-server".into())
        .spawn(move || {
            let server = match StreamServer::bind("127.0.0.1:0", |conn, _| {
                let _ = serve_page(conn);
            }) {
                Ok(s) => s,
                Err(e) => return tx.send(Err(e)).unwrap_or(()),
            };
            let _ = tx.send(server.local_addr());
            if let Err(e) = server.serve_forever() {
                eprintln!("local server failed: {e}");
            }
        })?;
    rx.recv().map_err(io::Error::other)?
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut verbose = false;
    let mut threads = THREADS;
    let mut texts = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "-v" | "--verbose" => verbose = true,
            "--threads" => {
                threads = args.next().ok_or("--threads needs a number")?.parse()?;
            }
            "-h" | "--help" => {
                println!("usage: download_all [-v] [--threads N] [http://URL...]");
                return Ok(());
            }
            _ => texts.push(a),
        }
    }
    if texts.is_empty() {
        let addr = start_local_server()?;
        println!("local server with {PAGES} pages on http://{addr} ({LATENCY:?} per request)");
        texts = (0..PAGES)
            .map(|i| format!("http://{addr}/page/{i}"))
            .collect();
    }
    let urls = texts
        .iter()
        .map(|t| parse_url(t))
        .collect::<Result<Vec<_>, _>>()?;
    let n = urls.len();

    let t = Instant::now();
    let ok = sequential(&urls, verbose);
    println!(
        "sequential:   Downloaded {ok} of {n} in {:.3} seconds",
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let ok = with_threads(&urls, threads, verbose);
    println!(
        "threads ({threads}): Downloaded {ok} of {n} in {:.3} seconds",
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let ok = with_greenlets(&urls, verbose);
    println!(
        "greenlets:    Downloaded {ok} of {n} in {:.3} seconds",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
