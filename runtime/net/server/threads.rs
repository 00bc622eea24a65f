//! Several hubs serving one address: [`ServerThreads`], one [`StreamServer`] per thread
//! on its own `SO_REUSEPORT` listener, configured by [`ThreadedBuilder`].

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::{Counters, SERVE_FOREVER_STOP_TIMEOUT, ServerStats, StreamServer};
use crate::hub::{ResultSender, result_channel};
use crate::net::addr::each_addr;
use crate::net::{TcpListener, TcpStream, ToSocketAddrs};

/// Listen backlog of each [`ServerThreads`] listener (the kernel caps it at
/// `net.core.somaxconn`).
const THREADED_BACKLOG: i32 = 4096;

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
    /// process cannot hold all the file descriptors (see `examples/stress/split.rs` and
    /// `examples/stress/server.rs`).
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
