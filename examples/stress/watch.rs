//! What the orchestrator watches while a run goes, to say what limits it as soon as it
//! shows: the kernel's search for free local ports during the connect phase.

use crate::ports::SLOW_CONNECT_US;
use crate::run::{Failure, Phase, Run};

/// Connections to average the `connect` system call over before judging it.
const CONNECT_SAMPLE: u64 = 1000;

/// What the watch has found (each is said once, when it shows).
#[derive(Debug, Default)]
pub struct Watch {
    /// The average `connect` call, in us, when it showed the port search slowing the
    /// connect phase.
    pub port_search_us: Option<u64>,
}

impl Run {
    /// Called at every sample: says what limits the run when it shows.
    ///
    /// # Errors
    /// None yet: a limit that makes the run fail fails where it bites.
    pub fn watch(&mut self) -> Result<(), Failure> {
        if self.phase == Phase::Connect && self.watch.port_search_us.is_none() {
            let connected = self.client_sum("connected");
            let us = self.client_sum("connect_us");
            if connected >= CONNECT_SAMPLE && us / connected > SLOW_CONNECT_US {
                let avg = us / connected;
                self.watch.port_search_us = Some(avg);
                let n = self.o.connections as u64;
                let ports = &self.plan.ports;
                self.progress.println(&format!(
                    "stress: the ephemeral port range limits the connect phase: connect() \
                     takes {avg} us on average (over {SLOW_CONNECT_US} us is the kernel \
                     searching for a free local port); this run takes up to {:.0}% of the \
                     range per source address ({}). {}",
                    ports.fill(n) * 100.0,
                    ports.sources_text(),
                    ports.remedy(n)
                ));
            }
        }
        Ok(())
    }
}
