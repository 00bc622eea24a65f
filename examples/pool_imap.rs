//! eventlet's `GreenPool.imap` example: fetch a list of URLs concurrently, results in the
//! order of the URLs.
//!
//! ```python
//! urls = ['http://www.google.com', 'http://www.example.com', 'http://www.python.org']
//!
//! def fetch(url):
//!     return urllib2.urlopen(url).read()
//!
//! pool = eventlet.GreenPool()
//! for body in pool.imap(fetch, urls):
//!     print("got body", len(body))
//! ```
//!
//! This machine has no internet: a local `StreamServer` stands in for the three sites,
//! with the Python's body sizes, and answers the first URL last, so that the jobs finish
//! out of order. Prints what the Python prints:
//!
//! ```text
//! ('got body', 17629)
//! ('got body', 1270)
//! ('got body', 46949)
//! ```

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use greenhub::net::{StreamServer, TcpStream};
use greenhub::{Pool, sleep};

/// The stand-in sites: path, body size, how long the "site" takes to answer.
const SITES: [(&str, usize, u64); 3] = [
    ("www.google.com", 17629, 60),
    ("www.example.com", 1270, 10),
    ("www.python.org", 46949, 30),
];

/// A minimal HTTP/1.0 server: `GET /<site>` answers that site's body.
fn serve(mut conn: TcpStream, _peer: SocketAddr) {
    let mut request = Vec::new();
    let mut buf = [0; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let request = String::from_utf8_lossy(&request);
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    let response = match SITES.iter().find(|s| path == format!("/{}", s.0)) {
        Some(&(_, size, delay_ms)) => {
            sleep(Duration::from_millis(delay_ms));
            let mut r = format!("HTTP/1.0 200 OK\r\nContent-Length: {size}\r\n\r\n").into_bytes();
            r.resize(r.len() + size, b'x');
            r
        }
        None => b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
    };
    let _ = conn.write_all(&response);
}

/// `urllib2.urlopen(url).read()`: the body of an `http://host:port/path` URL.
fn fetch(url: String) -> io::Result<Vec<u8>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidInput, format!("bad URL {url}"));
    let rest = url.strip_prefix("http://").ok_or_else(bad)?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (host, port) = authority.split_once(':').unwrap_or((authority, "80"));
    let port: u16 = port.parse().map_err(|_| bad())?;
    let mut conn = TcpStream::connect((host, port))?; // resolves `localhost` cooperatively
    write!(conn, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut response = Vec::new();
    conn.read_to_end(&mut response)?;
    let body_at = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no HTTP header"))?;
    Ok(response.split_off(body_at + 4))
}

fn main() -> io::Result<()> {
    let server = StreamServer::bind("127.0.0.1:0", serve)?;
    server.start()?;
    let port = server.local_addr()?.port();
    let urls: Vec<String> = SITES
        .iter()
        .map(|(site, _, _)| format!("http://localhost:{port}/{site}"))
        .collect();

    let pool = Pool::new(1000); // eventlet's GreenPool() default size
    for body in pool.imap(urls, fetch) {
        let body = body.map_err(io::Error::from)??;
        println!("('got body', {})", body.len());
    }
    server.stop(Duration::from_secs(1));
    Ok(())
}
