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
