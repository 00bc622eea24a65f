//! A local HTTP/1.1 server that answers each request after a pause, to model a slow
//! remote site (shared with `#[path]` by `examples/monkey_download.rs`, the monkey tests
//! and `benches/monkey.rs`).
//!
//! It runs on its own OS thread, on that thread's hub, with one greenlet per connection
//! (a greenhub `StreamServer` on `greenhub::net` sockets, which are non-blocking in the
//! kernel, so the libc hooks, when they are on, pass its calls through). Any `GET` path is
//! served; a path that starts with `/delay/<ms>` is answered after `<ms>` milliseconds
//! instead of the server's default pause. The body is [`body_for`] the path, so a client
//! can check that it got its own page. Connections are kept alive between requests
//! (HTTP/1.1) unless the client asks `Connection: close`.

#![allow(dead_code)] // each includer uses its own part

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use greenhub::net::{ServerThreads, StreamServer, TcpStream};

/// The filler in every page: the bodies are about 10 KB, like a small web page.
const FILLER: usize = 10_000;
/// The most a request's head may take before the server gives up on it.
const MAX_HEAD: usize = 64 * 1024;

/// The page served for `path`.
pub fn body_for(path: &str) -> String {
    format!(
        "<html><body><h1>{path}</h1>{}</body></html>\n",
        "x".repeat(FILLER)
    )
}

/// A running server; dropping it stops it (open connections get 1 s to finish).
pub struct SlowHttp {
    server: ServerThreads,
    served: Arc<AtomicU64>,
}

impl SlowHttp {
    /// Starts a server on 127.0.0.1 (a free port) that answers after `latency`.
    ///
    /// # Errors
    /// The bind error, or the error starting its thread.
    pub fn start(latency: Duration) -> io::Result<SlowHttp> {
        let served = Arc::new(AtomicU64::new(0));
        let counter = served.clone();
        let server = StreamServer::threads(1).bind("127.0.0.1:0", move |conn, _peer| {
            let _ = serve(conn, latency, &counter);
        })?;
        Ok(SlowHttp { server, served })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    /// How many responses it has written in full.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// How many connections it has accepted.
    pub fn connections(&self) -> u64 {
        self.server.stats().accepted
    }
}

/// The pause for `path`: `/delay/<ms>...` asks for `<ms>`, anything else gets `default`.
fn delay_for(path: &str, default: Duration) -> Duration {
    path.strip_prefix("/delay/")
        .map(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap_or("")
        })
        .and_then(|ms| ms.parse().ok())
        .map_or(default, Duration::from_millis)
}

/// Serves the connection's requests one after another (HTTP/1.1 keep-alive, until the
/// client closes or asks `Connection: close`): for each, pauses, then writes the page
/// (or a 400 for a request that is not a GET, and closes).
fn serve(mut conn: TcpStream, latency: Duration, served: &AtomicU64) -> io::Result<()> {
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = conn.read(&mut buf)?;
            if n == 0 && pending.is_empty() {
                return Ok(()); // the client is done
            }
            if n == 0 || pending.len() + n > MAX_HEAD {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "incomplete request",
                ));
            }
            pending.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&pending[..end]).into_owned();
        pending.drain(..end);
        let mut words = head.split_whitespace();
        let (method, path, version) = (
            words.next().unwrap_or(""),
            words.next().unwrap_or(""),
            words.next().unwrap_or(""),
        );
        if method != "GET" || !path.starts_with('/') {
            return conn.write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
        let close = version != "HTTP/1.1"
            || head.lines().any(|l| {
                l.split_once(':').is_some_and(|(n, v)| {
                    n.eq_ignore_ascii_case("connection") && v.trim().eq_ignore_ascii_case("close")
                })
            });
        greenhub::sleep(delay_for(path, latency)); // the "network"
        let body = body_for(path);
        // One write for the whole response: written piece by piece, Nagle's algorithm
        // would hold the body back until the client's delayed ACK (40 ms).
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\
             Connection: {}\r\n\r\n{body}",
            body.len(),
            if close { "close" } else { "keep-alive" }
        );
        conn.write_all(response.as_bytes())?;
        served.fetch_add(1, Ordering::Relaxed);
        if close {
            return Ok(());
        }
    }
}
