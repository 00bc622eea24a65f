//! A local HTTP/1.1 server that answers each request after a pause, to model a slow
//! remote site (shared with `#[path]` by `examples/monkey_download.rs`, the monkey tests
//! and `benches/monkey.rs`).
//!
//! It runs on its own OS thread, on that thread's hub, with one greenlet per connection
//! (a greenhub `StreamServer` on `greenhub::net` sockets, which are non-blocking in the
//! kernel, so the libc hooks, when they are on, pass its calls through). Any `GET` path is
//! served; a path that starts with `/delay/<ms>` is answered after `<ms>` milliseconds
//! instead of the server's default pause. The body is [`body_for`] the path, so a client
//! can check that it got its own page. One request per connection (`Connection: close`).

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
            if serve(conn, latency).is_ok() {
                counter.fetch_add(1, Ordering::Relaxed);
            }
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

/// Reads one request, pauses, writes the page (or a 400 for a request that is not a GET).
fn serve(mut conn: TcpStream, latency: Duration) -> io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf)?;
        if n == 0 || head.len() + n > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "incomplete request",
            ));
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let mut words = text.split(' ');
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    if method != "GET" || !path.starts_with('/') {
        return conn.write_all(
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    }
    greenhub::sleep(delay_for(path, latency)); // the "network"
    let body = body_for(path);
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}
