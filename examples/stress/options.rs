//! The command line: the options a user passes, and the internal ones by which the
//! orchestrator starts this binary again as a server or client process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Which part of the run this process plays (`--role`, set by the orchestrator).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// An echo server process.
    Server,
    /// A load client process.
    Client,
}

/// Everything the command line says.
#[derive(Clone, Debug)]
pub struct Opts {
    pub connections: usize,
    pub messages: usize,
    pub size: usize,
    pub server_threads: Option<usize>,
    pub client_threads: usize,
    pub server_processes: Option<usize>,
    pub client_processes: Option<usize>,
    pub connect: Option<String>,
    pub serve: Option<String>,
    pub server_pid: Option<u32>,
    /// Loopback source addresses the clients spread over (`None`: as the port range asks).
    pub sources: Option<u32>,
    pub seed: u64,
    pub timeout: Duration,
    pub plot: Option<PathBuf>,
    // Internal: the child roles.
    pub role: Option<Role>,
    pub listen: String,
    pub first: usize,
    pub count: usize,
    pub fault: Option<String>,
}

impl Default for Opts {
    fn default() -> Opts {
        Opts {
            connections: 20_000,
            messages: 10,
            size: 1024,
            server_threads: None,
            client_threads: 1,
            server_processes: None,
            client_processes: None,
            connect: None,
            serve: None,
            server_pid: None,
            sources: None,
            seed: 1,
            timeout: Duration::from_secs(120),
            plot: None,
            role: None,
            listen: "127.0.0.1:0".to_string(),
            first: 0,
            count: 0,
            fault: None,
        }
    }
}

/// The `--help` text.
pub const HELP: &str = "\
greenhub stress: hold N connections open at once on loopback, echo verified messages.

usage: stress [OPTIONS]

  --connections N       connections held open at once (20000)
  --messages M          messages per connection (10)
  --size BYTES          message sizes are random in 1..=BYTES (1024)
  --server-threads T    hubs per server process (cores / server processes, at least 1)
  --client-threads T    hubs per client process (1)
  --server-processes S  override the split the file limit asks for
  --client-processes C  override the split the file limit asks for
  --connect ADDR        drive an external echo server at ADDR (start no servers)
  --server-pid PID      with --connect: read that server's RSS, CPU and open fds
  --serve ADDR          only serve on ADDR, for an external client; ends when N
                        connections have come and gone
  --sources K           loopback source addresses the clients spread over, from
                        127.0.0.1 up (as many as the ephemeral port range needs)
  --seed X              PRNG seed of the message sizes and contents (1)
  --timeout SECS        deadline of the whole run (120)
  --plot PATH           where to write the SVG plot (<target>/stress.svg)
";

/// Parses this process's command line.
///
/// # Errors
/// An unknown flag, a value that does not parse, or a combination that makes no sense.
pub fn parse() -> Result<Opts, lexopt::Error> {
    use lexopt::prelude::*;
    let mut o = Opts::default();
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = p.next()? {
        match arg {
            Long("connections") => o.connections = p.value()?.parse()?,
            Long("messages") => o.messages = p.value()?.parse()?,
            Long("size") => o.size = p.value()?.parse()?,
            Long("server-threads") => o.server_threads = Some(p.value()?.parse()?),
            Long("client-threads") => o.client_threads = p.value()?.parse()?,
            Long("server-processes") => o.server_processes = Some(p.value()?.parse()?),
            Long("client-processes") => o.client_processes = Some(p.value()?.parse()?),
            Long("connect") => o.connect = Some(p.value()?.string()?),
            Long("serve") => o.serve = Some(p.value()?.string()?),
            Long("server-pid") => o.server_pid = Some(p.value()?.parse()?),
            Long("sources") => o.sources = Some(p.value()?.parse()?),
            Long("seed") => o.seed = p.value()?.parse()?,
            Long("timeout") => {
                let secs: f64 = p.value()?.parse()?;
                o.timeout = Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())?;
            }
            Long("plot") => o.plot = Some(p.value()?.into()),
            Long("role") => {
                o.role = Some(match p.value()?.string()?.as_str() {
                    "server" => Role::Server,
                    "client" => Role::Client,
                    r => return Err(format!("unknown role {r:?}").into()),
                });
            }
            Long("listen") => o.listen = p.value()?.string()?,
            Long("first") => o.first = p.value()?.parse()?,
            Long("count") => o.count = p.value()?.parse()?,
            Long("fault") => o.fault = Some(p.value()?.string()?),
            Long("help") | Short('h') => {
                print!("{HELP}");
                std::process::exit(0);
            }
            _ => return Err(arg.unexpected()),
        }
    }
    if o.connections == 0 || o.size == 0 || o.client_threads == 0 {
        return Err("--connections, --size and --client-threads must be at least 1".into());
    }
    if o.server_threads == Some(0) || o.server_processes == Some(0) {
        return Err("--server-threads and --server-processes must be at least 1".into());
    }
    if o.client_processes == Some(0) {
        return Err("--client-processes must be at least 1".into());
    }
    if o.sources == Some(0) || o.sources > Some(crate::load::LOOPBACK_SOURCES_MAX) {
        return Err(format!(
            "--sources must be 1 to {} (the addresses of 127.0.0.0/8)",
            crate::load::LOOPBACK_SOURCES_MAX
        )
        .into());
    }
    if o.connect.is_some() && o.serve.is_some() {
        return Err("--connect and --serve exclude each other".into());
    }
    Ok(o)
}

/// The first address `addr` resolves to.
pub fn resolve(addr: &str) -> Result<SocketAddr, String> {
    std::net::ToSocketAddrs::to_socket_addrs(addr)
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))
}
