//! Monkey patching (the `monkey` feature): unmodified blocking code — `std::net`,
//! `std::thread::sleep`, crates built on them, C libraries linked into the binary —
//! becomes cooperative, as gevent's `monkey.patch_all()` makes Python's.
//!
//! With the feature on, greenhub defines libc's socket, sleep and readiness functions
//! itself; a call made by std, by another crate or by C code lands in greenhub's
//! definition, which either passes it on to glibc's (found with `dlsym(RTLD_NEXT, ..)`)
//! or, in a greenlet, waits for the descriptor or the timer on the hub while the other
//! greenlets run. Nothing happens until [`patch_all`] turns the hooks on.
//!
//! ```
//! use std::io::{Read, Write};
//! use std::net::{TcpListener, TcpStream};
//!
//! greenhub::monkey::patch_all();
//! let listener = TcpListener::bind("127.0.0.1:0")?; // std's own listener
//! let addr = listener.local_addr()?;
//! let server = greenhub::spawn(move || -> std::io::Result<()> {
//!     let (mut conn, _) = listener.accept()?; // parks this greenlet, not the thread
//!     let mut buf = [0; 5];
//!     conn.read_exact(&mut buf)?;
//!     conn.write_all(&buf)
//! });
//! let ticker = greenhub::spawn(|| std::thread::sleep(std::time::Duration::from_millis(5)));
//! let mut client = TcpStream::connect(addr)?; // the main greenlet runs the hub meanwhile
//! client.write_all(b"hello")?;
//! let mut echo = [0; 5];
//! client.read_exact(&mut echo)?;
//! assert_eq!(&echo, b"hello");
//! server.join().unwrap()?;
//! ticker.join().unwrap();
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Where a hook cooperates
//!
//! In a greenlet other than the hub, on a thread that has a hub (the first greenhub call
//! on a thread — `spawn`, `sleep`, … — makes it; a hook never does); from the thread's
//! main greenlet it runs the hub until the call can go on, as
//! [`greenhub::net`](crate::net) does. Everywhere else it behaves exactly
//! like the real call: on plain threads (greenhub's thread pool and monitor among them),
//! in the hub greenlet, in a signal handler, in a hook called from inside a hook, in a
//! child after `fork`, and everywhere before `patch_all`. Before `patch_all` a hook
//! costs a load and a branch; after it, where it does not cooperate, a few loads (the
//! mode, two thread-locals, the descriptor's entry). Neither allocates, takes a lock or
//! initialises anything (std calls `poll` on descriptors 0-2 before `main`). The hooks
//! that make or close descriptors (`socket`, `accept`, `dup*`, `close`) also keep the
//! table right everywhere: an atomic update, and deregistering a descriptor that a hub
//! had registered.
//!
//! # The semantics kept (libco's model)
//!
//! - **Blocking mode.** A socket the user left blocking becomes `O_NONBLOCK` in the
//!   kernel the first time a greenlet would block on it (a socket made or accepted in a
//!   greenlet is made so at once). A table indexed by descriptor (sized from
//!   `RLIMIT_NOFILE`, lock-free atomics) remembers the user's mode and the socket's
//!   `SO_RCVTIMEO`/`SO_SNDTIMEO`; it is reset when the descriptor is closed or
//!   `dup2`-ed over. From then on every call on the socket, from any thread, behaves as
//!   the blocking call the user asked for: a socket made in a greenlet and handed to a
//!   plain thread still blocks there (the hook waits in the real `ppoll`). `fcntl(F_GETFL)`
//!   and `ioctl(FIONBIO)` show and set the user's mode, not the kernel's. A socket the
//!   user made non-blocking passes through untouched: its calls see `EAGAIN`
//!   (`WouldBlock`) as without the hooks.
//! - **Results.** `SO_RCVTIMEO`/`SO_SNDTIMEO` give `EAGAIN` after the timeout, as Linux
//!   does (a blocking `connect` then gives `EINPROGRESS`, as Linux does). A blocking
//!   `connect` waits for the connection and fails with its error (`ECONNREFUSED`,
//!   `ETIMEDOUT`, …); a non-blocking one says `EINPROGRESS` at once. A write on a
//!   blocking stream socket returns when everything is sent (short only after an error
//!   or the timeout, with the count sent, as the blocking call); reads return at the
//!   first bytes; end of stream, `EPIPE`, `ECONNRESET`, `MSG_PEEK`, `MSG_DONTWAIT` (the
//!   call passes through) and `MSG_WAITALL` (on `recv`/`recvfrom`) behave as without the
//!   hooks. A hook never makes a call fail with `EINTR`.
//! - **Kill and `Timeout`.** A hook is `extern "C"` with C frames possibly below it, so
//!   it never unwinds. A greenlet killed while blocked in a hooked call gets the call
//!   failing with `ECANCELED`, and the kill lands at its next greenhub switch point
//!   (`greenhub::sleep`, a queue, `join`, the twin sockets…: each unwinds it as a kill
//!   does); a [`Timeout`](crate::Timeout) scope makes the call fail with `ETIMEDOUT`
//!   (`ErrorKind::TimedOut`) at its deadline. The sleep functions have no such error (std's
//!   `thread::sleep` treats any error but `EINTR` as a bug): a kill or timeout ends the
//!   sleep early, as if it had slept, and lands at the next switch point.
//!   `getaddrinfo` fails with `EAI_SYSTEM` and `errno` `ECANCELED`/`ETIMEDOUT`.
//!   A kill fails one hooked call; until it lands, later hooked calls block as usual (code
//!   that retries a failed call in a loop does not spin), so a greenlet that only ever
//!   blocks in hooked calls — `loop { work(); std::thread::sleep(..) }` — is not killed:
//!   give it a switch point ([`greenhub::sleep`](crate::sleep)`(Duration::ZERO)` in the
//!   loop is one). An expired `Timeout` scope, as everywhere in greenhub, fails every
//!   wait in it until the scope is dropped.
//! - **Close.** A descriptor closed while greenlets wait on it wakes them with `EBADF`.
//!   Each descriptor has one registration with a hub's `epoll`, made the first time a
//!   greenlet waits on it; `close`, `dup2` and `dup3` deregister it before the real call
//!   closes it (`epoll` keys a registration by descriptor *and* open file, so it must go
//!   while the descriptor still names the file).
//!
//! # What is patched
//!
//! `sleep`, `usleep`, `nanosleep`, `clock_nanosleep` (relative and `TIMER_ABSTIME`);
//! `read`, `readv`, `write`, `writev`, `recv`, `recvfrom`, `recvmsg`, `send`, `sendto`,
//! `sendmsg`, `sendfile` (and `sendfile64`), `splice`; `accept`, `accept4`, `connect`;
//! `poll`, `ppoll`, `select`; `socket`, `socketpair`, `close`, `dup`, `dup2`, `dup3`,
//! `fcntl` (and `fcntl64`), `ioctl(FIONBIO)`, `setsockopt` (`SO_RCVTIMEO`/`SO_SNDTIMEO`:
//! `getsockopt` needs no hook, the kernel keeps the user's values); `getaddrinfo` (run on
//! greenhub's thread pool while the greenlet waits); `sigaction` and `signal` (to know
//! when a signal handler runs); and the `_FORTIFY_SOURCE` variants `__read_chk`,
//! `__recv_chk`, `__recvfrom_chk`, `__poll_chk`, `__ppoll_chk` that fortified C code calls.
//!
//! # What is not, and why
//!
//! - **Futexes**: std's `Mutex`, `Condvar`, `RwLock`, `mpsc`, `thread::park`, `JoinHandle::join`
//!   block in the `futex` system call, which has no libc function to interpose. A
//!   greenlet waiting on one blocks its thread (the monitor reports it). Use greenhub's
//!   [`sync`](crate::sync) types between greenlets.
//! - **Regular files** are always "ready" to the kernel: reading one never waits in a way
//!   a hub could use. Hooked calls on files, pipes and terminals pass through (the hooks
//!   never switch a non-socket to non-blocking mode: pipes and terminals are often shared
//!   with other processes); `poll`/`select` do wait cooperatively on pipes and eventfds.
//!   Use [`spawn_blocking`](crate::spawn_blocking) for slow file I/O.
//! - **Another runtime's `epoll_wait`** (tokio, mio inside a greenlet): a runtime that
//!   waits in its own `epoll_wait` blocks the thread; its sockets are non-blocking, so
//!   their calls pass through.
//! - **`waitpid`** and friends: waiting for a child blocks the thread
//!   (`std::process::Command::output` works; its pipes are read cooperatively).
//! - **glibc's internal calls** do not go through the symbols (the sockets inside
//!   `getaddrinfo`, `posix_spawn`'s child, `fclose`'s `close`), nor do raw system calls.
//!   A descriptor closed behind the hooks' back leaves a stale entry, which the next
//!   hooked call that makes a descriptor of that number (`socket`, `accept`, `dup`, …)
//!   resets. `pselect`, `epoll_wait`, `io_uring` are not patched.
//! - Descriptors 0-2 are never treated as sockets; descriptors beyond the table (beyond
//!   the hard `RLIMIT_NOFILE` when the hooks were turned on, at most 2^20) pass through.
//! - A socket handed to another process while greenhub has it in non-blocking mode is
//!   non-blocking there too (`O_NONBLOCK` belongs to the open file, which they share);
//!   std makes its sockets close-on-exec. `F_SETFL` on one of two duplicated descriptors
//!   updates only that descriptor's view of the mode.
//! - `recvmsg` with `MSG_WAITALL` returns at the first bytes; `ppoll`'s signal mask
//!   applies when it looks at the descriptors, not while it waits on the hub (other
//!   greenlets run then, with the thread's own mask); `POLLPRI` alone is not waited for.
//!
//! # Turning it off
//!
//! Build without the `monkey` feature (the default): no libc symbol is defined. Or set
//! `GREENHUB_MONKEY=off` in the environment: [`patch_all`] then leaves the hooks off.

mod block;
mod context;
mod dns;
mod fdtable;
mod fortify;
mod io;
mod poll;
mod real;
mod signal;
mod sleep;
mod sock;

use std::sync::Once;

/// Every hook, referenced from [`patch_all`] so that the linker keeps them all in a
/// binary that calls nothing else of this module.
struct Hooks(&'static [*const ()]);

// SAFETY: function addresses, never written and never dereferenced as data.
unsafe impl Sync for Hooks {}

#[used]
static HOOKS: Hooks = Hooks(&[
    io::read as *const (),
    io::readv as *const (),
    io::write as *const (),
    io::writev as *const (),
    io::recv as *const (),
    io::recvfrom as *const (),
    io::recvmsg as *const (),
    io::send as *const (),
    io::sendto as *const (),
    io::sendmsg as *const (),
    io::sendfile as *const (),
    io::sendfile64 as *const (),
    io::splice as *const (),
    sock::accept as *const (),
    sock::accept4 as *const (),
    sock::connect as *const (),
    sock::socket as *const (),
    sock::socketpair as *const (),
    sock::close as *const (),
    sock::dup as *const (),
    sock::dup2 as *const (),
    sock::dup3 as *const (),
    sock::fcntl as *const (),
    sock::fcntl64 as *const (),
    sock::ioctl as *const (),
    sock::setsockopt as *const (),
    poll::poll as *const (),
    poll::ppoll as *const (),
    poll::select as *const (),
    sleep::sleep as *const (),
    sleep::usleep as *const (),
    sleep::nanosleep as *const (),
    sleep::clock_nanosleep as *const (),
    dns::getaddrinfo as *const (),
    signal::sigaction as *const (),
    signal::signal as *const (),
    fortify::__read_chk as *const (),
    fortify::__recv_chk as *const (),
    fortify::__recvfrom_chk as *const (),
    fortify::__poll_chk as *const (),
    fortify::__ppoll_chk as *const (),
    resolve_at_start as *const (),
    child_after_fork as *const (),
]);

/// Resolves the real functions before `main` (and before std's own start-up calls).
#[used]
#[unsafe(link_section = ".init_array")]
static RESOLVE_AT_START: extern "C" fn() = resolve_at_start;

extern "C" fn resolve_at_start() {
    real::resolve_all();
}

/// In the child of a `fork`: the hooks stop cooperating and leave the parent's `epoll`
/// instances (which the child shares) alone; only the blocking emulation remains.
extern "C" fn child_after_fork() {
    if context::mode() == context::ON {
        context::set_mode(context::CHILD);
    }
}

/// Turns the hooks on for the whole process (gevent's `monkey.patch_all()`); returns
/// whether they are on. Idempotent: later calls only report.
///
/// From then on, in greenlets, the patched libc calls (see the [module docs](self))
/// cooperate. With `GREENHUB_MONKEY=off` in the environment the hooks stay off and this
/// returns `false`; so it does in a child after `fork`.
///
/// ```
/// let on = greenhub::monkey::patch_all();
/// assert_eq!(on, greenhub::monkey::is_patched());
/// assert_eq!(greenhub::monkey::patch_all(), on); // idempotent
/// ```
pub fn patch_all() -> bool {
    static ONCE: Once = Once::new();
    std::hint::black_box(HOOKS.0);
    ONCE.call_once(|| {
        if std::env::var_os("GREENHUB_MONKEY").is_some_and(|v| v.eq_ignore_ascii_case("off")) {
            return;
        }
        real::resolve_all();
        fdtable::init();
        // SAFETY: registers a child handler that only stores an atomic.
        unsafe {
            libc::pthread_atfork(None, None, Some(child_after_fork as unsafe extern "C" fn()))
        };
        if context::mode() == context::OFF {
            context::set_mode(context::ON);
        }
        signal::wrap_installed();
    });
    is_patched()
}

/// Are the hooks on in this process (see [`patch_all`])?
///
/// ```
/// greenhub::monkey::patch_all();
/// assert!(greenhub::monkey::is_patched() || std::env::var("GREENHUB_MONKEY").is_ok());
/// ```
pub fn is_patched() -> bool {
    context::mode() == context::ON
}
