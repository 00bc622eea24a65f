//! The libc hooks in greenlets: sleeps, sockets, timeouts, kills, closes.
#![cfg(feature = "monkey")]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

fn patched() {
    assert!(greenhub::monkey::patch_all(), "the hooks are on");
}

#[test]
fn smoke_sleep_in_greenlets() {
    patched();
    let t = Instant::now();
    let hs: Vec<_> = (0..100)
        .map(|_| greenhub::spawn(|| std::thread::sleep(Duration::from_millis(100))))
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    eprintln!("took {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_millis(500));
}

#[test]
fn smoke_echo() {
    patched();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = greenhub::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let mut buf = [0; 5];
        c.read_exact(&mut buf).unwrap();
        c.write_all(&buf).unwrap();
    });
    let ticker = greenhub::spawn(|| std::thread::sleep(Duration::from_millis(5)));
    let mut client = TcpStream::connect(addr).unwrap();
    client.write_all(b"hello").unwrap();
    let mut echo = [0; 5];
    client.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"hello");
    server.join().unwrap();
    ticker.join().unwrap();
}
