//! What the orchestrator watches while a run goes, to say what limits it as soon as it
//! shows: the kernel's search for free local ports during the connect phase, memory
//! (an estimate from the first 10% of the connections against `MemAvailable`, then the
//! floor), the kernel's TCP memory (`net.ipv4.tcp_mem`), and the deadline. It also keeps
//! the peaks the summary's per-connection costs come from.

use std::time::Instant;

use crate::limits::{MEM_TYPICAL_KIB, gib, mem_need_kib};
use crate::load::{self, thousands};
use crate::ports::{PORT_CROWDED, SLOW_CONNECT_US};
use crate::run::{Failure, Phase, Run};

/// Connections to average the `connect` system call over before judging it.
const CONNECT_SAMPLE: u64 = 1000;

/// The share of the connections the memory estimate is made at.
const ESTIMATE_AT: f64 = 0.1;

/// Memory is estimated only for a run whose typical need is at least this share of
/// `MemAvailable`.
const ESTIMATE_WHEN: f64 = 0.1;

/// The run stops when its estimate needs more than this share of what was available.
const MEM_STOP: f64 = 0.9;

/// It warns above this share.
const MEM_WARN: f64 = 0.7;

/// It stops when `MemAvailable` falls under this share of `MemTotal`, whatever the
/// estimate said.
const MEM_FLOOR: f64 = 0.05;

/// Bytes a page of `/proc/net/sockstat`'s `mem` holds.
const PAGE_KIB: u64 = 4;

/// Memory as the machine counts it, at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemSample {
    /// `MemAvailable`, KiB.
    pub available_kib: u64,
    /// `Slab` (the kernel's objects: sockets, files, epoll entries...), KiB.
    pub slab_kib: u64,
    /// Pages TCP socket buffers hold (`/proc/net/sockstat`'s `mem`).
    pub tcp_pages: u64,
}

impl MemSample {
    /// Reads the machine's figures now.
    pub fn read() -> MemSample {
        MemSample {
            available_kib: load::meminfo_kib("MemAvailable").unwrap_or(0),
            slab_kib: load::meminfo_kib("Slab").unwrap_or(0),
            tcp_pages: load::tcp_sockstat().map_or(0, |s| s.mem_pages),
        }
    }
}

/// What the watch has found and the peaks it has kept.
#[derive(Debug, Default)]
pub struct Watch {
    /// The average `connect` call, in us, when it showed the port search slowing the
    /// connect phase.
    pub port_search_us: Option<u64>,
    /// Memory before the clients start.
    pub base: Option<MemSample>,
    /// KiB per connection, from the first 10% of them.
    pub estimate_kib: Option<f64>,
    /// Connections and memory at 5% of them, where the estimate's rate starts.
    pub halfway: Option<(u64, MemSample)>,
    /// The most `Slab` and socket-buffer pages, and the least `MemAvailable`, seen.
    pub peak_slab_kib: u64,
    pub peak_tcp_pages: u64,
    pub least_available_kib: u64,
    /// `net.ipv4.tcp_mem`'s pressure mark was passed (said once).
    pub tcp_pressure: bool,
    /// The phase whose pace was said to miss the deadline.
    pub late: Option<Phase>,
    /// The memory estimate came within `MEM_STOP` of what was available.
    pub mem_tight: bool,
    /// When the current phase began.
    pub phase_started: Option<Instant>,
}

impl Watch {
    /// Takes the memory base the per-connection figures are measured from.
    pub fn start(&mut self) {
        let m = MemSample::read();
        self.base = Some(m);
        self.peak_slab_kib = m.slab_kib;
        self.peak_tcp_pages = m.tcp_pages;
        self.least_available_kib = m.available_kib;
    }

    /// KiB per connection of `Slab` and of socket buffers, and the machine's whole
    /// (`MemAvailable` before - least), over `n` connections.
    pub fn per_connection(&self, n: u64) -> Option<(f64, f64, f64)> {
        let b = self.base?;
        let n = n.max(1) as f64;
        Some((
            self.peak_slab_kib.saturating_sub(b.slab_kib) as f64 / n,
            (self.peak_tcp_pages.saturating_sub(b.tcp_pages) * PAGE_KIB) as f64 / n,
            b.available_kib.saturating_sub(self.least_available_kib) as f64 / n,
        ))
    }
}

impl Watch {
    /// The limits the run met, in a few words each.
    pub fn met(&self) -> Vec<String> {
        let mut met = Vec::new();
        if let Some(us) = self.port_search_us {
            met.push(format!("the ephemeral port range (connect() {us} us)"));
        }
        if self.mem_tight {
            met.push("memory (the estimate came near MemAvailable)".to_string());
        }
        if self.tcp_pressure {
            met.push("kernel TCP memory (past net.ipv4.tcp_mem's pressure mark)".to_string());
        }
        if let Some(p) = self.late {
            met.push(format!("the deadline (the {} phase's pace)", p.name()));
        }
        met
    }
}

impl Run {
    /// Called at every sample: keeps the peaks and says what limits the run when it
    /// shows.
    ///
    /// # Errors
    /// When memory would run out: the estimate from the first 10% of the connections
    /// does not fit, or `MemAvailable` has fallen to its floor.
    pub fn watch(&mut self) -> Result<(), Failure> {
        self.watch_port_search();
        self.watch_memory()?;
        self.watch_deadline();
        Ok(())
    }

    fn watch_port_search(&mut self) {
        if self.phase != Phase::Connect || self.watch.port_search_us.is_some() {
            return;
        }
        let n = self.o.connections as u64;
        let ports = self.plan.ports;
        let connected = self.client_sum("connected");
        let us = self.client_sum("connect_us");
        // A slow connect on a busy machine is the machine; only a crowded range is the
        // port search.
        if connected >= CONNECT_SAMPLE
            && us / connected > SLOW_CONNECT_US
            && ports.fill(n) > PORT_CROWDED
        {
            let avg = us / connected;
            self.watch.port_search_us = Some(avg);
            self.progress.println(&format!(
                "stress: the ephemeral port range limits the connect phase: connect() takes \
                 {avg} us on average, the kernel searching for a free local port with up to \
                 {:.0}% of the range taken per source address ({}). {}",
                ports.fill(n) * 100.0,
                ports.sources_text(),
                ports.remedy(n)
            ));
        }
    }

    fn watch_memory(&mut self) -> Result<(), Failure> {
        let Some(base) = self.watch.base else {
            return Ok(());
        };
        let now = MemSample::read();
        let w = &mut self.watch;
        w.peak_slab_kib = w.peak_slab_kib.max(now.slab_kib);
        w.peak_tcp_pages = w.peak_tcp_pages.max(now.tcp_pages);
        w.least_available_kib = w.least_available_kib.min(now.available_kib);
        let n = self.o.connections as u64;
        // The floor, whatever the estimate said.
        let total = self.plan.machine.mem_total_kib as f64;
        if total > 0.0 && (now.available_kib as f64) < total * MEM_FLOOR {
            return Err(Failure(format!(
                "memory: MemAvailable is down to {} of {} MemTotal with {} connections \
                 open; stopping before the machine runs out",
                gib(now.available_kib as f64),
                gib(total),
                thousands(self.open_now())
            )));
        }
        // Tcp buffers past the kernel's pressure mark.
        if !self.watch.tcp_pressure
            && let Some(&[_, pressure, max]) = load::sysctl_all("net/ipv4/tcp_mem").as_deref()
            && now.tcp_pages > pressure
        {
            self.watch.tcp_pressure = true;
            self.progress.println(&format!(
                "stress: kernel TCP memory limits the run: socket buffers hold {} pages ({}), \
                 past net.ipv4.tcp_mem's pressure mark of {} pages: the kernel shrinks buffers \
                 now, and drops packets at {} pages. Raise it: sudo sysctl -w \
                 net.ipv4.tcp_mem=\"LOW PRESSURE MAX\" (in pages)",
                thousands(now.tcp_pages),
                gib((now.tcp_pages * PAGE_KIB) as f64),
                thousands(pressure),
                thousands(max)
            ));
        }
        // The estimate, once, at 10% of the connections, and only where memory could be
        // the limit (a small run's cost drowns in the machine's own noise). What is
        // spent by then holds the processes' start and whatever the clients set up for
        // all their connections at once; the rest grows with each connection, at the
        // rate measured between 5% and 10%.
        let connected = self.client_sum("connected");
        let typical = mem_need_kib(&self.o, MEM_TYPICAL_KIB);
        if self.watch.estimate_kib.is_some()
            || typical < base.available_kib as f64 * ESTIMATE_WHEN
            || self.phase != Phase::Connect && self.phase != Phase::Barrier
        {
            return Ok(());
        }
        if self.watch.halfway.is_none() && connected as f64 >= n as f64 * ESTIMATE_AT / 2.0 {
            self.watch.halfway = Some((connected, now));
        }
        let Some((c0, m0)) = self.watch.halfway else {
            return Ok(());
        };
        if (connected as f64) < n as f64 * ESTIMATE_AT || connected <= c0 {
            return Ok(());
        }
        let spent = base.available_kib.saturating_sub(now.available_kib) as f64;
        let slope =
            m0.available_kib.saturating_sub(now.available_kib) as f64 / (connected - c0) as f64;
        // The exchange adds each client's two message buffers and data in flight.
        let exchange = 4.0 * self.o.size as f64 / 1024.0;
        let need = spent + slope * n.saturating_sub(connected) as f64 + exchange * n as f64;
        let per = need / n as f64;
        self.watch.estimate_kib = Some(per);
        let have = base.available_kib as f64;
        let words = format!(
            "memory: MemAvailable fell by {} for the first {} connections ({slope:.1} KiB \
             for each of the last {}): all {} with their exchange buffers need ~{} ({per:.1} \
             KiB each) of the {} that was available",
            gib(spent),
            thousands(connected),
            thousands(connected - c0),
            thousands(n),
            gib(need),
            gib(have)
        );
        if need > have * MEM_STOP {
            return Err(Failure(format!(
                "{words}: they would not fit, so the run stops now. Open fewer connections \
                 (~{} would fit)",
                thousands((n as f64 * have * MEM_STOP / need.max(1.0)) as u64)
            )));
        }
        if need > have * MEM_WARN {
            self.watch.mem_tight = true;
            self.progress
                .println(&format!("stress: {words}: memory limits this run (tight)."));
        } else {
            self.progress.println(&format!("stress: {words}."));
        }
        Ok(())
    }

    fn watch_deadline(&mut self) {
        let n = self.o.connections as u64;
        let (done, total) = match self.phase {
            Phase::Connect => (self.client_sum("connected"), n),
            Phase::Exchange => (self.client_sum("msgs"), n * self.o.messages as u64),
            _ => return,
        };
        let Some(started) = self.watch.phase_started else {
            return;
        };
        if self.watch.late == Some(self.phase) || total == 0 {
            return;
        }
        let now = Instant::now();
        let spent = now.duration_since(started).as_secs_f64();
        let left = self.deadline.saturating_duration_since(now).as_secs_f64();
        let share = done as f64 / total as f64;
        // Judge the pace after a tenth of the phase, or once half the time is gone.
        if share < ESTIMATE_AT && spent < left {
            return;
        }
        let needs = if done == 0 {
            f64::INFINITY
        } else {
            spent * (1.0 - share) / share
        };
        if needs > left {
            self.watch.late = Some(self.phase);
            let needs = if needs.is_finite() {
                format!("~{needs:.0} s more")
            } else {
                "longer than that (nothing done yet)".to_string()
            };
            self.progress.println(&format!(
                "stress: the deadline limits this run: at its pace so far the {} phase needs \
                 {needs}, and the run's deadline is {left:.0} s away (--timeout {} s)",
                self.phase.name(),
                self.o.timeout.as_secs_f64()
            ));
        }
    }
}
