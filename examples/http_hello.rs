//! A small HTTP/1.1 server that answers every request with "Hello, world!": keep-alive,
//! pipelining, one greenlet per connection on a `StreamServer`.
//!
//! ```text
//! cargo run --release --example http_hello [ADDR]     # default 127.0.0.1:8080
//! curl http://127.0.0.1:8080/
//! wrk -t2 -c1000 -d10s http://127.0.0.1:8080/
//! ```
//!
//! HTTP/1.1 connections stay open unless the client sends `Connection: close`; HTTP/1.0
//! ones close unless it sends `Connection: keep-alive`. Request bodies with a
//! `Content-Length` are read and ignored; chunked request bodies get `501` and a close.

use std::io::{self, Read, Write};
use std::net::SocketAddr;

use greenhub::net::{StreamServer, TcpStream};

const BODY: &str = "Hello, world!";
/// A request head larger than this gets `431` and a close.
const MAX_HEAD: usize = 16 * 1024;

/// What the server does after answering a request.
#[derive(PartialEq)]
enum After {
    KeepOpen,
    Close,
}

/// Parses one request head (without the blank line); returns its body length and whether
/// the connection stays open, or the status to refuse it with.
fn parse_head(head: &[u8]) -> Result<(usize, After), &'static str> {
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
        }
    }
    Ok((
        body_len,
        if keep_open {
            After::KeepOpen
        } else {
            After::Close
        },
    ))
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
fn serve(mut conn: TcpStream) -> io::Result<()> {
    conn.set_nodelay(true)?;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        // Answer every complete request in the buffer (pipelined ones in one write).
        let mut start = 0;
        let mut after = After::KeepOpen;
        while after == After::KeepOpen {
            let Some(end) = find_blank_line(&buf[start..]) else {
                break;
            };
            match parse_head(&buf[start..start + end]) {
                Ok((body_len, a)) => {
                    let total = end + 4 + body_len;
                    if buf.len() - start < total {
                        break; // the body has not all arrived
                    }
                    respond(&mut out, "200 OK", &a);
                    start += total;
                    after = a;
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
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".to_string());
    let server = StreamServer::bind(&addr, |conn: TcpStream, _peer: SocketAddr| {
        // Resets and broken pipes are the clients' business.
        let _ = serve(conn);
    })?;
    println!("http_hello listening on http://{}", server.local_addr()?);
    server.serve_forever()
}
