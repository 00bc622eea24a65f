//! The libc hooks after `patch_all()`: unmodified std code (sleeps, `std::net`, `Command`)
//! in greenlets cooperates, and keeps the blocking semantics it has without the hooks —
//! timeouts, error codes, the user's view of the blocking mode, kills and closes.
//!
//! Every test turns the hooks on (idempotent); each runs on its own thread, with its own hub.
#![cfg(feature = "monkey")]

mod monkey_support;

mod common;

use std::cell::{Cell, RefCell};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs, UdpSocket};
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::process::Command;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{DropFlag, OnDrop};
use greenhub::{Error, Timeout, spawn};
use monkey_support::{Ticker, patch};

/// O_NONBLOCK as the kernel has it (the raw system call: no hook in between).
fn kernel_nonblocking(fd: RawFd) -> bool {
    // SAFETY: F_GETFL reads the descriptor's flags.
    let fl = unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_GETFL) } as i32;
    assert!(fl >= 0, "F_GETFL failed");
    fl & libc::O_NONBLOCK != 0
}

/// O_NONBLOCK as the user sees it (through the `fcntl` hook).
fn user_nonblocking(fd: RawFd) -> bool {
    // SAFETY: F_GETFL reads the descriptor's flags.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    assert!(fl >= 0, "F_GETFL failed");
    fl & libc::O_NONBLOCK != 0
}

/// A connected pair of std TCP streams on loopback, made on this thread.
fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    (client, server)
}

/// An address where nothing listens.
fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[test]
fn std_sleep_in_10000_greenlets_overlaps_and_still_blocks_a_plain_thread() {
    patch();
    let t = Instant::now();
    let sleepers: Vec<_> = (0..10_000)
        .map(|_| spawn(|| std::thread::sleep(Duration::from_millis(100))))
        .collect();
    for h in sleepers {
        h.join().unwrap();
    }
    let took = t.elapsed();
    eprintln!("10,000 greenlets in std::thread::sleep(100 ms): {took:?}");
    assert!(took >= Duration::from_millis(100), "{took:?}");
    // ~0.15 s on an idle machine (target: under 0.5 s); sequential would be 1,000 s.
    assert!(
        took < Duration::from_secs(3),
        "the sleeps did not overlap: {took:?}"
    );

    let plain = std::thread::spawn(|| {
        let t = Instant::now();
        std::thread::sleep(Duration::from_millis(100));
        t.elapsed()
    });
    assert!(plain.join().unwrap() >= Duration::from_millis(100));
}

#[test]
fn std_sleep_in_a_greenlet_lets_the_others_run() {
    patch();
    let ticker = Ticker::start();
    spawn(|| std::thread::sleep(Duration::from_millis(200)))
        .join()
        .unwrap();
    let ticks = ticker.stop().count;
    assert!(
        ticks >= 5,
        "the ticker ran only {ticks} times during the sleep"
    );
}

#[test]
fn the_main_greenlet_runs_the_hub_while_a_hooked_read_waits() {
    patch();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        greenhub::sleep(Duration::from_millis(50));
        conn.write_all(b"late").unwrap();
    });
    // If the read blocked the thread, the server greenlet could never write: a deadlock.
    let mut client = TcpStream::connect(addr).unwrap();
    let mut buf = [0; 4];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"late");
    server.join().unwrap();
}

#[test]
fn an_unmodified_std_echo_exchange_between_greenlets() {
    patch();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = spawn(move || {
        for _ in 0..20 {
            let (mut conn, _) = listener.accept().unwrap();
            spawn(move || {
                let mut buf = [0; 64];
                loop {
                    match conn.read(&mut buf).unwrap() {
                        0 => break,
                        n => conn.write_all(&buf[..n]).unwrap(),
                    }
                }
            });
        }
    });
    let clients: Vec<_> = (0..20)
        .map(|i| {
            spawn(move || {
                let mut c = TcpStream::connect(addr).unwrap();
                let msg = format!("hello {i}");
                for _ in 0..10 {
                    c.write_all(msg.as_bytes()).unwrap();
                    let mut back = vec![0; msg.len()];
                    c.read_exact(&mut back).unwrap();
                    assert_eq!(back, msg.as_bytes());
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    server.join().unwrap();
}

#[test]
fn a_socket_the_user_made_non_blocking_gets_would_block() {
    patch();
    let (client, _server) = pair();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    spawn(move || {
        client.set_nonblocking(true).unwrap();
        let e = (&client).read(&mut [0; 8]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::WouldBlock);
        assert!(user_nonblocking(client.as_raw_fd()));

        listener.set_nonblocking(true).unwrap();
        let e = listener.accept().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::WouldBlock);
    })
    .join()
    .unwrap();
}

#[test]
fn msg_dontwait_on_a_blocking_socket_does_not_wait() {
    patch();
    let (client, _server) = pair();
    spawn(move || {
        let fd = client.as_raw_fd();
        let mut buf = [0u8; 4];
        let t = Instant::now();
        // SAFETY: receives into our buffer.
        let r = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), 4, libc::MSG_DONTWAIT) };
        assert_eq!(r, -1);
        assert_eq!(
            io::Error::last_os_error().raw_os_error(),
            Some(libc::EAGAIN)
        );
        assert!(t.elapsed() < Duration::from_secs(1));
        assert!(!user_nonblocking(fd));
    })
    .join()
    .unwrap();
}

#[test]
fn so_rcvtimeo_gives_would_block_after_the_timeout_while_others_run() {
    patch();
    let (client, _server) = pair();
    let ticker = Ticker::start();
    let (kind, took) = spawn(move || {
        client
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let t = Instant::now();
        let e = (&client).read(&mut [0; 8]).unwrap_err();
        (e.kind(), t.elapsed())
    })
    .join()
    .unwrap();
    assert_eq!(
        kind,
        ErrorKind::WouldBlock,
        "std's answer for a socket timeout"
    );
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    let ticks = ticker.stop().count;
    assert!(
        ticks >= 5,
        "the read blocked the hub (ticker ran {ticks} times)"
    );
}

#[test]
fn so_sndtimeo_gives_would_block_when_the_peer_does_not_read() {
    patch();
    let (client, _server) = pair();
    let (kind, took) = spawn(move || {
        client
            .set_write_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let t = Instant::now();
        let big = vec![7u8; 64 << 20];
        let e = (&client).write_all(&big).unwrap_err();
        (e.kind(), t.elapsed())
    })
    .join()
    .unwrap();
    assert_eq!(kind, ErrorKind::WouldBlock);
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[test]
fn closing_a_socket_wakes_the_greenlet_waiting_on_it_with_ebadf() {
    patch();
    let (client, _server) = pair();
    let fd = client.into_raw_fd();
    let reader = spawn(move || {
        let mut buf = [0u8; 8];
        let t = Instant::now();
        // SAFETY: reads into our buffer from a descriptor we own.
        let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        (r, io::Error::last_os_error().raw_os_error(), t.elapsed())
    });
    let closer = spawn(move || {
        greenhub::sleep(Duration::from_millis(100));
        // SAFETY: closes the descriptor the reader waits on (it owns no handle to it).
        unsafe { libc::close(fd) }
    });
    assert_eq!(closer.join().unwrap(), 0);
    reader
        .join_timeout(Duration::from_secs(10))
        .expect("the close woke the reader");
    let (r, errno, took) = reader.join().unwrap();
    assert_eq!((r, errno), (-1, Some(libc::EBADF)));
    assert!(
        took >= Duration::from_millis(100) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[test]
fn closing_a_socket_from_another_thread_wakes_its_waiter_with_ebadf() {
    patch();
    let (client, _server) = pair();
    let fd = client.into_raw_fd();
    let reader = spawn(move || {
        let mut buf = [0u8; 8];
        // SAFETY: reads into our buffer from a descriptor we own.
        let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        (r, io::Error::last_os_error().raw_os_error())
    });
    let closer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        // SAFETY: as in the test above.
        unsafe { libc::close(fd) }
    });
    reader
        .join_timeout(Duration::from_secs(10))
        .expect("the close woke the reader");
    assert_eq!(reader.join().unwrap(), (-1, Some(libc::EBADF)));
    assert_eq!(closer.join().unwrap(), 0);
}

#[test]
fn a_peer_reset_gives_connection_reset() {
    patch();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: sets SO_LINGER from a linger struct on our stack: the close sends RST.
        let r = unsafe {
            libc::setsockopt(
                conn.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0);
        greenhub::sleep(Duration::from_millis(50));
        drop(conn);
    });
    let kind = spawn(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        c.read(&mut [0; 8]).unwrap_err().kind()
    })
    .join()
    .unwrap();
    assert_eq!(kind, ErrorKind::ConnectionReset);
    server.join().unwrap();
}

#[test]
fn end_of_stream_and_a_broken_pipe_as_without_the_hooks() {
    patch();
    let (client, server) = pair();
    spawn(move || {
        let reader = spawn(move || {
            let mut c = &client;
            let mut buf = [0; 8];
            assert_eq!(c.read(&mut buf).unwrap(), 0, "end of stream");
            client
        });
        greenhub::sleep(Duration::from_millis(30));
        drop(server);
        let client = reader.join().unwrap();
        let mut failed = None;
        for _ in 0..100 {
            if let Err(e) = (&client).write_all(b"into the void") {
                failed = Some(e.kind());
                break;
            }
            greenhub::sleep(Duration::from_millis(5));
        }
        let kind = failed.expect("writes to a closed peer fail");
        assert!(
            matches!(kind, ErrorKind::BrokenPipe | ErrorKind::ConnectionReset),
            "{kind:?}"
        );
    })
    .join()
    .unwrap();
}

#[test]
fn a_refused_connection_is_reported_from_a_greenlet() {
    patch();
    let addr = closed_port();
    spawn(move || {
        let e = TcpStream::connect(addr).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
        // connect_timeout: a user non-blocking connect (EINPROGRESS), then poll.
        let e = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused);
    })
    .join()
    .unwrap();
}

#[test]
fn a_kill_during_a_hooked_read_fails_it_and_lands_at_the_next_switch_point() {
    patch();
    let (client, _server) = pair();
    let seen: Rc<RefCell<Option<io::Error>>> = Rc::default();
    let (dropped, after) = (Rc::new(Cell::new(false)), Rc::new(Cell::new(false)));
    let (s, d, a) = (seen.clone(), dropped.clone(), after.clone());
    let h = spawn(move || {
        let _guard = DropFlag(d);
        let r = (&client).read(&mut [0; 8]);
        *s.borrow_mut() = Some(r.expect_err("the kill fails the read"));
        greenhub::sleep(Duration::from_secs(10)); // the kill lands here
        a.set(true);
    });
    greenhub::sleep(Duration::from_millis(50));
    assert!(!h.is_finished(), "blocked in read");
    h.kill();
    assert!(matches!(h.join(), Err(Error::Killed)));
    let e = seen.borrow_mut().take().expect("the read returned");
    assert_eq!(e.raw_os_error(), Some(libc::ECANCELED), "{e}");
    assert!(dropped.get(), "the greenlet's destructors ran");
    assert!(!after.get(), "the kill landed at the sleep");
}

#[test]
fn a_kill_ends_a_std_sleep_early() {
    patch();
    let t = Instant::now();
    let h = spawn(|| std::thread::sleep(Duration::from_secs(10)));
    greenhub::sleep(Duration::from_millis(20));
    h.kill();
    assert!(h.is_finished());
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[test]
fn a_timeout_scope_cuts_a_hooked_read_short_with_timed_out() {
    patch();
    let (client, _server) = pair();
    let (kind, fired, took) = spawn(move || {
        let t = Instant::now();
        let scope = Timeout::start(Duration::from_millis(200));
        let e = (&client).read(&mut [0; 8]).unwrap_err();
        (e.kind(), scope.fired(), t.elapsed())
    })
    .join()
    .unwrap();
    assert_eq!(kind, ErrorKind::TimedOut);
    assert!(fired);
    eprintln!("Timeout(200 ms) around a hooked read ended after {took:?}");
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(took < Duration::from_millis(1000), "{took:?}");
}

#[test]
fn with_timeout_around_a_std_sleep_reports_the_timeout() {
    patch();
    let t = Instant::now();
    let r = spawn(|| {
        greenhub::with_timeout(Duration::from_millis(100), || {
            std::thread::sleep(Duration::from_secs(10));
        })
    })
    .join()
    .unwrap();
    assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn command_output_from_a_greenlet_reads_its_pipes_cooperatively() {
    patch();
    let ticker = Ticker::start();
    let out = spawn(|| {
        Command::new("sh")
            .args(["-c", "echo out; echo err >&2; sleep 0.3; echo end"])
            .output()
            .unwrap()
    })
    .join()
    .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, b"out\nend\n");
    assert_eq!(out.stderr, b"err\n");
    let ticks = ticker.stop().count;
    assert!(
        ticks >= 5,
        "the hub was blocked while the child ran ({ticks} ticks)"
    );
}

#[test]
fn a_forked_child_runs_hooked_calls_as_the_real_ones() {
    use std::os::unix::process::CommandExt;
    patch();
    let status = spawn(|| {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "exit 3"]);
        // SAFETY: the closure only sleeps and reads an atomic (async-signal-safe).
        unsafe {
            cmd.pre_exec(|| {
                std::thread::sleep(Duration::from_millis(5));
                if greenhub::monkey::is_patched() {
                    return Err(io::Error::other("the hooks cooperate in a child"));
                }
                Ok(())
            });
        }
        cmd.status()
    })
    .join()
    .unwrap()
    .unwrap();
    assert_eq!(status.code(), Some(3));
    assert!(greenhub::monkey::is_patched(), "the parent keeps its hooks");
}

#[test]
fn a_socket_made_in_a_greenlet_still_blocks_on_a_plain_thread() {
    patch();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let stream = spawn(move || TcpStream::connect(addr).unwrap())
        .join()
        .unwrap();
    let fd = stream.as_raw_fd();
    assert!(kernel_nonblocking(fd), "made non-blocking for the hub");
    assert!(!user_nonblocking(fd), "still blocking as the user sees it");
    let (mut server, _) = listener.accept().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = stream;
        let mut buf = [0; 5];
        let t = Instant::now();
        s.read_exact(&mut buf).unwrap();
        let waited = t.elapsed();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let t = Instant::now();
        let kind = s.read(&mut [0; 8]).unwrap_err().kind();
        (buf, waited, kind, t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(200));
    server.write_all(b"hello").unwrap();
    let (buf, waited, kind, timed_out) = reader.join().unwrap();
    assert_eq!(&buf, b"hello");
    assert!(
        waited >= Duration::from_millis(150),
        "the read blocked: {waited:?}"
    );
    assert_eq!(kind, ErrorKind::WouldBlock);
    assert!(timed_out >= Duration::from_millis(100), "{timed_out:?}");
}

#[test]
fn hooks_on_a_plain_thread_behave_as_the_real_calls() {
    patch();
    std::thread::spawn(|| {
        let (client, mut server) = pair();
        assert!(
            !kernel_nonblocking(client.as_raw_fd()),
            "left as the user made it"
        );
        client
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let t = Instant::now();
        let e = (&client).read(&mut [0; 8]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::WouldBlock);
        assert!(t.elapsed() >= Duration::from_millis(100));
        server.write_all(b"x").unwrap();
        let mut b = [0; 1];
        (&client).read_exact(&mut b).unwrap();
        assert!(!kernel_nonblocking(client.as_raw_fd()));
        let t = Instant::now();
        std::thread::sleep(Duration::from_millis(50));
        assert!(t.elapsed() >= Duration::from_millis(50));
    })
    .join()
    .unwrap();
}

#[test]
fn fcntl_and_fionbio_show_and_set_the_users_mode() {
    patch();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        greenhub::sleep(Duration::from_millis(100));
        conn.write_all(b"ok").unwrap();
        greenhub::sleep(Duration::from_millis(100));
    });
    spawn(move || {
        let c = TcpStream::connect(addr).unwrap();
        let fd = c.as_raw_fd();
        assert!(kernel_nonblocking(fd) && !user_nonblocking(fd));
        c.set_nonblocking(true).unwrap(); // ioctl(FIONBIO)
        assert!(user_nonblocking(fd));
        assert_eq!(
            (&c).read(&mut [0; 2]).unwrap_err().kind(),
            ErrorKind::WouldBlock
        );
        c.set_nonblocking(false).unwrap();
        assert!(kernel_nonblocking(fd) && !user_nonblocking(fd));
        // SAFETY: F_SETFL with the user's flags plus O_NONBLOCK.
        unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            assert_eq!(libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK), 0);
        }
        assert!(user_nonblocking(fd));
        assert_eq!(
            (&c).read(&mut [0; 2]).unwrap_err().kind(),
            ErrorKind::WouldBlock
        );
        // SAFETY: as above, without O_NONBLOCK.
        unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            assert_eq!(libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK), 0);
        }
        assert!(kernel_nonblocking(fd) && !user_nonblocking(fd));
        let mut buf = [0; 2];
        (&c).read_exact(&mut buf).unwrap(); // blocks (cooperatively) again
        assert_eq!(&buf, b"ok");
    })
    .join()
    .unwrap();
    peer.join().unwrap();
}

#[test]
fn a_duplicated_socket_keeps_the_mode_and_blocks_like_the_original() {
    patch();
    let (client, server) = pair();
    spawn(move || {
        let writer = spawn(move || {
            greenhub::sleep(Duration::from_millis(50));
            (&server).write_all(b"dup").unwrap();
            server
        });
        let dup = client.try_clone().unwrap(); // fcntl(F_DUPFD_CLOEXEC)
        drop(client);
        let mut buf = [0; 3];
        (&dup).read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"dup");
        assert!(!user_nonblocking(dup.as_raw_fd()));
        writer.join().unwrap();
    })
    .join()
    .unwrap();
}

#[test]
fn many_greenlets_can_wait_in_accept_on_one_listener() {
    patch();
    let listener = Rc::new(TcpListener::bind("127.0.0.1:0").unwrap());
    let addr = listener.local_addr().unwrap();
    let accepted = Rc::new(Cell::new(0));
    let acceptors: Vec<_> = (0..10)
        .map(|i| {
            let (l, n) = (listener.clone(), accepted.clone());
            spawn(move || {
                // Half share the descriptor, half accept on a duplicate of it.
                let own;
                let l: &TcpListener = if i % 2 == 0 {
                    &l
                } else {
                    own = l.try_clone().unwrap();
                    &own
                };
                let (mut c, _) = l.accept().unwrap();
                c.write_all(b"!").unwrap();
                n.set(n.get() + 1);
            })
        })
        .collect();
    let clients: Vec<_> = (0..10)
        .map(|_| {
            spawn(move || {
                let mut c = TcpStream::connect(addr).unwrap();
                let mut b = [0; 1];
                c.read_exact(&mut b).unwrap();
            })
        })
        .collect();
    for h in acceptors.into_iter().chain(clients) {
        h.join().unwrap();
    }
    assert_eq!(accepted.get(), 10);
}

#[test]
fn a_blocking_write_on_a_stream_socket_sends_everything() {
    patch();
    let (client, server) = pair();
    let len = 16 << 20;
    let reader = spawn(move || {
        let mut s = server;
        let mut total = 0;
        let mut buf = vec![0; 1 << 16];
        loop {
            match s.read(&mut buf).unwrap() {
                0 => return total,
                n => total += n,
            }
        }
    });
    let sent = spawn(move || {
        let data = vec![1u8; len];
        // One write call, not write_all: a blocking write sends it all.
        let n = (&client).write(&data).unwrap();
        drop(client);
        n
    })
    .join()
    .unwrap();
    assert_eq!(sent, len);
    assert_eq!(reader.join().unwrap(), len);
}

#[test]
fn msg_peek_and_msg_waitall_wait_as_the_blocking_calls() {
    patch();
    let (client, server) = pair();
    let writer = spawn(move || {
        let mut s = server;
        greenhub::sleep(Duration::from_millis(30));
        s.write_all(b"hello").unwrap();
        greenhub::sleep(Duration::from_millis(30));
        s.write_all(b" world").unwrap();
        s
    });
    spawn(move || {
        let fd = client.as_raw_fd();
        let mut buf = [0u8; 11];
        // SAFETY: receives into our buffer.
        let recv = |buf: &mut [u8], flags| unsafe {
            libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags)
        };
        assert_eq!(
            recv(&mut buf[..5], libc::MSG_PEEK),
            5,
            "peek waits for data"
        );
        assert_eq!(recv(&mut buf, libc::MSG_PEEK | libc::MSG_WAITALL), 11);
        assert_eq!(
            recv(&mut buf, libc::MSG_WAITALL),
            11,
            "waitall gathers both writes"
        );
        assert_eq!(&buf, b"hello world");
        drop(client);
    })
    .join()
    .unwrap();
    writer.join().unwrap();
}

#[test]
fn udp_recv_from_waits_cooperatively() {
    patch();
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = a.local_addr().unwrap();
    let ticker = Ticker::start();
    let sender = spawn(move || {
        greenhub::sleep(Duration::from_millis(100));
        b.send_to(b"datagram", to).unwrap();
    });
    let got = spawn(move || {
        let mut buf = [0; 16];
        let (n, _) = a.recv_from(&mut buf).unwrap();
        buf[..n].to_vec()
    })
    .join()
    .unwrap();
    assert_eq!(got, b"datagram");
    sender.join().unwrap();
    assert!(ticker.count() >= 3);
    ticker.stop();
}

#[test]
fn name_resolution_in_a_greenlet_works() {
    patch();
    let addrs = spawn(|| {
        ("localhost", 8080)
            .to_socket_addrs()
            .unwrap()
            .collect::<Vec<_>>()
    })
    .join()
    .unwrap();
    assert!(
        addrs
            .iter()
            .any(|a| a.ip().is_loopback() && a.port() == 8080),
        "{addrs:?}"
    );
    let e = spawn(|| ("no such host.invalid", 80).to_socket_addrs().unwrap_err())
        .join()
        .unwrap();
    assert_ne!(e.kind(), ErrorKind::TimedOut);
}

static HANDLED: AtomicBool = AtomicBool::new(false);

extern "C" fn sleepy_handler(_: libc::c_int) {
    std::thread::sleep(Duration::from_millis(100));
    HANDLED.store(true, Ordering::SeqCst);
}

#[test]
fn a_signal_handler_runs_hooked_calls_as_the_real_ones() {
    patch();
    // SAFETY: installs a handler for SIGUSR1 (used by no other test) and reads it back.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = sleepy_handler as *const () as libc::sighandler_t;
        act.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut act.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGUSR1, &act, std::ptr::null_mut()),
            0
        );
        let mut back: libc::sigaction = std::mem::zeroed();
        assert_eq!(
            libc::sigaction(libc::SIGUSR1, std::ptr::null(), &mut back),
            0
        );
        assert_eq!(
            back.sa_sigaction, act.sa_sigaction,
            "the user's handler, as installed"
        );
        assert_eq!(back.sa_flags & libc::SA_SIGINFO, 0);
    }
    let ticker = Ticker::start();
    greenhub::sleep(Duration::from_millis(30));
    let ticks = ticker.counter();
    let (before, after, took) = spawn(move || {
        let before = ticks.get();
        let t = Instant::now();
        // SAFETY: raises SIGUSR1 on this thread; its handler is installed above.
        unsafe { libc::raise(libc::SIGUSR1) };
        (before, ticks.get(), t.elapsed())
    })
    .join()
    .unwrap();
    assert!(HANDLED.load(Ordering::SeqCst));
    assert!(took >= Duration::from_millis(100), "{took:?}");
    assert_eq!(before, after, "no greenlet ran while the handler slept");
    ticker.stop();
    // SAFETY: restores the default action.
    unsafe { libc::signal(libc::SIGUSR1, libc::SIG_DFL) };
}

#[test]
fn a_std_stream_used_under_the_hooks_converts_to_a_greenhub_net_stream() {
    patch();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        for msg in [b"one", b"two"] {
            greenhub::sleep(Duration::from_millis(20));
            conn.write_all(msg).unwrap();
        }
    });
    spawn(move || {
        let mut std_stream = TcpStream::connect(addr).unwrap();
        let mut buf = [0; 3];
        std_stream.read_exact(&mut buf).unwrap(); // waits on the hub: registered there
        assert_eq!(&buf, b"one");
        let mut twin = greenhub::net::TcpStream::from_std(std_stream).unwrap();
        twin.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"two");
    })
    .join()
    .unwrap();
    peer.join().unwrap();
}

/// The inodes of the files registered under descriptor number `fd` in this process's
/// `epoll` instances (from `/proc/self/fdinfo`).
fn epoll_registrations(fd: RawFd) -> Vec<u64> {
    let mut inodes = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let is_epoll = std::fs::read_link(entry.path())
            .is_ok_and(|l| l.to_string_lossy().contains("eventpoll"));
        let info = format!("/proc/self/fdinfo/{}", entry.file_name().to_string_lossy());
        let Ok(info) = std::fs::read_to_string(info)
            .map_err(drop)
            .and_then(|i| if is_epoll { Ok(i) } else { Err(()) })
        else {
            continue;
        };
        for line in info.lines().filter(|l| l.starts_with("tfd:")) {
            let field = |name: &str| {
                let at = line.find(name)? + name.len();
                line[at..].split_whitespace().next().map(str::to_string)
            };
            let tfd: Option<RawFd> = field("tfd:").and_then(|v| v.parse().ok());
            let ino = field("ino:").and_then(|v| u64::from_str_radix(&v, 16).ok());
            if let (Some(t), Some(ino)) = (tfd, ino)
                && t == fd
            {
                inodes.push(ino);
            }
        }
    }
    inodes
}

/// The inode of the file `fd` names.
fn inode(fd: RawFd) -> u64 {
    // SAFETY: fstat writes into the struct we pass.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        assert_eq!(libc::fstat(fd, &mut st), 0);
        st.st_ino
    }
}

/// Makes `client` wait once on the hub (so that its descriptor gets registered).
fn wait_once(client: &TcpStream, server: &Rc<TcpStream>) {
    let s = server.clone();
    let writer = spawn(move || {
        greenhub::sleep(Duration::from_millis(20));
        (&*s).write_all(b"a").unwrap();
    });
    (&*client).read_exact(&mut [0; 1]).unwrap();
    writer.join().unwrap();
}

#[test]
fn closing_a_registered_socket_deregisters_it_while_its_file_stays_open() {
    patch();
    let (client, server) = pair();
    spawn(move || {
        wait_once(&client, &Rc::new(server));
        let (fd, file) = (client.as_raw_fd(), inode(client.as_raw_fd()));
        assert!(
            epoll_registrations(fd).contains(&file),
            "registered with the hub"
        );
        // epoll keys a registration by (fd, open file), and `keep` keeps the file open:
        // unless close deregisters the fd first, the registration outlives it.
        let keep = client.try_clone().unwrap();
        drop(client);
        assert!(
            !epoll_registrations(fd).contains(&file),
            "left behind by close"
        );
        drop(keep);
    })
    .join()
    .unwrap();
}

#[test]
fn dup2_over_a_registered_socket_deregisters_it_first() {
    patch();
    let (client, server) = pair();
    spawn(move || {
        let server = Rc::new(server);
        wait_once(&client, &server);
        let (fd, file) = (client.as_raw_fd(), inode(client.as_raw_fd()));
        assert!(
            epoll_registrations(fd).contains(&file),
            "registered with the hub"
        );
        let keep = client.try_clone().unwrap();
        let (other, _other_peer) = pair();
        // SAFETY: points `client`'s descriptor at another socket.
        assert_eq!(unsafe { libc::dup2(other.as_raw_fd(), fd) }, fd);
        assert!(
            !epoll_registrations(fd).contains(&file),
            "left behind by dup2"
        );
        // SAFETY: and back at its own socket, still open through `keep`.
        assert_eq!(unsafe { libc::dup2(keep.as_raw_fd(), fd) }, fd);
        let ticker = Ticker::start();
        wait_once(&client, &server);
        let ticks = ticker.stop().count;
        assert!(ticks >= 1, "the read waited on the hub again");
    })
    .join()
    .unwrap();
}

#[test]
fn splice_from_a_socket_waits_on_the_hub() {
    patch();
    let (client, server) = pair();
    let mut pipe = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    let r = unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(r, 0);
    let ticker = Ticker::start();
    let writer = spawn(move || {
        greenhub::sleep(Duration::from_millis(100));
        (&server).write_all(b"spliced").unwrap();
        server
    });
    let moved = spawn(move || {
        // SAFETY: moves up to 64 bytes from the socket into the pipe's write end.
        unsafe {
            libc::splice(
                client.as_raw_fd(),
                std::ptr::null_mut(),
                pipe[1],
                std::ptr::null_mut(),
                64,
                0,
            )
        }
    })
    .join()
    .unwrap();
    assert_eq!(moved, 7);
    writer.join().unwrap();
    assert!(ticker.stop().count >= 5, "the splice blocked the hub");
    let mut buf = [0u8; 7];
    // SAFETY: reads the pipe into our buffer, then closes both ends.
    unsafe {
        assert_eq!(libc::read(pipe[0], buf.as_mut_ptr().cast(), 7), 7);
        libc::close(pipe[0]);
        libc::close(pipe[1]);
    }
    assert_eq!(&buf, b"spliced");
}

#[test]
fn poll_and_select_wait_on_the_hub_and_report_as_the_kernel() {
    patch();
    let (client, server) = pair();
    let ticker = Ticker::start();
    let writer = spawn(move || {
        greenhub::sleep(Duration::from_millis(100));
        (&server).write_all(b"x").unwrap();
        greenhub::sleep(Duration::from_millis(100));
        (&server).write_all(b"y").unwrap();
        server
    });
    let fd = client.as_raw_fd();
    spawn(move || {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd on our stack.
        assert_eq!(unsafe { libc::poll(&mut p, 1, 5000) }, 1);
        assert_eq!(p.revents, libc::POLLIN);
        (&client).read_exact(&mut [0; 1]).unwrap();
        // A poll that times out returns 0, after its timeout.
        let t = Instant::now();
        // SAFETY: as above.
        assert_eq!(unsafe { libc::poll(&mut p, 1, 30) }, 0);
        assert!(t.elapsed() >= Duration::from_millis(30));
        // select, with the time left written back.
        // SAFETY: fd_set manipulation on sets we own; `fd` < FD_SETSIZE.
        unsafe {
            let mut set: libc::fd_set = std::mem::zeroed();
            libc::FD_ZERO(&mut set);
            libc::FD_SET(fd, &mut set);
            let mut tv = libc::timeval {
                tv_sec: 5,
                tv_usec: 0,
            };
            let n = libc::select(
                fd + 1,
                &mut set,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                &mut tv,
            );
            assert_eq!(n, 1);
            assert!(libc::FD_ISSET(fd, &set));
            assert!(tv.tv_sec < 5 && tv.tv_sec >= 3, "time left: {}s", tv.tv_sec);
        }
        (&client).read_exact(&mut [0; 1]).unwrap();
    })
    .join()
    .unwrap();
    writer.join().unwrap();
    assert!(ticker.stop().count >= 10, "poll or select blocked the hub");
}

/// A listener whose accept queue is full: a further connect gets no answer (its SYN is
/// dropped) until it gives up. Returns the listener's descriptor and address; the one
/// connection that fills the queue is returned too, to keep it open.
fn full_listener() -> (RawFd, SocketAddr, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let fd = l.into_raw_fd();
    // SAFETY: shrinks the listener's backlog to nothing.
    assert_eq!(unsafe { libc::listen(fd, 0) }, 0);
    let filler = TcpStream::connect(addr).unwrap();
    (fd, addr, filler)
}

/// A blocking connect to `addr` with SO_SNDTIMEO set: (result, errno, time taken).
fn connect_with_send_timeout(addr: SocketAddr, timeout: Duration) -> (i32, Option<i32>, Duration) {
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 only")
    };
    // SAFETY: a new socket, options and an address from structs on our stack; the
    // socket is closed before returning.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: timeout.as_micros() as libc::suseconds_t,
        };
        let r = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        );
        assert_eq!(r, 0);
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*v4.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        let t = Instant::now();
        let r = libc::connect(
            fd,
            (&raw const sin).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        let errno = io::Error::last_os_error().raw_os_error();
        let took = t.elapsed();
        libc::close(fd);
        (r, if r == 0 { None } else { errno }, took)
    }
}

#[test]
fn a_connect_that_outlasts_so_sndtimeo_says_einprogress_as_linux_does() {
    patch();
    let (listener, addr, _filler) = full_listener();
    let timeout = Duration::from_millis(200);
    // What Linux itself answers (a plain thread: the real call).
    let real = std::thread::spawn(move || connect_with_send_timeout(addr, timeout))
        .join()
        .unwrap();
    assert_eq!((real.0, real.1), (-1, Some(libc::EINPROGRESS)), "{real:?}");
    let ticker = Ticker::start();
    let hooked = spawn(move || connect_with_send_timeout(addr, timeout))
        .join()
        .unwrap();
    assert_eq!(
        (hooked.0, hooked.1),
        (-1, Some(libc::EINPROGRESS)),
        "{hooked:?}"
    );
    assert!(
        hooked.2 >= timeout && hooked.2 < Duration::from_secs(3),
        "{hooked:?}"
    );
    assert!(ticker.stop().count >= 5, "the connect blocked the hub");
    // SAFETY: closes the listener we own.
    unsafe { libc::close(listener) };
}

unsafe extern "C" {
    // What C code built with _FORTIFY_SOURCE calls for recv and poll.
    fn __recv_chk(fd: i32, buf: *mut libc::c_void, len: usize, buflen: usize, flags: i32) -> isize;
    fn __poll_chk(fds: *mut libc::pollfd, nfds: libc::nfds_t, timeout: i32, fdslen: usize) -> i32;
}

#[test]
fn the_fortified_variants_cooperate_too() {
    patch();
    let (client, server) = pair();
    let ticker = Ticker::start();
    let writer = spawn(move || {
        for msg in [b"1", b"2"] {
            greenhub::sleep(Duration::from_millis(100));
            (&server).write_all(msg).unwrap();
        }
        server
    });
    let fd = client.as_raw_fd();
    spawn(move || {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd on our stack, its true size given.
        let n = unsafe { __poll_chk(&mut p, 1, 5000, size_of::<libc::pollfd>()) };
        assert_eq!((n, p.revents), (1, libc::POLLIN));
        let mut buf = [0u8; 4];
        // SAFETY: receives into our buffer, its true size given.
        assert_eq!(
            unsafe { __recv_chk(fd, buf.as_mut_ptr().cast(), 4, 4, 0) },
            1
        );
        // SAFETY: as above.
        assert_eq!(
            unsafe { __recv_chk(fd, buf.as_mut_ptr().cast(), 4, 4, 0) },
            1
        );
        drop(client);
    })
    .join()
    .unwrap();
    writer.join().unwrap();
    assert!(
        ticker.stop().count >= 10,
        "a fortified call blocked the hub"
    );
}

#[test]
fn a_killed_greenlet_that_retries_a_hooked_call_does_not_spin() {
    patch();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (errors, accepted, stop) = (
        Rc::new(Cell::new(0)),
        Rc::new(Cell::new(0)),
        Rc::new(Cell::new(false)),
    );
    let (e, a, s) = (errors.clone(), accepted.clone(), stop.clone());
    // An accept loop that carries on after an error, as servers written for threads do
    // (bounded: a spinning loop ends after 1,000 errors, and the test fails).
    let server = spawn(move || {
        while !s.get() && e.get() < 1000 {
            match listener.accept() {
                Ok(_) => a.set(a.get() + 1),
                Err(_) => e.set(e.get() + 1),
            }
        }
    });
    greenhub::sleep(Duration::from_millis(20));
    let ticker = Ticker::start();
    assert!(matches!(
        server.kill_timeout(Duration::from_millis(200)),
        Err(Error::Timeout)
    ));
    assert_eq!(
        errors.get(),
        1,
        "the kill failed one accept, then it blocked again"
    );
    let ticks = ticker.stop().count;
    assert!(ticks >= 2, "the hub kept running ({ticks} ticks)");
    // It still serves, and ends when told to.
    stop.set(true);
    drop(TcpStream::connect(addr).unwrap());
    server.join_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(accepted.get(), 1);
}

#[test]
fn a_hooked_read_in_a_destructor_of_a_greenlet_killed_by_force_fails_instead_of_blocking() {
    patch();
    greenhub::sleep(Duration::ZERO); // this thread has a hub
    let (client, server) = pair();
    // Data comes only after 2 s: a read that really blocks would return it then.
    let late = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        let _ = (&server).write_all(b"x");
        server
    });
    let seen: Rc<Cell<Option<i32>>> = Rc::default();
    let out = seen.clone();
    let main = greenhub::getcurrent();
    let g = greenhub::Greenlet::new(move |_| {
        let _guard = OnDrop(move || {
            let mut byte = [0_u8; 1];
            out.set(Some(match (&client).read(&mut byte) {
                Ok(n) => n as i32,
                Err(e) => -e.raw_os_error().unwrap_or(0),
            }));
        });
        // The first kill is caught; the switch back makes the dropper kill again, by
        // force, and the guard's read runs while that kill unwinds the stack.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| main.switch(())));
        let _ = main.switch(());
        Ok(())
    });
    g.switch(()).unwrap();
    let t = Instant::now();
    drop(g); // returns: no abort, and no read that waits for the late data
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(seen.get(), Some(-libc::ECANCELED));
    drop(late.join().unwrap());
}
