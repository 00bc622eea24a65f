//! What a run prints at its end: the summary table, and the `RESULT` line that scripts
//! read (`benches/peers/stress_peers.sh`), for a run that passed, failed or was stopped.

use std::process::ExitCode;
use std::time::Duration;

use crate::children::Proc;
use crate::load::{Histogram, fmt_dur, thousands};
use crate::options::Opts;
use crate::run::{Failure, Phases, Run};
use crate::split::layout;

/// The `RESULT` line of a run refused before it started.
pub fn not_started(o: &Opts) -> String {
    format!(
        "RESULT ok=0 connections={} held=0 errors={} failed_phase=plan",
        o.connections,
        o.connections as u64 * o.messages as u64
    )
}

impl Run {
    /// The table and the `RESULT` line of a stress run; whether it passed.
    pub fn summary(&self, t: &Phases) -> bool {
        let Phases {
            connect_time,
            connect_load,
            exchange_time,
            close_time,
            go_at,
            done_at,
            ext_end,
        } = *t;
        let n = self.o.connections;
        let m = self.o.messages as u64;
        let cp = self.plan.client_procs;
        // ---- summary ----
        let sum_done = |key: &str| -> u64 {
            self.clients()
                .map(|p| {
                    p.done
                        .as_ref()
                        .and_then(|d| d.get(key).copied())
                        .unwrap_or(0)
                })
                .sum()
        };
        let msgs = sum_done("msgs");
        let bytes = sum_done("bytes");
        let corrupted = sum_done("corrupted");
        let io_errors = sum_done("io_errors");
        let lost = sum_done("lost");
        let mut hist = Histogram::new();
        let mut client_cpu = Duration::ZERO;
        for p in self.clients() {
            let fin = p.fin.as_ref();
            if let Some(h) = fin
                .and_then(|f| f.get("hist"))
                .and_then(|h| Histogram::decode(h))
            {
                hist.merge(&h);
            }
            client_cpu +=
                Duration::from_millis(fin.and_then(|f| f.get("cpu_ms")?.parse().ok()).unwrap_or(0));
        }
        let fin_num = |p: &Proc, key: &str| -> u64 {
            p.fin
                .as_ref()
                .and_then(|f| f.get(key)?.parse().ok())
                .unwrap_or(0)
        };
        let held_min = self.min_open_exchange.unwrap_or(0);
        let connected_sum = |key: &str| -> u64 {
            self.clients()
                .filter_map(|p| p.connected.as_ref()?.get(key).copied())
                .sum()
        };
        let connect_call_us =
            connected_sum("connect_us") as f64 / connected_sum("ok").max(1) as f64;
        let errors = corrupted + io_errors + lost + (n as u64 * m).saturating_sub(msgs + lost);
        let mut ok = errors == 0 && msgs == n as u64 * m;
        let msgs_per_s = msgs as f64 / exchange_time.as_secs_f64().max(1e-9);

        let mut rows: Vec<(String, String)> = Vec::new();
        rows.push((
            "connections opened".into(),
            format!(
                "{} ({})",
                thousands(self.client_sum("connected").max(n as u64)),
                layout("client", cp, self.o.client_threads)
            ),
        ));
        let (server_rss, rss_per_conn, server_cpu, server_desc);
        if self.own_servers() {
            let peak_sum: u64 = self.servers().map(|p| fin_num(p, "peak")).sum();
            let accepted: u64 = self.servers().map(|p| fin_num(p, "accepted")).sum();
            let backoffs: u64 = self.servers().map(|p| fin_num(p, "backoffs")).sum();
            let per_proc: Vec<String> = self
                .servers()
                .map(|p| thousands(fin_num(p, "accepted")))
                .collect();
            let held_ok = held_min >= n as u64;
            ok &= held_ok && accepted == n as u64;
            rows.push((
                "peak concurrent connections (servers' count)".into(),
                format!(
                    "{} (sum of processes' peaks {}; accepted {} = {}; {} while the exchange ran{})",
                    thousands(self.peak_open),
                    thousands(peak_sum),
                    thousands(accepted),
                    per_proc.join(" + "),
                    if held_ok {
                        "all held open".to_string()
                    } else {
                        format!("as few as {} held", thousands(held_min))
                    },
                    if backoffs > 0 {
                        format!("; {backoffs} EMFILE back-offs")
                    } else {
                        String::new()
                    }
                ),
            ));
            let hwm: Vec<u64> = self.servers().map(|p| fin_num(p, "hwm_kib")).collect();
            let grown: u64 = self
                .servers()
                .map(|p| fin_num(p, "hwm_kib").saturating_sub(p.rss_base))
                .sum();
            server_rss = hwm.iter().sum::<u64>();
            rss_per_conn = grown as f64 / n as f64;
            server_cpu = Duration::from_millis(self.servers().map(|p| fin_num(p, "cpu_ms")).sum());
            let sizes: Vec<String> = hwm
                .iter()
                .map(|k| format!("{:.1} MiB", *k as f64 / 1024.0))
                .collect();
            server_desc = format!(
                "{} ({})",
                sizes.join(" + "),
                layout("server", self.plan.server_procs, self.plan.server_hubs)
            );
        } else if let (Some((_, base_rss, base_cpu)), Some((hwm, cpu))) = (self.ext_base, ext_end) {
            let held_ok = held_min >= n as u64;
            ok &= held_ok;
            rows.push((
                "peak concurrent connections (server's open fds)".into(),
                format!(
                    "{} ({} while the exchange ran)",
                    thousands(self.peak_open),
                    if held_ok {
                        "all held open".to_string()
                    } else {
                        format!("as few as {} held", thousands(held_min))
                    }
                ),
            ));
            server_rss = hwm.max(self.ext_peak_rss);
            rss_per_conn = server_rss.saturating_sub(base_rss) as f64 / n as f64;
            server_cpu = cpu.saturating_sub(base_cpu);
            server_desc = format!(
                "{:.1} MiB (pid {})",
                server_rss as f64 / 1024.0,
                self.o.server_pid.unwrap_or(0)
            );
        } else {
            server_rss = 0;
            rss_per_conn = f64::NAN;
            server_cpu = Duration::ZERO;
            server_desc = "n/a (external server; pass --server-pid)".into();
        }
        rows.push((
            "messages echoed".into(),
            format!(
                "{} of {} ({} per connection, 1..={} bytes)",
                thousands(msgs),
                thousands(n as u64 * m),
                m,
                self.o.size
            ),
        ));
        rows.push(("bytes echoed".into(), thousands(bytes)));
        rows.push((
            "errors".into(),
            format!("{errors} (corrupted {corrupted}, I/O errors {io_errors}, lost {lost})"),
        ));
        rows.push((
            "round trip p50 / p99 / max".into(),
            format!(
                "{} / {} / {}",
                fmt_dur(hist.quantile(0.5)),
                fmt_dur(hist.quantile(0.99)),
                fmt_dur(hist.quantile(1.0))
            ),
        ));
        rows.push((
            format!(
                "connect time ({} connections, to the barrier)",
                thousands(n as u64)
            ),
            format!(
                "{:.2} s (connect() calls {connect_call_us:.0} us each{}{})",
                connect_time.as_secs_f64(),
                match self.watch.port_search_us {
                    Some(_) => ": the port search limited it",
                    None => "",
                },
                match connect_load {
                    Some(l) => format!(
                        "; load average {l:.1} on {} cores",
                        std::thread::available_parallelism().map_or(1, |c| c.get())
                    ),
                    None => String::new(),
                }
            ),
        ));
        rows.push((
            "exchange time".into(),
            format!(
                "{:.2} s ({} msgs/s)",
                exchange_time.as_secs_f64(),
                thousands(msgs_per_s as u64)
            ),
        ));
        rows.push((
            "close time".into(),
            format!("{:.2} s", close_time.as_secs_f64()),
        ));
        rows.push(("server RSS peak (VmHWM)".into(), server_desc));
        rows.push((
            "server RSS per connection (peak - before connecting)".into(),
            if rss_per_conn.is_nan() {
                "n/a".into()
            } else {
                format!("{rss_per_conn:.1} KiB")
            },
        ));
        let client_grown: u64 = self
            .clients()
            .map(|p| fin_num(p, "hwm_kib").saturating_sub(fin_num(p, "rss_base_kib")))
            .sum();
        let client_rss_per_conn = client_grown as f64 / n as f64;
        rows.push((
            "client RSS per connection (peak - at start)".into(),
            format!("{client_rss_per_conn:.1} KiB"),
        ));
        let (slab, buffers, whole) =
            self.watch
                .per_connection(n as u64)
                .unwrap_or((f64::NAN, f64::NAN, f64::NAN));
        let kernel_per_conn = slab + buffers;
        rows.push((
            "kernel memory per connection (both sockets; peak - before connecting)".into(),
            format!(
                "{kernel_per_conn:.1} KiB: {slab:.1} KiB slab (sockets, files, epoll; \
                 /proc/meminfo Slab) + {buffers:.1} KiB socket buffers (/proc/net/sockstat \
                 TCP mem)"
            ),
        ));
        rows.push((
            "machine memory per connection (MemAvailable: before - least)".into(),
            format!(
                "{whole:.1} KiB{}",
                match self.watch.estimate_kib {
                    Some(e) => format!(" (estimated at 10% of the connections: {e:.1} KiB)"),
                    None => String::new(),
                }
            ),
        ));
        rows.push((
            "CPU time (user + system) servers / clients".into(),
            format!(
                "{:.2} s / {:.2} s",
                server_cpu.as_secs_f64(),
                client_cpu.as_secs_f64()
            ),
        ));
        let met = self.watch.met();
        rows.push((
            "limits met while running".into(),
            if met.is_empty() {
                "none".to_string()
            } else {
                met.join("; ")
            },
        ));
        let wall = self.started.elapsed();
        rows.push(("wall time".into(), format!("{:.2} s", wall.as_secs_f64())));

        println!();
        println!("| stress | {} |", if ok { "passed" } else { "FAILED" });
        println!("|---|---|");
        for (k, v) in &rows {
            println!("| {k} | {v} |");
        }
        if let Some(e) = self.clients().find_map(|p| p.error.clone()) {
            println!("\nfirst error: {e}");
        }
        println!(
            "RESULT ok={} connections={} held={} errors={errors} msgs={msgs} bytes={bytes} \
             msgs_per_s={:.0} p50_us={:.0} p99_us={:.0} max_us={:.0} connect_s={:.3} \
             connect_call_us={connect_call_us:.1} load_avg={:.1} exchange_s={:.3} \
             server_rss_kib={server_rss} rss_per_conn_kib={:.2} client_rss_per_conn_kib={client_rss_per_conn:.2} \
             kernel_mem_per_conn_kib={kernel_per_conn:.2} slab_per_conn_kib={slab:.2} \
             tcp_buf_per_conn_kib={buffers:.2} mem_per_conn_kib={whole:.2} \
             server_cpu_s={:.3} client_cpu_s={:.3} wall_s={:.3}",
            u8::from(ok),
            n,
            held_min,
            msgs_per_s,
            hist.quantile(0.5).as_secs_f64() * 1e6,
            hist.quantile(0.99).as_secs_f64() * 1e6,
            hist.quantile(1.0).as_secs_f64() * 1e6,
            connect_time.as_secs_f64(),
            connect_load.unwrap_or(f64::NAN),
            exchange_time.as_secs_f64(),
            rss_per_conn,
            server_cpu.as_secs_f64(),
            client_cpu.as_secs_f64(),
            wall.as_secs_f64(),
        );
        self.write_plot("messages/s", false, &[(go_at, "GO"), (done_at, "CLOSE")]);
        ok
    }

    /// The table of a `--serve` run.
    pub fn serve_summary(&self) {
        let fin_num = |p: &Proc, key: &str| -> u64 {
            p.fin
                .as_ref()
                .and_then(|f| f.get(key)?.parse().ok())
                .unwrap_or(0)
        };
        let accepted: u64 = self.servers().map(|p| fin_num(p, "accepted")).sum();
        let bytes: u64 = self.servers().map(|p| fin_num(p, "bytes")).sum();
        let grown: u64 = self
            .servers()
            .map(|p| fin_num(p, "hwm_kib").saturating_sub(p.rss_base))
            .sum();
        let hwm: u64 = self.servers().map(|p| fin_num(p, "hwm_kib")).sum();
        let cpu: u64 = self.servers().map(|p| fin_num(p, "cpu_ms")).sum();
        let peak = self.peak_open.max(1);
        println!();
        println!("| serve | |");
        println!("|---|---|");
        println!(
            "| peak concurrent connections (servers' count) | {} |",
            thousands(self.peak_open)
        );
        println!("| connections accepted | {} |", thousands(accepted));
        println!("| bytes echoed | {} |", thousands(bytes));
        println!(
            "| server RSS peak (VmHWM) | {:.1} MiB |",
            hwm as f64 / 1024.0
        );
        println!(
            "| server RSS per connection (at the peak) | {:.1} KiB |",
            grown as f64 / peak as f64
        );
        println!("| server CPU time | {:.2} s |", cpu as f64 / 1000.0);
        self.write_plot("echoed MB/s", true, &[]);
    }

    /// The exit status of a run that ended with `result`; a failure is explained on
    /// stderr and in a `RESULT ok=0` line.
    pub fn finish(&mut self, result: Result<bool, Failure>) -> ExitCode {
        self.progress.finish();
        match result {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(Failure(why)) => {
                self.kill_all();
                self.progress.finish();
                eprintln!("\nstress: FAILED in phase {}: {why}", self.phase.name());
                // What is known, for scripts (benches/peers/stress_peers.sh).
                println!(
                    "RESULT ok=0 connections={} held={} errors={} failed_phase={}",
                    self.o.connections,
                    self.peak_open,
                    self.o.connections as u64 * self.o.messages as u64 - self.client_sum("msgs"),
                    self.phase.name()
                );
                ExitCode::FAILURE
            }
        }
    }
}
