//! A small HTTP/1.1 server that answers every request with "Hello, world!": keep-alive,
//! pipelining, one greenlet per connection on a `StreamServer`.
//!
//! ```text
//! cargo run --release --example http_hello [ADDR] [IDLE_SECS]   # 127.0.0.1:8080, 10 s
//! curl http://127.0.0.1:8080/
//! wrk -t2 -c1000 -d10s http://127.0.0.1:8080/
//! ```
//!
//! HTTP/1.1 connections stay open unless the client sends `Connection: close`; HTTP/1.0
//! ones close unless it sends `Connection: keep-alive`. Request bodies with a
//! `Content-Length` are read and thrown away as they arrive (of any size; a request is
//! answered once its body is in, and `Expect: 100-continue` gets its `100 Continue`);
//! chunked request bodies get `501` and a close. A request head over 16 KiB gets `431`.
//! A connection silent for `IDLE_SECS` (a keep-alive client gone quiet, a slowloris
//! client that sent half a head) is closed by the server's idle timeout.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use greenhub::net::{StreamServer, TcpStream};

const BODY: &str = "Hello, world!";
/// A request head larger than this gets `431` and a close.
const MAX_HEAD: usize = 16 * 1024;
/// Idle timeout when none is given on the command line.
const DEFAULT_IDLE: Duration = Duration::from_secs(10);

/// What the server does after answering a request.
#[derive(PartialEq)]
enum After {
    KeepOpen,
    Close,
}

/// A parsed request head.
struct Request {
    /// The `Content-Length` of its body.
    body_len: usize,
    /// It sent `Expect: 100-continue`: it waits for `100 Continue` before its body.
    expect_continue: bool,
    after: After,
}

/// Parses one request head (without the blank line), or gives the status to refuse it
/// with.
fn parse_head(head: &[u8]) -> Result<Request, &'static str> {
    let text = std::str::from_utf8(head).map_err(|_| "400 Bad Request")?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let version = request_line.rsplit(' ').next().unwrap_or_default();
    let mut keep_open = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err("400 Bad Request"),
    };
    let mut body_len = 0;
    let mut expect_continue = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err("400 Bad Request");
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("connection") {
            if value.eq_ignore_ascii_case("close") {
                keep_open = false;
            } else if value.eq_ignore_ascii_case("keep-alive") {
                keep_open = true;
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            body_len = value.parse().map_err(|_| "400 Bad Request")?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("501 Not Implemented");
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue = value.eq_ignore_ascii_case("100-continue");
        }
    }
    Ok(Request {
        body_len,
        expect_continue,
        after: if keep_open {
            After::KeepOpen
        } else {
            After::Close
        },
    })
}

fn respond(out: &mut Vec<u8>, status: &str, after: &After) {
    let connection = match after {
        After::KeepOpen => "keep-alive",
        After::Close => "close",
    };
    let body = if status.starts_with("200") {
        BODY
    } else {
        status
    };
    write!(
        out,
        "HTTP/1.1 {status}\r\nServer: greenhub\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\nConnection: {connection}\r\n\r\n{body}",
        body.len()
    )
    .expect("writing to a Vec cannot fail");
}

fn find_blank_line(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Serves one connection until the client closes it or asks to.
///
/// `buf` holds what has arrived and is not handled yet: the start of a request head, or
/// pipelined requests. A body is never kept: its bytes are counted off as they arrive
/// (`body_left`), and the request is answered once the last one is in.
fn serve(mut conn: TcpStream) -> io::Result<()> {
    conn.set_nodelay(true)?;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    // The request whose body is arriving, and how many body bytes are still to come.
    let mut in_body: Option<(After, usize)> = None;
    loop {
        // Answer every complete request in the buffer (pipelined ones in one write).
        let mut start = 0;
        let mut after = After::KeepOpen;
        while after == After::KeepOpen {
            if let Some((a, left)) = in_body.take() {
                let n = left.min(buf.len() - start);
                start += n;
                if n < left {
                    in_body = Some((a, left - n));
                    break; // the rest of the body has not arrived
                }
                respond(&mut out, "200 OK", &a);
                after = a;
                continue;
            }
            let Some(end) = find_blank_line(&buf[start..]) else {
                break;
            };
            let parsed = if end > MAX_HEAD {
                Err("431 Request Header Fields Too Large")
            } else {
                parse_head(&buf[start..start + end])
            };
            match parsed {
                Ok(request) => {
                    start += end + 4;
                    if request.expect_continue && request.body_len > 0 {
                        out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                    }
                    in_body = Some((request.after, request.body_len));
                }
                Err(status) => {
                    respond(&mut out, status, &After::Close);
                    after = After::Close;
                }
            }
        }
        buf.drain(..start);
        if !out.is_empty() {
            conn.write_all(&out)?;
            out.clear();
        }
        if after == After::Close {
            return Ok(());
        }
        // Only an unfinished head is buffered: a body's bytes were counted off above.
        if buf.len() > MAX_HEAD {
            respond(
                &mut out,
                "431 Request Header Fields Too Large",
                &After::Close,
            );
            return conn.write_all(&out);
        }
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8080".to_string());
    let idle = match args.next() {
        None => DEFAULT_IDLE,
        Some(secs) => secs
            .parse::<f64>()
            .ok()
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("IDLE_SECS must be a number of seconds above 0, not {secs:?}"),
                )
            })?,
    };
    let server = StreamServer::bind(&addr, |conn: TcpStream, _peer: SocketAddr| {
        // Resets, broken pipes and idle timeouts are the clients' business.
        let _ = serve(conn);
    })?
    .idle_timeout(idle);
    println!("http_hello listening on http://{}", server.local_addr()?);
    server.serve_forever()
}
