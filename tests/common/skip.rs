//! Skipping a test for lack of PostgreSQL or Chromium, visibly.
//!
//! `cargo test` captures what a passing test prints with `println!`/`eprintln!`, so a
//! skipped test would read as a plain `ok`. A skip here is written straight to the
//! terminal's stderr (the capture only takes the print macros), and appended to
//! `target/tmp/skipped-tests.log`, which `.ci/run` empties before the tests and
//! summarises after them ("N skipped: reason"). Under CI a skip is a failure instead.

use std::io::Write;

/// Whether CI forces the optional tests to run: `CI` set to anything but empty or `false`.
pub fn ci_forces() -> bool {
    forces(std::env::var("CI").ok().as_deref())
}

fn forces(ci: Option<&str>) -> bool {
    matches!(ci, Some(v) if !v.is_empty() && v != "false")
}

#[test]
fn any_ci_value_but_empty_or_false_forbids_skipping() {
    for (ci, forced) in [
        (None, false),
        (Some(""), false),
        (Some("false"), false),
        (Some("true"), true),
        (Some("1"), true),
        (Some("yes"), true),
    ] {
        assert_eq!(forces(ci), forced, "CI={ci:?}");
    }
}

/// Where skips are logged, one line each: `test<TAB>reason`.
pub fn log_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("skipped-tests.log")
}

/// The running test's name, as libtest names its thread.
fn test_name() -> String {
    std::thread::current().name().unwrap_or("a test").to_owned()
}

/// Fails under CI; otherwise says on the terminal that (part of) the running test is
/// skipped and why, and logs it for the summary.
pub fn skip(reason: &str) {
    let test = test_name();
    assert!(
        !ci_forces(),
        "CI={} forbids skipping {test}: {reason}",
        std::env::var("CI").unwrap_or_default()
    );
    // Straight to the terminal, past the test harness's capture.
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
    if let Ok(mut log) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path())
    {
        let _ = writeln!(log, "{test}\t{reason}");
    }
}
