//! The orchestrator: starts the servers and clients, takes the run through its phases
//! (connect, barrier, exchange, close), and fails with words at the first thing that
//! goes wrong or at the deadline.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::children::{Ev, Kind, Proc};
use crate::load::{self, thousands};
use crate::options::{Opts, resolve};
use crate::progress::{Progress, Sample};
use crate::split::Plan;
use crate::watch::Watch;

/// How often the orchestrator samples for the progress display and the plot.
const TICK: Duration = Duration::from_millis(100);
/// How long the servers' count may stay short of N at the barrier before the run fails.
const BARRIER_STALL: Duration = Duration::from_secs(20);

/// Where a run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Start,
    Connect,
    Barrier,
    Exchange,
    Close,
    Serve,
}

impl Phase {
    /// Its name in the progress lines and in a failure.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Start => "start",
            Phase::Connect => "connect",
            Phase::Barrier => "barrier",
            Phase::Exchange => "exchange",
            Phase::Close => "close",
            Phase::Serve => "serve",
        }
    }
}

/// Why a run failed.
pub struct Failure(pub String);

/// How long the phases of a stress run took, and when the exchange began and ended.
#[derive(Clone, Copy)]
pub struct Phases {
    pub connect_time: Duration,
    /// The machine's 1-minute load average when the connect phase ended.
    pub connect_load: Option<f64>,
    pub exchange_time: Duration,
    pub close_time: Duration,
    /// Seconds since the start, for the plot's marks.
    pub go_at: f64,
    pub done_at: f64,
    /// An external server's (`--server-pid`) peak RSS in KiB and CPU time at the end.
    pub ext_end: Option<(u64, Duration)>,
}

/// One orchestrated run.
pub struct Run {
    pub o: Opts,
    pub plan: Plan,
    pub exe: PathBuf,
    pub procs: Vec<Proc>,
    pub tx: mpsc::Sender<Ev>,
    pub rx: mpsc::Receiver<Ev>,
    pub deadline: Instant,
    pub started: Instant,
    pub next_sample: Instant,
    pub samples: Vec<Sample>,
    pub progress: Progress,
    pub phase: Phase,
    /// The most connections the servers held at once (sum over processes, sampled).
    pub peak_open: u64,
    /// The fewest they held while the exchange ran.
    pub min_open_exchange: Option<u64>,
    /// An external server (--server-pid): its fd count and RSS before the run.
    pub ext_base: Option<(usize, u64, Duration)>,
    pub ext_peak_rss: u64,
    /// At the barrier: the servers' count, and since when it has not changed.
    pub stall: Option<(u64, Instant)>,
    /// What limits the run, as it showed.
    pub watch: Watch,
}

impl Run {
    /// A run of `o` split as `plan`.
    ///
    /// # Errors
    /// When this program's own path cannot be found (to start it again).
    pub fn new(o: Opts, plan: Plan) -> Result<Run, String> {
        let exe =
            std::env::current_exe().map_err(|e| format!("cannot find this program's path: {e}"))?;
        let (tx, rx) = mpsc::channel();
        let now = Instant::now();
        Ok(Run {
            deadline: now + o.timeout,
            o,
            plan,
            exe,
            procs: Vec::new(),
            tx,
            rx,
            started: now,
            next_sample: now + TICK,
            samples: Vec::new(),
            progress: Progress::new(),
            phase: Phase::Start,
            peak_open: 0,
            min_open_exchange: None,
            ext_base: None,
            ext_peak_rss: 0,
            stall: None,
            watch: Watch::default(),
        })
    }

    pub fn own_servers(&self) -> bool {
        self.o.connect.is_none()
    }

    /// Connections open now, as the servers count them (or the best proxy there is).
    pub fn open_now(&self) -> u64 {
        if self.own_servers() {
            self.server_sum("active")
        } else if let (Some(pid), Some((fds, _, _))) = (self.o.server_pid, self.ext_base) {
            load::count_fds(&pid.to_string()).map_or(0, |n| n.saturating_sub(fds) as u64)
        } else {
            self.client_sum("open")
        }
    }

    pub fn sample(&mut self) {
        let open = self.open_now();
        let msgs = self.client_sum("msgs");
        let bytes = if self.own_servers() {
            self.server_sum("bytes")
        } else {
            self.client_sum("bytes")
        };
        self.peak_open = self.peak_open.max(open);
        if self.phase == Phase::Exchange {
            self.min_open_exchange = Some(self.min_open_exchange.map_or(open, |m| m.min(open)));
        }
        if let Some(pid) = self.o.server_pid {
            let rss = load::status_kib(&pid.to_string(), "VmRSS").unwrap_or(0);
            self.ext_peak_rss = self.ext_peak_rss.max(rss);
        }
        self.samples.push(Sample {
            t: self.started.elapsed().as_secs_f64(),
            open,
            msgs,
            bytes,
        });
        self.show_progress(open, msgs);
    }

    /// Handles events until `cond` holds; fails at the deadline with `waiting`'s words.
    pub fn pump(
        &mut self,
        cond: impl Fn(&Run) -> bool,
        waiting: impl Fn(&Run) -> String,
    ) -> Result<(), Failure> {
        loop {
            if cond(self) {
                return Ok(());
            }
            let now = Instant::now();
            if now >= self.deadline {
                return Err(Failure(format!(
                    "the run's deadline ({} s, --timeout) passed while waiting for {}",
                    self.o.timeout.as_secs_f64(),
                    waiting(self)
                )));
            }
            let wait = self
                .next_sample
                .min(self.deadline)
                .saturating_duration_since(now);
            match self.rx.recv_timeout(wait) {
                Ok(ev) => self.handle(ev)?,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(Failure("lost every child's output".to_string()));
                }
            }
            if Instant::now() >= self.next_sample {
                self.next_sample += TICK;
                self.sample();
                self.check_external_server()?;
                self.check_barrier_stall()?;
                self.watch()?;
            }
        }
    }

    /// With `--server-pid`: fails once that process has gone.
    pub fn check_external_server(&self) -> Result<(), Failure> {
        match self.o.server_pid {
            Some(pid) if !std::path::Path::new(&format!("/proc/{pid}")).exists() => {
                Err(Failure(format!(
                    "the server process {pid} (--server-pid) has exited; it held {} \
                     connections at most",
                    thousands(self.peak_open)
                )))
            }
            _ => Ok(()),
        }
    }

    /// At the barrier: fails when the servers' count has not moved for `BARRIER_STALL`
    /// while connections are missing (they will not come).
    pub fn check_barrier_stall(&mut self) -> Result<(), Failure> {
        if self.phase != Phase::Barrier {
            self.stall = None;
            return Ok(());
        }
        let open = self.open_now();
        match self.stall {
            Some((count, since)) if count == open => {
                if since.elapsed() >= BARRIER_STALL {
                    let n = self.o.connections as u64;
                    return Err(Failure(format!(
                        "every client connected, but the servers count only {} of {} open \
                         and that has not changed for {} s. The missing connections \
                         completed the TCP handshake in the kernel but were never \
                         accepted: the listen backlog overflowed (the kernel then drops \
                         the handshake's last ACK) or the server stopped accepting{}",
                        thousands(open),
                        thousands(n),
                        BARRIER_STALL.as_secs(),
                        self.server_trouble()
                    )));
                }
            }
            _ => self.stall = Some((open, Instant::now())),
        }
        Ok(())
    }

    pub fn set_phase(&mut self, phase: Phase, len: u64) {
        self.phase = phase;
        self.watch.phase_started = Some(Instant::now());
        if !matches!(phase, Phase::Barrier | Phase::Start) {
            self.progress.phase(phase.name(), len);
        }
    }

    /// Starts the server processes on `listen`; returns the address they share.
    pub fn start_servers(&mut self, listen: &str) -> Result<String, Failure> {
        let hubs = self.plan.server_hubs.to_string();
        let args = |listen: &str| {
            vec![
                "--role".into(),
                "server".into(),
                "--listen".into(),
                listen.into(),
                "--server-threads".into(),
                hubs.clone(),
            ]
        };
        self.spawn(Kind::Server, args(listen), 0..0)?;
        self.pump(
            |r| r.procs[0].addr.is_some(),
            |_| "the first server process to listen".to_string(),
        )?;
        let addr = self.procs[0].addr.clone().unwrap_or_default();
        for _ in 1..self.plan.server_procs {
            self.spawn(Kind::Server, args(&addr), 0..0)?;
        }
        self.pump(
            |r| r.servers().all(|p| p.addr.is_some()),
            |_| "the server processes to listen".to_string(),
        )?;
        Ok(addr)
    }

    pub fn stop_servers(&mut self) -> Result<(), Failure> {
        for p in self.procs.iter_mut().filter(|p| p.kind == Kind::Server) {
            p.send("STOP");
        }
        self.pump(
            |r| r.servers().all(|p| p.fin.is_some() && p.eof),
            |_| "the server processes to stop".to_string(),
        )
    }

    /// The default run: servers, clients, barrier, exchange, close, summary.
    pub fn stress(&mut self) -> Result<Phases, Failure> {
        let n = self.o.connections;
        let m = self.o.messages as u64;
        let target = match self.o.connect.clone() {
            Some(a) => {
                resolve(&a).map_err(Failure)?;
                if let Some(pid) = self.o.server_pid {
                    let pid = pid.to_string();
                    let fds = load::count_fds(&pid)
                        .ok_or_else(|| Failure(format!("no process {pid} (--server-pid)")))?;
                    let rss = load::status_kib(&pid, "VmRSS").unwrap_or(0);
                    let cpu = load::cpu_time(&pid).unwrap_or_default();
                    self.ext_base = Some((fds, rss, cpu));
                }
                a
            }
            None => {
                self.set_phase(Phase::Start, 0);
                self.start_servers("127.0.0.1:0")?
            }
        };
        // TIME_WAIT sockets toward this very address could hold ports the run needs.
        let dst = resolve(&target).map_err(Failure)?;
        let in_way = self.plan.ports.in_way(n as u64, dst);
        if let Some(w) = &in_way {
            println!(
                "ports: {} sockets in TIME_WAIT toward {target} hold ports of this run's source \
                 addresses (net.ipv4.tcp_tw_reuse does not let connect reuse them).",
                thousands(w.iter().map(|&(_, c)| c).sum())
            );
        }
        self.plan
            .ports
            .check(n as u64, in_way.as_deref())
            .map_err(|e| Failure(format!("cannot succeed: {e}")))?;
        println!(
            "run: {} connections x {} messages of 1..={} bytes to {target}; seed {}; deadline {} s",
            thousands(n as u64),
            m,
            self.o.size,
            self.o.seed,
            self.o.timeout.as_secs_f64()
        );

        // ---- connect ----
        self.watch.start();
        self.set_phase(Phase::Connect, n as u64);
        let t_connect = Instant::now();
        let cp = self.plan.client_procs;
        for c in 0..cp {
            let ids = c * n / cp..(c + 1) * n / cp;
            let mut args: Vec<String> = vec![
                "--role".into(),
                "client".into(),
                "--connect".into(),
                target.clone(),
                "--first".into(),
                ids.start.to_string(),
                "--count".into(),
                ids.len().to_string(),
                "--messages".into(),
                m.to_string(),
                "--size".into(),
                self.o.size.to_string(),
                "--seed".into(),
                self.o.seed.to_string(),
                "--client-threads".into(),
                self.o.client_threads.to_string(),
                "--sources".into(),
                self.plan.ports.sources.to_string(),
                "--timeout".into(),
                self.o.timeout.as_secs_f64().to_string(),
            ];
            if let Some(f) = &self.o.fault {
                args.extend(["--fault".into(), f.clone()]);
            }
            self.spawn(Kind::Client, args, ids)?;
        }
        self.pump(
            |r| r.clients().all(|p| p.connected.is_some()),
            |r| {
                format!(
                    "the clients to connect: {} of {} connected{}",
                    thousands(r.client_sum("connected")),
                    thousands(n as u64),
                    r.server_trouble()
                )
            },
        )?;
        let failed: u64 = self
            .clients()
            .map(|p| p.connected.as_ref().map_or(0, |c| c["failed"]))
            .sum();
        if failed > 0 {
            let first = self
                .clients()
                .find_map(|p| p.error.clone())
                .unwrap_or_default();
            return Err(Failure(format!(
                "{} of {} connections could not connect. The first error: {first}",
                thousands(failed),
                thousands(n as u64)
            )));
        }
        // The barrier: every connection is also counted open by the servers.
        self.set_phase(Phase::Barrier, n as u64);
        let counted = self.own_servers() || self.o.server_pid.is_some();
        if counted {
            self.pump(
                |r| r.open_now() >= n as u64,
                |r| {
                    format!(
                        "the servers to count every connection open: they count {} of {}{}",
                        thousands(r.open_now()),
                        thousands(n as u64),
                        r.server_trouble()
                    )
                },
            )?;
        }
        let connect_time = t_connect.elapsed();
        let connect_load = load::load_average();
        self.sample();

        // ---- exchange ----
        self.set_phase(Phase::Exchange, n as u64 * m);
        self.min_open_exchange = None;
        self.sample();
        let t_go = Instant::now();
        let go_at = self.started.elapsed().as_secs_f64();
        for p in self.procs.iter_mut().filter(|p| p.kind == Kind::Client) {
            p.send("GO");
        }
        self.pump(
            |r| r.clients().all(|p| p.done.is_some()),
            |r| {
                format!(
                    "the exchange: {} of {} messages echoed",
                    thousands(r.client_sum("msgs")),
                    thousands(n as u64 * m)
                )
            },
        )?;
        let exchange_time = t_go.elapsed();
        self.sample(); // still all open: nobody closed yet
        let done_at = self.started.elapsed().as_secs_f64();
        let ext_end = self.o.server_pid.map(|pid| {
            let pid = pid.to_string();
            (
                load::status_kib(&pid, "VmHWM").unwrap_or(0),
                load::cpu_time(&pid).unwrap_or_default(),
            )
        });

        // ---- close ----
        self.set_phase(Phase::Close, n as u64);
        let t_close = Instant::now();
        for p in self.procs.iter_mut().filter(|p| p.kind == Kind::Client) {
            p.send("CLOSE");
        }
        self.pump(
            |r| r.clients().all(|p| p.fin.is_some() && p.eof),
            |_| "the clients to close their connections".to_string(),
        )?;
        if self.own_servers() {
            self.pump(
                |r| r.server_sum("active") == 0,
                |r| {
                    format!(
                        "the servers to see every connection closed: {} still open",
                        thousands(r.server_sum("active"))
                    )
                },
            )?;
            self.stop_servers()?;
        }
        let close_time = t_close.elapsed();
        self.progress.finish();

        Ok(Phases {
            connect_time,
            connect_load,
            exchange_time,
            close_time,
            go_at,
            done_at,
            ext_end,
        })
    }

    /// Words on server-side trouble for a timeout message (EMFILE back-offs, a short count).
    pub fn server_trouble(&self) -> String {
        let backoffs = self.server_sum("backoffs");
        if backoffs > 0 {
            format!(
                "; the servers ran out of file slots {backoffs} times (EMFILE): {}",
                load::limit_hint(&std::io::Error::from_raw_os_error(libc::EMFILE))
                    .unwrap_or_default()
            )
        } else {
            String::new()
        }
    }

    /// `--serve`: only the servers, until N connections have come and gone.
    pub fn serve(&mut self) -> Result<(), Failure> {
        let n = self.o.connections as u64;
        let listen = self.o.serve.clone().unwrap_or_default();
        self.set_phase(Phase::Start, 0);
        let addr = self.start_servers(&listen)?;
        println!(
            "serving on {addr}; drive it with:\n  cargo run --release --example stress -- \
             --connect {addr} --connections {n}\n(ends when {} connections have come and gone, \
             or after {} s)",
            thousands(n),
            self.o.timeout.as_secs_f64()
        );
        self.set_phase(Phase::Serve, n);
        self.pump(
            |r| r.server_sum("accepted") >= n && r.server_sum("active") == 0,
            |r| {
                format!(
                    "{} connections to come and go: {} accepted, {} open",
                    thousands(n),
                    thousands(r.server_sum("accepted")),
                    thousands(r.server_sum("active"))
                )
            },
        )?;
        self.stop_servers()?;
        self.progress.finish();
        Ok(())
    }
}
