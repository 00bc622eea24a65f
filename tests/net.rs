//! Cooperative networking: std-twin sockets, sharing rules, timeouts, kill, DNS,
//! StreamServer (cap, stop, panics, EMFILE back-off) and the networking examples.
//!
//! The example tests run binaries from target/<profile>/examples: `cargo test` builds them;
//! with `cargo test --test net` build them first (`cargo build --release --examples`).

mod common;

use common::example;
use std::cell::{Cell, RefCell};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use greenhub::net::{
    Shutdown, StreamServer, TcpListener, TcpStream, ToSocketAddrs, UdpSocket, UnixDatagram,
    UnixListener, UnixStream, lookup_host, wait_readable, wait_writable,
};
use greenhub::{Error, Timeout, joinall, sleep, spawn, spawn_blocking, with_timeout};

const MS: Duration = Duration::from_millis(1);

/// Echoes until the peer closes or an error.
fn echo(mut conn: TcpStream, _peer: SocketAddr) {
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = conn.read(&mut buf) {
        if conn.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

fn echo_server() -> StreamServer {
    let server = StreamServer::bind("127.0.0.1:0", echo).unwrap();
    server.start().unwrap();
    server
}

/// A connected pair: (server side, client side).
fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap(); // the backlog completes it
    let (s, _) = l.accept().unwrap();
    (s, c)
}

/// Polls `cond` cooperatively until it holds or `limit` passes.
fn wait_until(limit: Duration, cond: impl Fn() -> bool) -> bool {
    let t = Instant::now();
    while !cond() {
        if t.elapsed() > limit {
            return false;
        }
        sleep(2 * MS);
    }
    true
}

fn temp_path(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let p = std::env::temp_dir().join(format!("greenhub-{tag}-{}-{n}.sock", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

// ---- echo over TCP, UDP, Unix ----

#[test]
fn tcp_echo_thread_per_connection_style_with_greenlets() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = spawn(move || {
        for stream in listener.incoming().take(10) {
            let stream = stream.unwrap();
            let peer = stream.peer_addr().unwrap();
            spawn(move || echo(stream, peer));
        }
    });
    let t = Instant::now();
    let clients: Vec<_> = (0..10)
        .map(|i| {
            spawn(move || -> io::Result<String> {
                let mut s = TcpStream::connect(addr)?;
                sleep(20 * MS); // all ten hold their connection at once
                writeln!(s, "client {i}")?;
                let mut line = String::new();
                BufReader::new(&s).read_line(&mut line)?;
                Ok(line)
            })
        })
        .collect();
    for (i, c) in clients.into_iter().enumerate() {
        assert_eq!(c.join().unwrap().unwrap(), format!("client {i}\n"));
    }
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "concurrent, not 10 x 20 ms in a row"
    );
    server.join().unwrap();
}

#[test]
fn udp_echo_and_recv_timeout() {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    let echo = spawn(move || -> io::Result<()> {
        let mut buf = [0u8; 1500];
        for _ in 0..3 {
            let (n, from) = server.recv_from(&mut buf)?;
            server.send_to(&buf[..n], from)?;
        }
        Ok(())
    });
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.connect(addr).unwrap();
    assert_eq!(client.peer_addr().unwrap(), addr);
    let mut buf = [0u8; 1500];
    for msg in [&b"one"[..], b"two", b"three"] {
        client.send(msg).unwrap();
        let n = client.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], msg);
    }
    echo.join().unwrap().unwrap();
    client.set_read_timeout(Some(20 * MS)).unwrap();
    let t = Instant::now();
    assert_eq!(
        client.recv(&mut buf).unwrap_err().kind(),
        io::ErrorKind::WouldBlock,
        "std's EAGAIN"
    );
    assert!(t.elapsed() >= 20 * MS);
    // send_to with a host name resolves cooperatively.
    let other = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = other.local_addr().unwrap().port();
    let unconnected = UdpSocket::bind("127.0.0.1:0").unwrap();
    unconnected
        .send_to(b"by name", ("localhost", port))
        .unwrap_or_else(|_| {
            // "localhost" may resolve to ::1 first on some hosts: fall back to the literal.
            unconnected
                .send_to(b"by name", ("127.0.0.1", port))
                .unwrap()
        });
    let (n, from) = other.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"by name");
    assert_eq!(from, unconnected.local_addr().unwrap());
}

#[test]
fn unix_stream_echo_over_a_path() {
    let path = temp_path("echo");
    let listener = UnixListener::bind(&path).unwrap();
    let server = spawn(move || -> io::Result<()> {
        let (mut conn, _) = listener.accept()?;
        let mut buf = [0u8; 64];
        loop {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            conn.write_all(&buf[..n])?;
        }
    });
    let mut c = UnixStream::connect(&path).unwrap();
    for msg in ["alpha", "beta"] {
        c.write_all(msg.as_bytes()).unwrap();
        let mut buf = vec![0u8; msg.len()];
        c.read_exact(&mut buf).unwrap();
        assert_eq!(buf, msg.as_bytes());
    }
    c.shutdown(Shutdown::Write).unwrap();
    server.join().unwrap().unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        UnixStream::connect(&path).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
}

#[test]
fn unix_pair_and_datagram_echo() {
    let (a, b) = UnixStream::pair().unwrap();
    let reader = spawn(move || {
        let mut s = String::new();
        (&b).read_to_string(&mut s).map(|_| s)
    });
    (&a).write_all(b"pair").unwrap();
    drop(a);
    assert_eq!(reader.join().unwrap().unwrap(), "pair");

    let (spath, cpath) = (temp_path("dgram-s"), temp_path("dgram-c"));
    let server = UnixDatagram::bind(&spath).unwrap();
    let client = UnixDatagram::bind(&cpath).unwrap();
    let echo = spawn(move || -> io::Result<()> {
        let mut buf = [0u8; 64];
        let (n, from) = server.recv_from(&mut buf)?;
        server.send_to(&buf[..n], from.as_pathname().unwrap())?;
        Ok(())
    });
    client.send_to(b"dgram", &spath).unwrap();
    let mut buf = [0u8; 64];
    let n = client.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"dgram");
    echo.join().unwrap().unwrap();
    let _ = std::fs::remove_file(&spath);
    let _ = std::fs::remove_file(&cpath);
}

// ---- scale ----

#[test]
fn a_thousand_concurrent_connections_each_get_their_own_echo() {
    const N: usize = 1000;
    let server = echo_server();
    let addr = server.local_addr().unwrap();
    let held = Rc::new(RefCell::new(Vec::new()));
    let t = Instant::now();
    let clients: Vec<_> = (0..N)
        .map(|i| {
            let held = held.clone();
            spawn(move || -> io::Result<()> {
                let mut s = TcpStream::connect(addr)?;
                let msg = format!("hello from {i:04}");
                s.write_all(msg.as_bytes())?;
                let mut buf = vec![0u8; msg.len()];
                s.read_exact(&mut buf)?;
                assert_eq!(buf, msg.as_bytes());
                held.borrow_mut().push(s); // keep it open
                Ok(())
            })
        })
        .collect();
    assert_eq!(joinall(&clients, Some(Duration::from_secs(60))), N);
    for c in clients {
        c.join().unwrap().unwrap();
    }
    let elapsed = t.elapsed();
    let stats = server.stats();
    assert_eq!(stats.accepted, N as u64);
    assert_eq!(stats.active, N, "every connection is still open and served");
    assert_eq!(stats.peak, N);
    // A second round trip on every open connection.
    let streams = std::mem::take(&mut *held.borrow_mut());
    let rounds: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            spawn(move || -> io::Result<()> {
                s.write_all(b"again")?;
                let mut buf = [0u8; 5];
                s.read_exact(&mut buf)?;
                assert_eq!(&buf, b"again");
                Ok(()) // s closes here
            })
        })
        .collect();
    for r in rounds {
        r.join().unwrap().unwrap();
    }
    assert!(wait_until(Duration::from_secs(10), || server
        .stats()
        .active
        == 0));
    assert_eq!(server.stop(Duration::from_secs(1)), 0);
    eprintln!("1000 connections: connect + echo in {elapsed:?}");
}

// ---- timeouts ----

#[test]
fn read_timeout_gives_would_block_and_zero_is_refused() {
    let (_s, c) = tcp_pair();
    assert_eq!(
        c.set_read_timeout(Some(Duration::ZERO)).unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
    c.set_read_timeout(Some(30 * MS)).unwrap();
    assert_eq!(c.read_timeout().unwrap(), Some(30 * MS));
    let t = Instant::now();
    let e = (&c).read(&mut [0u8; 8]).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    assert!(t.elapsed() >= 30 * MS && t.elapsed() < Duration::from_secs(2));
    assert_eq!(
        c.peek(&mut [0u8; 8]).unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
    c.set_read_timeout(None).unwrap();
    assert_eq!(c.read_timeout().unwrap(), None);
}

#[test]
fn write_timeout_when_the_peer_does_not_read() {
    let (_s, c) = tcp_pair();
    c.set_write_timeout(Some(50 * MS)).unwrap();
    let chunk = vec![7u8; 64 * 1024];
    let t = Instant::now();
    let mut written = 0usize;
    let err = loop {
        match (&c).write(&chunk) {
            Ok(n) => written += n,
            Err(e) => break e,
        }
        assert!(written < 1 << 30, "the socket buffers never filled");
    };
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(written > 0);
}

#[test]
fn a_timeout_scope_cuts_a_read_short_with_timed_out() {
    let (_s, mut c) = tcp_pair();
    let scope = Timeout::start(20 * MS);
    let e = c.read(&mut [0u8; 8]).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    assert!(scope.fired());
    drop(scope);
    let r = with_timeout(20 * MS, || c.read(&mut [0u8; 8]));
    assert!(matches!(r, Err(Error::Timeout)));
    // In a spawned greenlet too, with the socket's own timeout longer than the scope.
    let (_s2, c2) = tcp_pair();
    c2.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let h = spawn(move || {
        let _t = Timeout::start(10 * MS);
        let t = Instant::now();
        let e = (&c2).read(&mut [0u8; 1]).unwrap_err();
        (e.kind(), t.elapsed())
    });
    let (kind, took) = h.join().unwrap();
    assert_eq!(kind, io::ErrorKind::TimedOut);
    assert!(took < Duration::from_secs(5));
}

/// The kind and OS error code of the error `r` must be.
fn error_of<T>(r: io::Result<T>) -> (io::ErrorKind, Option<i32>) {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => (e.kind(), e.raw_os_error()),
    }
}

/// Writes `chunk` until a write fails (the peer never reads): that error.
fn write_until_error(mut w: impl Write) -> io::Result<()> {
    let chunk = vec![7u8; 64 * 1024];
    let mut written = 0usize;
    loop {
        written += w.write(&chunk)?;
        assert!(written < 1 << 30, "the socket buffers never filled");
    }
}

#[test]
fn socket_timeouts_return_the_errors_std_returns() {
    let t = 20 * MS;
    // TCP: read, peek, write. std's call and ours on twin connections.
    let std_l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let std_c = std::net::TcpStream::connect(std_l.local_addr().unwrap()).unwrap();
    let _std_s = std_l.accept().unwrap();
    std_c.set_read_timeout(Some(t)).unwrap();
    std_c.set_write_timeout(Some(t)).unwrap();
    let (_s, c) = tcp_pair();
    c.set_read_timeout(Some(t)).unwrap();
    c.set_write_timeout(Some(t)).unwrap();
    let std_read = error_of((&std_c).read(&mut [0u8; 8]));
    assert_eq!(
        error_of((&c).read(&mut [0u8; 8])),
        std_read,
        "TcpStream::read"
    );
    assert_eq!(
        error_of(c.peek(&mut [0u8; 8])),
        error_of(std_c.peek(&mut [0u8; 8])),
        "TcpStream::peek"
    );
    assert_eq!(
        error_of(write_until_error(&c)),
        error_of(write_until_error(&std_c)),
        "TcpStream::write"
    );
    // UDP.
    let std_u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    std_u.set_read_timeout(Some(t)).unwrap();
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    u.set_read_timeout(Some(t)).unwrap();
    assert_eq!(
        error_of(u.recv_from(&mut [0u8; 8])),
        error_of(std_u.recv_from(&mut [0u8; 8])),
        "UdpSocket::recv_from"
    );
    // Unix stream and datagram.
    let (std_a, _std_b) = std::os::unix::net::UnixStream::pair().unwrap();
    std_a.set_read_timeout(Some(t)).unwrap();
    std_a.set_write_timeout(Some(t)).unwrap();
    let (a, _b) = UnixStream::pair().unwrap();
    a.set_read_timeout(Some(t)).unwrap();
    a.set_write_timeout(Some(t)).unwrap();
    assert_eq!(
        error_of((&a).read(&mut [0u8; 8])),
        error_of((&std_a).read(&mut [0u8; 8])),
        "UnixStream::read"
    );
    assert_eq!(
        error_of(write_until_error(&a)),
        error_of(write_until_error(&std_a)),
        "UnixStream::write"
    );
    let (std_d, _std_e) = std::os::unix::net::UnixDatagram::pair().unwrap();
    std_d.set_read_timeout(Some(t)).unwrap();
    let (d, _e) = UnixDatagram::pair().unwrap();
    d.set_read_timeout(Some(t)).unwrap();
    assert_eq!(
        error_of(d.recv(&mut [0u8; 8])),
        error_of(std_d.recv(&mut [0u8; 8])),
        "UnixDatagram::recv"
    );
    // The kind std gives on Linux, spelled out.
    assert_eq!(std_read, (io::ErrorKind::WouldBlock, Some(libc::EAGAIN)));

    // connect_timeout to a listener whose backlog is full (the SYN goes unanswered).
    let full = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    full.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    full.listen(0).unwrap();
    let addr = full.local_addr().unwrap().as_socket().unwrap();
    let mut held = Vec::new();
    let std_err = loop {
        match std::net::TcpStream::connect_timeout(&addr, 200 * MS) {
            Ok(s) => held.push(s),
            Err(e) => break e,
        }
        assert!(held.len() < 20, "the backlog never filled");
    };
    let ours = TcpStream::connect_timeout(&addr, 200 * MS).unwrap_err();
    assert_eq!(
        (ours.kind(), ours.raw_os_error()),
        (std_err.kind(), std_err.raw_os_error()),
        "connect_timeout: ours {ours}, std {std_err}"
    );
    assert_eq!(ours.to_string(), std_err.to_string());
    assert_eq!(ours.kind(), io::ErrorKind::TimedOut);

    // greenhub's own Timeout scope keeps TimedOut, also over a socket timeout.
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _scope = Timeout::start(t);
    assert_eq!(
        (&c).read(&mut [0u8; 8]).unwrap_err().kind(),
        io::ErrorKind::TimedOut
    );
}

/// A TCP socket bound to a loopback port without listening: connecting there is refused.
fn bound_unlistened_port() -> (std::os::fd::OwnedFd, SocketAddr) {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor we own; the sockaddr structs are
    // zero-initialised and of the sizes we pass.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
        let mut sin: libc::sockaddr_in = std::mem::zeroed();
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(libc::bind(fd, (&raw const sin).cast(), len), 0);
        let mut got = len;
        assert_eq!(libc::getsockname(fd, (&raw mut sin).cast(), &mut got), 0);
        let port = u16::from_be(sin.sin_port);
        (owned, SocketAddr::from(([127, 0, 0, 1], port)))
    }
}

#[test]
fn connect_and_connect_timeout_fail_and_succeed_as_std_does() {
    // A port that is bound but not listening (a closed listener's port could be reused
    // by a test running in parallel).
    let (_reserved, addr) = bound_unlistened_port();
    assert_eq!(
        TcpStream::connect(addr).unwrap_err().kind(),
        io::ErrorKind::ConnectionRefused
    );
    assert_eq!(
        TcpStream::connect_timeout(&addr, Duration::ZERO)
            .unwrap_err()
            .kind(),
        io::ErrorKind::InvalidInput
    );
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let s = TcpStream::connect_timeout(&l.local_addr().unwrap(), Duration::from_secs(5)).unwrap();
    assert_eq!(s.peer_addr().unwrap(), l.local_addr().unwrap());
    // std's rule for several addresses: the first that works.
    let addrs = [addr, l.local_addr().unwrap()];
    let s2 = TcpStream::connect(&addrs[..]).unwrap();
    assert_eq!(s2.peer_addr().unwrap(), addrs[1]);
}

// ---- kill, reset, half-close ----

#[test]
fn kill_during_read_unwinds_and_closes_the_socket() {
    struct Flag(Rc<Cell<bool>>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.set(true);
        }
    }
    let (server_side, mut client) = tcp_pair();
    let dropped = Rc::new(Cell::new(false));
    let d = dropped.clone();
    let h = spawn(move || {
        let _flag = Flag(d);
        let mut s = server_side;
        let _ = s.read(&mut [0u8; 1]);
        "read returned"
    });
    sleep(5 * MS); // it parks in read
    h.kill();
    assert!(matches!(h.join(), Err(Error::Killed)));
    assert!(dropped.get(), "destructors ran");
    // Its socket was dropped by the unwind: closed and deregistered, the peer sees EOF.
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(client.read(&mut [0u8; 1]).unwrap(), 0);

    // A killed reader of a shared socket withdraws its wait: the next reader is not busy.
    let (server_side, mut client) = tcp_pair();
    let shared = Rc::new(server_side);
    let s1 = shared.clone();
    let victim = spawn(move || (&*s1).read(&mut [0u8; 1]).map(|_| ()));
    sleep(5 * MS);
    victim.kill();
    let s2 = shared.clone();
    let next = spawn(move || {
        let mut b = [0u8; 2];
        (&*s2).read_exact(&mut b).map(|()| b)
    });
    client.write_all(b"ok").unwrap();
    assert_eq!(&next.join().unwrap().unwrap(), b"ok");
}

#[test]
fn peer_reset_gives_connection_reset() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let std_client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut conn, _) = l.accept().unwrap();
    let reader = spawn(move || conn.read(&mut [0u8; 16]));
    sleep(5 * MS); // parked in read
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd, and a pointer to a `linger` of the size we pass.
    let rc = unsafe {
        libc::setsockopt(
            std_client.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    drop(std_client); // SO_LINGER 0: close sends RST
    let e = reader.join().unwrap().unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
}

#[test]
fn half_close_reads_eof_and_can_still_write() {
    let (mut server_side, mut client) = tcp_pair();
    let server = spawn(move || -> io::Result<Vec<u8>> {
        let mut got = Vec::new();
        server_side.read_to_end(&mut got)?; // ends at the client's FIN
        server_side.write_all(b"reply after EOF")?;
        Ok(got)
    });
    client.write_all(b"request").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    client.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "reply after EOF");
    assert_eq!(server.join().unwrap().unwrap(), b"request");
    assert_eq!(
        client.write_all(b"x").unwrap_err().kind(),
        io::ErrorKind::BrokenPipe
    );
}

#[test]
fn short_read_then_eof_already_queued_does_not_hang() {
    // The peer's data and FIN are both queued before we read: the short read is followed
    // by end-of-file at once (no new readiness edge will come, so we must not wait for one).
    for _ in 0..20 {
        let (mut server_side, client) = tcp_pair();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        server_side.write_all(b"all of it").unwrap();
        drop(server_side);
        sleep(2 * MS);
        let mut got = Vec::new();
        (&client).read_to_end(&mut got).unwrap();
        assert_eq!(got, b"all of it");
    }
}

// ---- sharing ----

#[test]
fn two_readers_get_resource_busy_while_reader_and_writer_share() {
    let (server_side, mut client) = tcp_pair();
    let a = server_side.try_clone().unwrap();
    let first = spawn(move || {
        let mut b = [0u8; 4];
        (&a).read_exact(&mut b).map(|()| b)
    });
    sleep(5 * MS); // `first` parks reading
    let b = server_side.try_clone().unwrap();
    let second = spawn(move || (&b).read(&mut [0u8; 4]));
    let e = second.join().unwrap().unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ResourceBusy);
    // A writer on the same socket is fine while `first` still waits to read.
    let w = server_side.try_clone().unwrap();
    let writer = spawn(move || (&w).write_all(b"pong"));
    writer.join().unwrap().unwrap();
    let mut got = [0u8; 4];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong");
    client.write_all(b"ping").unwrap();
    assert_eq!(&first.join().unwrap().unwrap(), b"ping");
}

// ---- std interop ----

#[test]
fn std_thread_client_talks_to_greenhub_server() {
    let server = echo_server();
    let addr = server.local_addr().unwrap();
    // Blocking std clients on pool threads; this thread's hub serves them meanwhile.
    let replies = spawn_blocking(move || -> io::Result<Vec<String>> {
        let threads: Vec<_> = (0..4)
            .map(|i| {
                std::thread::spawn(move || -> io::Result<String> {
                    let mut s = std::net::TcpStream::connect(addr)?;
                    s.set_read_timeout(Some(Duration::from_secs(10)))?;
                    writeln!(s, "thread {i}")?;
                    let mut line = String::new();
                    BufReader::new(&s).read_line(&mut line)?;
                    Ok(line)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    })
    .unwrap()
    .unwrap();
    assert_eq!(
        replies,
        ["thread 0\n", "thread 1\n", "thread 2\n", "thread 3\n"]
    );
    server.stop(Duration::from_secs(1));
}

#[test]
fn std_conversions_and_raw_fds() {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = std_listener.local_addr().unwrap();
    let listener = TcpListener::from(std_listener);
    let std_client = std::net::TcpStream::connect(addr).unwrap();
    let client = TcpStream::from(std_client);
    let (conn, peer) = listener.accept().unwrap();
    assert_eq!(peer, client.local_addr().unwrap());
    // Into a raw fd and back (the last handle gives up its fd; a shared one a duplicate).
    let clone = conn.try_clone().unwrap();
    let dup = clone.into_raw_fd();
    assert_ne!(dup, conn.as_raw_fd());
    // SAFETY: `dup` is a fresh descriptor of a TCP socket that nothing else owns.
    let again = unsafe { TcpStream::from_raw_fd(dup) };
    (&client).write_all(b"via dup").unwrap();
    let mut buf = [0u8; 7];
    (&again).read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"via dup");
    let fd = conn.into_raw_fd();
    // SAFETY: `fd` was just given up by its last handle.
    let back = unsafe { TcpStream::from_raw_fd(fd) };
    back.set_nodelay(true).unwrap();
    assert!(back.nodelay().unwrap());
    back.set_ttl(42).unwrap();
    assert_eq!(back.ttl().unwrap(), 42);
    assert!(back.take_error().unwrap().is_none());
}

#[test]
fn nonblocking_mode_returns_would_block() {
    let (s, _c) = tcp_pair();
    s.set_nonblocking(true).unwrap();
    assert_eq!(
        (&s).read(&mut [0u8; 1]).unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(5 * MS)).unwrap();
    let e = (&s).read(&mut [0u8; 1]).unwrap_err();
    assert_eq!(
        e.raw_os_error(),
        Some(libc::EAGAIN),
        "a read timeout, as std: {e}"
    );
}

#[test]
fn wait_readable_and_writable_on_foreign_fds() {
    let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
    let e = wait_readable(&a, Some(10 * MS)).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    let waiter = spawn(move || wait_readable(&a, Some(Duration::from_secs(5))).map(|()| a));
    sleep(5 * MS);
    b.write_all(b"!").unwrap();
    let a = waiter.join().unwrap().unwrap();
    wait_writable(&a, None).unwrap();
    // A greenhub socket is already registered: a clear error.
    let (g, _h) = UnixStream::pair().unwrap();
    assert_eq!(
        wait_readable(&g, Some(MS)).unwrap_err().kind(),
        io::ErrorKind::AlreadyExists
    );
}

// ---- DNS ----

#[test]
fn dns_lookup_of_localhost_and_std_errors() {
    let addrs: Vec<_> = lookup_host("localhost:80").unwrap().collect();
    assert!(!addrs.is_empty());
    assert!(
        addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 80),
        "{addrs:?}"
    );
    let pair: Vec<_> = ("localhost", 8080).to_socket_addrs().unwrap().collect();
    assert!(pair.iter().all(|a| a.port() == 8080));
    assert_eq!(
        greenhub::net::gethostbyname("localhost").unwrap(),
        std::net::Ipv4Addr::LOCALHOST
    );
    // A failed lookup gives std's error.
    let name = "no-such-host.invalid:80";
    let ours = lookup_host(name).unwrap_err();
    let std_err = std::net::ToSocketAddrs::to_socket_addrs(name).unwrap_err();
    assert_eq!(ours.kind(), std_err.kind());
    assert_eq!(ours.to_string(), std_err.to_string());
    // Malformed input: std's InvalidInput, no lookup.
    for bad in ["localhost", "localhost:notaport"] {
        assert_eq!(
            lookup_host(bad).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
    // A connect by name works.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let s = TcpStream::connect(("localhost", port))
        .or_else(|_| TcpStream::connect(format!("127.0.0.1:{port}")))
        .unwrap();
    assert_eq!(s.peer_addr().unwrap().port(), port);
}

#[test]
fn dns_runs_on_the_pool_while_other_greenlets_run() {
    // Resolve on a pool thread while a ticker keeps ticking on this hub.
    let ticks = Rc::new(Cell::new(0));
    let t2 = ticks.clone();
    let ticker = spawn(move || {
        for _ in 0..3 {
            sleep(MS);
            t2.set(t2.get() + 1);
        }
    });
    let lookups: Vec<_> = (0..20)
        .map(|_| spawn(|| lookup_host("localhost:1").map(|it| it.count())))
        .collect();
    for l in lookups {
        assert!(l.join().unwrap().unwrap() > 0);
    }
    ticker.join().unwrap();
    assert_eq!(ticks.get(), 3);
}

// ---- StreamServer ----

#[test]
fn stream_server_caps_concurrent_handlers() {
    // Each handler greets, then holds its connection until the client closes.
    let server = StreamServer::bind("127.0.0.1:0", |mut conn: TcpStream, _| {
        let _ = conn.write_all(b"hi");
        let _ = conn.read(&mut [0u8; 1]);
    })
    .unwrap()
    .max_connections(2);
    server.start().unwrap();
    let addr = server.local_addr().unwrap();
    let mut clients: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let greeted = |c: &TcpStream| {
        c.set_read_timeout(Some(100 * MS)).unwrap();
        let mut b = [0u8; 2];
        (&*c).read_exact(&mut b).is_ok()
    };
    assert!(greeted(&clients[0]) && greeted(&clients[1]));
    assert!(
        !greeted(&clients[2]),
        "third connection waits in the backlog"
    );
    assert_eq!(server.stats().active, 2);
    drop(clients.remove(0)); // one finishes: the next is accepted
    assert!(greeted(&clients[1]));
    assert!(!greeted(&clients[2]));
    drop(clients.remove(0));
    assert!(greeted(&clients[1]));
    let stats = server.stats();
    assert_eq!((stats.peak, stats.accepted), (2, 4));
    drop(clients);
    assert!(wait_until(Duration::from_secs(5), || server.stats().active == 0));
    server.stop(Duration::ZERO);
}

#[test]
fn stream_server_stop_lets_handlers_finish_then_kills_the_rest() {
    let finished = Rc::new(Cell::new(0));
    let f = finished.clone();
    // Its own loopback address: after the stop no other test's listener can be on it.
    let server = StreamServer::bind("127.0.0.2:0", move |mut conn: TcpStream, _| {
        let mut b = [0u8; 1];
        if conn.read(&mut b).is_ok() && b[0] == b'q' {
            sleep(20 * MS); // quick: finishes within the stop timeout
            let _ = conn.write_all(b"done");
            f.set(f.get() + 1);
        } else {
            sleep(Duration::from_secs(60)); // slow: killed
        }
    })
    .unwrap();
    server.start().unwrap();
    let addr = server.local_addr().unwrap();
    let mut quick = TcpStream::connect(addr).unwrap();
    let mut slow = TcpStream::connect(addr).unwrap();
    quick.write_all(b"q").unwrap();
    slow.write_all(b"s").unwrap();
    assert!(wait_until(Duration::from_secs(5), || server.stats().active == 2));
    let t = Instant::now();
    let killed = server.stop(Duration::from_millis(200));
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(killed, 1);
    assert_eq!(finished.get(), 1);
    let mut reply = String::new();
    quick.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "done");
    assert_eq!(
        slow.read(&mut [0u8; 1]).unwrap(),
        0,
        "killed handler's socket closed"
    );
    assert!(!server.is_running());
    assert_eq!(server.stats().active, 0);
    assert_eq!(
        TcpStream::connect(addr).unwrap_err().kind(),
        io::ErrorKind::ConnectionRefused,
        "the listener is closed"
    );
    assert_eq!(
        server.start().unwrap_err().kind(),
        io::ErrorKind::NotConnected
    );
    assert_eq!(
        server.stop(Duration::ZERO),
        0,
        "stopping twice does nothing"
    );
}

#[test]
fn stream_server_handler_panic_closes_only_its_connection() {
    let server = StreamServer::bind("127.0.0.1:0", |mut conn: TcpStream, _| {
        let mut b = [0u8; 1];
        conn.read_exact(&mut b).unwrap();
        assert!(b[0] != b'!', "handler exploded on purpose");
        let _ = conn.write_all(&b);
        let _ = conn.read(&mut b);
    })
    .unwrap();
    server.start().unwrap();
    let addr = server.local_addr().unwrap();
    let mut good = TcpStream::connect(addr).unwrap();
    let mut bad = TcpStream::connect(addr).unwrap();
    bad.write_all(b"!").unwrap();
    assert_eq!(
        bad.read(&mut [0u8; 1]).unwrap(),
        0,
        "the panicking handler's connection closed"
    );
    good.write_all(b"g").unwrap();
    let mut b = [0u8; 1];
    good.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"g");
    assert!(server.is_running());
    assert_eq!(server.stats().active, 1);
    server.stop(Duration::ZERO);
}

#[test]
fn serve_forever_returns_after_stop_and_start_twice_is_an_error() {
    let server = StreamServer::bind("127.0.0.1:0", echo).unwrap();
    let s = server.clone();
    let stopper = spawn(move || {
        sleep(20 * MS);
        let addr = s.local_addr().unwrap();
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"x").unwrap();
        c.read_exact(&mut [0u8; 1]).unwrap();
        assert_eq!(s.start().unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        s.stop(Duration::from_millis(100))
    });
    server.serve_forever().unwrap();
    assert!(!server.is_running());
    assert_eq!(
        stopper.join().unwrap(),
        1,
        "the open echo connection was killed"
    );
}

#[test]
fn killing_serve_forever_stops_the_server() {
    let server = StreamServer::bind("127.0.0.3:0", echo).unwrap(); // its own address

    let addr = server.local_addr().unwrap();
    let s = server.clone();
    let h = spawn(move || s.serve_forever());
    sleep(5 * MS);
    assert!(server.is_running());
    h.kill();
    assert!(wait_until(Duration::from_secs(5), || !server.is_running()));
    sleep(5 * MS);
    assert_eq!(
        TcpStream::connect(addr).unwrap_err().kind(),
        io::ErrorKind::ConnectionRefused
    );
}

// ---- idle timeout ----

#[test]
fn idle_timeout_closes_slowloris_clients_while_an_active_client_is_served() {
    const IDLE: Duration = Duration::from_millis(300);
    const HALF_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: slow\r\n";
    let server = StreamServer::bind("127.0.0.1:0", echo)
        .unwrap()
        .idle_timeout(IDLE);
    server.start().unwrap();
    let addr = server.local_addr().unwrap();
    // Blocking std clients on other threads; this thread's hub serves them meanwhile.
    let (closed_after, rounds) = spawn_blocking(move || -> io::Result<(Vec<Duration>, u32)> {
        // The active client: a message every 100 ms for 5 idle timeouts.
        let active = std::thread::spawn(move || -> io::Result<u32> {
            let mut c = std::net::TcpStream::connect(addr)?;
            c.set_read_timeout(Some(Duration::from_secs(10)))?;
            let t = Instant::now();
            let mut rounds = 0;
            while t.elapsed() < 5 * IDLE {
                c.write_all(b"ping")?;
                let mut b = [0u8; 4];
                c.read_exact(&mut b)?;
                assert_eq!(&b, b"ping");
                rounds += 1;
                std::thread::sleep(100 * MS);
            }
            Ok(rounds)
        });
        // Twenty slowloris clients: half a request head, then silence.
        let slow: Vec<(std::net::TcpStream, Instant)> = (0..20)
            .map(|_| {
                let mut c = std::net::TcpStream::connect(addr)?;
                c.set_read_timeout(Some(Duration::from_secs(10)))?;
                c.write_all(HALF_REQUEST)?;
                Ok((c, Instant::now()))
            })
            .collect::<io::Result<_>>()?;
        // Each gets its bytes echoed, then end-of-file: the server closed it.
        let mut closed_after = Vec::new();
        for (mut c, sent) in slow {
            let mut got = Vec::new();
            c.read_to_end(&mut got)?; // a 10 s read timeout fails the test
            closed_after.push(sent.elapsed());
            assert_eq!(got, HALF_REQUEST);
        }
        Ok((closed_after, active.join().unwrap()?))
    })
    .unwrap()
    .unwrap();
    for d in &closed_after {
        assert!(
            *d >= IDLE,
            "closed {d:?} after its last byte, before the idle timeout"
        );
        assert!(*d < Duration::from_secs(8), "closed only after {d:?}");
    }
    assert!(rounds >= 5, "the active client was served {rounds} times");
    let stats = server.stats();
    assert_eq!(stats.accepted, 21);
    assert!(wait_until(Duration::from_secs(5), || server.stats().active == 0));
    server.stop(Duration::ZERO);
}

#[test]
fn idle_timeout_counts_waits_across_read_timeouts_but_not_the_handlers_own_work() {
    const IDLE: Duration = Duration::from_secs(1);
    let outcome: Rc<RefCell<Option<(u32, io::ErrorKind)>>> = Rc::default();
    let o = outcome.clone();
    let server = StreamServer::bind("127.0.0.1:0", move |mut conn: TcpStream, _| {
        let mut b = [0u8; 1];
        conn.read_exact(&mut b).unwrap();
        sleep(IDLE + IDLE / 2); // the handler's own work, longer than the idle timeout
        // Then a loop that retries on its own short read timeout: its waits add up.
        conn.set_read_timeout(Some(100 * MS)).unwrap();
        let mut retries = 0;
        let kind = loop {
            match conn.read(&mut b) {
                Ok(0) => break io::ErrorKind::UnexpectedEof,
                Ok(_) => conn.write_all(&b).unwrap(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => retries += 1,
                Err(e) => break e.kind(),
            }
        };
        *o.borrow_mut() = Some((retries, kind));
    })
    .unwrap()
    .idle_timeout(IDLE);
    server.start().unwrap();
    let addr = server.local_addr().unwrap();
    let closed_after = spawn_blocking(move || -> io::Result<Duration> {
        let mut c = std::net::TcpStream::connect(addr)?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        c.write_all(b"a")?;
        std::thread::sleep(IDLE + IDLE * 7 / 10); // just after the handler's work
        c.write_all(b"b")?;
        let mut b = [0u8; 1];
        c.read_exact(&mut b)?; // served: the work did not count as idle
        assert_eq!(&b, b"b");
        let t = Instant::now();
        assert_eq!(c.read(&mut b)?, 0, "closed by the idle timeout");
        Ok(t.elapsed())
    })
    .unwrap()
    .unwrap();
    assert!(wait_until(Duration::from_secs(5), || outcome
        .borrow()
        .is_some()));
    let (retries, kind) = outcome.borrow().unwrap();
    assert_eq!(
        kind,
        io::ErrorKind::TimedOut,
        "the idle timeout's own error"
    );
    assert!(
        (3..=15).contains(&retries),
        "{retries} read timeouts (100 ms) before the 1 s idle timeout"
    );
    assert!(closed_after >= IDLE * 9 / 10 && closed_after < Duration::from_secs(8));
    server.stop(Duration::ZERO);
}

#[test]
fn idle_timeout_spares_a_connection_that_only_receives() {
    const IDLE: Duration = Duration::from_millis(300);
    const TICKS: usize = 12; // one every 100 ms: four idle timeouts long
    let reader_saw: Rc<RefCell<Option<(io::ErrorKind, Duration)>>> = Rc::default();
    let saw = reader_saw.clone();
    let server = StreamServer::bind("127.0.0.1:0", move |conn: TcpStream, _| {
        // One greenlet writes ticks while another waits to read from a client that never
        // writes: bytes are moving, so the connection is not idle.
        let conn = Rc::new(conn);
        let w = conn.clone();
        let writer = spawn(move || {
            for _ in 0..TICKS {
                if (&*w).write_all(b"t").is_err() {
                    return;
                }
                sleep(100 * MS);
            }
        });
        let t = Instant::now();
        let e = (&*conn).read(&mut [0u8; 1]).unwrap_err();
        *saw.borrow_mut() = Some((e.kind(), t.elapsed()));
        let _ = writer.join();
    })
    .unwrap()
    .idle_timeout(IDLE);
    server.start().unwrap();
    let addr = server.local_addr().unwrap();
    let ticks = spawn_blocking(move || -> io::Result<Vec<u8>> {
        let mut c = std::net::TcpStream::connect(addr)?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut got = Vec::new();
        c.read_to_end(&mut got)?; // ends when the idle timeout closes it
        Ok(got)
    })
    .unwrap()
    .unwrap();
    assert_eq!(
        ticks,
        vec![b't'; TICKS],
        "every tick arrived before the close"
    );
    assert!(wait_until(Duration::from_secs(5), || reader_saw
        .borrow()
        .is_some()));
    let (kind, waited) = reader_saw.borrow().unwrap();
    assert_eq!(kind, io::ErrorKind::TimedOut);
    assert!(
        waited >= 100 * MS * (TICKS as u32 - 1),
        "the reader's wait ended after {waited:?}, while the writer was still moving bytes"
    );
    server.stop(Duration::ZERO);
}

// ---- EMFILE back-off, in a child process ----

const EMFILE_CHILD: &str = "GREENHUB_NET_EMFILE_CHILD";

/// The server half of `emfile_backoff_serves_open_connections_and_recovers`; does nothing
/// unless run as its child.
#[test]
fn emfile_child_server() {
    if std::env::var_os(EMFILE_CHILD).is_none() {
        return;
    }
    let server = StreamServer::bind("127.0.0.1:0", echo).unwrap(); // the hub raised the limit
    // Room for exactly 20 more descriptors (read_dir's own is closed again by then).
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count() - 1;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = (open + 20) as libc::rlim_t;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    println!("LISTENING {}", server.local_addr().unwrap());
    std::thread::spawn(|| {
        let _ = io::stdin().read(&mut [0u8; 1]); // the parent closes stdin to stop us
        std::process::exit(0);
    });
    server.serve_forever().unwrap();
}

const ACCEPT_PAUSE_CHILD: &str = "GREENHUB_NET_ACCEPT_PAUSE_CHILD";

/// Sets the soft `RLIMIT_NOFILE` of this process (`None`: up to the hard limit).
fn set_soft_fd_limit(soft: Option<usize>) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = soft.map_or(lim.rlim_max, |s| s as libc::rlim_t);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
}

/// The lowest free descriptor number: with the soft limit there, no descriptor can be made.
fn lowest_free_fd() -> usize {
    let probe = std::fs::File::open("/dev/null").unwrap(); // the kernel gives the lowest
    probe.as_raw_fd() as usize
}

/// The body of `accept_pauses_cooperatively_before_returning_emfile`; does nothing unless
/// run as its child (it lowers the whole process's descriptor limit).
#[test]
fn accept_pause_child() {
    if std::env::var_os(ACCEPT_PAUSE_CHILD).is_none() {
        return;
    }
    let path = temp_path("accept-pause");
    let unix = UnixListener::bind(&path).unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    // A connection waits in each backlog; accepting it needs a descriptor.
    let _u = std::os::unix::net::UnixStream::connect(&path).unwrap();
    let _t = std::net::TcpStream::connect(tcp.local_addr().unwrap()).unwrap();
    let ticks = Rc::new(Cell::new(0u32));
    let t2 = ticks.clone();
    let _ticker = spawn(move || {
        loop {
            sleep(MS);
            t2.set(t2.get() + 1);
        }
    });
    sleep(5 * MS);
    let accepts: [(&str, &dyn Fn() -> io::Result<()>); 2] = [
        ("tcp", &|| tcp.accept().map(drop)),
        ("unix", &|| unix.accept().map(drop)),
    ];
    for (name, accept) in accepts {
        set_soft_fd_limit(Some(lowest_free_fd())); // not one descriptor to spare
        for pause in [5, 10, 20, 40] {
            let (t, before) = (Instant::now(), ticks.get());
            let e = accept().unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{name}: {e}");
            assert!(
                t.elapsed() >= pause * MS,
                "{name}: EMFILE after {:?}, before the {pause} ms pause",
                t.elapsed()
            );
            assert!(
                ticks.get() > before,
                "{name}: the other greenlets ran meanwhile"
            );
        }
        set_soft_fd_limit(None);
        accept().unwrap(); // a success ends the episode
        println!("{name} ok");
    }
    // Non-blocking mode: the error at once, without switching.
    tcp.set_nonblocking(true).unwrap();
    let _t2 = std::net::TcpStream::connect(tcp.local_addr().unwrap()).unwrap();
    sleep(5 * MS);
    set_soft_fd_limit(Some(lowest_free_fd()));
    let before = ticks.get();
    let e = tcp.accept().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EMFILE));
    assert_eq!(ticks.get(), before, "non-blocking accept does not pause");
    println!("nonblocking ok");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn accept_pauses_cooperatively_before_returning_emfile() {
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "accept_pause_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ACCEPT_PAUSE_CHILD, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = common::output_within(child, "the child", Duration::from_secs(60));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in ["tcp ok", "unix ok", "nonblocking ok"] {
        assert!(text.contains(line), "{line:?} missing:\n{text}");
    }
}

/// The child's CPU time so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_comm.split(' ').collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after "(comm) ".
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn ping(s: &std::net::TcpStream, timeout: Duration) -> bool {
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut w = s;
    if w.write_all(b"p").is_err() {
        return false;
    }
    let mut b = [0u8; 1];
    let mut r = s;
    matches!(r.read(&mut b), Ok(1))
}

#[test]
fn emfile_backoff_serves_open_connections_and_recovers() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "emfile_child_server",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(EMFILE_CHILD, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            // The harness prints "test emfile_child_server ... " on the same line.
            if let Some((_, a)) = line.trim().split_once("LISTENING ") {
                let _ = tx.send(a.parse::<SocketAddr>().unwrap());
            }
        }
    });
    let addr = match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(a) => a,
        Err(e) => {
            let _ = child.kill();
            panic!("the child did not start listening: {e}");
        }
    };
    // Plain blocking std clients (this side has descriptors to spare). Open connections
    // until one is not served: the child is out of descriptors.
    let mut served = Vec::new();
    let first_waiting = loop {
        let c = std::net::TcpStream::connect(addr).unwrap();
        if !ping(&c, Duration::from_millis(300)) {
            break c;
        }
        served.push(c);
        assert!(served.len() < 200, "the child never ran out of descriptors");
    };
    let capacity = served.len();
    assert!((10..=25).contains(&capacity), "served {capacity}");
    let mut waiting = vec![first_waiting];
    for _ in 0..4 {
        let c = std::net::TcpStream::connect(addr).unwrap();
        (&c).write_all(b"w").unwrap(); // echoed once it is accepted
        waiting.push(c);
    }
    // The server is backing off, not spinning, and still serves open connections.
    let pid = child.id();
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(1));
    let spent = cpu_ticks(pid) - before;
    eprintln!("emfile: {capacity} served before EMFILE; {spent} CPU ticks in 1 s of back-off");
    assert!(
        spent < 25,
        "the child burned {spent} ticks in 1 s while backing off"
    );
    for c in &served[..3] {
        assert!(
            ping(c, Duration::from_secs(2)),
            "an open connection is still served"
        );
    }
    // Free ten descriptors: the five waiting connections get in (within the 1 s back-off).
    served.drain(..10);
    for c in &waiting {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 1];
        (&*c).read_exact(&mut b).unwrap(); // the echo of the byte sent while it waited
        assert!(ping(c, Duration::from_secs(2)));
    }
    assert!(ping(&served[0], Duration::from_secs(2)));
    drop(child.stdin.take()); // the child exits
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            break;
        }
        std::thread::sleep(10 * MS);
    }
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let logs = err.lines().filter(|l| l.contains("backing off")).count();
    assert_eq!(logs, 1, "one log line per episode; stderr:\n{err}");
    assert!(err.contains("Too many open files"), "{err}");
}

// ---- the examples ----

/// Starts a serving example on a free port; returns it and the address it printed.
fn start_example(name: &str) -> (std::process::Child, String) {
    start_example_with(name, &[])
}

/// As `start_example`, with more arguments after the address.
fn start_example_with(name: &str, args: &[&str]) -> (std::process::Child, String) {
    let mut cmd = Command::new(example(name));
    cmd.arg("127.0.0.1:0").args(args);
    start_server(cmd)
}

/// Starts a server that prints its address as the last word of its first line.
fn start_server(mut cmd: Command) -> (std::process::Child, String) {
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .rsplit(' ')
        .next()
        .unwrap()
        .trim_start_matches("http://")
        .to_string();
    assert!(addr.parse::<SocketAddr>().is_ok(), "printed {line:?}");
    (child, addr)
}

/// Kills the example when the test ends, passed or failed.
struct Reap(std::process::Child);
impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn echo_server_example_serves_std_clients() {
    let (child, addr) = start_example("echo_server");
    let _reap = Reap(child);
    let clients: Vec<_> = (0..3)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(&addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let msg = format!("line {i}\n");
                s.write_all(msg.as_bytes()).unwrap();
                let mut back = vec![0u8; msg.len()];
                s.read_exact(&mut back).unwrap();
                assert_eq!(back, msg.as_bytes());
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
}

#[test]
fn echo_server_example_recovers_from_emfile_under_a_low_ulimit() {
    // `ulimit -n 64` (soft and hard, as the shell does): about 55 connections fit.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", r#"ulimit -n 64 && exec "$0" 127.0.0.1:0"#])
        .arg(example("echo_server"))
        .stderr(Stdio::piped());
    let (mut child, addr) = start_server(cmd);
    let pid = child.id(); // `exec` keeps the shell's pid
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let _reap = Reap(child);
    // Count the "accept failed" lines (and keep the pipe drained).
    let accept_errors = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accept_errors.clone();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if line.contains("accept failed") {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    // Flood: more clients than descriptors, each sending one byte.
    let flood: Vec<std::net::TcpStream> = (0..150)
        .map(|_| {
            let c = std::net::TcpStream::connect(&addr).unwrap();
            (&c).write_all(b"f").unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let echoed = |c: &std::net::TcpStream| {
        c.set_nonblocking(true).unwrap();
        let got = matches!((&*c).read(&mut [0u8; 1]), Ok(1));
        c.set_nonblocking(false).unwrap();
        got
    };
    let served = flood.iter().filter(|c| echoed(c)).count();
    assert!(
        (10..100).contains(&served),
        "{served} of 150 flood clients were echoed: the server must serve those it \
         accepted and run out of descriptors for the rest"
    );
    // Out of descriptors, it waits without spinning.
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(1));
    let spent = cpu_ticks(pid) - before;
    assert!(
        spent < 25,
        "the server burned {spent} ticks in 1 s out of descriptors"
    );
    // The flood leaves: its connections close, descriptors free up, a new client is served.
    drop(flood);
    let t = Instant::now();
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(b"after the flood").unwrap();
    let mut back = [0u8; 15];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"after the flood");
    let recovered = t.elapsed();
    let errors = accept_errors.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "echo_server under ulimit -n 64: {served} served of 150, {spent} CPU ticks in 1 s \
         out of descriptors, {errors} accept errors logged, a new client served {recovered:?} \
         after the flood closed"
    );
    assert!(
        (1..100).contains(&errors),
        "{errors} accept errors logged: each after a pause"
    );
}

/// One keep-alive HTTP/1.1 exchange on a std connection: sends `requests` at once
/// (pipelined) and reads as many responses.
fn http_exchange(s: &std::net::TcpStream, requests: &str, n: usize) -> Vec<String> {
    (&*s).write_all(requests.as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    (0..n)
        .map(|_| {
            let mut len = 0;
            let mut status = String::new();
            r.read_line(&mut status).unwrap();
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                if h == "\r\n" {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).unwrap();
            format!("{} {}", status.trim(), String::from_utf8(body).unwrap())
        })
        .collect()
}

#[test]
fn http_hello_keep_alive_and_pipelining_with_a_std_client() {
    let (child, addr) = start_example("http_hello");
    let _reap = Reap(child);
    let s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let get = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    for _ in 0..3 {
        assert_eq!(http_exchange(&s, get, 1), ["HTTP/1.1 200 OK Hello, world!"]);
    }
    let three = get.repeat(3);
    assert_eq!(http_exchange(&s, &three, 3).len(), 3);
    let close = "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    assert_eq!(
        http_exchange(&s, close, 1),
        ["HTTP/1.1 200 OK Hello, world!"]
    );
    assert_eq!(
        (&s).read(&mut [0u8; 1]).unwrap(),
        0,
        "closed after Connection: close"
    );
}

#[test]
fn http_hello_reads_and_ignores_large_post_bodies_then_answers_pipelined_requests() {
    let (child, addr) = start_example("http_hello");
    let _reap = Reap(child);
    let s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let ok = "HTTP/1.1 200 OK Hello, world!";
    // Bodies of every size: the head limit counts the head only.
    for size in [1_000, 16_000, 17_000, 65_536, 1 << 20] {
        let body = "x".repeat(size);
        let post =
            format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n{body}");
        assert_eq!(http_exchange(&s, &post, 1), [ok], "POST of {size} bytes");
    }
    // A large body with requests pipelined behind it, in one write: each is answered,
    // in order, on the same connection.
    let body = "y".repeat(1 << 20);
    let get = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let batch = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}{get}{get}",
        body.len()
    );
    assert_eq!(http_exchange(&s, &batch, 3), [ok, ok, ok]);
    // A head over the limit still gets 431.
    let huge = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "h".repeat(20_000));
    let refused = http_exchange(&s, &huge, 1);
    assert!(refused[0].starts_with("HTTP/1.1 431"), "{refused:?}");
}

#[test]
fn curl_posts_a_megabyte_to_http_hello() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("curl is not installed: skipped (.ci/run installs it)");
        return;
    }
    let (child, addr) = start_example("http_hello");
    let _reap = Reap(child);
    let file = std::env::temp_dir().join(format!("greenhub-post-{}.bin", std::process::id()));
    std::fs::write(&file, vec![b'z'; 1 << 20]).unwrap();
    let url = format!("http://{addr}/upload");
    let data = format!("@{}", file.display());
    let common = ["-sS", "--max-time", "20", "-w", " %{http_code}"];
    // A plain POST, one that waits for `100 Continue` (curl's way for big bodies), then
    // a GET: all on one connection.
    let out = Command::new("curl")
        .args(common)
        .args(["--data-binary", &data, &url, "--next"])
        .args(common)
        .args(["-H", "Expect: 100-continue", "--data-binary", &data, &url])
        .args(["--next"])
        .args(common)
        .args(["-v", &url])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    let verbose = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{verbose}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Hello, world! 200Hello, world! 200Hello, world! 200"
    );
    assert!(
        verbose.contains("Re-using existing connection") || verbose.contains("Reusing existing"),
        "the GET after the bodies reused the connection:\n{verbose}"
    );
}

#[test]
fn http_hello_closes_a_silent_half_request_at_its_idle_timeout() {
    let (child, addr) = start_example_with("http_hello", &["0.5"]);
    let _reap = Reap(child);
    let idle = Duration::from_millis(500);
    let a = addr.clone();
    let active = std::thread::spawn(move || {
        let s = std::net::TcpStream::connect(&a).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let t = Instant::now();
        let mut rounds = 0;
        while t.elapsed() < 4 * idle {
            let r = http_exchange(&s, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 1);
            assert_eq!(r, ["HTTP/1.1 200 OK Hello, world!"]);
            rounds += 1;
            std::thread::sleep(100 * MS);
        }
        rounds
    });
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: sl").unwrap();
    let t = Instant::now();
    assert_eq!(
        slow.read(&mut [0u8; 64]).unwrap(),
        0,
        "closed, with no answer"
    );
    let closed_after = t.elapsed();
    assert!(
        closed_after >= idle && closed_after < Duration::from_secs(8),
        "{closed_after:?}"
    );
    assert!(
        active.join().unwrap() >= 4,
        "the keep-alive client was served meanwhile"
    );
}

#[test]
fn curl_keeps_its_connection_to_http_hello_alive_and_speaks_http_1_0() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("curl is not installed: skipped (.ci/run installs it)");
        return;
    }
    let (child, addr) = start_example("http_hello");
    let _reap = Reap(child);
    let url = format!("http://{addr}/");
    let out = Command::new("curl")
        .args(["-sS", "-v", "--max-time", "10", &url, &url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Hello, world!Hello, world!"
    );
    let verbose = String::from_utf8_lossy(&out.stderr);
    assert!(
        verbose.contains("Re-using existing connection") || verbose.contains("Reusing existing"),
        "curl kept the connection alive:\n{verbose}"
    );
    let http10 = Command::new("curl")
        .args(["-sS", "--http1.0", "--max-time", "10", &url])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&http10.stdout), "Hello, world!");
}

#[test]
fn download_all_example_prints_three_times() {
    let out = common::run_example("download_all", &[], Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<_> = text
        .lines()
        .filter(|l| l.contains("Downloaded 160 of 160"))
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("sequential") && lines[2].starts_with("greenlets"));
}

/// A std peer that writes `data`, then shuts down its write side, from its own thread;
/// returns its socket (still open) once both are done.
fn std_peer_writes_then_fin(addr: SocketAddr, data: &'static [u8]) -> std::net::TcpStream {
    std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(data).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        s
    })
    .join()
    .unwrap()
}

#[test]
fn a_read_after_a_short_read_sees_the_end_of_file_that_came_with_the_data() {
    // Data and FIN arrive together and the hub polls them (one edge for both) before the
    // first read, which is short: the next read must return the end-of-file, not wait
    // for an edge that never comes.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = spawn(move || listener.accept().map(|(s, _)| s));
    let _peer = std_peer_writes_then_fin(addr, b"hello");
    let mut conn = accepted.join().unwrap().unwrap();
    sleep(50 * MS); // the hub polls meanwhile
    let mut buf = [0u8; 64];
    assert_eq!(conn.read(&mut buf).unwrap(), 5);
    let eof = with_timeout(Duration::from_secs(5), || conn.read(&mut buf));
    assert_eq!(eof.expect("the end-of-file was waited for").unwrap(), 0);
}

#[test]
fn a_read_after_a_short_read_wakes_for_the_next_data() {
    let (mut a, mut b) = tcp_pair();
    let reader = spawn(move || {
        let mut buf = [0u8; 64];
        let mut got = Vec::new();
        while got.len() < 6 {
            let n = b.read(&mut buf).unwrap();
            assert!(n > 0, "no end-of-file before the data");
            got.extend_from_slice(&buf[..n]);
        }
        got
    });
    a.write_all(b"abc").unwrap();
    sleep(20 * MS); // the reader reads short, then waits
    a.write_all(b"def").unwrap();
    let got = with_timeout(Duration::from_secs(5), || reader.join().unwrap()).unwrap();
    assert_eq!(got, b"abcdef");
}
