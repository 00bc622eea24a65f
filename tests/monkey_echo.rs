//! An unmodified `std::net` thread-per-connection echo server — only `thread::spawn`
//! changed to `greenhub::spawn` — holding 10,000 connections on one hub thread under the
//! hooks. The clients run in a second process (this test binary again, see
//! `echo_clients`), so that neither process needs more than 20,000 descriptors.
#![cfg(feature = "monkey")]

use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

const CONNECTIONS: usize = 10_000;

/// The connection handler of a std thread-per-connection echo server, as written for
/// threads.
fn handle(mut stream: TcpStream) {
    let mut buf = [0; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

#[test]
fn a_std_echo_server_holds_10000_connections_on_one_hub_thread() {
    assert!(greenhub::monkey::patch_all());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (live, peak) = (Rc::new(Cell::new(0usize)), Rc::new(Cell::new(0usize)));
    let (l, p) = (live.clone(), peak.clone());
    let _server = greenhub::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            l.set(l.get() + 1);
            p.set(p.get().max(l.get()));
            let l = l.clone();
            greenhub::spawn(move || {
                // was: std::thread::spawn(move || handle(stream))
                handle(stream);
                l.set(l.get() - 1);
            });
        }
    });

    let mut clients = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "echo_clients", "--ignored", "--nocapture"])
        .env("MONKEY_ECHO_ADDR", addr.to_string())
        .env("MONKEY_ECHO_CONNECTIONS", CONNECTIONS.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the client process without blocking the hub (`waitpid` is not patched).
    let t = Instant::now();
    let status = loop {
        if let Some(status) = clients.try_wait().unwrap() {
            break status;
        }
        if t.elapsed() > Duration::from_secs(300) {
            let _ = clients.kill();
            panic!("the clients hang");
        }
        greenhub::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    clients
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    eprintln!(
        "{CONNECTIONS} connections echoed in {:?} (peak {} at once)",
        t.elapsed(),
        peak.get()
    );
    assert!(status.success(), "client process failed: {out}");
    assert!(out.contains(&format!("verified {CONNECTIONS}")), "{out}");
    assert_eq!(peak.get(), CONNECTIONS, "all connections were open at once");
    let t = Instant::now();
    while live.get() > 0 && t.elapsed() < Duration::from_secs(30) {
        greenhub::sleep(Duration::from_millis(10));
    }
    assert_eq!(live.get(), 0, "every handler saw its client close");
}

/// The client half of the test above, in its own process: `CONNECTIONS` greenhub twin
/// sockets on one hub; all connect, then each sends a message of its own and checks the
/// echo, then all close together. Prints `verified N`. Does nothing when run by hand.
#[test]
#[ignore = "run in its own process by a_std_echo_server_holds_10000_connections_on_one_hub_thread"]
fn echo_clients() {
    let Ok(addr) = std::env::var("MONKEY_ECHO_ADDR") else {
        return;
    };
    let n: usize = std::env::var("MONKEY_ECHO_CONNECTIONS")
        .unwrap()
        .parse()
        .unwrap();
    let connecting = Rc::new(greenhub::Semaphore::new(200));
    let all_connected = Rc::new(greenhub::Event::new());
    let all_verified = Rc::new(greenhub::Event::new());
    let (connected, verified) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
    let clients: Vec<_> = (0..n)
        .map(|i| {
            let (addr, connecting) = (addr.clone(), connecting.clone());
            let (all_connected, all_verified) = (all_connected.clone(), all_verified.clone());
            let (connected, verified) = (connected.clone(), verified.clone());
            greenhub::spawn(move || -> std::io::Result<()> {
                let permit = connecting.acquire().unwrap();
                let mut s = greenhub::net::TcpStream::connect(addr.as_str())?;
                drop(permit);
                connected.set(connected.get() + 1);
                if connected.get() == n {
                    all_connected.set();
                }
                all_connected.wait().unwrap();
                let msg = format!("connection {i:05} says hello\n");
                s.write_all(msg.as_bytes())?;
                let mut back = vec![0; msg.len()];
                s.read_exact(&mut back)?;
                assert_eq!(back, msg.as_bytes(), "echo of connection {i}");
                verified.set(verified.get() + 1);
                if verified.get() == n {
                    all_verified.set();
                }
                all_verified.wait().unwrap();
                Ok(())
            })
        })
        .collect();
    let mut failures = 0;
    for h in clients {
        match h.join() {
            Ok(Ok(())) => {}
            other => {
                if failures == 0 {
                    eprintln!("a client failed: {other:?}");
                }
                failures += 1;
            }
        }
    }
    assert_eq!(failures, 0, "clients failed");
    println!("verified {}", verified.get());
}
