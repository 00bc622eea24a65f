//! The child processes as the orchestrator sees them: starting one, the lines it
//! prints, what it last reported, and the words for one that died.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::ops::Range;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::load::{describe, thousands};
use crate::protocol::{num, parse_kv};
use crate::run::{Failure, Run};

/// What a child process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Server,
    Client,
}

/// A child process and what it last reported.
pub struct Proc {
    pub kind: Kind,
    pub index: usize,
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub ids: Range<usize>,
    pub addr: Option<String>,
    pub rss_base: u64,
    /// Last STATS (servers) or PROGRESS (clients), as key=value pairs.
    pub last: HashMap<String, u64>,
    pub connected: Option<HashMap<String, u64>>,
    pub done: Option<HashMap<String, u64>>,
    pub fin: Option<HashMap<String, String>>,
    pub error: Option<String>,
    pub eof: bool,
    pub status: Option<ExitStatus>,
}

impl Proc {
    pub fn name(&self) -> String {
        match self.kind {
            Kind::Server => format!("server {}", self.index),
            Kind::Client => format!("client {}", self.index),
        }
    }

    pub fn get(&self, key: &str) -> u64 {
        self.last.get(key).copied().unwrap_or(0)
    }

    pub fn send(&mut self, line: &str) {
        if let Some(stdin) = &mut self.stdin {
            let _ = writeln!(stdin, "{line}");
            let _ = stdin.flush();
        }
    }
}

/// A line or the end of a child's output, as its reader threads forward them.
pub enum Ev {
    Out(usize, String),
    Err(usize, String),
    Eof(usize),
}

impl Run {
    /// Starts this binary again with `args`, as a child of `kind` serving `ids`.
    pub fn spawn(
        &mut self,
        kind: Kind,
        args: Vec<String>,
        ids: Range<usize>,
    ) -> Result<(), Failure> {
        let index = self.procs.iter().filter(|p| p.kind == kind).count();
        let mut child = Command::new(&self.exe)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Failure(format!("cannot start a {kind:?} process: {}", describe(&e))))?;
        let i = self.procs.len();
        let (out, err) = (child.stdout.take(), child.stderr.take());
        if let Some(out) = out {
            let tx = self.tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(Ev::Out(i, line)).is_err() {
                        return;
                    }
                }
                let _ = tx.send(Ev::Eof(i));
            });
        }
        if let Some(err) = err {
            let tx = self.tx.clone();
            std::thread::spawn(move || {
                let mut err = err;
                let mut buf = String::new();
                let _ = err.read_to_string(&mut buf);
                for line in buf.lines() {
                    let _ = tx.send(Ev::Err(i, line.to_string()));
                }
            });
        }
        self.procs.push(Proc {
            kind,
            index,
            stdin: child.stdin.take(),
            child,
            ids,
            addr: None,
            rss_base: 0,
            last: HashMap::new(),
            connected: None,
            done: None,
            fin: None,
            error: None,
            eof: false,
            status: None,
        });
        Ok(())
    }

    pub fn servers(&self) -> impl Iterator<Item = &Proc> {
        self.procs.iter().filter(|p| p.kind == Kind::Server)
    }

    pub fn clients(&self) -> impl Iterator<Item = &Proc> {
        self.procs.iter().filter(|p| p.kind == Kind::Client)
    }

    pub fn server_sum(&self, key: &str) -> u64 {
        self.servers().map(|p| p.get(key)).sum()
    }

    /// The sum of the clients' last progress figure `key`, or their final one (DONE).
    pub fn client_sum(&self, key: &str) -> u64 {
        self.clients()
            .map(|p| {
                let done = p.done.as_ref().and_then(|d| d.get(key).copied());
                p.get(key).max(done.unwrap_or(0))
            })
            .sum()
    }

    /// Kills every child still running, all before waiting for any: a process with
    /// thousands of sockets takes a while to exit, and the others must stop connecting
    /// meanwhile (a run stopped for memory would otherwise keep growing).
    pub fn kill_all(&mut self) {
        for p in self.procs.iter_mut().filter(|p| p.status.is_none()) {
            let _ = p.child.kill();
        }
        for p in self.procs.iter_mut().filter(|p| p.status.is_none()) {
            let _ = p.child.wait();
        }
    }

    pub fn handle(&mut self, ev: Ev) -> Result<(), Failure> {
        match ev {
            Ev::Out(i, line) => {
                let p = &mut self.procs[i];
                let (word, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
                let (kv, error) = parse_kv(rest);
                let nums = || {
                    kv.iter()
                        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
                        .collect::<HashMap<String, u64>>()
                };
                match word {
                    "READY" => {
                        p.addr = kv.get("addr").map(|a| a.to_string());
                        p.rss_base = num(&kv, "rss_kib");
                    }
                    "STATS" | "PROGRESS" => p.last = nums(),
                    "CONNECTED" => {
                        p.connected = Some(nums());
                        p.error = error.map(str::to_string);
                    }
                    "DONE" => {
                        p.done = Some(nums());
                        if error.is_some() {
                            p.error = error.map(str::to_string);
                        }
                    }
                    "FINAL" => {
                        p.fin = Some(
                            kv.iter()
                                .map(|(k, v)| (k.to_string(), v.to_string()))
                                .collect(),
                        );
                    }
                    "ERROR" => {
                        let why = format!("{}: {rest}", p.name());
                        p.error = Some(rest.to_string());
                        return Err(Failure(why));
                    }
                    _ => self.progress.println(&format!("[{}] {line}", p.name())),
                }
            }
            Ev::Err(i, line) => {
                let name = self.procs[i].name();
                self.progress.println(&format!("[{name}] {line}"));
            }
            Ev::Eof(i) => {
                let p = &mut self.procs[i];
                p.eof = true;
                // Its stdout is closed: it has exited or is about to.
                let until = Instant::now() + Duration::from_secs(2);
                while p.status.is_none() && Instant::now() < until {
                    match p.child.try_wait() {
                        Ok(Some(s)) => p.status = Some(s),
                        Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                        Err(_) => break,
                    }
                }
                if p.fin.is_none() {
                    return Err(Failure(self.died(i)));
                }
            }
        }
        Ok(())
    }

    /// Words on a child that ended before its FINAL report.
    pub fn died(&self, i: usize) -> String {
        let p = &self.procs[i];
        let how = match p.status {
            Some(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                (Some(c), _) => format!("exited with status {c}"),
                (None, Some(sig)) => format!("was killed by signal {sig}"),
                _ => format!("ended ({s})"),
            },
            None => "closed its output".to_string(),
        };
        let mut why = format!(
            "{} (pid {}) {how} during the {} phase",
            p.name(),
            p.child.id(),
            self.phase.name()
        );
        match p.kind {
            Kind::Client => {
                let conns = p.ids.len() as u64;
                let expected = conns * self.o.messages as u64;
                let done = p.done.as_ref().map_or(p.get("msgs"), |d| d["msgs"]);
                why += &format!(
                    ": its connections {}..{} ({} connections) are lost; it had reported {} \
                     of their {} messages echoed, so {} messages are lost",
                    p.ids.start,
                    p.ids.end - 1,
                    thousands(conns),
                    thousands(done),
                    thousands(expected),
                    thousands(expected.saturating_sub(done))
                );
            }
            Kind::Server => {
                why += &format!(
                    ": the {} connections it held are lost",
                    thousands(p.get("active"))
                );
            }
        }
        if let Some(e) = &p.error {
            why += &format!(" (it said: {e})");
        }
        why
    }
}
