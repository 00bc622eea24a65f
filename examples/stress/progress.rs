//! Progress on stderr while the run goes (a bar on a terminal, a plain line a second
//! otherwise), and the samples the plot is drawn from.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use crate::load::thousands;
use crate::run::{Phase, Run};

/// A sample for the plot.
#[derive(Clone, Copy)]
pub struct Sample {
    pub t: f64,
    pub open: u64,
    pub msgs: u64,
    pub bytes: u64,
}

/// Progress on stderr: a bar on a terminal, a plain line a second otherwise.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    tty: bool,
    last_line: Instant,
    started: Instant,
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            bar: None,
            tty: std::io::stderr().is_terminal(),
            last_line: Instant::now(),
            started: Instant::now(),
        }
    }

    pub fn phase(&mut self, name: &str, len: u64) {
        self.finish();
        if self.tty {
            let style = indicatif::ProgressStyle::with_template(
                "{prefix:>8} [{elapsed_precise}] [{bar:40.cyan/blue}] {human_pos}/{human_len} {msg}",
            )
            .expect("a valid template")
            .progress_chars("=> ");
            let bar = indicatif::ProgressBar::new(len).with_style(style);
            bar.set_prefix(name.to_string());
            self.bar = Some(bar);
        } else {
            eprintln!("[{:6.1}s] {name} ...", self.started.elapsed().as_secs_f64());
            self.last_line = Instant::now();
        }
    }

    pub fn update(&mut self, name: &str, pos: u64, len: u64, msg: &str) {
        if let Some(bar) = &self.bar {
            bar.set_position(pos);
            bar.set_message(msg.to_string());
        } else if self.last_line.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "[{:6.1}s] {name}: {}/{} {msg}",
                self.started.elapsed().as_secs_f64(),
                thousands(pos),
                thousands(len)
            );
            self.last_line = Instant::now();
        }
    }

    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }
}

impl Run {
    /// Shows where the current phase is: connections, messages, or closes.
    pub fn show_progress(&mut self, open: u64, msgs: u64) {
        let n = self.o.connections as u64;
        let total = n * self.o.messages as u64;
        let rate = match self.samples.len() {
            0 | 1 => 0.0,
            k => {
                let (a, b) = (self.samples[k.saturating_sub(6)], self.samples[k - 1]);
                (b.msgs - a.msgs) as f64 / (b.t - a.t).max(1e-3)
            }
        };
        let phase = self.phase;
        match phase {
            Phase::Connect | Phase::Barrier => {
                let connected = self.client_sum("connected");
                let msg = format!("connected; servers hold {}", thousands(open));
                self.progress.update(phase.name(), connected, n, &msg);
            }
            Phase::Exchange => {
                let msg = format!("messages, {} msgs/s", thousands(rate as u64));
                self.progress.update(phase.name(), msgs, total, &msg);
            }
            Phase::Close => {
                let msg = format!("closed; {} still open", thousands(open));
                self.progress
                    .update(phase.name(), n.saturating_sub(open), n, &msg);
            }
            Phase::Serve => {
                let accepted = self.server_sum("accepted");
                let msg = format!(
                    "accepted; {} open (peak {}), {} bytes echoed",
                    thousands(open),
                    thousands(self.peak_open),
                    thousands(self.server_sum("bytes"))
                );
                self.progress.update(phase.name(), accepted, n, &msg);
            }
            Phase::Start => {}
        }
    }
}
