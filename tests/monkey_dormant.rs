//! The hooks before `patch_all()`, and with `GREENHUB_MONKEY=off`: linked in, but every
//! hooked call is the real one, in greenlets too. No test of this binary turns them on
//! (only the child process of `greenhub_monkey_off_keeps_the_hooks_off` calls
//! `patch_all`, with the variable set).
#![cfg(feature = "monkey")]

use std::cell::Cell;
use std::ffi::CStr;
use std::io::{ErrorKind, Read};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Is the hook for `name` what calls from this binary reach (the executable's own
/// definition, not libc's)?
fn interposed(name: &CStr) -> bool {
    // Keeps `patch_all` (and through it every hook) in the binary without calling it.
    std::hint::black_box(greenhub::monkey::patch_all as fn() -> bool);
    // SAFETY: symbol lookups by NUL-terminated name.
    let (first, next) = unsafe {
        (
            libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()),
            libc::dlsym(libc::RTLD_NEXT, name.as_ptr()),
        )
    };
    !first.is_null() && !next.is_null() && first != next
}

/// Counts ticks of a greenlet sleeping 10 ms at a time (for `for_ms`).
fn ticker(for_ms: u32) -> (Rc<Cell<u32>>, greenhub::JoinHandle<()>) {
    let ticks = Rc::new(Cell::new(0));
    let t = ticks.clone();
    let h = greenhub::spawn(move || {
        for _ in 0..for_ms / 10 {
            greenhub::sleep(Duration::from_millis(10));
            t.set(t.get() + 1);
        }
    });
    (ticks, h)
}

/// std's sleep in a greenlet blocks the thread: no other greenlet runs meanwhile.
fn std_sleep_blocks_the_hub() {
    let (ticks, h) = ticker(300);
    greenhub::sleep(Duration::from_millis(20));
    let t = ticks.clone();
    let (before, after, took) = greenhub::spawn(move || {
        let before = t.get();
        let start = Instant::now();
        std::thread::sleep(Duration::from_millis(100));
        (before, t.get(), start.elapsed())
    })
    .join()
    .unwrap();
    assert!(took >= Duration::from_millis(100));
    assert_eq!(before, after, "nothing ran during the real sleep");
    h.join().unwrap();
}

#[test]
fn the_hooks_are_linked_and_interpose_libc() {
    for name in [
        c"read",
        c"recv",
        c"send",
        c"connect",
        c"nanosleep",
        c"poll",
        c"close",
    ] {
        assert!(interposed(name), "{name:?} is not interposed");
    }
    assert!(!greenhub::monkey::is_patched());
}

#[test]
fn before_patch_all_std_sleep_in_a_greenlet_blocks_the_hub() {
    assert!(interposed(c"nanosleep"));
    std_sleep_blocks_the_hub();
}

#[test]
fn before_patch_all_sockets_in_greenlets_keep_their_mode_and_block() {
    assert!(interposed(c"recv"));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    greenhub::spawn(move || {
        let client = TcpStream::connect(addr).unwrap();
        let _server = listener.accept().unwrap();
        // SAFETY: F_GETFL through the raw system call reads the kernel's flags.
        let fl = unsafe { libc::syscall(libc::SYS_fcntl, client.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(
            fl as i32 & libc::O_NONBLOCK,
            0,
            "the kernel mode is the user's"
        );
        client
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let t = Instant::now();
        let e = (&client).read(&mut [0; 4]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::WouldBlock);
        assert!(t.elapsed() >= Duration::from_millis(100));
    })
    .join()
    .unwrap();
}

#[test]
fn greenhub_monkey_off_keeps_the_hooks_off() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "monkey_off_child", "--ignored", "--nocapture"])
        .env("GREENHUB_MONKEY", "off")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("the hooks stayed off"), "{stdout}");
}

/// The child of the test above: `patch_all` with `GREENHUB_MONKEY=off`.
#[test]
#[ignore = "run in its own process, with GREENHUB_MONKEY=off, by greenhub_monkey_off_keeps_the_hooks_off"]
fn monkey_off_child() {
    if std::env::var("GREENHUB_MONKEY").as_deref() != Ok("off") {
        return;
    }
    assert!(!greenhub::monkey::patch_all());
    assert!(!greenhub::monkey::is_patched());
    std_sleep_blocks_the_hub();
    println!("the hooks stayed off");
}
