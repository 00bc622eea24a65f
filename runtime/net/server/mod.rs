//! [`StreamServer`]: an accept loop that runs a handler in a new greenlet per connection
//! (gevent's `StreamServer`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::addr::each_addr;
use super::{TcpListener, TcpStream, ToSocketAddrs, out_of_resources};
use crate::greenlet::getcurrent;
use crate::hub::{
    self, JoinHandle, ResultSender, Waiter, Wake, current_hub, joinall, killall, result_channel,
};

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

// ---- several hubs: one StreamServer per thread on SO_REUSEPORT listeners ----

/// Listen backlog of each [`ServerThreads`] listener (the kernel caps it at
/// `net.core.somaxconn`).
const THREADED_BACKLOG: i32 = 4096;

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

impl StreamServer {
    /// A server on `n` threads, one hub each: see [`ServerThreads`].
    ///
    /// # Panics
    /// If `n` is 0.
    pub fn threads(n: usize) -> ThreadedBuilder {
        assert!(n > 0, "a threaded StreamServer needs at least one thread");
        ThreadedBuilder {
            threads: n,
            max_connections: None,
            idle_timeout: None,
            backlog: THREADED_BACKLOG,
        }
    }

    /// A server on one thread per core (`std::thread::available_parallelism`), one hub
    /// each: see [`ServerThreads`].
    pub fn per_core() -> ThreadedBuilder {
        StreamServer::threads(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

/// Configures a [`ServerThreads`]; made by [`StreamServer::threads`] or
/// [`StreamServer::per_core`].
#[derive(Clone, Debug)]
#[must_use]
pub struct ThreadedBuilder {
    threads: usize,
    max_connections: Option<usize>,
    idle_timeout: Option<Duration>,
    backlog: i32,
}

impl ThreadedBuilder {
    /// Caps the handlers running at once on *each* hub (see
    /// [`StreamServer::max_connections`]).
    ///
    /// # Panics
    /// If `n` is 0.
    pub fn max_connections(mut self, n: usize) -> ThreadedBuilder {
        assert!(n > 0, "max_connections must be at least 1");
        self.max_connections = Some(n);
        self
    }

    /// Closes connections that stay silent for `timeout`: see
    /// [`StreamServer::idle_timeout`].
    ///
    /// # Panics
    /// If `timeout` is zero.
    pub fn idle_timeout(mut self, timeout: Duration) -> ThreadedBuilder {
        assert!(
            !timeout.is_zero(),
            "the idle timeout must be longer than zero"
        );
        self.idle_timeout = Some(timeout);
        self
    }

    /// The listen backlog of each listener (default 4,096; the kernel caps it at
    /// `net.core.somaxconn`).
    pub fn backlog(mut self, backlog: u32) -> ThreadedBuilder {
        self.backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
        self
    }

    /// Binds one `SO_REUSEPORT` listener per thread to `addr` (with port 0, the first
    /// listener picks the port and the others join it) and starts the threads, each
    /// running a [`StreamServer`] on its own hub that calls `handler`.
    ///
    /// Other processes of the same user may bind the same address with `SO_REUSEPORT`
    /// and share the connections: that is how a server spreads over processes when one
    /// process cannot hold all the file descriptors (see `examples/stress.rs`).
    ///
    /// # Errors
    /// The `socket`/`setsockopt`/`bind`/`listen` error (`AddrInUse` if a socket without
    /// `SO_REUSEPORT` holds the address); a resolution error; the `spawn` error if a
    /// thread cannot be started (the threads already started are stopped).
    pub fn bind<A, F>(self, addr: A, handler: F) -> io::Result<ServerThreads>
    where
        A: ToSocketAddrs,
        F: Fn(TcpStream, SocketAddr) + Send + Sync + 'static,
    {
        let first = each_addr(&addr, |a| reuseport_listener(a, self.backlog))?;
        let addr = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..self.threads {
            listeners.push(reuseport_listener(addr, self.backlog)?);
        }
        self.listen(listeners, handler)
    }

    /// As [`bind`](ThreadedBuilder::bind), on listeners made by the caller (one thread
    /// each; the builder's thread count is not used). For the connections to be shared
    /// they must all have been bound with `SO_REUSEPORT` to the same address.
    ///
    /// # Errors
    /// `InvalidInput` for no listener; as [`bind`](ThreadedBuilder::bind) otherwise.
    pub fn listen<F>(
        self,
        listeners: Vec<std::net::TcpListener>,
        handler: F,
    ) -> io::Result<ServerThreads>
    where
        F: Fn(TcpStream, SocketAddr) + Send + Sync + 'static,
    {
        let addr = listeners
            .first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no listener"))?
            .local_addr()?;
        let handler: Arc<dyn Fn(TcpStream, SocketAddr) + Send + Sync> = Arc::new(handler);
        let total = Arc::new(Counters::default());
        let control = Arc::new(Control::default());
        let mut server = ServerThreads {
            addr,
            total: total.clone(),
            per_thread: Vec::new(),
            control: control.clone(),
        };
        for (i, listener) in listeners.into_iter().enumerate() {
            let own = Arc::new(Counters::default());
            server.per_thread.push(own.clone());
            let mirrors = vec![own, total.clone()];
            let (handler, control) = (handler.clone(), control.clone());
            let limits = Limits {
                max_connections: self.max_connections,
                idle_timeout: self.idle_timeout,
            };
            control.lock().running += 1;
            let spawned = std::thread::Builder::new()
                .name(format!("greenhub-server-{i}"))
                .spawn(move || hub_thread(listener, &handler, mirrors, limits, &control));
            if let Err(e) = spawned {
                let mut state = server.control.lock();
                state.running -= 1;
                drop(state);
                server.stop_in_background();
                return Err(e);
            }
        }
        Ok(server)
    }
}

/// A `SO_REUSEPORT` (and `SO_REUSEADDR`) listener bound to `addr`, close-on-exec.
fn reuseport_listener(addr: SocketAddr, backlog: i32) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

#[derive(Default)]
struct ControlState {
    /// Set by `stop` (or by dropping the handle): how long handlers may finish.
    stop: Option<Duration>,
    /// One per thread that has started: sends it the stop request.
    stoppers: Vec<ResultSender<Duration>>,
    /// Threads not yet ended.
    running: usize,
    /// Handlers killed by the threads that have ended.
    killed: usize,
}

#[derive(Default)]
struct Control {
    state: Mutex<ControlState>,
    ended: Condvar,
}

impl Control {
    fn lock(&self) -> std::sync::MutexGuard<'_, ControlState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks every thread to stop (the first request wins); false if already asked.
    fn request_stop(&self, timeout: Duration) -> bool {
        let mut state = self.lock();
        if state.stop.is_some() {
            return false;
        }
        state.stop = Some(timeout);
        let stoppers = std::mem::take(&mut state.stoppers);
        drop(state);
        for s in stoppers {
            s.send(timeout);
        }
        true
    }

    /// Blocks this OS thread until every thread has ended; the handlers they killed.
    fn wait_ended(&self) -> usize {
        let mut state = self.lock();
        while state.running > 0 {
            state = self.ended.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.killed
    }
}

/// The per-hub settings of a [`ServerThreads`].
#[derive(Clone, Copy)]
struct Limits {
    max_connections: Option<usize>,
    idle_timeout: Option<Duration>,
}

/// The body of one server thread: a [`StreamServer`] on this thread's hub until stopped.
fn hub_thread(
    listener: std::net::TcpListener,
    handler: &Arc<dyn Fn(TcpStream, SocketAddr) + Send + Sync>,
    mirrors: Vec<Arc<Counters>>,
    limits: Limits,
    control: &Control,
) {
    let killed = match TcpListener::from_std(listener) {
        Ok(listener) => {
            let handler = handler.clone();
            let server = StreamServer::new(listener, move |conn, peer| handler(conn, peer));
            server.inner.max_connections.set(limits.max_connections);
            server.inner.idle_timeout.set(limits.idle_timeout);
            *server.inner.mirrors.borrow_mut() = mirrors;
            let (tx, rx) = result_channel::<Duration>();
            let stop_at_once = {
                let mut state = control.lock();
                match state.stop {
                    Some(timeout) => Some(timeout),
                    None => {
                        state.stoppers.push(tx);
                        None
                    }
                }
            };
            let timeout = match stop_at_once {
                Some(timeout) => timeout,
                None => match server.start() {
                    // The handle gone without `stop` (Closed): stop as serve_forever would.
                    Ok(()) => rx.recv().unwrap_or(SERVE_FOREVER_STOP_TIMEOUT),
                    Err(_) => Duration::ZERO,
                },
            };
            server.stop(timeout)
        }
        Err(e) => {
            eprintln!("greenhub: server thread cannot use its listener: {e}");
            0
        }
    };
    let mut state = control.lock();
    state.running -= 1;
    state.killed += killed;
    drop(state);
    control.ended.notify_all();
}

/// A server on several threads, one hub each, each with its own `SO_REUSEPORT` listener
/// on the same address: the kernel spreads incoming connections over the listeners (by a
/// hash of the addresses, so about evenly), and every connection is then served on the
/// thread that accepted it — greenlets never migrate.
///
/// Made by [`StreamServer::threads`] or [`StreamServer::per_core`]; the handler runs in
/// a greenlet per connection on the thread that accepted it, so it must be
/// `Send + Sync` (it is shared by the threads), while everything it creates stays on its
/// thread. [`stats`](ServerThreads::stats) sums the threads' counters; `peak` is the
/// peak of the sum.
///
/// **When to use it.** One hub runs on one core. For I/O-bound handlers that is a lot:
/// one hub echoes well over 50,000 small messages a second and holds tens of thousands
/// of idle connections. Use several hubs when the handlers are CPU-bound (parsing,
/// compression, TLS), or when one core is saturated (more than about 50k messages a
/// second of real work). Keep one hub when handlers share state through `Rc`/`RefCell`
/// or talk to each other (a chat room, a cache): with several hubs that state must be
/// `Sync` and cross-thread hops cost more than a greenlet switch. Connections are not
/// rebalanced: a hub that drew a few busy connections keeps them.
///
/// ```
/// use std::io::{Read, Write};
/// use std::time::Duration;
/// use greenhub::net::{StreamServer, TcpStream};
///
/// let server = StreamServer::threads(2).bind("127.0.0.1:0", |mut conn: TcpStream, _peer| {
///     let mut buf = [0; 1024];
///     while let Ok(n @ 1..) = conn.read(&mut buf) {
///         if conn.write_all(&buf[..n]).is_err() {
///             break;
///         }
///     }
/// })?;
/// let mut c = std::net::TcpStream::connect(server.local_addr())?;
/// c.write_all(b"echo")?;
/// let mut buf = [0; 4];
/// c.read_exact(&mut buf)?;
/// assert_eq!(&buf, b"echo");
/// assert_eq!(server.stats().accepted, 1);
/// drop(c);
/// server.stop(Duration::from_secs(1));
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// Dropping it without [`stop`](ServerThreads::stop) stops the threads in the
/// background, giving handlers 1 s to finish.
pub struct ServerThreads {
    addr: SocketAddr,
    total: Arc<Counters>,
    per_thread: Vec<Arc<Counters>>,
    control: Arc<Control>,
}

impl ServerThreads {
    /// The address its listeners share.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many threads (hubs) it runs.
    pub fn threads(&self) -> usize {
        self.per_thread.len()
    }

    /// The counters summed over the threads: `active` and `accepted` are sums, `peak` is
    /// the most handlers running at once on all threads together, `backoffs` counts
    /// each thread's EMFILE episodes.
    pub fn stats(&self) -> ServerStats {
        self.total.load()
    }

    /// Each thread's own counters, in thread order.
    pub fn thread_stats(&self) -> Vec<ServerStats> {
        self.per_thread.iter().map(|c| c.load()).collect()
    }

    /// Has no stop been requested, and does a thread still run?
    pub fn is_running(&self) -> bool {
        let state = self.control.lock();
        state.stop.is_none() && state.running > 0
    }

    /// Stops every thread as [`StreamServer::stop`] does (close the listeners, let
    /// handlers finish for up to `timeout`, kill the rest) and waits until the threads
    /// have ended — cooperatively when called in a greenlet (the wait runs on the thread
    /// pool). Returns how many handlers were killed. Stopping twice does nothing more
    /// than wait again.
    pub fn stop(&self, timeout: Duration) -> usize {
        self.control.request_stop(timeout);
        self.wait()
    }

    /// Waits until the server is stopped (by [`stop`](ServerThreads::stop) elsewhere)
    /// and its threads have ended; cooperative, like `stop`. Returns how many handlers
    /// the threads killed.
    pub fn wait(&self) -> usize {
        let control = self.control.clone();
        crate::spawn_blocking(move || control.wait_ended()).unwrap_or(0)
    }

    fn stop_in_background(&self) {
        self.control.request_stop(SERVE_FOREVER_STOP_TIMEOUT);
    }
}

impl Drop for ServerThreads {
    fn drop(&mut self) {
        self.stop_in_background();
    }
}

impl fmt::Debug for ServerThreads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerThreads")
            .field("addr", &self.addr)
            .field("threads", &self.threads())
            .field("stats", &self.stats())
            .finish()
    }
}
