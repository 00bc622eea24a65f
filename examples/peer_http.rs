//! The HTTP servers that `benches/peers/http_peers.sh` runs beside `examples/http_hello`
//! under the same `wrk` command, one process each:
//!
//! ```text
//! cargo run --release --example peer_http -- KIND [ADDR]    # ADDR default 127.0.0.1:8080
//! curl http://127.0.0.1:8080/
//! ```
//!
//! KIND is `hyper` (hyper's HTTP/1 server on a tokio `current_thread` runtime: one
//! thread, like one hub) or `may` (`may_minihttp` on may with one worker). Both answer
//! every request with http_hello's response: status 200, `Content-Type: text/plain`,
//! `Content-Length: 13`, `Connection: keep-alive`, a `Server` header naming the server,
//! and the body `Hello, world!`. hyper is told not to add a `Date` header (http_hello
//! sends none); `may_minihttp` always sends one (and `Server: M`), which cannot be turned
//! off: its responses are about 40 bytes longer. Both set `TCP_NODELAY` as http_hello does
//! (may_minihttp does not: it writes every pipelined response in one write anyway). It
//! prints `listening on ADDR` and `pid PID`, then serves until killed.

use std::io::{self, Write};
use std::net::SocketAddr;

const BODY: &str = "Hello, world!";

fn main() {
    let mut args = std::env::args().skip(1);
    let kind = args.next().unwrap_or_default();
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8080".to_string());
    let result = match kind.as_str() {
        "hyper" => hyper_server(&addr),
        "may" => may_server(&addr),
        _ => {
            eprintln!("usage: peer_http hyper|may [ADDR]");
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("peer_http {kind}: {e}");
        std::process::exit(1);
    }
}

fn say(addr: SocketAddr) {
    println!("listening on {addr}");
    println!("pid {}", std::process::id());
    let _ = io::stdout().flush();
}

/// hyper 1 (`http1` only) on a tokio `current_thread` runtime, a task per connection.
fn hyper_server(addr: &str) -> io::Result<()> {
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::body::Incoming;
    use hyper::header::{CONNECTION, CONTENT_TYPE, SERVER};
    use hyper::{Request, Response};

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await?; // backlog 1,024
        say(listener.local_addr()?);
        let mut http = hyper::server::conn::http1::Builder::new();
        http.auto_date_header(false);
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                // Out of descriptors and the like: pause instead of spinning.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            };
            let _ = conn.set_nodelay(true);
            let http = http.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    // hyper closes on `Connection: close` itself, and then says so.
                    let closing = req
                        .headers()
                        .get(CONNECTION)
                        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                    let mut response = Response::builder()
                        .header(SERVER, "hyper")
                        .header(CONTENT_TYPE, "text/plain");
                    if !closing {
                        response = response.header(CONNECTION, "keep-alive");
                    }
                    // Content-Length is set by hyper from the full body.
                    response
                        .body(Full::new(Bytes::from_static(BODY.as_bytes())))
                        .map_err(io::Error::other)
                });
                // Resets and broken pipes are the clients' business.
                let _ = http
                    .serve_connection(hyper_util::rt::TokioIo::new(conn), service)
                    .await;
            });
        }
    })
}

/// The service of [`may_server`]: adds http_hello's other headers to may_minihttp's
/// status line, `Server`, `Date` and `Content-Length`.
#[derive(Clone)]
struct Hello;

impl may_minihttp::HttpService for Hello {
    fn call(
        &mut self,
        _req: may_minihttp::Request,
        rsp: &mut may_minihttp::Response,
    ) -> io::Result<()> {
        rsp.header("Content-Type: text/plain");
        rsp.header("Connection: keep-alive");
        rsp.body(BODY);
        Ok(())
    }
}

/// `may_minihttp` on may with one worker (unpinned: the caller pins the process).
fn may_server(addr: &str) -> io::Result<()> {
    may::config().set_workers(1);
    may::config().set_worker_pin(false);
    // may_minihttp binds the address itself and does not tell the port it got: resolve
    // port 0 here first, so that the address printed is the one served.
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let addr = if addr.port() == 0 {
        std::net::TcpListener::bind(addr)?.local_addr()?
    } else {
        addr
    };
    let server = may_minihttp::HttpServer(Hello).start(addr)?;
    say(addr);
    server
        .join()
        .map_err(|_| io::Error::other("the may_minihttp server stopped"))
}
