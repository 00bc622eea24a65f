//! The echo servers that the stress run and the echo benchmark compare (shared with
//! `#[path]` by `examples/stress/`, `examples/peer_echo.rs` and `benches/echo.rs`).
//! Each is the plain, idiomatic form for its runtime: read up to 4 KiB, write it back,
//! until the peer closes; no server sets `TCP_NODELAY`.

#![allow(dead_code)] // each includer uses its own part

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

/// The listen backlog of every server here: greenhub's `TcpListener::bind` (mio) and
/// tokio's `TcpListener::bind` use 1,024; std's `bind` uses 128, which a burst of
/// thousands of connects overflows (the kernel then drops handshakes).
pub const BACKLOG: i32 = 1024;

/// A std listener on `addr` with `SO_REUSEADDR` and a backlog of [`BACKLOG`].
pub fn std_listener(addr: &str) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    Ok(s.into())
}

/// Bytes echoed by [`greenhub_echo`] in this process.
pub static ECHOED: AtomicU64 = AtomicU64::new(0);

/// The greenhub handler: one greenlet per connection, blocking-style code.
pub fn greenhub_echo(mut conn: greenhub::net::TcpStream, _peer: SocketAddr) {
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = conn.read(&mut buf) {
        if conn.write_all(&buf[..n]).is_err() {
            return;
        }
        ECHOED.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// A tokio echo server on a `current_thread` runtime (one thread, like one hub), on the
/// calling thread, forever.
pub fn tokio_current_thread(listener: std::net::TcpListener) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        listener.set_nonblocking(true).expect("nonblocking");
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                // Out of descriptors and the like: pause instead of spinning.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = conn.read(&mut buf).await {
                    if conn.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// A std thread-per-connection echo server on the calling thread (accepts there), forever.
/// Threads get std's default stack size (2 MiB of address space; only touched pages
/// count in RSS).
pub fn std_threads(listener: std::net::TcpListener) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else {
            std::thread::sleep(std::time::Duration::from_millis(10));
            continue;
        };
        let spawned = std::thread::Builder::new().spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = conn.read(&mut buf) {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        });
        if let Err(e) = spawned {
            eprintln!("thread-per-connection server: cannot start a thread: {e}");
        }
    }
}

/// Configures may for one worker thread, left unpinned like every other server here
/// (may pins its workers to cores by default). Call it before anything else of may's:
/// its scheduler starts on first use and keeps the settings it found.
pub fn may_one_worker() {
    may::config().set_workers(1);
    may::config().set_worker_pin(false);
}

/// A may echo server: a coroutine per connection on may's scheduler (configure it with
/// [`may_one_worker`] first), the accept loop in a coroutine of its own; returns at once,
/// the server runs until the process exits.
///
/// may's `go!` wraps its `unsafe fn spawn`: a may coroutine may move between worker
/// threads, so one must not hold a thread-local across a switch. These coroutines touch
/// no thread-locals, and with one worker they never move.
pub fn may_echo(listener: may::net::TcpListener) {
    may::go!(move || {
        loop {
            let Ok((mut conn, _)) = listener.accept() else {
                // Out of descriptors and the like: pause instead of spinning.
                may::coroutine::sleep(std::time::Duration::from_millis(10));
                continue;
            };
            may::go!(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = conn.read(&mut buf) {
                    if conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
}
