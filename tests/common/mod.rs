//! Helpers shared by the integration tests: finding and running the example binaries,
//! drop guards, a recording trace hook.
#![allow(dead_code, unused_imports)] // each test file uses only some of these

mod drops;
mod trace;

pub use drops::{DropFlag, OnDrop};
pub use trace::{Trace, record_trace};

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// target/<profile>/examples/<name>, next to the test's own binary in target/<profile>/deps.
///
/// # Panics
/// If the example is not built: plain `cargo test` builds them; `cargo test --test X`
/// alone does not (run `cargo build --release --examples` first).
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds the examples; with `cargo test --test ...` \
         run `cargo build --release --examples` first",
        path.display()
    );
    path
}

/// Runs an example with `args` to completion, killing it (and failing) after `limit`.
pub fn run_example(name: &str, args: &[&str], limit: Duration) -> Output {
    let child = Command::new(example(name))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {name}: {e}"));
    output_within(child, name, limit)
}

/// Waits for `child` to exit and returns its output, killing it (and failing, naming it
/// `what`) after `limit`.
pub fn output_within(mut child: Child, what: &str, limit: Duration) -> Output {
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > limit {
            let _ = child.kill();
            panic!("{what} did not finish in {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// Runs an example that must succeed; returns its stdout.
pub fn example_stdout(name: &str, args: &[&str]) -> String {
    let out = run_example(name, args, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
