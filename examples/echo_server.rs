//! A thread-per-connection echo server, ported from std to greenhub by changing its `use`
//! lines: each connection gets a greenlet instead of an OS thread.
//!
//! The std original:
//!
//! ```text
//! use std::io::{self, Read, Write};
//! use std::net::{TcpListener, TcpStream};
//! use std::thread::spawn;
//!
//! fn handle(mut stream: TcpStream) -> io::Result<()> { /* same as below */ }
//!
//! fn main() -> io::Result<()> { /* same as below */ }
//! ```
//!
//! The whole diff:
//!
//! ```text
//! -use std::net::{TcpListener, TcpStream};
//! -use std::thread::spawn;
//! +use greenhub::net::{TcpListener, TcpStream};
//! +use greenhub::spawn;
//! ```
//!
//! Run it and talk to it:
//!
//! ```text
//! cargo run --release --example echo_server [ADDR]    # default 127.0.0.1:8080
//! nc 127.0.0.1 8080
//! ```
//!
//! Like its std twin, it reports `accept` errors and goes on. Out of file descriptors
//! (`EMFILE`), greenhub's `accept` pauses cooperatively before it returns the error
//! (5 ms doubling to 1 s), so the connection greenlets run meanwhile, their closed
//! connections free descriptors, and the loop recovers as the std twin's does: within the
//! longest pause (1 s) of descriptors freeing up, without burning the CPU meanwhile. For a
//! server that also caps its connections, closes idle ones and stops gracefully, see
//! `greenhub::net::StreamServer`.

use std::io::{self, Read, Write};

use greenhub::net::{TcpListener, TcpStream};
use greenhub::spawn;

fn handle(mut stream: TcpStream) -> io::Result<()> {
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(()); // the client closed
        }
        stream.write_all(&buf[..n])?;
    }
}

fn main() -> io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".to_string());
    let listener = TcpListener::bind(&addr)?;
    println!("echo server listening on {}", listener.local_addr()?);
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                spawn(move || {
                    if let Err(e) = handle(stream) {
                        eprintln!("connection failed: {e}");
                    }
                });
            }
            Err(e) => eprintln!("accept failed: {e}"),
        }
    }
    Ok(())
}
