//! [`StreamServer`]: an accept loop that runs a handler in a new greenlet per connection
//! (gevent's `StreamServer`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use super::{TcpListener, TcpStream, ToSocketAddrs, out_of_resources};
use crate::greenlet::getcurrent;
use crate::hub::{self, JoinHandle, Waiter, Wake, current_hub, joinall, killall};

mod threads;

pub use threads::{ServerThreads, ThreadedBuilder};

/// Accepts in a row before the accept loop lets the handlers run.
const ACCEPT_BATCH: u32 = 64;
/// How long `serve_forever` lets handlers finish when it ends other than by `stop`.
const SERVE_FOREVER_STOP_TIMEOUT: Duration = Duration::from_secs(1);

/// Counters of a [`StreamServer`], from [`StreamServer::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// Handlers running now (one per open connection the server accepted).
    pub active: usize,
    /// The most handlers that ran at the same time.
    pub peak: usize,
    /// Connections accepted since the server was made.
    pub accepted: u64,
    /// Episodes of `accept` failing with `EMFILE`/`ENFILE`/`ENOBUFS`/`ENOMEM` (each
    /// logged once and backed off from).
    pub backoffs: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Idle,
    Running,
    Stopped,
}

/// An accept loop that runs `handler(stream, peer)` in a new greenlet for each connection
/// (gevent's `StreamServer`).
///
/// - [`max_connections`](StreamServer::max_connections) caps the handlers running at once;
///   while at the cap the server does not accept, so further connections wait in the
///   listen backlog.
/// - A handler that panics is reported on stderr (like any spawned greenlet); only its own
///   connection is closed.
/// - `accept` failing for want of file descriptors (`EMFILE`, `ENFILE`) or memory backs
///   off — 5 ms doubling to 1 s, cooperatively, so open connections keep being served
///   (the pause [`TcpListener::accept`] itself makes) — and is logged once per episode;
///   `ECONNABORTED`, `EPROTO`, `EPERM` and the other per-connection errors are skipped.
/// - [`idle_timeout`](StreamServer::idle_timeout) (off by default, as in gevent) closes
///   connections that stay silent: slowloris clients and half-open peers.
/// - [`stop`](StreamServer::stop) closes the listener, lets handlers finish until its
///   timeout, then kills the rest (closing their sockets).
///
/// The handle is cheap to clone; every clone controls the same server. Dropping the
/// handles does not stop a started server: call `stop`.
///
/// ```
/// use std::io::{Read, Write};
/// use std::time::Duration;
/// use greenhub::net::{StreamServer, TcpStream};
///
/// let server = StreamServer::bind("127.0.0.1:0", |mut conn: TcpStream, _peer| {
///     let mut buf = [0; 1024];
///     while let Ok(n @ 1..) = conn.read(&mut buf) {
///         if conn.write_all(&buf[..n]).is_err() {
///             break;
///         }
///     }
/// })?
/// .max_connections(10_000);
/// server.start()?;
///
/// let mut c = TcpStream::connect(server.local_addr()?)?;
/// c.write_all(b"echo")?;
/// let mut buf = [0; 4];
/// c.read_exact(&mut buf)?;
/// assert_eq!(&buf, b"echo");
/// assert_eq!(server.stats().accepted, 1);
/// drop(c);
/// server.stop(Duration::from_secs(1));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct StreamServer {
    inner: Rc<Inner>,
}

struct Inner {
    listener: RefCell<Option<TcpListener>>,
    addr: Option<SocketAddr>,
    handler: Rc<dyn Fn(TcpStream, SocketAddr)>,
    max_connections: Cell<Option<usize>>,
    idle_timeout: Cell<Option<Duration>>,
    state: Cell<State>,
    accept_loop: RefCell<Option<JoinHandle<()>>>,
    /// Why the accept loop ended, when it ended by itself.
    failure: RefCell<Option<io::Error>>,
    conns: RefCell<HashMap<u64, JoinHandle<()>>>,
    next_conn: Cell<u64>,
    /// The accept loop, waiting for a handler to finish (at the cap).
    slot_waiter: RefCell<Option<Waiter>>,
    /// `serve_forever` callers, waiting for the server to stop.
    stop_waiters: RefCell<Vec<Waiter>>,
    stats: Cell<ServerStats>,
    /// Counters of a [`ServerThreads`] this server is one hub of (its own and the sum),
    /// updated along with `stats`.
    mirrors: RefCell<Vec<Arc<Counters>>>,
}

impl StreamServer {
    /// A server on a listener bound to `addr`; call [`start`](StreamServer::start) or
    /// [`serve_forever`](StreamServer::serve_forever) to accept.
    ///
    /// # Errors
    /// As [`TcpListener::bind`].
    pub fn bind<A, F>(addr: A, handler: F) -> io::Result<StreamServer>
    where
        A: ToSocketAddrs,
        F: Fn(TcpStream, SocketAddr) + 'static,
    {
        Ok(StreamServer::new(TcpListener::bind(addr)?, handler))
    }

    /// A server on `listener`.
    pub fn new<F>(listener: TcpListener, handler: F) -> StreamServer
    where
        F: Fn(TcpStream, SocketAddr) + 'static,
    {
        StreamServer {
            inner: Rc::new(Inner {
                addr: listener.local_addr().ok(),
                listener: RefCell::new(Some(listener)),
                handler: Rc::new(handler),
                max_connections: Cell::new(None),
                idle_timeout: Cell::new(None),
                state: Cell::new(State::Idle),
                accept_loop: RefCell::new(None),
                failure: RefCell::new(None),
                conns: RefCell::new(HashMap::new()),
                next_conn: Cell::new(0),
                slot_waiter: RefCell::new(None),
                stop_waiters: RefCell::new(Vec::new()),
                stats: Cell::new(ServerStats::default()),
                mirrors: RefCell::new(Vec::new()),
            }),
        }
    }

    /// Caps the handlers running at once at `n` (gevent's pool size): while `n` run, the
    /// server accepts nothing and new connections wait in the listen backlog.
    ///
    /// # Panics
    /// If `n` is 0.
    #[must_use]
    pub fn max_connections(self, n: usize) -> StreamServer {
        assert!(n > 0, "max_connections must be at least 1");
        self.inner.max_connections.set(Some(n));
        self
    }

    /// Closes a connection once its handler has waited `timeout` on it without a byte
    /// moving (off by default, as in gevent). Protects the server from clients that
    /// connect and go silent — slowloris attacks that send half a request and stall,
    /// peers that vanished without a FIN — which would otherwise hold a handler and a
    /// descriptor forever.
    ///
    /// The clock runs only while a read or write on the connection waits (a reader and a
    /// writer greenlet sharing it through `&TcpStream` or `try_clone` count once), and
    /// restarts at zero whenever any call on it succeeds: a connection that only
    /// receives, while one greenlet waits to read from it, is not idle. Time the handler
    /// spends on other work (computing, waiting on a queue or another socket) does not
    /// count. When it runs out, the waiting call fails with
    /// `io::ErrorKind::TimedOut` and the connection is shut down in both directions: the
    /// peer reads end-of-file, and every later read returns 0 and every write fails, so
    /// a handler that ends on an error or on end-of-file ends. The connection's own
    /// `set_read_timeout`/`set_write_timeout` still apply (the earlier deadline wins) and
    /// return their `WouldBlock`; the idle clock keeps running across such expiries.
    ///
    /// ```
    /// use std::io::Read;
    /// use std::time::Duration;
    /// use greenhub::net::{StreamServer, TcpStream};
    ///
    /// let server = StreamServer::bind("127.0.0.1:0", |mut conn: TcpStream, _peer| {
    ///     let err = conn.read(&mut [0; 64]).unwrap_err(); // the client never writes
    ///     assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    /// })?
    /// .idle_timeout(Duration::from_millis(50));
    /// server.start()?;
    /// let mut silent = TcpStream::connect(server.local_addr()?)?;
    /// assert_eq!(silent.read(&mut [0; 1])?, 0, "closed by the server after 50 ms");
    /// server.stop(Duration::from_secs(1));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Panics
    /// If `timeout` is zero.
    #[must_use]
    pub fn idle_timeout(self, timeout: Duration) -> StreamServer {
        assert!(
            !timeout.is_zero(),
            "the idle timeout must be longer than zero"
        );
        self.inner.idle_timeout.set(Some(timeout));
        self
    }

    /// The address it listens on.
    ///
    /// # Errors
    /// The `getsockname` error the listener gave when the server was made.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner
            .addr
            .ok_or_else(|| io::Error::other("the listener has no local address"))
    }

    /// Starts the accept loop in a new greenlet and returns; it accepts when the caller
    /// next blocks.
    ///
    /// # Errors
    /// `AlreadyExists` if it was started before; `NotConnected` if it was stopped.
    pub fn start(&self) -> io::Result<()> {
        let inner = &self.inner;
        match inner.state.get() {
            State::Idle => {}
            State::Running => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "the StreamServer is already started",
                ));
            }
            State::Stopped => return Err(stopped()),
        }
        let listener = match inner.listener.borrow().as_ref() {
            Some(l) => l.try_clone()?,
            None => return Err(stopped()),
        };
        inner.state.set(State::Running);
        let name = match inner.addr {
            Some(a) => format!("StreamServer {a}"),
            None => "StreamServer".to_string(),
        };
        let me = inner.clone();
        let h = hub::SpawnBuilder::new()
            .name(name)
            .spawn(move || accept_loop(&me, &listener));
        *inner.accept_loop.borrow_mut() = Some(h);
        Ok(())
    }

    /// Starts the server if needed and waits until it stops (gevent's `serve_forever`).
    /// Returns when [`stop`](StreamServer::stop) is called from another greenlet; however
    /// else it ends (an accept error, a `Timeout` scope, a kill) it stops the server first,
    /// giving handlers 1 s to finish.
    ///
    /// ```
    /// use std::time::Duration;
    /// use greenhub::net::StreamServer;
    /// let server = StreamServer::bind("127.0.0.1:0", |_conn, _peer| {})?;
    /// let s = server.clone();
    /// greenhub::spawn_later(Duration::from_millis(10), move || s.stop(Duration::ZERO));
    /// server.serve_forever()?; // returns once stopped
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    /// The error that ended the accept loop (as `TcpListener::accept` gives it);
    /// `TimedOut` if a `Timeout` scope expires; `NotConnected` if it was already stopped.
    pub fn serve_forever(&self) -> io::Result<()> {
        match self.inner.state.get() {
            State::Idle => self.start()?,
            State::Running => {}
            State::Stopped => return Err(stopped()),
        }
        let mut guard = StopOnUnwind(Some(self.clone()));
        let result = self.wait_stopped();
        guard.0 = None;
        if let Some(e) = self.inner.failure.borrow_mut().take() {
            self.stop(SERVE_FOREVER_STOP_TIMEOUT);
            return Err(e);
        }
        if result.is_err() {
            self.stop(SERVE_FOREVER_STOP_TIMEOUT);
        }
        result
    }

    fn wait_stopped(&self) -> io::Result<()> {
        let hub = current_hub();
        while self.inner.state.get() == State::Running {
            let waiter = hub.begin_wait();
            self.inner.stop_waiters.borrow_mut().push(waiter.clone());
            hub.park(&waiter, None)?;
        }
        Ok(())
    }

    /// Stops the server: closes the listener at once (new connections are refused), lets
    /// the running handlers finish for up to `timeout`, then kills the rest, which closes
    /// their connections. Returns how many handlers it killed. Stopping twice does nothing
    /// more; a handler may stop its own server (it is neither waited for nor killed).
    pub fn stop(&self, timeout: Duration) -> usize {
        let inner = &self.inner;
        if inner.state.replace(State::Stopped) == State::Stopped {
            return 0;
        }
        let accept = inner.accept_loop.borrow_mut().take();
        if let Some(h) = accept {
            h.kill();
        }
        drop(inner.listener.borrow_mut().take());
        for w in inner.stop_waiters.borrow_mut().drain(..) {
            w.wake(Wake::Ready);
        }
        let me = getcurrent().id();
        let all: Vec<JoinHandle<()>> = inner.conns.borrow_mut().drain().map(|(_, h)| h).collect();
        let handlers: Vec<JoinHandle<()>> = all.into_iter().filter(|h| h.id() != me).collect();
        joinall(&handlers, Some(timeout));
        let killed = handlers.iter().filter(|h| !h.is_finished()).count();
        killall(&handlers);
        killed
    }

    /// Has it been started and not yet stopped?
    pub fn is_running(&self) -> bool {
        self.inner.state.get() == State::Running
    }

    /// Connection counters: running handlers, their peak, connections accepted, EMFILE
    /// episodes.
    pub fn stats(&self) -> ServerStats {
        self.inner.stats.get()
    }
}

impl fmt::Debug for StreamServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamServer")
            .field("addr", &self.inner.addr)
            .field("state", &self.inner.state.get())
            .field("max_connections", &self.inner.max_connections.get())
            .field("stats", &self.stats())
            .finish()
    }
}

fn stopped() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the StreamServer was stopped")
}

/// Stops the server when `serve_forever` unwinds (killed): in a new greenlet, since an
/// unwinding greenlet must not block.
struct StopOnUnwind(Option<StreamServer>);

impl Drop for StopOnUnwind {
    fn drop(&mut self) {
        if let Some(server) = self.0.take() {
            hub::spawn(move || {
                server.stop(SERVE_FOREVER_STOP_TIMEOUT);
            });
        }
    }
}

/// What to do about an `accept` error.
enum AcceptError {
    /// Out of descriptors or memory: back off and retry.
    Exhausted,
    /// A problem of that one connection (or a signal): skip it.
    Skip,
    /// The listener itself is broken.
    Fatal,
}

fn classify(e: &io::Error) -> AcceptError {
    if out_of_resources(e) {
        return AcceptError::Exhausted;
    }
    match e.raw_os_error() {
        Some(
            libc::ECONNABORTED
            | libc::EPROTO
            | libc::EPERM
            | libc::EINTR
            | libc::ECONNRESET
            | libc::ENETDOWN
            | libc::ENOPROTOOPT
            | libc::EHOSTDOWN
            | libc::ENONET
            | libc::EHOSTUNREACH
            | libc::EOPNOTSUPP
            | libc::ENETUNREACH
            | libc::ETIMEDOUT,
        ) => AcceptError::Skip,
        _ => AcceptError::Fatal,
    }
}

fn accept_loop(inner: &Rc<Inner>, listener: &TcpListener) {
    let hub = current_hub();
    let mut exhausted = false; // in an episode of EMFILE (accept itself backs off)
    let mut batch = 0;
    loop {
        // At the cap: accept nothing until a handler finishes.
        while let Some(max) = inner.max_connections.get()
            && inner.stats.get().active >= max
        {
            let waiter = hub.begin_wait();
            *inner.slot_waiter.borrow_mut() = Some(waiter.clone());
            let _ = hub.park(&waiter, None);
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                exhausted = false;
                stream.set_idle_timeout(inner.idle_timeout.get());
                spawn_handler(inner, stream, peer);
                batch += 1;
                if batch >= ACCEPT_BATCH {
                    batch = 0;
                    let _ = hub::yield_now();
                }
            }
            Err(e) => match classify(&e) {
                AcceptError::Skip => {}
                AcceptError::Exhausted => {
                    // `accept` has already paused (cooperatively); it pauses longer each
                    // time in a row. Log the episode once.
                    if !exhausted {
                        exhausted = true;
                        let mut stats = inner.stats.get();
                        stats.backoffs += 1;
                        inner.stats.set(stats);
                        for m in inner.mirrors.borrow().iter() {
                            m.backoffs.fetch_add(1, Ordering::Relaxed);
                        }
                        eprintln!(
                            "greenhub: StreamServer {}: accept failed: {e}; backing off \
                             (5 ms doubling to 1 s) until descriptors free up, still \
                             serving the {} open connections",
                            addr_text(inner),
                            stats.active,
                        );
                    }
                }
                AcceptError::Fatal => {
                    eprintln!(
                        "greenhub: StreamServer {}: accept failed, the server stops accepting: {e}",
                        addr_text(inner)
                    );
                    *inner.failure.borrow_mut() = Some(e);
                    inner.state.set(State::Stopped);
                    for w in inner.stop_waiters.borrow_mut().drain(..) {
                        w.wake(Wake::Ready);
                    }
                    return;
                }
            },
        }
    }
}

fn addr_text(inner: &Inner) -> String {
    inner
        .addr
        .map_or_else(|| "(unknown address)".to_string(), |a| a.to_string())
}

/// Counts a handler out when its greenlet ends (returns, panics, is killed, or is killed
/// before it starts) and lets the accept loop go on if it waits at the cap.
struct ConnGuard {
    inner: Rc<Inner>,
    key: u64,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let inner = &self.inner;
        // Take it out of the map before dropping it (dropping a handle does nothing more
        // than detach it, but not while the map is borrowed).
        let handle = inner.conns.borrow_mut().remove(&self.key);
        drop(handle);
        let mut stats = inner.stats.get();
        stats.active -= 1;
        inner.stats.set(stats);
        for m in inner.mirrors.borrow().iter() {
            m.active.fetch_sub(1, Ordering::Relaxed);
        }
        let waiter = inner.slot_waiter.borrow_mut().take();
        if let Some(w) = waiter {
            w.wake(Wake::Ready);
        }
    }
}

fn spawn_handler(inner: &Rc<Inner>, stream: TcpStream, peer: SocketAddr) {
    let key = inner.next_conn.get();
    inner.next_conn.set(key + 1);
    let mut stats = inner.stats.get();
    stats.active += 1;
    stats.peak = stats.peak.max(stats.active);
    stats.accepted += 1;
    inner.stats.set(stats);
    for m in inner.mirrors.borrow().iter() {
        let active = m.active.fetch_add(1, Ordering::Relaxed) + 1;
        m.peak.fetch_max(active, Ordering::Relaxed);
        m.accepted.fetch_add(1, Ordering::Relaxed);
    }
    // Made before the spawn so that it is dropped even if the greenlet never runs.
    let guard = ConnGuard {
        inner: inner.clone(),
        key,
    };
    let handler = inner.handler.clone();
    let h = hub::SpawnBuilder::new()
        .name(format!("connection from {peer}"))
        .spawn(move || {
            let _guard = guard;
            handler(stream, peer);
        });
    inner.conns.borrow_mut().insert(key, h);
}

/// Connection counters shared between threads (a [`ServerStats`] in atomics).
#[derive(Default)]
struct Counters {
    active: AtomicUsize,
    peak: AtomicUsize,
    accepted: AtomicU64,
    backoffs: AtomicU64,
}

impl Counters {
    fn load(&self) -> ServerStats {
        ServerStats {
            active: self.active.load(Ordering::Relaxed),
            peak: self.peak.load(Ordering::Relaxed),
            accepted: self.accepted.load(Ordering::Relaxed),
            backoffs: self.backoffs.load(Ordering::Relaxed),
        }
    }
}
