//! Load-generation helpers shared by `examples/stress/` and `benches/echo.rs` (each
//! includes this file with `#[path]`; its parts are in `load/`): a seeded PRNG and a
//! checksum (`rng`, `checksum`), a latency histogram that travels between processes as
//! one text field (`histogram`), table formatting (`fmt`), `/proc` readers (RSS, CPU
//! time, file limits, open fds: `procfs`), plain-words explanations of the limits a load
//! test hits (`limits`), connecting many times to one address (`connect`), and the
//! closed-loop echo client of the echo benchmarks (`bench_client`), run as a process of
//! its own (`client_process`).

#![allow(dead_code, unused_imports)] // each includer uses its own part

#[path = "load/bench_client.rs"]
mod bench_client;
#[path = "load/checksum.rs"]
mod checksum;
#[path = "load/client_process.rs"]
mod client_process;
#[path = "load/connect.rs"]
mod connect;
#[path = "load/fmt.rs"]
mod fmt;
#[path = "load/histogram.rs"]
mod histogram;
#[path = "load/limits.rs"]
mod limits;
#[path = "load/procfs.rs"]
mod procfs;
#[path = "load/rng.rs"]
mod rng;

pub use bench_client::{BenchResult, bench_client};
pub use checksum::Checksum;
pub use client_process::{CLIENT_ROLE, client_process_main, run_client_process};
pub use connect::{
    CONNECTS_IN_FLIGHT, LOOPBACK_SOURCES, LOOPBACK_SOURCES_MAX, connect_from, connect_spread,
    loopback_source, spread_source,
};
pub use fmt::{fmt_dur, thousands};
pub use histogram::Histogram;
pub use limits::{FD_RESERVE, describe, limit_hint};
pub use procfs::{
    TcpStat, count_fds, cpu_time, load_average, meminfo_kib, nofile_limits, port_range, status_kib,
    sysctl, sysctl_all, tcp_sockstat, time_wait_toward,
};
pub use rng::Rng;
