//! The lines the children and the orchestrator exchange on stdin/stdout.
//!
//! A child prints one word and `key=value` pairs, with free text last after `error=`:
//! servers `READY`, `STATS`, `FINAL`; clients `PROGRESS`, `CONNECTED`, `DONE`, `FINAL`;
//! either `ERROR`. The orchestrator writes `GO` and `CLOSE` to clients, `STOP` to
//! servers. A child whose stdin ends (the orchestrator gone) ends too.

use std::collections::HashMap;
use std::time::Duration;

/// How often servers and clients report (twice a sample: no aliasing between the two).
pub const REPORT: Duration = Duration::from_millis(50);

/// Prints one protocol line on stdout, ignoring a closed pipe (the orchestrator gone:
/// stdin's end-of-file then ends the child).
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, $($t)*);
        let _ = out.flush();
    }};
}
pub(crate) use say;

/// Splits `key=value key=value ... error=free text` into the pairs and the free text.
pub fn parse_kv(line: &str) -> (HashMap<&str, &str>, Option<&str>) {
    let (head, error) = match line.split_once(" error=") {
        Some((h, e)) => (h, Some(e)),
        None => (line, None),
    };
    let kv = head
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect();
    (kv, error)
}

/// The number under `key`, or zero.
pub fn num<T: std::str::FromStr + Default>(kv: &HashMap<&str, &str>, key: &str) -> T {
    kv.get(key).and_then(|v| v.parse().ok()).unwrap_or_default()
}
