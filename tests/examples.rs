//! The seed programs print what the seeds say (examples are built by `cargo test`).

use std::path::PathBuf;
use std::process::Command;

/// target/<profile>/examples/<name>, next to this test's own binary in target/<profile>/deps.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    profile_dir.join("examples").join(name)
}

fn run(name: &str) -> String {
    let out = Command::new(example(name))
        .output()
        .unwrap_or_else(|e| panic!("run {name}: {e}"));
    assert!(
        out.status.success(),
        "{name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn red_blue_prints_red_blue_red_done() {
    assert_eq!(run("red_blue"), "red\nblue\nred done\n");
}

#[test]
fn test1_test2_prints_12_56_34() {
    assert_eq!(run("test1_test2"), "12\n56\n34\n");
}

fn run_args(name: &str, args: &[&str]) -> String {
    let out = Command::new(example(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {name}: {e}"));
    assert!(
        out.status.success(),
        "{name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn gevent_jobs_joinall_with_timeout_reports_three_of_four() {
    let out = run("gevent_jobs");
    assert!(out.contains("3 of 4 finished"), "{out}");
    assert!(out.contains("www.slow-site.test     None"), "{out}");
    assert!(
        out.contains("Some(\"www.python.org answered after 1200 ms\")"),
        "{out}"
    );
}

#[test]
fn sleepers_sleep_concurrently() {
    let out = run_args("sleepers", &["2000"]);
    let last = out.lines().last().unwrap();
    assert!(last.starts_with("all 2000 done in"), "{out}");
    // "all N done in T s; longest sleep L s; the sum of all sleeps is S s": T is far below S.
    let nums: Vec<f64> = last
        .split(' ')
        .filter_map(|w| w.trim_end_matches(';').parse().ok())
        .collect();
    let (elapsed, sum) = (nums[1], nums[3]);
    assert!(elapsed * 10.0 < sum, "{last}");
}
