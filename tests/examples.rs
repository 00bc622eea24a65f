//! The ported Python programs print what the Python originals print (examples are built by `cargo test`).

mod common;

use common::example_stdout;

fn run(name: &str) -> String {
    example_stdout(name, &[])
}

#[test]
fn red_blue_prints_red_blue_red_done() {
    assert_eq!(run("red_blue"), "red\nblue\nred done\n");
}

#[test]
fn test1_test2_prints_12_56_34() {
    assert_eq!(run("test1_test2"), "12\n56\n34\n");
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
    let out = example_stdout("sleepers", &["2000"]);
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
