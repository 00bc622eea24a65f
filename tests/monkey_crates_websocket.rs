//! tungstenite, a WebSocket library for blocking `std::io` streams, unmodified, over plain
//! `std::net::TcpStream`s in greenlets after `greenhub::monkey::patch_all()`: an echo
//! server on one hub thread holds 1,000 client connections at once (the clients are
//! greenlets on a second hub thread), and every message comes back intact.
#![cfg(feature = "monkey")]

mod monkey_support;
#[path = "../examples/support/peers.rs"]
mod peers;

use std::cell::Cell;
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::time::{Duration, Instant};

use monkey_support::{patch, run_bounded};
use tungstenite::{Message, WebSocket};

const CLIENTS: usize = 1_000;
/// Messages each client sends (alternately text and binary, of varied sizes).
const MESSAGES: usize = 4;

/// What the echo server saw.
#[derive(Debug)]
struct ServerReport {
    /// Connections whose handshake and echo loop ended without error.
    clean: usize,
    /// Messages echoed.
    echoed: usize,
    /// The most handlers running at once.
    peak: usize,
    errors: Vec<String>,
}

/// The echo handler: plain blocking tungstenite code on a std stream.
fn echo(stream: TcpStream) -> Result<usize, tungstenite::Error> {
    let mut ws = tungstenite::accept(stream).map_err(|e| match e {
        tungstenite::HandshakeError::Failure(e) => e,
        tungstenite::HandshakeError::Interrupted(_) => {
            tungstenite::Error::Io(std::io::ErrorKind::WouldBlock.into())
        }
    })?;
    let mut echoed = 0;
    loop {
        match ws.read() {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                ws.send(m)?;
                echoed += 1;
            }
            Ok(_) => {} // ping, pong, close: tungstenite answers them itself
            Err(tungstenite::Error::ConnectionClosed) => return Ok(echoed),
            Err(e) => return Err(e),
        }
    }
}

/// Accepts `CLIENTS` connections on a std listener, a greenlet each, until all have ended.
fn serve(listener: std::net::TcpListener) -> ServerReport {
    let active = Rc::new(Cell::new(0usize));
    let peak = Rc::new(Cell::new(0usize));
    let mut handlers = Vec::new();
    let mut errors = Vec::new();
    for _ in 0..CLIENTS {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                errors.push(format!("accept: {e}"));
                break;
            }
        };
        let (active, peak) = (active.clone(), peak.clone());
        handlers.push(greenhub::spawn(move || {
            active.set(active.get() + 1);
            peak.set(peak.get().max(active.get()));
            let r = echo(stream);
            active.set(active.get() - 1);
            r.map_err(|e| e.to_string())
        }));
    }
    let (mut clean, mut echoed) = (0, 0);
    for h in handlers {
        match h.join().unwrap() {
            Ok(n) => {
                clean += 1;
                echoed += n;
            }
            Err(e) => errors.push(e),
        }
    }
    ServerReport {
        clean,
        echoed,
        peak: peak.get(),
        errors,
    }
}

/// Client `i`'s message `j`: text for even `j`, binary for odd, up to 16 KiB.
fn message(i: usize, j: usize) -> Message {
    let mut x = (i * 31 + j * 7 + 1) as u64;
    let mut next = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) as usize
    };
    let len = next() % 16_384;
    if j.is_multiple_of(2) {
        let text: String = (0..len)
            .map(|_| char::from(b'a' + (next() % 26) as u8))
            .collect();
        Message::text(format!("client {i} message {j}: {text}"))
    } else {
        Message::binary((0..len).map(|_| next() as u8).collect::<Vec<u8>>())
    }
}

/// One client: connect and handshake, wait until every client has, then send each
/// message, check its echo, and close.
fn client(
    i: usize,
    addr: SocketAddr,
    connected: Rc<Cell<usize>>,
    all_connected: Rc<greenhub::Event>,
) -> Result<(), String> {
    let stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    let (mut ws, _): (WebSocket<TcpStream>, _) =
        tungstenite::client(format!("ws://{addr}/echo"), stream)
            .map_err(|e| format!("handshake: {e}"))?;
    connected.set(connected.get() + 1);
    if connected.get() == CLIENTS {
        all_connected.set();
    }
    all_connected
        .wait_timeout(Duration::from_secs(90))
        .map_err(|e| format!("waiting for the other clients: {e}"))?;
    for j in 0..MESSAGES {
        let sent = message(i, j);
        ws.send(sent.clone())
            .map_err(|e| format!("send {j}: {e}"))?;
        let back = ws.read().map_err(|e| format!("read {j}: {e}"))?;
        if back != sent {
            return Err(format!("message {j} came back different"));
        }
    }
    ws.close(None).map_err(|e| format!("close: {e}"))?;
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => return Ok(()),
            Err(e) => return Err(format!("closing: {e}")),
        }
    }
}

#[test]
fn tungstenite_echo_server_on_std_streams_holds_1000_clients_in_greenlets() {
    let listener = peers::std_listener("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (report, failures, elapsed) = run_bounded(
        "1,000 WebSocket clients",
        Duration::from_secs(180),
        move || {
            patch();
            let server = std::thread::Builder::new()
                .name("ws-server".into())
                .spawn(move || {
                    patch();
                    serve(listener)
                })
                .unwrap();
            let t = Instant::now();
            let connected = Rc::new(Cell::new(0));
            let all_connected = Rc::new(greenhub::Event::new());
            let clients: Vec<_> = (0..CLIENTS)
                .map(|i| {
                    let (connected, all_connected) = (connected.clone(), all_connected.clone());
                    greenhub::spawn(move || client(i, addr, connected, all_connected))
                })
                .collect();
            let failures: Vec<String> = clients
                .into_iter()
                .enumerate()
                .filter_map(|(i, c)| c.join().unwrap().err().map(|e| format!("client {i}: {e}")))
                .collect();
            let report = server.join().expect("the server thread");
            (report, failures, t.elapsed())
        },
    );
    eprintln!("{CLIENTS} WebSocket clients in {elapsed:?}: {report:?}");
    assert!(
        failures.is_empty(),
        "{} clients failed, the first: {}",
        failures.len(),
        failures[0]
    );
    assert!(
        report.errors.is_empty(),
        "server errors: {:?}",
        &report.errors[..report.errors.len().min(5)]
    );
    assert_eq!(report.clean, CLIENTS);
    assert_eq!(report.echoed, CLIENTS * MESSAGES);
    assert_eq!(
        report.peak, CLIENTS,
        "the server did not hold every client at once"
    );
}
